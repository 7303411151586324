"""Executing a plan: allocate buffers, fill launch args with tensors, launch, call externs.

`CompiledGraph` keeps one schedule per target (runtime/schedule.py) and one plan per (device, input
strides, fp32 matmul precision, cuDNN's TF32 flag): strides decide which reshapes are views, and the
precisions pick the tl.dot mode of matmuls and convolutions; sizes are static in the IR.

Donated outputs (`donate={output: input}`) come back as the input tensor itself, holding the new
value: stored there by the kernel that computes it, or copied where the plan could not (`plan.copies`).
Either way the input's version counter moves, as after an in-place op, so autograd notices a tensor
it saved having changed.
"""

from __future__ import annotations

import torch

from ..codegen.kernel import interpreter_position
from ..codegen.lru import LRU
from ..ir import Graph
from ..ir.ops.extern import call_extern
from ..ir.ops.index import INDEX_ERRORS
from .plan import Buf, ExternStep, LaunchStep, Plan, build_plan
from .progress import Progress
from .schedule import Schedule, build_schedule
from .views import View, contiguous_strides

MAX_PLANS = 64  # plans kept per compiled graph (one per input layout, device and fp32 precision)


def _as_tensor(bufs: list[torch.Tensor], v: View) -> torch.Tensor:
    base = bufs[v.buf]
    return torch.as_strided(base, v.shape, v.strides, base.storage_offset() + v.offset)


def execute(plan: Plan, inputs: list[torch.Tensor], device: torch.device, name: str = "a graph",
            donate: dict[int, int] | None = None) -> list[torch.Tensor]:
    bufs: list = list(inputs)
    for spec in plan.bufs[len(inputs):]:
        if spec.kind == "alias":  # a slice of an earlier buffer, from an offset (runtime/cat_slots.py)
            base = bufs[spec.base]
            bufs.append(torch.as_strided(base, spec.shape, (1,), base.storage_offset() + spec.offset))
            continue
        bufs.append(torch.empty(spec.shape, dtype=spec.dtype, device=device) if spec.kind == "alloc" else
                    torch.zeros(spec.shape, dtype=spec.dtype, device=device) if spec.kind == "flag" else None)
    # A long call reports which step it is in (and, interpreted, which program instance): progress.py.
    inner = interpreter_position if device.type == "cpu" else None
    with Progress("kernel", len(plan.steps), title=f"running {name}", inner=inner) as progress:
        for i, step in enumerate(plan.steps, 1):
            if i - 1 in plan.flag_checks:
                _check_flags(plan, bufs)
            if isinstance(step, LaunchStep):
                progress.update(i, step.kernel.name)
                args = [bufs[a.index] if isinstance(a, Buf) else a for a in step.args]
                step.kernel.launch(step.grid, args, step.constexprs, device, step.num_warps)
            else:
                progress.update(i, step.node.attrs.get("target", "extern"))
                _run_extern(step, bufs)
    if plan.flag is not None:
        _check_flags(plan, bufs)
    outs = [_as_tensor(bufs, v) for v in plan.outputs]
    if donate:
        copied = dict(plan.copies)
        with torch.no_grad():
            for k, j in donate.items():
                if k in copied:
                    inputs[j].copy_(outs[k])  # (moves the version counter itself)
                else:
                    torch.autograd.graph.increment_version(inputs[j])
                outs[k] = inputs[j]
    return outs


def _check_flags(plan: Plan, bufs: list) -> None:
    """Raise eager's error (IndexError or RuntimeError, by the code) when a kernel raised the plan's
    error flag (an index out of range: the kernel loaded nothing there, ir/ops/index.py). One read,
    only for plans with such kernels (`plan.flag`, read before `plan.flag_checks` and after the run)."""
    code = int(bufs[plan.flag][0])
    if code:
        kind, message = INDEX_ERRORS[code]
        raise kind(message)


def _run_extern(step: ExternStep, bufs: list) -> None:
    node = step.node
    try:
        out = call_extern([_as_tensor(bufs, v) for v in step.inputs], **node.attrs)
    except Exception as e:  # torch's own error for the op, as eager raises it: the API names it for the user
        e.ember_extern = node.attrs.get("target")
        raise
    outs = out if isinstance(out, (list, tuple)) else [out]
    for k, (value, b, t) in enumerate(zip(node.outputs, step.outputs, outs)):
        if k in step.unused:
            continue
        if tuple(t.shape) != value.shape or t.dtype != value.dtype:
            raise RuntimeError(f"extern {node.attrs.get('target')}: returned {t.dtype}{list(t.shape)}, "
                               f"IR expects {value.type}")
        # The plan assumes contiguous extern results (and must not alias an input buffer).
        bufs[b] = t.contiguous() if t.stride() != contiguous_strides(value.shape) else t


