"""Public API: `ember.trace` (one static graph for one call signature) and `ember.compile` (a
callable that traces once per signature and reuses the graph after)."""

from __future__ import annotations

import functools
import re
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import torch
from torch.utils import _pytree as pytree

from .. import runtime
from ..ir import Graph
from ..passes import run_pipeline
from .capture import capture, module_state
from .lowering import lower
from .signature import check_arity, check_autograd, check_devices, fn_name, named_leaves, signature_key


def _sanitize(name: str) -> str:
    return re.sub(r"\W+", "_", name).strip("_") or "x"


def unsupported(graph: Graph) -> dict[str, int]:
    """Torch ops that run as `extern` fallbacks in `graph`: target -> number of calls."""
    return dict(Counter(n.attrs["target"] for n in graph.nodes if n.op == "extern"))


class _TensorSpec(NamedTuple):
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    def __repr__(self) -> str:
        return f"a tensor of shape {list(self.shape)}, {self.dtype} on {self.device}"


class StaticGraph:
    """`fn` captured for the signature of one example call; callable on new inputs of that signature.

    `graph` is the IR after the pass pipeline (`print(sg)` shows it), `captured_graph` the IR as
    lowered from aten, `snapshots` the IR after each pass. Mutations of inputs and buffers are
    returned by the graph as extra outputs and copied back into the caller's tensors after each call.
    """

    def __init__(self, fn: Callable, args: tuple, kwargs: dict | None = None):
        kwargs = dict(kwargs or {})
        check_arity(fn, args, kwargs)
        self.fn = fn
        self._module = fn if isinstance(fn, torch.nn.Module) else None
        check_devices(self._named_tensors(args, kwargs))
        self.key: Hashable = signature_key(fn, args, kwargs)
        self.captured = capture(fn, args, kwargs)
        names = [_sanitize(n) for n, x in named_leaves(args, kwargs, self.fn) if isinstance(x, torch.Tensor)]
        params = {n for n, _ in self._module.named_parameters()} if self._module is not None else set()
        names += [("p_" if n in params else "b_") + _sanitize(n) for n in self.captured.state_names]
        self.lowered = lower(self.captured.gm, names)
        self.captured_graph: Graph = self.lowered.graph
        result = run_pipeline(self.captured_graph)
        self.graph: Graph = result.graph
        self.snapshots = result.snapshots
        self.compiled = runtime.compile_graph(self.graph)
        self._example = self._leaf_specs(args, kwargs)
        self._arity = (len(args), sorted(kwargs))

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
        return named

    def _leaf_specs(self, args: tuple, kwargs: dict) -> list[tuple[str, Any]]:
        return [(n, _TensorSpec(tuple(x.shape), x.dtype, x.device) if isinstance(x, torch.Tensor) else x)
                for n, x in named_leaves(args, kwargs, self.fn)]

    def _check_call(self, args: tuple, kwargs: dict) -> None:
        name = fn_name(self.fn)
        _, spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
        if spec != self.captured.in_spec:
            check_arity(self.fn, args, kwargs)
            got, traced = (len(args), sorted(kwargs)), self._arity
            if got != traced:
                raise TypeError(f"{name}(): this graph was traced with {traced[0]} positional argument(s) and "
                                f"keyword arguments {traced[1]}, but was called with {got[0]} and {got[1]}")
            raise TypeError(f"{name}(): the nesting of the arguments differs from the traced call "
                            f"(got {spec}, traced {self.captured.in_spec})")
        for (path, got), (_, want) in zip(self._leaf_specs(args, kwargs), self._example):
            if isinstance(want, _TensorSpec):
                if got != want:
                    raise ValueError(f"{name}(): {path} was traced as {want}, got {got!r} "
                                     f"(ember.compile traces again for a new signature)")
            elif not (type(got) is type(want) and got == want):
                raise ValueError(f"{name}(): non-tensor argument {path} was traced as {want!r} and is baked into "
                                 f"the graph; got {got!r} (ember.compile traces again for new values)")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._check_call(args, kwargs)
        check_devices(self._named_tensors(args, kwargs))
        state = module_state(self._module)
        if list(state) != self.captured.state_names:
            raise ValueError(f"{fn_name(self.fn)}(): the module's parameters/buffers changed since tracing")
        return self.run(args, kwargs)

    def run(self, args: tuple, kwargs: dict) -> Any:
        """Call without the signature checks (for callers that matched the signature already)."""
        leaves = pytree.tree_leaves((tuple(args), dict(kwargs)))
        tensors = [leaves[i] for i in self.captured.tensor_positions]
        tensors += list(module_state(self._module).values())
        check_autograd(tensors)
        outs = self.compiled(tensors + self.lowered.constants)
        n = self.lowered.num_user_outputs
        with torch.no_grad():  # write back functionalized mutations into the caller's tensors
            for k, i in enumerate(self.lowered.mutated_inputs):
                tensors[i].copy_(outs[n + k])
        leaves = [outs[v] if kind == "tensor" else v for kind, v in self.captured.out_leaves]
        return pytree.tree_unflatten(leaves, self.captured.out_spec)


def trace(fn: Callable, *example_args: Any, **example_kwargs: Any) -> StaticGraph:
    """Capture `fn` (a function or nn.Module) for the signature of `fn(*example_args, **example_kwargs)`.

    The example tensors are never read or written: capture runs on fake tensors.
    """
    return StaticGraph(fn, example_args, example_kwargs)


class CompiledFunction:
    """`fn` compiled by ember: traces on the first call of each signature and reuses the graph after."""

    def __init__(self, fn: Callable):
        self.fn = fn
        self.cache: dict[Hashable, StaticGraph] = {}
        if not isinstance(fn, torch.nn.Module):
            functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = signature_key(self.fn, args, kwargs)
        sg = self.cache.get(key)
        if sg is None:
            check_arity(self.fn, args, kwargs)
            named = [x for _, x in named_leaves(args, kwargs) if isinstance(x, torch.Tensor)]
            check_autograd(named + list(module_state(
                self.fn if isinstance(self.fn, torch.nn.Module) else None).values()))
            sg = self.cache[key] = StaticGraph(self.fn, args, kwargs)
        return sg.run(args, kwargs)  # the key matched: shapes, dtypes, devices and constants agree

    @property
    def graphs(self) -> list[StaticGraph]:
        return list(self.cache.values())


def compile(fn: Callable) -> CompiledFunction:  # noqa: A001  (ember.compile mirrors torch.compile)
    """Compile `fn` (a function or nn.Module) with ember's static mode."""
    return CompiledFunction(fn)
