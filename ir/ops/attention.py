"""Scaled dot-product attention as two fused ops (FlashAttention's forward and backward):

- `attention(q[B, H, L, D], k[B, Hk, S, D], v[B, Hk, S, Dv][, mask]) {scale, is_causal}` ->
  `out[B, H, L, Dv]` (q's dtype) and `lse[B, H, L]`, the row logsumexp of the scores in the
  computation dtype (float32; float64 for float64), which the backward reads instead of the scores;
- its VJP, FlashAttention-2's two backward kernels: `attention_grad_q(q, k, v, out, lse, dout[, mask])`
  -> `dq` and `delta = rowsum(dout * out)` (computation dtype), then `attention_grad_kv(q, k, v, lse,
  delta, dout[, mask])` -> `dk, dv`; the same attributes.

Scores are `(q @ k^T) * scale`, then the mask: a boolean `mask` keeps True entries, a floating one
(q's dtype) is added; `is_causal` keeps key j <= query i (top-left aligned, as torch's). `mask`
broadcasts to [B, H, L, S]. Grouped-query attention is index math: query head h reads key/value head
h // (H / Hk). A row whose scores are all masked gives out 0 and lse 0 (torch's CPU flash kernel).
Kind "attention": one kernel each (codegen/attention.py), scores never stored; fusion gives them no
epilogue. Dropout is not an attribute: the frontend leaves dropout > 0 to torch.
"""

from __future__ import annotations

import torch

from ..registry import INT, Domain, OpDef, register, unbroadcast
from ..types import TensorType, compute_dtype, is_float
from . import onnx_rules

_NEG_INF = float("-inf")


