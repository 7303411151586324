"""Dead-code elimination: drop nodes none of whose outputs reach a graph output."""

from __future__ import annotations

from ..ir import Graph
from .rewrite import GraphRewriter


def dce(graph: Graph) -> Graph:
    live = set(graph.outputs)
    keep = []
    for node in reversed(graph.nodes):
        if any(v in live for v in node.outputs):
            keep.append(node)
            live.update(node.inputs)
    keep_set = set(map(id, keep))
    rw = GraphRewriter(graph)
    for node in graph.nodes:
        if id(node) in keep_set:
            rw.copy(node)
    return rw.finish()
