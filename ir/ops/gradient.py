"""Gradient markers: ops that only tell autodiff what eager autograd would not record.

- `stop_gradient(x)`: the value of `x`, no gradient (torch's `detach`, `.data`, and results computed
  under `torch.no_grad()`).
- `untracked_update(new, old)`: the value of `new` with the gradient of `old`: an in-place update
  autograd does not record (made under `torch.no_grad()` or through a detached alias such as
  `.data`). Eager keeps the tensor's autograd history, so the gradient passes to the value before the
  update unchanged, while later reads see the updated value.

Both are views of their first input (kind "layout", so `materialize_outputs` treats an output that is
one of them over an input as aliasing it). They survive the pass pipeline for `passes.autodiff`, and
the runtime drops them before fusion (`passes.gradient_markers.strip_gradient_markers`): no kernel,
no byte, no broken fusion group.
"""

from __future__ import annotations

import torch

from ..registry import OpDef, register
from ..types import TensorType


def _same(types: list[TensorType]) -> TensorType:
    if any(t != types[0] for t in types[1:]):
        raise ValueError(f"the new value and the old one differ in type: {[str(t) for t in types]}")
    return types[0]


# Values: the first input's (ONNX export, codegen/onnx.py).
_first = lambda b, args, types, out: b.op("Identity", args[:1])  # noqa: E731

register(OpDef("stop_gradient", "layout", _same, lambda x: x, view=True,
               vjp=lambda g, inputs, out, ct: [None], active_inputs=(),
               aten=(torch.ops.aten.detach.default,), onnx=_first,
               doc="the value of x, no gradient (detach, .data, torch.no_grad())"))
register(OpDef("untracked_update", "layout", _same, lambda new, old: new, arity=2, view=True,
               vjp=lambda g, inputs, out, ct: [None, ct], active_inputs=(1,), onnx=_first,
               doc="the value of `new`, the gradient passed to `old` (an in-place update autograd does not record)"))

register(OpDef("zero_gradient", "layout", lambda types: types[0], lambda value, like: value, arity=2, view=True,
               vjp=lambda g, inputs, out, ct: [ct, None], active_inputs=(0, 1), onnx=_first,
               doc="the value of `value`, attached to `like` with a zero gradient (fill, zero_)"))

GRADIENT_MARKERS = ("stop_gradient", "untracked_update", "zero_gradient")