def _check(name: str, q: TensorType, k: TensorType, v: TensorType, mask: TensorType | None) -> None:
    if q.rank != 4 or k.rank != 4 or v.rank != 4:
        raise ValueError(f"{name}: q, k, v must be [B, H, S, D], got {q}, {k}, {v}")
    if not (q.dtype == k.dtype == v.dtype) or not is_float(q.dtype):
        raise TypeError(f"{name}: needs floating q, k, v of one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    (b, h, _, d), (bk, hk, s, dk), (bv, hv, sv, _) = q.shape, k.shape, v.shape
    if not (b == bk == bv) or hk != hv or s != sv or d != dk or hk == 0 or h % hk:
        raise ValueError(f"{name}: shapes do not fit: q {q}, k {k}, v {v}")
    if mask is not None:
        if mask.dtype not in (torch.bool, q.dtype):
            raise TypeError(f"{name}: mask must be bool or {q.dtype}, got {mask.dtype}")
        full = (b, h, q.shape[2], s)
        if mask.rank > 4 or any(m not in (1, f) for m, f in zip(mask.shape[::-1], full[::-1])):
            raise ValueError(f"{name}: mask {mask} does not broadcast to {list(full)}")


def _infer(types, scale: float, is_causal: bool):
    q, k, v = types[:3]
    _check("attention", q, k, v, types[3] if len(types) > 3 else None)
    return [TensorType(q.shape[:3] + (v.shape[3],), q.dtype), TensorType(q.shape[:3], compute_dtype(q.dtype))]


def _grad_check(name: str, types, rows: list, outs: list) -> None:
    q, k, v = types[:3]
    _check(name, q, k, v, types[6] if len(types) > 6 else None)
    o = q.shape[:3] + (v.shape[3],)
    if any(t.shape != q.shape[:3] or t.dtype != compute_dtype(q.dtype) for t in rows) \
            or any(t.shape != o or t.dtype != q.dtype for t in outs):
        raise ValueError(f"{name}: {rows + outs} do not fit q {q}, v {v}")


def _grad_q_infer(types, scale: float, is_causal: bool):
    _grad_check("attention_grad_q", types, [types[4]], [types[3], types[5]])
    return [types[0], types[4]]


def _grad_kv_infer(types, scale: float, is_causal: bool):
    _grad_check("attention_grad_kv", types, [types[3], types[4]], [types[5]])
    return [types[1], types[2]]


def expand_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    """Grouped-query attention: key/value head j serves query heads j*g .. j*g+g-1."""
    return t if t.size(1) == heads else t.repeat_interleave(heads // t.size(1), dim=1)


def scores(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, scale: float, is_causal: bool) -> torch.Tensor:
    """Scaled, masked scores (masked entries -inf) in q's dtype (the computation dtype: callers widen
    first); k already has q's heads."""
    s = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        keep = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
        s = s.masked_fill(~keep, _NEG_INF)
    if mask is not None:
        s = s.masked_fill(~mask, _NEG_INF) if mask.dtype == torch.bool else s + mask.to(s.dtype)
    return s


def _impl(q, k, v, mask=None, *, scale: float, is_causal: bool):
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    qa = q.to(acc)
    ka, va = (expand_heads(t.to(acc), q.size(1)) for t in (k, v))
    s = scores(qa, ka, mask, scale, is_causal)
    m = s.amax(-1, keepdim=True)
    m = torch.where(m == _NEG_INF, 0, m)
    e = torch.exp(s - m)
    total = e.sum(-1, keepdim=True)
    empty = total == 0
    out = (e / torch.where(empty, 1, total)) @ va
    lse = torch.where(empty, 0, m + torch.log(total)).squeeze(-1)
    return out.to(q.dtype), lse


def _grads(q, k, v, lse, delta, dout, mask, scale: float, is_causal: bool):
    """The flash backward's formula: P = exp(S - lse), dV = P^T dO, dS = P * (dO V^T - delta),
    dQ = dS K * scale, dK = dS^T Q * scale; key/value heads sum their group's gradients."""
    acc = lse.dtype
    qa, do = q.to(acc), dout.to(acc)
    heads, kv_heads = q.size(1), k.size(1)
    ka, va = (expand_heads(t.to(acc), heads) for t in (k, v))
    p = torch.exp(scores(qa, ka, mask, scale, is_causal) - lse.unsqueeze(-1))
    dv = p.transpose(-2, -1) @ do
    ds = p * (do @ va.transpose(-2, -1) - delta.unsqueeze(-1))
    dq = (ds @ ka) * scale
    dk = (ds.transpose(-2, -1) @ qa) * scale
    if kv_heads != heads:
        dk, dv = (t.unflatten(1, (kv_heads, heads // kv_heads)).sum(2) for t in (dk, dv))
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)


def _grad_q_impl(q, k, v, out, lse, dout, mask=None, *, scale: float, is_causal: bool):
    delta = (dout.to(lse.dtype) * out.to(lse.dtype)).sum(-1)
    return _grads(q, k, v, lse, delta, dout, mask, scale, is_causal)[0], delta


def _grad_kv_impl(q, k, v, lse, delta, dout, mask=None, *, scale: float, is_causal: bool):
    return _grads(q, k, v, lse, delta, dout, mask, scale, is_causal)[1:]


def backward(g, q, k, v, out, lse, dout, dlse, mask: list, scale: float, is_causal: bool) -> list:
    """[dq, dk, dv] of `attention`: `attention_grad_q` (dq and delta = rowsum(dout * out)), then
    `attention_grad_kv`. The logsumexp's own cotangent, when it has one (d lse_i / d s_ij = P_ij),
    enters as delta - dlse in dS = P * (dP - delta): for dK and dV through delta; for dQ as
    scale * dlse * (P @ k), and P @ k is attention with k as the values (one more forward kernel).
    `g`: anything with `add(op, inputs, **attrs)` (a Graph, the frontend's lowerer)."""
    if dout is None:
        dout = g.add("full", [], shape=out.shape, value=0.0, dtype=out.dtype)
    dq, delta = g.add("attention_grad_q", [q, k, v, out, lse, dout] + list(mask), scale=scale, is_causal=is_causal)
    if dlse is not None:
        acc = lse.dtype
        delta = g.add("sub", [delta, dlse])
        pk = g.add("attention", [q, k, k] + list(mask), scale=scale, is_causal=is_causal)[0]
        w = g.add("mul", [g.add("reshape", [dlse], shape=dlse.shape + (1,)), g.add("full", [], shape=(), value=scale,
                                                                                    dtype=acc)])
        dq = g.add("add", [g.add("convert", [dq], dtype=acc), g.add("mul", [w, g.add("convert", [pk], dtype=acc)])])
        dq = g.add("convert", [dq], dtype=q.dtype)
    dk, dv = g.add("attention_grad_kv", [q, k, v, lse, delta, dout] + list(mask), scale=scale, is_causal=is_causal)
    return [dq, dk, dv]


def _vjp(g, inputs, outs, cts, scale: float, is_causal: bool):
    q, k, v = inputs[:3]
    mask = inputs[3:]
    if all(c is None for c in cts):
        return [None] * len(inputs)
    grads = backward(g, q, k, v, *outs, *cts, mask, scale, is_causal)
    if mask and mask[0].dtype.is_floating_point:  # an additive mask's gradient is dS (autodiff's DCE
        grads.append(_mask_grad(g, q, k, v, mask[0], *outs, *cts, scale, is_causal))  # drops it unless needed)
    return grads + [None] * (len(inputs) - len(grads))


def _heads(g, t, heads: int):
    """[B, Hk, S, D] -> [B, H, S, D]: each key/value head repeated for its group of query heads."""
    b, hk, s, d = t.shape
    if hk == heads:
        return t
    t = g.add("expand", [g.add("reshape", [t], shape=(b, hk, 1, s, d))], shape=(b, hk, heads // hk, s, d))
    return g.add("reshape", [t], shape=(b, heads, s, d))


def _mask_grad(g, q, k, v, mask, out, lse, dout, dlse, scale: float, is_causal: bool):
    """dS = P * (dO V^T - delta) over the materialized scores, summed to the mask's shape: exact, and
    only built where a floating mask needs a gradient (a learned bias)."""
    acc = lse.dtype
    up = lambda t: g.add("convert", [t], dtype=acc) if t.dtype != acc else t
    heads = q.shape[1]
    kt = g.add("permute", [up(_heads(g, k, heads))], dims=(0, 1, 3, 2))
    s = g.add("mul", [g.add("matmul", [up(q), kt]), g.add("full", [], shape=(), value=scale, dtype=acc)])
    s = g.add("add", [s, up(mask)])
    lse_k = g.add("reshape", [lse], shape=lse.shape + (1,))
    p = g.add("exp", [g.add("sub", [s, lse_k])])
    if is_causal:
        n, m = q.shape[2], k.shape[2]
        i = g.add("iota", [], shape=(n, 1), dim=0, dtype=torch.int64)
        j = g.add("iota", [], shape=(1, m), dim=1, dtype=torch.int64)
        p = g.add("where", [g.add("le", [j, i]), p, g.add("full", [], shape=(), value=0.0, dtype=acc)])
    if dout is None:
        dout = g.add("full", [], shape=out.shape, value=0.0, dtype=out.dtype)
    vt = g.add("permute", [up(_heads(g, v, heads))], dims=(0, 1, 3, 2))
    dp = g.add("matmul", [up(dout), vt])
    delta = g.add("sum", [g.add("mul", [up(dout), up(out)])], dims=(3,), keepdim=True)
    if dlse is not None:
        delta = g.add("sub", [delta, g.add("reshape", [dlse], shape=dlse.shape + (1,))])
    ds = g.add("mul", [p, g.add("sub", [dp, delta])])
    ds = unbroadcast(g, ds, mask.shape)
    return g.add("convert", [ds], dtype=mask.dtype) if mask.dtype != acc else ds


def attention_flops(node) -> int:
    """GEMMs over the scores (causal: about half of them): forward q k^T and p v; dQ q k^T, dO v^T
    and dS k; dK/dV q k^T, p^T dO, dO v^T and dS^T q."""
    q, k, v = node.inputs[:3]
    b, h, l, d = q.shape
    s, dv = k.shape[2], v.shape[3]
    pairs = b * h * l * s
    if node.attrs["is_causal"]:
        pairs = b * h * sum(min(i + 1, s) for i in range(l))
    per_pair = {"attention": d + dv, "attention_grad_q": 2 * d + dv, "attention_grad_kv": 2 * d + 2 * dv}[node.op]
    return pairs * 2 * per_pair


_FLOATS = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
_REJECTS = INT + (torch.bool,)
_CASES = [  # (q, k, v[, mask]) shapes and attrs: plain, causal with GQA, boolean mask, additive mask
    (((1, 2, 8, 4), (1, 2, 6, 4), (1, 2, 6, 4)), dict(scale=0.5, is_causal=False)),
    (((1, 4, 8, 4), (1, 2, 8, 4), (1, 2, 8, 2)), dict(scale=0.7, is_causal=True)),
    (((2, 2, 5, 4), (2, 2, 7, 4), (2, 2, 7, 4), (5, 7)), dict(scale=0.5, is_causal=False)),
    (((1, 2, 6, 4), (1, 2, 6, 4), (1, 2, 6, 4), (1, 2, 6, 6)), dict(scale=0.5, is_causal=True)),
]


def _forward_domains() -> tuple[Domain, ...]:
    out = []
    for k, (shapes, attrs) in enumerate(_CASES):
        fixed = {3: torch.bool} if k == 2 else {}
        out.append(Domain(_FLOATS, attrs, shapes=shapes, fixed=fixed, rejects=_REJECTS))
    return tuple(out)


def _grad_domains(op: str) -> tuple[Domain, ...]:
    # lse sampled in a range that keeps exp(S - lse) moderate; grad=False: these ops' own VJP (second
    # order) is not defined.
    out = []
    for shapes, attrs in _CASES[:3]:
        q, kk, v = shapes[:3]
        row, o = q[:3], q[:3] + (v[3],)
        for dtypes, acc in (((torch.float32, torch.float16, torch.bfloat16), torch.float32),
                            ((torch.float64,), torch.float64)):
            mask = {6: torch.bool} if len(shapes) > 3 else {}
            if op == "attention_grad_q":  # (q, k, v, out, lse, dout)
                operands, fixed, lse = (q, kk, v, o, row, o), {4: acc}, 4
            else:  # (q, k, v, lse, delta, dout)
                operands, fixed, lse = (q, kk, v, row, row, o), {3: acc, 4: acc}, 3
            out.append(Domain(dtypes, attrs, shapes=operands + shapes[3:], fixed=fixed | mask, grad=False,
                              low=-1.0, high=1.0, ranges={lse: (2.0, 3.0)}, rejects=_REJECTS))
    return tuple(out)


register(OpDef("attention", "attention", _infer, _impl, arity=(3, 4), vjp=_vjp, cost=attention_flops,
               domains=_forward_domains(), onnx=onnx_rules.attention,
               doc="fused scaled dot-product attention: out and the row logsumexp; scores never stored"))
register(OpDef("attention_grad_q", "attention", _grad_q_infer, _grad_q_impl, arity=(6, 7), cost=attention_flops,
               domains=_grad_domains("attention_grad_q"),
               doc="attention's dQ (and delta = rowsum(dout * out)), P recomputed from the saved logsumexp"))
register(OpDef("attention_grad_kv", "attention", _grad_kv_infer, _grad_kv_impl, arity=(6, 7), cost=attention_flops,
               domains=_grad_domains("attention_grad_kv"),
               doc="attention's dK and dV, each key/value head summing its group of query heads"))
