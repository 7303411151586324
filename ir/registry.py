"""The op registry: one `OpDef` per op, holding every rule for it side by side (JAX style), and the
lookups every stage asks it: `get_op`, `check_arity`, `is_view`/`view_root` (the one answer to "is
this a view" for the passes and the runtime), `flops`, `primitive_aten_ops`.

An entry's parts live by purpose: the record and its fields, with the `emit` hook protocol, in
ir/opdef.py; `Domain` and the dtype families in ir/domains.py; the `vjp` contract and the helpers
the rules share in ir/vjp.py. They are re-exported here, so an op module in `ops/*.py` imports
everything it needs from this one place.
"""

from __future__ import annotations

from .domains import ALL, DTYPE, FLOAT, INT, INTEGRAL, NUMERIC, Domain
from .opdef import KINDS, OpDef
from .vjp import restore_reduced, scalar, unbroadcast, zeros

__all__ = [
    "ALL", "DTYPE", "FLOAT", "INT", "INTEGRAL", "NUMERIC", "Domain", "KINDS", "OpDef", "OPS", "register",
    "get_op", "check_arity", "is_view", "view_root", "flops", "primitive_aten_ops", "scalar", "zeros",
    "unbroadcast", "restore_reduced",
]

OPS: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in OPS:
        raise ValueError(f"op {opdef.name!r} registered twice")
    OPS[opdef.name] = opdef
    return opdef


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown IR op {name!r}; registered ops: {', '.join(sorted(OPS))}") from None


def check_arity(name: str, n: int) -> None:
    """Raise a TypeError naming the op when it does not take `n` inputs."""
    op = get_op(name)
    if not op.takes(n):
        want = op.arity if isinstance(op.arity, int) else (
            f"at least {op.arity[0]}" if op.arity[1] is None else f"{op.arity[0]} to {op.arity[1]}")
        raise TypeError(f"{name}: takes {want} input(s), got {n}")


def is_view(op: str) -> bool:
    """Is a node of `op` a view of its first input (no kernel, no data moved)?"""
    return get_op(op).view


def view_root(v):
    """The value whose storage `v` reads: `v` followed back through view ops to a graph input or the
    result of an op that is not a view."""
    while v.producer is not None and is_view(v.producer.op):
        v = v.producer.inputs[0]
    return v


def flops(node) -> int:
    """The flops a kernel spends on `node` (its entry's `cost`)."""
    return get_op(node.op).flops(node)


def primitive_aten_ops() -> set:
    """The aten overloads capture must not decompose: those of every primitive op's entry."""
    return {a for op in OPS.values() if op.primitive for a in op.aten}
