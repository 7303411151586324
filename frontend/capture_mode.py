"""Eager autograd's stop-gradients, kept through capture.

`make_fx` traces below autograd, so what autograd would *not* record leaves no mark in the aten graph:
`.data` and blocks under `torch.no_grad()` look like ordinary ops, and an in-place update made there
looks like any other write. ember differentiates the captured graph itself, so capture puts them
back: the program runs under `CaptureMode`, a `TorchFunctionMode` that sees every torch call of the
user's Python (with grad mode enabled, on detached inputs, so autograd records nothing itself):

- `.detach()` and `.data` become `aten.detach` (lowered to the IR's `stop_gradient`); `t.data = v`
  (same shape and dtype) is an untracked update of `t` (below);
- every tensor a torch call returns while `torch.is_grad_enabled()` is False (a `torch.no_grad()` /
  `inference_mode` block, a `@torch.no_grad()` helper) is detached the same way;
- an in-place update autograd would not record (made under no_grad, or through a detached alias
  such as `w.data.clamp_(...)`) keeps the updated tensor's gradient history, as eager does: the new
  value is wrapped in `ember::untracked_update(new, old)` (IR `untracked_update`: the value of `new`,
  the gradient passed to `old` unchanged). A detached alias updated with grad mode on from a tensor
  that may need a gradient cannot be expressed (eager gives the alias and its base different
  histories): `CaptureError`.

It also hands closed-over tensors to the trace: `substitute` maps each tensor the program reaches
through closures, globals and attributes (`frontend/sources.py`) to its placeholder, so those become
graph inputs instead of constants baked in at capture.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree
from torch.utils.weak import WeakIdKeyDictionary

from . import gradient_ops  # noqa: F401  (defines torch.ops.ember.untracked_update)
from .decompositions import functional_instance_norm, instance_norm, scaled_dot_product_attention


def is_size(x: Any) -> bool:
    """pytree's `is_leaf` for tree maps over a program's values: torch registers torch.Size as a node
    whose unflatten builds a plain tuple, and `x.shape` must stay a torch.Size, as in eager."""
    return isinstance(x, torch.Size)


class CaptureError(RuntimeError):
    """The program cannot be captured as a static graph (e.g. data-dependent control flow)."""


_DATA = torch._C.TensorBase.__dict__["data"]
_DETACH = {torch.Tensor.detach, torch.detach}
_TENSOR_HOOKS = {torch.Tensor.register_hook, torch.Tensor.register_post_accumulate_grad_hook}
# C++ composites make_fx cannot intercept, captured as ember's decompositions write them (they return
# NotImplemented where torch's composite must run): InstanceNorm as one row kernel (with running
# statistics: plus one kernel updating them; eval mode: one pointwise kernel).
_REWRITES = {torch.instance_norm: instance_norm, torch.nn.functional.instance_norm: functional_instance_norm,
             torch.nn.functional.linear_cross_entropy: lambda *a, **k: _reference_linear_cross_entropy(*a, **k),
             # SDPA as the CPU flash op on any device (meta, CUDA): the fused attention kernels
             torch.nn.functional.scaled_dot_product_attention: scaled_dot_product_attention,
             torch.nn.functional.interpolate: lambda *a, **k: _empty_interpolate(*a, **k)}


def _empty_interpolate(input: Any, *args: Any, **kwargs: Any) -> Any:
    """`F.interpolate` of an input without elements. torch's meta for upsample_nearest passes an int to
    `torch._check` there (TypeError: cond must be a bool), even for a valid empty batch; eager's
    kernel, on an empty real tensor of the shape (no tracing mode), gives the result's shape or
    eager's own error. The result has no elements either (its batch is 0), still in the graph."""
    if not isinstance(input, torch.Tensor) or input.numel() != 0:
        return NotImplemented
    from torch.utils._python_dispatch import _disable_current_modes

    with _disable_current_modes():
        shape = torch.nn.functional.interpolate(torch.empty(tuple(input.shape), dtype=input.dtype), *args,
                                                **kwargs).shape
    return input.new_zeros(shape) + input.sum()


def _reference_linear_cross_entropy(*args: Any, options: Any = None, **kwargs: Any) -> Any:
    """`F.linear_cross_entropy` with chunking `options`: torch's reference path instead (`linear` then
    `cross_entropy`, torch's own equivalence). The chunked one is a custom op whose autograd depends on
    which inputs required grad when called, and capture calls it on detached inputs; ember fuses the
    reference path's loss into one row kernel anyway."""
    if options is None:
        return NotImplemented
    return torch.nn.functional.linear_cross_entropy(*args, options=None, **kwargs)
_INPLACE_DUNDERS = {"__iadd__", "__isub__", "__imul__", "__itruediv__", "__idiv__", "__ifloordiv__", "__imod__",
                    "__ipow__", "__iand__", "__ior__", "__ixor__", "__ilshift__", "__irshift__", "__imatmul__",
                    "__setitem__"}
# Trailing-underscore methods that change no tensor's values.
_NOT_UPDATES = {"requires_grad_", "retain_grad", "share_memory_", "record_stream", "detach_"}


@functools.cache
def _inplace_position(func: Callable) -> int | None:
    """Position of an `inplace` parameter (F.relu(x, inplace=True), F.dropout(..., inplace)), if any."""
    try:
        params = list(inspect.signature(func).parameters)
    except (TypeError, ValueError):
        return None
    return params.index("inplace") if "inplace" in params else None


