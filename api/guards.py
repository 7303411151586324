"""Guards of `ember.compile`: what a call must share with a compiled program (`Program`) to reuse
it, and why a call does not.

A *program* is what `ember.compile` traced the user's Python for. Its guard covers everything that
changes the traced program: the pytree structure of (args, kwargs); every tensor's rank, shape (the
dims not marked dynamic), dtype, device and requires_grad; every non-tensor argument's value (baked
into the graph); for modules, every submodule's `training` flag and the names and metadata of the
parameters and buffers; which of these tensors share memory (`f(t, t)`, overlapping views: see
frontend/aliasing.py); the `torch.autocast` regions the call runs in (capture records their casts) and
which submodules have hooks (capture refuses them, so a hook registered later is not skipped silently).
`describe_changes` names each difference ("input 0 (x): dtype changed float32 -> float16", "module
training flag changed: Net True -> False").

Parameters and buffers are graph *inputs*, read from the module at every call, never constants. So:

- a **version** change (`tensor._version`: an optimizer step, `p.mul_(...)`, `load_state_dict`
  copying in place) changes values, not the program: it is not guarded, and a compiled model keeps
  following its training without re-tracing (guarding it would re-trace after every step and hit the
  recompile limit within 8 steps);
- a **replaced** Parameter/Buffer object (`m.fc1.weight = nn.Parameter(...)`) is noticed by identity
  and reported (log line, `CompiledFunction.notices`); with the same name and metadata the traced
  program is still exactly right (the graph reads the new tensor), so it is reused, not re-traced.
  A replacement that changes metadata (shape, dtype, ...) or the set of names (tying two weights
  makes `named_parameters()` list one fewer) fails the guard and recompiles with a reason.

Dynamic dims are left out of a program's key and checked by its symbolic trace (api/symbolic.py).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..frontend.capture import HOOK_DICTS, global_hook_dicts, module_state
from ..frontend.sources import Guards
from ..runtime.executor import tensor_guard
from .signature import Key, TensorMeta, autocast_state, named_leaves, signature_key
from .symbolic import Dim, SymbolicTrace

try:  # CPython's dict version tags, as Dynamo reads them (api: FastGuard)
    from torch._C._dynamo.guards import dict_version as _dict_version
except ImportError:  # pragma: no cover
    _dict_version = None


@dataclass(frozen=True)
class CallSignature:
    """A call's `signature_key` (api/signature.py), part by part, with the names that describe it."""

    spec: str
    leaves: tuple[Any, ...]                      # `leaf_key` of each leaf: TensorMeta or ("const", type, value)
    training: tuple[bool, ...]                   # the training flag of each of fn.modules()
    state: tuple[tuple[str, TensorMeta], ...]    # parameters and buffers, by name
    aliases: tuple[tuple[int, ...], ...]         # indices into `tensor_names` of tensors sharing memory
    context: tuple = ((), ())                    # `call_context`: autocast regions, hooked submodules
    names: tuple[str, ...] = field(default=(), compare=False)       # readable name of each leaf
    modules: tuple[str, ...] = field(default=(), compare=False)     # name of each of fn.modules()
    state_refs: tuple[Any, ...] = field(default=(), compare=False)  # weakrefs, for identity

    @property
    def tensor_dims(self) -> set[Dim]:
        return {(i, d) for i, m in enumerate(self.leaves) if isinstance(m, TensorMeta) for d in range(len(m.shape))}

    @property
    def tensor_names(self) -> list[str]:
        """The tensors `aliases` indexes: the call's tensors, then the parameters and buffers."""
        return ([n for n, m in zip(self.names, self.leaves) if isinstance(m, TensorMeta)]
                + [f"parameter/buffer {n}" for n, _ in self.state])

    def key(self, dynamic: frozenset[Dim] = frozenset()) -> Key:
        """The signature key, with the sizes of `dynamic` dims left out (ranks stay)."""
        leaves = self.leaves
        if dynamic:
            leaves = tuple(m._replace(shape=tuple(None if (i, d) in dynamic else s for d, s in enumerate(m.shape)))
                           if isinstance(m, TensorMeta) else m for i, m in enumerate(leaves))
        return (self.spec, leaves, self.training, self.state, self.aliases, self.context)

    def replaced(self, module: torch.nn.Module | None) -> list[str]:
        """Parameters/buffers of `module` that are no longer the objects this signature saw."""
        if module is None:
            return []
        now = module_state(module)
        params = {n for n, _ in module.named_parameters()}
        return [("parameter " if n in params else "buffer ") + n
                for (n, _), ref in zip(self.state, self.state_refs) if ref() is not now.get(n)]


