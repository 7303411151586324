"""Generated Triton source -> importable module, cached by content hash.

`triton.jit` needs real source files (it reads them with `inspect`), so every kernel is written to a
cache directory named by the hash of its text and imported from there: identical source gives the
same module object, so each distinct kernel is parsed (and on a GPU, compiled) once per process.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from types import ModuleType

_modules: dict[str, ModuleType] = {}


def cache_dir() -> str:
    path = os.environ.get("EMBER_CACHE_DIR") or os.path.join(tempfile.gettempdir(), f"ember-kernels-{os.getuid()}")
    os.makedirs(path, exist_ok=True)
    return path


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()


def load_module(source: str) -> ModuleType:
    """Import `source` as a module (written once to the cache dir; reused while the process lives)."""
    key = source_hash(source)
    mod = _modules.get(key)
    if mod is not None:
        return mod
    name = f"ember_kernel_{key[:20]}"
    path = os.path.join(cache_dir(), name + ".py")
    if not os.path.exists(path):
        # Write then rename so a concurrent process never imports a half-written file.
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(source)
        os.replace(tmp, path)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # triton.jit resolves globals through the module
    spec.loader.exec_module(mod)
    _modules[key] = mod
    return mod
