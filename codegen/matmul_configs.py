"""Matmul launch configs for GPUs: a table per architecture and dtype class, chosen by M, N, K.

A config is (BLOCK_M, BLOCK_N, BLOCK_K, GROUP_M, num_warps, num_stages). The tables hold the shapes
Triton's matmul tutorial and torch inductor's mm templates autotune over (their public config lists:
128x256x64 with 8 warps and 3 stages is the large half-precision tile on both Ampere and Hopper,
128x128 and 64x128 the medium ones, 32x32..64x64 with 2-4 warps the small ones), ordered from the
largest tile down. Choosing without timing (`table_config`):

- every block is clamped to the problem (the next power of two of M, N, K, at least 16: tl.dot's
  smallest), so a small matmul keeps small tiles (inductor scales its configs the same way);
- the first (largest) config whose tiles, times the batch, fill the GPU at least once (a "wave":
  one program per SM) wins: large tiles read fewer bytes per flop (128x256 fp16: ~85 flop per byte
  from L2) but only pay off when there are enough of them; no config fills the GPU: the smallest
  tiles, for the most parallelism;
- warps are capped at one per 16x16 of the tile (inductor's rule: a warp's mma covers 16x16), and
  stages at what fits the architecture's shared memory: each stage holds a BLOCK_M x BLOCK_K tile of
  A and a BLOCK_K x BLOCK_N tile of B (`smem_bytes`).

GROUP_M (grouped, "L2-swizzled" ordering, codegen/matmul.py) is 8: programs that run together share
the A rows of 8 tile rows and the B columns of their tile columns in L2. Hopper (sm_90) and Ampere
(sm_80) differ in shared memory (227 KB vs 163 KB per block) and SM count; other NVIDIA GPUs take
Ampere's table under their own shared-memory limit. `candidates` lists the few configs autotuning
(runtime/autotune.py) times on a GPU: the table's choice first, then its neighbours.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from ..ir.kernel_group import pow2

GROUP_M = 8
MIN_BLOCK = 16  # tl.dot's smallest dimension


@dataclass(frozen=True)
class MatmulConfig:
    block_m: int
    block_n: int
    block_k: int
    group_m: int
    num_warps: int
    num_stages: int

    def smem_bytes(self, dtype: torch.dtype) -> int:
        """Shared memory the pipelined operand tiles take: `num_stages` copies of A's and B's tiles."""
        return self.num_stages * dtype.itemsize * (self.block_m * self.block_k + self.block_k * self.block_n)

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _c(bm: int, bn: int, bk: int, warps: int, stages: int) -> MatmulConfig:
    return MatmulConfig(bm, bn, bk, GROUP_M, warps, stages)


# Largest tile first. Half precision (fp16, bf16): tensor cores, 2-byte operands.
_HALF = {
    90: [_c(128, 256, 64, 8, 3), _c(128, 128, 64, 8, 4), _c(64, 128, 64, 4, 4), _c(64, 64, 64, 4, 4),
         _c(32, 64, 64, 4, 4), _c(32, 32, 64, 2, 4)],
    80: [_c(128, 256, 64, 8, 3), _c(128, 128, 32, 4, 4), _c(64, 128, 32, 4, 4), _c(64, 64, 32, 4, 4),
         _c(32, 64, 32, 2, 5), _c(32, 32, 32, 2, 5)],
}
# float32 (TF32 tensor cores, or FMA in "highest" precision): 4-byte operands, half the K block. The
# schedule does not know the precision (it is chosen per call), so the largest tile is one that does
# not spill in either mode: 128x256 spills under FMA on sm_90 (255 registers), and 128x128 with 4 warps.
_FP32 = {
    90: [_c(128, 128, 32, 8, 4), _c(64, 128, 32, 4, 4), _c(64, 64, 32, 4, 4), _c(32, 64, 32, 4, 4),
         _c(32, 32, 32, 2, 4)],
    80: [_c(128, 128, 32, 8, 3), _c(128, 64, 32, 4, 3), _c(64, 128, 32, 4, 3), _c(64, 64, 32, 4, 3),
         _c(32, 64, 32, 2, 4), _c(32, 32, 32, 2, 4)],
}
# float64: 8-byte operands and accumulators (registers, not shared memory, bound the tile).
_FP64 = {
    90: [_c(128, 64, 32, 8, 3), _c(64, 64, 32, 4, 3), _c(32, 64, 32, 4, 3), _c(32, 32, 32, 2, 3),
         _c(16, 32, 32, 2, 3)],
    80: [_c(128, 64, 16, 8, 3), _c(64, 64, 16, 4, 3), _c(32, 64, 16, 4, 3), _c(32, 32, 16, 2, 3),
         _c(16, 32, 16, 2, 3)],
}

# Opt-in shared memory per block (bytes, CUDA programming guide, "compute capabilities" table) and SMs.
SMEM = {90: 232448, 89: 101376, 87: 166912, 86: 101376, 80: 166912, 75: 65536}
SMS = {90: 132, 80: 108}
DEFAULT_ARCH = 90  # planning for a GPU without one: Hopper (the GPU lent to this project)


def arch_of(capability: tuple[int, int]) -> int:
    return capability[0] * 10 + capability[1]


def current_arch() -> int:
    """The compute capability of this process's GPU (e.g. 90), or DEFAULT_ARCH without one."""
    if torch.cuda.is_available():
        return arch_of(torch.cuda.get_device_capability())
    return DEFAULT_ARCH


