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
from ..ir.row_sweeps import Sweeps, reduction_free, row_sweeps, tile_reductions
from ..ir.types import compute_dtype
from .cross_entropy import ROW_HOOKS
from .emitter import (
    HOST_SIGS,
    BlockContext,
    Emitter,
    bind_value,
    emit_rows,
    host_scalar,
    interp_params,
    literal,
    ptr_sig,
    tl_dtype,
    unravel,
)
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
    host: frozenset[int] = frozenset()  # loads passed by value (host scalars: `hostable`, set by the planner)

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


def hostable(layout: RowLayout) -> frozenset[int]:
    """Loads that may be host scalars (codegen/emitter.py): of a host scalar dtype, and not read by a
    node that spells its own loads (cross-entropy's target pick, ROW_HOOKS)."""
    hooked = {v for n in layout.group.nodes if n.op in ROW_HOOKS for v in n.inputs}
    return frozenset(i for i, (v, _) in enumerate(layout.loads) if v.dtype in HOST_SIGS and v not in hooked)


def row_params(layout: RowLayout) -> list[tuple[str, str]]:
    nk, nr = len(layout.kept), len(layout.group.dims)
    p: list[tuple[str, str]] = []
    for i, (v, mode) in enumerate(layout.loads):
        if i in layout.host:
            p.append((f"ld{i}_val", HOST_SIGS[v.dtype]))
            continue
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


def work_dtype(node: Node) -> torch.dtype:
    """The dtype a reduction accumulates in (a split reduction's partials too)."""
    if node.op == "sum":
        return compute_dtype(node.out.dtype)
    return torch.int32 if node.inputs[0].dtype == torch.bool else compute_dtype(node.inputs[0].dtype)


def partial_dtypes(layout: RowLayout) -> list[torch.dtype]:
    """The dtypes of a split reduction's partial buffers: one per tile reduction (`tile_reductions`)."""
    return [work_dtype(n) for n in tile_reductions(layout.group)]


