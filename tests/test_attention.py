"""Flash attention (ir/ops/attention.py, codegen/attention.py): SDPA and the explicit softmax(q k^T) v
pattern run as one forward kernel (online softmax, scores never stored) and two backward kernels (dQ
with delta = rowsum(dO * O), then dK/dV), in every mode: ember.compile (+ autograd), compile_step,
eager mode. Values and gradients against eager PyTorch (float64 eager for half inputs)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from testing import CHAIN_TOLERANCES, assert_step_trains_like

import ember
from ember.ir import TensorType
from ember.passes.autodiff import vjp_graph
from ember.passes.cost import compulsory_bytes
from ember.passes.remat import partition
from ember.runtime import compile_ir

B, H, S, D = 2, 2, 40, 16

# name -> (kv heads, sdpa keyword arguments, mask: None, "bool" or "float")
CASES = {
    "plain": (H, {}, None),
    "causal": (H, {"is_causal": True}, None),
    "bool_mask": (H, {}, "bool"),
    "float_mask": (H, {}, "float"),
    "gqa_causal": (1, {"is_causal": True, "enable_gqa": True}, None),
    "scale": (H, {"scale": 0.3}, None),
}


def _inputs(case: str, dtype: torch.dtype, heads: int = 2 * H):
    hk, kw, mask = CASES[case]
    hk = heads // (H // hk)
    q = torch.randn(B, heads, S, D, dtype=dtype)
    k, v = torch.randn(B, hk, S, D, dtype=dtype), torch.randn(B, hk, S, D, dtype=dtype)
    if mask == "bool":
        kw = dict(kw, attn_mask=torch.rand(S, S) < 0.7)
        kw["attn_mask"][:, 0] = True  # no fully masked row (eager's math and flash paths differ there)
    elif mask == "float":
        kw = dict(kw, attn_mask=torch.randn(B, 1, S, S, dtype=dtype))
    return (q, k, v), kw


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("case", list(CASES))
def test_sdpa_forward_and_gradients_match_eager(case, dtype):
    torch.manual_seed(0)
    (q, k, v), kw = _inputs(case, dtype)
    f = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = ember.compile(f)(*leaves)
    ct = torch.randn_like(out)
    grads = torch.autograd.grad(out, leaves, ct)
    # float64 eager is the truth; half inputs are held to the chain tolerance (sums over the keys)
    ref = [t.double().requires_grad_() for t in (q, k, v)]
    kw64 = {n: (a.double() if isinstance(a, torch.Tensor) and a.is_floating_point() else a) for n, a in kw.items()}
    want = F.scaled_dot_product_attention(*ref, **kw64)
    want_grads = torch.autograd.grad(want, ref, ct.double())
    rtol, atol = CHAIN_TOLERANCES[dtype]
    for i, (a, b) in enumerate(zip([out, *grads], [want, *want_grads])):
        assert a.dtype == dtype
        torch.testing.assert_close(a.double(), b, rtol=rtol, atol=atol, msg=lambda m, i=i: f"result {i}: {m}")


def _ops(exe) -> list[list[str]]:
    return [k.ops for k in exe.schedule.kernels]


def test_sdpa_is_one_kernel_forward_and_two_backward_kernels():
    """Forward: one attention kernel, q, k, v read once, out and lse written once. Backward: the dQ
    kernel (q, k, v, O, lse, dO read; dQ and delta = rowsum(dO * O) written) and the dK/dV kernel (q,
    k, v, lse, delta, dO read; dK, dV written): no [S, S] tensor anywhere. Every input but O is read
    by both, delta written and read (FlashAttention-2's backward): 1.51x the compulsory bytes at head
    dim 64 (the rows of lse and delta weigh more at this test's 16)."""
    torch.manual_seed(0)
    (q, k, v), kw = _inputs("gqa_causal", torch.float16)
    sg = ember.trace(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, **kw), q, k, v)
    fwd = compile_ir(sg.graph)
    assert _ops(fwd) == [["attention"]], _ops(fwd)
    parts = partition(vjp_graph(sg.graph, [0, 1, 2]), 3, 1)
    bwd = compile_ir(parts.backward)
    assert _ops(bwd) == [["attention_grad_q"], ["attention_grad_kv"]], _ops(bwd)
    nbytes = lambda *ts: sum(t.numel() * t.element_size() for t in ts)
    rows = torch.empty(B, 2 * H, S)  # lse, delta (float32)
    moved = [e.cost.bytes_moved for e in fwd.schedule.entries if e.config is not None]
    assert moved == [nbytes(q, k, v, q, rows)], moved
    moved = [e.cost.bytes_moved for e in bwd.schedule.entries if e.config is not None]
    assert moved == [nbytes(q, k, v, q, rows, q) + nbytes(q, rows), nbytes(q, k, v, rows, rows, q) + nbytes(k, v)]
    assert compulsory_bytes(bwd.graph) == nbytes(q, k, v, q, rows, q, q, k, v)
    out = fwd([q, k, v])[0]
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, **kw), rtol=2e-3, atol=2e-3)


