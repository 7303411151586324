"""cumsum / cumprod / logcumsumexp as native scan kernels (ir/ops/scan.py, codegen/scan.py, frontend/lower_scan.py):
values against eager on fresh random inputs (dtypes, every dim incl. negative ones, rows longer than
one block, non-contiguous inputs), gradients through ember.compile + backward (cumprod with zeros:
torch's exact rule), one launch per scan, no torch call. float32 scans accumulate in float64 as
torch's CPU kernels do, so they agree with eager to an ulp of the result."""

from __future__ import annotations

import pytest
import torch
from test_norm_pool import check

import ember
from ember.codegen.scan import SCAN_BLOCK
from ember.ir.kernel_group import ROW_BLOCK_LIMIT

F16, BF16, F32, F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
EPS = {F16: 2.0**-11, BF16: 2.0**-8, F32: 2.0**-24, F64: 2.0**-53}


def _sample(shape, dtype, op):
    if not dtype.is_floating_point:
        low = 0 if dtype in (torch.uint8, torch.bool) else -3
        return torch.randint(low, 2 if dtype == torch.bool else 4, shape).to(dtype)
    if op is torch.cumprod:  # factors near 1: long products stay finite
        return (1 + 0.05 * torch.randn(shape, dtype=F64)).to(dtype)
    return torch.randn(shape, dtype=F64).to(dtype)


def _check_values(got: torch.Tensor, want: torch.Tensor, x: torch.Tensor, op, dim: int) -> None:
    """Integers exactly. Floats: ember and torch sum in different orders (a tree per block against a
    loop), so both are compared with the float64 scan: each output within a few rounding errors of the
    running sum of |terms| (cumsum) or of the product (cumprod, relative), plus one rounding of the
    result (half a subnormal's spacing below the normal range); ember's error no larger than that bound."""
    assert got.dtype == want.dtype and got.shape == want.shape
    if not want.dtype.is_floating_point:
        assert torch.equal(got, want)
        return
    exact = op(x.double(), dim)
    eps = EPS[want.dtype]
    n = x.shape[dim] if x.dim() else 1
    if op is torch.cumsum:
        scale = torch.cumsum(x.double().abs(), dim)
    else:
        scale = exact.abs()
    info = torch.finfo(want.dtype)
    bound = 4 * n * EPS[F32 if want.dtype in (F16, BF16) else want.dtype] * scale + eps * exact.abs() \
        + info.smallest_normal * info.eps / 2
    assert ((got.double() - exact).abs() <= bound).all(), (got.double() - exact).abs().max()
    assert ((want.double() - exact).abs() <= bound).all(), "the bound does not hold for torch itself"


def _kernels(fn, *args) -> int:
    sg = ember.trace(fn, *args)
    assert not sg.externs, sg.externs
    return sg.num_kernels


@pytest.mark.parametrize("op", [torch.cumsum, torch.cumprod])
@pytest.mark.parametrize("dtype", [F32, F64, F16, BF16, torch.int32, torch.int64, torch.uint8, torch.bool])
def test_matches_eager_on_every_dim(op, dtype):
    x = _sample((3, 4, 5), dtype, op)
    for dim in (0, 1, 2, -1, -3):
        fn = lambda t, dim=dim: op(t, dim)
        got, want = ember.compile(fn)(x), fn(x)
        _check_values(got, want, x, op, dim)


@pytest.mark.parametrize("op", [torch.cumsum, torch.cumprod])
def test_rows_longer_than_one_block_carry_the_prefix(op):
    """Rows a row kernel cannot hold run on the scan kernel, block by block."""
    n = ROW_BLOCK_LIMIT + SCAN_BLOCK + 37  # six blocks, the last partial
    for dtype in (F32, F16, torch.int64):
        x = _sample((2, n), dtype, op)
        got, want = ember.compile(lambda t: op(t, 1))(x), op(x, 1)
        _check_values(got, want, x, op, 1)
    x = torch.randint(0, 2, (n,), dtype=torch.bool)
    assert torch.equal(ember.compile(lambda t: torch.cumsum(t, 0))(x), torch.cumsum(x, 0))


@pytest.mark.parametrize("op", [torch.cumsum, torch.cumprod])
def test_non_contiguous_inputs(op):
    base = _sample((6, 5, 4), F32, op)
    for x in (base.transpose(0, 2), base[::2, :, 1:], base.flip(1), base.expand(2, 6, 5, 4)[:, :, 1]):
        for dim in range(x.dim()):
            fn = lambda t, dim=dim: op(t, dim)
            _check_values(ember.compile(fn)(x), fn(x), x, op, dim)


