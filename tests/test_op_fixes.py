"""Regression tests for ops the OpInfo sweep found computing wrong numbers (issue 8, item 4), each
against eager PyTorch on fresh random inputs, in static mode (`ember.compile`) and, where the bug
was there too, eager mode (`with ember.eager():`)."""

import pytest
import torch
import torch.nn.functional as F
from testing import assert_matches, check_roundtrip
from torch import nn

import ember
from ember.frontend.capture import CaptureError
from ember.ir import Graph, TensorType, parse_graph
from ember.runtime import compile_graph


def grads_match(fn, *args, rtol=1.3e-5, atol=1e-5):
    """Forward and the gradients of every float input, compiled vs eager, on separate copies."""
    ref = [a.detach().clone().requires_grad_(a.is_floating_point()) for a in args]
    got = [a.detach().clone().requires_grad_(a.is_floating_point()) for a in args]
    expected = fn(*ref)
    seed = torch.randn_like(expected)
    (expected * seed).sum().backward()
    out = ember.compile(fn)(*got)
    torch.testing.assert_close(out.detach(), expected.detach(), rtol=rtol, atol=atol)
    (out * seed).sum().backward()
    for i, (r, g) in enumerate(zip(ref, got)):
        if r.requires_grad:
            assert g.grad is not None, f"input {i}: no gradient"
            grad = r.grad if r.grad is not None else torch.zeros_like(r)  # torch leaves some zero grads unset
            torch.testing.assert_close(g.grad, grad, rtol=rtol, atol=atol, msg=lambda m, i=i: f"input {i}: {m}")


def in_eager_mode(fn, *args):
    with ember.eager():
        return fn(*args)


# -- in-place writes into temporaries (decompositions below functionalization) ------------------------


@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate"])
def test_pad_modes(mode):
    x = torch.randn(2, 3, 5, 6)
    f = lambda x: F.pad(x, (2, 1, 1, 3), mode=mode)  # noqa: E731
    assert_matches(f, x, externs=("aten.index.Tensor",))  # reflect/replicate gather with index
    torch.testing.assert_close(in_eager_mode(f, x), f(x), rtol=0, atol=0)
    if mode == "circular":
        grads_match(f, x)


def test_circular_pad_1d_keeps_every_slice_write():
    # _pad_circular fills slices of an `empty` with copy_: each write must survive capture
    x = torch.randn(3, 4, 7)
    out = ember.compile(lambda x: F.pad(x, (3, 2), mode="circular"))(x)
    torch.testing.assert_close(out, F.pad(x, (3, 2), mode="circular"), rtol=0, atol=0)
    assert out.abs().min() > 0 or x.abs().min() == 0


def test_instance_norm_updates_running_stats():
    x = torch.randn(2, 3, 7)
    f = lambda x, rm, rv: F.instance_norm(x, rm, rv, use_input_stats=True, momentum=0.2)  # noqa: E731
    assert_matches(f, x, torch.randn(3), torch.rand(3) + 0.5, mutates=True)


@pytest.mark.parametrize("dims", [1, 2])
def test_instance_norm_module_tracking_stats(dims):
    cls = nn.InstanceNorm1d if dims == 1 else nn.InstanceNorm2d
    ref, mod, eag = (cls(4, affine=True, track_running_stats=True) for _ in range(3))
    state = {**ref.state_dict(), "running_mean": torch.randn(4), "running_var": torch.rand(4) + 0.5}
    for m in (ref, mod, eag):
        m.load_state_dict(state)
    x = torch.randn(2, 4, 6) if dims == 1 else torch.randn(2, 4, 3, 5)
    expected = ref(x)
    out = ember.compile(mod)(x)
    eager_out = in_eager_mode(eag, x)
    for m, y in ((mod, out), (eag, eager_out)):
        torch.testing.assert_close(y, expected)
        torch.testing.assert_close(m.running_mean, ref.running_mean)
        torch.testing.assert_close(m.running_var, ref.running_var)


# -- extern inputs laid out as torch saw them ----------------------------------------------------------


@pytest.mark.parametrize("mode", ["max", "sum", "mean"])
def test_embedding_bag_non_contiguous_indices(mode):
    w = torch.randn(10, 4)
    idx = torch.randint(0, 10, (5, 8))[:, ::2]  # non-contiguous; each row is a bag
    f = lambda w, i: F.embedding_bag(i, w, mode=mode)  # noqa: E731
    assert_matches(f, w, idx, externs=("aten._embedding_bag_forward_only.default",))
    offsets = torch.tensor([0, 3, 3, 7])
    flat = torch.randint(0, 10, (20,))[::2]
    g = lambda w, i, o: F.embedding_bag(i, w, o, mode=mode)  # noqa: E731
    assert_matches(g, w, flat, offsets, externs=("aten._embedding_bag_forward_only.default",))


# -- rounding to half types -----------------------------------------------------------------------------


