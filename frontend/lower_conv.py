"""Lowering rules for convolutions: aten.convolution / aten.conv2d and aten.convolution_backward onto
the IR's `conv2d`, `conv2d_input_grad` and `conv2d_weight_grad` (ir/ops/conv.py).

2-D and 1-D (viewed as 2-D with H = 1: a reshape of the operands, a view) non-transposed
convolutions of one floating dtype. A bias becomes an `add` of the bias viewed as (Co, 1, 1) on the
4-d result, so fusion makes it (and what follows: activation, residual, eval batch norm) the conv
kernel's epilogue; its gradient is a `sum` of the cotangent. Transposed and 3-D convolutions raise
`Fallback`: they stay torch calls, differentiable through the extern fallback (frontend/extern_vjp.py).
"""

from __future__ import annotations

import torch

from ..ir import Value
from .lowering import Fallback, aten, out_dtype, register


def _attrs(x: Value, stride, padding, dilation, groups) -> dict:
    """The IR attributes: (h, w) pairs (a 1-D conv has H = 1: no stride, padding or dilation along it)."""
    spatial = x.type.rank - 2
    if spatial not in (1, 2):
        raise Fallback("only 1-D and 2-D convolutions have kernels")
    s, p, d = ([int(t) for t in v] * (spatial if len(v) == 1 else 1) for v in (stride, padding, dilation))
    if not len(s) == len(p) == len(d) == spatial:
        raise Fallback("convolution attributes of another rank")
    if spatial == 1:
        s, p, d = [1] + s, [0] + p, [1] + d
    return dict(stride=tuple(s), padding=tuple(p), dilation=tuple(d), groups=int(groups))


def _as_2d(L, v: Value | None) -> Value | None:
    """A 1-D conv operand (N, C, L) as (N, C, 1, L)."""
    if v is None or v.type.rank == 4:
        return v
    return L.reshape(v, v.shape[:2] + (1,) + v.shape[2:])


def _check_dtypes(*values, out: torch.dtype | None = None) -> None:
    """One floating dtype for the operands (and the result): eager refuses mixed dtypes, but meta
    kernels may not, so a mix stays a torch call, which raises eager's error."""
    dts = {v.dtype for v in values if isinstance(v, Value)} | ({out} if out is not None else set())
    if len(dts) != 1 or not next(iter(dts)).is_floating_point:
        raise Fallback("convolution kernels take one floating dtype")


def conv(L, node, x, w, bias, stride, padding, dilation, groups):
    _check_dtypes(x, w, bias, out=out_dtype(node))
    attrs = _attrs(x, stride, padding, dilation, groups)
    y = L.add("conv2d", [_as_2d(L, x), _as_2d(L, w)], **attrs)
    if bias is not None:  # on the 4-d result, so it is the conv kernel's epilogue
        y = L.add("add", [y, L.reshape(bias, (bias.shape[0], 1, 1))])
    return L.reshape(y, y.shape[:2] + y.shape[3:]) if x.type.rank == 3 else y


@register(aten.convolution.default)
def _convolution(L, node, a):
    if a.transposed:
        raise Fallback("transposed convolution")
    return conv(L, node, a.input, a.weight, a.bias, a.stride, a.padding, a.dilation, a.groups)


@register(aten.conv2d.default)
def _conv2d(L, node, a):
    if a.input.type.rank != 4:  # unbatched (C, H, W)
        raise Fallback("unbatched conv2d")
    return conv(L, node, a.input, a.weight, a.bias, a.stride, a.padding, a.dilation, a.groups)


@register(aten.convolution_backward.default)
def _convolution_backward(L, node, a):
    if a.transposed:
        raise Fallback("transposed convolution")
    ct, x, w = a.grad_output, a.input, a.weight
    _check_dtypes(ct, x, w)
    attrs = _attrs(x, a.stride, a.padding, a.dilation, a.groups)
    ct4, x4, w4 = _as_2d(L, ct), _as_2d(L, x), _as_2d(L, w)
    mask = list(a.output_mask)
    dx = dw = db = None
    if mask[0]:
        dx = L.reshape(L.add("conv2d_input_grad", [ct4, w4], size=x4.shape[2:], **attrs), x.shape)
    if mask[1]:
        dw = L.reshape(L.add("conv2d_weight_grad", [x4, ct4], kernel=w4.shape[2:], **attrs), w.shape)
    if mask[2]:
        db = L.add("sum", [ct], dims=(0,) + tuple(range(2, ct.type.rank)), keepdim=False)
    return [dx, dw, db]
