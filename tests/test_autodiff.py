"""Reverse-mode AD on the IR: every VJP rule against torch.autograd (float64, reference interpreter),
the joint graph through the compiled Triton path (float32), and the forward/backward partition."""

import pytest
import torch
from models import MLP, TransformerBlock

import ember
from ember.ir import OPS, Graph, TensorType, evaluate, parse_graph, verify
from ember.passes import run_pipeline
from ember.passes.autodiff import forward_backward, grad_graph, vjp_graph
from ember.passes.remat import partition
from ember.runtime import compile_ir

f64, f32 = torch.float64, torch.float32


def roundtrip(g: Graph) -> None:
    verify(g)
    assert str(parse_graph(str(g))) == str(g)


def rand(shape, dtype=f64, domain="real"):
    x = torch.randn(shape, dtype=dtype)
    if domain == "pos":
        x = x.abs() + 0.5
    elif domain == "unit":  # (-0.9, 0.9)
        x = torch.rand(shape, dtype=dtype) * 1.8 - 0.9
    return x


def build(fn, shapes, dtype=f64):
    g = Graph()
    xs = [g.add_input(TensorType(s, dtype), f"x{i}") for i, s in enumerate(shapes)]
    out = fn(g, *xs)
    g.set_outputs(out if isinstance(out, list) else [out])
    return g


def reference_grads(g: Graph, inputs, cts, wrt, fn=None):
    """torch.autograd.grad of the graph's reference evaluation (each op's torch impl), or of `fn`."""
    leaves = [t.clone().requires_grad_(i in wrt) for i, t in enumerate(inputs)]
    outs = fn(*leaves) if fn is not None else evaluate(g, *leaves)
    outs = outs if isinstance(outs, (list, tuple)) else [outs]
    pairs = [(o, c) for o, c in zip(outs, cts) if c is not None and o.requires_grad]
    if not pairs:
        return [torch.zeros_like(inputs[i]) for i in wrt]
    grads = torch.autograd.grad([o for o, _ in pairs], [leaves[i] for i in wrt], [c for _, c in pairs],
                                allow_unused=True)
    return [torch.zeros_like(inputs[i]) if gr is None else gr for i, gr in zip(wrt, grads)]


def check_vjp(fn, shapes, domains=None, dtype=f64, ref=None, inputs=None, rtol=1e-7, atol=1e-9):
    g = build(fn, shapes, dtype)
    wrt = [i for i, v in enumerate(g.inputs) if v.dtype.is_floating_point]
    joint = vjp_graph(g, wrt)
    roundtrip(joint)
    assert len(joint.inputs) == len(g.inputs) + 1 and len(joint.outputs) == len(g.outputs) + len(wrt)
    if inputs is None:
        domains = domains or ["real"] * len(shapes)
        inputs = [rand(s, dtype, d) for s, d in zip(shapes, domains)]
    ct = torch.randn(g.outputs[0].shape, dtype=g.outputs[0].dtype)
    got = evaluate(joint, *inputs, ct)
    want = reference_grads(g, inputs, [ct], wrt, ref)
    for i, (a, b) in enumerate(zip(got[len(g.outputs):], want)):
        assert a.shape == b.shape and a.dtype == b.dtype == g.inputs[wrt[i]].dtype
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, equal_nan=True, msg=lambda m: f"grad {i}: {m}")
    return joint


def op(name, **attrs):
    return lambda g, *xs: g.add(name, list(xs), **attrs)


# -- coverage of the registry -----------------------------------------------------------------------

NO_VJP = {"eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_xor", "logical_not",
          "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "isnan", "argmax", "argmin",
          "full", "arange", "iota", "max_pool_index", "cummax_index", "cummin_index", "check_index", "signbit",
          "searchsorted", "trigamma",  # (trigamma: only digamma's VJP uses it; compiled graphs are differentiated once)
          "attention_grad_q", "attention_grad_kv"}  # (only attention's VJP builds them: no double backward)
# (extern's VJP is torch's derivative: tests/test_extern_vjp.py)


def test_every_differentiable_op_has_a_vjp_rule():
    missing = sorted(n for n, d in OPS.items() if d.vjp is None and n not in NO_VJP)
    assert not missing, f"ops without a VJP rule: {missing}"
    assert all(OPS[n].vjp is None for n in NO_VJP)


# -- pointwise --------------------------------------------------------------------------------------

