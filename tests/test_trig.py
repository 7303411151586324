"""The pointwise ops of ir/ops/trig.py at their special values, through `ember.compile`, against eager:
zeros of both signs (odd functions keep the sign), ±inf, NaN, the ends of asin/acos/atanh/acosh's
domains and past them, and magnitudes where a naive formula overflows, underflows or cancels
(tests/test_registry.py samples them at random inside their domains). Each compiles natively: no
op falls back to an extern."""

from __future__ import annotations

import math

import pytest
import torch
from testing import TOLERANCES, assert_matches

import ember

UNARY = ("asin", "acos", "atan", "sinh", "cosh", "tan", "asinh", "acosh", "atanh")
BINARY = ("atan2", "copysign", "fmax", "fmin", "hypot")
INF, NAN = math.inf, math.nan
SPECIALS = [0.0, -0.0, 1.0, -1.0, INF, -INF, NAN, 0.5, -0.5, 0.999, -0.999, 1.001, -1.001, 1e-6, -1e-6, 1e-30,
            -1e-30, 2.5, -2.5, 1.5707963, -1.5707963, 30.0, -30.0, 80.0, -80.0, 1e5, -1e5, 1e20, -1e20, 3e38, -3e38]


def _same_signs(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    """Zeros and infinities agree in sign (-0.0 vs 0.0, which assert_close lets pass)."""
    both = ~got.isnan() & ((want == 0) | want.isinf())
    bad = both & (got.signbit() != want.signbit())
    assert not bad.any(), f"{what}: sign differs at {bad.nonzero().flatten().tolist()}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_unary_special_values(dtype):
    x = torch.tensor(SPECIALS, dtype=dtype)
    fn = lambda x: tuple(getattr(torch, op)(x) for op in UNARY)
    compiled = assert_matches(fn, x)
    for op, got, want in zip(UNARY, compiled(x), fn(x), strict=True):
        _same_signs(got, want, op)


# ir/ops/special.py: torch.<name> or torch.special.<name>.
SPECIAL = ("erfc", "erfinv", "lgamma", "digamma", "i0", "i1")
_special = lambda op: getattr(torch, op, None) or getattr(torch.special, op)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_special_functions_at_special_values(dtype):
    # Plus the poles and zeros of lgamma/digamma, erfc's underflow and erfinv's ends.
    x = torch.tensor(SPECIALS + [-2.0, -3.5, 2.0, 1.4616321, 26.0, 27.5, 0.9999999, 10.0, 9.999999, 1e-20, 5e-8],
                     dtype=dtype)
    fn = lambda x: tuple(_special(op)(x) for op in SPECIAL)
    compiled = assert_matches(fn, x)
    for op, got, want in zip(SPECIAL, compiled(x), fn(x), strict=True):
        _same_signs(got, want, op)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_binary_special_values(dtype):
    # Every pair of special values (atan2's quadrants at ±0 and ±inf, NaNs on either side).
    v = torch.tensor(SPECIALS, dtype=dtype)
    a, b = v.repeat_interleave(len(SPECIALS)), v.repeat(len(SPECIALS))
    fn = lambda a, b: tuple(getattr(torch, op)(a, b) for op in BINARY)
    compiled = assert_matches(fn, a, b)
    for op, got, want in zip(BINARY, compiled(a, b), fn(a, b), strict=True):
        _same_signs(got, want, op)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_signbit_reads_the_bit(dtype):
    x = torch.tensor(SPECIALS + [-NAN], dtype=dtype)
    assert x[-1].signbit()  # the NaN with its sign bit set
    assert_matches(torch.signbit, x)
    assert_matches(lambda x: torch.copysign(torch.ones_like(x), x), x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_nextafter_is_exact(dtype):
    """One step of the storage dtype's bits, so compared bit for bit (a tolerance would accept x itself)."""
    v = torch.tensor(SPECIALS + [6e-8, -6e-8, 1e-45, 65504.0], dtype=dtype)
    a, b = v.repeat_interleave(len(v)), v.repeat(len(v))
    got = ember.compile(torch.nextafter)(a, b)
    want = torch.nextafter(a, b)
    assert torch.equal(got.isnan(), want.isnan())
    assert torch.equal(got[~got.isnan()].view(torch.uint8), want[~want.isnan()].view(torch.uint8))
    assert not ember.trace(torch.nextafter, a, b).unsupported()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sinh_cosh_stay_finite_up_to_their_overflow(dtype):
    """exp(|x|) overflows before sinh(x) does: sinh(89) is 2.2e38 in float32. Eager gives that on a
    short tensor and inf on a long one (its vectorized loop computes exp(x) / 2), so this compares
    with Python's correctly rounded math.sinh/cosh."""
    top = 89.4 if dtype == torch.float32 else 710.4
    x = torch.linspace(top - 1.0, top, 33, dtype=torch.float64).to(dtype)
    x = torch.cat([x, -x])
    got_sinh, got_cosh = ember.compile(lambda x: (torch.sinh(x), torch.cosh(x)))(x)
    rtol, atol = TOLERANCES[dtype]
    for got, ref in ((got_sinh, math.sinh), (got_cosh, math.cosh)):
        want = torch.tensor([ref(v) for v in x.double().tolist()], dtype=torch.float64).to(dtype)
        assert want.isfinite().all()
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_and_tiny_magnitudes(dtype):
    info = torch.finfo(dtype)
    big = torch.tensor([info.max, -info.max, info.max / 4, 1e15, 2.0**28, 2.0**29], dtype=dtype)
    tiny = torch.tensor([info.tiny, -info.tiny, info.tiny / 8, 1e-20, -1e-20, 0.0], dtype=dtype)
    assert_matches(lambda b, t: (torch.asinh(b), torch.acosh(b.abs()), torch.atan(b), torch.hypot(b, b),
                                 torch.hypot(t, t), torch.atan2(t, b), torch.atan2(b, t), torch.asinh(t),
                                 torch.sinh(t), torch.tan(t), torch.asin(t), torch.atanh(t)), big, tiny)


@pytest.mark.parametrize("op", UNARY + SPECIAL + ("signbit",))
def test_unary_ops_are_native(op):
    x = torch.rand(4, 3)
    assert not ember.trace(_special(op), x).unsupported()
    assert not ember.trace(_special(op), torch.arange(6)).unsupported()  # integers promote first


@pytest.mark.parametrize("op", BINARY)
def test_binary_ops_are_native(op):
    x, y = torch.rand(4, 3), torch.rand(3)
    assert not ember.trace(getattr(torch, op), x, y).unsupported()
    if op != "hypot":  # eager has no integer hypot
        assert not ember.trace(getattr(torch, op), torch.arange(3), torch.arange(3)).unsupported()
    if op == "copysign":
        assert not ember.trace(lambda x: torch.copysign(x, -0.0), x).unsupported()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types_and_gradients(dtype):
    x = (torch.rand(5, 4) * 1.8 - 0.9).to(dtype)
    y = torch.randn(5, 4).to(dtype)
    assert_matches(lambda x, y: (torch.asin(x), torch.acos(x), torch.atanh(x), torch.atan2(x, y), torch.hypot(x, y),
                                 torch.copysign(y, x), torch.fmax(x, y), torch.tan(y), torch.cosh(y)), x, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernels_compile_for_sm90(dtype):
    """The interpreter accepts code the GPU code generator may refuse (the bitcasts, int16 bits,
    float64 inner math of float32 ops): every op's kernel also compiles for sm_90."""
    from test_sm90_compile import _compile_one, _graph, _planned_jobs

    from ember.ir import OPS
    from ember.runtime import compile_graph

    ops = UNARY + SPECIAL + ("trigamma", "signbit")
    g = _graph([((4, 6), dtype), ((6,), dtype)], lambda g, x, y: [g.add(op, [x]) for op in ops]
               + [g.add(op, [x, y]) for op in BINARY + ("nextafter",)])
    assert all(op in OPS for op in ops)
    jobs = _planned_jobs(compile_graph(g, device="cuda").plan.steps)
    errors = [err for err in map(_compile_one, jobs) if err]
    assert not errors, errors[0]
