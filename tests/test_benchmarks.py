"""The fusion benchmark's patterns run on CPU at a tiny size, match eager and report kernels and bytes."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import fusion  # noqa: E402
from fusion_patterns import PATTERNS  # noqa: E402


@pytest.fixture(scope="module")
def result():
    return fusion.run("tiny", device="cpu", timing=False)


def test_every_pattern_matches_eager_and_reports_counts(result):
    assert [r["pattern"] for r in result["rows"]] == [p.name for p in PATTERNS]
    for r in result["rows"]:
        assert "error" not in r, r
        assert r["matches_eager"], r
        assert r["eager_kernels"] >= 1 and r["ember_kernels"] >= 1 and r["ember_launches"] >= 1
        assert 0 < r["compulsory_bytes"] <= min(r["ember_bytes"], r["eager_bytes"])
        assert r["ember_bytes"] <= r["unfused_bytes"]
        # eager mode runs op by op: at least one kernel, never fewer than static mode's fused ones
        assert r["ember_eager_mode_kernels"] >= r["ember_launches"] >= 1


def test_fusion_wins_where_it_should(result):
    rows = {r["pattern"]: r for r in result["rows"]}
    for name in ("bias_gelu", "swiglu", "softmax", "layernorm", "rmsnorm"):
        assert rows[name]["ember_kernels"] == 1
        assert rows[name]["ember_ratio"] == pytest.approx(1.0)


def test_table_cpu_and_timed(result):
    text = fusion.format_table(result)
    assert all(p.name in text for p in PATTERNS) and "times not measured" in text
    timed = json.loads(json.dumps(result))
    timed["copy_gbps"] = 1.0
    for r in timed["rows"]:
        r["ms"] = {"eager": 1.0, "torch_compile": 1.0, "ember": 1.0, "ember_eager_mode": 2.0}
        r["gbps"] = {k: (v and 1.0) for k, v in r["ms"].items()}
        r["copy_fraction"] = dict(r["gbps"])
    lines = fusion.format_table(timed).splitlines()
    assert "ember-eager ms" in lines[0] and all("2.000" in ln for ln in lines[1:len(PATTERNS) + 1])


def test_cli_writes_json(tmp_path, capsys):
    path = tmp_path / "out.json"
    fusion.main(["--size", "tiny", "--patterns", "softmax", "--json", str(path)])
    data = json.loads(path.read_text())
    assert [r["pattern"] for r in data["rows"]] == ["softmax"] and "softmax" in capsys.readouterr().out


def test_gpu_plans_fill_the_gpu_and_move_compulsory_bytes():
    # issue 12's headline cases planned for an H100 on meta tensors (benchmarks/gpu_plans.py): one
    # kernel for matmul, attention and half LayerNorm; >= 132 programs for the sums; bytes within 1.1x
    import gpu_plans

    rows = {r["name"]: r for r in gpu_plans.run("h100")}
    assert rows["matmul 4096^3 fp16"]["blocks"]["BLOCK_M"] >= 128 <= rows["matmul 4096^3 fp16"]["blocks"]["BLOCK_N"]
    for name in ("matmul 4096^3 fp16", "sdpa causal B8 H16 S1024 D64 fp16", "layer_norm fp16 8192 x 4096"):
        assert rows[name]["kernels"] == 1 and rows[name]["torch"] == 0, rows[name]
    for name in ("x.sum() 8192 x 4096", "column sum 65536 x 768"):
        assert rows[name]["programs"] >= 132, rows[name]
    assert all(r["bytes"] <= 1.1 * r["compulsory"] for r in rows.values()), rows
