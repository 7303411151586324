"""Scans (inclusive prefix combines) along one dim: `cumsum`, `cumprod`, `logcumsumexp`, and
`cummax`/`cummin` with their indices (`cummax_index`, `cummin_index`: torch's one two-output op is two
IR ops, each a scan; the index scan carries (value, index) pairs).

Kind "scan": one kernel each (codegen/scan.py, `tl.associative_scan` along the scanned dim, block by
block with a carried prefix). Types follow torch: a float input keeps its dtype, integers and bool
accumulate in int64 (`aten.cumsum`'s `dtype=` is a `convert` before the scan, inserted by the
frontend). Half types compute in float32 and round each output, as torch's CPU kernels do.

VJPs are torch's and exact: cumsum's is the reversed cumsum of the cotangent (`flip`, a view, around
a cumsum). cumprod's is torch's `cumprod_backward` written with scans: before a row's first zero,
reversed_cumsum(ct * y) / x (x is nonzero there); at the first zero, the reversed cumsum of
ct * cumprod(x with that zero replaced by 1) (the product of every other factor, no division);
after it, 0. No element is divided by a zero. logcumsumexp's is torch's too (the cotangent split by
sign, each part summed in log space by a reversed logcumsumexp). cummax/cummin's is a `scatter_add`
of the cotangent at the indices (torch's cummaxmin_backward).
"""

from __future__ import annotations

import torch

from ..registry import ALL, FLOAT, Domain, OpDef, register, scalar, zeros
from ..types import TensorType, is_float
from . import onnx_rules

aten = torch.ops.aten


def _infer(name: str, float_only: bool = False):
    def infer(types: list[TensorType], dim: int = 0) -> TensorType:
        (t,) = types
        if not 0 <= dim < max(t.rank, 1):
            raise ValueError(f"{name}: dim {dim} invalid for rank {t.rank} (a normalized dim expected)")
        if float_only and not is_float(t.dtype):
            raise TypeError(f"{name}: needs a floating-point input, got {t.dtype}")
        # integers and bool accumulate in int64, as in torch
        return TensorType(t.shape, t.dtype if is_float(t.dtype) else torch.int64)

    return infer


