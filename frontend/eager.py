"""Eager mode: run an ordinary PyTorch program op by op, each aten op on an ember kernel.

    with ember.eager():            # or: @ember.eager()  on a function
        loss = model(x).sum()      # prints, breakpoints, `if x.sum() > 0:` all work
        loss.backward()            # the backward ops autograd issues run on ember kernels too

A `TorchDispatchMode` sees every aten op below autograd (forward and backward). For each call it
builds, once, a tiny IR graph with the same machinery static mode uses on a whole program:
`capture` (make_fx over fake tensors with ember's decomposition table) of the single op call,
`lower` (the aten -> IR table), `run_pipeline` and `runtime.compile_graph`, and then calls it.

Caching. Ops are grouped by (op overload, argument structure, each tensor's dtype, rank and device
type, every non-tensor argument's value): that decides whether the op runs on ember at all. The
IR has static shapes, so within a group one IR graph is lowered per input shape; sizes are runtime
arguments of the generated kernels, so graphs that differ only in sizes emit the same kernel
source and the codegen source cache hits: a new batch size re-plans but generates no new kernel
(`eager_stats().kernels_built` counts distinct new kernel sources).

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
from collections import Counter
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from .. import codegen, runtime
from ..ir.types import COMPILABLE_DTYPES
from ..passes import run_pipeline
from .capture import capture
from .lowering import _functional_variant, lower

aten = torch.ops.aten

# Ops handled by torch whatever their schema says: the mutation primitive itself and ops whose
# results are metadata rather than values.
_TORCH_OPS = {aten.copy_.default, aten.lift_fresh.default}


class EagerError(RuntimeError):
    """Raised in `ember.eager(strict=True)` when an op ember should run fails to build or run."""


# -- statistics ---------------------------------------------------------------------------------


@dataclass
class EagerStats:
    """What eager mode did since the last `reset_eager_stats()`.

    `seen`: every aten op call the mode saw, by op name; `ember`: calls run on ember kernels;
    `fallthrough`: calls run by torch, with `reasons` (op name -> why); `graphs_built`: IR graphs
    lowered and compiled (one per op group and input shape); `kernels_built`: distinct kernel sources
    generated for the first time; `kernel_configs_built`: new (kernel, signature, constexpr)
    launch configurations; `launches`: kernel launches; `errors`: op name -> failure that made an
    op fall through (non-strict mode)."""

    seen: Counter = field(default_factory=Counter)
    ember: Counter = field(default_factory=Counter)
    fallthrough: Counter = field(default_factory=Counter)
    reasons: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    graphs_built: int = 0
    kernels_built: int = 0
    kernel_configs_built: int = 0
    launches: int = 0
    kernel_names: set[str] = field(default_factory=set)  # distinct kernels launched

    @property
    def ops_seen(self) -> int:
        return sum(self.seen.values())

    @property
    def ops_ember(self) -> int:
        return sum(self.ember.values())

    @property
    def ops_fallthrough(self) -> int:
        return sum(self.fallthrough.values())

    def summary(self) -> str:
        lines = [f"ember eager: {self.ops_seen} op calls, {self.ops_ember} on ember kernels, "
                 f"{self.ops_fallthrough} by torch; {self.graphs_built} graphs, {self.kernels_built} kernels "
                 f"({self.kernel_configs_built} launch configs) built, {self.launches} launches"]
        for name, n in self.fallthrough.most_common():
            lines.append(f"  torch  {name:40s} x{n}  ({self.reasons.get(name, '')})")
        return "\n".join(lines)

    __str__ = summary


_stats = EagerStats()


def eager_stats() -> EagerStats:
    """The live statistics object of eager mode (see `EagerStats`)."""
    return _stats


def reset_eager_stats() -> None:
    global _stats
    _stats = EagerStats()


def clear_eager_cache() -> None:
    """Forget every op graph built by eager mode (kernels stay in the codegen cache)."""
    _groups.clear()


# -- building and running one op -----------------------------------------------------------------


@dataclass
class _OpGraph:
    """One op call lowered to IR and compiled, for one set of input shapes."""

    captured: Any
    lowered: Any
    compiled: runtime.CompiledGraph
    out_strides: list[tuple[int, ...]]


@dataclass
class _OpGroup:
    """Calls of one op with one argument structure, dtypes and ranks: the graphs per input shape
    (or `None` where that shape falls through)."""

    graphs: dict[tuple, _OpGraph | None] = field(default_factory=dict)


_groups: dict[Hashable, _OpGroup | str] = {}


class _FallThrough(Exception):
    pass


def _name(func: torch._ops.OpOverload) -> str:
    return str(func).removeprefix("aten.")


def _leaf_key(x: Any) -> Hashable:
    if isinstance(x, torch.Tensor):
        return ("T", x.dtype, x.dim(), x.device.type)
    try:
        hash(x)
        return ("C", type(x), x)
    except TypeError:
        return ("C", type(x), repr(x))


def _static_reason(func: torch._ops.OpOverload, leaves: list) -> str | None:
    """Why calls of `func` with these arguments never run on ember (None: try to)."""
    schema = func._schema
    if func.namespace != "aten":
        return f"{func.namespace} op"
    if func in _TORCH_OPS:
        return "handled by torch"
    if any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns):
        return "view op (returns a real torch view)"
    if schema.is_mutable and _inplace_target(func) is None:
        return "mutates arguments other than self"
    if not schema.returns or any(str(r.type) not in ("Tensor", "Tensor?", "Tensor[]") for r in schema.returns):
        return "returns non-tensors"
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    if not tensors:
        return "no tensor inputs"
    if any(type(t) not in (torch.Tensor, torch.nn.Parameter) for t in tensors):
        return "tensor subclass"
    if any(t.dtype not in COMPILABLE_DTYPES for t in tensors):
        return "dtype ember cannot compile"
    devices = {(t.device.type, t.device.index) for t in tensors}
    if len(devices) > 1:
        return "tensors on several devices"
    if next(iter(devices))[0] not in ("cpu", "cuda"):
        return f"device {next(iter(devices))[0]}"
    return None


def _inplace_target(func: torch._ops.OpOverload) -> torch._ops.OpOverload | None:
    """The functional variant of an in-place op that writes only `self` (`add_` -> `add`), else None."""
    schema = func._schema
    written = [a for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    if len(written) != 1 or written[0].name != "self" or len(schema.returns) != 1:
        return None
    functional = _functional_variant(func)
    return None if functional is func else functional


def _build(func: torch._ops.OpOverload, args: tuple, kwargs: dict, tls: tuple, inplace: bool) -> _OpGraph:
    """Capture, lower, optimize and compile one call of the functional op `func` (for an in-place op,
    of its functional variant: `inplace` checks that the result can be written back into `self`).

    `tls` is the dispatch-key state outside the mode: inside `__torch_dispatch__` torch excludes the
    keys above Python (functionalization among them), which make_fx needs back."""
    # capture reads only metadata; detached stand-ins keep autograd state out of make_fx
    args, kwargs = pytree.tree_map_only(torch.Tensor, torch.Tensor.detach, (args, kwargs))
    with torch._C._ForceDispatchKeyGuard(*tls):
        cap = capture(lambda *a, **kw: func(*a, **kw), args, kwargs)
        want = _torch_results(func, args, kwargs)
    lowered = lower(cap.gm)
    externs = sorted({n.attrs["target"] for n in lowered.graph.nodes if n.op == "extern"})
    if externs:
        raise _FallThrough(f"lowers to torch extern {', '.join(externs)}")
    if lowered.mutated_inputs:
        raise _FallThrough("mutates its inputs")
    if any(kind != "tensor" and v is not None for kind, v in cap.out_leaves):
        raise _FallThrough("returns non-tensors")
    out_node = next(n for n in cap.gm.graph.nodes if n.op == "output")
    vals = [n.meta["val"] for n in pytree.tree_leaves(out_node.args[0])]
    got = [(tuple(v.shape), v.dtype) for v in vals]
    if want is not None and got != want:  # a decomposition that disagrees with torch: a bug, never run it
        raise RuntimeError(f"the captured graph of {func} gives {got}, torch's kernel gives {want}")
    if inplace:
        self_t = args[0] if args else kwargs["self"]
        if len(vals) != 1 or vals[0].shape != self_t.shape or vals[0].dtype != self_t.dtype:
            raise _FallThrough("in-place result type differs from self")
    graph = run_pipeline(lowered.graph).graph
    return _OpGraph(cap, lowered, runtime.compile_graph(graph), [tuple(v.stride()) for v in vals])


def _torch_results(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> list[tuple] | None:
    """Shape and dtype of each tensor `func` itself returns for these arguments (its meta kernel, on
    fake copies), to check the decomposed graph against; None where torch cannot say."""
    mode = FakeTensorMode()
    try:
        fake_args, fake_kwargs = pytree.tree_map_only(torch.Tensor, mode.from_tensor, (args, kwargs))
        with mode:
            out = func(*fake_args, **fake_kwargs)
    except Exception:  # no meta kernel, data-dependent output shape: capture has its own checks
        return None
    return [(tuple(t.shape), t.dtype) for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def _run(op: _OpGraph, leaves: list) -> Any:
    cap = op.captured
    tensors = [leaves[i] for i in cap.tensor_positions]
    n_specs = len(codegen.generated_kernels())
    outs = op.compiled(tensors + op.lowered.constants)
    launches = op.compiled.plan.launches
    _stats.launches += len(launches)
    specs = codegen.generated_kernels()
    if len(specs) != n_specs:  # a new plan generated kernels: count new sources and configs
        _stats.kernel_configs_built += len(specs) - n_specs
        known = {s.name for s in specs[:n_specs]}
        _stats.kernels_built += len({s.name for s in specs[n_specs:]} - known)
    _stats.kernel_names.update(step.name for step in launches)
    fixed = []
    for t, strides in zip(outs, op.out_strides):
        if t.stride() != strides and t.numel() > 1:  # keep torch's layout, so views behave as in torch
            t = torch.empty_strided(t.shape, strides, dtype=t.dtype, device=t.device).copy_(t)
        fixed.append(t)
    flat = [fixed[v] if kind == "tensor" else v for kind, v in cap.out_leaves]
    return pytree.tree_unflatten(flat, cap.out_spec)


def _shape_key(leaves: list) -> tuple:
    return tuple(tuple(x.shape) for x in leaves if isinstance(x, torch.Tensor))


def _overlaps(t: torch.Tensor) -> bool:
    """Whether several elements of `t` share memory (an expanded tensor): torch refuses in-place
    updates of those, so they go to torch to raise its error."""
    return any(st == 0 and n > 1 for st, n in zip(t.stride(), t.shape))


def _dispatch(func: torch._ops.OpOverload, args: tuple, kwargs: dict, strict: bool, tls: tuple) -> Any:
    name = _name(func)
    _stats.seen[name] += 1
    leaves, spec = pytree.tree_flatten((args, kwargs))
    key = (func, spec, tuple(_leaf_key(x) for x in leaves))
    group = _groups.get(key)
    if group is None:
        reason = _static_reason(func, leaves)
        group = _groups[key] = reason if reason is not None else _OpGroup()
    if isinstance(group, str):
        return _fall_through(name, group, func, args, kwargs)
    target = _inplace_target(func) if func._schema.is_mutable else None
    shapes = _shape_key(leaves)
    if shapes not in group.graphs:
        try:
            group.graphs[shapes] = _build(target or func, args, kwargs, tls, target is not None)
            _stats.graphs_built += 1
        except _FallThrough as e:
            group.graphs[shapes] = None
            _stats.reasons[name] = str(e)
        except Exception as e:  # capture/lowering refused (data-dependent op, ...) or a bug
            if strict and not _expected_refusal(e):
                raise EagerError(f"ember eager: building {func} failed: {e}") from e
            group.graphs[shapes] = None
            _stats.reasons[name] = f"build failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
            _stats.errors[name] = _stats.reasons[name]
    op = group.graphs[shapes]
    if op is None:
        return _fall_through(name, _stats.reasons.get(name, ""), func, args, kwargs)
    self_t = (args[0] if args else kwargs["self"]) if target is not None else None
    if self_t is not None and _overlaps(self_t):
        return _fall_through(name, "in-place update of an expanded tensor", func, args, kwargs)
    try:
        out = _run(op, leaves)
        if self_t is not None:  # in-place: computed functionally on ember, written into self
            out = self_t.copy_(out)
    except Exception as e:
        if strict:
            raise EagerError(f"ember eager: running {func} failed: {e}") from e
        group.graphs[shapes] = None
        _stats.errors[name] = f"run failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
        return _fall_through(name, _stats.errors[name], func, args, kwargs)
    _stats.ember[name] += 1
    return out


def _expected_refusal(e: Exception) -> bool:
    from .capture import CaptureError

    return isinstance(e, CaptureError)


def _fall_through(name: str, reason: str, func, args, kwargs) -> Any:
    _stats.fallthrough[name] += 1
    _stats.reasons.setdefault(name, reason)
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
