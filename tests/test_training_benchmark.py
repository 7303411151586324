"""The training-step benchmark at the tiny size (an MLP, a transformer block, a GPT-style LM with an
embedding, a ResNet-style CNN): every ember path matches eager after one AdamW step,
the whole-step graph launches fewer kernels than static mode, static mode fewer than eager, and ember
saves no more bytes for backward than eager does. Fresh weights and batch each run (the seed is
printed). AdamW's eps (benchmarks/training.py) bounds how much Adam's first update amplifies float32
gradient rounding, so the comparison holds wherever a gradient element lands.
"""

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import training  # noqa: E402


@pytest.fixture(scope="module")
def result():
    seed = int.from_bytes(os.urandom(4), "little")
    print(f"benchmark seed: {seed}")
    return training.run("tiny", device="cpu", timing=False, seed=seed)


def rows(result):
    return {r["model"]: r for r in result["rows"]}


def test_every_path_matches_eager_after_one_step(result):
    assert sorted(rows(result)) == ["gpt", "mlp", "resnet", "transformer"]
    for r in result["rows"]:
        assert r["errors"] == {}, r["errors"]
        for path in ("ember_static", "ember_step"):
            assert r[path]["params_close"] and r[path]["loss_close"], (r["model"], path, r[path])
        assert r["check"]


@pytest.mark.parametrize("model", ["mlp", "transformer", "gpt", "resnet"])
def test_kernels_per_step_whole_step_below_static_below_eager(result, model):
    r = rows(result)[model]
    eager, static, step = r["torch_eager"]["kernels"], r["ember_static"]["kernels"], r["ember_step"]["kernels"]
    assert step < static < eager, (step, static, eager)
    s = r["ember_static"]
    assert s["kernels"] == s["forward_kernels"] + s["backward_kernels"] + s["optimizer_kernels"]
    # ember.optim's step is one multi-tensor kernel for every parameter tensor (all float32, one update
    # structure: passes/horizontal.py), stored in place (no copies back); eager foreach runs fewer ops
    assert s["optimizer_kernels"] == 1 < r["param_tensors"]
    assert r["torch_eager_foreach"]["kernels"] < eager
    assert s["optimizer_in_place"] and s["optimizer_copies"] == 0


@pytest.mark.parametrize("model", ["mlp", "transformer", "gpt", "resnet"])
def test_ember_saves_no_more_than_eager(result, model):
    r = rows(result)[model]
    eager, static = r["torch_eager"], r["ember_static"]
    assert 0 < static["saved_activation_bytes"] <= static["saved_bytes"]
    assert static["saved_bytes"] <= eager["saved_bytes"]
    assert static["saved_activation_bytes"] <= eager["saved_activation_bytes"]
    assert r["ember_step"]["saved_bytes"] is None  # nothing crosses a forward/backward boundary


def test_bytes_reported_where_measurable(result):
    for r in result["rows"]:
        assert r["torch_eager"]["bytes"] > 0 and r["ember_static"]["bytes"] > 0 and r["ember_step"]["bytes"] > 0
        assert r["ms"] is None


def test_table_cpu_and_timed(result):
    text = training.format_table(result)
    assert "times not measured (no CUDA)" in text and "ms/step" not in text
    assert all(f"{m}  " in text for m in ("mlp", "transformer", "gpt", "resnet")) and "MISMATCH" not in text
    timed = json.loads(json.dumps(result))
    timed["timed"] = True
    for r in timed["rows"]:
        r["ms"] = {"torch_eager": 1.0, "torch_compile": 0.5, "ember_static": None, "ember_step": 0.25}
    lines = training.format_table(timed).splitlines()
    assert "ms/step" in lines[0]
    assert sum("torch.compile" in ln and ln.rstrip().endswith("0.500") for ln in lines) == len(timed["rows"])
    assert sum("ember static" in ln and ln.rstrip().endswith("n/a") for ln in lines) == len(timed["rows"])


def test_cli_writes_json(tmp_path, capsys):
    path = tmp_path / "out.json"
    training.main(["--size", "tiny", "--models", "mlp", "--json", str(path)])
    data = json.loads(path.read_text())
    assert [r["model"] for r in data["rows"]] == ["mlp"] and data["size"] == "tiny"
    assert "ember step" in capsys.readouterr().out
