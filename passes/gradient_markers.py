"""Drop the gradient markers (`stop_gradient`, `untracked_update`: `ir/ops/gradient.py`) once no
differentiation follows: every use reads the marker's value input instead.

The pass pipeline keeps the markers, because `passes.autodiff` differentiates its result; the runtime
runs this pass right before fusion and planning (and `ember.explain` before counting kernels), so a
marker costs no kernel, no byte, and never cuts a fused group in two.
"""

from __future__ import annotations

from ..ir import Graph
from ..ir.ops.gradient import GRADIENT_MARKERS
from .dce import dce
from .rewrite import GraphRewriter


def strip_gradient_markers(graph: Graph) -> Graph:
    if not any(n.op in GRADIENT_MARKERS for n in graph.nodes):
        return graph
    rw = GraphRewriter(graph)
    for node in graph.nodes:
        if node.op in GRADIENT_MARKERS:
            rw.map[node.out] = rw.map[node.inputs[0]]  # the value input comes first
        else:
            rw.copy(node)
    return dce(rw.finish())  # what fed only a gradient path (untracked_update's old value) goes
