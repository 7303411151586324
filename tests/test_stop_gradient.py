"""Stop-gradients in static mode: `.detach()`, `.data`, `torch.no_grad()` blocks and in-place updates
autograd does not record give eager's gradients through `ember.compile` and `ember.compile_step`, and
the IR markers that carry them (`stop_gradient`, `untracked_update`) cost no kernel and no byte."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ember
from ember.ir import Graph, TensorType, evaluate
from ember.passes.autodiff import grad_graph
from ember.passes.gradient_markers import strip_gradient_markers


@torch.no_grad()
def _helper(x):
    return x.exp()


def _no_grad_view_update(x):
    y = x * 2
    with torch.no_grad():
        y[0] = 5.0            # setitem on a no_grad view
        y[1].mul_(3)
    return (y * x).sum()


def _detached_alias_update(x):
    y = x * 2
    d = y.detach()
    d.add_(1)                 # grad mode on, but through a detached alias: y keeps its history
    y.detach()[0].mul_(3)
    return (y * y).sum()


PROGRAMS = {
    "detach_times_self": lambda x: (x.detach() * x).sum(),
    "half_plus_detached": lambda x: (x * 0.5 + x.detach()).sum(),
    "detached_intermediate": lambda x: (x.exp() * 0.5 + x.exp().detach()).sum(),
    "data": lambda x: (x.data * x.sin()).sum(),
    "no_grad_block": lambda x: _block(x),
    "set_grad_enabled_false": lambda x: _set_grad(x),
    "no_grad_decorated_helper": lambda x: (_helper(x) * x).sum(),
    "no_grad_inplace": lambda x: _inplace(x),
    "data_inplace": lambda x: _data_inplace(x),
    "no_grad_view_update": _no_grad_view_update,
    "detached_alias_update": _detached_alias_update,
    "data_assignment": lambda x: _data_assign(x),
    "detach_": lambda x: _detach_(x),
    # no VJP needed through kthvalue (an extern)
    "detach_then_extern": lambda x: (torch.kthvalue(x.detach(), 2, 0).values * x).sum(),
}


def _block(x):
    with torch.no_grad():
        z = x * 3 + 1
        w = z.relu()
    return (w * x + z).sum()


def _set_grad(x):
    with torch.set_grad_enabled(False):
        z = x.cos()
    return (z * x).sum()


def _data_assign(x):
    y = x * 2
    y.data = x.detach().cos()  # y's values change, its history (x * 2) stays
    return (y * x).sum()


def _detach_(x):
    y = x * 2
    y.detach_()
    return (y * x).sum()


def _inplace(x):
    y = x * 2
    with torch.no_grad():
        y.mul_(3)             # value changes; y's gradient history does not
    return (y * y).sum()


def _data_inplace(x):
    y = x * 2
    y.data.clamp_(-0.5, 0.5)
    return (y * x).sum()


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_gradients_match_eager(name):
    fn = PROGRAMS[name]
    x = torch.randn(4, 3, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    out = ember.compile(fn)(x)
    ref = fn(xr)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.backward()
    ref.backward()
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-5, atol=1e-5)


def test_the_no_grad_part_has_no_gradient_path():
    """Nothing computed under no_grad reaches the gradient: with only such outputs, x gets none."""
    def f(x):
        with torch.no_grad():
            return x * 2

    x = torch.randn(3, requires_grad=True)
    out = ember.compile(f)(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, x.detach() * 2)


def test_module_parameter_clamped_under_no_grad():
    """A forward that clamps its own weight under no_grad (weight clipping): eager updates the
    parameter, keeps it a leaf and gives it the gradient of the clamped value."""

    class Clipped(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            with torch.no_grad():
                self.fc.weight.clamp_(-0.2, 0.2)
            return self.fc(x).square().sum()

    model = Clipped()
    ref = copy.deepcopy(model)
    x = torch.randn(5, 4)
    ember.compile(model)(x).backward()
    ref(x).backward()
    torch.testing.assert_close(model.fc.weight, ref.fc.weight)
    for p, q in zip(model.parameters(), ref.parameters()):
        assert p.is_leaf
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6)


def test_detached_alias_updated_from_a_differentiable_tensor_is_refused():
    def f(x, w):
        d = x.detach()
        d.mul_(w)  # eager: d now records w's gradient while x keeps its own history
        return (d + x).sum()

    with pytest.raises(ember.CaptureError, match="detached"):
        ember.compile(f)(torch.randn(3, requires_grad=True), torch.randn(3, requires_grad=True))


class _Net(nn.Module):
    """A model whose loss uses detached targets and a no_grad statistic, as self-distillation and
    batch-statistic tricks do."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 4)

    def forward(self, x):
        h = torch.tanh(self.fc1(x))
        with torch.no_grad():
            scale = h.abs().mean() + 1
        teacher = h.detach() * 0.5
        return self.fc2(h / scale + teacher + h.data * 0.25)


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_compile_step_matches_eager(opt):
    model = _Net()
    ref = copy.deepcopy(model)
    cls = {"sgd": (ember.optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
           "adamw": (ember.optim.AdamW, torch.optim.AdamW, dict(lr=1e-2, eps=1e-6))}[opt]
    o, ro = cls[0](model.parameters(), **cls[2]), cls[1](ref.parameters(), **cls[2])
    step = ember.compile_step(model, F.cross_entropy, o)
    for _ in range(2):
        x, y = torch.randn(5, 6), torch.randint(0, 4, (5,))
        loss = step(x, y)
        ro.zero_grad()
        ref_loss = F.cross_entropy(ref(x), y)
        ref_loss.backward()
        ro.step()
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-5, atol=1e-6)
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_markers_survive_the_pipeline_and_cost_nothing():
    """The marker reaches autodiff (it is in StaticGraph.graph) but no kernel: the same launches and
    bytes as the program without it, forward and backward."""
    def with_detach(y):
        e = y.exp()
        return e * 0.5 + e.detach()

    def without(y):
        e = y.exp()
        return e * 0.5 + e

    y = torch.randn(8, 16)
    a, b = ember.trace(with_detach, y), ember.trace(without, y)
    assert "stop_gradient" in [n.op for n in a.graph.nodes]
    assert a.num_kernels == b.num_kernels == 1
    plan_a, plan_b = a.compiled.plan, b.compiled.plan
    assert [s.ops for s in plan_a.launches] == [s.ops for s in plan_b.launches]
    assert [(s.shape, s.dtype) for s in plan_a.bufs] == [(s.shape, s.dtype) for s in plan_b.bufs]
    yg = y.clone().requires_grad_()
    ag = a._differentiable([yg])
    assert all("stop_gradient" not in s.ops for s in ag.forward.kernels + ag.backward.kernels)
    bg = b._differentiable([yg])
    assert ag.forward.num_kernels <= bg.forward.num_kernels
    assert sum(math_bytes(s) for s in ag.forward.plan.bufs) <= sum(math_bytes(s) for s in bg.forward.plan.bufs)


