"""GPUs ember plans for by name, and a roofline estimate of one kernel on them.

`ember.explain(fn, *args, target="h100")` plans for a GPU on any machine (meta or CPU tensors,
nothing runs): the schedule of the "cuda" target, whose launch configs are the same on every NVIDIA
GPU today, with each kernel's time estimated from this table. Figures are the vendors' dense
(no sparsity) peaks of the SXM parts: HBM bandwidth, the SM count, and flops per second by math:
"fp64" and "fp32" on the CUDA cores, "tf32" and "fp16" (bfloat16 too) on the tensor cores.

`estimate_us` is a roofline: the larger of the kernel's bytes at full bandwidth and its flops at the
peak of its math (a matmul or convolution of half operands on the tensor cores, float32 ones there
only in TF32 mode; everything else on the CUDA cores), plus a fixed launch latency. A lower bound
of what the kernel can take, not a prediction of what it will: measured times go to
benchmarks/RESULTS.md when a GPU is lent.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

LAUNCH_US = 2.0  # a kernel launch's fixed cost on the GPU (grid setup, no host time), about 2-4 us


@dataclass(frozen=True)
class GpuSpec:
    name: str
    sms: int
    bandwidth: float         # bytes per second (HBM)
    peak: dict[str, float]   # flops per second by math: fp64, fp32, tf32, fp16

    def estimate_us(self, bytes_moved: int, flops: int, math: str = "fp32") -> float:
        """The roofline time of one kernel, in microseconds (see the module doc)."""
        return LAUNCH_US + 1e6 * max(bytes_moved / self.bandwidth, flops / self.peak[math])


T = 1e12
GPUS: dict[str, GpuSpec] = {
    "h100": GpuSpec("NVIDIA H100 SXM5 80GB", 132, 3.35e12, {"fp64": 67 * T, "fp32": 67 * T, "tf32": 494 * T,
                                                            "fp16": 989 * T}),
    "h200": GpuSpec("NVIDIA H200 SXM 141GB", 132, 4.8e12, {"fp64": 67 * T, "fp32": 67 * T, "tf32": 494 * T,
                                                          "fp16": 989 * T}),
    "a100": GpuSpec("NVIDIA A100 SXM4 80GB", 108, 2.039e12, {"fp64": 19.5 * T, "fp32": 19.5 * T, "tf32": 156 * T,
                                                            "fp16": 312 * T}),
}


def gpu_spec(target: str | None) -> GpuSpec | None:
    """The spec of a GPU target name ("h100", "h200", "a100"), None for "cpu", "cuda" or None."""
    if target is None or target in ("cpu", "cuda"):
        return None
    if target not in GPUS:
        raise ValueError(f"unknown target {target!r}; known: cpu, cuda, {', '.join(GPUS)}")
    return GPUS[target]


def math_of(kind: str, dtype: torch.dtype, precision: str | None) -> str:
    """The math a kernel's flops run on: tensor cores for a matmul or convolution of half operands, or
    of float32 ones in TF32 mode (`precision`: its PREC constexpr); the CUDA cores otherwise."""
    if kind in ("matmul", "conv") and dtype in (torch.float16, torch.bfloat16):
        return "fp16"
    if kind in ("matmul", "conv") and dtype == torch.float32 and precision in ("tf32", "tf32x3"):
        return "tf32"
    return "fp64" if dtype == torch.float64 else "fp32"
