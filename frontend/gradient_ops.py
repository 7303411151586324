"""The torch custom ops capture records for the IR's gradient markers (ir/ops/gradient.py).

Each returns the value of its first input; they differ in where the gradient goes:

- `ember::untracked_update(new, old)`: to `old`, unchanged: an in-place update autograd does not
  record keeps the updated tensor's history (frontend/capture_mode.py);
- `ember::zero_gradient(value, like)`: to `value`; `like` is attached with a zero gradient, as eager's
  autograd attaches `fill`/`zero_` results to their input (frontend/decompositions.py);
- `ember::no_derivative(value, like, op)`: to `value`; a gradient `like` needs raises (aten::`op`
  has no derivative in torch: heaviside, floor_divide; frontend/decompositions.py).

frontend/lower_layout.py lowers each to the IR op of the same name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _value_of_first(name: str, params: tuple[str, str], gradients: Callable) -> Callable:
    op = torch.library.custom_op(f"ember::{name}", lambda a, b: a.clone(), mutates_args=(),
                                 schema=f"(Tensor {params[0]}, Tensor {params[1]}) -> Tensor")
    op.register_fake(lambda a, b: torch.empty_like(a))
    op.register_autograd(lambda ctx, grad: gradients(grad))
    return op


untracked_update = _value_of_first("untracked_update", ("new", "old"), lambda grad: (None, grad))
zero_gradient = _value_of_first("zero_gradient", ("value", "like"), lambda grad: (grad, None))


# `ember::no_derivative(value, like, op)`: `value`, whose gradient to `like` does not exist in torch
# (aten::`op` has no derivative): a backward that needs it raises, as eager's does.
@torch.library.custom_op("ember::no_derivative", mutates_args=())
def no_derivative(value: torch.Tensor, like: torch.Tensor, op: str) -> torch.Tensor:
    return value.clone()


@no_derivative.register_fake
def _(value, like, op):
    return torch.empty_like(value)


def _no_derivative_setup(ctx, inputs, output):
    ctx.op = inputs[2]


def _no_derivative_backward(ctx, grad):
    if ctx.needs_input_grad[1]:
        raise NotImplementedError(f"the derivative for aten::{ctx.op} is not implemented")
    return grad, None, None


no_derivative.register_autograd(_no_derivative_backward, setup_context=_no_derivative_setup)
