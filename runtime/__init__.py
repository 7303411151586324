"""Runtime: plans buffers and launches for an IR graph and runs them (GPU, or Triton's interpreter
on CPU tensors, chosen per launch)."""

from __future__ import annotations

import torch

from ..ir import Graph
from .executor import CompiledGraph
from .plan import Plan, build_plan


def compile_graph(graph: Graph, device: torch.device | str | None = None, fuse: bool = True,
                  name: str | None = None) -> CompiledGraph:
    """Compile `graph` (after ember.passes.run_pipeline: no composite ops) into a callable.

    `device` only matters for graphs without inputs; otherwise the inputs' device decides.
    `fuse=False` runs every op as its own kernel instead of the fusion pass's groups. `name` (the
    program's) appears in progress reports of long calls (runtime/progress.py).
    """
    return CompiledGraph(graph, device, fuse, name)


__all__ = ["compile_graph", "CompiledGraph", "Plan", "build_plan"]
