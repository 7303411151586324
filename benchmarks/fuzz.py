"""Fuzzing: random programs (tests/programs.py, `fuzz_programs`) through ember against eager PyTorch.

    python benchmarks/fuzz.py --programs 10000 [--seed S] [--json out.json] [--time-limit SECONDS]
                              [--timeout S] [--deep] [--no-nn]

Draws programs from the same hypothesis strategy the tests use (seeded, generation only: no
shrinking) and classifies each as tests/program_checks.py does: pass / mismatch / error (eager
raises too, or ember refuses a program eager runs) / internal (a KeyError, AttributeError,
AssertionError, IndexError, TypeError, ... through ember's code) / timeout. Prints counts, the rate
and the source of every program that is not a pass or an expected error; `--json` writes counts and
those records (rewritten every 100 programs, so an interrupted run leaves its figures).
`--time-limit` stops drawing after that many seconds and reports the exact number run. `--deep`
also compares each forward program's fused kernels with the unfused graph and the reference
interpreter. Program k of a seed gets input values from seed k (`Program.make_inputs(seed=k)`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

STATUSES = ("pass", "mismatch", "error", "internal", "timeout")


class _TimeUp(Exception):
    """Raised from the test body to stop hypothesis once --time-limit has passed."""


def machine() -> str:
    import torch
    import triton

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cpus, {platform.system()} {platform.machine()}, python "
            f"{platform.python_version()}, torch {torch.__version__}, triton {triton.__version__}"
            + ("" if torch.cuda.is_available() else " (interpreter)"))


def summarize(records: list[dict], seconds: float) -> dict:
    counts = dict.fromkeys(STATUSES, 0)
    for r in records:
        counts[r["status"]] += 1
    errors = [r for r in records if r["status"] == "error"]
    return {
        "programs": len(records),
        "gradient_programs": sum(r["gradients"] for r in records),
        "counts": counts,
        "error_eager_raises_too": sum(bool(r["eager_error"]) for r in errors),
        "error_ember_refuses": sum(not r["eager_error"] for r in errors),
        "error_same_type_as_eager": sum(bool(r["eager_error"]) and r["detail"].split(":")[0] ==
                                        r["eager_error"].split(":")[0] for r in errors),
        "error_naming_the_user_line": sum(r["note"] == "user line" for r in errors),
        "seconds": round(seconds, 1),
        "programs_per_second": round(len(records) / seconds, 3) if seconds else None,
    }


def counts_line(s: dict) -> str:
    c = s["counts"]
    return (f"{s['programs']} programs ({s['gradient_programs']} gradient): pass {c['pass']}, mismatch "
            f"{c['mismatch']}, error {c['error']} (eager raises too {s['error_eager_raises_too']}, ember "
            f"refuses {s['error_ember_refuses']}; {s['error_naming_the_user_line']} name the program's line), "
            f"internal {c['internal']}, timeout {c['timeout']}; "
            f"{s['seconds']:.0f} s, {s['programs_per_second']} programs/s")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--time-limit", type=float, help="stop after this many seconds")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per program")
    ap.add_argument("--max-steps", type=int, default=10)
    ap.add_argument("--deep", action="store_true", help="also unfused and reference interpreter")
    ap.add_argument("--no-nn", dest="nn", action="store_false",
                    help="without the conv/pool/embedding/loss/index/norm/attention steps (the earlier mix)")
    args = ap.parse_args(argv)

    warnings.filterwarnings("ignore")
    import torch
    from hypothesis import HealthCheck, Phase, given, seed, settings
    from program_checks import classify
    from programs import fuzz_programs

    torch.set_num_threads(1)
    records: list[dict] = []
    start = time.perf_counter()

    def report(final: bool = False) -> dict:
        s = summarize(records, time.perf_counter() - start)
        if args.json:
            failures = [r for r in records if r["status"] not in ("pass", "error") or
                        (r["status"] == "error" and not r["eager_error"])]
            data = {"summary": s, "seed": args.seed, "deep": args.deep, "nn": args.nn, "max_steps": args.max_steps,
                    "machine": machine(), "date": datetime.datetime.now().isoformat(timespec="seconds"),
                    "finished": final, "failures": failures,
                    "expected_errors": [{k: r[k] for k in ("index", "detail", "eager_error", "note")} for r in records
                                        if r["status"] == "error" and r["eager_error"]]}
            args.json.write_text(json.dumps(data, indent=1))
        return s

    @seed(args.seed)
    @settings(max_examples=args.programs, phases=[Phase.generate], database=None, deadline=None,
              suppress_health_check=list(HealthCheck), print_blob=False)
    @given(fuzz_programs(args.max_steps, nn=args.nn))
    def sweep(case) -> None:
        if args.time_limit and time.perf_counter() - start > args.time_limit:
            raise _TimeUp
        gradients, prog = case
        k = len(records)
        o = classify(prog, seed=k, gradients=gradients, deep=args.deep, timeout=args.timeout)
        records.append({"index": k, "gradients": gradients, **o.to_json(),
                        "source": "" if o.ok else prog.source})
        if not o.ok:
            print(f"[{k}] {o.status}{' (gradients)' * gradients}: {o.detail}"
                  + (f" (eager: {o.eager_error})" if o.eager_error else "")
                  + (f"\n  at {o.where}" if o.where else "") + f"\n{prog.source}", flush=True)
        if len(records) % 100 == 0:
            print(counts_line(report()), flush=True)

    try:
        sweep()
    except _TimeUp:
        print(f"time limit ({args.time_limit:g} s) reached", flush=True)
    s = report(final=True)
    print(counts_line(s))
    print(machine())
    return 0 if s["counts"]["mismatch"] == s["counts"]["internal"] == s["counts"]["timeout"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