class _RowEmitter:
    def __init__(self, layout: RowLayout, looped: bool, int64: bool, stage: int = 0):
        self.L = layout
        self.looped = looped or stage == 1
        self.int64 = int64
        self.stage = stage  # 0: the whole group; 1, 2: a split reduction's partials, then their combine
        self.e = Emitter()
        self.rows: dict[Value, str] = {}   # row values, valid anywhere after their definition
        self.tiles: dict[Value, str] = {}  # tile values of the current chunk
        self.nk, self.nr = len(layout.kept), len(layout.group.dims)
        self.sweeps: Sweeps = row_sweeps(layout.group) if self.looped else Sweeps()
        self.done: set[Node] = set()        # nodes emitted
        self.partials: dict[Node, str] = {}  # stage 1: each tile reduction's partial row (work dtype)

    # -- loads and nodes --------------------------------------------------------------------------
    def host_load(self, i: int, v: Value, block: str) -> str:
        """Load i passed by value (a host scalar), as a `block` of it."""
        return self.e.tmp(f"tl.broadcast_to({host_scalar(f'ld{i}_val', v.dtype)}, {block})", "x")

    def row_load(self, i: int, v: Value) -> str:
        e = self.e
        if i in self.L.host:
            return self.host_load(i, v, "[BM]")
        off = " + ".join([f"ld{i}_off"] + [f"{k} * ld{i}_k{d}" for d, k in enumerate(self.kidx)]) + " + rzero"
        x = e.tmp(f"tl.load(ld{i}_ptr + ({off}), mask=rmask, other=0)", "x")
        return self.up(x, v.dtype)

    def tile_load(self, i: int, v: Value) -> str:
        e = self.e
        if i in self.L.host:
            return self.host_load(i, v, "[BM, BR]")
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
        return work_dtype(node)

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
        if node.op in ROW_HOOKS:  # a reduction that spells itself, in no sweep (`pick`: a direct load)
            self.rows[node.out] = ROW_HOOKS[node.op](self, node)
            return
        e, wt = self.e, self.work_dtype(node)
        pad = self.pad(node, wt)
        if self.looped:
            return self.sweep(self.sweeps.sweep_of(node))
        t = e.tmp(f"tl.where(m2, {self.operand(node.inputs[0], True)}.to({tl_dtype(wt)}), {pad})", "a")
        self.rows[node.out] = bind_value(e, self.reduce_tile(node, t, wt), node.out.dtype)

    def sweep(self, nodes: list[Node]) -> None:
        """One loop over the row's chunks accumulating every reduction of the sweep in [BM, BR] lanes
        (ir/row_sweeps.py): plain ones, online softmax sums (a running max per lane, the sum rescaled
        when it grows) and Welford variances (count, mean, M2 per lane); then each reduced across lanes."""
        e = self.e
        acc: dict[Node, list[str]] = {}
        for n in nodes:
            wt = tl_dtype(self.work_dtype(n))
            form = self.sweeps.fused.get(n, ("plain",))[0]
            inits = {"plain": [self.pad(n, self.work_dtype(n))], "online": ["0"], "welford": ["0", "0", "0"]}[form]
            acc[n] = [e.tmp(f"tl.full([BM, BR], {v}, {wt})", "acc") for v in inits]
        self.chunk_loop()
        padded: dict[Node, str] = {}  # each plain reduction's tile this chunk (masked lanes: its identity)
        before: dict[Node, str] = {}  # an amax's lanes before this chunk (for the online sums rescaling)
        for n in nodes:
            wt = self.work_dtype(n)
            form, of = self.sweeps.fused.get(n, ("plain", None))
            if form == "plain":
                t = padded[n] = e.tmp(f"tl.where(m2, {self.operand(n.inputs[0], True)}.to({tl_dtype(wt)}), "
                                      f"{self.pad(n, wt)})", "a")
                (a,) = acc[n]
                if n.op == "sum":
                    e.line(f"{a} = {a} + {t}")
                else:
                    before[n] = e.tmp(a, "old")
                    cmp = ">" if n.op == "amax" else "<"
                    nan = f" | ({t} != {t})" if wt.is_floating_point else ""
                    e.line(f"{a} = tl.where(({t} {cmp} {a}){nan}, {t}, {a})")
            elif form == "online":  # s = s * exp(m_old - m) + exp(t - m), m the lane's running max
                (s,), (m,), t = acc[n], acc[of], padded[of]
                alpha = e.tmp(f"tl.where({m} == float('-inf'), 1.0, tl.exp({before[of]} - {m}))", "al")
                e.line(f"{s} = {s} * {alpha} + tl.where({m} == float('-inf'), 0.0, tl.exp({t} - {m}))")
            else:  # welford: count, mean and M2 per lane
                (cnt, mean, sq), t = acc[n], padded[of]  # (`m2` in the text: the chunk's mask)
                e.line(f"{cnt} = {cnt} + m2.to({tl_dtype(wt)})")
                delta = e.tmp(f"{t} - {mean}", "dl")
                e.line(f"{mean} = {mean} + tl.where(m2, {delta} / tl.maximum({cnt}, 1.0), 0.0)")
                e.line(f"{sq} = {sq} + tl.where(m2, {delta} * ({t} - {mean}), 0.0)")
        self.end_loop()
        for n in nodes:
            wt = self.work_dtype(n)
            form, of = self.sweeps.fused.get(n, ("plain", None))
            if form == "plain":
                r = self.reduce_tile(n, acc[n][0], wt)
                if self.stage == 1:
                    self.partials[n] = r
            elif form == "online":  # lanes rescaled to the row's max; a row of -inf is NaN, as eager's
                (s,), (m,) = acc[n], acc[of]
                big = self.rows[of.out]
                w = e.tmp(f"tl.where({m} == float('-inf'), 0.0, {s} * tl.exp({m} - {big}[:, None]))", "w")
                r = e.tmp(f"tl.reduce({w}, 1, tl.standard._sum_combine)", "r")
                r = e.tmp(f"tl.where({big} == float('-inf'), float('nan'), {r})", "r")
            else:  # lanes combined (Chan et al.): M2 = sum(M2_l + n_l * (mean_l - mean)^2)
                cnt, mean, sq = acc[n]
                total = e.tmp(f"tl.maximum(tl.reduce({cnt}, 1, tl.standard._sum_combine), 1.0)", "nt")
                mu = e.tmp(f"tl.reduce({cnt} * {mean}, 1, tl.standard._sum_combine) / {total}", "mu")
                dev = e.tmp(f"{mean} - {mu}[:, None]", "dv")
                r = e.tmp(f"tl.reduce({sq} + {cnt} * {dev} * {dev}, 1, tl.standard._sum_combine)", "r")
            self.rows[n.out] = bind_value(e, r, n.out.dtype)
            self.done.add(n)

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
        if self.stage == 1:  # the program's split: RC columns from c_lo (the last one masked past R)
            e.line("for c0 in range(0, RC, BR):")
            e.indent += 1
            self.columns("c_lo + c0 + cols0")
            return
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

    def node(self, node: Node) -> None:
        """Emit `node` where the kernel reaches it (once)."""
        if node in self.done:
            return
        self.done.add(node)
        if get_op(node.op).kind == "reduction":
            (self.total if self.L.is_row(node.inputs[0]) else self.reduction)(node)
        elif node.op == "reshape":  # between spellings of a row: the same [BM] values
            self.rows[node.out] = self.operand(node.inputs[0], False)
        elif self.L.is_row(node.out):
            self.rows[node.out] = self.pointwise(node, False)
        # tile nodes are computed on demand, inside the loop (or block) that needs them

    def emit(self) -> str:
        e = self.e
        self.kidx = emit_rows(e, self.nk, self.int64)
        if self.stage == 2:
            return self.combine()
        e.line(f"cols0 = tl.arange(0, BR){'.to(tl.int64)' if self.int64 else ''}")
        if self.stage == 1:
            e.line(f"c_lo = tl.program_id(1){'.to(tl.int64)' if self.int64 else ''} * RC")
        if not self.looped:
            self.columns("cols0")
        else:  # row values that need no reduction first: a sweep of reductions met earlier may read them
            for node in self.L.group.nodes:
                if get_op(node.op).kind != "reduction" and self.L.is_row(node.out) \
                        and reduction_free(self.L.group, node):
                    self.node(node)
        for node in self.L.group.nodes:
            if self.stage != 1 or get_op(node.op).kind == "reduction":
                self.node(node)
        if self.stage == 1:  # partial rows of this program's split, stored [S, M]
            for k, n in enumerate(tile_reductions(self.L.group)):
                e.line(f"tl.store(pt{k}_ptr + (tl.program_id(1) * M + rows), {self.partials[n]}, mask=rmask)")
            return e.text()
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
        self.store_rows(values)
        return e.text()

    def store_rows(self, values: list[str]) -> None:
        e = self.e
        for j, (v, value) in enumerate(zip(self.L.row_outputs, values)):
            # A one-element output (a loss) is written once, by row 0; rows go to their own places.
            row = " + ".join([f"{k} * ro{j}_k{d}" for d, k in enumerate(self.kidx)] + ["rzero"])
            where, mask = ("rzero", "rows == 0") if v.type.numel == 1 else (f"({row})", "rmask")
            e.line(f"tl.store(ro{j}_ptr + {where}, {store_cast(e, value, v.dtype)}, mask={mask})")

    def combine(self) -> str:
        """Stage 2 of a split reduction: each tile reduction's S partials of a row ([S, M] buffers)
        combined as the reduction combines (NaN propagated by amax/amin), then the row epilogue."""
        e = self.e
        e.line("sidx = tl.arange(0, BS)")
        e.line("pm = rmask[:, None] & (sidx < S)[None, :]")
        for k, n in enumerate(tile_reductions(self.L.group)):
            wt = self.work_dtype(n)
            p = e.tmp(f"tl.load(pt{k}_ptr + (sidx[None, :] * M + rows[:, None]), mask=pm, other=0)", "p")
            p = e.tmp(f"tl.where(pm, {p}.to({tl_dtype(wt)}), {self.pad(n, wt)})", "p")
            self.rows[n.out] = bind_value(e, self.reduce_tile(n, p, wt), n.out.dtype)
            self.done.add(n)
        for node in self.L.group.nodes:
            self.node(node)
        self.store_rows([self.operand(v, False) for v in self.L.row_outputs])
        return e.text()


