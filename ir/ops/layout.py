"""Layout ops. Most are views (the runtime folds them into strides, no data moves); `cat` and
`flip` and reshapes of non-viewable layouts are copies made by kernels."""

from __future__ import annotations

import math

import torch

from ..registry import OpDef, register
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


register(OpDef("reshape", "layout", _reshape_infer, lambda x, shape: x.reshape(shape)))
register(OpDef("permute", "layout", _permute_infer, lambda x, dims: x.permute(dims)))
register(OpDef("expand", "layout", _expand_infer, lambda x, shape: x.expand(shape)))
register(OpDef("slice", "layout", _slice_infer,
               lambda x, dim, start, end, step: x[(slice(None),) * dim + (slice(start, end, step),)]))
register(OpDef("select", "layout", _select_infer, lambda x, dim, index: x.select(dim, index)))
register(OpDef("cat", "layout", _cat_infer, lambda *xs, dim: torch.cat(xs, dim=dim)))
register(OpDef("flip", "layout", _flip_infer, lambda x, dims: torch.flip(x, dims)))
