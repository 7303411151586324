"""The driver's path for a saved program (`ember.load`): an executable from a parsed, already optimized
graph and its saved schedules, so loading runs no pass, no fusion and no capture.

The graph must be the one the schedules index (`Schedule.graph`: the optimized graph with its gradient
markers stripped), parsed back from its printed text so that node indices and value names match
(`Schedule.to_dict`). Plans and kernels are still made here, by ember's emitters, at the first call per
input layout (or by `kernel_sources`): nothing generated elsewhere is executed.
"""

from __future__ import annotations

import torch

from ..ir import Graph
from .driver import Executable
from .schedule import Schedule
from .views import contiguous_strides


def restore(graph: Graph, schedules: dict[str, dict], donate: dict[int, int] | None = None,
            name: str | None = None) -> Executable:
    """`compile_ir(graph, optimize=False)` with the schedule of each target in `schedules` (target ->
    `Schedule.to_dict()`) taken as saved instead of computed (a target not given is computed as usual).
    The host-held inputs (compile_ir's `host`) are the schedules' own."""
    host = frozenset(j for d in schedules.values() for j in d.get("host", ()))
    exe = Executable(graph, None, True, name, donate, host)
    exe.source_graph = graph
    exe.snapshots = [("loaded", str(graph))]
    for target, d in schedules.items():
        exe._schedules[target] = Schedule.from_dict(d, graph)  # what `schedule_for` would have built
    return exe


def contiguous_plan(exe: Executable, device: torch.device | str):
    """The plan for contiguous inputs on `device` (any device type can be planned on any machine:
    planning emits kernels, it launches nothing)."""
    return exe.plan_at(torch.device(device), [contiguous_strides(v.shape) for v in exe.graph.inputs])


def kernel_sources(exe: Executable, device: torch.device | str) -> dict[str, str]:
    """Kernel name -> Triton source of every launch of the plan for contiguous inputs on `device`."""
    return {s.kernel.name: s.kernel.source for s in contiguous_plan(exe, device).launches}
