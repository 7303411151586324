"""Generated Triton source -> importable module, cached by content hash, safely.

`triton.jit` needs real source files (it reads them with `inspect`), so every kernel is written to a
cache folder named by the hash of its text and imported from there: identical source gives the same
module object, so each distinct kernel is parsed (and on a GPU, compiled) once per process.

The folder is code that runs as the user, so it is treated like `~/.ssh`:
- it lives under the user's cache folder (`$XDG_CACHE_HOME/ember/kernels`, else
  `~/.cache/ember/kernels`; `EMBER_CACHE_DIR` overrides) and is created 0700;
- a folder that is not owned by the user, or is group/world-writable, is never used: ember warns once
  and falls back to a fresh private folder (`mkdtemp`, 0700, a name nobody could have planted);
- nothing is imported unless its bytes equal the source ember generated (so its hash is its name):
  an edited or truncated entry is rewritten, never trusted and never fatal;
- writes are atomic (unique temporary file, then rename) and the folder is bounded
  (`EMBER_CACHE_MAX_MB`, default 256): least-recently-used entries are evicted (a hit refreshes the
  entry's mtime, which is the recency order);
- `clear_cache()` empties it.

In memory, the imported modules are a bounded LRU (`MAX_MODULES`, `lru.py`): a forgotten module
leaves `sys.modules` too (kernels holding its function keep working) and is imported again from the
folder when next needed; `load_count()` counts the imports.
"""

from __future__ import annotations

import hashlib
import os
import stat
import sys
import tempfile
import threading
import warnings
from types import ModuleType

from .lru import LRU

PREFIX = "ember_kernel_"
MAX_MODULES = 2048


def _forget(key: str, mod: ModuleType) -> None:
    if sys.modules.get(mod.__name__) is mod:
        del sys.modules[mod.__name__]


_modules: LRU[str, ModuleType] = LRU(MAX_MODULES, on_evict=_forget)
_loads = 0                           # modules imported so far (monotonic: `_modules` forgets)
_lock = threading.RLock()            # module map and folder state are shared by threads
_folder: str | None = None           # the checked folder in use for this process
_folder_for: str | None = None       # the configured folder it was chosen for (it differs after a fallback)
_writes = 0                          # eviction runs every EVICT_EVERY writes


class CacheFolderWarning(UserWarning):
    """The configured kernel cache folder is unsafe; ember uses a private temporary folder instead."""


def _configured_dir() -> str:
    if os.environ.get("EMBER_CACHE_DIR"):
        return os.environ["EMBER_CACHE_DIR"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ember", "kernels")


def folder_problem(path: str) -> str | None:
    """Why `path` must not be imported from (None when it is a private folder of this user)."""
    try:
        st = os.stat(path)
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if not stat.S_ISDIR(st.st_mode):
        return "is not a folder"
    if st.st_uid != os.getuid():
        return f"is owned by uid {st.st_uid}, not by you (uid {os.getuid()})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"is writable by others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def cache_dir() -> str:
    """The folder kernels are written to and imported from (checked once per process and setting)."""
    global _folder, _folder_for
    with _lock:
        wanted = _configured_dir()
        if _folder is not None and _folder_for == wanted:
            return _folder
        try:
            os.makedirs(wanted, mode=0o700, exist_ok=True)
            problem = folder_problem(wanted)
        except OSError as e:
            problem = f"cannot be created ({e.strerror})"
        _folder_for = wanted
        if problem is None:
            _folder = wanted
        else:
            _folder = tempfile.mkdtemp(prefix="ember-kernels-")
            warnings.warn(f"ember: kernel cache folder {wanted} {problem}; nothing is imported from it. Using the "
                          f"private folder {_folder} instead (set EMBER_CACHE_DIR to a folder only you can write).",
                          CacheFolderWarning, stacklevel=2)
        return _folder


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def _write_atomic(path: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-", suffix=".py")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def load_module(source: str) -> ModuleType:
    """Import `source` as a module, through a verified file in the cache folder (see module doc)."""
    global _loads
    key = source_hash(source)
    with _lock:
        mod = _modules.get(key)
        if mod is not None:
            return mod
        name = PREFIX + key[:32]
        path = os.path.join(cache_dir(), name + ".py")
        data = source.encode()
        if _read(path) == data:
            os.utime(path)  # a hit: most recently used
        else:  # missing, edited or truncated: (re)write what we generated
            _write_atomic(path, data)
            _count_write()
        # Execute the bytes we generated, not the file: the file only serves `inspect.getsource`.
        mod = ModuleType(name)
        mod.__file__ = path
        sys.modules[name] = mod  # triton.jit resolves globals through the module
        exec(compile(data, path, "exec"), mod.__dict__)  # noqa: S102 (our own generated source)
        _modules[key] = mod
        _loads += 1
        return mod


def load_count() -> int:
    """How many kernel modules were imported in this process so far (in-memory cache misses)."""
    return _loads


EVICT_EVERY = 64


def _count_write() -> None:
    global _writes
    _writes += 1
    if _writes % EVICT_EVERY == 1:
        evict()


def max_bytes() -> int:
    return int(float(os.environ.get("EMBER_CACHE_MAX_MB", "256")) * 2**20)


def _entries(folder: str) -> list[tuple[float, int, str]]:
    """(mtime, size, path) of the cache's source files (one deleted meanwhile by another process is skipped)."""
    out = []
    for e in os.scandir(folder):
        if e.name.startswith(PREFIX) and e.name.endswith(".py"):
            try:
                st = e.stat()
            except OSError:
                continue
            out.append((st.st_mtime, st.st_size, e.path))
    return out


def evict(limit: int | None = None) -> int:
    """Delete least-recently-used entries until the folder holds at most `limit` bytes; returns how many."""
    limit = max_bytes() if limit is None else limit
    with _lock:
        entries = sorted(_entries(cache_dir()))
        total, removed = sum(size for _, size, _ in entries), 0
        for _, size, path in entries:
            if total <= limit:
                break
            try:
                os.unlink(path)
            except OSError:
                continue
            total, removed = total - size, removed + 1
        return removed


def clear_cache() -> int:
    """Delete every cached kernel source file (`ember.clear_cache()`); returns how many were deleted.
    Kernels already imported in this process keep working."""
    return evict(limit=0)
