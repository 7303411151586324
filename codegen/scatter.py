"""Scatter emitter: `segment_add` and `segment_write` (ir/ops/scatter.py), the deterministic scatters.

Tensors are seen as (A, rows, B): the dims before `dim`, the scattered dim, the dims after it (the
planner merges each side into one stride). A destination row v owns the `A*B` columns (a, b). Each
program owns BV destination rows and BC columns. It finds every row's run [lo, hi) in the sorted
keys with two branch-free binary searches (`STEPS` = bit length of N halvings each), then walks the
runs in step: at step j a row whose run is longer than j loads source row `order[lo + j]` and adds
it. Sources are summed in source order (the sort is stable), starting from the destination's value
(or the constant `INIT`) in the compute dtype, and stored once. No atomics: the result is the same
on every run. `segment_write` loads only each run's last source (the last in source order, which
the stable sort puts last), or keeps the destination's value where the run is empty. A row's
program reads only the sources that hit it and writes only its own rows, so an index out of range
(which `ember::sort_index` reports) can never write out of bounds.

Work per program is BV x (longest run among its rows): the interpreter (which pays per program
instance) takes blocks of many rows; a GPU takes one row per program when rows are wide, so a
frequent index costs only its own program.
"""

from __future__ import annotations

import torch

from ..ir.kernel_group import pow2
from ..ir.ops.half import load_cast, store_cast
from ..ir.types import compute_dtype, py_literal
from .emitter import Emitter, ptr_sig, tl_dtype
from .kernel import Kernel, make_kernel, render
from .launch import LaunchConfig, cdiv, interpreted

GRID_Y_LIMIT = 65535  # CUDA's limit on the second grid dim


def scatter_params(dtype: torch.dtype, key_dtype: torch.dtype, has_x: bool) -> list[tuple[str, str]]:
    p = [("src_ptr", ptr_sig(dtype)), ("src_off", "int"), ("src_sa", "int"), ("src_sn", "int"), ("src_sb", "int"),
         ("key_ptr", ptr_sig(key_dtype)), ("key_off", "int"), ("key_st", "int"),
         ("ord_ptr", ptr_sig(torch.int64)), ("ord_off", "int"), ("ord_st", "int")]
    if has_x:
        p += [("x_ptr", ptr_sig(dtype)), ("x_off", "int"), ("x_sa", "int"), ("x_sv", "int"), ("x_sb", "int")]
    p += [("out_ptr", ptr_sig(dtype)), ("out_sa", "int"), ("out_sv", "int"), ("out_sb", "int"),
          ("V", "int"), ("N", "int"), ("C", "int"), ("B", "int"), ("STEPS", "int")]
    return p + [("BV", "constexpr"), ("BC", "constexpr")]


def scatter_args(src: tuple, key: tuple, order: tuple, x: tuple | None, out: tuple, v: int, n: int, a: int,
                 b: int) -> list:
    """src, x, out: (pointer, offset, (stride A, stride rows, stride B)); key, order: (pointer, offset,
    stride). v destination rows, n sources, a x b columns per row."""
    args = [src[0], src[1], *src[2], key[0], key[1], key[2], order[0], order[1], order[2]]
    if x is not None:
        args += [x[0], x[1], *x[2]]
    return args + [out[0], *out[2], v, n, a * b, max(b, 1), max(n, 1).bit_length()]


