"""GroupNorm / InstanceNorm as one row kernel, and pooling whose windows tile the input as row
reductions (frontend/decompositions.py `_native_group_norm`, frontend/lower_pool.py): forward and
gradients against eager PyTorch through `ember.compile`, the Dynamo backend and `ember.eager()`,
kernel counts from the schedule, and max pooling's gradient going to the one element torch records
(first maximum; last NaN) when a window holds ties."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ember

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Forward: half types round once after float32 math, as torch's kernels; a rounding boundary may
# still fall differently (float32 sums in another order): one ulp of the dtype. Gradients chain
# several rounded ops in eager's backward, so a few ulps.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=1e-3, atol=1e-3),
       torch.bfloat16: dict(rtol=8e-3, atol=8e-3)}
GRAD_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float16: dict(rtol=4e-3, atol=4e-3),
            torch.bfloat16: dict(rtol=3e-2, atol=3e-2)}


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(t.is_floating_point())


def check(fn, *args, dtype=torch.float32, mode="compile", equal_nan=False):
    """fn through ember (`mode`) and eagerly on copies of `args`: outputs, then the gradients of every
    floating input for a random cotangent of every floating output."""
    ours, ref = [_leaf(a) for a in args], [_leaf(a) for a in args]
    if mode == "compile":
        out = ember.compile(fn)(*ours)
    elif mode == "dynamo":
        torch._dynamo.reset()
        out = torch.compile(fn, backend="ember")(*ours)
    else:
        with ember.eager():
            out = fn(*ours)
    want = fn(*ref)
    out, want = (o if isinstance(o, tuple) else (o,) for o in (out, want))
    for i, (o, w) in enumerate(zip(out, want)):
        assert o.dtype == w.dtype and o.shape == w.shape
        try:
            torch.testing.assert_close(o, w, equal_nan=equal_nan, **TOL.get(w.dtype, {}))
        except AssertionError:
            if dtype == torch.float32:
                raise
            # torch's half-precision composites round intermediates (instance_norm rounds the normalized
            # value before its affine step: up to ~100 bfloat16 ulps off float64, measured); ember rounds
            # once. Then ember must be as close as torch to the float64 result of the same inputs.
            wide = fn(*[a.detach().double() if a.is_floating_point() else a for a in args])
            wide = (wide if isinstance(wide, tuple) else (wide,))[i]
            err, torch_err = ((t.double() - wide).abs().max().item() for t in (o, w))
            assert err <= torch_err, f"output {i}: off the float64 result by {err:.3g}, torch by {torch_err:.3g}"
    pairs = [(o, w) for o, w in zip(out, want) if w.requires_grad]
    cots = [torch.randn_like(w) for _, w in pairs]
    if mode == "eager":
        with ember.eager():
            grads = torch.autograd.grad([o for o, _ in pairs], ours, cots, allow_unused=True)
    else:
        grads = torch.autograd.grad([o for o, _ in pairs], ours, cots, allow_unused=True)
    wants = torch.autograd.grad([w for _, w in pairs], ref, cots, allow_unused=True)
    exact = None
    for i, (g, w) in enumerate(zip(grads, wants)):
        try:
            torch.testing.assert_close(g, w, equal_nan=equal_nan, msg=lambda m, i=i: f"gradient {i}: {m}",
                                       **GRAD_TOL[dtype])
        except AssertionError:
            if dtype == torch.float32:
                raise
            # torch's half-precision backward kernels read statistics saved in the half dtype (group
            # norm's mean and rstd): where they cancel, torch is the one off. Then ember must be as
            # close as torch to the float64 gradient of the same inputs and cotangents.
            exact = _float64_grads(fn, args, pairs, cots) if exact is None else exact
            err, torch_err = ((t.double() - exact[i]).abs().max().item() for t in (g, w))
            assert err <= torch_err, f"gradient {i}: off the float64 gradient by {err:.3g}, torch by {torch_err:.3g}"


def _float64_grads(fn, args, pairs, cots) -> list[torch.Tensor]:
    wide = [a.detach().double().requires_grad_() if a.is_floating_point() else a for a in args]
    out = fn(*wide)
    out = [o for o in (out if isinstance(out, tuple) else (out,)) if o.requires_grad]
    return torch.autograd.grad(out, wide, [c.double() for c in cots], allow_unused=True)


def kernels(fn, *args) -> int:
    sg = ember.trace(fn, *args)
    assert not sg.externs, sg.externs
    return sg.num_kernels


# -- group norm / instance norm ---------------------------------------------------------------------


def test_group_norm_forward_is_one_kernel():
    # before: 5 launches (torch's decomposition flattens per-channel scale and shift with as_strided,
    # two externs); eager runs 1
    x = torch.randn(2, 8, 4, 4)
    assert kernels(nn.GroupNorm(2, 8), x) == 1
    assert kernels(nn.GroupNorm(4, 8, affine=False), x) == 1
    assert kernels(lambda x: F.instance_norm(x), x) == 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,groups", [((2, 8, 4, 4), 2), ((3, 6, 5), 3), ((4, 6), 2), ((2, 4, 2, 3, 2), 4)])
def test_group_norm_matches_eager(dtype, shape, groups):
    c = shape[1]
    x = torch.randn(*shape, dtype=dtype) * 3 + 1
    w, b = torch.randn(c, dtype=dtype), torch.randn(c, dtype=dtype)
    check(lambda x, w, b: F.group_norm(x, groups, w, b, eps=1e-5), x, w, b, dtype=dtype)
    check(lambda x: F.group_norm(x, groups), x, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_group_norm_statistics_match_eager(dtype):
    # mean and rstd are what torch's backward reads (the Dynamo backend hands them to it): (N, G),
    # the input dtype, or float32 when a half input has float32 parameters (torch's mixed-type kernel)
    x, w, b = torch.randn(2, 6, 3, 3, dtype=dtype), torch.randn(6), torch.randn(6)
    f = lambda x, w, b: torch.ops.aten.native_group_norm(x, w, b, 2, 6, 9, 3, 1e-5)  # noqa: E731
    check(f, x, w, b, dtype=dtype)
    check(lambda x, w: torch.ops.aten.native_group_norm(x, w, None, 2, 6, 9, 3, 1e-5), x, w.to(dtype), dtype=dtype)


def test_instance_norm_matches_eager():
    x = torch.randn(2, 4, 5, 3)
    check(lambda x: F.instance_norm(x), x)
    w, b = torch.randn(4), torch.randn(4)
    check(lambda x, w, b: F.instance_norm(x, weight=w, bias=b), x, w, b)


@pytest.mark.parametrize("mode", ["dynamo", "eager"])
def test_group_norm_other_modes(mode):
    x, w, b = torch.randn(2, 8, 3, 3), torch.randn(8), torch.randn(8)
    check(lambda x, w, b: F.group_norm(x, 4, w, b), x, w, b, mode=mode)


# -- pooling --------------------------------------------------------------------------------------------


def test_tiled_pooling_forward_is_one_kernel():
    # before: each an extern (a torch call)
    x = torch.randn(2, 3, 6, 8)
    assert kernels(nn.AvgPool2d(2), x) == 1
    assert kernels(nn.AdaptiveAvgPool2d((3, 2)), x) == 1
    assert kernels(nn.MaxPool2d(2), x) == 1
    assert kernels(nn.MaxPool2d((3, 2)), x) == 1
    assert kernels(lambda x: F.max_pool2d(x, 2, return_indices=True), x) == 1


POOLS = {
    "avg2": lambda x: F.avg_pool2d(x, 2),
    "avg_rect_floor": lambda x: F.avg_pool2d(x, (2, 3)),              # 5x7 input: a remainder is dropped
    "avg_divisor": lambda x: F.avg_pool2d(x, 2, divisor_override=3),
    "avg_ceil_exact": lambda x: F.avg_pool2d(x, (1, 2), ceil_mode=True, count_include_pad=False),
    "adaptive": lambda x: F.adaptive_avg_pool2d(x, (2, 3)),
    "adaptive_global": lambda x: F.adaptive_avg_pool2d(x, 1),
    "max2": lambda x: F.max_pool2d(x, 2),
    "max_rect_floor": lambda x: F.max_pool2d(x, (3, 2)),
    "max_indices": lambda x: F.max_pool2d(x, 2, return_indices=True),
    "avg1d": lambda x: F.avg_pool1d(x.flatten(2), 3),
    "avg3d": lambda x: F.avg_pool3d(x.unsqueeze(2).expand(-1, -1, 2, -1, -1), (2, 1, 2)),
    "max3d": lambda x: F.max_pool3d(x.unsqueeze(2).expand(-1, -1, 2, -1, -1), (2, 1, 2), return_indices=True),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", POOLS)
def test_pooling_matches_eager(name, dtype):
    shape = (2, 3, 5, 7) if "floor" in name else (2, 3, 4, 6)
    x = torch.randn(*shape, dtype=dtype)
    if name == "avg3d" and dtype != torch.float32:  # torch has no CPU kernel: ember raises eager's error
        with pytest.raises(NotImplementedError, match="avg_pool3d"):
            ember.compile(POOLS[name])(x)
        return
    check(POOLS[name], x, dtype=dtype)
    if "3d" not in name and "1d" not in name:
        check(POOLS[name], x[0], dtype=dtype)  # unbatched (C, H, W)


@pytest.mark.parametrize("mode", ["dynamo", "eager"])
@pytest.mark.parametrize("name", ["avg_rect_floor", "adaptive", "max_rect_floor"])
def test_pooling_other_modes(name, mode):
    # the backward ops (avg_pool2d_backward, _adaptive_avg_pool2d_backward,
    # max_pool2d_with_indices_backward) run on ember here, lowered from the forward's indices
    check(POOLS[name], torch.randn(2, 3, 5, 7), mode=mode)


def test_pooling_that_does_not_tile_takes_the_window_ops():
    # overlapping, padded or partial windows, adaptive windows of unequal sizes: the window ops
    # (ir/ops/window.py, tests/test_window.py)
    x = torch.randn(2, 3, 6, 6)
    for fn, op in ((lambda x: F.max_pool2d(x, 3, 2, padding=1), "max_pool"),
                   (lambda x: F.avg_pool2d(x, 3, 1), "avg_pool"),
                   (lambda x: F.avg_pool2d(x, 2, ceil_mode=True), "sum"),  # 6 = 3 windows of 2: tiled
                   (lambda x: F.adaptive_avg_pool2d(x, 4), "adaptive_avg_pool")):
        sg = ember.trace(fn, x)
        assert not sg.externs, sg.externs
        assert op in [n.op for n in sg.graph.nodes]
        torch.testing.assert_close(sg(x), fn(x))
    x = torch.randn(2, 3, 5, 5)  # ceil_mode's partial last window
    assert not ember.trace(lambda x: F.avg_pool2d(x, 2, ceil_mode=True), x).externs


# -- max pooling: ties and NaN ----------------------------------------------------------------------------


def _tied(dtype=torch.float32) -> torch.Tensor:
    """Windows of ties: ReLU zeros, repeated maxima, all -inf, and a window of all-equal values."""
    x = F.relu(torch.randn(2, 3, 6, 8)).round().to(dtype)  # values 0, 1, 2, 3: ties everywhere
    x[0, 0, :2, :2] = float("-inf")
    x[0, 1, 2:4, 2:4] = 5.0
    windows = x.unflatten(3, (4, 2)).unflatten(2, (3, 2))
    maxima = (windows == windows.amax((3, 5), keepdim=True)).sum((3, 5))
    assert (maxima > 1).sum() > 12  # most windows hold ties
    return x


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["compile", "dynamo", "eager"])
def test_max_pool_gives_the_gradient_to_torchs_index(dtype, mode):
    # The IR's amax VJP would split a window's gradient among its ties: torch gives it all to the
    # first maximum. Exact comparison: each input's gradient is one cotangent or 0.
    x = _tied(dtype)
    check(lambda x: F.max_pool2d(x, 2, return_indices=True), x, dtype=dtype, mode=mode)
    g = torch.randn(2, 3, 3, 4, dtype=dtype)
    xe, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    F.max_pool2d(xe, 2).backward(g)
    if mode == "eager":
        with ember.eager():
            F.max_pool2d(xo, 2).backward(g)
    else:
        torch._dynamo.reset()
        fo = ember.compile(F.max_pool2d) if mode == "compile" else torch.compile(F.max_pool2d, backend="ember")
        fo(xo, 2).backward(g)
    assert torch.equal(xo.grad, xe.grad)
    assert (xo.grad != 0).sum() == g.numel()  # one element per window


def test_max_pool_nan_follows_torch():
    # a window with NaN gives NaN, recorded at its last NaN (torch's `val > max || isnan(val)`)
    x = torch.randn(1, 2, 4, 4)
    x[0, 0, 0, 0] = x[0, 0, 1, 1] = float("nan")
    x[0, 1, 2, 3] = float("nan")
    x[0, 1, 0, :2] = float("inf")
    check(lambda x: F.max_pool2d(x, 2, return_indices=True), x, equal_nan=True)
    out, idx = ember.compile(lambda x: F.max_pool2d(x, 2, return_indices=True))(x)
    assert torch.equal(idx, F.max_pool2d(x, 2, return_indices=True)[1])
    assert idx[0, 0, 0, 0] == 5


def test_max_pool_integers():
    x = torch.randint(-3, 3, (2, 3, 4, 6))
    for fn in (lambda x: F.max_pool2d(x, 2, return_indices=True), lambda x: F.max_pool2d(x, (1, 3))):
        sg = ember.trace(fn, x)
        assert not sg.externs
        for o, w in zip(*(r if isinstance(r, tuple) else (r,) for r in (sg(x), fn(x)))):
            assert torch.equal(o, w)


def test_relu_max_pool_group_norm_block():
    # a CNN stage: ReLU -> MaxPool2d -> GroupNorm -> global average pool -> Linear, forward and every
    # gradient (the input's included)
    torch.manual_seed(0)
    m = nn.Sequential(nn.ReLU(), nn.MaxPool2d(2), nn.GroupNorm(2, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(8, 4))
    x = torch.randn(2, 8, 8, 8)
    names = [n for n, _ in m.named_parameters()]
    check(lambda x, *ps: torch.func.functional_call(m, dict(zip(names, ps)), (x,)), x,
          *[p.detach() for p in m.parameters()])
