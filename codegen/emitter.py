"""Text building shared by the kernel emitters: an indented line buffer with fresh temporaries,
dtype spellings, literals, and the block of index math that turns linear indices into offsets."""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..ir import Node, Value, get_op
from ..ir.ops.half import HALF_TYPES, ROUNDED_OPS, round_half
from ..ir.types import TRITON_NAMES, compute_dtype, py_literal

# Signature spellings of pointer element types (triton.compile / ASTSource).
SIG_NAMES: dict[torch.dtype, str] = {
    torch.float64: "fp64", torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16",
    torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
    torch.bool: "i1",
}

# Index math switches to int64 when a linear index or an element offset could pass this bound.
INT32_LIMIT = 2**31 - 1


# The constexpr of a kernel whose text differs under Triton's interpreter and on a GPU: an op rule
# may spell `x if INTERP else y` (fmod: libdevice, which the interpreter lacks, ir/ops/pointwise.py).
# Emitters add it to a kernel's parameters when its body uses it (`interp_params`); the planner passes
# True when the launch is interpreted, per launch (runtime/plan.py `_launch`).
INTERP = "INTERP"


def interp_params(body: str) -> list[tuple[str, str]]:
    """`[(INTERP, "constexpr")]` when the kernel body `body` reads INTERP, else []."""
    return [(INTERP, "constexpr")] if re.search(rf"\b{INTERP}\b", body) else []


def tl_dtype(dtype: torch.dtype) -> str:
    return TRITON_NAMES[dtype]


def tl_compute(dtype: torch.dtype) -> str:
    return TRITON_NAMES[compute_dtype(dtype)]


def ptr_sig(dtype: torch.dtype) -> str:
    return "*" + SIG_NAMES[dtype]


# Host scalars (runtime/plan.py `Host`): a single element of a graph input kept on the host (an
# optimizer's hyperparameters), passed to the kernel by value as a float parameter, not loaded through
# a pointer: no host-to-device copy before the launch. Triton types a Python float as fp32, so the
# parameter is annotated with its dtype (kernel.py `render`) and read as a 0-dim value of it.
HOST_SIGS: dict[torch.dtype, str] = {torch.float32: "fp32", torch.float64: "fp64"}


def host_scalar(name: str, dtype: torch.dtype) -> str:
    """The host scalar parameter `name` as a 0-dim value of `dtype` (exact under the interpreter too,
    which passes the Python float as it is: an fp64 one rounded to fp32 by an operator would be wrong)."""
    return f"tl.full([], {name}, {tl_dtype(dtype)})"


def int_sig(value: int) -> str:
    """The type Triton's JIT specializes an int argument to (i32 when it fits)."""
    return "i32" if -(2**31) <= value < 2**31 else "i64"


def literal(value, dtype: torch.dtype) -> str:
    """A 0-dim Triton constant of the compute dtype of `dtype`, so it never promotes an expression."""
    return f"tl.full([], {py_literal(value, dtype)}, {tl_compute(dtype)})"


def bind_value(e: Emitter, expr: str, dtype: torch.dtype, op: str | None = None) -> str:
    """Bind `expr` to a temporary holding a value of IR dtype `dtype`, in its compute dtype.

    A half-typed value is rounded to its dtype (and widened back to float32) here, not only on store:
    eager rounds every op's result, and a later op may depend on the exact bits (the `eq` of an amax
    VJP comparing a recomputed value with a saved one; floor, comparisons). `op`: the IR op that
    computed `expr`; ops in `ROUNDED_OPS` already give a value of their half dtype.
    """
    v = e.tmp(f"({expr}).to({tl_compute(dtype)})", "v")
    if dtype in HALF_TYPES and op not in ROUNDED_OPS:
        v = e.tmp(round_half(e, v, torch.float32, dtype), "v")
    return v


