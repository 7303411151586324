"""The process-wide caches of codegen are bounded LRUs (codegen/lru.py): past the limit the least
recently used entry is dropped, results stay right, and the monotonic counters that eager mode's
statistics and the sm_90 test read keep counting what the caches forget. (Eager mode's op caches:
tests/test_eager.py; the Dynamo backend's record: tests/test_dynamo.py.)"""

import sys

import torch

import ember
from ember.codegen import kernel as kernel_mod
from ember.codegen import source_cache
from ember.codegen.lru import LRU


def test_lru_drops_the_least_recently_used():
    dropped = []
    cache = LRU(2, on_evict=lambda k, v: dropped.append((k, v)))
    cache["a"], cache["b"] = 1, 2
    assert cache.get("a") == 1        # a use: "b" is now the least recent
    cache["c"] = 3
    assert dropped == [("b", 2)] and "b" not in cache and cache["a"] == 1 and len(cache) == 2
    assert cache.get("b", "missing") == "missing"
    cache.limit = 1                   # a smaller limit takes effect at the next store
    cache["d"] = 4
    # `cache["a"]` above was a use too: "c" is older
    assert len(cache) == 1 and cache.values() == [4] and [k for k, _ in dropped] == ["b", "c", "a"]


def _programs():
    """Small programs with distinct kernels (one op each, so one kernel each), and their torch values."""
    x = torch.randn(4, 5)
    return [(op, x, op(x)) for op in (torch.sin, torch.cos, torch.exp, torch.tanh, torch.sigmoid)]


def test_codegen_caches_stay_at_their_limits(monkeypatch):
    # fresh, small caches: every kernel is new to them, so each op makes a kernel, a launch
    # configuration and a module import, and the caches overflow
    dropped_modules = []

    def forget(key, mod):
        dropped_modules.append(mod)
        source_cache._forget(key, mod)

    monkeypatch.setattr(kernel_mod, "_kernels", LRU(2))
    monkeypatch.setattr(kernel_mod, "_specs", LRU(3))
    monkeypatch.setattr(source_cache, "_modules", LRU(2, on_evict=forget))
    ember.clear_eager_cache()
    ember.reset_eager_stats()
    made, recorded, loads = kernel_mod.kernel_count(), kernel_mod.spec_count(), source_cache.load_count()
    programs = _programs()
    for k in range(len(programs)):
        _run_all(programs[k:k + 1])
        assert len(kernel_mod._kernels) <= 2 and len(kernel_mod._specs) <= 3 and len(source_cache._modules) <= 2
    n = len(programs)
    stats = ember.eager_stats()
    assert len(kernel_mod._kernels) == 2 and len(source_cache._modules) == 2
    # the counters count past the bounds, and eager mode's statistics read them
    assert kernel_mod.kernel_count() - made == stats.kernels_built == len(stats.kernel_names) == n
    assert kernel_mod.spec_count() - recorded == stats.kernel_configs_built >= n
    assert source_cache.load_count() - loads == n
    # the record keeps the newest configurations, in the order recorded; `since` selects by count
    specs = kernel_mod.generated_kernels()
    assert len(specs) == 3 and [s.seq for s in specs] == sorted(s.seq for s in specs)
    assert specs[-1].seq == kernel_mod.spec_count() - 1
    assert kernel_mod.generated_kernels(since=specs[-1].seq) == specs[-1:]
    # a dropped module leaves sys.modules too (the map is the bound on imported kernel modules)
    assert len(dropped_modules) == n - 2
    assert all(sys.modules.get(m.__name__) is not m for m in dropped_modules)
    # graphs built before still run their (dropped) kernels; rebuilt ones make them again
    _run_all(programs)
    assert kernel_mod.kernel_count() - made == n
    ember.clear_eager_cache()
    _run_all(programs)
    assert kernel_mod.kernel_count() - made == 2 * n
    ember.clear_eager_cache()


def _run_all(programs) -> None:
    for op, x, want in programs:
        with ember.eager(strict=True):
            got = op(x)
        torch.testing.assert_close(got, want)  # outside the mode: its ops would make kernels too
