"""Fused optimizer steps: every parameter update of one step as one ember IR graph, run in place.

An optimizer describes each parameter's update as a `ParamUpdate`: a *rule* (a function appending
pointwise IR nodes: new parameter and new state values from the old ones and the gradient), the
rule's structural *flags* (momentum on/off, nesterov, amsgrad, ...: they shape the graph), and the
values of its *scalar slots* for this step (lr, betas, bias corrections, ...).

`FusedStep` puts the updates of all parameters that share a device and a compute dtype into one
graph. The graph's first input is a 1-D tensor `hp` holding every scalar slot of every parameter;
rules read slots as 0-dim `select` views of it, so hyperparameters that change between steps (lr
from a scheduler, Adam's bias corrections) are data, never constants: a new step count, learning
rate or beta reuses the compiled graph, its plan and its kernels. `hp` stays on the host whatever
the device (`compile_ir(..., host={0})`): the kernels take its slots by value, as float parameters
(runtime/plan.py `Host`), so a step copies nothing to the device; the program keeps its `hp` tensor
and a step writes the new values into it (`HostScalars`: no tensor made per step). Only a change
of structure (a new shape, a flag, a parameter gaining or losing its gradient) builds a new graph;
the kernels themselves stay cached by source in `ember.codegen`.

The graph goes through the driver (`ember.runtime.compile_ir`: passes, schedule, plan); the fusion
pass makes each parameter's whole update one pointwise group, and horizontal fusion
(passes/horizontal.py) runs the groups of one structure (one rule, flags and dtype; any shapes) as
one multi-tensor kernel, so a step launches one kernel per dtype group (more when rules or flags
differ between param groups, or a parameter is not contiguous).

In place: each new parameter and state value is a donated output (`runtime.compile_ir(...,
donate=...)`, JAX's `donate_argnums`): the runtime stores it into the tensor it replaces, in the kernel
that computes it, or copies it there where the plan cannot (`FusedStep.in_place` says whether the last
step needed no copy).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ..ir import Graph, TensorType, Value
from ..runtime.driver import compile_ir
from ..runtime.executor import tensor_guard


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype an update computes in (torch's opmath type): float32 for half types."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class Builder:
    """What a rule sees: pointwise helpers over IR values and its parameter's scalar slots."""

    def __init__(self, graph: Graph, hp: Value, dtype: torch.dtype):
        self.graph = graph
        self.hp = hp
        self.dtype = dtype
        self._base = 0
        self._slots = 0

    def s(self, i: int) -> Value:
        """Scalar slot `i` of the current parameter: a 0-dim view of `hp`."""
        if not 0 <= i < self._slots:
            raise IndexError(f"rule reads scalar slot {i}; the update declares {self._slots}")
        return self.graph.add("select", [self.hp], dim=0, index=self._base + i)

    def op(self, name: str, *xs: Value, **attrs) -> Value:
        return self.graph.add(name, list(xs), **attrs)

    def add(self, a: Value, b: Value) -> Value:
        return self.op("add", a, b)

    def sub(self, a: Value, b: Value) -> Value:
        return self.op("sub", a, b)

    def mul(self, a: Value, b: Value) -> Value:
        return self.op("mul", a, b)

    def div(self, a: Value, b: Value) -> Value:
        return self.op("div", a, b)

    def sqrt(self, a: Value) -> Value:
        return self.op("sqrt", a)

    def neg(self, a: Value) -> Value:
        return self.op("neg", a)

    def maximum(self, a: Value, b: Value) -> Value:
        return self.op("maximum", a, b)

    def lerp(self, a: Value, b: Value, small: bool, w: Value, one_minus_w: Value) -> Value:
        """torch.lerp(a, b, w) as torch's CPU kernel computes it: a + w*(b-a) for |w| < 0.5, else
        b - (b-a)*(1-w). `small` (|w| < 0.5) is a flag of the rule; `one_minus_w` a slot."""
        d = self.sub(b, a)
        return self.add(a, self.mul(w, d)) if small else self.sub(b, self.mul(d, one_minus_w))


# rule(builder, param, grad, states, flags) -> (new param, new states); values in the compute dtype.
Rule = Callable[[Builder, Value, Value, list, tuple], tuple]


@dataclass
class ParamUpdate:
    rule: Rule
    flags: tuple
    scalars: Sequence[float]
    param: torch.Tensor
    grad: torch.Tensor
    states: Sequence[torch.Tensor]  # read and overwritten, in the order the rule takes them

    def tensors(self) -> list[torch.Tensor]:
        """(param, grad, *states) as the graph takes them: flattened to 1-D when all are contiguous
        (an elementwise update does not care about shape, and 1-D kernels do the least index math
        and share one kernel source across parameters)."""
        ts = [self.param.detach(), self.grad.detach(), *self.states]
        return [t.view(-1) for t in ts] if all(t.is_contiguous() for t in ts) else ts

    def key(self) -> tuple:
        return (self.rule, self.flags, len(self.scalars),
                tuple((t.dtype, tuple(t.shape)) for t in self.tensors()))


def build_graph(updates: Sequence[ParamUpdate], dtype: torch.dtype) -> Graph:
    """The IR graph of one step: inputs hp, then (param, grad, *states) per update; outputs
    (new param, *new states) per update."""
    g = Graph()
    hp = g.add_input(TensorType((sum(len(u.scalars) for u in updates),), dtype), "hp")
    b = Builder(g, hp, dtype)
    outputs = []
    for i, u in enumerate(updates):
        names = ["p", "g"] + [f"s{k}_" for k in range(len(u.states))]
        ins = [g.add_input(TensorType(tuple(t.shape), t.dtype), f"{name}{i}") for name, t in zip(names, u.tensors())]
        up = [x if x.dtype == dtype else g.add("convert", [x], dtype=dtype) for x in ins]
        b._slots = len(u.scalars)
        new_p, new_states = u.rule(b, up[0], up[1], up[2:], u.flags)
        b._base += len(u.scalars)
        if len(new_states) != len(u.states):
            raise ValueError(f"{u.rule.__name__}: returned {len(new_states)} states for {len(u.states)}")
        for x, v in zip([ins[0]] + ins[2:], [new_p, *new_states]):
            outputs.append(v if v.dtype == x.dtype else g.add("convert", [v], dtype=x.dtype))
    g.set_outputs(outputs)
    return g


