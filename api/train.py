"""`ember.compile_step`: a whole training step (forward, loss, backward, optimizer update) as one
static graph.

    step = ember.compile_step(model, loss_fn, optimizer)   # optimizer: an ember.optim optimizer
    loss = step(x, y)                                      # updates parameters and state in place

The step graph is built from three pieces ember already has: the captured graph of
`loss_fn(model(x), y)` (parameters and buffers are its inputs), its reverse-mode derivative with
respect to the optimizer's parameters (`passes.autodiff.grad_graph`: the gradients never leave the
graph, `.grad` stays untouched), and the optimizer's update graph (`ember.optim.engine.build_graph`:
the rule of each parameter, hyperparameters as a run-time tensor so the step count and learning rate
never recompile; the program keeps that tensor and each step writes the new values into it,
`optim.engine.HostScalars`), inlined with the gradient outputs as its gradient inputs. The pass pipeline and
fusion then see all three at once, so the update of a parameter fuses with the kernel that produces
its gradient where shapes allow. Outputs (new parameters, new optimizer state, updated buffers such
as batch-norm running statistics) are donated outputs (runtime/schedule.py): each is stored by its
kernel into the tensor it replaces, so a step copies nothing (`step.copies` counts exceptions).

One graph per (input shapes/dtypes/devices, training flag, optimizer structure); it is rebuilt when
one of those changes.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..frontend.capture import module_state
from ..frontend.errors import boundary
from ..ir import Graph, Value
from ..passes.autodiff import grad_graph, reaching_inputs
from ..runtime.driver import compile_ir
from ..runtime.outputs import write_back
from .distributed import DistributedStep, is_ddp, refuse_ddp
from .module import CompiledModule
from .static import StaticGraph


class _LossOf(nn.Module):
    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, x, y):
        return self.loss_fn(self.model(x), y)


def _fit(g: Graph, v: Value, like: Value) -> Value:
    """`v` reshaped / converted to `like`'s type (the update graph works on flattened tensors)."""
    if v.dtype != like.dtype:
        v = g.add("convert", [v], dtype=like.dtype)
    return v if v.shape == like.shape else g.add("reshape", [v], shape=like.shape)


def refuse_unreached(graph: Graph, wrt: list[int], params: list[torch.Tensor], model: nn.Module) -> None:
    """Parameters the loss does not depend on get no gradient in eager (`.grad` stays None) and torch's
    optimizers skip them, while a compiled update would still apply weight decay and momentum to a
    zero gradient: refused, naming them, rather than a silently different step."""
    unreached = [p for p, r in zip(params, reaching_inputs(graph, wrt)) if not r]
    if unreached:
        names = {id(p): n for n, p in model.named_parameters()}
        listed = ", ".join(names.get(id(p), f"a {tuple(p.shape)} tensor") for p in unreached)
        raise ValueError(f"compile_step: the loss does not depend on parameter(s) {listed}: eager autograd "
                         "leaves their .grad None and the optimizer skips them. Give the optimizer only the "
                         "parameters the loss uses (or set requires_grad=False on these)")


class TracedLoss:
    """The loss module traced for one batch signature, and the graph inputs `wrt` of the optimizer's
    parameters (each one the loss must reach: `refuse_unreached`)."""

    def __init__(self, loss_module: _LossOf, x, y, params: list[torch.Tensor]):
        with torch.no_grad():
            self.static = StaticGraph(loss_module, (x, y))
        index = {id(t): i for i, t in enumerate(self.tensors(loss_module, x, y))}
        if any(id(p) not in index for p in params):
            raise ValueError("compile_step: the optimizer holds parameters the model does not use")
        self.wrt = [index[id(p)] for p in params]
        refuse_unreached(self.static.graph, self.wrt, params, loss_module.model)

    def tensors(self, loss_module: _LossOf, x, y) -> list[torch.Tensor]:
        """The graph's inputs before hp and states: x, y, the parameters and buffers, the tensors
        `loss_fn` reaches through closures and globals (read again now), lifted constants."""
        return ([x, y] + list(module_state(loss_module).values()) + self.static.captured.source_tensors()
                + self.static.lowered.constants)