def emit_row(layout: RowLayout, looped: bool, int64: bool = False, stage: int = 0) -> Kernel:
    """The row kernel of `layout`; `stage` 1 or 2: the two kernels of its split reduction (`splittable`)."""
    source, params = row_source(layout, looped, int64, stage)
    ops = layout.group.ops
    prefix = ("row_", "row_split_", "row_combine_")[stage]
    return make_kernel(prefix + "_".join(dict.fromkeys(ops))[:40], source, "row", ops, params)


def row_source(layout: RowLayout, looped: bool, int64: bool = False,
               stage: int = 0) -> tuple[str, list[tuple[str, str]]]:
    """The row kernel's module text (its function named KERNEL) and parameters: `emit_row`'s, which
    codegen/multi_row.py also inlines as one member of a multi-row kernel."""
    body = _RowEmitter(layout, looped, int64, stage).emit()
    params = row_params(layout)
    if stage:  # partial buffers [S, M] in each tile reduction's work dtype, before (M, R, BM, BR)
        partials = [(f"pt{k}_ptr", ptr_sig(dt)) for k, dt in enumerate(partial_dtypes(layout))]
        if stage == 1:
            params = params[:-4] + partials + params[-4:] + [("RC", "constexpr")]
        else:  # (M, R, BM) and the partials' block BS in place of BR
            params = params[:-4] + partials + [("S", "int")] + params[-4:-1] + [("BS", "constexpr")]
    params = params + interp_params(body)
    source = with_combines(render(params, body), [get_op(n.op).combine for n in layout.group.nodes
                                                  if get_op(n.op).kind == "scan"])
    return source, params


