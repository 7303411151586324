"""Runtime: executes a compiled plan. PLACEHOLDER until the codegen/runtime work lands:
`compile_graph` currently runs the reference interpreter."""

from __future__ import annotations

from ..ir import Graph, evaluate


class _InterpretedGraph:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.kernels: list = []
        self.num_kernels = 0

    def __call__(self, inputs):
        return evaluate(self.graph, *inputs)


def compile_graph(graph: Graph):
    return _InterpretedGraph(graph)
