"""Where eager PyTorch raises, ember.compile raises: matrix products of mixed dtypes, and double
backward through a compiled function."""

import pytest
import torch
import torch.nn.functional as F

import ember

f32, f64, f16 = torch.float32, torch.float64, torch.float16


def _r(*shape, dtype=f32):
    return torch.randn(*shape, dtype=dtype)


MIXED = {
    "mm": (torch.mm, lambda: (_r(2, 3), _r(3, 4, dtype=f64))),
    "matmul": (torch.matmul, lambda: (_r(2, 3), _r(3, 4, dtype=f64))),
    "matmul_batched": (torch.matmul, lambda: (_r(2, 2, 3, dtype=f64), _r(3, 4))),
    "matmul_half": (torch.matmul, lambda: (_r(2, 3, dtype=f16), _r(3, 4))),
    "bmm": (torch.bmm, lambda: (_r(2, 2, 3), _r(2, 3, 4, dtype=f64))),
    "addmm_input": (torch.addmm, lambda: (_r(2, 4, dtype=f64), _r(2, 3), _r(3, 4))),
    "addmm_mat2": (torch.addmm, lambda: (_r(4), _r(2, 3), _r(3, 4, dtype=f64))),
    "baddbmm": (torch.baddbmm, lambda: (_r(2, 2, 4, dtype=f64), _r(2, 2, 3), _r(2, 3, 4))),
    "linear_weight": (F.linear, lambda: (_r(2, 3), _r(4, 3, dtype=f64))),
    "linear_bias": (F.linear, lambda: (_r(2, 3), _r(4, 3), _r(4, dtype=f64))),
    "dot": (torch.dot, lambda: (_r(3), _r(3, dtype=f64))),
    "mv": (torch.mv, lambda: (_r(2, 3), _r(3, dtype=f64))),
    "int_float": (torch.mm, lambda: (torch.ones(2, 3, dtype=torch.int64), _r(3, 4))),
}


@pytest.mark.parametrize("name", sorted(MIXED))
def test_mixed_dtype_matrix_products_raise_like_eager(name):
    op, make = MIXED[name]
    args = make()
    with pytest.raises(RuntimeError, match="dtype|scalar type"):
        op(*args)
    with pytest.raises(RuntimeError, match="dtype|scalar type"):
        ember.compile(lambda *a: op(*a))(*args)


@pytest.mark.parametrize("name", ["mm", "addmm_input", "baddbmm", "linear_bias"])
def test_matrix_products_of_one_dtype_still_compile(name):
    op, make = MIXED[name]
    args = [a.to(f64) for a in make()]
    torch.testing.assert_close(ember.compile(lambda *a: op(*a))(*args), op(*args))


def _cube_sum(x):
    return (x ** 3).sum()


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True")
def test_double_backward_raises_at_create_graph():
    x = torch.randn(4, requires_grad=True)
    out = ember.compile(_cube_sum)(x)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(out, x, create_graph=True)
    out = ember.compile(_cube_sum)(x)
    with pytest.raises(RuntimeError, match="double backward"):
        out.backward(create_graph=True)


def test_first_order_gradients_are_unaffected():
    x = torch.randn(4, requires_grad=True)
    (g,) = torch.autograd.grad(ember.compile(_cube_sum)(x), x)
    torch.testing.assert_close(g, 3 * x.detach() ** 2)
    x.grad = None
    ember.compile(_cube_sum)(x).backward(retain_graph=True)
    torch.testing.assert_close(x.grad, 3 * x.detach() ** 2)
