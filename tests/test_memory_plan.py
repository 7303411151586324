"""Memory planning (runtime/memory.py): a plan's private temporaries share one slab by lifetime; two
that live at once never share a byte, and a program computes the same bits with the slab shared as
with every temporary on its own, even when the slab starts full of garbage."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from torch import nn
from zoo import ZOO

import ember
from ember.ir import Graph, TensorType
from ember.runtime import compile_ir, executor, memory


def _random_spans(rng: random.Random, n: int) -> tuple[dict[int, int], dict[int, tuple[int, int]]]:
    sizes, spans = {}, {}
    for b in range(n):
        first = rng.randrange(20)
        spans[b] = (first, first + rng.randrange(6))
        sizes[b] = rng.choice([0, 1, 4, 100, 256, 1000, 4096, 70000])
    return sizes, spans


@pytest.mark.parametrize("seed", range(20))
def test_buffers_alive_together_never_share_bytes(seed):
    sizes, spans = _random_spans(random.Random(seed), 40)
    offsets, slab = memory.assign(sizes, spans)
    blocks = {b: (offsets[b], offsets[b] + max(sizes[b], 1)) for b in spans}
    for b, (o, e) in blocks.items():
        assert o % memory.ALIGN == 0 and e <= slab
        for c, (o2, e2) in blocks.items():
            live_together = spans[b][0] <= spans[c][1] and spans[c][0] <= spans[b][1]
            if c != b and live_together:
                assert e <= o2 or e2 <= o, (b, c)
    # never below what is alive at once, never above all of them one by one
    assert memory.peak_bytes(sizes, spans) <= slab <= sum(-(-max(s, 1) // memory.ALIGN) * memory.ALIGN
                                                          for s in sizes.values())


def test_a_chain_of_kernels_reuses_its_temporaries():
    # exp and matmul alternate (a matmul ends a fusion group): each temporary dies two kernels later
    g = Graph()
    x = g.add_input(TensorType((64, 64), torch.float32))
    w = g.add_input(TensorType((64, 64), torch.float32))
    v = x
    for _ in range(8):
        v = g.add("matmul", [g.add("tanh", [v]), w])
    g.set_outputs([v])
    exe = compile_ir(g)
    xs = [torch.randn(64, 64) / 8, torch.randn(64, 64) / 8]
    out = exe(xs)[0]
    ref = xs[0]
    for _ in range(8):
        ref = torch.tanh(ref) @ xs[1]
    torch.testing.assert_close(out, ref)
    plan = memory.plan_memory(exe.plan)
    one = 64 * 64 * 4
    assert plan.separate_bytes >= 8 * one and plan.slab_bytes <= 2 * one  # 15 temporaries, 2 live at once


@pytest.fixture
def garbage_slabs(monkeypatch):
    """Every call makes its slab anew (no arena) full of 0xFF bytes: NaN in a float, -1 in an int."""
    monkeypatch.setattr(executor, "ARENA_MAX_BYTES", 0)
    monkeypatch.setattr(executor, "new_slab", lambda n, device: torch.full((n,), 255, dtype=torch.uint8,
                                                                           device=device))


def _train(name: str, share: bool, monkeypatch) -> tuple[list[torch.Tensor], dict]:
    monkeypatch.setattr(memory, "SHARE", share)
    torch.manual_seed(0)
    entry = ZOO[name]
    model = entry.make()
    step = ember.compile_step(model, entry.loss, ember.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-3))
    batches = [entry.batch() for _ in range(2)]
    losses = [step(x, y) for x, y in batches]
    return losses, copy.deepcopy(model.state_dict())


@pytest.mark.parametrize("name", ["gpt", pytest.param("resnet", marks=pytest.mark.slow)])
def test_training_with_a_shared_slab_is_bit_identical(name, garbage_slabs, monkeypatch):
    shared_losses, shared_state = _train(name, True, monkeypatch)
    alone_losses, alone_state = _train(name, False, monkeypatch)
    for a, b in zip(shared_losses, alone_losses):
        assert torch.equal(a, b)
    for k, v in shared_state.items():
        assert torch.equal(v, alone_state[k]), k


def test_forward_and_backward_with_a_shared_slab_match_eager(garbage_slabs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 32), nn.LayerNorm(32), nn.GELU(), nn.Linear(32, 32), nn.Tanh(),
                          nn.Linear(32, 4))
    ref = copy.deepcopy(model)
    x = torch.randn(16, 8)
    ember.compile(model)(x).square().sum().backward()
    ref(x).square().sum().backward()
    for (n, p), q in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=n)


def test_explain_reports_the_slab():
    def chain(x, w):
        for _ in range(4):
            x = torch.tanh(x) @ w
        return x

    report = ember.explain(chain, torch.randn(32, 32), torch.randn(32, 32))
    mem = report.memory
    assert len(mem.offsets) >= 3 and mem.slab_bytes < mem.separate_bytes
    assert f"temporaries: {len(mem.offsets)} in a {mem.slab_bytes // 1024}.0 KB slab" in str(report)
