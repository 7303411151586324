"""Algebraic simplification with rewrite rules kept as data.

Each rule is (op, rule) where rule(node, inputs) returns a replacement value, or None to leave the node.
Rules only fire when the replacement has exactly the node's type, so broadcasting is never lost.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

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


def _batched_matmul(node: Node, ins: list[Value], g: Graph, users: dict):
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


def _sink_reshape(node: Node, ins: list[Value], g: Graph, users: dict):
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


def _implicit_broadcast(node: Node, ins: list[Value], g: Graph, users: dict):
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


def _zero(v: Value) -> bool:
    c = _const(v)
    return c is not None and not isinstance(c, bool) and c == 0


def _cat_pieces(v: Value, dim: int) -> list[tuple[int, int, Value]] | None:
    """[(start, end, piece)] along `dim` when `v` is a cat over `dim`."""
    p = v.producer
    if p is None or p.op != "cat" or p.attrs["dim"] != dim:
        return None
    pieces, start = [], 0
    for x in p.inputs:
        pieces.append((start, start + x.shape[dim], x))
        start += x.shape[dim]
    return pieces


def _add_of_cats(node: Node, ins: list[Value], g: Graph, users: dict):
    """cat(a1, 0, 0) + cat(0, b2, 0) + cat(0, 0, c3) -> cat(a1, b2, c3): the gradient of a value
    split with slices (split, chunk, unbind, a fused qkv projection), which autodiff accumulates from
    each slice's VJP (the slice's cotangent placed among zeros). Fires only when no piece that holds
    data is cut and every part of the result adds a zero `full` to something, so the rewrite adds no
    arithmetic: the zeros, the padded cats and the adds all disappear. Zero pieces are cut freely."""
    a, b = ins
    if node.out.type != a.type or node.out.type != b.type or not a.shape:
        return None
    if a.producer is None or a.producer.op != "cat":
        return None
    dim = a.producer.attrs["dim"]
    pa, pb = _cat_pieces(a, dim), _cat_pieces(b, dim)
    if pa is None or pb is None:
        return None
    cuts = sorted({s for s, _, _ in pa + pb} | {a.shape[dim]})
    data = [(s, e) for s, e, x in pa + pb if not _zero(x)]
    if any(any(s < c < e for c in cuts) for s, e in data):
        return None  # a data piece would be cut
    parts: list[Value] = []
    for lo, hi in zip(cuts, cuts[1:]):
        x = next(x for s, e, x in pa if s <= lo < e)
        y = next(y for s, e, y in pb if s <= lo < e)
        if not _zero(x) and not _zero(y):
            return None
        keep = y if _zero(x) else x
        if _zero(x) and _zero(y):  # one zero piece of this part's size (merged with an equal one before it)
            value = _const(x) + _const(y)  # -0.0 only if both are
            merge = parts and _zero(parts[-1]) and repr(_const(parts[-1])) == repr(value)
            size = hi - lo + (parts.pop().shape[dim] if merge else 0)
            keep = g.add("full", [], shape=a.shape[:dim] + (size,) + a.shape[dim + 1:], value=value, dtype=a.dtype)
        parts.append(keep)
    return parts[0] if len(parts) == 1 else g.add("cat", parts, dim=dim)


def _summed_batch_matmul(node: Node, ins: list[Value], g: Graph, users: dict):
    """sum(matmul(transpose(x), y), batch dims) -> matmul(transpose(x'), y') with the batch folded into
    the contraction (x' = x as [B*K, M], y' = y as [B*K, N]): the weight gradient of a linear layer
    on a batch of sequences is one GEMM, not a batched GEMM and a reduction kernel (eager's is one
    mm too). Only when x reaches the matmul transposed (the VJP's transpose of a saved input), so
    both reshapes only merge leading dims and stay views; and only when the sum is the matmul's one
    use, so no GEMM is computed twice."""
    (p,) = ins
    mm = p.producer
    if mm is None or mm.op != "matmul" or users.get(node.inputs[0]) != [node]:
        return None
    a, b = mm.inputs
    batch = p.shape[:-2]
    if not batch or a.shape[:-2] != batch or b.shape[:-2] != batch \
            or tuple(sorted(node.attrs["dims"])) != tuple(range(len(batch))):
        return None
    t = a.producer
    rank = a.type.rank
    if t is None or t.op != "permute" or tuple(t.attrs["dims"]) != tuple(range(rank - 2)) + (rank - 1, rank - 2):
        return None
    x = t.inputs[0]  # [*batch, K, M]
    n = math.prod(batch) * x.shape[-2]
    x2 = g.add("permute", [g.add("reshape", [x], shape=(n, x.shape[-1]))], dims=(1, 0))
    out = g.add("matmul", [x2, g.add("reshape", [b], shape=(n, b.shape[-1]))])
    return out if out.shape == node.out.shape else g.add("reshape", [out], shape=node.out.shape)


def _shifts_out_of_sum(node: Node, ins: list[Value], g: Graph, users: dict):
    """sum((a - r1 - r2 ...) [* w], dims) -> sum(a [* w], dims) - (r1 + r2 ...) * (n | sum(w, dims)) for
    r constant along the summed dims (row values): label smoothing's row sum of log-probabilities
    (x - max - log(sum exp)), which then no longer waits for the max and the sum of exponentials and
    shares their sweep over the row (ir/row_sweeps.py): one pass over the logits, not two. float32 and
    float64 only (a half type rounds each step in eager)."""
    dims, keepdim = tuple(node.attrs["dims"]), node.attrs.get("keepdim", False)
    v = ins[0]
    if v.dtype not in (torch.float32, torch.float64) or not dims:
        return None
    shape = v.shape

    def row(r: Value) -> bool:  # constant along the summed dims, broadcast to the row
        lead = len(shape) - r.type.rank
        return lead >= 0 and all(r.shape[i - lead] == 1 for i in dims if i >= lead) \
            and all(n in (1, shape[i + lead]) for i, n in enumerate(r.shape))

    weight = None
    p = v.producer
    if p is not None and p.op == "mul":
        a, b = p.inputs
        (chain, weight) = (a, b) if a.shape == shape else (b, a)
        if chain.shape != shape or weight.shape == shape or row(weight):  # a class weight [V], not d * d
            return None
        v = chain
    shifts = []
    while v.producer is not None and v.producer.op == "sub" and v.producer.inputs[0].shape == shape \
            and row(v.producer.inputs[1]):
        shifts.append(v.producer.inputs[1])
        v = v.producer.inputs[0]
    if not any(r.producer is not None and r.producer.op == "log" for r in shifts):
        return None  # only log-probabilities (x - max - log(sum exp)): elsewhere eager's rounding stays
    total = g.add("sum", [v if weight is None else g.add("mul", [v, weight])], dims=dims, keepdim=True)
    shift = shifts[0]
    for r in shifts[1:]:
        shift = g.add("add", [shift, r])
    if weight is None:
        scale = g.add("full", [], shape=(), value=float(math.prod(shape[i] for i in dims)), dtype=v.dtype)
    else:
        scale = g.add("sum", [g.add("expand", [weight], shape=shape)], dims=dims, keepdim=True)
    out = g.add("sub", [total, g.add("mul", [shift, scale])])  # (keep-shaped: the shifts are rows)
    return out if keepdim else g.add("reshape", [out], shape=node.out.shape)


def _squeeze_free(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(d for d in shape if d != 1)


def _unsqueezed(g: Graph, old: Value | None, new: Value, shape: tuple[int, ...], users: dict,
                depth: int = 8, inputs: bool = False) -> Value | None:
    """`new` (the image of the old graph's `old`) with size-1 dims inserted or dropped to `shape`:
    the reshape is moved above the pointwise ops that compute it (scalar operands stay) and taken by
    the iotas they start from (an iota of the new shape). Each moved op must be the only use of its
    value, unless `old` is None: then only index math moves (every leaf an iota or a scalar; None
    otherwise), which a kernel recomputes for free, so other uses keep the original. `inputs`: a
    graph input may be a leaf too (reshaped: a view), so per-row values computed from inputs (a
    loss's cotangent, masked by the targets) move into the kernel that broadcasts them."""
    p = new.producer
    if p is not None and p.op == "iota" and p.attrs["shape"][p.attrs["dim"]] != 1:
        nth = sum(1 for d in p.attrs["shape"][:p.attrs["dim"]] if d != 1)  # its dim among the non-1 dims
        dim = [d for d, size in enumerate(shape) if size != 1][nth]
        return g.add("iota", [], shape=shape, dim=dim, dtype=p.attrs["dtype"])
    q = old.producer if old is not None else p
    if depth and p is not None and q is not None and p.op == q.op and len(p.outputs) == 1 \
            and (old is None or len(users.get(old, [])) == 1) and get_op(p.op).kind == "pointwise" \
            and p.inputs and len(p.inputs) == len(q.inputs) and not {"shape", "dim", "dims"} & set(p.attrs) \
            and all(v.type.rank == 0 or v.shape == new.shape for v in p.inputs):  # (rand has a shape)
        moved = [b if b.type.rank == 0 else _unsqueezed(g, a if old is not None else None, b, shape, users, depth - 1,
                                                        inputs) for a, b in zip(q.inputs, p.inputs)]
        if any(v is None for v in moved):
            return None
        out = g.add(p.op, moved, **p.attrs)
        return out if out.shape == shape else None
    return _reshape(g, new, shape) if old is not None or (inputs and p is None) else None


def _unsqueeze_early(node: Node, ins: list[Value], g: Graph, users: dict):
    """reshape(expand(op(x, scalars)), S) -> expand(op(reshape(x), scalars)) when the reshape only
    inserts or drops size-1 dims: the gradient of a mean over windows (average pooling's backward
    expands the pooled gradient, then regroups it into windows) becomes a broadcast that the
    consumer's kernel reads, and the pointwise ops join that kernel instead of being a kernel of
    their own over the small shape. Without the expand, only computations from iotas move (an
    arange's start + step * iota, unsqueezed for a causal mask): they fuse with their consumer."""
    shape = tuple(node.attrs["shape"])
    old_e = node.inputs[0]
    if _squeeze_free(old_e.shape) != _squeeze_free(shape):
        return None
    expand, new_expand = old_e.producer, ins[0].producer
    if expand is None or expand.op != "expand" or new_expand is None or new_expand.op != "expand" \
            or users.get(old_e) != [node]:
        return _unsqueezed(g, None, ins[0], shape, users, inputs=True)
    x = new_expand.inputs[0]
    # x's size along each non-1 dim of the expanded shape, in order, at the non-1 dims of the result
    sizes = [1] * (old_e.type.rank - x.type.rank) + list(x.shape)
    along = iter(sizes[j] for j, d in enumerate(old_e.shape) if d != 1)
    target = tuple(next(along) if d != 1 else 1 for d in shape)
    x = _unsqueezed(g, expand.inputs[0], x, target, users)
    return None if x is None else g.add("expand", [x], shape=shape)


def _reshape(g: Graph, v: Value, shape: tuple[int, ...]) -> Value:
    """reshape(v), or of v's source when v is a reshape itself (a chain is one view)."""
    if v.producer is not None and v.producer.op == "reshape":
        v = v.producer.inputs[0]
    return v if v.shape == shape else g.add("reshape", [v], shape=shape)


def _arange_as_iota(node: Node, ins: list[Value], g: Graph, users: dict):
    """An integer arange is start + step * iota: a pointwise op, which fuses into the kernel that
    uses it (a causal mask's row and column indices) instead of being a kernel of its own. Exact in
    the dtype when every value fits it, as torch's arange requires."""
    a = node.attrs
    dtype, n = a["dtype"], a["length"]
    if dtype not in (torch.int32, torch.int64) or n == 0:
        return None
    info = torch.iinfo(dtype)
    if not all(info.min <= a["start"] + a["step"] * i <= info.max for i in (0, n - 1)):
        return None
    v = g.add("iota", [], shape=(n,), dim=0, dtype=dtype)
    scalar = lambda x: g.add("full", [], shape=(), value=x, dtype=dtype)
    if a["step"] != 1:
        v = g.add("mul", [v, scalar(a["step"])])
    return v if a["start"] == 0 else g.add("add", [v, scalar(a["start"])])


# Rules that build new nodes in the graph under construction: (predicate on the node, rule). A rule
# is called as rule(node, inputs in the new graph, the new graph, users of the old graph's values).
BUILDING_RULES: list[tuple[Callable[[Node], bool], Callable]] = [
    (lambda n: n.op == "matmul", _batched_matmul),
    (lambda n: n.op == "add", _add_of_cats),
    (lambda n: n.op == "sum" and not n.attrs.get("keepdim"), _summed_batch_matmul),
    (lambda n: n.op == "sum", _shifts_out_of_sum),
    (lambda n: n.op == "reshape", _unsqueeze_early),
    (lambda n: n.op == "arange", _arange_as_iota),
    (lambda n: get_op(n.op).kind == "pointwise" and bool(n.inputs), _implicit_broadcast),
    (lambda n: get_op(n.op).kind == "pointwise" and bool(n.inputs), _sink_reshape),
]


def simplify(graph: Graph) -> Graph:
    rw = GraphRewriter(graph)
    users = graph.users()
    for v in graph.outputs:  # an output is read by the caller too
        users[v] = [*users.get(v, []), None]
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
                replacement = rule(node, ins, rw.out, users)
        if isinstance(replacement, tuple):  # a cheaper node: (op, inputs, attrs)
            op, new_ins, attrs = replacement
            replacement = rw.out.add(op, new_ins, **attrs)
        if isinstance(replacement, Value) and replacement.type == node.out.type:
            rw.map[node.out] = replacement
        else:
            rw.copy(node)
    return rw.finish()
