"""Counting the bytes generated kernels load and store, independently of the cost model.

While `count_bytes()` is active, every `tl.load` / `tl.store` that Triton's interpreter executes is
recorded at the builder (`interpreter_builder.create_masked_load` / `create_masked_store`, which
every load and store reaches, masked or not): the addresses of its unmasked elements and their
element size. Each kernel launch (`codegen.kernel._interpret`, the final call of every interpreted
launch, bound or not) starts a new record, so counts are per launch.

Two counts per launch:
- `accessed_*`: every unmasked element of every call, in bytes: what the programs ask for, tile
  re-reads included (matmul reads each A tile once per N block, a broadcast weight once per row
  block);
- `read` / `written`: distinct addresses per load (store) instruction of the kernel source, in bytes:
  a loop over K or over a row's chunks is one instruction, so it counts each element once; a looped
  row kernel's second pass over its row is another instruction, so it counts again. This is the
  cost model's convention (passes/cost.py): compulsory reads per pass, re-reads of a tile by other
  programs of the same launch served by cache.
"""

from __future__ import annotations

import contextlib
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from ember.codegen import kernel as kernel_module
from ember.codegen.source_cache import PREFIX


@dataclass
class LaunchBytes:
    """The loads and stores of one kernel launch, by instruction (kernel file, line)."""

    kernel: str
    loads: dict[tuple, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    stores: dict[tuple, list[np.ndarray]] = field(default_factory=lambda: defaultdict(list))
    itemsize: dict[tuple, int] = field(default_factory=dict)
    accessed_read: int = 0
    accessed_written: int = 0

    def _distinct(self, sites: dict[tuple, list[np.ndarray]]) -> int:
        return sum(len(np.unique(np.concatenate(a))) * self.itemsize[s] for s, a in sites.items())

    @property
    def read(self) -> int:
        return self._distinct(self.loads)

    @property
    def written(self) -> int:
        return self._distinct(self.stores)


def _site() -> tuple:
    """(kernel file, line) of the load or store being executed: the innermost generated-kernel frame."""
    f = sys._getframe(2)
    while f is not None:
        if PREFIX in f.f_code.co_filename:
            return (f.f_code.co_filename, f.f_lineno)
        f = f.f_back
    raise RuntimeError("a load or store outside a generated kernel")


@contextlib.contextmanager
def count_bytes() -> Iterator[list[LaunchBytes]]:
    """Record each interpreted kernel launch's loads and stores in the yielded list (CPU only)."""
    from triton.runtime.interpreter import interpreter_builder as builder

    launches: list[LaunchBytes] = []
    load, store, launch = builder.create_masked_load, builder.create_masked_store, kernel_module._interpret

    def record(kind: str, ptrs, mask) -> None:
        rec = launches[-1]
        itemsize = ptrs.get_element_ty().primitive_bitwidth // 8
        addrs = np.broadcast_to(ptrs.data, np.broadcast_shapes(ptrs.data.shape, mask.data.shape))
        addrs = addrs[np.broadcast_to(mask.data, addrs.shape)].ravel()
        site = (kind,) + _site()
        rec.itemsize[site] = itemsize
        (rec.loads if kind == "load" else rec.stores)[site].append(addrs)
        if kind == "load":
            rec.accessed_read += addrs.size * itemsize
        else:
            rec.accessed_written += addrs.size * itemsize

    def counted_load(ptrs, mask, other, cache_policy, is_volatile):
        record("load", ptrs, mask)
        return load(ptrs, mask, other, cache_policy, is_volatile)

    def counted_store(ptrs, value, mask, cache_policy):
        record("store", ptrs, mask)
        return store(ptrs, value, mask, cache_policy)

    def counted_launch(launcher, args):
        launches.append(LaunchBytes(launcher.kernel.name))
        return launch(launcher, args)

    saved = {k: builder.__dict__[k] for k in ("create_masked_load", "create_masked_store") if k in builder.__dict__}
    builder.create_masked_load, builder.create_masked_store = counted_load, counted_store
    kernel_module._interpret = counted_launch
    try:
        yield launches
    finally:
        del builder.create_masked_load, builder.create_masked_store  # back to the class's methods,
        builder.__dict__.update(saved)                               # or to what was there before
        kernel_module._interpret = launch
