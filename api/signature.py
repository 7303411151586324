"""Call signatures: argument checks that give Python-like errors, and the cache key of a call.

A static graph is valid for one signature: the pytree structure of (args, kwargs), each tensor's
shape, dtype, device and requires_grad, the value of each non-tensor argument (baked into the graph
as a constant), for modules the training flag and the parameters' and buffers' metadata, and which
of these tensors share memory (frontend/aliasing.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Iterable
from typing import Any, NamedTuple

import torch
from torch.utils import _pytree as pytree

from ..frontend.aliasing import alias_groups
from ..frontend.capture import hooked_modules, module_state


def fn_name(fn: Callable) -> str:
    if isinstance(fn, torch.nn.Module):
        return type(fn).__name__
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def check_arity(fn: Callable, args: tuple, kwargs: dict) -> None:
    """Raise the TypeError Python would raise for a call that does not match `fn`'s signature."""
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a signature: let the trace report it
        return
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        raise TypeError(f"{fn_name(fn)}() {e}") from None


def _param_names(fn: Callable | None) -> list[str]:
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def named_leaves(args: tuple, kwargs: dict, fn: Callable | None = None) -> list[tuple[str, Any]]:
    """(readable path, leaf) for every leaf of (args, kwargs): 'x', 'xs[1]', "opts['scale']", 'args[3]'."""
    names = _param_names(fn)
    pairs, _ = pytree.tree_flatten_with_path((tuple(args), dict(kwargs)))
    out = []
    for path, leaf in pairs:
        head, first, rest = path[0], path[1], path[2:]
        if getattr(head, "idx", None) == 0:
            name = names[first.idx] if first.idx < len(names) else f"args[{first.idx}]"
        else:
            name = str(first.key)
        out.append((name + "".join(str(k) for k in rest), leaf))
    return out


def check_devices(named: Iterable[tuple[str, torch.Tensor]]) -> None:
    """One graph runs on one device: reject a call whose tensors live on several."""
    by_device: dict[str, list[str]] = {}
    for name, t in named:
        by_device.setdefault(str(t.device), []).append(name)
    if len(by_device) > 1:
        where = "; ".join(f"{dev}: {', '.join(names)}" for dev, names in by_device.items())
        raise ValueError(f"ember: all tensors of a call must be on one device, but they are on "
                         f"{len(by_device)} devices ({where})")


