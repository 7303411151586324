"""Memory planning: the temporaries of a plan share one slab by lifetime.

Without it every temporary a call makes lives for the whole call, so a call's peak is the sum of them
all (eager frees each as its last reader finishes). Here each temporary the plan alone can see (an
"alloc" buffer no output, extern call or cat slot reaches: `Prepared` finds them) lives from the first
step that touches it to the last, in plan order, which is the order the executor runs the steps
(and, on a GPU, the order of the stream); two temporaries whose lifetimes do not meet may take the
same bytes. `assign` places them in one slab, largest first, each at the lowest offset free of every
placed temporary it lives alongside (first fit, as XLA's and TVM's buffer assignment start from);
offsets are multiples of `ALIGN` bytes, as the caching allocator aligns its blocks, so a kernel sees
pointers aligned as before (its specialization, vector loads). A step's inputs and outputs live
alongside each other (a lifetime includes both ends), so no kernel reads what it writes unless the
plan itself said so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .plan import ExternStep, Plan, step_buffers

ALIGN = 256  # bytes: torch's CUDA caching allocator's block alignment
SHARE = True  # False: every temporary its own bytes of the slab (tests compare the two)


@dataclass
class MemoryPlan:
    """Where a plan's private temporaries go: `offsets` (buffer -> byte offset in the slab), the
    slab's size, and the bytes the same temporaries take allocated one by one."""

    offsets: dict[int, int]
    slab_bytes: int
    separate_bytes: int


def escaping(plan: Plan) -> set[int]:
    """Buffers a caller or torch can see: outputs, extern inputs (an extern may return a view of its
    input) and, both ways, aliases (a cat piece's slice, runtime/cat_slots.py) and their bases."""
    seen = {v.buf for v in plan.outputs}
    for step in plan.steps:
        if isinstance(step, ExternStep):
            seen |= {v.buf for v in step.inputs}
    changed = True
    while changed:
        changed = False
        for i, spec in enumerate(plan.bufs):
            if spec.kind == "alias" and (i in seen) != (spec.base in seen):
                seen |= {i, spec.base}
                changed = True
    return seen


def plan_memory(plan: Plan) -> MemoryPlan:
    """The slab of `plan`'s private temporaries: "alloc" buffers that do not escape and are no
    alias's base, placed by lifetime (`assign`)."""
    bases = {spec.base for spec in plan.bufs if spec.kind == "alias"}
    out = escaping(plan)
    private = [i for i, spec in enumerate(plan.bufs) if spec.kind == "alloc" and i not in out and i not in bases]
    sizes = {i: math.prod(plan.bufs[i].shape) * plan.bufs[i].dtype.itemsize for i in private}
    spans = lifetimes([step_buffers(s) for s in plan.steps], private)
    offsets, slab = assign(sizes, spans)
    return MemoryPlan(offsets, slab, sum(_aligned(max(sizes[b], 1)) for b in spans))


def lifetimes(steps: Sequence[Iterable[int]], buffers: Iterable[int]) -> dict[int, tuple[int, int]]:
    """(first, last) step index touching each of `buffers`; `steps[i]`: the buffers step i reads or
    writes. A buffer no step touches is left out."""
    wanted = set(buffers)
    spans: dict[int, tuple[int, int]] = {}
    for i, touched in enumerate(steps):
        for b in touched:
            if b in wanted:
                first = spans.get(b, (i, i))[0]
                spans[b] = (first, i)
    return spans


def assign(sizes: dict[int, int], spans: dict[int, tuple[int, int]]) -> tuple[dict[int, int], int]:
    """(byte offset of each buffer in `spans` within one slab, the slab's size): buffers whose
    lifetimes overlap never overlap in bytes. `sizes`: bytes per buffer."""
    order = sorted(spans, key=lambda b: (-sizes[b], spans[b][0], b))
    placed: list[tuple[int, int, int, int]] = []  # (offset, end, first step, last step)
    offsets: dict[int, int] = {}
    top = 0
    for b in order:
        size = _aligned(max(sizes[b], 1))
        first, last = spans[b]
        busy = sorted((o, e) for o, e, f, la in placed if not SHARE or (f <= last and first <= la))
        offset = 0
        for o, e in busy:  # the lowest gap that fits, between the live blocks sorted by offset
            if offset + size <= o:
                break
            offset = max(offset, e)
        offsets[b] = offset
        placed.append((offset, offset + size, first, last))
        top = max(top, offset + size)
    return offsets, top


def peak_bytes(sizes: dict[int, int], spans: dict[int, tuple[int, int]]) -> int:
    """The most bytes of these buffers alive at once (a lower bound for any slab)."""
    if not spans:
        return 0
    steps = max(last for _, last in spans.values()) + 1
    live = [0] * steps
    for b, (first, last) in spans.items():
        for i in range(first, last + 1):
            live[i] += _aligned(max(sizes[b], 1))
    return max(live)


def _aligned(n: int) -> int:
    return math.ceil(n / ALIGN) * ALIGN


__all__ = ["ALIGN", "MemoryPlan", "assign", "escaping", "lifetimes", "peak_bytes", "plan_memory"]
