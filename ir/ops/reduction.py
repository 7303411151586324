"""Reductions over any set of dims, with keepdim.

Primitives (`sum`, `prod`, `amax`, `amin`, `argmax`, `argmin`) are emitted by the reduction
codegen with the `combine` named in their entry. `mean`, `var` and `std` are composites: their
`decompose` rule rewrites them into primitives before codegen, so codegen stays small.

VJPs follow torch: `sum` broadcasts the cotangent back; `amax`/`amin` split it evenly among the
elements equal to the result (ties); `prod` uses result/x where a slice has no zero and the product
of the other elements where it has exactly one; `mean`/`var`/`std` have their own rules (so a graph
can be differentiated before `decompose`). `argmax`/`argmin` return integers: no cotangent.
"""

from __future__ import annotations

import torch

from ..registry import ALL, FLOAT, Domain, OpDef, register, restore_reduced, scalar
from ..types import TensorType, is_float
from . import onnx_rules

aten = torch.ops.aten


def reduced_shape(shape: tuple[int, ...], dims: tuple[int, ...], keepdim: bool) -> tuple[int, ...]:
    if keepdim:
        return tuple(1 if i in dims else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in dims)


def _check_dims(name: str, t: TensorType, dims) -> tuple[int, ...]:
    dims = tuple(dims)
    if any(not 0 <= d < max(t.rank, 1) for d in dims) or len(set(dims)) != len(dims):
        raise ValueError(f"{name}: dims {dims} invalid for rank {t.rank} (normalized, unique dims expected)")
    return dims


def _reduce_infer(name: str, out: str):
    def infer(types: list[TensorType], dims=(), keepdim=False) -> TensorType:
        (t,) = types
        dims = _check_dims(name, t, dims)
        if out == "acc":  # sum/prod: integers and bool accumulate in int64, as in torch
            dtype = t.dtype if is_float(t.dtype) else torch.int64
        elif out == "index":
            dtype = torch.int64
        else:
            dtype = t.dtype
        if out == "float" and not is_float(t.dtype):
            raise TypeError(f"{name}: needs a floating-point input, got {t.dtype}")
        if t.numel == 0 and out in ("same", "index") and any(t.shape[d] == 0 for d in dims):
            raise ValueError(f"{name}: cannot reduce over an empty dim (no identity)")
        return TensorType(reduced_shape(t.shape, dims, keepdim) if t.rank else (), dtype)

    return infer


def _reduce_impl(fn, out: str):
    def impl(x: torch.Tensor, dims=(), keepdim=False) -> torch.Tensor:
        if out == "acc" and not is_float(x.dtype):
            x = x.to(torch.int64)
        if not dims:  # nothing to reduce (0-dim input)
            return x.clone()
        if fn is None:  # sum: every dim at once, as eager (a half type rounds once)
            return torch.sum(x, dim=tuple(dims), keepdim=keepdim)
        for d in sorted(dims, reverse=True):  # one dim at a time: prod/amax take a single dim in all torch versions
            x = fn(x, d, keepdim)
        return x

    return impl


def _float_only(rule):
    def vjp(g, inputs, out, ct, dims=(), keepdim=False, **attrs):
        if not is_float(inputs[0].dtype):
            return [None]
        if not dims:  # nothing reduced: the identity
            return [ct]
        return [rule(g, inputs[0], out, ct, tuple(dims), keepdim, **attrs)]

    return vjp


def _sum_vjp(g, x, y, ct, dims, keepdim):
    return restore_reduced(g, ct, x.shape, dims, keepdim)


def _extremum_vjp(g, x, y, ct, dims, keepdim):
    # torch: (grad / count of elements equal to the result) * mask, so ties share the gradient.
    mask = g.add("eq", [x, restore_reduced(g, y, x.shape, dims, keepdim)])
    maskf = g.add("convert", [mask], dtype=x.dtype)
    count = g.add("sum", [maskf], dims=dims, keepdim=True)
    keep = reduced_shape(x.shape, dims, True)
    ctk = ct if tuple(ct.shape) == keep else g.add("reshape", [ct], shape=keep)
    return g.add("mul", [g.add("expand", [g.add("div", [ctk, count])], shape=x.shape), maskf])


