"""Give every graph output its own storage.

After simplification an output can be a graph input itself (`x * 1`) or a layout view of one
(`(x * 1).t()` folds to a strided view of `x`). Eager PyTorch returns a fresh tensor for these, and a
caller that mutates the result must never change its own input, so such outputs get a `copy`.
Outputs that eager itself returns as inputs or views of them (`x`, `x[1:]`, `x.t()`) are not graph
outputs at all: the frontend replays those views on the caller's tensor (frontend/aliasing.py).
"""

from __future__ import annotations

from ..ir import Graph
from ..ir.registry import view_root
from .rewrite import GraphRewriter


def _aliases_input(graph: Graph, v) -> bool:
    # Every view op counts, flip too: two flips of a dim are the input itself again (a view the
    # runtime returns as is).
    return view_root(v) in graph.inputs


def materialize_outputs(graph: Graph) -> Graph:
    if not any(_aliases_input(graph, v) for v in graph.outputs):
        return graph
    rw = GraphRewriter(graph)
    for node in graph.nodes:
        rw.copy(node)
    outs = [rw.out.add("copy", [rw.map[v]]) if _aliases_input(graph, v) else rw.map[v] for v in graph.outputs]
    rw.out.set_outputs(outs)
    return rw.out
