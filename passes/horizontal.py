"""Horizontal fusion: independent pointwise groups of one structure become one multi-tensor group;
independent small row groups become one multi-row group.

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

Row groups (codegen/row.py) merge the same way, each member keeping its own row kernel body
(codegen/multi_row.py): in a training step the update of each vector parameter (bias, LayerNorm
weight) fuses into the row kernel summing its gradient over the batch, one tiny launch per parameter.
Which: "row" groups whose outputs share one dtype set (`row_structure`) and that are *small*: at most
`SMALL_ROW_PROGRAMS` programs under the GPU's row launch config (`gpu_row_programs`). Such a launch
fills a fraction of a GPU (an H100 has 132 SMs), so its time is about one program's latency plus the
launch; members laid side by side run on otherwise idle SMs at once, and the merged launch should
cost about its slowest member instead of the sum of launches (not yet timed on a GPU). Bigger row
kernels keep their own launch (and their own warps and tiles).
"""

from __future__ import annotations

import math

import networkx as nx

from ..ir import get_op
from ..ir.kernel_group import ROW_BLOCK_LIMIT, KernelGroup, pow2

# Ops whose Triton rule reads the element's index (`Emitter.index`), which a member's flattened
# iteration does not give in the member's own shape.
INDEXED_OPS = frozenset({"iota", "rand", "arange"})

# A row group joins a multi launch when its GPU launch has at most this many programs: a quarter of
# an H100's SMs, so the members of a merged launch run side by side.
SMALL_ROW_PROGRAMS = 32


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


def gpu_row_programs(group: KernelGroup) -> int:
    """Programs of `group`'s (a row group) launch on a GPU: codegen/row.py `launch_config` for "cuda"
    ([BM, BR] tiles of 4096 elements, rows past ROW_BLOCK_LIMIT in chunks of 1024; a `whole` group is
    one program). Computed here from sizes (passes do not import codegen); tests/test_horizontal_rows.py
    checks it against the emitter's rule."""
    m = math.prod(s for d, s in enumerate(group.shape) if d not in group.dims)
    r = math.prod(group.shape[d] for d in group.dims)
    br = 1024 if r > ROW_BLOCK_LIMIT else pow2(r)
    bm = pow2(m) if group.whole else max(1, min(pow2(m), 4096 // br))
    return -(-m // bm)


def row_structure(group: KernelGroup) -> tuple | None:
    """The bucket of a small row group (any nodes and shapes: each member keeps its own body; one
    dtype set of outputs), or None: not a candidate."""
    if group.kind != "row" or not group.outputs or math.prod(group.shape) == 0:
        return None
    if gpu_row_programs(group) > SMALL_ROW_PROGRAMS:
        return None
    return "row", tuple(sorted({str(v.dtype) for v in group.outputs}))


def multi_group(members: list[KernelGroup]) -> KernelGroup:
    """The "multi" group running `members` in one launch: pointwise groups of one structure, or small
    row groups (one kind: a launch is a multi-tensor kernel or a multi-row one)."""
    return KernelGroup("multi", [n for m in members for n in m.nodes],
                       list(dict.fromkeys(v for m in members for v in m.inputs)),
                       [v for m in members for v in m.outputs], (sum(math.prod(m.shape) for m in members),),
                       scalars=[n for m in members for n in m.scalars], members=list(members))


def merge_horizontal(groups: list[KernelGroup]) -> list[KernelGroup]:
    """`groups` (in dependence order) with independent pointwise groups of equal `structure`, and
    independent small row groups of one `row_structure`, merged into "multi" groups; the result is
    again in dependence order."""
    buckets: dict[tuple, list[int]] = {}
    for i, g in enumerate(groups):
        key = structure(g) if g.kind == "pointwise" else row_structure(g)
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
    # Candidates are tried by height (longest path to a group nothing reads), then in order: groups of
    # one height never depend on each other, so the last ones (a step's parameter updates, height 0)
    # fill one launch before an earlier group (a backward row kernel) can take the first seat.
    height = dict.fromkeys(dag.nodes, 0)
    for i in reversed(list(nx.topological_sort(dag))):
        height[i] = max((height[j] + 1 for j in dag.successors(i)), default=0)
    merged: dict[int, list[int]] = {}  # representative -> member indices
    for members in buckets.values():
        open_reps: list[int] = []
        for i in sorted(members, key=lambda i: (height[i], i)):
            for rep in open_reps:  # first fit: join the first merged group no path links it to
                if not (nx.has_path(dag, rep, i) or nx.has_path(dag, i, rep)):
                    nx.contracted_nodes(dag, rep, i, self_loops=False, copy=False)
                    merged[rep].append(i)
                    break
            else:
                open_reps.append(i)
                merged[i] = [i]
    for ms in merged.values():
        ms.sort()  # members in dependence order (`members` and the kernel's branches follow it)
    last = {rep: max(ms) for rep, ms in merged.items()}
    order = nx.lexicographical_topological_sort(dag, key=lambda i: last.get(i, i))
    return [multi_group([groups[k] for k in merged[i]]) if len(merged.get(i, ())) > 1 else groups[i]
            for i in order]

