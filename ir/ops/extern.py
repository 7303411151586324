"""`extern`: a call to a torch op that ember does not lower, so that no program is refused.

attrs: `target` ("aten.name.overload"), `args` and `kwargs` templates in which ("__input__", i)
stands for the node's i-th input. The type rule runs the target on meta tensors.
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


def call_extern(inputs, target: str, args=(), kwargs=None):
    fn = resolve_target(target)
    out = fn(*fill_template(tuple(args), list(inputs)), **fill_template(dict(kwargs or {}), list(inputs)))
    return out


def _extern_infer(types: list[TensorType], target: str, args=(), kwargs=None):
    metas = [torch.empty(t.shape, dtype=t.dtype, device="meta") for t in types]
    out = call_extern(metas, target, args, kwargs)
    outs = out if isinstance(out, (list, tuple)) else [out]
    return [TensorType(tuple(o.shape), o.dtype) for o in outs]


register(OpDef("extern", "extern", _extern_infer, lambda *xs, **attrs: call_extern(xs, **attrs)))
