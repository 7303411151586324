"""The torch custom ops capture records for the IR's gradient markers (ir/ops/gradient.py).

Each returns the value of its first input; they differ in where the gradient goes:

- `ember::untracked_update(new, old)`: to `old`, unchanged: an in-place update autograd does not
  record keeps the updated tensor's history (frontend/capture_mode.py);
- `ember::zero_gradient(value, like)`: to `value`; `like` is attached with a zero gradient, as eager's
  autograd attaches `fill`/`zero_` results to their input (frontend/decompositions.py).

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
