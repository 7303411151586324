"""Pooling that does not tile its input (overlapping, padded, dilated, ceil_mode windows; adaptive
windows of unequal sizes) and interpolation (nearest, nearest-exact, linear / bilinear / trilinear,
align_corners, explicit scales) as the window ops of ir/ops/window.py: values and gradients against
eager PyTorch on fresh random inputs (ties from ReLU zeros, NaN, -inf), torch's max-pool indices
exactly, kernel counts (one forward kernel, fused with its pointwise neighbours), no externs, and
deterministic gradients. The registry tests (`pytest tests/test_registry.py -k "pool or upsample"`)
check each op's kernel against torch's own kernel (its `impl`) and each VJP against torch.autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_norm_pool import check, kernels
from torch import nn

import ember

r = torch.randn


def _spiky(*shape: int) -> torch.Tensor:
    """Random values with ReLU ties (zeros), a NaN and a -inf window."""
    x = r(*shape).relu()
    x.view(-1)[3] = float("nan")
    x[..., 1:3, 1:3] = float("-inf")
    return x


# -- max pooling -----------------------------------------------------------------------------------

MAX_CASES = [
    dict(kernel_size=3, stride=2, padding=1),                                    # ResNet's stem
    dict(kernel_size=3, stride=1, padding=1),
    dict(kernel_size=(3, 2), stride=(2, 1), padding=(1, 0), dilation=(1, 2), ceil_mode=True),
    dict(kernel_size=2, stride=3, ceil_mode=True),                               # windows skip elements
]


@pytest.mark.parametrize("kw", MAX_CASES)
def test_max_pool2d_values_indices_and_gradients(kw):
    x = _spiky(2, 3, 9, 8)
    check(lambda x: F.max_pool2d(x, return_indices=True, **kw), x, equal_nan=True)
    check(lambda x: F.max_pool2d(x.relu(), **kw), r(2, 3, 9, 8))  # ties: the whole gradient to one element


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_max_pool2d_half(dtype):
    check(lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True), r(2, 3, 7, 7, dtype=dtype), dtype=dtype)


def test_max_pool_1d_3d_and_integers():
    check(lambda x: F.max_pool1d(x, 3, 2, 1, dilation=2, ceil_mode=True, return_indices=True), _spiky(2, 3, 11),
          equal_nan=True)
    check(lambda x: F.max_pool3d(x, (2, 3, 3), (1, 2, 2), (1, 1, 0), return_indices=True), r(2, 2, 4, 5, 6))
    xi = torch.randint(-5, 5, (2, 3, 7, 7))
    torch.testing.assert_close(ember.compile(lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True))(xi),
                               F.max_pool2d(xi, 3, 2, 1, return_indices=True), rtol=0, atol=0)


def test_max_pool_window_of_only_padding_is_minus_inf_at_torchs_index():
    # H = 1, kernel 2, dilation 2, padding 1: both taps of each window fall outside the input; torch
    # gives -inf and the index of the first position right of the padding (past the plane)
    f = lambda x: F.max_pool2d(x, (2, 1), (2, 1), (1, 0), (2, 1), return_indices=True)
    x = r(2, 3, 1, 2)
    for o, w in zip(ember.compile(f)(x), f(x)):
        torch.testing.assert_close(o, w, rtol=0, atol=0)


def test_max_pool_keeps_negative_zero():
    x = torch.full((1, 1, 4, 4), -0.0)
    out = ember.compile(lambda x: F.max_pool2d(x, 3, 1, 1))(x)
    assert torch.equal(out.signbit(), F.max_pool2d(x, 3, 1, 1).signbit())


# -- average pooling -------------------------------------------------------------------------------

AVG_CASES = [
    dict(kernel_size=3, stride=1, padding=1, count_include_pad=False),
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True),                    # partial last window
    dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(1, 1), divisor_override=4),
]


@pytest.mark.parametrize("kw", AVG_CASES)
def test_avg_pool2d_values_and_gradients(kw):
    check(lambda x: F.avg_pool2d(x, **kw), r(2, 3, 8, 7))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_avg_pool2d_half(dtype):
    check(lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False), r(2, 3, 6, 5, dtype=dtype), dtype=dtype)


def test_avg_pool_1d_3d():
    check(lambda x: F.avg_pool1d(x, 3, 2, 1, ceil_mode=True), r(2, 3, 10))
    check(lambda x: F.avg_pool3d(x, 3, (1, 2, 2), 1, count_include_pad=False), r(2, 2, 4, 5, 6))


@pytest.mark.parametrize("size", [(3, 4), (5, 2), 1])
def test_adaptive_avg_pool_of_unequal_windows(size):
    check(lambda x: F.adaptive_avg_pool2d(x, size), r(2, 3, 7, 10))
    check(lambda x: F.adaptive_avg_pool2d(x, size), r(2, 3, 7, 10, dtype=torch.bfloat16), dtype=torch.bfloat16)


def test_adaptive_avg_pool_1d_3d():
    check(lambda x: F.adaptive_avg_pool1d(x, 4), r(2, 3, 11))
    check(lambda x: F.adaptive_avg_pool3d(x, (2, 3, 2)), r(1, 2, 5, 7, 3))


# -- interpolation ---------------------------------------------------------------------------------

INTERP_CASES = [
    dict(scale_factor=2),                                                         # nearest, the shift case
    dict(scale_factor=2.5),                                                       # explicit scale: 1/2.5
    dict(size=(7, 3), mode="nearest-exact"),
    dict(size=(3, 11), mode="nearest"),                                           # down in H, up in W
    dict(scale_factor=(1.11, 2.1)),                  # out == in, out == 2 in: torch uses the scales there
    dict(scale_factor=1.5, mode="bilinear"),
    dict(scale_factor=(1.21, 2.89), mode="bilinear"),  # out == in along H: torch copies, whatever the scale
    dict(size=(7, 9), mode="bilinear", align_corners=True),
    dict(size=(2, 9), mode="bilinear", align_corners=False),
]


@pytest.mark.parametrize("kw", INTERP_CASES)
def test_interpolate2d_values_and_gradients(kw):
    check(lambda x: F.interpolate(x, **kw), r(2, 3, 4, 5))


def test_interpolate_empty_inputs_like_eager():
    """Found by benchmarks/fuzz.py (finding 9 in the fuzz notes): torch's meta for upsample_nearest
    raised TypeError on any input without elements, so ember refused an empty batch eager runs."""
    f = lambda x: (F.interpolate(x, size=(3, 1)) * 2,)  # noqa: E731
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    out = ember.compile(f)(x)[0]
    assert out.shape == (0, 3, 3, 1) and out.requires_grad
    out.sum().backward()
    assert x.grad.shape == x.shape
    f1 = lambda x: (F.interpolate(x, size=3),)  # noqa: E731
    for g, bad in ((f, torch.randn(1, 2, 0, 4)), (f1, torch.randn(1, 0, 4))):  # eager's RuntimeError
        for fn in (g, ember.compile(g)):
            with pytest.raises(RuntimeError, match="greater than 0|Non-empty"):
                fn(bad)


def test_interpolate_1d_3d_and_half():
    check(lambda x: F.interpolate(x, size=9, mode="linear", align_corners=True), r(2, 3, 4))
    check(lambda x: F.interpolate(x, scale_factor=1.1, mode="linear"), r(2, 3, 5))  # torch's decomposition errs
    check(lambda x: F.interpolate(x, size=(3, 5, 7), mode="trilinear"), r(1, 2, 2, 3, 4))
    check(lambda x: F.interpolate(x, scale_factor=(1, 2, 3), mode="nearest"), r(1, 2, 2, 3, 4))
    # out == in along D with a scale of 1.35: torch's 3-d forward uses the scale, its backward copies
    check(lambda x: F.interpolate(x, scale_factor=(1.35, 1.32, 2.92), mode="nearest"), r(1, 2, 2, 5, 2))
    check(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"), r(2, 3, 4, 5, dtype=torch.bfloat16),
          dtype=torch.bfloat16)


# -- the aten backward ops (eager mode runs them; under the Dynamo backend pooling's) ----------------
# (Dynamo applies torch's own Python decomposition of interpolation, index arithmetic, before ember.)


@pytest.mark.parametrize("mode", ["dynamo", "eager"])
def test_backward_ops_through_dynamo_and_eager(mode):
    check(lambda x: F.max_pool2d(x, 3, 2, 1), r(2, 3, 7, 7), mode=mode)
    check(lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), r(2, 3, 7, 7), mode=mode)
    check(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"), r(2, 3, 4, 5), mode=mode)


# -- kernels -----------------------------------------------------------------------------------------


def test_one_forward_kernel_fused_with_pointwise_neighbours():
    x = r(2, 3, 8, 8)
    assert kernels(lambda x: F.max_pool2d(x, 3, 2, 1).relu() * 2, x) == 1
    assert kernels(lambda x: F.max_pool2d(x, 3, 2, 1, return_indices=True), x) == 1  # value and index: one loop
    assert kernels(lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False) + x, x) == 1
    assert kernels(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear").sigmoid(), x) == 1
    assert kernels(lambda x: F.adaptive_avg_pool2d(x, 3).relu(), x) == 1
    # a gather reads its input at other elements: a producer stays its own kernel
    assert kernels(lambda x: F.max_pool2d(x * 2 + 1, 3, 2, 1), x) == 2


def test_resnet_stem_trains_natively_and_deterministically():
    """conv-free stem of a CNN: BN, ReLU, MaxPool2d(3, 2, 1), AvgPool2d(3, 1, 1): gradients as eager's,
    the backward graph without externs, and bitwise the same in two runs."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                          nn.AvgPool2d(3, 1, 1, count_include_pad=False), nn.Upsample(scale_factor=2))
    x = r(2, 3, 8, 8)
    step = ember.compile(model)
    grads = []
    for _ in range(2):
        model.zero_grad()
        step(x).square().sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    model.zero_grad()
    model(x).square().sum().backward()
    for g0, g1, p in zip(grads[0], grads[1], model.parameters()):
        assert torch.equal(g0, g1)
        torch.testing.assert_close(g0, p.grad, rtol=1e-4, atol=1e-4)
    sg = ember.trace(lambda x: F.max_pool2d(x, 3, 2, 1), x)
    assert not sg.externs
