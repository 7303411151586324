"""Layout ops, factories and matrix products through ember.compile against eager."""

import pytest
import torch
import torch.nn.functional as F
from testing import assert_matches


def _views(x):
    return (
        x.view(6, 4), x.reshape(-1), x.permute(2, 0, 1), x.transpose(0, -1), x[0].t(), x.unsqueeze(1),
        x.unsqueeze(-1), x[:, :1].squeeze(1), x[:1].squeeze(), x.flatten(1), x.unflatten(2, (2, 2)),
        x.expand(2, 2, 3, 4), x[:, :1].expand(-1, 3, -1), x.contiguous(), x.clone(), x.t() if x.dim() < 3 else x,
        x[1], x[:, -1], x[..., 1:3], x[:, ::2], x[:, 1::2, ::3], x[-1:, -2:], x[:, 5:], x[:, 1:-1],
        x.select(2, -1), x.narrow(1, 1, 2), x.flip(0), x.flip((1, -1)), x.split(2, dim=-1), x.chunk(3, 1),
        x.unbind(0), torch.cat([x, x * 2], 1), torch.cat([x, x[:, :1]], -2), torch.stack([x, x], 1),
        torch.stack([x[0], x[1]], -1), x.repeat(1, 2, 1), x.repeat(2, 1, 1, 1), F.pad(x, (1, 2)),
        F.pad(x, (0, 0, 1, 0), value=3.0), x.movedim(0, -1), x.mT, x.to(torch.float32),
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_views_and_copies(dtype):
    assert_matches(_views, torch.randn(2, 3, 4, dtype=dtype))


def test_layout_int_bool_and_noncontiguous():
    def f(i, b, t):
        return (i.view(3, 2), i.t().flip(0), torch.cat([i, i + 1]), b.permute(1, 0), b[:, 1:], t.reshape(-1),
                t[1:, ::2] * 2, torch.cat([i.float(), t], 0), torch.stack([b, b]))

    assert_matches(f, torch.randint(0, 9, (2, 3)), torch.rand(2, 3) > 0.5, torch.randn(3, 2).t())


def test_slice_and_select_mutations():
    def f(x, y):
        x[0].add_(1)
        x[:, 1:3].mul_(2)
        y[..., 0] = 5.0
        return x.sum(), y * 2

    assert_matches(f, torch.randn(3, 4), torch.randn(2, 3), mutates=True)


def test_factories():
    def f(x):
        return (torch.zeros(2, 3) + x, torch.ones(3, dtype=torch.int32), torch.full((2,), 7.5),
                torch.arange(5), torch.arange(1, 10, 3), torch.arange(0.0, 1.0, 0.25), torch.zeros_like(x),
                torch.ones_like(x, dtype=torch.float16), torch.full_like(x, 2), x.new_zeros(4), x.new_ones(2, 2),
                torch.scalar_tensor(3.0) * x, torch.empty(2).fill_(1.5), torch.tensor(2.0) * x, torch.eye(3),
                torch.arange(6).view(2, 3).tril(), torch.linspace(0, 1, 5))

    assert_matches(f, torch.randn(2, 3))


def test_matmul_family():
    def f(a, b, v, bias, x3, y3, w):
        return (a @ b, torch.mm(a, b), torch.matmul(v, b), a @ v[:4].view(4), torch.dot(v[:4], v[:4]),
                torch.mv(a, v[:4]), torch.addmm(bias, a, b), torch.addmm(bias, a, b, beta=0.5, alpha=2),
                torch.bmm(x3, y3), x3 @ y3, x3 @ b, F.linear(a, w), F.linear(x3, w, bias[:2]),
                torch.baddbmm(y3[:, :1, :1], x3, y3), a.t() @ a, torch.einsum("ij,jk->ik", a, b))

    a, b = torch.randn(3, 4), torch.randn(4, 5)
    x3, y3 = torch.randn(2, 3, 4), torch.randn(2, 4, 5)
    assert_matches(f, a, b, torch.randn(4), torch.randn(5), x3, y3, torch.randn(2, 4), rtol=1e-4, atol=1e-4)


def test_matmul_half_and_int():
    a, b = torch.randn(3, 4, dtype=torch.float16), torch.randn(4, 2, dtype=torch.float16)
    assert_matches(lambda a, b: (a @ b, torch.addmm(b[0], a, b)), a, b, rtol=1e-2, atol=1e-2)
    # torch computes integer matmul on CPU only; ember calls it as an extern.
    i = torch.randint(-3, 3, (3, 4))
    assert_matches(lambda i: i @ i.t(), i, externs=("aten.mm.default",))
