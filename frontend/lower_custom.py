"""Lowering of the torch.library ops `ember.custom_op` registers (api/custom_op.py), and the tracer
that turns a torch function into IR for their rules (a torch body's decomposition, a user VJP, a
reference implementation's derivative).

Each custom op is `ember_custom::<name>` in torch (one opaque op to make_fx and Dynamo) and the IR op
`<name>` here; its rule adds that one node. Ops registered with torch.library by the user need no
rule: they become `extern` calls whose derivative is their registered autograd (frontend/extern_vjp.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ..ir import Graph, TensorType
from .decompositions import DECOMPOSITIONS
from .lowering import LOWERINGS, lower, promote
from .tracing import make_fx


def trace_ir(fn: Callable, types: Sequence[TensorType], what: str) -> Graph:
    """The IR graph of `fn` on inputs of `types` (traced on fake tensors, on the CPU), whose outputs
    are the tensors `fn` returns. Refused (`what` names the function): tensors it closes over,
    random numbers, updates of its inputs."""
    with FakeTensorMode(allow_non_fake_inputs=True):
        fakes = [torch.empty(t.shape, dtype=t.dtype) for t in types]
    gm = make_fx(fn, tracing_mode="fake", decomposition_table=DECOMPOSITIONS)(*fakes)
    lowered = lower(gm)
    if lowered.lifted or lowered.mutated_inputs:
        raise NotImplementedError(f"{what}: reads tensors it closes over, draws random numbers or updates an input "
                                  f"in place; a custom op's functions must be pure functions of their tensor arguments")
    return lowered.graph


def add_rule(overload: torch._ops.OpOverload, ir_name: str, arity: int, attrs: Sequence[str], promoted: bool) -> None:
    """Lower `overload` (`arity` tensors, then the static attributes `attrs`) to one `ir_name` node;
    `promoted`: its inputs are first converted to their promoted floating dtype (a Triton body
    computes on inputs of one dtype)."""

    def rule(L, node, a):
        names = [arg.name for arg in overload._schema.arguments]
        xs = [a[n] for n in names[:arity]]
        values = {k: a[k] for k in attrs}
        if not all(type(v) in (float, int, bool) for v in values.values()):
            raise NotImplementedError(f"custom op {ir_name}: attributes must be Python numbers when traced, got "
                                      f"{values}")
        if promoted:
            dtype = promote(*xs)
            dtype = dtype if dtype.is_floating_point else torch.get_default_dtype()
            xs = [L.cast(x, dtype) for x in xs]
        return L.add(ir_name, xs, **values)

    LOWERINGS[overload] = rule
