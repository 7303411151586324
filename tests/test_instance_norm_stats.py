"""InstanceNorm with running statistics through capture's rewrite (frontend/decompositions.py
`instance_norm`, called by frontend/capture_mode.py in place of torch's C++ composite): train mode is the
row kernel (output and per-(n, c) statistics) plus one kernel updating running_mean and running_var (a
mean over N of the row kernel's statistics: a reduction across rows that the row kernel only makes
when it reduces to one element); eval mode is one pointwise kernel. Values, running statistics and
gradients against eager on fresh random inputs, float32 and float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_norm_pool import GRAD_TOL, TOL, kernels
from torch import nn

import ember

CLASSES = [(nn.InstanceNorm1d, (3, 4, 7)), (nn.InstanceNorm2d, (2, 3, 5, 4)), (nn.InstanceNorm3d, (2, 3, 2, 3, 2))]
# float64: both sides compute in float64, summing in other orders over at most a few hundred elements
TOL = {**TOL, torch.float64: dict(rtol=1e-10, atol=1e-12)}
GRAD_TOL = {**GRAD_TOL, torch.float64: dict(rtol=1e-9, atol=1e-11)}


def _randomized(m: nn.Module) -> nn.Module:
    """Random affine parameters and running statistics (not the initial ones and zeros, which
    simplification could erase and which would hide a swapped mean and variance)."""
    with torch.no_grad():
        for name, t in [*m.named_parameters(), *m.named_buffers()]:
            if name == "running_var":
                t.uniform_(0.5, 2.0)
            elif t.is_floating_point():
                t.normal_()
    return m


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("cls,shape", CLASSES)
def test_kernel_counts(cls, shape, affine):
    # before: 6 launches both ways (torch's composite repeats the running statistics per sample, runs
    # batch norm over the copies and averages them back)
    m = _randomized(cls(shape[1], affine=affine, track_running_stats=True, momentum=0.3))
    x = torch.randn(shape)
    assert kernels(m, x) == 2
    assert kernels(m.eval(), x) == 1
    rm, rv = torch.randn(shape[1]), torch.rand(shape[1]) + 0.5
    assert kernels(lambda x, rm, rv: F.instance_norm(x, rm, rv, use_input_stats=True, momentum=0.2), x, rm, rv) == 2
    assert kernels(lambda x, rm, rv: F.instance_norm(x, rm, rv, use_input_stats=False), x, rm, rv) == 1


def _grads(out: torch.Tensor, leaves: list[torch.Tensor], cot: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(out, leaves, cot))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("cls,shape", CLASSES)
def test_module_train_then_eval_matches_eager(cls, shape, affine, dtype):
    """Three training steps (outputs, input and parameter gradients, running statistics after each),
    then eval mode (normalized by the statistics ember's steps accumulated), as eager."""
    ours = _randomized(cls(shape[1], affine=affine, track_running_stats=True, momentum=0.3)).to(dtype)
    ref = cls(shape[1], affine=affine, track_running_stats=True, momentum=0.3).to(dtype)
    ref.load_state_dict(ours.state_dict())
    compiled = ember.compile(ours)
    for train in (True, True, True, False):
        ours.train(train)
        ref.train(train)
        x = torch.randn(shape, dtype=dtype) * 2 + torch.randn(shape[1], *[1] * (len(shape) - 2), dtype=dtype)
        xo, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        out, want = compiled(xo), ref(xr)
        torch.testing.assert_close(out, want, **TOL[dtype])
        cot = torch.randn_like(want)
        got, exp = _grads(out, [xo, *ours.parameters()], cot), _grads(want, [xr, *ref.parameters()], cot)
        for g, e in zip(got, exp):
            torch.testing.assert_close(g, e, **GRAD_TOL[dtype])
        torch.testing.assert_close(ours.running_mean, ref.running_mean, **TOL[dtype])
        torch.testing.assert_close(ours.running_var, ref.running_var, **TOL[dtype])
        assert ours.num_batches_tracked == ref.num_batches_tracked


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_functional_matches_eager(dtype):
    """`F.instance_norm` with running statistics as graph inputs: updated in place with
    use_input_stats=True (any momentum), read with use_input_stats=False; and under no_grad."""
    shape, c = (3, 4, 6, 5), 4
    x, w, b = torch.randn(shape, dtype=dtype) * 3 + 1, torch.randn(c, dtype=dtype), torch.randn(c, dtype=dtype)
    stats = torch.randn(c, dtype=dtype), torch.rand(c, dtype=dtype) + 0.5

    def train(x, rm, rv, w, b):
        return F.instance_norm(x, rm, rv, w, b, use_input_stats=True, momentum=0.7, eps=1e-3)

    def evaluate(x, rm, rv, w, b):
        return F.instance_norm(x, rm, rv, w, b, use_input_stats=False, eps=1e-3)

    for fn in (train, evaluate):
        ours, ref = [t.clone() for t in stats], [t.clone() for t in stats]
        xo, wo, bo = (t.clone().requires_grad_() for t in (x, w, b))
        xr, wr, br = (t.clone().requires_grad_() for t in (x, w, b))
        out, want = ember.compile(fn)(xo, *ours, wo, bo), fn(xr, *ref, wr, br)
        torch.testing.assert_close(out, want, **TOL[dtype])
        for o, r, s in zip(ours, ref, stats):
            torch.testing.assert_close(o, r, **TOL[dtype])
            assert (fn is train) != torch.equal(o, s)  # updated in train mode only
        cot = torch.randn_like(want)
        for g, e in zip(_grads(out, [xo, wo, bo], cot), _grads(want, [xr, wr, br], cot)):
            torch.testing.assert_close(g, e, **GRAD_TOL[dtype])
        with torch.no_grad():
            out, want = ember.compile(fn)(x, *ours, w, b), fn(x, *ref, w, b)
        assert not out.requires_grad
        torch.testing.assert_close(out, want, **TOL[dtype])
        for o, r in zip(ours, ref):
            torch.testing.assert_close(o, r, **TOL[dtype])


def test_one_running_statistic_without_the_other_is_refused_as_eager():
    x, rm = torch.randn(2, 3, 4), torch.zeros(3)
    with pytest.raises(ValueError, match="both be None or neither"):
        F.instance_norm(x, rm, None)
    with pytest.raises(ValueError, match="both be None or neither"):
        ember.compile(lambda x, rm: F.instance_norm(x, rm, None))(x, rm)
