"""Matmul autotuning on a GPU: time a few configs of the table, keep the fastest, cache it on disk.

Off by default: a matmul launches the config its table gives (codegen/matmul_configs.py). On when
`EMBER_AUTOTUNE=1` or `set_autotune(True)`, and only where the kernels run on a GPU of this process
(`wanted`): planning for a GPU on a machine without one never times anything, nor does `explain`
(`no_timing`: a cached choice, else the table's). Then
the planner (runtime/plan.py `group_matmul`) calls `tune_matmul` once per matmul launch it plans:
each of `candidates(...)` is launched on scratch buffers of the launch's layout and timed with
`triton.testing.do_bench`; the fastest becomes the launch's config.

Choices are cached as JSON, one file per (M, N, K, batch, dtype, GPU name, kernel source hash), in
the `autotune` folder inside the kernel cache folder (codegen/source_cache.py: private to the user,
checked before use). A file is data, never code: it is read with `json`, and used only when it names
this exact key and one of the configs the table offers now; anything else (malformed, planted, from
an older table) is ignored and overwritten by a fresh timing. Writes are atomic (temporary file,
then rename). `choose` holds the logic and takes the timing function as a parameter, so it is
tested on CPU with a fake timer.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from ..codegen import matmul as matmul_codegen
from ..codegen.kernel import Kernel
from ..codegen.launch import LaunchConfig
from ..codegen.matmul_configs import MatmulConfig, candidates, current_arch
from ..codegen.source_cache import cache_dir, folder_problem, source_hash

ENV = "EMBER_AUTOTUNE"
MAX_FILE_BYTES = 1 << 16  # a cache entry is a few hundred bytes: anything larger is not ours
_enabled: bool | None = None  # set_autotune's choice; None: the environment decides
# Inside `no_timing()` (explain: nothing may run) a cached choice is used, else the table's; nothing is timed.
_no_timing: contextvars.ContextVar[bool] = contextvars.ContextVar("ember_autotune_no_timing", default=False)


@contextlib.contextmanager
def no_timing() -> Iterator[None]:
    """Plan without launching anything: tuned choices come from the cache only."""
    token = _no_timing.set(True)
    try:
        yield
    finally:
        _no_timing.reset(token)


def set_autotune(on: bool | None) -> None:
    """Tune matmuls on a GPU (True), use the table (False), or follow `EMBER_AUTOTUNE` (None)."""
    global _enabled
    _enabled = on


def autotune_enabled() -> bool:
    return _enabled if _enabled is not None else os.environ.get(ENV, "") == "1"


def wanted(device: torch.device) -> bool:
    """Whether matmuls planned for `device` are tuned: enabled, and the device is a GPU this process has."""
    return autotune_enabled() and device.type == "cuda" and torch.cuda.is_available()


@dataclass(frozen=True)
class TuneKey:
    """What a tuned choice depends on: the problem, the GPU and the kernel's source."""

    m: int
    n: int
    k: int
    batch: int
    dtype: str
    device: str   # the GPU's name (torch.cuda.get_device_name)
    source: str   # sha256 of the kernel source (an epilogue or another emitter version: another kernel)

    def file_name(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return f"mm-{hashlib.sha256(text.encode()).hexdigest()[:40]}.json"


def tune_folder() -> str | None:
    """The folder choices are cached in (created 0700), or None when it is unsafe or cannot be made:
    then nothing is cached on disk."""
    path = os.path.join(cache_dir(), "autotune")
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError:
        return None
    return path if folder_problem(path) is None else None


def _valid_config(data: Any) -> MatmulConfig | None:
    names = {f.name for f in fields(MatmulConfig)}
    if not isinstance(data, dict) or set(data) != names:
        return None
    if not all(type(v) is int and 0 < v <= 1024 for v in data.values()):
        return None
    return MatmulConfig(**data)


def read_cached(key: TuneKey, offered: list[MatmulConfig], folder: str | None) -> MatmulConfig | None:
    """The cached choice for `key`, if its file is well formed, names `key` and one of `offered`."""
    if folder is None:
        return None
    try:
        with open(os.path.join(folder, key.file_name()), "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            return None
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != asdict(key):
        return None
    config = _valid_config(data.get("config"))
    return config if config in offered else None


def write_cached(key: TuneKey, config: MatmulConfig, times: dict[MatmulConfig, float], folder: str | None) -> None:
    """Record `config` for `key` atomically (a unique temporary file renamed over the entry)."""
    if folder is None:
        return
    data = {"key": asdict(key), "config": config.to_dict(),
            "times_ms": [[c.to_dict(), t] for c, t in times.items() if math.isfinite(t)]}
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f)
            os.replace(tmp, os.path.join(folder, key.file_name()))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
    except OSError:
        pass  # a read-only or full disk: the choice is still used, only not remembered


def choose(key: TuneKey, offered: list[MatmulConfig], measure: Callable[[MatmulConfig], float],
           folder: str | None) -> MatmulConfig:
    """The fastest of `offered` by `measure(config) -> time` (any unit; a config that fails to launch
    or returns a non-finite time is skipped), from the cache when it holds `key`. Nothing measured:
    the first (the table's choice), not cached."""
    cached = read_cached(key, offered, folder)
    if cached is not None:
        return cached
    if _no_timing.get():
        return offered[0]
    times: dict[MatmulConfig, float] = {}
    for c in offered:
        try:
            t = float(measure(c))
        except Exception:  # e.g. OutOfResources: more shared memory than this GPU has
            t = math.inf
        times[c] = t if math.isfinite(t) and t >= 0 else math.inf
    best = min(offered, key=lambda c: times[c])
    if math.isfinite(times[best]):
        write_cached(key, best, times, folder)
    return best


def scratch_size(offset: int, shape: tuple[int, ...], strides: tuple[int, ...]) -> int:
    """Elements a buffer needs to hold a view (offset, shape, strides)."""
    if any(s == 0 for s in shape):
        return offset
    return offset + sum((s - 1) * st for s, st in zip(shape, strides) if st > 0) + 1


def scratch(sizes: dict[int, tuple[int, torch.dtype]], device: torch.device) -> dict[int, torch.Tensor]:
    """A buffer per index (elements, dtype): random floats, zeros otherwise (values do not change a
    matmul's time, but NaN-free inputs keep the epilogue ordinary)."""
    out = {}
    for i, (numel, dtype) in sizes.items():
        t = torch.empty(max(numel, 1), dtype=dtype, device=device)
        out[i] = t.normal_() if dtype.is_floating_point else t.zero_()
    return out


def _do_bench(fn: Callable[[], None]) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=10, rep=40)


def tune_matmul(kernel: Kernel, args: list, m: int, n: int, k: int, batch: int, dtype: torch.dtype,
                device: torch.device, constexprs: dict[str, Any],
                timer: Callable[[Callable[[], None]], float] | None = None,
                folder: str | None = None, arch: int | None = None) -> LaunchConfig:
    """The launch config of the fastest candidate for this matmul launch. `args`: the launch's
    arguments with scratch tensors for its buffers; `constexprs`: the launch's own (PREC, INTERP);
    `timer(fn) -> ms` times a callable (default: triton.testing.do_bench)."""
    timer = _do_bench if timer is None else timer
    arch = current_arch() if arch is None else arch
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    key = TuneKey(m, n, k, batch, str(dtype).replace("torch.", ""), name, source_hash(kernel.source))

    def measure(c: MatmulConfig) -> float:
        lc = matmul_codegen.from_config(c, m, n, k, batch)
        cx = {**lc.constexprs, **constexprs}
        return timer(lambda: kernel.launch(lc.grid, args, cx, device, lc.num_warps, lc.num_stages))

    best = choose(key, candidates(m, n, k, batch, dtype, arch), measure, tune_folder() if folder is None else folder)
    return matmul_codegen.from_config(best, m, n, k, batch)
