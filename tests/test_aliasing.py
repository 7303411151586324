"""Inputs that share memory, and programs that update their inputs in place, against eager PyTorch
(ember.compile / ember.trace; see frontend/aliasing.py)."""

import copy
import logging

import pytest
import torch

import ember
from ember.frontend.capture import CaptureError


def _check(fn, base, views):
    """`fn(*views(base))` under ember.compile and eager: same result, same final memory."""
    eager_base, ember_base = base.clone(), base.clone()
    expected = fn(*views(eager_base))
    got = ember.compile(fn)(*views(ember_base))
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(ember_base, eager_base)


def _add_then_read(x, y):
    x.add_(1)
    return x + y


def test_same_tensor_twice_with_an_inplace_write():
    _check(_add_then_read, torch.randn(5), lambda t: (t, t))


def test_overlapping_views_with_an_inplace_write():
    _check(_add_then_read, torch.randn(6), lambda t: (t[:4], t[2:]))
    _check(lambda x, y: (x.mul_(2), y.sum() * x)[1], torch.randn(4, 4), lambda t: (t, t.t()))


def test_mutation_through_a_view_input_of_the_other_input():
    def f(x, row):
        row.mul_(3)
        return x.sum(0), row + 1
    _check(f, torch.randn(3, 4), lambda t: (t, t[1]))


def test_aliased_mutation_runs_eagerly_with_a_logged_reason(caplog):
    t = torch.randn(5)
    c = ember.compile(_add_then_read)
    with caplog.at_level(logging.WARNING, logger="ember"):
        c(t, t)
    assert any("x and y share memory" in r.getMessage() and "eagerly" in r.getMessage() for r in caplog.records)
    assert "runs eagerly: x and y share memory" in c.guard_report()


def test_disjoint_views_of_one_storage_stay_compiled():
    t = torch.randn(6)
    r = t.clone()
    c = ember.compile(_add_then_read)
    out = c(t[:3], t[3:])
    torch.testing.assert_close(out, _add_then_read(r[:3], r[3:]))
    torch.testing.assert_close(t, r)
    assert c.graphs[0].eager_reason is None


def test_a_trace_of_f_t_t_is_not_reused_for_distinct_inputs():
    # the trace of f(t, t) reads one placeholder for both inputs: it must not serve f(a, b)
    def f(x, y):
        return x * 2 + y
    c = ember.compile(f)
    t = torch.randn(3)
    torch.testing.assert_close(c(t, t), f(t, t))
    a, b = torch.randn(3), torch.randn(3)
    torch.testing.assert_close(c(a, b), f(a, b))
    assert c.recompile_reasons == ["inputs sharing memory changed: x and y -> none"]
    torch.testing.assert_close(c(b, b), f(b, b))  # back to the first graph, no new trace
    assert c.num_recompiles == 1 and len(c.graphs) == 2


def test_static_graph_refuses_a_call_with_different_aliasing():
    t = torch.randn(3)
    sg = ember.trace(lambda x, y: x * 2 + y, t, t)
    with pytest.raises(ValueError, match="x and y share memory"):
        sg(torch.randn(3), torch.randn(3))


def test_read_only_aliasing_stays_compiled():
    x = torch.randn(4, 8)
    attn = lambda q, k, v: torch.softmax(q @ k.t(), -1) @ v  # noqa: E731
    c = ember.compile(attn)
    torch.testing.assert_close(c(x, x, x), attn(x, x, x), rtol=1e-5, atol=1e-5)
    assert c.graphs[0].eager_reason is None and c.graphs[0].num_kernels > 0


class _Accumulate(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("total", torch.randn(3))

    def forward(self, x):
        self.total.add_(x)
        return self.total * x


def test_buffer_passed_as_an_input_of_its_own_module():
    m = _Accumulate()
    ref = copy.deepcopy(m)
    c = ember.compile(m)
    torch.testing.assert_close(c(m.total), ref(ref.total))
    torch.testing.assert_close(m.total, ref.total)
    x = torch.randn(3)
    torch.testing.assert_close(c(x), ref(x))  # distinct input: compiled again, still right
    torch.testing.assert_close(m.total, ref.total)
    assert "x and parameter/buffer total" in c.recompile_reasons[0]


# -- in-place updates and autograd -------------------------------------------------------------


def test_inplace_on_a_leaf_that_requires_grad_raises_like_eager():
    f = lambda x: x.mul_(2)  # noqa: E731
    w = torch.randn(3, requires_grad=True)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place"):
        f(w)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place"):
        ember.compile(f)(w)
    before = w.detach().clone()
    with torch.no_grad():  # allowed in eager, and in ember
        out = ember.compile(f)(w)
    assert out is w
    torch.testing.assert_close(w.detach(), before * 2)


def test_inplace_on_a_parameter_in_forward_raises_like_eager():
    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.randn(3))

        def forward(self, x):
            self.w.add_(x)
            return self.w.sum()
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad"):
        M()(torch.randn(3))
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad"):
        ember.compile(M())(torch.randn(3))


def _scale_then_square(x):
    x.mul_(2)
    return (x * x).sum()