# Every op's VJP against torch.autograd, on the samples its registry entry declares: tests/test_registry.py.
# The tests below cover attributes, broadcasting and special values.


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu(approximate):
    check_vjp(op("gelu", approximate=approximate), [(4, 6)])


def test_convert_and_clamp():
    check_vjp(op("convert", dtype=f32), [(3, 4)], rtol=1e-6, atol=1e-6)
    check_vjp(lambda g, x: g.add("convert", [g.add("convert", [x], dtype=f32)], dtype=f64), [(3, 4)],
              rtol=1e-6, atol=1e-6)
    check_vjp(op("clamp", min=-0.5, max=0.7), [(4, 5)])
    check_vjp(op("clamp", min=0.1), [(4, 5)])
    check_vjp(op("clamp", max=0.0), [(4, 5)])


BROADCASTS = [[(3, 5), (3, 5)], [(2, 3, 5), (5,)], [(3, 1), (1, 5)], [(4, 1, 5), (3, 1)]]


@pytest.mark.parametrize("shapes", BROADCASTS, ids=str)
@pytest.mark.parametrize("name", ["add", "sub", "mul", "div", "pow", "maximum", "minimum", "fmod", "remainder"])
def test_binary_with_broadcasting(name, shapes):
    domains = {"pow": ["pos", "real"], "div": ["real", "pos"], "fmod": ["real", "pos"],
               "remainder": ["real", "pos"]}.get(name)
    check_vjp(op(name), shapes, domains)


@pytest.mark.parametrize("name", ["maximum", "minimum"])
def test_maximum_minimum_ties_split_the_gradient(name):
    a = rand((4, 5))
    b = torch.where(torch.rand(4, 5) < 0.5, a, rand((4, 5)))
    check_vjp(op(name), [(4, 5), (4, 5)], inputs=[a, b])


def test_pow_and_div_special_values():
    a = torch.tensor([[0.0, 0.0, 2.0, -1.5], [1.0, 0.0, 3.0, 0.5]], dtype=f64)
    b = torch.tensor([[0.0, 2.0, 0.0, 2.0], [-1.0, 1.0, 0.5, 3.0]], dtype=f64)
    check_vjp(op("pow"), [(2, 4), (2, 4)], inputs=[a, b])
    for mode in ("floor", "trunc"):  # zero derivative, as in torch
        joint = check_vjp(op("div", rounding_mode=mode), [(3, 4), (3, 4)], ["real", "pos"])
        assert not any(n.op == "div" and n.attrs.get("rounding_mode") is None for n in joint.nodes)


def test_where_with_broadcasting():
    check_vjp(lambda g, c, a, b: g.add("where", [g.add("gt", [c, g.add("full", [], shape=(), value=0.0, dtype=f64)]),
                                                 a, b]),
              [(3, 1), (3, 5), (5,)])


# -- reductions -------------------------------------------------------------------------------------

REDUCE_DIMS = [((0, 2), False), ((0, 2), True), ((1,), False), ((0, 1, 2), False)]


@pytest.mark.parametrize("dims,keepdim", REDUCE_DIMS, ids=str)
@pytest.mark.parametrize("name", ["sum", "prod", "amax", "amin", "mean"])
def test_reductions(name, dims, keepdim):
    check_vjp(op(name, dims=dims, keepdim=keepdim), [(2, 3, 4)])


@pytest.mark.parametrize("dims,keepdim", REDUCE_DIMS, ids=str)
@pytest.mark.parametrize("name", ["var", "std"])
@pytest.mark.parametrize("correction", [0, 1])
def test_var_std(name, dims, keepdim, correction):
    check_vjp(op(name, dims=dims, keepdim=keepdim, correction=correction), [(2, 3, 4)])


@pytest.mark.parametrize("name", ["amax", "amin"])
def test_amax_amin_ties_share_the_gradient(name):
    x = torch.randint(0, 3, (3, 4, 5)).to(f64)  # many ties
    fn = getattr(torch, name)
    check_vjp(op(name, dims=(0, 2), keepdim=False), [(3, 4, 5)], inputs=[x],
              ref=lambda t: fn(t, dim=(0, 2), keepdim=False))


def test_prod_with_zeros():
    x = rand((3, 4, 5))
    x[0, 1, 2] = 0.0  # one zero in a slice
    x[1, 2, 0] = x[1, 3, 4] = 0.0  # two zeros in another (for dims=(1, 2))
    check_vjp(op("prod", dims=(1, 2), keepdim=False), [(3, 4, 5)], inputs=[x])
    check_vjp(op("prod", dims=(1,), keepdim=True), [(3, 4, 5)], inputs=[x])


