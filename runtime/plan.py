"""Planning: turn the schedule into buffers, views and kernel launches for one input layout.

All sizes and strides are known here (input strides come from the call that triggers planning), so
each launch's runtime args are fixed except for the buffer pointers, which the executor fills in.
The schedule (runtime/schedule.py) decides the groups, their order and their launch configs; the
planner adds what depends on the layout: views for layout ops, the kernels' index width, and copy
kernels where a value must be contiguous (extern inputs, graph outputs, reshapes strides cannot
express). Each step records the views it reads and writes, so donation can be checked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import codegen
from ..codegen import attention as attention_codegen
from ..codegen import multi, multi_row, pointwise, reduction
from ..codegen import row as row_codegen
from ..codegen import scan as scan_codegen
from ..codegen.emitter import INT32_LIMIT
from ..codegen.launch import LaunchConfig
from ..codegen.pointwise import PointwiseGroup
from ..ir import Node, TensorType, Value, get_op
from ..ir.kernel_group import ROW_BLOCK_LIMIT, KernelGroup
from ..ir.ops.index import GATHER_OPS as INDEX_GATHERS
from ..ir.ops.window import WINDOW_OPS
from ..ir.registry import is_view
from ..passes.cost import storage_root
from . import autotune, cat_slots
from . import views as V
from .progress import Progress
from .schedule import Schedule, reduction_dims
from .views import View

# Generator ops that load their inputs at other elements than their own (gathers, window ops).
GATHER_OPS = INDEX_GATHERS | WINDOW_OPS


@dataclass(frozen=True)
class Buf:
    """Placeholder in launch args for the tensor of buffer `index`."""

    index: int


@dataclass(frozen=True)
class Host:
    """Placeholder in launch args for element `element` of the host-held input buffer `index` (compile_ir's
    `host`): the executor passes its value (a Python float), read once per call."""

    index: int
    element: int


@dataclass
class BufSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: str  # "input" | "alloc" | "extern" | "flag" (the kernels' error flag: zeroed, read after the run)
    base: int = -1   # "alias": elements of buffer `base` from `offset` on (a cat piece's slice, cat_slots.py)
    offset: int = 0


@dataclass
class LaunchStep:
    kernel: codegen.Kernel
    ops: list[str]
    grid: tuple[int, ...]
    args: list
    constexprs: dict[str, Any]
    num_warps: int = 4
    entry: int | None = None  # the schedule entry it runs; None: a copy the layout needed
    reads: list[View] = field(default_factory=list)
    writes: list[View] = field(default_factory=list)
    # a launch of a "multi" entry: (member index, reads, writes) of each member it runs (the programs of
    # a member touch only these)
    parts: list[tuple[int, list[View], list[View]]] = field(default_factory=list)
    num_stages: int | None = None  # pipelining stages on a GPU (a matmul's config); None: GPU_OPTIONS'
    split_stage: int = 0  # 1, 2: the partials or the combine of a split reduction (passes/cost.py split_costs)

    @property
    def name(self) -> str:
        return self.kernel.name

    @property
    def source(self) -> str:
        return self.kernel.source


@dataclass
class ExternStep:
    node: Node
    inputs: list[View]
    outputs: list[int]  # buffer indices
    # Outputs nothing reads: their shape may differ from the meta kernel's (`_embedding_bag_forward_only`
    # returns an empty offset2bag in sum mode), so the executor does not check them.
    unused: frozenset[int] = frozenset()
    entry: int | None = None


@dataclass
class Plan:
    bufs: list[BufSpec] = field(default_factory=list)
    steps: list[LaunchStep | ExternStep] = field(default_factory=list)
    outputs: list[View] = field(default_factory=list)
    # donated (output, input) pairs the kernels could not store in place: the executor copies them
    copies: list[tuple[int, int]] = field(default_factory=list)
    # the kernels' error flag (a buffer index, or None) and the steps before which it is read
    flag: int | None = None
    flag_checks: frozenset[int] = frozenset()
    # host-held input buffers (compile_ir's `host`), and whether a step reads one of them through a
    # pointer (then the executor copies it to the device per call) rather than only by value (`Host`)
    host: frozenset[int] = frozenset()
    host_pointer: bool = False

    @property
    def launches(self) -> list[LaunchStep]:
        return [s for s in self.steps if isinstance(s, LaunchStep)]


# A kernel's linear element index runs up to a block past numel (its masked lanes): in int32 it must
# not wrap, or a wrapped (negative) index would pass the `< numel` mask. No block exceeds this margin.
INDEX_MARGIN = 2**20


def _wide(numel: int, views: list[View]) -> bool:
    """64-bit index math: the element index (plus a block) or a view's extent passes int32."""
    return numel + INDEX_MARGIN > INT32_LIMIT or any(v.extent() > INT32_LIMIT for v in views)


