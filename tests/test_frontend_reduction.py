"""Reductions through ember.compile against eager: every dim form (int, negative, list, None/all),
keepdim, dtype=, corrections, value+index pairs, on float32/float16/int/bool, 0-dim and empty inputs."""

import pytest
import torch
from testing import assert_matches


def _float_reductions(x):
    return (
        x.sum(), x.sum(0), x.sum(-1, keepdim=True), x.sum((0, 2)), x.sum([]), x.mean(), x.mean((-1, 0)),
        x.mean(1, keepdim=True), x.prod(1), x.prod(), x.amax(), x.amax((0, 1)), x.amin(-1, keepdim=True),
        x.argmax(), x.argmax(1), x.argmin(-1, keepdim=True), x.var(), x.var(1), x.var(0, correction=0),
        x.std(-1, keepdim=True), x.std(), torch.var_mean(x, 2), torch.var_mean(x, (0, 1), correction=0),
        torch.std_mean(x, 0), x.max(), x.min(), x.max(1), x.min(-1, keepdim=True), x.logsumexp(1),
        x.sum(1, dtype=torch.float64), x.norm(), torch.linalg.vector_norm(x, 1, dim=0),
        torch.softmax(x, -1), torch.log_softmax(x, 0),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_float_reductions(dtype):
    assert_matches(_float_reductions, torch.randn(3, 4, 5, dtype=dtype))


def test_reductions_of_transposed_input():
    assert_matches(lambda x: (x.sum(0), x.amax(1), x.mean(), x.argmax(0)), torch.randn(6, 3).t())


def test_int_and_bool_reductions():
    def f(i, b):
        return (i.sum(), i.sum(0), i.prod(1), i.amax(0), i.amin(), i.argmax(1), i.max(0), i.min(),
                i.sum(1, dtype=torch.float32), i.float().mean(1), b.sum(), b.sum(-1), b.any(), b.all(0),
                i.any(1), (i > 0).all(), b.any((0, 1), keepdim=True))

    assert_matches(f, torch.randint(-4, 5, (3, 4), dtype=torch.int32), torch.rand(3, 4) > 0.3)


def test_zero_dim_size_one_and_empty():
    def f(s, o, e):
        return (s.sum(), s.sum(0), s.amax(), s.argmax(), s.mean(), s.max(0), o.sum(1), o.var(0, correction=0),
                o.amax(0, keepdim=True), e.sum(0), e.sum(), e.prod(0), e.mean(1), e.any(0))

    assert_matches(f, torch.randn(()), torch.randn(1, 3), torch.randn(0, 3))