def _impl(fn):
    def impl(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        return fn(x if is_float(x.dtype) else x.to(torch.int64), dim)

    return impl


def reversed_cumsum(g, v, dim: int):
    """sum over k >= i along `dim`: flips are views, so this is one scan kernel."""
    return g.add("flip", [g.add("cumsum", [g.add("flip", [v], dims=(dim,))], dim=dim)], dims=(dim,))


def _cumsum_vjp(g, inputs, out, ct, dim=0):
    (x,) = inputs
    if not is_float(x.dtype):
        return [None]
    if x.type.rank == 0 or x.shape[dim] <= 1:
        return [ct]
    return [reversed_cumsum(g, ct, dim)]


def _cumprod_vjp(g, inputs, y, ct, dim=0):
    (x,) = inputs
    if not is_float(x.dtype):
        return [None]
    if x.type.rank == 0 or x.shape[dim] <= 1:  # torch returns the cotangent itself
        return [ct]
    dt = x.dtype
    zero, one = scalar(g, 0.0, dt), scalar(g, 1.0, dt)
    is_zero = g.add("eq", [x, zero])
    zeros_so_far = g.add("cumsum", [g.add("convert", [is_zero], dtype=torch.int64)], dim=dim)
    before = g.add("eq", [zeros_so_far, scalar(g, 0, torch.int64)])  # i < first zero
    first = g.add("logical_and", [is_zero, g.add("eq", [zeros_so_far, scalar(g, 1, torch.int64)])])
    # i < z: sum_{k>=i} ct_k * y_k / x_i (y_k = 0 for k >= z, and x_i != 0)
    safe_x = g.add("where", [before, x, one])
    head = g.add("div", [reversed_cumsum(g, g.add("mul", [ct, y]), dim), safe_x])
    # i = z: sum_{k>=z} ct_k * prod_{j<=k, j!=z} x_j, the cumprod with x_z replaced by 1
    y_without = g.add("cumprod", [g.add("where", [first, one, x])], dim=dim)
    at_zero = reversed_cumsum(g, g.add("mul", [ct, y_without]), dim)
    return [g.add("where", [before, head, g.add("where", [first, at_zero, zero])])]


def _logcumsumexp_vjp(g, inputs, y, ct, dim=0):
    """torch's logcumsumexp_backward: the cotangent split by sign, each summed in log space by a
    reversed logcumsumexp (log|ct| - y), so nothing overflows; `lowest` stands for log 0."""
    (x,) = inputs
    if x.type.rank == 0 or x.shape[dim] <= 1:
        return [ct]
    dt = x.dtype
    zero, lowest = scalar(g, 0.0, dt), scalar(g, float(torch.finfo(dt).min), dt)
    log_abs = g.add("log", [g.add("abs", [ct])])

    def part(sign: str):
        log_ct = g.add("where", [g.add(sign, [ct, zero]), log_abs, lowest])
        rev = g.add("flip", [g.add("logcumsumexp", [g.add("flip", [g.add("sub", [log_ct, y])], dims=(dim,))],
                                   dim=dim)], dims=(dim,))
        return g.add("exp", [g.add("add", [rev, x])])

    return [g.add("sub", [part("gt"), part("lt")])]


def _flops(node) -> int:
    return node.inputs[0].type.numel


# Where generated tests sample scans: along each dim of the (transposed, non-contiguous) 2-d input.
_DOMAINS = tuple(Domain(ALL, {"dim": d}, rejects=()) for d in (1, 0))

register(OpDef("cumsum", "scan", _infer("cumsum"), _impl(torch.cumsum), combine="sum", vjp=_cumsum_vjp,
               cost=_flops, domains=_DOMAINS, aten=(aten.cumsum.default,), onnx=onnx_rules.cumsum,
               doc="inclusive prefix sum along `dim` (integers and bool in int64)"))
register(OpDef("cumprod", "scan", _infer("cumprod"), _impl(torch.cumprod), combine="prod", vjp=_cumprod_vjp,
               cost=_flops, domains=_DOMAINS, aten=(aten.cumprod.default,),
               doc="inclusive prefix product along `dim` (integers and bool in int64)"))
register(OpDef("logcumsumexp", "scan", _infer("logcumsumexp", float_only=True), torch.logcumsumexp,
               combine="logsumexp", vjp=_logcumsumexp_vjp, cost=_flops, aten=(aten.logcumsumexp.default,),
               domains=tuple(Domain(FLOAT, {"dim": d}) for d in (1, 0)),
               doc="log of the inclusive prefix sum of exp along `dim` (floating point)"))


# -- cummax / cummin: values and indices, two ops (aten's one op with two outputs is lowered to both) --


def _extremum_infer(name: str, index: bool):
    def infer(types: list[TensorType], dim: int = 0) -> TensorType:
        (t,) = types
        if not 0 <= dim < max(t.rank, 1):
            raise ValueError(f"{name}: dim {dim} invalid for rank {t.rank} (a normalized dim expected)")
        return TensorType(t.shape, torch.int64 if index else t.dtype)

    return infer


def _extremum_vjp(op: str):
    def vjp(g, inputs, out, ct, dim=0):
        """torch's cummaxmin_backward: each cotangent added at the index its value came from (a sum
        over equal indices, in order: exact and deterministic)."""
        (x,) = inputs
        if not is_float(x.dtype):
            return [None]
        if x.type.rank == 0 or x.shape[dim] <= 1:
            return [ct]
        index = g.add(f"{op}_index", [x], dim=dim)
        return [g.add("scatter_add", [zeros(g, x.type), index, ct], dim=dim)]

    return vjp


for _op, _fn in (("cummax", torch.cummax), ("cummin", torch.cummin)):
    register(OpDef(_op, "scan", _extremum_infer(_op, False), (lambda fn: lambda x, dim=0: fn(x, dim).values)(_fn),
                   combine=_op[3:], vjp=_extremum_vjp(_op), cost=_flops, domains=_DOMAINS,
                   doc=f"torch.{_op}(x, dim).values: NaN propagates (lowered with `{_op}_index` from aten.{_op})"))
    register(OpDef(f"{_op}_index", "scan", _extremum_infer(_op, True),
                   (lambda fn: lambda x, dim=0: fn(x, dim).indices)(_fn), combine="arg" + _op[3:], cost=_flops,
                   domains=_DOMAINS,
                   doc=f"torch.{_op}(x, dim).indices: the latest of tied extremes, the last NaN"))