class Planner:
    def __init__(self, schedule: Schedule, input_strides: list[tuple[int, ...]], device: torch.device,
                 in_place: frozenset[int] = frozenset()):
        self.schedule = schedule
        self.graph = graph = schedule.graph
        self.device = device
        self.target = "cpu" if device.type == "cpu" else "cuda"
        self.plan = Plan()
        self.views: dict[Value, View] = {}
        self.users = graph.users()
        self.graph_outputs = set(graph.outputs)
        self.entry: int | None = None  # the schedule entry being planned
        for v, strides in zip(graph.inputs, input_strides):
            self.views[v] = View(self._buf(v.shape, v.dtype, "input"), 0, v.shape, tuple(strides))
        self.plan.host = frozenset(self.views[graph.inputs[j]].buf for j in schedule.host)
        # donated outputs tried in place (`in_place`): each value their buffers hold -> the input index
        self.donated = {v: j for k, j in schedule.donate.items() if k in in_place
                        for v in _view_chain(graph.outputs[k])}
        # values stored straight into their slice of a cat's buffer (runtime/cat_slots.py)
        self.cat_slots = cat_slots.cat_slots(graph, set(self.donated))
        self.cat_outs: dict[Node, View] = {}

    # -- helpers ----------------------------------------------------------------------------------
    def _buf(self, shape, dtype, kind: str) -> int:
        self.plan.bufs.append(BufSpec(tuple(shape), dtype, kind))
        return len(self.plan.bufs) - 1

    def _flag(self) -> Buf:
        """The plan's one error flag (an int32 zeroed per call) that every checking kernel raises to its
        code (ir/ops/index.py INDEX_ERRORS): one allocation and one read however many kernels check."""
        if self.plan.flag is None:
            self.plan.flag = self._buf((1,), torch.int32, "flag")
        return Buf(self.plan.flag)

    def _alloc(self, shape, dtype) -> View:
        shape = tuple(shape)
        return View(self._buf(shape, dtype, "alloc"), 0, shape, V.contiguous_strides(shape))

    def _alloc_value(self, v: Value) -> View:
        """A buffer for `v` laid out for its consumer: a value only read through one permute (attention's
        heads merged back by transpose + reshape) is stored so that the permuted view is contiguous,
        which keeps the reshape after it a view instead of a copy kernel. A donated output is stored
        in its input's memory when that input is dense."""
        donated = self._donated(v)
        if donated is not None:
            return donated
        slotted = self._slotted(v)
        if slotted is not None:
            return slotted
        users = self.users.get(v, [])
        if v in self.graph_outputs or len(users) != 1 or users[0].op != "permute":
            return self._alloc(v.shape, v.dtype)
        dims = users[0].attrs["dims"]
        permuted = self._alloc(users[0].out.shape, v.dtype)
        strides = [0] * len(dims)
        for i, d in enumerate(dims):
            strides[d] = permuted.strides[i]
        return View(permuted.buf, 0, v.shape, tuple(strides))

    def _donated(self, v: Value) -> View | None:
        """The memory of the input `v` is donated to, when `v` can be stored there as it is laid out."""
        j = self.donated.get(v)
        if j is None or self.graph.inputs[j].dtype != v.dtype:
            return None
        x = self.views[self.graph.inputs[j]]
        if x.shape == v.shape and x.dense():  # the input's own layout (channels-last weights too)
            return x
        if x.offset == 0 and x.strides == V.contiguous_strides(x.shape) and x.numel == v.type.numel:
            return View(x.buf, 0, v.shape, V.contiguous_strides(v.shape))  # a reshape of it
        return None

    def _slotted(self, v: Value) -> View | None:
        """`v`'s place in the buffer of the cat it is a piece of (cat_slots.py), as a view without
        offset (matmul and row kernels store without one): an alias buffer starts at the slice."""
        slot = self.cat_slots.get(v)
        if slot is None:
            return None
        if slot.cat not in self.cat_outs:
            self.cat_outs[slot.cat] = self._alloc_value(slot.cat.out)
        view = cat_slots.piece_view(slot, self.cat_outs[slot.cat])
        if view is None or view.offset == 0:
            return view
        spec = self.plan.bufs[view.buf]
        alias = View(-1, 0, view.shape, view.strides)
        alias = View(self._buf((alias.extent() + 1,), spec.dtype, "alias"), 0, view.shape, view.strides)
        base = cat_slots.resolve(self.plan.bufs, View(view.buf, view.offset, (), ()))
        self.plan.bufs[alias.buf].base, self.plan.bufs[alias.buf].offset = base.buf, base.offset
        return alias

    @staticmethod
    def _ptr(v: View) -> tuple:
        return (Buf(v.buf), v.offset, v.strides)

    def _host(self, v: View) -> Host | None:
        """`v` as a host scalar: a single element (broadcast or not) of a host-held input."""
        if v.buf in self.plan.host and all(n == 1 or st == 0 for n, st in zip(v.shape, v.strides)):
            return Host(v.buf, v.offset)
        return None

    def _pointwise_host(self, group: PointwiseGroup, ins: list[View]) -> tuple[frozenset[int], list[tuple]]:
        """(inputs `group` takes by value, the (pointer object, offset, strides) of each input)."""
        host = frozenset(i for i in pointwise.hostable(group) if self._host(ins[i]))
        return host, [(self._host(v), None, None) if i in host else self._ptr(v) for i, v in enumerate(ins)]

    def _launch(self, kernel: codegen.Kernel, ops: list[str], config: LaunchConfig, args, reads: list[View],
                writes: list[View], **constexprs) -> None:
        constexprs = {**config.constexprs, **constexprs}
        if any(n == "INTERP" for n, _ in kernel.params):  # a GPU-only spelling inside (codegen/emitter.py)
            constexprs.setdefault("INTERP", self.target == "cpu")
        codegen.kernel.record_spec(kernel, [a.index if isinstance(a, Buf) else a for a in args], constexprs)
        self.plan.steps.append(LaunchStep(kernel, ops, config.grid, args, constexprs, config.num_warps,
                                          self.entry, list(reads), list(writes), num_stages=config.num_stages))

    # -- kernels ----------------------------------------------------------------------------------
    def pointwise(self, group: PointwiseGroup, config: LaunchConfig | None) -> None:
        out_views = [self._alloc_value(v) for v in group.outputs]
        for v, view in zip(group.outputs, out_views):
            self.views[v] = view
        if config is None:
            return
        in_views = [self.views[v] for v in group.inputs]
        host, ins = self._pointwise_host(group, in_views)
        kernel = codegen.emit_pointwise(group, _wide(out_views[0].numel, in_views + out_views), host)
        flag = self._flag() if pointwise.checked(group) else None
        args = codegen.pointwise_args(group, ins, [self._ptr(v) for v in out_views], flag, host)
        self._launch(kernel, group.ops, config, args, in_views, out_views)

    def copy(self, view: View, dtype: torch.dtype, label: str) -> View:
        """Materialize `view` contiguously with a pointwise copy kernel (not in the schedule: it depends
        on the layout)."""
        src = Value(TensorType(view.shape, dtype))
        node = Node("copy", [src], {}, [src.type])
        self.views[src] = view
        entry, self.entry = self.entry, None
        config = pointwise.launch_config(view.numel, self.target) if view.numel else None
        self.pointwise(PointwiseGroup([node], [src], [node.out], view.shape, label=[label]), config)
        self.entry = entry
        return self.views[node.out]

    def torch_view(self, v: Value) -> View:
        """A view torch can represent (non-negative strides), copying if needed."""
        view = self.views[v]
        return view if view.torch_viewable() else self.copy(view, v.dtype, "copy")

    def contiguous_view(self, v: Value) -> View:
        view = self.views[v]
        if all(st == c for n, st, c in zip(view.shape, view.strides, V.contiguous_strides(view.shape)) if n != 1):
            return view
        return self.copy(view, v.dtype, "copy")

    # -- groups: one schedule entry each (layout groups are usually views) --------------------------
    def run(self) -> Plan:
        entries = self.schedule.entries
        with Progress("codegen: kernel group", len(entries)) as progress:
            for i, entry in enumerate(entries, 1):
                progress.update(i, entry.kind)
                self.entry = entry.index
                getattr(self, f"group_{entry.kind}")(entry.group, entry.config)
        self.entry = None
        self.plan.outputs = [self.torch_view(v) for v in self.graph.outputs]
        self.plan.flag_checks = _flag_checks(self.plan, len(self.graph.inputs))
        self.plan.host_pointer = _host_pointer(self.plan)
        return self.plan

    def group_pointwise(self, g: KernelGroup, config: LaunchConfig | None) -> None:
        self.pointwise(PointwiseGroup(g.scalars + g.nodes, g.inputs, g.outputs, g.shape), config)

    group_constant = group_pointwise

    def group_multi(self, g: KernelGroup, config: LaunchConfig | None) -> None:
        """Members the multi-tensor kernel can address (codegen/multi.py: contiguous, 32-bit indices)
        share launches of at most `multi.MAX_PARAMS` parameters; the others run as pointwise kernels.
        Each launch lists its members (index in `g.members`, reads, writes) in `parts`."""
        if g.members[0].kind == "row":
            return self._multi_row(g, config)
        members = [PointwiseGroup(m.scalars + m.nodes, m.inputs, m.outputs, m.shape) for m in g.members]
        for m in members:
            for v in m.outputs:
                self.views[v] = self._alloc_value(v)
        if config is None:
            return
        flat, alone = [], []
        for i, m in enumerate(members):
            ins, outs = [self.views[v] for v in m.inputs], [self.views[v] for v in m.outputs]
            numel = math.prod(m.shape)
            if numel and multi.addressable(m, [v.strides for v in ins], [v.strides for v in outs]) \
                    and not _wide(numel, ins + outs):
                flat.append((i, ins, outs))
            elif numel:
                alone.append((i, ins, outs))
        block = config.constexprs["BLOCK"]
        shared_by = lambda part: [len({ins[k].buf for _, ins, _ in part}) == 1 for k in range(len(part[0][1]))]
        chunks = multi.chunks(len(flat), multi.params_per_member(members[flat[0][0]], shared_by(flat)),
                              sum(shared_by(flat))) if len(flat) > 1 else [range(len(flat))]
        for chunk in ([flat[k] for k in part] for part in chunks):
            if len(chunk) < 2:
                alone += chunk
                continue
            template, shared = members[chunk[0][0]], shared_by(chunk)
            hostable = pointwise.hostable(template)
            host = [k in hostable and all(self._host(ins[k]) for _, ins, _ in chunk) for k in range(len(shared))]
            kernel = multi.emit_multi(template, len(chunk), shared, host)
            args, programs = multi.multi_args(
                template, [([(self._host(v), None) if host[k] else (Buf(v.buf), v.offset) for k, v in enumerate(ins)],
                            [(Buf(v.buf), v.offset) for v in outs], math.prod(members[i].shape))
                           for i, ins, outs in chunk], shared, block, host)
            self._launch(kernel, template.ops, LaunchConfig((programs,), {"BLOCK": block}, config.num_warps), args,
                         [v for _, ins, _ in chunk for v in ins], [v for _, _, outs in chunk for v in outs])
            self.plan.steps[-1].parts = chunk
        for i, ins, outs in alone:
            m, numel = members[i], math.prod(members[i].shape)
            host, in_args = self._pointwise_host(m, ins)
            kernel = codegen.emit_pointwise(m, _wide(numel, ins + outs), host)
            args = codegen.pointwise_args(m, in_args, [self._ptr(v) for v in outs], None, host)
            self._launch(kernel, m.ops, pointwise.launch_config(numel, self.target), args, ins, outs)
            self.plan.steps[-1].parts = [(i, ins, outs)]

    def group_row(self, g: KernelGroup, config: LaunchConfig | None) -> None:
        layout = self._row_outputs(g)
        if config is None:
            return
        args, loads, outs, looped, wide = self._row_args(g, layout)
        if "RC" in config.constexprs:
            return self._split_row(g, layout, config, args, loads, outs, wide)
        looped = looped or math.prod(g.shape[d] for d in g.dims) > config.constexprs["BR"]  # column tiles
        self._launch(codegen.emit_row(layout, looped, wide), g.ops, config, args, loads, outs)

    def _split_row(self, g: KernelGroup, layout: codegen.RowLayout, config: LaunchConfig, args: list,
                   loads: list[View], outs: list[View], wide: bool) -> None:
        """A split reduction (codegen/row.py `split_plan`): stage 1's programs (row block, split) store
        each tile reduction's partial rows in an [S, M] buffer of its work dtype; stage 2 combines them
        and runs the row epilogue, reading only the row loads and the partials."""
        m, s = math.prod(g.shape[d] for d in layout.kept), config.grid[1]
        parts = [self._alloc((s, m), dt) for dt in row_codegen.partial_dtypes(layout)]
        bufs = [Buf(v.buf) for v in parts]
        self._launch(codegen.emit_row(layout, True, wide, 1), g.ops, config, args[:-2] + bufs + args[-2:],
                     loads, parts)
        self.plan.steps[-1].split_stage = 1
        rows = [view for (_, mode), view in zip(layout.loads, loads) if mode == "row"]
        combine = row_codegen.combine_config(config, m, self.target)
        self._launch(codegen.emit_row(layout, False, wide, 2), g.ops, combine, args[:-2] + bufs + [s] + args[-2:],
                     rows + parts, outs)
        self.plan.steps[-1].split_stage = 2

    def _row_outputs(self, g: KernelGroup) -> codegen.RowLayout:
        layout = codegen.row_layout(g)
        for v in layout.tile_outputs:  # laid out for a consumer permute as `_alloc_value` does (not donated)
            self.views[v] = self._alloc(v.shape, v.dtype) if v in self.donated else self._alloc_value(v)
        for v in layout.row_outputs:  # stored through strides, after every load (codegen/row.py)
            self.views[v] = self._alloc_value(v)
        return layout

    def _row_args(self, g: KernelGroup, layout: codegen.RowLayout) -> tuple[list, list[View], list[View], bool, bool]:
        """(runtime args, views loaded, views stored, looped, 64-bit indices) of row group `g`'s kernel."""
        kept = [g.shape[d] for d in layout.kept]
        red = [g.shape[d] for d in g.dims]
        m, r = math.prod(kept), math.prod(red)
        args: list = []
        loads = [self.views[v] for v, _ in layout.loads]
        layout.host = frozenset(i for i in row_codegen.hostable(layout) if self._host(loads[i]))
        for i, ((v, mode), view) in enumerate(zip(layout.loads, loads)):
            if i in layout.host:
                args.append(self._host(view))
                continue
            ks, rs = codegen.row_load_strides(layout, v, mode, view.strides)
            args += [Buf(view.buf), view.offset] + ks + (rs if mode == "tile" else [])
        for v in layout.tile_outputs:
            st = self.views[v].strides
            args += [Buf(self.views[v].buf)] + [st[d] for d in layout.kept] + [st[d] for d in g.dims]
        for v in layout.row_outputs:
            view = self.views[v]
            args += [Buf(view.buf)] + codegen.row_load_strides(layout, v, "row", view.strides)[0]
        args += kept + red + ([self._flag()] if codegen.row_checked(layout) else [])
        args += [m, r]
        outs = [self.views[v] for v in g.outputs]
        return args, loads, outs, r > ROW_BLOCK_LIMIT, _wide(m * r, loads + outs)

    def _multi_row(self, g: KernelGroup, config: LaunchConfig | None) -> None:
        """Row members (codegen/multi_row.py) share launches of at most `multi_row.MAX_PARAMS`
        parameters, each member with its tiles of `config`; a launch left with one member runs the
        plain row kernel. Each launch lists its members (index, reads, writes) in `parts`."""
        layouts = [self._row_outputs(m) for m in g.members]
        if config is None:
            return
        members = []
        for k, (m, layout) in enumerate(zip(g.members, layouts)):
            args, loads, outs, looped, wide = self._row_args(m, layout)
            rows = math.prod(s for d, s in enumerate(m.shape) if d not in m.dims)
            members.append((k, (layout, looped, wide), args, loads, outs, multi_row.member_config(config, k, rows)))
        late = []
        if any(codegen.row_checked(layout) for layout in layouts):
            # An index error raises before the caller's state changes (`_flag_checks`: the flag is read
            # before each step storing into a caller's buffer): members storing there (donated inputs)
            # run after the launch, each its own row kernel.
            stores = lambda m: any(v.buf < len(self.graph.inputs) for v in m[4])
            late = [[m] for m in members if stores(m)]
            members = [m for m in members if not stores(m)]
        params = {m[0]: codegen.row_params(m[1][0]) for m in members}
        flag = Buf(self.plan.flag) if self.plan.flag is not None else None  # made by a checking member's args
        sizes = [multi_row.runtime_params(params[m[0]]) for m in members]
        for chunk in [[members[k] for k in part] for part in multi_row.chunks(sizes)] + late:
            if len(chunk) == 1:
                k, (layout, looped, wide), args, loads, outs, cfg = chunk[0]
                self._launch(codegen.emit_row(layout, looped, wide), g.members[k].ops, cfg, args, loads, outs)
            else:
                kernel = multi_row.emit_multi_row([c[1] for c in chunk])
                args, programs = multi_row.multi_row_args([params[c[0]] for c in chunk], [c[2] for c in chunk],
                                                          [c[5].grid[0] for c in chunk], flag)
                sub = multi_row.launch_config([c[5] for c in chunk])
                self._launch(kernel, kernel.ops, LaunchConfig((programs,), sub.constexprs, config.num_warps), args,
                             [v for c in chunk for v in c[3]], [v for c in chunk for v in c[4]])
            self.plan.steps[-1].parts = [(c[0], c[3], c[4]) for c in chunk]

    def group_scan(self, g: KernelGroup, config: LaunchConfig | None) -> None:
        node = g.nodes[0]
        x, out = self.views[node.inputs[0]], node.out
        view = self._alloc(out.shape, out.dtype)  # a scan reads other elements than it stores: no donation
        self.views[out] = view
        if config is None:
            return
        kernel = scan_codegen.emit_scan(node.op, get_op(node.op).combine, node.inputs[0].dtype, out.dtype,
                                        max(len(x.shape) - 1, 0), _wide(view.numel, [x, view]))
        args = scan_codegen.scan_args(self._ptr(x), self._ptr(view), x.shape, node.attrs["dim"])
        self._launch(kernel, [node.op], config, args, [x], [view])

    def group_matmul(self, g: KernelGroup, config: LaunchConfig | None) -> None:
        mm = next(n for n in g.nodes if n.op == "matmul")
        tail = [n for n in g.nodes if n is not mm]
        loads = [v for v in g.inputs if any(v in n.inputs for n in tail)]
        ep = codegen.MatmulEpilogue(mm.out, tail, loads, list(g.outputs), list(g.scalars)) if tail else None
        a, b, out = self.views[mm.inputs[0]], self.views[mm.inputs[1]], mm.out
        outputs = ep.outputs if ep else [out]
        out_views = [self._alloc_value(v) for v in outputs]
        for v, view in zip(outputs, out_views):
            self.views[v] = view
        if config is None:
            return
        batch = out.shape[:-2]
        load_views = [self.views[v] for v in loads]
        kernel = codegen.emit_matmul(out.dtype, len(batch), _wide(out.type.numel, [a, b] + load_views + out_views),
                                     *([ep] if ep else []))
        args = codegen.matmul_group_args(self._ptr(a), a.shape, self._ptr(b), b.shape,
                                         [self._ptr(v) for v in load_views], [v.shape for v in load_views],
                                         [(Buf(v.buf), v.strides) for v in out_views], batch)
        prec = "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
        if autotune.wanted(self.device):  # time the table's candidates on scratch buffers of this layout
            views = [a, b] + load_views + out_views
            sizes = {v.buf: (max(autotune.scratch_size(w.offset, w.shape, w.strides) for w in views
                                 if w.buf == v.buf), self.plan.bufs[v.buf].dtype) for v in views}
            bufs = autotune.scratch(sizes, self.device)
            config = autotune.tune_matmul(kernel, [bufs[x.index] if isinstance(x, Buf) else x for x in args],
                                          mm.out.shape[-2], mm.out.shape[-1], mm.inputs[0].shape[-1],
                                          math.prod(batch), out.dtype, self.device, {"PREC": prec, "INTERP": False})
        self._launch(kernel, g.ops, config, args, [a, b] + load_views, out_views, PREC=prec,
                     INTERP=self.target == "cpu")

    def group_conv(self, g: KernelGroup, config: LaunchConfig | None) -> None:
        node = next(n for n in g.nodes if get_op(n.op).kind == "conv")
        tail = [n for n in g.nodes if n is not node]
        loads = [v for v in g.inputs if any(v in n.inputs for n in tail)]
        ep = codegen.ConvEpilogue(node.out, tail, loads, list(g.outputs) if tail else [node.out], list(g.scalars))
        out_views = [self._alloc_value(v) for v in ep.outputs]
        for v, view in zip(ep.outputs, out_views):
            self.views[v] = view
        if config is None:
            return
        a, b = self.views[node.inputs[0]], self.views[node.inputs[1]]
        load_views = [self.views[v] for v in loads]
        # int64 index math on the interpreter too: it checks every int32 add and mul for overflow (the
        # gathers' index math is most of a conv kernel's statements), int64 ones not (3x faster)
        wide = self.target == "cpu" or _wide(node.out.type.numel, [a, b] + load_views + out_views)
        flat = codegen.conv.use_flat(node, self.target)  # the interpreter's variant for few channels
        kernel = codegen.emit_conv(node.op, node.out.dtype, ep, wide, flat)
        args = codegen.conv_args(node, self._ptr(a), self._ptr(b), [self._ptr(v) for v in load_views],
                                 [v.shape for v in load_views], [(Buf(v.buf), v.offset, v.strides) for v in out_views],
                                 flat)
        prec = "tf32" if self.target == "cuda" and torch.backends.cudnn.allow_tf32 else "ieee"
        self._launch(kernel, g.ops, config, args, [a, b] + load_views, out_views, PREC=prec,
                     INTERP=self.target == "cpu")

    def group_attention(self, g: KernelGroup, config: LaunchConfig | None) -> None:
        """A flash attention kernel, forward, dQ or dK/dV (codegen/attention.py): every operand and
        output through its offset and strides (a mask's broadcast dims get stride 0)."""
        node = g.nodes[0]
        outs = [self._alloc_value(v) for v in node.outputs]  # `_in_place` never stores it over an input
        for v, view in zip(node.outputs, outs):
            self.views[v] = view
        if config is None:
            return
        ins = [self.views[v] for v in node.inputs]
        q, k, v = node.inputs[:3]
        first_mask = 3 if node.op == "attention" else 6  # the mask follows the operands
        mask = node.inputs[first_mask] if len(node.inputs) > first_mask else None
        emit = attention_codegen.EMITTERS[node.op]
        kernel = emit(q.dtype, mask.dtype if mask is not None else None, node.attrs["is_causal"], node.attrs["scale"],
                      _wide(max(x.numel for x in ins + outs), ins + outs))
        args = attention_codegen.attention_args([(Buf(x.buf), x.offset, x.shape, x.strides) for x in ins],
                                                [(Buf(x.buf), x.offset, x.shape, x.strides) for x in outs],
                                                q.shape, k.shape, v.shape)
        prec = "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
        self._launch(kernel, [node.op], config, args, ins, outs, PREC=prec, INTERP=self.target == "cpu")

    def group_reduction(self, g: KernelGroup, config: LaunchConfig | None) -> None:
        node = g.nodes[0]
        x, out = self.views[node.inputs[0]], node.out
        dims = reduction_dims(node)
        view = self._alloc(out.shape, out.dtype)
        self.views[out] = view
        if config is None:
            return
        r = math.prod(x.shape[d] for d in dims)
        combine, wide = get_op(node.op).combine, _wide(view.numel * r, [x])
        shape = (node.op, combine, node.inputs[0].dtype, out.dtype, len(x.shape) - len(dims), len(dims))
        if "RC" in config.constexprs:  # a split reduction: partials [S, M], then their combine
            s, m = config.grid[1], view.numel
            wt = reduction.work_dtype(combine, node.inputs[0].dtype, out.dtype)
            parts = [self._alloc((s, m), wt)] + ([self._alloc((s, m), torch.int64)] if node.op in ("argmax", "argmin")
                                                 else [])
            bufs = [Buf(v.buf) for v in parts]
            args = codegen.reduction_args(self._ptr(x), x.shape, dims, None)
            self._launch(codegen.emit_reduction(*shape, True, wide, split=True), [node.op], config,
                         args[:-1] + bufs, [x], parts)
            self.plan.steps[-1].split_stage = 1
            self._launch(reduction.emit_combine(node.op, combine, node.inputs[0].dtype, out.dtype, wide), [node.op],
                         reduction.combine_config(config, m, self.target), bufs + [m, s, Buf(view.buf)], parts,
                         [view])
            self.plan.steps[-1].split_stage = 2
            return
        kernel = codegen.emit_reduction(*shape, r > config.constexprs["BR"], wide)  # loops when R > BR
        args = codegen.reduction_args(self._ptr(x), x.shape, dims, Buf(view.buf))
        self._launch(kernel, [node.op], config, args, [x], [view])

    def group_scatter(self, g: KernelGroup, config: LaunchConfig | None) -> None:
        """`segment_add`, `segment_write` (codegen/scatter.py): values seen as (dims before `dim`, dim,
        dims after), each side merged into one stride; a side whose strides do not merge is copied
        contiguous first."""
        node = g.nodes[0]
        dim, out = node.attrs["dim"], node.out
        view = self._alloc(out.shape, out.dtype)
        self.views[out] = view
        if config is None:
            return
        src, key, order = (self.views[v] for v in node.inputs[:3])  # (input 3, the unsorted keys: the VJP's)
        x = self.views[node.inputs[4]] if len(node.inputs) > 4 else None
        src, x = (v if v is None or _around(v, dim) else self.copy(v, out.dtype, "copy") for v in (src, x))
        a = math.prod(out.shape[:dim])
        b = math.prod(out.shape[dim + 1:])
        reads = [src, key, order] + ([x] if x is not None else [])
        kernel = codegen.emit_scatter(out.dtype, node.inputs[1].dtype, x is not None, node.attrs.get("init"),
                                      _wide(view.numel, reads + [view]), op=node.op)
        ptr3 = lambda v: (Buf(v.buf), v.offset, _around(v, dim))
        ptr1 = lambda v: (Buf(v.buf), v.offset, v.strides[0])
        args = codegen.scatter_args(ptr3(src), ptr1(key), ptr1(order), ptr3(x) if x is not None else None,
                                    ptr3(view), out.shape[dim], src.shape[dim], a, b)
        self._launch(kernel, g.ops, config, args, reads, [view])

    def group_layout(self, g: KernelGroup, config: LaunchConfig | None) -> None:
        node = g.nodes[0]
        a, out = node.attrs, node.out
        if node in self.cat_outs and all(  # every piece stored in its slice already: no kernel
                cat_slots.resolve(self.plan.bufs, self.views[v]).same_elements(
                    cat_slots.resolve(self.plan.bufs, cat_slots.piece_slice(node, k, self.cat_outs[node])))
                for k, v in enumerate(node.inputs) if v.type.numel):
            self.views[out] = self.cat_outs[node]
            return
        if not is_view(node.op):  # cat: a pointwise kernel of shifted loads (its registry emit hook)
            inputs = [v for v in node.inputs if v.shape[a["dim"]] > 0]
            if not inputs:
                self.views[out] = self._alloc(out.shape, out.dtype)
                return
            node = Node(node.op, inputs, a, [out.type]) if len(inputs) != len(node.inputs) else node
            self.pointwise(PointwiseGroup([node], list(dict.fromkeys(inputs)), [node.out], out.shape), config)
            self.views[out] = self.views[node.out]
            return
        x = self.views[node.inputs[0]]
        view = V.VIEW_RULES[node.op](x, a)
        if view is None:  # a reshape strides cannot express: copy contiguously, then view
            view = V.VIEW_RULES[node.op](self.copy(x, out.dtype, node.op), a)
        self.views[out] = view

    def group_extern(self, g: KernelGroup, config: LaunchConfig | None) -> None:
        node = g.nodes[0]
        # torch saw contiguous tensors there when tracing, except at `strided` positions: internal ops
        # (`_embedding_bag_forward_only`) rely on their caller's `.contiguous()`, which the IR drops.
        strided = node.attrs.get("strided", ())
        ins = [self.torch_view(v) if i in strided else self.contiguous_view(v) for i, v in enumerate(node.inputs)]
        outs = [self._buf(v.shape, v.dtype, "extern") for v in node.outputs]
        for v, b in zip(node.outputs, outs):
            self.views[v] = View(b, 0, v.shape, V.contiguous_strides(v.shape))
        unused = frozenset(k for k, v in enumerate(node.outputs)
                           if not self.users.get(v) and v not in self.graph_outputs)
        self.plan.steps.append(ExternStep(node, ins, outs, unused, self.entry))


