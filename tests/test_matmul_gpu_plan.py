"""GPU matmul plans, checked on CPU: the config table (codegen/matmul_configs.py), grouped ordering and
the even-K variant (run through the interpreter with small tiles, so several tile rows and columns
exist), the batch on grid axis 0, and autotuning's choice and disk cache (runtime/autotune.py) with
a fake timer. The sm_90 compile of the large tuned config is in tests/test_sm90_compile.py."""

from __future__ import annotations

import json
import os

import pytest
import torch
from testing import CHAIN_TOLERANCES

import ember
from ember.codegen import matmul
from ember.codegen.matmul_configs import SMEM, MatmulConfig, _table, candidates, table_config
from ember.ir import Graph, TensorType
from ember.runtime import autotune, compile_graph

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
TOL = CHAIN_TOLERANCES


def _mm_graph(a_shape, b_shape, dtype, epilogue: bool = False) -> Graph:
    g = Graph()
    a, b = g.add_input(TensorType(a_shape, dtype)), g.add_input(TensorType(b_shape, dtype))
    y = g.add("matmul", [a, b])
    if epilogue:  # bias + relu fused into the matmul kernel
        y = g.add("relu", [g.add("add", [y, g.add_input(TensorType((b_shape[-1],), dtype))])])
    g.set_outputs([y])
    return g


# -- the table ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", [90, 80])
@pytest.mark.parametrize("dtype", [F16, BF16])
def test_large_half_matmul_plans_large_grouped_tiles(arch, dtype):
    # 4096^3: 128x128 tiles already give 1024 programs (7 waves of 132 SMs): the large tile wins
    c = table_config(4096, 4096, 4096, 1, dtype, arch)
    assert c.block_m >= 128 and c.block_n >= 128 and c.block_k >= 32 and c.group_m > 1
    assert c.num_warps == 8 and c.smem_bytes(dtype) <= SMEM[arch]