def emit_scatter(dtype: torch.dtype, key_dtype: torch.dtype, has_x: bool, init, int64: bool = False,
                 op: str = "segment_add") -> Kernel:
    """The `op` kernel (`segment_add`: sums, `segment_write`: the last source) for values of `dtype`,
    keys of `key_dtype`; without a destination input (`has_x` False) rows start from the constant
    `init`."""
    wt = compute_dtype(dtype)
    idx = "tl.int64" if int64 else "tl.int32"
    e = Emitter()
    e.line(f"rows = tl.program_id(0){'.to(tl.int64)' if int64 else ''} * BV + tl.arange(0, BV)")
    e.line("rmask = rows < V")
    e.line(f"cols = tl.program_id(1){'.to(tl.int64)' if int64 else ''} * BC + tl.arange(0, BC)")
    e.line("cmask = cols < C")
    e.line("ca = cols // B")
    e.line("cb = cols % B")
    # lower bounds of v (run start) and v + 1 (run end) in the sorted keys
    e.line(f"lo = tl.full([BV], 0, {idx})")
    e.line("hi = lo + N")
    e.line("lo2 = lo")
    e.line("hi2 = hi")
    e.line("for _ in range(STEPS):")
    e.indent += 1
    for lo, hi, cmp in (("lo", "hi", "<"), ("lo2", "hi2", "<=")):
        e.line(f"act = rmask & ({lo} < {hi})")
        e.line(f"mid = ({lo} + {hi}) // 2")
        e.line("k = tl.load(key_ptr + key_off + mid * key_st, mask=act, other=0)")
        e.line(f"right = act & (k {cmp} rows)")
        e.line(f"{lo} = tl.where(right, mid + 1, {lo})")
        e.line(f"{hi} = tl.where(act & (right == 0), mid, {hi})")
    e.indent -= 1
    e.line("cnt = tl.where(rmask, lo2 - lo, 0)")
    if op != "segment_write":
        e.line("longest = tl.reduce(cnt, 0, tl.standard._elementwise_max)")
    e.line("m2 = rmask[:, None] & cmask[None, :]")
    if has_x:  # (a write does not read the rows it overwrites)
        e.line("x = tl.load(x_ptr + x_off + ca[None, :] * x_sa + rows[:, None] * x_sv + cb[None, :] * x_sb, "
               f"mask=m2{' & (cnt == 0)[:, None]' if op == 'segment_write' else ''}, other=0)")
        e.line(f"acc = ({load_cast(e, 'x', dtype)}).to({tl_dtype(wt)})")
    else:
        e.line(f"acc = tl.full([BV, BC], {py_literal(init, wt)}, {tl_dtype(wt)})")
    if op == "segment_write":  # the run's last source, where the run is not empty
        e.line("act = cnt > 0")
        e.line("n = tl.load(ord_ptr + ord_off + (lo2 - 1) * ord_st, mask=act, other=0)")
        e.line("ms = act[:, None] & cmask[None, :]")
        e.line("s = tl.load(src_ptr + src_off + ca[None, :] * src_sa + n[:, None] * src_sn + cb[None, :] * src_sb, "
               "mask=ms, other=0)")
        e.line(f"acc = tl.where(ms, ({load_cast(e, 's', dtype)}).to({tl_dtype(wt)}), acc)")
    else:
        e.line("for j in range(0, longest):")
        e.indent += 1
        e.line("act = j < cnt")
        e.line("n = tl.load(ord_ptr + ord_off + (lo + j) * ord_st, mask=act, other=0)")
        e.line("ms = act[:, None] & cmask[None, :]")
        e.line("s = tl.load(src_ptr + src_off + ca[None, :] * src_sa + n[:, None] * src_sn + cb[None, :] * src_sb, "
               "mask=ms, other=0)")
        # masked lanes keep acc as it is: acc + 0 would turn -0.0 into +0.0
        e.line(f"acc = tl.where(ms, acc + ({load_cast(e, 's', dtype)}).to({tl_dtype(wt)}), acc)")
        e.indent -= 1
    e.line(f"tl.store(out_ptr + ca[None, :] * out_sa + rows[:, None] * out_sv + cb[None, :] * out_sb, "
           f"{store_cast(e, 'acc', dtype)}, mask=m2)")
    params = scatter_params(dtype, key_dtype, has_x)
    name = "scatter_add" if op == "segment_add" else "scatter_write"
    return make_kernel(name, render(params, e.text()), "scatter", [op], params)


def launch_config(v: int, c: int, target: str) -> LaunchConfig:
    """BV destination rows x BC columns per program. The interpreter pays per program instance: blocks
    of up to 4096 elements. A GPU: one row per program when rows are wide (a frequent index then
    delays only its own row), several narrow rows per program otherwise."""
    bc = min(pow2(max(c, 1)), 1024)
    limit = 4096 if interpreted(target) else 1024
    bv = max(1, min(pow2(max(v, 1)), limit // bc))
    while cdiv(c, bc) > GRID_Y_LIMIT:
        bc *= 2
    warps = 4 if bv * bc >= 512 else 1
    return LaunchConfig((cdiv(v, bv), cdiv(c, bc)), {"BV": bv, "BC": bc}, num_warps=warps)
