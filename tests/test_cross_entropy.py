"""One-pass cross-entropy: the target logit read directly (`pick`, ir/ops/cross_entropy.py), the max and
the sum of exponentials in one online sweep (ir/row_sweeps.py), and a backward of one pointwise pass.

Values and gradients against eager in every mode, on rows of 5000 (past ROW_BLOCK_LIMIT: the row kernel
loops over chunks, the online max/sum rescaling between them) and of 3000 (one block); the plan for a
GPU checked structurally (no masked full-row sum, one sweep over the logits, bytes against the
compulsory bytes, from `ember.explain` on meta tensors)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import ember
from ember.api.static import StaticGraph
from ember.passes.autodiff import forward_backward
from ember.passes.cost import compulsory_bytes
from ember.runtime.driver import compile_ir

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
       torch.float16: dict(rtol=4e-3, atol=4e-3)}

MODES = [dict(), dict(reduction="none"), dict(reduction="sum"), dict(ignore_index=1),
         dict(weight=True), dict(weight=True, reduction="sum"), dict(weight=True, reduction="none"),
         dict(label_smoothing=0.1), dict(label_smoothing=0.2, weight=True)]


def _case(n: int, v: int, dtype: torch.dtype, mode: dict):
    x = (torch.randn(n, v) * 3).to(dtype)
    t = torch.randint(0, v, (n,))
    t[1] = -100  # eager's default ignore_index
    kw = dict(mode)
    if kw.get("ignore_index") == 1:
        t[1], t[3] = 1, 1
    if kw.pop("weight", False):
        kw["weight"] = torch.rand(v).to(dtype) + 0.1
    return x, t, kw


@pytest.mark.parametrize("mode", MODES, ids=lambda m: "-".join(f"{k}={v}" for k, v in m.items()) or "mean")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_values_and_gradients_match_eager(dtype, mode):
    x, t, kw = _case(6, 3000 if dtype == torch.float16 else 5000, dtype, mode)
    fn = lambda a, b: F.cross_entropy(a, b, **kw)  # noqa: E731
    xe, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = ember.compile(fn)(xe, t), fn(xr, t)
    ct = torch.randn(want.shape).to(dtype)
    got.backward(ct)
    want.backward(ct)
    torch.testing.assert_close(got, want, **TOL[dtype])
    torch.testing.assert_close(xe.grad, xr.grad, **TOL[dtype])


def test_log_softmax_gather_and_nll_match_eager():
    """The gather moves through log_softmax's ops to the logits: `pick`, not a masked row sum."""
    x, t = torch.randn(5, 3000), torch.randint(0, 3000, (5,))
    fns = [lambda a, b: F.nll_loss(F.log_softmax(a, -1), b),
           lambda a, b: F.log_softmax(a.double(), 1).gather(1, b[:, None]).squeeze(1)]
    for fn in fns:
        xe, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        got, want = ember.compile(fn)(xe, t), fn(xr, t)
        got.sum().backward()
        want.sum().backward()
        torch.testing.assert_close(got, want.to(got.dtype))
        torch.testing.assert_close(xe.grad, xr.grad)
    ops = [n.op for n in ember.trace(fns[0], x, t).graph.nodes]
    assert "pick" in ops and "iota" not in ops, ops


def test_target_out_of_range_raises_like_eager():
    x, t = torch.randn(4, 3000), torch.tensor([0, 3000, 1, 2])
    with pytest.raises(IndexError):
        F.cross_entropy(x, t)
    with pytest.raises(IndexError):
        ember.compile(lambda a, b: F.cross_entropy(a, b))(x, t)


