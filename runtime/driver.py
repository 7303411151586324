"""The one driver: an IR graph to an executable. passes -> schedule -> plan -> kernels.

Every mode (static `ember.trace`/`ember.compile`, eager mode, the Dynamo backend, `compile_step`,
the fused optimizers, the autograd bridge) compiles through `compile_ir`; none runs the pass
pipeline or the planner itself. The result keeps what each stage produced: the optimized graph and
the printed snapshot after each pass (for `explain`), the schedule (runtime/schedule.py: kernel
groups, launch configs, costs, computed once) and, per input layout, the plan the executor runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..ir import Graph
from ..passes import run_pipeline
from .executor import CompiledGraph


class Executable(CompiledGraph):
    """`exe(inputs) -> outputs` for an optimized graph; `source_graph` is the graph before the passes,
    `snapshots` the printed IR after each pass, `schedule` the kernel groups the runtime launches."""

    source_graph: Graph
    snapshots: list[tuple[str, str]]


def compile_ir(graph: Graph, device: torch.device | str | None = None, *, fuse: bool = True,
               name: str | None = None, optimize: bool = True, donate: dict[int, int] | None = None,
               host: frozenset[int] = frozenset(), on_pass: Callable[[str], None] | None = None) -> Executable:
    """Compile `graph`: the pass pipeline (unless `optimize=False`: the graph is already optimized),
    then the schedule and, at the first call per input layout, the plan and kernels.

    `device` matters only for graphs without inputs (otherwise the inputs' device decides);
    `fuse=False` runs every op as its own kernel; `name` appears in progress reports;
    `donate={output: input}` stores each such output in the memory of that input (the caller gives
    the input up, as with JAX's `donate_argnums`: it holds the output's value after the call);
    `host={input, ...}`: inputs the caller keeps on the host (CPU, float32 or float64, whatever the
    device: an optimizer's hyperparameters), whose single elements kernels take by value, with no
    copy to the device (a kernel reading one through a pointer gets a copy made per call);
    `on_pass(name)` is called as each pass starts."""
    if optimize:
        result = run_pipeline(graph, on_pass=on_pass)
        optimized, snapshots = result.graph, result.snapshots
    else:
        optimized, snapshots = graph, [("input", str(graph))]
    exe = Executable(optimized, device, fuse, name, donate, host)
    exe.source_graph = graph
    exe.snapshots = snapshots
    return exe
