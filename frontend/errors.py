"""Errors that point at the user's line.

A program that ember cannot run fails somewhere deep inside make_fx, fake tensors, functionalization
or lowering; torch's traceback then runs to ~100 lines (plus a logged "failed while attempting to
run meta" traceback) before the message, and data-dependent failures name neither the op nor the
line. So:

- While the user's program is traced, `Watch` (a `TorchFunctionMode` pushed in
  `capture.flat_function`) sees every torch call the program makes: a call that raises gets the
  call's name attached (`Tensor.matmul`, `torch.cat`), and the fx nodes a call creates get the user's file and
  line in `node.meta["ember_where"]`, so errors found later on the graph (a data-dependent node, a
  lowering refusal) can still name the line. It also silences torch's meta-failure log record for
  the duration (the exception itself carries the message).
- The API entry points (`StaticGraph`, `CompiledFunction.__call__`, `CompiledStep.__call__`) are
  wrapped in `boundary`: an error is re-raised as a fresh exception of the same type (eager's
  `RuntimeError` for a shape mismatch, `ember.CaptureError` for data-dependent code) whose first line
  is `<cause>  at <file>:<line>: <source line>`: the innermost frame of user code (not torch, not
  ember, not the standard library) that was running, else the graph node's recorded line, else the
  call site. The chain is suppressed (`from None`) unless `EMBER_VERBOSE=1`, which chains the
  original and keeps torch's log. Internal failures (KeyError, AttributeError, AssertionError, ...)
  and errors torch raises in ember's own code pass through unchanged: they are bugs to report.
"""

from __future__ import annotations

import functools
import linecache
import logging
import os
import re
import sys
import sysconfig
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

_ROOT = Path(__file__).resolve().parents[1]
_EMBER = tuple(str(_ROOT / d) + os.sep for d in ("api", "frontend", "ir", "passes", "runtime", "codegen", "optim"))
_EMBER_FILES = (str(_ROOT / "__init__.py"),)
_TORCH = os.path.dirname(torch.__file__) + os.sep
_LIBRARY_NAMES = ("functorch", "sympy", "triton", "numpy", "typing_extensions", "optree")  # torch's helpers
_STDLIB = tuple({sysconfig.get_paths()[k] + os.sep for k in ("stdlib", "platstdlib")})
# Exception types that mean "ember (or torch) has a bug", never a message for the user's program.
_INTERNAL = (KeyError, AttributeError, AssertionError, IndexError, NameError, ZeroDivisionError, RecursionError)
# Modules of torch's exception types that mean nothing to the user (GuardOnDataDependentSymNode, ...).
_TORCH_INTERNAL = ("torch._subclasses", "torch.fx", "torch._dynamo", "torch._prims", "torch._decomp",
                   "torch._functorch", "torch._higher_order_ops", "torch._guards", "torch.utils._sympy")
# torch's fake-tensor exceptions whose message is only the op's name.
_EXPLAIN = {"UnsupportedOperatorException": lambda op: f"{op}: torch has no meta kernel for this op, and ember traces "
                                                       "programs on fake tensors, so it cannot capture it"}
# Types re-raised as themselves; any other (torch-internal) type becomes the nearest builtin.
_KEEP_TYPES = (RuntimeError, ValueError, TypeError, NotImplementedError, IndexError)


# True/False overrides EMBER_VERBOSE for this process (`ember.frontend.errors.VERBOSE = True` in a notebook).
VERBOSE: bool | None = None


def verbose() -> bool:
    """EMBER_VERBOSE=1 (or VERBOSE = True): chain the original exception (torch's frames) and keep
    torch's log output."""
    if VERBOSE is not None:
        return VERBOSE
    return os.environ.get("EMBER_VERBOSE", "").strip().lower() not in ("", "0", "false", "no")


@functools.lru_cache(maxsize=4096)
def is_user_file(filename: str) -> bool:
    """Frames of the user's code: anything but torch (and its helpers), ember itself and the stdlib."""
    if filename.startswith("<"):  # "<frozen ...>", fx's "<eval_with_key>", exec'd "<string>"; not "<stdin>"
        return filename == "<stdin>" or filename.startswith("<ipython")
    path = os.path.realpath(filename)
    if path.startswith(_EMBER) or path in _EMBER_FILES or path.startswith(_TORCH) or path.startswith(_STDLIB):
        return False
    parts = Path(path).parts
    return not any(p in _LIBRARY_NAMES for p in parts if p)


