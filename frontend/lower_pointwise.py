"""Lowering rules for pointwise aten ops: unary, binary, where, clamp, casts.

IR pointwise ops take one input dtype, so each rule converts its operands first: arithmetic computes
in torch's result dtype (the fx node's output dtype), comparisons and logical ops in the promoted
dtype of their operands, and Python scalars become 0-dim `full` nodes of that dtype.

Half-precision scalars follow torch's CPU kernels bit for bit: a Python scalar is narrowed to the
half dtype (TensorIterator's common dtype) except where the kernel reads it in float32
(`original_scalar_value<opmath_t>`: mul and div, whose scalar `full` keeps the unrounded value the
kernels compute with); a 0-dim float32/float64 tensor multiplying or dividing a half tensor is read
in float32 the same way, so those compute in float32.
"""

from __future__ import annotations

import math

import torch

from ..ir import Value
from ..ir.ops.half import HALF_TYPES
from .lowering import Fallback, aten, out_dtype, promote, register, typed

# aten op -> IR op; computed in the output dtype (int inputs of float functions are converted first).
UNARY = {
    aten.neg.default: "neg", aten.abs.default: "abs", aten.exp.default: "exp", aten.exp2.default: "exp2",
    aten.log.default: "log", aten.log1p.default: "log1p", aten.expm1.default: "expm1",
    aten.sqrt.default: "sqrt", aten.rsqrt.default: "rsqrt", aten.reciprocal.default: "reciprocal",
    aten.sin.default: "sin", aten.cos.default: "cos", aten.tanh.default: "tanh",
    aten.sigmoid.default: "sigmoid", aten.relu.default: "relu", aten.silu.default: "silu",
    aten.erf.default: "erf", aten.floor.default: "floor", aten.ceil.default: "ceil",
    aten.trunc.default: "trunc", aten.round.default: "round", aten.sign.default: "sign",
    aten.sgn.default: "sign", aten.bitwise_not.default: "bitwise_not",
    # ir/ops/trig.py
    **{getattr(aten, n).default: n for n in ("asin", "acos", "atan", "sinh", "cosh", "tan", "asinh", "acosh",
                                             "atanh", "erfc", "erfinv", "lgamma", "digamma", "i0")},
    aten.special_i1.default: "i1",
}
# Unary ops with a bool result: computed in the input's dtype.
UNARY_PREDICATE = {aten.isnan.default: "isnan", aten.logical_not.default: "logical_not",
                   aten.signbit.default: "signbit"}

# aten op -> IR op for binary arithmetic, computed in the output dtype.
BINARY = {
    aten.add.Tensor: "add", aten.add.Scalar: "add", aten.sub.Tensor: "sub", aten.sub.Scalar: "sub",
    aten.mul.Tensor: "mul", aten.mul.Scalar: "mul",
    aten.maximum.default: "maximum", aten.minimum.default: "minimum",
    aten.fmod.Tensor: "fmod", aten.fmod.Scalar: "fmod",
    aten.remainder.Tensor: "remainder", aten.remainder.Scalar: "remainder",
    aten.remainder.Scalar_Tensor: "remainder",
    aten.bitwise_and.Tensor: "bitwise_and", aten.bitwise_and.Scalar: "bitwise_and",
    aten.bitwise_or.Tensor: "bitwise_or", aten.bitwise_or.Scalar: "bitwise_or",
    aten.bitwise_xor.Tensor: "bitwise_xor", aten.bitwise_xor.Scalar: "bitwise_xor",
    aten.atan2.default: "atan2", aten.copysign.Tensor: "copysign", aten.copysign.Scalar: "copysign",
    aten.fmax.default: "fmax", aten.fmin.default: "fmin", aten.hypot.default: "hypot",
    aten.nextafter.default: "nextafter",
}
# Binary ops with a bool result: operands are promoted to a common dtype first.
BINARY_PREDICATE = {
    **{getattr(aten, n).Tensor: n for n in ("eq", "ne", "lt", "le", "gt", "ge")},
    **{getattr(aten, n).Scalar: n for n in ("eq", "ne", "lt", "le", "gt", "ge")},
    aten.logical_and.default: "logical_and", aten.logical_or.default: "logical_or",
    aten.logical_xor.default: "logical_xor",
}


def _operand(L, x, dtype: torch.dtype) -> Value:
    """`L.operand`, with a Python scalar narrowed to a half dtype as torch narrows it."""
    if dtype in HALF_TYPES and isinstance(x, (int, float)) and not isinstance(x, bool):
        x = torch.tensor(x, dtype=dtype).item()
    return L.operand(x, dtype)


