"""The ONNX rules of the pointwise ops (`OpDef.onnx`, see codegen/onnx.py), by op name; ops/pointwise.py
puts each in its op's entry.

A rule spells torch's value, not ONNX's nearest op: maximum/minimum and clamp keep NaN, floor
division and remainder take the divisor's sign as torch does, log1p/expm1 use the same corrections
as the kernels (exact near 0), bool `add`/`mul` are or/and. Half-typed nodes reach these rules
widened to float32 (codegen/onnx.py casts around them, as kernels compute half types in float32 and
round each value). Ops without a rule here (the special functions, nextafter, rand, ...) are refused
by name at export.
"""

from __future__ import annotations

import math

import torch

from ..types import is_float

_INF = float("inf")


def _same(op_type: str):
    """The ONNX op of the same semantics on every dtype the IR op takes."""
    return lambda b, args, types, out, **attrs: b.op(op_type, args)


def _float_or_identity(op_type: str):
    """`op_type` on floats; the identity on integers (floor, ceil, round of an integer)."""
    return lambda b, args, types, out: b.op(op_type, args) if is_float(types[0].dtype) else b.op("Identity", args)


def _c(b, value, types):
    return b.const(value, types[0].dtype)


def _where(b, cond, a, c):
    return b.op("Where", [cond, a, c])


def _trunc(b, x):
    return b.op("Mul", [b.op("Sign", [x]), b.op("Floor", [b.op("Abs", [x])])])


def _log1p(b, args, types, out):
    (x,) = args
    u = b.op("Add", [x, _c(b, 1.0, types)])
    d = b.op("Sub", [u, _c(b, 1.0, types)])
    zero = b.op("Equal", [d, _c(b, 0.0, types)])
    r = b.op("Mul", [b.op("Log", [u]), b.op("Div", [x, _where(b, zero, _c(b, 1.0, types), d)])])
    r = _where(b, zero, x, r)
    return _where(b, b.op("IsInf", [u], detect_negative=0), u, r)


def _expm1(b, args, types, out):
    (x,) = args
    u = b.op("Exp", [x])
    d = b.op("Sub", [u, _c(b, 1.0, types)])
    one = b.op("Equal", [u, _c(b, 1.0, types)])
    r = b.op("Div", [b.op("Mul", [d, x]), b.op("Log", [_where(b, one, _c(b, 2.0, types), u)])])
    r = _where(b, one, x, r)
    r = _where(b, b.op("IsInf", [u], detect_negative=0), u, r)
    return _where(b, b.op("Equal", [d, _c(b, -1.0, types)]), _c(b, -1.0, types), r)


def _relu(b, args, types, out):
    if is_float(types[0].dtype):
        return b.op("Relu", args)
    return _where(b, b.op("Less", [args[0], _c(b, 0, types)]), _c(b, 0, types), args[0])


def _sign(b, args, types, out):
    return b.op("Identity", args) if types[0].dtype == torch.bool else b.op("Sign", args)


def _isnan(b, args, types, out):
    if is_float(types[0].dtype):
        return b.op("IsNaN", args)
    return b.op("Not", [b.op("Equal", [args[0], args[0]])])  # integers: never NaN


def _truth(b, x, t):
    """x != 0 as bool."""
    return x if t.dtype == torch.bool else b.op("Not", [b.op("Equal", [x, b.const(0, t.dtype)])])


def _bitwise(bool_op: str, int_op: str):
    return lambda b, args, types, out: b.op(bool_op if types[0].dtype == torch.bool else int_op, args)


def _logical(op_type: str):
    return lambda b, args, types, out: b.op(op_type, [_truth(b, x, t) for x, t in zip(args, types)])


def _compare(op_type: str):
    """Ordering comparisons; bools compare as integers (onnxruntime has no bool Less)."""

    def rule(b, args, types, out):
        if types[0].dtype == torch.bool:
            args = [b.cast(x, torch.bool, torch.int32) for x in args]
        return b.op(op_type, args)

    return rule


def _nan_keeping(op_type: str):
    """maximum/minimum: NaN wins, as in torch (onnxruntime's Max/Min need not keep it)."""

    def rule(b, args, types, out):
        if types[0].dtype == torch.bool:  # the larger of two bools is their or
            return b.op("Or" if op_type == "Max" else "And", args)
        r = b.op(op_type, args)
        if not is_float(types[0].dtype):
            return r
        a, c = args
        r = _where(b, b.op("IsNaN", [c]), c, r)
        return _where(b, b.op("IsNaN", [a]), a, r)

    return rule


