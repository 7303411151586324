"""Reductions over any set of dims, with keepdim.

Primitives (`sum`, `prod`, `amax`, `amin`, `argmax`, `argmin`) are emitted by the reduction
codegen with the `combine` named in their entry. `mean`, `var` and `std` are composites: their
`decompose` rule rewrites them into primitives before codegen, so codegen stays small.
"""

from __future__ import annotations

import torch

from ..registry import OpDef, register
from ..types import TensorType, is_float


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
        for d in sorted(dims, reverse=True):  # one dim at a time: prod/amax take a single dim in all torch versions
            x = fn(x, d, keepdim)
        return x

    return impl


for _name, _fn, _out, _combine in [
    ("sum", lambda x, d, k: torch.sum(x, dim=d, keepdim=k), "acc", "sum"),
    ("prod", lambda x, d, k: torch.prod(x, dim=d, keepdim=k), "acc", "prod"),
    ("amax", lambda x, d, k: torch.amax(x, dim=d, keepdim=k), "same", "max"),
    ("amin", lambda x, d, k: torch.amin(x, dim=d, keepdim=k), "same", "min"),
]:
    register(OpDef(_name, "reduction", _reduce_infer(_name, _out), _reduce_impl(_fn, _out), combine=_combine))


def _arg_infer(name: str):
    def infer(types: list[TensorType], dim=None, keepdim=False) -> TensorType:
        (t,) = types
        if dim is None:
            if t.numel == 0:
                raise ValueError(f"{name}: cannot reduce an empty tensor")
            return TensorType((1,) * t.rank if keepdim else (), torch.int64)
        return _reduce_infer(name, "index")(types, dims=(dim,), keepdim=keepdim)

    return infer


register(OpDef("argmax", "reduction", _arg_infer("argmax"),
               lambda x, dim=None, keepdim=False: torch.argmax(x, dim=dim, keepdim=keepdim), combine="argmax",
               doc="index of the first maximum (NaN counts as maximum); dim=None flattens"))
register(OpDef("argmin", "reduction", _arg_infer("argmin"),
               lambda x, dim=None, keepdim=False: torch.argmin(x, dim=dim, keepdim=keepdim), combine="argmin"))

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


register(OpDef("mean", "composite", _float_reduce_infer("mean"),
               lambda x, dims=(), keepdim=False: torch.mean(x, dim=tuple(dims), keepdim=keepdim) if dims else x.clone(),
               decompose=_mean_decompose))
for _name, _fn, _rule in [("var", torch.var, _var_decompose), ("std", torch.std, _std_decompose)]:
    register(OpDef(_name, "composite", _float_reduce_infer(_name),
                   (lambda fn: lambda x, dims=(), correction=1, keepdim=False:
                    fn(x, dim=tuple(dims), correction=correction, keepdim=keepdim))(_fn),
                   decompose=_rule))
