"""benchmarks/gpu_check.py on CPU: every case runs on tiny shapes (`--cpu-smoke`), so the GPU script
cannot rot before a GPU shows up; a failing case, a result that disagrees with eager, and failing,
erroring or timed-out GPU tests each make it exit non-zero."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import gpu_check  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    path = tmp_path_factory.mktemp("gpu_check") / "gpu_check.json"
    code = gpu_check.main(["--cpu-smoke", "--json", str(path)])
    return code, json.loads(path.read_text()), path


def test_cpu_smoke_runs_every_case(smoke, capsys):
    code, result, path = smoke
    assert code == 0 and result["ok"], result["failures"]
    assert [c["name"] for c in result["cases"]] == list(gpu_check.CASES)
    for c in result["cases"]:
        assert "error" not in c, c
        assert c["goal"]["metric"] in gpu_check.GOALS and c["goal"]["met"] is None  # tiny CPU shapes judge nothing
        if c["name"] not in ("fusion_suite", "save_load"):  # (not kernel timings)
            assert c["ms"]["ember"] > 0 and c["ms"]["eager"] > 0 and c["ms"]["torch_compile"] is None
            assert c["goal"]["value"] is not None  # the metric's formula ran
    rows = {c["name"]: c for c in result["cases"]}
    assert rows["matmul"]["tflops"]["ember"] > 0 and rows["sum"]["gbps"]["ember"] > 0
    assert rows["fusion_suite"]["timed"] == 0 and rows["fusion_suite"]["patterns"] == 2
    assert rows["save_load"]["note"] == "not run in the smoke run"  # (fresh processes: save_load.py on CPU)
    assert result["tests"]["status"] == "not run" and result["copy_gbps"] > 0
    fusion = json.loads((path.parent / "fusion_tiny.json").read_text())  # the fusion table beside it
    assert [r["pattern"] for r in fusion["rows"]] == ["bias_gelu", "softmax"]
    table = gpu_check.format_table(result)
    assert all(name in table for name in gpu_check.CASES) and "ERROR" not in table


def test_help_and_no_cuda(capsys, monkeypatch):
    with pytest.raises(SystemExit) as e:
        gpu_check.main(["--help"])
    assert e.value.code == 0 and "--cpu-smoke" in capsys.readouterr().out
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2  # nothing checked: never a success


def test_a_failing_case_fails_the_run(tmp_path, monkeypatch):
    def broken(s):
        raise RuntimeError("kernel exploded")

    monkeypatch.setitem(gpu_check.CASES, "sum", broken)
    path = tmp_path / "r.json"
    assert gpu_check.main(["--cpu-smoke", "--cases", "sum,layernorm", "--json", str(path)]) == 1
    result = json.loads(path.read_text())
    assert result["cases"][0]["error"] == "RuntimeError: kernel exploded" and "error" not in result["cases"][1]
    assert result["failures"] == ["sum: RuntimeError: kernel exploded"] and not result["ok"]


def test_cases_past_the_budget_are_skipped_not_failed():
    result = gpu_check.run(gpu_check.Setup(torch.device("cpu"), smoke=True), ["sum"], tests=False, test_budget=0,
                           budget=0)
    assert result["ok"] and "skipped" in result["cases"][0] and "skipped" in gpu_check.format_table(result)


def test_a_result_unlike_eager_fails_the_run(monkeypatch):
    real = gpu_check.ember.compile
    monkeypatch.setattr(gpu_check.ember, "compile", lambda fn: (lambda *a: real(fn)(*a) * 1.01))
    result = gpu_check.run(gpu_check.Setup(torch.device("cpu"), smoke=True), ["layernorm"], tests=False,
                           test_budget=0, budget=60)
    assert result["failures"] and "AssertionError" in result["cases"][0]["error"]


def test_the_torch_compile_baseline_path(monkeypatch):
    # the GPU path with torch.compile's baseline, its compiler replaced by the identity (inductor on CPU
    # would take minutes): compiled results checked against eager and timed beside ember's
    monkeypatch.setattr(gpu_check.Setup, "compile_torch", True)
    monkeypatch.setattr(gpu_check.torch, "compile", lambda fn=None, **kw: (lambda f: f) if fn is None else fn)
    result = gpu_check.run(gpu_check.Setup(torch.device("cpu"), smoke=True), ["matmul", "adamw"], tests=False,
                           test_budget=0, budget=60)
    assert result["ok"], result["failures"]
    for c in result["cases"]:
        assert c["ms"]["torch_compile"] > 0 and c["vs_torch_compile"] > 0 and "torch_compile_error" not in c


def test_a_torch_compile_failure_is_recorded_not_failed(monkeypatch):
    # (the GPU path: torch.compile is the baseline there; its failure is not ember's)
    def no_compile(*a, **k):
        raise RuntimeError("inductor exploded")

    monkeypatch.setattr(gpu_check.Setup, "compile_torch", True)
    monkeypatch.setattr(gpu_check.torch, "compile", no_compile)
    result = gpu_check.run(gpu_check.Setup(torch.device("cpu"), smoke=True), ["layernorm", "adamw"], tests=False,
                           test_budget=0, budget=60)
    assert result["ok"], result["failures"]
    for c in result["cases"]:
        assert c["torch_compile_error"] == "RuntimeError: inductor exploded" and c["ms"]["torch_compile"] is None


@pytest.mark.parametrize("outcome, status, fails", [(0, "passed", False), (5, "none collected", False),
                                                    (1, "failed", True), (2, "failed", True),
                                                    ("timeout", "timeout", True)])
def test_gpu_test_outcomes(monkeypatch, outcome, status, fails):
    def fake_run(cmd, **kw):
        assert "-m" in cmd and "gpu" in cmd
        if outcome == "timeout":
            raise subprocess.TimeoutExpired(cmd, kw["timeout"])
        return subprocess.CompletedProcess(cmd, outcome, "1 failed, 3 passed\n", "")

    monkeypatch.setattr(gpu_check.subprocess, "run", fake_run)
    tests = gpu_check.gpu_tests(10)
    assert tests["status"] == status
    assert bool(gpu_check.failed({"tests": tests, "cases": []})) == fails
