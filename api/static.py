"""`ember.trace`: one static graph for the signature of one example call (`ember.compile` in
`api/compiled.py` keeps one per signature)."""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch.utils import _pytree as pytree

from ..frontend.aliasing import (
    alias_groups,
    check_input_mutations,
    check_outputs,
    describe_groups,
    drop_outputs,
    mutated_alias_clash,
    output_views,
    untracked_writes,
)
from ..frontend.capture import Captured, capture, module_state
from ..frontend.errors import boundary
from ..frontend.lowering import lower
from ..frontend.sources import source_name
from ..ir import Graph
from ..ir.ops.scatter import SORT_TARGET
from ..passes.autodiff import active_outputs
from ..runtime.autograd import AutogradGraph
from ..runtime.driver import compile_ir
from ..runtime.outputs import write_back
from ..runtime.progress import Progress, note
from .distributed import refuse_ddp
from .signature import ExampleCall, call_context, check_arity, check_devices, fn_name, named_leaves, signature_key

logger = logging.getLogger("ember")


def _sanitize(name: str) -> str:
    return re.sub(r"\W+", "_", name).strip("_") or "x"


def unsupported(graph: Graph) -> dict[str, int]:
    """Torch ops that run as `extern` fallbacks in `graph`: target -> number of calls (not the sort of
    ember's own scatter kernels, ir/ops/scatter.py: a step of a lowered op, not a fallback)."""
    return dict(Counter(n.attrs["target"] for n in graph.nodes
                        if n.op == "extern" and n.attrs["target"] != SORT_TARGET))


def _reports_progress(init: Callable) -> Callable:
    """A compile that lasts shows which phase it is in (runtime/progress.py)."""
    @functools.wraps(init)
    def wrapper(self, fn: Callable, *args: Any, **kwargs: Any) -> None:
        with Progress(title=f"compiling {fn_name(fn)}"):
            init(self, fn, *args, **kwargs)
    return wrapper