def _plan(n: int, v: int, dtype: torch.dtype, **kw):
    x = torch.empty(n, v, dtype=dtype, device="meta")
    t = torch.empty(n, dtype=torch.long, device="meta")
    with torch.no_grad():
        sg = StaticGraph(lambda a, b: F.cross_entropy(a, b, **kw), (x, t), {})
    part = forward_backward(sg.graph, [0], [0])
    return [compile_ir(g).schedule_for(torch.device("cuda")) for g in (part.forward, part.backward)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_plan_reads_the_logits_once(dtype):
    """N=4096, V=32000 planned for a GPU: the forward's row kernel picks the target logit (no iota,
    no one-hot sum) and its reductions share one sweep (the online max/sum); the backward is one
    pointwise pass over the logits. Bytes: the forward's logits read once plus per-row values, the
    backward's logits read once and the gradient written once (<= 1.1x compulsory)."""
    from ember.ir.row_sweeps import row_sweeps

    fwd, bwd = _plan(4096, 32000, dtype)
    rows = [e for e in fwd.kernels if e.kind == "row" and e.group.shape == (4096, 32000)]
    assert len(rows) == 1 and "pick" in rows[0].ops and "iota" not in rows[0].ops, [e.ops for e in fwd.kernels]
    assert len(row_sweeps(rows[0].group).order) == 1
    assert len(fwd.kernels) == 2  # + the mean over rows, a [4096] row kernel
    big = [e for e in bwd.kernels if e.group.shape == (4096, 32000)]
    assert len(big) == 1 and big[0].kind == "pointwise", [e.ops for e in bwd.kernels]
    logits = 4096 * 32000 * dtype.itemsize
    assert big[0].cost.bytes_read <= 1.01 * logits and big[0].cost.bytes_written == logits
    moved = sum(e.cost.bytes_moved for e in bwd.kernels)
    assert moved <= 1.1 * compulsory_bytes(bwd.graph)


@pytest.mark.parametrize("mode", [dict(), dict(weight=True), dict(label_smoothing=0.1), dict(reduction="none")],
                         ids=["mean", "weight", "label_smoothing", "none"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_explain_forward_bytes_within_compulsory(dtype, mode):
    """`ember.explain(..., target="h100")` on meta tensors: the logits read once (<= 1.1x compulsory:
    logits + targets (+ weight) + the output). Label smoothing's row sum of log-probabilities is
    moved out of the shifts (passes/simplify.py `_shifts_out_of_sum`) in float32; in a half type
    it sums the rounded log-probabilities, as eager does, so it needs the max and the sum first: a
    second sweep (2x)."""
    n, v = 4096, 32000
    args = [torch.empty(n, v, dtype=dtype, device="meta"), torch.empty(n, dtype=torch.long, device="meta")]
    kw = dict(mode)
    if kw.pop("weight", False):
        args.append(torch.empty(v, dtype=dtype, device="meta"))
        report = ember.explain(lambda a, b, w: F.cross_entropy(a, b, weight=w, **kw), *args, target="h100")
    else:
        report = ember.explain(lambda a, b: F.cross_entropy(a, b, **kw), *args, target="h100")
    moved = sum(k.bytes_read + k.bytes_written for k in report.kernels)
    passes = 2 if dtype != torch.float32 and "label_smoothing" in kw else 1
    assert moved <= 1.1 * passes * report.compulsory_bytes, (moved, report.compulsory_bytes)
    assert moved >= passes * n * v * dtype.itemsize
    assert len(report.kernels) <= 2


def test_small_rows_one_kernel_each_way():
    """Rows that fit one program: the loss (mean, ignore_index) is one kernel forward, one backward."""
    fwd, bwd = _plan(8, 32, torch.float32)
    assert len(fwd.kernels) == 1 and len(bwd.kernels) == 1, ([e.ops for e in fwd.kernels], [e.ops for e in bwd.kernels])


@pytest.mark.parametrize("shape", [(4, 5000, 3), (4, 7, 3, 2), (7,)], ids=["k-dim-looped", "k-dim", "unbatched"])
def test_class_dim_in_the_middle_and_unbatched(shape):
    """Targets [N, d...] over logits [N, C, d...] (the class dim not last: rows are strided) and a
    single unbatched sample: the target logit is still picked directly."""
    x = torch.randn(*shape)
    t = torch.randint(0, shape[1] if len(shape) > 1 else shape[0], shape[:1] + shape[2:] if len(shape) > 1 else ())
    for kw in (dict(), dict(reduction="none"), dict(label_smoothing=0.1)):
        fn = lambda a, b: F.cross_entropy(a, b, **kw)  # noqa: E731
        xe, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        got, want = ember.compile(fn)(xe, t), fn(xr, t)
        got.sum().backward()
        want.sum().backward()
        torch.testing.assert_close(got, want, **TOL[torch.float32])
        torch.testing.assert_close(xe.grad, xr.grad, **TOL[torch.float32])
        assert "pick" in [n.op for n in ember.trace(fn, x, t).graph.nodes]


@pytest.mark.parametrize("shape", [(8, 1, 1), (3, 1, 2), (1, 1, 1)])
def test_one_class_along_a_middle_dim(shape):
    """Found by benchmarks/fuzz.py (finding 5 in the fuzz notes): with one class along dim 1 the row
    dims have size 1, so the keepdim row (the target index, the log-probabilities reshaped) has the
    row group's shape and is a tile to the row emitter: the fused reshape and `pick`'s index used to
    fail with "row value ... used before its definition"."""
    x, target = torch.randn(shape), torch.zeros(shape[:1] + shape[2:], dtype=torch.long)

    def f(x, target):
        return (F.nll_loss(torch.log_softmax(x, 1), target, reduction="none"),
                F.cross_entropy(x, target, label_smoothing=0.1))

    for got, want in zip(ember.compile(f)(x, target), f(x, target)):
        torch.testing.assert_close(got, want)


def test_one_class_target_out_of_range_raises():
    """Found by benchmarks/fuzz.py (finding 8 in the fuzz notes): with one class the target logit is
    the row itself, so the checked target was never read and its check was dead code: ember
    returned a loss where eager raises."""
    x = torch.randn(3, 1)
    for t in (torch.tensor([0, 1, 0]), torch.tensor([0, 0, -1])):
        for fn in (F.cross_entropy, F.nll_loss, ember.compile(F.cross_entropy), ember.compile(F.nll_loss)):
            with pytest.raises(IndexError):
                fn(x, t)
    with pytest.raises(RuntimeError):
        ember.compile(lambda x: torch.gather(x > 0, 1, torch.tensor([[0], [1], [0]])))(x)
    t = torch.zeros(3, dtype=torch.long)
    torch.testing.assert_close(ember.compile(F.cross_entropy)(x, t), F.cross_entropy(x, t))
