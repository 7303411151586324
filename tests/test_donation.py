"""Output donation (`compile_ir(..., donate={output: input})`, JAX's `donate_argnums`) and the schedule
as an artifact: a donated output comes back as the input tensor holding the new value, stored there
by its kernel when that is safe, copied otherwise; results always equal eager's."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import ember
from ember.ir import parse_graph
from ember.runtime import compile_ir
from ember.runtime.plan import build_plan
from ember.runtime.schedule import Schedule
from ember.runtime.views import contiguous_strides


def _donating(fn, *args, donate):
    """fn's optimized graph compiled with `donate` (graph inputs are fn's tensor arguments)."""
    graph = ember.trace(fn, *args).graph
    assert len(graph.inputs) == len(args)
    return compile_ir(graph, optimize=False, donate=donate)


def _check(fn, args, donate, in_place):
    exe = _donating(fn, *args, donate=donate)
    want = fn(*[a.clone() for a in args])
    want = want if isinstance(want, tuple) else (want,)
    inputs = [a.clone() for a in args]
    ptrs, versions = [t.data_ptr() for t in inputs], [t._version for t in inputs]
    outs = exe(inputs)
    for k, j in donate.items():
        assert outs[k] is inputs[j] and inputs[j].data_ptr() == ptrs[j]  # the caller's tensor, same memory
        assert inputs[j]._version > versions[j]  # autograd sees the update, as after an in-place op
    for got, w in zip(outs, want):
        torch.testing.assert_close(got, w, rtol=1.3e-6, atol=1e-5)
    assert (not exe.plan.copies) == in_place, exe.plan.copies
    return exe


def test_pointwise_output_stored_over_its_input():
    _check(lambda x, y: x * 2 + y, [torch.randn(6, 5), torch.randn(5)], {0: 0}, in_place=True)


def test_readers_are_scheduled_before_the_writer():
    # the sum reads x and nothing orders it after the update: the schedule moves it first
    exe = _check(lambda x: (x * 2, x.sum(1)), [torch.randn(6, 5)], {0: 0}, in_place=True)
    order = [e.kind for e in exe.schedule.kernels]
    assert order.index("row") < order.index("pointwise")


def test_row_outputs_stored_over_inputs():
    # a bias update: b - 0.1 * g.sum(0) in one row kernel, written over b
    _check(lambda b, g: b - 0.1 * g.sum(0), [torch.randn(7), torch.randn(9, 7)], {0: 0}, in_place=True)


@pytest.mark.parametrize("case", ["reader_after_writer", "matmul_operand", "transposed_read", "broadcast_read"])
def test_unsafe_donation_copies_and_stays_exact(case):
    fn, args = {
        # the sum needs the new value and the old one: it cannot run before the update
        "reader_after_writer": (lambda x: (x + 1, ((x + 1) * x).sum()), [torch.randn(6, 5)]),
        # a matmul reads whole rows and columns of x, not the element it stores
        "matmul_operand": (lambda x: x @ x, [torch.randn(8, 8)]),
        # element (i, j) of the result reads x[j, i]
        "transposed_read": (lambda x: x + x.t(), [torch.randn(8, 8)]),
        # every row of the result reads all of x's rows
        "broadcast_read": (lambda x: x * x.sum(0, keepdim=True), [torch.randn(6, 5)]),
    }[case]
    _check(fn, args, {0: 0}, in_place=False)


def test_donation_type_must_match():
    with pytest.raises(TypeError, match="donate"):
        _donating(lambda x: x.sum(), torch.randn(4), donate={0: 0})


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
@pytest.mark.parametrize("net", ["mlp", "cnn"])
def test_compile_step_copies_nothing(opt, net):
    """Parameters, optimizer states and batch-norm statistics are stored in place by their kernels
    (a batch norm's weight and bias by the row kernel that reduces their gradients, whose tiles read
    the weight too: rows are stored after the tiles)."""
    if net == "mlp":
        model, x = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)), torch.randn(10, 6)
    else:
        model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                              nn.Flatten(), nn.Linear(4 * 5 * 5, 3))
        x = torch.randn(10, 2, 5, 5)
    o = (ember.optim.SGD(model.parameters(), lr=0.1, momentum=0.9) if opt == "sgd"
         else ember.optim.AdamW(model.parameters(), lr=1e-2))
    step = ember.compile_step(model, nn.functional.cross_entropy, o)
    ptrs = [t.data_ptr() for t in model.state_dict().values()]
    for _ in range(2):
        step(x, torch.randint(0, 3, (10,)))
    assert step.copies == 0
    assert [t.data_ptr() for t in model.state_dict().values()] == ptrs


def test_schedule_round_trips_through_json():
    def f(x, w, b):
        return torch.softmax(x @ w + b, -1).sum(0)

    args = [torch.randn(6, 8), torch.randn(8, 5), torch.randn(5)]
    exe = compile_ir(ember.trace(f, *args).graph, optimize=False)
    text = json.dumps(exe.schedule.to_dict())
    graph = parse_graph(str(exe.schedule.graph))
    loaded = Schedule.from_dict(json.loads(text), graph)
    assert str(loaded) == str(exe.schedule) and loaded.to_dict() == exe.schedule.to_dict()
    plan = build_plan(loaded, [contiguous_strides(a.shape) for a in args], torch.device("cpu"))
    from ember.runtime.executor import execute

    torch.testing.assert_close(execute(plan, args, torch.device("cpu"))[0], f(*args), rtol=1.3e-6, atol=1e-5)


def test_runtime_launches_what_the_schedule_lists():
    """Every launch runs a schedule entry's group with its config, in the schedule's order; launches
    outside the schedule are layout copies (entry None)."""
    def f(x, w):
        h = torch.relu(x @ w)
        return h.t().reshape(-1) * 2, torch.log_softmax(h, -1)

    args = [torch.randn(6, 8), torch.randn(8, 5)]
    exe = compile_ir(ember.trace(f, *args).graph, optimize=False)
    exe(args)
    scheduled = [s for s in exe.plan.launches if s.entry is not None]
    assert [s.entry for s in scheduled] == [e.index for e in exe.schedule.kernels]
    for s in scheduled:
        entry = exe.schedule.entries[s.entry]
        assert s.grid == entry.config.grid and s.ops == entry.group.ops
        assert all(s.constexprs[k] == v for k, v in entry.config.constexprs.items())

