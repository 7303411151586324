"""Lowering rules for gathering ops: embedding, index_select, gather, advanced indexing (`x[idx]`,
`x[:, idx]`, `x[i, j]`, ...), to the IR's gather ops (ir/ops/index.py), each a generator op of the
pointwise emitter that fuses with its neighbours (an embedding plus its positional embedding is one
kernel).

- `embedding(weight, indices)` is `index(weight, indices) {dim=0, wrap=False}` (any index shape, no
  reshape: the result fuses with what follows). `padding_idx` only changes the backward: the
  padding row gets no gradient, so positions holding it read the row through a stop-gradient.
  `scale_grad_by_freq` and `sparse` stay externs.
- `index.Tensor` (advanced indexing) broadcasts its index tensors to one shape S and indexes with
  them the dims where they stand; when those dims are not adjacent, torch puts S first, so the
  table is permuted to have them first. Negative indices wrap, as eager's do. Boolean masks have a
  data-dependent shape: externs.
- `gather` picking one element per row stays the one-hot row reduction of lower_reduction.py (it fuses
  into cross-entropy's kernel); other gathers come here (`gather`).
- `take_along_dim` reaches us as expand + remainder + gather.
- An index that is an `arange` in range (GPT's `pos(arange(T))`) gives a slice: a view, no kernel.
"""

from __future__ import annotations

import torch

from ..ir import Value
from ..ir.ops.index import INDEX_DTYPES
from .lowering import Fallback, aten, norm_dim, register


def _index(L, v: Value) -> Value:
    if v.dtype not in INDEX_DTYPES:
        raise Fallback(f"indices of dtype {v.dtype}")
    return v


def _as_slice(L, x: Value, idx: Value, dim: int) -> Value | None:
    """x along `dim` at an `arange` of indices all in range (GPT's positions, `pos(arange(T))`): a
    slice, a view, so no kernel computes the indices. None for any other index."""
    p = idx.producer
    if p is None or p.op != "arange" or idx.type.rank != 1:
        return None
    start, step, n = p.attrs["start"], p.attrs["step"], p.attrs["length"]
    if not (isinstance(start, int) and isinstance(step, int)) or step <= 0:
        return None
    if n == 0 or start < 0 or start + step * (n - 1) >= x.shape[dim]:
        return None  # empty, or out of range: the gather raises
    return L.add("slice", [x], dim=dim, start=start, end=start + step * (n - 1) + 1, step=step)


@register(aten.embedding.default)
def _embedding(L, node, a):
    w, idx = a.weight, _index(L, a.indices)
    if a.get("scale_grad_by_freq") or a.get("sparse") or w.type.rank != 2:
        raise Fallback("embedding with scale_grad_by_freq or sparse gradients")
    _check_not_empty(w, 0, idx)
    out = _as_slice(L, w, idx, 0) or L.add("index", [w, idx], dim=0, wrap=False)
    pad = a.get("padding_idx", -1)
    if pad is not None and pad >= 0:  # the padding row gets no gradient (eager's embedding_backward)
        at_pad = L.add("eq", [L.reshape(idx, idx.shape + (1,)), L.const(pad, idx.dtype)])
        out = L.add("where", [at_pad, L.add("stop_gradient", [out]), out])
    return out


@register(aten.index_select.default)
def _index_select(L, node, a):
    x, idx = a.self, _index(L, a.index)
    if x.type.rank == 0 or idx.type.rank > 1:
        raise Fallback("index_select of a 0-dim tensor")
    d = norm_dim(a.dim, x.type.rank)
    _check_not_empty(x, d, idx)
    idx = L.reshape(idx, (idx.type.numel,))
    return _as_slice(L, x, idx, d) or L.add("index_select", [x, idx], dim=d)


def _check_not_empty(x: Value, dim: int, idx: Value) -> None:
    """Eager's index_select (embedding's too) refuses indices into an empty dim before reading them
    (RuntimeError; an index kernel would flag every index as out of range: IndexError)."""
    if x.shape[dim] == 0 and idx.type.numel > 0:
        raise RuntimeError("index_select(): self indexing axis dim should be positive")


def gather(L, x: Value, dim: int, idx: Value) -> Value:
    """torch.gather(x, dim, idx) with dim normalized (lower_reduction.py's rule hands general gathers here)."""
    _index(L, idx)
    if x.type.rank == 0:
        raise Fallback("gather of a 0-dim tensor")
    return L.add("gather", [x, idx], dim=dim)


@register(aten.index.Tensor, aten._unsafe_index.Tensor)
def _advanced_index(L, node, a):
    x, indices = a.self, list(a.indices)
    at = [d for d, i in enumerate(indices) if i is not None]
    if not at or x.type.rank == 0:
        raise Fallback("indexing without index tensors")
    idx = [_index(L, indices[d]) for d in at]
    shape = tuple(torch.broadcast_shapes(*[i.shape for i in idx]))
    dtype = idx[0].dtype if all(i.dtype == idx[0].dtype for i in idx) else torch.int64
    idx = [L.expand(L.cast(i, dtype), shape) for i in idx]
    if len(at) == 1:
        sliced = _as_slice(L, x, idx[0], at[0])
        if sliced is not None:
            return sliced
    if at == list(range(at[0], at[0] + len(at))):
        return L.add("index", [x] + idx, dim=at[0], wrap=True)
    rest = [d for d in range(x.type.rank) if d not in at]  # not adjacent: torch puts S first
    return L.add("index", [L.add("permute", [x], dims=tuple(at + rest))] + idx, dim=0, wrap=True)
