"""ember.explain: the report's fields agree with each other, its text and its DOT graph."""

import sys

import pytest
import torch
import torch.nn.functional as F

import ember
from ember.api import explain_report as explain_mod
from ember.api.explain import _launch_text


def _flat(s: str) -> str:
    return " ".join(s.split())


def rmsnorm(x, w):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w


def mlp(x, w1, b1, w2):
    return F.layer_norm(x + F.gelu(x @ w1 + b1) @ w2, (x.shape[-1],))


@pytest.fixture(scope="module")
def report():
    x, w1, b1, w2 = torch.randn(8, 16), torch.randn(16, 32), torch.randn(32), torch.randn(32, 16)
    return ember.explain(mlp, x, w1, b1, w2)


def test_fields_are_consistent(report):
    assert report.kernels and report.bytes_moved == sum(k.bytes_read + k.bytes_written for k in report.kernels)
    assert report.flops == sum(k.flops for k in report.kernels) > 0
    assert report.compulsory_bytes <= report.bytes_moved <= report.unfused_bytes
    assert report.num_kernels == len(report.kernels) < report.unfused_kernels
    for k in report.kernels:
        assert k.ops and k.kind in ("pointwise", "row", "matmul", "reduction", "layout", "constant", "extern", "copy")
        assert k.bytes_read >= 0 and k.bytes_written > 0
    assert [n for n, _ in report.snapshots][0] == "input" and report.ir_after == str(report.static_graph.graph)


def test_text_lists_every_kernel_and_total(report):
    text = str(report)
    flat = _flat(text)
    for k in report.kernels:
        assert f"k{k.index} " in text and ", ".join(k.ops) in flat
    for needle in ("IR before passes", "IR after passes", "compulsory", "eager PyTorch", "Fallbacks to torch: none"):
        assert needle in text
    assert repr(report) == text


def test_eager_counts_aten_ops_not_decomposed_ones():
    x, w = torch.randn(4, 32), torch.randn(32)
    r = ember.explain(rmsnorm, x, w)
    assert r.eager_kernels > r.num_kernels == 1  # pow, mean, add, rsqrt, mul, mul -> one row kernel
    assert r.eager_bytes > r.bytes_moved
    soft = ember.explain(lambda x: torch.softmax(x, -1), x)
    assert soft.eager_kernels == 1 and [o.target for o in soft.eager_ops] == ["aten._softmax.default"]
    assert soft.unfused_kernels > 1  # the IR spells softmax with several ops


def test_fallbacks_name_the_aten_op_and_why():
    r = ember.explain(lambda x: torch.kthvalue(x, 2, 0).values.sin() * 2, torch.randn(4, 8))
    assert [(f.target, f.count) for f in r.fallbacks] == [("aten.kthvalue.default", 1)]
    assert "no lowering" in r.fallbacks[0].reason
    assert any(k.kind == "extern" and k.ops == ["aten.kthvalue.default"] for k in r.kernels)
    assert "aten.kthvalue.default" in str(r).split("Fallbacks to torch")[1]


def test_passes_snapshots_in_text():
    r = ember.explain(lambda x: (x * 1.0 + 0.0).exp(), torch.randn(4, 4), passes=True)
    text = str(r)
    for name, _ in r.snapshots[1:]:
        assert f"'{name}'" in text


def test_dot_has_one_cluster_per_kernel(report):
    dot = report.to_dot()
    assert dot.startswith("digraph") and dot.count("{") == dot.count("}")
    assert dot.count("subgraph cluster_") == len([k for k in report.kernels if k.group is not None])
    for k in report.kernels:
        assert f"cluster_k{k.index} " in dot


def test_draw_without_graphviz_names_what_to_install(report, tmp_path, monkeypatch):
    monkeypatch.setattr(explain_mod.shutil, "which", lambda name: None)
    monkeypatch.setitem(sys.modules, "graphviz", None)
    with pytest.raises(RuntimeError, match="graphviz"):
        report.draw(tmp_path / "g.svg")


def test_module_and_kwargs():
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.GELU()).eval()
    r = ember.explain(model, torch.randn(2, 8))
    assert r.name == "Sequential" and r.eager_kernels == 2 and r.num_kernels == 1
    r = ember.explain(lambda x, *, s: x * s, torch.randn(3), s=2.0)
    assert r.num_kernels == 1


