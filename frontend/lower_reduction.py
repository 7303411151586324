"""Lowering rules for reductions: sum, mean, prod, amax/amin, argmax/argmin, var/std, max/min, any/all.

Dims are normalized here (negative dims wrap; None or [] mean every dim), so IR reductions always
carry sorted, non-negative dims.
"""

from __future__ import annotations

import torch

from ..ir import Value, get_op
from .lowering import Fallback, aten, norm_dim, norm_dims, out_dtype, register


def _input(L, a):
    """The reduced operand, converted first when the op takes a `dtype=` argument."""
    x = a.self
    dtype = a.get("dtype")
    return L.cast(x, dtype) if dtype is not None else x


@register(aten.sum.default, aten.sum.dim_IntList)
def _sum(L, node, a):
    x = _input(L, a)
    return L.add("sum", [x], dims=norm_dims(a.get("dim"), x.type.rank), keepdim=bool(a.get("keepdim")))


@register(aten.prod.default, aten.prod.dim_int)
def _prod(L, node, a):
    x = _input(L, a)
    return L.add("prod", [x], dims=norm_dims(a.get("dim"), x.type.rank), keepdim=bool(a.get("keepdim")))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """torch accumulates half-precision means and variances in float32 and rounds once at the end;
    computing the composite in float32 (the result is converted back by the driver) does the same."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


@register(aten.mean.default, aten.mean.dim)
def _mean(L, node, a):
    x = L.cast(_input(L, a), _acc_dtype(out_dtype(node)))
    return L.add("mean", [x], dims=norm_dims(a.get("dim"), x.type.rank), keepdim=bool(a.get("keepdim")))


@register(aten.amax.default, aten.amin.default)
def _amax(L, node, a):
    op = "amax" if node.target is aten.amax.default else "amin"
    return L.add(op, [a.self], dims=norm_dims(a.dim, a.self.type.rank), keepdim=bool(a.keepdim))


@register(aten.max.default, aten.min.default)
def _max_all(L, node, a):
    op = "amax" if node.target is aten.max.default else "amin"
    return L.add(op, [a.self], dims=norm_dims(None, a.self.type.rank), keepdim=False)


@register(aten.max.dim, aten.min.dim)
def _max_dim(L, node, a):
    is_max = node.target is aten.max.dim
    d = norm_dim(a.dim, a.self.type.rank)
    dims = (d,) if a.self.type.rank else ()
    values = L.add("amax" if is_max else "amin", [a.self], dims=dims, keepdim=bool(a.keepdim))
    if not dims:  # a 0-dim input: the index is 0
        return [values, L.const(0, torch.int64)]
    index = L.add("argmax" if is_max else "argmin", [a.self], dim=d, keepdim=bool(a.keepdim))
    return [values, index]


@register(aten.argmax.default, aten.argmin.default)
def _argmax(L, node, a):
    op = "argmax" if node.target is aten.argmax.default else "argmin"
    if a.self.type.rank == 0:
        return L.const(0, torch.int64)
    d = None if a.dim is None else norm_dim(a.dim, a.self.type.rank)
    return L.add(op, [a.self], dim=d, keepdim=bool(a.keepdim))


def _correction(a) -> float:
    c = a.get("correction")
    if c is None:
        c = 1 if a.get("unbiased", True) in (True, None) else 0
    return int(c) if float(c).is_integer() else float(c)


def _var_args(L, node, a):
    val = node.meta["val"]
    x = L.cast(a.self, _acc_dtype((val[0] if isinstance(val, (tuple, list)) else val).dtype))
    return x, dict(dims=norm_dims(a.get("dim"), x.type.rank), keepdim=bool(a.get("keepdim")))


@register(aten.var.correction, aten.var.dim, aten.var.default, aten.std.correction, aten.std.dim, aten.std.default)
def _var(L, node, a):
    x, attrs = _var_args(L, node, a)
    op = "var" if node.target._overloadpacket is aten.var else "std"
    return L.add(op, [x], correction=_correction(a), **attrs)


@register(aten.var_mean.correction, aten.var_mean.dim, aten.var_mean.default)
def _var_mean(L, node, a):
    x, attrs = _var_args(L, node, a)
    return [L.add("var", [x], correction=_correction(a), **attrs), L.add("mean", [x], **attrs)]


def _any_all(op: str):
    def rule(L, node, a):
        x = a.self
        dims = a.get("dim")
        nonzero = L.cast(x, torch.bool) if op == "any" else L.add("logical_not", [x])
        count = L.add("sum", [nonzero], dims=norm_dims(dims, x.type.rank), keepdim=bool(a.get("keepdim")))
        zero = L.const(0, torch.int64)
        return L.add("gt" if op == "any" else "eq", [count, zero])

    return rule


register(aten.any.default, aten.any.dim, aten.any.dims)(_any_all("any"))
register(aten.all.default, aten.all.dim, aten.all.dims)(_any_all("all"))


@register(aten.linalg_vector_norm.default)
def _vector_norm(L, node, a):
    """torch's formulas (computed in float32 for half types), written so that ember's autodiff gives
    torch's gradient: 0 where the norm is 0 (torch's norm backward masks it), not the NaN of
    differentiating sqrt / pow at 0. Orders below 1 (whose gradient torch masks per element) run
    as externs."""
    dt = out_dtype(node)
    x = L.cast(a.self, _acc_dtype(dt))
    attrs = dict(dims=norm_dims(a.dim, x.type.rank), keepdim=bool(a.keepdim))
    p = a.ord
    x = L.add("abs", [x])
    if p == 0:
        # The count of nonzeros as sign(|x|) (NaN counted): a float function of x with zero derivative,
        # so the result requires grad and gets zero gradient, as eager's.
        nonzero = L.add("where", [L.add("isnan", [x]), L.const(1, x.dtype), L.add("sign", [x])])
        return L.add("sum", [nonzero], **attrs)
    if p == 1:
        return L.add("sum", [x], **attrs)
    if p in (float("inf"), float("-inf")):
        return L.add("amax" if p > 0 else "amin", [x], **attrs)
    if not p > 1:
        raise Fallback(f"vector norm of order {p}")
    powered = L.add("mul", [x, x]) if p == 2 else L.add("pow", [x, L.const(p, x.dtype)])
    total = L.add("sum", [powered], **attrs)
    # root(where(s == 0, 1, s)) is finite with a finite derivative; the outer where gives 0 there.
    zero = L.add("eq", [total, L.const(0, x.dtype)])
    safe = L.add("where", [zero, L.const(1, x.dtype), total])
    root = L.add("sqrt", [safe]) if p == 2 else L.add("pow", [safe, L.const(1.0 / p, x.dtype)])
    return L.add("where", [zero, L.const(0, x.dtype), root])


# Pointwise ops a one-per-row gather does not move through: their value depends on the element's
# position (iota, rand: a `shape` or dim attribute), or they are generator ops with emit hooks.
_PINNED = {"iota", "rand"}


def _broadcasts(small: tuple[int, ...], big: tuple[int, ...]) -> bool:
    return len(small) <= len(big) and all(s in (1, b) for s, b in zip(small[::-1], big[::-1]))


def _picked(L, v: Value, idx: Value, d: int, depth: int = 0) -> Value:
    """`v.gather(d, idx)` (idx of v's shape with size 1 along d, checked) as a row value.

    A gather commutes with pointwise ops, so it moves down through them (log_softmax's subtractions
    of the row's max and log-sum, a `convert`), whose other operands are rows (size 1 along d) or
    scalars: `log_softmax(x).gather(1, t)` becomes `x.gather(1, t) - max - log(sum)`, and the [N, V]
    log-probabilities are never formed. At a value some kernel stores (a graph input, a matmul's
    output, a view of one) the gather is `pick`, a direct load of one element per row
    (ir/ops/cross_entropy.py); at a value a pointwise op computes, or a bool, a one-hot masked sum
    (`sum(where(iota == idx, v, 0))`, a row reduction of the same row kernel)."""
    p = v.producer
    op = get_op(p.op) if p is not None else None
    if op is not None and op.kind == "pointwise" and p.inputs and p.op not in _PINNED and op.emit is None \
            and not {"shape", "dim", "dims"} & set(p.attrs) and depth < 16:
        row = idx.type.shape
        if all(_broadcasts(w.shape, v.shape) for w in p.inputs):
            # rows and scalars stay; other operands are picked too (a class weight [V]: as its
            # broadcast view, which pick reads with stride 0 along the rows)
            ins = [w if w.shape == row or w.type.numel == 1 else
                   _picked(L, w if w.shape == v.shape else L.add("expand", [w], shape=v.shape), idx, d, depth + 1)
                   for w in p.inputs]
            return L.add(p.op, ins, **p.attrs)
    if v.dtype != torch.bool and (op is None or op.kind not in ("pointwise", "constant")):
        return L.add("pick", [v, idx], dims=(d,))
    iota = L.add("iota", [], shape=v.type.shape, dim=d, dtype=idx.dtype)
    picked = L.add("where", [L.add("eq", [iota, idx]), v, L.const(0, v.dtype)])
    return L.cast(L.add("sum", [picked], dims=(d,), keepdim=True), v.dtype)


@register(aten.gather.default)
def _gather(L, node, a):
    """gather picking one element per row along `dim` (cross-entropy's target logit) is a row value
    of the row kernel around it, read directly where it can be (`_picked`). Other gathers are the
    IR's `gather` (lower_index.py)."""
    x, idx = a.self, a.index
    if a.get("sparse_grad"):
        raise Fallback("gather with sparse gradients")
    d = norm_dim(a.dim, x.type.rank)
    if x.type.rank == 0 or idx.type.shape != x.type.shape[:d] + (1,) + x.type.shape[d + 1:]:
        from .lower_index import gather

        return gather(L, x, d, idx)
    # out of range: an error, never 0; eager's type by the user's call (torch.gather: RuntimeError,
    # a loss's target: IndexError)
    error = "gather" if node.meta.get("ember_call") in ("torch.gather", "Tensor.gather") else "target"
    idx = L.add("check_index", [idx], size=x.type.shape[d], error=error)
    if x.type.shape[d] == 1:  # x is its own row: `_picked` would never read the index, nor check it
        from .lower_index import gather

        return gather(L, x, d, idx) if x.dtype == torch.bool else L.add("pick", [x, idx], dims=(d,))
    return L.cast(_picked(L, x, idx, d), x.dtype)
