"""Errors point at the user's line (frontend/errors.py), and ops that crashed ember inside now run or
raise a clear error.

The table: each row is a bad program or a bad call. The error keeps the type eager PyTorch (or
Python) raises; its first line is ember's cause then `  at tests/test_errors.py:<line>: <source>`,
where that line holds `snippet`; it is short, the printed traceback is short and torch's chained
exception and its "failed while attempting to run meta" log appear only with EMBER_VERBOSE=1.
"""

import linecache
import logging
import re
import traceback

import pytest
import torch
import torch.nn.functional as F
from testing import assert_matches
from torch import nn

import ember
from ember.frontend.lower_matmul import DtypeMismatchError

pytestmark = pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")

# Each row: (run, exception type, first-line regex, text of the user line the first line names)
ROWS: dict = {}


def row(exc, pattern, snippet):
    def register(fn):
        ROWS[fn.__name__] = (fn, exc, pattern, snippet)
        return fn
    return register


# -- shape mismatches: RuntimeError as in eager, at the line of the op -------------------------------------------
@row(RuntimeError, r"^Tensor\.matmul: .*reduction dim", "return x @ y")
def matmul_shapes():
    def f(x, y):
        return x @ y
    ember.compile(f)(torch.randn(3, 4), torch.randn(5, 6))


@row(RuntimeError, r"^Tensor\.add: Attempting to broadcast a dimension of length 4", "return x + y")
def add_broadcast():
    def f(x, y):
        return x + y
    ember.compile(f)(torch.randn(3), torch.randn(4))


@row(RuntimeError, r"^torch\.cat: .*Sizes of tensors must match", "torch.cat([x, y])")
def cat_shapes():
    ember.compile(lambda x, y: torch.cat([x, y]))(torch.randn(2, 3), torch.randn(2, 4))


@row(RuntimeError, r"^Tensor\.view: shape '\[5\]' is invalid for input of size 6", "x.view(5)")
def view_shape():
    ember.compile(lambda x: x.view(5))(torch.randn(6))


@row(IndexError, r"^Tensor\.select: select\(\): index 9 out of range", "x.reshape(-1).select(0, 9)")
def select_out_of_range():  # torch's IndexError from the user's call is the user's error, not ember's
    ember.compile(lambda x: x.reshape(-1).select(0, 9))(torch.randn(3, 3))


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x).relu()


@row(RuntimeError, r"^torch\.nn\.functional\.linear: .*(2x5|\[2, 5\])", "return self.fc(x).relu()")
def module_input_shape():
    ember.compile(_Net())(torch.randn(2, 5))


@row(IndexError, r"index 10 is out of bounds for dimension 0 with size 3", "x[10]")
def index_out_of_range():
    ember.compile(lambda x: x[10])(torch.randn(3))


@row(RuntimeError, r"^Tensor\.matmul: .*reduction dim", "def loss(out, y): return ((out @ y) ** 2).mean()")
def compile_step_loss_shapes():
    m = nn.Linear(3, 4)
    def loss(out, y): return ((out @ y) ** 2).mean()  # noqa: E704
    ember.compile_step(m, loss, ember.optim.SGD(m.parameters(), lr=0.1))(torch.randn(2, 3), torch.randn(5, 2))


# -- dtype mismatches: eager's error, found on the graph, named at the user's line ---------------------------
@row(DtypeMismatchError, r"^aten\.mm\.default: .*same dtype, but got float32 and float64", "return x @ y")
def matmul_dtypes():
    def f(x, y):
        return x @ y
    ember.compile(f)(torch.randn(3, 3), torch.randn(3, 3, dtype=torch.float64))


@row(DtypeMismatchError, r"same dtype, but got float32 and float64", "F.linear(x, w)")
def linear_dtypes():
    ember.compile(lambda x, w: F.linear(x, w))(torch.randn(2, 3), torch.randn(4, 3, dtype=torch.float64))


# -- data-dependent programs: CaptureError naming the call and the line -------------------------------------
@row(ember.CaptureError, r"^Tensor\.__bool__ \(`if` on a tensor\) is data-dependent", "if x.sum() > 0:")
def branch_on_value():
    def f(x):
        if x.sum() > 0:
            return x + 1
        return x - 1
    ember.compile(f)(torch.randn(3))


class _PaddedAttention(nn.Module):
    """What transformers' BERT does with a padding mask: drop the mask when nothing is padded."""

    def forward(self, q, mask):
        if torch.all(mask == 1):
            mask = None
        bias = None if mask is None else (1.0 - mask[:, None, :].float()) * -1e9
        return F.scaled_dot_product_attention(q, q, q, attn_mask=bias)


