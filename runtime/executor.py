"""Executing a plan: allocate buffers, fill launch args with tensors, launch, call externs.

`CompiledGraph` keeps one schedule per target (runtime/schedule.py) and one plan per (device, input
strides, fp32 matmul precision, cuDNN's TF32 flag): strides decide which reshapes are views, and the
precisions pick the tl.dot mode of matmuls and convolutions; sizes are static in the IR.

Donated outputs (`donate={output: input}`) come back as the input tensor itself, holding the new
value: stored there by the kernel that computes it, or copied where the plan could not (`plan.copies`).
Either way the input's version counter moves, as after an in-place op, so autograd notices a tensor
it saved having changed.

A plan runs through its `Prepared` form (made once): launches bound at plan time, internal
temporaries sharing one slab by lifetime (runtime/memory.py), kept in a reused arena when it is at
most `ARENA_MAX_BYTES`, outputs made per call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..codegen.emitter import HOST_SIGS
from ..codegen.kernel import interpreter_position
from ..codegen.lru import LRU
from ..ir import Graph
from ..ir.ops.extern import call_extern
from ..ir.ops.index import INDEX_ERRORS
from .memory import plan_memory
from .plan import Buf, ExternStep, Host, LaunchStep, Plan, build_plan
from .progress import Progress
from .schedule import Schedule, build_schedule
from .views import View, contiguous_strides

MAX_PLANS = 64  # plans kept per compiled graph (one per input layout, device and fp32 precision)
# Temporaries an arena holds between calls, per prepared plan: the host cost of allocating is per
# buffer, not per byte, so small ones gain; big ones are allocated per call (the caching allocator
# can then lend their memory to other graphs between calls: a forward's temporaries to the backward).
ARENA_MAX_BYTES = 16 << 20


def tensor_guard(tensors: Sequence[torch.Tensor]) -> Callable[..., bool]:
    """`guard(*tensors) -> bool`: True when the tensors have these shapes, strides, dtypes, devices and
    requires_grad (and dispatch keys) again. One C++ call (torch's TensorGuards, what Dynamo's guards
    use) where available, else a tuple comparison."""
    tensors = list(tensors)
    try:
        from torch._C._dynamo.guards import TensorGuards

        return TensorGuards(*tensors, dynamic_dims_sizes=[list(t.shape) for t in tensors],
                            dynamic_dims_strides=[list(t.stride()) for t in tensors]).check
    except (ImportError, TypeError, RuntimeError):  # another torch: the same facts in Python
        def meta(ts: Sequence[torch.Tensor]) -> list[tuple]:
            return [(t.shape, t.stride(), t.dtype, t.device, t.requires_grad) if isinstance(t, torch.Tensor)
                    else None for t in ts]

        want = meta(tensors)
        return lambda *ts: meta(ts) == want


def _as_tensor(bufs: list[torch.Tensor], v: View) -> torch.Tensor:
    base = bufs[v.buf]
    return torch.as_strided(base, v.shape, v.strides, base.storage_offset() + v.offset)


def execute(plan: Plan, inputs: list[torch.Tensor], device: torch.device, name: str = "a graph",
            donate: dict[int, int] | None = None) -> list[torch.Tensor]:
    return prepared(plan, device).run(inputs, name, donate)


def prepared(plan: Plan, device: torch.device) -> Prepared:
    """The plan's executor for `device`, made once per plan (a plan is for one device)."""
    p = plan.__dict__.get("_prepared")
    if p is None or p.device != device:
        p = plan.__dict__["_prepared"] = Prepared(plan, device)
    return p


