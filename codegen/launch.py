"""Launch configs: each emitter's choice of block sizes, warps and grid for a target.

Sizes are static in the IR, so a kernel group's config is decided once, in the schedule
(runtime/schedule.py), printed by `explain` and saved with the schedule. The rules differ by target
because the costs do: Triton's interpreter (CPU tensors) pays per program instance, so blocks are as
large as the group allows; a GPU wants blocks that fit its registers and shared memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..ir.kernel_group import ROW_BLOCK_LIMIT, pow2

TARGETS = ("cpu", "cuda")  # "cpu": Triton's interpreter on CPU tensors; "cuda": the JIT on a GPU


@dataclass(frozen=True)
class LaunchConfig:
    """Grid, constexpr block sizes and warps of one kernel launch."""

    grid: tuple[int, ...]
    constexprs: dict[str, Any] = field(default_factory=dict, hash=False)
    num_warps: int = 4

    def to_dict(self) -> dict:
        return {"grid": list(self.grid), "constexprs": dict(self.constexprs), "num_warps": self.num_warps}

    @staticmethod
    def from_dict(d: dict) -> LaunchConfig:
        return LaunchConfig(tuple(d["grid"]), dict(d["constexprs"]), d["num_warps"])

    def __str__(self) -> str:
        blocks = " ".join(f"{k}={v}" for k, v in self.constexprs.items())
        return f"grid={list(self.grid)} {blocks} warps={self.num_warps}"


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


def _check(target: str) -> bool:
    if target not in TARGETS:
        raise ValueError(f"unknown target {target!r}; known: {TARGETS}")
    return target == "cpu"


def pointwise(numel: int, target: str) -> LaunchConfig:
    """One program per BLOCK elements of the iteration space."""
    block = min(max(pow2(numel), 16), 4096 if _check(target) else 1024)
    return LaunchConfig((_cdiv(numel, block),), {"BLOCK": block})


def row(m: int, r: int, whole: bool, target: str) -> LaunchConfig:
    """BR elements of a row per step (the whole row when it fits ROW_BLOCK_LIMIT, else 1024-element
    chunks of a looped kernel), BM rows per program. A `whole` group reduces across rows too, so one
    program holds them all (the partition checked they fit)."""
    br = 1024 if r > ROW_BLOCK_LIMIT else pow2(r)
    bm = pow2(m) if whole else max(1, min(pow2(m), (16384 if _check(target) else 4096) // br))
    return LaunchConfig((_cdiv(m, bm),), {"BM": bm, "BR": br})


REDUCTION_BLOCK = 1024  # reductions over more elements than this loop (the emitter's `looped`)


def reduction(m: int, r: int, target: str) -> LaunchConfig:
    _check(target)
    br = min(pow2(max(r, 1)), REDUCTION_BLOCK)
    bm = max(1, min(pow2(m), 4096 // br))
    return LaunchConfig((_cdiv(m, bm),), {"BM": bm, "BR": br, "LOG2": br.bit_length() - 1})


def matmul(m: int, n: int, k: int, batch: int, target: str) -> LaunchConfig:
    """(BM, BN, BK) tiles; programs over output tiles times the batch. The interpreter pays per program
    instance: large tiles; a GPU: tiles that fit shared memory."""
    hi = (256, 256, 256) if _check(target) else (64, 64, 32)
    bm, bn, bk = (min(max(pow2(s), 16), h) for s, h in zip((m, n, k), hi))
    return LaunchConfig((_cdiv(m, bm) * _cdiv(n, bn), batch), {"BM": bm, "BN": bn, "BK": bk})
