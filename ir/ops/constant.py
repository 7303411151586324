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