class _StepProgram(TracedLoss):
    def __init__(self, loss_module: _LossOf, x, y, updates):
        from ..optim.engine import HostScalars, build_graph, compute_dtype

        params = [p for _, p in updates]
        super().__init__(loss_module, x, y, params)
        graph = self.static.graph
        joint = grad_graph(graph, self.wrt, out_index=0)  # outputs: loss, mutations, gradients
        n_out = len(graph.outputs)
        dtypes = {compute_dtype(p.dtype) for p in params} | {p.device for p in params}
        if len(dtypes) != 2:
            raise NotImplementedError("compile_step: parameters of several dtypes or devices")
        update_graph = build_graph([u for u, _ in updates], compute_dtype(params[0].dtype))
        # Bind the update graph: hp and optimizer states become new inputs; params and gradients
        # come from the joint graph (reshaped to the flattened forms the update rules use).
        hp = joint.add_input(update_graph.inputs[0].type, "hp")
        self.hp_dtype = hp.dtype
        bound, k = [hp], 1
        replaced = []  # the input each new value replaces: parameters, then their states
        self.num_states = 0
        for j, (u, _) in enumerate(updates):
            p_in, g_in = update_graph.inputs[k], update_graph.inputs[k + 1]
            bound.append(_fit(joint, joint.inputs[self.wrt[j]], p_in))
            bound.append(_fit(joint, joint.outputs[n_out + j], g_in))
            replaced.append(self.wrt[j])
            for s_in in update_graph.inputs[k + 2:k + 2 + len(u.states)]:
                bound.append(joint.add_input(s_in.type, f"state{self.num_states}"))
                replaced.append(len(joint.inputs) - 1)
                self.num_states += 1
            k += 2 + len(u.states)
        new_values = [_fit(joint, v, joint.inputs[i]) for v, i in zip(joint.inline(update_graph, bound), replaced)]
        joint.set_outputs(joint.outputs[:n_out] + new_values)
        # Every new value is stored over the tensor it replaces (donation): no copies after the step.
        # Updated buffers (batch-norm statistics) too.
        lowered = self.static.lowered
        donate = {n_out + k: i for k, i in enumerate(replaced)}
        donate |= {lowered.num_user_outputs + k: i for k, i in enumerate(lowered.mutated_inputs)
                   if joint.outputs[lowered.num_user_outputs + k].type == joint.inputs[i].type}
        # hp stays on the host: kernels take its slots by value (runtime/plan.py `Host`)
        self.compiled = compile_ir(joint, donate=donate, host=frozenset({joint.inputs.index(hp)}))
        self.hp = HostScalars(hp.shape[0], hp.dtype)
        self.donated_buffers = {i for k, i in donate.items() if k < n_out}
        self.graph = self.compiled.graph
        self.n_out = n_out


def cached_program(programs: dict, key: tuple, reasons: list[str], make: Callable):
    """The program built for `key`, rebuilt (and the reason kept) when a Python value its trace read
    has changed since (frontend/sources.py)."""
    program = programs.get(key)
    why = program.static.stale() if program is not None else None
    if why is not None:
        reasons.append(why)
        program = None
    if program is None:
        program = programs[key] = make()
    return program


