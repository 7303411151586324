"""A kernel group: the nodes that one generated kernel runs, as the fusion pass chose them.

Kinds:
- "pointwise": pointwise nodes over one iteration `shape` (every output has that shape);
- "row": reductions that share one input `shape` and reduced `dims`, with their pointwise prologue
  and epilogue (softmax, layernorm, ...). Values are either tiles (`shape`) or rows (`shape` with
  `dims` set to 1); outputs are tiles, rows, or the reduction itself without keepdim;
- "matmul": one matmul and its pointwise epilogue over the matmul's output `shape`;
- "reduction": one reduction the row kernel does not take (prod, argmax, argmin);
- "scan": one scan (cumsum, ...) whose rows are too long for a row kernel, which otherwise runs it as
  a tile op along its one dim (`dims`);
- "layout", "extern", "constant": one node each (layout ops are usually views: no kernel);
- "multi": independent pointwise groups of one structure (`members`, any shapes: the per-parameter
  updates of an optimizer step) run by one multi-tensor launch, or independent small row groups
  (`members`, each its own body: a training step's vector-parameter updates) run by one multi-row
  launch (passes/horizontal.py).
0-dim `full` scalars used only by pointwise nodes belong to no group: kernels inline them as literals.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .graph import Node, Value


@dataclass(eq=False)
class KernelGroup:
    kind: str
    nodes: list[Node] = field(default_factory=list)
    inputs: list[Value] = field(default_factory=list)   # read from memory
    outputs: list[Value] = field(default_factory=list)  # written to memory
    shape: tuple[int, ...] = ()
    dims: tuple[int, ...] = ()                          # "row" groups: the reduced dims of `shape`
    scalars: list[Node] = field(default_factory=list)   # inlined 0-dim constants the nodes use
    # "row" groups that also reduce across rows (a loss's mean): one program must hold every row.
    whole: bool = False
    # "multi" groups: the pointwise or row groups one launch runs (`nodes`, `inputs`, `outputs`: theirs, joined).
    members: list[KernelGroup] = field(default_factory=list)

    @property
    def ops(self) -> list[str]:
        """The IR ops the kernel runs (a "multi" group: the first member's, then those other members
        add: pointwise members all share the first's)."""
        if self.members:
            first = self.members[0].ops
            return first + list(dict.fromkeys(op for m in self.members[1:] for op in m.ops if op not in first))
        return [n.op for n in self.nodes]

    def __repr__(self) -> str:
        return f"KernelGroup({self.kind}, ops={self.ops}, shape={self.shape}, dims={self.dims})"

# Rows of up to this many elements are reduced in registers in one pass (a "persistent" row kernel);
# longer rows loop over chunks. Shared by the cost model and the row emitter.
ROW_BLOCK_LIMIT = 4096
# A "whole" row group (one program over all rows) may hold at most this many elements in registers.
WHOLE_BLOCK_LIMIT = 16384


def pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()
