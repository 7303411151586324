"""Gradients through torch fallbacks: an `extern` call's VJP is PyTorch's own derivative of the op,
traced and lowered to IR (ir/ops/extern.py, frontend/extern_vjp.py). Checked against eager autograd
on fresh random inputs: single ops through `ember.compile(fn)(...).backward()`, the IR rule on its
own (reference interpreter), and whole training steps through `ember.compile_step`."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ember
from ember.frontend.extern_vjp import extern_vjp
from ember.ir import Graph, TensorType, evaluate
from ember.passes.autodiff import vjp_graph

f32, f64 = torch.float32, torch.float64
I = lambda i: ("__input__", i)  # noqa: E731  an extern argument template's i-th input


def grads_match(fn, *args, rtol=1.3e-5, atol=1e-5, exact=False):
    """`ember.compile(fn)` forward and backward (a random cotangent per output) against eager; returns
    the compiled outputs. `exact`: the gradients must be bitwise equal."""
    ref_args = [a.detach().clone().requires_grad_(a.requires_grad) if isinstance(a, torch.Tensor) else a
                for a in args]
    out = ember.compile(fn)(*args)
    ref = fn(*ref_args)
    outs, refs = (out, ref) if isinstance(ref, tuple) else ((out,), (ref,))
    seeds = [torch.randn_like(r) for r in refs]
    for o, r in zip(outs, refs):
        torch.testing.assert_close(o, r, rtol=rtol, atol=atol)
    sum((o * s).sum() for o, s in zip(outs, seeds)).backward()
    sum((r * s).sum() for r, s in zip(refs, seeds)).backward()
    checked = 0
    for a, r in zip(args, ref_args):
        if isinstance(a, torch.Tensor) and a.requires_grad:
            if exact:
                assert torch.equal(a.grad, r.grad), (a.grad - r.grad).abs().max()
            torch.testing.assert_close(a.grad, r.grad, rtol=rtol, atol=atol)
            checked += 1
    assert checked
    return out


def leaf(*shape, dtype=f32, low=None):
    t = torch.randn(*shape, dtype=dtype)
    return (t.abs() + low if low is not None else t).requires_grad_()


# -- single ops --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw", [dict(), dict(stride=2, padding=1), dict(padding=2, dilation=2),
                                dict(groups=2, padding=1)])
def test_conv2d(kw):
    groups = kw.get("groups", 1)
    grads_match(lambda x, w, b: F.conv2d(x, w, b, **kw), leaf(2, 4, 7, 7), leaf(6, 4 // groups, 3, 3), leaf(6))


def test_conv2d_input_gradient_only_and_no_bias():
    x, w = leaf(1, 3, 6, 6), torch.randn(5, 3, 3, 3)  # the weight needs no gradient
    grads_match(lambda x, w: F.conv2d(x, w, padding=1), x, w)


def test_conv_transpose2d_and_conv1d():
    grads_match(lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1),
                leaf(2, 3, 4, 4), leaf(3, 5, 3, 3), leaf(5))
    grads_match(lambda x, w: F.conv1d(x, w, padding=1), leaf(2, 3, 9), leaf(4, 3, 3))


def test_max_pool2d_ties_get_torchs_index():
    """Windows with equal maxima: torch gives the gradient to the index its forward picked; so must
    ember (the derivative reads the forward's indices). Ties directly in the input, and after relu
    in overlapping windows."""
    x = (torch.randn(2, 3, 8, 8) * 2).round().requires_grad_()  # integers: many ties
    grads_match(lambda x: F.max_pool2d(x, 2), x, exact=True)
    grads_match(lambda x: F.max_pool2d(F.relu(x), 3, stride=1, padding=1), leaf(2, 3, 6, 6), exact=True)
    grads_match(lambda x: F.max_pool2d(x, 3, stride=2, ceil_mode=True), x.detach().clone().requires_grad_(),
                exact=True)


def test_avg_and_adaptive_pooling():
    grads_match(lambda x: F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False), leaf(2, 3, 7, 7))
    grads_match(lambda x: F.adaptive_avg_pool2d(x, (3, 2)), leaf(2, 3, 7, 5))
    grads_match(lambda x: F.adaptive_max_pool2d(x, 2), leaf(2, 3, 6, 6))


def test_embedding_padding_idx_and_repeated_indices():
    idx = torch.tensor([[0, 2, 2, 5], [5, 5, 1, 0]])  # repeats accumulate; padding_idx 0 gets none
    w = leaf(7, 4)
    grads_match(lambda i, w: F.embedding(i, w, padding_idx=0), idx, w)
    grads_match(lambda i, w: F.embedding(i, w) * 2, torch.randint(0, 7, (3, 5)), leaf(7, 4))


def test_indexing_ops():
    x = leaf(5, 4)
    idx = torch.tensor([3, 0, 3, 1])
    grads_match(lambda x: x.index_select(0, idx) + x[idx, 1:].sum(), x)
    grads_match(lambda x: x.gather(1, torch.tensor([[0, 0], [3, 1], [2, 2], [1, 0], [3, 3]])), leaf(5, 4))
    perm = torch.stack([torch.randperm(4)[:3] for _ in range(5)])  # scatter: distinct targets per row
    grads_match(lambda x, s: x.scatter(1, perm, s), leaf(5, 4), leaf(5, 3))
    many = torch.randint(0, 4, (5, 3))  # repeated targets accumulate
    grads_match(lambda x, s: x.scatter_add(1, many, s), leaf(5, 4), leaf(5, 3))
    grads_match(lambda x, v: x.index_put((idx,), v, accumulate=True), leaf(5, 4), leaf(4, 4))
    grads_match(lambda x, v: x.index_put((torch.tensor([4, 0]),), v), leaf(5, 4), leaf(2, 4))


def test_scans_sorts_and_unary_fallbacks():
    grads_match(lambda x: torch.cumsum(x, 1) * torch.cumprod(x, 0), leaf(4, 5))
    grads_match(lambda x: torch.sort(x, 1, descending=True).values * 2, leaf(4, 6))
    grads_match(lambda x: torch.topk(x, 3, dim=0).values, leaf(6, 4))
    # (atan, sinh, tan, asin are ember kernels now, ir/ops/trig.py; these special functions still are not)
    unary = lambda x: (torch.special.log_ndtr(x) + torch.special.ndtri(torch.sigmoid(x))
                       + torch.polygamma(2, x.abs() + 1))
    assert {"aten.special_log_ndtr.default", "aten.special_ndtri.default", "aten.polygamma.default"} <= {
        str(k) for k in ember.trace(unary, torch.randn(4, 5)).unsupported()}
    grads_match(unary, leaf(4, 5))


@pytest.mark.parametrize("kw", [dict(scale_factor=2, mode="nearest"), dict(size=(5, 7), mode="nearest"),
                                dict(scale_factor=2, mode="bilinear"),
                                dict(size=(5, 3), mode="bilinear", align_corners=True)])
def test_interpolate(kw):
    grads_match(lambda x: F.interpolate(x, **kw), leaf(2, 3, 4, 4))


def test_group_norm():
    grads_match(lambda x, w, b: F.group_norm(x, 2, w, b), leaf(2, 4, 3, 3), leaf(4), leaf(4), rtol=1e-4)


def test_float64_conv_and_pool():
    grads_match(lambda x, w: F.max_pool2d(F.conv2d(x, w, padding=1), 2), leaf(2, 2, 6, 6, dtype=f64),
                leaf(3, 2, 3, 3, dtype=f64), rtol=1e-9, atol=1e-9)


# -- the IR rule on its own ----------------------------------------------------------------------------


def test_vjp_rule_reads_the_forward_outputs_and_asks_only_needed_gradients():
    """max_pool2d_with_indices has two outputs, only the values get a cotangent, and the derivative
    reads the indices output (not a second forward); the conv's input needs no gradient, so torch's
    backward is asked for the weight's only (output_mask)."""
    g = Graph()
    x = g.add_input(TensorType((1, 2, 6, 6), f64), "x")
    w = g.add_input(TensorType((3, 2, 3, 3), f64), "w")
    c = g.add("extern", [x, w], target="aten.convolution.default",
              args=(I(0), I(1), None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1))
    vals, idx = g.add("extern", [c], target="aten.max_pool2d_with_indices.default", args=(I(0), [2, 2], [2, 2]))
    g.set_outputs([vals])
    joint = vjp_graph(g, wrt=[1])
    targets = [n.attrs["target"] for n in joint.nodes if n.op == "extern"]
    assert targets.count("aten.max_pool2d_with_indices.default") == 1 and \
        targets.count("aten.convolution.default") == 1, targets
    # output_mask [False, True, False]: the weight's gradient only, which ember lowers to its weight
    # gradient kernel alone (frontend/lower_conv.py)
    ops = [n.op for n in joint.nodes]
    assert "conv2d_weight_grad" in ops and "conv2d_input_grad" not in ops, ops
    xi, wi = torch.randn(1, 2, 6, 6, dtype=f64), torch.randn(3, 2, 3, 3, dtype=f64, requires_grad=True)
    ct = torch.randn(1, 3, 3, 3, dtype=f64)
    out, gw = evaluate(joint, xi, wi.detach(), ct)
    ref = F.max_pool2d(F.conv2d(xi, wi, padding=1), 2)
    ref.backward(ct)
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(gw, wi.grad)


def test_derivative_reads_the_result_instead_of_calling_the_op_again():
    """erfinv's derivative formula calls erfinv(x) again: the VJP graph reads the extern's output."""
    t = TensorType((3, 4), f32)
    vjp = extern_vjp("aten.erfinv.default", (I(0),), {}, [t], [t], (True,), (0,))
    assert not [n for n in vjp.graph.nodes if "erfinv" in str(n.attrs.get("target"))], vjp.graph
    x, ct = torch.rand(3, 4) * 1.8 - 0.9, torch.randn(3, 4)
    xr = x.clone().requires_grad_()
    torch.erfinv(xr).backward(ct)
    torch.testing.assert_close(evaluate(vjp.graph, x, torch.erfinv(x), ct)[0], xr.grad)


def test_layout_dependent_derivative_of_a_strided_input_is_refused():
    """as_strided's derivative reads its input's strides, which the IR does not record for an input
    torch saw non-contiguous: refused, not guessed."""
    g = Graph()
    x = g.add_input(TensorType((4, 4), f32), "x")
    g.set_outputs([g.add("extern", [x], target="aten.as_strided.default", args=(I(0), [2, 2], [1, 4]),
                         strided=(0,))])
    with pytest.raises(NotImplementedError, match="memory layout"):
        vjp_graph(g)


def test_vjp_graphs_are_cached_per_call_signature():
    args = (I(0), [2, 2], [2, 2])
    key = ("aten.max_pool2d_with_indices.default", args, {}, [TensorType((1, 1, 4, 4), f32)],
           [TensorType((1, 1, 2, 2), f32), TensorType((1, 1, 2, 2), torch.int64)], (True,), (0,))
    assert extern_vjp(*key) is extern_vjp(*key)
    other = extern_vjp(key[0], (I(0), [2, 2], [1, 1]), *key[2:3], key[3],
                       [TensorType((1, 1, 3, 3), f32), TensorType((1, 1, 3, 3), torch.int64)], *key[5:])
    assert other is not extern_vjp(*key)


def test_passthrough_extern_passes_cotangents_to_the_checked_values():
    x = torch.randn(3, 3, dtype=f64) + 3 * torch.eye(3, dtype=f64)
    grads_match(lambda a: torch.linalg.inv(a), x.requires_grad_(), rtol=1e-9, atol=1e-9)


def test_random_extern_is_not_drawn_again():
    """torch.normal(mean, std) with tensor arguments: torch's derivative is zero for both (no
    reparameterization); the backward must not draw, and the forward values stay those returned."""
    mean, std = leaf(50), leaf(50, low=0.5)
    fn = lambda m, s: torch.normal(m, s) * m
    out = ember.compile(fn)(mean, std)
    seed = torch.randn(50)
    (out * seed).sum().backward()
    noise = (out / mean).detach()  # the sample the forward drew
    torch.testing.assert_close(mean.grad, seed * noise)  # d(noise * m)/dm with d noise/dm = 0
    torch.testing.assert_close(std.grad, torch.zeros(50))


def test_op_without_a_pytorch_derivative_raises_naming_it():
    a, x = leaf(5, low=0.5), torch.rand(5) + 0.1
    with pytest.raises(NotImplementedError, match="derivative for 'igamma: input' is not implemented"):
        torch.igamma(a, x).sum().backward()  # eager refuses too
    with pytest.raises(NotImplementedError, match=r"aten\.igamma\.default\): PyTorch has no derivative"):
        ember.compile(lambda a, x: torch.igamma(a, x).sum())(a, x).backward()
    grads_match(lambda a, x: torch.igamma(a, x), a.detach(), x.requires_grad_())  # the other input has one


# -- training through compile_step ----------------------------------------------------------------------


def tiny_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(4, 4, 3, stride=2, padding=1, groups=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(16, 3))


class TinyLM(nn.Module):
    def __init__(self, vocab=11, dim=8, length=6):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim, padding_idx=0)
        self.pos = nn.Embedding(length, dim)
        self.mix = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, x):
        h = self.tok(x) + self.pos(torch.arange(x.shape[1]))
        return self.head(torch.tanh(self.mix(torch.cumsum(h, 1))))


