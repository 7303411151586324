"""Eager mode: ordinary PyTorch programs op by op, each supported aten op (forward and backward) on an
ember kernel, the rest falling through to torch."""

import copy
from collections import Counter

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from models import TransformerBlock
from testing import assert_vjp_matches
from torch.utils._python_dispatch import TorchDispatchMode

import ember
from ember.api.eager import EagerError, EagerStats


class MLP(nn.Module):
    def __init__(self, d_in=8, d_hidden=16, d_out=4):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, d_hidden), nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def Block():
    return TransformerBlock(8, 2, 2)


STEPS = 10


class _Dispatched(TorchDispatchMode):
    """Counts the aten ops a program dispatches, by the names eager mode's statistics use: run
    without ember, it is the independent count eager mode's own counts are checked against."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func).removeprefix("aten.")] += 1
        return func(*args, **(kwargs or {}))


def _train(model, batches, loss_fn, mode, steps: int = STEPS):
    """SGD steps, each wholly inside `mode()` (forward, backward, optimizer step); returns per-step
    losses and gradients."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses, grads = [], []
    for step in range(steps):
        x, y = batches[step % len(batches)]
        with mode():
            loss = loss_fn(model(x), y)
            loss.backward()
            grads.append([p.grad.clone() for p in model.parameters()])
            opt.step()
            opt.zero_grad()
        losses.append(loss.detach().clone())
    return losses, grads


