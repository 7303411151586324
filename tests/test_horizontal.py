"""Horizontal fusion (passes/horizontal.py, codegen/multi.py): independent pointwise groups of one
structure run as one multi-tensor launch.

An optimizer step updates every parameter tensor with the same nodes: ember.optim and compile_step
launch one update kernel per dtype group, equal bit for bit to the per-tensor kernels they replace
(same arithmetic per element) and to torch.optim within float32 tolerance (tests/test_optim.py's),
storing parameters and state in place. Members the kernel cannot address (non-contiguous) run as
their own pointwise kernels; dependent groups never merge; a member reading a buffer another
member overwrites is not stored in place (programs of one launch run in any order).
"""

from __future__ import annotations

import copy

import pytest
import torch
from testing import CHAIN_TOLERANCES, assert_step_trains_like
from torch import nn

import ember
from ember.codegen import multi
from ember.ir import Graph, TensorType, evaluate
from ember.passes.cost import group_cost
from ember.passes.fusion import partition
from ember.passes.horizontal import merge_horizontal
from ember.runtime import compile_ir
from ember.runtime import schedule as schedule_mod

TOL = dict(rtol=1e-5, atol=1e-5)  # tests/test_optim.py's
RTOL, ATOL = CHAIN_TOLERANCES[torch.float32]  # a training step: chains of ops (tests/testing.py)
SHAPES = [((5, 7), torch.float32), ((13,), torch.float32), ((3, 4, 2), torch.float32), ((1,), torch.float32),
          ((6,), torch.float64), ((2, 3), torch.float64)]
OPTIMIZERS = {
    "AdamW": dict(lr=1e-2, weight_decay=0.1),
    "SGD": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    "RMSprop": dict(lr=1e-2, momentum=0.5, centered=True),
}


def _params(shapes=SHAPES) -> list[nn.Parameter]:
    return [nn.Parameter(torch.randn(s, dtype=dt)) for s, dt in shapes]


def _steps(opt, params, grads) -> None:
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_step_is_one_launch_per_dtype(name, monkeypatch):
    kwargs = OPTIMIZERS[name]
    ours = _params()
    unmerged, ref = copy.deepcopy(ours), copy.deepcopy(ours)
    grads = [[torch.randn_like(p) for p in ours] for _ in range(3)]
    opt = getattr(ember.optim, name)(ours, **kwargs)
    ptrs = [p.data_ptr() for p in ours]
    _steps(opt, ours, grads)
    _steps(getattr(torch.optim, name)(ref, **kwargs, foreach=False), ref, grads)
    # one launch per dtype group (float32, float64), all in place
    assert opt.num_kernels == 2 and opt.in_place, opt.num_kernels
    launches = [k for prog in opt.engine.programs() for k in prog.compiled.kernels]
    assert [k.kernel.kind for k in launches] == ["multi", "multi"]
    assert [len(k.parts) for k in launches] == [4, 2]
    assert [p.data_ptr() for p in ours] == ptrs
    for p, q in zip(ours, ref):
        torch.testing.assert_close(p, q, **TOL)
    # the per-tensor kernels it replaces compute the same bits
    monkeypatch.setattr(schedule_mod, "merge_horizontal", lambda groups: groups)
    single = getattr(ember.optim, name)(unmerged, **kwargs)
    _steps(single, unmerged, grads)
    assert single.num_kernels == len(SHAPES)
    for p, q in zip(ours, unmerged):
        assert torch.equal(p, q)
    for s, t in zip(opt.state.values(), single.state.values()):
        assert all(torch.equal(s[k], t[k]) for k in s)


def test_half_and_non_contiguous_members_and_the_launch_cap(monkeypatch):
    """bfloat16 and float16 parameters (updated in float32: their converts give them a structure of
    their own), a transposed parameter (not addressable flattened: its own pointwise kernel), and a
    parameter cap that splits the float32 members over two launches; bit for bit the unmerged step."""
    shapes = [((4, 3), torch.bfloat16), ((9,), torch.bfloat16), ((5,), torch.float16), ((2, 2), torch.float16),
              ((3, 5), torch.float32), ((7,), torch.float32), ((2, 3, 2), torch.float32)]
    ours = _params(shapes)
    ours.append(nn.Parameter(torch.randn(6, 4).t()))
    assert not ours[-1].is_contiguous()
    unmerged = copy.deepcopy(ours)
    grads = [[torch.randn_like(p) for p in ours] for _ in range(2)]
    # An AdamW member: 4 tensors and 3 outputs (pointer + offset each), 8 hp offsets, numel, start (not
    # the first); the hp pointer is shared: a launch of two members takes 8 + 2 * 24 - 1 = 55.
    monkeypatch.setattr(multi, "MAX_PARAMS", 55)
    opt = ember.optim.AdamW(ours, lr=1e-2, weight_decay=0.1)
    _steps(opt, ours, grads)
    kinds = [k.kernel.kind for prog in opt.engine.programs() for k in prog.compiled.kernels]
    # bf16 (2 members), fp16 (2), fp32 (3 addressable: 2 + 1 over the cap, 1 transposed): one graph
    assert sorted(kinds) == ["multi"] * 3 + ["pointwise"] * 2, kinds
    assert opt.in_place
    monkeypatch.setattr(schedule_mod, "merge_horizontal", lambda groups: groups)
    single = ember.optim.AdamW(unmerged, lr=1e-2, weight_decay=0.1)
    _steps(single, unmerged, grads)
    for p, q in zip(ours, unmerged):
        assert torch.equal(p, q)