def test_explain_on_h100_shows_the_table_config():
    meta = [torch.empty(4096, 4096, device="meta", dtype=F16) for _ in range(2)]
    (k,) = ember.explain(torch.matmul, *meta, target="h100").kernels  # nothing runs
    c = table_config(4096, 4096, 4096, 1, F16, 90)
    assert (k.blocks["BLOCK_M"], k.blocks["BLOCK_N"], k.blocks["BLOCK_K"], k.blocks["GROUP_M"]) == (
        c.block_m, c.block_n, c.block_k, c.group_m)
    assert (k.num_warps, k.num_stages) == (c.num_warps, c.num_stages)
    assert k.grid == (4096 // c.block_m * 4096 // c.block_n,)
    # stages are the config's, not GPU_OPTIONS' 3
    meta = [torch.empty(1024, 1024, device="meta", dtype=F16) for _ in range(2)]
    (k,) = ember.explain(torch.matmul, *meta, target="h100").kernels
    assert k.num_stages == table_config(1024, 1024, 1024, 1, F16, 90).num_stages == 4


@pytest.mark.parametrize("dtype", [F16, F32, F64])
def test_small_matmuls_keep_small_tiles(dtype):
    for arch in (90, 80):
        c = table_config(64, 64, 64, 1, dtype, arch)  # no config fills the GPU: the smallest tiles
        assert c.block_m * c.block_n <= 32 * 32 and c.num_warps <= 2
        c = table_config(8, 8, 4, 1, dtype, arch)  # clamped to the problem, at least tl.dot's 16
        assert (c.block_m, c.block_n, c.block_k, c.num_warps) == (16, 16, 16, 1)


@pytest.mark.parametrize("arch", [90, 80, 86])
@pytest.mark.parametrize("dtype", [F16, F32, F64])
def test_every_config_fits_shared_memory_and_warps_fit_tiles(arch, dtype):
    for m, n, k in ((4096, 4096, 4096), (1024, 1024, 1024), (300, 5000, 77)):
        for c in candidates(m, n, k, 1, dtype, arch, limit=10):
            assert c.smem_bytes(dtype) <= SMEM[arch], (c, arch)
            assert c.num_warps * 256 <= c.block_m * c.block_n or c.num_warps == 1
    assert len(_table(dtype, arch)) >= 4


def test_candidates_start_with_the_table_choice():
    cs = candidates(4096, 4096, 4096, 1, F16, 90)
    assert cs[0] == table_config(4096, 4096, 4096, 1, F16, 90) and 2 <= len(cs) <= 4 and len(set(cs)) == len(cs)


def test_cpu_target_keeps_the_largest_tiles():
    c = matmul.launch_config(300, 40, 70, 2, "cpu", F32)
    assert c.constexprs["BM"] == 256 and c.constexprs["BN"] == 64 and c.constexprs["BK"] == 128
    assert c.grid == (2 * 2,) and c.num_stages is None and c.constexprs["EVEN_K"] is False


# -- the grid ----------------------------------------------------------------------------------------

def test_huge_batch_plans_a_legal_grid():
    # 70,000 small matmuls: the batch rides on grid axis 0 (2**31 - 1), not axis 1 (65,535)
    g = _mm_graph((70000, 8, 16), (70000, 16, 8), F16)
    (step,) = compile_graph(g, device="cuda").plan.launches  # a GPU plan; nothing runs
    assert step.grid == (70000,) and all(d <= 65535 for d in step.grid[1:])
    assert "program_id(1)" not in step.kernel.source and "program_id(2)" not in step.kernel.source
    with pytest.raises(ValueError, match="programs"):
        matmul.launch_config(16, 16, 16, 2**31, "cuda", F16)


# -- grouped ordering and EVEN_K through the interpreter -------------------------------------------

@pytest.fixture(params=["tiles16", "cuda_table"])
def small_tiles(request, monkeypatch):
    """CPU launches with tiles small enough for several tile rows and columns: 16x16x16 grouped by 3
    (a partial last group), or the GPU table's own config, interpreted."""
    def config(m, n, k, batch, target, dtype=F32, arch=None):
        if request.param == "tiles16":
            return matmul.with_tiles(m, n, k, batch, 16, 16, 16, group_m=3)
        return matmul.from_config(table_config(m, n, k, batch, dtype, 90), m, n, k, batch)

    monkeypatch.setattr(matmul, "launch_config", config)
    return request.param


@pytest.mark.parametrize("a_shape,b_shape,dtype,epilogue", [
    ((70, 48), (48, 33), F32, False),            # K = 48: even for 16
    ((3, 50, 40), (40, 70), F16, False),         # K = 40: the masked K loop
    ((2, 1, 37, 20), (3, 20, 45), BF16, False),  # broadcast batch dims
    ((90, 32), (32, 40), F32, True),             # bias + relu epilogue over grouped tiles
    ((300, 5, 7), (300, 7, 3), F64, False),      # a batch of 300: batch index from program id 0
])
def test_grouped_even_k_matmul_matches_torch(small_tiles, a_shape, b_shape, dtype, epilogue):
    g = _mm_graph(a_shape, b_shape, dtype, epilogue)
    ins = [torch.randn(a_shape, dtype=dtype), torch.randn(b_shape, dtype=dtype)]
    ins += [torch.randn(b_shape[-1], dtype=dtype)] if epilogue else []
    exe = compile_graph(g)
    (out,) = exe(ins)
    want = ins[0] @ ins[1]
    want = torch.relu(want + ins[2]) if epilogue else want
    torch.testing.assert_close(out, want, rtol=TOL[dtype][0], atol=TOL[dtype][1])
    (step,) = exe.plan.launches
    m, n, k = want.shape[-2], want.shape[-1], a_shape[-1]
    bm, bn, bk = (step.constexprs[c] for c in ("BM", "BN", "BK"))
    assert step.constexprs["EVEN_K"] == (k % bk == 0)
    assert step.grid == (-(-m // bm) * -(-n // bn) * (want.numel() // (m * n)),)
    if small_tiles == "tiles16" and len(a_shape) == 2:
        assert -(-m // bm) > 3 and -(-n // bn) >= 2  # more tile rows than a group: ordering matters


def test_grouped_matmul_with_64_bit_indices_matches_torch(small_tiles, monkeypatch):
    monkeypatch.setattr("ember.runtime.plan.INT32_LIMIT", 10)  # any index past 10 takes the int64 variant
    a, b = torch.randn(3, 40, 20, dtype=F16), torch.randn(20, 50, dtype=F16)
    exe = compile_graph(_mm_graph(a.shape, b.shape, F16))
    (out,) = exe([a, b])
    assert ".to(tl.int64)" in exe.plan.launches[0].kernel.source
    torch.testing.assert_close(out, a @ b, rtol=TOL[F16][0], atol=TOL[F16][1])


# -- autotuning --------------------------------------------------------------------------------------

KEY = autotune.TuneKey(4096, 4096, 4096, 1, "float16", "fake GPU", "0" * 64)


def _offered() -> list[MatmulConfig]:
    offered = candidates(4096, 4096, 4096, 1, F16, 90)
    assert len(offered) == 4
    return offered


def test_autotune_chooses_the_fastest_and_caches_it(tmp_path):
    offered = _offered()
    times = {c: 5.0 - i for i, c in enumerate(offered)}  # the last is fastest
    timed = []
    best = autotune.choose(KEY, offered, lambda c: timed.append(c) or times[c], str(tmp_path))
    assert best == offered[-1] and timed == offered
    data = json.loads((tmp_path / KEY.file_name()).read_text())
    assert data["config"] == best.to_dict() and data["key"]["m"] == 4096
    # a hit: nothing is timed
    assert autotune.choose(KEY, offered, lambda c: pytest.fail("timed on a cache hit"), str(tmp_path)) == best
    # another key (another GPU) is not a hit
    other = autotune.TuneKey(4096, 4096, 4096, 1, "float16", "another GPU", "0" * 64)
    timed.clear()
    autotune.choose(other, offered, lambda c: timed.append(c) or times[c], str(tmp_path))
    assert timed == offered


def test_failing_configs_are_skipped_and_all_failing_is_not_cached(tmp_path):
    offered = _offered()

    def measure(c):
        if c == offered[0]:
            raise RuntimeError("out of resources")
        return float("nan") if c == offered[1] else 1.0 + offered.index(c)

    assert autotune.choose(KEY, offered, measure, str(tmp_path)) == offered[2]
    key = autotune.TuneKey(1, 1, 1, 1, "float16", "fake GPU", "1" * 64)
    assert autotune.choose(key, offered, lambda c: 1 / 0, str(tmp_path)) == offered[0]
    assert not (tmp_path / key.file_name()).exists()


@pytest.mark.parametrize("content", [
    b"{not json",
    b"\xff\xfe garbage",
    b"__import__('os').system('touch pwned')",
    json.dumps({"key": "x", "config": {}}).encode(),
    # well formed, but a config the table does not offer (a planted or stale choice)
    json.dumps({"key": None, "config": MatmulConfig(256, 256, 256, 8, 32, 9).to_dict()}).encode(),
    # well formed for another key
    json.dumps({"key": dict(vars(KEY), m=1), "config": None}).encode(),
    json.dumps({"key": None, "config": dict(MatmulConfig(16, 16, 16, 8, 1, 3).to_dict(), block_m="16")}).encode(),
    b"[" * 100000,
])
def test_corrupt_or_planted_cache_entries_are_ignored(tmp_path, content):
    offered = _offered()
    if content.startswith(b'{"key": null'):
        data = json.loads(content)
        data["key"] = vars(KEY)
        content = json.dumps(data).encode()
    path = tmp_path / KEY.file_name()
    path.write_bytes(content)
    timed = []
    best = autotune.choose(KEY, offered, lambda c: timed.append(c) or 1.0 + offered.index(c), str(tmp_path))
    assert best == offered[0] and timed == offered  # timed again, never trusted
    assert json.loads(path.read_text())["config"] == best.to_dict()  # and the entry repaired
    assert not os.path.exists("pwned") and not (tmp_path / "pwned").exists()


def test_tuning_is_off_by_default_and_only_on_a_gpu(monkeypatch):
    monkeypatch.delenv(autotune.ENV, raising=False)
    assert not autotune.autotune_enabled()
    monkeypatch.setenv(autotune.ENV, "1")
    assert autotune.autotune_enabled() and not autotune.wanted(torch.device("cpu"))
    try:
        autotune.set_autotune(False)
        assert not autotune.autotune_enabled()
    finally:
        autotune.set_autotune(None)


def test_planner_tunes_through_the_launch_path(monkeypatch, tmp_path):
    # the planner's tuning path on CPU tensors: the fake timer runs each candidate launch (interpreted,
    # on scratch buffers) and ranks them; the plan then launches the winner and computes the matmul
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "wanted", lambda device: True)
    runs = []

    def fake_timer(fn):
        fn()
        runs.append(1)
        return 10.0 - len(runs)  # each later candidate is faster: the last wins

    monkeypatch.setattr(autotune, "_do_bench", fake_timer)
    m, n, k = 40, 72, 48
    offered = candidates(m, n, k, 1, F32)
    g = _mm_graph((m, k), (k, n), F32)
    a, b = torch.randn(m, k), torch.randn(k, n)
    exe = compile_graph(g)
    (out,) = exe([a, b])
    torch.testing.assert_close(out, a @ b, rtol=TOL[F32][0], atol=TOL[F32][1])
    (step,) = exe.plan.launches
    assert len(runs) == len(offered) >= 2
    assert (step.constexprs["BM"], step.constexprs["BN"], step.num_stages) == (
        offered[-1].block_m, offered[-1].block_n, offered[-1].num_stages)
    # cached: a fresh compile times nothing
    (out,) = compile_graph(g)([a, b])
    assert len(runs) == len(offered)


def test_explain_never_times(monkeypatch, tmp_path):
    # explain runs nothing: with tuning on, a plan takes the cached choice or the table's, untimed
    monkeypatch.setenv("EMBER_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(autotune, "wanted", lambda device: True)
    monkeypatch.setattr(autotune, "_do_bench", lambda fn: pytest.fail("explain timed a launch"))
    a, b = torch.randn(40, 48), torch.randn(48, 72)
    (k,) = ember.explain(torch.matmul, a, b).kernels
    first = candidates(40, 72, 48, 1, F32)[0]
    assert (k.blocks["BLOCK_M"], k.blocks["BLOCK_N"]) == (first.block_m, first.block_n)
    offered = _offered()
    with autotune.no_timing():
        assert autotune.choose(KEY, offered, lambda c: pytest.fail("timed"), str(tmp_path)) == offered[0]
        assert not (tmp_path / KEY.file_name()).exists()
    autotune.write_cached(KEY, offered[2], {}, str(tmp_path))
    with autotune.no_timing():
        assert autotune.choose(KEY, offered, lambda c: pytest.fail("timed"), str(tmp_path)) == offered[2]
