"""Inverse trigonometric, hyperbolic and sign-manipulating pointwise ops: asin, acos, atan, atan2,
sinh, cosh, tan, asinh, acosh, atanh, copysign, signbit, fmax, fmin, hypot, nextafter.

Triton's interpreter has no libdevice, so every rule is plain `tl` arithmetic on exp, log, sqrt, sin
and cos, in the compute dtype (float32 for half types, float64 for float64):

- atan is Cephes' range-reduced approximation (atanf's polynomial for float32, atan's rational P/Q
  for float64); asin, acos and atan2 are built on it, so all of them are exact at 0 and take ±inf
  and NaN as C's functions do;
- sinh and cosh go through expm1 (accurate near 0) and exp(|x|/2)² past |x| = 20 (finite where the
  result is, although exp(|x|) alone would overflow); asinh, acosh and atanh through log1p forms
  accurate near their zeros, and log(|x|) + ln 2 for huge |x| (where x² would overflow);
- copysign and signbit read the sign bit itself (bitcast to an integer of the value's width), so
  -0.0 and NaNs with the sign bit set count as negative, as in torch; nextafter steps the integer
  bits of the storage dtype (float16 and bfloat16 too), so it is exact;
- tan is sin/cos, for float32 in float64 (`_tan`).

Eager's sinh/cosh overflow from |x| = 88.7 (float32) or 709.8 (float64) in its vectorized loop
(exp(x) / 2) but not in its scalar one: the kernels give the finite value, as the scalar loop does.
Odd functions return ±0 for ±0 (`_odd`). VJP rules spell derivatives.yaml's formulas.
"""

from __future__ import annotations

import math

import torch

from ..registry import ALL, FLOAT, Domain
from ..types import compute_dtype, is_float
from .pointwise import _c, _expm1, _f, _lit, _log1p, _vjp, _where0, aten, pointwise

PI = math.pi
PIO2 = math.pi / 2
PIO4 = math.pi / 4
LN2 = math.log(2.0)
# Past this magnitude asinh/acosh are log(|x|) + ln 2 to every bit of float64 (x² would overflow first).
HUGE = 2.0**28
# Past this magnitude sinh/cosh are exp(|x|) / 2 to every bit of float64 (e^-2|x| < 2^-57).
SINH_BIG = 20.0

# Cephes atan.c (double): atan(x) = x + x z P(z) / Q(z), z = x², on |x| <= 0.66 after reduction.
_ATAN_P = (-8.750608600031904122785e-1, -1.615753718733365076637e1, -7.500855792314704667340e1,
           -1.228866684490136173410e2, -6.485021904942025371773e1)
_ATAN_Q = (2.485846490142306297962e1, 1.650270098316988542046e2, 4.328810604912902668951e2,
           4.853903996359136964868e2, 1.945506571482613964425e2)  # monic: leading 1.0 omitted
_MOREBITS = 6.123233995736765886130e-17  # pi/2 - float64(pi/2)
# Cephes atanf.c (float): atan(x) = x + x z P(z), on |x| <= tan(pi/8) after reduction.
_ATANF_P = (8.05374449538e-2, -1.38776856032e-1, 1.99777106478e-1, -3.33329491539e-1)


def _poly(e, z: str, coeffs: tuple[float, ...], monic: bool = False) -> str:
    """Horner's scheme over `coeffs` (highest degree first); `monic`: a leading 1.0 before them."""
    acc = f"({z} + {coeffs[0]!r})" if monic else repr(coeffs[0])
    for c in coeffs[1:]:
        acc = e.tmp(f"{acc} * {z} + {c!r}")
    return acc


def _odd(e, x: str, r: str) -> str:
    """An odd function's value at x from `r`, its value at |x|: ±0 at ±0, NaN at NaN."""
    return f"tl.where({x} < 0, -{r}, tl.where({x} == 0, {x}, {r}))"


def _signbit(e, x: str, dtype: torch.dtype) -> str:
    """The sign bit of `x` (a value of compute dtype `compute_dtype(dtype)`): -0.0 and -NaN included."""
    if not is_float(dtype):
        return f"{x} < 0" if dtype not in (torch.bool, torch.uint8) else f"{x} != {x}"
    bits = "tl.int64" if compute_dtype(dtype) == torch.float64 else "tl.int32"
    return f"{x}.to({bits}, bitcast=True) < 0"