def _around(view: View, dim: int) -> tuple[int, int, int] | None:
    """(stride of the dims before `dim`, of `dim`, of the dims after it) with each side merged into one
    dim (row-major), or None when a side's dims do not merge (the scatter kernel's view)."""
    def merged(shape, strides) -> int | None:
        dims = [(n, st) for n, st in zip(shape, strides) if n != 1]
        if any(s0 != s1 * n1 for (_, s0), (n1, s1) in zip(dims, dims[1:])):
            return None
        return dims[-1][1] if dims else 0
    before = merged(view.shape[:dim], view.strides[:dim])
    after = merged(view.shape[dim + 1:], view.strides[dim + 1:])
    return None if before is None or after is None else (before, view.strides[dim], after)


def _view_chain(v: Value) -> list[Value]:
    """`v` and the values it is a view of, down to the one a kernel stores (which is the one the
    planner allocates: the output itself when a kernel stores it through its reshape)."""
    chain = [v]
    while v.producer is not None and v is not storage_root(v):
        v = v.producer.inputs[0]
        chain.append(v)
    return chain


def _in_place(plan: Plan, k: int, j: int) -> bool:
    """Whether output k really is stored over input j safely: one launch writes buffer j, every other
    step reading it runs before, and the writer reads it only at the element it stores (a pointwise
    kernel, a matmul's epilogue, a row kernel's row outputs: each loads all it needs of an element
    before storing it; a row kernel stores its rows after everything else)."""
    writers = [i for i, s in enumerate(plan.steps) if isinstance(s, LaunchStep) and any(w.buf == j for w in s.writes)]
    if plan.outputs[k].buf != j or len(writers) != 1:
        return False
    w = writers[0]
    step = plan.steps[w]
    gemm = step.kernel.kind in ("matmul", "conv")
    operands = step.reads[:2] if gemm else []  # read at other elements than stored
    if GATHER_OPS.intersection(step.ops):  # a gather reads its table at other elements too
        operands = step.reads
    if step.kernel.kind not in ("pointwise", "matmul", "conv", "row", "multi") or any(v.buf == j for v in operands):
        return False
    reads = step.reads[len(operands):]
    if step.kernel.kind == "multi":  # members run in different programs: only the writer may touch buffer j
        parts = [r for _, r, w in step.parts if any(v.buf == j for v in r + w)]
        if len(parts) != 1:
            return False
        reads = parts[0]
    for i, s in enumerate(plan.steps):
        views = s.reads if isinstance(s, LaunchStep) else s.inputs
        if i > w and any(v.buf == j for v in views):
            return False
    written = [v for v in step.writes if v.buf == j]
    return len(written) == 1 and all(v.same_elements(written[0]) for v in reads if v.buf == j)