def math_bytes(spec) -> int:
    n = 1
    for s in spec.shape:
        n *= s
    return n * spec.dtype.itemsize


def test_ir_autodiff_of_the_markers():
    g = Graph()
    x, y = g.add_input(TensorType((3,), torch.float32), "x"), g.add_input(TensorType((3,), torch.float32), "y")
    s = g.add("stop_gradient", [x])
    u = g.add("untracked_update", [g.add("mul", [y, y]), y])   # value y*y, gradient passed to y as is
    g.set_outputs([g.add("sum", [g.add("mul", [g.add("mul", [s, x]), u])], dims=(0,), keepdim=False)])
    xs, ys = torch.randn(3), torch.randn(3)
    out, gx, gy = evaluate(grad_graph(g, [0, 1]), xs, ys)
    torch.testing.assert_close(out, (xs * xs * ys * ys).sum())
    torch.testing.assert_close(gx, xs * ys * ys)        # d/dx of (stop(x) * x) * u
    torch.testing.assert_close(gy, xs * xs)             # through untracked_update: identity
    stripped = strip_gradient_markers(g)
    assert not {"stop_gradient", "untracked_update"} & {n.op for n in stripped.nodes}
    torch.testing.assert_close(evaluate(stripped, xs, ys)[0], out)


# Ops torch cannot differentiate (their backward raises) whose decompositions could: `no_derivative`
# makes ember raise as eager does instead of returning the decomposition's silent zero gradient.
UNDERIVABLE = {
    "heaviside": lambda w, v: torch.heaviside(w, v),
    "floor_divide": lambda w, v: torch.floor_divide(w, v.abs() + 0.5),
    "_chunk_cat": lambda w, v: torch._chunk_cat([w, v], 0, 2).sum(0),
}


@pytest.mark.parametrize("name", list(UNDERIVABLE))
def test_a_gradient_through_an_op_torch_cannot_differentiate_raises_like_eager(name):
    op = UNDERIVABLE[name]
    w, v = torch.randn(6), torch.randn(6)
    w[0] = 0.0  # heaviside's `values` branch
    f = lambda w, v: (op(w, v) * 2 + w).sum()  # noqa: E731
    with torch.no_grad():
        torch.testing.assert_close(ember.compile(f)(w, v), f(w, v))  # values are unchanged
    for wrt in (0, 1):
        args = [w.clone(), v.clone()]
        args[wrt].requires_grad_()
        with pytest.raises(RuntimeError, match=f"derivative for aten::{name} is not implemented"):
            f(*args).backward()
        with pytest.raises(RuntimeError, match=f"derivative for aten::{name} is not implemented"):
            ember.compile(f)(*args).backward()
    # a gradient that does not pass through it is fine, in both
    x, ref = torch.randn(6, requires_grad=True), None
    g = lambda x, w, v: (op(w, v) * x).sum()  # noqa: E731
    ember.compile(g)(x, w, v).backward()
    ref = x.detach().clone().requires_grad_()
    g(ref, w, v).backward()
    torch.testing.assert_close(x.grad, ref.grad)


def test_compile_step_raises_where_eager_backward_raises():
    model = nn.Linear(4, 4)
    loss_fn = lambda out, y: (torch.heaviside(out, y) + out).sum()  # noqa: E731
    x, y = torch.randn(3, 4), torch.randn(3, 4)
    with pytest.raises(RuntimeError, match="derivative for aten::heaviside is not implemented"):
        loss_fn(model(x), y).backward()
    step = ember.compile_step(model, loss_fn, ember.optim.SGD(model.parameters(), lr=0.1))
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="derivative for aten::heaviside is not implemented"):
        step(x, y)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))