def _atan_abs(e, a: str, dtype: torch.dtype) -> str:
    """atan(a) for a >= 0 (or NaN), +inf included."""
    if compute_dtype(dtype) == torch.float64:
        big = e.tmp(f"{a} > 2.414213562373095")  # tan(3pi/8)
        mid = e.tmp(f"{a} > 0.66")
        t = e.tmp(f"tl.where({big}, -1.0 / {a}, tl.where({mid}, ({a} - 1.0) / ({a} + 1.0), {a}))")
        z = e.tmp(f"{t} * {t}")
        q = e.tmp(f"{z} * {_poly(e, z, _ATAN_P)} / {_poly(e, z, _ATAN_Q, monic=True)}")
        # Cephes adds the bits of pi/2 float64 drops to the small part first.
        more = f"tl.where({big}, {_lit(_MOREBITS, dtype)}, tl.where({mid}, {_lit(0.5 * _MOREBITS, dtype)}, 0.0))"
        r = e.tmp(f"({t} * {q} + {t}) + {more}")
    else:
        big = e.tmp(f"{a} > 2.414213562373095")
        mid = e.tmp(f"{a} > 0.4142135623730950")  # tan(pi/8)
        t = e.tmp(f"tl.where({big}, -1.0 / {a}, tl.where({mid}, ({a} - 1.0) / ({a} + 1.0), {a}))")
        z = e.tmp(f"{t} * {t}")
        r = e.tmp(f"{_poly(e, z, _ATANF_P)} * {z} * {t} + {t}")
    # Typed literals: a where of two Python floats would be a float32 constant even in float64.
    return f"(tl.where({big}, {_lit(PIO2, dtype)}, tl.where({mid}, {_lit(PIO4, dtype)}, 0.0)) + {r})"


def _atan(e, x: str, dtype: torch.dtype) -> str:
    return _odd(e, x, e.tmp(_atan_abs(e, e.tmp(f"tl.abs({x})"), dtype)))


def _asin(e, x: str, dtype: torch.dtype) -> str:
    # atan(x / sqrt(1 - x²)), 1 - x² as (1 - x)(1 + x) (exact near |x| = 1): ±pi/2 at ±1 (x / 0),
    # NaN past 1 (sqrt of a negative).
    a = e.tmp(f"tl.abs({x})")
    t = e.tmp(f"{a} / tl.sqrt((1.0 - {a}) * (1.0 + {a}))")
    return _odd(e, x, e.tmp(_atan_abs(e, t, dtype)))


def _acos(e, x: str, dtype: torch.dtype) -> str:
    # 2 atan(sqrt((1 - x) / (1 + x))): 0 at 1, pi at -1 (atan(inf)), NaN past ±1.
    t = e.tmp(f"tl.sqrt((1.0 - {x}) / (1.0 + {x}))")
    return f"2.0 * {_atan_abs(e, t, dtype)}"


def _atan2(e, y: str, x: str, dtype: torch.dtype) -> str:
    # C's atan2: atan(|y| / |x|) folded into the quadrant of (x, y) by the sign bits, so that
    # atan2(±0, -0) = ±pi and atan2(±0, +0) = ±0; 0/0 counts as 0 and inf/inf as pi/4.
    ay = e.tmp(f"tl.abs({y})")
    ax = e.tmp(f"tl.abs({x})")
    inf = "float('inf')"
    ratio = e.tmp(f"tl.where(({ax} == {inf}) & ({ay} == {inf}), 1.0, tl.where(({ax} == 0) & ({ay} == 0), 0.0, "
                  f"{ay} / {ax}))")
    r = e.tmp(_atan_abs(e, ratio, dtype))
    r = e.tmp(f"tl.where({_signbit(e, x, dtype)}, {PI!r} - {r}, {r})")
    return f"tl.where({_signbit(e, y, dtype)}, -{r}, {r})"


def _sinh(e, x: str, dtype: torch.dtype) -> str:
    a = e.tmp(f"tl.abs({x})")
    u = e.tmp(_expm1(e, f"tl.where({a} > {SINH_BIG!r}, 0.0, {a})"))
    small = e.tmp(f"0.5 * ({u} + {u} / ({u} + 1.0))")  # (e^a - e^-a) / 2 without cancellation
    h = e.tmp(f"tl.exp(0.5 * {a})")
    return _odd(e, x, e.tmp(f"tl.where({a} > {SINH_BIG!r}, (0.5 * {h}) * {h}, {small})"))


