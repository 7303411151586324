"""Layout ops. Most are views (`view=True`: the runtime folds them into offsets and strides, no
data moves; flip's negative strides are read in place by kernels, copied only where torch must see
them); `cat` and reshapes that strides cannot express are copies made by kernels (cat's through its
emit hook, in the pointwise emitter).

VJPs are layout ops again: reshape back, the inverse permutation, `unbroadcast` for expand, the same
flip, slices of the cotangent for `cat`, and for `slice`/`select` the cotangent placed among zeros
with `cat` (a strided slice first interleaves it with zeros: reshape, cat, reshape)."""

from __future__ import annotations

import math

import torch

from ..registry import OpDef, register, unbroadcast, zeros
from ..types import TensorType


def _reshape_infer(types: list[TensorType], shape) -> TensorType:
    (t,) = types
    if math.prod(shape) != t.numel:
        raise ValueError(f"reshape: cannot reshape {t} to {list(shape)}")
    return TensorType(tuple(shape), t.dtype)


def _permute_infer(types: list[TensorType], dims) -> TensorType:
    (t,) = types
    if sorted(dims) != list(range(t.rank)):
        raise ValueError(f"permute: dims {dims} are not a permutation of range({t.rank})")
    return TensorType(tuple(t.shape[d] for d in dims), t.dtype)


def _expand_infer(types: list[TensorType], shape) -> TensorType:
    (t,) = types
    lead = len(shape) - t.rank
    if lead < 0 or any(s != o and s != 1 for s, o in zip(t.shape, shape[lead:])):
        raise ValueError(f"expand: cannot expand {t} to {list(shape)}")
    return TensorType(tuple(shape), t.dtype)


def _slice_infer(types: list[TensorType], dim, start, end, step) -> TensorType:
    (t,) = types
    if not (0 <= dim < t.rank and 0 <= start <= end <= t.shape[dim] and step > 0):
        raise ValueError(f"slice: dim={dim} start={start} end={end} step={step} invalid for {t} (normalize first)")
    shape = list(t.shape)
    shape[dim] = (end - start + step - 1) // step
    return TensorType(tuple(shape), t.dtype)


def _select_infer(types: list[TensorType], dim, index) -> TensorType:
    (t,) = types
    if not (0 <= dim < t.rank and 0 <= index < t.shape[dim]):
        raise ValueError(f"select: index {index} of dim {dim} out of range for {t}")
    return TensorType(t.shape[:dim] + t.shape[dim + 1:], t.dtype)


def _cat_infer(types: list[TensorType], dim) -> TensorType:
    first = types[0]
    for t in types[1:]:
        if t.dtype != first.dtype or t.rank != first.rank or any(
                a != b for i, (a, b) in enumerate(zip(t.shape, first.shape)) if i != dim):
            raise ValueError(f"cat: inputs {[str(t) for t in types]} do not match outside dim {dim}")
    shape = list(first.shape)
    shape[dim] = sum(t.shape[dim] for t in types)
    return TensorType(tuple(shape), first.dtype)


def _flip_infer(types: list[TensorType], dims) -> TensorType:
    (t,) = types
    if any(not 0 <= d < t.rank for d in dims):
        raise ValueError(f"flip: dims {dims} out of range for {t}")
    return t


def _with(shape, dim, size) -> tuple[int, ...]:
    return tuple(shape[:dim]) + (size,) + tuple(shape[dim + 1:])


def _slice_scatter(g, ct, in_shape, dim, start, step):
    """The VJP of a slice: `ct` placed at start, start + step, ... of dim in zeros of `in_shape`."""
    n, size = ct.shape[dim], in_shape[dim]
    v = ct
    if step > 1 and n > 0:
        # interleave with zeros: [.., n, 1, ..] ++ [.., n, step-1, ..] along a new dim, then flatten it.
        v = g.add("reshape", [v], shape=tuple(ct.shape[:dim + 1]) + (1,) + tuple(ct.shape[dim + 1:]))
        pad = TensorType(tuple(ct.shape[:dim + 1]) + (step - 1,) + tuple(ct.shape[dim + 1:]), ct.dtype)
        v = g.add("cat", [v, zeros(g, pad)], dim=dim + 1)
        v = g.add("reshape", [v], shape=_with(ct.shape, dim, n * step))
        if n * step > size - start:
            v = g.add("slice", [v], dim=dim, start=0, end=size - start, step=1)
    parts = []
    if start > 0:
        parts.append(zeros(g, TensorType(_with(in_shape, dim, start), ct.dtype)))
    parts.append(v)
    after = size - start - v.shape[dim]
    if after > 0:
        parts.append(zeros(g, TensorType(_with(in_shape, dim, after), ct.dtype)))
    return parts[0] if len(parts) == 1 else g.add("cat", parts, dim=dim)


def _slice_vjp(g, inputs, out, ct, dim, start, end, step):
    return [_slice_scatter(g, ct, inputs[0].shape, dim, start, step)]