# -- matmul and layout ------------------------------------------------------------------------------

@pytest.mark.parametrize("shapes", [[(3, 4), (4, 5)], [(2, 3, 4), (4, 5)], [(2, 1, 3, 4), (3, 4, 5)]], ids=str)
def test_matmul(shapes):
    check_vjp(op("matmul"), shapes)


LAYOUT = [
    ("reshape", dict(shape=(2, 6)), (3, 4)),
    ("permute", dict(dims=(2, 0, 1)), (2, 3, 4)),
    ("expand", dict(shape=(2, 3, 5)), (3, 1)),
    ("slice", dict(dim=1, start=1, end=7, step=2), (3, 8)),
    ("slice", dict(dim=1, start=0, end=8, step=3), (3, 8)),
    ("slice", dict(dim=0, start=2, end=5, step=1), (6, 2)),
    ("select", dict(dim=1, index=2), (3, 4, 2)),
    ("flip", dict(dims=(0, 2)), (2, 3, 4)),
]


@pytest.mark.parametrize("name,attrs,shape", LAYOUT, ids=lambda v: str(v))
def test_layout(name, attrs, shape):
    check_vjp(op(name, **attrs), [shape])


def test_cat():
    check_vjp(op("cat", dim=1), [(2, 1, 3), (2, 4, 3), (2, 2, 3)])


# -- the transform ----------------------------------------------------------------------------------

def test_fan_out_unused_outputs_and_unreached_inputs():
    def fn(g, x, y, z):
        e = g.add("exp", [x])
        a = g.add("mul", [e, g.add("sin", [x])])  # x used three times
        return [a, g.add("cos", [y]), g.add("add", [a, e])]  # output 1 gets no cotangent

    g = build(fn, [(3, 4), (3, 4), (2,)])
    joint = vjp_graph(g, wrt=[0, 1, 2], outputs=[0, 2])
    roundtrip(joint)
    xs = [rand((3, 4)), rand((3, 4)), rand((2,))]
    cts = [torch.randn(3, 4, dtype=f64), torch.randn(3, 4, dtype=f64)]
    got = evaluate(joint, *xs, *cts)
    want = reference_grads(g, xs, [cts[0], None, cts[1]], [0, 1, 2])
    for a, b in zip(got[3:], want):
        torch.testing.assert_close(a, b)
    assert got[4].abs().max() == 0 and got[5].shape == (2,) and got[5].abs().max() == 0


def test_integer_inputs_have_no_gradient():
    g = Graph()
    x = g.add_input(TensorType((3, 4), f64), "x")
    i = g.add_input(TensorType((3, 4), torch.int64), "i")
    y = g.add("mul", [x, g.add("convert", [i], dtype=f64)])
    g.set_outputs([g.add("sum", [y], dims=(0, 1), keepdim=False)])
    joint = vjp_graph(g)  # default wrt: floating inputs only
    assert len(joint.outputs) == 2
    xi, ii = rand((3, 4)), torch.randint(-3, 3, (3, 4))
    torch.testing.assert_close(evaluate(joint, xi, ii, torch.tensor(2.0, dtype=f64))[1], 2.0 * ii.to(f64))
    with pytest.raises(ValueError, match="only floating-point inputs"):
        vjp_graph(g, wrt=[1])


def test_extern_vjp_is_torchs_derivative():
    """An extern's VJP is PyTorch's derivative of the op (tests/test_extern_vjp.py has the rest); one
    torch cannot differentiate either raises naming it."""
    g = Graph()
    x = g.add_input(TensorType((3, 4), f64), "x")
    w = g.add_input(TensorType((3, 4), f64), "w")
    e = g.add("extern", [x], target="aten.cumsum.default", args=(("__input__", 0), 1))
    g.set_outputs([g.add("mul", [e, w])])
    xi, wi, ct = rand((3, 4)), rand((3, 4)), rand((3, 4))
    _, gx, gw = evaluate(vjp_graph(g), xi, wi, ct)
    rx, rw = reference_grads(g, [xi, wi], [ct], [0, 1], fn=lambda x, w: x.cumsum(1) * w)
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gw, rw)
    g = Graph()
    a = g.add_input(TensorType((3,), f64), "a")
    g.set_outputs([g.add("extern", [a, a], target="aten.igamma.default", args=(("__input__", 0), ("__input__", 1)))])
    with pytest.raises(NotImplementedError, match=r"'extern' \(target aten.igamma.default\): PyTorch has no"):
        vjp_graph(g)