@row(ember.CaptureError, r"^Tensor\.__bool__ \(`if` on a tensor\) is data-dependent", "if torch.all(mask == 1):")
def padding_mask():
    ember.compile(_PaddedAttention())(torch.randn(2, 4, 8), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]]))


@row(ember.CaptureError, r"^Tensor\.item \(aten\._local_scalar_dense\.default\) is data-dependent", "x.sum().item()")
def item_used():
    ember.compile(lambda x: x * x.sum().item())(torch.randn(3))


@row(ember.CaptureError, r"^returning a tensor's value as a Python number is data-dependent", "ember.compile(f)")
def item_returned():
    def f(x):
        return x.sum().item()
    ember.compile(f)(torch.randn(3))


@row(ember.CaptureError, r"^Tensor\.__int__ \(int\(tensor\)\) is data-dependent", "int(x.sum())")
def int_of_tensor():
    ember.compile(lambda x: x * int(x.sum()))(torch.randn(3))


@row(ember.CaptureError, r"^Tensor\.nonzero \(aten\.nonzero\.default\) is data-dependent", "x.nonzero()")
def nonzero():
    ember.compile(lambda x: x.nonzero())(torch.randn(3))


@row(ember.CaptureError, r"^Tensor\.__getitem__ \(aten\.index\.Tensor\) is data-dependent", "x[x > 0]")
def boolean_mask():
    ember.compile(lambda x: x[x > 0])(torch.randn(3))


@row(ember.CaptureError, r"^torch\.tensor_split is data-dependent", "torch.tensor_split(x, i)")
def tensor_split_by_tensor():
    ember.compile(lambda x, i: torch.tensor_split(x, i))(torch.randn(6), torch.tensor([1, 3]))


@row(ember.CaptureError, r"changes the shape or strides of x in place \(t_/transpose_", "ember.compile(f)")
def transpose_input_in_place():
    def f(x):
        x.t_()
        return x
    ember.compile(f)(torch.randn(3, 2))


# -- dtypes eager has no kernel for: eager's error, at the call --------------------------------------------
@row(NotImplementedError, r"not implemented for 'UInt64'", "ember.compile(lambda x: x + 1)")
def uint64_add():
    ember.compile(lambda x: x + 1)(torch.ones(3, dtype=torch.uint64))


@row(NotImplementedError, r"not implemented for 'ComplexHalf'", "ember.compile(torch.exp)")
def complex32_exp():
    ember.compile(torch.exp)(torch.ones(3, dtype=torch.complex32))


@row(torch.linalg.LinAlgError, r"^linalg\.inv: .*singular", "ember.compile(torch.linalg.inv)")
def singular_inverse():
    ember.compile(torch.linalg.inv)(torch.zeros(3, 3))


# -- bad calls: Python's TypeError, ember's ValueError, at the call -----------------------------------------
def _f2(x, y):
    return x + y


@row(TypeError, r"^_f2\(\) missing a required argument: 'y'", "ember.compile(_f2)(torch.randn(3))")
def missing_argument():
    ember.compile(_f2)(torch.randn(3))


@row(TypeError, r"^_f2\(\) too many positional arguments", "ember.compile(_f2)(x, x, x)")
def too_many_arguments():
    x = torch.randn(3)
    ember.compile(_f2)(x, x, x)


@row(TypeError, r"^_f2\(\) got an unexpected keyword argument 'z'", "ember.compile(_f2)(x, x, z=x)")
def unexpected_keyword():
    x = torch.randn(3)
    ember.compile(_f2)(x, x, z=x)


@row(ValueError, r"non-tensor argument n was traced as 2 and is baked into the graph; got 3", "g(torch.randn(3), 3)")
def changed_non_tensor_leaf():
    g = ember.trace(lambda x, n: x * n, torch.randn(3), 2)
    g(torch.randn(3), 3)


@row(ValueError, r"x was traced as a tensor of shape \[3\], torch\.float32 on cpu, got a tensor of shape \[4\]",
     "g(torch.randn(4), torch.randn(4))")
def trace_called_with_other_shape():
    g = ember.trace(_f2, torch.randn(3), torch.randn(3))
    g(torch.randn(4), torch.randn(4))


@row(ValueError, r"y was traced as .*torch\.float32.*got a tensor of shape \[3\], torch\.float64",
     "g(torch.randn(3), torch.randn(3, dtype=torch.float64))")
def trace_called_with_other_dtype():
    g = ember.trace(_f2, torch.randn(3), torch.randn(3))
    g(torch.randn(3), torch.randn(3, dtype=torch.float64))


@row(TypeError, r"^_f2\(\) missing a required argument: 'y'", "g(torch.randn(3))")
def trace_called_with_fewer_arguments():
    g = ember.trace(_f2, torch.randn(3), torch.randn(3))
    g(torch.randn(3))


