"""Special functions as pointwise ops: erfc, erfinv, lgamma, digamma, trigamma (digamma's VJP), i0, i1.

Triton's interpreter has no libdevice, so each rule is plain `tl` arithmetic over exp, log, erf, sin
and cos, computed in float64 for every float dtype (then rounded to the IR dtype: float32 results
come out correctly rounded in practice, and half types round once from float32 as usual). The
methods are textbook ones, chosen to stay accurate where the naive formula is not:

- erfc: 1 - erf(x) below 2 (there erfc >= 4.7e-3, so the subtraction loses under 8 bits), the
  continued fraction erfc(x) = exp(-x²) / sqrt(pi) / (x + 1/2 / (x + 1 / (x + 3/2 / ...))) above,
  40 levels deep (exact to 1e-13 from x = 2), with exp(-x²) split so x² rounds no bits away;
- erfinv: Winitzki's closed-form guess refined by Halley steps on erf (erfc for |y| > 0.5, where
  erf(x) - y would cancel);
- digamma, trigamma and lgamma: the recurrence up to x >= 10 (a product of the shifts for lgamma),
  then the asymptotic (Stirling) series; the reflection formula below 0 with sin(pi r), r = x -
  round(x) exact, so negative arguments keep their accuracy; poles as eager gives them. Near their
  roots (lgamma at 1 and 2, digamma at 1.46) the error is absolute (~1e-15), not relative;
- i0 and i1: the power series up to 18, the asymptotic expansion above (`_bessel_i64`).

Tests: tests/test_registry.py (domains) and tests/test_trig.py (special values against eager).
"""

from __future__ import annotations

import math

import torch

from ..registry import FLOAT, Domain
from ..types import compute_dtype
from .pointwise import _c, _f, _vjp, aten, pointwise
from .trig import register_unary

SQRT_PI = math.sqrt(math.pi)
ERFC_SWITCH = 2.0
ERFC_DEPTH = 40


def _f64(x: str, dtype: torch.dtype) -> str:
    return x if compute_dtype(dtype) == torch.float64 else f"{x}.to(tl.float64)"


def _back(r: str, dtype: torch.dtype) -> str:
    return r if compute_dtype(dtype) == torch.float64 else f"({r}).to(tl.float32)"


def _exp_neg_sq(e, x: str) -> str:
    """exp(-x²) for a float64 x, without the rounding error of x² (x = hi + lo, hi² exact)."""
    hi = e.tmp(f"{x}.to(tl.float32).to(tl.float64)")
    lo = e.tmp(f"{x} - {hi}")
    return f"tl.exp(-({hi} * {hi})) * tl.exp(-(({hi} + {hi} + {lo}) * {lo}))"


def _erfc64(e, x: str) -> str:
    # The fraction's lanes only, capped where erfc has underflowed (inf - inf would be NaN).
    t = e.tmp(f"tl.where({x} < {ERFC_SWITCH!r}, {ERFC_SWITCH!r}, tl.where({x} > 40.0, 40.0, {x}))")
    acc = t
    for n in range(ERFC_DEPTH, 0, -1):
        acc = e.tmp(f"{t} + {n / 2!r} / {acc}")
    tail = e.tmp(f"{_exp_neg_sq(e, t)} / ({SQRT_PI!r} * {acc})")
    return f"tl.where({x} < {ERFC_SWITCH!r}, 1.0 - tl.erf({x}), {tail})"


def _erfc(e, x: str, dtype: torch.dtype) -> str:
    return _back(_erfc64(e, e.tmp(_f64(x, dtype))), dtype)


