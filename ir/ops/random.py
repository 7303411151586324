"""Random numbers: `rand`, counter-based (Philox-4x32-10), so a kernel and the reference agree bit for bit.

    %r: f32[4, 8] = rand(%seed) {shape=(4, 8), dtype=torch.float32, stream=0}

`rand` is a pointwise op with one input, a 0-dim int64 `seed` (any single-element int64 tensor), and
no state: element `i` (its row-major linear index in `shape`) of stream `stream` is a pure function
of (seed, stream, i). The kernel forms `i` from the element indices it already has (`e.index(k)`,
as `iota` does), so the numbers do not depend on block sizes, on strides, or on which kernel the op
is fused into; recomputing it (remat) reproduces it exactly; two rand nodes with different seeds or
streams never look alike to CSE, and two with the same ones compute the same tensor.

Generator: Philox-4x32 with 10 rounds (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC'11; the generator of cuRAND and of `tl.rand`), with key (seed low word, seed high word) and
counter (i low word, i high word, stream, 0). The first output word (the first two for float64)
becomes a uniform float in [0, 1) with exactly as many random bits as the dtype's significand holds
(float32 24, float16 11, bfloat16 8, float64 53): `(word >> (32 - bits)) * 2**-bits` is exact, so
rounding never produces 1.0 and the kernel and the reference give identical values.

`tl.rand` itself cannot be used: it is a `@triton.jit` helper, which fails under Triton's
interpreter. The Triton rule spells the rounds in uint32 arithmetic (`tl.umulhi`, wrapping `*`);
the reference (`impl`) spells them in int64 torch ops, splitting each 32x32-bit product into two
32x16-bit ones so nothing overflows. The frontend feeds the seed per call from torch's default
generator (frontend/lower_random.py), so `torch.manual_seed` makes programs reproducible.
"""

from __future__ import annotations

import math

import torch

from ..registry import DTYPE, Domain, OpDef, register
from ..types import TensorType

PHILOX_M = (0xD2511F53, 0xCD9E8D57)   # round multipliers
PHILOX_W = (0x9E3779B9, 0xBB67AE85)   # key bumps (golden ratio, sqrt(3) - 1)
PHILOX_ROUNDS = 10
MASK32 = 0xFFFFFFFF

# Random bits per uniform: the significand width of the dtype (so `u < 1` survives rounding).
UNIFORM_BITS = {torch.float32: 24, torch.float16: 11, torch.bfloat16: 8, torch.float64: 53}

def _rand_infer(types: list[TensorType], shape, dtype, stream) -> TensorType:
    if len(types) != 1 or types[0].dtype != torch.int64 or types[0].numel != 1:
        raise TypeError(f"rand: takes one single-element int64 seed, got {[str(t) for t in types]}")
    if dtype not in UNIFORM_BITS:
        raise TypeError(f"rand: dtype must be one of {sorted(map(str, UNIFORM_BITS))}, got {dtype}")
    if not isinstance(stream, int) or not 0 <= stream <= MASK32:
        raise ValueError(f"rand: stream must be an int in [0, 2**32), got {stream!r}")
    return TensorType(tuple(shape), dtype)


# -- reference: Philox in int64 torch ops --------------------------------------------------------