class Emitter:
    """Collects kernel body lines. `tmp(expr)` binds a fresh temporary (the op rules rely on it)."""

    def __init__(self, indent: int = 1) -> None:
        self.lines: list[str] = []
        self.indent = indent
        self._count = 0
        # index(k) -> the element index along the k-th dim from the end of the kernel's iteration space,
        # shaped like the kernel's values; set by each emitter (the `iota` op uses it).
        self.index = self._no_index
        # check(bad, code) -> raise the kernel's error flag to `code` where the block of booleans `bad`
        # holds, on the kernel's valid elements; set by emitters whose kernels take one (`err_ptr`,
        # OpDef.emit_checks; the codes: ir/ops/index.py INDEX_ERRORS).
        self.check = self._no_check

    @staticmethod
    def _no_index(k: int) -> str:
        raise NotImplementedError("this kernel kind does not expose element indices")

    @staticmethod
    def _no_check(bad: str, code: int = 1) -> None:
        raise NotImplementedError("this kernel kind has no error flag")

    def fresh(self, prefix: str = "t") -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def line(self, text: str) -> None:
        self.lines.append("    " * self.indent + text)

    def tmp(self, expr: str, prefix: str = "t") -> str:
        name = self.fresh(prefix)
        self.line(f"{name} = {expr}")
        return name

    def text(self) -> str:
        return "\n".join(self.lines)


def unravel(e: Emitter, lin: str, sizes: list[str], prefix: str) -> list[str]:
    """Emit per-dim indices of row-major linear index `lin` over `sizes` (runtime args); returns names.

    The outermost dim needs no modulo: `lin` is masked to the valid range by the caller.
    """
    idx: list[str] = [""] * len(sizes)
    rest = lin
    for d in range(len(sizes) - 1, -1, -1):
        if d == 0:
            idx[d] = rest
        else:
            idx[d] = e.tmp(f"{rest} % {sizes[d]}", prefix)
            rest = e.tmp(f"{rest} // {sizes[d]}", prefix)
    return idx


def emit_rows(e: Emitter, nk: int, int64: bool) -> list[str]:
    """The prologue of a kernel whose programs own BM rows each (row, reduction, scan kernels): `rows`,
    `rmask`, `rzero`, and the rows' indices over the kept dims (sizes `ks0..`), whose names it returns."""
    e.line("pid = tl.program_id(0)")
    e.line(f"rows = {'pid.to(tl.int64) * BM' if int64 else 'pid * BM'} + tl.arange(0, BM)")
    e.line("rmask = rows < M")
    e.line("rzero = rows * 0")
    return unravel(e, "rows", [f"ks{i}" for i in range(nk)], "k")


def offset_expr(base: str, idx: list[str], strides: list[str], zero: str) -> str:
    """`base + sum(idx[d] * strides[d])`; `zero` (a block of zeros) keeps 0-dim offsets block-shaped."""
    terms = [f"{i} * {s}" for i, s in zip(idx, strides)]
    return f"{base} + " + (" + ".join(terms) if terms else zero)


@dataclass
class BlockContext:
    """What a generator op's `emit` hook (ir/opdef.py) sees in a row or matmul kernel: the emitter
    and the block shape the kernel computes in (the pointwise emitter passes a richer context)."""

    e: Emitter
    block: str


def emit_tile(e: Emitter, nodes: list[Node], env: dict[Value, str], block: str) -> None:
    """Emit pointwise `nodes` (a GEMM's epilogue) on values of shape `block`, binding each output in
    `env`: generator ops (`full`) through their emit hook, the others through their Triton rule."""
    for node in nodes:
        opdef = get_op(node.op)
        if opdef.emit is not None:
            env[node.out] = opdef.emit(BlockContext(e, block), node)
            continue
        args = [env[v] for v in node.inputs]
        expr = opdef.triton(e, args, [v.dtype for v in node.inputs], node.out.dtype, **node.attrs)
        env[node.out] = bind_value(e, expr, node.out.dtype, node.op)
