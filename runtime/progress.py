"""Progress of long work (compiling a large graph, interpreting a large grid): silent while short.

`with Progress(what, total, title=...) as p:` opens a level; levels nest per thread (a kernel of a
graph, then the program instance of that kernel). Once the outermost level has lasted `after`
seconds, the state is shown on stderr: a `\\r`-redrawn bar when stderr is a TTY, else an INFO line on
the `ember.progress` logger every `every` seconds (written to stderr directly when logging is not
configured at all), e.g. `ember: running f: kernel 3/7 (pointwise_ab12), program instance
1200/4096, 12.3 s`.

Reports come from `update()` calls (one clock read each) and from a daemon thread that looks at the
active work every `TICK` seconds, so one long step (a pass, a big capture, one interpreter launch
with a million program instances) still shows signs of life without per-instance hooks.

Environment, read at import and by `refresh()`: `EMBER_PROGRESS=0` disables it,
`EMBER_PROGRESS_AFTER` (seconds, default 2) and `EMBER_PROGRESS_EVERY` (seconds between log lines,
default 10).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

logger = logging.getLogger("ember.progress")
clock: Callable[[], float] = time.monotonic  # module attribute so tests can fake the clock
TICK = 0.2          # the monitor thread's period, and the bar's redraw interval
BAR = 20            # bar width in characters


class Config(NamedTuple):
    enabled: bool
    after: float
    every: float


def _seconds(name: str, default: float) -> float:
    try:
        return max(0.0, float(os.environ.get(name, default)))
    except ValueError:
        return default


def refresh() -> Config:
    """Re-read the EMBER_PROGRESS* environment variables (they are cached: reading them costs µs)."""
    global _config
    enabled = os.environ.get("EMBER_PROGRESS", "1").strip().lower() not in ("0", "false", "off", "no")
    _config = Config(enabled, _seconds("EMBER_PROGRESS_AFTER", 2.0), _seconds("EMBER_PROGRESS_EVERY", 10.0))
    return _config


_config = refresh()


class _Local(threading.local):
    root: Progress | None = None  # the outermost level of this thread's work


_local = _Local()
_active: dict[int, Progress] = {}  # thread id -> its outermost level, for the monitor thread
_emit_lock = threading.Lock()
_wake = threading.Event()
_monitor: threading.Thread | None = None


class Progress:
    """One level of work: `update(done, item)` says it is at item `done` (1-based) of `total`.

    `inner(thread_id)` -> (program instance i, of n) or None is asked only when a report is drawn: the
    interpreter's current program instance of the working thread, free to read, costly to push.
    The outermost level of a thread (the root) also holds the start, next report time and output
    mode; entering and leaving one costs about a microsecond, `update` a clock read."""

    __slots__ = ("what", "total", "done", "item", "title", "inner", "_root",
                 "levels", "start", "deadline", "shown", "thread")

    def __init__(self, what: str = "", total: int = 0, title: str = "",
                 inner: Callable[[int], tuple[int, int] | None] | None = None):
        self.what, self.total, self.done, self.item = what, total, 0, ""
        self.title, self.inner, self._root = title, inner, None

    def __enter__(self) -> Progress:
        root = _local.root
        if root is not None:
            root.levels.append(self)
            self._root = root
        elif _config.enabled:
            self.levels, self.shown, self._root = [self], "", self
            self.start = clock()
            self.deadline = self.start + _config.after
            self.thread = threading.get_ident()
            _local.root = _active[self.thread] = self
            if not _wake.is_set():  # the monitor sleeps while nothing is active
                _start_monitor()
                _wake.set()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        root = self._root
        if root is None:
            return
        self._root = None
        if root is not self:
            root.levels.pop()
            return
        _local.root = None
        _active.pop(self.thread, None)
        with _emit_lock:  # after this, the monitor thread draws nothing more for this work
            self.levels = []
        if self.shown:
            self._finish(exc_type is not None)

    def update(self, done: int = 0, item: str = "") -> None:
        self.done, self.item = done, item
        root = self._root
        if root is not None and clock() >= root.deadline:
            root.report()

    def _render(self, thread: int) -> str:
        parts = [self.what] if self.what else []
        if self.total:
            parts.append(f"{self.done}/{self.total}")
        if self.item:
            parts.append(f"({self.item})" if parts else self.item)
        inner = self.inner(thread) if self.inner is not None else None
        text = " ".join(parts)
        if inner is not None:
            text += f"{', ' if text else ''}program instance {inner[0]}/{inner[1]}"
        return text

    # -- the root's reports (from the working thread or the monitor thread) ----------------------------
    def message(self, now: float) -> tuple[str, float | None]:
        """The report line and, when some level has a total, the fraction done."""
        levels = list(self.levels)  # (the monitor thread reads another thread's levels)
        texts = [t for t in (lv._render(self.thread) for lv in levels) if t]
        title = self.title or self.what
        head = f"{title}: " if title != self.what else ""
        # the bar: each level with a total splits its parent's current item into `total` parts
        frac, scale, known = 0.0, 1.0, False
        for lv in levels:
            pos = lv.inner(self.thread) if lv.inner is not None else None
            for done, total in ((lv.done, lv.total), pos or (0, 0)):
                if total:
                    frac, scale, known = frac + scale * max(done - 1, 0) / total, scale / total, True
        return f"{head}{', '.join(texts)}, {now - self.start:.1f} s", frac if known else None

    def report(self, now: float | None = None) -> None:
        with _emit_lock:
            now = clock() if now is None else now
            if now < self.deadline or not self.levels:  # not due, or finished meanwhile
                return
            text, frac = self.message(now)
            stream = sys.stderr
            if _isatty(stream):
                bar = ""
                if frac is not None:
                    n = int(frac * BAR)
                    bar = f"[{'#' * n}{'-' * (BAR - n)}] {int(frac * 100):3d}% "
                width = shutil.get_terminal_size((120, 20)).columns - 1
                stream.write(f"\r{('ember: ' + bar + text)[:width]}\x1b[K")
                stream.flush()
                self.shown, self.deadline = "bar", now + TICK
            else:
                _log(f"ember: {text}")
                self.shown, self.deadline = "log", now + _config.every

    def _finish(self, failed: bool) -> None:
        text = f"ember: {self.title or self.what} {'stopped' if failed else 'done'} after {clock() - self.start:.1f} s"
        with _emit_lock:
            if self.shown == "bar":
                sys.stderr.write(f"\r{text}\x1b[K\n")
                sys.stderr.flush()
            else:
                _log(text)


def note(item: str) -> None:
    """Say what this thread's innermost level of work is doing now (a phase: "capture", "lower")."""
    root = _local.root
    if root is not None and root.levels:
        level = root.levels[-1]
        level.update(level.done, item)


