"""Reference interpreter: runs a graph with each op's torch `impl`. It is the oracle for tests.

`Interpreter` is a base class in the manner of torch.fx: subclass and override `run_node` to build
analyses that walk a graph with concrete values.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .graph import Graph, Node, Value
from .registry import get_op


class Interpreter:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.env: dict[Value, torch.Tensor] = {}
        self.device = torch.device("cpu")

    def run(self, *args: torch.Tensor) -> list[torch.Tensor]:
        if len(args) != len(self.graph.inputs):
            raise TypeError(f"graph takes {len(self.graph.inputs)} inputs, got {len(args)}")
        if args:
            self.device = args[0].device
        self.env = dict(zip(self.graph.inputs, args))
        for node in self.graph.nodes:
            out = self.run_node(node, [self.env[v] for v in node.inputs])
            outs = out if isinstance(out, (list, tuple)) else [out]
            for v, t in zip(node.outputs, outs):
                self.env[v] = t
        return [self.env[v] for v in self.graph.outputs]

    def run_node(self, node: Node, args: Sequence[torch.Tensor]):
        opdef = get_op(node.op)
        out = opdef.impl(*args, **node.attrs)
        if opdef.arity == 0:  # generators (full, arange, iota) make their tensor where the inputs are
            out = out.to(self.device)
        return out


def evaluate(graph: Graph, *args: torch.Tensor) -> list[torch.Tensor]:
    """Run `graph` on `args` with the reference implementations."""
    return Interpreter(graph).run(*args)
