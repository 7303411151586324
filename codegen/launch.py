"""Launch configs: grid, block sizes and warps of one kernel launch, and the targets.

Each emitter chooses its kernels' config (`launch_config` in pointwise.py, row.py, reduction.py,
matmul.py). Sizes are static in the IR, so a kernel group's config is decided once, in the schedule
(runtime/schedule.py), printed by `explain` and saved with the schedule. The rules differ by target
because the costs do: Triton's interpreter (CPU tensors) pays per program instance, so blocks are as
large as the group allows; a GPU wants blocks that fit its registers and shared memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TARGETS = ("cpu", "cuda")  # "cpu": Triton's interpreter on CPU tensors; "cuda": the JIT on a GPU


@dataclass(frozen=True)
class LaunchConfig:
    """Grid, constexpr block sizes, warps and pipelining stages of one kernel launch."""

    grid: tuple[int, ...]
    constexprs: dict[str, Any] = field(default_factory=dict, hash=False)
    num_warps: int = 4
    # software-pipelining stages on a GPU (a matmul's, from its config table); None: GPU_OPTIONS' default
    num_stages: int | None = None

    def to_dict(self) -> dict:
        return {"grid": list(self.grid), "constexprs": dict(self.constexprs), "num_warps": self.num_warps,
                "num_stages": self.num_stages}

    @staticmethod
    def from_dict(d: dict) -> LaunchConfig:
        return LaunchConfig(tuple(d["grid"]), dict(d["constexprs"]), d["num_warps"], d.get("num_stages"))

    def __str__(self) -> str:
        blocks = " ".join(f"{k}={v}" for k, v in self.constexprs.items())
        stages = f" stages={self.num_stages}" if self.num_stages is not None else ""
        return f"grid={list(self.grid)} {blocks} warps={self.num_warps}{stages}"


def cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def interpreted(target: str) -> bool:
    """Whether `target` runs kernels through Triton's interpreter (which pays per program instance)."""
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {TARGETS}")
    return target == "cpu"