def _erfinv64(e, y: str) -> str:
    a = e.tmp(f"tl.abs({y})")
    # Guess: the series (sqrt(pi) / 2)(a + pi a³ / 12 + 7 pi² a⁵ / 480) up to 1/2, Winitzki's closed
    # form above (both within 2e-3); three Halley steps make that 1e-27, far below float64's ulp.
    ln1 = e.tmp(f"tl.log((1.0 - {a}) * (1.0 + {a}))")
    t = e.tmp(f"{2.0 / (math.pi * 0.147)!r} + 0.5 * {ln1}")
    tail = e.tmp(f"tl.sqrt(tl.sqrt({t} * {t} - {ln1} / 0.147) - {t})")
    a2 = e.tmp(f"{a} * {a}")
    near = e.tmp(f"{SQRT_PI / 2!r} * {a} * (1.0 + {a2} * ({math.pi / 12!r} + {7 * math.pi**2 / 480!r} * {a2}))")
    x = e.tmp(f"tl.where({a} > 0.5, {tail}, {near})")
    big = e.tmp(f"{a} > 0.5")
    for _ in range(3):
        # f = erf(x) - a, as (1 - a) - erfc(x) where both are near 1; f' = 2/sqrt(pi) exp(-x²), f'' = -2x f'.
        f = e.tmp(f"tl.where({big}, (1.0 - {a}) - {_erfc64(e, x)}, tl.erf({x}) - {a})")
        u = e.tmp(f"{f} / ({2.0 / SQRT_PI!r} * {_exp_neg_sq(e, x)})")
        x = e.tmp(f"{x} - {u} / (1.0 + {x} * {u})")
    r = e.tmp(f"tl.where({a} == 1.0, float('inf'), tl.where({a} > 1.0, float('nan'), {x}))")
    return f"tl.where({y} < 0, -{r}, tl.where({y} == 0, {y}, {r}))"


def _erfc_vjp(g, x, y, ct):  # -2/sqrt(pi) * exp(-x²) * grad
    d = _f(g, "mul", _c(g, -2.0 / SQRT_PI, x), _f(g, "exp", _f(g, "neg", _f(g, "mul", x, x))))
    return _f(g, "mul", ct, d)


# The recurrence shifts x up to this before the asymptotic series (whose next terms are < 1e-17 there).
SHIFT_TO = 10.0
LOG_PI = math.log(math.pi)
HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
# Stirling: lgamma(x) = (x - 1/2) log x - x + log(2 pi) / 2 + sum B_2k / (2k (2k - 1) x^(2k - 1)).
_LGAMMA_SERIES = (1 / 12, -1 / 360, 1 / 1260, -1 / 1680, 1 / 1188, -691 / 360360, 1 / 156)
# digamma(x) = log x - 1 / (2x) - sum B_2k / (2k x^2k); trigamma(x) = 1/x + 1/(2x²) + sum B_2k / x^(2k+1).
_DIGAMMA_SERIES = (1 / 12, -1 / 120, 1 / 252, -1 / 240, 1 / 132, -691 / 32760, 1 / 12)
_TRIGAMMA_SERIES = (1 / 6, -1 / 30, 1 / 42, -1 / 30, 5 / 66, -691 / 2730, 7 / 6)


def _series(e, w: str, coeffs: tuple[float, ...]) -> str:
    """sum coeffs[k] w^k for k = 0.. (Horner, from the highest)."""
    acc = repr(coeffs[-1])
    for c in reversed(coeffs[:-1]):
        acc = e.tmp(f"{acc} * {w} + {c!r}")
    return acc


def _shift(e, x: str, step) -> tuple[str, list[str]]:
    """x moved up by ones until >= SHIFT_TO (x > 0): the shifted x and the terms step(e, x_k) added
    on the way (each 0 where no step was taken)."""
    terms = []
    for _ in range(int(SHIFT_TO)):
        low = e.tmp(f"{x} < {SHIFT_TO!r}")
        terms.append(step(e, x, low))
        x = e.tmp(f"tl.where({low}, {x} + 1.0, {x})")
    return x, terms


def _reflect_r(e, x: str) -> str:
    """r = x - round(x), exact: sin(pi r) = ±sin(pi x) without the rounding of pi x at large |x|."""
    return e.tmp(f"{x} - tl.floor({x} + 0.5)")