def _flag_checks(plan: Plan, n_inputs: int) -> frozenset[int]:
    """The steps before which the error flag is read: each step that writes a caller's buffer (a
    donated input) or calls torch, after a kernel with the flag ran, so an index out of range raises
    eager's error before any of the caller's state changes and before a torch op sees the index (it
    would raise its own error, or a later op's). The executor reads it once more after the run."""
    if plan.flag is None:
        return frozenset()
    checks, pending = set(), False
    for i, step in enumerate(plan.steps):
        launch = isinstance(step, LaunchStep)
        if pending and (not launch or any(v.buf < n_inputs for v in step.writes)):
            checks.add(i)
            pending = False
        pending = pending or (launch and Buf(plan.flag) in step.args)
    return frozenset(checks)


def step_buffers(step: LaunchStep | ExternStep) -> set[int]:
    """The buffers a step reads or writes: a launch's buffer arguments; an extern's input views and outputs."""
    if isinstance(step, ExternStep):
        return {v.buf for v in step.inputs} | set(step.outputs)
    return {a.index for a in step.args if isinstance(a, Buf)}


def _host_pointer(plan: Plan) -> bool:
    """Does any step (or an output) read a host-held input's memory rather than its values by `Host`?"""
    return bool(plan.host) and (any(plan.host & step_buffers(s) for s in plan.steps)
                                or any(v.buf in plan.host for v in plan.outputs))


def build_plan(schedule: Schedule, input_strides: list[tuple[int, ...]], device: torch.device) -> Plan:
    """The plan of `schedule` for inputs with these strides on `device`. Donated outputs are stored in
    their inputs' memory where that is safe (`_in_place`); the others are listed in `plan.copies`."""
    tried = frozenset(schedule.donate)
    while True:
        plan = Planner(schedule, input_strides, device, tried).run()
        unsafe = {k for k in tried if not _in_place(plan, k, schedule.donate[k])}
        if not unsafe:
            break
        tried -= unsafe
    plan.copies = [(k, j) for k, j in schedule.donate.items() if k not in tried]
    return plan


__all__ = ["Buf", "BufSpec", "ExternStep", "Host", "LaunchStep", "Plan", "build_plan", "step_buffers"]
