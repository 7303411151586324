"""Rewrite composite ops (mean, var, std, ...) into primitives with their registry `decompose` rule."""

from __future__ import annotations

from ..ir import Graph, get_op
from .rewrite import GraphRewriter


def decompose(graph: Graph) -> Graph:
    rw = GraphRewriter(graph)
    for node in graph.nodes:
        opdef = get_op(node.op)
        if opdef.kind == "composite":
            out = opdef.decompose(rw.out, *[rw.map[v] for v in node.inputs], **node.attrs)
            rw.map[node.outputs[0]] = out
        else:
            rw.copy(node)
    return rw.finish()