class _LlamaBlock(torch.nn.Module):
    """RMSNorm, causal attention with rotary embeddings, SwiGLU: the shapes of a Llama layer."""

    def __init__(self, d: int = 16, heads: int = 2, seq: int = 8):
        super().__init__()
        self.heads = heads
        self.qkv = torch.nn.Linear(d, 3 * d, bias=False)
        self.out = torch.nn.Linear(d, d, bias=False)
        self.gate, self.up = torch.nn.Linear(d, 2 * d, bias=False), torch.nn.Linear(d, 2 * d, bias=False)
        self.down = torch.nn.Linear(2 * d, d, bias=False)
        self.w1, self.w2 = torch.nn.Parameter(torch.ones(d)), torch.nn.Parameter(torch.ones(d))
        t = torch.arange(seq)[:, None] * (10000.0 ** (-torch.arange(0, d // heads, 2) / (d // heads)))
        self.register_buffer("cos", t.cos()), self.register_buffer("sin", t.sin())

    def rope(self, x):
        a, b = x[..., 0::2], x[..., 1::2]
        return torch.stack([a * self.cos - b * self.sin, a * self.sin + b * self.cos], -1).flatten(-2)

    def forward(self, x):
        b, s, d = x.shape
        h = rmsnorm(x, self.w1)
        q, k, v = self.qkv(h).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.nn.functional.scaled_dot_product_attention(self.rope(q), self.rope(k), v, is_causal=True)
        x = x + self.out(att.transpose(1, 2).reshape(b, s, d))
        h = rmsnorm(x, self.w2)
        return x + self.down(torch.nn.functional.silu(self.gate(h)) * self.up(h))


def test_explain_lists_what_the_runtime_launches():
    """explain and the runtime read one schedule: the report's rows are the launches and torch calls
    a call makes, in order, with the launch configs the runtime uses."""
    model, x = _LlamaBlock().eval(), torch.randn(2, 8, 16)
    report = ember.explain(model, x)
    sg = report.static_graph
    with torch.no_grad():
        torch.testing.assert_close(sg(x), model(x), rtol=1.3e-6, atol=1e-5)
    plan = sg.compiled.plan
    assert report.num_kernels == len(plan.steps) == len(plan.launches) + len(sg.compiled.externs)
    launched = [s for s in plan.steps if hasattr(s, "grid")]
    assert [k.launch for k in report.kernels if k.kind != "extern"] == [_launch_text(s) for s in launched]


def test_cuda_target_shows_gpu_launch_configs_on_cpu():
    x, w = torch.randn(64, 96), torch.randn(96, 80)
    cpu = ember.explain(lambda x, w: torch.relu(x @ w).exp(), x, w)
    gpu = ember.explain(lambda x, w: torch.relu(x @ w).exp(), x, w, target="cuda")
    assert cpu.schedule.target == "cpu" and gpu.schedule.target == "cuda"
    (mm_cpu,), (mm_gpu,) = ([e for e in r.schedule.kernels if e.kind == "matmul"] for r in (cpu, gpu))
    # the interpreter pays per program: one tile; a GPU gets its table's config (codegen/matmul_configs.py):
    # for a matmul this small, small tiles (more programs); tiles x batch all on grid axis 0
    from ember.codegen.matmul_configs import table_config

    c = table_config(64, 80, 96, 1, torch.float32)
    assert c.block_m * c.block_n < 64 * 64 and mm_cpu.config.grid == (1,)
    assert {k: mm_gpu.config.constexprs[k] for k in ("BM", "BN", "BK", "GROUP_M")} == {
        "BM": c.block_m, "BN": c.block_n, "BK": c.block_k, "GROUP_M": c.group_m}
    assert mm_gpu.config.grid == (-(-64 // c.block_m) * -(-80 // c.block_n),)
    assert f"warps={c.num_warps} stages={c.num_stages}" in str(gpu)


@pytest.mark.parametrize("gpu", ["h100", "h200", "a100"])
def test_gpu_target_by_name_plans_meta_tensors_with_launch_fields_and_roofline(gpu):
    from ember.codegen.targets import GPUS, LAUNCH_US

    def fn(x, w, b):
        return F.layer_norm(torch.relu(x @ w + b), (w.shape[1],))

    meta = [torch.empty(s, device="meta", dtype=torch.float16) for s in ((256, 512), (512, 1024), (1024,))]
    report = ember.explain(fn, *meta, target=gpu)  # nothing runs, no GPU needed
    spec = GPUS[gpu]
    assert report.schedule.target == "cuda" and report.gpu is spec
    mm, row = report.kernels
    assert (mm.kind, row.kind) == ("matmul", "row")
    # a matmul's warps and stages are its config's (codegen/matmul_configs.py), not GPU_OPTIONS' default
    from ember.codegen.matmul_configs import table_config

    c = table_config(256, 1024, 512, 1, torch.float16)
    assert (mm.blocks["BLOCK_M"], mm.blocks["BLOCK_N"], mm.blocks["BLOCK_K"]) == (c.block_m, c.block_n, c.block_k)
    assert (mm.num_warps, mm.num_stages) == (c.num_warps, c.num_stages)
    assert mm.grid == tuple(mm.grid) and all(type(g) is int for g in mm.grid)
    # the roofline of each kernel: its bytes at the HBM bandwidth or its flops at the peak of its math
    # (fp16 operands: tensor cores), whichever is longer, plus a launch
    assert mm.estimate_us == pytest.approx(LAUNCH_US + 1e6 * max(mm.bytes_moved / spec.bandwidth,
                                                                 mm.flops / spec.peak["fp16"]))
    assert row.estimate_us == pytest.approx(LAUNCH_US + 1e6 * max(row.bytes_moved / spec.bandwidth,
                                                                  row.flops / spec.peak["fp32"]))
    assert report.estimate_us == pytest.approx(mm.estimate_us + row.estimate_us)
    assert f"roofline estimate on {spec.name}" in str(report) and "est us" in str(report)


def test_float32_matmul_estimate_follows_the_matmul_precision():
    from ember.codegen.targets import GPUS

    meta = [torch.empty(s, device="meta") for s in ((2048, 2048), (2048, 2048))]
    old = torch.get_float32_matmul_precision()
    try:
        times = {}
        for precision in ("highest", "high"):  # ieee on the CUDA cores; TF32 on the tensor cores
            torch.set_float32_matmul_precision(precision)
            (mm,) = ember.explain(torch.matmul, *meta, target="h100").kernels
            times[precision] = mm.estimate_us
    finally:
        torch.set_float32_matmul_precision(old)
    flops = 2 * 2048**3
    assert times["highest"] > 1e6 * flops / GPUS["h100"].peak["fp32"] > times["high"]


def test_cpu_targets_have_no_gpu_fields_and_unknown_targets_are_named():
    report = ember.explain(lambda x: x.exp(), torch.randn(8))
    (k,) = report.kernels
    assert k.num_stages is None and k.estimate_us is None and report.estimate_us is None and k.grid
    with pytest.raises(ValueError, match="h100"):
        ember.explain(lambda x: x.exp(), torch.randn(8), target="v100")