def test_compile_step_one_update_launch_no_copies():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 3))
    ref = copy.deepcopy(model)
    opt, ref_opt = ember.optim.AdamW(model.parameters(), lr=1e-2), torch.optim.AdamW(ref.parameters(), lr=1e-2,
                                                                                      foreach=False)
    step = ember.compile_step(model, nn.functional.cross_entropy, opt)
    ptrs = [p.data_ptr() for p in model.parameters()]
    batches = [(torch.randn(10, 6), torch.randint(0, 3, (10,))) for _ in range(2)]
    assert_step_trains_like(step, model, ref, ref_opt, batches, nn.functional.cross_entropy, rtol=RTOL, atol=ATOL)
    assert step.copies == 0 and [p.data_ptr() for p in model.parameters()] == ptrs
    # the three weight matrices' updates: one multi-tensor launch (the biases' updates fuse into the row
    # kernels summing their gradients: one multi-row launch, tests/test_horizontal_rows.py)
    (update,) = [k for k in step.last.compiled.kernels if k.kernel.kind == "multi" and k.name.startswith("mt_")]
    assert len(update.parts) == 3


def test_any_same_structure_groups_merge():
    def f(a, b, c):
        return torch.sin(a) * 2, torch.sin(b) * 2, torch.sin(c) * 2

    args = [torch.randn(4, 5), torch.randn(7), torch.randn(3, 1, 2)]
    cf = ember.compile(f)
    for got, want in zip(cf(*args), f(*args)):
        torch.testing.assert_close(got, want)
    (sg,) = cf.graphs
    assert [k.kernel.kind for k in sg.compiled.kernels] == ["multi"]
    # a transposed member runs as its own pointwise kernel; explain counts each member's bytes once
    args[0] = torch.randn(5, 4).t()
    for got, want in zip(cf(*args), f(*args)):
        torch.testing.assert_close(got, want)
    report = ember.explain(f, *args)
    assert [k.kind for k in report.kernels] == ["multi", "multi"]
    (entry,) = report.schedule.kernels
    assert report.bytes_moved == entry.cost.bytes_moved == sum(group_cost(m).bytes_moved for m in entry.group.members)


def _graph(body, *shapes) -> Graph:
    g = Graph()
    xs = [g.add_input(TensorType(s, torch.float32)) for s in shapes]
    g.set_outputs(body(g, *xs))
    return g


def test_dependent_groups_never_merge():
    # exp(x) -> prod (a reduction kernel of its own) -> exp: same structure as exp(x) and exp(y), but a
    # path joins it to exp(x); exp(y) is free to join either (it joins exp(p): the last groups, which
    # nothing reads, are tried first, passes/horizontal.py).
    def body(g, x, y):
        a = g.add("exp", [x])
        p = g.add("prod", [a], dims=(0,), keepdim=False)
        return [a, g.add("exp", [p]), g.add("exp", [y])]

    graph = _graph(body, (8,), (5,))
    groups = merge_horizontal(partition(graph))
    multis = [g for g in groups if g.kind == "multi"]
    assert len(multis) == 1 and len(multis[0].members) == 2
    merged = {n for m in multis[0].members for n in m.nodes}
    exp_x, _, exp_p, exp_y = graph.nodes
    assert exp_x not in merged and exp_p in merged and exp_y in merged
    order = {n: i for i, g in enumerate(groups) for n in g.nodes}  # still in dependence order
    assert all(order[v.producer] <= order[n] for g in groups for n in g.nodes for v in n.inputs
               if v.producer in order)
    xs = [torch.rand(8) + 0.5, torch.randn(5)]
    for got, want in zip(compile_ir(graph)(xs), evaluate(graph, *xs)):
        torch.testing.assert_close(got, want)


def test_member_reading_a_buffer_another_member_overwrites_is_not_in_place():
    # mul(x, y) stored over x, and mul(y, x): one structure, one launch; the second member's programs
    # may run after the first's stored over x, so the plan copies instead of storing in place.
    graph = _graph(lambda g, x, y: [g.add("mul", [x, y]), g.add("mul", [y, x])], (300,), (300,))
    exe = compile_ir(graph, donate={0: 0})
    x, y = torch.randn(300), torch.randn(300)
    want = [x * y, y * x]
    inputs = [x.clone(), y.clone()]
    outs = exe(inputs)
    assert [e.kind for e in exe.schedule.kernels] == ["multi"]
    assert exe.plan.copies == [(0, 0)]
    assert outs[0] is inputs[0]
    for got, w in zip(outs, want):
        torch.testing.assert_close(got, w)