def _digamma64(e, x: str, trigamma: bool = False) -> str:
    neg = e.tmp(f"{x} < 0")
    y = e.tmp(f"tl.where({neg}, 1.0 - {x}, {x})")  # reflected: psi(x) = psi(1 - x) - pi / tan(pi x)
    if trigamma:
        z, terms = _shift(e, y, lambda e, v, low: e.tmp(f"tl.where({low}, 1.0 / ({v} * {v}), 0.0)"))
    else:
        z, terms = _shift(e, y, lambda e, v, low: e.tmp(f"tl.where({low}, 1.0 / {v}, 0.0)"))
    acc = terms[0]
    for t in terms[1:]:
        acc = e.tmp(f"{acc} + {t}")
    w = e.tmp(f"1.0 / ({z} * {z})")
    if trigamma:
        asym = e.tmp(f"1.0 / {z} + 0.5 * {w} + {_series(e, w, _TRIGAMMA_SERIES)} * {w} / {z}")
        r = _reflect_r(e, x)
        s = e.tmp(f"tl.sin({math.pi!r} * {r})")
        v = e.tmp(f"{acc} + {asym}")
        return f"tl.where({neg}, {math.pi ** 2!r} / ({s} * {s}) - {v}, {v})"
    asym = e.tmp(f"tl.log({z}) - 0.5 / {z} - {_series(e, w, _DIGAMMA_SERIES)} * {w}")
    v = e.tmp(f"{asym} - {acc}")
    r = _reflect_r(e, x)
    refl = e.tmp(f"{v} - {math.pi!r} * tl.cos({math.pi!r} * {r}) / tl.sin({math.pi!r} * {r})")
    # C's poles: -inf at +0, +inf at -0 (the sign bit of x), NaN at negative integers and -inf.
    pole = f"tl.where({x}.to(tl.int64, bitcast=True) < 0, float('inf'), -float('inf'))"
    return (f"tl.where({x} == 0, {pole}, tl.where({neg} & ({x} == tl.floor({x})), float('nan'), "
            f"tl.where({neg}, {refl}, {v})))")


def _lgamma64(e, x: str) -> str:
    neg = e.tmp(f"{x} < 0")
    y = e.tmp(f"tl.where({neg}, 1.0 - {x}, {x})")  # lgamma(x) = log(pi / |sin(pi x)|) - lgamma(1 - x)
    z, terms = _shift(e, y, lambda e, v, low: e.tmp(f"tl.where({low}, {v}, 1.0)"))
    prod = terms[0]
    for t in terms[1:]:
        prod = e.tmp(f"{prod} * {t}")
    w = e.tmp(f"1.0 / ({z} * {z})")
    # (z - 1/2) log z - z as (z - 1/2)(log z - 1) - 1/2: finite wherever the result is.
    st = e.tmp(f"({z} - 0.5) * (tl.log({z}) - 1.0) + ({HALF_LOG_2PI!r} - 0.5) + "
               f"{_series(e, w, _LGAMMA_SERIES)} / {z}")
    v = e.tmp(f"{st} - tl.log({prod})")
    r = _reflect_r(e, x)
    refl = e.tmp(f"{LOG_PI!r} - tl.log(tl.abs(tl.sin({math.pi!r} * {r}))) - {v}")
    # Poles at 0 and the negative integers; inf at ±inf.
    return (f"tl.where(({x} <= 0) & ({x} == tl.floor({x})), float('inf'), "
            f"tl.where({x} == -float('inf'), float('inf'), tl.where({neg}, {refl}, {v})))")


BESSEL_SWITCH = 18.0  # series below, asymptotic expansion above: both within 1.5e-15 (45 and 30 terms)


def _bessel_i64(e, x: str, nu: int) -> str:
    """I_nu(x), nu = 0 or 1: the power series sum (x/2)^(2k + nu) / (k! (k + nu)!) (positive terms,
    no cancellation) up to 18, then e^a / sqrt(2 pi a) sum_k prod_j (2j - 1)² - 4nu²) / (k! (8a)^k),
    with e^a as e^(a/2) e^(a/2): finite wherever I_nu is (eager's float32 kernel overflows from |x| = 88.7,
    its float64 one from 709.8: there eager gives inf)."""
    a = e.tmp(f"tl.abs({x})")
    s = e.tmp(f"tl.where({a} > {BESSEL_SWITCH!r}, 0.0, {a})")
    q = e.tmp(f"0.25 * {s} * {s}")
    term = e.tmp("1.0" if nu == 0 else f"0.5 * {s}")
    total = term
    for k in range(1, 45):
        term = e.tmp(f"{term} * {q} * {1.0 / (k * (k + nu))!r}")
        total = e.tmp(f"{total} + {term}")
    z = e.tmp(f"tl.where({a} > {BESSEL_SWITCH!r}, {a}, {BESSEL_SWITCH!r})")
    w = e.tmp(f"1.0 / (8.0 * {z})")
    coeffs, c = [1.0], 1.0
    for k in range(1, 30):
        c *= ((2 * k - 1) ** 2 - 4 * nu * nu) / k
        coeffs.append(c)
    h = e.tmp(f"tl.exp(0.5 * {z})")
    asym = e.tmp(f"{h} * ({h} / tl.sqrt({2.0 * math.pi!r} * {z}) * {_series(e, w, tuple(coeffs))})")
    # Eager's I_nu(±inf) is NaN (its Chebyshev form divides inf by inf), and its I_1(-0) is +0.
    r = e.tmp(f"tl.where({a} == float('inf'), float('nan'), tl.where({a} > {BESSEL_SWITCH!r}, {asym}, {total}))")
    return r if nu == 0 else f"tl.where({x} < 0, -{r}, {r})"


