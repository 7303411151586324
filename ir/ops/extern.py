"""`extern`: a call to a torch op that ember does not lower, so that no program is refused.

attrs: `target` ("aten.name.overload"), `args` and `kwargs` templates in which ("__input__", i)
stands for the node's i-th input, and optionally `strided`: the inputs torch saw non-contiguous when
tracing, which the runtime passes as they are laid out; every other input is passed contiguous (as
torch saw it: some internal ops rely on their caller's `.contiguous()`), and optionally
`passthrough`: the number of trailing inputs that are not arguments of the call but are returned
(copied) after it, as the node's outputs: an op that returns nothing, such as
`_linalg_check_errors`, checks the values computed with it that way (frontend/void_ops.py). The type
rule runs the target on meta tensors. An output torch returns as None (`convolution_backward`'s
gradients masked off by `output_mask`) gets the placeholder type `b8[0]`: nothing reads it, and the
runtime does not check it.
"""

from __future__ import annotations

from typing import Any

import torch

from ..registry import OpDef, register
from ..types import TensorType

INPUT = "__input__"


def resolve_target(target: str):
    """'aten.add.Tensor' -> torch.ops.aten.add.Tensor (raises a clear error if missing)."""
    obj: Any = torch.ops
    for part in target.split("."):
        try:
            obj = getattr(obj, part)
        except (AttributeError, RuntimeError):
            raise ValueError(f"extern: unknown torch op {target!r}") from None
    return obj


def fill_template(template, inputs):
    if isinstance(template, tuple) and len(template) == 2 and template[0] == INPUT:
        return inputs[template[1]]
    if isinstance(template, (list, tuple)):
        return type(template)(fill_template(t, inputs) for t in template)
    if isinstance(template, dict):
        return {k: fill_template(v, inputs) for k, v in template.items()}
    return template


# The type of an output torch returns as None (see the module doc).
NONE_TYPE = TensorType((0,), torch.bool)


def call_extern(inputs, target: str, args=(), kwargs=None, strided=(), passthrough: int = 0):
    fn = resolve_target(target)
    inputs = list(inputs)
    n = len(inputs) - passthrough
    out = fn(*fill_template(tuple(args), inputs[:n]), **fill_template(dict(kwargs or {}), inputs[:n]))
    if passthrough:  # copies: an extern's results must not alias its inputs (runtime/executor.py)
        return [t.clone() for t in inputs[n:]]
    return out


def _extern_infer(types: list[TensorType], target: str, args=(), kwargs=None, strided=(), passthrough: int = 0):
    metas = [torch.empty(t.shape, dtype=t.dtype, device="meta") for t in types]
    out = call_extern(metas, target, args, kwargs, passthrough=passthrough)
    outs = out if isinstance(out, (list, tuple)) else [out]
    if out is None or not outs:
        raise ValueError(f"extern {target}: the op returns nothing; lower it with `passthrough` values")
    return [NONE_TYPE if o is None else TensorType(tuple(o.shape), o.dtype) for o in outs]


register(OpDef("extern", "extern", _extern_infer, lambda *xs, **attrs: call_extern(xs, **attrs), arity=(0, None)))