def test_grad_graph_seeds_ones():
    g = build(lambda g, x: g.add("sum", [g.add("mul", [x, g.add("tanh", [x])])], dims=(0, 1), keepdim=False),
              [(3, 4)])
    joint = grad_graph(g)
    assert len(joint.inputs) == 1
    x = rand((3, 4))
    torch.testing.assert_close(evaluate(joint, x)[1], reference_grads(g, [x], [torch.tensor(1.0, dtype=f64)], [0])[0])


# -- whole models (frontend-lowered graphs) against eager autograd ----------------------------------

def Block():
    return TransformerBlock(16, 2, 4, causal=True)


def traced(module, x):
    sg = ember.trace(module, x)
    assert not sg.lowered.constants
    return sg.captured_graph, [x] + list(p.detach() for p in module.parameters())


def eager_grads(module, x, ct):
    x = x.clone().requires_grad_()
    out = module(x)
    return torch.autograd.grad(out, [x, *module.parameters()], ct)


@pytest.mark.parametrize("make,shape", [(MLP, (5, 8)), (Block, (2, 6, 16))], ids=["mlp", "block"])
def test_models_against_eager_autograd(make, shape):
    module = make().double()
    x = torch.randn(shape, dtype=f64)
    g, inputs = traced(module, x)
    ct = torch.randn(g.outputs[0].shape, dtype=f64)
    joint = vjp_graph(g)
    roundtrip(joint)
    want = eager_grads(module, x, ct)
    for result in (joint, run_pipeline(joint).graph):
        got = evaluate(result, *inputs, ct)
        for a, b in zip(got[1:], want):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


# -- forward/backward partition ---------------------------------------------------------------------

def layernorm_softmax(g, x, w, b):
    ln = g.add("add", [g.add("mul", [g.add("mul", [g.add("sub", [x, g.add("mean", [x], dims=(1,), keepdim=True)]),
                                                  g.add("rsqrt", [g.add("add", [
                                                      g.add("var", [x], dims=(1,), keepdim=True, correction=0),
                                                      g.add("full", [], shape=(), value=1e-5, dtype=x.dtype)])])]),
                                     w]), b])
    e = g.add("exp", [g.add("sub", [ln, g.add("amax", [ln], dims=(1,), keepdim=True)])])
    return g.add("div", [e, g.add("sum", [e], dims=(1,), keepdim=True)])


def run_partition(part, inputs, cts, pipeline=False):
    fwd, bwd = part.forward, part.backward
    if pipeline:
        fwd, bwd = run_pipeline(fwd).graph, run_pipeline(bwd).graph
    outs = evaluate(fwd, *inputs)
    saved = outs[part.num_outputs:]
    grads = evaluate(bwd, *saved, *[inputs[i] for i in part.saved_inputs], *cts)
    return outs[:part.num_outputs], grads


@pytest.mark.parametrize("policy", ["mincut", "naive"])
@pytest.mark.parametrize("case", ["mlp", "block", "layernorm_softmax"])
def test_partition_matches_joint(case, policy):
    if case == "layernorm_softmax":
        g = build(layernorm_softmax, [(6, 10), (10,), (10,)])
        inputs = [rand((6, 10)), rand((10,)), rand((10,))]
    else:
        module = (MLP if case == "mlp" else Block)().double()
        g, inputs = traced(module, torch.randn((5, 8) if case == "mlp" else (2, 6, 16), dtype=f64))
    joint = vjp_graph(g)
    part = partition(joint, len(g.inputs), len(g.outputs), policy=policy)
    for graph in (part.forward, part.backward):
        roundtrip(graph)
    assert len(part.backward.inputs) == part.num_saved + len(part.saved_inputs) + 1
    ct = torch.randn(g.outputs[0].shape, dtype=f64)
    want = evaluate(joint, *inputs, ct)
    for pipeline in (False, True):
        outs, grads = run_partition(part, inputs, [ct], pipeline)
        for a, b in zip(outs + grads, want):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_mincut_recomputes_pointwise_and_saves_no_more_than_naive():
    module = MLP(d_in=32, d_hidden=64, d_out=16)
    g, _ = traced(module, torch.randn(32, 32))
    mincut = forward_backward(g, policy="mincut")
    naive = forward_backward(g, policy="naive")
    # Naive (no recomputation) keeps every forward value a backward node reads: x, the three weights
    # and the activations at relu/silu and their inputs (32x64 f32 each). Min-cut saves the relu
    # output and the silu input only (relu's mask is recomputed from its output, silu from its input),
    # and the inputs themselves (views of the weights are recomputed, never saved).
    # float32, batch 32: min-cut 49152 bytes (16384 activations), naive 57344 (53248 activations).
    print(f"saved bytes: min-cut {mincut.saved_bytes} (activations {mincut.saved_activation_bytes}), "
          f"naive {naive.saved_bytes} (activations {naive.saved_activation_bytes})")
    assert mincut.saved_bytes <= naive.saved_bytes
    assert mincut.saved_activation_bytes <= naive.saved_activation_bytes
    assert mincut.saved_activation_bytes == 2 * 32 * 64 * 4
    # no saved value is a view of an input (it would be copied by materialize_outputs)
    saved = set(mincut.forward.outputs[mincut.num_outputs:])
    assert all(v.producer.op not in ("permute", "reshape", "expand") for v in saved)


