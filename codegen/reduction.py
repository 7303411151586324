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
from .row import COLUMN_BM, split_plan

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
                   looped: bool, int64: bool = False, split: bool = False) -> Kernel:
    """The reduction kernel; `split`: stage 1 of a split reduction (`split_plan`), whose programs
    (row block, split) reduce RC columns from `program_id(1) * RC` each and store their partial result
    (argmax/argmin: the value, NaN if any, and its first index) at [split, row] of [S, M] buffers."""
    wt = work_dtype(combine, x_dtype, out_dtype)
    is_float = wt.is_floating_point
    looped = looped or split
    e = Emitter()
    kidx = emit_rows(e, nk, int64)
    e.line(f"row_off = {offset_expr('x_off', kidx, [f'x_kst{i}' for i in range(nk)], 'rzero')}")
    e.line(f"cols0 = tl.arange(0, BR){'.to(tl.int64)' if int64 else ''}")
    if split:
        e.line(f"c_lo = tl.program_id(1){'.to(tl.int64)' if int64 else ''} * RC")
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
            # a split's first index when its extreme is the pad value itself (all -inf for argmax)
            e.line(f"best_i = tl.full([BM], 0, {'tl.int64' if int64 else 'tl.int32'}){' + c_lo' if split else ''}")
            e.line("best_nan = rmask & (rmask == 0)")
        else:
            init = {"sum": 0, "prod": 1}.get(combine, pad)
            e.line(f"acc = tl.full([BM, BR], {init}, {tl_dtype(wt)})")
        e.line(f"for r0 in range(0, {'RC' if split else 'R'}, BR):")
        e.indent += 1
        e.line(f"cols = {'c_lo + ' if split else ''}r0 + cols0")
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
    params = reduction_params(x_dtype, out_dtype, nk, nr)
    if split:
        e.line("part = tl.program_id(1) * M + rows")
        if combine in ("argmax", "argmin"):
            if is_float:
                e.line("best_v = tl.where(best_nan, float('nan'), best_v)")
            e.line("tl.store(pv_ptr + part, best_v, mask=rmask)")
            e.line("tl.store(pi_ptr + part, best_i.to(tl.int64), mask=rmask)")
        else:
            e.line("tl.store(pv_ptr + part, res, mask=rmask)")
        parts = [("pv_ptr", ptr_sig(wt))] + ([("pi_ptr", "*i64")] if combine in ("argmax", "argmin") else [])
        params = params[:-4] + parts + params[-3:] + [("RC", "constexpr")]
        return make_kernel(f"red_split_{op}", render(params, e.text()), "reduction", [op], params)
    e.line(f"tl.store(out_ptr + rows, {store_cast(e, 'res', out_dtype)}, mask=rmask)")
    return make_kernel(f"red_{op}", render(params, e.text()), "reduction", [op], params)


def emit_combine(op: str, combine: str, x_dtype: torch.dtype, out_dtype: torch.dtype, int64: bool = False) -> Kernel:
    """Stage 2 of a split reduction: each row's S partials ([S, M] buffers) combined in [BM, BS]
    blocks. argmax/argmin: the first split holding the extreme (NaN first) gives the index, and
    splits are in column order, so ties pick the first index as eager does."""
    wt = work_dtype(combine, x_dtype, out_dtype)
    pad = literal(_pad_value(combine, wt), wt)
    e = Emitter()
    emit_rows(e, 0, int64)
    e.line("sidx = tl.arange(0, BS)")
    e.line("pm = rmask[:, None] & (sidx < S)[None, :]")
    e.line("at = sidx[None, :] * M + rows[:, None]")
    e.line(f"x = tl.where(pm, tl.load(pv_ptr + at, mask=pm, other=0).to({tl_dtype(wt)}), {pad})")
    if combine == "sum":
        e.line(f"res = {_reduce('x', 'sum')}")
    elif combine == "prod":
        e.line("p = x")
        e.line("for lv in tl.static_range(LOG2):")
        e.line("    a, b = tl.split(tl.reshape(p, [BM, BS >> (lv + 1), 2]))")
        e.line("    p = a * b")
        e.line("res = tl.reshape(p, [BM])")
    else:
        fn = "max" if combine in ("max", "argmax") else "min"
        e.line(f"res = {_reduce('x', fn)}")
        if wt.is_floating_point:
            e.line("isn = (x != x) & pm")
            e.line(f"anynan = {_reduce('isn.to(tl.int32)', 'max')} > 0")
            e.line("res = tl.where(anynan, float('nan'), res)")
        if combine in ("argmax", "argmin"):
            hit = "tl.where(anynan[:, None], isn, (x == res[:, None]) & pm)" if wt.is_floating_point else \
                "(x == res[:, None]) & pm"
            e.line(f"first = {_reduce(f'tl.where({hit}, sidx[None, :], BS)', 'min')}")
            e.line("idx = tl.load(pi_ptr + at, mask=pm, other=0)")
            e.line(f"res = {_reduce('tl.where(sidx[None, :] == first[:, None], idx, 0)', 'sum')}")
    e.line(f"tl.store(out_ptr + rows, {store_cast(e, 'res', out_dtype)}, mask=rmask)")
    params = [("pv_ptr", ptr_sig(wt))] + ([("pi_ptr", "*i64")] if combine in ("argmax", "argmin") else [])
    params += [("M", "int"), ("S", "int"), ("out_ptr", ptr_sig(out_dtype))]
    params += [("BM", "constexpr"), ("BS", "constexpr"), ("LOG2", "constexpr")]
    return make_kernel(f"red_combine_{op}", render(params, e.text()), "reduction", [op], params)


REDUCTION_BLOCK = 1024  # reductions over more elements than this loop (the emitter's `looped`)


def launch_config(m: int, r: int, target: str, column: bool = False) -> LaunchConfig:
    """BR elements of the reduced dims per step, BM outputs per program; the kernel loops when R > BR.
    `column` (a GPU): the kept dims are innermost, so BM runs along contiguous memory (COLUMN_BM
    outputs per program, codegen/row.py). Few programs over long rows split (row.py `split_plan`):
    grid (programs, splits) and RC, the columns per split; `combine_config` is stage 2's."""
    gpu = not interpreted(target)
    if gpu and column:
        bm = min(pow2(m), COLUMN_BM)
        br = max(1, min(pow2(max(r, 1)), 4096 // bm))
    else:
        br = min(pow2(max(r, 1)), REDUCTION_BLOCK)
        bm = max(1, min(pow2(m), 4096 // br))
    s, rc, sbr = split_plan(cdiv(m, bm), min(m, bm), r, br, target)
    if s > 1:
        return LaunchConfig((cdiv(m, bm), s), {"BM": bm, "BR": sbr, "LOG2": sbr.bit_length() - 1, "RC": rc})
    return LaunchConfig((cdiv(m, bm),), {"BM": bm, "BR": br, "LOG2": br.bit_length() - 1})


def combine_config(config: LaunchConfig, m: int, target: str) -> LaunchConfig:
    """Stage 2 of a split reduction (`config` is stage 1's): [BM, BS] blocks of the S partials."""
    bs = pow2(config.grid[1])
    bm = max(1, min(pow2(m), 4096 // bs))
    return LaunchConfig((cdiv(m, bm),), {"BM": bm, "BS": bs, "LOG2": bs.bit_length() - 1}, config.num_warps)
