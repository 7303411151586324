"""LayerNorm with a half-precision weight and bias: their float32 converts are computed in the row kernel
on its broadcast tile loads (passes/fusion.py `_row_member`), so the forward is one launch, not three
(two converts, then the row kernel); the backward launches no more kernels than before (2)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_norm_pool import check

import ember
from ember.api.static import StaticGraph
from ember.passes.autodiff import forward_backward
from ember.runtime.driver import compile_ir

TOL = {torch.float16: dict(rtol=2e-3, atol=2e-3), torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}


def _ln(x, w, b):
    return F.layer_norm(x, (x.shape[-1],), w, b)


def _schedules(dtype: torch.dtype, target: str) -> list:
    args = [torch.empty(s, dtype=dtype, device="meta") for s in ((64, 768), (768,), (768,))]
    with torch.no_grad():
        sg = StaticGraph(_ln, tuple(args), {})
    part = forward_backward(sg.graph, [0, 1, 2], [0])
    return [compile_ir(g).schedule_for(torch.device(target)) for g in (part.forward, part.backward)]


@pytest.mark.parametrize("target", ["cuda", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_one_launch_forward_and_no_more_backward(dtype, target):
    fwd, bwd = _schedules(dtype, target)
    assert [e.kind for e in fwd.kernels] == ["row"], [e.ops for e in fwd.kernels]
    assert fwd.kernels[0].ops.count("convert") == 4  # x, weight and bias in, the result out
    assert len(bwd.kernels) == 2, [e.ops for e in bwd.kernels]
    # the weight and bias are read once per sweep of the row kernel: [768] halves, not [64, 768]
    assert fwd.kernels[0].cost.bytes_read <= 2 * (64 * 768 + 2 * 2 * 768) * dtype.itemsize


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_values_and_gradients_match_eager(dtype):
    x = torch.randn(6, 40).to(dtype)
    w, b = (torch.randn(40) * 0.5 + 1).to(dtype), torch.randn(40).to(dtype)
    # values and gradients against eager; where they differ past the dtype's tolerance, ember must be as
    # close as eager to float64 (test_norm_pool.check): torch's CPU half backward rounds each term of the
    # weight and bias sums, ember sums in float32 and rounds once (bfloat16, 41 seeds: ember nearer float64
    # in every gradient, eager up to 0.06 away from ember)
    check(_ln, x, w, b, dtype=dtype)
    with torch.no_grad():
        sg = ember.trace(_ln, x, w, b)
        torch.testing.assert_close(sg(x, w, b), _ln(x, w, b), **TOL[dtype])
    assert sg.num_kernels == 1, [k.ops for k in sg.kernels]
