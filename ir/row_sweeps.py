"""The sweeps of a looped row kernel: which reductions of a row group share one pass over the row.

A row too long for registers (codegen/row.py, "looped") is read from memory once per sweep. A
reduction joins the first sweep after every reduction its input depends on, so independent
reductions (`x.sum(-1)` and `(x * x).sum(-1)`) share one. Two reductions that do depend on an
earlier one are folded into that one's sweep by rewriting their accumulation:

- online softmax: `sum(exp(t - amax(t)))` accumulates per lane a running max and a sum rescaled by
  `exp(old max - new max)` (Milakov & Gimelshein), in the amax's sweep: softmax and log_softmax read
  the row twice (max + sum, then the output), not three times;
- Welford: `sum((t - sum(t) / n) ** 2)` (variance, LayerNorm) accumulates per lane a count, a mean
  and M2, combined across lanes with Chan's formula, in the sweep of `sum(t)`: numerically safe
  (no `E[x^2] - E[x]^2` cancellation) and two reads of the row, not three.

Both forms are taken only in float32/float64 (a half-typed exp would round each term in eager).
The row emitter and the cost model (passes/cost.py `row_read_bytes`) both follow this plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .graph import Node, Value
from .kernel_group import KernelGroup
from .ops.reduction import reduced_shape
from .registry import get_op

_WIDE = (torch.float32, torch.float64)


def is_row_value(group: KernelGroup, v: Value) -> bool:
    """A [rows] value of a row group (reduction results and what follows) rather than a [rows, cols]
    tile (codegen/row.py `RowLayout.is_row`)."""
    g = group
    return v.shape != g.shape and (v.shape in (reduced_shape(g.shape, g.dims, True),
                                               reduced_shape(g.shape, g.dims, False)) or v.type.numel == 1)


def tile_reductions(group: KernelGroup) -> list[Node]:
    """The reductions of the group over tiles (not a `whole` group's reductions across rows)."""
    # (`pick` loads its one element per row directly, in no sweep: codegen/cross_entropy.py)
    return [n for n in group.nodes if get_op(n.op).kind == "reduction" and not is_row_value(group, n.inputs[0])
            and n.op != "pick"]


@dataclass
class Sweeps:
    order: list[list[Node]] = field(default_factory=list)  # the tile reductions of each sweep, in node order
    # a folded reduction -> ("online", its amax) | ("welford", the sum its mean divides)
    fused: dict[Node, tuple[str, Node]] = field(default_factory=dict)

    def loop_input(self, node: Node) -> Value:
        """The tile a reduction reads in its sweep: its input, or the folded forms' `t`."""
        return self.fused[node][1].inputs[0] if node in self.fused else node.inputs[0]

    def first(self, node: Node) -> bool:
        return any(s[0] is node for s in self.order)

    def sweep_of(self, node: Node) -> list[Node]:
        return next(s for s in self.order if node in s)


def _producer(group_nodes: set[Node], v: Value, op: str) -> Node | None:
    n = v.producer
    return n if n is not None and n in group_nodes and n.op == op else None


def _online(group: KernelGroup, nodes: set[Node], s: Node) -> Node | None:
    """The amax A when `s` is sum(exp(t - A)) with A = amax(t) over the same dims (keepdim)."""
    ex = _producer(nodes, s.inputs[0], "exp")
    sub = ex and _producer(nodes, ex.inputs[0], "sub")
    a = sub and _producer(nodes, sub.inputs[1], "amax")
    if s.op != "sum" or not a or a.inputs[0] is not sub.inputs[0] or not a.attrs.get("keepdim"):
        return None
    if any(v.dtype not in _WIDE for v in (ex.out, sub.out, s.out, a.out)) or is_row_value(group, a.inputs[0]):
        return None
    return a


def _welford(group: KernelGroup, nodes: set[Node], v: Node) -> Node | None:
    """The sum P when `v` is sum(d * d) with d = t - P / c (or P * c), P = sum(t), c a constant."""
    sq = _producer(nodes, v.inputs[0], "mul")
    if v.op != "sum" or not sq or sq.inputs[0] is not sq.inputs[1]:
        return None
    d = _producer(nodes, sq.inputs[0], "sub")
    mu = d and (_producer(nodes, d.inputs[1], "div") or _producer(nodes, d.inputs[1], "mul"))
    if not mu or mu.attrs.get("rounding_mode") is not None or mu.inputs[1].producer not in group.scalars:
        return None
    p = _producer(nodes, mu.inputs[0], "sum")
    if not p or p.inputs[0] is not d.inputs[0] or not p.attrs.get("keepdim") or is_row_value(group, p.inputs[0]):
        return None
    # the mean must be the mean: sum / n (or sum * (1/n)), n the elements of a row
    c, n = mu.inputs[1].producer.attrs.get("value"), math.prod(group.shape[k] for k in group.dims)
    if not isinstance(c, (int, float)) or not (c == n if mu.op == "div" else abs(c * n - 1) < 1e-6):
        return None
    if any(x.dtype not in _WIDE for x in (sq.out, d.out, mu.out, p.out, v.out)):
        return None
    return p


def row_sweeps(group: KernelGroup) -> Sweeps:
    """The sweeps of `group` run as a looped row kernel (see the module doc)."""
    nodes = set(group.nodes)
    reds = set(tile_reductions(group))
    deps: dict[Value, frozenset[Node]] = {}  # the tile reductions a value depends on
    level: dict[Node, int] = {}
    out = Sweeps()
    for n in group.nodes:
        below = frozenset().union(*(deps.get(v, frozenset()) for v in n.inputs))
        if n in reds:
            fold = _online(group, nodes, n) or _welford(group, nodes, n)
            # (the folded forms read their amax's or sum's own chunk tile: that one must be plain)
            if fold is not None and fold not in out.fused and below <= {fold} | deps.get(fold.inputs[0], frozenset()):
                out.fused[n] = ("online" if fold.op == "amax" else "welford", fold)
                level[n] = level[fold]
            else:
                level[n] = 1 + max((level[d] for d in below), default=-1)
            below = frozenset({n})
        for v in n.outputs:
            deps[v] = below
    for k in sorted(set(level.values())):
        out.order.append([n for n in group.nodes if level.get(n) == k])
    return out


def reduction_free(group: KernelGroup, node: Node) -> bool:
    """Does `node`'s value depend on no reduction of the group (only on loads and constants)?"""
    nodes = set(group.nodes)
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if get_op(n.op).kind == "reduction":
            return False
        stack += [v.producer for v in n.inputs if v.producer in nodes]
    return True