def _cosh(e, x: str, dtype: torch.dtype) -> str:
    a = e.tmp(f"tl.abs({x})")
    t = e.tmp(f"tl.exp(tl.where({a} > {SINH_BIG!r}, 0.0, {a}))")
    h = e.tmp(f"tl.exp(0.5 * {a})")
    return f"tl.where({a} > {SINH_BIG!r}, (0.5 * {h}) * {h}, 0.5 * {t} + 0.5 / {t})"


def _tan(e, x: str, dtype: torch.dtype) -> str:
    if compute_dtype(dtype) == torch.float32:
        # In float64, rounded once (0.5 ulp; eager's tanf: 0.7). Float32 sin/cos give 1.6 ulps under
        # the interpreter (numpy), but a backend whose float32 cos errs in absolute terms (fast
        # approximations) would lose all relative accuracy near pi/2, where cos is tiny.
        w = e.tmp(f"{x}.to(tl.float64)")
        return f"(tl.sin({w}) / tl.cos({w})).to(tl.float32)"
    return f"tl.sin({x}) / tl.cos({x})"


def _asinh(e, x: str, dtype: torch.dtype) -> str:
    a = e.tmp(f"tl.abs({x})")
    s = e.tmp(f"tl.where({a} > {HUGE!r}, 0.0, {a})")  # keeps s² finite in the lanes that use it
    near = e.tmp(_log1p(e, e.tmp(f"{s} + {s} * {s} / (1.0 + tl.sqrt(1.0 + {s} * {s}))")))
    r = e.tmp(f"tl.where({a} > {HUGE!r}, tl.log({a}) + {LN2!r}, {near})")
    return _odd(e, x, r)


def _acosh(e, x: str, dtype: torch.dtype) -> str:
    # log1p(t + sqrt(2t + t²)), t = x - 1 (exact near 1); NaN below 1.
    t = e.tmp(f"tl.where({x} > {HUGE!r}, 0.0, {x} - 1.0)")
    near = e.tmp(_log1p(e, e.tmp(f"{t} + tl.sqrt({t} * ({t} + 2.0))")))
    r = e.tmp(f"tl.where({x} > {HUGE!r}, tl.log({x}) + {LN2!r}, {near})")
    return f"tl.where({x} < 1.0, float('nan'), {r})"


def _atanh(e, x: str, dtype: torch.dtype) -> str:
    # log1p(2a / (1 - a)) / 2: inf at 1 (2 / 0), NaN past 1 (log1p of less than -1).
    a = e.tmp(f"tl.abs({x})")
    return _odd(e, x, e.tmp(f"0.5 * {_log1p(e, e.tmp(f'2.0 * {a} / (1.0 - {a})'))}"))


def _copysign(e, x: str, y: str, dtype: torch.dtype) -> str:
    m = e.tmp(f"tl.abs({x})")
    return f"tl.where({_signbit(e, y, dtype)}, -{m}, {m})"


def _hypot(e, x: str, y: str, dtype: torch.dtype) -> str:
    # m sqrt(1 + (n/m)²) with m = max(|x|, |y|): no overflow or underflow of the squares. C's hypot:
    # inf if either is inf (even with a NaN), 0 at (0, 0).
    ax = e.tmp(f"tl.abs({x})")
    ay = e.tmp(f"tl.abs({y})")
    m = e.tmp(f"tl.where({ax} > {ay}, {ax}, {ay})")
    n = e.tmp(f"tl.where({ax} > {ay}, {ay}, {ax})")  # a NaN lands here unless both are NaN
    q = e.tmp(f"{n} / tl.where({m} == 0, 1.0, {m})")
    r = e.tmp(f"{m} * tl.sqrt(1.0 + {q} * {q})")
    inf = "float('inf')"
    return f"tl.where(({ax} == {inf}) | ({ay} == {inf}), {inf}, tl.where({m} == 0, {n}, {r}))"


