"""Common-subexpression elimination: one node per (op, inputs, attrs).

`extern` nodes are never merged: a torch call may be random (dropout, rand) or otherwise impure;
but for the sort of ember's scatters (`ember::sort_index`, ir/ops/scatter.py), which is pure: two
scatters by one index sort it once.
"""

from __future__ import annotations

from ..ir import Graph
from ..ir.ops.scatter import SORT_TARGET
from ..ir.printer import format_attr
from .rewrite import GraphRewriter


def cse(graph: Graph) -> Graph:
    rw = GraphRewriter(graph)
    seen: dict[tuple, list] = {}
    for node in graph.nodes:
        if node.op == "extern" and node.attrs["target"] != SORT_TARGET:
            rw.copy(node)
            continue
        key = (node.op, tuple(rw.map[v].id for v in node.inputs),
               tuple((k, format_attr(v)) for k, v in sorted(node.attrs.items())),
               tuple(v.type for v in node.outputs))
        if key in seen:
            for old, new in zip(node.outputs, seen[key]):
                rw.map[old] = new
        else:
            rw.copy(node)
            seen[key] = [rw.map[v] for v in node.outputs]
    return rw.finish()