def _is_ember_file(filename: str) -> bool:
    path = os.path.realpath(filename)
    return path.startswith(_EMBER) or path in _EMBER_FILES


@dataclass(frozen=True)
class Where:
    """A line of the user's code."""

    filename: str
    lineno: int

    def __str__(self) -> str:
        name = self.filename
        try:
            rel = os.path.relpath(name)
            name = rel if not rel.startswith("..") else name
        except ValueError:  # another drive (Windows)
            pass
        source = linecache.getline(self.filename, self.lineno).strip()
        if len(source) > 50:
            source = source[:47] + "..."
        return f"{name}:{self.lineno}" + (f": {source}" if source else "")


def user_frame(frame: types.FrameType | None) -> Where | None:
    """The first frame of user code at or above `frame`."""
    while frame is not None:
        if is_user_file(frame.f_code.co_filename):
            return Where(frame.f_code.co_filename, frame.f_lineno)
        frame = frame.f_back
    return None


def call_name(func: Callable) -> str:
    """`Tensor.add`, `torch.cat`, `torch.nn.functional.linear`: the torch call the user made."""
    qual = getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or repr(func)
    name = getattr(func, "__name__", qual)
    if qual.startswith(("TensorBase.", "Tensor.")):
        return "Tensor." + name
    module = getattr(func, "__module__", None) or ""
    module = {"torch._C._nn": "torch.nn.functional", "torch._C._linalg": "torch.linalg", "torch._C._fft": "torch.fft",
              "torch._C._special": "torch.special"}.get(module, module)
    if module.startswith("torch._C") or qual.startswith("_VariableFunctionsClass."):
        module = "torch"
    if module == "torch.linalg" and name.startswith("linalg_"):
        name = name.removeprefix("linalg_")
    return f"{module}.{name}" if module else name


# -- while the program is traced ----------------------------------------------------------------------------

_local = threading.local()


class _DropMetaLog(logging.Filter):
    """Drops fake_tensor's "failed while attempting to run meta" traceback while ember traces (the
    exception reaches the user anyway, with the line it came from)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (getattr(_local, "tracing", 0) and not verbose()
                    and str(record.msg).startswith("failed while attempting to run meta"))


logging.getLogger("torch._subclasses.fake_tensor").addFilter(_DropMetaLog())


class Watch(TorchFunctionMode):
    """Pushed while the user's program runs under make_fx (see the module doc): names the torch call
    that raised, and records the user's line on the fx nodes each call creates."""

    def __enter__(self) -> Watch:
        _local.tracing = getattr(_local, "tracing", 0) + 1
        return super().__enter__()

    def __exit__(self, *exc: Any) -> None:
        _local.tracing -= 1
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        from torch.fx.experimental.proxy_tensor import get_proxy_mode

        mode = get_proxy_mode()
        graph = getattr(getattr(mode, "tracer", None), "graph", None)
        before = len(graph.nodes) if graph is not None else 0
        try:
            out = func(*args, **(kwargs or {}))
        except Exception as e:
            if getattr(e, "ember_call", None) is None:  # the user's call, not torch's inner ones
                _annotate(e, ember_call=call_name(func))
            raise
        new = len(graph.nodes) - before if graph is not None else 0
        if new > 0:
            where = user_frame(sys._getframe(1))
            if where is not None:
                name = call_name(func)
                for node, _ in zip(reversed(graph.nodes), range(new)):
                    node.meta.setdefault("ember_where", where)
                    node.meta.setdefault("ember_call", name)
        return out


def _annotate(e: BaseException, **attrs: Any) -> None:
    for k, v in attrs.items():
        try:
            setattr(e, k, v)
        except (AttributeError, TypeError):  # an exception type without __dict__
            pass