@row(ValueError, r"^ember: all tensors of a call must be on one device.*\(cpu: x; meta: y\)", "ember.compile(_f2)")
def two_devices():
    ember.compile(_f2)(torch.randn(3), torch.randn(3, device="meta"))


@row(RuntimeError, r"^a leaf Variable that requires grad is being used in an in-place operation", "ember.compile(f)")
def in_place_on_leaf_requiring_grad():
    def f(x):
        x.add_(1)
        return x
    ember.compile(f)(torch.randn(3, requires_grad=True))


@row(ValueError, r"^LazyLinear has uninitialized parameters/buffers of a lazy module \(weight, bias\)",
     "ember.compile(nn.LazyLinear(4))")
def lazy_module():
    ember.compile(nn.LazyLinear(4))(torch.randn(2, 3))


@row(AttributeError, r"'Tensor' object has no attribute 'foo'", "return x.foo")
def attribute_error_in_the_program():
    def f(x):
        return x.foo
    ember.compile(f)(torch.randn(3))


class _MetaLog(logging.Handler):
    """torch's fake-tensor log records (torch's loggers do not propagate to pytest's caplog)."""

    def __enter__(self):
        self.records = []
        logging.getLogger("torch._subclasses.fake_tensor").addHandler(self)
        return self

    def __exit__(self, *exc):
        logging.getLogger("torch._subclasses.fake_tensor").removeHandler(self)

    def emit(self, record):
        if "failed while attempting to run meta" in record.getMessage():
            self.records.append(record)


@pytest.mark.parametrize("name", sorted(ROWS))
def test_error_names_the_cause_and_the_users_line(name):
    run, exc, pattern, snippet = ROWS[name]
    with _MetaLog() as log, pytest.raises(exc) as info:
        run()
    e = info.value
    first = str(e).splitlines()[0]
    assert re.search(pattern, first), first
    m = re.search(r"  at (\S+):(\d+): (.+)$", first)
    assert m, first
    assert m.group(1).endswith("test_errors.py") and snippet in linecache.getline(__file__, int(m.group(2))), first
    assert len(first) <= 200, first
    printed = "".join(traceback.format_exception(e)).splitlines()
    assert len(printed) < 25, "\n".join(printed)
    assert e.__cause__ is None and e.__suppress_context__  # torch's frames only with EMBER_VERBOSE=1
    assert not log.records


def test_enough_rows():
    assert len(ROWS) >= 20


def test_data_dependent_error_points_to_the_dynamo_backend():
    with pytest.raises(ember.CaptureError) as info:
        branch_on_value()
    assert 'torch.compile(model, backend="ember")' in str(info.value)


def test_ember_verbose_chains_torch_and_keeps_its_log(monkeypatch):
    monkeypatch.setenv("EMBER_VERBOSE", "1")
    with _MetaLog() as log, pytest.raises(RuntimeError) as info:
        matmul_shapes()
    assert info.value.__cause__ is not None  # torch's own exception, with its frames
    assert re.search(r"at \S*test_errors\.py:\d+: return x @ y", str(info.value).splitlines()[0])
    assert log.records


def test_the_users_own_exception_is_kept_with_the_users_frames():
    class Refused(Exception):
        pass

    def f(x):
        raise Refused("no")
    with pytest.raises(Refused, match="^no$") as info:
        ember.compile(f)(torch.randn(3))
    printed = "".join(traceback.format_exception(info.value))
    assert 'raise Refused("no")' in printed and len(printed.splitlines()) < 25


def test_internal_errors_pass_through_unchanged(monkeypatch):
    """A bug in ember keeps its type and its frames: it is for a bug report, not for the user's code."""
    import ember.api.static as api

    def broken(*args, **kwargs):
        return {}["missing"]
    monkeypatch.setattr(api, "lower", broken)
    with pytest.raises(KeyError) as info:
        ember.compile(lambda x: x + 1)(torch.randn(3))
    assert any(f.name == "broken" for f in traceback.extract_tb(info.value.__traceback__))


def test_padding_mask_runs_through_the_dynamo_backend():
    m = _PaddedAttention()
    q, mask = torch.randn(2, 4, 8), torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    torch._dynamo.reset()
    out = torch.compile(m, backend="ember")(q, mask)
    torch.testing.assert_close(out, m(q, mask))


# -- ops that crashed inside ember: now run like eager, or raise eager's error ------------------------------

def _spd(n):
    a = torch.randn(n, n)
    return a @ a.T + n * torch.eye(n)