def _select_vjp(g, inputs, out, ct, dim, index):
    ct = g.add("reshape", [ct], shape=_with(inputs[0].shape, dim, 1))
    return [_slice_scatter(g, ct, inputs[0].shape, dim, index, 1)]


def _cat_vjp(g, inputs, out, ct, dim):
    cts, offset = [], 0
    for x in inputs:
        cts.append(g.add("slice", [ct], dim=dim, start=offset, end=offset + x.shape[dim], step=1))
        offset += x.shape[dim]
    return cts


def _inverse(dims) -> tuple[int, ...]:
    inv = [0] * len(dims)
    for i, d in enumerate(dims):
        inv[d] = i
    return tuple(inv)


def _cat_emit(ctx, node) -> str:
    """Inside the pointwise emitter: input k covers [lo_k, lo_k+1) of the cat dim (the runtime ints
    `emit_args` gives); each is loaded there (masked, at the shifted index) and selected."""
    d, e = node.attrs["dim"], ctx.e
    index, lo = ctx.dims(node.out), ctx.args(node)
    val = None
    for k, v in enumerate(node.inputs):
        m = e.tmp(f"{ctx.mask} & ({index[d]} >= {lo[k]}) & ({index[d]} < {lo[k + 1]})", "m")
        shifted = list(index)
        shifted[d] = e.tmp(f"{index[d]} - {lo[k]}", "i")
        x = ctx.load(v, shifted, m)
        val = x if val is None else e.tmp(f"tl.where({m}, {x}, {val})", "v")
    return val


def _cat_bounds(node) -> list[int]:
    """Where each input starts along the cat dim, and where the last one ends."""
    bounds = [0]
    for v in node.inputs:
        bounds.append(bounds[-1] + v.shape[node.attrs["dim"]])
    return bounds


def _slice_onnx(b, args, types, out, dim, start, end, step):
    return b.op("Slice", [args[0], b.ints([start]), b.ints([end]), b.ints([dim]), b.ints([step])])


def _flip_onnx(b, args, types, out, dims):
    if not dims:
        return b.op("Identity", args)
    n = len(dims)  # a reversed slice of each dim, from its last element past its first
    return b.op("Slice", [args[0], b.ints([-1] * n), b.ints([-(2**63)] * n), b.ints(dims), b.ints([-1] * n)])


aten = torch.ops.aten
register(OpDef("reshape", "layout", _reshape_infer, lambda x, shape: x.reshape(shape), view=True,
               vjp=lambda g, inputs, out, ct, shape: [g.add("reshape", [ct], shape=inputs[0].shape)],
               aten=(aten.view.default, aten.reshape.default),
               onnx=lambda b, args, types, out, shape: b.op("Reshape", [args[0], b.ints(shape)],
                                                            allowzero=1 if 0 in shape else None)))
register(OpDef("permute", "layout", _permute_infer, lambda x, dims: x.permute(dims), view=True,
               vjp=lambda g, inputs, out, ct, dims: [g.add("permute", [ct], dims=_inverse(dims))],
               aten=(aten.permute.default,),
               onnx=lambda b, args, types, out, dims: b.op("Transpose", args, perm=list(dims))))
register(OpDef("expand", "layout", _expand_infer, lambda x, shape: x.expand(shape), view=True,
               vjp=lambda g, inputs, out, ct, shape: [unbroadcast(g, ct, inputs[0].shape)],
               aten=(aten.expand.default,),
               onnx=lambda b, args, types, out, shape: b.op("Expand", [args[0], b.ints(shape)])))
register(OpDef("slice", "layout", _slice_infer,
               lambda x, dim, start, end, step: x[(slice(None),) * dim + (slice(start, end, step),)], view=True,
               vjp=_slice_vjp, aten=(aten.slice.Tensor,), onnx=_slice_onnx))
register(OpDef("select", "layout", _select_infer, lambda x, dim, index: x.select(dim, index), view=True,
               vjp=_select_vjp, aten=(aten.select.int,),
               onnx=lambda b, args, types, out, dim, index: b.op("Gather", [args[0], b.const(index, torch.int64)],
                                                                 axis=dim)))
# A copy made by the pointwise emitter through the emit hook; no arithmetic, so no flops.
register(OpDef("cat", "layout", _cat_infer, lambda *xs, dim: torch.cat(xs, dim=dim), arity=(1, None),
               vjp=_cat_vjp, emit=_cat_emit, emit_args=_cat_bounds, aten=(aten.cat.default,),
               onnx=lambda b, args, types, out, dim: b.op("Concat", args, axis=dim)))
register(OpDef("flip", "layout", _flip_infer, lambda x, dims: torch.flip(x, dims), view=True,
               vjp=lambda g, inputs, out, ct, dims: [g.add("flip", [ct], dims=dims)], aten=(aten.flip.default,),
               onnx=_flip_onnx))
