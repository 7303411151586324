"""Shared helpers for the codegen/runtime tests (imported by the other test_codegen_* and
test_runtime_* files), plus tests of the source cache itself."""

from __future__ import annotations

import torch
from testing import TOLERANCES

from ember.codegen.source_cache import cache_dir, load_module
from ember.ir import Graph, TensorType, evaluate, parse_graph, verify
from ember.passes import run_pipeline
from ember.runtime import compile_graph

TOL = TOLERANCES  # tests/testing.py: the one tolerance table (one kernel against the reference interpreter)


def roundtrip(g: Graph) -> None:
    text = str(g)
    assert str(parse_graph(text)) == text


def assert_same(got: torch.Tensor, want: torch.Tensor, tol: tuple[float, float] | None = None) -> None:
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert tuple(got.shape) == tuple(want.shape), (got.shape, want.shape)
    if want.dtype.is_floating_point:
        rtol, atol = tol or TOL[want.dtype]
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, equal_nan=True)
    else:
        assert torch.equal(got, want), (got, want)


def check(g: Graph, inputs: list[torch.Tensor], *, tol=None, kernels: int | None = None, eager=None,
          pipeline: bool = False):
    """Round-trip the IR, compile it, run it, and compare with the reference interpreter (which runs
    eager torch) and optionally an `eager` callable. Returns the compiled graph.

    Graphs are compiled as built (kernel counts are facts about codegen, not about the passes);
    `pipeline=True` runs ember.passes.run_pipeline first (needed for composite ops)."""
    verify(g)
    roundtrip(g)
    cg = compile_graph(run_pipeline(g).graph if pipeline else g, fuse=False)
    outs = cg(inputs)
    refs = evaluate(g, *inputs)
    assert len(outs) == len(refs)
    for o, r in zip(outs, refs):
        assert_same(o, r, tol)
    if eager is not None:
        e = eager(*inputs)
        for o, r in zip(outs, e if isinstance(e, (list, tuple)) else [e]):
            assert_same(o, r, tol)
    if kernels is not None:
        assert cg.num_kernels == kernels, [k.ops for k in cg.kernels]
    return cg


def graph_of(op: str, types: list[TensorType], **attrs) -> Graph:
    g = Graph()
    xs = [g.add_input(t) for t in types]
    out = g.add(op, xs, **attrs)
    g.set_outputs(out if isinstance(out, list) else [out])
    return g


def rand(shape, dtype: torch.dtype, low: float = -3.0, high: float = 3.0) -> torch.Tensor:
    if dtype == torch.bool:
        return torch.randint(0, 2, shape).bool()
    if dtype.is_floating_point:
        return (torch.rand(shape, dtype=torch.float64) * (high - low) + low).to(dtype)
    return torch.randint(int(low), int(high) + 1, shape, dtype=dtype)


def test_source_cache_reuses_module():
    src = "import triton\nimport triton.language as tl\n\nVALUE = 41\n"
    a, b = load_module(src), load_module(src)
    assert a is b and a.VALUE == 41
    assert any(f.endswith(".py") for f in __import__("os").listdir(cache_dir()))


def test_same_op_same_kernel_source():
    t = TensorType((4, 5), torch.float32)
    c1 = compile_graph(graph_of("add", [t, t]))
    c2 = compile_graph(graph_of("add", [TensorType((7, 3), torch.float32)] * 2))
    assert c1.kernels[0].kernel is c2.kernels[0].kernel  # sizes are runtime args, not source
    assert c1.kernels[0].ops == ["add"] and "tl.load" in c1.kernels[0].source