def report_due() -> None:
    """Report the calling thread's work now if it is due (the monitor thread does this on its own)."""
    root = _local.root
    if root is not None and clock() >= root.deadline:
        root.report()


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def _log(text: str) -> None:
    if logger.hasHandlers():  # logging is configured: respect its levels
        logger.info(text)
    else:  # nobody configured logging (Python would drop INFO): still show a sign of life
        sys.stderr.write(text + "\n")
        sys.stderr.flush()


def _run_monitor() -> None:
    idle = 0
    while True:
        # Sleep on the event only after a second without work: waking this thread at each of many
        # short calls would cost each call a thread switch (~5 µs).
        if idle * TICK >= 1.0:
            _wake.clear()
            if not _active:  # (checked after clear(): work registered meanwhile sets it again)
                _wake.wait()
            idle = 0
        time.sleep(TICK)
        now = clock()
        for root in _active.copy().values():
            if now >= root.deadline:
                try:
                    root.report(now)
                except Exception:  # a progress line must never break anything
                    pass
        idle = 0 if _active else idle + 1


def _start_monitor() -> None:
    global _monitor
    if _monitor is None:
        _monitor = threading.Thread(target=_run_monitor, name="ember-progress", daemon=True)
        _monitor.start()


def _after_fork() -> None:  # a forked child has no monitor thread (and none of the parent's work)
    global _monitor, _wake, _emit_lock
    _monitor, _wake, _emit_lock = None, threading.Event(), threading.Lock()
    _active.clear()


os.register_at_fork(after_in_child=_after_fork)
