"""Lowering rules for scatters, to the IR's deterministic scatter ops (ir/ops/scatter.py: sources
summed in source order, or with repeated indices the last source written: eager's CPU result, on
every device).

- `index_put(x, indices, values, accumulate)` (`x[i] = v`, `x[i, j] += v`, `x[:, i] = v`; and
  embedding's backward: torch's decomposition of `embedding_dense_backward` is an accumulating
  `index_put` into zeros) with index tensors: `index_put`, as `index.Tensor` indexes
  (frontend/lower_index.py): the index tensors broadcast to one shape S and index the dims where
  they stand, or, when those dims are not adjacent, torch puts S first: x is permuted to have them
  first, and the result back. Negative indices wrap, as eager's do; values broadcast to the indexed
  shape (their gradient sums back). A boolean mask with values that broadcast to whatever it
  selects (`x[mask] = 0.0`, `x[mask] += v`, `x[row_mask] = row`) is a `where` over the mask; a mask
  with a value per selected element (a data-dependent count) stays an extern.
- `index_add(x, dim, index, source, alpha)`: `index_add` (alpha multiplies the source).
- `index_copy(x, dim, index, source)`: `index_copy` (capture keeps it whole: torch's decomposition,
  an index_put, would wrap the negative indices eager refuses).
- `scatter_add(x, dim, index, src)`, `scatter(x, dim, index, src | value)`: `scatter_add`, `scatter`,
  src sliced down to the index's shape (all torch reads of it), a value expanded to it; `scatter`'s
  reduce='add' is a `scatter_add` (reduce='multiply' stays an extern).
- `index_fill` is a `where` (frontend/decompositions.py).

Arguments eager refuses (dtypes that differ, shapes that do not fit) fall back, so that eager raises.
"""

from __future__ import annotations

import math

import torch

from ..ir import Value
from ..ir.ops.scatter import INDEX_DTYPES, VALUE_DTYPES, WRITE_DTYPES
from .lowering import Fallback, aten, norm_dim, overloads, register


def _index(v) -> Value:
    if not isinstance(v, Value) or v.dtype not in INDEX_DTYPES:
        raise Fallback(f"indices of dtype {getattr(v, 'dtype', type(v))}")
    return v


def _values(x: Value, accumulate: bool = True) -> Value:
    if x.dtype not in (VALUE_DTYPES if accumulate else WRITE_DTYPES):
        raise Fallback(f"{'accumulating' if accumulate else 'scattering'} {x.dtype}")
    return x


def _same_dtype(x: Value, src: Value) -> Value:
    if src.dtype != x.dtype:
        raise Fallback(f"a source of dtype {src.dtype} into {x.dtype} (eager refuses it)")
    return src


def _masked(L, x: Value, dim: int, mask: Value, values: Value, accumulate: bool) -> Value:
    """`x[..., mask, ...] = values` (or `+=`) with values that broadcast to what the mask selects
    whatever the count of selected elements (a value of one element, a row): a `where` over the mask."""
    r = mask.type.rank
    if mask.shape != x.shape[dim:dim + r]:
        raise Fallback("a boolean mask of another shape than the dims it indexes (eager refuses it)")
    want = x.shape[:dim] + (None,) + x.shape[dim + r:]  # None: the data-dependent count
    vs = values.shape
    if len(vs) > len(want):  # (Python's `x[mask] = v` drops leading 1s of v before calling index_put)
        raise Fallback("values of more dims than the indexed shape (eager refuses them)")
    vs = (1,) * (len(want) - len(vs)) + vs
    if vs[dim] != 1 or any(v != 1 and v != w for v, w in zip(vs, want) if w is not None):
        raise Fallback("a boolean mask with a value per selected element (a data-dependent count)")
    v = L.reshape(values, vs[:dim] + (1,) * r + vs[dim + 1:])
    cond = L.reshape(mask, mask.shape + (1,) * (x.type.rank - dim - r))
    return L.add("where", [cond, L.add("add", [x, v]) if accumulate else v, x])


