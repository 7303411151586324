"""The bridge from ember's IR autodiff to PyTorch autograd.

`AutogradGraph(graph, wrt, outputs)` differentiates a captured graph with ember's own reverse-mode
AD (`passes.autodiff.forward_backward`: VJP rules from the op registry, then a min-cut partition that
recomputes cheap pointwise values in the backward instead of saving them), compiles the forward and
the backward graphs like any other graph (same passes, same fusion), and runs them inside one
`torch.autograd.Function`: the outputs take part in autograd, so `loss.backward()` fills `.grad` of
parameters and inputs as eager would. The backward graph is not itself differentiable, so a double
backward (`torch.autograd.grad(..., create_graph=True)`, `backward(create_graph=True)`) raises
`DoubleBackwardError` at once, instead of returning a first gradient that silently has no history.
Inputs the program updates in place, and that the backward re-reads, are saved as copies: the
caller's tensor gets the new value after the forward.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..ir import Graph
from ..passes.autodiff import forward_backward
from .driver import compile_ir


class AutogradGraph:
    """Callable like `compile_ir(graph)`; outputs in `outputs` are differentiable w.r.t.
    the graph inputs listed in `wrt` (indices)."""

    def __init__(self, graph: Graph, wrt: Sequence[int], outputs: Sequence[int], mutated: Sequence[int] = ()):
        self.graph = graph
        self.wrt = list(wrt)
        self.diff_outputs = list(outputs)
        self.mutated = set(mutated)  # inputs written after the forward (see the module doc)
        self.partition = forward_backward(graph, self.wrt, self.diff_outputs)
        self.forward = compile_ir(self.partition.forward)
        self.backward = compile_ir(self.partition.backward)

    # The runtime-facing view StaticGraph forwards (`kernels`, `num_kernels`, `externs`): the forward's.
    @property
    def kernels(self):
        return self.forward.kernels

    @property
    def num_kernels(self) -> int:
        return self.forward.num_kernels

    @property
    def externs(self) -> list[str]:
        return self.forward.externs

    @property
    def saved_bytes(self) -> int:
        """Bytes kept from forward to backward: saved activations plus inputs the backward re-reads."""
        return self.partition.saved_bytes

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        return list(_Bridge.apply(self, *inputs))


class _Bridge(torch.autograd.Function):
    @staticmethod
    def forward(ctx, ag: AutogradGraph, *inputs: torch.Tensor):
        outs = ag.forward(list(inputs))
        n = ag.partition.num_outputs
        ctx.ag = ag
        ctx.num_inputs = len(inputs)
        ctx.shapes = [(o.shape, o.dtype, o.device) for o in outs[:n]]
        ctx.save_for_backward(*outs[n:], *[inputs[i].clone() if i in ag.mutated else inputs[i]
                                           for i in ag.partition.saved_inputs])
        results = tuple(outs[:n])
        diff = set(ag.diff_outputs)
        ctx.mark_non_differentiable(*[o for i, o in enumerate(results) if i not in diff])
        return results

    @staticmethod
    def backward(ctx, *cotangents):
        if torch.is_grad_enabled():  # create_graph=True: autograd would record the backward for a second one
            raise DoubleBackwardError(
                "ember: double backward (create_graph=True) through a compiled function is not supported: ember's "
                "backward graph is not differentiable, and the gradient would silently lack its history. Compute "
                "higher-order gradients eagerly (plain PyTorch, or under ember.eager())")
        ag: AutogradGraph = ctx.ag
        cts = []
        for i in ag.diff_outputs:  # autograd passes None for outputs that did not reach the loss
            ct = cotangents[i]
            shape, dtype, device = ctx.shapes[i]
            if ct is not None and (ct.is_conj() or ct.is_neg()):  # a complex cotangent may be a lazy view
                ct = ct.resolve_conj().resolve_neg()
            cts.append(torch.zeros(shape, dtype=dtype, device=device) if ct is None else ct.contiguous())
        grads = ag.backward(list(ctx.saved_tensors) + cts)
        result: list[torch.Tensor | None] = [None] * ctx.num_inputs
        for i, g in zip(ag.wrt, grads):
            result[i] = g
        return (None, *result)


class DoubleBackwardError(RuntimeError):
    """A gradient of a compiled function was asked for with create_graph=True."""