def explicit(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) * 0.25, dim=-1) @ v


def explicit_causal_half_softmax(q, k, v):  # scores masked by torch.tril, softmax in float32
    s = (q @ k.transpose(-2, -1)) / 4.0
    s = s.masked_fill(torch.ones(S, S, dtype=torch.bool, device=q.device).tril().logical_not(), float("-inf"))
    return torch.softmax(s.float(), dim=-1).to(q.dtype) @ v


@pytest.mark.parametrize("fn,dtype", [(explicit, torch.float32), (explicit_causal_half_softmax, torch.float16)])
def test_explicit_attention_is_rewritten(fn, dtype):
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, S, D, dtype=dtype) for _ in range(3))
    sg = ember.trace(fn, q, k, v)
    exe = compile_ir(sg.graph)
    assert _ops(exe) == [["attention"]], _ops(exe)
    node = next(n for n in exe.graph.nodes if n.op == "attention")
    assert node.attrs["is_causal"] == (fn is explicit_causal_half_softmax) and node.attrs["scale"] == 0.25
    out = exe([q, k, v])[0]
    # scores never stored: no planned buffer holds [.., S, S]
    assert not [b.shape for b in exe.plan.bufs if tuple(b.shape[-2:]) == (S, S)]
    want = fn(*(t.double() for t in (q, k, v)))
    torch.testing.assert_close(out.double(), want, rtol=CHAIN_TOLERANCES[dtype][0], atol=CHAIN_TOLERANCES[dtype][1])


