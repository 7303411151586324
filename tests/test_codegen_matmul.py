"""Matmul through codegen: tiles crossing block edges, batched and broadcast batch dims, strided operands."""

from __future__ import annotations

import pytest
import torch
from test_codegen_util import check, graph_of, rand
from testing import CHAIN_TOLERANCES

from ember.ir import Graph, TensorType

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
TOL = CHAIN_TOLERANCES  # tests/testing.py: the one tolerance table (a matmul sums K products)


@pytest.mark.parametrize("dtype", [F32, F16, BF16, F64])
@pytest.mark.parametrize("a_shape,b_shape", [
    ((5, 7), (7, 3)),
    ((70, 40), (40, 33)),          # crosses the 64x64 tile and the 32-wide K block
    ((2, 3, 4, 5), (5, 6)),        # batch dims only on the left
    ((2, 1, 4, 5), (3, 5, 6)),     # broadcast batch dims on both sides
    ((1, 1), (1, 1)),
])
def test_matmul(dtype, a_shape, b_shape):
    a, b = rand(a_shape, dtype, -1, 1), rand(b_shape, dtype, -1, 1)
    check(graph_of("matmul", [TensorType(a_shape, dtype), TensorType(b_shape, dtype)]), [a, b], kernels=1,
          tol=TOL[dtype], eager=torch.matmul)


def test_transposed_operands_need_no_copy():
    g = Graph()
    a = g.add_input(TensorType((3, 20, 9), F32))
    b = g.add_input(TensorType((20, 12), F32))
    at = g.add("permute", [a], dims=(0, 2, 1))
    bt = g.add("permute", [g.add("permute", [b], dims=(1, 0))], dims=(1, 0))
    g.set_outputs([g.add("matmul", [at, bt])])
    check(g, [rand((3, 20, 9), F32), rand((12, 20), F32).t()], kernels=1, tol=TOL[F32])


def test_empty_and_zero_k():
    a, b = rand((4, 0), F32), rand((0, 3), F32)
    check(graph_of("matmul", [TensorType((4, 0), F32), TensorType((0, 3), F32)]), [a, b], kernels=1)  # zeros
    a, b = rand((0, 5), F32), rand((5, 3), F32)
    check(graph_of("matmul", [TensorType((0, 5), F32), TensorType((5, 3), F32)]), [a, b], kernels=0)


def test_precision_is_a_launch_constexpr():
    g = graph_of("matmul", [TensorType((8, 8), F32)] * 2)
    old = torch.get_float32_matmul_precision()
    try:
        for prec, want in [("highest", "ieee"), ("high", "tf32")]:
            torch.set_float32_matmul_precision(prec)
            cg = check(g, [rand((8, 8), F32), rand((8, 8), F32)], tol=TOL[F32])
            assert cg.kernels[0].constexprs["PREC"] == want
    finally:
        torch.set_float32_matmul_precision(old)
