"""Derivatives torch computes at run time, for extern calls whose derivative cannot be traced.

`embedding_bag` called on inputs that do not require grad (capture traces detached inputs) runs
`_embedding_bag_forward_only`, which autograd cannot differentiate, and the differentiable variant
`_embedding_bag` has auxiliary outputs whose fake shapes disagree with the CPU kernel's, so
frontend/extern_vjp.py cannot trace a derivative graph for either. The VJP graph is then one extern
call of `ember::embedding_bag_grad`: on the real inputs it runs `_embedding_bag` again for its
auxiliary outputs, then torch's backward ops as torch's autograd formula calls them, and returns
the gradients of the weight and the per-sample weights (every mode, max and `scale_grad_by_freq`
included; modes sum and mean are lowered natively anyway, frontend/lower_search.py). Sparse
gradients (`sparse=True`) have no dense IR value: refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.fx.operator_schemas import normalize_function

from ..ir.ops.extern import fill_template

aten = torch.ops.aten


@torch.library.custom_op("ember::embedding_bag_grad", mutates_args=(),
                         schema="(Tensor grad, Tensor weight, Tensor indices, Tensor offsets, bool scale_grad_by_freq, "
                                "int mode, Tensor? per_sample_weights, bool include_last_offset, int padding_idx) "
                                "-> (Tensor, Tensor)")
def embedding_bag_grad(grad, weight, indices, offsets, scale_grad_by_freq, mode, per_sample_weights,
                       include_last_offset, padding_idx):
    """(d weight, d per_sample_weights) of `_embedding_bag(...)[0]` for the cotangent `grad` (the
    second is empty without per-sample weights): torch's backward ops, as its autograd formula calls
    them, on the auxiliary outputs of the forward run again."""
    _, offset2bag, bag_size, max_indices = aten._embedding_bag(
        weight, indices, offsets, scale_grad_by_freq, mode, False, per_sample_weights, include_last_offset,
        padding_idx)
    gw = aten._embedding_bag_backward(grad, indices, offsets, offset2bag, bag_size, max_indices, weight.shape[0],
                                      scale_grad_by_freq, mode, False, per_sample_weights, padding_idx)
    if per_sample_weights is None:
        return gw, weight.new_empty(0)
    return gw, aten._embedding_bag_per_sample_weights_backward(grad, weight, indices, offsets, offset2bag, mode,
                                                              padding_idx)


@embedding_bag_grad.register_fake
def _(grad, weight, indices, offsets, scale_grad_by_freq, mode, per_sample_weights, include_last_offset, padding_idx):
    return torch.empty_like(weight), (torch.empty_like(per_sample_weights) if per_sample_weights is not None
                                      else weight.new_empty(0))


def _is_mark(v) -> bool:
    return isinstance(v, tuple) and len(v) == 2 and v[0] == "mark"


def _embedding_bag_derivative(op, args, kwargs, n_in: int, cts: Sequence[int], wrt: Sequence[int]
                              ) -> tuple[Callable, list[int]]:
    """(a function of the VJP graph's inputs (the call's inputs, outputs and cotangents) returning the
    gradients, the inputs they are of)."""
    marks = [("mark", k) for k in range(n_in)]  # stand-ins of the extern's inputs, to find them by name
    named = normalize_function(op, fill_template(tuple(args), marks), fill_template(dict(kwargs), marks),
                               normalize_to_only_use_kwargs=True).kwargs
    if named.get("sparse"):
        raise NotImplementedError("cannot differentiate through op 'extern' (target aten._embedding_bag_forward_only"
                                  ".default): sparse=True gives a sparse gradient, which the IR does not hold; run "
                                  "it eagerly")
    position = {n: v[1] for n, v in named.items() if _is_mark(v)}
    wanted = [n for n in ("weight", "per_sample_weights") if position.get(n) in wrt]
    if 0 not in cts:  # only the bags' values carry a gradient
        return (lambda *ts: []), []

    def derivative(*ts: torch.Tensor) -> list[torch.Tensor]:
        a = {n: ts[v[1]] if _is_mark(v) else v for n, v in named.items()}
        gw, gp = embedding_bag_grad(ts[-len(cts) + cts.index(0)], a["weight"], a["indices"], a["offsets"],
                                    bool(a.get("scale_grad_by_freq")), int(a.get("mode") or 0),
                                    a.get("per_sample_weights"), bool(a.get("include_last_offset")),
                                    int(a["padding_idx"] if a.get("padding_idx") is not None else -1))
        return [{"weight": gw, "per_sample_weights": gp}[n] for n in wanted]

    return derivative, [position[n] for n in wanted]


# extern target -> builder(op, args, kwargs, n_in, cts, wrt) -> (derivative, inputs it differentiates)
EAGER_DERIVATIVES: dict[str, Callable] = {"aten._embedding_bag_forward_only.default": _embedding_bag_derivative}
