"""ember under `torch.distributed`: `DistributedDataParallel` (DDP).

DDP keeps replicas equal by two things that happen *outside* the module's forward: hooks on each
parameter's gradient accumulator that all-reduce (average) the gradients in buckets as backward
produces them, armed per iteration by `DDP.forward` (`reducer.prepare_for_forward/backward`), and a
broadcast of rank 0's buffers before each forward. So:

- `DDP(ember.compile(model))` works: DDP's forward runs in Python and calls the compiled module;
  ember's backward (runtime/autograd.py) hands each parameter its gradient through autograd, so DDP's
  hooks fire and average them as in eager DDP (all gradients arrive at the end of ember's one backward
  graph: no overlap of communication with the backward, same values).
- `torch.compile(DDP(model), backend="ember")` works: Dynamo does not trace DDP's forward; it
  compiles the inner module's forward, split at DDP's gradient buckets (Dynamo's DDPOptimizer), and
  each piece reaches ember's backend (api/dynamo.py; through Dynamo's `aot_autograd` wrapper, which
  DDPOptimizer needs to know that AOTAutograd compiled a piece). (As with any backend, Dynamo compiles no
  top-level frame of torch's own module classes: an inner `nn.Sequential` runs eagerly.)
- `ember.compile(DDP(model))` (or any module holding a DDP) is refused (`DDPError`): a trace would run
  DDP's Python once, at trace time, and later calls would never arm the reducer, so the gradients
  would silently not be averaged.
- `ember.compile_step(DDP(model), loss_fn, optimizer)` splits the step (`DistributedStep`): one ember
  graph computes the loss, buffer updates and gradients; the gradients are averaged across the
  process group exactly as DDP's reducer does (each scaled by 1/world size, then summed by one
  all-reduce); the optimizer's fused update graph (ember.optim) applies them. One graph for the whole
  step, as compile_step builds without DDP, would update each replica with its own gradients. DDP
  features that change the reduction are refused: communication hooks, mixed precision, buffer hooks,
  delayed all-reduce, and a step inside `no_sync()` (it has no averaging to skip: the step updates
  the parameters at every call).
  Parameters the loss does not reach (api/train.py `TracedLoss`) follow DDP's `find_unused_parameters=True`:
  which parameters each process used is all-reduced at every step; one used by another process gets the
  average with this process's share zero, one no process used keeps `.grad` None and the optimizer skips
  it. Without `find_unused_parameters`, or when the model's output reaches a parameter the loss does not
  (DDP then waits for a gradient that never comes), eager DDP fails at the next iteration ("Expected to
  have finished reduction in the prior iteration"): refused (`DDPError`), as is `static_graph` (whose own
  handling of unused parameters is not reproduced).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..frontend.errors import boundary


class DDPError(TypeError):
    """A DistributedDataParallel program ember cannot compile as asked; the message says why and what
    works instead."""


def _ddp_class() -> type | None:
    return getattr(torch.nn.parallel, "DistributedDataParallel", None)


def is_ddp(obj: object) -> bool:
    cls = _ddp_class()
    return cls is not None and isinstance(obj, cls)


def refuse_ddp(fn: object, api: str) -> None:
    """Raise `DDPError` when `fn` is, or holds, a DDP module (`api` names the caller)."""
    if not isinstance(fn, nn.Module):
        return
    inner = next((name for name, m in fn.named_modules() if is_ddp(m)), None)
    if inner is None:
        return
    where = ("a DistributedDataParallel module" if inner == ""
             else f"a module holding DistributedDataParallel ('{inner}')")
    raise DDPError(
        f"{api}: cannot compile {where}: DDP averages gradients through hooks that its Python forward arms "
        "on every call (reducer.prepare_for_forward/backward); a trace runs that Python once, so later steps "
        "would silently update each process with its own gradients. Compile the inner module instead: "
        "DDP(ember.compile(model)), or torch.compile(DDP(model), backend='ember'), or "
        "ember.compile_step(DDP(model), loss_fn, optimizer)")


def _check_reduction(ddp: nn.Module) -> None:
    """Refuse the DDP features whose gradient reduction `DistributedStep` does not reproduce."""
    why = None
    if getattr(ddp, "_comm_hooks", None):
        why = "a communication hook is registered (register_comm_hook): it decides how gradients are reduced"
    elif getattr(ddp, "mixed_precision", None) is not None:
        why = "mixed_precision is set: DDP reduces gradients in another dtype"
    elif hasattr(ddp, "buffer_hook"):
        why = "a buffer communication hook is registered"
    elif getattr(ddp, "_delay_all_reduce_all_params", False):
        why = "all-reduce is delayed to the end of backward by DDP's own mode"
    elif getattr(ddp, "_join_config", None) is not None and ddp._join_config.enable:
        why = "it runs under the Join context (uneven inputs change the averaging factor)"
    elif not ddp.require_backward_grad_sync:
        why = ("it is inside no_sync(): compile_step applies the optimizer at every call, so there is no "
               "gradient accumulation to defer; call the step outside no_sync()")
    if why is not None:
        raise DDPError(f"ember.compile_step(DistributedDataParallel): {why}. Use DDP(ember.compile(model)) "
                       "with loss.backward() and optimizer.step() instead")


def average_gradients(grads: list[torch.Tensor], group) -> list[torch.Tensor]:
    """The gradients as DDP's reducer averages them: each multiplied by 1/world size (as the reducer
    copies it into its bucket), summed over the group by one all-reduce of all of them."""
    import torch.distributed as dist

    if not grads:
        return []
    flat = torch.cat([g.reshape(-1) for g in grads])
    flat.mul_(1.0 / dist.get_world_size(group))  # the reducer's at::mul_out(bucket, grad, 1/div_factor)
    dist.all_reduce(flat, group=group)
    out, start = [], 0
    for g in grads:
        out.append(flat[start:start + g.numel()].view(g.shape))
        start += g.numel()
    return out


def _output_reached(model: nn.Module, x: torch.Tensor, params: list[torch.Tensor]) -> list[bool]:
    """For each parameter: whether the model's output reaches it, what DDP's find_unused_parameters
    search (from the forward's output tensors, not the loss) marks used."""
    from ..frontend.capture import module_state
    from ..ir.types import is_float
    from ..passes.autodiff import reaching_inputs
    from .static import StaticGraph

    with torch.no_grad():
        static = StaticGraph(model, (x,))
    tensors = [x] + list(module_state(model).values()) + static.captured.source_tensors() + static.lowered.constants
    index = {id(t): i for i, t in enumerate(tensors)}
    outs = [k for k, v in enumerate(static.graph.outputs[:static.lowered.num_user_outputs]) if is_float(v.dtype)]
    return reaching_inputs(static.graph, [index[id(p)] for p in params], outs) if outs else [False] * len(params)


class _GradProgram:
    """The forward, loss and backward of one step signature: inputs as compile_step's step graph
    before its hyperparameters; outputs the loss, updated buffers, then one gradient per parameter the
    loss reaches (`reached`, per optimizer parameter)."""

    def __init__(self, ddp: nn.Module, loss_module: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 params: list[torch.Tensor]):
        from ..passes.autodiff import grad_graph
        from ..runtime.driver import compile_ir
        from .train import TracedLoss

        traced = TracedLoss(loss_module, x, y)  # (the same trace, inputs and checks as compile_step's)
        self.static, self.tensors = traced.static, traced.tensors
        # DDP's reducer waits for a gradient of every parameter of the module that requires grad
        module_params = [p for p in loss_module.model.parameters() if p.requires_grad]
        unreached = [p for p, r in zip(module_params, traced.reached(module_params)) if not r]
        if unreached:
            _check_unused(ddp, loss_module.model, x, unreached, traced.names(unreached))
        self.reached = traced.reached(params)
        self.wrt = traced.inputs([p for p, r in zip(params, self.reached) if r])
        self.n_out = len(self.static.graph.outputs)
        self.compiled = compile_ir(grad_graph(self.static.graph, self.wrt, out_index=0), name="DDP step gradients")
        self.graph = self.compiled.graph


def _check_unused(ddp: nn.Module, model: nn.Module, x: torch.Tensor, unreached: list[torch.Tensor],
                  names: str) -> None:
    """Refuse parameters the loss does not reach where eager DDP fails on them, or handles them in a way
    `DistributedStep` does not reproduce (static_graph)."""
    where = f"ember.compile_step(DistributedDataParallel): the loss does not reach parameter(s) {names}"
    if getattr(ddp, "static_graph", False):
        raise DDPError(f"{where}, and DDP was built with static_graph=True, whose handling of unused parameters "
                       "compile_step does not reproduce. Build DDP with find_unused_parameters=True instead")
    why = None
    if not ddp.find_unused_parameters:
        why = "DDP was built without find_unused_parameters=True"
    elif any(_output_reached(model, x, unreached)):
        why = ("the model's output depends on some of them: DDP's find_unused_parameters search starts from the "
               "output, not the loss, so it waits for their gradients")
    if why is not None:
        raise DDPError(f"{where}, and {why}: eager DDP fails on this (at the next iteration: 'Expected to have "
                       "finished reduction in the prior iteration'). Build DDP with find_unused_parameters=True "
                       "and leave the unused parameters out of the model's output, or out of the model")


def _used_anywhere(reached: list[bool], group) -> list[bool]:
    """Whether any process's loss reaches each parameter (DDP's all-reduced `local_used_map`)."""
    import torch.distributed as dist

    used = torch.tensor(reached, dtype=torch.int32)
    dist.all_reduce(used, group=group)
    return [bool(u) for u in used.tolist()]


class DistributedStep:
    """`ember.compile_step` of a DDP model: `step(x, y) -> loss` (this process's loss, as eager DDP
    returns it); parameters, optimizer state and buffers updated in place, `.grad` untouched."""

    def __init__(self, ddp: nn.Module, loss_fn: Callable, optimizer):
        from .module import CompiledModule
        from .train import _LossOf

        if not hasattr(optimizer, "_update"):
            raise TypeError("compile_step needs an ember.optim optimizer (SGD, RMSprop, Adam, AdamW): its update "
                            "rules are compiled into the step; got " + type(optimizer).__name__)
        refuse_ddp(ddp.module, "ember.compile_step(DistributedDataParallel(...))")  # a DDP nested inside
        _check_reduction(ddp)
        self.ddp = ddp
        inner = ddp.module
        if isinstance(inner, CompiledModule):  # DDP(ember.compile(model)): the step compiles the module itself
            inner = inner._orig_mod
        self.loss_module = _LossOf(inner, loss_fn)
        self.optimizer = optimizer
        self._programs: dict[tuple, _GradProgram] = {}
        self.last: _GradProgram | None = None
        self.recompile_reasons: list[str] = []

    @boundary  # errors name the user's line (frontend/errors.py)
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        from ..runtime.outputs import write_back
        from .train import cached_program

        ddp = self.ddp
        _check_reduction(ddp)  # (a hook may have been registered, no_sync() entered, since)
        with torch.no_grad():
            if ddp._check_sync_bufs_pre_fwd():  # rank 0's buffers, as DDP's forward broadcasts them
                ddp._sync_buffers()
            params = [p for group in self.optimizer.param_groups for p in group["params"] if p.requires_grad]
            key = (tuple((t.shape, t.dtype, t.device) for t in (x, y)), self.loss_module.model.training,
                   tuple(map(id, params)))
            program = cached_program(self._programs, key, self.recompile_reasons,
                                     lambda: _GradProgram(ddp, self.loss_module, x, y, params))
            self.last = program
            tensors = program.tensors(self.loss_module, x, y)
            outs = program.compiled(tensors)
            lowered = program.static.lowered
            n_user, mutated = lowered.num_user_outputs, lowered.mutated_inputs
            write_back([tensors[i] for i in mutated], outs[n_user:n_user + len(mutated)])  # batch-norm statistics
            local = iter(outs[program.n_out:])
            grads = [next(local) if r else None for r in program.reached]
            if ddp.find_unused_parameters:  # (every step, as DDP does; on every process alike)
                # used elsewhere: this process's share is zero; used nowhere: no .grad, the optimizer skips it
                used = _used_anywhere(program.reached, ddp.process_group)
                grads = [(torch.zeros_like(p) if g is None else g) if u else None
                         for p, g, u in zip(params, grads, used)]
            averaged = iter(average_gradients([g for g in grads if g is not None], ddp.process_group))
            grads = [None if g is None else next(averaged) for g in grads]
            saved = [p.grad for p in params]
            try:  # the optimizer reads `.grad`; the caller's gradients are put back after the update
                for p, g in zip(params, grads):
                    p.grad = g
                self.optimizer.step()
            finally:
                for p, g in zip(params, saved):
                    p.grad = g
            return outs[0]

    @property
    def num_kernels(self) -> int:
        """Kernels of the last step: the gradient graph's and the optimizer update's."""
        return (self.last.compiled.num_kernels + self.optimizer.num_kernels) if self.last else 0

    @property
    def graph(self):
        return self.last.graph if self.last else None
