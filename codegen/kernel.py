"""A generated kernel: its source, its parameters, and launching on CPU (interpreter) or GPU (JIT).

Every kernel launch the planner prepares is recorded with its concrete signature and constexprs in
`generated_kernels()`, so tests can compile each one for sm_90 without a GPU. Both process-wide caches
here (kernels by source, launch configurations) are bounded LRUs (`lru.py`); `kernel_count()` and
`spec_count()` count what was generated, including what the caches have since forgotten.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
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
    # (param name, signature type): "*fp32"-style pointers, "int" (typed per launch value), "fp32"/"fp64"
    # (host scalars, codegen/emitter.py) or "constexpr".
    params: list[tuple[str, str]]
    _interp: Any = field(default=None, repr=False)
    _jit: Any = field(default=None, repr=False)

    @property
    def interpreted(self):
        """The interpreter's wrapper of the kernel (made once)."""
        if self._interp is None:
            from triton.runtime.interpreter import InterpretedFunction

            self._interp = InterpretedFunction(self.jit.fn)
        return self._interp

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
               num_warps: int = 4, num_stages: int | None = None) -> None:
        """`num_stages`: the launch's own pipelining stages (a matmul's config); None: GPU_OPTIONS'.
        (One-off launches; a plan binds its launches once, `bind`.)"""
        self.bind(grid, constexprs, device, num_warps, num_stages)(args)

    def bind(self, grid: tuple[int, ...], constexprs: dict[str, Any], device: torch.device,
             num_warps: int = 4, num_stages: int | None = None) -> Launcher:
        """A launcher of this kernel with everything but the runtime args fixed (the planner's grid,
        constexprs and launch config): `launcher(args)` launches."""
        return Launcher(self, tuple(grid), dict(constexprs), device, num_warps, num_stages)


# Tests and benchmarks/host_overhead.py replace the final launch (`stub_launches`): everything before
# it (guards, plan lookup, buffers, argument binding) runs. None: launch for real.
_stub: Callable[[Launcher, list], None] | None = None


class Launcher:
    """One kernel launch bound at plan time (`Kernel.bind`): per call only the args (buffer pointers
    and the plan's ints) are new.

    CPU: Triton's interpreter (per launch, never a process-wide mode), its grid wrapper made once.
    GPU: the first call goes through the JITFunction (compiling, or finding the compiled kernel in
    Triton's cache) and keeps the `CompiledKernel` it returns; later calls launch it directly
    (`CompiledKernel.run`, what `JITFunction.run` ends in), without Triton's Python argument binding,
    specialization key or cache lookup. The plan's ints are fixed, so the only specialization that
    can change between calls is a pointer's 16-byte alignment (`_aligned`): a call whose alignment
    differs from the bound one, or on another current device, goes through the JITFunction again.
    """

    __slots__ = ("kernel", "grid", "constexprs", "device", "num_warps", "options", "_runner", "_compiled",
                 "_ptrs", "_aligned", "_order", "_gpu_device")

    def __init__(self, kernel: Kernel, grid: tuple[int, ...], constexprs: dict[str, Any], device: torch.device,
                 num_warps: int = 4, num_stages: int | None = None):
        self.kernel, self.grid, self.constexprs, self.device = kernel, grid, constexprs, device
        self.num_warps = num_warps
        self.options = GPU_OPTIONS if num_stages is None else {**GPU_OPTIONS, "num_stages": num_stages}
        self._runner = None
        self._compiled = None
        runtime = [p for p in kernel.params if p[1] != "constexpr"]
        self._ptrs = tuple(i for i, (_, kind) in enumerate(runtime) if kind.startswith("*"))
        self._aligned = None
        # The compiled kernel's launcher takes every parameter in order, constexprs included (as
        # `JITFunction.run` passes its bound args): runtime arg index, or the constexpr's name.
        k = iter(range(len(runtime)))
        self._order = tuple(name if kind == "constexpr" else next(k) for name, kind in kernel.params)
        self._gpu_device = None

    def __call__(self, args: list) -> None:
        if self.device.type == "cpu":
            if self._runner is None:
                self._runner = self.kernel.interpreted[self.grid]
            if _stub is not None:
                return _stub(self, args)
            return _interpret(self, args)
        compiled = self._compiled
        if compiled is not None:
            aligned = tuple(args[i].data_ptr() % 16 == 0 for i in self._ptrs)
            if aligned == self._aligned and _current_device() == self._gpu_device:
                full = [self.constexprs[o] if o.__class__ is str else args[o] for o in self._order]
                if _stub is not None:
                    return _stub(self, args)
                return _run_compiled(self, compiled, full)
        if _stub is not None:
            return _stub(self, args)
        # First launch (or a specialization the bound kernel does not cover): through the JIT.
        kernel = self.kernel.jit[self.grid](*args, **self.constexprs, num_warps=self.num_warps, **self.options)
        if self._compiled is None and hasattr(kernel, "run") and hasattr(kernel, "packed_metadata"):
            self._compiled = kernel
            self._aligned = tuple(args[i].data_ptr() % 16 == 0 for i in self._ptrs)
            self._gpu_device = _current_device()