def _mulhilo(a: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit words of a * m for a in [0, 2**32): a*m = u * 2**16 + (t & 0xffff)."""
    t = a * (m & 0xFFFF)
    u = a * (m >> 16) + (t >> 16)
    return u >> 16, ((u & 0xFFFF) << 16) | (t & 0xFFFF)


def philox(seed: torch.Tensor, c0: torch.Tensor, c1: torch.Tensor, c2: torch.Tensor, c3: torch.Tensor):
    """Philox-4x32-10 on int64 tensors holding 32-bit words; returns the four output words."""
    k0 = (seed & MASK32).expand_as(c0)
    k1 = ((seed >> 32) & MASK32).expand_as(c0)
    for _ in range(PHILOX_ROUNDS):
        hi0, lo0 = _mulhilo(c0, PHILOX_M[0])
        hi1, lo1 = _mulhilo(c2, PHILOX_M[1])
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W[0]) & MASK32
        k1 = (k1 + PHILOX_W[1]) & MASK32
    return c0, c1, c2, c3


def _rand_impl(seed: torch.Tensor, shape, dtype, stream) -> torch.Tensor:
    shape = tuple(shape)
    seed = seed.reshape(()).to(torch.int64)
    lin = torch.arange(math.prod(shape), dtype=torch.int64, device=seed.device)
    zeros = torch.zeros_like(lin)
    w0, w1, _, _ = philox(seed, lin & MASK32, lin >> 32, zeros + stream, zeros)
    bits = UNIFORM_BITS[dtype]
    if dtype == torch.float64:
        u = ((w0 >> 5).double() * 2.0**26 + (w1 >> 6).double()) * 2.0**-53
    else:
        u = (w0 >> (32 - bits)).float() * 2.0**-bits
    return u.to(dtype).reshape(shape)


# -- Triton: the same rounds in uint32 ------------------------------------------------------------


def _rand_triton(e, args, dtypes, out, shape, dtype, stream) -> str:
    (seed,) = args
    rank = len(shape)
    strides = [math.prod(shape[d + 1:]) for d in range(rank)]
    # Row-major linear index in `shape`; size-1 dims contribute nothing (they may be broadcast dims
    # of the kernel's iteration space, whose index is not 0).
    terms = [f"{e.index(d - rank)}.to(tl.int64) * {strides[d]}" for d in range(rank) if shape[d] != 1]
    lin = e.tmp(" + ".join(terms) if terms else f"({seed} * 0)", "rn")
    u32 = lambda value: e.tmp(f"tl.full([], {value}, tl.uint32)", "rk")  # noqa: E731
    m0, m1, w0, w1 = u32(PHILOX_M[0]), u32(PHILOX_M[1]), u32(PHILOX_W[0]), u32(PHILOX_W[1])
    c0 = e.tmp(f"({lin} & {MASK32}).to(tl.uint32)", "rc")
    c1 = e.tmp(f"({lin} >> 32).to(tl.uint32)", "rc")
    c3 = e.tmp(f"{c0} ^ {c0}", "rc")
    c2 = e.tmp(f"{c3} + {u32(stream)}", "rc")
    k0 = e.tmp(f"({c3} + ({seed} & {MASK32}).to(tl.uint32))", "rk")
    k1 = e.tmp(f"({c3} + (({seed} >> 32) & {MASK32}).to(tl.uint32))", "rk")
    for r in range(PHILOX_ROUNDS):
        hi0, lo0 = e.tmp(f"tl.umulhi({c0}, {m0})", "rh"), e.tmp(f"{c0} * {m0}", "rl")
        hi1, lo1 = e.tmp(f"tl.umulhi({c2}, {m1})", "rh"), e.tmp(f"{c2} * {m1}", "rl")
        c0, c1, c2, c3 = (e.tmp(f"{hi1} ^ {c1} ^ {k0}", "rc"), lo1, e.tmp(f"{hi0} ^ {c3} ^ {k1}", "rc"), lo0)
        if r < PHILOX_ROUNDS - 1:
            k0, k1 = e.tmp(f"{k0} + {w0}", "rk"), e.tmp(f"{k1} + {w1}", "rk")
    bits = UNIFORM_BITS[dtype]
    if dtype == torch.float64:
        return (f"((({c0} >> 5).to(tl.float64) * {2.0**26!r} + ({c1} >> 6).to(tl.float64)) "
                f"* {2.0**-53!r})")
    return f"(({c0} >> {32 - bits}).to(tl.float32) * {2.0**-bits!r})"


def _rand_vjp(g, inputs, out, ct, **attrs):
    return [None]  # the seed is an integer: no cotangent


# Not lowered from one aten op: frontend/lower_random.py feeds each call its seed and stream.
register(OpDef("rand", "pointwise", _rand_infer, _rand_impl, triton=_rand_triton, vjp=_rand_vjp, cost=1,
               domains=(Domain(tuple(UNIFORM_BITS), {"shape": (4, 8), "dtype": DTYPE, "stream": 3},
                               fixed={0: torch.int64}, ranges={0: (0, 2**40)}, shapes=((),)),),
               doc="uniform [0, 1) of shape, Philox-4x32-10 of (seed, stream, linear index)"))