def _nan_ignoring(op_type: str):
    """fmax/fmin: a NaN loses to a number (both NaN: NaN)."""

    def rule(b, args, types, out):
        if types[0].dtype == torch.bool:
            return b.op("Or" if op_type == "Max" else "And", args)
        a, c = args
        r = b.op(op_type, args)
        if not is_float(types[0].dtype):
            return r
        r = _where(b, b.op("IsNaN", [c]), a, r)
        return _where(b, b.op("IsNaN", [a]), c, r)

    return rule


def _int_fmod(b, a, c):
    return b.op("Mod", [a, c], fmod=1)  # C's truncated remainder, the sign of the dividend


def _remainder(b, args, types, out):
    a, c = args
    if not is_float(types[0].dtype):
        return b.op("Mod", [a, c], fmod=0)  # the sign of the divisor: torch's remainder
    r = b.op("Mod", [a, c], fmod=1)
    zero = _c(b, 0.0, types)
    fix = b.op("And", [b.op("Not", [b.op("Equal", [r, zero])]),
                       b.op("Xor", [b.op("Less", [r, zero]), b.op("Less", [c, zero])])])
    return _where(b, fix, b.op("Add", [r, c]), r)


def _div(b, args, types, out, rounding_mode=None):
    a, c = args
    if rounding_mode is None:
        return b.op("Div", args)
    if not is_float(types[0].dtype):
        q = b.op("Div", args)  # integer Div truncates
        if rounding_mode == "trunc":
            return q
        zero = _c(b, 0, types)
        inexact = b.op("Not", [b.op("Equal", [b.op("Mod", [a, c], fmod=1), zero])])
        signs = b.op("Xor", [b.op("Less", [a, zero]), b.op("Less", [c, zero])])
        return _where(b, b.op("And", [inexact, signs]), b.op("Sub", [q, _c(b, 1, types)]), q)
    if rounding_mode == "trunc":
        return _trunc(b, b.op("Div", args))
    # torch's div_floor_floating: exact through fmod, then the nearest integer to the quotient.
    zero, one = _c(b, 0.0, types), _c(b, 1.0, types)
    mod = b.op("Mod", [a, c], fmod=1)
    q = b.op("Div", [b.op("Sub", [a, mod]), c])
    fix = b.op("And", [b.op("Not", [b.op("Equal", [mod, zero])]),
                       b.op("Xor", [b.op("Less", [c, zero]), b.op("Less", [mod, zero])])])
    q = _where(b, fix, b.op("Sub", [q, one]), q)
    fl = b.op("Floor", [q])
    fl = _where(b, b.op("Greater", [b.op("Sub", [q, fl]), _c(b, 0.5, types)]), b.op("Add", [fl, one]), fl)
    return _where(b, b.op("Equal", [c, zero]), b.op("Div", args), fl)


def _pow(b, args, types, out):
    return b.op("Pow", args)


def _clamp(b, args, types, out, min=None, max=None):
    (x,) = args
    if min is not None:  # comparisons false for NaN keep it, as torch.clamp does
        lo = _c(b, min, types)
        x = _where(b, b.op("Less", [x, lo]), lo, x)
    if max is not None:
        hi = _c(b, max, types)
        x = _where(b, b.op("Greater", [x, hi]), hi, x)
    return x if x != args[0] else b.op("Identity", args)


def _gelu(b, args, types, out, approximate="none"):
    (x,) = args
    half, one = _c(b, 0.5, types), _c(b, 1.0, types)
    if approximate == "tanh":
        cube = b.op("Mul", [b.op("Mul", [x, x]), x])
        inner = b.op("Mul", [_c(b, math.sqrt(2 / math.pi), types),
                             b.op("Add", [x, b.op("Mul", [_c(b, 0.044715, types), cube])])])
        t = b.op("Tanh", [inner])
    else:
        t = b.op("Erf", [b.op("Mul", [x, _c(b, math.sqrt(0.5), types)])])
    return b.op("Mul", [b.op("Mul", [half, x]), b.op("Add", [one, t])])


