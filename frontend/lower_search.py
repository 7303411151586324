"""Lowering rules for sorted searches: `searchsorted` and `bucketize` (ir/ops/search.py), and
`embedding_bag` in modes "sum" and "mean", which finds each index's bag with one.

`F.embedding_bag` hands aten 1-D indices and `offsets` (a 2-D input becomes bags of equal length).
Bag b holds indices[offsets[b]:offsets[b+1]]; the last bag runs to the end. The bag of index i is
`searchsorted(offsets[:B], i, right=True) - 1` (an empty bag repeats an offset and is skipped, as in
eager). Then `out = zeros(B, D).index_add(bag, weight[indices] * w)`, the deterministic scatter-add
of ir/ops/scatter.py, where w is the per-sample weight, 0 at `padding_idx`. "mean" divides by the
bag's size: its end minus its start, or with padding a running count of kept indices read at both
ends (0 for an empty bag, as eager's). It trains through those ops' VJPs: the weight's gradient is
a scatter-add, the per-sample weights' a row sum.

With `include_last_offset`, offsets[B] must be the number of indices (torch's documented contract);
eager's CPU paths disagree on other values (with `padding_idx` the last bag runs to the end; without
it the sum stops at offsets[B] while "mean" divides by the count to the end), ember's last bag runs
to the end.

torch's auxiliary outputs (offset2bag, bag_size, max_indices) are kernel-specific: their sizes differ
between `_embedding_bag` and `_embedding_bag_forward_only`, CPU and CUDA. When the program reads one
(AOTAutograd's backward saves them) the call stays an extern, as do mode "max" (a segment arg-max),
`scale_grad_by_freq` and `sparse`. An index out of range raises IndexError (eager: RuntimeError).
"""

from __future__ import annotations

import operator

import torch

from ..ir import Value
from ..ir.ops.index import INDEX_DTYPES
from ..ir.ops.search import SEARCH_DTYPES
from .lowering import Fallback, aten, register

_SUM, _MEAN = 0, 1


def search(L, seq: Value, values: Value, right: bool, out_int32: bool = False) -> Value:
    if seq.type.rank != 1 or seq.dtype != values.dtype or seq.dtype not in SEARCH_DTYPES:
        raise Fallback("searchsorted over a batch of sequences or between dtypes")
    return L.add("searchsorted", [seq, values], right=bool(right), out_int32=bool(out_int32))


@register(aten.searchsorted.Tensor)
def _searchsorted(L, node, a):
    if a.get("sorter") is not None or not isinstance(a.self, Value):
        raise Fallback("searchsorted with a sorter")
    side = a.get("side")
    return search(L, a.sorted_sequence, a.self, a.get("right") or side == "right", a.get("out_int32"))


@register(aten.bucketize.Tensor)
def _bucketize(L, node, a):
    return search(L, a.boundaries, a.self, a.get("right"), a.get("out_int32"))


def _reads_aux(node: torch.fx.Node) -> bool:
    return any(u.target is not operator.getitem or u.args[1] != 0 for u in node.users)


@register(aten._embedding_bag_forward_only.default, aten._embedding_bag.default)
def _embedding_bag(L, node, a):
    w, idx, offsets = a.weight, a.indices, a.offsets
    mode, psw = a.get("mode", _SUM), a.get("per_sample_weights")
    if mode not in (_SUM, _MEAN) or a.get("scale_grad_by_freq") or a.get("sparse"):
        raise Fallback("embedding_bag in mode max, with scale_grad_by_freq or sparse gradients")
    if _reads_aux(node):
        raise Fallback("embedding_bag whose offset2bag / bag_size / max_indices outputs are read")
    if idx.dtype not in INDEX_DTYPES or offsets.dtype not in INDEX_DTYPES or idx.type.rank != 1 or w.type.rank != 2:
        raise Fallback("embedding_bag with indices that are not 1-D integers")
    n, d = idx.shape[0], w.shape[1]
    last = bool(a.get("include_last_offset"))
    bags = offsets.shape[0] - (1 if last else 0)
    if n == 0 or bags <= 0:
        raise Fallback("embedding_bag of no indices or no bags")
    offsets = L.cast(offsets, torch.int64)
    starts = L.add("slice", [offsets], dim=0, start=0, end=bags, step=1) if last else offsets
    pos = L.add("arange", [], start=0, step=1, length=n, dtype=torch.int64)
    bag = L.add("sub", [search(L, starts, pos, right=True), L.const(1, torch.int64)])

    keep = L.const(True, torch.bool, (n,))
    pad = a.get("padding_idx", -1)
    padded = pad is not None and pad >= 0
    if padded:
        keep = L.add("ne", [idx, L.const(pad, idx.dtype)])
    scale = L.cast(keep, w.dtype)
    if isinstance(psw, Value):
        scale = L.add("mul", [scale, L.cast(psw, w.dtype)])
    rows = L.add("mul", [L.add("index", [w, idx], dim=0, wrap=False), L.reshape(scale, (n, 1))])
    out = L.add("index_add", [L.const(0, w.dtype, (bags, d)), bag, rows], dim=0)
    if mode == _MEAN:
        sizes = L.reshape(_bag_sizes(L, keep if padded else None, offsets, starts, n, bags), (bags, 1))
        # divided by at least 1: a bag of padding only has rows (scaled by 0) whose gradient reads this
        # quotient's, and 0/0 there would make it NaN (eager's: 0)
        safe = L.add("maximum", [sizes, L.const(1, torch.int64)])
        mean = L.add("div", [out, L.cast(safe, w.dtype)])
        out = L.add("where", [L.add("gt", [sizes, L.const(0, torch.int64)]), mean, L.const(0, w.dtype)])
    aux = [L.const(0, torch.int64, tuple(v.shape)) for v in node.meta["val"][1:]]
    return [L.reshape(out, tuple(node.meta["val"][0].shape))] + aux


def _bag_sizes(L, keep: Value | None, offsets: Value, starts: Value, n: int, bags: int) -> Value:
    """Each bag's count of kept indices: its end minus its start; with padding (`keep`), the running
    count of kept indices read at both ends."""
    i64 = torch.int64
    nxt = L.add("add", [L.add("arange", [], start=0, step=1, length=bags, dtype=i64), L.const(1, i64)])
    ends = L.add("index_select", [offsets, L.add("minimum", [nxt, L.const(offsets.shape[0] - 1, i64)])], dim=0)
    ends = L.add("where", [L.add("lt", [nxt, L.const(bags, i64)]), ends, L.const(n, i64)])  # the last: to the end
    if keep is None:
        return L.add("sub", [ends, starts])
    running = L.add("cumsum", [L.cast(keep, i64)], dim=0)  # kept indices up to and including i

    def before(at: Value) -> Value:  # kept indices before position `at`
        prev = L.add("maximum", [L.add("sub", [at, L.const(1, i64)]), L.const(0, i64)])
        count = L.add("index_select", [running, L.add("minimum", [prev, L.const(n - 1, i64)])], dim=0)
        return L.add("where", [L.add("gt", [at, L.const(0, i64)]), count, L.const(0, i64)])

    return L.add("sub", [before(ends), before(starts)])
