"""Lowering rules for scans: cumsum, cumprod, logcumsumexp, cummax and cummin (ir/ops/scan.py).

The dim is normalized here (negative dims wrap); `dtype=` converts the input first, as torch does
(`integer_upcast`); without it integers and bool accumulate in int64 (the IR op's type rule).
"""

from __future__ import annotations

from .lowering import Fallback, aten, norm_dim, register

_OPS = {aten.cumsum.default: "cumsum", aten.cumprod.default: "cumprod", aten.logcumsumexp.default: "logcumsumexp"}


@register(*_OPS)
def _scan(L, node, a):
    op = _OPS[node.target]
    x = a.self
    dtype = a.get("dtype")
    if dtype is not None:
        x = L.cast(x, dtype)
    if op == "logcumsumexp" and not x.type.dtype.is_floating_point:
        raise Fallback("logcumsumexp takes floating-point inputs")  # torch raises its own error
    return L.add(op, [x], dim=norm_dim(a.dim, x.type.rank))


@register(aten.cummax.default, aten.cummin.default)
def _cum_extremum(L, node, a):
    """(values, indices): two IR scans over the same input (a fused row group computes both where
    their rows fit one block)."""
    op = "cummax" if node.target is aten.cummax.default else "cummin"
    d = norm_dim(a.dim, a.self.type.rank)
    return [L.add(op, [a.self], dim=d), L.add(f"{op}_index", [a.self], dim=d)]
