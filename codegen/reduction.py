"""Reduction emitter: reduce an arbitrary-strided tensor over any set of dims.

The input is seen as rows x cols: rows enumerate the kept dims (row-major, which is also the
contiguous order of the output, keepdim or not), cols enumerate the reduced dims. Both are
unraveled with runtime sizes and strides, so any layout works without a copy. Each program owns
BM rows; a row that fits BR columns is reduced in one pass (persistent), longer rows loop over
BR-wide chunks with a tile accumulator. Triton has no built-in product and no NaN-aware max, and
@triton.jit helpers fail under the interpreter, so prod is a static split tree and NaN handling
is explicit.
"""

from __future__ import annotations

import torch

from ..ir.kernel_group import pow2
from ..ir.ops.half import load_cast, store_cast
from ..ir.types import compute_dtype
from .emitter import Emitter, emit_rows, literal, offset_expr, ptr_sig, tl_dtype, unravel
from .kernel import Kernel, make_kernel, render
from .launch import LaunchConfig, cdiv, interpreted

# tl.sum/max/min are @triton.jit wrappers, which fail when called under InterpretedFunction; tl.reduce
# with these stock combine functions is recognised natively by the interpreter and compiles on GPUs.
_COMBINE = {"sum": "_sum_combine", "max": "_elementwise_max", "min": "_elementwise_min"}


def _reduce(x: str, fn: str) -> str:
    return f"tl.reduce({x}, 1, tl.standard.{_COMBINE[fn]})"


def work_dtype(combine: str, in_dtype: torch.dtype, out_dtype: torch.dtype) -> torch.dtype:
    if combine in ("sum", "prod"):
        return compute_dtype(out_dtype)  # int64 for ints/bool, f32 for halves
    return torch.int32 if in_dtype == torch.bool else compute_dtype(in_dtype)


def _pad_value(combine: str, dtype: torch.dtype):
    """Value of masked-off lanes: the identity of the combine."""
    if combine == "sum":
        return 0
    if combine == "prod":
        return 1
    low = combine in ("max", "argmax")
    if dtype.is_floating_point:
        return float("-inf") if low else float("inf")
    info = torch.iinfo(dtype)
    return info.min if low else info.max


def reduction_params(x_dtype: torch.dtype, out_dtype: torch.dtype, nk: int, nr: int) -> list[tuple[str, str]]:
    p = [("x_ptr", ptr_sig(x_dtype)), ("x_off", "int")]
    p += [(f"x_kst{i}", "int") for i in range(nk)] + [(f"x_rst{j}", "int") for j in range(nr)]
    p += [(f"ks{i}", "int") for i in range(nk)] + [(f"rs{j}", "int") for j in range(nr)]
    p += [("M", "int"), ("R", "int"), ("out_ptr", ptr_sig(out_dtype))]
    return p + [("BM", "constexpr"), ("BR", "constexpr"), ("LOG2", "constexpr")]


def reduction_args(x: tuple, shape: tuple[int, ...], dims: tuple[int, ...], out_ptr) -> list:
    """x: (pointer object, offset, strides) of the input; dims: reduced dims (sorted)."""
    ptr, off, strides = x
    kept = [d for d in range(len(shape)) if d not in dims]
    m = r = 1
    for d in kept:
        m *= shape[d]
    for d in dims:
        r *= shape[d]
    return ([ptr, off] + [strides[d] for d in kept] + [strides[d] for d in dims]
            + [shape[d] for d in kept] + [shape[d] for d in dims] + [m, r, out_ptr])


