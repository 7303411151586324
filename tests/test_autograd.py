"""Static mode in PyTorch autograd: `ember.compile`d functions and modules return tensors whose
backward runs ember's own IR autodiff (compiled forward/backward graphs), and `loss.backward()` fills
`.grad` as eager would. Losses are checked forward and backward for every reduction mode."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ember


def grads_match(fn, *args, rtol=1e-4, atol=1e-5):
    """Compile `fn`, run forward and backward on clones of `args`, compare with eager."""
    ref_args = [a.detach().clone().requires_grad_(a.requires_grad) for a in args]
    out = ember.compile(fn)(*args)
    ref = fn(*ref_args)
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    seed = torch.randn_like(ref)
    (out * seed).sum().backward()
    (ref * seed).sum().backward()
    for a, r in zip(args, ref_args):
        if a.requires_grad:
            torch.testing.assert_close(a.grad, r.grad, rtol=rtol, atol=atol)
    return out


def test_module_gradients_fill_parameters_and_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.LayerNorm(16), nn.Linear(16, 3))
    ref = copy.deepcopy(model)
    x = torch.randn(5, 8, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    y = torch.randint(0, 3, (5,))
    loss = F.cross_entropy(ember.compile(model)(x), y)
    loss.backward()
    F.cross_entropy(ref(xr), y).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-6)


def test_no_grad_and_eval_compile_an_inference_graph():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.ReLU()).eval()
    cf = ember.compile(model)
    x = torch.randn(2, 4)
    with torch.no_grad():
        out = cf(x)
    assert not out.requires_grad
    sg = next(iter(cf.graphs)) if hasattr(cf, "graphs") else None
    assert sg is None or not sg._autograd  # nothing differentiated, nothing saved
    torch.testing.assert_close(out, model(x).detach())


def test_double_backward_is_refused():
    x = torch.randn(4, requires_grad=True)
    out = ember.compile(lambda x: (x.sin() * x).sum())(x)
    # raised where the second-order graph is asked for: a first gradient without history would
    # silently drop second-order terms (gradient penalties); tests/test_aliasing.py has more
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out, x, create_graph=True)


def test_gradient_through_a_torch_fallback_without_a_derivative_names_the_op():
    """Torch fallbacks differentiate with torch's derivative (tests/test_extern_vjp.py); an op torch
    cannot differentiate either raises naming it."""
    x = torch.randn(3, 4, requires_grad=True)
    grads_match(lambda x: torch.cumsum(x, 1), x)
    with pytest.raises(NotImplementedError, match=r"igamma.*no derivative"):
        ember.compile(lambda x: torch.igamma(x.abs() + 1, torch.ones(3, 4)).sum())(x)


def test_outputs_that_do_not_reach_the_loss_and_integer_outputs():
    x = torch.randn(3, 5, requires_grad=True)
    out, idx, other = ember.compile(lambda x: (x.softmax(-1), x.argmax(-1), x.exp()))(x)
    assert not idx.requires_grad
    out[:, 0].sum().backward()
    xr = x.detach().clone().requires_grad_()
    xr.softmax(-1)[:, 0].sum().backward()
    torch.testing.assert_close(x.grad, xr.grad)


R = ("none", "mean", "sum")


@pytest.mark.parametrize("reduction", R)
def test_regression_losses(reduction):
    x, y = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5)
    for loss in (F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss):
        x.grad = None
        grads_match(lambda a, b: loss(a, b, reduction=reduction), x, y)
    x.grad = None
    grads_match(lambda a, b: F.smooth_l1_loss(a, b, reduction=reduction, beta=0.5), x, y)


@pytest.mark.parametrize("reduction", R)
def test_binary_losses(reduction):
    logits = torch.randn(7, 3, requires_grad=True)
    target = torch.rand(7, 3)
    grads_match(lambda a, t: F.binary_cross_entropy_with_logits(a, t, reduction=reduction), logits, target)
    probs = torch.rand(7, 3).clamp(0.05, 0.95).requires_grad_()
    grads_match(lambda p, t: F.binary_cross_entropy(p, t, reduction=reduction), probs, target)


@pytest.mark.parametrize("reduction", R)
def test_classification_losses(reduction):
    logits = torch.randn(8, 6, requires_grad=True)
    target = torch.randint(0, 6, (8,))
    target[3] = -100
    probs = torch.softmax(torch.randn(8, 6), -1)
    cases = [
        lambda a: F.cross_entropy(a, target, reduction=reduction),
        lambda a: F.cross_entropy(a, target.clamp(min=0), reduction=reduction, ignore_index=2, label_smoothing=0.1),
        lambda a: F.cross_entropy(a, probs, reduction=reduction),  # class probabilities
        lambda a: F.cross_entropy(a, probs, reduction=reduction, label_smoothing=0.2),
        lambda a: F.nll_loss(F.log_softmax(a, -1), target, reduction=reduction),
    ]
    for case in cases:
        logits.grad = None
        grads_match(case, logits)


def test_cross_entropy_backward_is_one_kernel():
    x, t = torch.randn(8, 32, requires_grad=True), torch.randint(0, 32, (8,))
    cf = ember.compile(lambda x, t: F.cross_entropy(x, t))
    cf(x, t).backward()
    xr = x.detach().clone().requires_grad_()
    F.cross_entropy(xr, t).backward()
    torch.testing.assert_close(x.grad, xr.grad)
    (sg,) = cf.cache.values()
    (ag,) = sg._autograd.values()
    assert ag.forward.num_kernels == 1 and ag.backward.num_kernels == 1, [k.ops for k in ag.backward.kernels]