def splittable(layout: RowLayout) -> bool:
    """Can the group run as a split reduction (stage 1: programs over slices of the row writing
    partial results; stage 2: their combine and the row epilogue)? When its reductions all share the
    first sweep as plain reductions (none needs another's result: `row_sweeps`), it stores no tiles,
    takes no error flag, holds no scan and no reduction across rows (`whole` only when it has one row)."""
    g = layout.group
    one_row = all(d in g.dims or s == 1 for d, s in enumerate(g.shape))  # `whole` says nothing more then
    if (g.whole and not one_row) or layout.tile_outputs or row_checked(layout) or not tile_reductions(g):
        return False
    kinds = [get_op(n.op).kind for n in g.nodes]
    if "scan" in kinds or kinds.count("reduction") != len(tile_reductions(g)):
        return False
    sweeps = row_sweeps(g)
    return len(sweeps.order) == 1 and not sweeps.fused and len(tile_reductions(g)) == len(sweeps.order[0])


# Interpreted, a program pays ~0.1 ms of Triton's Python frontend per statement it runs (each loop
# iteration again) whatever its block, plus numpy work on its tiles: few programs and chunks win, up
# to tiles of INTERP_TILE elements (past that numpy's temporaries leave the cache). Measured on the
# (0, 2, 3) sum of a [64, 32, 8, 8] tensor (32 rows of 4096): 8 programs of [4, 4096] 28 ms, 2 of
# [16, 4096] 9.4 ms, 1 of [32, 4096] 11.6 ms.
INTERP_TILE = 1 << 16


