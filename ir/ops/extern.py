"""`extern`: a call to a torch op that ember does not lower, so that no program is refused.

attrs: `target` ("aten.name.overload"), `args` and `kwargs` templates in which ("__input__", i)
stands for the node's i-th input and ("__complex__", re, im) for a complex scalar, and optionally
`strided`: the inputs torch saw non-contiguous when tracing, which the runtime passes as they are
laid out; every other input is passed contiguous (as torch saw it: some internal ops rely on their
caller's `.contiguous()`), and optionally
`passthrough`: the number of trailing inputs that are not arguments of the call but are returned
(copied) after it, as the node's outputs: an op that returns nothing, such as
`_linalg_check_errors`, checks the values computed with it that way (frontend/void_ops.py). The type
rule runs the target on meta tensors. An output torch returns as None (`convolution_backward`'s
gradients masked off by `output_mask`) gets the placeholder type `b8[0]`: nothing reads it, and the
runtime does not check it.

The VJP is PyTorch's own derivative of the op: a provider the frontend registers
(`set_vjp_provider`, frontend/extern_vjp.py: ir/ does not import the frontend) traces
`torch.autograd.grad` of the one call into aten ops and lowers them to an IR graph (`ExternVJP`),
which the rule inlines into the graph being differentiated. A `passthrough` extern passes its
outputs' cotangents to the values it returned. Complex inputs and outputs get complex cotangents
(torch's convention: the conjugate Wirtinger derivative times 2), from torch's derivative as well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..graph import Graph, Value
from ..registry import OpDef, register
from ..types import TensorType

INPUT = "__input__"
# ("__complex__", re, im) stands for a Python complex scalar argument (not a printable IR attribute):
# a `Scalar` argument (the `mul.Scalar` of `angle`'s derivative) cannot take a 0-dim tensor.
COMPLEX = "__complex__"


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
    if isinstance(template, tuple) and len(template) == 3 and template[0] == COMPLEX:
        return complex(template[1], template[2])
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
    if isinstance(out, (list, tuple)):
        return type(out)(_resolved(o) for o in out)
    return _resolved(out)


def _resolved(t):
    """`t` with its lazy conjugation / negation applied (`_conj`'s view): the same values, in memory,
    as the ops reading it next expect (`view_as_real` refuses a conjugate view)."""
    if isinstance(t, torch.Tensor) and (t.is_conj() or t.is_neg()):
        return t.resolve_conj().resolve_neg()
    return t


def _extern_infer(types: list[TensorType], target: str, args=(), kwargs=None, strided=(), passthrough: int = 0):
    metas = [torch.empty(t.shape, dtype=t.dtype, device="meta") for t in types]
    out = call_extern(metas, target, args, kwargs, passthrough=passthrough)
    outs = out if isinstance(out, (list, tuple)) else [out]
    if out is None or not outs:
        raise ValueError(f"extern {target}: the op returns nothing; lower it with `passthrough` values")
    return [NONE_TYPE if o is None else TensorType(tuple(o.shape), o.dtype) for o in outs]


@dataclass(frozen=True)
class ExternVJP:
    """The derivative of one extern call: `graph` takes the call's inputs, its outputs, then the
    cotangents of the outputs listed in `cts`, and returns the gradients of the inputs `wrt`, in that
    order (an input not in `wrt` gets none: integer, not needed, or no path in torch's derivative)."""

    graph: Graph
    wrt: tuple[int, ...]


# provider(target, args, kwargs, in_types, out_types, needs, cts, strided) -> ExternVJP, where
# `needs[i]`: input i needs a gradient, `cts`: the outputs that have a cotangent (module doc).
VJPProvider = Callable[..., ExternVJP]
_provider: VJPProvider | None = None


def set_vjp_provider(fn: VJPProvider | None) -> None:
    """Install the function that builds an extern's VJP graph (frontend/extern_vjp.py does, at import)."""
    global _provider
    _provider = fn


def _extern_vjp(g: Graph, inputs: list[Value], out, ct, target: str, args=(), kwargs=None, strided=(),
                passthrough: int = 0, needs: Sequence[bool] | None = None) -> list[Value | None]:
    outs, cts = (out, ct) if isinstance(out, list) else ([out], [ct])
    needs = tuple(needs) if needs is not None else (True,) * len(inputs)
    n = len(inputs) - passthrough
    if passthrough:  # the outputs are the trailing inputs, returned after the check
        return [None] * n + list(cts)
    what = f"op 'extern' (target {target})"
    if _provider is None:
        raise NotImplementedError(f"cannot differentiate through {what}: no VJP provider is installed "
                                  f"(importing ember.frontend installs PyTorch's derivatives)")
    have = tuple(k for k, c in enumerate(cts) if c is not None)
    vjp = _provider(target, args, dict(kwargs or {}), [v.type for v in inputs], [v.type for v in outs], needs, have,
                    tuple(strided))
    grads = g.inline(vjp.graph, list(inputs) + list(outs) + [cts[k] for k in have])
    result: list[Value | None] = [None] * len(inputs)
    for i, grad in zip(vjp.wrt, grads):
        result[i] = grad
    return result


register(OpDef("extern", "extern", _extern_infer, lambda *xs, **attrs: call_extern(xs, **attrs), arity=(0, None),
               vjp=_extern_vjp, vjp_needs=True))