@pytest.mark.parametrize("op", ["inv", "cholesky", "solve"])
def test_linalg_ops_with_error_checks_match_eager(op):
    """Their composite ends in `_linalg_check_errors`, which returns nothing (frontend/void_ops.py)."""
    fn, args = {"inv": (torch.linalg.inv, (_spd(4),)), "cholesky": (torch.linalg.cholesky, (_spd(4),)),
                "solve": (torch.linalg.solve, (_spd(4), torch.randn(4)))}[op]
    cf = assert_matches(fn, *args, externs=tuple(f"aten.{n}.default" for n in (
        "linalg_inv_ex", "linalg_cholesky_ex", "_linalg_solve_ex", "_linalg_check_errors")))
    assert "aten._linalg_check_errors.default" in cf.graphs[0].unsupported()  # the check still runs


def test_linalg_error_checks_still_raise_like_eager():
    bad = -_spd(3)  # not positive definite
    with pytest.raises(torch.linalg.LinAlgError, match="not positive-definite"):
        torch.linalg.cholesky(bad)
    with pytest.raises(torch.linalg.LinAlgError, match="not positive-definite"):
        ember.compile(lambda a: torch.linalg.cholesky(a) * 2)(bad)


@pytest.mark.parametrize("mask", [(False, True, False), (True, False, True), (True, True, False)])
def test_convolution_backward_with_an_output_mask(mask):
    """Masked-off gradients are None: typed as unread placeholders (ir/ops/extern.py)."""
    def f(g, x, w):
        outs = torch.ops.aten.convolution_backward(g, x, w, [3], [1], [0], [1], False, [0], 1, list(mask))
        return tuple(o for o, wanted in zip(outs, mask) if wanted)  # eager may fill masked-off ones
    assert_matches(f, torch.randn(2, 3, 5), torch.randn(2, 2, 7), torch.randn(3, 2, 3),
                   externs=("aten.convolution_backward.default",))


@pytest.mark.parametrize("fn", [lambda x: x.to(torch.uint64), lambda x: (x.to(torch.uint64) & 6).to(torch.int64),
                                lambda x: x.to(torch.complex32).real.float(), lambda x: (x.to(torch.complex32) * 2)])
def test_uint64_and_complex32_values_pass_through(fn):
    assert_matches(fn, torch.randint(0, 9, (5,)).float(), externs=(
        "aten._to_copy.default", "aten.bitwise_and.Scalar", "aten.mul.Tensor", "aten.view_as_real.default",
        "aten.real.default", "aten.select.int", "aten.bitwise_and.Tensor"))


@pytest.mark.parametrize("kw", [dict(mode="sum"), dict(mode="mean"), dict(mode="max"),
                                dict(mode="sum", per_sample_weights=True), dict(mode="mean", include_last_offset=True),
                                dict(mode="max", padding_idx=2)])
def test_embedding_bag_outputs_match_eager(kw):
    kw = dict(kw)
    w, idx = torch.randn(10, 4), torch.tensor([1, 2, 3, 4, 5, 2])
    offsets = torch.tensor([0, 2, 6]) if kw.get("include_last_offset") else torch.tensor([0, 2])
    extra = (torch.randn(6),) if kw.pop("per_sample_weights", False) else ()
    f = lambda w, i, o, *p: F.embedding_bag(i, w, o, per_sample_weights=p[0] if p else None, **kw)  # noqa: E731
    assert_matches(f, w, idx, offsets, *extra, externs=("aten._embedding_bag_forward_only.default",
                                                        "aten._embedding_bag.default"))


def test_ir_of_an_error_names_no_none_values():
    # matrix_exp's gradient was refused here; a torch fallback now differentiates with torch's
    # derivative (tests/test_extern_vjp.py), so the refusal is one torch makes too (igamma's input)
    x = torch.randn(3, 3, requires_grad=True)
    ember.compile(torch.linalg.matrix_exp)(x).sum().backward()
    xr = x.detach().clone().requires_grad_()
    torch.linalg.matrix_exp(xr).sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)
    with pytest.raises(NotImplementedError) as info:
        ember.compile(lambda a: torch.igamma(a.abs() + 1, torch.ones(3, 3)))(x).sum().backward()
    assert "%None" not in str(info.value) and "igamma" in str(info.value)


def test_a_long_cause_moves_whole_sentences_to_the_next_line():
    from ember.frontend.errors import Where, _first_line_with

    where = Where(__file__, 1)
    cause = "a" * 90 + " (b; c) went wrong. " + "d" * 90 + " (e; f)"
    first, second = _first_line_with(cause, where).splitlines()
    assert first.startswith("a" * 90 + " (b; c) went wrong.  at ") and second == "d" * 90 + " (e; f)"
    assert _first_line_with("short (x; y)", where).splitlines()[0].startswith("short (x; y)  at ")