class _Program:
    """One compiled step graph: output k is stored over input `aliases[k]`. Its `hp` input is one
    tensor kept for the program (`HostScalars`): a step writes the new values into it."""

    def __init__(self, graph: Graph, aliases: list[int]):
        self.compiled = compile_ir(graph, donate=dict(enumerate(aliases)), host=frozenset({0}))
        self.graph = self.compiled.graph
        self.aliases = aliases
        self.hp = HostScalars(graph.inputs[0].shape[0], graph.inputs[0].dtype)
        self.prepared = None  # the plan of the layouts the guard below accepts
        self.counts = (0, True)

    def __call__(self, inputs: list[torch.Tensor]) -> tuple[int, bool]:
        """(kernels launched, whether every update was stored in place). `inputs`: hp, then the
        updates' tensors flattened as the graph takes them (`ParamUpdate.tensors`)."""
        self.prepared = self.compiled.prepare(inputs)
        self.prepared.run(inputs, self.compiled.name, self.compiled.donate)
        plan = self.compiled.plan
        self.counts = (len(plan.launches), not plan.copies)
        return self.counts

    def run_raw(self, inputs: list[torch.Tensor]) -> tuple[int, bool]:
        """The step on hp and the updates' own tensors (not flattened: the same memory as the views
        the plan was made for, which the caller's guard checked)."""
        self.prepared.run(inputs, self.compiled.name, self.compiled.donate)
        return self.counts


class HostScalars:
    """A step's hyperparameters (lr, bias corrections, ...) as one CPU tensor made once, whatever the
    device: each step writes its values in place (no tensor made per step) and the step's graph
    takes it as a host-held input (compile_ir's `host`): its kernels receive the values, rounded to
    the tensor's dtype here as `torch.tensor(values, dtype=...)` rounds, as launch arguments. A value
    is read when its launch is issued, so rewriting the tensor never races a kernel still queued."""

    def __init__(self, n: int, dtype: torch.dtype):
        self.values: list[float] = []
        self.tensor = torch.zeros(n, dtype=dtype)
        self._host = self.tensor.numpy()

    def set(self, values: list[float]) -> torch.Tensor:
        if values != self.values:  # (a constant learning rate and no bias correction: nothing to write)
            self._host[:] = values
            self.values = values
        return self.tensor


class _Guarded:
    """The program a bucket ran last, with a guard over the updates' own tensors (shapes, strides,
    dtypes, devices: what decides the graph and its plan) and the updates' structure."""

    __slots__ = ("structure", "check", "program")

    def __init__(self, structure: tuple, raw: list[torch.Tensor], program: _Program):
        self.structure, self.check, self.program = structure, tensor_guard(raw), program


class FusedStep:
    """Runs the updates of one optimizer step: one graph per (device, compute dtype), cached by the
    structure of the updates. Counters of the last call: `num_kernels`, `in_place`.

    The host path per step (docs/architecture.md): a bucket whose updates have the structure and
    tensor layouts of its last step (one guard) runs that step's prepared plan on the tensors as they
    are, without flattening them or working out the cache key again, and writes only the new
    hyperparameter values into the program's `hp` tensor."""

    def __init__(self) -> None:
        self._programs: dict[tuple, _Program] = {}
        self._last: dict[tuple, _Guarded] = {}
        self.num_kernels = 0
        self.in_place = True
        self.num_graphs_built = 0

    def __call__(self, updates: Sequence[ParamUpdate]) -> int:
        buckets: dict[tuple, list[ParamUpdate]] = {}
        for u in updates:
            buckets.setdefault((u.param.device, compute_dtype(u.param.dtype)), []).append(u)
        self.num_kernels, self.in_place = 0, True
        for bucket, group in buckets.items():
            structure = tuple((u.rule, u.flags, len(u.scalars)) for u in group)
            raw = [t for u in group for t in (u.param, u.grad, *u.states)]
            values: list[float] = []
            for u in group:
                values += u.scalars  # (floats: each rule's scalars are computed in Python floats)
            last = self._last.get(bucket)
            if last is not None and last.structure == structure and last.check(*raw):
                program = last.program
                launched, inplace = program.run_raw([program.hp.set(values)] + raw)
            else:
                program = self._program(bucket, group)
                inputs = [program.hp.set(values)]
                for u in group:
                    inputs += u.tensors()
                launched, inplace = program(inputs)
                self._last[bucket] = _Guarded(structure, raw, program)
            self.num_kernels += launched
            self.in_place &= inplace
        return self.num_kernels

    def _program(self, bucket: tuple, group: list[ParamUpdate]) -> _Program:
        device, dtype = bucket
        key = (device, dtype, tuple(u.key() for u in group))  # also checks shapes and dtypes
        program = self._programs.get(key)
        if program is None:
            aliases, n = [], 1
            for u in group:
                aliases += [n] + [n + 2 + k for k in range(len(u.states))]
                n += 2 + len(u.states)
            program = self._programs[key] = _Program(build_graph(group, dtype), aliases)
            self.num_graphs_built += 1
        return program

    def programs(self) -> list[_Program]:
        return list(self._programs.values())
