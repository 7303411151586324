"""Lowering rules for scaled dot-product attention onto the IR's fused `attention` and its backward
kernels `attention_grad_q`, `attention_grad_kv` (ir/ops/attention.py).

`F.scaled_dot_product_attention` is a C++ composite: on CPU tensors capture (static mode, eager mode's
per-op capture, AOTAutograd's joint graph) sees `_scaled_dot_product_flash_attention_for_cpu` and,
from autograd, its backward. Both lower whole: causal, a boolean or additive mask of q's dtype, any
scale, grouped-query attention (fewer key/value heads: index math in the kernels, no copy). The
backward rule builds the two backward kernels, as the op's VJP does.
`Fallback` (a torch call, differentiable through the extern path) for dropout > 0 and for masks of
another floating dtype than q's.
"""

from __future__ import annotations

import math

import torch

from ..ir import Value
from ..ir.ops.attention import backward as attention_backward
from ..ir.types import compute_dtype
from .lowering import Fallback, aten, register


def _operands(q: Value, k: Value, v: Value, mask: Value | None, dropout_p: float) -> list[Value]:
    if dropout_p:
        raise Fallback("attention dropout: torch's kernel draws the mask")
    if not (q.type.rank == k.type.rank == v.type.rank == 4) or not (q.dtype == k.dtype == v.dtype):
        raise Fallback("attention kernels take [B, H, S, D] operands of one dtype")
    if not q.dtype.is_floating_point:
        raise Fallback("attention kernels take floating operands")
    if mask is None:
        return []
    if mask.dtype not in (torch.bool, q.dtype) or mask.type.rank > 4:
        raise Fallback("a mask that is neither boolean nor of q's dtype")
    return [mask]


def _scale(scale: float | None, q: Value) -> float:
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


@register(aten._scaled_dot_product_flash_attention_for_cpu.default)
def _flash_cpu(L, node, a):
    mask = _operands(a.query, a.key, a.value, a.attn_mask, a.dropout_p)
    out, lse = L.add("attention", [a.query, a.key, a.value] + mask, scale=_scale(a.scale, a.query),
                     is_causal=bool(a.is_causal))
    return [out, lse]


@register(aten._scaled_dot_product_flash_attention_for_cpu_backward.default)
def _flash_cpu_backward(L, node, a):
    q, k, v = a.query, a.key, a.value
    mask = _operands(q, k, v, a.attn_mask, a.dropout_p)
    lse = a.logsumexp
    if lse.dtype != compute_dtype(q.dtype) or a.grad_out.dtype != q.dtype or a.out.dtype != q.dtype:
        raise Fallback("attention backward operands of unexpected dtypes")
    return attention_backward(L, q, k, v, a.out, lse, a.grad_out, None, mask, _scale(a.scale, q), bool(a.is_causal))