def emit_reduction(op: str, combine: str, x_dtype: torch.dtype, out_dtype: torch.dtype, nk: int, nr: int,
                   looped: bool, int64: bool = False) -> Kernel:
    wt = work_dtype(combine, x_dtype, out_dtype)
    is_float = wt.is_floating_point
    e = Emitter()
    kidx = emit_rows(e, nk, int64)
    e.line(f"row_off = {offset_expr('x_off', kidx, [f'x_kst{i}' for i in range(nk)], 'rzero')}")
    e.line(f"cols0 = tl.arange(0, BR){'.to(tl.int64)' if int64 else ''}")
    pad = literal(_pad_value(combine, wt), wt)

    def load_tile(cols: str) -> str:
        e.line(f"m2 = rmask[:, None] & ({cols} < R)[None, :]")
        ridx = unravel(e, cols, [f"rs{j}" for j in range(nr)], "r")
        col_off = " + ".join(f"{i} * x_rst{j}" for j, i in enumerate(ridx)) or f"{cols} * 0"
        e.line(f"x = tl.load(x_ptr + (row_off[:, None] + ({col_off})[None, :]), mask=m2, other=0)")
        e.line(f"x = tl.where(m2, ({load_cast(e, 'x', x_dtype)}).to({tl_dtype(wt)}), {pad})")
        return "x"

    def nan_max(t: str, fn: str) -> str:
        """Row max/min of tile t that propagates NaN (tl.max/min ignore it on GPUs)."""
        e.line(f"red = {_reduce(t, fn)}")
        if is_float:
            e.line(f"red = tl.where({_reduce(f'({t} != {t}).to(tl.int32)', 'max')} > 0, float('nan'), red)")
        return "red"

    def prod_tree(t: str) -> str:
        e.line(f"p = {t}")
        e.line("for lv in tl.static_range(LOG2):")
        e.line("    a, b = tl.split(tl.reshape(p, [BM, BR >> (lv + 1), 2]))")
        e.line("    p = a * b")
        e.line("p = tl.reshape(p, [BM])")
        return "p"

    def arg_chunk(x: str, cols: str) -> tuple[str, str, str]:
        """(extreme value, first index of it, row has NaN) of one tile; NaN counts as extreme."""
        fn = "max" if combine == "argmax" else "min"
        e.line(f"cm = {_reduce(x, fn)}")
        if is_float:
            e.line(f"isn = ({x} != {x}) & m2")
            e.line(f"cnan = {_reduce('isn.to(tl.int32)', 'max')} > 0")
            e.line(f"hit = tl.where(cnan[:, None], isn, ({x} == cm[:, None]) & m2)")
        else:
            e.line("cnan = rmask & (rmask == 0)")
            e.line(f"hit = ({x} == cm[:, None]) & m2")
        e.line(f"ci = {_reduce(f'tl.where(hit, {cols}[None, :], R)', 'min')}")
        return "cm", "ci", "cnan"

    def finish(t: str) -> None:
        """Reduce tile `t` (the row itself, or the loop's accumulator) along the columns into `res`."""
        if combine == "sum":
            e.line(f"res = {_reduce(t, 'sum')}")
        elif combine == "prod":
            e.line(f"res = {prod_tree(t)}")
        else:
            e.line(f"res = {nan_max(t, combine)}")

    if not looped:
        x = load_tile("cols0")
        if combine in ("argmax", "argmin"):
            _, ci, _ = arg_chunk(x, "cols0")
            e.line(f"res = {ci}")
        else:
            finish(x)
    else:
        if combine in ("argmax", "argmin"):
            e.line(f"best_v = tl.full([BM], {pad}, {tl_dtype(wt)})")
            e.line(f"best_i = tl.full([BM], 0, {'tl.int64' if int64 else 'tl.int32'})")
            e.line("best_nan = rmask & (rmask == 0)")
        else:
            init = {"sum": 0, "prod": 1}.get(combine, pad)
            e.line(f"acc = tl.full([BM, BR], {init}, {tl_dtype(wt)})")
        e.line("for r0 in range(0, R, BR):")
        e.indent += 1
        e.line("cols = r0 + cols0")
        x = load_tile("cols")
        if combine == "sum":
            e.line(f"acc = acc + {x}")
        elif combine == "prod":
            e.line(f"acc = acc * {x}")
        elif combine in ("max", "min"):
            cmp = ">" if combine == "max" else "<"
            nan = f" | ({x} != {x})" if is_float else ""
            e.line(f"acc = tl.where(({x} {cmp} acc){nan}, {x}, acc)")
        else:
            cm, ci, cnan = arg_chunk(x, "cols")
            cmp = ">" if combine == "argmax" else "<"
            # Chunks come in index order, so a strict comparison keeps the first extreme.
            e.line(f"take = ({cnan} & (best_nan == 0)) | ((best_nan == 0) & ({cnan} == 0) & ({cm} {cmp} best_v))")
            e.line(f"best_v = tl.where(take, {cm}, best_v)")
            e.line(f"best_i = tl.where(take, {ci}, best_i)")
            e.line(f"best_nan = best_nan | {cnan}")
        e.indent -= 1
        if combine in ("argmax", "argmin"):
            e.line("res = best_i")
        else:
            finish("acc")
    e.line(f"tl.store(out_ptr + rows, {store_cast(e, 'res', out_dtype)}, mask=rmask)")
    params = reduction_params(x_dtype, out_dtype, nk, nr)
    return make_kernel(f"red_{op}", render(params, e.text()), "reduction", [op], params)


REDUCTION_BLOCK = 1024  # reductions over more elements than this loop (the emitter's `looped`)


def launch_config(m: int, r: int, target: str) -> LaunchConfig:
    """BR elements of the reduced dims per step, BM outputs per program."""
    interpreted(target)  # (validates the target: both get the same blocks today)
    br = min(pow2(max(r, 1)), REDUCTION_BLOCK)
    bm = max(1, min(pow2(m), 4096 // br))
    return LaunchConfig((cdiv(m, bm),), {"BM": bm, "BR": br, "LOG2": br.bit_length() - 1})