class CompiledStep:
    """`step(x, y) -> loss`: one fused training step; `num_kernels` launches per step."""

    def __init__(self, model: nn.Module, loss_fn: Callable, optimizer):
        if not hasattr(optimizer, "_update"):
            raise TypeError("compile_step needs an ember.optim optimizer (SGD, RMSprop, Adam, AdamW): its update "
                            "rules are compiled into the step; got " + type(optimizer).__name__)
        self.loss_module = _LossOf(model, loss_fn)
        self.optimizer = optimizer
        self._programs: dict[tuple, _StepProgram] = {}
        self._grad_dummies: dict[int, torch.Tensor] = {}
        self.last: _StepProgram | None = None
        self.recompile_reasons: list[str] = []

    def _updates(self, advanced: list[dict]) -> list:
        """This step's ParamUpdate per parameter (advances the optimizer's step counters; the states
        that have one are appended to `advanced`)."""
        params = [(group, p) for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad]
        saved = [p.grad for _, p in params]
        for _, p in params:
            # The rules read only shapes from the gradient: the real one lives inside the graph.
            dummy = self._grad_dummies.get(id(p))
            if dummy is None or dummy.shape != p.shape or dummy.dtype != p.dtype or dummy.device != p.device:
                dummy = self._grad_dummies[id(p)] = torch.zeros_like(p)  # made once, not every step
            p.grad = dummy
        try:
            updates = self.optimizer._updates(params)
        finally:
            for (_, p), grad in zip(params, saved):
                p.grad = grad
        advanced.extend(self.optimizer.state[p] for _, p in params if "step" in self.optimizer.state.get(p, {}))
        return [(u, p) for u, (_, p) in zip(updates, params)]

    @boundary  # errors name the user's line (frontend/errors.py)
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        advanced: list[dict] = []  # optimizer states whose step counter this call advanced
        with torch.no_grad():
            try:
                return self._run(x, y, advanced)
            except BaseException:
                # A step that raised (an index out of range) changed nothing: neither parameters
                # (the executor checks before any donated write) nor the optimizer's step counters.
                if advanced:
                    torch._foreach_sub_([state["step"] for state in advanced], 1)
                raise

    def _run(self, x: torch.Tensor, y: torch.Tensor, advanced: list[dict]) -> torch.Tensor:
        with torch.no_grad():
            updates = self._updates(advanced)
            key = (tuple((t.shape, t.dtype, t.device) for t in (x, y)), self.loss_module.model.training,
                   tuple((u.rule, u.flags, len(u.scalars)) for u, _ in updates))
            program = cached_program(self._programs, key, self.recompile_reasons,
                                     lambda: _StepProgram(self.loss_module, x, y, updates))
            self.last = program
            # the hyperparameters' values written into the program's own tensor (no tensor per step)
            hp = program.hp.set([float(s) for u, _ in updates for s in u.scalars])
            states = [t for u, _ in updates for t in u.tensors()[2:]]
            tensors = program.tensors(self.loss_module, x, y)
            # parameters, optimizer states and buffers are updated in place (donated outputs)
            outs = program.compiled(tensors + [hp] + states)
            lowered = program.static.lowered
            n_user = lowered.num_user_outputs  # buffers the donation could not take (a dtype change)
            left = [(i, outs[n_user + k]) for k, i in enumerate(lowered.mutated_inputs)
                    if i not in program.donated_buffers]
            write_back([tensors[i] for i, _ in left], [v for _, v in left])
            return outs[0]

    @property
    def copies(self) -> int:
        """Tensors the last step copied after computing them, instead of storing them in place."""
        return len(self.last.compiled.plan.copies) if self.last else 0

    @property
    def num_kernels(self) -> int:
        return self.last.compiled.num_kernels if self.last else 0

    @property
    def graph(self) -> Graph | None:
        return self.last.graph if self.last else None


def compile_step(model: nn.Module, loss_fn: Callable, optimizer) -> CompiledStep | DistributedStep:
    """Compile `loss = loss_fn(model(x), y); loss.backward(); optimizer.step()` into one static graph.
    A DistributedDataParallel model gets a `DistributedStep` (api/distributed.py): its gradients leave the
    graph to be averaged across processes before the optimizer's update graph applies them."""
    if is_ddp(model):
        return DistributedStep(model, loss_fn, optimizer)
    refuse_ddp(model, "ember.compile_step")  # a DDP nested inside would not average the gradients
    if isinstance(model, CompiledModule):  # (ember.compile(model)): the step compiles the module itself
        model = model._orig_mod
    return CompiledStep(model, loss_fn, optimizer)