@register(*overloads(aten.index_put, "default"), *overloads(aten._unsafe_index_put, "default"))
def _index_put(L, node, a):
    x, values, accumulate = a.self, a["values"], bool(a.accumulate)
    _values(x, accumulate)
    indices = list(a.indices)
    at = [d for d, i in enumerate(indices) if i is not None]
    if not at or x.type.rank == 0 or not isinstance(values, Value):
        raise Fallback("index_put without index tensors, or of a 0-dim tensor")
    _same_dtype(x, values)
    if any(isinstance(indices[d], Value) and indices[d].dtype == torch.bool for d in at):
        if len(at) != 1:
            raise Fallback("a boolean mask with other indices")
        return _masked(L, x, at[0], indices[at[0]], values, accumulate)
    idx = [_index(indices[d]) for d in at]
    k = len(at)
    if at[-1] + 1 > x.type.rank:
        raise Fallback("more indices than dims")
    try:
        shape = tuple(torch.broadcast_shapes(*[i.shape for i in idx]))
    except RuntimeError:
        raise Fallback("index tensors that do not broadcast") from None
    dtype = idx[0].dtype if all(i.dtype == idx[0].dtype for i in idx) else torch.int64
    idx = [L.expand(L.cast(i, dtype), shape) for i in idx]
    adjacent = at == list(range(at[0], at[0] + k))
    perm = None
    if adjacent:
        dim, xt = at[0], x
    else:  # torch puts S first: permute the indexed dims first
        perm = tuple(at + [d for d in range(x.type.rank) if d not in at])
        dim, xt = 0, L.add("permute", [x], dims=perm)
    want = xt.shape[:dim] + shape + xt.shape[dim + k:]
    # (Python's `x[i] = v` drops leading 1s of v before calling index_put)
    if values.type.rank > len(want) or any(v != 1 and v != w for v, w in zip(values.shape[::-1], want[::-1])):
        raise Fallback("values that do not broadcast to the indexed shape (eager refuses them)")
    if math.prod(shape) == 0:
        return x
    out = L.add("index_put", [xt, *idx, L.expand(values, want)], dim=dim, accumulate=accumulate)
    if perm is not None:
        out = L.add("permute", [out], dims=tuple(perm.index(d) for d in range(len(perm))))
    return out


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


@register(aten.index_copy.default)
def _index_copy(L, node, a):
    x, idx = _values(a.self, False), _index(a.index)
    src = _same_dtype(x, a.source)
    if x.type.rank == 0 or idx.type.rank > 1:
        raise Fallback("index_copy of a 0-dim tensor")
    dim = norm_dim(a.dim, x.type.rank)
    n = idx.type.numel
    if src.shape != x.shape[:dim] + (n,) + x.shape[dim + 1:]:
        raise Fallback("index_copy with a source of another shape (eager refuses it)")
    if n == 0:
        return x
    return L.add("index_copy", [x, L.reshape(idx, (n,)), src], dim=dim)


def _scatter_operands(x: Value, idx: Value, src: Value | None, dim) -> int:
    """The normalized dim, after checking what the IR op needs (eager raises for the rest)."""
    if not x.type.rank == idx.type.rank == (x.type.rank if src is None else src.type.rank):
        raise Fallback("a scatter with inputs of different ranks")
    d = norm_dim(dim, max(x.type.rank, 1))
    if any(n > (x.shape[e] if e != d else n) or (src is not None and n > src.shape[e])
           for e, n in enumerate(idx.shape)):
        raise Fallback("a scatter index larger than its source or destination")
    return d


def _sliced(L, src: Value, shape: tuple[int, ...]) -> Value:
    for d, n in enumerate(shape):  # torch reads src only where index has an entry
        if src.shape[d] != n:
            src = L.add("slice", [src], dim=d, start=0, end=n, step=1)
    return src


@register(aten.scatter_add.default)
def _scatter_add(L, node, a):
    x, idx, src = _values(a.self), _index(a.index), a.src
    dim = _scatter_operands(x, idx, src, a.dim)
    if math.prod(idx.shape) == 0:
        return x
    return L.add("scatter_add", [x, idx, L.cast(_sliced(L, src, idx.shape), x.dtype)], dim=dim)


@register(aten.scatter.src, aten.scatter.value, aten.scatter.reduce, aten.scatter.value_reduce)
def _scatter(L, node, a):
    """`scatter`, or with reduce='add' `scatter_add` (reduce='multiply' stays an extern)."""
    reduce = a.get("reduce")
    if reduce not in (None, "add"):
        raise Fallback(f"scatter with reduce={reduce!r}")
    x, idx = _values(a.self, reduce is not None), _index(a.index)
    src = a.get("src")
    dim = _scatter_operands(x, idx, None if src is None else _same_dtype(x, src), a.dim)
    if math.prod(idx.shape) == 0:
        return x
    src = _sliced(L, src, idx.shape) if src is not None else L.expand(L.operand(a.value, x.dtype), idx.shape)
    return L.add("scatter" if reduce is None else "scatter_add", [x, idx, src], dim=dim)