def test_inplace_on_a_non_leaf_that_requires_grad_gives_eager_gradients():
    w0 = torch.randn(5)
    grads = []
    for fn in (_scale_then_square, ember.compile(_scale_then_square)):
        w = w0.clone().requires_grad_()
        x = w * 1.5
        out = fn(x)
        # the caller keeps using x after the call: its history must include the update
        (out + (x * torch.arange(5.0)).sum()).backward()
        grads.append((out.detach(), x.detach(), w.grad))
    for got, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, expected)


def test_inplace_on_a_view_of_a_non_leaf_gives_eager_gradients():
    def f(x):
        x.mul_(3)
        return x.sin().sum(), x.t()
    p0 = torch.randn(2, 3)
    grads = []
    for fn in (f, ember.compile(f)):
        p = p0.clone().requires_grad_()
        base = p * 2
        out, row = fn(base[0])  # the update goes through autograd's view handling (CopySlices)
        (out + (base ** 2).sum() + (row * torch.arange(3.0)).sum()).backward()
        grads.append(p.grad)
    torch.testing.assert_close(grads[1], grads[0])


def test_an_input_updated_in_place_and_read_by_the_backward():
    # the backward needs x's value from before the update: ember saves a copy
    def f(x, w):
        y = x * w
        x.add_(1)
        return y.sum()
    x0, w = torch.randn(4), torch.randn(4, requires_grad=True)
    x = x0.clone()
    ember.compile(f)(x, w).backward()
    torch.testing.assert_close(w.grad, x0)
    torch.testing.assert_close(x, x0 + 1)


# -- in-place changes of an input's shape -------------------------------------------------------


@pytest.mark.parametrize("fn, op", [
    (lambda x: x.t_(), "t_"),
    (lambda x: x.transpose_(0, 1) * 2, "t_/transpose_"),
    (lambda x: x.unsqueeze_(0), "unsqueeze_"),
    (lambda x: x.resize_(6), "resize_"),
])
def test_inplace_shape_change_of_an_input_is_refused(fn, op):
    x = torch.randn(2, 3)
    with pytest.raises(CaptureError, match=f"shape or strides of x in place .*{op.split('/')[0]}"):
        ember.compile(fn)(x)
    assert x.shape == (2, 3)


def test_inplace_shape_change_of_an_intermediate_is_fine():
    def f(x):
        y = x + 1
        y.t_()
        return y * 2
    x = torch.randn(2, 3)
    torch.testing.assert_close(ember.compile(f)(x), f(x))


def _rescale_under_no_grad(x, w):
    with torch.no_grad():  # eager autograd does not record this update
        w.mul_(0.5)
    return (x * w).sum()


def test_inplace_on_a_leaf_under_no_grad_inside_the_program_is_allowed_like_eager():
    x, w0 = torch.randn(4), torch.randn(4)
    results = []
    for fn in (_rescale_under_no_grad, ember.compile(_rescale_under_no_grad)):
        w = w0.clone().requires_grad_()
        fn(x, w).backward()
        results.append((w.detach(), w.grad, w.is_leaf))
    for got, expected in zip(results[1], results[0]):
        torch.testing.assert_close(got, expected)


def test_untracked_update_of_a_non_leaf_keeps_its_history_like_eager():
    x, w0 = torch.randn(4), torch.randn(4)
    grads = []
    for fn in (_rescale_under_no_grad, ember.compile(_rescale_under_no_grad)):
        p = w0.clone().requires_grad_()
        w = p * 3  # non-leaf: eager keeps w's grad_fn through the no_grad update
        out = fn(x, w)
        (out + (w * w).sum()).backward()
        grads.append((out.detach(), w.detach(), p.grad))
    for got, expected in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, expected)


def _update_from_w(x, w):
    x.add_(w * 2)
    x[1:].mul_(w[:-1])
    return (x * 3).sum()


def test_input_updated_from_a_value_that_requires_grad_takes_its_history_like_eager():
    # eager: x (no grad) updated in place from w (requires grad) now carries w's history, so a loss that
    # reads x after the call reaches w
    x0, w0 = torch.randn(5), torch.randn(5)
    grads = []
    for fn in (_update_from_w, ember.compile(_update_from_w)):
        x, w = x0.clone(), w0.clone().requires_grad_()
        out = fn(x, w)
        assert x.requires_grad
        (out + (x ** 2).sum()).backward()
        grads.append((x.detach(), w.grad))
    torch.testing.assert_close(grads[1], grads[0])


def test_running_statistics_never_take_a_gradient_history():
    m = torch.nn.BatchNorm1d(4).train()
    ref = copy.deepcopy(m)
    x = torch.randn(8, 4)
    ember.compile(m)(x.clone().requires_grad_()).sum().backward()
    ref(x.clone().requires_grad_()).sum().backward()
    assert not m.running_mean.requires_grad and not m.running_var.requires_grad
    torch.testing.assert_close(m.running_mean, ref.running_mean)
    torch.testing.assert_close(m.running_var, ref.running_var)


def _update_then_rescale_under_no_grad(x, w):
    w.add_(1.0)  # recorded by autograd: eager raises here for a leaf that requires grad
    with torch.no_grad():
        w.mul_(0.5)
    return (x * w).sum()


def test_a_recorded_update_followed_by_an_untracked_one_still_raises_like_eager():
    x = torch.randn(4)
    for fn in (_update_then_rescale_under_no_grad, ember.compile(_update_then_rescale_under_no_grad)):
        with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place"):
            fn(x, torch.randn(4, requires_grad=True))
