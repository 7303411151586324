"""Matmul emitter: tiled tl.dot over [..., M, K] @ [..., K, N] with broadcast batch dims, and an
optional pointwise epilogue (bias, activation, residual, scale, cast) applied to the tile in registers.

Both operands are addressed through runtime strides (batch strides 0 where broadcast), so
transposed or sliced operands need no copy. Accumulation is fp32 (fp64 for fp64); the tile is
rounded to the matmul's dtype before the epilogue, exactly where eager would store it. Epilogue
inputs are loaded as [BM, BN] tiles through their own strides over the output index space. Every
output has the matmul's output shape and is stored through strides. Two constexprs are chosen per
launch: PREC (tl.dot input_precision for fp32 on a GPU, from torch.get_float32_matmul_precision())
and INTERP (the interpreter computes half-precision tl.dot wrongly, so operands are upcast there).

The launch is one grid axis of (batch index, output tile) programs, the batch outermost: axis 0
holds 2**31 - 1 programs, axes 1 and 2 only 65,535. Within a batch element tiles go in grouped
order (GROUP_M tile rows swept column by column: the programs running together share A rows and B
columns in L2). Operand loads need no M or N mask (rows past M read row r mod M, never stored) and,
with EVEN_K (K a multiple of BK), no K mask. Tiles, GROUP_M, warps and stages come from
matmul_configs.py on a GPU (or runtime/autotune.py's timing); the interpreter takes tiles as large as
allowed, since it pays per program instance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..ir import Node, Value
from ..ir.kernel_group import pow2
from ..ir.ops.half import HALF_TYPES, load_cast, round_half, store_cast
from ..ir.types import compute_dtype
from .emitter import Emitter, emit_tile, ptr_sig, tl_compute, unravel
from .kernel import Kernel, make_kernel, render
from .launch import LaunchConfig, cdiv, interpreted
from .matmul_configs import MatmulConfig, current_arch, table_config


@dataclass
class MatmulEpilogue:
    """The pointwise tail of a matmul group: `nodes` over the matmul result `mm`."""

    mm: Value
    nodes: list[Node] = field(default_factory=list)
    loads: list[Value] = field(default_factory=list)     # epilogue inputs read from memory
    outputs: list[Value] = field(default_factory=list)   # stored values (may include mm itself)
    scalars: list[Node] = field(default_factory=list)    # inlined 0-dim constants


def matmul_params(dtype: torch.dtype, nb: int, ep: MatmulEpilogue | None = None) -> list[tuple[str, str]]:
    p = [("a_ptr", ptr_sig(dtype)), ("a_off", "int")] + [(f"a_bst{i}", "int") for i in range(nb)]
    p += [("a_sm", "int"), ("a_sk", "int"), ("b_ptr", ptr_sig(dtype)), ("b_off", "int")]
    p += [(f"b_bst{i}", "int") for i in range(nb)] + [("b_sk", "int"), ("b_sn", "int")]
    out_dtypes = [dtype] if ep is None else [v.dtype for v in ep.outputs]
    if ep is not None:
        for i, v in enumerate(ep.loads):
            p += [(f"e{i}_ptr", ptr_sig(v.dtype)), (f"e{i}_off", "int")]
            p += [(f"e{i}_bst{k}", "int") for k in range(nb)] + [(f"e{i}_sm", "int"), (f"e{i}_sn", "int")]
    for j, dt in enumerate(out_dtypes):  # outputs are stored through strides: the planner picks layouts
        p += [(f"o{j}_ptr", ptr_sig(dt))] + [(f"o{j}_bst{k}", "int") for k in range(nb)]
        p += [(f"o{j}_sm", "int"), (f"o{j}_sn", "int")]
    p += [(f"bs{i}", "int") for i in range(nb)] + [("M", "int"), ("N", "int"), ("K", "int")]
    return p + [(n, "constexpr") for n in ("BM", "BN", "BK", "GROUP_M", "EVEN_K", "PREC", "INTERP")]


def _batch_strides(batch: tuple[int, ...], shape: tuple[int, ...], strides: tuple[int, ...], inner: int) -> list:
    """Strides of the leading (batch) dims of a view right-aligned to `batch`; broadcast dims get 0."""
    lead = len(batch) - (len(shape) - inner)
    out = [0] * len(batch)
    for i in range(len(shape) - inner):
        if lead + i >= 0:
            out[lead + i] = 0 if shape[i] == 1 else strides[i]
    return out


def matmul_args(a: tuple, a_shape: tuple[int, ...], b: tuple, b_shape: tuple[int, ...], c: tuple,
                batch: tuple[int, ...]) -> list:
    """a, b: (pointer object, offset, strides); c: (pointer object, strides) of the output.
    Batch dims broadcast right-aligned to `batch`."""
    return matmul_group_args(a, a_shape, b, b_shape, [], [], [c], batch)


def matmul_group_args(a: tuple, a_shape, b: tuple, b_shape, loads: list[tuple], load_shapes: list, outs: list,
                      batch: tuple[int, ...]) -> list:
    """Like matmul_args, with epilogue loads (pointer, offset, strides) and outputs (pointer, strides)."""
    (ap, ao, ast), (bp, bo, bst) = a, b
    args = ([ap, ao] + _batch_strides(batch, a_shape, ast, 2) + [ast[-2], ast[-1], bp, bo]
            + _batch_strides(batch, b_shape, bst, 2) + [bst[-2], bst[-1]])
    out_rank = len(batch) + 2
    for (ptr, off, strides), shape in zip(loads, load_shapes):
        full = [0] * out_rank  # the load broadcast right-aligned to [*batch, M, N]
        lead = out_rank - len(shape)
        for i, (s, st) in enumerate(zip(shape, strides)):
            full[lead + i] = 0 if s == 1 else st
        args += [ptr, off] + full
    for ptr, strides in outs:
        args += [ptr] + list(strides)
    return args + list(batch) + [a_shape[-2], b_shape[-1], a_shape[-1]]


def emit_matmul(dtype: torch.dtype, nb: int, int64: bool = False, ep: MatmulEpilogue | None = None) -> Kernel:
    acc_t = "tl.float64" if dtype == torch.float64 else "tl.float32"
    e = Emitter()
    # One grid axis: the batch index outermost, the output tiles of one batch element inside it (axes
    # 1 and 2 stop at 65,535 programs; axis 0 goes to 2**31 - 1).
    e.line("pid = tl.program_id(0)")
    e.line("nm = (M + BM - 1) // BM")  # tl.cdiv/tl.zeros are jit wrappers: not callable under the interpreter
    e.line("nn = (N + BN - 1) // BN")
    e.line(f"bid = (pid // (nm * nn)){'.to(tl.int64)' if int64 else ''}")
    e.line("t = pid % (nm * nn)")
    # Grouped ordering: consecutive programs sweep GROUP_M tile rows column by column, so the A rows
    # and B columns the programs running together read are shared in L2 (Triton's matmul tutorial).
    e.line("width = GROUP_M * nn")
    e.line("first = (t // width) * GROUP_M")
    e.line("gm = tl.minimum(nm - first, GROUP_M)")
    e.line("pm = first + (t % width) % gm")
    e.line("pn = (t % width) // gm")
    bidx = unravel(e, "bid", [f"bs{i}" for i in range(nb)], "b")
    a_base = " + ".join(["a_off"] + [f"{i} * a_bst{k}" for k, i in enumerate(bidx)])
    b_base = " + ".join(["b_off"] + [f"{i} * b_bst{k}" for k, i in enumerate(bidx)])
    e.line(f"a_base = {a_base}")
    e.line(f"b_base = {b_base}")
    cast = ".to(tl.int64)" if int64 else ""
    e.line(f"rm = (pm * BM + tl.arange(0, BM)){cast}")
    e.line(f"rn = (pn * BN + tl.arange(0, BN)){cast}")
    e.line(f"rk = tl.arange(0, BK){cast}")
    # Rows and columns past the edge load row (r mod M) / column (c mod N): in bounds, so the operand
    # loads need no M or N mask; those lanes are never stored (cmask).
    e.line("a_rows = a_ptr + (a_base + (rm % M)[:, None] * a_sm)")
    e.line("b_cols = b_ptr + (b_base + (rn % N)[None, :] * b_sn)")
    e.line(f"acc = tl.full([BM, BN], 0, {acc_t})")
    e.line("for k0 in range(0, K, BK):")
    e.indent += 1
    e.line("ka = k0 + rk")
    e.line("if EVEN_K:")  # K % BK == 0: every K block is full, no mask
    e.indent += 1
    e.line("a = tl.load(a_rows + ka[None, :] * a_sk)")
    e.line("b = tl.load(b_cols + ka[:, None] * b_sk)")
    e.indent -= 1
    e.line("else:")
    e.indent += 1
    e.line("a = tl.load(a_rows + ka[None, :] * a_sk, mask=ka[None, :] < K, other=0)")
    e.line("b = tl.load(b_cols + ka[:, None] * b_sk, mask=ka[:, None] < K, other=0)")
    e.indent -= 1
    if dtype in (torch.float16, torch.bfloat16):
        e.line("if INTERP:")  # the interpreter's bfloat16 widening mangles subnormals: widen by bits
        e.indent += 1
        e.line(f"a = {load_cast(e, 'a', dtype)}")
        e.line(f"b = {load_cast(e, 'b', dtype)}")
        e.indent -= 1
    if dtype == torch.float32:
        e.line("acc = tl.dot(a, b, acc, input_precision=PREC)")
    else:
        e.line("acc = tl.dot(a, b, acc)")
    e.indent -= 1
    e.line("cmask = (rm[:, None] < M) & (rn[None, :] < N)")
    if ep is None:
        e.line(f"tl.store(o0_ptr + ({_out_offset(0, bidx)}), {store_cast(e, 'acc', dtype)}, mask=cmask)")
        ops = ["matmul"]
    else:
        _emit_epilogue(e, ep, dtype, bidx, nb)
        ops = ["matmul"] + [n.op for n in ep.nodes]
    params = matmul_params(dtype, nb, ep)
    prefix = "mm" if ep is None or not ep.nodes else "mm_" + "_".join(dict.fromkeys(n.op for n in ep.nodes))[:40]
    return make_kernel(prefix, render(params, e.text()), "matmul", ops, params)


def _emit_epilogue(e: Emitter, ep: MatmulEpilogue, dtype: torch.dtype, bidx: list[str], nb: int) -> None:
    # Round to the matmul's dtype first: eager stores the matmul result before the next op reads it.
    rounded = round_half(e, "acc", torch.float32, dtype) if dtype in HALF_TYPES else "acc"
    env: dict[Value, str] = {ep.mm: e.tmp(f"{rounded}.to({tl_compute(dtype)})", "v")}
    # Element indices of the [*batch, M, N] output as [BM, BN] tiles (`iota`, `rand` ask for them).
    z2 = e.tmp("rm[:, None] * 0 + rn[None, :] * 0", "z")

    def index(k: int) -> str:
        if k >= -2:
            return f"(rn[None, :] + {z2})" if k == -1 else f"(rm[:, None] + {z2})"
        return f"({bidx[nb + k + 2]} + {z2})" if nb + k + 2 >= 0 else z2

    e.index = index
    for i, v in enumerate(ep.loads):
        off = " + ".join([f"e{i}_off"] + [f"{b} * e{i}_bst{k}" for k, b in enumerate(bidx)])
        x = e.tmp(f"tl.load(e{i}_ptr + ({off} + rm[:, None] * e{i}_sm + rn[None, :] * e{i}_sn), mask=cmask, other=0)",
                  "x")
        env[v] = e.tmp(load_cast(e, x, v.dtype), "x") if compute_dtype(v.dtype) != v.dtype else x
    emit_tile(e, ep.scalars + ep.nodes, env, "[BM, BN]")
    for j, v in enumerate(ep.outputs):
        e.line(f"tl.store(o{j}_ptr + ({_out_offset(j, bidx)}), {store_cast(e, env[v], v.dtype)}, mask=cmask)")


def _out_offset(j: int, bidx: list[str]) -> str:
    batch = [f"{b} * o{j}_bst{k}" for k, b in enumerate(bidx)]
    return " + ".join(batch + [f"rm[:, None] * o{j}_sm + rn[None, :] * o{j}_sn"])


# Grid axis 0 holds at most this many programs (axes 1 and 2: 65,535, so the batch is not put there).
MAX_PROGRAMS = 2**31 - 1


def launch_config(m: int, n: int, k: int, batch: int, target: str, dtype: torch.dtype = torch.float32,
                  arch: int | None = None) -> LaunchConfig:
    """Tiles, grouping, warps and stages of a [batch] x (m x k @ k x n) matmul; one program per output
    tile per batch element, all on grid axis 0. The interpreter pays per program instance: tiles as
    large as allowed (up to 256); a GPU: the table of matmul_configs.py for `arch` (default: this
    process's GPU, else Hopper)."""
    if interpreted(target):
        bm, bn, bk = (min(max(pow2(s), 16), 256) for s in (m, n, k))
        return with_tiles(m, n, k, batch, bm, bn, bk, group_m=1)
    c = table_config(m, n, k, batch, dtype, current_arch() if arch is None else arch)
    return from_config(c, m, n, k, batch)


def from_config(c: MatmulConfig, m: int, n: int, k: int, batch: int) -> LaunchConfig:
    """The launch of `c` (a matmul_configs.py config) on a GPU."""
    return with_tiles(m, n, k, batch, c.block_m, c.block_n, c.block_k, c.group_m, c.num_warps, c.num_stages)


def with_tiles(m: int, n: int, k: int, batch: int, bm: int, bn: int, bk: int, group_m: int = 8,
               num_warps: int = 4, num_stages: int | None = None) -> LaunchConfig:
    """The launch of given tiles: the grid, and EVEN_K when every K block is full (no K mask)."""
    programs = cdiv(m, bm) * cdiv(n, bn) * batch
    if programs > MAX_PROGRAMS:
        raise ValueError(f"matmul of {batch} x ({m} x {k} @ {k} x {n}) needs {programs} programs of "
                         f"{bm}x{bn} tiles: more than one launch can hold ({MAX_PROGRAMS})")
    return LaunchConfig((programs,), {"BM": bm, "BN": bn, "BK": bk, "GROUP_M": group_m, "EVEN_K": k % bk == 0},
                        num_warps, num_stages)
