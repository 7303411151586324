"""Constants: `full` (scalars are 0-dim fulls), `arange` and `iota`, generators with no inputs.

Kernels make them in place: `full` through its emit hook (a block of one literal), `arange` and
`iota` through Triton rules over the element index the kernel already has (`e.index`), so they work
in any kernel kind. An index along a dim of size 1 is 0, even where the kernel's iteration space is
larger there (the value is broadcast along it).
"""

from __future__ import annotations

import torch

from ..registry import ALL, DTYPE, NUMERIC, Domain, OpDef, get_op, register
from ..types import TRITON_NAMES, TensorType, compute_dtype, py_literal

aten = torch.ops.aten


def _full_infer(types: list[TensorType], shape, value, dtype) -> TensorType:
    return TensorType(tuple(shape), dtype)


def _arange_infer(types: list[TensorType], start, step, length, dtype) -> TensorType:
    if dtype not in NUMERIC:
        raise TypeError(f"arange: makes numbers, not {dtype}")
    return TensorType((length,), dtype)


def _index(e, k: int, size: int) -> str:
    """The element index along the k-th dim from the end, of a dim of `size` elements."""
    return e.index(k) if size != 1 else f"({e.index(k)} * 0)"


def _full_emit(ctx, node) -> str:
    # Block-shaped, not 0-dim: the interpreter cannot combine 0-dim booleans (`&`, `|`). Not rounded
    # to a half dtype: a scalar may hold an unrounded value (mul/div's Python scalars), which kernels
    # use as a float32 literal, as torch's kernels do (ir/ops/half.py).
    a = node.attrs
    return ctx.e.tmp(f"tl.full({ctx.block}, {py_literal(a['value'], a['dtype'])}, "
                     f"{TRITON_NAMES[compute_dtype(a['dtype'])]})", "c")


def _arange_triton(e, args, dtypes, out, start, step, length, dtype) -> str:
    wide = "tl.float64" if dtype.is_floating_point else "tl.int64"  # as the reference computes it
    return f"{py_literal(start, dtype)} + {py_literal(step, dtype)} * {_index(e, -1, length)}.to({wide})"


def _iota_onnx(b, args, types, out, shape, dim, dtype):
    """A [shape[dim]] range, viewed along dim and expanded: the model holds one row, not the block."""
    view = [1] * len(shape)
    view[dim] = shape[dim]
    return b.op("Expand", [b.tensor(torch.arange(shape[dim]).reshape(view).to(dtype)), b.ints(shape)])


register(OpDef("full", "constant", _full_infer,
               lambda shape, value, dtype: torch.full(tuple(shape), value, dtype=dtype),
               arity=0, emit=_full_emit, cost=1,
               domains=(Domain(ALL, {"shape": (3, 5), "value": 2, "dtype": DTYPE}, rejects=()),),
               aten=(aten.full.default, aten.full_like.default),
               onnx=lambda b, args, types, out, shape, value, dtype: b.const(value, dtype, shape)))
register(OpDef("arange", "constant", _arange_infer,
               lambda start, step, length, dtype: (start + step * torch.arange(length, dtype=torch.float64)).to(dtype)
               if dtype.is_floating_point else torch.arange(start, start + step * length, step, dtype=dtype)[:length],
               arity=0, triton=_arange_triton, cost=1,
               domains=(Domain(NUMERIC, {"start": 2, "step": 3, "length": 7, "dtype": DTYPE}),),
               aten=(aten.arange.start_step,), doc="start + step * i for i in range(length)",
               onnx=lambda b, args, types, out, **a: b.tensor(get_op("arange").impl(**a))))


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
register(OpDef("iota", "pointwise", _iota_infer, _iota_impl, arity=0,
               triton=lambda e, args, dtypes, out, shape, dim, dtype: _index(e, dim - len(shape), shape[dim]),
               cost=1,
               domains=(Domain(ALL, {"shape": (4, 6), "dim": 1, "dtype": DTYPE}, rejects=()),
                        Domain(NUMERIC, {"shape": (5, 1), "dim": 1, "dtype": DTYPE}, rejects=())),
               aten=(torch.ops.prims.iota.default,), onnx=_iota_onnx,
               doc="index along dim, broadcast over shape"))
