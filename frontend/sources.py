"""What a program reads besides its arguments: tensors and Python values reached through closures,
globals and attributes, found before capture and read again at every call.

`reach(fn)` walks what `fn` can reach: its closure cells, the globals its code (and the code of the
user functions it reaches) names, the attributes of modules (nn.Module) and of plain objects found
there, list/tuple/dict items, attributes of imported user modules that the code names, and for an
`nn.Module` its own attributes, submodules and methods. It records

- **tensors** (`Reach.tensors`, each with its `Source`): capture makes each one it uses a graph input
  (`frontend/capture.py`), and every call reads the source again, so in-place updates, a rebinding
  (`lin.weight = nn.Parameter(...)`, a global tensor reassigned) and `.grad` behave as in eager. Their
  shape, dtype and device are guarded. An `nn.Module` passed to `ember.compile` keeps its parameters
  and buffers as `functional_call` inputs: the walk skips them.
- **guards** (`Reach.guards`): every Python value found (numbers, strings, dtypes, tuples of them...:
  `self.scale`, a global float, a closure cell), the identity of every other object found (a closed-
  over module, a function, a config object), and global torch state (`torch.get_default_dtype()`).
  `Guards.check()` names the first that changed: `ember.compile` re-traces with that reason and
  `ember.trace`'s graph refuses to run.

The walk over-approximates what the program reads (it cannot see which branch the Python takes), so a
change of something the program never reads also re-traces: cheap, and never stale. It stops at
library code (torch, site-packages, the standard library): their globals are not the user's.
"""

from __future__ import annotations

import enum
import functools
import sys
import sysconfig
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

MISSING = object()
MAX_ITEMS = 1024   # containers longer than this are guarded by identity and length only
MAX_DEPTH = 6      # nesting of plain objects and containers followed (module trees and code: no limit)

_SIMPLE = (type(None), bool, int, float, complex, str, bytes, torch.dtype, torch.device, torch.layout,
           torch.memory_format, enum.Enum, torch.Size, range, slice, type(Ellipsis))