class Prepared:
    """A plan made ready to run (the host path, docs/architecture.md): each launch bound once
    (`Kernel.bind`: the kernel, grid, constexprs and launch config kept) with its args as a template
    where only buffer slots are filled per call; the internal temporaries are views of one slab
    (runtime/memory.py: placed by lifetime), held with the slab in a reused *arena*.

    The slab holds the "alloc" buffers no output, extern call or alias reaching an output can
    see: a result handed to the caller is never one of them, so a later call never overwrites it.
    Arenas are taken from a free list for the call and put back after it (a thread running the same
    plan meanwhile takes another or makes a new one); on a GPU, per stream (a kernel still running
    on one stream may read a temporary another stream's call would write).
    """

    def __init__(self, plan: Plan, device: torch.device):
        self.plan, self.device = plan, device
        n_in = self.n_inputs = sum(1 for b in plan.bufs if b.kind == "input")
        # The private temporaries share one slab by lifetime (runtime/memory.py); a slab of up to
        # ARENA_MAX_BYTES is kept in the arena with its views made once, a larger one made per call.
        self.memory = memory = plan_memory(plan)
        self.keep_slab = memory.slab_bytes <= ARENA_MAX_BYTES
        # the arena: the slab (kept), then a view of it per private temporary: (offset, shape, dtype)
        self.arena_specs: list[tuple[int, tuple[int, ...], torch.dtype]] = []
        # per non-input buffer: ("arena", slot) | ("slab", offset, shape, dtype) | ("alloc", spec) |
        # ("flag", spec) | ("alias", spec) | ("none",)
        self.fill: list[tuple] = []
        for i, spec in enumerate(plan.bufs[n_in:], n_in):
            offset = memory.offsets.get(i)
            if offset is not None and self.keep_slab:
                self.fill.append(("arena", len(self.arena_specs) + 1))
                self.arena_specs.append((offset, spec.shape, spec.dtype))
            elif offset is not None:
                self.fill.append(("slab", offset, spec.shape, spec.dtype))
            elif spec.kind in ("alloc", "flag", "alias"):
                self.fill.append((spec.kind, spec))
            else:
                self.fill.append(("none",))
        self.simple_fill = all(f[0] in ("arena", "alloc") for f in self.fill)
        self.steps: list[tuple] = []
        for step in plan.steps:
            if isinstance(step, LaunchStep):
                launcher = step.kernel.bind(step.grid, step.constexprs, device, step.num_warps, step.num_stages)
                slots = tuple((k, a.index) for k, a in enumerate(step.args) if isinstance(a, Buf))
                values = tuple((k, a.index, a.element) for k, a in enumerate(step.args) if isinstance(a, Host))
                template = [None if isinstance(a, (Buf, Host)) else a for a in step.args]
                self.steps.append((launcher, template, slots, values, step.kernel.name))
            else:
                self.steps.append((None, step, (), (), step.node.attrs.get("target", "extern")))
        # outputs: the buffer itself where the view is all of a buffer the run made (its first use)
        whole: set[int] = set()
        self.outputs: list[tuple[int, View | None]] = []
        for v in plan.outputs:
            spec = plan.bufs[v.buf]
            if (spec.kind in ("alloc", "flag") and v.buf not in whole and v.offset == 0 and v.shape == spec.shape
                    and tuple(v.strides) == contiguous_strides(spec.shape)):
                whole.add(v.buf)
                self.outputs.append((v.buf, None))
            else:
                self.outputs.append((v.buf, v))
        self._arenas: dict[Any, list[list[torch.Tensor]]] = {}
        self._donate_for: dict | None = None  # the donate dict `_stored` / `_copied` were worked out for
        self._stored: list[tuple[int, int]] = []
        self._copied: list[tuple[int, int]] = []
        self._made: list[tuple[int, int, View | None]] = []  # the outputs not stored in an input
        self.inner = interpreter_position if device.type == "cpu" else None

    def _new_arena(self) -> list[torch.Tensor]:
        slab = new_slab(self.memory.slab_bytes if self.keep_slab else 0, self.device)
        return [slab] + [_slab_view(slab, *spec) for spec in self.arena_specs]

    def run(self, inputs: list[torch.Tensor], name: str = "a graph",
            donate: dict[int, int] | None = None) -> list[torch.Tensor]:
        stream = None if self.inner is not None else _raw_stream(self.device)
        free = self._arenas.get(stream)
        if free is None:
            free = self._arenas.setdefault(stream, [])
        try:
            arena = free.pop()
        except IndexError:
            arena = self._new_arena()
        try:
            return self._run(arena, inputs, name, donate)
        finally:
            free.append(arena)

    def _run(self, arena: list[torch.Tensor], inputs: list[torch.Tensor], name: str,
             donate: dict[int, int] | None) -> list[torch.Tensor]:
        plan, device = self.plan, self.device
        bufs: list = list(inputs)
        host: dict[int, list] = {}
        for b in plan.host:  # (values on the host: a CPU tensor's `tolist` is one call, no device sync)
            host[b] = bufs[b].tolist()
            if plan.host_pointer and bufs[b].device != device:
                bufs[b] = bufs[b].to(device)
        if self.simple_fill:
            for kind, x in self.fill:
                bufs.append(arena[x] if kind == "arena" else torch.empty(x.shape, dtype=x.dtype, device=device))
        else:
            slab = None if self.keep_slab else new_slab(self.memory.slab_bytes, device)
            for f in self.fill:
                kind = f[0]
                if kind == "arena":
                    bufs.append(arena[f[1]])
                elif kind == "slab":
                    bufs.append(_slab_view(slab, *f[1:]))
                elif kind == "alloc":
                    bufs.append(torch.empty(f[1].shape, dtype=f[1].dtype, device=device))
                elif kind == "flag":
                    bufs.append(torch.zeros(f[1].shape, dtype=f[1].dtype, device=device))
                elif kind == "alias":  # a slice of an earlier buffer, from an offset (runtime/cat_slots.py)
                    spec = f[1]
                    base = bufs[spec.base]
                    bufs.append(torch.as_strided(base, spec.shape, (1,), base.storage_offset() + spec.offset))
                else:
                    bufs.append(None)
        # A long call reports which step it is in (and, interpreted, which program instance): progress.py.
        checks = plan.flag_checks
        with Progress("kernel", len(self.steps), title=f"running {name}", inner=self.inner) as progress:
            for i, (launcher, template, slots, values, label) in enumerate(self.steps):
                if checks and i in checks:
                    _check_flags(plan, bufs)
                progress.update(i + 1, label)
                if launcher is not None:
                    args = template.copy()
                    for k, b in slots:
                        args[k] = bufs[b]
                    for k, b, e in values:
                        args[k] = host[b][e]
                    launcher(args)
                else:
                    _run_extern(template, bufs)
        if plan.flag is not None:
            _check_flags(plan, bufs)
        if not donate:
            return [bufs[b] if v is None else _as_tensor(bufs, v) for b, v in self.outputs]
        if donate is not self._donate_for:  # (the graph's own dict every call: worked out once)
            copied = dict(plan.copies)
            self._stored = [(k, j) for k, j in donate.items() if k not in copied]
            self._copied = [(k, j) for k, j in donate.items() if k in copied]
            stored_outputs = {k for k, _ in self._stored}
            self._made = [(k, b, v) for k, (b, v) in enumerate(self.outputs) if k not in stored_outputs]
            self._donate_for = donate
        stored = self._stored
        # an output stored in its input is that input: no view of it is made
        outs: list = [None] * len(self.outputs)
        for k, b, v in self._made:
            outs[k] = bufs[b] if v is None else _as_tensor(bufs, v)
        with torch.no_grad():
            for k, j in self._copied:
                # (the caller's input may be laid out as another shape of the same memory: optimizers
                # hand parameters as they are to a plan of their flattened views, optim/engine.py)
                target = inputs[j] if inputs[j].shape == outs[k].shape else inputs[j].view(outs[k].shape)
                target.copy_(outs[k])  # (moves the version counter itself)
                outs[k] = inputs[j]
        if stored:
            torch.autograd.graph.increment_version([inputs[j] for _, j in stored])
            for k, j in stored:
                outs[k] = inputs[j]
        return outs


