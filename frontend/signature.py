"""Call signatures: argument checks that give Python-like errors, and the cache key of a call.

A static graph is valid for one signature: the pytree structure of (args, kwargs), each tensor's
shape, dtype, device and requires_grad, the value of each non-tensor argument (baked into the graph
as a constant), for modules the training flag and the parameters' and buffers' metadata, and which
of these tensors share memory (frontend/aliasing.py).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Hashable, Iterable
from typing import Any

import torch
from torch.utils import _pytree as pytree

from .aliasing import alias_groups


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


def _leaf_key(x: Any) -> Hashable:
    if isinstance(x, torch.Tensor):
        return ("tensor", tuple(x.shape), x.dtype, str(x.device), x.requires_grad)
    try:
        hash(x)
        return ("const", type(x), x)
    except TypeError:
        return ("const", type(x), repr(x))


def check_initialized(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """A lazy module (nn.LazyLinear, ...) has no parameter shapes before its first eager call."""
    lazy = [n for n, t in state.items() if isinstance(t, torch.nn.parameter.UninitializedTensorMixin)]
    if lazy:
        raise ValueError(f"{fn_name(module)} has uninitialized parameters/buffers of a lazy module "
                         f"({', '.join(lazy[:3])}{', ...' if len(lazy) > 3 else ''}); call it once eagerly "
                         f"(e.g. model(x)) to initialize them before compiling")


def signature_key(fn: Callable, args: tuple, kwargs: dict) -> Hashable:
    leaves, spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
    key: tuple = (str(spec), tuple(_leaf_key(x) for x in leaves))
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    if isinstance(fn, torch.nn.Module):
        state = {**dict(fn.named_parameters()), **dict(fn.named_buffers())}
        try:
            key += (tuple(m.training for m in fn.modules()), tuple((n, _leaf_key(t)) for n, t in state.items()))
        except RuntimeError:  # torch's "Can't access the shape of an uninitialized parameter"
            check_initialized(fn, state)
            raise
        tensors += state.values()
    # which of the call's tensors (then parameters/buffers) share memory: a trace of f(t, t) reads
    # one placeholder for both, and an in-place update must be seen through every alias
    groups = alias_groups(tensors) if len(tensors) > 1 else ()
    return key + (("aliases", groups),) if groups else key
