"""Pointwise codegen beyond one op on sampled inputs (tests/test_registry.py runs every registered
op, on every dtype it declares, through codegen against the reference interpreter): special values,
rounding modes, casts, edge shapes, strides, generator ops, inlined scalars and 64-bit indexing."""

from __future__ import annotations

import pytest
import torch
from test_codegen_util import assert_same, check, graph_of, rand

from ember.ir import Graph, TensorType, evaluate
from ember.runtime import compile_ir

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
I32, I64, I8, U8, B = torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool


@pytest.mark.parametrize("dtype", [F32, I64, B, F16])
def test_where(dtype):
    c, a, b = rand((6, 1), B), rand((6, 30), dtype), rand((30,), dtype)
    t = [TensorType(c.shape, B), TensorType(a.shape, dtype), TensorType(b.shape, dtype)]
    check(graph_of("where", t), [c, a, b], kernels=1, eager=torch.where)


@pytest.mark.parametrize("dtype,mode", [(F32, None), (F16, None), (F32, "trunc"), (F32, "floor"), (I32, "trunc"),
                                        (I32, "floor"), (I64, "floor"), (F64, "floor")])
def test_div(dtype, mode):
    a = rand((20, 30), dtype, -20, 20)
    b = rand((30,), dtype, 1, 5) * torch.where(torch.rand(30) < 0.5, -1, 1).to(dtype)
    t = [TensorType(a.shape, dtype), TensorType(b.shape, dtype)]
    check(graph_of("div", t, rounding_mode=mode), [a, b], kernels=1,
          eager=lambda a, b: torch.div(a, b, rounding_mode=mode))


@pytest.mark.parametrize("src,dst", [(F32, I32), (F32, B), (F32, F16), (F16, F32), (I32, F32), (B, F32), (I64, I8),
                                     (F32, BF16), (BF16, F32), (F64, F32), (I32, B), (U8, I32), (B, I64)])
def test_convert(src, dst):
    x = rand((25, 20), src, 0 if src == U8 else -50, 50)
    check(graph_of("convert", [TensorType(x.shape, src)], dtype=dst), [x], kernels=1,
          eager=lambda x: x.to(dst))


@pytest.mark.parametrize("dtype,lo,hi", [(F32, -0.5, 0.5), (F16, None, 1.0), (I32, -2, None), (F32, 0.1, 0.1)])
def test_clamp(dtype, lo, hi):
    x = rand((30, 30), dtype)
    if dtype.is_floating_point:
        x[0, :3] = float("nan")
    check(graph_of("clamp", [TensorType(x.shape, dtype)], min=lo, max=hi), [x], kernels=1,
          eager=lambda x: torch.clamp(x, lo, hi))


def test_gelu_tanh_and_specials():
    x = rand((500,), F32, -8, 8)
    x[:4] = torch.tensor([float("nan"), float("inf"), float("-inf"), 0.0])
    check(graph_of("gelu", [TensorType(x.shape, F32)], approximate="tanh"), [x], kernels=1,
          eager=lambda x: torch.nn.functional.gelu(x, approximate="tanh"))
    for op in ("maximum", "minimum"):
        y = rand((500,), F32)
        y[4:6] = float("nan")
        check(graph_of(op, [TensorType(x.shape, F32)] * 2), [x, y], kernels=1)


def test_pow_negative_base_integer_exponent():
    a = rand((40,), F32, -3, 3)
    b = torch.randint(-3, 4, (40,)).float()
    b[:5] = 0.5
    check(graph_of("pow", [TensorType((40,), F32)] * 2), [a, b], kernels=1, eager=torch.pow)


@pytest.mark.parametrize("shape", [(), (1,), (0,), (3, 0, 2), (1, 1, 7)])
def test_edge_shapes(shape):
    x, y = rand(shape, F32), rand(shape, F32)
    cg = check(graph_of("mul", [TensorType(shape, F32)] * 2), [x, y])
    assert cg.num_kernels == (0 if x.numel() == 0 else 1)  # empty tensors launch nothing