def _interpret(launcher: Launcher, args: list) -> None:
    """The final call on CPU: Triton's interpreter, one launch at a time (it patches triton.language
    process-wide while it runs)."""
    global _interpreting
    with _INTERPRETER_LOCK:
        _interpreting = (threading.get_ident(), launcher.grid)
        try:
            # Masked-off lanes compute on padding (0/0, log 0): numpy would warn; never stored.
            with np.errstate(all="ignore"):
                launcher._runner(*args, **launcher.constexprs)
        finally:
            _interpreting = None


def _current_device() -> int:
    from triton.runtime import driver

    return driver.active.get_current_device()


def _current_stream(device: int) -> Any:
    from triton.runtime import driver

    return driver.active.get_current_stream(device)


def _run_compiled(launcher: Launcher, compiled: Any, full: list) -> None:
    """The final call on a GPU: the compiled kernel's launcher, as `JITFunction.run` calls it."""
    from triton import knobs

    grid = launcher.grid
    stream = _current_stream(launcher._gpu_device)
    meta = compiled.launch_metadata(grid, stream, *full)
    compiled.run(grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1, stream,
                 compiled.function, compiled.packed_metadata, meta,
                 knobs.runtime.launch_enter_hook, knobs.runtime.launch_exit_hook, *full)


@contextlib.contextmanager
def stub_launches() -> Iterator[list[Launcher]]:
    """Within it, every kernel launch stops at its final call and is recorded instead (the launcher,
    in order): the host path runs whole, the kernels do not (their outputs hold garbage).
    benchmarks/host_overhead.py measures the host path this way."""
    global _stub
    calls: list[Launcher] = []
    old, _stub = _stub, (lambda launcher, args: calls.append(launcher))
    try:
        yield calls
    finally:
        _stub = old


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
    # an op rule's GPU/interpreter choice (codegen/emitter.py `interp_params`) needs the constexpr: a
    # kernel without it would fail at its first GPU compile, far from the emitter that forgot it
    if "INTERP" in body_source and not any(n == "INTERP" for n, _ in params):
        raise AssertionError(f"{prefix} kernel reads INTERP but has no INTERP parameter")
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


# Parameter kinds spelled as annotations: constexprs, and host scalars' float types (Triton would
# type any Python float as fp32).
_ANNOTATED = {"constexpr": "constexpr", "fp32": "float32", "fp64": "float64"}


def render(params: list[tuple[str, str]], body: str) -> str:
    """Full module text for a kernel named KERNEL with `params` and an indented `body`."""
    sig = ", ".join(f"{n}: tl.{_ANNOTATED[k]}" if k in _ANNOTATED else n for n, k in params)
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