def call_signature(fn: Callable, args: tuple, kwargs: dict, key: Key | None = None) -> CallSignature:
    """The signature of a call (`key`: its `signature_key`, when already computed)."""
    spec, leaves, training, state, aliases, context = key if key is not None else signature_key(fn, args, kwargs)
    names = tuple(n for n, _ in named_leaves(args, kwargs, fn))
    modules: tuple = ()
    refs: tuple = ()
    if isinstance(fn, torch.nn.Module):
        modules = tuple(n or type(fn).__name__ for n, _ in fn.named_modules())
        refs = tuple(weakref.ref(t) for t in module_state(fn).values())
    return CallSignature(spec, leaves, training, state, aliases, context, names, modules, refs)


def _dt(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


def _shape(s: tuple) -> str:
    return "[" + ", ".join("*" if v is None else str(v) for v in s) + "]"


def _describe_value(m: Any) -> str:
    if isinstance(m, TensorMeta):
        return f"a tensor {_dt(m.dtype)}{_shape(m.shape)}"
    return f"{m[1].__name__} {m[2]!r}"


def _tensor_changes(what: str, a: TensorMeta, b: TensorMeta) -> list[str]:
    out = []
    if a.shape != b.shape:
        if len(a.shape) != len(b.shape):
            out.append(f"{what}: rank changed {len(a.shape)} -> {len(b.shape)} "
                       f"(shape {_shape(a.shape)} -> {_shape(b.shape)})")
        else:
            dims = [d for d, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
            out.append(f"{what}: shape changed {_shape(a.shape)} -> {_shape(b.shape)} "
                       f"(dim{'s' if len(dims) > 1 else ''} {', '.join(map(str, dims))})")
    if a.dtype != b.dtype:
        out.append(f"{what}: dtype changed {_dt(a.dtype)} -> {_dt(b.dtype)}")
    if a.device != b.device:
        out.append(f"{what}: device changed {a.device} -> {b.device}")
    if a.requires_grad != b.requires_grad:
        out.append(f"{what}: requires_grad changed {a.requires_grad} -> {b.requires_grad}")
    return out


def _aliases(sig: CallSignature) -> str:
    names = sig.tensor_names
    return "; ".join(" and ".join(names[i] for i in g) for g in sig.aliases) or "none"


def _autocast(state: tuple) -> str:
    return ", ".join(f"{d} {_dt(t)}" for d, t in state) or "off"


def describe_changes(old: CallSignature, new: CallSignature) -> list[str]:
    """Every difference between two call signatures, one readable line each."""
    if old.spec != new.spec or len(old.leaves) != len(new.leaves):
        return [f"argument structure changed: {old.spec} -> {new.spec}"]
    out = []
    for i, (name, a, b) in enumerate(zip(new.names, old.leaves, new.leaves)):
        what = f"input {i} ({name})"
        if isinstance(a, TensorMeta) and isinstance(b, TensorMeta):
            out += _tensor_changes(what, a, b)
        elif a != b:
            out.append(f"{what}: changed {_describe_value(a)} -> {_describe_value(b)}")
    if old.training != new.training:
        was, now = dict(zip(old.modules, old.training)), dict(zip(new.modules, new.training))
        changed = [f"{n} {was[n]} -> {now[n]}" for n in now if n in was and was[n] != now[n]]
        out.append("module training flag changed" + (f": {', '.join(changed[:3])}" if changed else "")
                   + (f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""))
    if old.aliases != new.aliases:
        out.append(f"inputs sharing memory changed: {_aliases(old)} -> {_aliases(new)}")
    if old.context[0] != new.context[0]:
        out.append(f"autocast changed: {_autocast(old.context[0])} -> {_autocast(new.context[0])}")
    if old.context[1] != new.context[1]:
        out.append(f"modules with hooks changed: {list(old.context[1])} -> {list(new.context[1])}")
    if old.state != new.state:
        was, now = dict(old.state), dict(new.state)
        added, removed = [n for n in now if n not in was], [n for n in was if n not in now]
        if added or removed:
            out.append(f"module parameters/buffers changed: added {added}, removed {removed}")
        for n in now:
            if n in was and was[n] != now[n]:
                out += _tensor_changes(f"parameter/buffer {n}", was[n], now[n])
    return out


def size_changes(old: CallSignature, new: CallSignature) -> set[Dim] | None:
    """The dims whose sizes differ, when sizes of same-rank tensors are all that differ; else None."""
    if (old.spec != new.spec or old.training != new.training or old.state != new.state or old.aliases != new.aliases
            or old.context != new.context):
        return None
    dims: set[Dim] = set()
    for i, (a, b) in enumerate(zip(old.leaves, new.leaves)):
        if isinstance(a, TensorMeta) and isinstance(b, TensorMeta):
            if len(a.shape) != len(b.shape) or (a.dtype, a.device, a.requires_grad) != (
                    b.dtype, b.device, b.requires_grad):
                return None
            dims |= {(i, d) for d, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y}
        elif a != b:
            return None
    return dims


class Program:
    """One traced program: its example signature, the dims it leaves dynamic, and (when there are
    any) the symbolic trace that derives a static graph per size."""

    def __init__(self, sig: CallSignature, dynamic: frozenset, symbolic: SymbolicTrace | None):
        self.sig = sig
        self.symbolic = symbolic
        self.guards: Guards | None = None  # Python values the trace read (frontend/sources.py), set once traced
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


MISS = object()  # FastGuard.match: the guard failed, nothing ran
_SIMPLE = (int, float, bool, str, type(None))  # argument types the fast guard compares by value


class FastGuard:
    """The guard `ember.compile` checks first (the host path, docs/architecture.md): a call that
    matches the last call's full signature in every fact the signature key covers is served without
    computing that key (pytree flatten, `str(TreeSpec)`, one `TensorMeta` per tensor, module state
    walked three times). Only for arguments (positional, or keywords in the same order) that are
    tensors or plain scalars.

    It checks, in order: each argument's type and each scalar's value; the version of every
    submodule's `__dict__`, `_parameters`, `_buffers` and `_modules` (CPython's dict versions, as
    Dynamo's guards: any attribute write, training flag, replaced or added parameter, buffer or
    submodule changes one), so the module state read once when the guard was made is still the
    module's; one C++ check of shape, strides, dtype, device and requires_grad over the tensor
    arguments and that state (`runtime.executor.tensor_guard`); that no two of those tensors share a
    storage (the graph was traced without aliasing: the full key's aliasing groups were empty); that
    the Python values its trace read are unchanged.
    Anything else (kwargs, containers, aliasing, a changed fact) takes the full signature path,
    which makes a new fast guard for the next call.
    """

    __slots__ = ("key", "sg", "names", "types", "consts", "tensor_pos", "state", "dicts", "versions", "check",
                 "autocast")

    @classmethod
    def make(cls, cf: Any, key: Key, sg: Any, args: tuple, kwargs: dict) -> FastGuard | None:
        values = args + tuple(kwargs.values()) if kwargs else args  # the call's leaves, in pytree order
        if key[4] or not all(isinstance(a, torch.Tensor) or type(a) in _SIMPLE for a in values):
            return None  # tensors sharing memory, or containers: the full signature every call
        if getattr(sg, "eager_reason", None) is not None:
            return None
        module = cf._module
        dicts: list[dict] = []
        if module is not None:
            if _dict_version is None:
                return None
            dicts = [d for m in module.modules() for d in (m.__dict__, m._parameters, m._buffers, m._modules)]
            # a hook registered since (capture refuses hooks: the full path retraces and says so)
            dicts += [getattr(m, h) for m in module.modules() for h in HOOK_DICTS] + global_hook_dicts()
        g = cls()
        g.key, g.sg = key, sg
        g.names = tuple(kwargs)
        g.types = tuple(map(type, values))
        g.consts = tuple((i, a) for i, a in enumerate(values) if not isinstance(a, torch.Tensor))
        g.tensor_pos = tuple(i for i, a in enumerate(values) if isinstance(a, torch.Tensor))
        g.state = list(module_state(module).values())
        g.dicts = dicts
        g.versions = [_dict_version(d) for d in dicts]
        g.check = tensor_guard([values[i] for i in g.tensor_pos] + g.state)
        g.autocast = key[5][0]
        return g

    def match(self, cf: Any, args: tuple, kwargs: dict) -> Any:
        """The call's result when the guard holds (the graph ran), else `MISS` (nothing ran)."""
        if kwargs:
            if tuple(kwargs) != self.names:
                return MISS
            values = args + tuple(kwargs.values())
        elif self.names:
            return MISS
        else:
            values = args
        if tuple(map(type, values)) != self.types:
            return MISS
        for i, v in self.consts:
            if values[i] != v:
                return MISS
        if self.dicts and list(map(_dict_version, self.dicts)) != self.versions:
            return MISS
        if autocast_state() != self.autocast:  # the trace baked in the autocast casts (or their absence)
            return MISS
        tensors = [values[i] for i in self.tensor_pos]
        state = self.state
        if not self.check(*tensors, *state):
            return MISS
        everything = tensors + state
        if len(everything) > 1:
            try:
                ptrs = {t.untyped_storage().data_ptr() for t in everything}
            except (RuntimeError, NotImplementedError):  # tensors without storage: the full path
                return MISS
            if len(ptrs) != len(everything):
                return MISS
        # (the graph is the cache's for its key: every change of the cache goes through the full path,
        # which replaces this guard)
        sg = self.sg
        if sg.captured.guards.check() is not None:
            return MISS
        # the graph's inputs: the call's tensors, the module state, the tensors read through closures
        # and globals, the lifted constants
        ts = [values[i] for i in sg.captured.tensor_positions] + state + sg.captured.source_tensors()
        return sg.run_inputs(args, kwargs, ts, ts + sg.lowered.constants)
