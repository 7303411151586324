"""Row emitter: a fused group of reductions over one shape and set of dims, with their pointwise
prologue and epilogue (softmax, log_softmax, layernorm, rmsnorm, ...), as one kernel.

The iteration space `shape` is seen as rows (kept dims, row-major) x cols (reduced dims). Every
value of the group is either a tile [BM, BR] (it varies along the cols) or a row [BM] (it does not:
reduction results and what is computed from them). A program owns BM rows.

- Persistent (LOOPED false): a row fits BR columns; each input is loaded once, every node is computed
  once in registers, outputs are stored.
- Looped: each reduction runs a loop over BR-wide chunks that recomputes the tile values it needs from
  the inputs, accumulating in a [BM, BR] tile; a last loop computes and stores the tile outputs.

A scan along the group's one reduced dim (cumsum, ...) is a tile op here (`scan.scan_tile`), in
persistent groups only: it needs the whole row in one block.

Inputs are addressed by `loads`: (value, mode) pairs, mode "tile" or "row", so the same tensor may be
read both ways (a bias broadcast along rows as a tile). The runtime maps each load's view onto the
row/col index space (`row_load_strides`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ir import Node, Value, get_op
from ..ir.kernel_group import ROW_BLOCK_LIMIT, KernelGroup, pow2
from ..ir.ops.half import load_cast, store_cast
from ..ir.ops.reduction import reduced_shape
from ..ir.types import compute_dtype
from .emitter import BlockContext, Emitter, bind_value, emit_rows, literal, ptr_sig, tl_dtype, unravel
from .kernel import Kernel, make_kernel, render
from .launch import LaunchConfig, cdiv, interpreted
from .scan import scan_tile, with_combines

_COMBINE = {"sum": "_sum_combine", "amax": "_elementwise_max", "amin": "_elementwise_min"}


@dataclass
class RowLayout:
    """Static facts of a row group the emitter and the runtime share."""

    group: KernelGroup
    loads: list[tuple[Value, str]]       # (input value, "tile" | "row")
    tile_outputs: list[Value]
    row_outputs: list[Value]

    @property
    def kept(self) -> list[int]:
        return [d for d in range(len(self.group.shape)) if d not in self.group.dims]

    def is_row(self, v: Value) -> bool:
        """Rows ([BM] values: reduction results and what follows) versus tiles ([BM, BR])."""
        g = self.group
        return v.shape != g.shape and (v.shape in (reduced_shape(g.shape, g.dims, True),
                                                   reduced_shape(g.shape, g.dims, False)) or v.type.numel == 1)


def row_layout(group: KernelGroup) -> RowLayout:
    layout = RowLayout(group, [], [], [])
    members = {v for n in group.nodes for v in n.outputs}
    for n in group.nodes:
        mode = "row" if layout.is_row(n.out) else "tile"
        for v in n.inputs:
            if v in members or v.producer in group.scalars:
                continue
            m = ("row" if layout.is_row(v) else "tile") if get_op(n.op).kind == "reduction" else mode
            if (v, m) not in layout.loads:
                layout.loads.append((v, m))
    for v in group.outputs:
        (layout.row_outputs if layout.is_row(v) else layout.tile_outputs).append(v)
    return layout


def row_params(layout: RowLayout) -> list[tuple[str, str]]:
    nk, nr = len(layout.kept), len(layout.group.dims)
    p: list[tuple[str, str]] = []
    for i, (v, mode) in enumerate(layout.loads):
        p += [(f"ld{i}_ptr", ptr_sig(v.dtype)), (f"ld{i}_off", "int")] + [(f"ld{i}_k{d}", "int") for d in range(nk)]
        if mode == "tile":
            p += [(f"ld{i}_r{d}", "int") for d in range(nr)]
    for j, v in enumerate(layout.tile_outputs):
        p += [(f"to{j}_ptr", ptr_sig(v.dtype))] + [(f"to{j}_k{d}", "int") for d in range(nk)]
        p += [(f"to{j}_r{d}", "int") for d in range(nr)]
    for j, v in enumerate(layout.row_outputs):  # stored through strides: the planner picks the layout
        p += [(f"ro{j}_ptr", ptr_sig(v.dtype))] + [(f"ro{j}_k{d}", "int") for d in range(nk)]
    p += [(f"ks{d}", "int") for d in range(nk)] + [(f"rs{d}", "int") for d in range(nr)]
    if row_checked(layout):
        p.append(("err_ptr", "*i32"))
    return p + [("M", "int"), ("R", "int"), ("BM", "constexpr"), ("BR", "constexpr")]


def row_checked(layout: RowLayout) -> bool:
    """Does the kernel take an error flag (`err_ptr`)? When a node may raise it (`OpDef.emit_checks`:
    `check_index` on a row's target index)."""
    return any(get_op(n.op).emit_checks for n in layout.group.nodes)


def row_load_strides(layout: RowLayout, v: Value, mode: str, strides: tuple[int, ...]) -> tuple[list, list]:
    """(kept strides, reduced strides) of a load of `v` (a view with `strides`) in the group's index space.

    Tile loads broadcast `v` trailing-aligned to the group shape; row loads broadcast it to the row
    shape it was used as (keepdim, or squeezed: then its dims are the kept dims in order).
    """
    g = layout.group
    keep = reduced_shape(g.shape, g.dims, True)
    if mode == "tile" or len(v.shape) <= len(keep) and _aligns(v.shape, keep):
        full = [0] * len(g.shape)
        lead = len(g.shape) - len(v.shape)
        for i, (s, st) in enumerate(zip(v.shape, strides)):
            full[lead + i] = 0 if s == 1 else st
        return [full[d] for d in layout.kept], [full[d] for d in g.dims]
    kept = [0] * len(layout.kept)  # squeezed row shape: v aligns to the kept dims
    if len(v.shape) > len(kept):  # another spelling of the row (a reshape the group absorbed)
        return _regrouped_strides(v, strides, [g.shape[d] for d in layout.kept]), [0] * len(g.dims)
    lead = len(kept) - len(v.shape)
    for i, (s, st) in enumerate(zip(v.shape, strides)):
        kept[lead + i] = 0 if s == 1 else st
    return kept, [0] * len(g.dims)


def _regrouped_strides(v: Value, strides: tuple[int, ...], kept_sizes: list[int]) -> list[int]:
    """Strides over the kept dims of `v`, a row value spelled with other dims (`keepdim` of a full
    reduction reshaped to [1, 1]; rows regrouped): a reshape keeps row-major order, so they are the
    strides of v's layout viewed with the kept sizes (torch's view rule, on a meta tensor)."""
    if math.prod(v.shape) != math.prod(kept_sizes):
        raise NotImplementedError(f"row value {v.type} does not spell the row {kept_sizes}")
    view = torch.empty_strided(v.shape, strides, device="meta").view(kept_sizes)
    return [0 if s == 1 else st for s, st in zip(kept_sizes, view.stride())]


def _aligns(small: tuple[int, ...], big: tuple[int, ...]) -> bool:
    return all(s in (1, b) for s, b in zip(small[::-1], big[::-1]))


class _RowEmitter:
    def __init__(self, layout: RowLayout, looped: bool, int64: bool):
        self.L = layout
        self.looped = looped
        self.int64 = int64
        self.e = Emitter()
        self.rows: dict[Value, str] = {}   # row values, valid anywhere after their definition
        self.tiles: dict[Value, str] = {}  # tile values of the current chunk
        self.nk, self.nr = len(layout.kept), len(layout.group.dims)

    # -- loads and nodes --------------------------------------------------------------------------
    def row_load(self, i: int, v: Value) -> str:
        e = self.e
        off = " + ".join([f"ld{i}_off"] + [f"{k} * ld{i}_k{d}" for d, k in enumerate(self.kidx)]) + " + rzero"
        x = e.tmp(f"tl.load(ld{i}_ptr + ({off}), mask=rmask, other=0)", "x")
        return self.up(x, v.dtype)

    def tile_load(self, i: int, v: Value) -> str:
        e = self.e
        row = " + ".join([f"ld{i}_off"] + [f"{k} * ld{i}_k{d}" for d, k in enumerate(self.kidx)]) + " + rzero"
        col = " + ".join([f"{r} * ld{i}_r{d}" for d, r in enumerate(self.ridx)] + ["czero"])
        x = e.tmp(f"tl.load(ld{i}_ptr + (({row})[:, None] + ({col})[None, :]), mask=m2, other=0)", "x")
        return self.up(x, v.dtype)

    def up(self, x: str, dtype: torch.dtype) -> str:
        return self.e.tmp(load_cast(self.e, x, dtype), "x") if compute_dtype(dtype) != dtype else x

    def operand(self, v: Value, tile: bool) -> str:
        """v as a tile (rows broadcast with [:, None]) or as a row."""
        if v.producer in self.L.group.scalars:  # block-shaped: see codegen/pointwise.py
            return self.pointwise(v.producer, tile)
        mode = "tile" if tile else "row"
        if v in self.rows:
            return f"{self.rows[v]}[:, None]" if tile else self.rows[v]
        if (v, "row") in self.L.loads and not tile:
            return self.rows.setdefault(v, self.row_load(self.L.loads.index((v, "row")), v))
        if tile:
            if v not in self.tiles:
                if (v, mode) in self.L.loads:
                    self.tiles[v] = self.tile_load(self.L.loads.index((v, mode)), v)
                else:
                    self.tiles[v] = self.pointwise(v.producer, True)
            return self.tiles[v]
        raise AssertionError(f"row value {v} used before its definition")

    def index(self, k: int, tile: bool) -> str:
        """Element index along dim k (from the end) of the group shape, as a tile or a row."""
        d = len(self.L.group.shape) + k
        if d in self.L.group.dims:
            r = self.ridx[self.L.group.dims.index(d)] if self.nr else "czero"
            return f"({r}[None, :] + z2)" if tile else "rzero"
        i = self.kidx[self.L.kept.index(d)]
        return f"({i}[:, None] + z2)" if tile else f"({i} + rzero)"

    def pointwise(self, node: Node, tile: bool) -> str:
        if not tile and 0 < node.out.type.rank == self.nk < len(self.L.group.shape):
            # a squeezed row value (reduction with keepdim=False): its dims are the kept dims
            self.e.index = lambda k: f"({self.kidx[self.nk + k]} + rzero)"
        else:
            self.e.index = lambda k: self.index(k, tile)
        flag, valid = ("err_ptr + z2", "m2") if tile else ("err_ptr + rzero", "rmask")
        self.e.check = lambda bad, code=1: self.e.line(f"tl.store({flag}, {code}, mask={valid} & ({bad}))")
        opdef = get_op(node.op)
        if opdef.kind == "scan":  # along the row's one dim, which the group holds whole (codegen/scan.py)
            return scan_tile(self.e, self.operand(node.inputs[0], True), "m2", opdef.combine, node.inputs[0].dtype,
                             node.out.dtype, f"{self.ridx[0]}[None, :] + z2")
        if opdef.emit is not None:  # a generator op (`full`): a block of the shape this value has here
            return opdef.emit(BlockContext(self.e, "[BM, BR]" if tile else "[BM]"), node)
        args = [self.operand(v, tile) for v in node.inputs]
        expr = get_op(node.op).triton(self.e, args, [v.dtype for v in node.inputs], node.out.dtype, **node.attrs)
        return bind_value(self.e, expr, node.out.dtype, node.op)

    # -- reductions -------------------------------------------------------------------------------
    def work_dtype(self, node: Node) -> torch.dtype:
        if node.op == "sum":
            return compute_dtype(node.out.dtype)
        return torch.int32 if node.inputs[0].dtype == torch.bool else compute_dtype(node.inputs[0].dtype)

    def pad(self, node: Node, wt: torch.dtype) -> str:
        if node.op == "sum":
            return literal(0, wt)
        low = node.op == "amax"
        if wt.is_floating_point:
            return literal(float("-inf") if low else float("inf"), wt)
        info = torch.iinfo(wt)
        return literal(info.min if low else info.max, wt)

    def reduce_tile(self, node: Node, t: str, wt: torch.dtype) -> str:
        e = self.e
        r = e.tmp(f"tl.reduce({t}, 1, tl.standard.{_COMBINE[node.op]})", "r")
        if node.op != "sum" and wt.is_floating_point:  # propagate NaN as torch does
            nan = e.tmp(f"tl.reduce(({t} != {t}).to(tl.int32), 1, tl.standard._elementwise_max)", "r")
            r = e.tmp(f"tl.where({nan} > 0, float('nan'), {r})", "r")
        return r

    def reduction(self, node: Node) -> None:
        e, wt = self.e, self.work_dtype(node)
        pad = self.pad(node, wt)
        if not self.looped:
            t = e.tmp(f"tl.where(m2, {self.operand(node.inputs[0], True)}.to({tl_dtype(wt)}), {pad})", "a")
            r = self.reduce_tile(node, t, wt)
        else:
            acc = e.tmp(f"tl.full([BM, BR], {pad}, {tl_dtype(wt)})", "acc")
            self.chunk_loop()
            t = e.tmp(f"tl.where(m2, {self.operand(node.inputs[0], True)}.to({tl_dtype(wt)}), {pad})", "a")
            if node.op == "sum":
                e.line(f"{acc} = {acc} + {t}")
            else:
                cmp = ">" if node.op == "amax" else "<"
                nan = f" | ({t} != {t})" if wt.is_floating_point else ""
                e.line(f"{acc} = tl.where(({t} {cmp} {acc}){nan}, {t}, {acc})")
            self.end_loop()
            r = self.reduce_tile(node, acc, wt)
        self.rows[node.out] = bind_value(e, r, node.out.dtype)

    def total(self, node: Node) -> None:
        """Reduce a row value across all rows (the group runs as one program holding every row)."""
        e, wt = self.e, self.work_dtype(node)
        t = e.tmp(f"tl.where(rmask, {self.operand(node.inputs[0], False)}.to({tl_dtype(wt)}), {self.pad(node, wt)})",
                  "a")
        r = e.tmp(f"tl.reduce({t}, 0, tl.standard.{_COMBINE[node.op]})", "r")
        if node.op != "sum" and wt.is_floating_point:
            nan = e.tmp(f"tl.reduce(({t} != {t}).to(tl.int32), 0, tl.standard._elementwise_max)", "r")
            r = e.tmp(f"tl.where({nan} > 0, float('nan'), {r})", "r")
        # Broadcast back to a row block: 0-dim values are awkward under the interpreter.
        self.rows[node.out] = bind_value(e, f"tl.full([BM], 0, {tl_dtype(wt)}) + {r}", node.out.dtype)

    # -- structure --------------------------------------------------------------------------------
    def chunk_loop(self) -> None:
        e = self.e
        e.line("for c0 in range(0, R, BR):")
        e.indent += 1
        self.columns("c0 + cols0")

    def end_loop(self) -> None:
        self.e.indent -= 1
        self.tiles = {}

    def columns(self, cols: str) -> None:
        e = self.e
        e.line(f"cols = {cols}")
        e.line("m2 = rmask[:, None] & (cols < R)[None, :]")
        e.line("czero = cols * 0")
        e.line("z2 = rzero[:, None] + czero[None, :]")
        self.ridx = unravel(e, "cols", [f"rs{d}" for d in range(self.nr)], "c")

    def store_tiles(self) -> None:
        e = self.e
        for j, v in enumerate(self.L.tile_outputs):
            row = " + ".join([f"{k} * to{j}_k{d}" for d, k in enumerate(self.kidx)] + ["rzero"])
            col = " + ".join([f"{r} * to{j}_r{d}" for d, r in enumerate(self.ridx)] + ["czero"])
            val = self.operand(v, True)
            e.line(f"tl.store(to{j}_ptr + (({row})[:, None] + ({col})[None, :]), {store_cast(e, val, v.dtype)}, "
                   "mask=m2)")

    def emit(self) -> str:
        e = self.e
        self.kidx = emit_rows(e, self.nk, self.int64)
        e.line(f"cols0 = tl.arange(0, BR){'.to(tl.int64)' if self.int64 else ''}")
        if not self.looped:
            self.columns("cols0")
        for node in self.L.group.nodes:
            if get_op(node.op).kind == "reduction":
                (self.total if self.L.is_row(node.inputs[0]) else self.reduction)(node)
            elif node.op == "reshape":  # between spellings of a row: the same [BM] values
                self.rows[node.out] = self.operand(node.inputs[0], False)
            elif self.L.is_row(node.out):
                self.rows[node.out] = self.pointwise(node, False)
            # tile nodes are computed on demand, inside the loop (or block) that needs them
        # Row outputs are computed first (registers) and stored last, after the tiles: every load of a
        # program precedes its row stores, so a row output may be stored over an input it or a tile
        # reads at the same row (donation, runtime/plan.py).
        values = [self.operand(v, False) for v in self.L.row_outputs]
        if self.L.tile_outputs:
            if self.looped:
                self.chunk_loop()
                self.store_tiles()
                self.end_loop()
            else:
                self.store_tiles()
        for j, (v, value) in enumerate(zip(self.L.row_outputs, values)):
            # A one-element output (a loss) is written once, by row 0; rows go to their own places.
            row = " + ".join([f"{k} * ro{j}_k{d}" for d, k in enumerate(self.kidx)] + ["rzero"])
            where, mask = ("rzero", "rows == 0") if v.type.numel == 1 else (f"({row})", "rmask")
            e.line(f"tl.store(ro{j}_ptr + {where}, {store_cast(e, value, v.dtype)}, mask={mask})")
        return e.text()


def emit_row(layout: RowLayout, looped: bool, int64: bool = False) -> Kernel:
    source, params = row_source(layout, looped, int64)
    ops = layout.group.ops
    return make_kernel("row_" + "_".join(dict.fromkeys(ops))[:40], source, "row", ops, params)


def row_source(layout: RowLayout, looped: bool, int64: bool = False) -> tuple[str, list[tuple[str, str]]]:
    """The row kernel's module text (its function named KERNEL) and parameters: `emit_row`'s, which
    codegen/multi_row.py also inlines as one member of a multi-row kernel."""
    body = _RowEmitter(layout, looped, int64).emit()
    params = row_params(layout)
    source = with_combines(render(params, body), [get_op(n.op).combine for n in layout.group.nodes
                                                  if get_op(n.op).kind == "scan"])
    return source, params


# Interpreted, a program pays ~0.1 ms of Triton's Python frontend per statement it runs (each loop
# iteration again) whatever its block, plus numpy work on its tiles: few programs and chunks win, up
# to tiles of INTERP_TILE elements (past that numpy's temporaries leave the cache). Measured on the
# (0, 2, 3) sum of a [64, 32, 8, 8] tensor (32 rows of 4096): 8 programs of [4, 4096] 28 ms, 2 of
# [16, 4096] 9.4 ms, 1 of [32, 4096] 11.6 ms.
INTERP_TILE = 1 << 16


def launch_config(m: int, r: int, whole: bool, target: str) -> LaunchConfig:
    """BR elements of a row per step (the whole row when it fits ROW_BLOCK_LIMIT, else chunks of a
    looped kernel), BM rows per program. A `whole` group reduces across rows too, so one program
    holds them all (the partition checked they fit). A GPU takes 1024-element chunks and [BM, BR]
    tiles of 4096 elements; the interpreter takes tiles of INTERP_TILE, rows first (fewer programs),
    and chunks as long as the rows left room for (fewer loop iterations) up to ROW_BLOCK_LIMIT: a
    looped row always spans several chunks (tests/test_fusion.py runs the loop on short batches)."""
    if not interpreted(target):
        br = 1024 if r > ROW_BLOCK_LIMIT else pow2(r)
        bm = pow2(m) if whole else max(1, min(pow2(m), 4096 // br))
    elif r > ROW_BLOCK_LIMIT:  # looped (the emitter's choice, shared with the cost model)
        br = min(ROW_BLOCK_LIMIT, max(1024, INTERP_TILE // pow2(m)))
        bm = max(1, min(pow2(m), INTERP_TILE // br))
    else:
        br = pow2(r)
        bm = pow2(m) if whole else max(1, min(pow2(m), INTERP_TILE // br))
    return LaunchConfig((cdiv(m, bm),), {"BM": bm, "BR": br})
