"""Fusion benchmark: kernels and bytes of eager PyTorch versus ember's static mode, per pattern.

    python benchmarks/fusion.py [--size small|large] [--json PATH] [--plot PATH] [--patterns a,b]

For every pattern (benchmarks/fusion_patterns.py) it runs ember on the inputs and checks the result
against eager, then reports kernels and bytes from `ember.explain` (eager: one kernel per aten op;
ember: one per fused group) against the compulsory bytes. On a CUDA machine it also times torch
eager, torch.compile and ember with `triton.testing.do_bench` and relates the compulsory bytes per
second to a measured device-to-device copy. "ember eager" runs the pattern op by op in `ember.eager()`
(one ember kernel per supported aten op): the dynamic-graph side of the static-versus-dynamic contrast.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from fusion_patterns import PATTERNS, Pattern  # noqa: E402

import ember  # noqa: E402

MB = 1024 * 1024


def _close(out: Any, ref: Any, pattern: Pattern, size: str) -> tuple[bool, float]:
    """(matches, max abs error); large sizes accumulate longer sums, so they get 10x the tolerance."""
    scale = 10.0 if size == "large" else 1.0
    outs, refs = torch.utils._pytree.tree_leaves(out), torch.utils._pytree.tree_leaves(ref)
    err, ok = 0.0, len(outs) == len(refs)
    for o, r in zip(outs, refs):
        o, r = o.float(), r.float()
        finite = torch.isfinite(r)
        err = max(err, (o[finite] - r[finite]).abs().max().item() if finite.any() else 0.0)
        ok = ok and torch.allclose(o, r, rtol=pattern.rtol * scale, atol=pattern.atol * scale, equal_nan=True)
    return ok, err


def _bench_ms(fn: Any, args: tuple) -> float:
    import triton.testing

    return float(triton.testing.do_bench(lambda: fn(*args), warmup=25, rep=100, return_mode="median"))


def copy_bandwidth_gbps(device: torch.device, nbytes: int = 1 << 30) -> float:
    """Device-to-device copy bandwidth (bytes read + written per second) of `dst.copy_(src)`."""
    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    ms = _bench_ms(lambda: dst.copy_(src), ())
    return 2 * nbytes / (ms * 1e-3) / 1e9


def _in_eager_mode(fn):
    def run(*args):
        with ember.eager():
            return fn(*args)

    return run


def _ember_eager_launches(fn, args) -> int:
    """Kernels ember's eager mode launches for one call (after a warm-up call builds them)."""
    with torch.no_grad():
        _in_eager_mode(fn)(*args)
        ember.reset_eager_stats()
        _in_eager_mode(fn)(*args)
    return ember.eager_stats().launches


def run_pattern(pattern: Pattern, size: str = "small", device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, timing: bool = False) -> dict[str, Any]:
    """Explain, run and check one pattern; time it when `timing` (CUDA only)."""
    device = torch.device(device)
    torch.manual_seed(0)
    fn, args = pattern.build(size, device, dtype)
    start = time.perf_counter()
    report = ember.explain(fn, *args)
    sg = report.static_graph
    with torch.no_grad():
        ref = fn(*args)
        out = sg(*args)
    ok, err = _close(out, ref, pattern, size)
    eager_mode_launches = _ember_eager_launches(fn, args)
    row: dict[str, Any] = {
        "pattern": pattern.name, "size": size, "dtype": str(dtype).replace("torch.", ""),
        "inputs": [list(a.shape) for a in args if isinstance(a, torch.Tensor)],
        "eager_kernels": report.eager_kernels, "eager_bytes": report.eager_bytes,
        "unfused_kernels": report.unfused_kernels, "unfused_bytes": report.unfused_bytes,
        "ember_kernels": report.num_kernels, "ember_launches": sg.num_kernels, "ember_bytes": report.bytes_moved,
        "compulsory_bytes": report.compulsory_bytes,
        "eager_ratio": report.eager_bytes / report.compulsory_bytes,
        "ember_ratio": report.bytes_moved / report.compulsory_bytes,
        "fallbacks": [f.target for f in report.fallbacks],
        "matches_eager": ok, "max_abs_error": err, "ember_eager_mode_kernels": eager_mode_launches,
        "seconds_to_run_on_this_machine": round(time.perf_counter() - start, 2),
    }
    if timing:
        with torch.no_grad():
            compiled = torch.compile(fn)
            compiled(*args)
            row["ms"] = {"eager": _bench_ms(fn, args), "torch_compile": _bench_ms(compiled, args),
                         "ember": _bench_ms(sg, args), "ember_eager_mode": _bench_ms(_in_eager_mode(fn), args)}
        row["gbps"] = {k: (report.compulsory_bytes / (v * 1e-3) / 1e9 if v else None) for k, v in row["ms"].items()}
    return row


