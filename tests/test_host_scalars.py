"""Host scalars (runtime/plan.py `Host`): single elements of a host-held input (an optimizer's
hyperparameters) reach kernels as float parameters, not through a pointer, with no copy to the device.
The GPU side (float parameters in PTX) is tests/test_sm90_compile.py's `test_host_scalars_*`."""

from __future__ import annotations

import copy

import pytest
import torch
from testing import assert_step_trains_like

import ember
from ember.ir import Graph, TensorType, evaluate
from ember.runtime import compile_ir
from ember.runtime.plan import Buf, Host


def _graph(inputs, body) -> Graph:
    g = Graph()
    xs = [g.add_input(TensorType(shape, dt)) for shape, dt in inputs]
    out = body(g, *xs)
    g.set_outputs(out if isinstance(out, list) else [out])
    return g


def _sel(g: Graph, hp, k: int):
    return g.add("select", [hp], dim=0, index=k)


def _softmax_scaled(g: Graph, hp, x):
    s = g.add("mul", [x, _sel(g, hp, 2)])
    ex = g.add("exp", [g.add("sub", [s, g.add("amax", [s], dims=(1,), keepdim=True)])])
    return g.add("div", [ex, g.add("sum", [ex], dims=(1,), keepdim=True)])


KINDS = {
    # one pointwise kernel; an exact product, so a value rounded on its way in would show
    "pointwise": lambda dt: _graph([((3,), dt), ((4, 5), dt)], lambda g, hp, x: g.add("mul", [x, _sel(g, hp, 1)])),
    # two independent updates: one multi-tensor launch, a value per member
    "multi": lambda dt: _graph([((3,), dt), ((4, 5), dt), ((7,), dt)], lambda g, hp, x, y: [
        g.add("mul", [v, _sel(g, hp, k)]) for k, v in enumerate((x, y))]),
    # a row kernel (softmax of a scaled row)
    "row": lambda dt: _graph([((3,), dt), ((3, 24), dt)], _softmax_scaled),
    # two row groups: one multi-row launch
    "multi_row": lambda dt: _graph([((3,), dt), ((3, 24), dt), ((5, 9), dt)], lambda g, hp, x, y: [
        _softmax_scaled(g, hp, x), g.add("sum", [g.add("mul", [y, _sel(g, hp, 0)])], dims=(1,), keepdim=False)]),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", list(KINDS))
def test_host_scalars_are_launch_arguments_and_exact(kind, dtype):
    g = KINDS[kind](dtype)
    exe = compile_ir(g, optimize=False, host=frozenset({0}))
    # values float32 cannot hold: a float64 kernel must receive them unrounded
    hp = torch.tensor([0.1, 1 / 3, 0.7 + 1e-12], dtype=dtype)
    xs = [torch.randn(v.shape, dtype=dtype) for v in g.inputs[1:]]
    outs = exe([hp] + xs)
    plan = exe.plan
    assert len(plan.launches) == 1 and not plan.host_pointer
    assert all(Buf(0) not in s.args for s in plan.launches)
    assert any(isinstance(a, Host) for a in plan.launches[0].args)
    for got, want in zip(outs, evaluate(g, hp, *xs)):
        if kind in ("pointwise", "multi"):
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got, want)
    hp2 = torch.tensor([-2.5, 4.0, 0.3], dtype=dtype)  # new values, the same plan and kernels
    for got, want in zip(exe([hp2] + xs), evaluate(g, hp2, *xs)):
        torch.testing.assert_close(got, want, rtol=0 if kind in ("pointwise", "multi") else None,
                                   atol=0 if kind in ("pointwise", "multi") else None)


def test_a_host_input_read_through_a_pointer_is_copied_per_call():
    # the whole vector broadcast over rows, and a matmul epilogue: pointer reads (plan.host_pointer)
    g = _graph([((3,), torch.float32), ((4, 3), torch.float32), ((3, 3), torch.float32)], lambda g, hp, x, w: [
        g.add("add", [x, hp]), g.add("mul", [g.add("matmul", [x, w]), _sel(g, hp, 0)])])
    exe = compile_ir(g, host=frozenset({0}))
    hp, x, w = torch.randn(3), torch.randn(4, 3), torch.randn(3, 3)
    outs = exe([hp, x, w])
    assert exe.plan.host_pointer
    for got, want in zip(outs, evaluate(g, hp, x, w)):
        torch.testing.assert_close(got, want)


def test_host_inputs_must_be_float_and_not_donated():
    g = _graph([((3,), torch.int64), ((4,), torch.float32)], lambda g, hp, x: g.add("add", [x, x]))
    with pytest.raises(TypeError, match="float32 or float64"):
        compile_ir(g, host=frozenset({0}))
    g = _graph([((3,), torch.float32)], lambda g, hp: g.add("add", [hp, hp]))
    with pytest.raises(TypeError, match="not donated"):
        compile_ir(g, host=frozenset({0}), donate={0: 0})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_optimizer_hyperparameters_stay_on_the_host(dtype):
    params = [torch.nn.Parameter(torch.randn(s, dtype=dtype)) for s in [(6, 4), (4,), (3, 5)]]
    ref = copy.deepcopy(params)
    opt = ember.optim.AdamW(params, lr=1e-2, eps=1e-3, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref, lr=1e-2, eps=1e-3, weight_decay=0.1)
    sched, ref_sched = (torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5) for o in (opt, ref_opt))
    for _ in range(3):  # bias corrections and the learning rate change every step
        for p, r in zip(params, ref):
            p.grad = torch.randn_like(p)
            r.grad = p.grad.clone()
        opt.step()
        ref_opt.step()
        sched.step()
        ref_sched.step()
        for p, r in zip(params, ref):
            torch.testing.assert_close(p.detach(), r.detach())
    (program,) = opt.engine.programs()
    assert program.hp.tensor.device.type == "cpu" and program.hp.tensor.dtype == dtype
    plan = program.compiled.plan
    assert opt.num_kernels == 1 and not plan.host_pointer
    assert sum(isinstance(a, Host) for a in plan.launches[0].args) > 0


def test_compile_step_takes_hyperparameters_by_value():
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.GELU(), torch.nn.Linear(8, 3))
    ref = copy.deepcopy(model)
    loss_fn = torch.nn.functional.cross_entropy
    hyper = dict(lr=1e-2, eps=1e-3, weight_decay=0.1)
    step = ember.compile_step(model, loss_fn, ember.optim.AdamW(model.parameters(), **hyper))
    batches = [(torch.randn(5, 6), torch.randint(0, 3, (5,))) for _ in range(3)]
    assert_step_trains_like(step, model, ref, torch.optim.AdamW(ref.parameters(), **hyper), batches, loss_fn)
    plan = step.last.compiled.plan
    assert plan.host and not plan.host_pointer  # every hyperparameter a kernel argument
    assert step.last.hp.tensor.device.type == "cpu"
