"""A generated kernel: its source, its parameters, and launching on CPU (interpreter) or GPU (JIT).

Every kernel launch the planner prepares is recorded with its concrete signature and constexprs in
`generated_kernels()`, so tests can compile each one for sm_90 without a GPU. Both process-wide caches
here (kernels by source, launch configurations) are bounded LRUs (`lru.py`); `kernel_count()` and
`spec_count()` count what was generated, including what the caches have since forgotten.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .emitter import int_sig
from .lru import LRU
from .source_cache import load_module, source_hash

# Floating-point contraction (a * b + c as one fma) is off in every GPU kernel: a GPU then rounds as
# the interpreter (numpy, which never contracts) does in the tests against eager, and ember's exact
# emulations (floor division through fmod, expm1's correction, half-type rounding) keep their
# rounding. Explicit, because Triton's default flips from on (3.9) to off (3.10). (tl.dot's
# accumulation is the tensor cores' either way.) Pipelining stages: Triton's default, stated.
GPU_OPTIONS = {"enable_fp_fusion": False, "num_stages": 3}

# Kernels by source hash: identical kernels are one object (one module import, one interpreter
# wrapper). A forgotten kernel keeps working in the plans holding it, and is made again (same name,
# same source) when next generated.
MAX_KERNELS = 2048
_kernels: LRU[str, Kernel] = LRU(MAX_KERNELS)
_made = 0  # kernels made so far (monotonic: `_kernels` forgets, this does not)
# Triton's interpreter patches `triton.language` process-wide for the duration of a launch, so two
# threads interpreting at once break each other ("Did you forget to add @triton.jit?"): one at a time.
_INTERPRETER_LOCK = threading.Lock()
# (thread id, grid) of the interpreter launch running now, for progress reports (`interpreter_position`).
_interpreting: tuple[int, tuple[int, ...]] | None = None


@dataclass(eq=False)
class Kernel:
    name: str
    source: str
    kind: str                      # pointwise | reduction | matmul
    ops: list[str]
    # (param name, signature type): "*fp32"-style pointers, "int" (typed per launch value) or "constexpr".
    params: list[tuple[str, str]]
    _interp: Any = field(default=None, repr=False)
    _jit: Any = field(default=None, repr=False)

    @property
    def jit(self):
        """The `triton.JITFunction` (module imported from the source cache on first use, then kept:
        a GPU launch should not hash the source and take the cache's lock every time)."""
        if self._jit is None:
            self._jit = getattr(load_module(self.source), self.name)
        return self._jit

    def signature(self, args: list, constexprs: dict[str, Any]) -> dict[str, str]:
        sig = {}
        runtime = [p for p in self.params if p[1] != "constexpr"]
        if len(runtime) != len(args):
            raise TypeError(f"{self.name}: {len(runtime)} runtime params, got {len(args)} args")
        for (name, kind), value in zip(runtime, args):
            sig[name] = int_sig(value) if kind == "int" else kind
        for name, kind in self.params:
            if kind == "constexpr":
                sig[name] = "constexpr"
        return sig

    def launch(self, grid: tuple[int, ...], args: list, constexprs: dict[str, Any], device: torch.device,
               num_warps: int = 4) -> None:
        # Per launch, never process-wide: CPU tensors go through Triton's interpreter.
        if device.type == "cpu":
            with _INTERPRETER_LOCK:
                if self._interp is None:
                    from triton.runtime.interpreter import InterpretedFunction

                    self._interp = InterpretedFunction(self.jit.fn)
                global _interpreting
                _interpreting = (threading.get_ident(), grid)
                try:
                    # Masked-off lanes compute on padding (0/0, log 0): numpy would warn; never stored.
                    with np.errstate(all="ignore"):
                        self._interp[grid](*args, **constexprs)
                finally:
                    _interpreting = None
        else:
            self.jit[grid](*args, **constexprs, num_warps=num_warps, **GPU_OPTIONS)


def interpreter_position(thread: int) -> tuple[int, int] | None:
    """(program instance being interpreted, 1-based; instances in the grid) of the interpreter launch
    `thread` is running, or None. Read from the interpreter's own state: no cost per instance."""
    running = _interpreting
    if running is None or running[0] != thread:
        return None
    from triton.runtime.interpreter import interpreter_builder

    grid = tuple(running[1]) + (1,) * (3 - len(running[1]))
    idx = getattr(interpreter_builder, "grid_idx", None)
    if not idx or len(idx) != 3 or any(i >= n for i, n in zip(idx, grid)):
        idx = (0, 0, 0)  # not started yet (the interpreter's index is the previous launch's)
    # the interpreter walks x, then y, then z innermost
    return (idx[0] * grid[1] + idx[1]) * grid[2] + idx[2] + 1, grid[0] * grid[1] * grid[2]


def make_kernel(prefix: str, body_source: str, kind: str, ops: list[str], params: list[tuple[str, str]]) -> Kernel:
    """Name the kernel by the hash of its text (placeholder `KERNEL`) and dedupe identical kernels."""
    global _made
    key = source_hash(body_source)
    kernel = _kernels.get(key)
    if kernel is None:
        name = f"{prefix}_{key[:10]}"
        kernel = Kernel(name, body_source.replace("def KERNEL(", f"def {name}("), kind, list(ops), params)
        _kernels[key] = kernel
        _made += 1
    return kernel


def kernel_count() -> int:
    """How many kernels were made in this process so far (a kernel the cache forgot and made again
    counts twice): the difference across a call is the kernel sources it generated."""
    return _made


def render(params: list[tuple[str, str]], body: str) -> str:
    """Full module text for a kernel named KERNEL with `params` and an indented `body`."""
    sig = ", ".join(f"{n}: tl.constexpr" if k == "constexpr" else n for n, k in params)
    return f"import triton\nimport triton.language as tl\n\n\n@triton.jit\ndef KERNEL({sig}):\n{body}\n"


@dataclass
class KernelSpec:
    """One generated (kernel, signature, constexprs) combination, compilable with triton.compile."""

    name: str
    source: str
    signature: dict[str, str]
    constexprs: dict[str, Any]
    kernel: Kernel
    seq: int = 0  # `spec_count()` when it was first recorded

    @property
    def jit(self):
        return self.kernel.jit


# The launch configurations prepared, most recently used kept (each holds its kernel alive).
MAX_SPECS = 4096
_specs: LRU[tuple, KernelSpec] = LRU(MAX_SPECS)
_recorded = 0  # configurations recorded so far (monotonic)


def record_spec(kernel: Kernel, args: list, constexprs: dict[str, Any]) -> KernelSpec:
    global _recorded
    sig = kernel.signature(args, constexprs)
    key = (kernel.name, tuple(sorted(sig.items())), tuple(sorted((k, repr(v)) for k, v in constexprs.items())))
    spec = _specs.get(key)
    if spec is None:
        spec = KernelSpec(kernel.name, kernel.source, sig, dict(constexprs), kernel, _recorded)
        _recorded += 1
        _specs[key] = spec
    return spec


def spec_count() -> int:
    """How many launch configurations were recorded in this process so far (monotonic)."""
    return _recorded


def generated_kernels(since: int = 0) -> list[KernelSpec]:
    """The kernel launch configurations prepared in this process (the `MAX_SPECS` most recently used),
    in the order first recorded; `since=spec_count()` taken earlier: only those recorded after it."""
    return sorted((s for s in _specs.values() if s.seq >= since), key=lambda s: s.seq)
