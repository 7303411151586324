"""Batched matrix multiply with broadcast batch dims: [..., M, K] @ [..., K, N] -> [..., M, N]."""

from __future__ import annotations

import torch

from ..registry import OpDef, register, unbroadcast
from ..types import TensorType, broadcast_shapes, is_float


def _matmul_infer(types: list[TensorType]) -> TensorType:
    a, b = types
    if a.rank < 2 or b.rank < 2:
        raise ValueError(f"matmul: inputs need rank >= 2 (frontend reshapes vectors), got {a} and {b}")
    if a.dtype != b.dtype or not is_float(a.dtype):
        raise TypeError(f"matmul: needs two floating-point inputs of one dtype, got {a.dtype} and {b.dtype}")
    if a.shape[-1] != b.shape[-2]:
        raise ValueError(f"matmul: contraction sizes differ: {a} @ {b}")
    batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return TensorType(batch + (a.shape[-2], b.shape[-1]), a.dtype)


def _transpose(g, v):
    dims = tuple(range(v.type.rank - 2)) + (v.type.rank - 1, v.type.rank - 2)
    return g.add("permute", [v], dims=dims)


def _matmul_vjp(g, inputs, out, ct):
    # ct @ b^T and a^T @ ct, summed over the batch dims each input was broadcast along.
    a, b = inputs
    return [unbroadcast(g, g.add("matmul", [ct, _transpose(g, b)]), a.shape),
            unbroadcast(g, g.add("matmul", [_transpose(g, a), ct]), b.shape)]


def _matmul_flops(node) -> int:
    """A multiply and an add per output element and contraction step."""
    return 2 * node.out.type.numel * node.inputs[0].shape[-1]


aten = torch.ops.aten
register(OpDef("matmul", "matmul", _matmul_infer, torch.matmul, arity=2, vjp=_matmul_vjp, cost=_matmul_flops,
               aten=(aten.mm.default, aten.bmm.default), onnx=lambda b, args, types, out: b.op("MatMul", args),
               doc="fp32 accumulation; float32 inputs honour torch.get_float32_matmul_precision()"))
