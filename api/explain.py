"""`ember.explain(fn, *args)`: what ember makes of a program, as a report to read in a terminal.

The report shows the IR before and after the pass pipeline (after every pass with `passes=True`),
the kernels the runtime launches for the example call, read from the same schedule and plan the
runtime runs (ops, launch config, bytes read and written, flops: runtime/schedule.py), the totals
against the compulsory bytes and against eager PyTorch, and the ops that fall back to torch and why.
`to_dot()` / `draw()` show the fused graph with one cluster per kernel (api/explain_report.py).
`target="cuda"` shows the schedule and launch configs a GPU would get, on any machine.

Eager PyTorch is counted from the aten ops eager actually dispatches (a `make_fx` trace without
ember's decomposition table): one kernel per op that is not a view, with bytes at each op's boundary.
Counting ember's decomposed graph instead would charge eager five kernels for one softmax.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import torch
from torch.utils import _pytree as pytree

from ..codegen.kernel import GPU_OPTIONS
from ..codegen.launch import interpreted
from ..codegen.targets import GpuSpec, gpu_spec, math_of
from ..frontend.capture import module_state
from ..frontend.lowering import LOWERINGS
from ..frontend.tracing import make_fx
from ..ir import Node
from ..ir.ops.extern import resolve_target
from ..ir.ops.scatter import SORT_TARGET
from ..ir.types import COMPILABLE_DTYPES
from ..passes.cost import compulsory_bytes, group_cost, split_costs
from ..passes.horizontal import multi_group
from ..runtime.autotune import no_timing
from ..runtime.memory import plan_memory
from ..runtime.plan import ExternStep, LaunchStep, Plan
from ..runtime.schedule import Schedule, build_schedule, splits
from .compiled import CompiledFunction
from .explain_report import EagerOp, ExplainReport, FallbackInfo, KernelInfo
from .module import CompiledModule
from .static import StaticGraph

aten = torch.ops.aten
# Ops that allocate or relabel memory without running a kernel.
_METADATA_OPS = {"_unsafe_view", "empty", "empty_like", "empty_strided", "lift_fresh", "sym_size",
                 "sym_stride", "sym_numel", "sym_storage_offset", "_local_scalar_dense"}


# -- building the report --------------------------------------------------------------------------


def eager_ops(fn: Callable, args: tuple, kwargs: dict | None = None) -> list[EagerOp]:
    """The aten ops eager PyTorch runs for `fn(*args, **kwargs)` (no decompositions, views left out),
    with the bytes each reads and writes. Traced on fake tensors: nothing is computed or mutated."""
    module = fn if isinstance(fn, torch.nn.Module) else None
    state = module_state(module)
    leaves, spec = pytree.tree_flatten((tuple(args), dict(kwargs or {})))
    pos = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]

    def flat_fn(*tensors: torch.Tensor) -> list[torch.Tensor]:
        flat = list(leaves)
        for i, t in zip(pos, tensors):
            flat[i] = t
        a, kw = pytree.tree_unflatten(flat, spec)
        if module is not None:
            out = torch.func.functional_call(module, dict(zip(state, tensors[len(pos):])), a, kw)
        else:
            out = fn(*a, **kw)
        return [x for x in pytree.tree_leaves(out) if isinstance(x, torch.Tensor)]

    with torch.no_grad():
        gm = make_fx(flat_fn, tracing_mode="fake", _allow_non_fake_inputs=True)(
            *[leaves[i] for i in pos], *state.values())
    ops = []
    for node in gm.graph.nodes:
        op = node.target
        if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload):
            continue
        if op.is_view or op._schema.name.split("::")[-1] in _METADATA_OPS:
            continue
        ins = [a.meta.get("val") for a in node.all_input_nodes]
        read = sum(_read_bytes(t) for t in ins if isinstance(t, torch.Tensor))
        written = sum(t.nbytes for t in pytree.tree_leaves(node.meta.get("val")) if isinstance(t, torch.Tensor))
        ops.append(EagerOp(str(op), read, written))
    return ops


def _read_bytes(t: torch.Tensor) -> int:
    """A view reads at most the storage it views (an expanded bias is read once)."""
    try:
        storage = t.untyped_storage().nbytes()
    except Exception:
        storage = t.nbytes
    return min(t.nbytes, storage)


def _fallback_reason(node: Node) -> str:
    target = node.attrs["target"]
    try:
        op = resolve_target(target)
    except ValueError:
        return "unknown op"
    dtypes = {v.dtype for v in node.inputs + node.outputs} - COMPILABLE_DTYPES
    if dtypes:
        return f"dtype {', '.join(sorted(str(d).replace('torch.', '') for d in dtypes))} is not compiled"
    if target == SORT_TARGET:
        return "the sort of a deterministic scatter kernel (ir/ops/scatter.py)"
    if op not in LOWERINGS:
        return "no lowering rule for this op"
    return "the lowering rule declined these arguments"


def _kernels(schedule: Schedule, plan: Plan, gpu: GpuSpec | None = None) -> list[KernelInfo]:
    """One row per launch or torch call of `plan`, costed by its schedule entry (a layout copy: its
    own read and write), with its roofline time on `gpu`."""
    rows = []
    for step in plan.steps:
        entry = schedule.entries[step.entry] if step.entry is not None else None
        if isinstance(step, ExternStep):
            c = entry.cost
            rows.append(KernelInfo(len(rows), "extern", entry.ops, entry.group.shape, c.bytes_read, c.bytes_written,
                                   c.flops, entry.group))
        elif entry is None:
            (src,), (dst,) = step.reads, step.writes
            item = plan.bufs[dst.buf].dtype.itemsize
            rows.append(KernelInfo(len(rows), "copy", step.ops, dst.shape, src.numel * item, dst.numel * item, 0,
                                   None, _launch_text(step), **_launch_fields(step, schedule.target)))
        else:
            c = entry.cost
            if entry.kind == "multi":  # a launch runs some of the entry's members (split by layout or size)
                c = group_cost(multi_group([entry.group.members[i] for i, _, _ in step.parts]), 1, schedule.host_values)
            if step.split_stage:  # a split reduction's partials or their combine: that launch's share
                c = split_costs(entry.group, splits(entry.config), schedule.host_values)[step.split_stage - 1]
            rows.append(KernelInfo(len(rows), entry.kind, entry.ops, entry.group.shape, c.bytes_read,
                                   c.bytes_written, c.flops, entry.group, _launch_text(step),
                                   **_launch_fields(step, schedule.target)))
        if gpu is not None:
            k = rows[-1]
            k.estimate_us = gpu.estimate_us(k.bytes_moved, k.flops, _math(k, step))
    return rows


# block-size constexprs as the report names them
_BLOCK_NAMES = {"BM": "BLOCK_M", "BN": "BLOCK_N", "BK": "BLOCK_K"}


def _launch_fields(step: LaunchStep, target: str) -> dict[str, Any]:
    blocks = {_BLOCK_NAMES.get(k, k): v for k, v in step.constexprs.items() if k.isupper() and type(v) is int}
    return dict(grid=tuple(step.grid), num_warps=step.num_warps, blocks=blocks,
                num_stages=None if interpreted(target) else step.num_stages or GPU_OPTIONS["num_stages"])


def _math(k: KernelInfo, step: Any) -> str:
    """The math unit of a row's flops (codegen/targets.py `math_of`): a matmul's or conv's operand dtype."""
    node = next((n for n in (k.group.nodes if k.group is not None else []) if n.op in _DOT_OPS), None)
    if node is None:
        return "fp32"
    precision = step.constexprs.get("PREC") if isinstance(step, LaunchStep) else None
    return math_of("matmul", node.inputs[0].dtype, precision)


