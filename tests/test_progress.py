"""Progress reports of long work (issue 9): silent under the threshold, then a log line (or a `\\r`
bar on a TTY) naming the compile phase, the kernel of the graph and the interpreted program instance."""

from __future__ import annotations

import io
import itertools
import logging
import sys
import time

import pytest
import torch

import ember
from ember.codegen import kernel as K
from ember.runtime import progress as P


def _softmax_mm(x, w):
    return torch.softmax(x @ w, dim=-1) * 2.0


def _relu_mm(x, w):
    return torch.relu(x @ w)


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def config(monkeypatch):
    """Set progress options for one test (the module caches them); the old ones come back after."""
    def set_(enabled: bool = True, after: float = 0.0, every: float = 0.0) -> None:
        monkeypatch.setattr(P, "_config", P.Config(enabled, after, every))
    return set_


@pytest.fixture
def log(caplog):
    caplog.set_level(logging.INFO, logger="ember.progress")
    return caplog


def _run_once(fn=_softmax_mm):
    x, w = torch.randn(6, 8), torch.randn(8, 5)
    torch.testing.assert_close(ember.compile(fn)(x, w), fn(x, w))


def _lines(log) -> list[str]:
    return [r.getMessage() for r in log.records if r.name == "ember.progress"]


def test_compile_and_call_log_phase_and_kernel(config, log):
    config(after=0.0)
    _run_once()
    lines = _lines(log)
    for want in ("ember: compiling _softmax_mm: capture", "ember: compiling _softmax_mm: lower",
                 "ember: compiling _softmax_mm: passes (simplify)", "ember: compiling _softmax_mm done after",
                 "ember: planning _softmax_mm: codegen: kernel group 1/", "ember: running _softmax_mm: kernel 1/"):
        assert any(line.startswith(want) for line in lines), (want, lines)
    running = [line for line in lines if line.startswith("ember: running _softmax_mm: kernel")]
    assert any("(mm_" in line or "(row_" in line for line in running), running  # names the kernel


def test_tty_gets_a_redrawn_bar(config, monkeypatch):
    config(after=0.0)
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    _run_once()
    out = tty.getvalue()
    assert "\rember: [" in out and "%" in out and "running _softmax_mm: kernel 1/" in out
    assert out.endswith("\x1b[K\n") and "\rember: running _softmax_mm done after" in out
    assert "\n" not in out.replace("\x1b[K\n", "")  # redrawn in place: a newline only after each "done"


def test_disabled_prints_nothing(config, log, monkeypatch):
    config(enabled=False, after=0.0)
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    _run_once()
    assert _lines(log) == [] and tty.getvalue() == ""


def test_env_variables(monkeypatch):
    monkeypatch.setattr(P, "_config", P._config)  # restored after the test
    monkeypatch.setenv("EMBER_PROGRESS", "0")
    monkeypatch.setenv("EMBER_PROGRESS_AFTER", "0.5")
    monkeypatch.setenv("EMBER_PROGRESS_EVERY", "nonsense")
    assert P.refresh() == P.Config(False, 0.5, 10.0)
    monkeypatch.setenv("EMBER_PROGRESS", "1")
    assert P.refresh().enabled


def test_threshold_on_a_fake_clock(config, log, monkeypatch):
    """Work shorter than the threshold says nothing; the same work, slower, is reported."""
    config(after=2.0, every=5.0)
    ticks = itertools.count()
    monkeypatch.setattr(P, "clock", lambda: next(ticks) * 1e-3)  # 1 ms per clock read: a small call
    _run_once()
    assert _lines(log) == []
    monkeypatch.setattr(P, "clock", lambda: next(ticks) * 2.5)  # 2.5 s per read: the same kind of work, long
    _run_once(_relu_mm)
    lines = _lines(log)
    for want in ("compiling _relu_mm: capture", "compiling _relu_mm done after", "planning _relu_mm: codegen",
                 "running _relu_mm: kernel 1/1 (mm_"):
        assert any(line.startswith("ember: " + want) for line in lines), (want, lines)
    # a line every 5 s at most, however many updates: 6 passes take 15 s, so they give 3 or 4 lines
    assert sum("compiling _relu_mm: passes" in line for line in lines) <= 4, lines


def test_interpreted_program_instance(config, log, monkeypatch):
    """A report drawn during an interpreter launch names the program instance it is in."""
    from triton.runtime.interpreter import interpreter_builder

    config(after=0.0, every=0.0)
    fn = ember.compile(lambda x: torch.sin(x * 2.0))
    from ember.codegen.pointwise import launch_config

    block = launch_config(1 << 30, "cpu").constexprs["BLOCK"]  # the interpreter's largest block
    x = torch.randn(3 * block + 5)
    fn(x)  # compiled: only the call below is looked at
    assert K.interpreter_position(0) is None  # no launch running
    seen = []
    set_grid_idx = interpreter_builder.set_grid_idx

    def spy(*idx):
        set_grid_idx(*idx)
        log.clear()
        P.report_due()  # what the monitor thread does every TICK
        seen.extend(_lines(log))

    monkeypatch.setattr(interpreter_builder, "set_grid_idx", spy)
    torch.testing.assert_close(fn(x), torch.sin(x * 2.0))
    n = fn.graphs[0].kernels[0].grid[0]
    assert n >= 3
    for i in range(1, n + 1):
        assert any("kernel 1/1 (pw_" in line and f"program instance {i}/{n}," in line for line in seen), (i, seen)


def test_bar_fraction_nests_levels(config):
    config(after=0.0)
    with P.Progress("kernel", 4, title="running g", inner=lambda thread: (5, 10)) as p:
        p.update(2, "k2")
        text, frac = p.message(p.start + 1.25)
    assert text == "running g: kernel 2/4 (k2), program instance 5/10, 1.2 s"
    assert frac == pytest.approx((1 + 4 / 10) / 4)


def test_monitor_reports_one_long_step(config, log):
    """No update call for the whole step (one big capture, pass or launch): the monitor thread reports."""
    config(after=0.3, every=60.0)
    with P.Progress(title="compiling big") as p:
        p.update(0, "capture")  # (before the threshold: reports nothing itself)
        deadline = time.monotonic() + 20
        while not _lines(log) and time.monotonic() < deadline:
            time.sleep(0.02)
        lines = _lines(log)
    assert lines and lines[0].startswith("ember: compiling big: capture, "), lines


def test_failed_work_says_stopped(config, log):
    config(after=0.0)
    with pytest.raises(ZeroDivisionError):
        with P.Progress(title="compiling bad") as p:
            p.update(0, "lower")
            1 / 0  # noqa: B018
    assert _lines(log)[-1].startswith("ember: compiling bad stopped after ")


def test_without_logging_configured_writes_stderr(config, monkeypatch, capsys):
    config(after=0.0)
    monkeypatch.setattr(P.logger, "hasHandlers", lambda: False)
    with P.Progress(title="planning g") as p:
        p.update(0, "fusion")
    err = capsys.readouterr().err
    assert "ember: planning g: fusion, " in err and "ember: planning g done after " in err
