"""Cost model: bytes read and written and flops per kernel group, and the graph's compulsory bytes.

Bytes are counted at the group boundary (what a kernel must load and store), so the ratio
`bytes_moved / compulsory_bytes` is the number fusion is judged by: 1.0 means every graph input is
read once and every output written once. A group input that is a view (expand, slice, permute, ...)
reads at most the elements of the buffer it views. Reads are compulsory per kernel: a tile that
several programs of one launch load (matmul's A tile once per N block, a broadcast bias per row
block) counts once, as a cache would serve it; a looped row kernel's sweeps over rows too long to
keep count once each (`row_read_bytes`). tests/test_cost_bytes.py checks every rule against the
bytes the generated kernels load and store under Triton's interpreter. Layout groups are views and
cost nothing; externs count what torch reads and writes. A single element of a host-held input
(`host`: compile_ir's, an optimizer's hyperparameters) is a launch argument, not a load: no bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ir import Graph, Node, Value, get_op
from ..ir.kernel_group import ROW_BLOCK_LIMIT, KernelGroup
from ..ir.ops.index import GATHER_OPS
from ..ir.ops.reduction import reduced_shape
from ..ir.ops.window import WINDOW_OPS
from ..ir.ops.window_cost import window_read_bytes
from ..ir.registry import flops, is_view, view_root
from ..ir.row_sweeps import reduction_free, row_sweeps, tile_reductions
from ..ir.types import compute_dtype


@dataclass
class KernelCost:
    group: KernelGroup
    bytes_read: int
    bytes_written: int
    flops: int

    @property
    def bytes_moved(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def ops(self) -> list[str]:
        return self.group.ops

    @property
    def kind(self) -> str:
        return self.group.kind


def storage_root(v: Value) -> Value:
    """The materialized value a chain of view ops reads from (the registry's `view_root`)."""
    return view_root(v)


def _reshape_distinct(dims: list[tuple[int, int]], shape: tuple[int, ...]) -> list[tuple[int, int]] | None:
    """(size, distinct) per dim after a reshape to `shape`: dims merge and split in blocks of equal
    size; a block keeps its distinct count when it is all repeated, all distinct or one output dim.
    None when a block that mixes both is split (which elements repeat is then not per dim)."""
    ins = [d for d in dims if d[0] != 1]
    out: list[tuple[int, int]] = []
    block: list[int] = []
    i, size, distinct = 0, 1, 1
    for o in shape:
        if o == 1:
            out.append((1, 1))
            continue
        block.append(len(out))
        out.append((o, o))
        while size < math.prod(out[k][0] for k in block):
            size, distinct = size * ins[i][0], distinct * ins[i][1]
            i += 1
        if size == math.prod(out[k][0] for k in block):
            if distinct == 1:
                for k in block:
                    out[k] = (out[k][0], 1)
            elif distinct != size:
                if len(block) > 1:
                    return None
                out[block[0]] = (o, distinct)
            block, size, distinct = [], 1, 1
    return out


def distinct_elements(v: Value) -> int:
    """How many elements of its buffer the view `v` reads: `v` followed from the materialized value
    through its view ops, dim by dim (an expanded dim repeats elements, a slice of it does not add
    any). Where a view cannot be followed per dim, at most the smaller of `v` and its buffer."""
    if v.type.numel == 0:
        return 0
    chain = []
    root = v
    while root.producer is not None and is_view(root.producer.op):  # (gradient markers: identity views)
        chain.append(root.producer)
        root = root.producer.inputs[0]
    dims: list[tuple[int, int]] | None = [(s, s) for s in root.shape]  # (size, distinct elements along it)
    for n in reversed(chain):
        a, shape = n.attrs, n.out.shape
        if n.op == "expand":
            lead = len(shape) - len(dims)
            dims = [(s, 1) for s in shape[:lead]] + [(o, 1 if s == 1 else d)
                                                     for (s, d), o in zip(dims, shape[lead:])]
        elif n.op == "permute":
            dims = [dims[d] for d in a["dims"]]
        elif n.op == "select":
            dims = dims[:a["dim"]] + dims[a["dim"] + 1:]
        elif n.op == "slice":
            s, d = dims[a["dim"]]
            if d not in (1, s):
                break
            dims[a["dim"]] = (shape[a["dim"]], 1 if d == 1 else shape[a["dim"]])
        elif n.op == "reshape":
            dims = _reshape_distinct(dims, shape)
            if dims is None:
                break
    else:
        return math.prod(d for _, d in dims)
    return min(v.type.numel, root.type.numel)


def value_read_bytes(v: Value) -> int:
    return distinct_elements(v) * v.dtype.itemsize


def _hosted(v: Value, host: frozenset[Value]) -> bool:
    """Is `v` one element of a host-held graph input (a kernel argument, runtime/plan.py `Host`)?"""
    return bool(host) and storage_root(v) in host and distinct_elements(v) == 1


def _is_row(group: KernelGroup, v: Value) -> bool:
    """A [rows] value of a row group (reduction results and what follows) rather than a [rows, cols]
    tile: codegen/row.py's `RowLayout.is_row`."""
    g = group
    return v.shape != g.shape and (v.shape in (reduced_shape(g.shape, g.dims, True),
                                               reduced_shape(g.shape, g.dims, False)) or v.type.numel == 1)


def row_read_bytes(group: KernelGroup, host: frozenset[Value] = frozenset()) -> int:
    """Bytes a row kernel loads, following the row emitter (codegen/row.py) load by load.

    Inputs are loaded as tiles or as rows (by the value that uses them). A row is loaded once and
    kept; a row already loaded is broadcast to tiles, not loaded again. Tiles are loaded on demand
    by the loop that needs them: when a row fits one block (`ROW_BLOCK_LIMIT`) that is once; a
    looped kernel sweeps its rows once per sweep of reductions (ir/row_sweeps.py: reductions that need
    no other's result share one; online softmax and Welford fold into their amax's or sum's) and once
    more to store tile outputs, and each sweep loads the tiles it needs again (a row too long for
    registers is not kept); row values that need no reduction are computed (loaded) first.
    tests/test_cost_bytes.py checks this against the bytes the generated kernels load."""
    looped = math.prod(group.shape[d] for d in group.dims) > ROW_BLOCK_LIMIT
    members = {v for n in group.nodes for v in n.outputs}
    scalars = set(group.scalars)
    loads: set[tuple[Value, str]] = set()
    for n in group.nodes:
        mode = "row" if _is_row(group, n.out) else "tile"
        for v in n.inputs:
            if v not in members and v.producer not in scalars and not _hosted(v, host):
                loads.add((v, ("row" if _is_row(group, v) else "tile") if get_op(n.op).kind == "reduction" else mode))
    rows: set[Value] = set()   # row values in registers
    tiles: set[Value] = set()  # tile values of the current sweep
    read = 0

    def operand(v: Value, tile: bool) -> None:
        nonlocal read
        if v.producer in scalars or v in rows or _hosted(v, host):
            return
        if (v, "row") in loads and not tile:
            rows.add(v)
            read += value_read_bytes(v)
        elif tile and v not in tiles:
            tiles.add(v)
            if (v, "tile") in loads:
                read += value_read_bytes(v)
            else:
                for u in v.producer.inputs:
                    operand(u, True)

    sweeps = row_sweeps(group) if looped else None
    done: set[Node] = set()

    def visit(n: Node) -> None:
        nonlocal read
        if n in done:
            return
        done.add(n)
        if n.op == "pick":  # one element per row, loaded directly (codegen/cross_entropy.py), and its index
            read += min(value_read_bytes(n.inputs[0]), n.out.type.numel * n.inputs[0].dtype.itemsize)
            operand(n.inputs[1], False)
        elif get_op(n.op).kind == "reduction" and not _is_row(group, n.inputs[0]):
            if sweeps is None:
                operand(n.inputs[0], True)
            else:  # the whole sweep: the folded reductions read their amax's or sum's tile
                sweep = sweeps.sweep_of(n)
                for r in sweep:
                    if r not in sweeps.fused:
                        operand(r.inputs[0], True)
                tiles.clear()
                done.update(sweep)
        elif get_op(n.op).kind == "reduction" or _is_row(group, n.out):
            for u in n.inputs:
                operand(u, False)
        if _is_row(group, n.out):
            rows.add(n.out)

    if looped:  # codegen/row.py `emit`: row values that need no reduction first
        for n in group.nodes:
            if get_op(n.op).kind != "reduction" and _is_row(group, n.out) and reduction_free(group, n):
                visit(n)
    for n in group.nodes:
        visit(n)
    for v in group.outputs:
        if _is_row(group, v):
            operand(v, False)
    for v in group.outputs:
        if not _is_row(group, v):
            operand(v, True)
    return read


def _pointwise_read_bytes(group: KernelGroup, v: Value) -> int:
    """Bytes a pointwise kernel loads of input `v`: all it reaches, once; but an input only gathers
    read (ir/ops/index.py) is loaded by each gather's emit hook: its indices whole, its table at the
    elements it picks (one per output element, at most the elements of the table)."""
    gathers = [n for n in group.nodes if n.op in GATHER_OPS and v in n.inputs]
    windows = [n for n in group.nodes if n.op in WINDOW_OPS and v in n.inputs]  # counted by window_read_bytes
    plain = v in group.outputs or any(v in n.inputs for n in group.nodes if n not in gathers and n not in windows)
    read = value_read_bytes(v) if plain or not (gathers or windows) else 0
    for n in gathers:
        read += sum(value_read_bytes(v) for u in n.inputs[1:] if u is v)
        if n.inputs[0] is v:
            read += min(value_read_bytes(v), n.out.type.numel * v.dtype.itemsize)
    return read


def _flops(group: KernelGroup) -> int:
    """Each node's flops, by its registry entry's `cost`."""
    return sum(flops(n) for n in group.nodes)


def _partial_itemsize(group: KernelGroup) -> int:
    """Bytes per row and split of a split reduction's partials: each tile reduction's work dtype
    (codegen/row.py `partial_dtypes`, codegen/reduction.py `work_dtype`), argmax/argmin's int64 index."""
    size = 0
    for n in tile_reductions(group) if group.kind == "row" else group.nodes[:1]:
        x = n.inputs[0].dtype
        if n.op in ("sum", "prod"):
            size += compute_dtype(n.out.dtype).itemsize
        else:
            size += 4 if x == torch.bool else compute_dtype(x).itemsize
        size += 8 if n.op in ("argmax", "argmin") else 0
    return size


def split_costs(group: KernelGroup, splits: int, host: frozenset[Value] = frozenset()) -> tuple[KernelCost, KernelCost]:
    """The two launches of a split reduction (a row or reduction group planned with `splits` slices
    per row, codegen/row.py `split_plan`): stage 1 reads what the group reads and writes [S, M]
    partials; stage 2 reads them (and a row group's row loads, for its epilogue) and writes the outputs."""
    whole = group_cost(group, 1, host)
    if group.kind == "row":
        m = math.prod(s for d, s in enumerate(group.shape) if d not in group.dims)
        row_loads = {v for n in group.nodes if n not in tile_reductions(group) and _is_row(group, n.out)
                     for v in n.inputs if v in group.inputs and not _hosted(v, host)}
    else:
        m, row_loads = group.nodes[0].out.type.numel, set()
    part = splits * m * _partial_itemsize(group)
    return (KernelCost(group, whole.bytes_read, part, whole.flops),
            KernelCost(group, part + sum(value_read_bytes(v) for v in row_loads), whole.bytes_written, 0))


def group_cost(group: KernelGroup, splits: int = 1, host: frozenset[Value] = frozenset()) -> KernelCost:
    """The group's bytes and flops; `splits` > 1: run as a split reduction (`split_costs`, both stages);
    `host`: the graph's host-held inputs (`Schedule.host_values`)."""
    if splits > 1:
        one, two = split_costs(group, splits, host)
        return KernelCost(group, one.bytes_read + two.bytes_read, one.bytes_written + two.bytes_written, one.flops)
    if group.kind == "layout" and is_view(group.nodes[0].op):
        return KernelCost(group, 0, 0, 0)  # a view: offsets and strides, no data moves
    if group.kind == "multi":  # one launch over pointwise or row members (passes/horizontal.py): theirs, summed
        costs = [group_cost(m, 1, host) for m in group.members]
        return KernelCost(group, sum(c.bytes_read for c in costs), sum(c.bytes_written for c in costs),
                          sum(c.flops for c in costs))
    if group.kind == "row":
        read = row_read_bytes(group, host)
    elif group.kind == "matmul":  # both operands, then what the epilogue loads (an operand again, too)
        mm = group.nodes[0]
        tail = {v for n in group.nodes[1:] for v in n.inputs}
        read = sum(value_read_bytes(v) for v in mm.inputs) + sum(value_read_bytes(v) for v in group.inputs if v in tail)
    elif group.kind == "conv":  # both operands (a gathered pixel counts once), then the epilogue's loads
        conv = next(n for n in group.nodes if get_op(n.op).kind == "conv")
        tail = {v for n in group.nodes if n is not conv for v in n.inputs}
        read = sum(value_read_bytes(v) for v in conv.inputs)
        read += sum(value_read_bytes(v) for v in group.inputs if v in tail)
    elif group.kind == "attention":  # every operand read once (key blocks re-read by other programs: cache);
        read = sum(value_read_bytes(v) for v in dict.fromkeys(group.nodes[0].inputs))  # no [S, S] scores
    elif group.kind == "scatter":  # segment_add: sources, sorted keys, permutation and x (not the unsorted keys)
        node = group.nodes[0]
        read = sum(value_read_bytes(v) for i, v in enumerate(node.inputs) if i != 3)
    elif group.kind == "layout":  # cat: each piece, as often as it appears
        read = sum(value_read_bytes(v) for v in group.nodes[0].inputs)
    else:
        read = sum(_pointwise_read_bytes(group, v) for v in group.inputs if not _hosted(v, host))
        read += window_read_bytes([n for n in group.nodes if n.op in WINDOW_OPS])
    written = sum(v.type.nbytes for v in group.outputs)
    if group.kind == "attention":  # the kernel stores every output (an unused logsumexp too)
        written = sum(v.type.nbytes for v in group.nodes[0].outputs)
    return KernelCost(group, read, written, _flops(group))


def is_kernel(group: KernelGroup) -> bool:
    """Groups that launch a generated kernel (views and extern calls do not)."""
    return group.kind != "extern" and not (group.kind == "layout" and is_view(group.nodes[0].op))


def compulsory_bytes(graph: Graph) -> int:
    """Each graph input that is used, read once; each distinct output written once."""
    used = {v for n in graph.nodes for v in n.inputs} | set(graph.outputs)
    read = sum(v.type.nbytes for v in graph.inputs if v in used)
    written = sum(v.type.nbytes for v in dict.fromkeys(graph.outputs) if v not in graph.inputs)
    return read + written