class CompiledGraph:
    """`cg(inputs) -> outputs`, matching `ember.ir.evaluate(graph, *inputs)`."""

    def __init__(self, graph: Graph, device: torch.device | str | None = None, fuse: bool = True,
                 name: str | None = None, donate: dict[int, int] | None = None):
        self.graph = graph
        self.name = name or f"a graph of {len(graph.nodes)} nodes"  # in progress reports
        self.fuse = fuse
        self.donate = dict(donate or {})
        for k, j in self.donate.items():
            out, inp = graph.outputs[k], graph.inputs[j]
            if out.type != inp.type:
                raise TypeError(f"donate: output {k} ({out.type}) cannot be stored over input {j} ({inp.type})")
        if len(set(self.donate.values())) != len(self.donate):
            raise ValueError("donate: an input can take one output")
        self.default_device = torch.device(device or "cpu")
        self._schedules: dict[str, Schedule] = {}
        self._plans: LRU[tuple, Plan] = LRU(MAX_PLANS)  # a caller cycling through layouts re-plans
        self._last: Plan | None = None
        self._last_device = self.default_device

    def schedule_for(self, device: torch.device) -> Schedule:
        """The schedule for `device`'s target, computed once."""
        target = "cpu" if device.type == "cpu" else "cuda"
        if target not in self._schedules:
            with Progress(title=f"scheduling {self.name}"):
                self._schedules[target] = build_schedule(self.graph, target, self.fuse, self.donate)
        return self._schedules[target]

    @property
    def schedule(self) -> Schedule:
        """The schedule of the last call's device (before any call, the default device's)."""
        return self.schedule_for(self._last_device)

    def plan_at(self, device: torch.device, strides: list[tuple[int, ...]]) -> Plan:
        """The plan for inputs with these strides on `device` (built once; `explain` asks for other
        targets' plans this way, on any machine: planning emits kernels but launches nothing)."""
        # The fp32 precisions the planner reads: matmul's (tl.dot mode) and cuDNN's TF32 flag (conv's).
        key = (device.type, device.index, tuple(strides), torch.get_float32_matmul_precision(),
               torch.backends.cudnn.allow_tf32)
        plan = self._plans.get(key)
        if plan is None:
            plan = self._plans[key] = self._build(list(key[2]), device)
        return plan

    def _build(self, strides: list[tuple[int, ...]], device: torch.device) -> Plan:
        schedule = self.schedule_for(device)
        with Progress(title=f"planning {self.name}"):
            return build_plan(schedule, strides, device)

    def __call__(self, inputs) -> list[torch.Tensor]:
        inputs = list(inputs)
        if len(inputs) != len(self.graph.inputs):
            raise TypeError(f"graph takes {len(self.graph.inputs)} inputs, got {len(inputs)}")
        for v, t in zip(self.graph.inputs, inputs):
            if tuple(t.shape) != v.shape or t.dtype != v.dtype:
                raise TypeError(f"input %{v.name}: expected {v.type}, got {t.dtype}{list(t.shape)}")
        device = self._last_device = inputs[0].device if inputs else self.default_device
        plan = self._last = self.plan_at(device, [t.stride() for t in inputs])
        return execute(plan, inputs, device, self.name, self.donate)

    @property
    def plan(self) -> Plan:
        """The plan of the last call (or, before any call, the one for contiguous inputs)."""
        if self._last is None:
            self._last = self.plan_at(self.default_device, [contiguous_strides(v.shape) for v in self.graph.inputs])
        return self._last

    @property
    def kernels(self) -> list[LaunchStep]:
        """Kernel launches per call, in order (each has .name, .source, .ops, .kernel)."""
        return self.plan.launches

    @property
    def num_kernels(self) -> int:
        return len(self.plan.launches)

    @property
    def externs(self) -> list[str]:
        return [s.node.attrs["target"] for s in self.plan.steps if isinstance(s, ExternStep)]
