"""Triton-language row bodies of `ember.custom_op` (ir/ops/custom_row.py): bodies with row reductions
`tl.sum/max/min(expr, axis=-1, keep_dims=True)` and lengths `x.shape[k]`.

Values and gradients against eager (the op's torch `reference`, differentiated by torch's autograd)
on fresh random inputs; an RMS norm with its neighbours is one row kernel naming the op; reductions
propagate NaN as torch's do; the split parts run their own kernels as their reference
implementation; bodies outside the grammar are refused naming their line.
"""

from __future__ import annotations

import pytest
import torch
import triton.language as tl
from test_custom_op import _registry_restored  # noqa: F401  (autouse: the ops made here leave the registry)
from test_sm90_compile import _compile_one, _planned_jobs
from testing import CHAIN_TOLERANCES, assert_compiled_gradients_match, assert_matches

import ember
from ember.api.custom_op import NAMESPACE
from ember.ir import evaluate
from ember.ir.ops.custom import BodyError
from ember.runtime import compile_graph


def _rms():
    def rms(x, eps=1e-6):
        return x * tl.rsqrt(tl.sum(x * x, axis=-1, keep_dims=True) / x.shape[-1] + eps)

    return ember.custom_op(rms, reference=lambda x, eps: x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps))


def test_rms_is_one_row_kernel_with_its_neighbours_and_matches_eager():
    rms = _rms()
    fn = lambda x, w: rms(x * 2, eps=0.5) * w  # noqa: E731  (a large eps: a wrong or missing one shows)
    x, w = torch.randn(6, 24), torch.randn(24)
    assert_matches(fn, x, w)  # (and the captured and optimized IR print and parse back)
    assert_compiled_gradients_match(fn, [x, w], rtol=1e-5, atol=1e-5)  # the reference's derivative
    report = ember.explain(fn, x, w)
    assert [k.kind for k in report.kernels] == ["row"]
    assert report.kernels[0].custom_ops == [rms.name]
    parts = [p.op for p in rms.program.parts]
    assert report.kernels[0].ops == ["mul", parts[0], "sum", parts[1], "mul"]
    assert "eps=0.5" in report.ir_after and "x_len0=24" in report.ir_after  # the length: an int attribute


def test_half_values_and_gradients():
    """float16: eager rounds after each op of the reference (a chain: x*x, mean, add, rsqrt, mul),
    ember once per kernel, so the chain tolerance."""
    rms = _rms()
    fn = lambda x, w: rms(x) * w  # noqa: E731
    x, w = torch.randn(4, 32, dtype=torch.float16), torch.randn(32, dtype=torch.float16)
    rtol, atol = CHAIN_TOLERANCES[torch.float16]
    assert_matches(fn, x, w, rtol=rtol, atol=atol)
    assert_compiled_gradients_match(fn, [x, w], rtol=rtol, atol=atol)


def test_nested_reductions_local_lines_and_a_user_vjp():
    """A softmax: `tl.sum` of an expression of `tl.max` (two reductions, innermost first), local
    lines read by two parts; float64 so a float32 computation would fail. With `vjp=` (here the
    softmax's own formula), ember traces it for the gradient."""

    def soft(x, t=1.0):
        z = x / t
        e = tl.exp(z - tl.max(z, axis=-1, keep_dims=True))
        return e / tl.sum(e, -1, keep_dims=True)

    ref = lambda x, t: torch.softmax(x / t, -1)  # noqa: E731
    op = ember.custom_op(soft, reference=ref,
                         vjp=lambda x, out, g, t: out * (g - (g * out).sum(-1, keepdim=True)) / t)
    assert [type(s).__name__ for _, s in op.program.steps] == ["Part", "Reduce", "Part", "Reduce", "Part"]
    fn = lambda x: op(x, t=0.7) + x  # noqa: E731
    x = torch.randn(5, 9, dtype=torch.float64)
    assert_matches(fn, x)
    assert_compiled_gradients_match(fn, [x], rtol=1e-9, atol=1e-9)
    assert [k.kind for k in ember.explain(fn, x).kernels] == ["row"]


def test_max_and_min_propagate_nan_like_torch():
    """tl.max/tl.min are ember's amax/amin, which follow torch: a NaN in a row makes the row's
    maximum NaN (Triton's own tl.max would drop it). w has no NaN, so only the reductions carry it."""

    def spread(w, x):
        return w + tl.max(x, axis=-1, keep_dims=True) - tl.min(x, axis=-1, keep_dims=True)

    op = ember.custom_op(spread, reference=lambda w, x: w + x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True))
    w, x = torch.randn(4, 8), torch.randn(4, 8)
    x[1, 3] = float("nan")
    got = ember.compile(lambda w, x: op(w, x))(w, x)
    torch.testing.assert_close(got, op(w, x), rtol=1e-6, atol=1e-6, equal_nan=True)
    assert got[1].isnan().all() and not got[[0, 2, 3]].isnan().any()


