"""The kernel source cache never runs code it did not generate (issue 9): planted and edited entries,
foreign or shared folders, truncated files, atomic writes, a size bound with LRU eviction, clear_cache."""

import os
import stat

import pytest

import ember
from ember.codegen import source_cache
from ember.codegen.source_cache import CacheFolderWarning, cache_dir, load_module, source_hash


@pytest.fixture
def folder(tmp_path, monkeypatch):
    """A fresh cache folder and a fresh in-process module map (a new process, as far as the cache sees)."""
    path = tmp_path / "kernels"
    monkeypatch.setenv("EMBER_CACHE_DIR", str(path))
    monkeypatch.setattr(source_cache, "_modules", {})
    return path


def _source(value: int) -> str:
    return f"import triton\nimport triton.language as tl\n\nVALUE = {value}\n"


def _entry(folder, source: str):
    return folder / f"{source_cache.PREFIX}{source_hash(source)[:32]}.py"


def _plant(path, marker):
    """Code that, if ever imported, leaves a marker file and claims a wrong VALUE."""
    path.write_text(f"open({str(marker)!r}, 'w').write('pwned')\nVALUE = -1\n")


def test_default_folder_is_private_under_user_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("EMBER_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    path = cache_dir()
    assert path == str(tmp_path / "xdg" / "ember" / "kernels")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700


def test_planted_entry_in_own_folder_is_never_run(folder, tmp_path):
    src, marker = _source(41), tmp_path / "marker"
    folder.mkdir(mode=0o700)
    _plant(_entry(folder, src), marker)
    assert load_module(src).VALUE == 41
    assert not marker.exists()
    assert _entry(folder, src).read_text() == src  # rewritten with what ember generated


@pytest.mark.parametrize("why", ["world-writable", "group-writable", "foreign owner"])
def test_unsafe_folder_is_never_imported_from(folder, tmp_path, monkeypatch, why):
    src, marker = _source(7), tmp_path / "marker"
    folder.mkdir()
    _plant(_entry(folder, src), marker)
    if why == "world-writable":
        os.chmod(folder, 0o777)
    elif why == "group-writable":
        os.chmod(folder, 0o770)
    else:  # the folder was made by another user first: ember sees a uid that is not its own
        os.chmod(folder, 0o700)
        monkeypatch.setattr(source_cache.os, "getuid", lambda: os.stat(folder).st_uid + 1)
    with pytest.warns(CacheFolderWarning, match="nothing is imported from it"):
        mod = load_module(src)
    assert mod.VALUE == 7 and not marker.exists()
    assert not mod.__file__.startswith(str(folder))
    assert stat.S_IMODE(os.stat(os.path.dirname(mod.__file__)).st_mode) == 0o700


def test_truncated_entry_is_rewritten_not_fatal(folder):
    src = _source(3)
    assert load_module(src).VALUE == 3
    _entry(folder, src).write_text(src[:10])
    source_cache._modules.clear()  # a later process
    assert load_module(src).VALUE == 3
    assert _entry(folder, src).read_text() == src


def test_generated_kernels_still_compile_and_run_from_checked_entries(folder):
    import torch

    f = ember.trace(lambda x: torch.relu(x) * 2, torch.randn(8))
    x = torch.randn(8)
    torch.testing.assert_close(f(x), torch.relu(x) * 2)


def test_writes_are_atomic_no_temporaries_left(folder):
    for k in range(5):
        load_module(_source(100 + k))
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(source_cache.PREFIX)) == []


def test_size_bound_evicts_least_recently_used(folder):
    sources = [_source(200 + k) for k in range(6)]
    for k, s in enumerate(sources):
        load_module(s)
        os.utime(_entry(folder, s), (1000 + k, 1000 + k))  # distinct recency, oldest first
    source_cache._modules.clear()
    load_module(sources[0])  # a hit refreshes the oldest entry
    size = _entry(folder, sources[0]).stat().st_size
    removed = source_cache.evict(limit=3 * size)
    left = {p.name for p in folder.iterdir()}
    assert removed == 3
    assert _entry(folder, sources[0]).name in left and _entry(folder, sources[5]).name in left
    assert _entry(folder, sources[1]).name not in left


def test_clear_cache(folder):
    load_module(_source(300))
    assert ember.clear_cache() >= 1
    assert not any(p.name.startswith(source_cache.PREFIX) for p in folder.iterdir())