def test_zero_dim_broadcast_and_f64():
    x, s = rand((17, 3), F64), rand((), F64)
    check(graph_of("sub", [TensorType(x.shape, F64), TensorType((), F64)]), [x, s], kernels=1)


def test_scalar_constants_are_inlined():
    g = Graph()
    x = g.add_input(TensorType((8, 8), F16))
    c = g.add("full", [], shape=(), value=2.5, dtype=F16)
    inf = g.add("full", [], shape=(), value=float("-inf"), dtype=F16)
    g.set_outputs([g.add("maximum", [g.add("mul", [x, c]), inf])])
    cg = check(g, [rand((8, 8), F16)], kernels=2)  # one per node; the scalars cost nothing
    assert "2.5" in cg.kernels[0].source and cg.kernels[0].ops == ["mul"]
    assert "float('-inf')" in cg.kernels[1].source


def test_storage_offset_and_expanded_input():
    base = rand((10, 12), F32)
    x = base[2:7, 3:9]            # storage offset + row stride 12
    y = rand((6,), F32).expand(5, 6)  # stride-0 input from the caller
    check(graph_of("add", [TensorType((5, 6), F32)] * 2), [x, y], kernels=1)


def test_int64_index_variant(monkeypatch):
    # Force the 64-bit indexing variant on a small tensor (a real one would need > 2**31 elements).
    monkeypatch.setattr("ember.runtime.plan.INT32_LIMIT", 100)
    x = rand((20, 30), F32).t()
    cg = check(graph_of("exp", [TensorType((30, 20), F32)]), [x], kernels=1)
    assert "tl.int64" in cg.kernels[0].source


# -- generator ops: the pointwise emitter calls their entries' emit hooks / Triton rules ------------


@pytest.mark.parametrize("dtype", [F32, F16, I64, B])
def test_full_arange_and_iota_fused_with_a_consumer(dtype):
    g = Graph()
    x = g.add_input(TensorType((4, 6), dtype))
    full = g.add("full", [], shape=(4, 6), value=int(dtype != B), dtype=dtype)
    ar = g.add("convert", [g.add("arange", [], start=-2, step=3, length=6, dtype=I64)], dtype=dtype)
    # iota along a size-1 dim is 0 everywhere, also fused into a wider kernel (it once read the
    # kernel's index along that dim: 0..5 instead of 0)
    io = g.add("convert", [g.add("iota", [], shape=(4, 1), dim=1, dtype=I32)], dtype=dtype)
    op = "logical_or" if dtype == B else "add"
    g.set_outputs([g.add(op, [g.add(op, [g.add(op, [x, full]), ar]), io])])
    xs = [rand((4, 6), dtype)]
    check(g, xs)  # one kernel per node
    fused = compile_ir(g, optimize=False)
    assert_same(fused(xs)[0], evaluate(g, *xs)[0])
    assert any({"iota", "full", op} <= set(k.ops) for k in fused.kernels), [k.ops for k in fused.kernels]


@pytest.mark.parametrize("dtype", [F16, I32])
def test_arange_of_one_element_and_half_types(dtype):
    for length in (1, 9):
        check(graph_of("arange", [], start=0.5 if dtype == F16 else 3, step=-0.25 if dtype == F16 else 2,
                       length=length, dtype=dtype), [], kernels=1)


def test_cat_loads_each_input_at_its_offset():
    parts = [rand((3, 2), F32), rand((5, 3), F32).t()[:, 1:4], rand((3, 1), F32)]  # a strided one
    g = graph_of("cat", [TensorType(p.shape, F32) for p in parts], dim=1)
    cg = check(g, parts, kernels=1, eager=lambda *xs: torch.cat(xs, dim=1))
    assert "tl.where" in cg.kernels[0].source
