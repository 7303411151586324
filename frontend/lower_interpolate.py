"""Lowering rules for interpolation (`F.interpolate` modes nearest, nearest-exact, linear, bilinear,
trilinear) and their backward ops, to the window ops `upsample_nearest` / `upsample_linear` and their
backward ops (ir/ops/interpolate.py): one gather kernel each, forward and backward, that fuses with the
pointwise ops around it.

The `.default` overloads of nearest (and nearest-exact) are kept whole by capture (the op's registry
entry lists them): torch decomposes them into index arithmetic plus `aten.index`, whose backward is
a scatter-add; the `.vec` overloads (what `F.interpolate` calls) decompose into the `.default` ones.
Explicit scales are passed on: torch computes source indices with 1/scale where a scale is given
(`F.interpolate(scale_factor=...)` without `recompute_scale_factor`), which can differ from
in/out. Integer inputs, which only some of torch's kernels take, run as externs.
"""

from __future__ import annotations

import math

from .lower_pool import window_op
from .lowering import Fallback, aten, out_shape, overloads, register

_NEAREST = [aten.upsample_nearest1d, aten.upsample_nearest2d, aten.upsample_nearest3d]
_EXACT = [aten._upsample_nearest_exact1d, aten._upsample_nearest_exact2d, aten._upsample_nearest_exact3d]
_LINEAR = [aten.upsample_linear1d, aten.upsample_bilinear2d, aten.upsample_trilinear3d]
_SCALE_NAMES = {1: ("scales",), 2: ("scales_h", "scales_w"), 3: ("scales_d", "scales_h", "scales_w")}


def _rank(node, packets: list) -> int:
    return packets.index(node.target._overloadpacket) + 1


def _scales(a, n: int) -> tuple | None:
    scales = tuple(a.get(name) for name in _SCALE_NAMES[n])
    return None if all(s is None for s in scales) else tuple(None if s is None else float(s) for s in scales)


def _call_scales(node, a, n: int) -> tuple | None:
    """The scales of a call: a `.vec` call's scale_factors when it gives them (then output_size is
    None), or the `.default` overload's per-dim scales."""
    if node.target._overloadname != "vec":
        return _scales(a, n)
    return None if a.scale_factors is None else tuple(float(s) for s in a.scale_factors)


def _float_input(a):
    """The input of a forward call (`self`, or `input` for `.vec`), if floating (else an extern)."""
    x = a.get("self", a.get("input"))
    if not x.dtype.is_floating_point:
        raise Fallback("integer interpolation")
    return x


def _nearest(L, node, a, packets, exact: bool):
    n = _rank(node, packets)
    x = _float_input(a)
    attrs = dict(output_size=out_shape(node)[-n:], scales=_call_scales(node, a, n))
    if exact:
        attrs["exact"] = True
    return window_op(L, "upsample_nearest", [x], **attrs)


@register(*(o for p in _NEAREST for o in overloads(p, "default", "vec")))
def _upsample_nearest(L, node, a):
    return _nearest(L, node, a, _NEAREST, False)


@register(*(o for p in _EXACT for o in overloads(p, "default", "vec")))
def _upsample_nearest_exact(L, node, a):
    return _nearest(L, node, a, _EXACT, True)


@register(*(o for p in _LINEAR for o in overloads(p, "default", "vec")))
def _upsample_linear(L, node, a):
    n = _rank(node, _LINEAR)
    x = _float_input(a)
    return window_op(L, "upsample_linear", [x], output_size=out_shape(node)[-n:], align_corners=bool(a.align_corners),
                     scales=_call_scales(node, a, n))


def _backward_packets(packets: list) -> list:
    return [getattr(aten, p._qualified_op_name.split("::")[1] + "_backward") for p in packets]


def _backward(L, node, a, packets: list, op: str, **extra):
    n = packets.index(node.target._overloadpacket) + 1
    grad = a.grad_output
    if not grad.dtype.is_floating_point:
        raise Fallback("integer interpolation")
    in_size = tuple(int(s) for s in a.input_size)
    if math.prod(in_size[:-n]) != math.prod(grad.shape[:-n]):
        raise Fallback("interpolation backward of another batch shape")
    out = window_op(L, op, [grad], output_size=tuple(int(s) for s in a.output_size), input_size=in_size[-n:],
                    scales=_scales(a, n), **extra)
    return out if out.shape == in_size else L.reshape(out, in_size)


@register(*(o for p in _backward_packets(_NEAREST) for o in overloads(p, "default")))
def _upsample_nearest_backward(L, node, a):
    return _backward(L, node, a, _backward_packets(_NEAREST), "upsample_nearest_backward")


@register(*(o for p in _backward_packets(_EXACT) for o in overloads(p, "default")))
def _upsample_nearest_exact_backward(L, node, a):
    return _backward(L, node, a, _backward_packets(_EXACT), "upsample_nearest_backward", exact=True)


@register(*(o for p in _backward_packets(_LINEAR) for o in overloads(p, "default")))
def _upsample_linear_backward(L, node, a):
    return _backward(L, node, a, _backward_packets(_LINEAR), "upsample_linear_backward",
                     align_corners=bool(a.align_corners))