def _table(dtype: torch.dtype, arch: int) -> list[MatmulConfig]:
    family = 90 if arch >= 90 else 80
    if dtype in (torch.float16, torch.bfloat16):
        return _HALF[family]
    return _FP64[family] if dtype == torch.float64 else _FP32[family]


def _fit(c: MatmulConfig, m: int, n: int, k: int, dtype: torch.dtype, arch: int) -> MatmulConfig:
    """`c` clamped to the problem, its warps to its tile and its stages to the shared memory."""
    bm, bn, bk = (max(min(b, pow2(s)), MIN_BLOCK) for b, s in ((c.block_m, m), (c.block_n, n), (c.block_k, k)))
    warps = max(1, min(c.num_warps, bm * bn // 256))
    c = replace(c, block_m=bm, block_n=bn, block_k=bk, num_warps=warps)
    limit = SMEM.get(arch, SMEM[80] if arch >= 80 else SMEM[75])
    while c.num_stages > 2 and c.smem_bytes(dtype) > limit:
        c = replace(c, num_stages=c.num_stages - 1)
    return c


def _fitted(m: int, n: int, k: int, dtype: torch.dtype, arch: int) -> list[MatmulConfig]:
    out: list[MatmulConfig] = []
    for c in _table(dtype, arch):
        f = _fit(c, m, n, k, dtype, arch)
        if f not in out:
            out.append(f)
    return out


def programs(c: MatmulConfig, m: int, n: int, batch: int) -> int:
    return -(-m // c.block_m) * -(-n // c.block_n) * batch


def table_config(m: int, n: int, k: int, batch: int, dtype: torch.dtype, arch: int = DEFAULT_ARCH) -> MatmulConfig:
    """The table's config for one [batch] x (M x K @ K x N) matmul on `arch` (see the module doc)."""
    configs = _fitted(m, n, k, dtype, arch)
    sms = SMS.get(90 if arch >= 90 else 80)
    return next((c for c in configs if programs(c, m, n, batch) >= sms), configs[-1])


def candidates(m: int, n: int, k: int, batch: int, dtype: torch.dtype, arch: int = DEFAULT_ARCH,
               limit: int = 4) -> list[MatmulConfig]:
    """Configs worth timing (at most `limit`): the table's choice, then the next smaller and larger
    tiles, then the same tile with the other warp count."""
    configs = _fitted(m, n, k, dtype, arch)
    first = table_config(m, n, k, batch, dtype, arch)
    i = configs.index(first)
    out = [first] + [configs[j] for j in (i + 1, i - 1, i + 2) if 0 <= j < len(configs)]
    other = replace(first, num_warps=8 if first.num_warps <= 4 else 4)
    if first.block_m * first.block_n >= 64 * 64 and other not in out:
        out.insert(min(len(out), 2), other)
    return list(dict.fromkeys(out))[:limit]