def _prod_vjp(g, x, y, ct, dims, keepdim):
    zero, one = scalar(g, 0.0, x.dtype), scalar(g, 1.0, x.dtype)
    ctf = restore_reduced(g, ct, x.shape, dims, keepdim)
    is_zero = g.add("eq", [x, zero])
    zeros_in_slice = g.add("sum", [g.add("convert", [is_zero], dtype=x.dtype)], dims=dims, keepdim=True)
    no_zero = g.add("mul", [ctf, g.add("div", [restore_reduced(g, y, x.shape, dims, keepdim), x])])
    others = g.add("prod", [g.add("where", [is_zero, one, x])], dims=dims, keepdim=True)
    one_zero = g.add("where", [is_zero, g.add("mul", [ctf, others]), zero])
    return g.add("where", [g.add("eq", [zeros_in_slice, zero]), no_zero,
                           g.add("where", [g.add("eq", [zeros_in_slice, one]), one_zero, zero])])


def _input_flops(node) -> int:
    """A reduction combines each input element once."""
    return node.inputs[0].type.numel


# Where generated tests sample reductions: over some dims of a 3-d input, keeping them or not.
_DIMS = ({"dims": (1,), "keepdim": False}, {"dims": (0, 2), "keepdim": True})
_SHAPE = ((2, 3, 4),)

for _name, _fn, _out, _combine, _vjp, _aten, _onnx in [
    ("sum", None, "acc", "sum", _sum_vjp, (aten.sum.dim_IntList,), "ReduceSum"),
    ("prod", lambda x, d, k: torch.prod(x, dim=d, keepdim=k), "acc", "prod", _prod_vjp,
     (aten.prod.default, aten.prod.dim_int), "ReduceProd"),
    ("amax", lambda x, d, k: torch.amax(x, dim=d, keepdim=k), "same", "max", _extremum_vjp, (aten.amax.default,),
     "ReduceMax"),
    ("amin", lambda x, d, k: torch.amin(x, dim=d, keepdim=k), "same", "min", _extremum_vjp, (aten.amin.default,),
     "ReduceMin"),
]:
    register(OpDef(_name, "reduction", _reduce_infer(_name, _out), _reduce_impl(_fn, _out), combine=_combine,
                   vjp=_float_only(_vjp), cost=_input_flops, aten=_aten, onnx=onnx_rules.reduce(_onnx, _out == "acc"),
                   domains=tuple(Domain(ALL, a, shapes=_SHAPE, rejects=()) for a in _DIMS)))


def _arg_infer(name: str):
    def infer(types: list[TensorType], dim=None, keepdim=False) -> TensorType:
        (t,) = types
        if dim is None:
            if t.numel == 0:
                raise ValueError(f"{name}: cannot reduce an empty tensor")
            return TensorType((1,) * t.rank if keepdim else (), torch.int64)
        return _reduce_infer(name, "index")(types, dims=(dim,), keepdim=keepdim)

    return infer


def _arg_impl(fn):
    # torch.argmax refuses bool; torch.max(x, dim) takes it, and its indices lower to argmax.
    def impl(x: torch.Tensor, dim=None, keepdim=False) -> torch.Tensor:
        return fn(x.to(torch.uint8) if x.dtype == torch.bool else x, dim=dim, keepdim=keepdim)

    return impl


_ARG_DOMAINS = (Domain(ALL, {"dim": 1, "keepdim": False}, shapes=_SHAPE, rejects=()),
                Domain(ALL, {"dim": None, "keepdim": True}, shapes=_SHAPE, rejects=()))
register(OpDef("argmax", "reduction", _arg_infer("argmax"), _arg_impl(torch.argmax), combine="argmax",
               cost=_input_flops, domains=_ARG_DOMAINS, aten=(aten.argmax.default,),
               onnx=onnx_rules.arg_reduce("ArgMax"),
               doc="index of the first maximum (NaN counts as maximum); dim=None flattens"))
