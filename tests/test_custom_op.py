"""`ember.custom_op` (api/custom_op.py, ir/ops/custom.py) and ops users register with torch.library.

Values and gradients against eager on fresh random inputs (eager runs the op's torch reference and
its VJP through torch's autograd; ember runs the Triton body, and the VJP traced into IR); fusion
with neighbours and the op's name in `explain`; a changed body is a new kernel; bodies outside the
grammar are refused naming their line. Ops are made inside the tests and taken out of the registry
after each (`_registry_restored`): tests/test_registry.py's checks of every entry, run later in the
same process, sample ops on their own shapes, which a user's op need not accept.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import triton.language as tl
from test_sm90_compile import _compile_one, _planned_jobs
from testing import assert_compiled_gradients_match, assert_matches

import ember
from ember.api.custom_op import NAMESPACE
from ember.codegen.kernel import generated_kernels, spec_count
from ember.frontend.lowering import LOWERINGS
from ember.ir import OPS
from ember.ir.ops.custom import BodyError
from ember.ir.parser import parse_graph
from ember.passes.autodiff import vjp_graph
from ember.runtime import compile_graph


@pytest.fixture(autouse=True)
def _registry_restored():
    ops, rules = set(OPS), set(LOWERINGS)
    yield
    for name in set(OPS) - ops:
        del OPS[name]
    for overload in set(LOWERINGS) - rules:
        if overload.namespace == NAMESPACE:  # (the first capture may load the other rules meanwhile)
            del LOWERINGS[overload]


def _gated():
    def gated(x, y):
        """x * y where x > 0, else 0."""
        return tl.where(x > 0, x * y, 0.0)

    return ember.custom_op(gated, reference=lambda x, y: torch.where(x > 0, x * y, 0.0))


def test_triton_body_fuses_with_its_neighbours_and_matches_eager():
    gated = _gated()
    fn = lambda x, y: gated(x * 2, y) + 1  # noqa: E731
    x, y = torch.randn(5, 7), torch.randn(7)
    assert_matches(fn, x, y)
    assert_compiled_gradients_match(fn, [x, y], rtol=1e-6, atol=1e-6)  # derived from the reference
    report = ember.explain(fn, x, y)
    assert [k.ops for k in report.kernels] == [["mul", gated.name, "add"]]  # one kernel
    # in a row kernel too, as the prologue of a softmax
    soft = lambda x, y: torch.softmax(gated(x, y), -1)  # noqa: E731
    assert_matches(soft, x, y)
    assert [k.kind for k in ember.explain(soft, x, y).kernels] == ["row"]


def test_fused_triton_body_compiles_for_sm90():
    """The body is ordinary kernel text: the fused kernel a GPU would run compiles for sm_90."""
    gated = _gated()
    g = ember.trace(lambda x, y: gated(x * 2, y) + 1, torch.randn(64, 32), torch.randn(32)).graph
    plan = compile_graph(g, device="cuda").plan  # a GPU's launch config; nothing runs
    jobs = _planned_jobs(plan.steps, plan.bufs)
    assert len(jobs) == 1 and "tl.where(" in jobs[0][0]
    assert _compile_one(jobs[0]) is None


def test_user_vjp_is_used_by_ember_and_by_eager():
    """A straight-through sign: the derivative of the reference is 0, the user's VJP passes the
    gradient through (clipped to |x| <= 1), so a zero gradient would fail."""

    def ste_sign(x):
        return tl.where(x >= 0, 1.0, -1.0)

    op = ember.custom_op(ste_sign, reference=lambda x: torch.where(x >= 0, 1.0, -1.0).to(x.dtype),
                         vjp=lambda x, out, g: torch.where(x.abs() <= 1, g, 0.0))
    x = torch.randn(6, 5) * 2
    fn = lambda x: op(x) * x  # noqa: E731
    assert_matches(fn, x)
    leaf = x.clone().requires_grad_()
    op(leaf).sum().backward()
    assert torch.equal(leaf.grad, (x.abs() <= 1).float())  # eager: the user's VJP
    assert_compiled_gradients_match(fn, [x], rtol=1e-6, atol=1e-6)


def test_local_lines_and_tl_math():
    def damped(x, y):
        a = tl.abs(x)
        d = 1.0 + a
        return x / d + tl.math.exp(-a) * y

    op = ember.custom_op(damped, reference=lambda x, y: x / (1 + x.abs()) + torch.exp(-x.abs()) * y)
    fn = lambda x, y: op(x, y).sum(-1)  # noqa: E731
    x, y = torch.randn(6, 9, dtype=torch.float64), torch.randn(6, 9, dtype=torch.float64)
    assert_matches(fn, x, y)
    assert_compiled_gradients_match(fn, [x, y], rtol=1e-12, atol=1e-12)


def test_eager_mode_runs_the_triton_body_on_ember():
    gated = _gated()
    x, y = torch.randn(5, 7, requires_grad=True), torch.randn(7, requires_grad=True)
    want = gated(x, y)
    want_grads = torch.autograd.grad(want.sum(), [x, y])
    ember.reset_eager_stats()
    with ember.eager():
        got = gated(x, y)
        got_grads = torch.autograd.grad(got.sum(), [x, y])
    assert ember.eager_stats().ember[f"{NAMESPACE}.{gated.name}.default"] == 1, ember.eager_stats().summary()
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got_grads, want_grads, rtol=1e-6, atol=1e-6)


def test_inputs_are_promoted_and_broadcast():
    gated = _gated()
    x, y = torch.randn(3, 4, dtype=torch.float64), torch.randint(-3, 4, (4,))
    assert gated(x, y).dtype == torch.float64
    assert_matches(lambda x, y: gated(x, y), x, y)
    assert_matches(lambda x, y: gated(x, y), x.half(), y.float())  # float16 x, float32 y: float32


def test_torch_body_is_one_node_that_decomposes_into_a_row_kernel():
    @ember.custom_op
    def rms(x):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-6)

    fn = lambda x, w: rms(x) * w  # noqa: E731
    x, w = torch.randn(4, 16), torch.randn(16)
    assert_matches(fn, x, w)
    assert_compiled_gradients_match(fn, [x, w], rtol=1e-5, atol=1e-5)
    sg = ember.trace(fn, x, w)
    assert [n.op for n in sg.captured_graph.nodes].count(rms.name) == 1
    report = ember.explain(fn, x, w)
    assert [k.kind for k in report.kernels] == ["row"]
    assert f"= {rms.name}(%x)" in str(report)  # the op in the IR before passes
    # the inlined nodes keep the op's name as a label: in explain's kernels, and through print/parse
    assert report.kernels[0].custom_ops == [rms.name] and f"[{rms.name}] mul" in str(report)
    assert str(parse_graph(str(sg.graph))) == str(sg.graph) and f"# {rms.name}" in str(sg.graph)
    assert f"# {rms.name}.vjp" in str(vjp_graph(sg.captured_graph, wrt=[0]))  # its gradient's nodes too


def test_float_attributes_are_static_and_part_of_the_kernel():
    def leaky(x, alpha=0.01):
        return tl.where(x > 0, x, x * alpha)

    op = ember.custom_op(leaky, reference=lambda x, alpha: torch.where(x > 0, x, x * alpha))
    x = torch.randn(5, 7, dtype=torch.float64)
    fn = lambda x: op(x, alpha=0.3) + op(x) * x  # noqa: E731  (two values, the default 0.01)
    assert_matches(fn, x)
    assert_compiled_gradients_match(fn, [x], rtol=1e-12, atol=1e-12)  # float64: the constant is a double
    report = ember.explain(fn, x)
    assert "{alpha=0.3}" in report.ir_after and "{alpha=0.01}" in report.ir_after
    assert report.kernels[0].custom_ops == [op.name]
    with pytest.raises(TypeError, match="attribute alpha takes a float"):
        op(x, alpha="big")


def test_torch_body_attributes_reach_its_body_and_gradient():
    @ember.custom_op
    def rms(x, w, eps=1e-6):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps) * w

    x, w = torch.randn(4, 16), torch.randn(16)
    fn = lambda x, w: rms(x, w, eps=0.5)  # noqa: E731  (a large eps: a wrong one shows)
    assert_matches(fn, x, w)
    assert_compiled_gradients_match(fn, [x, w], rtol=1e-5, atol=1e-5)
    assert "value=0.5" in ember.explain(fn, x, w).ir_after


def test_a_changed_body_is_a_new_op_and_a_new_kernel():
    def act(x):
        return tl.maximum(x, 0.0)

    first = ember.custom_op(act, reference=torch.relu)

    def act(x):  # noqa: F811  (redefined, as in a notebook)
        return tl.minimum(x, 0.0)

    second = ember.custom_op(act, reference=lambda x: torch.clamp(x, max=0.0))
    assert first.name != second.name
    x = torch.randn(33)
    since = spec_count()
    assert_matches(lambda x: first(x) + 1, x)
    assert_matches(lambda x: second(x) + 1, x)
    sources = [s.source for s in generated_kernels(since) if "pw_" in s.name]
    assert any("tl.maximum" in s for s in sources) and any("tl.minimum" in s for s in sources)
    assert not any("tl.maximum" in s and "tl.minimum" in s for s in sources)


SCALE = 2.0


def bad_global(x):
    return x * SCALE


def bad_statement(x):
    if x > 0:
        return x
    return -x


def bad_call(x):
    return x.sum()


def bad_attribute(x):
    return x.T


def bad_private(x):
    return tl.__dict__


def bad_deep(x):
    return tl.core.exp(x)


def bad_lambda_source():
    return lambda x: tl.exp(x)


@pytest.mark.parametrize("body, message", [
    (bad_global, f"line {bad_global.__code__.co_firstlineno + 1}: `SCALE` is not a parameter"),
    (bad_statement, r"line \d+: only `name = expression` lines"),
    (bad_call, r"line \d+: `x\.sum`: only `tl\.\*` functions and `\.to\(\.\.\.\)` may be called"),
    (bad_attribute, r"line \d+: `x\.T`: only public `tl\.\*` and `tl\.math\.\*` names"),
    (bad_private, r"`tl\.__dict__`: only public `tl\.\*` and `tl\.math\.\*` names"),
    (bad_deep, r"`tl\.core\.exp`: only `tl\.\*` functions"),
    (bad_lambda_source(), "write the Triton body as a `def` function"),
])
def test_bodies_outside_the_grammar_are_refused(body, message):
    with pytest.raises(BodyError, match=message):
        ember.custom_op(body, reference=lambda x: x)


def test_a_torch_body_closing_over_a_tensor_is_refused():
    w = torch.randn(3)

    @ember.custom_op
    def scaled(x):
        return x * w

    with pytest.raises(NotImplementedError, match="pure functions of their tensor arguments"):
        ember.compile(lambda x: scaled(x) + 1)(torch.randn(3))


# -- ops the user registered with torch.library: externs with their own autograd ---------------------


@pytest.fixture(scope="module")
def library_ops():
    lib = "ember_test_lib"

    @torch.library.custom_op(f"{lib}::mysin", mutates_args=())
    def mysin(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)

    mysin.register_fake(lambda x: torch.empty_like(x))

    def setup(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])

    mysin.register_autograd(lambda ctx, g: g * torch.cos(ctx.saved_tensors[0]), setup_context=setup)

    @torch.library.custom_op(f"{lib}::nograd", mutates_args=())
    def nograd(x: torch.Tensor) -> torch.Tensor:
        return torch.sin(x)

    nograd.register_fake(lambda x: torch.empty_like(x))
    return mysin, nograd


def test_torch_library_op_with_autograd_is_a_differentiable_extern(library_ops):
    mysin, _ = library_ops
    fn = lambda x: mysin(x * 2) + 1  # noqa: E731
    x = torch.randn(4, 5)
    assert_matches(fn, x, externs=("ember_test_lib.mysin.default",))
    assert_compiled_gradients_match(fn, [x], rtol=1e-6, atol=1e-6)


def test_torch_library_op_without_autograd_is_refused_under_grad(library_ops):
    _, nograd = library_ops
    fn = lambda x: nograd(x * 2) + 1  # noqa: E731
    x = torch.randn(4, 5)
    assert_matches(fn, x, externs=("ember_test_lib.nograd.default",))  # no gradient asked: runs
    with pytest.raises(NotImplementedError, match="ember_test_lib.nograd.default.*no autograd formula"):
        ember.compile(fn)(x.requires_grad_())


def test_the_example_fuses_its_ops_into_one_kernel():
    """examples/custom_op.py: sign (Triton body, straight-through VJP) -> scale -> residual -> RMS norm
    (torch body, an `eps` attribute) -> softmax (Triton row body): one row kernel naming the three ops;
    output and gradients as eager's."""
    path = Path(__file__).resolve().parents[1] / "examples" / "custom_op.py"
    spec = importlib.util.spec_from_file_location("custom_op_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main()
    assert len(result["kernels"]) == 1 and example.ste_sign.name in result["kernels"][0]
    assert result["custom_ops"] == [[example.ste_sign.name, example.rms_norm.name, example.softmax_t.name]]
    assert max(result["errors"]) < 1e-5, result["errors"]
