"""`make_fx`, one trace at a time in the process.

torch's fx tracing keeps process-wide state (`torch.fx._symbolic_trace.CURRENT_PATCHER`, patched
functions), so two threads tracing at once corrupt each other ("CURRENT_PATCHER is None in finally
block"). Every ember capture goes through this wrapper: traces are serialized (re-entrant, so a trace
that triggers another in the same thread still works); running compiled graphs is not.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any

from torch.fx.experimental.proxy_tensor import make_fx as _make_fx

TRACE_LOCK = threading.RLock()


def make_fx(fn: Callable, *args: Any, **kwargs: Any) -> Callable[..., Any]:
    """`torch.fx.experimental.proxy_tensor.make_fx`, whose returned tracer holds `TRACE_LOCK` while it runs."""
    tracer = _make_fx(fn, *args, **kwargs)

    @functools.wraps(tracer)
    def traced(*inputs: Any) -> Any:
        with TRACE_LOCK:
            return tracer(*inputs)

    return traced
