"""One command for a GPU machine: GPU-marked tests (if any), then the fusion benchmark at large sizes.

    python benchmarks/gpu_check.py [--budget 240] [--size large]

Prints a short table and writes `fusion_<size>.json` to $OUT (or benchmarks/) for RESULTS.md.
Meant to finish in under 7 minutes: the tests get 180 s (`--test-budget`; mostly Triton compile time),
and benchmark patterns not started within the budget are reported as skipped.

The gpu tests (tests/test_gpu.py), against eager CUDA PyTorch: fused patterns; small models and every
zoo model (GPT, Llama, ResNet, MobileNet, ViT) training through `ember.compile` + backward + AdamW and
`compile_step` + AdamW (gathers, scatter-add, conv forward/input-grad/weight-grad, pooling, multi-tensor
updates; TF32 off on both sides); eager mode; a cumsum over 5000 columns; a float16 channels_last conv
with gradients; out-of-range embedding indices raising IndexError before a step writes parameters.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from fusion import format_table, run  # noqa: E402


def gpu_tests(timeout_s: float) -> str:
    """Run tests marked `gpu`; pytest exits 5 when none are collected."""
    cmd = [sys.executable, "-m", "pytest", str(HERE.parent / "tests"), "-q", "-m", "gpu", "-p", "no:cacheprovider"]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=HERE.parent)
    except subprocess.TimeoutExpired:
        return f"gpu tests: TIMED OUT after {timeout_s:.0f} s"
    if p.returncode == 5:
        return "gpu tests: none marked `gpu`"
    tail = [ln for ln in p.stdout.strip().splitlines() if ln.strip()][-15:]
    return f"gpu tests: exit {p.returncode}\n" + "\n".join(tail)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=200.0, help="seconds for the benchmark patterns")
    ap.add_argument("--size", default="large", choices=["tiny", "small", "large"])
    ap.add_argument("--test-budget", type=float, default=180.0, help="seconds for the gpu tests")
    a = ap.parse_args()
    start = time.perf_counter()
    if not torch.cuda.is_available():
        print("no CUDA device: this script is for a GPU machine (python benchmarks/fusion.py runs on CPU)")
    print(gpu_tests(a.test_budget), flush=True)
    result = run(a.size, budget_s=a.budget)
    out_dir = Path(os.environ.get("OUT") or HERE)
    path = out_dir / f"fusion_{a.size}.json"
    path.write_text(json.dumps(result, indent=1))
    print(format_table(result))
    print(f"\nwrote {path}; total {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
