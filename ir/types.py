"""Tensor types of IR values: a static shape and a torch dtype, with short printable dtype names."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

# Short names used by the printer and parser (jaxpr-style: f32[4, 8]).
DTYPE_NAMES: dict[torch.dtype, str] = {
    torch.float64: "f64",
    torch.float32: "f32",
    torch.float16: "f16",
    torch.bfloat16: "bf16",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "b8",
    torch.complex64: "c64",
    torch.complex128: "c128",
    torch.uint16: "u16",
    torch.uint32: "u32",
    torch.uint64: "u64",
    torch.complex32: "c32",
}
# Every other torch dtype (float8 variants, quantized, bits types) prints as its torch name: such values
# only pass through `extern` calls, but the IR must still print, parse and type them.
DTYPE_NAMES.update({d: str(d).removeprefix("torch.") for d in vars(torch).values()
                    if isinstance(d, torch.dtype) and d not in DTYPE_NAMES})
NAME_DTYPES: dict[str, torch.dtype] = {v: k for k, v in DTYPE_NAMES.items()}

# dtypes that generated Triton kernels can load, compute on and store.
COMPILABLE_DTYPES = frozenset(
    {torch.float64, torch.float32, torch.float16, torch.bfloat16,
     torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool}
)


def is_float(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point


def is_int(dtype: torch.dtype) -> bool:
    """Integer including bool (bool behaves as an integer for bitwise ops)."""
    return not dtype.is_floating_point and not dtype.is_complex


@dataclass(frozen=True)
class TensorType:
    """Shape and dtype of an IR value. Shapes are static tuples of ints."""

    shape: tuple[int, ...]
    dtype: torch.dtype

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def __str__(self) -> str:
        return f"{DTYPE_NAMES[self.dtype]}[{', '.join(map(str, self.shape))}]"

    @staticmethod
    def of(t: torch.Tensor) -> TensorType:
        return TensorType(tuple(t.shape), t.dtype)


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """numpy/torch broadcasting; raises ValueError naming the shapes when they do not broadcast."""
    rank = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(rank):
        dims = {s[len(s) - rank + i] for s in shapes if len(s) - rank + i >= 0}
        dims.discard(1)
        if len(dims) > 1:
            raise ValueError(f"shapes {list(shapes)} do not broadcast")
        out.append(dims.pop() if dims else 1)
    return tuple(out)

# Triton dtype spellings (text only: ir/ does not import triton).
TRITON_NAMES: dict[torch.dtype, str] = {
    torch.float64: "tl.float64",
    torch.float32: "tl.float32",
    torch.float16: "tl.float16",
    torch.bfloat16: "tl.bfloat16",
    torch.int64: "tl.int64",
    torch.int32: "tl.int32",
    torch.int16: "tl.int16",
    torch.int8: "tl.int8",
    torch.uint8: "tl.uint8",
    torch.bool: "tl.int1",
}


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype kernels compute in: half types are upcast to float32 after loading."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def py_literal(value, dtype: torch.dtype) -> str:
    """Python text for `value` as a number of `dtype` (inf/nan spelled so the parser accepts them)."""
    if dtype == torch.bool:
        return "1" if value else "0"
    if dtype.is_floating_point:
        v = float(value)
        if math.isnan(v):
            return "float('nan')"
        if math.isinf(v):
            return "float('inf')" if v > 0 else "float('-inf')"
        return repr(v)
    return repr(int(value))