def _scalar_compute_dtype(other, dtype: torch.dtype) -> torch.dtype:
    """mul/div read a 0-dim float32/float64 `other` in float32 when the result is half (the CPU kernel's
    `original_scalar_value<float>`): compute in float32 then; the driver rounds the result to `dtype`."""
    if (dtype in HALF_TYPES and isinstance(other, Value) and other.type.rank == 0
            and other.dtype in (torch.float32, torch.float64)):
        return torch.float32
    return dtype


def _unary(ir_op: str, predicate: bool = False, attrs: tuple[str, ...] = ()):
    """`attrs`: the aten op's Scalar arguments the IR op takes as float attributes, by name."""

    def rule(L, node, a):
        x = a.self if predicate else L.cast(a.self, out_dtype(node))
        return L.add(ir_op, [x], **{k: float(a[k]) for k in attrs})

    return rule


def _check_sub(x, y, *_) -> None:
    """Eager's sub refuses a bool tensor operand; fake tensors only refuse two (found by fuzzing)."""
    if any(isinstance(v, (Value, torch.Tensor)) and v.dtype == torch.bool for v in (x, y)):
        raise RuntimeError("Subtraction, the `-` operator, with a bool tensor is not supported. If you are trying "
                           "to invert a mask, use the `~` or `logical_not()` operator instead.")


# Checks of calls eager rejects and fake tensors accept, on the operands (IR values or fake tensors).
# Capture runs them on every node before dead code is dropped (eager runs an unused call too).
EAGER_REJECTS = {aten.sub.Tensor: _check_sub, aten.rsub.Tensor: _check_sub}


def _binary(ir_op: str, predicate: bool):
    def rule(L, node, a):
        x, y = a.self, a.other
        if ir_op == "sub":
            _check_sub(x, y)
        dtype = promote(x, y) if predicate else out_dtype(node)
        if ir_op == "mul":
            dtype = _scalar_compute_dtype(y, dtype)
            x, y = L.operand(x, dtype), L.operand(y, dtype)  # the scalar unrounded: see the module doc
        else:
            x, y = _operand(L, x, dtype), _operand(L, y, dtype)
        alpha = a.get("alpha")
        if alpha is not None and alpha != 1:  # add/sub: x + alpha * y
            y = L.add("mul", [y, L.const(alpha, dtype)])
        return L.add(ir_op, [x, y])

    return rule


for _op, _ir in UNARY.items():
    register(_op)(_unary(_ir, False))
for _op, _ir in UNARY_PREDICATE.items():
    register(_op)(_unary(_ir, True))
for _op, _ir in BINARY.items():
    register(_op)(_binary(_ir, False))
for _op, _ir in BINARY_PREDICATE.items():
    register(_op)(_binary(_ir, True))


register(aten.softplus.default)(_unary("softplus", attrs=("beta", "threshold")))


@register(aten.gelu.default)
def _gelu(L, node, a):
    return L.add("gelu", [L.cast(a.self, out_dtype(node))], approximate=a.approximate)


def _log_base(base: float):
    def rule(L, node, a):
        dt = out_dtype(node)
        dt = torch.float32 if dt in HALF_TYPES else dt  # one kernel in torch: rounded once, by the driver
        return L.add("mul", [L.add("log", [L.cast(a.self, dt)]), L.const(1 / math.log(base), dt)])

    return rule


register(aten.log10.default)(_log_base(10))
register(aten.log2.default)(_log_base(2))


@register(aten.rsub.Tensor, aten.rsub.Scalar)
def _rsub(L, node, a):
    _check_sub(a.self, a.other)
    dt = out_dtype(node)
    x = _operand(L, a.self, dt)
    if a.alpha != 1:
        x = L.add("mul", [x, L.const(a.alpha, dt)])
    return L.add("sub", [_operand(L, a.other, dt), x])


@register(aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode, aten.div.Scalar_mode)
def _div(L, node, a):
    dt = _scalar_compute_dtype(a.other, out_dtype(node))
    mode = a.get("rounding_mode")
    return L.add("div", [L.operand(a.self, dt), L.operand(a.other, dt)], rounding_mode=mode)


@register(aten.floor_divide.default, aten.floor_divide.Scalar)
def _floor_divide(L, node, a):
    dt = _scalar_compute_dtype(a.other, out_dtype(node))
    return L.add("div", [L.operand(a.self, dt), L.operand(a.other, dt)], rounding_mode="floor")


