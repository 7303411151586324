"""Fusion: partition a graph into kernel groups (`ir.KernelGroup`), one generated kernel each.

Greedy, in topological order: each node starts a group of its own and is merged into the groups of
its producers when the kinds fit (see `_fused_kind`) and the merge is legal. Legality is acyclicity of
the group graph: merging A and B is refused when a path leads from one to the other through a third
group (networkx reachability). Nothing is duplicated, so no work is recomputed, except 0-dim `full`
scalars, which every kernel inlines as literals.

Rules:
- pointwise nodes join a producer's pointwise group of the same iteration shape (or a smaller shape
  whose values are used only inside the group: they become broadcasts);
- a `sum`/`amax`/`amin` turns a pointwise group over its input shape into a "row" group (prologue),
  and joins a row group over the same shape and dims; pointwise nodes whose shape is a tile or a row
  of a row group join it (epilogue), so softmax, layernorm and cross-entropy become one kernel;
  so do smaller tiles broadcast along leading dims that only the group reads (a half LayerNorm
  weight's convert), and `pick` (cross-entropy's target logit, loaded directly: its x stays a group
  input, `_gathers_computed_input`);
- pointwise nodes over a matmul's output shape join its group (epilogue: bias, activation, residual);
- gathers (`GATHER_OPS`: ir/ops/index.py, and the window ops of ir/ops/window.py) start pointwise
  groups that take epilogues but never their inputs' producers; a window op joins a sibling window
  op over the same input (max_pool's value and index), and leaves a pointwise node whose value a
  reduction reads to that reduction's row group (`_row_prologue_to_window`);
- after the greedy pass, a smaller-shape pointwise group joins the pointwise group that alone reads
  it, once that group is whole (`_absorb_broadcasts`).
"""

from __future__ import annotations

import math

import networkx as nx

from ..ir import Graph, Node, Value, get_op
from ..ir.kernel_group import ROW_BLOCK_LIMIT, WHOLE_BLOCK_LIMIT, KernelGroup, pow2
from ..ir.ops.index import GATHER_OPS as INDEX_GATHERS
from ..ir.ops.reduction import reduced_shape
from ..ir.ops.window import WINDOW_OPS

# Generator ops that load their inputs at other elements than their own (gathers, window ops).
GATHER_OPS = INDEX_GATHERS | WINDOW_OPS
ROW_REDUCTIONS = ("sum", "amax", "amin")
MAX_GROUP_NODES = 64  # bounds the size of one generated kernel


def inlined_scalar(v: Value, users: dict[Value, list[Node]], outputs: set[Value]) -> bool:
    """0-dim `full` constants used only by pointwise nodes are literals in the kernels that use them."""
    p = v.producer
    return (p is not None and p.op == "full" and v.type.rank == 0 and v not in outputs
            and all(get_op(u.op).kind == "pointwise" for u in users.get(v, [])))


