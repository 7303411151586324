"""The output stage every mode shares: write-back of functionalized mutations into the caller's
tensors, and torch's strides for results the caller may view.

A captured program returns the new value of each input it updates in place as an extra output;
`write_back` copies it into the caller's tensor (recorded by autograd only where eager records the
update). The runtime lays out results contiguously (or as a consumer's permutation prefers); where
torch's op would return another layout, `restride` copies into torch's strides, so later view ops
(`.view`, `.t()`) behave exactly as in PyTorch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def write_back(targets: Sequence[torch.Tensor], values: Sequence[torch.Tensor],
               recorded: Callable[[int], bool] = lambda k: False) -> None:
    """`targets[k].copy_(values[k])` for each k, under grad mode only where `recorded(k)`."""
    for k, (t, v) in enumerate(zip(targets, values)):
        with torch.set_grad_enabled(recorded(k)):
            t.copy_(v)


def restride(outs: Sequence[torch.Tensor], strides: Sequence[tuple[int, ...]]) -> list[torch.Tensor]:
    """Each output with torch's strides for it (a copy only where the layouts differ)."""
    fixed = []
    for t, st in zip(outs, strides):
        if t.stride() != tuple(st) and t.numel() > 1:
            t = torch.empty_strided(t.shape, st, dtype=t.dtype, device=t.device).copy_(t)
        fixed.append(t)
    return fixed
