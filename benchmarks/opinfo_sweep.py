"""OpInfo sweep: every float32 sample of PyTorch's op_db through ember (tests/opinfo_harness.py).

    python benchmarks/opinfo_sweep.py [--ops a,b] [--limit-samples N] [--jobs N] [--timeout S]
                                      [--json PATH] [--resume] [--mismatches-md PATH]

Per sample: `ember.compile` forward, `ember.compile` gradients (ops with autograd), `ember.eager()`
forward, each against eager PyTorch; counts of pass / mismatch / error / internal / timeout / skip
(random ops apart) and errors grouped by first line are printed and written to `--json`.

Ops run in worker processes (`--jobs` at a time, `--batch` ops per worker): a crash or a hang costs
one op, not the sweep. Each sample has a time limit (`--timeout`). Results are appended per op to
`<json>.records.jsonl`, so an interrupted sweep continues with `--resume`. `--mismatches-md` rewrites
a Markdown list of the non-random mismatches (its own section of the file) after every batch.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _worker(names: list[str], args: argparse.Namespace, out: Path) -> None:
    """Run `names` one after another, appending one JSON line per op to `out`."""
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(1)
    import opinfo_harness as h

    checks = tuple(args.checks.split(","))
    for name in names:
        start = time.perf_counter()
        try:
            results = [r.to_json() for r in h.run_op(h.find_ops([name])[0], args.limit_samples, args.timeout,
                                                     checks=checks)]
        except BaseException as e:  # the harness failed (e.g. generating samples): one record for the op
            o = h.error_outcome(e)
            bad = {"status": "error" if o.status != "timeout" else "timeout", "detail": f"harness: {o.detail}",
                   "max_abs_diff": None, "note": ""}
            results = [{"op": name, "index": -1, "description": "", "random": False, "forward": bad,
                        "gradient": bad, "eager": bad, "seconds": 0.0}]
        with open(out, "a") as f:
            f.write(json.dumps({"op": name, "seconds": time.perf_counter() - start, "results": results}) + "\n")


def _counts_line(results: list[dict]) -> str:
    parts = []
    for check in ("forward", "gradient", "eager"):
        st: dict[str, int] = {}
        for r in results:
            s = r[check]["status"] + ("(r)" if r["random"] else "")
            st[s] = st.get(s, 0) + 1
        parts.append(f"{check[:4]} " + " ".join(f"{k}={v}" for k, v in sorted(st.items())))
    return " | ".join(parts)


def _mismatch_md(results: list[dict], h, args: argparse.Namespace) -> str:
    rows = h.mismatches(results)
    limit = "all samples" if args.limit_samples is None else f"first {args.limit_samples} sample(s) per op"
    lines = [f"Non-random mismatches: {len(rows)} ({limit}; updated "
             f"{datetime.datetime.now().isoformat(timespec='seconds')}, {len({r['op'] for r in results})} ops, "
             f"{len(results)} samples swept)", "",
             "| check | op | sample | max abs diff | what |", "|---|---|---|---|---|"]
    for check, r in sorted(rows, key=lambda cr: (cr[1]["op"], cr[0], cr[1]["index"])):
        d = r[check]
        diff = "" if d["max_abs_diff"] is None else f"{d['max_abs_diff']:.3g}"
        what = " ".join(d["detail"].split()).replace("|", "\\|")[:200]
        desc = " ".join(r["description"].split()).replace("|", "\\|")
        lines.append(f"| {check} | {r['op']} | #{r['index']} {desc} | {diff} | {what} |")
    return "\n".join(lines) + "\n"


def write_md(path: Path, table: str, section: str) -> None:
    """Replace this sweep's section of `path` (between its BEGIN and END markers), keeping the rest."""
    BEGIN, END = f"<!-- opinfo_sweep {section}: begin -->", f"<!-- opinfo_sweep {section}: end -->"
    text = path.read_text() if path.exists() else ""
    block = f"{BEGIN}\n{table}{END}\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + block + text[text.index(END) + len(END) + 1:]
    else:
        text = text + ("\n" if text else "") + block
    path.write_text(text)