register(OpDef("argmin", "reduction", _arg_infer("argmin"), _arg_impl(torch.argmin), combine="argmin",
               cost=_input_flops, domains=_ARG_DOMAINS, aten=(aten.argmin.default,),
               onnx=onnx_rules.arg_reduce("ArgMin")))

# -- composites -----------------------------------------------------------------------------------


def _count(t: TensorType, dims) -> int:
    n = 1
    for d in dims:
        n *= t.shape[d]
    return n


def _scalar(g, value, dtype):
    return g.add("full", [], shape=(), value=value, dtype=dtype)


def _mean_decompose(g, x, dims=(), keepdim=False):
    s = g.add("sum", [x], dims=dims, keepdim=keepdim)
    return g.add("div", [s, _scalar(g, float(_count(x.type, dims)), x.dtype)])


def _var_decompose(g, x, dims=(), correction=1, keepdim=False):
    mean = _mean_decompose(g, x, dims, keepdim=True)
    d = g.add("sub", [x, mean])
    s = g.add("sum", [g.add("mul", [d, d])], dims=dims, keepdim=keepdim)
    denom = max(_count(x.type, dims) - correction, 0)
    return g.add("div", [s, _scalar(g, float(denom), x.dtype)])


def _std_decompose(g, x, dims=(), correction=1, keepdim=False):
    return g.add("sqrt", [_var_decompose(g, x, dims, correction, keepdim)])


def _float_reduce_infer(name):
    def infer(types, dims=(), keepdim=False, correction=None):
        return _reduce_infer(name, "float")(types, dims=dims, keepdim=keepdim)

    return infer


def _mean_vjp(g, x, y, ct, dims, keepdim):
    n = _scalar(g, float(_count(x.type, dims)), x.dtype)
    return g.add("div", [restore_reduced(g, ct, x.shape, dims, keepdim), n])


def _var_vjp(g, x, y, ct, dims, keepdim, correction=1):
    # torch: (2 / (N - correction)) * grad * (x - mean(x))
    denom = max(_count(x.type, dims) - correction, 0)
    factor = _scalar(g, 2.0 / denom if denom else float("inf"), x.dtype)
    centered = g.add("sub", [x, g.add("mean", [x], dims=dims, keepdim=True)])
    return g.add("mul", [g.add("mul", [factor, restore_reduced(g, ct, x.shape, dims, keepdim)]), centered])


def _std_vjp(g, x, y, ct, dims, keepdim, correction=1):
    # torch: var's rule applied to grad / (2 * result)
    ct = g.add("div", [ct, g.add("mul", [y, _scalar(g, 2.0, x.dtype)])])
    return _var_vjp(g, x, y, ct, dims, keepdim, correction)


register(OpDef("mean", "composite", _float_reduce_infer("mean"),
               lambda x, dims=(), keepdim=False: torch.mean(x, dim=tuple(dims), keepdim=keepdim) if dims else x.clone(),
               decompose=_mean_decompose, vjp=_float_only(_mean_vjp),
               domains=tuple(Domain(FLOAT, a, shapes=_SHAPE) for a in _DIMS), aten=(aten.mean.dim,)))
for _name, _fn, _rule, _vjp, _aten in [("var", torch.var, _var_decompose, _var_vjp, (aten.var.correction,)),
                                       ("std", torch.std, _std_decompose, _std_vjp, ())]:
    register(OpDef(_name, "composite", _float_reduce_infer(_name),
                   (lambda fn: lambda x, dims=(), correction=1, keepdim=False:
                    fn(x, dim=tuple(dims), correction=correction, keepdim=keepdim))(_fn),
                   decompose=_rule, vjp=_float_only(_vjp), aten=_aten,
                   domains=(Domain(FLOAT, {"dims": (1,), "correction": 1, "keepdim": False}, shapes=_SHAPE),
                            Domain(FLOAT, {"dims": (0, 2), "correction": 0, "keepdim": True}, shapes=_SHAPE))))
