"""Horizontal fusion of row groups (passes/horizontal.py, codegen/multi_row.py): independent small row
groups run as one multi-row launch, each member with its own row kernel body and tiles.

Each member's body is its row kernel's source, inlined: the launch computes the same bits as the row
kernels it replaces (same arithmetic, same tiles), checked against them with the merge turned off,
and against the reference interpreter / eager. Dependent groups never share a launch; a member that
overwrites a buffer another member reads is not stored in place; a member raising the index error
flag raises eager's error; and in a training step the vector parameters' updates (each fused with the
row sum of its gradient) become one launch, matching torch.optim.AdamW.
"""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from testing import CHAIN_TOLERANCES, assert_step_trains_like
from torch import nn
from torch.nn import functional as F

import ember
from ember.codegen import multi_row
from ember.codegen import row as row_codegen
from ember.ir import Graph, TensorType, evaluate
from ember.ir.kernel_group import KernelGroup
from ember.passes import horizontal
from ember.passes.fusion import partition
from ember.passes.horizontal import merge_horizontal
from ember.runtime import compile_ir
from ember.runtime.executor import execute
from ember.runtime.plan import build_plan
from ember.runtime.schedule import Schedule
from ember.runtime.views import contiguous_strides

RTOL, ATOL = CHAIN_TOLERANCES[torch.float32]  # a training step: chains of ops (tests/testing.py)


def _graph(body, *shapes) -> Graph:
    g = Graph()
    xs = [g.add_input(TensorType(s, torch.float32)) for s in shapes]
    g.set_outputs(body(g, *xs))
    return g


def _softmax(g: Graph, x):
    m = g.add("amax", [x], dims=(1,), keepdim=True)
    ex = g.add("exp", [g.add("sub", [x, m])])
    return g.add("div", [ex, g.add("sum", [ex], dims=(1,), keepdim=True)])


