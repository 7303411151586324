"""Lowering rules for accumulating scatters, to the IR's `index_add` and `scatter_add`
(ir/ops/scatter.py: deterministic scatter kernels, sources summed in source order).

- `index_put(x, indices, values, accumulate=True)` (`x[idx] += v`, and embedding's backward:
  torch's decomposition of `embedding_dense_backward` is an accumulating `index_put` into zeros,
  with the padding row's gradient masked and, under `scale_grad_by_freq`, counts gathered the same
  way) with one index tensor, at any dim: `index_add` with `wrap` (negative indices count from the
  end, as eager's) over the index flattened and the values expanded to the indexed shape.
  Several index tensors, boolean masks and `accumulate=False` (with duplicates eager keeps the last
  write, an order ember does not reproduce) stay externs.
- `index_add(x, dim, index, source, alpha)`: `index_add` (alpha multiplies the source).
- `scatter_add(x, dim, index, src)`: `scatter_add`, src sliced down to the index's shape (all torch
  reads of it).
"""

from __future__ import annotations

import math

from ..ir import Value
from ..ir.ops.scatter import INDEX_DTYPES, VALUE_DTYPES
from .lowering import Fallback, aten, norm_dim, overloads, register


def _index(v) -> Value:
    if not isinstance(v, Value) or v.dtype not in INDEX_DTYPES:
        raise Fallback(f"indices of dtype {getattr(v, 'dtype', type(v))}")
    return v


def _values(x: Value) -> Value:
    if x.dtype not in VALUE_DTYPES:
        raise Fallback(f"accumulating {x.dtype}")
    return x


@register(*overloads(aten.index_put, "default"), *overloads(aten._unsafe_index_put, "default"))
def _index_put(L, node, a):
    x, values = _values(a.self), a["values"]
    if not a.accumulate:
        raise Fallback("index_put without accumulate: duplicate indices keep eager's last write")
    at = [d for d, i in enumerate(a.indices) if i is not None]
    if len(at) != 1 or x.type.rank == 0 or not isinstance(values, Value):
        raise Fallback("index_put with several index tensors, or of a 0-dim tensor")
    dim, idx = at[0], _index(a.indices[at[0]])
    n = idx.type.numel
    if n == 0:
        return x
    shape = x.shape[:dim] + idx.shape + x.shape[dim + 1:]
    src = L.expand(L.cast(values, x.dtype), shape)
    src = L.reshape(src, x.shape[:dim] + (n,) + x.shape[dim + 1:])
    return L.add("index_add", [x, L.reshape(idx, (n,)), src], dim=dim, wrap=True)


@register(aten.index_add.default)
def _index_add(L, node, a):
    x, src = _values(a.self), a.source
    idx = _index(a.index)
    if x.type.rank == 0 or idx.type.rank > 1 or src.type.rank != x.type.rank:
        raise Fallback("index_add of 0-dim tensors")
    if idx.type.numel == 0:
        return x
    src = L.cast(src, x.dtype)
    if a.alpha != 1:
        src = L.add("mul", [src, L.operand(a.alpha, x.dtype)])
    return L.add("index_add", [x, L.reshape(idx, (idx.type.numel,)), src], dim=norm_dim(a.dim, x.type.rank))


@register(aten.scatter_add.default)
def _scatter_add(L, node, a):
    x, idx, src = _values(a.self), _index(a.index), a.src
    if not (x.type.rank == idx.type.rank == src.type.rank):
        raise Fallback("scatter_add with inputs of different ranks")
    if math.prod(idx.shape) == 0:
        return x
    dim = norm_dim(a.dim, x.type.rank)
    for d, n in enumerate(idx.shape):  # torch reads src only where index has an entry
        if src.shape[d] != n:
            src = L.add("slice", [src], dim=d, start=0, end=n, step=1)
    return L.add("scatter_add", [x, idx, L.cast(src, x.dtype)], dim=dim)