def launch_config(m: int, r: int, whole: bool, target: str, column: bool = False,
                  split: bool = False) -> LaunchConfig:
    """BR elements of a row per step (the whole row when it fits ROW_BLOCK_LIMIT, else chunks of a
    looped kernel), BM rows per program. A `whole` group reduces across rows too, so one program
    holds them all (the partition checked they fit). A GPU takes 1024-element chunks and [BM, BR]
    tiles of 4096 elements; the interpreter takes tiles of INTERP_TILE, rows first (fewer programs),
    and chunks as long as the rows left room for (fewer loop iterations) up to ROW_BLOCK_LIMIT: a
    looped row always spans several chunks (tests/test_fusion.py runs the loop on short batches).

    `column` (a GPU, `group_config`): the kept dims are the innermost, so BM runs along contiguous
    memory: [COLUMN_BM, 4096 / COLUMN_BM] tiles, looped whenever a row is longer than BR (the kernel
    is looped exactly when R > BR). `split`: the group may run as a split reduction (`split_plan`);
    its config then has grid (programs, splits) and RC, the columns of each split."""
    if not interpreted(target):
        if column and not whole:
            bm = min(pow2(m), COLUMN_BM)
            br = max(1, min(pow2(r), 4096 // bm))
        else:
            br = 1024 if r > ROW_BLOCK_LIMIT else pow2(r)
            bm = pow2(m) if whole else max(1, min(pow2(m), 4096 // br))
    elif r > ROW_BLOCK_LIMIT:  # looped (the emitter's choice, shared with the cost model)
        br = min(ROW_BLOCK_LIMIT, max(1024, INTERP_TILE // pow2(m)))
        bm = max(1, min(pow2(m), INTERP_TILE // br))
    else:
        br = pow2(r)
        bm = pow2(m) if whole else max(1, min(pow2(m), INTERP_TILE // br))
    if split:
        s, rc, sbr = split_plan(cdiv(m, bm), min(m, bm), r, br, target)
        if s > 1:
            return LaunchConfig((cdiv(m, bm), s), {"BM": bm, "BR": sbr, "RC": rc})
    return LaunchConfig((cdiv(m, bm),), {"BM": bm, "BR": br})


# Column reductions on a GPU (a bias gradient: the sum over dim 0 of [M, N]): rows of the tile run
# along N, contiguous, COLUMN_BM of them (128 x 4 bytes: a warp's 16-byte vectors cover 512 bytes).
COLUMN_BM = 128

# Split reductions: a launch of fewer programs than SPLIT_PROGRAMS[target] over rows of at least
# SPLIT_MIN_R elements also splits each row into slices (stage 1: partial results [S, M]; stage 2:
# their combine and the row epilogue), so `x.sum()` fills a GPU instead of streaming on one SM. Two
# programs per SM of the largest GPU planned for (codegen/targets.py: 132 SMs); each program reduces
# at least SPLIT_MIN_WORK elements. The interpreter pays per program: it never splits (0), except
# in tests that lower these to take the path on CPU.
SPLIT_PROGRAMS = {"cpu": 0, "cuda": 2 * 132}
SPLIT_MIN_R = 2048
SPLIT_MIN_WORK = 16384


def split_plan(programs: int, rows: int, r: int, br: int, target: str) -> tuple[int, int, int]:
    """(splits S, columns per split RC, chunk BR) for a launch of `programs` programs of `rows` rows
    each over rows of `r` elements, chunks of `br` (S = 1: no split). RC is a multiple of BR: every
    chunk but the last split's is whole (its loop runs RC columns, masked past R)."""
    want = SPLIT_PROGRAMS[target]
    if programs >= want or r < SPLIT_MIN_R:
        return 1, r, br
    s = min(cdiv(want, programs), r // cdiv(SPLIT_MIN_WORK, rows))
    if s < 2:
        return 1, r, br
    br = min(br, 1 << (cdiv(r, s).bit_length() - 1))
    rc = cdiv(cdiv(r, s), br) * br
    return cdiv(r, rc), rc, br


def combine_config(config: LaunchConfig, m: int, target: str) -> LaunchConfig:
    """Stage 2 of a split reduction (`config` is stage 1's): [BM, BS] blocks of the S partials."""
    bs = pow2(config.grid[1])
    bm = max(1, min(pow2(m), (INTERP_TILE if interpreted(target) else 4096) // bs))
    return LaunchConfig((cdiv(m, bm),), {"BM": bm, "BS": bs}, config.num_warps)


def group_config(group: KernelGroup, target: str, shaped: bool = True) -> LaunchConfig | None:
    """The launch config of row group `group` (None: no rows). `shaped`: column tiles and splits
    where they apply (a multi-row member takes the plain config: codegen/multi_row.py)."""
    m = math.prod(s for d, s in enumerate(group.shape) if d not in group.dims)
    r = math.prod(group.shape[d] for d in group.dims)
    if not m:
        return None
    if not shaped:
        return launch_config(m, r, group.whole, target)
    layout = row_layout(group)
    simple = splittable(layout)  # one sweep of plain reductions, no tiles stored: looped costs nothing more
    column = simple and len(group.shape) - 1 not in group.dims
    return launch_config(m, r, group.whole, target, column, simple)
