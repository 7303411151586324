"""Capture a PyTorch callable as a functional aten-level fx graph.

`make_fx` traces over fake tensors (the caller's tensors are never read or written), under
`torch.func.functionalize` (in-place updates of inputs become `copy_` nodes at the end of the graph,
which lowering turns into extra outputs), with ember's decomposition table (so the ops that reach
lowering form a small set). Module parameters and buffers are traced as inputs via
`torch.func.functional_call`, never baked in as constants; so are the tensors the program reaches
through closures, globals and attributes (`frontend/sources.py`), placeholders after the state.

The program runs with grad mode on (the caller's no_grad, or ember's own around a capture, must not
leak in) over detached inputs, under `CaptureMode` (`frontend/capture_mode.py`), which keeps the
stop-gradients eager autograd would apply (`.detach()`, `.data`, `torch.no_grad()` blocks, in-place
updates autograd does not record) as IR-visible ops.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils import _pytree as pytree

from .capture_mode import CaptureError, CaptureMode, is_size
from .decompositions import DECOMPOSITIONS
from .errors import Watch, data_dependent_message, has_unbacked
from .rng_guard import RngGuard
from .sources import Guards, Source, reach
from .tracing import make_fx

aten = torch.ops.aten


# How make_fx reports reading a tensor's values while tracing with fake tensors ("data is not allocated
# yet": an op without a meta kernel run on a fake tensor's missing data, e.g. tensor_split(x, tensor)).
_DATA_DEPENDENT = ("data-dependent", "DataDependent", "item() cannot be called", "cannot be called on meta tensors",
                   "data is not allocated yet", "DynamicOutputShape")


@dataclass
class Captured:
    """An fx graph whose placeholders are, in order: the tensor leaves of the user's (args, kwargs),
    then the module's parameters and buffers (`state_names`), then the tensors read through
    closures, globals and attributes (`sources`, read again at every call)."""

    gm: torch.fx.GraphModule
    in_spec: pytree.TreeSpec
    tensor_positions: list[int]          # which leaves of the flattened (args, kwargs) are tensors
    constants: dict[int, Any]            # the other leaves, baked into the graph
    state_names: list[str]               # parameter/buffer names, as placeholders after the user tensors
    out_spec: pytree.TreeSpec | None = None
    out_leaves: list[tuple[str, Any]] = field(default_factory=list)  # ("tensor", k) or ("const", value)
    sources: list[Source] = field(default_factory=list)
    guards: Guards = field(default_factory=Guards)  # Python values and objects the program reads
    # placeholders updated in place by a call eager autograd records (grad mode on, not through .data):
    # eager gives such a tensor the update's gradient history, so the write-back must too
    tracked_writes: set[int] = field(default_factory=set)

    def source_tensors(self) -> list[torch.Tensor]:
        """The tensors at `sources` now (a rebinding is seen); `SourceChanged` if one is gone."""
        out = []
        for src in self.sources:
            t = src.read()
            if not isinstance(t, torch.Tensor):
                raise SourceChanged(f"{src.label} is no longer a tensor")
            out.append(t)
        return out


class SourceChanged(RuntimeError):
    """A tensor the program reads through a closure, global or attribute is gone."""


def _check_static(gm: torch.fx.GraphModule) -> None:
    """Fake tracing lets `.item()` and data-dependent shapes through as symbolic values; a static
    graph cannot hold them, so name the op that produced one."""
    symbolic = (torch.SymInt, torch.SymFloat, torch.SymBool)
    for node in gm.graph.nodes:
        for v in pytree.tree_leaves(node.meta.get("val")):
            if isinstance(v, symbolic) or (isinstance(v, torch.Tensor) and not all(
                    isinstance(s, int) for s in v.shape)):
                # the line is in node.meta["ember_where"] (frontend/errors.py puts it in the message)
                raise CaptureError(data_dependent_message(node.meta.get("ember_call"), node.target))


# nn.Module's hook dicts: forward (pre-)hooks are Python run at capture only, backward hooks never run
# (ember differentiates the captured graph itself), so a module that has any is refused (`check_hooks`).
HOOK_DICTS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks")
_GLOBAL_HOOKS = ("_global_forward_pre_hooks", "_global_forward_hooks", "_global_backward_pre_hooks",
                 "_global_backward_hooks")


def global_hook_dicts() -> list[dict]:
    """`register_module_forward_hook` & co.: hooks every module call runs."""
    from torch.nn.modules import module as nn_module

    return [getattr(nn_module, name) for name in _GLOBAL_HOOKS]


@functools.cache
def _traceable_hooks() -> tuple[type, ...]:
    """torch's own forward pre-hooks that recompute a weight from parameters (legacy weight_norm,
    spectral_norm, pruning): tensor code without other effects, traced into the graph like the
    forward, so they run at every call."""
    import importlib

    def module(name: str) -> Any:  # (torch.nn.utils.weight_norm is also the name of a function there)
        return importlib.import_module(f"torch.nn.utils.{name}")

    return module("weight_norm").WeightNorm, module("spectral_norm").SpectralNorm, module("prune").BasePruningMethod


def _has_hooks(dicts: list[dict]) -> bool:
    traceable = _traceable_hooks()
    return any(not isinstance(h, traceable) for d in dicts if d for h in d.values())


def hooked_modules(module: torch.nn.Module | None) -> tuple[str, ...]:
    """Names of the submodules of `module` with forward or backward hooks ("<global>": module hooks
    registered for every module), but for `_traceable_hooks`."""
    if module is None:
        return ()
    names = tuple(n or type(module).__name__ for n, m in module.named_modules()
                  if _has_hooks([getattr(m, d, None) for d in HOOK_DICTS]))
    return names + (("<global>",) if _has_hooks(global_hook_dicts()) else ())


def check_hooks(module: torch.nn.Module | None) -> None:
    """Refuse a module with hooks: capture would run a forward hook once (on fake tensors), not at every
    call, and the compiled backward never calls a backward hook: both would be silently skipped."""
    hooked = hooked_modules(module)
    if hooked:
        kinds = dict(module.named_modules()) if module is not None else {}
        where = ", ".join(f"`{n}` ({type(kinds[n]).__name__})" if n in kinds else n for n in hooked[:3])
        raise CaptureError(
            f"ember.compile: module hooks (register_forward_hook, register_forward_pre_hook, "
            f"register_full_backward_hook, ...) on {where} are not supported: a forward hook "
            f"would run once, on fake tensors, when the program is traced, and a backward hook never. Remove "
            f"the hooks, or run the model with torch.compile(model, backend=\"ember\") (Dynamo traces hooks) "
            f"or under ember.eager()")


def module_state(module: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    if module is None:
        return {}
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def flat_function(fn: Callable, module: torch.nn.Module | None, leaves: list, in_spec, cap: Captured,
                  context: Callable[[], Any] = contextlib.nullcontext,
                  closed: list[torch.Tensor] = ()) -> Callable[..., list[torch.Tensor]]:
    """`fn` as a function of a flat list of tensors (the call's tensors, the module's state, then
    stand-ins for `closed`, the tensors the program reaches through closures, globals and
    attributes), returning the flat list of output tensors; records the output structure in `cap`.
    `context` wraps the call (the symbolic trace rewrites F.linear there)."""

    def flat_fn(*tensors: torch.Tensor) -> list[torch.Tensor]:
        n, m = len(cap.tensor_positions), len(cap.state_names)
        user, params, stand_ins = tensors[:n], tensors[n:n + m], tensors[n + m:]
        substitute = {id(t): s for t, s in zip(closed, stand_ins)}
        flat = list(leaves)
        for i, t in zip(cap.tensor_positions, user):
            flat[i] = t
        a, kw = pytree.tree_unflatten(flat, in_spec)
        mode = CaptureMode(substitute, inputs=tensors)
        with context(), mode, Watch():  # Watch: the user's line for errors (errors.py)
            if module is not None:
                out = torch.func.functional_call(module, dict(zip(cap.state_names, params)), a, kw)
            else:
                out = fn(*a, **kw)
        cap.tracked_writes = set(mode.tracked_writes)
        # A torch.Size is one leaf: pytree would rebuild it as a plain tuple (eager returns a Size).
        out = pytree.tree_map_only(torch.Tensor, lambda t: substitute.get(id(t), t), out,  # `return w`
                                   is_leaf=is_size)
        out_leaves, cap.out_spec = pytree.tree_flatten(out, is_leaf=is_size)
        outs: list[torch.Tensor] = []
        cap.out_leaves = []
        for leaf in out_leaves:
            if isinstance(leaf, torch.Tensor):
                cap.out_leaves.append(("tensor", len(outs)))
                outs.append(leaf)
            elif isinstance(leaf, (torch.SymInt, torch.SymFloat, torch.SymBool)) or (
                    isinstance(leaf, torch.Size) and not all(isinstance(s, int) for s in leaf)):
                if has_unbacked(leaf):  # `return x.sum().item()`: a value, not a size
                    raise CaptureError(data_dependent_message("returning a tensor's value as a Python number"))
                raise SymbolicTraceError("the program returns a size as a Python number")
            else:
                cap.out_leaves.append(("const", leaf))
        return outs

    return flat_fn


class SymbolicTraceError(RuntimeError):
    """A dynamic-shape trace cannot represent the program (e.g. it returns a size as a number)."""


def capture(fn: Callable, args: tuple, kwargs: dict | None = None) -> Captured:
    """Trace `fn(*args, **kwargs)` into an fx graph of functional aten ops (see module doc)."""
    module = fn if isinstance(fn, torch.nn.Module) else None
    check_hooks(module)
    leaves, in_spec = pytree.tree_flatten((tuple(args), dict(kwargs or {})))
    positions = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
    constants = {i: x for i, x in enumerate(leaves) if not isinstance(x, torch.Tensor)}
    state = module_state(module)
    cap = Captured(None, in_spec, positions, constants, list(state))  # type: ignore[arg-type]
    reached = reach(fn)
    closed = [t for _, t in reached.tensors]
    flat_fn = flat_function(fn, module, leaves, in_spec, cap, closed=closed)

    tensors = [leaves[i] for i in positions] + list(state.values()) + closed
    traced = torch.func.functionalize(flat_fn, remove="mutations")
    try:
        # Grad mode on, inputs detached: the program sees grad mode as eager would, autograd records
        # nothing, and CaptureMode tells a no_grad block from the rest. _allow_non_fake_inputs lets
        # tensors the walk did not find through (make_fx records them as get_attr constants).
        # RngGuard: torch.manual_seed in a program that draws random numbers cannot be replayed per call.
        rng = RngGuard()
        with torch.enable_grad(), rng:
            gm = make_fx(traced, tracing_mode="fake", decomposition_table=DECOMPOSITIONS,
                         _allow_non_fake_inputs=True)(*[t.detach() for t in tensors])
    except Exception as e:  # make_fx wraps many failure kinds; name the cause for the user
        if not isinstance(e, CaptureError) and any(m in str(e) or m in type(e).__name__ for m in _DATA_DEPENDENT):
            raise CaptureError(data_dependent_message(getattr(e, "ember_call", None))) from e  # errors.py
        raise
    _check_eager_rejects(gm)
    gm.graph.eliminate_dead_code()  # copy_ is impure, so input mutations survive
    rng.check(gm)
    _check_static(gm)
    _check_constants(gm)
    cap.sources = prune_sources(gm, len(positions) + len(state), [src for src, _ in reached.tensors])
    cap.guards = reached.guards
    reached.guards.refresh()  # after the program's own side effects (sources.py)
    cap.gm = gm
    return cap


def _check_eager_rejects(gm: torch.fx.GraphModule) -> None:
    """Calls eager rejects though fake tensors accept them (`lower_pointwise.EAGER_REJECTS`) raise
    here, before dead code is dropped: eager rejects them even when nothing uses the result."""
    from .lower_pointwise import EAGER_REJECTS

    for node in gm.graph.nodes:
        check = EAGER_REJECTS.get(node.target) if node.op == "call_function" else None
        if check is not None:  # `node`: errors.py finds the user's line on it
            check(*[a.meta.get("val") if isinstance(a, torch.fx.Node) else a for a in node.args])


def _check_constants(gm: torch.fx.GraphModule) -> None:
    """A tensor the walk did not find is a constant of the graph: its gradient would be lost."""
    for node in gm.graph.nodes:
        t = getattr(gm, node.target, None) if node.op == "get_attr" else None
        if isinstance(t, torch.Tensor) and t.requires_grad:
            raise CaptureError(
                f"ember.trace: the program uses a tensor that requires grad ({type(t).__name__} of shape "
                f"{list(t.shape)}) reached in a way ember does not follow (frontend/sources.py: closures, "
                f"globals, module and object attributes); its gradient would be lost. Pass it as an argument")


def prune_sources(gm: torch.fx.GraphModule, first: int, sources: list[Source]) -> list[Source]:
    """Drop the placeholders of reachable tensors the program does not use; the sources of the rest."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"][first:]
    kept = []
    for node, src in zip(placeholders, sources):
        if node.users:
            kept.append(src)
        else:
            gm.graph.erase_node(node)
    gm.recompile()
    return kept
