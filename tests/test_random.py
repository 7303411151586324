"""Random numbers: the `rand` IR op (Philox-4x32-10), its lowering (rand, bernoulli, dropout), seeding.

The kernels and the reference interpreter compute the same counter-based function, so they agree bit
for bit wherever `rand` is fused (pointwise, row and matmul-epilogue kernels); the seed is a graph
input drawn from torch's default generator per call, so `torch.manual_seed` makes programs repeat.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
import triton
from torch import nn
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import ember
from ember.codegen import generated_kernels
from ember.codegen.kernel import GPU_OPTIONS
from ember.codegen.source_cache import load_module
from ember.ir import Graph, TensorType, parse_graph
from ember.ir.interpreter import evaluate
from ember.ir.ops.random import philox
from ember.runtime import compile_graph

T = TensorType
SEED = torch.tensor(0x1234_5678_9ABC_DEF)


def _ints(*words):
    return [torch.tensor([w], dtype=torch.int64) for w in words]


def test_philox_known_answers():
    """Random123's known-answer vectors for philox4x32-10 (key = seed's low, high words)."""
    cases = [
        (0, (0, 0, 0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        (-1, (0xFFFFFFFF,) * 4, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (0xA4093822 | (0x299F31D0 << 32), (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
         (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
    ]
    for seed, ctr, want in cases:
        assert [int(w) for w in philox(torch.tensor(seed), *_ints(*ctr))] == list(want)


def _check_kernel(g: Graph, *inputs: torch.Tensor, fuse: bool = True) -> list[torch.Tensor]:
    """rand outputs equal the reference bit for bit; outputs computed from them within rounding."""
    assert str(parse_graph(str(g))) == str(g)
    got = compile_graph(g, fuse=fuse)(list(inputs))
    want = evaluate(g, *inputs)
    for v, a, b in zip(g.outputs, got, want):
        assert a.dtype == b.dtype
        if v.producer.op == "rand":
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b)
    return got


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_kernel_matches_reference_bit_for_bit(dtype):
    g = Graph()
    seed, x = g.add_input(T((), torch.int64)), g.add_input(T((3, 1, 5), dtype))
    r = g.add("rand", [seed], shape=(3, 4, 5), dtype=dtype, stream=7)
    small = g.add("rand", [seed], shape=(4, 1), dtype=dtype, stream=1)  # broadcast inside a bigger kernel
    g.set_outputs([r, g.add("add", [r, x]), g.add("mul", [small, r])])
    for fuse in (True, False):
        r, _, _ = _check_kernel(g, SEED, torch.randn(3, 1, 5).to(dtype), fuse=fuse)
        assert r.min() >= 0 and r.max() < 1


def test_numbers_do_not_depend_on_the_kernel():
    """The same (seed, stream, shape) gives the same tensor alone, in a row kernel (squeezed rows too)
    and in a batched matmul epilogue."""
    g = Graph()
    seed, x = g.add_input(T((), torch.int64)), g.add_input(T((2, 6, 40), torch.float32))
    w = g.add_input(T((40, 40), torch.float32))
    alone = g.add("rand", [seed], shape=(2, 6, 40), dtype=torch.float32, stream=3)
    soft = g.add("div", [g.add("exp", [x]), g.add("sum", [g.add("exp", [x])], dims=(2,), keepdim=True)])
    in_row = g.add("mul", [soft, g.add("rand", [seed], shape=(2, 6, 40), dtype=torch.float32, stream=3)])
    squeezed = g.add("add", [g.add("sum", [x], dims=(2,), keepdim=False),
                             g.add("rand", [seed], shape=(2, 6), dtype=torch.float32, stream=4)])
    in_mm = g.add("add", [g.add("matmul", [x, w]),
                          g.add("rand", [seed], shape=(2, 6, 40), dtype=torch.float32, stream=3)])
    g.set_outputs([alone, in_row, squeezed, in_mm])
    xs, ws = torch.randn(2, 6, 40), torch.randn(40, 40)
    cg = compile_graph(g)
    got, want = cg([SEED, xs, ws]), evaluate(g, SEED, xs, ws)
    # row bodies: here both row groups share one multi-row launch (passes/horizontal.py), which inlines them
    # (pointwise multi-tensor kernels never take rand)
    assert {k.kernel.kind for k in cg.kernels if "rand" in k.ops} >= {"multi", "matmul"}
    assert torch.equal(got[0], want[0])
    # the random part of each fused result is `alone`'s numbers (up to the rounding of the rest)
    torch.testing.assert_close(got[1], torch.softmax(xs, -1) * want[0])
    torch.testing.assert_close(got[2], want[2])
    torch.testing.assert_close(got[3] - xs @ ws, got[0], atol=1e-4, rtol=0)


def test_uniform_statistics():
    n = 100_000
    g = Graph()
    seed = g.add_input(T((), torch.int64))
    a = g.add("rand", [seed], shape=(n,), dtype=torch.float32, stream=0)
    b = g.add("rand", [seed], shape=(n,), dtype=torch.float32, stream=1)
    g.set_outputs([a, b])
    u, v = compile_graph(g)([SEED])
    sigma = math.sqrt(1 / 12 / n)  # standard error of the mean
    assert abs(u.mean().item() - 0.5) < 5 * sigma
    assert abs(u.var().item() - 1 / 12) < 5 * math.sqrt(1 / 180 / n)  # Var of s^2 for U(0,1): 1/180n
    assert 0 <= u.min() and u.max() < 1
    hist = torch.histc(u, bins=10, min=0, max=1)  # chi-squared over 10 bins, 9 dof: 99.99% below 33.7
    assert ((hist - n / 10) ** 2 / (n / 10)).sum() < 33.7
    assert abs(torch.corrcoef(torch.stack([u, v]))[0, 1].item()) < 5 / math.sqrt(n)  # streams independent
    assert abs(torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1].item()) < 5 / math.sqrt(n)


def _dropouts(x):
    return F.dropout(x, 0.3, training=True), F.dropout(x, 0.3, training=True)


def test_lowering_fuses_and_follows_manual_seed():
    x = torch.randn(64, 32)
    sg = ember.trace(lambda x: F.dropout(x, 0.3, training=True) * 2 + torch.rand_like(x), x)
    assert "rand" in [n.op for n in sg.graph.nodes]
    assert sg.externs == [] and sg.unsupported() == {} and sg.num_kernels == 1
    cf = ember.compile(_dropouts)
    torch.manual_seed(0)
    a1, b1 = cf(x)
    a2, b2 = cf(x)
    torch.manual_seed(0)
    a3, b3 = cf(x)
    assert torch.equal(a1, a3) and torch.equal(b1, b3)       # reproducible
    assert not torch.equal(a1 == 0, a2 == 0)                  # a new call, new numbers
    assert not torch.equal(a1 == 0, b1 == 0)                  # two dropouts, independent masks
    keep = (a1 != 0).float().mean().item()
    assert abs(keep - 0.7) < 0.05


def test_rand_bernoulli_uniform_lowering():
    x = torch.rand(200, 50)

    def f(x):
        return torch.rand(200, 50), torch.bernoulli(x), torch.bernoulli(x, 0.25), torch.empty_like(x).uniform_(-2, 3)

    sg = ember.trace(f, x)
    assert sg.externs == []
    r, bx, bp, un = sg(x)
    assert r.shape == (200, 50) and 0 <= r.min() and r.max() < 1
    assert set(bx.unique().tolist()) <= {0.0, 1.0} and abs(bx.mean() - x.mean()) < 0.02
    assert abs(bp.mean().item() - 0.25) < 0.02
    assert -2 <= un.min() and un.max() < 3 and abs(un.mean().item() - 0.5) < 0.05


class _MLP(nn.Module):
    def __init__(self, p=0.4):
        super().__init__()
        self.l1, self.l2, self.drop = nn.Linear(16, 64), nn.Linear(64, 4), nn.Dropout(p)

    def forward(self, x):
        return self.l2(self.drop(torch.relu(self.l1(x))))


def test_dropout_gradient_uses_the_forward_mask():
    p = 0.4
    cm = ember.compile(lambda x: F.dropout(x, p, training=True))
    x = torch.randn(32, 48, requires_grad=True)
    y = cm(x)
    y.sum().backward()
    g = x.grad
    scale = torch.tensor(1.0) / torch.tensor(1 - p)
    assert set(g.unique().tolist()) <= {0.0, scale.item()}
    assert torch.equal(y == 0, g == 0)                        # the forward's zero pattern
    assert torch.equal(y, x.detach() * g)                     # y = x * mask / (1 - p), the same mask
    # through a layer: the backward recomputes the mask from the saved seed (remat), the same mask
    torch.manual_seed(1)
    layer = nn.Sequential(nn.Linear(16, 24), nn.Dropout(p))
    cm = ember.compile(layer)
    xs = torch.randn(8, 16)
    out = cm(xs)
    out.sum().backward()
    kept = (out != 0).float() / (1 - p)
    assert 0.4 < (out != 0).float().mean() < 0.8
    torch.testing.assert_close(layer[0].weight.grad, kept.T @ xs)
    torch.testing.assert_close(layer[0].bias.grad, kept.sum(0))


def test_compile_step_trains_with_dropout_and_eval_disables_it():
    torch.manual_seed(0)
    model = _MLP(0.3)
    x = torch.randn(64, 16)
    y = (x[:, :4].argmax(1))
    opt = ember.optim.Adam(model.parameters(), lr=1e-2)
    step = ember.compile_step(model, F.cross_entropy, opt)
    losses = [step(x, y).item() for _ in range(30)]
    assert step.graph is not None and "rand" in [n.op for n in step.graph.nodes]
    assert not any(n.op == "extern" for n in step.graph.nodes)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5
    model.eval()
    cm = ember.compile(model)
    with torch.no_grad():
        out1, out2 = cm(x), cm(x)
        torch.testing.assert_close(out1, model(x))
    assert torch.equal(out1, out2)
    assert "rand" not in [n.op for n in cm.graphs[0].graph.nodes]


def test_rand_kernels_compile_for_sm90():
    g = Graph()
    seed = g.add_input(T((), torch.int64))
    g.set_outputs([g.add("rand", [seed], shape=(5, 7), dtype=dt, stream=2)
                   for dt in (torch.float32, torch.float16, torch.float64)])
    compile_graph(g)([SEED])
    specs = [s for s in generated_kernels() if "umulhi" in s.source]
    assert specs
    done = set()
    for spec in specs:
        consts = {**dict(spec.constexprs), **({"INTERP": False} if "INTERP" in dict(spec.constexprs) else {})}
        key = (spec.source, str(sorted(consts.items())))
        if key in done or len(done) >= 6:
            continue
        done.add(key)
        fn = getattr(load_module(spec.source), spec.name)
        triton.compile(ASTSource(fn=fn, signature=spec.signature, constexprs=consts),
                       target=GPUTarget("cuda", 90, 32), options=GPU_OPTIONS)