def _compare(model, batches, loss_fn) -> tuple[EagerStats, Counter]:
    """Trains `model` in eager mode and a copy in plain torch (counting the ops it dispatches);
    checks losses, gradients and parameters; returns (eager mode's statistics, torch's op counts)."""
    ref = copy.deepcopy(model)
    ember.reset_eager_stats()
    losses, grads = _train(model, batches, loss_fn, lambda: ember.eager(strict=True))
    stats = ember.eager_stats()
    counter = _Dispatched()
    ref_losses, ref_grads = _train(ref, batches, loss_fn, lambda: counter)
    for step, (a, b) in enumerate(zip(losses, ref_losses)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=f"loss differs at step {step}")
    for step, (gs, rs) in enumerate(zip(grads, ref_grads)):
        for (name, _), g, r in zip(model.named_parameters(), gs, rs):
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5, msg=f"grad of {name} differs at step {step}")
    for p, q in zip(model.parameters(), ref.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert not stats.errors, stats.errors
    # eager mode saw exactly the ops torch dispatches, and ran every call of every op it should
    assert stats.seen == counter.ops
    for op, n in counter.ops.items():
        assert stats.ember[op] + stats.fallthrough[op] == n, op
        assert op in EXPECTED_FALLTHROUGH or stats.ember[op] == n, (op, stats.reasons.get(op))
    assert set(stats.fallthrough) <= EXPECTED_FALLTHROUGH, stats.fallthrough
    return stats, counter.ops


# Ops torch keeps in these programs: views/metadata (must stay real torch views) and the optimizer's
# profiler markers. (nll_loss_backward, a scatter, runs on ember's scatter kernel.)
EXPECTED_FALLTHROUGH = {
    "t.default", "detach.default", "view.default", "_unsafe_view.default", "transpose.int", "split.Tensor",
    "expand.default", "unsqueeze.default", "slice.Tensor", "clone.default",
    "profiler._record_function_enter_new.default", "profiler._record_function_exit._RecordFunction",
}


def test_mlp_trains_like_pytorch():
    model = MLP()
    batches = [(torch.randn(6, 8), torch.randint(0, 4, (6,))) for _ in range(3)]
    stats, dispatched = _compare(model, batches, F.cross_entropy)
    print(stats)
    # The program's structure, per step: forward, an addmm per Linear; backward, mm for both weight
    # grads and for fc2's input grad (x needs none), a sum per bias grad, relu's and log_softmax's
    # backward; SGD (no momentum, CPU: one tensor at a time), one add_ per parameter.
    per_step = {"addmm.default": 2, "mm.default": 3, "sum.dim_IntList": 2, "threshold_backward.default": 1,
                "_log_softmax_backward_data.default": 1, "add_.Tensor": 4}
    for op, n in per_step.items():
        assert dispatched[op] == stats.ember[op] == n * STEPS, (op, dispatched[op], stats.ember[op])
    computed_by_torch = {n for n, r in stats.reasons.items() if n in stats.fallthrough and "view" not in r
                         and not n.startswith("profiler.")}
    assert computed_by_torch == set(), stats.reasons


def test_transformer_block_trains_like_pytorch():
    model = Block()
    batches = [(torch.randn(2, 4, 8), torch.randn(2, 4, 8)) for _ in range(2)]
    stats, dispatched = _compare(model, batches, F.mse_loss)
    print(stats)
    for op in ("native_layer_norm.default", "native_layer_norm_backward.default", "_softmax.default",
               "_softmax_backward_data.default", "gelu.default", "gelu_backward.default", "bmm.default",
               "addmm.default", "mm.default", "mse_loss.default", "mse_loss_backward.default"):
        assert stats.ember[op] == dispatched[op] >= STEPS, (op, stats.ember[op], stats.reasons.get(op))
    # per step, forward: scores and att @ v; backward: two per bmm (each operand's gradient)
    assert stats.ember["bmm.default"] == (2 + 2 * 2) * STEPS


def test_data_dependent_control_flow():
    def f(x):
        if x.sum() > 0:
            return torch.relu(x) * 2
        return x.exp() - 1

    for sign in (1.0, -1.0):
        x = sign * torch.rand(3, 5) + sign * 0.1
        ember.reset_eager_stats()
        with ember.eager(strict=True):
            out = f(x)
        torch.testing.assert_close(out, f(x))
        stats = ember.eager_stats()
        # f's ops, once each: the sum, its truth value (read by torch), and the branch taken
        assert stats.ember["sum.default"] == 1 and stats.fallthrough["_local_scalar_dense.default"] == 1
        assert stats.ember["relu.default" if sign > 0 else "exp.default"] == 1


def test_decorator_prints_and_inplace_ops():
    seen = []

    @ember.eager(strict=True)
    def step(x, buf):
        y = x * 3 + 1
        seen.append(float(y.mean()))  # reading values mid-program works
        v = buf[1:]                   # a real torch view ...
        v.add_(y[:2])                 # ... updated in place, visible through the base
        buf.mul_(2)
        return y

    x, buf = torch.randn(2, 4), torch.zeros(3, 4)
    ember.reset_eager_stats()
    y = step(x, buf)
    want_buf = torch.zeros(3, 4)
    want_buf[1:] += x * 3 + 1
    want_buf *= 2
    torch.testing.assert_close(y, x * 3 + 1)
    torch.testing.assert_close(buf, want_buf)
    assert seen and seen[0] == pytest.approx(float((x * 3 + 1).mean()), rel=1e-5)
    stats = ember.eager_stats()
    assert stats.ember["add_.Tensor"] == 1 and stats.ember["mul_.Tensor"] == 1  # one of each in step
    assert stats.fallthrough["slice.Tensor"] >= 1
    assert not ember.api.eager.is_eager_active()


def test_views_are_torch_views_and_layouts_match():
    x = torch.randn(4, 6)
    with ember.eager(strict=True):
        t = x.t()
        assert t.data_ptr() == x.data_ptr()      # views stay views
        y = t * 2                                # torch gives a transposed-layout result here
        z = (t + 1).view(-1) if (t + 1).is_contiguous() else None
    assert y.stride() == (x.t() * 2).stride()
    assert z is None or z.shape == (24,)


def test_new_batch_sizes_build_no_new_kernels():
    model = MLP(d_in=5, d_hidden=12, d_out=3).double()  # f64: kernels other tests have not built yet
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ember.clear_eager_cache()
    ember.reset_eager_stats()
    built, used, graphs, first = [], [], [], None
    for b in (3, 5, 6, 7, 9):
        x, y = torch.randn(b, 5, dtype=torch.float64), torch.randint(0, 3, (b,))
        with ember.eager(strict=True):
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad()
        stats = ember.eager_stats()
        built.append(stats.kernels_built)
        used.append(set(stats.kernel_names))
        graphs.append(stats.graphs_built)
        first = first or (set(stats.ember), stats.ops_ember, stats.launches)
    # Each batch size lowers and plans its own graphs (the IR has static shapes), but the kernel
    # sources are shared: all kernels come from the first batch size, the other four generate none.
    assert built == [built[0]] * 5, built
    assert used == [used[0]] * 5
    # after clear_eager_cache each op that ran on ember built at least one graph, and each call
    # launched at least one kernel (every op of this program computes values; none is views only)
    ops, calls, launches = first
    assert graphs[0] >= len(ops) and launches >= calls > 0, (graphs, ops, calls, launches)
    assert all(g1 > g0 for g0, g1 in zip(graphs, graphs[1:])), graphs  # optimizer graphs are reused


def test_casts_unsupported_dtypes_and_factories():
    x = torch.randn(3, 4)
    ember.reset_eager_stats()
    with ember.eager(strict=True):
        z = torch.zeros(3, dtype=torch.complex64) + 1
        r = torch.arange(4) * 2
        d = x.double()
        e = x.expand(2, 3, 4)
        with pytest.raises(RuntimeError):
            e.add_(1)  # torch's own error for an in-place update of overlapping memory
    assert z.dtype == torch.complex64 and torch.equal(r, torch.arange(4) * 2)
    assert d.dtype == torch.float64 and torch.equal(d, x.double())
    stats = ember.eager_stats()
    assert stats.reasons["add.Tensor"] == "dtype ember cannot compile"
    assert stats.reasons["arange.default"] == "no tensor inputs"
    assert stats.reasons["add_.Tensor"] == "in-place update of an expanded tensor"
    assert stats.ember["mul.Tensor"] == 1 and stats.ember["_to_copy.default"] == 1  # `* 2`, `.double()`


def test_nested_eager_is_one_mode():
    ember.reset_eager_stats()
    with ember.eager():
        with ember.eager():
            y = torch.randn(3) + 1
        y = y * 2
    # one add and one mul, each run once by the one (outer) mode
    assert ember.eager_stats().ember["add.Tensor"] == 1 and ember.eager_stats().ember["mul.Tensor"] == 1


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "masked_row"])
def test_sdpa_gradients_match_pytorch(causal):
    # torch's decomposition of the CPU flash kernel returned the attention probabilities as the
    # logsumexp, which torch's flash backward then read: gradients off by 4-241
    q, k, v = (torch.randn(1, 2, 8, 4, requires_grad=True) for _ in range(3))
    mask = None if causal else torch.randn(8, 8).index_fill(0, torch.tensor([3]), float("-inf"))
    g = torch.randn(1, 2, 8, 4)
    f = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    ember.clear_eager_cache()
    ember.reset_eager_stats()
    with ember.eager(strict=True):
        out = f(q, k, v)
        got = torch.autograd.grad(out, (q, k, v), g)
    assert_vjp_matches(f, (q, k, v), out, got, g)
    stats = ember.eager_stats()  # one attention call: its kernel and its backward's, once each
    assert stats.ember["_scaled_dot_product_flash_attention_for_cpu.default"] == 1, stats.reasons
    assert stats.ember["_scaled_dot_product_flash_attention_for_cpu_backward.default"] == 1, stats.reasons


