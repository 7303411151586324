"""Gradient markers: ops that only tell autodiff what eager autograd would not record.

- `stop_gradient(x)`: the value of `x`, no gradient (torch's `detach`, `.data`, and results computed
  under `torch.no_grad()`).
- `untracked_update(new, old)`: the value of `new` with the gradient of `old`: an in-place update
  autograd does not record (made under `torch.no_grad()` or through a detached alias such as
  `.data`). Eager keeps the tensor's autograd history, so the gradient passes to the value before the
  update unchanged, while later reads see the updated value.
- `zero_gradient(value, like)`: `like` attached with a zero gradient (fill, zero_).
- `no_derivative(value, like) {name}`: an op torch has no derivative for (`heaviside`, `floor_divide`)
  whose decomposition would otherwise differentiate: a gradient that must reach `like` raises, as
  eager's backward does, instead of silently taking the decomposition's (zero) derivative.

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



def _no_derivative_vjp(g, inputs, out, ct, needs, name):
    if needs[1]:
        raise NotImplementedError(f"the derivative for aten::{name} is not implemented (eager PyTorch's backward "
                                  f"raises the same)")
    return [ct, None]


register(OpDef("no_derivative", "layout", lambda types, name: types[0], lambda value, like, name: value, arity=2,
               view=True, vjp=_no_derivative_vjp, vjp_needs=True, active_inputs=(0, 1), onnx=_first,
               doc="the value of `value`; a gradient reaching `like` raises (an op torch cannot differentiate)"))

GRADIENT_MARKERS = ("stop_gradient", "untracked_update", "zero_gradient", "no_derivative")
