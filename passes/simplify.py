"""Algebraic simplification with rewrite rules kept as data.

Each rule is (op, rule) where rule(node, inputs) returns a replacement value, or None to leave the node.
Rules only fire when the replacement has exactly the node's type, so broadcasting is never lost.
"""

from __future__ import annotations

from collections.abc import Callable

from ..ir import Graph, Node, Value
from .rewrite import GraphRewriter


def _const(v: Value):
    p = v.producer
    return p.attrs["value"] if p is not None and p.op == "full" else None


def _identity_operand(unit) -> Callable:
    """x op unit -> x (and unit op x -> x for commutative ops)."""
    def rule(node: Node, ins: list[Value], commutative: bool = True):
        a, b = ins
        if _const(b) == unit and b.producer.attrs["value"] is not True:
            return a
        if commutative and _const(a) == unit and a.producer.attrs["value"] is not True:
            return b
        return None
    return rule


def _compose_permute(node: Node, ins: list[Value]):
    (x,) = ins
    dims = node.attrs["dims"]
    if x.producer is not None and x.producer.op == "permute":
        inner = x.producer.attrs["dims"]
        dims = tuple(inner[d] for d in dims)
        x = x.producer.inputs[0]
        if dims != tuple(range(len(dims))):
            return ("permute", [x], {"dims": dims})
    return x if tuple(dims) == tuple(range(len(dims))) else None


def _collapse_reshape(node: Node, ins: list[Value]):
    (x,) = ins
    if x.producer is not None and x.producer.op == "reshape":
        return ("reshape", [x.producer.inputs[0]], dict(node.attrs))
    return None


RULES: list[tuple[str, Callable]] = [
    ("mul", _identity_operand(1)),
    ("add", _identity_operand(0)),
    ("sub", lambda n, ins: _identity_operand(0)(n, ins, commutative=False)),
    ("div", lambda n, ins: ins[0] if _const(ins[1]) == 1 and n.attrs.get("rounding_mode") is None else None),
    ("convert", lambda n, ins: ins[0] if ins[0].dtype == n.attrs["dtype"] else None),
    ("permute", _compose_permute),
    ("reshape", _collapse_reshape),
    ("reshape", lambda n, ins: ins[0] if ins[0].shape == tuple(n.attrs["shape"]) else None),
    ("expand", lambda n, ins: ins[0] if ins[0].shape == tuple(n.attrs["shape"]) else None),
]


def simplify(graph: Graph) -> Graph:
    rw = GraphRewriter(graph)
    for node in graph.nodes:
        ins = [rw.map[v] for v in node.inputs]
        replacement = None
        for op, rule in RULES:
            if op == node.op and len(node.outputs) == 1:
                replacement = rule(node, ins)
                if replacement is not None:
                    break
        if isinstance(replacement, tuple):  # a cheaper node: (op, inputs, attrs)
            op, new_ins, attrs = replacement
            replacement = rw.out.add(op, new_ins, **attrs)
        if isinstance(replacement, Value) and replacement.type == node.out.type:
            rw.map[node.out] = replacement
        else:
            rw.copy(node)
    return rw.finish()
