"""Runtime: the driver (`compile_ir`: passes -> schedule -> plan -> kernels), the schedule, the plans
and their execution (GPU, or Triton's interpreter on CPU tensors, chosen per launch)."""

from __future__ import annotations

import torch

from ..ir import Graph
from .driver import Executable, compile_ir
from .executor import CompiledGraph
from .plan import Plan, build_plan
from .schedule import Schedule, build_schedule


def compile_graph(graph: Graph, device: torch.device | str | None = None, fuse: bool = True,
                  name: str | None = None) -> Executable:
    """`compile_ir` for a graph that is already optimized (no pass pipeline run again)."""
    return compile_ir(graph, device, fuse=fuse, name=name, optimize=False)


__all__ = ["compile_ir", "Executable", "compile_graph", "CompiledGraph", "Plan", "build_plan", "Schedule",
           "build_schedule"]