def test_dtype_argument_and_promotion():
    x = torch.randint(-3, 4, (4, 6), dtype=torch.int32)
    for fn in (lambda t: torch.cumsum(t, 1, dtype=F64), lambda t: torch.cumprod(t, 0, dtype=F32),
               lambda t: torch.cumsum(t, 1, dtype=torch.int16), lambda t: t.cumsum(-1) + 1):
        got, want = ember.compile(fn)(x), fn(x)
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    y = torch.randn(4, 6, dtype=F16)
    got, want = ember.compile(lambda t: torch.cumsum(t, 1, dtype=F32))(y), torch.cumsum(y, 1, dtype=F32)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_zero_dim_and_size_one():
    for x in (torch.tensor(2.5), torch.randn(3, 1), torch.randn(1, 4)):
        for op in (torch.cumsum, torch.cumprod):
            xa = x.clone().requires_grad_()
            out = ember.compile(lambda t, op=op: op(t, -1))(xa)
            torch.testing.assert_close(out, op(x, -1))
            ct = torch.randn_like(out)
            (g,) = torch.autograd.grad(out, [xa], ct)
            xb = x.clone().requires_grad_()
            (w,) = torch.autograd.grad(op(xb, -1), [xb], ct)
            torch.testing.assert_close(g, w)


def test_one_kernel_per_scan():
    x = torch.randn(4, 8)
    assert _kernels(lambda t: torch.cumsum(t, 1), x) == 1
    assert _kernels(lambda t: torch.cumprod(t, 0), x) == 1
    assert _kernels(lambda t: torch.cumsum(t.t(), 1), x) == 1  # a transposed view: read through strides


FUSED = {  # rows that fit a row kernel: the scan is a tile op, with prologue, epilogue and reductions
    "mask_count": lambda t: (t > 0).cumsum(1),
    "prologue_epilogue": lambda t: (torch.cumsum(t * 2, -1) / 3).exp(),
    "middle_dim_bias": lambda t: torch.cumprod(1 + 0.1 * t, 1) + t[0, 0],  # a broadcast (5,) view
    "softmax_then_cumsum": lambda t: torch.softmax(t, -1).cumsum(-1),  # top-p sampling's cumulative probs
    "cumsum_over_sum": lambda t: t.exp().cumsum(1) / t.exp().sum(1, keepdim=True),
    "logcumsumexp_scaled": lambda t: torch.logcumsumexp(t * 3, 1) - 1,
    "half": lambda t: torch.cumsum(t.half() * 3, 1).float(),
}


@pytest.mark.parametrize("name", sorted(FUSED))
def test_scan_fuses_with_its_prologue_and_epilogue(name):
    fn = FUSED[name]
    x = torch.randn(3, 6, 5)
    assert _kernels(fn, x) == 1
    got, want = ember.compile(fn)(x), fn(x)
    assert got.dtype == want.dtype
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_long_rows_keep_the_scan_kernel():
    """Past a row kernel's block the scan runs alone (2 kernels with a prologue), still right."""
    x = torch.randn(2, ROW_BLOCK_LIMIT + 100)
    fn = lambda t: torch.cumsum(t * 2, 1)
    assert _kernels(fn, x) == 2
    _check_values(ember.compile(fn)(x), fn(x), x * 2, torch.cumsum, 1)