def updated_tensors(func: Callable, args: tuple, kwargs: dict) -> list[torch.Tensor]:
    """The tensors a torch call writes in place."""
    name = getattr(func, "__name__", "")
    inplace = name in _INPLACE_DUNDERS or (name.endswith("_") and not name.endswith("__") and name not in _NOT_UPDATES)
    if not inplace:
        try:
            pos = _inplace_position(func)
        except TypeError:  # unhashable callable
            pos = None
        inplace = pos is not None and (kwargs.get("inplace") is True or (len(args) > pos and args[pos] is True))
    out = [args[0]] if inplace and args and isinstance(args[0], torch.Tensor) else []
    return out + [t for t in pytree.tree_leaves(kwargs.get("out")) if isinstance(t, torch.Tensor)]


def _aliases(a: torch.Tensor, b: torch.Tensor) -> bool:
    try:
        return torch._C._is_alias_of(a, b)
    except RuntimeError:  # tensors without storage
        return False


class CaptureMode(TorchFunctionMode):
    """See the module doc. One instance per trace."""

    def __init__(self, substitute: dict[int, torch.Tensor] | None = None, inputs: tuple = ()):
        super().__init__()
        self.substitute = substitute or {}
        self.inputs = inputs             # the traced function's tensors (placeholders, in order)
        self.tracked_writes: set[int] = set()  # which of them an update autograd records writes
        # detached alias -> the tensor whose autograd history it shares storage with (never itself a
        # detached alias): an untracked update through the alias must keep that tensor's history.
        self.roots = WeakIdKeyDictionary()
        self.no_grad = WeakIdKeyDictionary()  # tensors known to carry no gradient

    def _sub(self, t: torch.Tensor) -> torch.Tensor:
        return self.substitute.get(id(t), t)

    def root(self, t: torch.Tensor) -> torch.Tensor:
        return self.roots.get(t, t)

    def _detach(self, t: torch.Tensor, base: torch.Tensor | None) -> torch.Tensor:
        d = t.detach()
        self.no_grad[d] = True
        if base is not None:
            self.roots[d] = self.root(base)
        return d

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.substitute:
            args, kwargs = pytree.tree_map_only(torch.Tensor, self._sub, (args, kwargs), is_leaf=is_size)
        if getattr(func, "__self__", None) is _DATA:
            if func.__name__ == "__get__":  # `t.data`: an alias autograd does not see
                return self._detach(args[0], args[0])
            target, value = args  # `t.data = v`: new values, the same autograd history
            if not isinstance(value, torch.Tensor) or (value.shape, value.dtype) != (target.shape, target.dtype):
                raise CaptureError("ember.trace: assigning `.data` of another shape or dtype inside a compiled "
                                   "program is not supported")
            value = self._detach(value, None)
            return self._untracked(torch.Tensor.copy_, (target, value), {}, [target], [target, value])
        if func in _DETACH:
            return self._detach(args[0], args[0])
        if func in _TENSOR_HOOKS:  # the hook would be registered on a traced tensor, and never called
            raise CaptureError(
                f"ember.trace: `Tensor.{func.__name__}` inside a compiled program is not supported: ember "
                f"differentiates the captured graph itself, so a hook registered while tracing would never be "
                f"called. Register hooks outside the compiled function, or use torch.compile(backend=\"ember\") "
                f"or ember.eager()")
        grad = torch.is_grad_enabled()
        inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        rewrite = _REWRITES.get(func)
        out = rewrite(*args, **kwargs) if rewrite is not None else NotImplemented
        if out is not NotImplemented:  # pure (no update), so only no_grad's detach applies
            return self._results(out, inputs, grad)
        updated = updated_tensors(func, args, kwargs)
        if updated and (not grad or any(t in self.roots for t in updated)):
            return self._untracked(func, args, kwargs, updated, inputs)
        for t in updated:  # an update eager autograd records: the input takes the update's history
            self.tracked_writes.update(i for i, x in enumerate(self.inputs)
                                       if t is x or t._base is x or _aliases(t, x))
        return self._results(func(*args, **kwargs), inputs, grad)

    def _results(self, out: Any, inputs: list[torch.Tensor], grad: bool) -> Any:
        """Detach what a no_grad call returns; follow aliases of detached tensors and no-grad values."""
        no_grad_inputs = all(t in self.no_grad for t in inputs)

        def result(t: torch.Tensor) -> torch.Tensor:
            if any(t is x for x in inputs):  # an in-place op or a no-op conversion returns its input
                return t
            base = next((x for x in inputs if (not grad or x in self.roots) and _aliases(t, x)), None)
            if not grad:
                return self._detach(t, base)
            if base is not None:  # a view of a detached alias is one too
                self.roots[t] = self.root(base)
            if no_grad_inputs:
                self.no_grad[t] = True
            return t

        return pytree.tree_map_only(torch.Tensor, result, out, is_leaf=is_size)

    def _untracked(self, func, args: tuple, kwargs: dict, updated: list[torch.Tensor],
                   inputs: list[torch.Tensor]) -> Any:
        grad = torch.is_grad_enabled()
        name = getattr(func, "__name__", str(func))
        if grad:  # the alias itself records the update in eager: it and its base part ways
            sources = [t for t in inputs if not any(t is u for u in updated) and t not in self.no_grad]
            if sources:
                raise CaptureError(
                    f"ember.trace: `{name}` updates a detached tensor (.detach() / .data) in place with grad mode on, "
                    f"from a tensor that may require grad; eager autograd gives the detached tensor and the tensor "
                    f"it aliases different gradient histories, which a captured graph cannot express. Do the "
                    f"update under torch.no_grad(), or on a clone")
        roots: list[torch.Tensor] = []
        for t in updated:
            r = self.root(t)
            if not any(r is x for x in roots):
                roots.append(r)
        olds = [r.clone() for r in roots]
        out = func(*args, **kwargs)
        for r, old in zip(roots, olds):
            r.copy_(torch.ops.ember.untracked_update(r, old))
        return self._results(out, inputs, grad)
