"""`searchsorted(seq, values) {right, out_int32}`: for each element v of `values`, the number of entries of
the sorted 1-D `seq` that are < v (left) or <= v (`right`): `torch.searchsorted(seq, values,
right=right)`, and `torch.bucketize(values, seq, right=right)`. The result has `values`' shape and
dtype int64, or int32 with `out_int32` (aten's argument names).

A generator op of the pointwise emitter, as the gathers of ir/ops/index.py are: each element runs a
binary search over `seq`, unrolled to `len(seq).bit_length()` steps (the length is static), with
torch's CPU comparisons (`!(mid >= v)` goes right for left, `!(mid > v)` for right), so a NaN value
lands past the end as in eager. Fusion keeps both inputs group inputs (`GATHER_OPS`): the steps load
`seq` at per-element positions. No cotangent: the result is an integer.

embedding_bag finds each index's bag with it (frontend/lower_embedding_bag.py).
"""

from __future__ import annotations

import torch

from ..registry import FLOAT, INT, Domain, OpDef, register
from ..types import TensorType

SEARCH_DTYPES = FLOAT + INT


def _infer(types: list[TensorType], right: bool, out_int32: bool) -> TensorType:
    seq, values = types
    if seq.dtype != values.dtype or values.dtype not in SEARCH_DTYPES:
        raise TypeError(f"searchsorted: a sequence of the values' real dtype, got {seq}, {values}")
    if seq.rank != 1:
        raise ValueError(f"searchsorted: a 1-D sorted sequence, got {seq}")
    return TensorType(values.shape, torch.int32 if out_int32 else torch.int64)


def _impl(seq: torch.Tensor, values: torch.Tensor, right: bool, out_int32: bool) -> torch.Tensor:
    return torch.searchsorted(seq, values, right=right, out_int32=out_int32)


def _emit(ctx, node) -> str:
    seq, values = node.inputs
    n = seq.shape[0]
    e = ctx.e
    v = ctx.load(values, list(ctx.dims(node.out)), ctx.mask)
    lo = e.tmp(f"{ctx.zero} + 0", "lo")
    hi = e.tmp(f"{ctx.zero} + {n}", "hi")
    goes_right = "~({} > {})" if node.attrs["right"] else "~({} >= {})"
    for _ in range(n.bit_length()):  # each step halves [lo, hi); len(seq).bit_length() steps empty it
        live = e.tmp(f"{lo} < {hi}", "live")
        mid = e.tmp(f"({lo} + {hi}) // 2", "mid")
        at = ctx.load(seq, [mid], f"{ctx.mask} & {live}")
        right = e.tmp(f"{live} & " + goes_right.format(at, v), "go")
        lo, hi = (e.tmp(f"tl.where({right}, {mid} + 1, {lo})", "lo"),
                  e.tmp(f"tl.where({live} & ~{right}, {mid}, {hi})", "hi"))
    return e.tmp(f"{lo}.to({'tl.int32' if node.attrs['out_int32'] else 'tl.int64'})", "pos")


register(OpDef(
    "searchsorted", "layout", _infer, _impl, arity=2, emit=_emit,
    domains=(Domain(FLOAT + INT, {"right": False, "out_int32": False}, shapes=((7,), (3, 4)),
                    grad=False),
             Domain(FLOAT + INT, {"right": True, "out_int32": True}, shapes=((5,), (6,)),
                    grad=False)),
    aten=(torch.ops.aten.searchsorted.Tensor, torch.ops.aten.bucketize.Tensor), doc="torch.searchsorted"))
