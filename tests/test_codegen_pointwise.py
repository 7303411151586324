"""Every pointwise op through codegen against eager torch: dtypes, broadcasting, strides, edge shapes."""

from __future__ import annotations

import pytest
import torch
from test_codegen_util import check, graph_of, rand

from ember.ir import OPS, Graph, TensorType

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
I32, I64, I8, U8, B = torch.int32, torch.int64, torch.int8, torch.uint8, torch.bool

POINTWISE = sorted(n for n, o in OPS.items() if o.kind == "pointwise" and n not in ("convert", "clamp", "div"))
UNARY = [n for n in POINTWISE if n not in {
    "add", "sub", "mul", "pow", "maximum", "minimum", "fmod", "remainder", "eq", "ne", "lt", "le", "gt", "ge",
    "logical_and", "logical_or", "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor", "where"}]
BINARY = [n for n in POINTWISE if n not in UNARY and n != "where"]

POSITIVE = {"log", "sqrt", "rsqrt", "pow"}  # domains where torch and Triton agree on NaN anyway, kept tidy


def _accepts(op: str, dtype: torch.dtype, arity: int, **attrs) -> bool:
    """The op's type rule and eager torch both accept this dtype (e.g. torch.neg refuses bool)."""
    types = [TensorType((2,), dtype)] * arity
    try:
        OPS[op].infer(types, **attrs)
        OPS[op].impl(*[rand((2,), dtype, 1, 2) for _ in range(arity)], **attrs)
    except (TypeError, RuntimeError, ValueError):
        return False
    return True


def _inputs(op: str, shapes, dtype):
    xs = []
    for i, s in enumerate(shapes):
        if op in POSITIVE and dtype.is_floating_point:
            xs.append(rand(s, dtype, 0.1, 3.0))
        elif op == "log1p":
            xs.append(rand(s, dtype, -0.9, 3.0))
        elif op in ("fmod", "remainder") and i == 1:
            # nonzero divisors (integer modulo by zero is undefined behaviour in a kernel)
            mag = rand(s, dtype, 1, 4) if not dtype.is_floating_point else rand(s, dtype, 0.5, 3.0)
            xs.append(torch.where(torch.rand(s) < 0.5, -mag, mag) if dtype != U8 else mag)
        elif dtype == U8:
            xs.append(rand(s, dtype, 0, 9))
        else:
            xs.append(rand(s, dtype))
    return xs


UNARY_CASES = [(op, d) for op in UNARY for d in (F32, F16, I32, B) if _accepts(op, d, 1)]
BINARY_CASES = [(op, d) for op in BINARY for d in (F32, F16, I32, B) if _accepts(op, d, 2)]


@pytest.mark.parametrize("op,dtype", UNARY_CASES, ids=[f"{o}-{d}".replace("torch.", "") for o, d in UNARY_CASES])
def test_unary(op, dtype):
    # Non-contiguous input: a transposed view, read through runtime strides.
    x = _inputs(op, [(9, 40)], dtype)[0].t()
    eager = {"copy": torch.clone}.get(op) or getattr(torch, op, None) or getattr(torch.nn.functional, op)
    check(graph_of(op, [TensorType((40, 9), dtype)]), [x], kernels=1, eager=eager)


@pytest.mark.parametrize("op,dtype", BINARY_CASES, ids=[f"{o}-{d}".replace("torch.", "") for o, d in BINARY_CASES])
def test_binary_broadcast(op, dtype):
    a, b = _inputs(op, [(3, 1, 50), (4, 50)], dtype)
    check(graph_of(op, [TensorType(a.shape, dtype), TensorType(b.shape, dtype)]), [a, b], kernels=1,
          eager=getattr(torch, op))


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


I16 = torch.int16
MORE_CASES = [(op, d) for op in ("add", "mul", "maximum", "remainder", "lt", "bitwise_and")
              for d in (I8, U8, I16, I64, BF16, F64) if _accepts(op, d, 2)]


@pytest.mark.parametrize("op,dtype", MORE_CASES, ids=[f"{o}-{d}".replace("torch.", "") for o, d in MORE_CASES])
def test_more_dtypes(op, dtype):
    a, b = _inputs(op, [(7, 20), (20,)], dtype)
    check(graph_of(op, [TensorType(a.shape, dtype), TensorType(b.shape, dtype)]), [a, b], kernels=1,
          eager=getattr(torch, op))


UNARY_MORE = [(op, d) for op in ("abs", "neg", "exp", "sqrt") for d in (I8, BF16, F64) if _accepts(op, d, 1)]


@pytest.mark.parametrize("op,dtype", UNARY_MORE, ids=[f"{o}-{d}".replace("torch.", "") for o, d in UNARY_MORE])
def test_more_dtypes_unary(op, dtype):
    x = _inputs(op, [(30, 7)], dtype)[0]
    if op == "sqrt":
        x = x.abs()
    check(graph_of(op, [TensorType(x.shape, dtype)]), [x], kernels=1, eager=getattr(torch, op))