def check_initialized(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """A lazy module (nn.LazyLinear, ...) has no parameter shapes before its first eager call."""
    lazy = [n for n, t in state.items() if isinstance(t, torch.nn.parameter.UninitializedTensorMixin)]
    if lazy:
        raise ValueError(f"{fn_name(module)} has uninitialized parameters/buffers of a lazy module "
                         f"({', '.join(lazy[:3])}{', ...' if len(lazy) > 3 else ''}); call it once eagerly "
                         f"(e.g. model(x)) to initialize them before compiling")


class TensorMeta(NamedTuple):
    """What a graph depends on about a tensor: shape, dtype, device and requires_grad."""

    shape: tuple[int | None, ...]  # None: a dim left dynamic (api/guards.py)
    dtype: torch.dtype
    device: str
    requires_grad: bool

    @classmethod
    def of(cls, t: torch.Tensor) -> TensorMeta:
        return cls(tuple(t.shape), t.dtype, str(t.device), t.requires_grad)

    def __str__(self) -> str:
        return f"a tensor of shape {list(self.shape)}, {self.dtype} on {self.device}"


def const_key(x: Any) -> Hashable:
    """The key of a non-tensor value baked into a graph: ("const", type, value), its repr when the
    value is not hashable."""
    try:
        hash(x)
        return ("const", type(x), x)
    except TypeError:
        return ("const", type(x), repr(x))


def leaf_key(x: Any) -> Hashable:
    """The key of one argument leaf: a tensor's `TensorMeta`, else its `const_key`."""
    return TensorMeta.of(x) if isinstance(x, torch.Tensor) else const_key(x)


Key = tuple  # (spec, leaf keys, module training flags, parameters/buffers, aliasing, context): see signature_key

# Device types whose autocast state a trace bakes in (capture runs under the caller's autocast).
AUTOCAST_DEVICES = ("cpu", "cuda")


def autocast_state() -> tuple:
    """(device type, dtype) of each autocast region the call runs in: `torch.autocast` changes the ops
    capture records (casts to its dtype), so a program traced outside it cannot serve a call inside."""
    return tuple((d, torch.get_autocast_dtype(d)) for d in AUTOCAST_DEVICES if torch.is_autocast_enabled(d))


def call_context(fn: Callable) -> tuple:
    """The state outside the arguments a trace depends on: the autocast regions, and the submodules
    with hooks (capture refuses them, frontend/capture.py: a hook registered after a trace must not
    be skipped silently)."""
    return autocast_state(), hooked_modules(fn if isinstance(fn, torch.nn.Module) else None)


def signature_key(fn: Callable, args: tuple, kwargs: dict) -> Key:
    """The one key of a call (the module doc lists what it covers): equal keys run the same graph.

    (str(pytree spec), `leaf_key` of each leaf, the `training` flag of each of `fn.modules()`,
    ((parameter or buffer name, TensorMeta), ...), groups of indices of the tensors sharing memory
    (the call's tensors, then the parameters/buffers), `call_context`); api/guards.py names each part
    that changed."""
    leaves, spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    training: tuple = ()
    state: tuple = ()
    if isinstance(fn, torch.nn.Module):
        named = module_state(fn)
        try:
            state = tuple((n, TensorMeta.of(t)) for n, t in named.items())
        except RuntimeError:  # torch's "Can't access the shape of an uninitialized parameter"
            check_initialized(fn, named)
            raise
        training = tuple(m.training for m in fn.modules())  # named in api/guards.py: names cost per call
        tensors += named.values()
    # a trace of f(t, t) reads one placeholder for both; an in-place update must reach every alias
    aliases = alias_groups(tensors) if len(tensors) > 1 else ()
    return (str(spec), tuple(leaf_key(x) for x in leaves), training, state, aliases, call_context(fn))


def _show(v: Any) -> str:
    return str(v) if isinstance(v, TensorMeta) else repr(v)


class ExampleCall:
    """The call a static graph was traced for: `check` raises, naming the argument, for a call the
    graph cannot serve (another argument structure, tensor shape/dtype/device or non-tensor value;
    requires_grad may differ: the graph is differentiated per call)."""

    def __init__(self, fn: Callable, args: tuple, kwargs: dict):
        self.fn = fn
        self.spec = pytree.tree_flatten((tuple(args), dict(kwargs)))[1]
        self.arity = (len(args), sorted(kwargs))
        self.leaves = self._leaves(args, kwargs)

    def _leaves(self, args: tuple, kwargs: dict) -> list[tuple[str, Any]]:
        return [(n, TensorMeta.of(x) if isinstance(x, torch.Tensor) else x)
                for n, x in named_leaves(args, kwargs, self.fn)]

    def check(self, args: tuple, kwargs: dict) -> None:
        name = fn_name(self.fn)
        spec = pytree.tree_flatten((tuple(args), dict(kwargs)))[1]
        if spec != self.spec:
            check_arity(self.fn, args, kwargs)
            got = (len(args), sorted(kwargs))
            if got != self.arity:
                raise TypeError(f"{name}(): this graph was traced with {self.arity[0]} positional argument(s) and "
                                f"keyword arguments {self.arity[1]}, but was called with {got[0]} and {got[1]}")
            raise TypeError(f"{name}(): the nesting of the arguments differs from the traced call "
                            f"(got {spec}, traced {self.spec})")
        for (path, got), (_, want) in zip(self._leaves(args, kwargs), self.leaves):
            if isinstance(want, TensorMeta):
                if not isinstance(got, TensorMeta) or got[:3] != want[:3]:  # all but requires_grad
                    raise ValueError(f"{name}(): {path} was traced as {want}, got {_show(got)} "
                                     f"(ember.compile traces again for a new signature)")
            elif not (type(got) is type(want) and got == want):
                raise ValueError(f"{name}(): non-tensor argument {path} was traced as {want!r} and is baked into "
                                 f"the graph; got {_show(got)} (ember.compile traces again for new values)")