_MODULE_INTERNALS = frozenset(torch.nn.Module().__dict__)  # `training` included: the call signature guards it
_LIBRARY_PATHS = tuple({sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")})
_LIBRARY_ROOTS = {"torch", "builtins", "numpy", "triton", "sympy", "typing", "functools", "collections", "abc",
                  "ember"}


# -- sources ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """A path from a root object: `read()` follows it now (MISSING when it no longer resolves)."""

    root: Any = field(repr=False)
    steps: tuple[tuple[str, Any], ...]   # ("cell", None) | ("attr", name) | ("item", key) | ("call", None)
    path: str                            # the path as Python: `lin.weight`, `cfg['scale']`
    kind: str = ""                       # "closure variable", "global", "attribute", ...
    where: str = ""                      # "of f", "of module m", ...

    @property
    def label(self) -> str:
        return " ".join(x for x in (self.kind, f"'{self.path}'" if self.kind else self.path, self.where) if x)

    def read(self) -> Any:
        obj = self.root
        try:
            for kind, key in self.steps:
                if kind == "cell":
                    obj = obj.cell_contents
                elif kind == "attr":
                    obj = _raw_attr(obj, key)
                elif kind == "item":
                    obj = obj[key]
                else:
                    obj = obj()
        except Exception:  # noqa: BLE001  (a path that no longer resolves, a raising property)
            return MISSING
        return obj

    def attr(self, name: str) -> Source:
        return Source(self.root, self.steps + (("attr", name),), f"{self.path}.{name}", self.kind, self.where)

    def item(self, key: Any) -> Source:
        return Source(self.root, self.steps + (("item", key),), f"{self.path}[{key!r}]", self.kind, self.where)


def _raw_attr(obj: Any, name: str) -> Any:
    """An attribute as the program sees it, without triggering properties of plain objects twice:
    instance dict first, then nn.Module's parameter/buffer/submodule tables, then getattr."""
    d = getattr(obj, "__dict__", None)
    if d is not None and name in d:
        return d[name]
    if isinstance(obj, torch.nn.Module):
        for table in ("_parameters", "_buffers", "_modules"):
            t = obj.__dict__.get(table, {})
            if name in t:
                return t[name]
    return getattr(obj, name)


def _freeze(v: Any, depth: int = 0) -> Any:
    """A comparable snapshot of a simple value (floats by bit pattern: NaN equals NaN, -0.0 is not 0.0);
    MISSING when `v` is not simple."""
    if isinstance(v, float):
        return (float, v.hex())
    if isinstance(v, complex):
        return (complex, v.real.hex(), v.imag.hex())
    if isinstance(v, _SIMPLE):
        return (type(v), v)
    if depth < MAX_DEPTH and isinstance(v, (tuple, list, frozenset, set)) and len(v) <= MAX_ITEMS:
        items = [_freeze(x, depth + 1) for x in (sorted(v, key=repr) if isinstance(v, (set, frozenset)) else v)]
        return MISSING if any(x is MISSING for x in items) else (type(v), tuple(items))
    if depth < MAX_DEPTH and type(v) is dict and len(v) <= MAX_ITEMS:
        items = [(_freeze(k, depth + 1), _freeze(x, depth + 1)) for k, x in v.items()]
        return MISSING if any(x is MISSING for kv in items for x in kv) else (dict, tuple(items))
    return MISSING


def _show(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        return f"a tensor {str(v.dtype).removeprefix('torch.')}{list(v.shape)} on {v.device}"
    if v is MISSING:
        return "<missing>"
    text = repr(v)
    return text if len(text) <= 60 else text[:57] + "..."


# -- guards -----------------------------------------------------------------------------------------


def _follow(obj: Any, step: tuple[str, Any] | None) -> Any:
    try:
        if step is None:
            return obj
        kind, key = step
        if kind == "cell":
            return obj.cell_contents
        if kind == "attr":
            return _raw_attr(obj, key)
        if kind == "item":
            return obj[key]
        return obj()
    except Exception:  # noqa: BLE001  (a path that no longer resolves, a raising property)
        return MISSING


@dataclass
class Guard:
    source: Source
    kind: str       # "value" | "identity" | "tensor" | "len" | "same" (as the tensor of guard `expected`)
    expected: Any   # frozen value | the object | (shape, dtype, device) | length | guard index
    shown: str      # the value at capture, for the reason
    parent: int = -1                       # the guard of the object this one is read from (-1: from the root)
    step: tuple[str, Any] | None = None    # the step from that object (None: the object itself)
    raw: Any = field(default=MISSING, repr=False)  # a value guard's object: `is` it, and it is unchanged

    def holds(self, now: Any) -> bool:
        if self.kind == "value":
            return now is self.raw or _freeze(now) == self.expected
        if self.kind == "identity":
            return now is self.expected
        if self.kind == "len":
            return getattr(type(now), "__len__", None) is not None and len(now) == self.expected
        shape, dtype, device = self.expected
        return isinstance(now, torch.Tensor) and now.shape == shape and now.dtype is dtype and now.device == device

    def reason(self, now: Any) -> str:
        what = "replaced" if self.kind == "identity" and now is not MISSING else "changed"
        return f"{self.source.label} {what}: {self.shown} -> {_show(now)}"

    def take(self, now: Any) -> None:
        """Expect `now` from here on."""
        if self.kind == "value":
            self.expected, self.shown, self.raw = _freeze(now), _show(now), now
        elif self.kind == "identity":
            self.expected = now
        elif self.kind == "len":
            self.expected = len(now) if now is not MISSING and hasattr(now, "__len__") else -1
            self.shown = f"{self.expected} items"
        elif isinstance(now, torch.Tensor):
            self.expected, self.shown = (tuple(now.shape), now.dtype, now.device), _show(now)


@dataclass
class Guards:
    """Everything a captured program read that is not an argument (see the module doc). Guards are
    ordered parents first: each reads its value from its parent's (one step), so a check costs one
    attribute or item lookup per guard, not a walk from the root."""

    guards: list[Guard] = field(default_factory=list)

    def _values(self) -> Iterator[tuple[Guard, Any, list[Any]]]:
        vals: list[Any] = []
        for g in self.guards:
            if g.parent < 0:
                now = g.source.read()
            else:
                base = vals[g.parent]
                now = MISSING if base is MISSING else _follow(base, g.step)
            vals.append(now)
            yield g, now, vals

    def check(self) -> str | None:
        """None when every guarded value is unchanged, else why the program may be stale."""
        for g, now, vals in self._values():
            if g.kind == "same":  # a tensor the trace saw at two paths (tied weights): still one
                if now is not vals[g.expected]:
                    first = self.guards[g.expected].source
                    return f"{g.source.label} is no longer the same tensor as {first.label}"
            elif not g.holds(now):
                return g.reason(now)
        return None

    def __len__(self) -> int:
        return len(self.guards)

    def refresh(self) -> None:
        """Take the expected values now. Capture calls this after the trace: a program that appends to
        a closed-over list or bumps a counter changes state the graph never replays, and guarding the
        state from before the trace would re-trace at every call."""
        for g, now, _ in self._values():
            if g.kind != "same":
                g.take(now)


def global_state() -> list[Guard]:
    """Torch state a trace bakes in."""
    src = Source(torch.get_default_dtype, (("call", None),), "torch.get_default_dtype()")
    g = Guard(src, "value", None, "")
    g.take(torch.get_default_dtype())
    return [g]


# -- the walk ---------------------------------------------------------------------------------------


def _is_library(obj: Any) -> bool:
    """Code of torch, installed packages or the standard library (functions, classes, modules)."""
    is_module = isinstance(obj, types.ModuleType)
    name = (obj.__name__ if is_module else getattr(obj, "__module__", None)) or ""
    if name.split(".")[0] in _LIBRARY_ROOTS:
        return True
    code = getattr(obj, "__code__", None)
    if code is not None:
        path = code.co_filename
    else:
        path = getattr(obj if is_module else sys.modules.get(name), "__file__", None)
    if path is None:
        return name != "__main__"  # builtin modules; an interactive __main__ is the user's
    return path.startswith(_LIBRARY_PATHS) or path.startswith("<frozen")


def _code_names(code: types.CodeType) -> Iterator[str]:
    """Global and attribute names a code object (and the code nested in it) uses."""
    yield from code.co_names
    for c in code.co_consts:
        if isinstance(c, types.CodeType):
            yield from _code_names(c)


@dataclass
class Reach:
    tensors: list[tuple[Source, torch.Tensor]] = field(default_factory=list)
    guards: Guards = field(default_factory=Guards)


class _Walker:
    def __init__(self, skip_state_of: torch.nn.Module | None):
        self.reach = Reach()
        self.tensor_ids: dict[int, int] = {}  # id of a tensor found -> its first guard
        self.seen: set[int] = set()
        self.skip_state_of = skip_state_of  # the module whose parameters/buffers functional_call feeds
        self.skip_state: set[int] = set()
        if skip_state_of is not None:
            self.skip_state = {id(m) for m in skip_state_of.modules()}

    def guard(self, src: Source, kind: str, obj: Any, parent: int, same: bool = False) -> int:
        """Guard `obj` found at `src`, read from the object of guard `parent` (or from src's root);
        `same`: the parent's object itself (a container's length)."""
        step = None if same or parent < 0 else src.steps[-1]
        g = Guard(src, kind, None, f"{type(obj).__name__} object", parent, step)
        g.take(obj)
        self.reach.guards.guards.append(g)
        return len(self.reach.guards.guards) - 1

    def visit(self, src: Source, obj: Any, depth: int = 0, names: frozenset[str] = frozenset(),
              parent: int = -1) -> None:
        """Record `obj`, found at `src` (one step from the object of guard `parent`, or a root path);
        `names` are the attribute names the code that reached it uses."""
        if isinstance(obj, torch.Tensor):
            first = self.tensor_ids.get(id(obj))
            if first is None:
                self.tensor_ids[id(obj)] = self.guard(src, "tensor", obj, parent)
                self.reach.tensors.append((src, obj))
            else:  # one input serves both paths while they hold one tensor
                g = self.reach.guards.guards[self.guard(src, "tensor", obj, parent)]
                g.kind, g.expected = "same", first
            return
        if _freeze(obj) is not MISSING:
            self.guard(src, "value", obj, parent)
            return
        me = self.guard(src, "identity", obj, parent)
        if id(obj) in self.seen or depth > MAX_DEPTH:
            return
        self.seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            self.module(src, obj, depth, me)
        elif isinstance(obj, types.FunctionType):
            self.function(obj, depth)
        elif isinstance(obj, types.MethodType):
            self.visit(src.attr("__self__"), obj.__self__, depth, parent=me)
            self.visit(src.attr("__func__"), obj.__func__, depth, parent=me)
        elif isinstance(obj, types.ModuleType):
            if not _is_library(obj):
                for name in sorted(names):
                    if name in obj.__dict__:
                        self.visit(src.attr(name), obj.__dict__[name], depth + 1, names, me)
        elif isinstance(obj, (list, tuple, dict)):
            if isinstance(obj, (list, dict)):  # mutable: items may come and go
                self.guard(src, "len", obj, me, same=True)
            if len(obj) > MAX_ITEMS:
                return
            for k in (range(len(obj)) if not isinstance(obj, dict) else list(obj)):
                if _freeze(k) is not MISSING:
                    self.visit(src.item(k), obj[k], depth + 1, names, me)
        elif isinstance(obj, functools.partial):
            for k in ("func", "args", "keywords"):
                self.visit(src.attr(k), getattr(obj, k), depth, parent=me)
        elif not isinstance(obj, type) and not _is_library(type(obj)) and not hasattr(obj, "__dict__"):
            for k in dict.fromkeys(n for c in type(obj).__mro__ for n in getattr(c, "__slots__", ())):
                if hasattr(obj, k):  # a user class with __slots__
                    self.visit(src.attr(k), getattr(obj, k), depth + 1, names, me)
        elif isinstance(obj, type) or not hasattr(obj, "__dict__"):
            return  # classes, builtins, slotted library objects: identity is enough
        elif not _is_library(type(obj)) or _is_config(obj):  # a user object (or a config): its attributes
            for k, v in list(vars(obj).items()):
                self.visit(src.attr(k), v, depth + 1, names, me)
            call = next((k.__dict__["__call__"] for k in type(obj).__mro__ if "__call__" in k.__dict__), None)
            if isinstance(call, types.FunctionType):
                self.function(call, depth)

    def module(self, src: Source, m: torch.nn.Module, depth: int, me: int) -> None:
        d = m.__dict__
        for k, v in d.items():
            if k not in _MODULE_INTERNALS:
                self.visit(src.attr(k), v, depth + 1, parent=me)
        if id(m) not in self.skip_state:
            for table in ("_parameters", "_buffers"):
                for k, t in d[table].items():
                    if t is not None:
                        self.visit(src.attr(k), t, depth, parent=me)
        for k, sub in d["_modules"].items():
            if sub is not None:
                self.visit(src.attr(k), sub, depth, parent=me)
        self.methods(type(m), depth)

    def methods(self, cls: type, depth: int) -> None:
        """The globals of a user class's methods (forward and the helpers it calls)."""
        for klass in cls.__mro__:
            if _is_library(klass):
                continue
            for v in vars(klass).values():
                f = v.__func__ if isinstance(v, (staticmethod, classmethod)) else v
                f = f.fget if isinstance(f, property) else f
                if isinstance(f, types.FunctionType) and id(f) not in self.seen:
                    self.seen.add(id(f))
                    self.function(f, depth)

    def function(self, f: types.FunctionType, depth: int) -> None:
        if _is_library(f):
            return
        where = getattr(f, "__qualname__", f.__name__)
        code = f.__code__
        for name, cell in zip(code.co_freevars, f.__closure__ or ()):
            try:
                value = cell.cell_contents
            except ValueError:  # not assigned yet
                continue
            self.visit(Source(cell, (("cell", None),), name, "closure variable", f"of {where}"), value, 0,
                       frozenset(_code_names(code)))
        names = frozenset(_code_names(code))
        g = f.__globals__
        module = g.get("__name__", "?")
        for name in sorted(names):
            if name in g:
                src = Source(g, (("item", name),), name, "global", f"of module {module}")
                self.visit(src, g[name], 0, names)


def _is_config(obj: Any) -> bool:
    """Library objects whose attributes steer a forward (SimpleNamespace, argparse.Namespace,
    transformers' PretrainedConfig, ...)."""
    return isinstance(obj, types.SimpleNamespace) or type(obj).__name__.endswith(("Config", "Namespace"))


def reach(fn: Callable) -> Reach:
    """Tensors and guards of everything `fn` can reach (see the module doc)."""
    module = fn if isinstance(fn, torch.nn.Module) else None
    w = _Walker(module)
    # Root guards (an empty path) always hold: they give their children an object to read from.
    if module is not None:
        w.seen.add(id(module))
        src = Source(module, (), "self", "attribute", f"of {type(module).__name__}")
        w.module(src, module, 0, w.guard(src, "identity", module, -1))
    elif isinstance(fn, types.MethodType):  # model.forward, obj.method: `self` is a root
        owner = fn.__self__
        w.visit(Source(owner, (), "self", "attribute", f"of {type(owner).__name__}"), owner)
        w.visit(Source(fn.__func__, (), "", "", ""), fn.__func__)
    else:
        w.visit(Source(fn, (), "", "", ""), fn)
    w.reach.guards.guards += global_state()
    return w.reach


def source_name(src: Source) -> str:
    """A short identifier for the graph input a source tensor becomes: `lin.weight` -> `lin_weight`."""
    return src.path.removeprefix("self.")
