"""Indices out of range raise eager's IndexError, never a silent value, and never after the caller's
state has changed: the one-hot target gather of cross-entropy / nll_loss and one-per-row `gather`
(`check_index`, a row kernel's error flag), and a training step whose embedding index is out of range
(the executor reads the flags before the first step that writes a donated parameter)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from testing import assert_matches

import ember

torch.set_num_threads(1)


def _cross_entropy(x, t):
    return F.cross_entropy(x, t, ignore_index=-100)


def test_cross_entropy_in_range_matches_eager_in_one_kernel():
    x, t = torch.randn(6, 7), torch.randint(0, 7, (6,))
    t[2] = -100  # ignore_index is not out of range
    assert_matches(_cross_entropy, x, t)
    assert len(ember.explain(_cross_entropy, x, t).kernels) == 1


@pytest.mark.parametrize("bad", [7, -1, 1000])
def test_cross_entropy_target_out_of_range_raises(bad):
    x, t = torch.randn(6, 7, requires_grad=True), torch.randint(0, 7, (6,))
    t[4] = bad
    with pytest.raises(IndexError):
        _cross_entropy(x, t)
    with pytest.raises(IndexError):
        ember.compile(_cross_entropy)(x, t)


def test_one_per_row_gather_out_of_range_raises():
    def pick(x, i):
        return torch.gather(x, 1, i) * 2
    x = torch.randn(5, 4)
    i = torch.randint(0, 4, (5, 1))
    assert_matches(pick, x, i)
    i[3, 0] = 4
    with pytest.raises(RuntimeError):
        pick(x, i)
    # (IndexError: the one-hot lowering cannot tell this gather from cross-entropy's target, whose
    # eager error it raises; ir/ops/index.py INDEX_ERRORS)
    with pytest.raises(IndexError, match="gather index"):
        ember.compile(pick)(x, i)


def test_general_gather_out_of_range_raises_eagers_runtime_error():
    def pick(x, i):
        return torch.gather(x, 1, i)
    x, i = torch.randn(5, 4), torch.randint(0, 4, (5, 3))
    assert_matches(pick, x, i)
    i[2, 1] = -1
    for fn in (pick, ember.compile(pick)):
        with pytest.raises(RuntimeError):
            fn(x, i)


class _Bag(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, tokens):
        return self.head(self.emb(tokens).mean(1))


def bad_token_step_changes_nothing(device: torch.device) -> None:
    """A compile_step whose batch holds an out-of-range token raises IndexError and leaves parameters
    and optimizer state as they were; the next good step still trains."""
    model = _Bag().to(device)
    opt = ember.optim.AdamW(model.parameters(), lr=1e-2)
    step = ember.compile_step(model, F.cross_entropy, opt)
    x, y = torch.randint(0, 11, (4, 5), device=device), torch.randint(0, 3, (4,), device=device)
    step(x, y)  # one good step: optimizer state exists
    params = copy.deepcopy(model.state_dict())
    state = copy.deepcopy(opt.state_dict())["state"]
    x[1, 2] = 11
    with pytest.raises(IndexError):
        step(x, y)
    for k, v in model.state_dict().items():
        assert torch.equal(v, params[k]), k
    after = opt.state_dict()["state"]
    for k, s in state.items():
        for name, v in s.items():
            assert torch.equal(torch.as_tensor(after[k][name]), torch.as_tensor(v)), (k, name)
    x[1, 2] = 3
    step(x, y)
    assert any(not torch.equal(v, params[k]) for k, v in model.state_dict().items())


def test_training_step_with_bad_token_raises_before_touching_parameters():
    torch.manual_seed(0)
    bad_token_step_changes_nothing(torch.device("cpu"))