def _same_bits(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == expected.dtype and actual.shape == expected.shape
    nan = actual.isnan()
    assert torch.equal(nan, expected.isnan()), "NaN positions differ"
    width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[actual.element_size()]
    bad = (actual.view(width) != expected.view(width)) & ~nan
    assert not bad.any(), (f"{int(bad.sum())} values differ, e.g. {actual[bad][:4].tolist()} vs torch "
                           f"{expected[bad][:4].tolist()}")


def _float32_cases() -> torch.Tensor:
    n = 3000
    bits = torch.randint(-(2**31), 2**31, (n,), dtype=torch.int64).to(torch.int32)  # any pattern: NaN, subnormals
    base = torch.randn(n).bfloat16().float().view(torch.int32)
    bf16_ties = (base | 0x8000).view(torch.float32)                  # exactly halfway between two bf16
    f16 = torch.randn(n).half().float().view(torch.int32)
    f16_ties = (f16 | 0x1000).view(torch.float32)                    # halfway between two f16 (normal range)
    special = torch.tensor([1.01171875, 1.0078125 + 2**-9, float("nan"), float("inf"), -float("inf"), 3.4e38,
                            -3.4e38, 3.3961e38, 1e-40, -1e-45, 0.0, -0.0, 65504.0, 65519.99, 65520.0, 6e-8, 2.98e-8])
    return torch.cat([bits.view(torch.float32), bf16_ties, f16_ties, special, torch.randn(n) * 1e-6,
                      torch.randn(n) * 1e5])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_float_to_half_rounds_to_nearest_even(dtype):
    x = _float32_cases()
    for f in (lambda x: x.to(dtype), lambda x: x.bfloat16() if dtype == torch.bfloat16 else x.half()):
        _same_bits(ember.compile(f)(x), f(x))
        _same_bits(in_eager_mode(f, x), f(x))
    assert ember.compile(lambda x: x.bfloat16())(torch.tensor([1.01171875])).item() == 1.015625


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_rounding_from_other_dtypes_and_in_fused_kernels(dtype):
    x = _float32_cases()
    xd = x.double() * (1 + torch.randn(x.shape, dtype=torch.float64) * 1e-12)  # torch rounds twice: via float32
    xi = torch.randint(-(2**40), 2**40, (2000,))
    for fn, arg in [(lambda x: x.to(dtype), xd), (lambda x: x.to(dtype), xi),
                    (lambda x: (x * 1.5 + 0.25).to(dtype), x),            # convert inside a fused kernel
                    (lambda x: x.to(dtype) * 2, x),                       # store of a half result
                    (lambda x: x.to(dtype).float(), x)]:                  # half load, widened
        _same_bits(ember.compile(fn)(arg), fn(arg))
    other = torch.float16 if dtype == torch.bfloat16 else torch.bfloat16
    h = x.to(other)
    _same_bits(ember.compile(lambda h: h.to(dtype))(h), h.to(dtype))
    # a half-precision fill holds the rounded value; a Python scalar operand is computed in float32
    v = torch.randn(500).to(dtype)
    for fn in (lambda v: v + torch.full((500,), 0.1, dtype=dtype), lambda v: v * torch.scalar_tensor(0.1, dtype=dtype),
               lambda v: v * 0.1):
        _same_bits(ember.compile(fn)(v), fn(v))


def test_bfloat16_subnormals_and_kernel_kinds():
    bits = torch.randint(-(2**15), 2**15, (4096,), dtype=torch.int32).to(torch.int16)
    x = bits.view(torch.bfloat16)
    _same_bits(ember.compile(lambda x: x.float())(x), x.float())
    _same_bits(ember.compile(lambda x: -x)(x), -x)
    # row, reduction and matmul kernels load and store bfloat16 the same way
    a = torch.randn(6, 40).bfloat16()
    _same_bits(ember.compile(lambda a: a.amax(1))(a), a.amax(1))
    _same_bits(ember.compile(lambda a: torch.softmax(a.float(), 1).bfloat16())(a),
               torch.softmax(a.float(), 1).bfloat16())
    g = Graph()
    p, q = g.add_input(TensorType((6, 40), torch.bfloat16)), g.add_input(TensorType((40, 5), torch.bfloat16))
    g.set_outputs([g.add("matmul", [p, q])])
    b = torch.randn(40, 5).bfloat16()
    _same_bits(compile_graph(g)([a, b])[0], (a.float() @ b.float()).bfloat16())


# -- a condition broadcast against an [N, 1] operand (row kernels) ----------------------------------------


def test_broadcast_condition_gradients():
    grads_match(torch.lerp, torch.randn(5, 5), torch.randn(5, 1), torch.rand(5))
    grads_match(lambda a, b, w: torch.where(w < 0.5, a * w, b * w), torch.randn(5, 5), torch.randn(5, 1),
                torch.rand(5))
    grads_match(torch.float_power, torch.rand(5, 1) + 0.5, torch.randn(5))
    grads_match(torch.float_power, torch.rand(4, 1, 5) + 0.5, torch.randn(4, 5))
    grads_match(torch.pow, torch.rand(3, 1, 5) + 0.5, torch.randn(3, 5), rtol=1e-4)


def test_row_kernel_reads_a_squeezed_row_along_the_last_dim():
    # sum over dim 1 of where(c, x, 0) with c of shape [5]: c varies along the *columns* (torch's
    # trailing alignment), even though [5] is also the shape of a row of the reduction.
    g = Graph()
    x, w = g.add_input(TensorType((5, 5), torch.float32)), g.add_input(TensorType((5,), torch.float32))
    c = g.add("lt", [w, g.add("full", [], shape=(), value=0.5, dtype=torch.float32)])
    t = g.add("where", [c, x, g.add("full", [], shape=(), value=0.0, dtype=torch.float32)])
    g.set_outputs([g.add("sum", [t], dims=(1,), keepdim=False), g.add("sum", [t], dims=(0,), keepdim=False)])
    xs, ws = torch.randn(5, 5), torch.rand(5)
    ref = torch.where(ws < 0.5, xs, 0.0)
    out = compile_graph(g)([xs, ws])
    torch.testing.assert_close(out[0], ref.sum(1))
    torch.testing.assert_close(out[1], ref.sum(0))


# (gradients through complex values: tests/test_complex_grad.py)


# -- zero gradients where torch's backward masks ----------------------------------------------------------


@pytest.mark.parametrize("ord", [2, 3, 1.5, 1, float("inf"), 0])
def test_vector_norm_gradient_at_zero(ord):
    x = torch.randn(4, 6)
    x[1] = 0.0
    x[2, 3] = 0.0
    grads_match(lambda x: torch.linalg.vector_norm(x, ord=ord, dim=1), x)
    grads_match(lambda x: torch.linalg.vector_norm(x, ord=ord, dim=1, keepdim=True) * x, x)
    grads_match(lambda x: torch.linalg.vector_norm(x, ord=ord), x * 0)


def test_vector_norm_order_zero_counts_nan_and_inf():
    x = torch.randn(3, 6)
    x[0, :3] = torch.tensor([0.0, float("nan"), float("inf")])
    assert_matches(lambda x: torch.linalg.vector_norm(x, ord=0, dim=1), x)


def test_norm_and_normalize_gradient_at_zero():
    x = torch.randn(3, 5)
    x[0] = 0.0
    grads_match(lambda x: x.norm(dim=1), x)
    grads_match(lambda x: F.normalize(x, dim=1), x)
    xh = torch.randn(3, 40).bfloat16()
    assert_matches(lambda x: torch.linalg.vector_norm(x, dim=1), xh)


def test_sdpa_fully_masked_row_gradient_is_zero():
    q, k, v = torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8), torch.randn(1, 2, 4, 8)
    mask = torch.rand(4, 4) > 0.3
    mask[1] = False  # a query that sees nothing: output 0, gradient 0 (not NaN)
    mask[0, 0] = True
    grads_match(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask), q, k, v)


