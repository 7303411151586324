"""Planning: walk an IR graph once per input layout and decide buffers, views and kernel launches.

All sizes and strides are known here (input strides come from the call that triggers planning),
so each launch's runtime args are fixed except for the buffer pointers, which the executor fills
in. Layout ops only produce views; kernels are emitted per op (groups of one node, plus inlined
0-dim `full` scalars) and deduplicated by source.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from .. import codegen
from ..codegen.emitter import INT32_LIMIT
from ..codegen.pointwise import PointwiseGroup
from ..ir import Graph, Node, TensorType, Value, get_op
from ..ir.kernel_group import ROW_BLOCK_LIMIT, KernelGroup
from ..passes.fusion import partition, singleton_groups
from ..passes.gradient_markers import strip_gradient_markers
from . import views as V
from .progress import Progress
from .views import View


@dataclass(frozen=True)
class Buf:
    """Placeholder in launch args for the tensor of buffer `index`."""

    index: int


@dataclass
class BufSpec:
    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: str  # "input" | "alloc" | "extern"


@dataclass
class LaunchStep:
    kernel: codegen.Kernel
    ops: list[str]
    grid: tuple[int, ...]
    args: list
    constexprs: dict[str, Any]

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


@dataclass
class Plan:
    bufs: list[BufSpec] = field(default_factory=list)
    steps: list[LaunchStep | ExternStep] = field(default_factory=list)
    outputs: list[View] = field(default_factory=list)

    @property
    def launches(self) -> list[LaunchStep]:
        return [s for s in self.steps if isinstance(s, LaunchStep)]


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def _wide(numel: int, views: list[View]) -> bool:
    return numel > INT32_LIMIT or any(v.extent() > INT32_LIMIT for v in views)


class Planner:
    def __init__(self, graph: Graph, input_strides: list[tuple[int, ...]], device: torch.device, fuse: bool = True):
        self.graph = graph
        self.fuse = fuse
        self.device = device
        self.cpu = device.type == "cpu"
        self.plan = Plan()
        self.views: dict[Value, View] = {}
        self.users = graph.users()
        self.graph_outputs = set(graph.outputs)
        for v, strides in zip(graph.inputs, input_strides):
            self.views[v] = View(self._buf(v.shape, v.dtype, "input"), 0, v.shape, tuple(strides))

    # -- helpers ----------------------------------------------------------------------------------
    def _buf(self, shape, dtype, kind: str) -> int:
        self.plan.bufs.append(BufSpec(tuple(shape), dtype, kind))
        return len(self.plan.bufs) - 1

    def _alloc(self, shape, dtype) -> View:
        shape = tuple(shape)
        return View(self._buf(shape, dtype, "alloc"), 0, shape, V.contiguous_strides(shape))

    def _alloc_value(self, v: Value) -> View:
        """A buffer for `v` laid out for its consumer: a value only read through one permute (attention's
        heads merged back by transpose + reshape) is stored so that the permuted view is contiguous,
        which keeps the reshape after it a view instead of a copy kernel."""
        users = self.users.get(v, [])
        if v in self.graph_outputs or len(users) != 1 or users[0].op != "permute":
            return self._alloc(v.shape, v.dtype)
        dims = users[0].attrs["dims"]
        permuted = self._alloc(users[0].out.shape, v.dtype)
        strides = [0] * len(dims)
        for i, d in enumerate(dims):
            strides[d] = permuted.strides[i]
        return View(permuted.buf, 0, v.shape, tuple(strides))

    @staticmethod
    def _ptr(v: View) -> tuple:
        return (Buf(v.buf), v.offset, v.strides)

    def _launch(self, kernel: codegen.Kernel, ops: list[str], grid, args, constexprs) -> None:
        codegen.kernel.record_spec(kernel, [a.index if isinstance(a, Buf) else a for a in args], constexprs)
        self.plan.steps.append(LaunchStep(kernel, ops, tuple(grid), args, constexprs))

    def _inlined_scalar(self, v: Value) -> bool:
        p = v.producer
        return p is not None and p.op == "full" and v.type.rank == 0

    # -- kernels ----------------------------------------------------------------------------------
    def pointwise(self, group: PointwiseGroup) -> None:
        out_views = [self._alloc_value(v) for v in group.outputs]
        for v, view in zip(group.outputs, out_views):
            self.views[v] = view
        numel = out_views[0].numel
        if numel == 0:
            return
        in_views = [self.views[v] for v in group.inputs]
        kernel = codegen.emit_pointwise(group, _wide(numel, in_views + out_views))
        block = min(max(_pow2(numel), 16), 4096 if self.cpu else 1024)
        args = codegen.pointwise_args(group, [self._ptr(v) for v in in_views], [self._ptr(v) for v in out_views])
        self._launch(kernel, group.ops, ((numel + block - 1) // block,), args, {"BLOCK": block})

    def copy(self, view: View, dtype: torch.dtype, label: str) -> View:
        """Materialize `view` contiguously with a pointwise copy kernel."""
        src = Value(TensorType(view.shape, dtype))
        node = Node("copy", [src], {}, [src.type])
        self.views[src] = view
        self.pointwise(PointwiseGroup([node], [src], [node.out], view.shape, label=[label]))
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

    # -- nodes ------------------------------------------------------------------------------------
    def run(self) -> Plan:
        with Progress("fusion"):
            groups = (partition if self.fuse else singleton_groups)(self.graph)
        with Progress("codegen: kernel group", len(groups)) as progress:
            for i, group in enumerate(groups, 1):
                progress.update(i, group.kind)
                getattr(self, f"group_{group.kind}")(group)
        self.plan.outputs = [self.torch_view(v) for v in self.graph.outputs]
        return self.plan

    # -- groups (one kernel each; layout groups are usually views) ---------------------------------
    def group_pointwise(self, g: KernelGroup) -> None:
        self.pointwise(PointwiseGroup(g.scalars + g.nodes, g.inputs, g.outputs, g.shape))

    def group_row(self, g: KernelGroup) -> None:
        layout = codegen.row_layout(g)
        for v in layout.tile_outputs + layout.row_outputs:
            self.views[v] = self._alloc(v.shape, v.dtype)
        kept = [g.shape[d] for d in layout.kept]
        red = [g.shape[d] for d in g.dims]
        m, r = math.prod(kept), math.prod(red)
        if m == 0:
            return
        args: list = []
        loads = [self.views[v] for v, _ in layout.loads]
        for (v, mode), view in zip(layout.loads, loads):
            ks, rs = codegen.row_load_strides(layout, v, mode, view.strides)
            args += [Buf(view.buf), view.offset] + ks + (rs if mode == "tile" else [])
        for v in layout.tile_outputs:
            st = self.views[v].strides
            args += [Buf(self.views[v].buf)] + [st[d] for d in layout.kept] + [st[d] for d in g.dims]
        args += [Buf(self.views[v].buf) for v in layout.row_outputs]
        args += kept + red + [m, r]
        looped = r > ROW_BLOCK_LIMIT
        br = 1024 if looped else _pow2(r)
        # A whole group reduces across rows too, so one program holds them all (the partition
        # checked they fit); otherwise a program takes as many rows as fit 4096 elements.
        bm = _pow2(m) if g.whole else max(1, min(_pow2(m), (16384 if self.cpu else 4096) // br))
        kernel = codegen.emit_row(layout, looped, _wide(m * r, loads + [self.views[v] for v in g.outputs]))
        self._launch(kernel, g.ops, ((m + bm - 1) // bm,), args, {"BM": bm, "BR": br})

    def group_matmul(self, g: KernelGroup) -> None:
        if len(g.nodes) == 1:
            return self.node_matmul(g.nodes[0])
        mm = next(n for n in g.nodes if n.op == "matmul")
        tail = [n for n in g.nodes if n is not mm]
        loads = [v for v in g.inputs if any(v in n.inputs for n in tail)]
        ep = codegen.MatmulEpilogue(mm.out, tail, loads, list(g.outputs), list(g.scalars))
        a, b, out = self.views[mm.inputs[0]], self.views[mm.inputs[1]], mm.out
        out_views = [self._alloc_value(v) for v in ep.outputs]
        for v, view in zip(ep.outputs, out_views):
            self.views[v] = view
        if out.type.numel == 0:
            return
        batch = out.shape[:-2]
        m, n, k = out.shape[-2], out.shape[-1], a.shape[-1]
        nb = out.type.numel // (m * n)
        loads = [self.views[v] for v in ep.loads]
        kernel = codegen.emit_matmul(out.dtype, len(batch), _wide(out.type.numel, [a, b] + loads + out_views), ep)
        args = codegen.matmul_group_args(self._ptr(a), a.shape, self._ptr(b), b.shape,
                                         [self._ptr(v) for v in loads], [v.shape for v in loads],
                                         [(Buf(v.buf), v.strides) for v in out_views], batch)
        self._launch_matmul(kernel, g.ops, m, n, k, nb, args)

    def group_reduction(self, g: KernelGroup) -> None:
        self.node_reduction(g.nodes[0])

    def group_layout(self, g: KernelGroup) -> None:
        self.node_layout(g.nodes[0])

    def group_extern(self, g: KernelGroup) -> None:
        self.node_extern(g.nodes[0])

    def group_constant(self, g: KernelGroup) -> None:
        self.node_constant(g.nodes[0])

    def node_pointwise(self, node: Node) -> None:
        consts = [v.producer for v in dict.fromkeys(node.inputs) if self._inlined_scalar(v)]
        inputs = [v for v in dict.fromkeys(node.inputs) if not self._inlined_scalar(v)]
        self.pointwise(PointwiseGroup(consts + [node], inputs, [node.out], node.out.shape))

    def node_constant(self, node: Node) -> None:
        self.pointwise(PointwiseGroup([node], [], [node.out], node.out.shape))

    def node_layout(self, node: Node) -> None:
        a, out = node.attrs, node.out
        if node.op == "cat":
            inputs = [v for v in node.inputs if v.shape[a["dim"]] > 0]
            node = Node("cat", inputs, a, [out.type]) if len(inputs) != len(node.inputs) else node
            if not inputs:
                self.views[out] = self._alloc(out.shape, out.dtype)
                return
            self.pointwise(PointwiseGroup([node], list(dict.fromkeys(inputs)), [node.out], out.shape))
            self.views[out] = self.views[node.out]
            return
        x = self.views[node.inputs[0]]
        if node.op == "reshape":
            view = V.reshape(x, a["shape"])
            if view is None:  # not expressible as strides: copy contiguously, then view
                view = V.reshape(self.copy(x, out.dtype, "reshape"), a["shape"])
        elif node.op == "permute":
            view = V.permute(x, a["dims"])
        elif node.op == "expand":
            view = V.expand(x, a["shape"])
        elif node.op == "slice":
            view = V.slice_(x, a["dim"], a["start"], a["end"], a["step"])
        elif node.op == "select":
            view = V.select(x, a["dim"], a["index"])
        elif node.op == "flip":
            view = V.flip(x, a["dims"])
        else:
            raise NotImplementedError(f"layout op {node.op}")
        self.views[out] = view

    def node_reduction(self, node: Node) -> None:
        x, out = self.views[node.inputs[0]], node.out
        opdef = get_op(node.op)
        if node.op in ("argmax", "argmin"):
            dim = node.attrs.get("dim")
            dims = tuple(range(len(x.shape))) if dim is None else (dim,)
        else:
            dims = tuple(sorted(node.attrs.get("dims", ())))
        view = self._alloc(out.shape, out.dtype)
        self.views[out] = view
        m = view.numel
        if m == 0:
            return
        r = 1
        for d in dims:
            r *= x.shape[d]
        rmax = 1024
        br = min(_pow2(max(r, 1)), rmax)
        bm = max(1, min(_pow2(m), 4096 // br))
        nk, nr = len(x.shape) - len(dims), len(dims)
        kernel = codegen.emit_reduction(node.op, opdef.combine, node.inputs[0].dtype, out.dtype, nk, nr, r > rmax,
                                        _wide(m * r, [x]))
        args = codegen.reduction_args(self._ptr(x), x.shape, dims, Buf(view.buf))
        self._launch(kernel, [node.op], ((m + bm - 1) // bm,), args,
                     {"BM": bm, "BR": br, "LOG2": br.bit_length() - 1})

    def node_matmul(self, node: Node) -> None:
        a, b, out = self.views[node.inputs[0]], self.views[node.inputs[1]], node.out
        view = self._alloc_value(out)
        self.views[out] = view
        if view.numel == 0:
            return
        batch = out.shape[:-2]
        m, n, k = out.shape[-2], out.shape[-1], a.shape[-1]
        nb = view.numel // (m * n)
        kernel = codegen.emit_matmul(out.dtype, len(batch), _wide(view.numel, [a, b, view]))
        args = codegen.matmul_args(self._ptr(a), a.shape, self._ptr(b), b.shape, (Buf(view.buf), view.strides), batch)
        self._launch_matmul(kernel, ["matmul"], m, n, k, nb, args)

    def _launch_matmul(self, kernel, ops: list[str], m: int, n: int, k: int, nb: int, args: list) -> None:
        blk = lambda s, hi: min(max(_pow2(s), 16), hi)
        # The interpreter pays per program instance: on CPU, large tiles; on a GPU, tiles that fit SRAM.
        hi = (256, 256, 256) if self.cpu else (64, 64, 32)
        bm, bn, bk = blk(m, hi[0]), blk(n, hi[1]), blk(k, hi[2])
        prec = "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
        grid = (((m + bm - 1) // bm) * ((n + bn - 1) // bn), nb)
        self._launch(kernel, ops, grid, args, {"BM": bm, "BN": bn, "BK": bk, "PREC": prec, "INTERP": self.cpu})

    def node_extern(self, node: Node) -> None:
        # torch saw contiguous tensors there when tracing, except at `strided` positions: internal ops
        # (`_embedding_bag_forward_only`) rely on their caller's `.contiguous()`, which the IR drops.
        strided = node.attrs.get("strided", ())
        ins = [self.torch_view(v) if i in strided else self.contiguous_view(v) for i, v in enumerate(node.inputs)]
        outs = [self._buf(v.shape, v.dtype, "extern") for v in node.outputs]
        for v, b in zip(node.outputs, outs):
            self.views[v] = View(b, 0, v.shape, V.contiguous_strides(v.shape))
        unused = frozenset(k for k, v in enumerate(node.outputs)
                           if not self.users.get(v) and v not in self.graph_outputs)
        self.plan.steps.append(ExternStep(node, ins, outs, unused))

    def node_composite(self, node: Node) -> None:
        raise ValueError(f"composite op {node.op} reached the runtime: run ember.passes.run_pipeline first")


def build_plan(graph: Graph, input_strides: list[tuple[int, ...]], device: torch.device, fuse: bool = True) -> Plan:
    """`fuse=False` runs every op as its own kernel (the unfused baseline). Gradient markers
    (`stop_gradient`, ...) matter only to autodiff: dropped here, they cost nothing."""
    return Planner(strip_gradient_markers(graph), input_strides, device, fuse).run()