@register(aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor, aten.pow.Scalar)
def _pow(L, node, a):
    dt = out_dtype(node)
    base, exp = a.self, a.exponent
    if isinstance(exp, (int, float)) and not isinstance(exp, bool) and isinstance(base, Value):
        # torch's own special cases of a scalar exponent (exact; valid for integer dtypes too).
        # torch's CPU kernel computes float16 x**3 and x**-2 in float32, rounding once (bfloat16 op by op);
        # the driver rounds the result to `dt`.
        b = L.cast(base, torch.float32 if dt == torch.float16 and exp in (3, -2) else dt)
        if exp == 1:
            return b
        if exp in (2, 3, -2):
            sq = L.add("mul", [b, b])
            if exp == 3:
                return L.add("mul", [sq, b])
            if exp == -2 and dt.is_floating_point:
                return L.add("reciprocal", [sq])
            if exp == 2:
                return sq
        if dt.is_floating_point and exp in (0.5, -0.5, -1):
            return L.add({0.5: "sqrt", -0.5: "rsqrt", -1: "reciprocal"}[exp], [b])
    if not dt.is_floating_point:
        raise Fallback("integer pow")
    return L.add("pow", [_operand(L, base, dt), _operand(L, exp, dt)])


@register(aten.where.self)
def _where(L, node, a):
    dt = out_dtype(node)
    cond = L.cast(a.condition, torch.bool)
    return L.add("where", [cond, _operand(L, a.self, dt), _operand(L, a.other, dt)])


@register(aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default, aten.hardtanh.default)
def _clamp(L, node, a):
    dt = out_dtype(node)
    lo = a.get("min", a.get("min_val"))
    hi = a.get("max", a.get("max_val"))
    if isinstance(lo, complex) or isinstance(hi, complex):
        raise Fallback("complex bound")
    attrs = {}
    if lo is not None:
        attrs["min"] = typed(lo, dt)
    if hi is not None:
        attrs["max"] = typed(hi, dt)
    return L.add("clamp", [L.cast(a.self, dt)], **attrs)


@register(aten.clamp.Tensor, aten.clamp_min.Tensor, aten.clamp_max.Tensor)
def _clamp_tensor(L, node, a):
    dt = out_dtype(node)
    x = L.cast(a.self, dt)
    lo = a.get("min")
    hi = a.get("max")
    if lo is not None:
        x = L.add("maximum", [x, _operand(L, lo, dt)])
    if hi is not None:
        x = L.add("minimum", [x, _operand(L, hi, dt)])
    return x


@register(aten._to_copy.default)
def _to_copy(L, node, a):
    if a.device is not None and torch.device(a.device) != node.args[0].meta["val"].device:
        raise Fallback("device transfer")
    return L.cast(a.self, out_dtype(node))


@register(torch.ops.prims.convert_element_type.default)
def _convert(L, node, a):
    return L.cast(a.a, a.dtype)


@register(aten.round.decimals)
def _round_decimals(L, node, a):
    """torch's CPU kernel: nearbyint(x * 10^d) / 10^d (d < 0: nearbyint(x / 10^-d) * 10^-d), in the
    op's math dtype (float32 for half types), 10^|d| rounded to it."""
    dt, d = out_dtype(node), int(a.decimals)
    if not dt.is_floating_point:
        raise Fallback("round(decimals) of integers")
    math_dt = torch.float32 if dt in HALF_TYPES else dt
    scale = L.const(float(torch.tensor(10.0 ** abs(d), dtype=math_dt)), math_dt)
    x = L.cast(a.self, math_dt)
    if d == 0:
        return L.add("round", [x])
    inner, outer = ("div", "mul") if d < 0 else ("mul", "div")
    return L.add(outer, [L.add("round", [L.add(inner, [x, scale])]), scale])


@register(aten.ldexp.Tensor)
def _ldexp(L, node, a):
    """torch's decomposition: `self * pow(two, other)` with `two` a 0-dim tensor of self's dtype
    (float32 for integers), so the power has that dtype against an integer `other`, and a float
    `other`'s own dtype (a 0-dim tensor does not promote a dimensioned one)."""
    x, other = a.self, a.other
    two_dt = x.dtype if x.dtype.is_floating_point else torch.float32
    p_dt = torch.result_type(torch.empty((), dtype=two_dt), torch.empty((1,) * other.type.rank, dtype=other.dtype))
    power = L.add("pow", [L.const(2.0, p_dt), L.cast(other, p_dt)])
    dt = out_dtype(node)
    return L.add("mul", [L.cast(x, dt), L.cast(power, dt)])


@register(aten.angle.default)
def _angle(L, node, a):
    """A real input's angle: pi below 0, else 0, NaN kept (torch's CPU kernel); its gradient is 0
    everywhere, NaN included (torch's angle_backward for real inputs)."""
    x, dt = a.self, out_dtype(node)
    if x.dtype.is_complex or not dt.is_floating_point:
        raise Fallback("angle of complex values")
    xs = L.add("stop_gradient", [L.cast(x, dt)])
    angle = L.add("where", [L.add("lt", [xs, L.const(0.0, dt)]), L.const(math.pi, dt), L.const(0.0, dt)])
    angle = L.add("where", [L.add("isnan", [xs]), xs, angle])
    return L.add("zero_gradient", [angle, x]) if x.dtype.is_floating_point else angle
