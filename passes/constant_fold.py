"""Constant folding: a pointwise node whose inputs are all `full` constants becomes a `full`.

The value is computed by the op's own reference `impl` on 0-dim tensors of the input dtype, so the
folded constant rounds exactly as the kernel would have.
"""

from __future__ import annotations

import torch

from ..ir import Graph, get_op
from .rewrite import GraphRewriter


def constant_fold(graph: Graph) -> Graph:
    rw = GraphRewriter(graph)
    for node in graph.nodes:
        new_inputs = [rw.map[v] for v in node.inputs]
        producers = [v.producer for v in new_inputs]
        if (get_op(node.op).kind == "pointwise" and new_inputs
                and all(p is not None and p.op == "full" for p in producers)):
            args = [torch.tensor(p.attrs["value"], dtype=p.attrs["dtype"]) for p in producers]
            value = get_op(node.op).impl(*args, **node.attrs).item()
            out = node.out.type
            rw.map[node.out] = rw.out.add("full", [], shape=out.shape, value=value, dtype=out.dtype)
        else:
            rw.copy(node)
    return rw.finish()
