"""Cost model: bytes read and written and flops per kernel group, and the graph's compulsory bytes.

Bytes are counted at the group boundary (what a kernel must load and store), so the ratio
`bytes_moved / compulsory_bytes` is the number fusion is judged by: 1.0 means every graph input is
read once and every output written once. A group input that is a view (expand, slice, permute, ...)
reads at most the elements of the buffer it views. Looped row kernels re-read their inputs once per
pass. Layout groups are views and cost nothing; externs count what torch reads and writes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..ir import Graph, Value, get_op
from ..ir.kernel_group import ROW_BLOCK_LIMIT, KernelGroup


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


def _storage_root(v: Value) -> Value:
    """The materialized value a chain of view ops reads from."""
    while v.producer is not None and v.producer.op in ("reshape", "permute", "expand", "slice", "select", "flip"):
        v = v.producer.inputs[0]
    return v


def value_read_bytes(v: Value) -> int:
    root = _storage_root(v)
    return min(v.type.numel, root.type.numel) * v.dtype.itemsize


def row_passes(group: KernelGroup) -> int:
    """How many times a row kernel reads its inputs: once when a row fits a block, else per pass."""
    r = math.prod(group.shape[d] for d in group.dims)
    if r <= ROW_BLOCK_LIMIT:
        return 1
    reductions = sum(get_op(n.op).kind == "reduction" for n in group.nodes)
    tile_out = any(v.shape == group.shape for v in group.outputs)
    return reductions + int(tile_out)


def _flops(group: KernelGroup) -> int:
    total = 0
    for n in group.nodes:
        kind = get_op(n.op).kind
        if kind == "matmul":
            a, out = n.inputs[0], n.out
            total += 2 * out.type.numel * a.shape[-1]
        elif kind == "reduction":
            total += n.inputs[0].type.numel
        elif kind in ("pointwise", "constant"):
            total += n.outputs[0].type.numel
    return total


def group_cost(group: KernelGroup) -> KernelCost:
    if group.kind == "layout" and group.nodes[0].op != "cat":
        return KernelCost(group, 0, 0, 0)  # a view: offsets and strides, no data moves
    passes = row_passes(group) if group.kind == "row" else 1
    read = sum(value_read_bytes(v) for v in group.inputs) * passes
    written = sum(v.type.nbytes for v in group.outputs)
    return KernelCost(group, read, written, _flops(group))


def is_kernel(group: KernelGroup) -> bool:
    """Groups that launch a generated kernel (views and extern calls do not)."""
    return group.kind not in ("extern",) and not (group.kind == "layout" and group.nodes[0].op != "cat")


def compulsory_bytes(graph: Graph) -> int:
    """Each graph input that is used, read once; each distinct output written once."""
    used = {v for n in graph.nodes for v in n.inputs} | set(graph.outputs)
    read = sum(v.type.nbytes for v in graph.inputs if v in used)
    written = sum(v.type.nbytes for v in dict.fromkeys(graph.outputs) if v not in graph.inputs)
    return read + written


def unfused_groups(graph: Graph) -> list[KernelGroup]:
    """One group per node: what running each op as its own kernel (eager style) would cost."""
    from .fusion import singleton_groups

    return singleton_groups(graph)