def test_decomposition_disagreeing_with_torch_never_runs(monkeypatch):
    # each op's captured graph is checked against torch's own output shapes and dtypes: a wrong
    # decomposition (here: the old flash attention one, whose logsumexp had the shape of the
    # attention matrix) is a build error, never a silently wrong result
    from ember.frontend.decompositions import DECOMPOSITIONS

    aten = torch.ops.aten
    op = aten._scaled_dot_product_flash_attention_for_cpu.default
    monkeypatch.setitem(DECOMPOSITIONS, op, lambda q, k, v, *a, **kw: aten._scaled_dot_product_attention_math(
        q, k, v, *a, **kw))
    ember.clear_eager_cache()
    q, k, v = (torch.randn(1, 2, 5, 4) for _ in range(3))
    with pytest.raises(EagerError, match="flash_attention_for_cpu.* torch's kernel gives"):
        with ember.eager(strict=True):
            F.scaled_dot_product_attention(q, k, v)
    ember.clear_eager_cache()
    ember.reset_eager_stats()
    with ember.eager():
        out = F.scaled_dot_product_attention(q, k, v)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v))
    assert ember.eager_stats().fallthrough["_scaled_dot_product_flash_attention_for_cpu.default"] == 1
    ember.clear_eager_cache()


def test_op_caches_stay_at_their_limits(monkeypatch):
    # the verdict per op group and the graph per (group, shapes) are bounded LRUs: past the limit the
    # least recently used is dropped, and built again (still right) when its op or shapes come back
    from ember.api import eager as eager_mod

    ember.clear_eager_cache()
    monkeypatch.setattr(eager_mod._groups, "limit", 3)
    monkeypatch.setattr(eager_mod._graphs, "limit", 2)
    xs = [torch.randn(n, 3) for n in (2, 3, 4, 5)]
    ops = [torch.sin, torch.cos, torch.exp, torch.neg]
    ember.reset_eager_stats()
    for op in ops:
        for x in xs:
            with ember.eager(strict=True):
                got = op(x)
            torch.testing.assert_close(got, op(x))
            assert len(eager_mod._groups) <= 3 and len(eager_mod._graphs) <= 2
    stats = ember.eager_stats()
    assert len(eager_mod._groups) == 3 and len(eager_mod._graphs) == 2
    # 16 distinct (op, shapes) pairs: one graph each
    assert stats.graphs_built == stats.ops_ember == len(ops) * len(xs)
    with ember.eager(strict=True):  # the first op and shape, dropped long ago: rebuilt, still right
        got = ops[0](xs[0])
    torch.testing.assert_close(got, ops[0](xs[0]))
    assert ember.eager_stats().graphs_built == len(ops) * len(xs) + 1
    ember.clear_eager_cache()
