"""A bounded least-recently-used map, for ember's process-wide caches.

A long-lived process keeps meeting new programs (eager mode op by op, new shapes of a dynamic model,
a notebook recompiling): a plain dict cache would keep every kernel, module and op graph ever made.
Each process-wide cache is an `LRU` with a documented `limit`; what it forgets is rebuilt (the same
kernel source, the same graph) the next time it is needed, and objects already handed out keep
working.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
_MISSING = object()


class LRU(Generic[K, V]):
    """A dict of at most `limit` entries: storing one more drops the least recently used (a `get` or
    a store counts as a use). `on_evict(key, value)` runs for each dropped entry. Thread-safe: the
    runtime and eager mode are used from several threads. `limit` may be changed at any time (tests
    set a small one); the map shrinks to it at the next store."""

    def __init__(self, limit: int, on_evict: Callable[[K, V], None] | None = None):
        self.limit = limit
        self._on_evict = on_evict
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K, default: V | None = None) -> V | None:
        with self._lock:
            value = self._data.get(key, _MISSING)
            if value is _MISSING:
                return default
            self._data.move_to_end(key)
            return value  # type: ignore[return-value]

    def __getitem__(self, key: K) -> V:
        value = self.get(key, _MISSING)  # type: ignore[arg-type]
        if value is _MISSING:
            raise KeyError(key)
        return value  # type: ignore[return-value]

    def __setitem__(self, key: K, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            dropped = [self._data.popitem(last=False) for _ in range(len(self._data) - max(self.limit, 0))]
        self._evicted(dropped)

    def __contains__(self, key: object) -> bool:  # a look, not a use
        return key in self._data

    def __len__(self) -> int:
        return len(self._data)

    def values(self) -> list[V]:
        """The values, least recently used first (a snapshot)."""
        with self._lock:
            return list(self._data.values())

    def clear(self) -> None:
        with self._lock:
            dropped = list(self._data.items())
            self._data.clear()
        self._evicted(dropped)

    def _evicted(self, dropped: list[tuple[K, V]]) -> None:
        if self._on_evict is not None:
            for key, value in dropped:
                self._on_evict(key, value)
