"""Constants: `full` (scalars are 0-dim fulls) and `arange`."""

from __future__ import annotations

import torch

from ..registry import OpDef, register
from ..types import TensorType


def _full_infer(types: list[TensorType], shape, value, dtype) -> TensorType:
    return TensorType(tuple(shape), dtype)


def _arange_infer(types: list[TensorType], start, step, length, dtype) -> TensorType:
    return TensorType((length,), dtype)


register(OpDef("full", "constant", _full_infer,
               lambda shape, value, dtype: torch.full(tuple(shape), value, dtype=dtype)))
register(OpDef("arange", "constant", _arange_infer,
               lambda start, step, length, dtype: (start + step * torch.arange(length, dtype=torch.float64)).to(dtype)
               if dtype.is_floating_point else torch.arange(start, start + step * length, step, dtype=dtype)[:length],
               doc="start + step * i for i in range(length)"))


def _iota_infer(types: list[TensorType], shape, dim, dtype) -> TensorType:
    if types or not 0 <= dim < len(shape):
        raise ValueError(f"iota: takes no inputs and needs 0 <= dim < {len(shape)}, got dim={dim}")
    return TensorType(tuple(shape), dtype)


def _iota_impl(shape, dim, dtype):
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return torch.arange(shape[dim]).reshape(view).expand(tuple(shape)).to(dtype)


# The index along `dim`, broadcast over `shape`. It is pointwise: every kernel knows the index of
# each element it computes (`e.index`), so iota fuses anywhere, e.g. into the one-hot select that
# lowers `gather` inside a cross-entropy row kernel.
register(OpDef("iota", "pointwise", _iota_infer, _iota_impl,
               triton=lambda e, args, dtypes, out, shape, dim, dtype: e.index(dim - len(shape)),
               doc="index along dim, broadcast over shape"))
