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
    # eager's RuntimeError, as a user's error (the one-hot lowering tells torch.gather from a loss's
    # target, IndexError, by the user's call: frontend/lower_reduction.py)
    for fn in (pick, ember.compile(pick)):
        with pytest.raises(RuntimeError) as info:
            fn(x, i)
        assert not isinstance(info.value, IndexError)
    with pytest.raises(IndexError, match="at .*test_index_checks.py"):  # a target: eager's IndexError
        ember.compile(lambda x, t: F.nll_loss(x, t))(x, torch.tensor([0, 1, 4, 2, 3]))
    # label smoothing's decomposition is re-traced (frontend/refunctionalize.py): the user's call,
    # kept on the nodes, still tells the gather from the target
    both = lambda x, i: (F.cross_entropy(x, i[:, 0] % 4, label_smoothing=0.1), pick(x, i))  # noqa: E731
    with pytest.raises(RuntimeError) as info:
        ember.compile(both)(x, i)
    assert not isinstance(info.value, IndexError)


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


def test_indices_into_an_empty_table_raise_eagers_runtime_error():
    """Found by benchmarks/fuzz.py (finding 12 in the fuzz notes): eager's embedding / index_select
    refuse indices into an empty dim before reading them (RuntimeError); ember's kernel flagged
    them as out of range (IndexError)."""
    w = torch.randn(0, 3)
    for f in (lambda w: F.embedding(torch.tensor([0]), w), lambda w: w.index_select(0, torch.tensor([0]))):
        for fn in (f, ember.compile(f)):
            with pytest.raises(RuntimeError, match="axis dim should be positive") as info:
                fn(w)
            assert not isinstance(info.value, IndexError)
    assert ember.compile(lambda w: F.embedding(torch.tensor([], dtype=torch.long), w))(w).shape == (0, 3)
