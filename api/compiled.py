"""`ember.compile`: a callable that traces once per program, guarded as `api/guards.py` describes:
recompile reasons, a recompile limit with an eager fallback, and dynamic dims served by one set of
kernels."""

from __future__ import annotations

import functools
import logging
import threading
import warnings
from collections.abc import Callable, Hashable
from typing import Any

import torch

from ..frontend.capture import module_state
from ..frontend.errors import boundary
from .distributed import refuse_ddp
from .guards import MISS, CallSignature, FastGuard, Program, call_signature, describe_changes, size_changes
from .module import CompiledModule
from .signature import check_arity, fn_name, signature_key
from .static import StaticGraph
from .symbolic import SymbolicTrace

logger = logging.getLogger("ember")


class CompiledFunction:
    """`fn` compiled by ember: traces on the first call of each program and reuses it after.

    Guards (see `api/guards.py`): a call reuses a compiled program when its argument
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
        self.programs: list[Program] = []
        self.recompile_reasons: list[str] = []
        self.notices: list[str] = []                   # guard events that did not recompile
        self.fallback_reason: str | None = None        # set when the recompile limit was hit
        self._eager_keys: set[Hashable] = set()
        self._module = fn if isinstance(fn, torch.nn.Module) else None
        self._state_ids: dict[Hashable, tuple[int, ...]] = {}
        self._stale: dict[Hashable, list[StaticGraph]] = {}  # graphs whose guards failed (they may hold again)
        self._lock = threading.RLock()
        self._fast: FastGuard | None = None  # the last call's guard, checked before the full signature
        if not isinstance(fn, torch.nn.Module):
            functools.update_wrapper(self, fn)

    @boundary
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        fast = self._fast
        if fast is not None:
            out = fast.match(self, args, kwargs)
            if out is not MISS:
                return out
        key = signature_key(self.fn, args, kwargs)
        # Guards, caches and compiles are serialized; running a compiled graph is not (it shares no buffers).
        with self._lock:
            sg = self.cache.get(key)
            if sg is not None and sg.stale() is not None:  # re-trace (_miss names the change) or an older graph
                self._stale.setdefault(key, []).append(self.cache.pop(key))
                self._fast = None  # (it may be the popped graph's)
                sg = next((g for g in self._stale[key] if g.stale() is None), None)
                if sg is not None:
                    self._stale[key].remove(sg)
                    self.cache[key] = sg
            if sg is None and key not in self._eager_keys:
                return self._miss(key, args, kwargs)
            if sg is not None and self._module is not None:
                self._check_identity(key, args, kwargs)
            if sg is not None:
                self._fast = FastGuard.make(self, key, sg, args, kwargs)
        if sg is None:
            return self.fn(*args, **kwargs)
        return sg.run(args, kwargs)  # the key matched: shapes, dtypes, devices and constants agree

    def _check_identity(self, key: Hashable, args: tuple, kwargs: dict) -> None:
        ids = tuple(map(id, module_state(self._module).values()))
        if ids != self._state_ids.get(key):
            sig = call_signature(self.fn, args, kwargs, key)
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
        sig = call_signature(self.fn, args, kwargs, key)
        mismatch: list[tuple[Program, str]] = []
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
                 mismatch: list[tuple[Program, str]]) -> Any:
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
        program = Program(sig, dynamic, symbolic)
        self.programs.append(program)
        captured = symbolic.derive(args, kwargs) if symbolic is not None else None
        sg = StaticGraph(self.fn, args, kwargs, captured=captured)
        program.guards = sg.captured.guards
        return self._store(key, sg, args, kwargs)

    def _store(self, key: Hashable, sg: StaticGraph, args: tuple, kwargs: dict) -> Any:
        self.cache[key] = sg
        self._state_ids[key] = tuple(map(id, module_state(self._module).values()))
        self._fast = FastGuard.make(self, key, sg, args, kwargs)
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


def compile(fn: Callable, *, dynamic: bool | None = None,  # noqa: A001
            recompile_limit: int = 8) -> CompiledFunction | CompiledModule:
    """Compile `fn` (a function or nn.Module) with ember's static mode; a module gives an nn.Module
    sharing its parameters, state-dict keys and attributes (api/module.py).

    `dynamic`: True traces all tensor dims symbolically so one program (and one set of kernels)
    serves every size; None marks a dim dynamic after its size changed once; False never.
    `recompile_limit`: recompiles allowed before new signatures run eagerly (one warning).
    """
    refuse_ddp(fn, "ember.compile")  # DDP's own forward cannot be traced (api/distributed.py)
    compiled = CompiledFunction(fn, dynamic=dynamic, recompile_limit=recompile_limit)
    return CompiledModule(compiled) if isinstance(fn, torch.nn.Module) else compiled
