"""Structural and type checks of a `Graph`; every pass result goes through `verify`."""

from __future__ import annotations

from .graph import Graph
from .registry import OPS, check_arity


class VerificationError(ValueError):
    pass


def verify(graph: Graph) -> Graph:
    """Raise `VerificationError` naming the offending node; return the graph when it is well formed."""
    defined = set()
    for v in graph.inputs:
        if v in defined:
            raise VerificationError(f"input %{v.name} listed twice")
        defined.add(v)
    for i, node in enumerate(graph.nodes):
        where = f"node {i} ({node.op})"
        if node.op not in OPS:
            raise VerificationError(f"{where}: unknown op {node.op!r}")
        for v in node.inputs:
            if v not in defined:
                raise VerificationError(f"{where}: uses %{v.name}, which is not defined before it")
        try:
            check_arity(node.op, len(node.inputs))
            t = OPS[node.op].infer([v.type for v in node.inputs], **node.attrs)
        except (TypeError, ValueError, RuntimeError) as e:
            raise VerificationError(f"{where}: type rule rejects it: {e}") from None
        expected = list(t) if isinstance(t, (list, tuple)) else [t]
        actual = [v.type for v in node.outputs]
        if expected != actual:
            raise VerificationError(
                f"{where}: declared output types {[str(a) for a in actual]} "
                f"but the type rule gives {[str(e) for e in expected]}")
        for v in node.outputs:
            if v in defined:
                raise VerificationError(f"{where}: redefines %{v.name}")
            defined.add(v)
    for v in graph.outputs:
        if v not in defined:
            raise VerificationError(f"graph output %{v.name} is not defined")
    return graph
