"""Rounding to half types in Triton text, exactly as torch rounds.

torch converts any dtype to float16/bfloat16 through float32 (`c10::Half(float)`, `c10::BFloat16(float)`),
then rounds to nearest, ties to even. A Triton `.to(tl.bfloat16)` does that on a GPU but truncates
under Triton's interpreter, and a direct float64 -> half cast rounds once where torch rounds twice.
The interpreter's float32 <-> bfloat16 casts also get subnormals wrong. So kernels never use
Triton's bfloat16 casts: `round_half` first casts to float32, then rounds to bfloat16 in uint32 bit
arithmetic (add 0x7FFF plus the lowest kept bit, clear the low 16 bits: inf stays inf, overflow
becomes inf, NaN stays a NaN); stores bitcast the high 16 bits to bfloat16 and loads widen the bits
back (`store_cast`, `load_cast`), identical on every backend. float32 <-> float16 casts are exact /
round to nearest even both under the interpreter (numpy) and on GPUs (`cvt.rn`), subnormals included.
"""

from __future__ import annotations

import torch

from ..types import TRITON_NAMES, compute_dtype

HALF_TYPES = (torch.float16, torch.bfloat16)

# Unary ops whose result, from a value of a half dtype, is a value of that dtype (an exact function
# of it), and `convert`, whose rule rounds to its target: kernels skip rounding their results again
# (codegen.emitter.bind_value). Ops that may pass a scalar operand through (`where`, `maximum`,
# `clamp`) are not here: a scalar `full` may hold an unrounded value (mul/div's Python scalars,
# constants of VJP rules), which kernels use as a float32 literal, as torch's kernels do.
ROUNDED_OPS = frozenset({"convert", "copy", "neg", "abs", "relu", "floor", "ceil", "trunc", "round", "sign"})


def _u32(value: int) -> str:
    return f"tl.full([], {value}, tl.uint32)"


def _bf16_bits(e, f: str) -> str:
    """uint32 bits of float32 `f` rounded to bfloat16 (the result in the high half, the low half 0)."""
    b = e.tmp(f"{f}.to(tl.uint32, bitcast=True)", "h")
    r = e.tmp(f"({b} + ({_u32(0x7FFF)} + (({b} >> {_u32(16)}) & {_u32(1)}))) & {_u32(0xFFFF0000)}", "h")
    # A NaN's payload may sit in the low half (the rounding add would carry it away): keep the sign
    # and set the quiet bit, which survives dropping the low half.
    return e.tmp(f"tl.where({f} != {f}, {b} | {_u32(0x00400000)}, {r})", "h")


def _to_f32(e, x: str, src: torch.dtype) -> str:
    return x if compute_dtype(src) == torch.float32 else e.tmp(f"{x}.to(tl.float32)", "h")


def round_half(e, x: str, src: torch.dtype, dst: torch.dtype) -> str:
    """`x` (a value of compute dtype `compute_dtype(src)`) rounded to half type `dst`, as a float32
    expression (the compute dtype of half types). `e.tmp` binds temporaries."""
    f = _to_f32(e, x, src)
    if dst == torch.float16:
        return f"{f}.to(tl.float16).to(tl.float32)"
    if dst != torch.bfloat16:
        raise ValueError(f"round_half: {dst} is not a half type")
    return f"{_bf16_bits(e, f)}.to(tl.float32, bitcast=True)"


def store_cast(e, x: str, dtype: torch.dtype) -> str:
    """`x`, computed in `compute_dtype(dtype)`, as the storage dtype `dtype`. bfloat16 is built from
    its bits: the interpreter's float32 <-> bfloat16 casts also mangle subnormals."""
    if dtype == torch.bfloat16:
        return f"({_bf16_bits(e, x)} >> {_u32(16)}).to(tl.uint16).to(tl.bfloat16, bitcast=True)"
    return f"{x}.to({TRITON_NAMES[dtype]})"


def load_cast(e, x: str, dtype: torch.dtype) -> str:
    """A loaded `x` of storage dtype `dtype` in its compute dtype (bfloat16 widened exactly, by bits)."""
    if dtype == torch.bfloat16:
        w = e.tmp(f"{x}.to(tl.uint16, bitcast=True).to(tl.uint32) << {_u32(16)}", "h")
        return f"{w}.to(tl.float32, bitcast=True)"
    if compute_dtype(dtype) != dtype:
        return f"{x}.to({TRITON_NAMES[compute_dtype(dtype)]})"
    return x
