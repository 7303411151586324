"""Public API: `ember.trace` (one static graph for one call signature) and `ember.compile` (a
callable that traces once per program, guarded as `frontend/guards.py` describes: recompile reasons,
a recompile limit with an eager fallback, and dynamic dims served by one set of kernels)."""

from __future__ import annotations

import functools
import logging
import re
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import torch
from torch.utils import _pytree as pytree

from .. import runtime
from ..ir import Graph
from ..passes import run_pipeline
from ..passes.autodiff import active_outputs
from ..runtime.progress import Progress, note
from .aliasing import (
    alias_groups,
    check_input_mutations,
    check_outputs,
    describe_groups,
    drop_outputs,
    mutated_alias_clash,
    output_views,
    untracked_writes,
)
from .autograd import AutogradGraph
from .capture import Captured, capture, module_state
from .complex_outputs import refuse_complex_gradients
from .errors import boundary
from .guards import CallSignature, SymbolicTrace, call_signature, describe_changes, size_changes
from .lowering import lower
from .signature import check_arity, check_devices, fn_name, named_leaves, signature_key
from .sources import Guards, source_name

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
        # `captured`: an aten graph derived for these sizes from a symbolic trace (see guards.py)
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
        result = run_pipeline(self.captured_graph, on_pass=lambda name: note(f"passes ({name})"))
        self.graph: Graph = result.graph
        self.snapshots = result.snapshots
        self.compiled = runtime.compile_graph(self.graph, name=fn_name(fn))
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
        if hasattr(self, "captured"):  # tensors read through closures, globals, attributes
            named += [(s.label, t) for s, t in zip(self.captured.sources, self.captured.source_tensors())]
        return named

    def stale(self) -> str | None:
        """Why this graph may no longer be the program (a Python value it read changed, a tensor it
        reads through a closure/global/attribute changed shape...), or None."""
        return self.captured.guards.check()

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

    @boundary
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self._check_call(args, kwargs)
        why = self.stale()
        if why is not None:
            raise ValueError(f"{fn_name(self.fn)}(): {why} since tracing, and the traced graph depends on it "
                             f"(ember.compile traces again when such a value changes)")
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
        ember's IR autodiff, bridged into torch.autograd (see frontend/autograd.py). The new values of
        inputs that require grad and are updated in place are differentiable outputs too: their
        write-back records the update in autograd, as eager's in-place op does."""
        wrt = tuple(i for i, t in enumerate(tensors) if t.requires_grad and t.is_floating_point())
        n, mutated = self.lowered.num_user_outputs, self.lowered.mutated_inputs
        outs = [i for i in range(n) if self.graph.outputs[i].dtype.is_floating_point]
        outs += [n + k for k, i in enumerate(mutated) if (i in wrt or i in self.captured.tracked_writes)
                 and i not in self._untracked and self.graph.outputs[n + k].dtype.is_floating_point]
        active = set(active_outputs(self.graph, wrt))  # a no_grad / detached result does not require grad
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

    def run(self, args: tuple, kwargs: dict) -> Any:
        """Call without the signature checks (for callers that matched the signature already)."""
        leaves = pytree.tree_leaves((tuple(args), dict(kwargs)))
        tensors = [leaves[i] for i in self.captured.tensor_positions]
        tensors += list(module_state(self._module).values())
        tensors += self.captured.source_tensors()
        inputs = tensors + self.lowered.constants
        mutated = self.lowered.mutated_inputs
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
        if grad:  # complex outputs: their gradient raises in backward instead of going missing
            outs = refuse_complex_gradients(self.graph, outs, inputs)
        n = self.lowered.num_user_outputs
        for k, i in enumerate(mutated):  # write back functionalized mutations into the caller's tensors
            with torch.set_grad_enabled(grad and i in tracked):  # recorded by autograd as eager would
                tensors[i].copy_(outs[n + k])
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
    return StaticGraph(fn, example_args, example_kwargs)


class _Program:
    """One traced program: its example signature, the dims it leaves dynamic, and (when there are
    any) the symbolic trace that derives a static graph per size."""

    def __init__(self, sig: CallSignature, dynamic: frozenset, symbolic: SymbolicTrace | None):
        self.sig = sig
        self.symbolic = symbolic
        self.guards: Guards | None = None  # Python values the trace read (sources.py), set once traced
        self.dynamic = symbolic.dims if symbolic is not None else frozenset()
        self.key = sig.key(self.dynamic)
        self.requested = dynamic  # dims asked to be dynamic (some may have specialized)

    def matches(self, sig: CallSignature, args: tuple, kwargs: dict) -> tuple[bool, str | None]:
        """(guard holds, why not when only the symbolic size guards failed)."""
        if sig.key(self.dynamic) != self.key:
            return False, None
        why = self.guards.check() if self.guards is not None else None
        if why is not None:  # a Python value the trace read changed: this program is stale
            return False, why
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
        self._stale: dict[Hashable, list[StaticGraph]] = {}  # graphs whose guards failed (they may hold again)
        self._lock = threading.RLock()
        if not isinstance(fn, torch.nn.Module):
            functools.update_wrapper(self, fn)

    @boundary
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        key = signature_key(self.fn, args, kwargs)
        # Guards, caches and compiles are serialized; running a compiled graph is not (it shares no buffers).
        with self._lock:
            sg = self.cache.get(key)
            if sg is not None and sg.stale() is not None:  # re-trace (_miss names the change) or an older graph
                self._stale.setdefault(key, []).append(self.cache.pop(key))
                sg = next((g for g in self._stale[key] if g.stale() is None), None)
                if sg is not None:
                    self._stale[key].remove(sg)
                    self.cache[key] = sg
            if sg is None and key not in self._eager_keys:
                return self._miss(key, args, kwargs)
            if sg is not None and self._module is not None:
                self._check_identity(key, args, kwargs)
        if sg is None:
            return self.fn(*args, **kwargs)
        return sg.run(args, kwargs)  # the key matched: shapes, dtypes, devices and constants agree

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
        sg = StaticGraph(self.fn, args, kwargs, captured=captured)
        program.guards = sg.captured.guards
        return self._store(key, sg, args, kwargs)

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
        lines += [f"  runs eagerly: {r}" for r in dict.fromkeys(g.eager_reason for g in self.cache.values()
                                                               if g.eager_reason)]
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
