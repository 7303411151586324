"""Algebraic simplification with rewrite rules kept as data.

Each rule is (op, rule) where rule(node, inputs) returns a replacement value, or None to leave the node.
Rules only fire when the replacement has exactly the node's type, so broadcasting is never lost.
"""

from __future__ import annotations

from collections.abc import Callable

from ..ir import Graph, Node, Value, get_op
from ..ir.types import broadcast_shapes
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
        src = x.producer.inputs[0]
        return src if src.shape == tuple(node.attrs["shape"]) else ("reshape", [src], dict(node.attrs))
    return None


def _reshaped(v: Value) -> Value | None:
    """The source of `v` when v is a reshape that keeps the last dim (merges or splits leading dims)."""
    p = v.producer
    if p is None or p.op != "reshape" or not v.shape or not p.inputs[0].shape:
        return None
    src = p.inputs[0]
    return src if src.shape[-1] == v.shape[-1] else None


def _batched_matmul(node: Node, ins: list[Value], g: Graph):
    """Undo the batch flattening of torch's matmul decomposition, so no reshape cuts fusion:
    - matmul(reshape(x, [M, K]), w) -> reshape(matmul(x, w))   (nn.Linear on 3-d input);
    - matmul(reshape(x, [B, M, K]), reshape(y, [B, K, N])) -> reshape(matmul(x, y)) when x and y have
      the same leading dims (multi-head attention's q @ k^T and p @ v)."""
    a, b = ins
    x = _reshaped(a)
    if x is None or x.type.rank <= a.type.rank:
        return None
    if a.type.rank == 2 and b.type.rank == 2:
        return g.add("reshape", [g.add("matmul", [x, b])], shape=node.out.shape)
    pb = b.producer
    if a.type.rank != 3 or b.type.rank != 3 or pb is None or pb.op != "reshape":
        return None
    y = pb.inputs[0]
    if y.type.rank < 3 or x.shape[-2:] != a.shape[-2:] or y.shape[-2:] != b.shape[-2:]:
        return None
    # Leading dims of x and y may differ only in size-1 dims (a `select` spelled as slice + reshape).
    if tuple(d for d in x.shape[:-2] if d != 1) != tuple(d for d in y.shape[:-2] if d != 1):
        return None
    batch = min(x.shape[:-2], y.shape[:-2], key=len)  # the shorter spelling: one side keeps its view
    if len(batch) < 2:  # already the flattened form: nothing to undo
        return None
    x = x if x.shape[:-2] == batch else g.add("reshape", [x], shape=batch + x.shape[-2:])
    y = y if y.shape[:-2] == batch else g.add("reshape", [y], shape=batch + y.shape[-2:])
    return g.add("reshape", [g.add("matmul", [x, y])], shape=node.out.shape)


def _sink_reshape(node: Node, ins: list[Value], g: Graph):
    """op(reshape(y), z) -> reshape(op(y, z)) when the reshape only regroups leading dims and z
    broadcasts along the kept trailing dims; reshapes then meet and cancel instead of cutting fusion."""
    reshaped = [(i, _reshaped(v)) for i, v in enumerate(ins) if v.type.rank > 0 and _reshaped(v) is not None]
    if len(reshaped) != 1:
        return None
    i, y = reshaped[0]
    r = ins[i]
    trailing = 0
    while trailing < min(y.type.rank, r.type.rank) and y.shape[-1 - trailing] == r.shape[-1 - trailing]:
        trailing += 1
    if r.shape != node.out.shape or any(v.type.rank > trailing for j, v in enumerate(ins) if j != i):
        return None
    new_ins = [y if j == i else v for j, v in enumerate(ins)]
    return g.add("reshape", [g.add(node.op, new_ins, **node.attrs)], shape=node.out.shape)


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


def _broadcast_source(v: Value) -> Value | None:
    """The value `v` broadcasts from, when `v` only spells broadcasting out: an expand, or a reshape
    that adds or removes leading size-1 dims (or reshapes a single element)."""
    p = v.producer
    if p is None or p.op not in ("expand", "reshape"):
        return None
    src = p.inputs[0]
    if p.op == "expand" or src.type.numel == 1:
        return src
    strip = lambda shape: shape[next((i for i, d in enumerate(shape) if d != 1), len(shape)):]
    return src if strip(src.shape) == strip(v.shape) else None


def _implicit_broadcast(node: Node, ins: list[Value], g: Graph):
    """op(expand(a), b) -> op(a, b): pointwise ops broadcast by themselves, and an expand or a
    reshape feeding one is a layout op that would cut a fused kernel in two (the VJPs of reductions
    and broadcasts produce many)."""
    new_ins = list(ins)
    while True:  # strip chains (reshape then expand)
        nxt = [(_broadcast_source(v) or v) for v in new_ins]
        if nxt == new_ins:
            break
        new_ins = nxt
    if new_ins == ins:
        return None
    try:
        shape = broadcast_shapes(*(v.shape for v in new_ins))
    except ValueError:
        return None
    if shape != node.out.shape:  # the layout op decided the output shape: keep it
        return None
    return g.add(node.op, new_ins, **node.attrs)


# Rules that build new nodes in the graph under construction: (predicate on the node, rule).
BUILDING_RULES: list[tuple[Callable[[Node], bool], Callable]] = [
    (lambda n: n.op == "matmul", _batched_matmul),
    (lambda n: get_op(n.op).kind == "pointwise" and bool(n.inputs), _implicit_broadcast),
    (lambda n: get_op(n.op).kind == "pointwise" and bool(n.inputs), _sink_reshape),
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
        for applies, rule in BUILDING_RULES:
            if replacement is None and len(node.outputs) == 1 and applies(node):
                replacement = rule(node, ins, rw.out)
        if isinstance(replacement, tuple):  # a cheaper node: (op, inputs, attrs)
            op, new_ins, attrs = replacement
            replacement = rw.out.add(op, new_ins, **attrs)
        if isinstance(replacement, Value) and replacement.type == node.out.type:
            rw.map[node.out] = replacement
        else:
            rw.copy(node)
    return rw.finish()
