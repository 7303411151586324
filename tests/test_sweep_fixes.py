"""Regression tests for mismatches the net found (issue 8): the OpInfo sweep (`benchmarks/opinfo_sweep.py`,
notes in the sweep's table) and the random programs (`tests/test_random_programs.py`). Each compares
ember with eager PyTorch on fresh random inputs."""

import pytest
import torch

import ember
from ember.codegen import generated_kernels

HALFS = [torch.float16, torch.bfloat16]


# -- half-precision intermediates are rounded to their dtype inside fused kernels -----------------------
# Eager rounds every op's result to its dtype; a fused kernel computing in float32 must too, or a later
# exact comparison (the `eq` of an amax VJP between a recomputed value and a saved, rounded one) finds no
# tie and the gradient is 0/0 = NaN.


@pytest.mark.parametrize("dtype", HALFS)
def test_amax_gradient_of_a_fused_half_chain(dtype):
    def p(x):
        return (x - x.mean(-1, keepdim=True)).amax(0)

    f = ember.compile(p)
    for _ in range(4):
        x = torch.randn(8, dtype=dtype, requires_grad=True)
        expected = torch.autograd.grad(p(x), x)[0]
        got = torch.autograd.grad(f(x), x)[0]
        assert torch.equal(got, expected), (x, got, expected)


@pytest.mark.parametrize("dtype", HALFS)
def test_amin_gradient_of_a_rowwise_half_chain(dtype):
    def p(x, y):
        return (x * y + 0.1).amin(-1).sum()

    f = ember.compile(p)
    x, y = torch.randn(6, 40, dtype=dtype, requires_grad=True), torch.randn(40, dtype=dtype, requires_grad=True)
    expected = torch.autograd.grad(p(x, y), (x, y))
    got = torch.autograd.grad(f(x, y), (x, y))
    assert torch.equal(got[0], expected[0])
    # y's gradient sums one value per row: the order may differ from eager's.
    torch.testing.assert_close(got[1], expected[1])


