"""Kernels that only move data, and what removes them: the rewrites of passes/simplify.py
(`_add_of_cats`, `_summed_batch_matmul`) and the planner's cat placement (runtime/cat_slots.py: each
piece of a cat stored by its producer into its slice). Each test checks the structural fact on the
compiled graph and the values (and gradients) against eager on fresh random inputs."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ember
from ember.ir import Graph, TensorType, evaluate
from ember.ir.vjp import zeros
from ember.passes.autodiff import vjp_graph
from ember.passes.dce import dce
from ember.passes.simplify import simplify
from ember.runtime import compile_ir


class QKV(nn.Module):
    """A fused qkv projection split three ways, then attention (GPT's block)."""

    def __init__(self, split: str, d: int = 8, heads: int = 2):
        super().__init__()
        self.split, self.heads, self.qkv = split, heads, nn.Linear(d, 3 * d)

    def forward(self, x):
        b, t, d = x.shape
        y = self.qkv(x)
        if self.split == "unbind":  # examples/train_lm.py: view, permute, unbind along the leading 3
            q, k, v = y.view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        else:
            q, k, v = y.split(d, dim=-1) if self.split == "split" else y.chunk(3, dim=-1)
            q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def compiled_grads(module: nn.Module, x: torch.Tensor):
    """(the compiled forward + backward, its outputs and gradients, eager's). The optimized
    forward graph is differentiated, as `compile_step` and the autograd bridge do."""
    sg = ember.trace(module, x)
    params = [p.detach() for p in module.parameters()]
    joint = vjp_graph(sg.graph)
    exe = compile_ir(joint)
    out = module(x)
    ct = torch.randn_like(out)
    got = exe([x, *params, ct])
    xr = x.clone().requires_grad_()
    want = [module(xr), *torch.autograd.grad(module(xr), [xr, *module.parameters()], ct)]
    return exe, got, want


@pytest.mark.parametrize("split", ["split", "chunk", "unbind"])
def test_split_qkv_backward_has_no_cat_of_zeros(split):
    torch.manual_seed(0)
    module = QKV(split)
    exe, got, want = compiled_grads(module, torch.randn(2, 4, 8))
    # Autodiff places each piece's gradient among zeros (a cat per piece) and adds them; the sum
    # is one cat of the three pieces, which needs no zeros and no adds: no `full` and no `add`
    # kernel. The pieces (dq, dk, dv) come from matmuls, which store them into their slices of
    # the cat's buffer: no cat kernel either.
    ops = [k.ops for k in exe.kernels]
    assert any(n.op == "cat" for n in exe.graph.nodes)
    assert not any("cat" in o for o in ops), ops
    assert not any(o in (["full"], ["add"]) for o in ops), ops
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_add_of_padded_cats_on_ir():
    """cat(a, 0[4]) + cat(0[2], 0[2], b) -> cat(a, 0[2], b): zero parts are cut and merged, the data
    pieces kept whole; the adds and the padded cats vanish."""
    g = Graph()
    a, b = g.add_input(TensorType((2, 3), torch.float32), "a"), g.add_input(TensorType((2, 3), torch.float32), "b")
    z = lambda n: zeros(g, TensorType((n, 3), torch.float32))
    g.set_outputs([g.add("add", [g.add("cat", [a, z(4)], dim=0), g.add("cat", [z(2), z(2), b], dim=0)])])
    s = dce(simplify(g))
    assert [n.op for n in s.nodes if n.op in ("add", "cat")] == ["cat"], s
    (cat,) = [n for n in s.nodes if n.op == "cat"]
    assert [v.shape[0] for v in cat.inputs] == [2, 2, 2] and cat.inputs[0] is s.inputs[0], s
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(evaluate(s, x, y)[0], evaluate(g, x, y)[0], rtol=0, atol=0)


def test_unused_piece_of_a_split():
    """q, k, v = split(...) with v unused: the gradient is cat(dq, dk, zeros)."""
    torch.manual_seed(0)

    class TwoOfThree(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(4, 12)

        def forward(self, x):
            q, k, _ = self.lin(x).split(4, dim=-1)
            return q.sin() * k

    exe, got, want = compiled_grads(TwoOfThree(), torch.randn(2, 3, 4))
    ops = [k.ops for k in exe.kernels]
    assert not any("cat" in o for o in ops) and not any(o == ["add"] for o in ops), ops
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_overlapping_slices_keep_their_sum():
    """Slices that overlap: the padded cats cannot be merged without cutting a gradient piece (the rule
    must not fire), and the gradient is still the sum."""
    torch.manual_seed(0)

    class Overlap(nn.Module):
        def forward(self, x):
            return x[:, :5].sin() * 2 + x[:, 3:].cos()

    module = Overlap()
    _, got, want = compiled_grads(module, torch.randn(3, 8))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_linear_on_a_batch_of_sequences_weight_grad_is_one_matmul():
    torch.manual_seed(0)
    module = nn.Linear(8, 6)
    exe, got, want = compiled_grads(module, torch.randn(2, 5, 8))
    # The weight gradient contracts over batch and sequence in one matmul, not a batched matmul
    # (one product per sequence) whose results a reduction kernel then sums over the batch.
    summed = [n for n in exe.graph.nodes if n.op == "sum" and n.inputs[0].producer is not None
              and n.inputs[0].producer.op == "matmul"]
    assert not summed, exe.graph
    mms = [n for n in exe.graph.nodes if n.op == "matmul"]
    assert len(mms) == 3 and [n.out.type.rank for n in mms] == [3, 3, 2], exe.graph
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def cat_kernels(sg) -> list:
    return [k.ops for k in sg.compiled.kernels if "cat" in k.ops]


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cat_pieces_are_stored_in_place(dim):
    """Pieces computed by a pointwise kernel (two outputs), a matmul and a row kernel, joined by a cat
    a pointwise kernel reads: the producers store into the cat's buffer, no copy kernel."""
    def f(a, b, w):
        parts = [a.sin(), b @ w, a.cos() * 2, torch.softmax(a, dim=1)]
        return torch.cat(parts, dim=dim).relu() + 1

    args = (torch.randn(6, 6), torch.randn(6, 5), torch.randn(5, 6))
    sg = ember.trace(f, *args)
    assert any(n.op == "cat" for n in sg.graph.nodes) and not cat_kernels(sg), sg.compiled.kernels
    args = tuple(torch.randn_like(t) for t in args)
    torch.testing.assert_close(sg(*args), f(*args), rtol=1e-5, atol=1e-6)


def test_nested_cat_and_permuted_consumer():
    """A cat of a cat (the inner one lives in a slice of the outer one's buffer) read through a
    permute, whose layout the outer buffer takes."""
    def f(a, b, c):
        inner = torch.cat([a.exp(), b.tanh()], dim=0)
        return torch.cat([inner, (c @ c.t()).sigmoid()], dim=0).t() * 3

    args = (torch.randn(3, 4), torch.randn(2, 4), torch.randn(4, 5))
    sg = ember.trace(f, *args)
    assert not cat_kernels(sg), sg.compiled.kernels
    args = tuple(torch.randn_like(t) for t in args)
    torch.testing.assert_close(sg(*args), f(*args), rtol=1e-5, atol=1e-6)


def test_cat_pieces_that_need_their_own_storage():
    """A piece read elsewhere too, a piece that is an input, a piece that is an output: the cat
    copies (where needed), values stay right, and outputs never share memory."""
    def f(a, b):
        s = a.sin()
        return torch.cat([s, b], dim=1), torch.cat([s, a.cos()], dim=1) + s.sum(), a.cos() * 2

    args = (torch.randn(4, 3), torch.randn(4, 2))
    sg = ember.trace(f, *args)
    args = tuple(torch.randn_like(t) for t in args)
    got, want = sg(*args), f(*args)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got[0].zero_()
    torch.testing.assert_close(got[1:], want[1:], rtol=1e-5, atol=1e-6)


def test_cat_output_returned_with_its_pieces_computed_once():
    def f(a, b):
        return torch.cat([a.exp(), (a @ b).relu()], dim=0)

    args = (torch.randn(3, 3), torch.randn(3, 3))
    sg = ember.trace(f, *args)
    assert not cat_kernels(sg), sg.compiled.kernels
    args = tuple(torch.randn_like(t) for t in args)
    torch.testing.assert_close(sg(*args), f(*args), rtol=1e-5, atol=1e-6)


def test_pooled_gradient_broadcast_joins_its_consumer():
    """ResNet's backward through a global mean and a tiling max-pool: the pooled gradient (a matmul's
    output) is scaled, expanded over the windows and regrouped with size-1 window dims. The reshape
    moves before the scale (`_unsqueeze_early`), so the scale is a broadcast the masking kernel
    reads: the matmul and one kernel, not a kernel for the scale over the small shape."""
    def f(g, w, m):
        d = (g @ w).view(2, 3, 1, 1) / 16
        return torch.where(m, d.expand(2, 3, 4, 4).reshape(2, 3, 4, 1, 4, 1), 0.0)

    args = (torch.randn(2, 5), torch.randn(5, 3), torch.rand(2, 3, 4, 2, 4, 2) > 0.5)
    sg = ember.trace(f, *args)
    assert [k.ops for k in sg.compiled.kernels] == [["matmul"], ["div", "where"]], sg.compiled.kernels
    args = (torch.randn(2, 5), torch.randn(5, 3), torch.rand(2, 3, 4, 2, 4, 2) > 0.5)
    torch.testing.assert_close(sg(*args), f(*args), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("start,step", [(0, 1), (3, 4), (5, -2)])
def test_integer_arange_fuses_into_its_consumer(start, step):
    """A causal mask from integer aranges: start + step * iota, pointwise, so the aranges, the
    mask and the masked fill are one kernel."""
    def f(x):
        i = torch.arange(start, start + step * 6, step)
        return x.masked_fill(i[:, None] < i, 0.0) + i

    x = torch.randn(6, 6)
    sg = ember.trace(f, x)
    assert len(sg.compiled.kernels) == 1, [k.ops for k in sg.compiled.kernels]
    x = torch.randn(6, 6)
    torch.testing.assert_close(sg(x), f(x))


def test_cat_with_a_piece_whose_kernel_allocates_its_own_output():
    """argmax's reduction kernel stores where it allocates, not into a slice: the cat copies (its
    kernel reads the placed pieces from the cat's buffer, argmax's from its own), values unchanged."""
    def f(x):
        return torch.cat([(x > 0).long().sum(1, keepdim=True), x.argmax(1, keepdim=True), (x < 0).long()], dim=1) * 2

    x = torch.randn(4, 5)
    sg = ember.trace(f, x)
    assert len(cat_kernels(sg)) == 1, sg.compiled.kernels
    x = torch.randn(4, 5)
    torch.testing.assert_close(sg(x), f(x))
