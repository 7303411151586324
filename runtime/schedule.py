"""The schedule: which kernels a graph runs, in which order, with which launch config, at what cost.

Computed once per compiled graph by the driver (runtime/driver.py) from the optimized graph (gradient
markers dropped: they cost nothing), it is the artifact the other stages read: the planner turns each
entry into launches for the inputs' layout, `explain` prints it, and `to_dict` makes it JSON for
saving. An entry is a fusion group (`passes.fusion`), its kind, the launch config its emitter chose
for the target (its `launch_config`; None for views and extern calls) and its cost (`passes/cost.py`).

Donation (`donate={output: input}`, JAX's `donate_argnums`): an output is stored in the memory of an
input the caller gives up. The order is then chosen so that every kernel reading the donated input
runs before the kernel that overwrites it, when the dependences allow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import networkx as nx

from ..codegen import attention, conv, matmul, multi, multi_row, pointwise, reduction, row, scatter
from ..codegen import scan as scan_codegen
from ..codegen.launch import LaunchConfig
from ..ir import Graph, Node, Value, get_op
from ..ir.kernel_group import KernelGroup
from ..ir.registry import is_view
from ..passes.cost import KernelCost, group_cost, storage_root
from ..passes.fusion import partition, singleton_groups
from ..passes.gradient_markers import strip_gradient_markers
from ..passes.horizontal import merge_horizontal


@dataclass
class Entry:
    """One kernel group of the schedule."""

    index: int
    group: KernelGroup
    config: LaunchConfig | None  # None: a view (no kernel), an extern call, or nothing to compute
    cost: KernelCost

    @property
    def kind(self) -> str:
        return self.group.kind

    @property
    def ops(self) -> list[str]:
        return [self.group.nodes[0].attrs["target"]] if self.kind == "extern" else self.group.ops


@dataclass
class Schedule:
    graph: Graph                 # the graph the entries index (markers stripped)
    target: str                  # codegen/launch.py TARGETS
    entries: list[Entry]
    donate: dict[int, int] = field(default_factory=dict)  # output index -> input index
    # inputs held on the host, whose single elements kernels take by value (runtime/plan.py `Host`)
    host: frozenset[int] = frozenset()

    @property
    def host_values(self) -> frozenset[Value]:
        """The host-held inputs as values (passes/cost.py `group_cost`'s `host`)."""
        return frozenset(self.graph.inputs[j] for j in self.host)

    @property
    def kernels(self) -> list[Entry]:
        """Entries that launch a generated kernel."""
        return [e for e in self.entries if e.config is not None]

    def __str__(self) -> str:
        lines = [f"schedule for {self.target}: {len(self.kernels)} kernel(s), "
                 f"{sum(e.kind == 'extern' for e in self.entries)} extern call(s)"]
        for e in self.entries:
            if e.config is not None or e.kind == "extern":
                what = "torch" if e.kind == "extern" else e.kind
                what += f" x{len(e.group.members)}" if e.group.members else ""  # tensors of one launch
                lines.append(f"  s{e.index} {what} {list(e.group.shape)} {', '.join(e.ops)}"
                             + (f"  [{e.config}]" if e.config else ""))
        return "\n".join(lines)

    # -- JSON --------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """Groups by node index and value name (the printed IR parses back with the same names)."""
        index = {n: i for i, n in enumerate(self.graph.nodes)}
        names = lambda vs: [v.name for v in vs]
        member = lambda m: {"kind": m.kind, "nodes": [index[n] for n in m.nodes],
                            "scalars": [index[n] for n in m.scalars], "inputs": names(m.inputs),
                            "outputs": names(m.outputs), "shape": list(m.shape), "dims": list(m.dims),
                            "whole": m.whole}
        return {"target": self.target, "donate": {str(k): j for k, j in self.donate.items()},
                "host": sorted(self.host),
                "entries": [{"kind": e.kind, "nodes": [index[n] for n in e.group.nodes],
                             "scalars": [index[n] for n in e.group.scalars], "inputs": names(e.group.inputs),
                             "outputs": names(e.group.outputs), "shape": list(e.group.shape),
                             "dims": list(e.group.dims), "whole": e.group.whole,
                             "members": [member(m) for m in e.group.members],
                             "config": e.config.to_dict() if e.config else None} for e in self.entries]}

    @staticmethod
    def from_dict(d: dict, graph: Graph) -> Schedule:
        """The schedule `to_dict` wrote, over `graph` (the same graph, e.g. parsed back from its text)."""
        values = {v.name: v for v in graph.inputs} | {v.name: v for n in graph.nodes for v in n.outputs}
        host = frozenset(d.get("host", ()))
        host_values = frozenset(graph.inputs[j] for j in host)
        entries = []
        for i, e in enumerate(d["entries"]):
            group = KernelGroup(e["kind"], [graph.nodes[k] for k in e["nodes"]], [values[n] for n in e["inputs"]],
                                [values[n] for n in e["outputs"]], tuple(e["shape"]), tuple(e["dims"]),
                                [graph.nodes[k] for k in e["scalars"]], e["whole"],
                                [KernelGroup(m.get("kind", "pointwise"), [graph.nodes[k] for k in m["nodes"]],
                                             [values[n] for n in m["inputs"]], [values[n] for n in m["outputs"]],
                                             tuple(m["shape"]), tuple(m.get("dims", ())),
                                             [graph.nodes[k] for k in m["scalars"]], m.get("whole", False))
                                 for m in e.get("members", [])])
            config = LaunchConfig.from_dict(e["config"]) if e["config"] else None
            entries.append(Entry(i, group, config, group_cost(group, splits(config), host_values)))
        return Schedule(graph, d["target"], entries, {int(k): j for k, j in d["donate"].items()}, host)


def launch_config(group: KernelGroup, target: str) -> LaunchConfig | None:
    """The config the group's emitter chooses for it (None: no kernel)."""
    kind = group.kind
    if kind == "layout" and not is_view(group.nodes[0].op):  # cat: a pointwise kernel
        numel = group.outputs[0].type.numel
        return pointwise.launch_config(numel, target) if numel and any(v.type.numel for v in group.inputs) else None
    if kind == "multi" and group.members[0].kind == "row":  # each member's plain row config, side by side
        return multi_row.launch_config([row.group_config(m, target, shaped=False) for m in group.members])
    if kind == "multi":  # one launch over the members (the planner splits it past multi.MAX_PARAMS)
        return multi.launch_config([math.prod(m.shape) for m in group.members], target)
    if kind in ("pointwise", "constant"):
        numel = math.prod(group.shape)
        return pointwise.launch_config(numel, target) if numel else None
    if kind == "row":  # column tiles and split reductions where they apply (codegen/row.py group_config)
        return row.group_config(group, target)
    if kind == "matmul":
        mm = next(n for n in group.nodes if n.op == "matmul")
        m, n, k = mm.out.shape[-2], mm.out.shape[-1], mm.inputs[0].shape[-1]
        numel = mm.out.type.numel
        return matmul.launch_config(m, n, k, numel // (m * n), target, mm.out.dtype) if numel else None
    if kind == "attention":  # a flash attention kernel: forward, dQ or dK/dV (codegen/attention.py)
        node = group.nodes[0]
        q, k, v = node.inputs[:3]
        cfg = attention.launch_config(node.op, q.shape, k.shape, v.shape[3], target, q.dtype)
        return cfg if all(cfg.grid) else None
    if kind == "conv":
        return conv.group_launch_config(next(n for n in group.nodes if get_op(n.op).kind == "conv"), target)
    if kind == "scan":  # rows: every dim but the scanned one
        node = group.nodes[0]
        shape, dim = node.inputs[0].shape, node.attrs["dim"]
        r = shape[dim] if shape else 1
        m = node.out.type.numel // r if r else 0
        return scan_codegen.launch_config(m, r, target) if m else None
    if kind == "reduction":
        node = group.nodes[0]
        x = node.inputs[0]
        m = node.out.type.numel
        r = math.prod(x.shape) // max(m, 1) if m else 0
        column = bool(x.shape) and x.type.rank - 1 not in reduction_dims(node)  # the innermost dim kept
        return reduction.launch_config(m, r, target, column) if m else None
    if kind == "scatter":  # segment_add: blocks of destination rows x the columns each row owns
        node = group.nodes[0]
        rows = node.out.shape[node.attrs["dim"]]
        return scatter.launch_config(rows, node.out.type.numel // rows, target) if node.out.type.numel else None
    return None  # a view, an extern call


def splits(config: LaunchConfig | None) -> int:
    """Slices per row of a split reduction's config (codegen/row.py `split_plan`: grid axis 1 and
    RC); 1 for any other launch."""
    return config.grid[1] if config is not None and "RC" in config.constexprs else 1


def reduction_dims(node: Node) -> tuple[int, ...]:
    """The dims a reduction node reduces (argmax/argmin take one `dim` or all)."""
    if node.op in ("argmax", "argmin"):
        dim = node.attrs.get("dim")
        return tuple(range(node.inputs[0].type.rank)) if dim is None else (dim,)
    return tuple(sorted(node.attrs.get("dims", ())))


def _order_for_donation(graph: Graph, groups: list[KernelGroup], donate: Mapping[int, int]) -> list[KernelGroup]:
    """`groups` reordered so that the readers of each donated input run before the group that writes
    the output stored over it, where no dependence forbids (then the planner copies instead)."""
    owner = {n: g for g in groups for n in g.nodes}
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(groups)))
    pos = {id(g): i for i, g in enumerate(groups)}
    for i, g in enumerate(groups):
        for v in g.inputs:
            if v.producer is not None and v.producer in owner:
                dag.add_edge(pos[id(owner[v.producer])], i)
    for k, j in donate.items():
        root = storage_root(graph.outputs[k])
        if root.producer is None or root.producer not in owner:
            continue
        w = pos[id(owner[root.producer])]
        for i, g in enumerate(groups):
            reads = any(storage_root(v) is graph.inputs[j] for v in g.inputs)
            if i != w and reads and g.kind != "layout" and not nx.has_path(dag, w, i):
                dag.add_edge(i, w)
    order = nx.lexicographical_topological_sort(dag, key=lambda i: i)
    return [groups[i] for i in order]


def build_schedule(graph: Graph, target: str, fuse: bool = True, donate: Mapping[int, int] | None = None,
                   host: frozenset[int] = frozenset()) -> Schedule:
    """The schedule of `graph` (after the pass pipeline) for `target`; `host`: compile_ir's."""
    graph = strip_gradient_markers(graph)
    # fused: independent same-structure pointwise groups (an optimizer's updates) share one launch
    groups = merge_horizontal(partition(graph)) if fuse else singleton_groups(graph)
    donate = dict(donate or {})
    if donate:
        groups = _order_for_donation(graph, groups, donate)
    configs = [launch_config(g, target) for g in groups]
    host_values = frozenset(graph.inputs[j] for j in host)
    entries = [Entry(i, g, c, group_cost(g, splits(c), host_values)) for i, (g, c) in enumerate(zip(groups, configs))]
    return Schedule(graph, target, entries, donate, frozenset(host))