def new_slab(nbytes: int, device: torch.device) -> torch.Tensor:
    """The bytes of a plan's private temporaries (runtime/memory.py); tests fill it with garbage."""
    return torch.empty(nbytes, dtype=torch.uint8, device=device)


def _slab_view(slab: torch.Tensor, offset: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A temporary's tensor: its bytes of the slab (runtime/memory.py), contiguous."""
    n = math.prod(shape) * dtype.itemsize
    return slab[offset:offset + n].view(dtype).view(shape)


def _precisions() -> tuple[str, bool]:
    """The fp32 precisions the planner reads: matmul's (tl.dot mode) and cuDNN's TF32 flag (conv's)."""
    return torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32


def _raw_stream(device: torch.device) -> int:
    """The current stream of a GPU device, as a number (without making a Stream object)."""
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return raw(index) if raw is not None else torch.cuda.current_stream(device).cuda_stream


def _check_flags(plan: Plan, bufs: list) -> None:
    """Raise eager's error (IndexError or RuntimeError, by the code) when a kernel raised the plan's
    error flag (an index out of range: the kernel loaded nothing there, ir/ops/index.py). One read,
    only for plans with such kernels (`plan.flag`, read before `plan.flag_checks` and after the run)."""
    code = int(bufs[plan.flag][0])
    if code:
        kind, message = INDEX_ERRORS[code]
        err = kind(message)
        err.ember_data_error = True  # the user's data, not ember's bug (frontend/errors.user_error)
        raise err


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
                 name: str | None = None, donate: dict[int, int] | None = None,
                 host: frozenset[int] = frozenset()):
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
        self.host = frozenset(host)
        for j in self.host:
            if graph.inputs[j].dtype not in HOST_SIGS or j in self.donate.values():
                raise TypeError(f"host: input {j} ({graph.inputs[j].type}) must be float32 or float64, not donated")
        self.default_device = torch.device(device or "cpu")
        self._schedules: dict[str, Schedule] = {}
        self._plans: LRU[tuple, Plan] = LRU(MAX_PLANS)  # a caller cycling through layouts re-plans
        self._last: Plan | None = None
        self._last_device = self.default_device
        self._fast: tuple | None = None  # (guard, precisions, plan, Prepared) of the last layout

    def schedule_for(self, device: torch.device) -> Schedule:
        """The schedule for `device`'s target, computed once."""
        target = "cpu" if device.type == "cpu" else "cuda"
        if target not in self._schedules:
            with Progress(title=f"scheduling {self.name}"):
                self._schedules[target] = build_schedule(self.graph, target, self.fuse, self.donate, self.host)
        return self._schedules[target]

    @property
    def schedule(self) -> Schedule:
        """The schedule of the last call's device (before any call, the default device's)."""
        return self.schedule_for(self._last_device)

    def plan_at(self, device: torch.device, strides: list[tuple[int, ...]]) -> Plan:
        """The plan for inputs with these strides on `device` (built once; `explain` asks for other
        targets' plans this way, on any machine: planning emits kernels but launches nothing)."""
        key = (device.type, device.index, tuple(strides), *_precisions())
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
        fast = self._fast  # the last call's layout: one guard over every input, then its prepared plan
        if fast is not None and len(inputs) == len(self.graph.inputs) and fast[0](*inputs) and fast[1] == _precisions():
            self._last = fast[2]
            return fast[3].run(inputs, self.name, self.donate)
        return self.prepare(inputs).run(inputs, self.name, self.donate)

    def prepare(self, inputs: list[torch.Tensor]) -> Prepared:
        """The prepared plan for these inputs (checked against the graph's input types): `run(inputs,
        name, donate)` runs it on them, or on tensors of the same memory layouts (the caller's guard)."""
        if len(inputs) != len(self.graph.inputs):
            raise TypeError(f"graph takes {len(self.graph.inputs)} inputs, got {len(inputs)}")
        for v, t in zip(self.graph.inputs, inputs):
            if tuple(t.shape) != v.shape or t.dtype != v.dtype:
                raise TypeError(f"input %{v.name}: expected {v.type}, got {t.dtype}{list(t.shape)}")
        # the device of the first input not held on the host
        device = next((t.device for j, t in enumerate(inputs) if j not in self.host), self.default_device)
        self._last_device = device
        plan = self._last = self.plan_at(device, [t.stride() for t in inputs])
        run = prepared(plan, device)
        self._fast = (tensor_guard(inputs), _precisions(), plan, run)
        return run

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