_CHAINS = {
    "mul_add": lambda x, y, z: x * y + z,
    "scalar_chain": lambda x, y, z: (x * 0.1 + y) * 3.3 - z,
    "div_sub_relu": lambda x, y, z: (x / (y.abs() + 1) - z).relu() * z,
    "where_max": lambda x, y, z: torch.where(x * y > z, x * y, torch.maximum(z, x - y)),
    "floor": lambda x, y, z: torch.floor(x * y * 7) + z,
    "cast_chain": lambda x, y, z: (x.float() * y.float()).to(x.dtype) * z + 1,
    # torch narrows a Python scalar to the half dtype, except mul and div, which read it in float32
    "scalars": lambda x, y, z: ((x - 0.3) * 0.3 + (0.7 - y)) / 0.3 + torch.where(z > 0.1, z, 0.2),
    "scalar_division": lambda x, y, z: torch.div(x, 0.3, rounding_mode="floor") + (y // 0.7) * z,
    "powers": lambda x, y, z: x**3 - (y.abs() + 1) ** -2 + z**2,
    "log_bases": lambda x, y, z: torch.log10(x.abs() + 0.5) * 3 + torch.log2(y.abs() + 0.5) - z,
    "scalar_tensor": lambda x, y, z: x * torch.tensor(0.3) + y / torch.tensor(0.7, dtype=torch.float64) - z,
}


@pytest.mark.parametrize("dtype", HALFS)
@pytest.mark.parametrize("name", list(_CHAINS))
def test_fused_half_pointwise_chain_is_eager_bit_for_bit(name, dtype):
    fn = _CHAINS[name]
    x, y, z = (torch.randn(3, 67, dtype=dtype) for _ in range(3))
    assert torch.equal(ember.compile(fn)(x, y, z), fn(x, y, z))


@pytest.mark.parametrize("dtype", HALFS)
def test_fused_half_row_chain_is_eager_bit_for_bit(dtype):
    # amax and the ops around it are exact-rounding in eager: bit for bit, persistent and looped rows.
    def fn(x, y):
        h = x * y - 0.3
        return h - h.amax(-1, keepdim=True) * y

    for cols in (40, 3000):
        x, y = torch.randn(5, cols, dtype=dtype), torch.randn(cols, dtype=dtype)
        assert torch.equal(ember.compile(fn)(x, y), fn(x, y))


@pytest.mark.parametrize("dtype", HALFS)
def test_fused_half_softmax_matches_eager(dtype):
    # eager's softmax reduces in its own order: compared within the dtype's tolerance.
    def fn(x, y):
        return torch.softmax(x * y, -1) * y

    x, y = torch.randn(4, 100, dtype=dtype), torch.randn(100, dtype=dtype)
    torch.testing.assert_close(ember.compile(fn)(x, y), fn(x, y))


@pytest.mark.parametrize("dtype", HALFS)
def test_fused_half_matmul_epilogue_rounds_each_op(dtype):
    # The fused epilogue must equal eager's ops applied to the same (rounded) matmul result, bit for bit:
    # the matmul itself sums in ember's order, so it is taken from ember's unfused matmul.
    a, b = torch.randn(16, 32, dtype=dtype), torch.randn(32, 24, dtype=dtype)
    y, z = torch.randn(24, dtype=dtype), torch.randn(16, 24, dtype=dtype)
    mm = ember.compile(torch.matmul)(a, b)
    out = ember.compile(lambda a, b, y, z: (a @ b) * y * 0.7 + z)(a, b, y, z)
    assert any(s.kernel.kind == "matmul" and "add" in s.kernel.ops for s in generated_kernels())
    assert torch.equal(out, mm * y * 0.7 + z)
    torch.testing.assert_close(out, (a @ b) * y * 0.7 + z)


@pytest.mark.parametrize("dtype", HALFS)
def test_half_comparison_with_a_scalar_narrows_it(dtype):
    # x == dtype(0.3) exactly: torch compares against the narrowed scalar, so `x > 0.3` is False there.
    x = torch.cat([torch.tensor([0.3], dtype=dtype), torch.randn(20, dtype=dtype)])
    fn = lambda x: (x > 0.3, x == 0.3, x.clamp(min=0.3) - 0.3)  # noqa: E731
    for got, expected in zip(ember.compile(fn)(x), fn(x)):
        assert torch.equal(got, expected)


_UNARY_GRADS = {
    "sigmoid": torch.sigmoid, "tanh": torch.tanh, "silu": torch.nn.functional.silu,
    "gelu": torch.nn.functional.gelu, "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
    "erf": torch.erf, "exp2": torch.exp2, "rsqrt": lambda x: torch.rsqrt(x.abs() + 0.1),
}


@pytest.mark.parametrize("dtype", HALFS)
@pytest.mark.parametrize("name", list(_UNARY_GRADS))
def test_half_unary_gradients_round_like_eager(name, dtype):
    # torch's tanh/silu/gelu (and bfloat16 sigmoid) backward is one float32 kernel rounding once; the
    # other formulas are separate ops, each rounded: ember's VJP rules round where eager does.
    fn = _UNARY_GRADS[name]
    x, ct = (torch.randn(32, 128) * 2).to(dtype), torch.randn(32, 128).to(dtype)
    ref, got_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, got = fn(ref), ember.compile(fn)(got_in)
    want = torch.autograd.grad(expected, ref, ct)[0]
    have = torch.autograd.grad(got, got_in, ct)[0]
    # Where the forwards agree (tanh, erf and gelu may differ by an ulp), the gradients are eager's bits but
    # for the last-ulp differences of float32 exp/erf implementations.
    same = got.detach() == expected.detach()
    assert same.float().mean() > 0.95
    assert (have == want)[same].float().mean() > 0.99
    torch.testing.assert_close(have, want, rtol=0.05, atol=0.05)


# -- output structure ------------------------------------------------------------------------------------


def test_sizes_come_back_as_torch_size():
    # pytree rebuilds a torch.Size as a tuple: capture keeps it a leaf (frontend/capture.py)
    f = ember.compile(lambda *shapes: torch.broadcast_shapes(*shapes))
    out = f((5, 1), (5,))
    assert type(out) is torch.Size and out == torch.Size([5, 5])

    def g(x):
        return x.shape, [x * 2, x.size()], {"n": x.size(0)}

    x = torch.randn(2, 3)
    got, expected = ember.compile(g)(x), g(x)
    assert type(got[0]) is torch.Size and type(got[1][1]) is torch.Size
    assert got[0] == expected[0] and got[1][1] == expected[1][1] and got[2] == expected[2]
    torch.testing.assert_close(got[1][0], expected[1][0])


# -- results eager's autograd keeps attached to an input they do not depend on -------------------------

_ATTACHED = {
    "fill": lambda x, v: torch.fill(x * 2, 1.5),
    "fill_tensor": lambda x, v: torch.fill(x, v),
    "zero_": lambda x, v: (x * v).zero_() + 1,
    "repeat_none": lambda x, v: x.repeat(2, 0),
    "tile_none": lambda x, v: torch.tile(x, (0,)),
    "fill_then_use": lambda x, v: torch.fill(x, 0.5) * x + v,
}


@pytest.mark.parametrize("name", list(_ATTACHED))
def test_results_attached_to_inputs_require_grad_like_eager(name):
    fn = _ATTACHED[name]
    x, v = torch.randn(3, 4), torch.randn(())
    ref = [x.clone().requires_grad_(), v.clone().requires_grad_()]
    got_in = [x.clone().requires_grad_(), v.clone().requires_grad_()]
    expected, got = fn(*ref), ember.compile(fn)(*got_in)
    assert expected.requires_grad and got.requires_grad
    torch.testing.assert_close(got.detach(), expected.detach())
    ct = torch.randn_like(expected)
    want = torch.autograd.grad(expected, ref, ct, allow_unused=True, materialize_grads=True)
    have = torch.autograd.grad(got, got_in, ct, allow_unused=True, materialize_grads=True)
    for w, h in zip(want, have):
        torch.testing.assert_close(h, w)


def test_copy_into_a_tensor_keeps_it_attached():
    # linalg.matrix_power(x, 0) is `x.clone().copy_(eye)` inside torch: eager's result requires grad
    fns = [lambda x: torch.linalg.matrix_power(x, 0), lambda x: x.clone().copy_(torch.ones(3, 3)) * x]
    for fn in fns:
        x = torch.randn(3, 3)
        ref, got_in = x.clone().requires_grad_(), x.clone().requires_grad_()
        expected, got = fn(ref), ember.compile(fn)(got_in)
        assert expected.requires_grad and got.requires_grad
        torch.testing.assert_close(got.detach(), expected.detach())
        ct = torch.randn_like(expected)
        want = torch.autograd.grad(expected, ref, ct, materialize_grads=True, allow_unused=True)[0]
        torch.testing.assert_close(torch.autograd.grad(got, got_in, ct, materialize_grads=True,
                                                       allow_unused=True)[0], want)


# -- a row kernel's output spelled with other dims than its row (OpInfo linalg.norm 'nuc', keepdim) ------
# The row kernel stores a row output through strides over its kept dims; a reshape the group absorbed
# (a full reduction's [1] as [1, 1], rows regrouped) has other dims: its strides are its layout viewed
# with the kept sizes.


@pytest.mark.parametrize("name", ["nuclear_norm_keepdim", "full_sum_as_1x1", "rows_regrouped", "regrouped_t"])
def test_row_output_reshaped_to_other_dims(name):
    fn, x = {
        "nuclear_norm_keepdim": (lambda x: torch.linalg.norm(x, "nuc", keepdim=True), torch.randn(5, 5)),
        "full_sum_as_1x1": (lambda x: x.sum(0, keepdim=True).reshape(1, 1) * 2, torch.randn(5)),
        "rows_regrouped": (lambda x: x.sum(1).reshape(2, 3) + 1, torch.randn(6, 4)),
        "regrouped_t": (lambda x: x.softmax(-1).sum(-1).reshape(3, 2).t(), torch.randn(6, 4)),
    }[name]
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, got = fn(xe), ember.compile(fn)(xc)
    torch.testing.assert_close(got, expected)
    assert got.stride() == expected.stride()
    cotangent = torch.randn_like(expected)
    expected.backward(cotangent)
    got.backward(cotangent)
    torch.testing.assert_close(xc.grad, xe.grad)