def lm_loss(logits, y):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@pytest.mark.parametrize("name", ["cnn", "lm"])
def test_compile_step_trains_like_eager(name):
    torch.manual_seed(0)
    if name == "cnn":
        model, loss_fn = tiny_cnn(), F.cross_entropy
        batches = [(torch.randn(4, 1, 8, 8), torch.randint(0, 3, (4,))) for _ in range(3)]
    else:
        model, loss_fn = TinyLM(), lm_loss
        batches = [(torch.randint(0, 11, (3, 6)), torch.randint(0, 11, (3, 6))) for _ in range(3)]
    ref = copy.deepcopy(model)
    kw = dict(lr=0.1, momentum=0.9)
    step = ember.compile_step(model, loss_fn, ember.optim.SGD(model.parameters(), **kw))
    ref_opt = torch.optim.SGD(ref.parameters(), **kw)
    for i, (x, y) in enumerate(batches):
        loss = step(x, y)
        ref_opt.zero_grad()
        ref_loss = loss_fn(ref(x), y)
        ref_loss.backward()
        ref_opt.step()
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-4, atol=1e-5, msg=f"loss at step {i}")
        for (pname, p), q in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=f"{pname} after step {i}")
        for (bname, b), c in zip(model.named_buffers(), ref.buffers()):
            torch.testing.assert_close(b, c, rtol=1e-4, atol=1e-6, msg=f"buffer {bname} after step {i}")


def test_compiled_cnn_backward_fills_grads():
    torch.manual_seed(0)
    model = tiny_cnn()
    ref = copy.deepcopy(model)
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    y = torch.randint(0, 3, (4,))
    F.cross_entropy(ember.compile(model)(x), y).backward()
    F.cross_entropy(ref(xr), y).backward()
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-6)
