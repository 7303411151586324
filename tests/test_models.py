"""Whole models through ember.compile against eager, forward (gradients: test_autograd.py, test_train.py)."""

import torch
import torch.nn as nn
from models import MLP, TransformerBlock
from testing import assert_close, assert_matches

import ember


def Block():
    return TransformerBlock(16, 2, 4, causal=True)


def test_mlp_matches_eager():
    m = MLP().requires_grad_(False)
    assert_matches(m, torch.randn(5, 8), rtol=1e-4, atol=1e-5)


def test_transformer_block_matches_eager():
    m = Block().eval().requires_grad_(False)
    x = torch.randn(2, 6, 16)
    cf = assert_matches(m, x, rtol=1e-4, atol=1e-4)
    assert_matches(m, x, causal=False, rtol=1e-4, atol=1e-4)
    sg = cf.graphs[0]
    ops = {n.op for n in sg.graph.nodes}
    assert {"matmul", "amax", "exp", "gelu", "rsqrt"} <= ops, ops


def test_transformer_block_half():
    m = Block().eval().requires_grad_(False).half()
    assert_matches(m, torch.randn(1, 4, 16, dtype=torch.float16), rtol=2e-2, atol=2e-2)


def test_parameter_updates_reach_a_compiled_model():
    m = MLP().requires_grad_(False)
    cf = ember.compile(m)
    x = torch.randn(3, 8)
    assert_close(cf(x), m(x), rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(-0.5)
    assert_close(cf(x), m(x), rtol=1e-4, atol=1e-5)
    m.fc1.weight = nn.Parameter(torch.randn(16, 8), requires_grad=False)  # replaced, same signature
    assert_close(cf(x), m(x), rtol=1e-4, atol=1e-5)
    assert len(cf.cache) == 1


def test_small_cnn_style_model_with_batchnorm_in_train_mode():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.bn = nn.Linear(6, 6), nn.BatchNorm1d(6)

        def forward(self, x):
            return torch.log_softmax(self.bn(self.lin(x)).relu(), -1)

    m, ref = Net().requires_grad_(False), Net().requires_grad_(False)
    ref.load_state_dict(m.state_dict())
    x = torch.randn(10, 6)
    cf = ember.compile(m)
    with torch.no_grad():
        assert_close(cf(x), ref(x), rtol=1e-4, atol=1e-5)
    assert_close(m.state_dict(), ref.state_dict(), rtol=1e-5, atol=1e-6)


def test_conv_net_runs_without_torch_calls():
    """The convolution is ember's kernel (ir/ops/conv.py), eval batch norm and relu its epilogue."""
    m = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                      nn.Linear(4, 2)).requires_grad_(False).eval()
    cf = assert_matches(m, torch.randn(2, 3, 6, 6), rtol=1e-4, atol=1e-5)
    assert cf.graphs[0].unsupported() == {}
