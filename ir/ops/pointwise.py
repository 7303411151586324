"""Pointwise ops: unary, binary, ternary and casts, all with broadcasting.

IR pointwise ops take inputs of one dtype (the frontend inserts `convert` nodes for torch's type
promotion) and broadcast like torch. The Triton rule of each op receives its arguments already
loaded in the compute dtype (half types upcast to float32) and returns an expression; `e.tmp(expr)`
binds a temporary when an expression needs a value more than once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import OpDef, register
from ..types import TRITON_NAMES, TensorType, broadcast_shapes, compute_dtype, is_float, is_int

# -- type rules -----------------------------------------------------------------------------------


def _same_dtype(name: str, types: list[TensorType]) -> torch.dtype:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise TypeError(f"{name}: inputs must share one dtype (insert convert), got {sorted(map(str, dtypes))}")
    return dtypes.pop()


def _infer(name: str, out: str, allow: str):
    """out: 'same' | 'bool'; allow: 'float' | 'int' | 'any' (dtypes the op accepts)."""

    def infer(types: list[TensorType], **attrs) -> TensorType:
        dtype = _same_dtype(name, types)
        if allow == "float" and not is_float(dtype):
            raise TypeError(f"{name}: needs a floating-point input, got {dtype}")
        if allow == "int" and not is_int(dtype):
            raise TypeError(f"{name}: needs an integer or bool input, got {dtype}")
        shape = broadcast_shapes(*(t.shape for t in types))
        return TensorType(shape, torch.bool if out == "bool" else dtype)

    return infer


def pointwise(name: str, impl, triton, *, out: str = "same", allow: str = "any", doc: str = "") -> OpDef:
    return register(OpDef(name, "pointwise", _infer(name, out, allow), impl, triton=triton, doc=doc))


# -- Triton helpers (text) ------------------------------------------------------------------------


def _lit(value, dtype: torch.dtype) -> str:
    """A literal of `dtype` that Triton will not promote the expression by."""
    return f"tl.full([], {value!r}, {TRITON_NAMES[compute_dtype(dtype)]})"


def _expm1(e, x: str) -> str:
    # expm1 via the classic exp(x)-1 correction: exact where exp rounds to 1, no libdevice needed.
    u = e.tmp(f"tl.exp({x})")
    d = e.tmp(f"{u} - 1.0")
    safe_log = f"tl.log(tl.where({u} == 1.0, 2.0, {u}))"
    r = e.tmp(f"tl.where({u} == 1.0, {x}, {d} * {x} / {safe_log})")
    return f"tl.where({d} == -1.0, -1.0, tl.where({u} == float('inf'), {u}, {r}))"


def _log1p(e, x: str) -> str:
    u = e.tmp(f"1.0 + {x}")
    d = e.tmp(f"{u} - 1.0")
    r = e.tmp(f"tl.where({d} == 0.0, {x}, tl.log({u}) * ({x} / tl.where({d} == 0.0, 1.0, {d})))")
    return f"tl.where({u} == float('inf'), {u}, {r})"


def _tanh(e, x: str) -> str:
    # tanh(|x|) = -expm1(-2|x|) / (2 + expm1(-2|x|)): accurate near 0, saturates cleanly.
    m = e.tmp(_expm1(e, f"-2.0 * tl.abs({x})"))
    t = e.tmp(f"-{m} / (2.0 + {m})")
    return f"tl.where({x} < 0, -{t}, {t})"


def _erf(e, x: str) -> str:
    return f"tl.erf({x})"


def _round(e, x: str, dtype: torch.dtype) -> str:
    if not is_float(dtype):
        return x
    # Adding and subtracting 2**mantissa rounds half to even in IEEE arithmetic.
    big = 2.0**52 if dtype == torch.float64 else 2.0**23
    a = e.tmp(f"tl.abs({x})")
    r = e.tmp(f"({a} + {big!r}) - {big!r}")
    return f"tl.where({a} < {big!r}, tl.where({x} < 0, -{r}, {r}), {x})"


def _trunc(e, x: str) -> str:
    return f"tl.where({x} < 0, tl.ceil({x}), tl.floor({x}))"


def _pow(e, x: str, y: str) -> str:
    ax = e.tmp(f"tl.abs({x})")
    r = e.tmp(f"tl.exp2({y} * tl.log2({ax}))")
    yi = e.tmp(f"{y} == tl.floor({y})")
    odd = e.tmp(f"{yi} & (tl.floor({y} * 0.5) * 2.0 != {y})")
    r = e.tmp(f"tl.where(({x} < 0) & {odd}, -{r}, {r})")
    r = e.tmp(f"tl.where(({x} < 0) & ({yi} == 0), float('nan'), {r})")
    return f"tl.where(({y} == 0) | ({x} == 1.0), 1.0, {r})"


def _div(e, a: str, b: str, dtype: torch.dtype, rounding_mode) -> str:
    if rounding_mode is None:
        return f"{a} / {b}"
    if is_int(dtype):
        q = e.tmp(f"{a} // {b}")  # Triton integer division truncates (C semantics)
        if rounding_mode == "trunc":
            return q
        return f"tl.where(({a} % {b} != 0) & (({a} < 0) != ({b} < 0)), {q} - 1, {q})"
    if rounding_mode == "trunc":
        return _trunc(e, e.tmp(f"{a} / {b}"))
    # floor division as torch computes it (div_floor_floating): exact via fmod.
    mod = e.tmp(f"{a} % {b}")
    div = e.tmp(f"({a} - {mod}) / {b}")
    div = e.tmp(f"tl.where(({mod} != 0) & (({b} < 0) != ({mod} < 0)), {div} - 1.0, {div})")
    fl = e.tmp(f"tl.floor({div})")
    fl = e.tmp(f"tl.where({div} - {fl} > 0.5, {fl} + 1.0, {fl})")
    return f"tl.where({b} == 0, {a} / {b}, {fl})"


def _remainder(e, a: str, b: str) -> str:
    r = e.tmp(f"{a} % {b}")
    return f"tl.where(({r} != 0) & (({r} < 0) != ({b} < 0)), {r} + {b}, {r})"


def _sign(e, x: str, dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return x
    return f"tl.where({x} > 0, 1, tl.where({x} < 0, -1, {x}))"


def _convert(e, x: str, src: torch.dtype, dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return f"{x} != 0"
    if compute_dtype(dtype) != dtype:
        # An explicit cast to a half type rounds there, even inside a fused kernel computing in float32.
        return f"{x}.to({TRITON_NAMES[dtype]}).to({TRITON_NAMES[compute_dtype(dtype)]})"
    return f"{x}.to({TRITON_NAMES[compute_dtype(dtype)]})"


SQRT1_2 = 0.7071067811865476
SQRT_2_OVER_PI = 0.7978845608028654


def _gelu(e, x: str, approximate: str) -> str:
    if approximate == "tanh":
        inner = e.tmp(f"{SQRT_2_OVER_PI!r} * ({x} + 0.044715 * {x} * {x} * {x})")
        return f"0.5 * {x} * (1.0 + {e.tmp(_tanh(e, inner))})"
    return f"0.5 * {x} * (1.0 + tl.erf({x} * {SQRT1_2!r}))"


# -- unary ----------------------------------------------------------------------------------------
# (name, torch reference, triton rule taking (e, x, dtype) -> expr, dtypes accepted, output)
_UNARY = [
    ("neg", torch.neg, lambda e, x, d: f"-{x}", "any", "same"),
    ("abs", torch.abs, lambda e, x, d: x if d == torch.bool else f"tl.abs({x})", "any", "same"),
    ("exp", torch.exp, lambda e, x, d: f"tl.exp({x})", "float", "same"),
    ("exp2", torch.exp2, lambda e, x, d: f"tl.exp2({x})", "float", "same"),
    ("log", torch.log, lambda e, x, d: f"tl.log({x})", "float", "same"),
    ("log1p", torch.log1p, lambda e, x, d: _log1p(e, x), "float", "same"),
    ("expm1", torch.expm1, lambda e, x, d: _expm1(e, x), "float", "same"),
    ("sqrt", torch.sqrt, lambda e, x, d: f"tl.sqrt({x})", "float", "same"),
    ("rsqrt", torch.rsqrt, lambda e, x, d: f"1.0 / tl.sqrt({x})", "float", "same"),
    ("reciprocal", torch.reciprocal, lambda e, x, d: f"1.0 / {x}", "float", "same"),
    ("sin", torch.sin, lambda e, x, d: f"tl.sin({x})", "float", "same"),
    ("cos", torch.cos, lambda e, x, d: f"tl.cos({x})", "float", "same"),
    ("tanh", torch.tanh, lambda e, x, d: _tanh(e, x), "float", "same"),
    ("sigmoid", torch.sigmoid, lambda e, x, d: f"1.0 / (1.0 + tl.exp(-{x}))", "float", "same"),
    ("relu", torch.relu, lambda e, x, d: f"tl.where({x} < 0, 0, {x})", "any", "same"),
    ("silu", F.silu, lambda e, x, d: f"{x} / (1.0 + tl.exp(-{x}))", "float", "same"),
    ("erf", torch.erf, lambda e, x, d: _erf(e, x), "float", "same"),
    ("floor", torch.floor, lambda e, x, d: f"tl.floor({x})" if is_float(d) else x, "any", "same"),
    ("ceil", torch.ceil, lambda e, x, d: f"tl.ceil({x})" if is_float(d) else x, "any", "same"),
    ("trunc", torch.trunc, lambda e, x, d: _trunc(e, x) if is_float(d) else x, "any", "same"),
    ("round", torch.round, lambda e, x, d: _round(e, x, d), "any", "same"),
    ("sign", torch.sign, lambda e, x, d: _sign(e, x, d), "any", "same"),
    ("isnan", torch.isnan, lambda e, x, d: f"{x} != {x}", "any", "bool"),
    ("logical_not", torch.logical_not, lambda e, x, d: f"{x} == 0", "any", "bool"),
    ("bitwise_not", torch.bitwise_not,
     lambda e, x, d: f"{x} == 0" if d == torch.bool else f"~{x}", "int", "same"),
    ("copy", torch.clone, lambda e, x, d: x, "any", "same"),
]

for _name, _ref, _rule, _allow, _out in _UNARY:
    pointwise(
        _name,
        (lambda ref: lambda x: ref(x))(_ref),
        (lambda rule: lambda e, args, dtypes, out: rule(e, args[0], dtypes[0]))(_rule),
        out=_out,
        allow=_allow,
    )

pointwise(
    "gelu",
    lambda x, approximate="none": F.gelu(x, approximate=approximate),
    lambda e, args, dtypes, out, approximate="none": _gelu(e, args[0], approximate),
    allow="float",
    doc="GELU, exact (erf) or approximate='tanh'",
)


def _convert_infer(types: list[TensorType], dtype: torch.dtype) -> TensorType:
    return TensorType(types[0].shape, dtype)


register(OpDef(
    "convert", "pointwise", _convert_infer,
    lambda x, dtype: x.to(dtype),
    triton=lambda e, args, dtypes, out, dtype: _convert(e, args[0], dtypes[0], dtype),
    doc="cast to `dtype` (float to int truncates toward zero, to bool tests != 0)",
))

# -- binary ---------------------------------------------------------------------------------------
_BINARY = [
    # bool add is logical or in torch; int1 + int1 would wrap to 0 in Triton.
    ("add", torch.add, lambda e, a, b, d: f"{a} | {b}" if d == torch.bool else f"{a} + {b}", "any", "same"),
    ("sub", torch.sub, lambda e, a, b, d: f"{a} - {b}", "any", "same"),
    ("mul", torch.mul, lambda e, a, b, d: f"{a} * {b}", "any", "same"),
    ("pow", torch.pow, lambda e, a, b, d: _pow(e, a, b), "float", "same"),
    ("maximum", torch.maximum,
     lambda e, a, b, d: f"tl.where(({a} > {b}) | ({a} != {a}), {a}, {b})", "any", "same"),
    ("minimum", torch.minimum,
     lambda e, a, b, d: f"tl.where(({a} < {b}) | ({a} != {a}), {a}, {b})", "any", "same"),
    ("fmod", torch.fmod, lambda e, a, b, d: f"{a} % {b}", "any", "same"),
    ("remainder", torch.remainder, lambda e, a, b, d: _remainder(e, a, b), "any", "same"),
    ("eq", torch.eq, lambda e, a, b, d: f"{a} == {b}", "any", "bool"),
    ("ne", torch.ne, lambda e, a, b, d: f"{a} != {b}", "any", "bool"),
    ("lt", torch.lt, lambda e, a, b, d: f"{a} < {b}", "any", "bool"),
    ("le", torch.le, lambda e, a, b, d: f"{a} <= {b}", "any", "bool"),
    ("gt", torch.gt, lambda e, a, b, d: f"{a} > {b}", "any", "bool"),
    ("ge", torch.ge, lambda e, a, b, d: f"{a} >= {b}", "any", "bool"),
    ("logical_and", torch.logical_and, lambda e, a, b, d: f"({a} != 0) & ({b} != 0)", "any", "bool"),
    ("logical_or", torch.logical_or, lambda e, a, b, d: f"({a} != 0) | ({b} != 0)", "any", "bool"),
    ("logical_xor", torch.logical_xor, lambda e, a, b, d: f"({a} != 0) ^ ({b} != 0)", "any", "bool"),
    ("bitwise_and", torch.bitwise_and, lambda e, a, b, d: f"{a} & {b}", "int", "same"),
    ("bitwise_or", torch.bitwise_or, lambda e, a, b, d: f"{a} | {b}", "int", "same"),
    ("bitwise_xor", torch.bitwise_xor, lambda e, a, b, d: f"{a} ^ {b}", "int", "same"),
]

for _name, _ref, _rule, _allow, _out in _BINARY:
    pointwise(
        _name,
        (lambda ref: lambda a, b: ref(a, b))(_ref),
        (lambda rule: lambda e, args, dtypes, out: rule(e, args[0], args[1], dtypes[0]))(_rule),
        out=_out,
        allow=_allow,
    )


def _div_infer(types: list[TensorType], rounding_mode=None) -> TensorType:
    t = _infer("div", "same", "any")(types)
    if rounding_mode is None and not is_float(t.dtype):
        raise TypeError("div: true division needs floating-point inputs (convert first)")
    if rounding_mode not in (None, "trunc", "floor"):
        raise ValueError(f"div: rounding_mode must be None, 'trunc' or 'floor', got {rounding_mode!r}")
    return t


register(OpDef(
    "div", "pointwise", _div_infer,
    lambda a, b, rounding_mode=None: torch.div(a, b, rounding_mode=rounding_mode),
    triton=lambda e, args, dtypes, out, rounding_mode=None: _div(e, args[0], args[1], dtypes[0], rounding_mode),
))

# -- ternary and clamp ----------------------------------------------------------------------------


def _where_infer(types: list[TensorType]) -> TensorType:
    c, a, b = types
    if c.dtype != torch.bool:
        raise TypeError(f"where: condition must be bool, got {c.dtype}")
    dtype = _same_dtype("where", [a, b])
    return TensorType(broadcast_shapes(c.shape, a.shape, b.shape), dtype)


register(OpDef(
    "where", "pointwise", _where_infer, torch.where,
    triton=lambda e, args, dtypes, out: f"tl.where({args[0]}, {args[1]}, {args[2]})",
))


def _clamp_infer(types: list[TensorType], min=None, max=None) -> TensorType:
    return _infer("clamp", "same", "any")(types)


def _clamp(e, args, dtypes, out, min=None, max=None) -> str:
    x = args[0]
    # Comparisons that are false for NaN keep NaN, as torch.clamp does.
    if min is not None:
        x = e.tmp(f"tl.where({x} < {_lit(min, dtypes[0])}, {_lit(min, dtypes[0])}, {x})")
    if max is not None:
        x = e.tmp(f"tl.where({x} > {_lit(max, dtypes[0])}, {_lit(max, dtypes[0])}, {x})")
    return x


register(OpDef(
    "clamp", "pointwise", _clamp_infer,
    lambda x, min=None, max=None: torch.clamp(x, min, max),
    triton=_clamp,
    doc="clamp to scalar bounds (tensor bounds lower to maximum/minimum)",
))
