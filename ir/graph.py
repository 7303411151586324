"""The IR: a typed SSA graph in A-normal form (like a jaxpr).

A `Graph` has input `Value`s, a list of `Node`s in topological order and output values. Each node
applies one registered op to input values with static attributes and defines one or more output
values, each with a `TensorType`. Graphs are built with `Graph.add`, which runs the op's type rule.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from typing import Any

from .types import TensorType

_ids = itertools.count()


class Value:
    """An SSA value: defined once (by a graph input or a node), used any number of times."""

    __slots__ = ("type", "name", "producer", "id")

    def __init__(self, type: TensorType, name: str | None = None, producer: Node | None = None):
        self.type = type
        self.name = name
        self.producer = producer
        self.id = next(_ids)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self):
        return self.type.dtype

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """One op application. `attrs` hold static, printable values (ints, floats, tuples, dtypes, str).
    `label`: provenance only, not semantics (passes keep it on the nodes they copy; it is printed as a
    trailing `# label`): the user op (`ember.custom_op`) whose body or VJP the node was inlined from."""

    __slots__ = ("op", "inputs", "attrs", "outputs", "label")

    def __init__(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any], out_types: Sequence[TensorType],
                 label: str | None = None):
        self.op = op
        self.inputs = list(inputs)
        self.attrs = dict(attrs)
        self.outputs = [Value(t, producer=self) for t in out_types]
        self.label = label

    @property
    def out(self) -> Value:
        if len(self.outputs) != 1:
            raise ValueError(f"{self.op} has {len(self.outputs)} outputs; use .outputs")
        return self.outputs[0]

    def __repr__(self) -> str:
        from .printer import format_node

        return format_node(self)


class Graph:
    def __init__(self) -> None:
        self.inputs: list[Value] = []
        self.nodes: list[Node] = []
        self.outputs: list[Value] = []

    # -- building -------------------------------------------------------------------------------
    def add_input(self, type: TensorType, name: str | None = None) -> Value:
        v = Value(type, name)
        self.inputs.append(v)
        return v

    def add(self, op: str, inputs: Sequence[Value], out_types: Sequence[TensorType] | None = None,
            **attrs: Any) -> Value | list[Value]:
        """Append a node applying `op`; its output types come from the op's type rule unless given.

        Returns the single output value, or the list of outputs for multi-output nodes.
        """
        from .registry import check_arity, get_op

        opdef = get_op(op)
        check_arity(op, len(inputs))
        if out_types is None:
            t = opdef.infer([v.type for v in inputs], **attrs)
            out_types = list(t) if isinstance(t, (list, tuple)) else [t]
        node = Node(op, inputs, attrs, out_types)
        self.nodes.append(node)
        return node.outputs[0] if len(node.outputs) == 1 else list(node.outputs)

    def set_outputs(self, outputs: Iterable[Value]) -> None:
        self.outputs = list(outputs)

    # -- inspection -----------------------------------------------------------------------------
    def users(self) -> dict[Value, list[Node]]:
        uses: dict[Value, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                uses.setdefault(v, []).append(n)
        return uses

    def name_values(self) -> None:
        """Give every unnamed value a fresh printable name (inputs keep theirs when unique)."""
        taken: set[str] = set()
        for i, v in enumerate(self.inputs):
            if not v.name or v.name in taken or not v.name.replace("_", "a").isalnum():
                v.name = f"in{i}"
            taken.add(v.name)
        counter = itertools.count()
        for n in self.nodes:
            for v in n.outputs:
                name = str(next(counter))
                while name in taken:
                    name = str(next(counter))
                v.name = name
                taken.add(name)

    def __str__(self) -> str:
        from .printer import format_graph

        return format_graph(self)

    __repr__ = __str__

    def inline(self, template: Graph, values: Sequence[Value], label: str | None = None) -> list[Value]:
        """Append `template`'s nodes, its inputs bound to `values`; returns its outputs' values here.
        The new nodes keep their labels; `label` marks the others."""
        env: dict[Value, Value] = dict(zip(template.inputs, values))
        for node in template.nodes:
            out = self.add(node.op, [env[v] for v in node.inputs], out_types=[v.type for v in node.outputs],
                           **node.attrs)
            self.nodes[-1].label = node.label or label
            env.update(zip(node.outputs, out if isinstance(out, list) else [out]))
        return [env[v] for v in template.outputs]
