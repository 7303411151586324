"""What ember plans for an H100 on the issue-12 headline cases, without a GPU (meta tensors).

    python benchmarks/gpu_plans.py [--target h100]

`ember.explain(fn, *meta_args, target=...)` plans each case for that GPU and runs nothing; the table
gives each case's kernels, the largest launch's grid, blocks, warps and stages, the bytes the kernels
move against the compulsory bytes (inputs read once, outputs written once), and the roofline estimate
(codegen/targets.py: a lower bound, not a measurement). Measured times come from
`benchmarks/gpu_check.py` on a GPU.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ember  # noqa: E402

META, H16 = torch.device("meta"), torch.float16


def _t(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=META)


# name -> (function, its meta arguments)
CASES: dict[str, tuple[Callable, tuple]] = {
    "matmul 4096^3 fp16": (torch.matmul, (_t(4096, 4096, dtype=H16), _t(4096, 4096, dtype=H16))),
    "sdpa causal B8 H16 S1024 D64 fp16": (
        lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        tuple(_t(8, 16, 1024, 64, dtype=H16) for _ in range(3))),
    "cross_entropy 4096 x 32000": (F.cross_entropy, (_t(4096, 32000), _t(4096, dtype=torch.int64))),
    "x.sum() 8192 x 4096": (torch.sum, (_t(8192, 4096),)),
    "column sum 65536 x 768": (lambda x: x.sum(0), (_t(65536, 768),)),
    "layer_norm fp16 8192 x 4096": (lambda x, w, b: F.layer_norm(x, (4096,), w, b),
                                    (_t(8192, 4096, dtype=H16), _t(4096, dtype=H16), _t(4096, dtype=H16))),
}


def plan(name: str, target: str) -> dict:
    fn, args = CASES[name]
    report = ember.explain(fn, *args, target=target)
    kernels = [k for k in report.kernels if k.kind != "extern"]
    big = max(kernels, key=lambda k: math.prod(k.grid or (1,)))
    moved = sum(k.bytes_moved for k in report.kernels)
    return {"name": name, "kernels": len(kernels), "torch": len(report.kernels) - len(kernels),
            "grid": big.grid, "programs": math.prod(big.grid or (1,)), "blocks": big.blocks,
            "warps": big.num_warps, "stages": big.num_stages, "bytes": moved,
            "compulsory": report.compulsory_bytes, "estimate_us": report.estimate_us}


def format_table(rows: list[dict], target: str) -> str:
    lines = [f"{'case':<36}{'kernels':>8}{'programs':>10}  {'largest launch':<50}{'bytes/comp':>11}{'est µs':>9}"]
    for r in rows:
        blocks = " ".join(f"{k}={v}" for k, v in r["blocks"].items())
        launch = f"{list(r['grid'])} {blocks} w{r['warps']} s{r['stages']}"
        lines.append(f"{r['name']:<36}{r['kernels']:>8}{r['programs']:>10}  {launch:<50}"
                     f"{r['bytes'] / r['compulsory']:>11.2f}{r['estimate_us']:>9.1f}")
    lines.append(f"\nplanned for {target} on meta tensors (nothing ran); est: roofline lower bound, launch included")
    return "\n".join(lines)


def run(target: str = "h100") -> list[dict]:
    return [plan(name, target) for name in CASES]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="h100", choices=["h100", "h200", "a100"])
    a = ap.parse_args(argv)
    print(format_table(run(a.target), a.target))


if __name__ == "__main__":
    sys.exit(main())