# -- torch.manual_seed inside a compiled function -------------------------------------------------------


def _reseed_then_rand(x):
    torch.manual_seed(0)
    return x + torch.rand(3)


def _reseed_only(x):
    torch.manual_seed(0)
    return x * 2


def _save_reseed_restore(x):  # OpInfo's wrapper_set_seed: no random effect at all
    state = torch.get_rng_state()
    torch.manual_seed(42)
    out = x * 2
    torch.set_rng_state(state)
    return out


@pytest.mark.parametrize("dynamic", [None, True])
@pytest.mark.parametrize("fn, message", [(_reseed_then_rand, r"calls torch\.manual_seed\(\) and draws random"),
                                         (_reseed_only, r"calls torch\.manual_seed\(\) and leaves")])
def test_reseeding_inside_compiled_function_is_refused(fn, message, dynamic):
    x = torch.randn(3)
    seeders = (torch.manual_seed, torch.random.manual_seed, torch.random.set_rng_state)
    state = torch.random.get_rng_state()
    with pytest.raises(CaptureError, match=message):
        ember.compile(fn, dynamic=dynamic)(x)
    assert torch.equal(state, torch.random.get_rng_state())  # the trace left no trace
    assert (torch.manual_seed, torch.random.manual_seed, torch.random.set_rng_state) == seeders  # restored


def test_reseeding_without_random_effect_compiles():
    x = torch.randn(3)
    state = torch.random.get_rng_state()
    assert_matches(_save_reseed_restore, x)
    assert torch.equal(state, torch.random.get_rng_state())
    # seeding outside the compiled function reproduces a run
    g = ember.compile(lambda x: x + torch.rand(3))
    torch.manual_seed(1)
    a = g(x)
    torch.manual_seed(1)
    torch.testing.assert_close(g(x), a, rtol=0, atol=0)


# -- dtypes the IR only passes through externs ------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64, torch.complex32])
def test_exotic_dtypes_print_and_pass_through(dtype):
    x = torch.randn(4, dtype=torch.complex64) if dtype.is_complex else torch.randint(0, 100, (4,))
    x = x.to(dtype)
    f = (lambda x: x.real.float() * 2) if dtype.is_complex else (lambda x: x.float() * 2)
    sg = ember.trace(f, x)
    check_roundtrip(sg.captured_graph)
    torch.testing.assert_close(sg(x), f(x))
    g = Graph()
    g.add_input(TensorType((2,), dtype))
    assert str(parse_graph(str(g))) == str(g)
