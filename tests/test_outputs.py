"""What ember.compile returns, against eager PyTorch: inputs and views of them come back as eager's
aliases (not copies), and outputs it cannot return faithfully are refused (frontend/aliasing.py)."""

import dataclasses

import pytest
import torch
from torch.utils import _pytree as pytree

import ember
from ember.frontend.capture import CaptureError


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def test_identity_returns_the_input_itself():
    x = torch.randn(3)
    assert ember.compile(lambda x: x)(x) is x
    assert ember.compile(lambda x: x.to(torch.float32).contiguous())(x) is x


@pytest.mark.parametrize("view", [
    lambda x: x[1:],
    lambda x: x.t(),
    lambda x: x.view(-1),
    lambda x: x.reshape(2, 6),
    lambda x: x.unsqueeze(0).transpose(1, 2),
    lambda x: x[:, ::2].diagonal(),
    lambda x: x.expand(2, 3, 4),
])
def test_views_of_an_input_alias_it_like_eager(view):
    x = torch.randn(3, 4)
    expected = view(x.clone())
    out = ember.compile(view)(x)
    torch.testing.assert_close(out, expected)
    assert out._base is x and out.stride() == expected.stride()
    if not out.stride().count(0):  # writing through the result writes x, as in eager
        out.add_(1)
        torch.testing.assert_close(view(x), expected + 1)


def test_split_outputs_are_views():
    x = torch.randn(5, 2)
    outs = ember.compile(lambda x: x.split(2))(x)
    assert all(o._base is x for o in outs)
    torch.testing.assert_close(torch.cat(outs), x)


def test_an_input_updated_in_place_and_returned():
    def f(x):
        x.add_(1)
        return x, x[1:]
    x = torch.randn(4)
    expected = x + 1
    same, tail = ember.compile(f)(x)
    assert same is x and tail._base is x
    torch.testing.assert_close(x, expected)


def test_a_view_of_another_output_shares_its_memory():
    def f(x):
        y = x + 1
        return y, y.t(), y[0]
    x = torch.randn(2, 3)
    y, yt, y0 = ember.compile(f)(x)
    torch.testing.assert_close(y, x + 1)
    assert _same_memory(yt, y) and _same_memory(y0, y)
    y0.zero_()
    assert torch.equal(yt[:, 0], torch.zeros(3))


class _WeightAndOutput(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(3, 2)

    def forward(self, x):
        return self.lin.weight.t(), self.lin(x)


def test_a_view_of_a_parameter_is_a_view_with_eager_gradients():
    m = _WeightAndOutput()
    x = torch.randn(4, 3)
    wt, out = m(x)
    (wt.sum() * 2 + out.sum()).backward()
    expected = m.lin.weight.grad.clone()
    m.lin.weight.grad = None
    wt, out = ember.compile(m)(x)
    assert wt._base is m.lin.weight
    (wt.sum() * 2 + out.sum()).backward()
    torch.testing.assert_close(m.lin.weight.grad, expected)


def test_gradients_through_returned_views_of_inputs():
    def f(x):
        return x.t(), x.sin().sum()
    x0 = torch.randn(3, 4)
    grads = []
    for fn in (f, ember.compile(f)):
        x = x0.clone().requires_grad_()
        t, s = fn(x)
        ((t * torch.arange(3.0)).sum() + s).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[1], grads[0])


def test_computed_outputs_are_fresh():
    x = torch.randn(3)
    out = ember.compile(lambda x: x * 1)(x)
    assert not _same_memory(out, x)


# -- containers ---------------------------------------------------------------------------------


class Cache:
    """A user class holding tensors, like transformers' DynamicCache (not a pytree)."""

    def __init__(self, k, v):
        self.key, self.value = [k], [v]


def test_tensors_in_a_non_pytree_output_are_refused():
    def f(x):
        return x * 2, Cache(x + 1, x - 1)
    with pytest.raises(CaptureError, match=r"output\[1\] is a .*Cache holding tensors.*register_pytree_node"):
        ember.compile(f)(torch.randn(3))
    with pytest.raises(CaptureError, match=r"the output is a .*Cache.*backend=\"ember\""):
        ember.compile(lambda x: Cache(x, x.sin()))(torch.randn(3))


def test_a_non_pytree_output_holding_no_computed_tensor_is_returned():
    c = torch.randn(3)
    out, obj = ember.compile(lambda x: (x + c, {"unit": "m", "scale": 2}))(torch.randn(3))
    assert obj == {"unit": "m", "scale": 2}


@dataclasses.dataclass
class Pair:
    first: torch.Tensor
    second: torch.Tensor


pytree.register_dataclass(Pair)


def test_registered_containers_return_real_fresh_tensors():
    f = ember.compile(lambda x: Pair(x * 2, x.sin()))
    for _ in range(2):  # a new result each call, never the traced object
        x = torch.randn(3)
        out = f(x)
        assert type(out) is Pair and type(out.first) is torch.Tensor
        torch.testing.assert_close(out.first, x * 2)
        torch.testing.assert_close(out.second, x.sin())
