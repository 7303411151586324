"""Public API: `ember.trace` (one static graph for one call signature) and `ember.compile` (a
callable that traces once per program, guarded as `frontend/guards.py` describes: recompile reasons,
a recompile limit with an eager fallback, and dynamic dims served by one set of kernels)."""

from __future__ import annotations

import functools
import logging
import re
import warnings
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import torch
from torch.utils import _pytree as pytree

from .. import runtime
from ..ir import Graph
from ..passes import run_pipeline
from .autograd import AutogradGraph
from .capture import Captured, capture, module_state
from .guards import CallSignature, SymbolicTrace, call_signature, describe_changes, size_changes
from .lowering import lower
from .signature import check_arity, check_devices, fn_name, named_leaves, signature_key

logger = logging.getLogger("ember")


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

    def __init__(self, fn: Callable, args: tuple, kwargs: dict | None = None, captured: Captured | None = None):
        kwargs = dict(kwargs or {})
        check_arity(fn, args, kwargs)
        self.fn = fn
        self._module = fn if isinstance(fn, torch.nn.Module) else None
        check_devices(self._named_tensors(args, kwargs))
        self.key: Hashable = signature_key(fn, args, kwargs)
        # `captured`: an aten graph derived for these sizes from a symbolic trace (see guards.py)
        self.captured = captured if captured is not None else capture(fn, args, kwargs)
        names = [_sanitize(n) for n, x in named_leaves(args, kwargs, self.fn) if isinstance(x, torch.Tensor)]
        params = {n for n, _ in self._module.named_parameters()} if self._module is not None else set()
        names += [("p_" if n in params else "b_") + _sanitize(n) for n in self.captured.state_names]
        self.lowered = lower(self.captured.gm, names)
        self.captured_graph: Graph = self.lowered.graph
        result = run_pipeline(self.captured_graph)
        self.graph: Graph = result.graph
        self.snapshots = result.snapshots
        self.compiled = runtime.compile_graph(self.graph)
        self._autograd: dict[tuple, AutogradGraph] = {}
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

    def _differentiable(self, tensors: list[torch.Tensor]) -> AutogradGraph:
        """The forward/backward pair for the inputs that require grad now (built once per such set):
        ember's IR autodiff, bridged into torch.autograd (see frontend/autograd.py)."""
        wrt = tuple(i for i, t in enumerate(tensors) if t.requires_grad and t.is_floating_point())
        ag = self._autograd.get(wrt)
        if ag is None:
            outs = [i for i in range(self.lowered.num_user_outputs) if self.graph.outputs[i].dtype.is_floating_point]
            ag = self._autograd[wrt] = AutogradGraph(self.graph, wrt, outs)
        return ag

    def run(self, args: tuple, kwargs: dict) -> Any:
        """Call without the signature checks (for callers that matched the signature already)."""
        leaves = pytree.tree_leaves((tuple(args), dict(kwargs)))
        tensors = [leaves[i] for i in self.captured.tensor_positions]
        tensors += list(module_state(self._module).values())
        inputs = tensors + self.lowered.constants
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            outs = self._differentiable(tensors)(inputs)
        else:  # torch.no_grad() / inference: the forward graph alone, nothing saved
            outs = self.compiled(inputs)
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


class _Program:
    """One traced program: its example signature, the dims it leaves dynamic, and (when there are
    any) the symbolic trace that derives a static graph per size."""

    def __init__(self, sig: CallSignature, dynamic: frozenset, symbolic: SymbolicTrace | None):
        self.sig = sig
        self.symbolic = symbolic
        self.dynamic = symbolic.dims if symbolic is not None else frozenset()
        self.key = sig.key(self.dynamic)
        self.requested = dynamic  # dims asked to be dynamic (some may have specialized)

    def matches(self, sig: CallSignature, args: tuple, kwargs: dict) -> tuple[bool, str | None]:
        """(guard holds, why not when only the symbolic size guards failed)."""
        if sig.key(self.dynamic) != self.key:
            return False, None
        if self.symbolic is None:
            return True, None
        why = self.symbolic.check(args, kwargs)
        return why is None, why