def _grads(fn, x, ct):
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, want = ember.compile(fn)(xa), fn(xb)
    (g,) = torch.autograd.grad(out, [xa], ct)
    (w,) = torch.autograd.grad(want, [xb], ct)
    return out, want, g, w


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cumsum_gradient(dtype, dim):
    x = torch.randn(5, 7, dtype=dtype)
    out, want, g, w = _grads(lambda t: torch.cumsum(t, dim), x, torch.randn(5, 7, dtype=dtype))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == F32 else dict(rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(out, want, **tol)
    torch.testing.assert_close(g, w, **tol)


@pytest.mark.parametrize("dtype", [F32, F64])
@pytest.mark.parametrize("dim", [1, 0, -1])
def test_cumprod_gradient_with_zeros_is_exact(dtype, dim):
    """Rows with no zero, one zero, two zeros (the second after the first), a zero first and last:
    torch's cumprod_backward, never a division by a zero factor."""
    x = torch.randn(6, 7, dtype=F64) * 1.5
    x[1, 3] = 0
    x[2, 1] = x[2, 5] = 0
    x[3, 0] = 0
    x[4, 6] = 0
    x[5, 2] = x[5, 3] = 0
    x = x.to(dtype) if dim != 0 else x.t().contiguous().to(dtype)
    ct = torch.randn(x.shape, dtype=dtype)
    out, want, g, w = _grads(lambda t: torch.cumprod(t, dim), x, ct)
    assert torch.isfinite(g).all()
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == F32 else dict(rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(out, want, **tol)
    torch.testing.assert_close(g, w, **tol)
    # and the float64 gradient by definition: d y_k / d x_i = prod_{j <= k, j != i} x_j
    if dtype == F64:
        xd = x if dim != 0 else x.t()
        ctd = ct if dim != 0 else ct.t()
        ref = torch.zeros_like(xd)
        for i in range(xd.shape[1]):
            others = xd.clone()
            others[:, i] = 1
            ref[:, i] = (torch.cumprod(others, 1) * ctd)[:, i:].sum(1)
        torch.testing.assert_close(g if dim != 0 else g.t(), ref, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("dtype", [F16, BF16])
def test_half_gradients(dtype):
    x = (1 + 0.1 * torch.randn(4, 9)).to(dtype)
    x[1, 4] = 0
    ct = torch.randn(4, 9).to(dtype)
    for op in (torch.cumsum, torch.cumprod):
        out, want, g, w = _grads(lambda t, op=op: op(t, 1), x, ct)
        tol = dict(rtol=4e-3, atol=4e-3) if dtype == F16 else dict(rtol=3e-2, atol=3e-2)
        torch.testing.assert_close(out, want, **tol)
        torch.testing.assert_close(g, w, **tol)


def test_scan_inside_a_larger_program():
    """A scan inside a larger program (normalized cumulative sum): forward and gradients."""
    x, w = torch.randn(3, 10), torch.randn(10)
    fn = lambda x, w: (torch.cumsum(x * w, 1) / torch.arange(1, 11)).tanh().sum()
    xa, wa, xb, wb = (t.clone().requires_grad_() for t in (x, w, x, w))
    out, want = ember.compile(fn)(xa, wa), fn(xb, wb)
    out.backward()
    want.backward()
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(wa.grad, wb.grad, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [F32, F64, F16, BF16])
def test_logcumsumexp_matches_eager(dtype):
    """Large magnitudes (no overflow), every dim, rows of several blocks; within an ulp of eager (the
    same float64 / float32 accumulation, another order)."""
    x = (torch.randn(3, 5, 4, dtype=F64) * 30).to(dtype)
    tol = {F32: dict(rtol=2e-6, atol=1e-5), F64: dict(rtol=1e-13, atol=1e-12),
           F16: dict(rtol=1e-3, atol=1e-3), BF16: dict(rtol=8e-3, atol=8e-3)}[dtype]
    for dim in (0, 1, 2, -1):
        fn = lambda t, dim=dim: torch.logcumsumexp(t, dim)
        got, want = ember.compile(fn)(x), fn(x)
        assert got.dtype == want.dtype
        torch.testing.assert_close(got, want, **tol)
    if dtype == F32:  # rows past a row kernel's block: the scan kernel's carried prefix (-inf first)
        y = (torch.randn(2, ROW_BLOCK_LIMIT + 300, dtype=F64) * 3).to(dtype)
        torch.testing.assert_close(ember.compile(lambda t: torch.logcumsumexp(t, 1))(y), torch.logcumsumexp(y, 1),
                                   **tol)


def test_logcumsumexp_infinities_and_nan_follow_torch():
    inf, nan = float("inf"), float("nan")
    x = torch.tensor([[-inf, 1.0, nan, 2.0], [inf, 1.0, inf, -inf], [-inf, -inf, -inf, -inf], [3.0, -inf, 2.0, inf],
                      [-inf, -inf, 0.5, -inf]])
    got = ember.compile(lambda t: torch.logcumsumexp(t, 1))(x)
    torch.testing.assert_close(got, torch.logcumsumexp(x, 1), equal_nan=True)
    assert _kernels(lambda t: torch.logcumsumexp(t, 1), x) == 1


@pytest.mark.parametrize("dtype", [F32, F64])
def test_logcumsumexp_gradient(dtype):
    x = torch.randn(4, 9, dtype=dtype) * 4
    ct = torch.randn(4, 9, dtype=dtype)
    ct[0] = ct[0].abs()  # one row of one sign: the other part is log 0
    for dim in (1, 0):
        out, want, g, w = _grads(lambda t, dim=dim: torch.logcumsumexp(t, dim), x, ct)
        tol = dict(rtol=1e-5, atol=1e-5) if dtype == F32 else dict(rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out, want, **tol)
        torch.testing.assert_close(g, w, **tol)


def test_logcumsumexp_of_integers_is_refused_as_eager():
    x = torch.arange(4)
    with pytest.raises(RuntimeError, match="not implemented for 'Long'"):
        torch.logcumsumexp(x, 0)
    with pytest.raises(RuntimeError, match="not implemented for 'Long'"):
        ember.compile(lambda t: torch.logcumsumexp(t, 0))(x)


@pytest.mark.parametrize("mode", ["dynamo", "eager"])
def test_other_modes(mode):
    """The Dynamo backend (AOTAutograd's backward graph: torch's cumprod_backward decomposed) and
    ember.eager() (each aten op alone) run the same kernels."""
    x = torch.randn(3, 7)
    x[1, 2] = x[2, 0] = 0
    check(lambda t: torch.cumprod(t, 1) + torch.cumsum(t, 0), x, mode=mode)
    check(lambda t: torch.logcumsumexp(t * 2, 1), x, mode=mode)


def test_int64_indexing_variant(monkeypatch):
    """Past 2**31 elements kernels index in int64 (runtime/plan.py); forced here on small inputs."""
    monkeypatch.setattr("ember.runtime.plan.INT32_LIMIT", 10)
    for n, fns in ((9, (lambda t: torch.cumsum(t.t(), 0), lambda t: torch.logcumsumexp(t, 1))),
                   (ROW_BLOCK_LIMIT + 40, (lambda t: torch.cumsum(t, 1),))):  # a row kernel's tile op, a scan kernel
        x = torch.randn(3, n)
        for fn in fns:
            sg = ember.trace(fn, x)
            assert all("tl.int64" in s.source for s in sg.compiled.plan.launches)
            torch.testing.assert_close(sg(x), fn(x), rtol=1e-6, atol=1e-5)


COMPOSED = {  # scans inside larger row groups (reductions over the same rows, a flip, a loss), float64
    "loss": (lambda t: torch.cumsum(t, 1).pow(2).mean(), (3, 8)),
    "centered": (lambda t: (t - t.mean(1, keepdim=True)).cumsum(1), (4, 9)),
    "two_scans": (lambda t: t.cumsum(1) * t.cumprod(1) + torch.logcumsumexp(t, 1), (3, 7)),
    "dim0_normalized": (lambda t: torch.cumsum(t.exp(), 0) / t.exp().sum(0, keepdim=True), (4, 3, 5)),
    "reversed": (lambda t: t.flip(1).cumsum(1).flip(1) * 2, (3, 8)),
    "middle_minus_max": (lambda t: t.cumsum(1) - t.amax(1)[:, None, :], (2, 6, 4)),
}


@pytest.mark.parametrize("name", sorted(COMPOSED))
def test_composed_values_and_gradients(name):
    fn, shape = COMPOSED[name]
    x = torch.randn(shape, dtype=F64)
    out, want, g, w = _grads(fn, x, torch.randn(fn(x).shape, dtype=F64))
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


# -- cummax / cummin -------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", [torch.cummax, torch.cummin])
@pytest.mark.parametrize("dtype", [F32, BF16, torch.int32, torch.bool] + [
    pytest.param(d, marks=pytest.mark.slow) for d in (F16, F64, torch.uint8)])
def test_cummax_cummin_values_and_indices_are_eager_bit_for_bit(op, dtype):
    """Small integers (many ties: the latest index wins), every dim, a non-contiguous input, rows of
    several scan-kernel blocks; one kernel for values and indices together."""
    low = 0 if dtype in (torch.uint8, torch.bool) else -3
    x = torch.randint(low, 2 if dtype == torch.bool else 4, (4, 3, 6)).to(dtype)
    for t, dims in ((x, (0, 1, -1)), (x.transpose(0, 2), (1,))):
        for dim in dims:
            got, want = ember.compile(lambda t, dim=dim: op(t, dim))(t), op(t, dim)
            assert torch.equal(got[0], want.values) and torch.equal(got[1], want.indices)
    assert _kernels(lambda t: op(t, 1), x) == 1
    if dtype == torch.int32:  # the scan kernel's carried (value, index)
        y = torch.randint(low, 4, (2, ROW_BLOCK_LIMIT + 50)).to(dtype)
        got, want = ember.compile(lambda t: op(t, 1))(y), op(y, 1)
        assert torch.equal(got[0], want.values) and torch.equal(got[1], want.indices)


def test_cummax_nan_and_infinities_follow_torch():
    nan, inf = float("nan"), float("inf")
    x = torch.tensor([[1.0, nan, 3.0, nan, 0.0], [-inf, -inf, 1.0, 1.0, inf], [2.0, 2.0, nan, 5.0, 5.0]])
    for op in (torch.cummax, torch.cummin):
        got, want = ember.compile(lambda t, op=op: op(t, 1))(x), op(x, 1)
        torch.testing.assert_close(got[0], want.values, equal_nan=True, rtol=0, atol=0)
        assert torch.equal(got[1], want.indices)


@pytest.mark.parametrize("op", [torch.cummax, torch.cummin])
def test_cummax_cummin_gradient(op):
    """The cotangent goes to the index each value came from (ties: the latest), as torch's."""
    x = torch.randint(-3, 4, (4, 9)).double()
    for dim in (1, 0):
        out, want, g, w = _grads(lambda t, dim=dim: op(t, dim).values * 2, x, torch.randn(4, 9, dtype=F64))
        torch.testing.assert_close(out, want, rtol=0, atol=0)
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)