class StaticGraph:
    """`fn` captured for the signature of one example call; callable on new inputs of that signature.

    `graph` is the IR after the pass pipeline (`print(sg)` shows it), `captured_graph` the IR as
    lowered from aten, `snapshots` the IR after each pass. Mutations of inputs and buffers are
    returned by the graph as extra outputs and copied back into the caller's tensors after each call.
    """

    @_reports_progress
    @boundary  # errors name the user's line (frontend/errors.py)
    def __init__(self, fn: Callable, args: tuple, kwargs: dict | None = None, captured: Captured | None = None):
        kwargs = dict(kwargs or {})
        check_arity(fn, args, kwargs)
        self.fn = fn
        self._module = fn if isinstance(fn, torch.nn.Module) else None
        check_devices(self._named_tensors(args, kwargs))
        self.key: Hashable = signature_key(fn, args, kwargs)
        # `captured`: an aten graph derived for these sizes from a symbolic trace (api/symbolic.py)
        note("capture")
        self.captured = captured if captured is not None else capture(fn, args, kwargs)
        named = self._named_tensors(args, kwargs)
        self._aliases = alias_groups([t for _, t in named])  # inputs sharing memory (part of `key`)
        check_input_mutations(self.captured.gm, [n for n, _ in named])
        check_outputs(self.captured.out_leaves, self.captured.out_spec)
        names = [_sanitize(n) for n, x in named_leaves(args, kwargs, self.fn) if isinstance(x, torch.Tensor)]
        params = {n for n, _ in self._module.named_parameters()} if self._module is not None else set()
        names += [("p_" if n in params else "b_") + _sanitize(n) for n in self.captured.state_names]
        names += ["c_" + _sanitize(source_name(s)) for s in self.captured.sources]
        note("lower")
        self.lowered = lower(self.captured.gm, names)
        # outputs eager returns as inputs or views (of inputs or of other outputs): replayed on the
        # caller's tensors after each call (frontend/aliasing.py), not computed by the graph
        self.views = output_views(self.captured.gm)
        self._out_index = drop_outputs(self.lowered, self.views)
        self.eager_reason: str | None = None  # set when a call had to run eagerly (aliased mutation)
        self._untracked = untracked_writes(self.captured.gm)  # in-place updates made under no_grad / .data
        self.captured_graph: Graph = self.lowered.graph
        self.compiled = compile_ir(self.captured_graph, name=fn_name(fn), on_pass=lambda name: note(f"passes ({name})"))
        self.graph: Graph = self.compiled.graph
        self.snapshots = self.compiled.snapshots
        self._autograd: dict[tuple, AutogradGraph] = {}
        self._example = ExampleCall(fn, args, kwargs)  # what a call must match (api/signature.py)

    # -- introspection ------------------------------------------------------------------------------
    def __str__(self) -> str:
        return str(self.graph)

    __repr__ = __str__

    def unsupported(self) -> dict[str, int]:
        return unsupported(self.graph)

    @property
    def kernels(self) -> list:
        return self.compiled.kernels

    @property
    def num_kernels(self) -> int:
        return self.compiled.num_kernels

    @property
    def externs(self) -> list:
        return getattr(self.compiled, "externs", [n for n in self.graph.nodes if n.op == "extern"])

    # -- calling ------------------------------------------------------------------------------------
    def _named_tensors(self, args: tuple, kwargs: dict) -> list[tuple[str, torch.Tensor]]:
        named = [(n, x) for n, x in named_leaves(args, kwargs, self.fn) if isinstance(x, torch.Tensor)]
        named += [(f"parameter/buffer '{n}'", t) for n, t in module_state(self._module).items()]
        if hasattr(self, "captured"):  # tensors read through closures, globals, attributes
            named += [(s.label, t) for s, t in zip(self.captured.sources, self.captured.source_tensors())]
        return named

    def stale(self) -> str | None:
        """Why this graph may no longer be the program (a Python value it read changed, a tensor it
        reads through a closure/global/attribute changed shape...), or None."""
        return self.captured.guards.check()

    @boundary
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._example.check(args, kwargs)
        why = self.stale()
        if why is not None:
            raise ValueError(f"{fn_name(self.fn)}(): {why} since tracing, and the traced graph depends on it "
                             f"(ember.compile traces again when such a value changes)")
        context = call_context(self.fn)
        if context != self.key[5]:  # the autocast casts are in the graph; hooks would not run
            (was_cast, was_hooked), (cast, hooked) = self.key[5], context
            raise ValueError(f"{fn_name(self.fn)}(): traced with autocast {list(was_cast) or 'off'} and hooks on "
                             f"{list(was_hooked) or 'no module'}, called with autocast {list(cast) or 'off'} and "
                             f"hooks on {list(hooked) or 'no module'} (ember.compile traces again when they change)")
        check_devices(self._named_tensors(args, kwargs))
        state = module_state(self._module)
        if list(state) != self.captured.state_names:
            raise ValueError(f"{fn_name(self.fn)}(): the module's parameters/buffers changed since tracing")
        named = self._named_tensors(args, kwargs)
        groups = alias_groups([t for _, t in named])
        if groups != self._aliases:  # a trace of f(t, t) reads one placeholder for both inputs
            names = [n for n, _ in named]
            was = describe_groups(self._aliases, names) or "no inputs sharing memory"
            now = describe_groups(groups, names) or "none sharing memory"
            raise ValueError(f"{fn_name(self.fn)}(): traced with {was}, called with {now} "
                             f"(ember.compile traces again when the aliasing of the inputs changes)")
        return self.run(args, kwargs)

    def _differentiable(self, tensors: list[torch.Tensor]) -> AutogradGraph:
        """The forward/backward pair for the inputs that require grad now (built once per such set):
        ember's IR autodiff, bridged into torch.autograd (see runtime/autograd.py). The new values of
        inputs that require grad and are updated in place are differentiable outputs too: their
        write-back records the update in autograd, as eager's in-place op does."""
        wrt = tuple(i for i, t in enumerate(tensors) if t.requires_grad and t.is_floating_point())
        n, mutated = self.lowered.num_user_outputs, self.lowered.mutated_inputs
        outs = [i for i in range(n) if self.graph.outputs[i].dtype.is_floating_point
                or self.graph.outputs[i].dtype.is_complex]  # complex: torch's derivatives (extern VJPs)
        outs += [n + k for k, i in enumerate(mutated) if (i in wrt or i in self.captured.tracked_writes)
                 and i not in self._untracked and self.graph.outputs[n + k].dtype.is_floating_point]
        # a no_grad / detached result does not require grad (a graph walk: once per set of inputs)
        memo = self.__dict__.setdefault("_active_memo", {})
        active = memo.get(wrt)
        if active is None:
            active = memo[wrt] = set(active_outputs(self.graph, wrt))
        outs = [i for i in outs if i in active]
        ag = self._autograd.get((wrt, tuple(outs)))
        if ag is None:
            ag = self._autograd[wrt, tuple(outs)] = AutogradGraph(self.graph, wrt, outs, mutated)
        return ag

    def _check_aliasing(self, args: tuple, kwargs: dict, tensors: list, inputs: list) -> str | None:
        """Why this call cannot run on the graph, or None: an input the graph updates in place shares
        memory with another input (the graph would read the other one's old value), or a tensor read
        through a closure/global (not part of the signature key) aliases the inputs unlike at trace."""
        def names() -> list[str]:  # only when there is something to say (this runs on every call)
            out = [n for n, _ in self._named_tensors(args, kwargs)]
            return out + [f"closed-over tensor {k}" for k in range(len(inputs) - len(out))]

        clash = mutated_alias_clash(alias_groups(inputs), self.lowered.mutated_inputs)
        if clash:
            return f"{describe_groups(clash, names())}, and the program writes to that memory in place"
        if self.captured.sources:
            groups = alias_groups(tensors)
            if groups != self._aliases:
                return f"the call's tensors alias unlike at trace ({describe_groups(groups, names()) or 'none'})"
        return None

    def _run_eagerly(self, args: tuple, kwargs: dict, why: str) -> Any:
        """Run this call as plain PyTorch (exact), saying why once per graph."""
        if self.eager_reason is None:
            self.eager_reason = f"{why}: running such calls eagerly (plain PyTorch)"
            logger.warning("ember(%s): %s", fn_name(self.fn), self.eager_reason)
        return self.fn(*args, **kwargs)

    def graph_inputs(self, args: tuple, kwargs: dict) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(the call's tensors: arguments, parameters/buffers, closed-over tensors; the graph's inputs:
        those and the lifted constants)."""
        leaves = pytree.tree_leaves((tuple(args), dict(kwargs)))
        tensors = [leaves[i] for i in self.captured.tensor_positions] + list(module_state(self._module).values())
        tensors += self.captured.source_tensors()
        return tensors, tensors + self.lowered.constants

    def run(self, args: tuple, kwargs: dict) -> Any:
        """Call without the signature checks (for callers that matched the signature already)."""
        tensors, inputs = self.graph_inputs(args, kwargs)
        return self.run_inputs(args, kwargs, tensors, inputs)

    def run_inputs(self, args: tuple, kwargs: dict, tensors: list[torch.Tensor], inputs: list[torch.Tensor]) -> Any:
        """`run` with the call's tensors and graph inputs gathered already (`graph_inputs`; ember.compile's
        fast guard gathers them while checking the call, api/compiled.py)."""
        mutated = self.lowered.mutated_inputs
        if not mutated and not self.views and not self.captured.sources:  # the graph's outputs, nothing else
            if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
                outs = self._differentiable(tensors)(inputs)
            else:
                outs = self.compiled(inputs)
            index = self._out_index
            return pytree.tree_unflatten([outs[index[v]] if kind == "tensor" else v
                                          for kind, v in self.captured.out_leaves], self.captured.out_spec)
        if mutated or self.captured.sources:  # (aliasing among the arguments is in the signature key)
            why = self._check_aliasing(args, kwargs, tensors, inputs)
            if why is not None:
                return self._run_eagerly(args, kwargs, why)
        # eager refuses an in-place update autograd records on a leaf that requires grad
        # (an input that does not require grad takes the update's history when autograd records it)
        tracked = [i for i in mutated if i not in self._untracked
                   and (tensors[i].requires_grad or i in self.captured.tracked_writes)]
        recorded = set(tracked) | (self.captured.tracked_writes & set(mutated))  # any recorded update, even
        if torch.is_grad_enabled() and any(tensors[i].is_leaf and tensors[i].requires_grad for i in recorded):
            raise RuntimeError("a leaf Variable that requires grad is being used in an in-place operation. "
                               f"(ember: {fn_name(self.fn)} updates an input in place; call it under "
                               "torch.no_grad() if the update is not meant to be differentiated)")
        grad = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
        # torch.no_grad() / inference: the forward graph alone, nothing saved
        outs = self._differentiable(tensors)(inputs) if grad else self.compiled(inputs)
        n = self.lowered.num_user_outputs
        # functionalized mutations into the caller's tensors, recorded by autograd where eager records them
        write_back([tensors[i] for i in mutated], outs[n:n + len(mutated)], lambda k: grad and mutated[k] in tracked)
        results: dict[int, torch.Tensor] = {}
        for k, chain in sorted(self.views.items(), key=lambda kv: kv[1].kind == "output"):
            root = (inputs[chain.index] if chain.kind == "input" else chain.attr if chain.kind == "attr"
                    else outs[self._out_index[chain.index]])
            results[k] = chain.replay(root)
        leaves = [(results[v] if v in results else outs[self._out_index[v]]) if kind == "tensor" else v
                  for kind, v in self.captured.out_leaves]
        return pytree.tree_unflatten(leaves, self.captured.out_spec)


def trace(fn: Callable, *example_args: Any, **example_kwargs: Any) -> StaticGraph:
    """Capture `fn` (a function or nn.Module) for the signature of `fn(*example_args, **example_kwargs)`.

    The example tensors are never read or written: capture runs on fake tensors.
    """
    refuse_ddp(fn, "ember.trace")  # DDP's own forward cannot be traced (api/distributed.py)
    return StaticGraph(fn, example_args, example_kwargs)
