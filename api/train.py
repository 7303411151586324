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

Parameters the loss does not reach (a layer computed but unused, a path through `.detach()`) are left
alone as eager leaves them: no gradient, no update, no optimizer state, no step count (`TracedLoss`).

One trace per (input shapes/dtypes/devices, training flag), retraced when a Python value it read changes;
one graph per trace and optimizer structure (the updated parameters and their rules).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

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
from .signature import call_context
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


class TracedLoss:
    """The loss module traced for one batch signature; which graph input each parameter is (`inputs`)
    and which parameters the loss reaches (`reached`).

    A parameter the loss does not depend on (a layer computed but unused, one used only through
    `.detach()`) gets no gradient in eager: `loss.backward()` leaves its `.grad` None, and torch's
    optimizers skip such a parameter: no update (no weight decay, no momentum), no state created, its
    step count not advanced. The steps do the same: it stays out of the gradient graph's outputs and of
    the update (its value still feeds the forward), and its optimizer state is not touched."""

    def __init__(self, loss_module: _LossOf, x, y):
        with torch.no_grad():
            self.static = StaticGraph(loss_module, (x, y))
        self._index = {id(t): i for i, t in enumerate(self.tensors(loss_module, x, y))}
        self._model = loss_module.model
        self._reached: dict[tuple[int, ...], list[bool]] = {}  # per list of parameters (their ids)

    def inputs(self, params: list[torch.Tensor]) -> list[int]:
        """The graph input of each parameter."""
        if any(id(p) not in self._index for p in params):
            # (not a graph input: it may still have been read, e.g. baked into the graph, so that the
            # loss depends on it without a gradient path: no step could match eager's)
            raise ValueError("compile_step: the optimizer holds parameters the model does not use")
        return [self._index[id(p)] for p in params]

    def reached(self, params: list[torch.Tensor]) -> list[bool]:
        """For each parameter: whether the loss depends on it through ops that carry a gradient, i.e.
        whether eager's `loss.backward()` gives it a `.grad` (`passes.autodiff.reaching_inputs`)."""
        key = tuple(map(id, params))
        hit = self._reached.get(key)
        if hit is None:
            hit = reaching_inputs(self.static.graph, self.inputs(params)) if params else []
            if not any(hit):  # eager's backward raises (the loss needs no gradient) or updates nothing
                raise ValueError("compile_step: the loss depends on none of the parameters to train "
                                 f"({self.names(params)}): eager's loss.backward() would leave every .grad "
                                 "None and the optimizer would update nothing")
            self._reached[key] = hit
        return hit

    def names(self, params: list[torch.Tensor]) -> str:
        """The parameters by their names in the model (for messages)."""
        names = {id(p): n for n, p in self._model.named_parameters()}
        return ", ".join(names.get(id(p), f"a {tuple(p.shape)} tensor") for p in params) or "none"

    def tensors(self, loss_module: _LossOf, x, y) -> list[torch.Tensor]:
        """The graph's inputs before hp and states: x, y, the parameters and buffers, the tensors
        `loss_fn` reaches through closures and globals (read again now), lifted constants."""
        return ([x, y] + list(module_state(loss_module).values()) + self.static.captured.source_tensors()
                + self.static.lowered.constants)


class _StepProgram:
    """The step graph of one trace and one update structure: `wrt`, the graph inputs of the updated
    parameters (those the loss reaches); `skipped`, those of the parameters it leaves alone."""

    def __init__(self, traced: TracedLoss, updates, skipped: list[int]):
        from ..optim.engine import HostScalars, build_graph, compute_dtype

        params = [p for _, p in updates]
        self.traced, self.static, self.tensors = traced, traced.static, traced.tensors
        self.wrt, self.skipped = traced.inputs(params), skipped
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
        self._traces: dict[tuple, TracedLoss] = {}
        self._programs: dict[tuple, _StepProgram] = {}
        self._grad_dummies: dict[int, torch.Tensor] = {}
        self.last: _StepProgram | None = None
        self.recompile_reasons: list[str] = []

    def _updates(self, advanced: list[dict], skip: Collection[int] = ()) -> list:
        """This step's ParamUpdate per parameter that requires grad, except those whose id is in `skip`
        (the loss does not reach them: `TracedLoss`): it advances their step counters (the states
        that have one are appended to `advanced`) and creates their state on a first step."""
        params = [(group, p) for group in self.optimizer.param_groups for p in group["params"]
                  if p.requires_grad and id(p) not in skip]
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

    def _program(self, x: torch.Tensor, y: torch.Tensor, advanced: list[dict]) -> tuple[_StepProgram, list]:
        """The program for batches like (x, y) and this step's updates (`_updates`: only of the
        parameters the loss reaches; the others keep their values and state, as in eager)."""
        # (autocast changes the traced ops; a hook registered since must be refused, not skipped: the
        # call context, as ember.compile's key has it, api/signature.py)
        sig = (tuple((t.shape, t.dtype, t.device) for t in (x, y)), self.loss_module.model.training,
               call_context(self.loss_module.model))
        old = self._traces.get(sig)
        traced = cached_program(self._traces, sig, self.recompile_reasons, lambda: TracedLoss(self.loss_module, x, y))
        if old is not None and traced is not old:  # a retrace: the graphs built on the stale trace go too
            self._programs = {k: p for k, p in self._programs.items() if p.traced is not old}
        params = [p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad]
        unreached = [p for p, r in zip(params, traced.reached(params)) if not r]
        updates = self._updates(advanced, {id(p) for p in unreached})
        # (the updated parameters' inputs in the key: a new set of them, same rules, is another graph)
        key = sig + (tuple(traced.inputs([p for _, p in updates])),
                     tuple((u.rule, u.flags, len(u.scalars)) for u, _ in updates))
        program = self._programs.get(key)
        if program is None:
            program = self._programs[key] = _StepProgram(traced, updates, traced.inputs(unreached))
        return program, updates

    def _run(self, x: torch.Tensor, y: torch.Tensor, advanced: list[dict]) -> torch.Tensor:
        with torch.no_grad():
            program, updates = self._program(x, y, advanced)
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