class CompiledFunction:
    """`fn` compiled by ember: traces on the first call of each program and reuses it after.

    Guards (see `frontend/guards.py`): a call reuses a compiled program when its argument
    structure, tensor ranks/shapes/dtypes/devices/requires_grad, non-tensor values, module training
    flags and parameter/buffer names and metadata match. Otherwise ember recompiles and records why
    (`recompile_reasons`, and an INFO line on the "ember" logger). After `recompile_limit`
    recompiles a call that needs another runs `fn` eagerly (plain PyTorch), with one warning; calls
    matching programs already compiled keep running compiled.

    Dynamic dims: `dynamic=True` traces every dim of the tensor arguments as a symbol;
    `dynamic=None` (default) starts static and marks a dim dynamic once its size has changed (that
    first change is one recompile); `dynamic=False` recompiles for every new shape. A dynamic
    program is traced symbolically once; each new size gets a static IR graph derived from that
    trace and planned, while every kernel is reused (sizes are run-time kernel arguments). Parameter
    version changes never recompile (parameters are inputs read at each call); a replaced parameter
    with the same metadata is noticed (`notices`, log line) and the program reused.
    """

    def __init__(self, fn: Callable, dynamic: bool | None = None, recompile_limit: int = 8):
        self.fn = fn
        self.dynamic = dynamic
        self.recompile_limit = recompile_limit
        self.cache: dict[Hashable, StaticGraph] = {}   # exact call signature -> graph
        self.programs: list[_Program] = []
        self.recompile_reasons: list[str] = []
        self.notices: list[str] = []                   # guard events that did not recompile
        self.fallback_reason: str | None = None        # set when the recompile limit was hit
        self._eager_keys: set[Hashable] = set()
        self._module = fn if isinstance(fn, torch.nn.Module) else None
        self._state_ids: dict[Hashable, tuple[int, ...]] = {}
        if not isinstance(fn, torch.nn.Module):
            functools.update_wrapper(self, fn)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = signature_key(self.fn, args, kwargs)
        sg = self.cache.get(key)
        if sg is not None:
            if self._module is not None:
                self._check_identity(key, args, kwargs)
            return sg.run(args, kwargs)  # the key matched: shapes, dtypes, devices and constants agree
        if key in self._eager_keys:
            return self.fn(*args, **kwargs)
        return self._miss(key, args, kwargs)

    def _check_identity(self, key: Hashable, args: tuple, kwargs: dict) -> None:
        ids = tuple(map(id, module_state(self._module).values()))
        if ids != self._state_ids.get(key):
            sig = call_signature(self.fn, args, kwargs)
            old = next((p.sig for p in self.programs if p.key == sig.key(p.dynamic)), None)
            for what in (old.replaced(self._module) if old is not None else []):
                msg = f"{what} replaced: same name and metadata, the graph reads the new tensor (no recompile)"
                if msg not in self.notices:
                    self.notices.append(msg)
                    logger.info("ember.compile(%s): %s", fn_name(self.fn), msg)
            self._state_ids[key] = ids

    # -- a call no graph has seen -------------------------------------------------------------------
    def _miss(self, key: Hashable, args: tuple, kwargs: dict) -> Any:
        check_arity(self.fn, args, kwargs)
        sig = call_signature(self.fn, args, kwargs)
        mismatch: list[tuple[_Program, str]] = []
        for program in reversed(self.programs):
            ok, why = program.matches(sig, args, kwargs)
            if ok:
                try:  # a new size of a dynamic program: derive its graph, reuse the kernels
                    captured = program.symbolic.derive(args, kwargs) if program.symbolic is not None else None
                    return self._store(key, StaticGraph(self.fn, args, kwargs, captured=captured), args, kwargs)
                except Exception as e:  # noqa: BLE001  (the derived graph failed: recompile, say why)
                    first = str(e).splitlines()[0][:160] if str(e) else ""
                    why = f"deriving a graph for the new sizes failed: {type(e).__name__}: {first}"
            if why is not None:
                mismatch.append((program, why))
        return self._compile(key, sig, args, kwargs, mismatch)

    def _compile(self, key: Hashable, sig: CallSignature, args: tuple, kwargs: dict,
                 mismatch: list[tuple[_Program, str]]) -> Any:
        name = fn_name(self.fn)
        if not self.programs:
            dynamic = frozenset(sig.tensor_dims) if self.dynamic else frozenset()
            reason = None
        else:
            last = self.programs[-1]
            changed = size_changes(last.sig, sig)
            if mismatch:  # a dynamic program's size guard failed: trace again, keeping its dims dynamic
                prog, why = mismatch[0]
                dynamic, reason = prog.requested, why
            else:
                reason = "; ".join(describe_changes(last.sig, sig)) or "signature changed"
                dynamic = frozenset(d for d in last.requested if d in sig.tensor_dims and
                                    len(sig.leaves[d[0]].shape) == len(last.sig.leaves[d[0]].shape))
                if changed and self.dynamic is not False:
                    dynamic |= changed
                    reason += "; marking " + ", ".join(
                        f"{sig.names[i]} dim {d}" for i, d in sorted(changed)) + " dynamic"
            if len(self.programs) > self.recompile_limit:
                return self._run_eagerly(key, reason, args, kwargs)
        symbolic = None
        if dynamic:
            try:
                symbolic = SymbolicTrace(self.fn, args, kwargs, set(dynamic))
            except Exception as e:  # noqa: BLE001  (e.g. a size returned as a number): stay static
                logger.info("ember.compile(%s): dims stay static: %s", name, e)
        if reason is not None:
            self.recompile_reasons.append(reason)
            logger.info("ember.compile(%s): recompiling (%d/%d): %s", name, len(self.recompile_reasons),
                        self.recompile_limit, reason)
        program = _Program(sig, dynamic, symbolic)
        self.programs.append(program)
        captured = symbolic.derive(args, kwargs) if symbolic is not None else None
        return self._store(key, StaticGraph(self.fn, args, kwargs, captured=captured), args, kwargs)

    def _store(self, key: Hashable, sg: StaticGraph, args: tuple, kwargs: dict) -> Any:
        self.cache[key] = sg
        self._state_ids[key] = tuple(map(id, module_state(self._module).values()))
        return sg.run(args, kwargs)

    def _run_eagerly(self, key: Hashable, reason: str, args: tuple, kwargs: dict) -> Any:
        self._eager_keys.add(key)
        if self.fallback_reason is None:
            self.fallback_reason = reason
            msg = (f"ember.compile({fn_name(self.fn)}): recompile limit ({self.recompile_limit}) reached; "
                   f"calls that need a new program run eagerly from now on. Last change: {reason}")
            logger.warning(msg)
            warnings.warn(msg, RecompileLimitWarning, stacklevel=3)
        return self.fn(*args, **kwargs)

    # -- introspection ------------------------------------------------------------------------------
    @property
    def graphs(self) -> list[StaticGraph]:
        return list(self.cache.values())

    @property
    def num_recompiles(self) -> int:
        return len(self.recompile_reasons)

    def guard_report(self) -> str:
        """Programs, dynamic dims, recompile reasons and notices, for `ember.explain` and humans."""
        lines = [f"ember.compile({fn_name(self.fn)}): {len(self.programs)} program(s), {len(self.cache)} graph(s), "
                 f"{self.num_recompiles} recompile(s) (limit {self.recompile_limit})"]
        for k, p in enumerate(self.programs):
            dims = ", ".join(f"{p.sig.names[i]} dim {d}" for i, d in sorted(p.dynamic)) or "none"
            lines.append(f"  program {k}: dynamic dims: {dims}")
        lines += [f"  recompile {k + 1}: {r}" for k, r in enumerate(self.recompile_reasons)]
        lines += [f"  notice: {n}" for n in self.notices]
        if self.fallback_reason is not None:
            lines.append(f"  recompile limit reached: new programs run eagerly (last change: {self.fallback_reason})")
        return "\n".join(lines)


class RecompileLimitWarning(UserWarning):
    """`ember.compile` reached its recompile limit and runs new signatures eagerly."""


def compile(fn: Callable, *, dynamic: bool | None = None, recompile_limit: int = 8) -> CompiledFunction:  # noqa: A001
    """Compile `fn` (a function or nn.Module) with ember's static mode.

    `dynamic`: True traces all tensor dims symbolically so one program (and one set of kernels)
    serves every size; None marks a dim dynamic after its size changed once; False never.
    `recompile_limit`: recompiles allowed before new signatures run eagerly (one warning).
    """
    return CompiledFunction(fn, dynamic=dynamic, recompile_limit=recompile_limit)
