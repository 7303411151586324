"""Explicit attention rewritten to the fused `attention` op (ir/ops/attention.py):

    softmax(q @ k^T * scale) @ v            (scale: a `mul` or `div` by a 0-dim constant, or none)
    softmax(where(~causal, -inf, q @ k^T * scale)) @ v

as simplify leaves them: `matmul(q, permute(k))`, the scale, softmax as `amax`, `sub`, `exp`, `sum`,
`div` over the last dim (keepdim), optionally computed in float32 from half scores (`convert`s around
it, torch's `softmax(s.float()).to(dtype)`), then `matmul(p, v)`. The causal mask is torch's `tril`
of a square of ones as simplify spells it (`le(iota_j - iota_i, 0)`, optionally `and`-ed with the
ones) — top-left aligned, keeping key j <= query i, so no row is empty.

It fires only where it computes the same function: the softmax runs over the key dim; q, k, v are
[B, H, L, D], [B, Hk, S, D], [B, Hk, S, Dv] with Hk dividing H (matmul's broadcast of one key/value
head is Hk = 1); and the scores, probabilities and every value between them have no other user (a
program that reads the probabilities keeps them). Other masks stay as they are: eager's softmax of a
fully masked row is NaN, the fused kernel's 0, and whether a row is fully masked is not known here.
Half-precision scores are then kept in float32 instead of rounded per op (more accurate, not bitwise
eager's). The dead nodes left behind are removed by `dce`.
"""

from __future__ import annotations

import torch

from ..ir import Graph, Node, Value
from .dce import dce
from .rewrite import GraphRewriter


def _only(v: Value, users: dict, *nodes: Node) -> bool:
    """`v` is read exactly by `nodes` (once each) and is no graph output."""
    return sorted(map(id, users.get(v, []))) == sorted(map(id, nodes))


def _producer(v: Value, op: str) -> Node | None:
    p = v.producer
    return p if p is not None and p.op == op else None


def _constant(v: Value) -> float | None:
    p = _producer(v, "full")
    return float(p.attrs["value"]) if p is not None and v.type.rank == 0 else None


def _last_dim_keep(node: Node | None, op: str, x: Value) -> bool:
    return node is not None and node.op == op and node.inputs[0] is x and node.attrs.get("keepdim") is True \
        and tuple(node.attrs["dims"]) == (x.type.rank - 1,)


def _is_iota(v: Value, dim: int) -> bool:
    p = _producer(v, "iota")
    return p is not None and p.attrs["dim"] == dim and v.type.rank == 2


def _causal_keep(keep: Value, shape: tuple[int, ...]) -> bool:
    """`keep` is torch's tril mask: le(iota over keys - iota over queries, 0) [and with all-True]."""
    p = keep.producer
    if p is not None and p.op == "logical_and":
        ones = lambda u: _producer(u, "full") is not None and _producer(u, "full").attrs["value"] is True
        others = [u for u in p.inputs if not ones(u)]
        if len(others) != 1:
            return False
        p = others[0].producer
    if p is None or p.op != "le" or _constant(p.inputs[1]) != 0:
        return False
    sub = _producer(p.inputs[0], "sub")
    return sub is not None and _is_iota(sub.inputs[0], 1) and _is_iota(sub.inputs[1], 0) \
        and p.out.shape == shape[-2:]