def run(size: str = "small", names: list[str] | None = None, device: str | torch.device | None = None,
        timing: bool | None = None, budget_s: float | None = None) -> dict[str, Any]:
    """Every pattern (or those `names`) at `size`; times on CUDA unless `timing=False`. Patterns not
    started within `budget_s` seconds are reported as skipped."""
    t0 = time.perf_counter()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    timing = device.type == "cuda" if timing is None else timing
    result: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "size": size, "device": _device_name(device),
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} cpus, "
                   f"python {platform.python_version()}",
        "torch": torch.__version__, "triton": _triton_version(), "copy_gbps": None, "rows": [],
    }
    if timing:
        result["copy_gbps"] = copy_bandwidth_gbps(device)
    for p in PATTERNS:
        if names and p.name not in names:
            continue
        if budget_s is not None and time.perf_counter() - t0 > budget_s:
            row = {"pattern": p.name, "size": size, "error": f"skipped: time budget of {budget_s:.0f} s spent"}
        else:
            row = _run_caught(p, size, device, timing)
        if timing and "gbps" in row:
            row["copy_fraction"] = {k: (v / result["copy_gbps"] if v else None) for k, v in row["gbps"].items()}
        result["rows"].append(row)
        print(f"  {p.name}: {'error' if 'error' in row else 'ok' if row['matches_eager'] else 'MISMATCH'}",
              file=sys.stderr, flush=True)
    return result


def _run_caught(p: Pattern, size: str, device: torch.device, timing: bool) -> dict[str, Any]:
    try:
        return run_pattern(p, size, device, timing=timing)
    except Exception as e:  # one broken pattern must not hide the others
        msg = f"{type(e).__name__}: {e}".splitlines()[0][:200]
        return {"pattern": p.name, "size": size, "error": msg}
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}), Triton interpreter"


def _triton_version() -> str:
    try:
        import triton

        return triton.__version__
    except ImportError:
        return "missing"


def _kb(n: float) -> str:
    return f"{n / MB:.2f} MB" if n >= MB else f"{n / 1024:.1f} KB"


def format_table(result: dict[str, Any]) -> str:
    head = ["pattern", "eager k", "ember-eager k", "eager bytes", "ember k", "launched", "ember bytes", "compulsory",
            "eager/comp", "ember/comp", "check"]
    timed = result["copy_gbps"] is not None
    if timed:
        head += ["eager ms", "compile ms", "ember ms", "ember-eager ms", "ember GB/s", "of copy"]
    rows = []
    for r in result["rows"]:
        if "error" in r:
            rows.append([r["pattern"], "error: " + r["error"]])
            continue
        cells = [r["pattern"], str(r["eager_kernels"]), str(r["ember_eager_mode_kernels"]), _kb(r["eager_bytes"]),
                 str(r["ember_kernels"]),
                 str(r["ember_launches"]), _kb(r["ember_bytes"]), _kb(r["compulsory_bytes"]),
                 f"{r['eager_ratio']:.2f}", f"{r['ember_ratio']:.2f}",
                 "ok" if r["matches_eager"] else f"MISMATCH {r['max_abs_error']:.1e}"]
        if timed:
            ms, gb, frac = r["ms"], r["gbps"], r["copy_fraction"]
            cells += [f"{ms['eager']:.3f}", f"{ms['torch_compile']:.3f}", f"{ms['ember']:.3f}",
                      f"{ms['ember_eager_mode']:.3f}",
                      f"{gb['ember']:.0f}", f"{frac['ember']:.0%}"]
        rows.append(cells)
    widths = [max(len(r[i]) for r in [head] + rows if i < len(r) and len(r) > 2) for i in range(len(head))]
    lines = []
    for r in [head] + rows:
        if len(r) == 2:  # an error row
            lines.append(f"{r[0].ljust(widths[0])}  {r[1]}")
        else:
            lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    notes = [f"{result['date']}  {result['device']}  torch {result['torch']}  triton {result['triton']}  "
             f"size={result['size']}",
             "eager k: non-view aten ops eager PyTorch runs; ember k: fused kernels ember's partition forms "
             "(incl. torch fallbacks); launched: kernels the runtime launches per call; bytes at kernel boundaries.",
             "ember-eager k: kernels ember's eager mode (ember.eager(), op by op) launches per call."]
    if timed:
        notes.append(f"copy bandwidth (dst.copy_(src), 1 GiB): {result['copy_gbps']:.0f} GB/s; "
                     "GB/s = compulsory bytes / median time.")
    else:
        notes.append("no CUDA device: times not measured.")
    return "\n".join(lines + [""] + notes)


def plot(result: dict[str, Any], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("--plot needs matplotlib (pip install matplotlib)") from None
    rows = [r for r in result["rows"] if "error" not in r]
    names = [r["pattern"] for r in rows]
    fig, ax = plt.subplots(figsize=(10, 4))
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["eager_ratio"] for r in rows], 0.4, label="eager (one kernel per aten op)")
    ax.bar([x + 0.2 for x in xs], [r["ember_ratio"] for r in rows], 0.4, label="ember static")
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_xticks(list(xs), names, rotation=30, ha="right")
    ax.set_ylabel("bytes moved / compulsory bytes")
    ax.set_title(f"fusion: bytes moved ({result['size']}, {result['device']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=["tiny", "small", "large"], default=None,
                    help="input sizes (default: large on CUDA, small on CPU)")
    ap.add_argument("--json", help="write the results to this JSON file")
    ap.add_argument("--plot", help="write a bar chart of bytes/compulsory to this image (needs matplotlib)")
    ap.add_argument("--patterns", help="comma-separated subset of: " + ", ".join(p.name for p in PATTERNS))
    ap.add_argument("--no-timing", action="store_true", help="skip timing even on CUDA")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    size = a.size or ("large" if cuda else "small")
    torch.set_num_threads(1)
    result = run(size, a.patterns.split(",") if a.patterns else None, timing=cuda and not a.no_timing)
    print(format_table(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    if a.plot:
        plot(result, a.plot)
    return result


if __name__ == "__main__":
    main()