def _unmerged(monkeypatch, graph: Graph, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """`graph`'s outputs with row groups never merged (each its own row kernel)."""
    with monkeypatch.context() as m:
        m.setattr(horizontal, "SMALL_ROW_PROGRAMS", -1)
        exe = compile_ir(graph)
        assert all(s.kernel.kind == "row" for s in exe.plan.launches)
        return exe(xs)


def test_row_members_of_different_shapes_are_one_launch(monkeypatch):
    # a persistent softmax (tile output), a looped row sum (5000 > ROW_BLOCK_LIMIT), a sum over the
    # leading dim (kept dims after the reduced one), a reduction over two dims of a 3-d tensor with a
    # row epilogue, and a whole group (rows, then across rows: a loss)
    def body(g, a, b, c, d, e):
        s = g.add("sum", [g.add("exp", [e])], dims=(1,), keepdim=False)
        return [_softmax(g, a), g.add("sum", [b], dims=(1,), keepdim=False),
                g.add("amax", [c], dims=(0,), keepdim=True),
                g.add("sqrt", [g.add("sum", [g.add("mul", [d, d])], dims=(0, 2), keepdim=False)]),
                g.add("sum", [s], dims=(0,), keepdim=False)]

    graph = _graph(body, (5, 24), (3, 5000), (7, 3), (4, 6, 5), (4, 9))
    exe = compile_ir(graph)
    (launch,) = exe.plan.launches
    assert launch.kernel.kind == "multi" and len(launch.parts) == 5
    assert [m.kind for m in exe.schedule.kernels[0].group.members] == ["row"] * 5
    xs = [torch.randn(5, 24), torch.randn(3, 5000), torch.randn(7, 3), torch.randn(4, 6, 5), torch.randn(4, 9)]
    got = exe(xs)
    for out, want in zip(got, evaluate(graph, *xs)):
        torch.testing.assert_close(out, want)
    for out, single in zip(got, _unmerged(monkeypatch, graph, xs)):
        assert torch.equal(out, single)  # the row kernels' own bodies and tiles: the same bits
    # the schedule saved as JSON and loaded back (row members keep their kind, dims, whole) plans the same
    loaded = Schedule.from_dict(json.loads(json.dumps(exe.schedule.to_dict())), exe.schedule.graph)
    assert str(loaded) == str(exe.schedule) and loaded.to_dict() == exe.schedule.to_dict()
    plan = build_plan(loaded, [contiguous_strides(x.shape) for x in xs], torch.device("cpu"))
    for out, want in zip(execute(plan, xs, torch.device("cpu")), got):
        assert torch.equal(out, want)


def test_small_rule_is_the_gpu_row_config():
    """`gpu_row_programs` (passes/horizontal.py) is the grid codegen/row.py chooses for a GPU."""
    for shape, dims, whole in [((3, 24), (1,), False), ((3000, 24), (1,), False), ((7, 5000), (1,), False),
                               ((600, 3), (0,), False), ((4, 100, 9), (0, 2), False), ((64, 60), (1,), True),
                               ((1, 1), (1,), False), ((40000, 2), (1,), False)]:
        group = KernelGroup("row", shape=shape, dims=dims, whole=whole)
        m = math.prod(s for d, s in enumerate(shape) if d not in dims)
        r = math.prod(shape[d] for d in dims)
        assert horizontal.gpu_row_programs(group) == row_codegen.launch_config(m, r, whole, "cuda").grid[0], shape


def test_big_row_groups_keep_their_launch():
    # softmax over 3000 rows of 24: 24 GPU programs of 128 rows (merged); of 48: 47 of 64 rows (its own launch)
    graph = _graph(lambda g, a, b, c: [_softmax(g, a), _softmax(g, b), _softmax(g, c)], (3000, 24), (5, 7),
                   (3000, 48))
    groups = merge_horizontal(partition(graph))
    assert [(g.kind, len(g.members)) for g in groups] == [("multi", 2), ("row", 0)]
    assert [m.shape for m in groups[0].members] == [(3000, 24), (5, 7)]


def test_dependent_row_groups_never_merge(monkeypatch):
    # row sums s of x; a softmax of y scaled by s (through a reshape: a path via a view); an
    # independent amax of z. The softmax reads s: never in s's launch; z's group joins one of them.
    def body(g, x, y, z):
        s = g.add("sum", [x], dims=(1,), keepdim=False)
        scaled = g.add("mul", [y, g.add("reshape", [s], shape=(6, 1))])
        return [s, _softmax(g, scaled), g.add("amax", [z], dims=(1,), keepdim=False)]

    graph = _graph(body, (6, 8), (6, 4), (3, 10))
    groups = merge_horizontal(partition(graph))
    rows = [g for g in groups if g.kind == "row"]
    (multi,) = [g for g in groups if g.kind == "multi"]
    assert len(rows) == 1 and len(multi.members) == 2
    amax = graph.nodes[-1]
    assert amax in multi.nodes
    sum_node = graph.nodes[0]
    assert (sum_node in multi.nodes) != (sum_node in rows[0].nodes)  # s and the softmax apart
    order = {n: i for i, g in enumerate(groups) for n in g.nodes}  # still in dependence order
    assert all(order[v.producer] <= order[n] for g in groups for n in g.nodes for v in n.inputs
               if v.producer in order)
    xs = [torch.randn(6, 8), torch.randn(6, 4), torch.randn(3, 10)]
    got = compile_ir(graph)(xs)
    for out, want in zip(got, evaluate(graph, *xs)):
        torch.testing.assert_close(out, want)
    for out, single in zip(got, _unmerged(monkeypatch, graph, xs)):
        assert torch.equal(out, single)


def test_member_overwriting_what_another_reads_is_not_in_place():
    # p + rowsum(g) stored over p (donated), and rowsum(h * p) reading p as a tile: independent groups,
    # one launch; the second member's programs may run after the first stored over p: copied instead.
    def body(g, p, gr, h):
        new_p = g.add("add", [p, g.add("sum", [gr], dims=(1,), keepdim=False)])
        return [new_p, g.add("sum", [g.add("mul", [h, p])], dims=(1,), keepdim=False)]

    graph = _graph(body, (5,), (5, 8), (3, 5))
    exe = compile_ir(graph, donate={0: 0})
    p, gr, h = torch.randn(5), torch.randn(5, 8), torch.randn(3, 5)
    want = [p + gr.sum(1), (h * p).sum(1)]
    inputs = [p.clone(), gr, h]
    outs = exe(inputs)
    assert [e.kind for e in exe.schedule.kernels] == ["multi"]
    assert exe.plan.copies == [(0, 0)]
    for got, w in zip(outs, want):
        torch.testing.assert_close(got, w)
    # when the other member does not read p, the update is stored in place
    def apart(g, p, gr, h):
        return [body(g, p, gr, h)[0], g.add("sum", [g.add("mul", [h, h])], dims=(1,), keepdim=False)]

    exe = compile_ir(_graph(apart, (5,), (5, 8), (3, 5)), donate={0: 0})
    inputs = [p.clone(), gr, h]
    outs = exe(inputs)
    assert [e.kind for e in exe.schedule.kernels] == ["multi"] and exe.plan.copies == []
    assert outs[0] is inputs[0]
    for got, w in zip(outs, [want[0], (h * h).sum(1)]):
        torch.testing.assert_close(got, w)


def test_members_raising_the_index_flag():
    """Two cross entropies (each a row group checking its targets, a whole one): one launch sharing the
    error flag; values as eager, and eager's IndexError for a target out of range in either member."""
    def f(a, t, b, u):
        return F.cross_entropy(a, t), F.cross_entropy(b, u)

    cf = ember.compile(f)
    args = [torch.randn(5, 4), torch.randint(0, 4, (5,)), torch.randn(3, 7), torch.randint(0, 7, (3,))]
    for got, want in zip(cf(*args), f(*args)):
        torch.testing.assert_close(got, want)
    (sg,) = cf.graphs
    (launch,) = sg.compiled.kernels
    assert launch.kernel.kind == "multi" and len(launch.parts) == 2 and "err_ptr" in launch.source
    for k, bad in ((1, torch.tensor([0, 4, 1, 2, 3])), (3, torch.tensor([0, 7, 1]))):
        wrong = list(args)
        wrong[k] = bad
        with pytest.raises(IndexError):
            f(*wrong)
        with pytest.raises(IndexError, match="out of range"):
            cf(*wrong)


def test_compile_step_vector_parameter_updates_are_one_launch():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 8), nn.LayerNorm(8), nn.Tanh(),
                          nn.Linear(8, 3))
    ref = copy.deepcopy(model)
    opt = ember.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, weight_decay=0.1, foreach=False)
    step = ember.compile_step(model, F.cross_entropy, opt)
    ptrs = [p.data_ptr() for p in model.parameters()]
    batches = [(torch.randn(10, 6), torch.randint(0, 3, (10,))) for _ in range(2)]
    assert_step_trains_like(step, model, ref, ref_opt, batches, F.cross_entropy, rtol=RTOL, atol=ATOL)
    assert step.copies == 0 and [p.data_ptr() for p in model.parameters()] == ptrs
    # 3 biases + 2 LayerNorm weights + 2 LayerNorm biases: one multi-row launch (each update fused with
    # the row sum of its gradient); the 3 weight matrices: one multi-tensor launch
    vector = sum(p.dim() == 1 for p in model.parameters())
    multis = [k for k in step.last.compiled.kernels if k.kernel.kind == "multi"]
    assert sorted((k.name[:3], len(k.parts)) for k in multis) == [("mr_", vector), ("mt_", 3)]
    assert not [k for k in step.last.compiled.kernels if k.kernel.kind == "row" and "sqrt" in k.ops]