def _print_summary(summary: dict) -> None:
    print(f"\n{summary['ops']} ops, {summary['samples']} samples")
    print(f"{'':10s} " + " ".join(f"{s:>9s}" for s in ("pass", "mismatch", "error", "internal", "timeout", "skip")))
    for check in ("forward", "gradient", "eager"):
        for kind in ("non_random", "random"):
            c = summary[check][kind]
            print(f"{check[:8] + (' (rnd)' if kind == 'random' else ''):14s}"
                  + " ".join(f"{c[s]:>9d}" for s in ("pass", "mismatch", "error", "internal", "timeout", "skip")))
    print("passes outside assert_close's float32 tolerances, as accurate as eager vs float64: "
          + ", ".join(f"{c} {summary[c]['passes_by_fp64_rule']}" for c in ("forward", "gradient", "eager")))
    for check in ("forward", "gradient", "eager"):
        for kind in ("internal", "error", "timeout"):
            groups = summary[check][f"{kind}_groups"]
            if groups:
                print(f"\n{check} {kind} by first line ({sum(groups.values())}):")
                for k, n in list(groups.items())[:15]:
                    print(f"  {n:5d}  {k[:150]}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", help="comma-separated OpInfo full names (default: all float32 ops)")
    p.add_argument("--limit-samples", type=int, default=None, help="first N samples per op (default: all)")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--batch", type=int, default=20, help="ops per worker process")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per sample and check")
    p.add_argument("--op-timeout", type=float, default=1800.0, help="kill a worker silent for this long")
    p.add_argument("--checks", default="forward,gradient,eager")
    p.add_argument("--json", default="/tmp/ember_opinfo_sweep.json")
    p.add_argument("--resume", action="store_true", help="keep the records of ops already swept")
    p.add_argument("--mismatches-md", help="rewrite this Markdown list of non-random mismatches after every op")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker is not None:
        return _worker(args.worker.split(","), args, Path(args.worker_out))

    warnings.filterwarnings("ignore")
    import opinfo_harness as h
    import torch
    import triton

    names = args.ops.split(",") if args.ops else [op.full_name for op in h.float32_ops()]
    h.find_ops(names)  # unknown names fail here, not in a worker
    names = list(dict.fromkeys(names))
    out = Path(args.json)
    records_path = out.with_suffix(".records.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    records: dict[str, dict] = {}
    if args.resume and records_path.exists():
        for line in records_path.read_text().splitlines():
            rec = json.loads(line)
            records[rec["op"]] = rec
    elif records_path.exists():
        records_path.unlink()
    todo = [n for n in names if n not in records]
    print(f"{len(names)} ops, {len(todo)} to run, jobs={args.jobs}, limit_samples={args.limit_samples}, "
          f"timeout={args.timeout}s; records: {records_path}", flush=True)

    passthrough = ["--timeout", str(args.timeout), "--checks", args.checks]
    if args.limit_samples is not None:
        passthrough += ["--limit-samples", str(args.limit_samples)]
    queue = [todo[i:i + args.batch] for i in range(0, len(todo), args.batch)]
    running: list[tuple[subprocess.Popen, list[str], Path]] = []
    tmp = out.parent / f".{out.stem}.workers"
    tmp.mkdir(exist_ok=True)
    start = time.perf_counter()
    n_done, serial = 0, 0

    def finished(batch: list[str], path: Path, rc: int) -> None:
        nonlocal n_done
        got = {}
        if path.exists():
            for line in path.read_text().splitlines():
                rec = json.loads(line)
                got[rec["op"]] = rec
            path.unlink()
        log = path.with_suffix(".log")
        if rc == 0 and log.exists():
            log.unlink()
        for name in batch:
            if name not in got:
                break
            rec = got[name]
            records[name] = rec
            with open(records_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            n_done += 1
            elapsed = time.perf_counter() - start
            print(f"[{n_done}/{len(todo)} {elapsed:6.0f}s] {name}: {len(rec['results'])} samples "
                  f"{rec['seconds']:.1f}s  {_counts_line(rec['results'])}", flush=True)
        missing = [n for n in batch if n not in got]
        if missing:  # the worker died in missing[0]: record the crash, run the rest again
            log = path.with_suffix(".log")
            tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
            crash = {"status": "error", "detail": f"worker died (exit code {rc}): {' '.join(tail)[:200]}",
                     "max_abs_diff": None, "note": ""}
            rec = {"op": missing[0], "seconds": 0.0, "results": [
                {"op": missing[0], "index": -1, "description": "", "random": False, "forward": crash,
                 "gradient": crash, "eager": crash, "seconds": 0.0}]}
            records[missing[0]] = rec
            with open(records_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"  {missing[0]}: worker exited with {rc}", flush=True)
            if missing[1:]:
                queue.insert(0, missing[1:])
        if args.mismatches_md:
            all_results = [r for rec in records.values() for r in rec["results"]]
            write_md(Path(args.mismatches_md), _mismatch_md(all_results, h, args), out.stem)

    while queue or running:
        while queue and len(running) < args.jobs:
            batch = queue.pop(0)
            serial += 1
            path = tmp / f"{os.getpid()}-{serial}.jsonl"
            cmd = [sys.executable, __file__, "--worker", ",".join(batch), "--worker-out", str(path), *passthrough]
            with open(path.with_suffix(".log"), "w") as log:
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
            running.append((proc, batch, path))
        time.sleep(0.5)
        for item in list(running):
            proc, batch, path = item
            if proc.poll() is None:
                last = path.stat().st_mtime if path.exists() else path.with_suffix(".log").stat().st_ctime
                if time.time() - last > args.op_timeout:  # hung outside Python (the alarm cannot fire)
                    proc.kill()
                    proc.wait()
            if proc.poll() is not None:
                running.remove(item)
                finished(batch, path, proc.returncode)

    results = [r for name in names if name in records for r in records[name]["results"]]
    summary = h.summarize(results)
    wall = time.perf_counter() - start
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "triton": triton.__version__, "limit_samples": args.limit_samples, "timeout_s": args.timeout,
            "jobs": args.jobs, "wall_s": round(wall, 1),
            "sample_seconds": round(sum(r["seconds"] for r in results), 1)}
    mism = [{"check": c, "op": r["op"], "index": r["index"], "sample": r["description"], **r[c]}
            for c, r in h.mismatches(results)]
    out.write_text(json.dumps({"meta": meta, "summary": summary, "mismatches": mism}, indent=1))
    _print_summary(summary)
    print(f"\n{meta['date']}  {len(names)} ops  wall {wall:.0f}s  (this run: {len(todo)} ops)  "
          f"torch {torch.__version__}  triton {triton.__version__}  -> {out}")
    if args.mismatches_md:
        write_md(Path(args.mismatches_md), _mismatch_md(results, h, args), out.stem)


if __name__ == "__main__":
    main()
