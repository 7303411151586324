"""ember.optim against torch.optim: 50 steps on the same tiny MLP, state_dict both ways, kernels per step.

Each step of an ember optimizer is one compiled graph running one multi-tensor kernel for the
parameter tensors of one dtype and update structure (the MLP has 4: two weights, two biases),
writing parameters and state in place.
"""

import copy

import pytest
import torch
from torch import nn

import ember
from ember.runtime import plan as plan_mod

STEPS = 50
TOL = dict(rtol=1e-5, atol=1e-5)


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def random_grads(*models) -> None:
    """The same random gradient for the matching parameter of each model."""
    for ps in zip(*(m.parameters() for m in models)):
        g = torch.randn_like(ps[0])
        for p in ps:
            p.grad = g.clone()


def real_grads(*models) -> None:
    """Gradients of one batch's loss, computed by eager torch for each model."""
    x, y = torch.randn(5, 6), torch.randint(0, 3, (5,))
    for m in models:
        m.zero_grad()
        nn.functional.cross_entropy(m(x), y).backward()


def assert_same(a, b) -> None:
    """Parameters (modules) or state dicts match: same structure, tensors within float32 tolerance."""
    if isinstance(a, nn.Module):
        for (n, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
            torch.testing.assert_close(p, q, **TOL, msg=lambda m, n=n: f"{n}: {m}")
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.device == b.device
        torch.testing.assert_close(a, b, **TOL)
    else:
        assert a == b


def pair(name: str, kwargs: dict, model=None):
    m1 = model or mlp()
    m2 = copy.deepcopy(m1)
    return m1, m2, getattr(ember.optim, name)(m1.parameters(), **kwargs), getattr(torch.optim, name)(
        m2.parameters(), **kwargs)


CONFIGS = [
    ("SGD", dict(lr=0.1)),
    ("SGD", dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    ("SGD", dict(lr=0.05, momentum=0.8, nesterov=True, maximize=True)),
    ("RMSprop", dict(lr=0.01)),
    ("RMSprop", dict(lr=0.01, alpha=0.9, eps=1e-6, weight_decay=0.1, momentum=0.5, centered=True)),
    ("RMSprop", dict(lr=0.01, alpha=0.3, centered=True)),  # lerp weight 1-alpha >= 0.5: torch's other branch
    ("Adam", dict(lr=0.01)),
    ("Adam", dict(lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=0.1, amsgrad=True, maximize=True)),
    ("Adam", dict(lr=0.01, betas=(0.3, 0.9))),  # lerp weight 1-beta1 >= 0.5
    ("AdamW", dict(lr=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
]


@pytest.mark.parametrize("name,kwargs", CONFIGS, ids=[f"{n}-{'-'.join(k)}" for n, k in CONFIGS])
def test_matches_torch_50_steps(name, kwargs):
    m1, m2, o1, o2 = pair(name, kwargs)
    for _ in range(STEPS):
        random_grads(m1, m2)
        o1.step()
        o2.step()
    assert_same(m1, m2)
    assert_same(o1.state_dict(), o2.state_dict())  # same state, same format
    # The whole step is one compiled graph, one multi-tensor kernel for the 4 parameter tensors (one
    # dtype: passes/horizontal.py merges their same-structure updates), written in place.
    assert o1.num_kernels == 1 and len(list(m1.parameters())) == 4
    assert o1.in_place and o1.engine.num_graphs_built == 1


def test_kernels_per_step_and_in_place():
    m1, m2, o1, o2 = pair("Adam", dict(lr=0.01, amsgrad=True))
    sched1 = torch.optim.lr_scheduler.StepLR(o1, step_size=2, gamma=0.5)
    sched2 = torch.optim.lr_scheduler.StepLR(o2, step_size=2, gamma=0.5)
    random_grads(m1, m2)
    o1.step()
    o2.step()
    ptrs = [p.data_ptr() for p in m1.parameters()]
    states = [t for s in o1.state.values() for t in s.values()]
    for _ in range(5):  # new learning rates and step counts are graph inputs: nothing is rebuilt
        sched1.step()
        sched2.step()
        random_grads(m1, m2)
        o1.step()
        o2.step()
    assert_same(m1, m2)
    assert [p.data_ptr() for p in m1.parameters()] == ptrs
    assert all(a is b for a, b in zip(states, [t for s in o1.state.values() for t in s.values()]))
    assert o1.engine.num_graphs_built == 1 and o1.in_place
    (program,) = o1.engine.programs()
    assert o1.num_kernels == program.compiled.num_kernels == 1  # kernels per step: one for all 4 parameters
    assert [k.kernel.kind for k in program.compiled.kernels] == ["multi"]
    assert all(k.ops[0] != "copy" for k in program.compiled.kernels)
    # Parameters whose gradient is None are skipped (a new structure: one more graph, 1 kernel for 2).
    m1[0].weight.grad = m1[0].bias.grad = None
    o1.step()
    assert o1.num_kernels == 1 and o1.engine.num_graphs_built == 2


def test_step_counters_advance_without_a_host_op_per_counter():
    # torch's foreach path: one _foreach_add_ for all counters, not `step += 1` and `.item()` per
    # parameter; the counters made together are views of one buffer (optim/optimizers.py
    # `_share_counters`), advanced by one add_ on it
    from torch.utils._python_dispatch import TorchDispatchMode

    class OnCounters(TorchDispatchMode):
        def __init__(self, counters):
            super().__init__()
            self.ids, self.ops = {id(t) for t in counters} | {id(counters[0]._base)}, []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            flat = torch.utils._pytree.tree_leaves((args, kwargs or {}))
            if any(id(t) in self.ids for t in flat):
                self.ops.append(func)
            return func(*args, **(kwargs or {}))

    m1, m2, o1, o2 = pair("AdamW", dict(lr=0.01))
    random_grads(m1, m2)
    o1.step()  # creates the counters
    o2.step()
    random_grads(m1, m2)
    counters = [s["step"] for s in o1.state.values()]
    with OnCounters(counters) as mode:
        o1.step()
    o2.step()
    assert_same(m1, m2)
    assert len(counters) == 4 and [str(f) for f in mode.ops] == ["aten.add_.Tensor"], mode.ops
    assert all(float(s["step"]) == 2 for s in o1.state.values())
    o1.state[next(iter(o1.state))]["step"] = torch.tensor(2.0)  # a replaced counter: torch's foreach path
    random_grads(m1, m2)
    o1.step()
    o2.step()
    assert_same(m1, m2)
    assert all(float(s["step"]) == 3 for s in o1.state.values())


GROUP_CONFIGS = [
    ("Adam", dict(lr=0.01), [dict(lr=0.02), dict(weight_decay=0.1)], dict(lr=0.05, betas=(0.5, 0.9), amsgrad=True)),
    ("SGD", dict(lr=0.1), [dict(lr=0.05, momentum=0.9), dict(weight_decay=0.1)], dict(momentum=0.5, nesterov=True)),
]


@pytest.mark.parametrize("name,defaults,options,late", GROUP_CONFIGS, ids=[c[0] for c in GROUP_CONFIGS])
def test_param_groups_real_loss(name, defaults, options, late):
    """Two groups with their own lr and options, a third added after 20 steps (so one graph holds
    parameters at different step counts), gradients of a real loss computed by eager torch."""
    m1, extra1 = mlp(), nn.Parameter(torch.randn(3))
    m2, extra2 = copy.deepcopy(m1), copy.deepcopy(extra1)
    opts = []
    for lib, m in ((ember.optim, m1), (torch.optim, m2)):
        groups = [dict(params=m[0].parameters(), **options[0]), dict(params=m[2].parameters(), **options[1])]
        opts.append(getattr(lib, name)(groups, **defaults))
    o1, o2 = opts
    for i in range(STEPS):
        if i == 20:
            o1.add_param_group(dict(params=[extra1], **late))
            o2.add_param_group(dict(params=[extra2], **late))
        real_grads(m1, m2)
        extra1.grad = torch.randn_like(extra1)
        extra2.grad = extra1.grad.clone()
        o1.step()
        o2.step()
    assert [g["lr"] for g in o1.param_groups] == [g["lr"] for g in o2.param_groups]
    assert_same(m1, m2)
    torch.testing.assert_close(extra1, extra2, **TOL)
    assert_same(o1.state_dict(), o2.state_dict())
    # graphs: before and after the new group; kernels: one multi-tensor launch per group (each group's
    # flags, e.g. weight decay on or off, give its updates their own structure)
    assert o1.num_kernels == 3 and o1.engine.num_graphs_built == 2


STATE_CONFIGS = [
    ("SGD", dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("RMSprop", dict(lr=0.01, momentum=0.5, centered=True)),
    ("Adam", dict(lr=0.01, amsgrad=True, weight_decay=0.01)),
    ("AdamW", dict(lr=0.01, weight_decay=0.1)),
]


@pytest.mark.parametrize("name,kwargs", STATE_CONFIGS, ids=[n for n, _ in STATE_CONFIGS])
@pytest.mark.parametrize("direction", ["ember->torch", "torch->ember"])
def test_state_dict_round_trip(name, kwargs, direction):
    m1, m2, o1, o2 = pair(name, kwargs)
    src, dst = (o1, o2) if direction == "ember->torch" else (o2, o1)
    msrc = m1 if src is o1 else m2
    for _ in range(5):
        random_grads(msrc)
        src.step()
    # dst's model takes src's parameters, dst's optimizer src's state (deep-copied, as save/load would).
    (m2 if dst is o2 else m1).load_state_dict(msrc.state_dict())
    dst.load_state_dict(copy.deepcopy(src.state_dict()))
    assert_same(dst.state_dict(), src.state_dict())
    for _ in range(5):
        random_grads(m1, m2)
        o1.step()
        o2.step()
    assert_same(m1, m2)
    assert_same(o1.state_dict(), o2.state_dict())


def test_zero_grad_set_to_none():
    m = mlp()
    o = ember.optim.AdamW(m.parameters())
    random_grads(m)
    o.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    random_grads(m)
    o.zero_grad(set_to_none=False)
    assert all(p.grad is not None and not p.grad.any() for p in m.parameters())


def test_closure_noncontiguous_and_mixed_dtypes():
    """A transposed (non-contiguous) parameter is updated in place through its strides; a float64
    parameter gets its own graph (one per compute dtype); step(closure) returns the loss."""
    w = torch.randn(6, 4)
    p1, q1 = nn.Parameter(w.t()), nn.Parameter(torch.randn(5, dtype=torch.float64))
    p2, q2 = copy.deepcopy(p1), copy.deepcopy(q1)
    assert not p1.is_contiguous()
    o1 = ember.optim.RMSprop([p1, q1], lr=0.01, momentum=0.5)
    o2 = torch.optim.RMSprop([p2, q2], lr=0.01, momentum=0.5)
    for _ in range(10):
        def closure(p=p1, q=q1):
            o1.zero_grad()
            loss = (p.sin().sum() + q.cos().sum().float())
            loss.backward()
            return loss
        loss = o1.step(closure)
        o2.zero_grad()
        (p2.sin().sum() + q2.cos().sum().float()).backward()
        o2.step()
    assert isinstance(loss, torch.Tensor)
    torch.testing.assert_close(p1, p2, **TOL)
    torch.testing.assert_close(q1, q2, rtol=1e-12, atol=1e-12)
    assert o1.num_kernels == 2 and o1.engine.num_graphs_built == 2  # one graph (one kernel) per dtype
    assert {prog.graph.inputs[0].dtype for prog in o1.engine.programs()} == {torch.float32, torch.float64}
    assert o1.in_place and not p1.is_contiguous()


def test_copy_back_fallback(monkeypatch):
    """When a plan cannot store into the inputs, outputs are copied back: same results."""
    monkeypatch.setattr(plan_mod, "_in_place", lambda *args: False)
    m1, m2, o1, o2 = pair("SGD", dict(lr=0.1, momentum=0.9))
    for _ in range(3):
        random_grads(m1, m2)
        o1.step()
        o2.step()
    assert not o1.in_place
    assert_same(m1, m2)
    assert_same(o1.state_dict(), o2.state_dict())


@pytest.mark.parametrize("flag", ["differentiable", "capturable", "fused"])
def test_unsupported_flags(flag):
    cls = ember.optim.Adam if flag != "differentiable" else ember.optim.SGD
    with pytest.raises((NotImplementedError, RuntimeError, ValueError)):
        cls(mlp().parameters(), **{flag: True})
