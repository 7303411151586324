"""Complex outputs of a differentiated program: their gradient is refused, never dropped.

ember's IR autodiff has no rules for complex values (only externs make them: FFTs, `view_as_complex`).
Inside a graph, `passes.autodiff` raises when a gradient must flow through one. A complex value that
is a graph *output* is different: eager returns it requiring grad, and the caller may build a loss
from it outside the compiled function. Returned without a history, its part of the gradient would be
silently missing; so it is returned attached to the inputs that require grad through a node whose
backward raises `NotImplementedError` naming the op that made it.
"""

from __future__ import annotations

import torch

from ..ir import Graph
from ..passes.autodiff import active_outputs


class _RefuseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, what: str, t: torch.Tensor, *tracked: torch.Tensor) -> torch.Tensor:
        ctx.what = what
        return t.view_as(t)

    @staticmethod
    def backward(ctx, *grads):
        raise NotImplementedError(f"ember: cannot differentiate through {ctx.what}: a gradient through a complex "
                                  f"value has no rule in ember's autodiff (run this part eagerly)")


def refuse_complex_gradients(graph: Graph, outs: list[torch.Tensor], inputs: list[torch.Tensor]) -> list[torch.Tensor]:
    """`outs` with every complex output that depends on an input requiring grad made to raise in backward."""
    complex_outs = [k for k, v in enumerate(graph.outputs) if v.dtype.is_complex]
    if not complex_outs:
        return outs
    wrt = [i for i, t in enumerate(inputs[:len(graph.inputs)]) if t.requires_grad and t.is_floating_point()]
    tracked = [inputs[i] for i in wrt]
    active = set(active_outputs(graph, wrt))
    outs = list(outs)
    for k in complex_outs:
        if k in active:
            p = graph.outputs[k].producer
            what = f"op '{p.attrs.get('target', p.op)}'" if p is not None else "a complex output"
            outs[k] = _RefuseGradient.apply(what, outs[k], *tracked)
    return outs