def eager_saved_bytes(module, x) -> int:
    """Bytes of the distinct tensors eager autograd saves for backward (inputs and parameters included)."""
    seen = {}

    def pack(t):
        seen[(t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride())] = t.nbytes
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x.clone().requires_grad_())
    return sum(seen.values())


@pytest.mark.parametrize("make,shape", [(MLP, (32, 8)), (Block, (2, 6, 16))], ids=["mlp", "block"])
def test_saved_bytes_no_more_than_eager(make, shape):
    module, x = make(), torch.randn(shape)
    g, _ = traced(module, x)
    part = forward_backward(g)
    eager = eager_saved_bytes(module, x)
    print(f"{make.__name__}: ember saves {part.saved_bytes} bytes "
          f"({part.saved_activation_bytes} activations), eager {eager}")
    assert part.saved_bytes <= eager  # MLP: 6912 vs 8960; block: 21232 vs 26212 (float32)


# -- float32 through the compiled Triton path -------------------------------------------------------

def compiled_vs_reference(joint, inputs, rtol=1e-4, atol=1e-4):
    compiled = compile_ir(joint)
    got = compiled(inputs)
    want = evaluate(joint, *[t.double() if t.is_floating_point() else t for t in inputs])
    for a, b in zip(got, want):
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol)
    return compiled


def test_compiled_mlp_gradients_float32():
    module = MLP()
    x = torch.randn(5, 8)
    g, inputs = traced(module, x)
    ct = torch.randn(5, 4)
    joint = vjp_graph(g)
    compiled_vs_reference(joint, inputs + [ct])
    want = eager_grads(module, x, ct)
    got = compile_ir(joint)(inputs + [ct])[1:]
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # forward and backward compiled separately give the same gradients
    part = partition(joint, len(g.inputs), len(g.outputs))
    fwd, bwd = (compile_ir(p) for p in (part.forward, part.backward))
    outs = fwd(inputs)
    grads = bwd(outs[part.num_outputs:] + [inputs[i] for i in part.saved_inputs] + [ct])
    for a, b in zip(grads, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_compiled_reductions_broadcasting_and_layout_float32():
    def fn(g, x, w, b):
        y = layernorm_softmax(g, x, w, b)                                              # mean/var/amax/sum
        gate = g.add("sigmoid", [g.add("slice", [w], dim=0, start=1, end=10, step=2)])   # broadcast (5,)
        z = g.add("mul", [g.add("slice", [y], dim=1, start=1, end=10, step=2), gate])
        z = g.add("cat", [z, g.add("flip", [g.add("maximum", [y, g.add("gelu", [x], approximate="tanh")])],
                                                dims=(1,))], dim=1)
        return g.add("sum", [g.add("mul", [z, z])], dims=(1,), keepdim=False)

    g = build(fn, [(6, 10), (10,), (10,)], f32)
    joint = vjp_graph(g)
    inputs = [torch.randn(6, 10), torch.randn(10), torch.randn(10), torch.randn(6)]
    compiled_vs_reference(joint, inputs)


def test_compiled_matmul_broadcast_batch_float32():
    g = build(lambda g, a, b: g.add("tanh", [g.add("matmul", [a, b])]), [(2, 1, 3, 4), (3, 4, 5)], f32)
    compiled_vs_reference(vjp_graph(g), [torch.randn(2, 1, 3, 4), torch.randn(3, 4, 5), torch.randn(2, 3, 3, 5)])
