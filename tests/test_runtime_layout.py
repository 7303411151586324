"""Layout ops, constants, externs and the planner's structural promises (which ops cost a kernel)."""

from __future__ import annotations

import pytest
import torch
from test_codegen_util import check, graph_of, rand

from ember.ir import Graph, TensorType
from ember.runtime import compile_graph

F32, F16, I64, B = torch.float32, torch.float16, torch.int64, torch.bool
T = TensorType


@pytest.mark.parametrize("op,attrs,shape", [
    ("reshape", {"shape": (6, 4)}, (2, 3, 4)),
    ("permute", {"dims": (2, 0, 1)}, (2, 3, 4)),
    ("expand", {"shape": (5, 3, 4)}, (3, 1)),
    ("slice", {"dim": 1, "start": 1, "end": 7, "step": 2}, (3, 8)),
    ("select", {"dim": 0, "index": 2}, (3, 8)),
])
def test_view_ops_cost_no_kernel(op, attrs, shape):
    x = rand(shape, F32)
    check(graph_of(op, [T(shape, F32)], **attrs), [x], kernels=0)


@pytest.mark.parametrize("dtype", [F32, F16, I64, B])
def test_view_then_pointwise_is_one_kernel(dtype):
    g = Graph()
    x = g.add_input(T((4, 6, 5), dtype))
    y = g.add_input(T((5, 1), dtype))
    p = g.add("permute", [x], dims=(2, 0, 1))               # [5, 4, 6]
    s = g.add("slice", [p], dim=2, start=1, end=6, step=2)  # [5, 4, 3]
    e = g.add("expand", [y], shape=(4, 5, 3))
    e = g.add("permute", [e], dims=(1, 0, 2))
    g.set_outputs([g.add("maximum", [s, e])])
    check(g, [rand((4, 6, 5), dtype), rand((5, 1), dtype)], kernels=1)


def test_reshape_of_transpose_needs_one_copy():
    g = Graph()
    x = g.add_input(T((4, 6), F32))
    r = g.add("reshape", [g.add("permute", [x], dims=(1, 0))], shape=(24,))
    g.set_outputs([r])
    cg = check(g, [rand((4, 6), F32)], kernels=1)
    assert cg.kernels[0].ops == ["reshape"]


def test_reshape_plan_depends_on_input_strides():
    g = graph_of("reshape", [T((4, 6), F32)], shape=(2, 12))
    cg = compile_graph(g, fuse=False)
    x = rand((6, 4), F32).t()  # not viewable as (2, 12): this call's plan copies
    assert torch.equal(cg([x])[0], x.reshape(2, 12))
    assert cg.num_kernels == 1
    y = rand((4, 6), F32)
    assert torch.equal(cg([y])[0], y.reshape(2, 12))
    assert cg.num_kernels == 0


@pytest.mark.parametrize("dtype", [F32, I64, B])
def test_flip(dtype):
    x = rand((5, 7, 3), dtype)
    check(graph_of("flip", [T(x.shape, dtype)], dims=(0, 2)), [x], kernels=1)  # output copy
    g = Graph()
    a = g.add_input(T((5, 7), dtype))
    g.set_outputs([g.add("ne", [g.add("flip", [a], dims=(1,)), a])])
    check(g, [rand((5, 7), dtype)], kernels=1)  # folded into the consumer as negative strides


@pytest.mark.parametrize("dtype", [F32, F16, B])
def test_cat(dtype):
    shapes = [(3, 2, 4), (3, 0, 4), (3, 5, 4), (3, 1, 4)]
    xs = [rand(s, dtype) for s in shapes]
    xs[2] = rand((3, 4, 5), dtype).transpose(1, 2)  # strided input
    check(graph_of("cat", [T(s, dtype) for s in shapes], dim=1), xs, kernels=1, eager=lambda *a: torch.cat(a, 1))


def test_cat_same_input_twice_and_last_dim():
    g = Graph()
    x = g.add_input(T((4, 3), F32))
    g.set_outputs([g.add("cat", [x, x, x], dim=1)])
    check(g, [rand((4, 3), F32)], kernels=1)


@pytest.mark.parametrize("value,dtype", [(1.5, F32), (float("nan"), F32), (float("-inf"), F16), (-7, I64),
                                         (True, B), (2**40, I64)])
def test_full(value, dtype):
    g = Graph()
    g.set_outputs([g.add("full", [], shape=(3, 5), value=value, dtype=dtype),
                   g.add("full", [], shape=(), value=value, dtype=dtype)])  # a 0-dim output needs a kernel too
    check(g, [], kernels=2)


@pytest.mark.parametrize("start,step,length,dtype", [(0, 1, 10, I64), (3, -2, 7, I64), (0.5, 0.25, 9, F32),
                                                     (0, 1, 1, F16), (1, 3, 0, I64)])
def test_arange(start, step, length, dtype):
    g = Graph()
    g.set_outputs([g.add("arange", [], start=start, step=step, length=length, dtype=dtype)])
    check(g, [], kernels=0 if length == 0 else 1)


def test_arange_in_broadcast():
    g = Graph()
    x = g.add_input(T((4, 6), F32))
    r = g.add("arange", [], start=0.0, step=1.0, length=6, dtype=F32)
    g.set_outputs([g.add("add", [x, r])])
    check(g, [rand((4, 6), F32)], kernels=2)


def test_extern_with_flipped_and_noncontiguous_results():
    g = Graph()
    x = g.add_input(T((4, 6), F32))
    f = g.add("flip", [x], dims=(0,))
    c = g.add("extern", [f], target="aten.cumsum.default", args=(("__input__", 0), 1))
    t = g.add("extern", [c], target="aten.t.default", args=(("__input__", 0),))  # a view: made contiguous
    g.set_outputs([g.add("mul", [t, t])])
    cg = check(g, [rand((4, 6), F32)], kernels=2)  # flip materialized for torch + the mul
    assert cg.externs == ["aten.cumsum.default", "aten.t.default"]


def test_outputs_alias_inputs_and_views():
    g = Graph()
    x = g.add_input(T((3, 4), F32))
    g.set_outputs([x, g.add("permute", [x], dims=(1, 0)), g.add("select", [x], dim=1, index=2)])
    check(g, [rand((3, 4), F32)], kernels=0)
    # The pipeline gives outputs their own storage: one strided copy kernel each.
    check(g, [rand((3, 4), F32)], kernels=3, pipeline=True)


def test_chain_reuses_kernels_and_reports_ops():
    g = Graph()
    x = g.add_input(T((8, 16), F32))
    y = g.add("exp", [x])
    s = g.add("sum", [y], dims=(1,), keepdim=True)
    g.set_outputs([g.add("div", [y, s])])
    cg = check(g, [rand((8, 16), F32)], kernels=3)
    assert [k.ops for k in cg.kernels] == [["exp"], ["sum"], ["div"]]
    assert all(k.name and "@triton.jit" in k.source for k in cg.kernels)


def test_every_view_op_has_a_runtime_view_rule():
    """The registry's view rule and the planner's offset/stride arithmetic cover the same ops (the
    gradient markers, views too, are dropped before planning)."""
    from ember.ir.ops.gradient import GRADIENT_MARKERS
    from ember.ir.registry import OPS
    from ember.runtime.views import VIEW_RULES

    assert set(VIEW_RULES) == {name for name, op in OPS.items() if op.view} - set(GRADIENT_MARKERS)