def match(node: Node, users: dict) -> tuple[Value, tuple[Value, tuple[int, ...]], Value, float, bool] | None:
    """(q, (x, dims), v, scale, is_causal) when `node` (a matmul) ends an explicit attention, else None;
    k is `permute(x, dims)` (identity dims: x itself)."""
    p, v = node.inputs
    back = _producer(p, "convert")
    if back is not None:  # softmax computed in float32: p = convert(softmax(convert(scores)))
        if not _only(p, users, node):
            return None
        p = back.inputs[0]
    div = _producer(p, "div")
    if div is None or div.attrs.get("rounding_mode") is not None or not _only(p, users, back or node):
        return None
    e, t = div.inputs
    total = t.producer
    exp = _producer(e, "exp")
    if exp is None or not _last_dim_keep(total, "sum", e) or not _only(e, users, total, div) \
            or not _only(t, users, div):
        return None
    sub = _producer(exp.inputs[0], "sub")
    if sub is None or not _only(exp.inputs[0], users, exp):
        return None
    s, m = sub.inputs
    if not _last_dim_keep(m.producer, "amax", s) or not _only(m, users, sub) or not _only(s, users, m.producer, sub):
        return None
    up = _producer(s, "convert")
    if (up is None) != (back is None):
        return None
    if up is not None:  # half scores, softmax in float32 (the kernel's own precision), back to the half dtype
        s = up.inputs[0]
        if not _only(s, users, up) or back.out.dtype != s.dtype or up.out.dtype != torch.float32 \
                or s.dtype not in (torch.float16, torch.bfloat16):
            return None
    causal = False
    where = _producer(s, "where")
    if where is not None:
        cond, fill, s2 = where.inputs
        flip = _producer(cond, "logical_not")
        if _constant(fill) != float("-inf") or flip is None or not _causal_keep(flip.inputs[0], s.shape) \
                or not _only(s2, users, where):
            return None
        causal, s = True, s2
    scale = 1.0
    for op in ("mul", "div"):
        n = _producer(s, op)
        if n is None:
            continue
        consts = [i for i, u in enumerate(n.inputs) if _constant(u) is not None]
        if not consts or (op == "div" and consts != [1]) or not _only(n.inputs[1 - consts[0]], users, n):
            return None
        c = _constant(n.inputs[consts[0]])
        if c == 0:
            return None
        scale, s = (c if op == "mul" else 1.0 / c), n.inputs[1 - consts[0]]
        break
    qk = _producer(s, "matmul")
    if qk is None:
        return None
    q, kt = qk.inputs
    perm = _producer(kt, "permute")
    if perm is None or q.type.rank != 4 or not _only(kt, users, qk):
        return None
    # k^T = permute(x, dims): k = permute(x, dims with the last two swapped) (simplify merges the
    # heads' transpose into the key's, `permute(k_bthd, (0, 2, 3, 1))`)
    p = perm.attrs["dims"]
    k = perm.inputs[0], (p[0], p[1], p[3], p[2])
    if not _fits(q, tuple(k[0].shape[d] for d in k[1]), v, s.type.shape):
        return None
    return q, k, v, scale, causal


def _fits(q: Value, k: tuple[int, ...], v: Value, scores: tuple[int, ...]) -> bool:
    if not (q.type.rank == len(k) == v.type.rank == 4) or q.dtype != v.dtype:
        return False
    (b, h, _, d), (bk, hk, _, dk), (bv, hv, _, _) = q.shape, k, v.shape
    return b == bk == bv and hk == hv and hk in (1, h) and d == dk and scores[:2] == (b, h)


def fuse_attention(graph: Graph) -> Graph:
    """Each explicit attention (see the module doc) as one `attention` node; users are counted on the
    live graph (simplify leaves dead reshapes behind), and what the rewrite leaves dead is dropped."""
    graph = dce(graph)
    rw = GraphRewriter(graph)
    users = graph.users()
    for v in graph.outputs:  # an output is read by the caller too
        users[v] = [*users.get(v, []), None]
    fused = False
    for node in graph.nodes:
        found = match(node, users) if node.op == "matmul" else None
        if found is None:
            rw.copy(node)
            continue
        q, (x, dims), v, scale, causal = found
        k = rw.map[x] if dims == (0, 1, 2, 3) else rw.out.add("permute", [rw.map[x]], dims=dims)
        out, _ = rw.out.add("attention", [rw.map[q], k, rw.map[v]], scale=scale, is_causal=causal)
        rw.map[node.out] = out
        fused = True
    return dce(rw.finish()) if fused else graph
