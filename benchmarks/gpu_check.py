"""One command for a GPU machine: the GPU tests, then ember timed against torch eager and torch.compile.

    python benchmarks/gpu_check.py [--budget 290] [--test-budget 120] [--cases a,b] [--no-tests]
                                   [--fusion-size large] [--json PATH] [--cpu-smoke]

1. The tests marked `gpu` (tests/test_gpu.py: fused patterns, zoo models training, eager mode, ...,
   against eager CUDA PyTorch), within `--test-budget` seconds (mostly Triton compile time).
2. The cases (`CASES`), each checked against eager and timed with `triton.testing.do_bench` (median)
   for ember (`ember.compile`), torch eager and `torch.compile` (default backend):
   a memory-bound fusion (GELU(x + b) + r, fp16: % of the copy bandwidth `dst.copy_(src)` measures),
   matmul 4096^3 fp16 (vs cuBLAS: torch.matmul), causal attention B8 H16 S1024 D64 fp16 (vs torch's
   SDPA, flash), x.sum() over 8192x4096, cross-entropy over a 32000 vocabulary, LayerNorm fp16, an
   AdamW step on 12 tensors (ember.optim.AdamW vs torch's foreach AdamW and its compiled step), and
   the fusion suite (benchmarks/fusion.py's patterns: geomean of torch.compile time / ember time), and
   save/load (benchmarks/save_load.py, fresh processes: compile + first call over `ember.load` + first
   call, with Triton's cache warm on both sides, the goal's figure, and cold on both).
   Each case next to its goal from the issue (>= 85% of copy bandwidth, >= 0.7x cuBLAS, >= 0.7x flash
   SDPA, >= 1.1x torch.compile geomean). Cases not started within `--budget` seconds are skipped.

Prints a table, writes JSON (`{"tests", "cases", "ok", ...}`) to `--json` (default
`$OUT/gpu_check.json`, else benchmarks/) and the fusion suite's own table to `fusion_<size>.json` beside it.
Exits 1 when a GPU test fails, errors or times out, or a case raises or disagrees with eager (a missed
performance goal is reported, not an error); 2 without a CUDA device (unless `--cpu-smoke`).

`--cpu-smoke`: every case on tiny shapes on the CPU (Triton's interpreter), wall-clock timing, no
torch.compile, no tests: tests/test_gpu_check.py runs it so the script cannot rot before a GPU shows up.
Only ember's public API is used (ember.compile, ember.optim), so it measures whatever the planner does.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ember  # noqa: E402

GOALS = {"of_copy": 0.85, "vs_cublas": 0.7, "vs_flash_sdpa": 0.7, "geomean_vs_torch_compile": 1.1,
         "first_call_vs_compile": 10.0}


@dataclass
class Setup:
    """Where and how big: a GPU run (full shapes, do_bench, torch.compile) or a CPU smoke run (tiny
    shapes through Triton's interpreter, a wall-clock timer, no torch.compile)."""

    device: torch.device
    smoke: bool = False
    fusion_size: str = "large"
    budget_s: float | None = None      # what the fusion suite may spend (its patterns are skipped past it)
    copy_gbps: float | None = None     # measured once per run (`copy_bandwidth`)
    extra: dict[str, Any] = field(default_factory=dict)

    def pick(self, full, tiny):
        return tiny if self.smoke else full

    @property
    def compile_torch(self) -> bool:
        return self.device.type == "cuda" and not self.smoke


def bench_ms(fn: Callable[[], Any], s: Setup) -> float:
    """Median milliseconds of `fn()`: triton.testing.do_bench on a GPU; a few wall-clock runs on CPU."""
    if s.device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[1]


def copy_bandwidth(s: Setup) -> float:
    """Device copy bandwidth, bytes read + written per second (GB/s) of `dst.copy_(src)` (1 GiB on a GPU)."""
    n = s.pick(1 << 28, 1 << 12)  # float32 elements
    src = torch.empty(n, dtype=torch.float32, device=s.device)
    dst = torch.empty_like(src)
    ms = bench_ms(lambda: dst.copy_(src), s)
    return 2 * src.nbytes / (ms * 1e-3) / 1e9


def _nbytes(*xs: Any) -> int:
    return sum(x.nbytes for x in torch.utils._pytree.tree_leaves(xs) if isinstance(x, torch.Tensor))


def _check(got: Any, want: Any, rtol: float, atol: float) -> None:
    gots, wants = torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(want)
    assert len(gots) == len(wants), (len(gots), len(wants))
    for g, w in zip(gots, wants):
        torch.testing.assert_close(g.float(), w.float(), rtol=rtol, atol=atol, equal_nan=True)


def _sync(s: Setup) -> None:
    if s.device.type == "cuda":
        torch.cuda.synchronize()


def compare(s: Setup, fn: Callable, args: tuple, rtol: float, atol: float,
            nbytes: int | None = None, flops: float | None = None) -> dict[str, Any]:
    """Check `ember.compile(fn)` against eager `fn` on `args`, then time ember, eager and torch.compile.
    `nbytes`: compulsory bytes (GB/s and the fraction of copy bandwidth); `flops`: TFLOP/s."""
    ember_fn = ember.compile(fn)
    with torch.no_grad():
        want = fn(*args)
        got = ember_fn(*args)
        _check(got, want, rtol, atol)
        fns = {"ember": ember_fn, "eager": fn}
        row: dict[str, Any] = {}
        if s.compile_torch:
            try:
                compiled = torch.compile(fn)
                compiled(*args)  # compile outside the timing
                fns["torch_compile"] = compiled
            except Exception as e:  # torch.compile's own failure: the baseline is missing, ember did not fail
                row["torch_compile_error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
        _sync(s)
        ms: dict[str, float | None] = {k: bench_ms(lambda f=f: f(*args), s) for k, f in fns.items()}
    ms.setdefault("torch_compile", None)
    return _rates({"ms": ms, **row}, s, nbytes, flops)


def _rates(row: dict[str, Any], s: Setup, nbytes: int | None, flops: float | None) -> dict[str, Any]:
    ms = row["ms"]
    if nbytes is not None:
        row["compulsory_bytes"] = nbytes
        row["gbps"] = {k: (nbytes / (v * 1e-3) / 1e9 if v else None) for k, v in ms.items()}
        if s.copy_gbps:
            row["of_copy"] = row["gbps"]["ember"] / s.copy_gbps
    if flops is not None:
        row["tflops"] = {k: (flops / (v * 1e-3) / 1e12 if v else None) for k, v in ms.items()}
    if ms.get("torch_compile"):
        row["vs_torch_compile"] = ms["torch_compile"] / ms["ember"]  # > 1: ember faster
    return row


def _randn(s: Setup, *shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(*shape, device=s.device, dtype=dtype)


# -- the cases: each returns its row (shapes, times, rates); an exception is the case's error -------------

def case_fusion_bandwidth(s: Setup) -> dict[str, Any]:
    """A memory-bound pointwise fusion: GELU(x + b) + r in float16, against the copy bandwidth."""
    n, d = s.pick((8192, 8192), (8, 48))
    x, r, b = _randn(s, n, d, dtype=torch.half), _randn(s, n, d, dtype=torch.half), _randn(s, d, dtype=torch.half)
    fn = lambda x, b, r: F.gelu(x + b) + r
    row = compare(s, fn, (x, b, r), 2e-3, 2e-3, nbytes=_nbytes(x, b, r) + x.nbytes)
    return {"shape": [n, d], "goal": ("of_copy", GOALS["of_copy"]), **row}


def case_matmul(s: Setup) -> dict[str, Any]:
    """matmul 4096^3 float16 against cuBLAS (torch.matmul)."""
    m = s.pick(4096, 32)
    a, b = _randn(s, m, m, dtype=torch.half), _randn(s, m, m, dtype=torch.half)
    # fp32 accumulation on both sides, outputs of magnitude ~sqrt(m): a few fp16 ulps of 64 at m = 4096
    row = compare(s, lambda a, b: a @ b, (a, b), 1e-2, 0.1 * math.sqrt(m / 64), flops=2.0 * m**3)
    if row["ms"]["eager"]:
        row["vs_cublas"] = row["ms"]["eager"] / row["ms"]["ember"]
    return {"shape": [m, m, m], "goal": ("vs_cublas", GOALS["vs_cublas"]), **row}


def case_attention(s: Setup) -> dict[str, Any]:
    """Causal attention, B8 H16 S1024 D64 float16, against torch's SDPA (flash attention on a GPU)."""
    b, h, n, d = s.pick((8, 16, 1024, 64), (1, 2, 16, 8))
    q, k, v = (_randn(s, b, h, n, d, dtype=torch.half) for _ in range(3))
    fn = lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True)
    flops = 4.0 * b * h * n * n * d / 2  # QK^T and PV, half of the scores under the causal mask
    row = compare(s, fn, (q, k, v), 1e-2, 1e-2, nbytes=4 * q.nbytes, flops=flops)
    if row["ms"]["eager"]:
        row["vs_flash_sdpa"] = row["ms"]["eager"] / row["ms"]["ember"]
    return {"shape": [b, h, n, d], "goal": ("vs_flash_sdpa", GOALS["vs_flash_sdpa"]), **row}


def case_sum(s: Setup) -> dict[str, Any]:
    """x.sum() over 8192x4096 float32: one value from 134 MB (a split reduction's case)."""
    n, d = s.pick((8192, 4096), (64, 48))
    x = _randn(s, n, d)
    # blocked summation orders differ by ~1e-3 at the full size; one lost block of 16 elements is ~4
    row = compare(s, lambda x: x.sum(), (x,), 1e-5, 1e-7 * x.numel(), nbytes=x.nbytes + 4)
    return {"shape": [n, d], "goal": ("of_copy", GOALS["of_copy"]), **row}


def case_cross_entropy(s: Setup) -> dict[str, Any]:
    """Cross-entropy (mean) of 4096 rows over a 32000 vocabulary, float32 logits."""
    n, v = s.pick((4096, 32000), (8, 320))
    logits, target = _randn(s, n, v), torch.randint(0, v, (n,), device=s.device)
    fn = lambda x, t: F.cross_entropy(x, t)
    row = compare(s, fn, (logits, target), 1e-5, 1e-5, nbytes=_nbytes(logits, target) + 4)
    return {"shape": [n, v], "goal": ("of_copy", GOALS["of_copy"]), **row}


def case_layernorm(s: Setup) -> dict[str, Any]:
    """LayerNorm over 4096 features of 8192 rows, float16 input, weight and bias."""
    n, d = s.pick((8192, 4096), (8, 64))
    x, w, b = _randn(s, n, d, dtype=torch.half), _randn(s, d, dtype=torch.half), _randn(s, d, dtype=torch.half)
    fn = lambda x, w, b: F.layer_norm(x, (d,), w, b)
    row = compare(s, fn, (x, w, b), 2e-3, 1e-2, nbytes=_nbytes(x, w, b) + x.nbytes)
    return {"shape": [n, d], "goal": ("of_copy", GOALS["of_copy"]), **row}


def case_adamw(s: Setup) -> dict[str, Any]:
    """One AdamW step over 12 float32 tensors (6 matrices, 6 vectors): ember.optim.AdamW against
    torch's foreach AdamW (eager) and that step under torch.compile."""
    shapes = [s.pick((4096, 1024), (16, 8)), s.pick((1024,), (8,))] * 6
    params = [_randn(s, *shape) for shape in shapes]
    grads = [_randn(s, *shape) for shape in shapes]
    hp = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)

    def make(cls, **kw):
        ps = [torch.nn.Parameter(p.clone()) for p in params]
        for p, g in zip(ps, grads):
            p.grad = g.clone()
        return ps, cls(ps, **hp, **kw)

    steppers = {}  # name -> (parameters, step())
    for name, cls, kw in (("ember", ember.optim.AdamW, {}), ("eager", torch.optim.AdamW, {"foreach": True})):
        ps, opt = make(cls, **kw)
        steppers[name] = (ps, opt.step)
    compile_error = None
    if s.compile_torch:  # as torch's recipe compiles an optimizer step
        ps, opt_tc = make(torch.optim.AdamW, foreach=True)
        try:
            @torch.compile(fullgraph=False)
            def compiled_step():
                opt_tc.step()

            compiled_step()  # compiles; then the step below is its second
            steppers["torch_compile"] = (ps, compiled_step)
        except Exception as e:  # torch.compile's own failure: the baseline is missing, ember did not fail
            compile_error = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    for name, (_, step) in steppers.items():  # two steps each (the second from Adam's state), then compare
        if name != "torch_compile":
            step()
        step()
    for name, (ps, _) in steppers.items():
        if name != "eager":
            _check(ps, steppers["eager"][0], 1e-5, 1e-6)
    _sync(s)
    ms: dict[str, float | None] = {name: bench_ms(step, s) for name, (_, step) in steppers.items()}
    ms.setdefault("torch_compile", None)
    # read p, g, m, v; write p, m, v: 7 floats per element
    row = _rates({"ms": ms}, s, 7 * sum(p.nbytes for p in params), None)
    if compile_error:
        row["torch_compile_error"] = compile_error
    return {"shape": [list(x) for x in shapes], "goal": ("of_copy", GOALS["of_copy"]), **row}


def case_fusion_suite(s: Setup) -> dict[str, Any]:
    """benchmarks/fusion.py's patterns: the geomean over patterns of torch.compile time / ember time."""
    import fusion

    size = "tiny" if s.smoke else s.fusion_size
    names = ["bias_gelu", "softmax"] if s.smoke else None  # the smoke run: two patterns, enough to not rot
    result = fusion.run(size, names, device=s.device, timing=s.device.type == "cuda", budget_s=s.budget_s)
    s.extra["fusion"] = result
    rows = result["rows"]
    bad = [r["pattern"] + ": " + r.get("error", "does not match eager") for r in rows
           if not r.get("error", "").startswith("skipped") and ("error" in r or not r["matches_eager"])]
    if bad:
        raise AssertionError("; ".join(bad))
    ratios = [r["ms"]["torch_compile"] / r["ms"]["ember"] for r in rows if r.get("ms")]
    row: dict[str, Any] = {"patterns": len(rows), "timed": len(ratios),
                           "skipped_patterns": [r["pattern"] for r in rows if "error" in r],
                           "ms": {"ember": None, "eager": None, "torch_compile": None}}
    if ratios:
        row["geomean_vs_torch_compile"] = math.exp(sum(map(math.log, ratios)) / len(ratios))
    return {"shape": size, "goal": ("geomean_vs_torch_compile", GOALS["geomean_vs_torch_compile"]), **row}


def case_save_load(s: Setup) -> dict[str, Any]:
    """Compile + first call against `ember.load` + first call in fresh processes (benchmarks/save_load.py):
    with Triton's cache warm on both sides (what ember's compile and load cost: the goal), and on a GPU
    also cold on both (every kernel compiled by Triton in each process)."""
    import save_load

    cases = ["mlp", "transformer"]
    row: dict[str, Any] = {"ms": {"ember": None, "eager": None, "torch_compile": None}, "first_call_vs_compile": None}
    goal = ("first_call_vs_compile", GOALS["first_call_vs_compile"])
    if s.smoke:  # (fresh processes, seconds each: `python benchmarks/save_load.py` runs the same code on CPU)
        return {"shape": cases, "goal": goal, "note": "not run in the smoke run", **row}
    ratio = lambda r: r["compile_first_call_s"] / r["load_first_call_s"]  # noqa: E731
    for cache, cold in (("warm", False), ("cold", True)):
        result = save_load.run(cases, 1, "cuda", cold=cold)
        row[cache] = result
        row["first_call_vs_compile" if cache == "warm" else "cold_first_call_vs_compile"] = \
            min(ratio(r) for r in result["cases"])
    return {"shape": cases, "goal": goal, **row}


CASES: dict[str, Callable[[Setup], dict[str, Any]]] = {
    "fusion_bandwidth": case_fusion_bandwidth,
    "matmul": case_matmul,
    "attention": case_attention,
    "sum": case_sum,
    "cross_entropy": case_cross_entropy,
    "layernorm": case_layernorm,
    "adamw": case_adamw,
    "fusion_suite": case_fusion_suite,
    "save_load": case_save_load,
}


def run_case(name: str, s: Setup) -> dict[str, Any]:
    """One case, its errors caught and recorded (`error`: the exception, `traceback`: where)."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    try:
        row = CASES[name](s)
        key, goal = row.pop("goal")
        value = row.get(key)  # (a smoke run's tiny CPU shapes judge no goal)
        row["goal"] = {"metric": key, "target": goal, "value": value,
                       "met": None if s.smoke or value is None else value >= goal}
    except Exception as e:  # one broken case must not hide the others; it fails the run
        row = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300],
               "traceback": traceback.format_exc(limit=-4)}
    finally:
        gc.collect()
        if s.device.type == "cuda":
            torch.cuda.empty_cache()
    return {"name": name, **row, "seconds": round(time.perf_counter() - t0, 1)}


def gpu_tests(timeout_s: float) -> dict[str, Any]:
    """Run the tests marked `gpu` (pytest exits 5 when none are collected)."""
    cmd = [sys.executable, "-m", "pytest", str(HERE.parent / "tests"), "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return {"status": "timeout", "exit": None, "seconds": round(timeout_s), "tail": []}
    status = {0: "passed", 5: "none collected"}.get(p.returncode, "failed")
    tail = [ln for ln in (p.stdout + p.stderr).strip().splitlines() if ln.strip()][-15:]
    return {"status": status, "exit": p.returncode, "seconds": round(time.perf_counter() - t0), "tail": tail}


def failed(result: dict[str, Any]) -> list[str]:
    """What makes the run fail: a GPU test failing, erroring or timing out; a case raising (mismatches
    with eager raise too)."""
    why = []
    if result["tests"]["status"] in ("failed", "timeout"):
        why.append(f"gpu tests {result['tests']['status']}")
    why += [f"{c['name']}: {c['error']}" for c in result["cases"] if "error" in c]
    return why


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(result: dict[str, Any]) -> str:
    t = result["tests"]
    lines = [f"gpu tests: {t['status']}" + (f" (exit {t['exit']}, {t['seconds']} s)" if t.get("exit") is not None
                                            else "")]
    lines += ["  " + ln for ln in t.get("tail", [])[-5:]]
    head = ["case", "ember ms", "eager ms", "compile ms", "vs compile", "goal", "value", "met"]
    rows = []
    for c in result["cases"]:
        if "error" in c or "skipped" in c:
            rows.append([c["name"], "ERROR " + c["error"] if "error" in c else "skipped: " + c["skipped"]])
            continue
        ms, goal = c.get("ms", {}), c.get("goal", {})
        rows.append([c["name"], _fmt(ms.get("ember"), ".3f"), _fmt(ms.get("eager"), ".3f"),
                     _fmt(ms.get("torch_compile"), ".3f"), _fmt(c.get("vs_torch_compile"), ".2f"),
                     f"{goal.get('metric')} >= {goal.get('target')}", _fmt(goal.get("value"), ".2f"),
                     {True: "yes", False: "NO", None: "-"}[goal.get("met")]])
    widths = [max(len(r[i]) for r in [head] + rows if len(r) > 2) for i in range(len(head))]
    for r in [head] + rows:
        lines.append(f"{r[0].ljust(widths[0])}  {r[1]}" if len(r) == 2 else
                     "  ".join(x.ljust(w) if i == 0 else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths))))
    copy = result.get("copy_gbps")
    lines.append(f"{result['device']}  torch {result['torch']}  triton {result['triton']}  "
                 f"copy {_fmt(copy, '.0f')} GB/s  total {result['seconds']} s"
                 + ("  (cpu smoke: tiny shapes, wall clock)" if result["smoke"] else ""))
    return "\n".join(lines)


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "missing"


def run(s: Setup, names: list[str], tests: bool, test_budget: float, budget: float) -> dict[str, Any]:
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name(s.device) if s.device.type == "cuda" else "cpu (Triton interpreter)",
        "torch": torch.__version__, "triton": _triton_version(), "smoke": s.smoke, "copy_gbps": None, "cases": []}
    result["tests"] = gpu_tests(test_budget) if tests else {"status": "not run", "exit": None, "tail": []}
    print(f"gpu tests: {result['tests']['status']}", file=sys.stderr, flush=True)
    s.copy_gbps = result["copy_gbps"] = copy_bandwidth(s)
    for name in names:
        left = budget - (time.perf_counter() - t0)
        if left <= 0:
            result["cases"].append({"name": name, "skipped": f"time budget of {budget:.0f} s spent"})
            continue
        s.budget_s = max(0.0, left - 15)  # the fusion suite checks its budget between patterns: a margin
        result["cases"].append(run_case(name, s))
        print(f"  {name}: {result['cases'][-1].get('error', 'ok')}", file=sys.stderr, flush=True)
    result["seconds"] = round(time.perf_counter() - t0)
    result["failures"] = failed(result)
    result["ok"] = not result["failures"]
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=290.0,
                    help="seconds for the whole run, tests included: cases not started by then are skipped")
    ap.add_argument("--test-budget", type=float, default=120.0,
                    help="seconds for the gpu tests (default 120; running out fails the run)")
    ap.add_argument("--no-tests", action="store_true", help="skip the gpu tests")
    ap.add_argument("--cases", help="comma-separated subset of: " + ", ".join(CASES))
    ap.add_argument("--fusion-size", default="large", choices=["tiny", "small", "large"])
    ap.add_argument("--json", help="where to write the results (default $OUT/gpu_check.json, else benchmarks/)")
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="tiny shapes on the CPU (Triton's interpreter), no tests, no torch.compile")
    a = ap.parse_args(argv)
    names = a.cases.split(",") if a.cases else list(CASES)
    unknown = [n for n in names if n not in CASES]
    if unknown:
        ap.error(f"unknown cases {unknown}; known: {', '.join(CASES)}")
    if not a.cpu_smoke and not torch.cuda.is_available():
        print("no CUDA device: this script is for a GPU machine (--cpu-smoke runs its cases on tiny CPU shapes)")
        return 2
    s = Setup(torch.device("cpu" if a.cpu_smoke else "cuda"), smoke=a.cpu_smoke, fusion_size=a.fusion_size)
    result = run(s, names, tests=not (a.no_tests or a.cpu_smoke), test_budget=a.test_budget, budget=a.budget)
    out = Path(a.json) if a.json else Path(os.environ.get("OUT") or HERE) / "gpu_check.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=str))
    if "fusion" in s.extra:
        (out.parent / f"fusion_{s.extra['fusion']['size']}.json").write_text(json.dumps(s.extra["fusion"], indent=1))
    print(format_table(result))
    for why in result["failures"]:
        print("FAILED:", why)
    print(f"wrote {out}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