def test_a_result_of_reductions_only_is_broadcast_to_the_inputs_shape():
    def row_sum(x):
        return tl.sum(x, axis=-1, keep_dims=True) * 1.0

    op = ember.custom_op(row_sum, reference=lambda x: x.sum(-1, keepdim=True).expand_as(x))
    fn = lambda x: op(x) * x  # noqa: E731
    x = torch.randn(3, 10)
    assert_matches(fn, x)
    assert_compiled_gradients_match(fn, [x], rtol=1e-5, atol=1e-5)


def test_a_length_without_reductions_and_eager_mode():
    """`x.shape[k]` alone makes a row body too (a one-part composite); ember's eager mode runs a row
    body's op on ember, with gradients as torch's autograd gives through the reference."""

    def per_row(x, y):
        return x / x.shape[0] + y

    op = ember.custom_op(per_row, reference=lambda x, y: x / x.shape[0] + y)
    assert_matches(lambda x, y: op(x, y) * 2, torch.randn(3, 5), torch.randn(5))
    rms = _rms()
    x = torch.randn(5, 7, requires_grad=True)
    want = rms(x)
    want_grad = torch.autograd.grad(want.sum(), [x])
    ember.reset_eager_stats()
    with ember.eager():
        got = rms(x)
        got_grad = torch.autograd.grad(got.sum(), [x])
    assert ember.eager_stats().ember[f"{NAMESPACE}.{rms.name}.default"] == 1, ember.eager_stats().summary()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-6, atol=1e-6)


def test_parts_run_their_own_kernels_as_reference_and_when_folded():
    """A part has no torch form: the reference interpreter (and constant folding, when every input of
    a part is a constant) runs its kernel; on the optimized graph it gives eager's values."""
    rms = _rms()
    x = torch.randn(4, 16)
    sg = ember.trace(lambda x: rms(x) + 1, x)
    torch.testing.assert_close(evaluate(sg.graph, x)[0], rms(x) + 1, rtol=1e-5, atol=1e-5)
    folded = lambda x: rms(torch.full((4, 16), 3.0)) * x  # noqa: E731  (x * x of a constant: folded)
    assert_matches(folded, x)


def test_fused_row_body_compiles_for_sm90():
    rms = _rms()
    g = ember.trace(lambda x, w: rms(x) * w, torch.randn(64, 128), torch.randn(128)).graph
    plan = compile_graph(g, device="cuda").plan  # a GPU's launch config; nothing runs
    jobs = _planned_jobs(plan.steps, plan.bufs)
    assert len(jobs) == 1 and "tl.rsqrt(" in jobs[0][0]
    assert _compile_one(jobs[0]) is None


def bad_axis(x):
    return x - tl.sum(x, axis=0, keep_dims=True)


def bad_keep(x):
    return x - tl.max(x, axis=-1)


def bad_scan(x):
    return tl.cumsum(x, axis=-1)


def bad_constant(x):
    return x - tl.sum(2.0, axis=-1, keep_dims=True)


def bad_length(x):
    y = x * 2
    return x / y.shape[-1]


def bad_index(x, k=1):
    return x / x.shape[k]


@pytest.mark.parametrize("body, message", [
    (bad_axis, f"line {bad_axis.__code__.co_firstlineno + 1}: `tl.sum\\(x, axis=0, keep_dims=True\\)`: "
               f"a row reduction is `tl.sum\\(expr, axis=-1, keep_dims=True\\)`"),
    (bad_keep, r"line \d+: `tl.max\(x, axis=-1\)`: a row reduction is"),
    (bad_scan, r"`tl.cumsum` is not an elementwise `tl` function"),
    (bad_constant, r"line \d+: a row reduction must reduce an expression of a tensor parameter"),
    (bad_length, r"`y.shape\[-1\]`: a length is `x.shape\[k\]` of a tensor parameter"),
    (bad_index, r"`x.shape\[k\]`: a length is"),
])
def test_row_bodies_outside_the_grammar_are_refused(body, message):
    with pytest.raises(BodyError, match=message):
        ember.custom_op(body, reference=lambda x: x)
