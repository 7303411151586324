"""`GraphRewriter`: the shared skeleton of passes that rebuild a graph node by node."""

from __future__ import annotations

from ..ir import Graph, Node, Value


class GraphRewriter:
    """Builds `out` from `graph`: inputs are recreated, `map` sends old values to new ones."""

    def __init__(self, graph: Graph):
        self.graph = graph
        self.out = Graph()
        self.map: dict[Value, Value] = {v: self.out.add_input(v.type, v.name) for v in graph.inputs}

    def copy(self, node: Node) -> None:
        new = Node(node.op, [self.map[v] for v in node.inputs], node.attrs, [v.type for v in node.outputs], node.label)
        self.out.nodes.append(new)
        for old, v in zip(node.outputs, new.outputs):
            self.map[old] = v

    def finish(self) -> Graph:
        self.out.set_outputs(self.map[v] for v in self.graph.outputs)
        return self.out
