"""One aten op call as an ember graph, for eager mode: whether the op can run on ember at all, and
building (capture -> lower -> `runtime.compile_ir`) and running the graph of one call.

The graph of a call is checked against torch's own kernel (its meta function: shapes and dtypes of
every output), so a decomposition that disagrees with torch is a build error, never a wrong value.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils import _pytree as pytree

from ..frontend.capture import capture
from ..frontend.lowering import _functional_variant, lower
from ..ir.types import COMPILABLE_DTYPES
from ..runtime.driver import Executable, compile_ir
from ..runtime.outputs import restride
from .custom_op import NAMESPACE as CUSTOM_NAMESPACE

aten = torch.ops.aten

# Ops handled by torch whatever their schema says: the mutation primitive itself and ops whose
# results are metadata rather than values.
_TORCH_OPS = {aten.copy_.default, aten.lift_fresh.default}


class FallThrough(Exception):
    """This call runs on torch (the message says why); not an error."""


@dataclass
class OpGraph:
    """One op call lowered to IR and compiled, for one set of input shapes."""

    captured: Any
    lowered: Any
    compiled: Executable
    out_strides: list[tuple[int, ...]]


def static_reason(func: torch._ops.OpOverload, leaves: list) -> str | None:
    """Why calls of `func` with these arguments never run on ember (None: try to)."""
    schema = func._schema
    if func.namespace not in ("aten", CUSTOM_NAMESPACE):  # (ember.custom_op's ops run on ember too)
        return f"{func.namespace} op"
    if func in _TORCH_OPS:
        return "handled by torch"
    if any(r.alias_info is not None and not r.alias_info.is_write for r in schema.returns):
        return "view op (returns a real torch view)"
    if schema.is_mutable and inplace_target(func) is None:
        return "mutates arguments other than self"
    if not schema.returns or any(str(r.type) not in ("Tensor", "Tensor?", "Tensor[]") for r in schema.returns):
        return "returns non-tensors"
    tensors = [x for x in leaves if isinstance(x, torch.Tensor)]
    if not tensors:
        return "no tensor inputs"
    if any(type(t) not in (torch.Tensor, torch.nn.Parameter) for t in tensors):
        return "tensor subclass"
    if any(t.dtype not in COMPILABLE_DTYPES for t in tensors):
        return "dtype ember cannot compile"
    devices = {(t.device.type, t.device.index) for t in tensors}
    if len(devices) > 1:
        return "tensors on several devices"
    if next(iter(devices))[0] not in ("cpu", "cuda"):
        return f"device {next(iter(devices))[0]}"
    return None


def inplace_target(func: torch._ops.OpOverload) -> torch._ops.OpOverload | None:
    """The functional variant of an in-place op that writes only `self` (`add_` -> `add`), else None."""
    schema = func._schema
    written = [a for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write]
    if len(written) != 1 or written[0].name != "self" or len(schema.returns) != 1:
        return None
    functional = _functional_variant(func)
    return None if functional is func else functional


def build(func: torch._ops.OpOverload, args: tuple, kwargs: dict, tls: tuple, inplace: bool) -> OpGraph:
    """Capture, lower, optimize and compile one call of the functional op `func` (for an in-place op,
    of its functional variant: `inplace` checks that the result can be written back into `self`).
    Raises `FallThrough` where the call is torch's to run.

    `tls` is the dispatch-key state outside the mode: inside `__torch_dispatch__` torch excludes the
    keys above Python (functionalization among them), which make_fx needs back."""
    # capture reads only metadata; detached stand-ins keep autograd state out of make_fx
    args, kwargs = pytree.tree_map_only(torch.Tensor, torch.Tensor.detach, (args, kwargs))
    with torch._C._ForceDispatchKeyGuard(*tls):
        cap = capture(lambda *a, **kw: func(*a, **kw), args, kwargs)
        want = _torch_results(func, args, kwargs)
    lowered = lower(cap.gm)
    externs = sorted({n.attrs["target"] for n in lowered.graph.nodes if n.op == "extern"})
    if externs:
        raise FallThrough(f"lowers to torch extern {', '.join(externs)}")
    if lowered.mutated_inputs:
        raise FallThrough("mutates its inputs")
    if any(kind != "tensor" and v is not None for kind, v in cap.out_leaves):
        raise FallThrough("returns non-tensors")
    out_node = next(n for n in cap.gm.graph.nodes if n.op == "output")
    vals = [n.meta["val"] for n in pytree.tree_leaves(out_node.args[0])]
    got = [(tuple(v.shape), v.dtype) for v in vals]
    if want is not None and got != want:  # a decomposition that disagrees with torch: a bug, never run it
        raise RuntimeError(f"the captured graph of {func} gives {got}, torch's kernel gives {want}")
    if inplace:
        self_t = args[0] if args else kwargs["self"]
        if len(vals) != 1 or vals[0].shape != self_t.shape or vals[0].dtype != self_t.dtype:
            raise FallThrough("in-place result type differs from self")
    return OpGraph(cap, lowered, compile_ir(lowered.graph), [tuple(v.stride()) for v in vals])


def _torch_results(func: torch._ops.OpOverload, args: tuple, kwargs: dict) -> list[tuple] | None:
    """Shape and dtype of each tensor `func` itself returns for these arguments (its meta kernel, on
    fake copies), to check the decomposed graph against; None where torch cannot say."""
    mode = FakeTensorMode()
    try:
        fake_args, fake_kwargs = pytree.tree_map_only(torch.Tensor, mode.from_tensor, (args, kwargs))
        with mode:
            out = func(*fake_args, **fake_kwargs)
    except Exception:  # no meta kernel, data-dependent output shape: capture has its own checks
        return None
    return [(tuple(t.shape), t.dtype) for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def run(op: OpGraph, leaves: list) -> Any:
    """Call the compiled graph on the call's flattened arguments; the op's result, in torch's layout."""
    cap = op.captured
    outs = op.compiled([leaves[i] for i in cap.tensor_positions] + op.lowered.constants)
    fixed = restride(outs, op.out_strides)  # keep torch's layout, so views behave as in torch
    flat = [fixed[v] if kind == "tensor" else v for kind, v in cap.out_leaves]
    return pytree.tree_unflatten(flat, cap.out_spec)