def _softplus(b, args, types, out, beta=1.0, threshold=20.0):
    (x,) = args
    xb = b.op("Mul", [x, _c(b, beta, types)])
    soft = b.op("Div", [_log1p(b, [b.op("Exp", [xb])], types, out), _c(b, beta, types)])
    return _where(b, b.op("Greater", [xb, _c(b, threshold, types)]), x, soft)


def _convert(b, args, types, out, dtype):
    if dtype == torch.bool:
        return _truth(b, args[0], types[0]) if types[0].dtype != torch.bool else b.op("Identity", args)
    if is_float(types[0].dtype) and not is_float(dtype):  # to an integer: toward zero, as torch
        return b.cast(_trunc(b, args[0]), types[0].dtype, dtype)
    return b.cast(args[0], types[0].dtype, dtype)


def _where_rule(b, args, types, out):
    if out.dtype != torch.bool:
        return b.op("Where", args)
    c, x, y = args  # onnxruntime has no bool Where: as uint8
    x, y = (b.cast(v, torch.bool, torch.uint8) for v in (x, y))
    return b.cast(b.op("Where", [c, x, y]), torch.uint8, torch.bool)


def _hypot(b, args, types, out):
    a, c = args
    return b.op("Sqrt", [b.op("Add", [b.op("Mul", [a, a]), b.op("Mul", [c, c])])])


ONNX = {
    "neg": _same("Neg"), "abs": _same("Abs"), "exp": _same("Exp"), "log": _same("Log"), "sqrt": _same("Sqrt"),
    "exp2": lambda b, args, types, out: b.op("Pow", [_c(b, 2.0, types), args[0]]),
    "log1p": _log1p, "expm1": _expm1,
    "rsqrt": lambda b, args, types, out: b.op("Reciprocal", [b.op("Sqrt", args)]),
    "reciprocal": _same("Reciprocal"), "sin": _same("Sin"), "cos": _same("Cos"), "tan": _same("Tan"),
    "tanh": _same("Tanh"), "sigmoid": _same("Sigmoid"), "relu": _relu, "erf": _same("Erf"),
    "asin": _same("Asin"), "acos": _same("Acos"), "atan": _same("Atan"), "sinh": _same("Sinh"),
    "cosh": _same("Cosh"), "asinh": _same("Asinh"), "acosh": _same("Acosh"), "atanh": _same("Atanh"),
    "silu": lambda b, args, types, out: b.op("Mul", [args[0], b.op("Sigmoid", args)]),
    "floor": _float_or_identity("Floor"), "ceil": _float_or_identity("Ceil"),
    "round": _float_or_identity("Round"),  # half to even, as torch
    "trunc": lambda b, args, types, out: _trunc(b, args[0]) if is_float(types[0].dtype) else b.op("Identity", args),
    "sign": _sign, "isnan": _isnan,
    "logical_not": lambda b, args, types, out: b.op("Not", [_truth(b, args[0], types[0])]),
    "bitwise_not": _bitwise("Not", "BitwiseNot"),
    "copy": _same("Identity"),
    "gelu": _gelu, "softplus": _softplus, "convert": _convert,
    "add": _bitwise("Or", "Add"), "sub": _same("Sub"), "mul": _bitwise("And", "Mul"), "pow": _pow,
    "maximum": _nan_keeping("Max"), "minimum": _nan_keeping("Min"), "fmax": _nan_ignoring("Max"),
    "fmin": _nan_ignoring("Min"),
    "fmod": lambda b, args, types, out: _int_fmod(b, *args), "remainder": _remainder, "div": _div,
    "eq": _same("Equal"), "ne": lambda b, args, types, out: b.op("Not", [b.op("Equal", args)]),
    "lt": _compare("Less"), "le": _compare("LessOrEqual"), "gt": _compare("Greater"),
    "ge": _compare("GreaterOrEqual"),
    "logical_and": _logical("And"), "logical_or": _logical("Or"), "logical_xor": _logical("Xor"),
    "bitwise_and": _bitwise("And", "BitwiseAnd"), "bitwise_or": _bitwise("Or", "BitwiseOr"),
    "bitwise_xor": _bitwise("Xor", "BitwiseXor"),
    "where": _where_rule, "clamp": _clamp, "hypot": _hypot,
}