def _in64(rule):
    return lambda e, x, dtype: _back(rule(e, e.tmp(_f64(x, dtype))), dtype)


_UNARY = [
    # (name, triton rule (e, x, dtype) -> expr, vjp (g, x, y, ct) -> cotangent of x, domains)
    ("erfc", _erfc, _erfc_vjp, (Domain(FLOAT), Domain(FLOAT, low=-6.0, high=12.0))),
    # derivatives.yaml: grad * sqrt(pi) / 2 * exp(erfinv(x)²)
    ("erfinv", _in64(_erfinv64),
     lambda g, x, y, ct: _f(g, "mul", ct, _f(g, "mul", _c(g, SQRT_PI / 2, y), _f(g, "exp", _f(g, "mul", y, y)))),
     (Domain(FLOAT, low=-0.95, high=0.95), Domain(FLOAT, low=-1.0, high=1.0, grad=False))),
    ("lgamma", _in64(_lgamma64), lambda g, x, y, ct: _f(g, "mul", ct, _f(g, "digamma", x)),
     (Domain(FLOAT), Domain(FLOAT, low=-40.0, high=60.0))),
    ("digamma", _in64(_digamma64), lambda g, x, y, ct: _f(g, "mul", ct, _f(g, "trigamma", x)),
     (Domain(FLOAT), Domain(FLOAT, low=-40.0, high=60.0))),
]

register_unary(_UNARY)

def _trigamma_impl(x: torch.Tensor) -> torch.Tensor:
    """polygamma(1, x) in float64, rounded as the kernel rounds: torch's float32 kernel loses digits
    for negative x (sin of pi x in float32); inf at the poles (eager: sin(pi x)'s rounding error's
    huge reciprocal), NaN at -inf."""
    w = x.double()
    r = torch.polygamma(1, w)
    r = torch.where((w <= 0) & (w == w.floor()), torch.inf, r)
    r = torch.where(w == -torch.inf, torch.nan, r)
    return r.to(torch.float32 if x.dtype != torch.float64 else x.dtype).to(x.dtype)


pointwise(
    "trigamma",
    _trigamma_impl,
    lambda e, args, dtypes, out: _in64(lambda e, x: _digamma64(e, x, trigamma=True))(e, args[0], dtypes[0]),
    dtypes=FLOAT,
    domains=(Domain(FLOAT, grad=False), Domain(FLOAT, low=-40.0, high=60.0, grad=False)),
    doc="polygamma(1, x), digamma's derivative (no VJP: polygamma(2, x) is not an op)",
)


def _i1_vjp(g, inputs, out, ct):
    # derivatives.yaml (i1_backward): grad * (i0(x) - i1(x) / x), 1/2 at 0.
    (x,) = inputs
    d = _f(g, "sub", _f(g, "i0", x), _f(g, "div", out, x))
    return [_f(g, "mul", ct, _f(g, "where", _f(g, "eq", x, _c(g, 0.0, x)), _c(g, 0.5, x), d))]


pointwise(
    "i0",
    torch.i0,
    lambda e, args, dtypes, out: _in64(lambda e, x: _bessel_i64(e, x, 0))(e, args[0], dtypes[0]),
    dtypes=FLOAT,
    domains=(Domain(FLOAT), Domain(FLOAT, low=-40.0, high=40.0)),
    aten=(aten.i0.default,),
    vjp=_vjp(lambda g, inputs, out, ct: [_f(g, "mul", ct, _f(g, "i1", inputs[0]))]),
    doc="the modified Bessel function of the first kind, order 0",
)

pointwise(
    "i1",
    torch.special.i1,
    lambda e, args, dtypes, out: _in64(lambda e, x: _bessel_i64(e, x, 1))(e, args[0], dtypes[0]),
    dtypes=FLOAT,
    domains=(Domain(FLOAT), Domain(FLOAT, low=-40.0, high=40.0)),
    aten=(aten.special_i1.default,),
    vjp=_vjp(_i1_vjp),
    doc="the modified Bessel function of the first kind, order 1",
)
