"""`pick`: the target logit of a one-pass cross-entropy, read directly.

Cross-entropy of logits x [N, V] and class targets t [N] is, per row, `log(sum(exp(x - m))) + m -
x[i, t[i]]`. Spelled as log_softmax then nll_loss it read each row three times: the max, the sum
of exponentials, and the target logit as a masked sum over the whole row (`sum(where(iota == t,
logp, 0))`). The max and the sum share one sweep (online softmax, ir/row_sweeps.py); this op
removes the third:

`pick(x, index) {dims=(d,)}` is `torch.gather(x, d, index)` with one index per row (index shaped
like x with size 1 along d): a row value the row kernel loads directly at `row, index[row]`
(codegen/cross_entropy.py), N elements instead of N x V. An index out of range is never read (its
lane loads 0; the `check_index` the frontend puts before it raises eager's error). Its VJP is the
cotangent placed at the index (`where(iota == index, ct, 0)`: a pointwise tile that fuses into the
backward's kernel). It is a "reduction" for fusion (a row group over x's shape and dims takes it
with its prologue and epilogue, passes/fusion.py) but runs in no sweep; it loads x itself, so x is
always a group input. The frontend (`frontend/lower_reduction.py` `_gather`) moves the gather of a
log_softmax through its pointwise ops down to the logits, so the log-probabilities are never formed.
"""

from __future__ import annotations

import torch

from ..registry import FLOAT, INT, Domain, OpDef, register
from ..types import TensorType
from .reduction import reduced_shape


def _dims(name: str, t: TensorType, dims) -> tuple[int, ...]:
    dims = tuple(dims)
    if any(not 0 <= d < max(t.rank, 1) for d in dims) or len(set(dims)) != len(dims):
        raise ValueError(f"{name}: dims {dims} invalid for rank {t.rank} (normalized, unique dims expected)")
    return dims


def _pick_infer(types: list[TensorType], dims=()) -> TensorType:
    x, index = types
    dims = _dims("pick", x, dims)
    if index.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"pick: indices must be int64 or int32, got {index}")
    if x.dtype == torch.bool or x.dtype.is_complex:
        raise TypeError(f"pick: takes numeric values, got {x.dtype}")
    if len(dims) != 1 or x.rank == 0 or index.shape != reduced_shape(x.shape, dims, True):
        raise ValueError(f"pick: one index per row along one dim, got {x}, {index}, dims={dims}")
    return TensorType(index.shape, x.dtype)


def _pick_impl(x: torch.Tensor, index: torch.Tensor, dims=()) -> torch.Tensor:
    (d,) = dims
    if index.numel() and (bool((index < 0).any()) or bool((index >= x.shape[d]).any())):
        raise IndexError("index out of range: a target (nll_loss, cross_entropy) or one-per-row gather index")
    return torch.gather(x, d, index.long())


def _pick_vjp(g, inputs, out, ct, dims=()):
    x, index = inputs
    (d,) = dims
    iota = g.add("iota", [], shape=x.shape, dim=d, dtype=index.dtype)
    hit = g.add("eq", [iota, g.add("expand", [index], shape=x.shape)])
    zero = g.add("full", [], shape=(), value=0, dtype=x.dtype)
    return [g.add("where", [hit, g.add("expand", [ct], shape=x.shape), zero]), None]


register(OpDef("pick", "reduction", _pick_infer, _pick_impl, arity=2, vjp=_pick_vjp, cost=1,  # (a load per row)
               domains=(Domain(FLOAT + INT, {"dims": (1,)}, shapes=((2, 3, 4), (2, 1, 4)), fixed={1: torch.int64},
                               ranges={1: (0, 2)}, rejects=(torch.bool,)),
                        Domain(FLOAT, {"dims": (2,)}, shapes=((2, 3, 5), (2, 3, 1)), fixed={1: torch.int64},
                               ranges={1: (0, 4)}, rejects=(torch.bool,))),
               doc="x.gather(dim, index) with one index per row, loaded directly"))