def _nextafter(e, x: str, y: str, dtype: torch.dtype) -> str:
    # One step of the integer bits of x's storage dtype toward y: as a signed integer, bits + 1 steps
    # away from zero for either sign, so + 1 where |x| grows (y beyond x, away from 0). From ±0 the
    # step is the smallest subnormal of y's sign; x == y gives y (nextafter(0, -0) = -0), NaNs NaN.
    width = {torch.float64: 64, torch.float32: 32, torch.float16: 16, torch.bfloat16: 16}[dtype]
    if dtype == torch.float16:
        bits = e.tmp(f"{x}.to(tl.float16).to(tl.int16, bitcast=True)")  # the float32 value is a float16 one
    else:
        bits = e.tmp(f"{x}.to(tl.int{64 if width == 64 else 32}, bitcast=True)")
        if dtype == torch.bfloat16:
            bits = e.tmp(f"{bits} >> 16")  # the bfloat16 bits, sign-extended
    ibits = {torch.float64: "tl.int64", torch.float16: "tl.int16"}.get(dtype, "tl.int32")
    tiny_neg = f"tl.full([], {1 - 2 ** (width - 1)}, {ibits})"  # sign bit | 1
    step = e.tmp(f"tl.where({x} == 0, tl.where({y} < 0, {tiny_neg}, tl.full([], 1, {ibits})), "
                 f"tl.where(({y} > {x}) == ({x} > 0), {bits} + 1, {bits} - 1))")
    if dtype == torch.float16:
        r = f"{step}.to(tl.float16, bitcast=True).to(tl.float32)"
    elif dtype == torch.bfloat16:
        r = f"({step} << 16).to(tl.float32, bitcast=True)"
    else:
        r = f"{step}.to({'tl.float64' if width == 64 else 'tl.float32'}, bitcast=True)"
    return f"tl.where(({x} != {x}) | ({y} != {y}), float('nan'), tl.where({x} == {y}, {y}, {r}))"


# -- VJP rules (derivatives.yaml) -------------------------------------------------------------------


def _one_minus_sq(g, x):
    return _f(g, "sub", _c(g, 1.0, x), _f(g, "mul", x, x))


def _asin_vjp(g, x, y, ct):  # grad * (-x * x + 1).rsqrt()
    return _f(g, "mul", ct, _f(g, "rsqrt", _one_minus_sq(g, x)))


def _acos_vjp(g, x, y, ct):  # grad * -((-x * x + 1).rsqrt())
    return _f(g, "mul", ct, _f(g, "neg", _f(g, "rsqrt", _one_minus_sq(g, x))))


def _atan_vjp(g, x, y, ct):  # grad / (x * x + 1)
    return _f(g, "div", ct, _f(g, "add", _f(g, "mul", x, x), _c(g, 1.0, x)))


def _tan_vjp(g, x, y, ct):  # grad * (1 + result²)
    return _f(g, "mul", ct, _f(g, "add", _c(g, 1.0, y), _f(g, "mul", y, y)))


def _asinh_vjp(g, x, y, ct):  # grad * (x² + 1).rsqrt()
    return _f(g, "mul", ct, _f(g, "rsqrt", _f(g, "add", _f(g, "mul", x, x), _c(g, 1.0, x))))


def _acosh_vjp(g, x, y, ct):  # grad * (x² - 1).rsqrt()
    return _f(g, "mul", ct, _f(g, "rsqrt", _f(g, "sub", _f(g, "mul", x, x), _c(g, 1.0, x))))


def _atanh_vjp(g, x, y, ct):  # grad * 1 / (1 - x²)
    return _f(g, "div", ct, _one_minus_sq(g, x))


def _atan2_vjp(g, y, x, out, ct):  # atan2_backward: r = 1 / (y² + x²); grad * x * r, grad * -y * r
    r = _f(g, "reciprocal", _f(g, "add", _f(g, "mul", y, y), _f(g, "mul", x, x)))
    return [_f(g, "mul", _f(g, "mul", ct, x), r), _f(g, "mul", _f(g, "mul", ct, _f(g, "neg", y)), r)]


def _copysign_vjp(g, x, s, out, ct):
    # copysign_tensor_self_backward: grad * (result / self), 0 where self == 0; `other` gets zeros.
    ratio = _f(g, "div", out, x)
    return [_where0(g, _f(g, "ne", x, _c(g, 0.0, x)), _f(g, "mul", ct, ratio)), None]


def _fminmax_vjp(keep: str):
    # fmax: self gets grad where self >= other or other is NaN (ties go to self), other elsewhere;
    # fmin the same with <=.
    def rule(g, a, b, out, ct):
        to_a = _f(g, "logical_or", _f(g, keep, a, b), _f(g, "isnan", b))
        return [_where0(g, to_a, ct), _f(g, "where", to_a, _c(g, 0.0, ct), ct)]

    return rule


def _hypot_vjp(g, x, y, out, ct):  # grad * self / result, grad * other / result
    return [_f(g, "div", _f(g, "mul", ct, x), out), _f(g, "div", _f(g, "mul", ct, y), out)]


