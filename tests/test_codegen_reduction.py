"""Reductions through codegen: every combine, several dims, keepdim, looped rows, NaN and ties."""

from __future__ import annotations

import pytest
import torch
from test_codegen_util import check, graph_of, rand

from ember.ir import Graph, TensorType

F32, F16, F64, I32, I64, B = torch.float32, torch.float16, torch.float64, torch.int32, torch.int64, torch.bool

CASES = [
    # (op, dtype, shape, dims, keepdim)
    ("sum", F32, (6, 7, 8), (1,), False),
    ("sum", F32, (6, 7, 8), (0, 2), True),
    ("sum", F16, (5, 300), (1,), False),
    ("sum", I32, (4, 5, 6), (0, 1, 2), False),
    ("sum", B, (9, 33), (0,), True),
    ("sum", F64, (3, 4), (), False),
    ("prod", F32, (6, 50), (1,), False),
    ("prod", I32, (5, 6, 4), (0, 2), True),
    ("prod", F16, (4, 40), (0,), False),
    ("amax", F32, (6, 7, 8), (2, 0), False),
    ("amax", I32, (12, 20), (1,), True),
    ("amax", B, (12, 20), (1,), False),
    ("amin", F16, (7, 45), (1,), False),
    ("amin", I64, (3, 4, 5), (1,), True),
]


def _input(op, dtype, shape):
    if op == "prod" and dtype.is_floating_point:
        return rand(shape, dtype, 0.9, 1.1)  # keep long products finite
    if op == "prod":
        return rand(shape, dtype, -2, 2)
    return rand(shape, dtype)


@pytest.mark.parametrize("op,dtype,shape,dims,keepdim", CASES)
def test_reduce(op, dtype, shape, dims, keepdim):
    x = _input(op, dtype, shape)
    check(graph_of(op, [TensorType(shape, dtype)], dims=dims, keepdim=keepdim), [x], kernels=1,
          tol=(1e-4, 1e-4) if dtype == F32 else None)


@pytest.mark.parametrize("op", ["sum", "prod", "amax", "amin"])
def test_long_rows_loop(op):
    # 2500 > the one-pass block, so the kernel loops over chunks; transposed input as well.
    x = _input(op, F32, (2500, 3)).t()
    # atol 1e-3: a sum of 2500 terms in [-3, 3] runs through partial sums of ~100 (ulp ~8e-6) in another
    # order than torch's, so a row that cancels to near 0 keeps tens of those ulps (2.5e-5 seen);
    # rtol 1e-4: 2500 roundings of a product (within 4e-6 seen).
    cg = check(graph_of(op, [TensorType((3, 2500), F32)], dims=(1,), keepdim=False), [x], kernels=1,
               tol=(1e-4, 1e-3))
    assert "for r0 in range" in cg.kernels[0].source


def test_long_rows_over_several_dims():
    x = rand((40, 3, 50), F16)
    check(graph_of("sum", [TensorType(x.shape, F16)], dims=(0, 2), keepdim=True), [x], kernels=1, tol=(1e-2, 1e-2))


@pytest.mark.parametrize("op", ["amax", "amin"])
@pytest.mark.parametrize("n", [30, 1500])
def test_nan_propagates(op, n):
    x = rand((4, n), F32)
    x[1, 7] = float("nan")
    x[2, n - 1] = float("nan")
    x[3, :] = float("inf") if op == "amin" else float("-inf")
    check(graph_of(op, [TensorType(x.shape, F32)], dims=(1,), keepdim=False), [x], kernels=1)


@pytest.mark.parametrize("op", ["argmax", "argmin"])
@pytest.mark.parametrize("dtype", [F32, I32, F16, I64])  # torch.argmax refuses bool
@pytest.mark.parametrize("n", [40, 2100])
def test_arg_reductions(op, dtype, n):
    # Small integer range gives ties: the first index must win, as in torch.
    x = rand((5, n), dtype, -3, 3)
    if dtype.is_floating_point:
        x[1, n // 2] = float("nan")
        x[1, n - 1] = float("nan")
        x[2, :] = 1.0
    for dim, keepdim in [(1, False), (0, True), (None, False), (None, True)]:
        check(graph_of(op, [TensorType(x.shape, dtype)], dim=dim, keepdim=keepdim), [x], kernels=1)


def test_arg_reduction_0dim():
    x = rand((), F32)
    check(graph_of("argmax", [TensorType((), F32)], dim=None, keepdim=False), [x], kernels=1)


def test_empty_reduction_dim_gives_identity():
    x = rand((4, 0, 3), F32)
    check(graph_of("sum", [TensorType(x.shape, F32)], dims=(1,), keepdim=False), [x], kernels=1)
    check(graph_of("prod", [TensorType(x.shape, F32)], dims=(1,), keepdim=True), [x], kernels=1)
    # Nothing left to compute: no launch.
    check(graph_of("sum", [TensorType(x.shape, F32)], dims=(0,), keepdim=False), [x], kernels=0)


def test_reduction_of_views_costs_no_copy():
    g = Graph()
    x = g.add_input(TensorType((6, 8, 5), F32))
    p = g.add("permute", [x], dims=(2, 0, 1))
    s = g.add("slice", [p], dim=1, start=1, end=6, step=2)
    g.set_outputs([g.add("amax", [s], dims=(0, 2), keepdim=False)])
    check(g, [rand((6, 8, 5), F32)], kernels=1)


def test_composite_mean_var_after_pipeline():
    g = Graph()
    x = g.add_input(TensorType((7, 30), F32))
    g.set_outputs([g.add("mean", [x], dims=(1,), keepdim=True), g.add("var", [x], dims=(0,), correction=1)])
    check(g, [rand((7, 30), F32)], tol=(1e-5, 1e-5), pipeline=True)