_DOT_OPS = {"matmul", "conv2d", "conv2d_input_grad", "conv2d_weight_grad", "attention", "attention_grad_q",
            "attention_grad_kv"}


def _launch_text(step: LaunchStep) -> str:
    blocks = " ".join(f"{k}={v}" for k, v in step.constexprs.items() if k.isupper() and type(v) is int)
    stages = f" stages={step.num_stages}" if step.num_stages is not None else ""  # a launch's own (a matmul's)
    return f"grid={list(step.grid)} {blocks} warps={step.num_warps}{stages}"


def explain(fn: Callable, *args: Any, passes: bool = False, target: str | None = None,
            **kwargs: Any) -> ExplainReport:
    """Capture `fn(*args, **kwargs)` as `ember.trace` does (under no_grad), and report the kernels the
    runtime launches for it.

    `passes=True` shows the IR after every pass instead of only before and after the pipeline;
    `target` the schedule for that target (default: the arguments' device): "cpu", "cuda", or a GPU
    by name ("h100", "h200", "a100": codegen/targets.py), whose report also estimates each kernel's
    time (`KernelInfo.estimate_us`, a roofline). Arguments may be meta tensors: nothing runs.
    """
    gpu = gpu_spec(target)
    # An ember.compile'd function or module: explain the function it wraps and say why it recompiled.
    fn = fn._ember if isinstance(fn, CompiledModule) else fn
    guards = fn.guard_report() if isinstance(fn, CompiledFunction) else None
    fn = fn.fn if isinstance(fn, CompiledFunction) else fn
    with torch.no_grad():
        sg = StaticGraph(fn, args, kwargs)
    graph = sg.graph
    _, inputs = sg.graph_inputs(args, kwargs)
    device = inputs[0].device if inputs else torch.device("cpu")
    if target is not None:
        device = torch.device("cpu" if target == "cpu" else "cuda")  # a GPU by name: the "cuda" schedule
    schedule = sg.compiled.schedule_for(device)
    with no_timing():  # nothing runs: a matmul's tuned config only from the autotune cache
        plan = sg.compiled.plan_at(device, [t.stride() for t in inputs])
    unfused = build_schedule(schedule.graph, schedule.target, fuse=False).entries
    unfused = [e for e in unfused if e.config is not None or e.kind == "extern"]
    externs = [n for n in graph.nodes if n.op == "extern"]
    counts = Counter(n.attrs["target"] for n in externs)
    reasons = {n.attrs["target"]: _fallback_reason(n) for n in externs}
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    return ExplainReport(
        name=type(fn).__name__ if isinstance(fn, torch.nn.Module) else name,
        ir_before=sg.snapshots[0][1], ir_after=str(graph), snapshots=list(sg.snapshots),
        kernels=_kernels(schedule, plan, gpu), compulsory_bytes=compulsory_bytes(graph),
        eager_ops=eager_ops(fn, args, kwargs), unfused_kernels=len(unfused),
        unfused_bytes=sum(e.cost.bytes_moved for e in unfused),
        fallbacks=[FallbackInfo(t, reasons[t], c) for t, c in counts.items()],
        graph=graph, static_graph=sg, show_passes=passes, guards=guards, schedule=schedule,
        gpu=gpu, memory=plan_memory(plan))
