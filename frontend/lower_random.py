"""Lowering rules for aten's random ops: rand, rand_like, uniform, bernoulli (hence dropout).

Every rule builds on the IR op `rand` (ir/ops/random.py): uniform [0, 1) numbers that are a pure
function of (seed, stream, element index), so they fuse into any pointwise, row or matmul-epilogue
kernel. The seed is one 0-dim int64 graph input per graph (`Lowerer.seed`), fed a fresh value from
torch's default generator at every call (`lowering.RandomSeed`): `torch.manual_seed(s)` makes a
compiled program reproducible, and successive calls draw new numbers. Each random op of a graph gets
its own `stream`, so two dropouts in one program draw independent masks from the one seed.

`F.dropout(x, p, training=True)` reaches lowering (through ember's decomposition of native_dropout)
as `x * bernoulli(empty, 1 - p) / (1 - p)`: the empty tensor only gives the shape, so the whole
dropout is one fused pointwise expression `x * (rand < 1 - p) / (1 - p)`. A call with an explicit
`generator=` is left to torch (an extern): ember cannot read a torch.Generator's state.
"""

from __future__ import annotations

import torch

from ..ir import Value
from ..ir.ops.random import UNIFORM_BITS
from .lowering import Fallback, aten, out_dtype, out_shape, out_val, overloads, register


def uniform(L, node, dtype: torch.dtype | None = None) -> Value:
    """rand of the node's output shape and device, in `dtype` (the output dtype by default)."""
    if node.kwargs.get("generator") is not None:
        raise Fallback("an explicit torch.Generator")
    dtype = dtype or out_dtype(node)
    if dtype not in UNIFORM_BITS:
        raise Fallback(f"random floats of dtype {dtype}")
    return L.add("rand", [L.seed(out_val(node).device)], shape=out_shape(node), dtype=dtype, stream=L.stream())


@register(*overloads(aten.rand, "default"), *overloads(aten.rand_like, "default"))
def _rand(L, node, a):
    return uniform(L, node)


@register(*overloads(aten.uniform, "default"))
def _uniform(L, node, a):
    if a.get("generator") is not None:
        raise Fallback("an explicit torch.Generator")
    dt = out_dtype(node)
    lo, hi = float(a["from"]), float(a["to"])
    u = uniform(L, node, torch.float32 if dt in (torch.float16, torch.bfloat16) else dt)
    work = u.dtype
    scaled = L.add("add", [L.const(lo, work), L.add("mul", [u, L.const(hi - lo, work)])])
    return L.cast(scaled, dt)


@register(*overloads(aten.bernoulli, "p"))
def _bernoulli_p(L, node, a):
    """1 with probability p (the input's values are unused: only its shape and dtype)."""
    if a.get("generator") is not None:
        raise Fallback("an explicit torch.Generator")
    p = float(a.p)
    u = uniform(L, node, torch.float64 if out_dtype(node) == torch.float64 else torch.float32)
    return L.cast(L.add("lt", [u, L.const(p, u.dtype)]), out_dtype(node))


@register(*overloads(aten.bernoulli, "default"))
def _bernoulli(L, node, a):
    """1 with probability self[i], elementwise."""
    if a.get("generator") is not None:
        raise Fallback("an explicit torch.Generator")
    work = torch.float64 if out_dtype(node) == torch.float64 else torch.float32
    u = uniform(L, node, work)
    return L.cast(L.add("lt", [u, L.cast(a.self, work)]), out_dtype(node))