def has_unbacked(value: Any) -> bool:
    """Whether `value` (a tensor, a SymInt/SymFloat/SymBool, or a pytree of them) depends on tensor
    values: a symbol fake tracing made up for `.item()`, `nonzero`, a boolean mask..."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    for leaf in pytree.tree_leaves(value):
        if isinstance(leaf, torch.Tensor) and all(type(s) is int for s in leaf.shape):
            continue
        symbolic = (torch.Tensor, torch.SymInt, torch.SymFloat, torch.SymBool)
        if isinstance(leaf, symbolic) and free_unbacked_symbols(leaf):
            return True
    return False


_HINT = ('torch.compile(model, backend="ember") graph-breaks at that line and compiles the rest with ember; '
         "or keep the value in a tensor (e.g. torch.where instead of `if`)")


# What the calls that read tensor values into Python are, for the message.
_READS = {"Tensor.__bool__": "`if` on a tensor", "Tensor.__int__": "int(tensor)", "Tensor.__float__": "float(tensor)",
          "Tensor.__index__": "a tensor as an index"}


def data_dependent_message(call: str | None, op: Any = None) -> str:
    """The message of the `CaptureError` for a program that reads tensor values into Python."""
    what = call or (str(op) if op is not None else "the program")
    detail = str(op) if op is not None and call is not None else _READS.get(call or "")
    if detail:
        what += f" ({detail})"
    return f"{what} is data-dependent (it reads tensor values); a static graph cannot hold it\n{_HINT}"


# -- at the API boundary -----------------------------------------------------------------------------------


def _tracebacks(e: BaseException):
    """`e` and the exceptions it was raised from, outermost first."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)


def _frames(tb: types.TracebackType | None) -> list[tuple[types.FrameType, int, int]]:
    """(frame, line, last instruction) as they were when the exception passed (the frame may have
    run `finally` blocks since)."""
    out = []
    while tb is not None:
        out.append((tb.tb_frame, tb.tb_lineno, tb.tb_lasti))
        tb = tb.tb_next
    return out


def _located(e: BaseException) -> tuple[Where | None, bool, str | None]:
    """(the user's line, whether user code was running when `e` was raised, the torch call): the
    innermost user frame of `e`'s traceback (or of the exceptions it was raised from), else the line
    recorded on an fx node ember was looking at (a local variable of the raising frames)."""
    call = None
    for err in _tracebacks(e):
        call = call or getattr(err, "ember_call", None)
        users = [Where(f.f_code.co_filename, line) for f, line, _ in _frames(err.__traceback__)
                 if is_user_file(f.f_code.co_filename)]
        if users:
            return users[-1], True, call
    for err in _tracebacks(e):
        for frame, _, _ in reversed(_frames(err.__traceback__)):
            for v in list(frame.f_locals.values()):
                if isinstance(v, torch.fx.Node) and v.meta.get("ember_where") is not None:
                    return v.meta["ember_where"], False, call or v.meta.get("ember_call")
    return None, False, call


# ember frames that only hand a user's torch call on (`func(*args, **kwargs)` in a torch-function
# mode): an error raised by torch's C++ there is torch's answer to the user's call, not an ember bug.
_PASS_THROUGH = {"__torch_function__", "_untracked"}


def _raised_in_ember(e: BaseException) -> bool:
    frames = _frames(e.__traceback__)
    if getattr(e, "ember_call", None) is not None:  # the user's torch call raised (errors.Watch)
        while frames and _is_ember_file(frames[-1][0].f_code.co_filename) and \
                frames[-1][0].f_code.co_name in _PASS_THROUGH:
            frames.pop()
    return bool(frames) and _is_ember_file(frames[-1][0].f_code.co_filename)


def _exception_type(e: Exception) -> type[Exception] | None:
    """The type to re-raise `e` as: its own (builtin, ember's, torch's public ones), the nearest
    builtin for torch's internal ones (GuardOnDataDependentSymNode, fake-tensor exceptions), None
    for the user's own exception classes (re-raised untouched)."""
    cls = type(e)
    module = cls.__module__
    if module.startswith(_TORCH_INTERNAL):
        return next((t for t in _KEEP_TYPES if isinstance(e, t)), RuntimeError)
    if module == "builtins" or module.startswith(("torch", "ember.")):
        return cls
    return None