def test_explain_and_schedule_show_a_multi_row_launch():
    def f(a, b):
        return a.softmax(1), b.sum(0)

    args = (torch.randn(4, 6), torch.randn(5, 3))
    report = ember.explain(f, *args)
    (k,) = report.kernels
    assert k.kind == "multi" and k.launch.startswith("grid=[2] ") and "amax" in k.ops and "sum" in k.ops
    (entry,) = report.schedule.kernels
    assert report.bytes_moved == entry.cost.bytes_moved == (4 * 6 * 2 + 5 * 3 + 3) * 4
    assert "multi x2" in str(report.schedule) and "m1_BR=" in str(report.schedule)


def test_launch_cap_splits_members(monkeypatch):
    # a row sum member takes 11 runtime parameters (a load: pointer, offset, 2 strides; a row output:
    # pointer, stride; 2 sizes, M, R; its first program): a cap of 23 (one kept for the flag) fits two
    # per launch; the third runs as a plain row kernel
    graph = _graph(lambda g, a, b, c: [g.add("sum", [x], dims=(1,), keepdim=False) for x in (a, b, c)],
                   (3, 4), (5, 6), (2, 9))
    monkeypatch.setattr(multi_row, "MAX_PARAMS", 23)
    exe = compile_ir(graph)
    assert [(s.kernel.kind, [k for k, _, _ in s.parts]) for s in exe.plan.launches] == [("multi", [0, 1]),
                                                                                        ("row", [2])]
    xs = [torch.randn(3, 4), torch.randn(5, 6), torch.randn(2, 9)]
    for out, x in zip(exe(xs), xs):
        torch.testing.assert_close(out, x.sum(1))


def test_index_error_raises_before_a_member_stores_into_the_caller():
    """A checking member (cross entropy's target check) and an independent update stored in place into a
    donated input: the update runs after the launch, behind the flag's check, so an out-of-range
    target raises before the caller's tensor changes (as when each had its own launch)."""
    def f(a, t, p, gr):
        return F.cross_entropy(a, t), p + gr.sum(1)

    args = [torch.randn(5, 4), torch.randint(0, 4, (5,)), torch.randn(6), torch.randn(6, 3)]
    with torch.no_grad():
        graph = ember.trace(f, *args).graph
    exe = compile_ir(graph, donate={1: 2})
    assert [e.kind for e in exe.schedule.kernels] == ["multi"]  # one schedule entry, two launches
    assert [(s.kernel.kind, [k for k, _, _ in s.parts]) for s in exe.plan.launches] == [("row", [0]), ("row", [1])]
    p = args[2].clone()
    outs = exe([args[0], args[1], p, args[3]])
    assert outs[1] is p and exe.plan.copies == []
    for got, want in zip(outs, f(*args)):
        torch.testing.assert_close(got, want)
    p = args[2].clone()
    with pytest.raises(IndexError, match="out of range"):
        exe([args[0], torch.tensor([0, 1, 4, 2, 3]), p, args[3]])
    assert torch.equal(p, args[2])
