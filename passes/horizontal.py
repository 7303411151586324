"""Horizontal fusion: independent pointwise groups of one structure become one multi-tensor group.

After fusion (passes/fusion.py) an optimizer step is one pointwise group per parameter tensor: the
same nodes, attributes and dtypes over different shapes, and no data flowing between them. Such
groups merge into a "multi" group (`ir.KernelGroup.members`), which the runtime launches as one
kernel over all members (codegen/multi.py: each program handles one block of one member), so a step
launches one update kernel per dtype group instead of one per tensor, as torch's foreach optimizers.

Which groups: "pointwise" groups whose nodes the multi-tensor kernel can emit (no op that needs
element indices: iota, rand, arange; no generator with runtime arguments: cat) and whose inputs are
each either of the group's shape (read at the element computed) or else a single element (read
once per program: a hyperparameter). Groups merge when their `structure` is equal and no path joins them
in the group graph (networkx reachability, as fusion's legality check): a merged group never waits
for itself. Groups are never duplicated or reordered against a dependence.
"""

from __future__ import annotations

import math

import networkx as nx

from ..ir import get_op
from ..ir.kernel_group import KernelGroup

# Ops whose Triton rule reads the element's index (`Emitter.index`), which a member's flattened
# iteration does not give in the member's own shape.
INDEXED_OPS = frozenset({"iota", "rand", "arange"})


def structure(group: KernelGroup) -> tuple | None:
    """What one multi-tensor kernel source depends on: ops, attributes, dtypes, the wiring of nodes,
    inputs and outputs, and which inputs are single elements; never shapes. None: not a candidate."""
    if group.kind != "pointwise" or not group.outputs or math.prod(group.shape) == 0:
        return None
    nodes = group.scalars + group.nodes
    local = {v: (i, k) for i, n in enumerate(nodes) for k, v in enumerate(n.outputs)}
    position = {v: i for i, v in enumerate(group.inputs)}
    key_nodes = []
    for n in nodes:
        op = get_op(n.op)
        if n.op in INDEXED_OPS or op.emit_args is not None or op.emit_checks or (op.triton is None and n.op != "full"):
            return None
        refs = tuple(("n", *local[v]) if v in local else ("i", position[v]) for v in n.inputs)
        attrs = tuple(sorted((k, repr(a)) for k, a in n.attrs.items()))
        key_nodes.append((n.op, attrs, refs, tuple(v.dtype for v in n.outputs)))
    ins = []
    for v in group.inputs:
        if v.type.numel != 1 and v.shape != group.shape:
            return None  # a broadcast operand: the flattened kernel cannot address it
        ins.append((v.dtype, v.shape != group.shape))  # True: one element, read once per program
    outs = tuple(local[v] for v in group.outputs)
    return tuple(key_nodes), tuple(ins), outs


def multi_group(members: list[KernelGroup]) -> KernelGroup:
    """The "multi" group running `members` (pointwise groups of one structure) in one launch."""
    return KernelGroup("multi", [n for m in members for n in m.nodes],
                       list(dict.fromkeys(v for m in members for v in m.inputs)),
                       [v for m in members for v in m.outputs], (sum(math.prod(m.shape) for m in members),),
                       scalars=[n for m in members for n in m.scalars], members=list(members))


def merge_horizontal(groups: list[KernelGroup]) -> list[KernelGroup]:
    """`groups` (in dependence order) with independent pointwise groups of equal `structure` merged
    into "multi" groups; the result is again in dependence order."""
    buckets: dict[tuple, list[int]] = {}
    for i, g in enumerate(groups):
        key = structure(g)
        if key is not None:
            buckets.setdefault(key, []).append(i)
    if all(len(b) < 2 for b in buckets.values()):
        return groups
    owner: dict = {n: i for i, g in enumerate(groups) for n in g.nodes}
    dag = nx.DiGraph()
    dag.add_nodes_from(range(len(groups)))
    for i, g in enumerate(groups):
        for v in g.inputs:
            p = owner.get(v.producer) if v.producer is not None else None
            if p is not None and p != i:
                dag.add_edge(p, i)
    merged: dict[int, list[int]] = {}  # representative -> member indices
    for members in buckets.values():
        open_reps: list[int] = []
        for i in members:
            for rep in open_reps:  # first fit: join the first merged group no path links it to
                if not (nx.has_path(dag, rep, i) or nx.has_path(dag, i, rep)):
                    nx.contracted_nodes(dag, rep, i, self_loops=False, copy=False)
                    merged[rep].append(i)
                    break
            else:
                open_reps.append(i)
                merged[i] = [i]
    last = {rep: max(ms) for rep, ms in merged.items()}
    order = nx.lexicographical_topological_sort(dag, key=lambda i: last.get(i, i))
    return [multi_group([groups[k] for k in merged[i]]) if len(merged.get(i, ())) > 1 else groups[i]
            for i in order]