# -- entries ----------------------------------------------------------------------------------------

_UNIT = Domain(FLOAT, low=-0.95, high=0.95)  # inside asin/acos/atanh's domain, away from the poles
_UNARY = [
    # (name, triton rule (e, x, dtype) -> expr, vjp (g, x, y, ct) -> cotangent of x, domains)
    ("asin", _asin, _asin_vjp, (_UNIT,)),
    ("acos", _acos, _acos_vjp, (_UNIT,)),
    ("atan", _atan, _atan_vjp, (Domain(FLOAT), Domain(FLOAT, low=-40.0, high=40.0))),
    ("sinh", _sinh, lambda g, x, y, ct: _f(g, "mul", ct, _f(g, "cosh", x)),
     (Domain(FLOAT), Domain(FLOAT, low=-30.0, high=30.0))),
    ("cosh", _cosh, lambda g, x, y, ct: _f(g, "mul", ct, _f(g, "sinh", x)),
     (Domain(FLOAT), Domain(FLOAT, low=-30.0, high=30.0))),
    ("tan", _tan, _tan_vjp, (Domain(FLOAT),)),
    ("asinh", _asinh, _asinh_vjp, (Domain(FLOAT), Domain(FLOAT, low=-1e3, high=1e3))),
    ("acosh", _acosh, _acosh_vjp, (Domain(FLOAT, low=1.05, high=4.0), Domain(FLOAT, low=1.0, high=1e3))),
    ("atanh", _atanh, _atanh_vjp, (_UNIT,)),
]



def register_unary(table: list) -> None:
    """One float pointwise entry per (name, triton rule(e, x, dtype), VJP rule(g, x, out, ct),
    domains) row: torch's function of that name is the reference, its `.default` overload the aten op."""
    for name, rule, grad, domains in table:
        pointwise(
            name,
            (lambda ref: lambda x: ref(x))(getattr(torch, name)),
            (lambda rule: lambda e, args, dtypes, out: rule(e, args[0], dtypes[0]))(rule),
            dtypes=FLOAT,
            domains=domains,
            aten=(getattr(aten, name).default,),
            vjp=_vjp((lambda grad: lambda g, inputs, out, ct: [grad(g, inputs[0], out, ct)])(grad)),
        )


register_unary(_UNARY)

pointwise(
    "signbit",
    torch.signbit,
    lambda e, args, dtypes, out: _signbit(e, args[0], dtypes[0]),
    out="bool",
    dtypes=ALL,
    aten=(aten.signbit.default,),
    doc="the sign bit: true for -0.0 and NaNs with it set; x < 0 for integers",
)

_BINARY = [
    # (name, triton rule (e, a, b, dtype) -> expr, dtypes, vjp (g, a, b, y, ct) -> [cts], aten)
    ("atan2", _atan2, FLOAT, _atan2_vjp, (aten.atan2.default,)),
    ("copysign", _copysign, FLOAT, _copysign_vjp, (aten.copysign.Tensor, aten.copysign.Scalar)),
    # torch: a NaN operand loses to a number; ties (and 0 vs -0) give the first operand.
    ("fmax", lambda e, a, b, d: f"tl.where(({a} >= {b}) | ({b} != {b}), {a}, {b})", ALL, _fminmax_vjp("ge"),
     (aten.fmax.default,)),
    ("fmin", lambda e, a, b, d: f"tl.where(({a} <= {b}) | ({b} != {b}), {a}, {b})", ALL, _fminmax_vjp("le"),
     (aten.fmin.default,)),
    ("hypot", _hypot, FLOAT, _hypot_vjp, (aten.hypot.default,)),
    # derivatives.yaml: self gets grad (the step is ignored), other zeros.
    ("nextafter", _nextafter, FLOAT, lambda g, a, b, y, ct: [ct, None], (aten.nextafter.default,)),
]

for _name, _rule, _dtypes, _grad, _aten in _BINARY:
    pointwise(
        _name,
        (lambda ref: lambda a, b: ref(a, b))(getattr(torch, _name)),
        (lambda rule: lambda e, args, dtypes, out: rule(e, args[0], args[1], dtypes[0]))(_rule),
        arity=2,
        dtypes=_dtypes,
        aten=_aten,
        vjp=_vjp((lambda rule: lambda g, inputs, out, ct: rule(g, *inputs, out, ct))(_grad)),
    )