def test_explicit_attention_over_split_heads_is_rewritten():
    """The benchmark transformer's attention (benchmarks/training.py): q, k, v split from one
    projection and viewed as heads; simplify merges the heads' transpose into the key's, the rewrite
    takes k as a permute of the [B, T, H, D] view (no copy). Values and gradients against eager."""
    torch.manual_seed(0)

    def f(x):
        b, t, d = x.shape
        q, k, v = (z.view(b, t, 2, d // 6).transpose(1, 2) for z in x.split(d // 3, dim=-1))
        att = torch.softmax(q @ k.transpose(-2, -1) / 8 ** 0.5, dim=-1) @ v
        return att.transpose(1, 2).reshape(b, t, 16)

    x = torch.randn(2, S, 48, requires_grad=True)
    compiled = ember.compile(f)
    out = compiled(x)
    assert [n.op for n in compiled.graphs[0].graph.nodes if n.op in ("attention", "matmul")] == ["attention"]
    ct = torch.randn_like(out)
    (got,) = torch.autograd.grad(out, x, ct)
    want_out = f(x)
    (want,) = torch.autograd.grad(want_out, x, ct)
    torch.testing.assert_close(out, want_out, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def softmax_over_queries(q, k, v):
    return torch.softmax(q @ k.transpose(-2, -1) * 0.25, dim=-2) @ v


def scores_reused(q, k, v):
    s = q @ k.transpose(-2, -1) * 0.25
    return torch.softmax(s, dim=-1) @ v, s.amax()


def probabilities_reused(q, k, v):
    p = torch.softmax(q @ k.transpose(-2, -1) * 0.25, dim=-1)
    return p @ v, p


def additive_mask(q, k, v, m):  # a row may be fully masked: eager gives NaN there, the kernel 0
    return torch.softmax(q @ k.transpose(-2, -1) * 0.25 + m, dim=-1) @ v


@pytest.mark.parametrize("fn", [softmax_over_queries, scores_reused, probabilities_reused, additive_mask])
def test_non_matching_patterns_are_not_rewritten(fn):
    torch.manual_seed(0)
    args = [torch.randn(B, H, S, D) for _ in range(3)] + ([torch.randn(S, S)] if fn is additive_mask else [])
    compiled = ember.compile(fn)
    got = compiled(*args)
    assert not any(n.op == "attention" for sg in compiled.graphs for n in sg.graph.nodes)
    want = fn(*args)
    for a, b in zip(got if isinstance(got, tuple) else [got], want if isinstance(want, tuple) else [want]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_explicit_attention_gradients_use_the_fused_backward():
    torch.manual_seed(0)
    q, k, v = (torch.randn(B, H, S, D, requires_grad=True) for _ in range(3))
    compiled = ember.compile(explicit)
    out = compiled(q, k, v)
    ct = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), ct)
    want = torch.autograd.grad(explicit(q, k, v), (q, k, v), ct)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    joint = vjp_graph(compiled.graphs[0].graph, [0, 1, 2])
    assert {"attention_grad_q", "attention_grad_kv"} <= {n.op for n in compile_ir(joint).graph.nodes}


class Block(torch.nn.Module):
    """GPT's attention: qkv projection, causal SDPA with grouped key/value heads, output projection."""

    def __init__(self, d: int = 32, heads: int = 4, kv_heads: int = 2):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        # no bias: a key bias has a zero gradient (softmax is shift-invariant per query), whose rounding
        # noise Adam would amplify into updates
        self.qkv = torch.nn.Linear(d, (heads + 2 * kv_heads) * self.hd, bias=False)
        self.proj = torch.nn.Linear(d, d)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).split([self.heads * self.hd, self.kv_heads * self.hd, self.kv_heads * self.hd], -1)
        q = q.view(b, t, self.heads, self.hd).transpose(1, 2)
        k, v = (z.view(b, t, self.kv_heads, self.hd).transpose(1, 2) for z in (k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))


def test_compile_step_trains_through_the_fused_kernels():
    torch.manual_seed(0)
    model = Block()
    ref = Block()
    ref.load_state_dict(model.state_dict())
    loss_fn = lambda out, y: F.mse_loss(out, y)
    opt = ember.optim.AdamW(model.parameters(), lr=1e-2)
    step = ember.compile_step(model, loss_fn, opt)
    batches = [(torch.randn(2, 24, 32), torch.randn(2, 24, 32)) for _ in range(2)]
    assert_step_trains_like(step, model, ref, torch.optim.AdamW(ref.parameters(), lr=1e-2), batches, loss_fn,
                            rtol=1e-4, atol=1e-5)
    ops = {op for k in step.last.compiled.kernels for op in k.ops}
    assert {"attention", "attention_grad_q", "attention_grad_kv"} <= ops, ops


def test_eager_mode_runs_sdpa_and_its_backward_on_ember():
    torch.manual_seed(0)
    (q, k, v), kw = _inputs("gqa_causal", torch.float32)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    ember.reset_eager_stats()
    with ember.eager():
        out = F.scaled_dot_product_attention(*leaves, **kw)
        grads = torch.autograd.grad(out, leaves, torch.ones_like(out))
    stats = ember.eager_stats()
    assert stats.ember["_scaled_dot_product_flash_attention_for_cpu.default"] == 1, stats.reasons
    assert stats.ember["_scaled_dot_product_flash_attention_for_cpu_backward.default"] == 1, stats.reasons
    ref = [t.clone().requires_grad_() for t in (q, k, v)]
    want = F.scaled_dot_product_attention(*ref, **kw)
    want_grads = torch.autograd.grad(want, ref, torch.ones_like(want))
    for a, b in zip([out, *grads], [want, *want_grads]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_gpu_plan_uses_flash_tiles_and_bytes_are_compulsory():
    """Planned for an H100 on meta tensors: one kernel, FlashAttention-2's 128 x 64 tiles, and the bytes
    of q, k, v read once, out and the logsumexp written once."""
    b, h, s, d = 8, 16, 1024, 64
    q, k, v = (torch.empty(b, h, s, d, dtype=torch.float16, device="meta") for _ in range(3))
    report = ember.explain(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), q, k, v,
                           target="h100")
    (kernel,) = report.kernels
    assert kernel.blocks["BLOCK_M"] == 128 and kernel.blocks["BLOCK_N"] == 64 and kernel.grid == (b * h, s // 128)
    compulsory = 4 * b * h * s * d * 2 + b * h * s * 4
    assert kernel.bytes_moved == compulsory, (kernel.bytes_moved, compulsory)


def test_ir_type_rule_refuses_bad_heads_and_masks():
    from ember.ir import Graph

    g = Graph()
    q = g.add_input(TensorType((1, 3, 4, 8), torch.float32))
    k = g.add_input(TensorType((1, 2, 4, 8), torch.float32))
    with pytest.raises(ValueError, match="shapes do not fit"):
        g.add("attention", [q, k, k], scale=1.0, is_causal=False)
    m = g.add_input(TensorType((4, 4), torch.int32))
    with pytest.raises(TypeError, match="mask must be bool"):
        g.add("attention", [q, q, q, m], scale=1.0, is_causal=False)


def test_many_heads_plan_a_legal_grid():
    # batch * heads past 65,535 (grid axis 1's limit): on axis 0, for the forward and both backward kernels
    from ember.codegen.attention import launch_config

    for op in ("attention", "attention_grad_q", "attention_grad_kv"):
        cfg = launch_config(op, (1024, 70, 64, 64), (1024, 70, 64, 64), 64, "cuda")
        assert cfg.grid[0] == 1024 * 70 and all(n <= 65535 for n in cfg.grid[1:]), (op, cfg)
