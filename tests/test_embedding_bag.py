"""embedding_bag (modes sum and mean) as ember kernels that train, and searchsorted / bucketize
(frontend/lower_search.py, ir/ops/search.py): values and gradients against eager on fresh inputs."""

import pytest
import torch
import torch.nn.functional as F
from testing import assert_matches, assert_step_trains_like
from torch import nn

import ember

SORT = ("ember.sort_index.default",)  # the scatter-add's sort (ir/ops/scatter.py): a torch call


def _bags(n_rows: int, lengths: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    offsets = torch.tensor([0] + lengths[:-1]).cumsum(0)
    return torch.randint(0, n_rows, (sum(lengths),)), offsets


CASES = [dict(mode="sum"), dict(mode="mean"), dict(mode="sum", per_sample_weights=True),
         dict(mode="mean", include_last_offset=True), dict(mode="mean", padding_idx=2),
         dict(mode="sum", padding_idx=0, per_sample_weights=True), dict(mode="sum", include_last_offset=True)]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_embedding_bag_values_and_gradients_match_eager(kw, dtype):
    kw = dict(kw)
    rows, dim = 12, 5
    idx, offsets = _bags(rows, [3, 0, 4, 1, 0, 6])  # empty bags in the middle and at the end
    idx[:4] = torch.tensor([2, 0, 2, 2])  # padding rows and repeats
    if kw.get("include_last_offset"):
        offsets = torch.cat([offsets, torch.tensor([idx.numel()])])  # torch's contract: offsets[B] == N
    w = torch.randn(rows, dim, dtype=dtype, requires_grad=True)
    psw = torch.randn(idx.numel(), dtype=dtype, requires_grad=True) if kw.pop("per_sample_weights", False) else None

    def f(w, idx, offsets, psw):
        return F.embedding_bag(idx, w, offsets, per_sample_weights=psw, **kw)

    compiled = ember.compile(f)
    out, ref = compiled(w, idx, offsets, psw), f(w, idx, offsets, psw)
    torch.testing.assert_close(out, ref)
    assert set(compiled.graphs[0].unsupported()) <= set(SORT), compiled.graphs[0].unsupported()
    ct = torch.randn_like(ref)
    wrt = [w] + ([psw] if psw is not None else [])
    for a, b in zip(torch.autograd.grad(out, wrt, ct), torch.autograd.grad(ref, wrt, ct), strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_of_a_bag_of_padding_only_has_a_zero_gradient(dtype):
    # a bag whose every index is padding_idx: eager's mean is 0 and so is its gradient (the 0/0 of its
    # size once made the padding row's gradient NaN)
    w = torch.randn(12, 5, dtype=dtype, requires_grad=True)
    idx, offsets = torch.tensor([0, 1, 3, 2, 2, 7]), torch.tensor([0, 3, 5])

    def f(w, idx, offsets):
        return F.embedding_bag(idx, w, offsets, mode="mean", padding_idx=2)

    out, ref = ember.compile(f)(w, idx, offsets), f(w, idx, offsets)
    torch.testing.assert_close(out, ref)
    ct = torch.randn_like(ref)
    torch.testing.assert_close(torch.autograd.grad(out, w, ct)[0], torch.autograd.grad(ref, w, ct)[0])


def test_embedding_bag_of_a_2d_input_trains_in_compile_step_like_torch():
    model = nn.Sequential(nn.EmbeddingBag(20, 6, mode="mean"), nn.Linear(6, 3))
    ref = nn.Sequential(nn.EmbeddingBag(20, 6, mode="mean"), nn.Linear(6, 3))
    ref.load_state_dict(model.state_dict())
    # eps=1e-3: Adam amplifies a gradient's float32 rounding by up to lr / eps (1e6 with the default eps)
    step = ember.compile_step(model, F.cross_entropy, ember.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-3))
    batches = [(torch.randint(0, 20, (8, 4)), torch.randint(0, 3, (8,))) for _ in range(2)]
    assert_step_trains_like(step, model, ref, torch.optim.AdamW(ref.parameters(), lr=1e-2, eps=1e-3), batches,
                            F.cross_entropy)
    assert step.last.compiled.externs == list(SORT) * 2  # forward's and backward's scatter-adds


@pytest.mark.parametrize("kw", [dict(mode="max"), dict(mode="max", padding_idx=1, per_sample_weights=None),
                                dict(mode="sum", scale_grad_by_freq=True, per_sample_weights=True),
                                dict(mode="mean", scale_grad_by_freq=True, padding_idx=2)], ids=str)
def test_embedding_bag_torch_calls_are_differentiated_by_torch(kw):
    # max mode and scale_grad_by_freq stay torch calls; their gradients are torch's, computed at run
    # time (frontend/eager_derivatives.py)
    kw = dict(kw)
    w, (idx, offsets) = torch.randn(10, 4, requires_grad=True), _bags(10, [2, 0, 5])
    idx[:3] = torch.tensor([1, 1, 2])  # repeats: frequencies and ties
    psw = torch.randn(idx.numel(), requires_grad=True) if kw.pop("per_sample_weights", None) else None
    f = lambda w, i, o, p: F.embedding_bag(i, w, o, per_sample_weights=p, **kw)  # noqa: E731
    compiled = ember.compile(f)
    out, ref = compiled(w, idx, offsets, psw), f(w, idx, offsets, psw)
    torch.testing.assert_close(out, ref)
    assert compiled.graphs[0].unsupported(), "expected a torch call"
    wrt, ct = [w] + ([psw] if psw is not None else []), torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, wrt, ct), torch.autograd.grad(ref, wrt, ct), strict=True):
        torch.testing.assert_close(a, b)


def test_embedding_bag_sparse_gradient_is_refused_by_name():
    w = torch.randn(10, 4, requires_grad=True)
    with pytest.raises(NotImplementedError, match="sparse=True"):  # when the backward graph is built
        ember.compile(lambda w, i: F.embedding_bag(i, w, sparse=True))(w, torch.randint(0, 10, (2, 3))).sum().backward()


def test_embedding_bag_index_out_of_range_raises():
    w, idx = torch.randn(10, 4), torch.tensor([[1, 12, 3], [4, 5, 6]])
    with pytest.raises(RuntimeError):  # eager's
        F.embedding_bag(idx, w)
    with pytest.raises(IndexError, match="out of range"):  # ember's gather (ir/ops/index.py)
        ember.compile(lambda w, i: F.embedding_bag(i, w))(w, idx)


@pytest.mark.parametrize("right", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.int64])
def test_searchsorted_and_bucketize_match_eager(right, dtype):
    seq = torch.randint(-4, 5, (9,)).sort().values.to(dtype)  # ties: left and right differ
    values = torch.randint(-6, 7, (3, 5)).to(dtype)
    if dtype.is_floating_point:
        values[0, 0] = float("nan")  # eager puts NaN past the end
    assert_matches(lambda s, v: torch.searchsorted(s, v, right=right), seq, values)
    assert_matches(lambda s, v: torch.bucketize(v, s, right=right, out_int32=True), seq, values)
    assert_matches(lambda s, v: torch.searchsorted(s, v, side="right" if right else "left"), seq, values)
