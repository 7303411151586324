"""Eager mode: run an ordinary PyTorch program op by op, each aten op on an ember kernel.

    with ember.eager():            # or: @ember.eager()  on a function
        loss = model(x).sum()      # prints, breakpoints, `if x.sum() > 0:` all work
        loss.backward()            # the backward ops autograd issues run on ember kernels too

A `TorchDispatchMode` sees every aten op below autograd (forward and backward). For each call it
builds, once, a tiny IR graph with the same machinery static mode uses on a whole program
(`eager_build.py`): `capture` (make_fx over fake tensors with ember's decomposition table) of the
single op call, `lower` (the aten -> IR table) and the driver `runtime.compile_ir`; then it calls
the graph, and `runtime.outputs.restride` gives the results torch's strides.

Caching. Ops are grouped by (op overload, argument structure, each tensor's dtype, rank and device,
every non-tensor argument's value): that decides whether the op runs on ember at all. The IR has
static shapes, so within a group one IR graph is lowered per input shape; sizes are runtime
arguments of the generated kernels, so graphs that differ only in sizes emit the same kernel
source and the codegen source cache hits: a new batch size re-plans but generates no new kernel
(`eager_stats().kernels_built` counts new kernel sources). Both caches are process-wide and bounded
(least recently used dropped, `codegen/lru.py`): `MAX_GROUPS` verdicts, `MAX_GRAPHS` graphs; a
dropped graph is built again when its shapes come back.

What falls through to torch (counted by op name in `eager_stats().fallthrough`, with a reason):
view and metadata ops (they must return real torch views), ops without tensor inputs (factories),
ops that mutate arguments other than `self` (`out=` variants, `copy_`), ops returning non-tensors
(`.item()`), dtypes or devices ember cannot compile, data-dependent ops, and ops whose lowering
would be an `extern` call to torch anyway. In-place ops (`add_`, ...) compute their functional
variant on ember and `copy_` the result into the target, so views of it see the update. Outputs get
torch's strides (restrided by a copy where ember's layout differs), so later view ops behave
exactly as in PyTorch.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Hashable
from typing import Any

import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from ..codegen.kernel import kernel_count, spec_count
from ..codegen.lru import LRU
from ..frontend.capture import CaptureError
from .eager_build import FallThrough, OpGraph, build, inplace_target, run, static_reason
from .eager_stats import EagerStats, eager_stats, reset_eager_stats
from .signature import const_key

__all__ = ["EagerError", "EagerStats", "clear_eager_cache", "eager", "eager_stats", "is_eager_active",
           "reset_eager_stats"]


class EagerError(RuntimeError):
    """Raised in `ember.eager(strict=True)` when an op ember should run fails to build or run."""


# -- the caches ---------------------------------------------------------------------------------

# Per op group, why it never runs on ember (None: it may): cheap entries, a generous bound.
MAX_GROUPS = 4096
# Per (op group, input shapes), the compiled graph (None: that call falls through). Each holds a
# captured fx graph, the IR and its plans: the bound is what keeps a long dynamic-shape run in memory.
MAX_GRAPHS = 2048
_groups: LRU[Hashable, str | None] = LRU(MAX_GROUPS)
_graphs: LRU[tuple, OpGraph | None] = LRU(MAX_GRAPHS)
_UNSEEN = object()


def clear_eager_cache() -> None:
    """Forget every op graph built by eager mode (kernels stay in the codegen cache)."""
    _groups.clear()
    _graphs.clear()


def _name(func: torch._ops.OpOverload) -> str:
    return str(func).removeprefix("aten.")


def _leaf_key(x: Any) -> Hashable:
    if isinstance(x, torch.Tensor):  # what `static_reason` reads, so one group has one verdict
        return ("T", x.dtype, x.dim(), x.device, type(x) in (torch.Tensor, torch.nn.Parameter))
    return const_key(x)  # a non-tensor value is baked into the op's graph, as in static mode


def _shape_key(leaves: list) -> tuple:
    return tuple(tuple(x.shape) for x in leaves if isinstance(x, torch.Tensor))


def _overlaps(t: torch.Tensor) -> bool:
    """Whether several elements of `t` share memory (an expanded tensor): torch refuses in-place
    updates of those, so they go to torch to raise its error."""
    return any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape))


# -- one op call ---------------------------------------------------------------------------------


def _dispatch(func: torch._ops.OpOverload, args: tuple, kwargs: dict, strict: bool, tls: tuple) -> Any:
    name = _name(func)
    stats = eager_stats()
    stats.seen[name] += 1
    leaves, spec = pytree.tree_flatten((args, kwargs))
    key = (func, spec, tuple(_leaf_key(x) for x in leaves))
    reason = _groups.get(key, _UNSEEN)
    if reason is _UNSEEN:
        reason = _groups[key] = static_reason(func, leaves)
    if reason is not None:
        return _fall_through(name, reason, func, args, kwargs)
    made, recorded = kernel_count(), spec_count()
    try:
        return _on_ember(name, func, args, kwargs, leaves, (key, _shape_key(leaves)), strict, tls)
    finally:  # kernels are generated when a graph first runs (its plan): count what this call made
        stats.kernels_built += kernel_count() - made
        stats.kernel_configs_built += spec_count() - recorded


def _on_ember(name: str, func: torch._ops.OpOverload, args: tuple, kwargs: dict, leaves: list,
              graph_key: tuple, strict: bool, tls: tuple) -> Any:
    stats = eager_stats()
    target = inplace_target(func) if func._schema.is_mutable else None
    op = _graphs.get(graph_key, _UNSEEN)
    if op is _UNSEEN:
        op = _graphs[graph_key] = _build(name, target or func, args, kwargs, strict, tls, target is not None)
    if op is None:
        return _fall_through(name, stats.reasons.get(name, ""), func, args, kwargs)
    self_t = (args[0] if args else kwargs["self"]) if target is not None else None
    if self_t is not None and _overlaps(self_t):
        return _fall_through(name, "in-place update of an expanded tensor", func, args, kwargs)
    try:
        out = run(op, leaves)
        if self_t is not None:  # in-place: computed functionally on ember, written into self
            out = self_t.copy_(out)
    except Exception as e:
        if strict:
            raise EagerError(f"ember eager: running {func} failed: {e}") from e
        _graphs[graph_key] = None
        stats.errors[name] = f"run failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return _fall_through(name, stats.errors[name], func, args, kwargs)
    launches = op.compiled.plan.launches
    stats.launches += len(launches)
    stats.kernel_names.update(step.name for step in launches)
    stats.ember[name] += 1
    return out


def _build(name: str, func: torch._ops.OpOverload, args: tuple, kwargs: dict, strict: bool, tls: tuple,
           inplace: bool) -> OpGraph | None:
    """The graph of this call, or None (the reason recorded) where torch runs it."""
    stats = eager_stats()
    try:
        op = build(func, args, kwargs, tls, inplace)
    except FallThrough as e:
        stats.reasons[name] = str(e)
        return None
    except Exception as e:  # capture/lowering refused (data-dependent op, ...) or a bug
        if strict and not isinstance(e, CaptureError):
            raise EagerError(f"ember eager: building {func} failed: {e}") from e
        stats.reasons[name] = stats.errors[name] = \
            f"build failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return None
    stats.graphs_built += 1
    return op


def _fall_through(name: str, reason: str, func, args, kwargs) -> Any:
    stats = eager_stats()
    stats.fallthrough[name] += 1
    stats.reasons.setdefault(name, reason)
    return func(*args, **kwargs)


# -- the mode and its public face ----------------------------------------------------------------

_active = threading.local()


class _EmberMode(TorchDispatchMode):
    def __init__(self, strict: bool):
        super().__init__()
        self.strict = strict
        self.tls = (torch._C._dispatch_tls_local_include_set(), torch._C._dispatch_tls_local_exclude_set())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return _dispatch(func, tuple(args), dict(kwargs or {}), self.strict, self.tls)


class eager:  # noqa: N801  (used like a function: ember.eager())
    """Run the enclosed PyTorch code (or the decorated function) op by op on ember kernels.

    `strict=True` raises `EagerError` when an op ember should handle fails to build or run, instead
    of quietly letting torch run it (the failure is still recorded in `eager_stats().errors`).
    Nesting is allowed; the outermost `eager` decides.
    """

    def __init__(self, strict: bool = False):
        self.strict = strict
        self._modes: list[_EmberMode | None] = []

    def __enter__(self) -> eager:
        if getattr(_active, "depth", 0):
            self._modes.append(None)
        else:
            mode = _EmberMode(self.strict)
            mode.__enter__()
            self._modes.append(mode)
        _active.depth = getattr(_active, "depth", 0) + 1
        return self

    def __exit__(self, *exc: Any) -> None:
        _active.depth -= 1
        mode = self._modes.pop()
        if mode is not None:
            mode.__exit__(*exc)

    def __call__(self, fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with eager(self.strict):
                return fn(*args, **kwargs)

        return wrapper


def is_eager_active() -> bool:
    return bool(getattr(_active, "depth", 0))