def _first_line_with(message: str, where: Where, limit: int = 200) -> str:
    """`<cause>  at <where>` as the first line. A cause too long for `limit` is cut after a sentence
    (". ", "; ") or before a closing parenthetical, the rest going to the next line; one without such
    a place is kept whole (callers match messages with regexes)."""
    first, _, rest = message.partition("\n")
    first = first.rstrip()
    room = limit - len(f"  at {where}")
    if len(first) > room:
        depth = [0]
        for ch in first:  # parentheses open before each position: never cut inside them
            depth.append(depth[-1] + {"(": 1, ")": -1}.get(ch, 0))
        cuts = [i + 1 for sep in (". ", "; ") for i in _find_all(first, sep) if depth[i] == 0]
        cuts += [i for i in [_closing_parenthetical(first)] if i is not None]
        fits = [c for c in cuts if 40 <= c <= room]
        if fits:
            cut = max(fits)
            first, more = first[:cut].rstrip(), first[cut:].strip()
            rest = f"{more}\n{rest}" if rest else more
    return f"{first}  at {where}" + (f"\n{rest}" if rest else "")


def _closing_parenthetical(text: str) -> int | None:
    """Where the parenthetical that ends `text` opens (the space before it), if it ends with one."""
    depth = 0
    for i in range(len(text) - 1, -1, -1):
        depth += {")": 1, "(": -1}.get(text[i], 0)
        if depth == 0:
            return i - 1 if i > 0 and text[i] == "(" and text[i - 1] == " " else None
    return None


def _find_all(text: str, sub: str) -> list[int]:
    return [m.start() for m in re.finditer(re.escape(sub), text)]


def _user_traceback(e: BaseException) -> types.TracebackType | None:
    """The frames of user code in the traceback of `e` (or of the exception it was raised from that
    has some): what the user wrote between the API call and the failure."""
    for err in _tracebacks(e):
        frames = [x for x in _frames(err.__traceback__) if is_user_file(x[0].f_code.co_filename)]
        if frames:
            tb = None
            for frame, line, lasti in reversed(frames):
                tb = types.TracebackType(tb, frame, lasti, line)
            return tb
    return None


def user_error(e: Exception, caller: types.FrameType | None) -> Exception | None:
    """`e` re-made for the user (see the module doc), with a traceback of the user's frames only, or
    None when it is not the user's error (a bug: an internal exception type raised by ember, or torch
    failing on ember's own work), to be re-raised untouched. `caller`: the frame that called the API
    (its line is used when no other is known)."""
    if getattr(e, "ember_user_error", False):  # made by an inner boundary
        return e.with_traceback(_user_traceback(e))
    where, inside, call = _located(e)
    extern = getattr(e, "ember_extern", None)  # torch's own error for an op ember hands to torch
    ours = _raised_in_ember(e)
    # (an index out of range found by a kernel is the user's error: runtime/executor._check_flags)
    if (ours and isinstance(e, _INTERNAL) and not getattr(e, "ember_data_error", False)) \
            or not (inside or ours or extern):
        return None
    cls = _exception_type(e)
    where = where or user_frame(caller)
    if where is None:
        return None
    if cls is None or isinstance(e, KeyError):  # the user's own exception class; KeyError quotes its message
        return e.with_traceback(_user_traceback(e)) if inside else None
    message = _EXPLAIN[type(e).__name__](str(e)) if type(e).__name__ in _EXPLAIN else str(e) or cls.__name__
    if extern and not inside:
        call = extern
    if call and call not in message.partition("\n")[0] and not re.match(r"[\w.]+: ", message):
        message = f"{call}: {message}"
    message = _first_line_with(message, where)
    try:
        new = cls(message)
    except Exception:  # noqa: BLE001  (a constructor that wants other arguments)
        new = next((t for t in _KEEP_TYPES if isinstance(e, t)), RuntimeError)(message)
    _annotate(new, ember_user_error=True, ember_where=where)
    return new.with_traceback(_user_traceback(e))


def boundary(fn: Callable) -> Callable:
    """Wrap an API entry point: errors leave it as `user_error` makes them (see the module doc)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            tb = e.__traceback__
            new = user_error(e, sys._getframe(1))
            if new is None or (new is e and verbose()):  # untouched (EMBER_VERBOSE=1: all frames)
                e.__traceback__ = tb
                raise
            raise new from (e if verbose() else None)

    return wrapper
