"""InstanceNorm as one row kernel forward (frontend/decompositions.py `instance_norm`, called by capture in
place of torch's C++ composite, frontend/capture_mode.py): kernel counts from the schedule, values and
gradients against eager, and running statistics (tests/test_instance_norm_stats.py has more) still right."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_norm_pool import DTYPES, check, kernels
from torch import nn

import ember


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("cls,shape", [(nn.InstanceNorm1d, (2, 4, 7)), (nn.InstanceNorm2d, (2, 4, 5, 3)),
                                       (nn.InstanceNorm3d, (2, 3, 2, 3, 2))])
def test_instance_norm_forward_is_one_kernel(cls, shape, affine):
    # before: 3 launches with an affine (torch's composite repeats weight and bias per sample with
    # expand + clone, a copy kernel each, then the row kernel); eager runs 1
    m = cls(shape[1], affine=affine)
    if affine:  # not the initial ones and zeros, which simplification could erase
        with torch.no_grad():
            m.weight.normal_()
            m.bias.normal_()
    assert kernels(m, torch.randn(shape)) == 1
    assert kernels(lambda x, w, b: F.instance_norm(x, weight=w, bias=b), torch.randn(shape),
                   torch.randn(shape[1]), torch.randn(shape[1])) == 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 4, 5, 3), (3, 6, 9), (1, 2, 3, 2, 2)])
def test_instance_norm_matches_eager(dtype, shape):
    c = shape[1]
    x = torch.randn(*shape, dtype=dtype) * 3 + 1
    w, b = torch.randn(c, dtype=dtype), torch.randn(c, dtype=dtype)
    check(lambda x, w, b: F.instance_norm(x, weight=w, bias=b, eps=1e-3), x, w, b, dtype=dtype)
    check(lambda x, w: F.instance_norm(x, weight=w), x, w, dtype=dtype)
    check(lambda x: F.instance_norm(x), x, dtype=dtype)


def test_instance_norm_module_and_no_grad():
    m = nn.InstanceNorm2d(4, affine=True)
    with torch.no_grad():
        m.weight.normal_()
        m.bias.normal_()
    x = torch.randn(2, 4, 3, 5)
    check(m, x)
    with torch.no_grad():
        out = ember.compile(m)(x)
    assert not out.requires_grad
    torch.testing.assert_close(out, m(x))


@pytest.mark.parametrize("affine", [True, False])
def test_running_statistics(affine):
    """train mode updates running_mean/var in place (torch's composite: per sample copies averaged),
    eval mode normalizes by them: both as eager, values, statistics and gradients."""
    ours, ref = (nn.InstanceNorm2d(3, affine=affine, track_running_stats=True, momentum=0.3) for _ in range(2))
    ref.load_state_dict(ours.state_dict())
    compiled = ember.compile(ours)
    for _ in range(2):
        x = torch.randn(2, 3, 4, 4) * 2 + 1
        xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, want = compiled(xo), ref(xr)
        torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)
        ct = torch.randn_like(want)
        (go,), (gr,) = torch.autograd.grad(out, [xo], ct), torch.autograd.grad(want, [xr], ct)
        torch.testing.assert_close(go, gr, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(ours.running_mean, ref.running_mean)
        torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval()
    ref.eval()
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(compiled(x), ref(x), rtol=1e-5, atol=1e-5)


def test_spatial_size_one_is_refused_as_eager():
    x = torch.randn(2, 3, 1)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        F.instance_norm(x)
    with pytest.raises(ValueError, match="more than 1 spatial element"):
        ember.compile(lambda x: F.instance_norm(x))(x)


@pytest.mark.parametrize("mode", ["dynamo", "eager"])
def test_other_modes(mode):
    """Dynamo and eager mode see torch's composite (below the C++ call capture replaces): still right."""
    x, w, b = torch.randn(2, 4, 3, 3), torch.randn(4), torch.randn(4)
    check(lambda x, w, b: F.instance_norm(x, weight=w, bias=b), x, w, b, mode=mode)


@pytest.mark.parametrize("norm", ["instance", "group"])
def test_half_weight_and_bias_gradients_round_once(norm):
    """A bfloat16 weight's gradient is a float32 sum rounded once (ir/vjp.py `unbroadcast`), as
    torch's norm backward kernels do: within half an ulp of the float64 gradient, plus float32's own
    error on the sum (2^-20 of the sum of the terms' magnitudes). Rounding each term first put
    instance_norm's weight gradient up to 1.2 ulps off."""
    n, c, groups = 4, 8, (8 if norm == "instance" else 4)
    x = torch.randn(n, c, 6, 5, dtype=torch.bfloat16) * 3 + 1
    w, b = torch.randn(c, dtype=torch.bfloat16), torch.randn(c, dtype=torch.bfloat16)
    fn = lambda x, w, b: F.group_norm(x, groups, w, b)  # noqa: E731
    if norm == "instance":
        fn = lambda x, w, b: F.instance_norm(x, weight=w, bias=b)  # noqa: E731
    ours = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    wide = [t.detach().double().requires_grad_() for t in (x, w, b)]
    ct = torch.randn(x.shape, dtype=torch.bfloat16)
    got = torch.autograd.grad(ember.compile(fn)(*ours), ours[1:], ct)
    exact = torch.autograd.grad(fn(*wide), wide[1:], ct.double())
    xg = wide[0].detach().reshape(n, groups, -1)
    xhat = ((xg - xg.mean(-1, keepdim=True)) / xg.std(-1, unbiased=False, keepdim=True)).reshape(x.shape)
    terms = [(ct.double() * xhat).abs(), ct.double().abs()]  # d/dw and d/db, per element
    for g, e, t in zip(got, exact, terms):
        ulp = torch.pow(2.0, torch.floor(torch.log2(e.abs())) - 7)  # bfloat16: 8 significant bits
        bound = 0.5 * ulp + 2.0**-20 * t.sum((0, 2, 3))
        assert ((g.double() - e).abs() <= bound).all(), ((g.double() - e) / ulp)