def row_shapes(shape: tuple[int, ...], dims: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(keepdim shape, squeezed shape) of a row of `shape` reduced over `dims`."""
    return reduced_shape(shape, dims, True), reduced_shape(shape, dims, False)


def _start(node: Node) -> KernelGroup:
    op = get_op(node.op)
    if op.kind == "pointwise" or (op.kind == "constant" and node.out.type.rank > 0 and node.op == "full") \
            or node.op in GATHER_OPS:  # gathers: generator ops of the pointwise emitter
        return KernelGroup("pointwise", [node], shape=node.out.shape)
    if node.op == "pick" or (node.op in ROW_REDUCTIONS
                             and math.prod(node.inputs[0].shape[d] for d in node.attrs["dims"]) > 1):
        return KernelGroup("row", [node], shape=node.inputs[0].shape, dims=tuple(sorted(node.attrs["dims"])))
    if op.kind in ("matmul", "conv"):
        return KernelGroup(op.kind, [node], shape=node.out.shape)
    if op.kind == "attention":  # one flash kernel, no epilogue (codegen/attention.py); shape: its first output's
        return KernelGroup("attention", [node], shape=node.outputs[0].shape)
    if op.kind == "scan":  # its own kernel (codegen/scan.py), or a row group's tile op (`_scan_in_row`)
        return KernelGroup("scan", [node], shape=node.out.shape, dims=(node.attrs["dim"],) if node.out.shape else ())
    kinds = {"reduction": "reduction", "scatter": "scatter", "layout": "layout", "extern": "extern"}
    kind = kinds.get(op.kind, "constant")
    return KernelGroup(kind, [node], shape=node.outputs[0].shape)


class _Partitioner:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.users = graph.users()
        self.outputs = set(graph.outputs)
        self.group_of: dict[Node, KernelGroup] = {}
        self.dag = nx.DiGraph()
        self.order = {n: i for i, n in enumerate(graph.nodes)}

    # -- legality ---------------------------------------------------------------------------------
    def _can_merge(self, a: KernelGroup, b: KernelGroup) -> bool:
        """Merging is legal when no path joins a and b through a third group (it would become a cycle)."""
        for src, dst in ((a, b), (b, a)):
            for succ in self.dag.successors(src):
                if succ is not dst and nx.has_path(self.dag, succ, dst):
                    return False
        return len(a.nodes) + len(b.nodes) <= MAX_GROUP_NODES

    def _used_only_inside(self, group: KernelGroup, other: KernelGroup) -> bool:
        inside = set(group.nodes) | set(other.nodes)
        return all(v not in self.outputs and all(u in inside for u in self.users.get(v, []))
                   for n in group.nodes for v in n.outputs)

    def _fused_kind(self, a: KernelGroup, b: KernelGroup) -> tuple[str, tuple, tuple] | None:
        """(kind, shape, dims) of a ∪ b, or None when one kernel cannot run both."""
        kinds = {a.kind, b.kind}
        if self._gathers_computed_input(a, b):
            return None
        if kinds == {"pointwise"} and self._row_prologue_to_window(a, b):
            return None
        if kinds == {"pointwise"}:
            if a.shape == b.shape:
                return "pointwise", a.shape, ()
            for small, big in ((a, b), (b, a)):
                if _broadcasts_to(small.shape, big.shape) and self._used_only_inside(small, big):
                    return "pointwise", big.shape, ()
            return None
        if "row" in kinds and kinds <= {"row", "pointwise", "layout"}:
            row, other = (a, b) if a.kind == "row" else (b, a)
            members = set(row.nodes) | set(other.nodes)
            if other.kind == "row" and (other.shape, other.dims) == (row.shape, row.dims):
                return None if self._tile_misreads_row(row, members) else ("row", row.shape, row.dims)
            if all(self._row_member(row, n, members) for n in other.nodes) \
                    and not self._tile_misreads_row(row, members):
                return "row", row.shape, row.dims
            if other.kind == "row" and all(self._row_member(other, n, members) for n in row.nodes) \
                    and not self._tile_misreads_row(other, members):
                return "row", other.shape, other.dims
            return None
        if kinds in ({"matmul", "pointwise"}, {"conv", "pointwise"}):  # a GEMM and its epilogue
            mm, pw = (a, b) if a.kind != "pointwise" else (b, a)
            if any(n.op in GATHER_OPS or get_op(n.op).emit_checks for n in pw.nodes):
                return None  # only the pointwise emitter runs emit hooks; only it and rows take a flag
            matmul = next(n for n in mm.nodes if get_op(n.op).kind == mm.kind)
            if any(v.producer in pw.nodes for v in matmul.inputs):
                return None  # a producer of the operands: the kernel has epilogues, not prologues
            if all(v.shape == mm.shape for n in pw.nodes for v in n.outputs):
                return mm.kind, mm.shape, ()
        return None

    @staticmethod
    def _gathers_computed_input(a: KernelGroup, b: KernelGroup) -> bool:
        """Would a gather of a ∪ b read a value the union computes? Its emit hook loads its table and
        indices from memory at other elements than the group's own (ir/ops/index.py)."""
        members = set(a.nodes) | set(b.nodes)
        return any(v.producer in members for n in members if n.op in GATHER_OPS for v in n.inputs) or any(
            n.inputs[0].producer in members for n in members if n.op == "pick")  # pick loads x (its index is a row)

    def _row_prologue_to_window(self, a: KernelGroup, b: KernelGroup) -> bool:
        """Would a window op's group (ir/ops/window.py) take pointwise nodes whose values a row
        reduction reads? They stay out, to be that reduction's prologue, where sibling reductions of
        one value share a kernel (the ReLU and batch-norm backward after max_pool_backward); a window
        op cannot run in a row kernel."""
        for win, other in ((a, b), (b, a)):
            if any(n.op in WINDOW_OPS for n in win.nodes) and any(
                    u.op in ROW_REDUCTIONS for n in other.nodes if n.op not in WINDOW_OPS
                    for v in n.outputs for u in self.users.get(v, [])):
                return True
        return False

    def _row_member(self, row: KernelGroup, node: Node, members: set[Node]) -> bool:
        """Can `node` run inside row group `row` (whose nodes would be `members`)? Tiles and rows
        always; across rows only when the whole group fits one program (a loss's mean)."""
        keep, squeezed = row_shapes(row.shape, row.dims)
        rows = {keep, squeezed}
        kind = get_op(node.op).kind
        whole = _fits_one_program(row)
        if kind == "pointwise":
            if node.out.shape in rows | {row.shape} or (whole and node.out.type.numel == 1):
                return True
            # a smaller tile broadcast along leading dims (LayerNorm's half weight converted to float32):
            # computed on its broadcast tile load, when only the group's tiles read it (the row emitter
            # cannot evaluate it as a row)
            return _broadcasts_to(node.out.shape, row.shape) and node.out not in self.outputs \
                and all(u in members and u.out.shape not in rows for u in self.users.get(node.out, []))
        if node.op == "reshape":  # keepdim <-> squeezed spellings of one row are the same values
            # (never of the group's shape: where the row dims all have size 1, a keepdim row is spelled
            # like a tile, and the row emitter would take that tile for a row)
            shapes = {node.inputs[0].shape, node.out.shape}
            return row.shape not in shapes and (
                shapes <= rows or (whole and node.out.type.numel == 1 == node.inputs[0].type.numel))
        if kind == "scan":  # a tile op along the row's one dim
            return _scan_in_row(node) and node.inputs[0].shape == row.shape and row.dims == (node.attrs["dim"],)
        if node.op == "pick":  # a row's one element, loaded directly (ir/ops/cross_entropy.py)
            return node.inputs[0].shape == row.shape and tuple(node.attrs["dims"]) == row.dims
        if node.op in ROW_REDUCTIONS:
            x = node.inputs[0]
            if x.shape == row.shape:
                return tuple(sorted(node.attrs["dims"])) == row.dims
            # a reduction across all rows of a row value
            return whole and x.shape in rows and node.out.type.numel == 1
        return False

    @staticmethod
    def _tile_misreads_row(row: KernelGroup, members: set[Node]) -> bool:
        """A squeezed row value (its dims are the kept dims, in order) used by a tile node: torch
        broadcasts it along the *last* dims of the tile, the row kernel along the kept dims. They
        agree only when the kept dims are the last ones (a reduction over leading dims). Checked over
        the whole union, since the producer and the tile consumer may join in either order."""
        keep, squeezed = row_shapes(row.shape, row.dims)
        kept = [d for d in range(len(row.shape)) if d not in row.dims]
        if squeezed == keep or kept == list(range(len(row.shape) - len(kept), len(row.shape))):
            return False
        return any(get_op(n.op).kind == "pointwise" and n.out.shape == row.shape and any(
            v.producer in members and v.shape == squeezed and v.type.numel > 1 for v in n.inputs) for n in members)

    def _merge(self, a: KernelGroup, b: KernelGroup, fused: tuple) -> KernelGroup:
        if fused[0] == "row":
            b.whole = a.whole = a.whole or b.whole or any(
                n.out.type.numel == 1 and n.out.shape != fused[1] for n in a.nodes + b.nodes if n.outputs)
        a.kind, a.shape, a.dims = fused
        a.nodes += b.nodes
        for n in b.nodes:
            self.group_of[n] = a
        nx.contracted_nodes(self.dag, a, b, self_loops=False, copy=False)
        return a

    # -- driver -----------------------------------------------------------------------------------
    def run(self) -> list[KernelGroup]:
        for node in self.graph.nodes:
            if len(node.outputs) == 1 and inlined_scalar(node.out, self.users, self.outputs):
                continue
            group = _start(node)
            if group.kind == "scan" and _scan_in_row(node):
                group.kind = "row"  # fuses with its pointwise prologue and epilogue (codegen/row.py)
            self.group_of[node] = group
            self.dag.add_node(group)
            producers = []
            for v in node.inputs:
                p = self.group_of.get(v.producer) if v.producer is not None else None
                if p is not None and p is not group and p not in producers:
                    producers.append(p)
                    self.dag.add_edge(p, group)
            if group.kind not in ("pointwise", "row") and node.op != "reshape":
                continue
            # Join producers: reductions and matmuls first, so epilogues attach to them.
            for p in sorted(producers, key=lambda g: g.kind == "pointwise"):
                fused = self._fused_kind(p, group)
                if fused is not None and self._can_merge(p, group):
                    group = self._merge(p, group, fused)
            if node.op in WINDOW_OPS:
                group = self._join_window_sibling(node, group)
            if group.kind == "row" and get_op(node.op).kind == "scan":
                group = self._join_scan_sibling(node, group)
            if group.kind == "row":
                self._absorb_producers(group)
        self._absorb_broadcasts()
        return self._finish()

    def _absorb_broadcasts(self) -> None:
        """A pointwise group of a smaller shape joins the pointwise group that alone reads it, as a
        broadcast, once that group is whole: the greedy pass met it while its reader was still in
        pieces (a loss's per-row cotangent, read by both terms of cross-entropy's gradient)."""
        for g in list(self.dag.nodes):
            if g.kind != "pointwise" or g not in self.dag:
                continue
            for p in list(self.dag.predecessors(g)):
                if p in self.dag and p.kind == "pointwise" and p.shape != g.shape \
                        and self._fused_kind(p, g) is not None and self._can_merge(p, g):
                    self._merge(g, p, ("pointwise", g.shape, ()))

    def _join_window_sibling(self, node: Node, group: KernelGroup) -> KernelGroup:
        """A window op joins the group of a window op over the same input and output shape (max_pool's
        value and index: one kernel, whose emit hooks share one window loop, ir/ops/window.py)."""
        for u in self.users.get(node.inputs[0], []):
            s = self.group_of.get(u)
            if u is not node and u.op in WINDOW_OPS and s is not None and s is not group \
                    and u.out.shape == node.out.shape and self._fused_kind(s, group) is not None \
                    and self._can_merge(s, group):
                return self._merge(s, group, ("pointwise", s.shape, ()))
        return group

    def _join_scan_sibling(self, node: Node, group: KernelGroup) -> KernelGroup:
        """A scan joins the row group of a scan of the same input over the same rows (cummax's values
        and indices are two IR scans: one kernel)."""
        for u in self.users.get(node.inputs[0], []):
            s = self.group_of.get(u)
            if u is not node and get_op(u.op).kind == "scan" and s is not None and s is not group \
                    and s.kind == "row" and self._fused_kind(s, group) == ("row", group.shape, group.dims) \
                    and self._can_merge(s, group):
                return self._merge(s, group, ("row", s.shape, s.dims))
        return group

    def _absorb_producers(self, group: KernelGroup) -> None:
        """Pull row-shaped producers (a target index, its reshape) into a row group as prologue."""
        changed = True
        while changed:
            changed = False
            for p in list(self.dag.predecessors(group)):
                members = set(group.nodes) | set(p.nodes)
                if p.kind in ("pointwise", "layout") and all(self._row_member(group, n, members) for n in p.nodes) \
                        and not self._tile_misreads_row(group, members) and not self._gathers_computed_input(group, p) \
                        and self._can_merge(group, p):
                    self._merge(group, p, ("row", group.shape, group.dims))
                    changed = True

    def _finish(self) -> list[KernelGroup]:
        first = {g: min(self.order[n] for n in g.nodes) for g in self.dag.nodes}
        groups = list(nx.lexicographical_topological_sort(self.dag, key=lambda g: first[g]))
        for g in groups:
            g.nodes.sort(key=self.order.__getitem__)
            members = set(g.nodes)
            seen: set[Value] = set()
            for n in g.nodes:
                for v in n.inputs:
                    if v in seen:
                        continue
                    seen.add(v)
                    if v.producer is not None and inlined_scalar(v, self.users, self.outputs):
                        g.scalars.append(v.producer)
                    elif v.producer not in members:
                        g.inputs.append(v)
            g.outputs = [v for n in g.nodes for v in n.outputs
                         if v in self.outputs or any(u not in members for u in self.users.get(v, []))]
        return groups


def _scan_in_row(node: Node) -> bool:
    """A scan runs as a tile op of a row kernel when the row kernel holds its rows whole (persistent:
    the scan needs every earlier column of the row in the same block)."""
    shape = node.out.shape
    return node.out.type.numel > 0 and bool(shape) and 1 < shape[node.attrs["dim"]] <= ROW_BLOCK_LIMIT


def _fits_one_program(row: KernelGroup) -> bool:
    kept = math.prod(s for d, s in enumerate(row.shape) if d not in row.dims)
    r = math.prod(row.shape[d] for d in row.dims)
    return r <= ROW_BLOCK_LIMIT and pow2(kept) * pow2(r) <= WHOLE_BLOCK_LIMIT


def _broadcasts_to(small: tuple[int, ...], big: tuple[int, ...]) -> bool:
    if len(small) > len(big):
        return False
    return all(s in (1, b) for s, b in zip(small[::-1], big[::-1]))


def partition(graph: Graph) -> list[KernelGroup]:
    """Kernel groups of `graph` in an order that respects every data dependence."""
    return _Partitioner(graph).run()


def singleton_groups(graph: Graph) -> list[KernelGroup]:
    """One group per node: each op as its own kernel (what eager execution launches)."""
    users, outputs = graph.users(), set(graph.outputs)
    groups = []
    for n in graph.nodes:
        if len(n.outputs) == 1 and inlined_scalar(n.out, users, outputs):
            continue
        g = _start(n)
        if g.kind == "row" and n.op != "pick":  # a lone reduction runs on the plain reduction kernel
            g.kind = "reduction"
        g.scalars = [v.producer for v in dict.fromkeys(n.inputs)
                     if v.producer is not None and inlined_scalar(v, users, outputs)]
        g.inputs = [v for v in dict.fromkeys(n.inputs) if v.producer not in g.scalars]
        g.outputs = list(n.outputs)
        groups.append(g)
    return groups
