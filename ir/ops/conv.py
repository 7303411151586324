"""2-D convolution as three implicit-GEMM ops over NCHW values (channels_last inputs are only other
strides; kernels read every operand through its runtime strides):

- `conv2d(x[N, C, H, W], w[Co, C/g, KH, KW])` -> [N, Co, OH, OW] (no bias: a bias is an `add`
  epilogue the conv kernel fuses, like any pointwise tail);
- `conv2d_input_grad(ct[N, Co, OH, OW], w)` -> [N, C, H, W]: the transposed convolution, with the
  input's spatial `size` as an attribute (OH does not determine H when the stride does not divide);
- `conv2d_weight_grad(x, ct)` -> [Co, C/g, KH, KW], with the `kernel` size as an attribute.

Attributes `stride`, `padding`, `dilation` are (h, w) pairs, `groups` an int. All three are linear in
each input, so their VJPs are each other (see the rules). Accumulation is fp32 (fp64 for fp64); the
result is rounded to the dtype once, as torch's CPU kernels do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import FLOAT, Domain, OpDef, register
from ..types import TensorType, is_float
from . import onnx_rules

aten = torch.ops.aten


def out_size(size: int, k: int, stride: int, padding: int, dilation: int) -> int:
    """Output length of a convolution along one dim (torch's formula)."""
    return (size + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def _check(name: str, a: TensorType, b: TensorType, stride, padding, dilation, groups: int) -> None:
    if a.rank != 4 or b.rank != 4:
        raise ValueError(f"{name}: needs rank-4 inputs, got {a} and {b}")
    if a.dtype != b.dtype or not is_float(a.dtype):
        raise TypeError(f"{name}: needs two floating-point inputs of one dtype, got {a.dtype} and {b.dtype}")
    if groups < 1 or any(s < 1 for s in stride) or any(d < 1 for d in dilation) or any(p < 0 for p in padding):
        raise ValueError(f"{name}: bad stride {stride}, padding {padding}, dilation {dilation} or groups {groups}")


def _spatial(h: int, w: int, kh: int, kw: int, stride, padding, dilation) -> tuple[int, int]:
    oh, ow = (out_size(s, k, st, p, d) for s, k, st, p, d in zip((h, w), (kh, kw), stride, padding, dilation))
    if oh < 1 or ow < 1:
        raise ValueError(f"convolution output size ({oh}, {ow}) is empty: input ({h}, {w}), kernel ({kh}, {kw})")
    return oh, ow


def _conv_infer(types, stride, padding, dilation, groups):
    x, w = types
    _check("conv2d", x, w, stride, padding, dilation, groups)
    n, c, h, wd = x.shape
    co, cig, kh, kw = w.shape
    if c % groups or co % groups or cig * groups != c:
        raise ValueError(f"conv2d: input {x} and weight {w} do not fit groups={groups}")
    return TensorType((n, co) + _spatial(h, wd, kh, kw, stride, padding, dilation), x.dtype)


def _input_grad_infer(types, stride, padding, dilation, groups, size):
    ct, w = types
    _check("conv2d_input_grad", ct, w, stride, padding, dilation, groups)
    co, cig, kh, kw = w.shape
    if co % groups or ct.shape[1] != co or ct.shape[2:] != _spatial(*size, kh, kw, stride, padding, dilation):
        raise ValueError(f"conv2d_input_grad: cotangent {ct} does not fit weight {w}, input size {size}")
    return TensorType((ct.shape[0], cig * groups) + tuple(size), ct.dtype)


def _weight_grad_infer(types, stride, padding, dilation, groups, kernel):
    x, ct = types
    _check("conv2d_weight_grad", x, ct, stride, padding, dilation, groups)
    n, c, h, wd = x.shape
    co = ct.shape[1]
    if c % groups or co % groups or ct.shape[0] != n \
            or ct.shape[2:] != _spatial(h, wd, *kernel, stride, padding, dilation):
        raise ValueError(f"conv2d_weight_grad: input {x} and cotangent {ct} do not fit kernel {kernel}")
    return TensorType((co, c // groups) + tuple(kernel), x.dtype)


def _conv_impl(x, w, stride, padding, dilation, groups):
    return F.conv2d(x, w, None, stride, padding, dilation, groups)


def _input_grad_impl(ct, w, stride, padding, dilation, groups, size):
    shape = (ct.shape[0], w.shape[1] * groups) + tuple(size)
    return torch.nn.grad.conv2d_input(shape, w, ct, stride, padding, dilation, groups)


def _weight_grad_impl(x, ct, stride, padding, dilation, groups, kernel):
    shape = (ct.shape[1], x.shape[1] // groups) + tuple(kernel)
    return torch.nn.grad.conv2d_weight(x, shape, ct, stride, padding, dilation, groups)


# VJPs: y = conv(x, w) is bilinear: <g, conv(x, w)> = <input_grad(g, w), x> = <weight_grad(x, g), w>.
def _conv_vjp(g, inputs, out, ct, **a):
    x, w = inputs
    return [g.add("conv2d_input_grad", [ct, w], size=x.shape[2:], **a),
            g.add("conv2d_weight_grad", [x, ct], kernel=w.shape[2:], **a)]


def _input_grad_vjp(g, inputs, out, ct, size, **a):
    c, w = inputs  # out = input_grad(c, w): <ct, out> = <conv(ct, w), c> = <weight_grad(ct, c), w>
    return [g.add("conv2d", [ct, w], **a), g.add("conv2d_weight_grad", [ct, c], kernel=w.shape[2:], **a)]


def _weight_grad_vjp(g, inputs, out, ct, kernel, **a):
    x, c = inputs  # out = weight_grad(x, c): <ct, out> = <input_grad(c, ct), x> = <conv(x, ct), c>
    return [g.add("conv2d_input_grad", [c, ct], size=x.shape[2:], **a), g.add("conv2d", [x, ct], **a)]


def conv_flops(node) -> int:
    """A multiply and an add per output pixel, output channel and (input channel of its group x tap):
    2 * N * OH * OW * Co * C/g * KH * KW for all three ops."""
    if node.op == "conv2d":
        x, w = node.inputs
        return 2 * node.out.type.numel * w.shape[1] * w.shape[2] * w.shape[3]
    if node.op == "conv2d_input_grad":
        ct, w = node.inputs
        return 2 * ct.type.numel * w.shape[1] * w.shape[2] * w.shape[3]
    x, ct = node.inputs
    return 2 * ct.type.numel * node.out.type.numel // ct.shape[1]


CONV_OPS = ("conv2d", "conv2d_input_grad", "conv2d_weight_grad")

_ATTRS = [  # (x shape, w shape, attrs): plain, strided + padded + dilated, grouped, depthwise
    ((2, 3, 7, 6), (4, 3, 3, 2), dict(stride=(1, 1), padding=(0, 0), dilation=(1, 1), groups=1)),
    ((1, 4, 9, 8), (6, 2, 3, 3), dict(stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2)),
    ((2, 4, 6, 6), (8, 1, 3, 3), dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=4)),
]


def _domains(op: str) -> tuple[Domain, ...]:
    out = []
    for xs, ws, a in _ATTRS:
        oh, ow = _spatial(xs[2], xs[3], ws[2], ws[3], a["stride"], a["padding"], a["dilation"])
        cts = (xs[0], ws[0], oh, ow)
        shapes, attrs = {"conv2d": ((xs, ws), a), "conv2d_input_grad": ((cts, ws), dict(a, size=xs[2:])),
                         "conv2d_weight_grad": ((xs, cts), dict(a, kernel=ws[2:]))}[op]
        out.append(Domain(FLOAT, attrs, shapes=shapes))
    return tuple(out)


register(OpDef("conv2d", "conv", _conv_infer, _conv_impl, arity=2, vjp=_conv_vjp, cost=conv_flops,
               domains=_domains("conv2d"), aten=(aten.conv2d.default,), onnx=onnx_rules.conv2d,
               doc="implicit GEMM over NCHW values; bias and activations are fused epilogues"))
register(OpDef("conv2d_input_grad", "conv", _input_grad_infer, _input_grad_impl, arity=2, vjp=_input_grad_vjp,
               cost=conv_flops, domains=_domains("conv2d_input_grad"),
               doc="the gradient of conv2d's input: a transposed convolution by index math"))
register(OpDef("conv2d_weight_grad", "conv", _weight_grad_infer, _weight_grad_impl, arity=2, vjp=_weight_grad_vjp,
               cost=conv_flops, domains=_domains("conv2d_weight_grad"),
               doc="the gradient of conv2d's weight: a GEMM over N * OH * OW"))
