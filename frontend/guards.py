"""Guards of `ember.compile`: what a call must share with a compiled program to reuse it, why a call
does not, and the symbolic trace that lets one program serve many sizes.

A *program* is what `ember.compile` traced the user's Python for. Its guard covers everything that
changes the traced program: the pytree structure of (args, kwargs); every tensor's rank, shape (the
dims not marked dynamic), dtype, device and requires_grad; every non-tensor argument's value (baked
into the graph); for modules, every submodule's `training` flag and the names and metadata of the
parameters and buffers; which of these tensors share memory (`f(t, t)`, overlapping views: see
frontend/aliasing.py). `describe_changes` names each difference ("input 0 (x): dtype changed
float32 -> float16", "module training flag changed: Net True -> False").

Parameters and buffers are graph *inputs*, read from the module at every call, never constants. So:

- a **version** change (`tensor._version`: an optimizer step, `p.mul_(...)`, `load_state_dict`
  copying in place) changes values, not the program: it is not guarded, and a compiled model keeps
  following its training without re-tracing (guarding it would re-trace after every step and hit the
  recompile limit within 8 steps);
- a **replaced** Parameter/Buffer object (`m.fc1.weight = nn.Parameter(...)`) is noticed by identity
  and reported (log line, `CompiledFunction.notices`); with the same name and metadata the traced
  program is still exactly right (the graph reads the new tensor), so it is reused, not re-traced.
  A replacement that changes metadata (shape, dtype, ...) or the set of names (tying two weights
  makes `named_parameters()` list one fewer) fails the guard and recompiles with a reason.

Dynamic dims. `SymbolicTrace` traces the program once with `make_fx(tracing_mode="symbolic")` over
fake inputs whose dynamic dims are symbols (a `ShapeEnv` without duck sizing: equal sizes are not
assumed equal). Every size relation the trace relied on is recorded by the ShapeEnv as a guard
(`Eq(s1, 32)` for a dim meeting a fixed-size weight, divisibility for a reshape, `s0 >= 2` for the
0/1 specialization, a branch on a size); `check` evaluates them for new sizes and names the first that
fails. ember's IR is static-shaped, so the symbolic graph is not lowered itself: `derive` re-traces
the *symbolic aten graph* (not the user's Python) with concrete fake inputs, giving a static aten
graph that lowering, the passes and the planner handle as usual. Kernels take sizes and strides as
run-time arguments and are cached by source hash, so every derived graph reuses the kernels the
first one built.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import sympy
import torch
from torch.utils import _pytree as pytree

from .aliasing import alias_groups
from .capture import (
    DECOMPOSITIONS,
    Captured,
    SymbolicTraceError,
    _check_static,
    flat_function,
    module_state,
    prune_sources,
)
from .signature import named_leaves
from .sources import reach

logger = logging.getLogger("ember")

Dim = tuple[int, int]  # (leaf index in the flattened (args, kwargs), dim)


# -- call signatures --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorMeta:
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: str
    requires_grad: bool

    @staticmethod
    def of(t: torch.Tensor) -> TensorMeta:
        return TensorMeta(tuple(t.shape), t.dtype, str(t.device), t.requires_grad)


def _const(x: Any) -> Hashable:
    try:
        hash(x)
        return ("const", type(x), x)
    except TypeError:
        return ("const", type(x), repr(x))


@dataclass
class CallSignature:
    """Everything about one call that a compiled program depends on (see the module doc)."""

    spec: str
    names: tuple[str, ...]                       # readable name of each leaf of (args, kwargs)
    leaves: tuple[Any, ...]                      # TensorMeta, or ("const", type, value)
    training: tuple[tuple[str, bool], ...]       # (submodule name, training) for modules
    state: tuple[tuple[str, TensorMeta], ...]    # parameters and buffers, by name
    state_refs: tuple[Any, ...] = field(default=(), compare=False)  # weakrefs, for identity
    aliases: tuple[tuple[str, ...], ...] = ()     # names of tensors sharing memory (frontend/aliasing.py)

    @property
    def tensor_dims(self) -> set[Dim]:
        return {(i, d) for i, m in enumerate(self.leaves) if isinstance(m, TensorMeta) for d in range(len(m.shape))}

    def key(self, dynamic: frozenset[Dim] = frozenset()) -> Hashable:
        """The guard key with the sizes of `dynamic` dims left out (ranks stay)."""
        leaves = []
        for i, m in enumerate(self.leaves):
            if isinstance(m, TensorMeta) and dynamic:
                shape = tuple(None if (i, d) in dynamic else s for d, s in enumerate(m.shape))
                m = TensorMeta(shape, m.dtype, m.device, m.requires_grad)  # type: ignore[arg-type]
            leaves.append(m)
        return (self.spec, tuple(leaves), self.training, self.state, self.aliases)

    def replaced(self, module: torch.nn.Module | None) -> list[str]:
        """Parameters/buffers of `module` that are no longer the objects this signature saw."""
        if module is None:
            return []
        now = module_state(module)
        params = {n for n, _ in module.named_parameters()}
        return [("parameter " if n in params else "buffer ") + n
                for (n, _), ref in zip(self.state, self.state_refs) if ref() is not now.get(n)]


def call_signature(fn: Callable, args: tuple, kwargs: dict) -> CallSignature:
    leaves, spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
    names = tuple(n for n, _ in named_leaves(args, kwargs, fn))
    metas = tuple(TensorMeta.of(x) if isinstance(x, torch.Tensor) else _const(x) for x in leaves)
    training: tuple = ()
    state: tuple = ()
    refs: tuple = ()
    tensors = [(n, x) for n, x in zip(names, leaves) if isinstance(x, torch.Tensor)]
    if isinstance(fn, torch.nn.Module):
        training = tuple((n or type(fn).__name__, m.training) for n, m in fn.named_modules())
        st = module_state(fn)
        state = tuple((n, TensorMeta.of(t)) for n, t in st.items())
        refs = tuple(weakref.ref(t) for t in st.values())
        tensors += [(f"parameter/buffer {n}", t) for n, t in st.items()]
    aliases = tuple(tuple(tensors[i][0] for i in g) for g in alias_groups([t for _, t in tensors]))
    return CallSignature(str(spec), names, metas, training, state, refs, aliases)


def _dt(d: torch.dtype) -> str:
    return str(d).removeprefix("torch.")


def _shape(s: tuple) -> str:
    return "[" + ", ".join("*" if v is None else str(v) for v in s) + "]"


def _describe_value(m: Any) -> str:
    if isinstance(m, TensorMeta):
        return f"a tensor {_dt(m.dtype)}{_shape(m.shape)}"
    return f"{m[1].__name__} {m[2]!r}"


def _tensor_changes(what: str, a: TensorMeta, b: TensorMeta) -> list[str]:
    out = []
    if a.shape != b.shape:
        if len(a.shape) != len(b.shape):
            out.append(f"{what}: rank changed {len(a.shape)} -> {len(b.shape)} "
                       f"(shape {_shape(a.shape)} -> {_shape(b.shape)})")
        else:
            dims = [d for d, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y]
            out.append(f"{what}: shape changed {_shape(a.shape)} -> {_shape(b.shape)} "
                       f"(dim{'s' if len(dims) > 1 else ''} {', '.join(map(str, dims))})")
    if a.dtype != b.dtype:
        out.append(f"{what}: dtype changed {_dt(a.dtype)} -> {_dt(b.dtype)}")
    if a.device != b.device:
        out.append(f"{what}: device changed {a.device} -> {b.device}")
    if a.requires_grad != b.requires_grad:
        out.append(f"{what}: requires_grad changed {a.requires_grad} -> {b.requires_grad}")
    return out


def _aliases(groups: tuple[tuple[str, ...], ...]) -> str:
    return "; ".join(" and ".join(g) for g in groups) or "none"


def describe_changes(old: CallSignature, new: CallSignature) -> list[str]:
    """Every difference between two call signatures, one readable line each."""
    if old.spec != new.spec or len(old.leaves) != len(new.leaves):
        return [f"argument structure changed: {old.spec} -> {new.spec}"]
    out = []
    for i, (name, a, b) in enumerate(zip(new.names, old.leaves, new.leaves)):
        what = f"input {i} ({name})"
        if isinstance(a, TensorMeta) and isinstance(b, TensorMeta):
            out += _tensor_changes(what, a, b)
        elif a != b:
            out.append(f"{what}: changed {_describe_value(a)} -> {_describe_value(b)}")
    if old.training != new.training:
        was, now = dict(old.training), dict(new.training)
        changed = [f"{n} {was[n]} -> {now[n]}" for n in now if n in was and was[n] != now[n]]
        out.append("module training flag changed" + (f": {', '.join(changed[:3])}" if changed else "")
                   + (f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""))
    if old.aliases != new.aliases:
        out.append(f"inputs sharing memory changed: {_aliases(old.aliases)} -> {_aliases(new.aliases)}")
    if old.state != new.state:
        was, now = dict(old.state), dict(new.state)
        added, removed = [n for n in now if n not in was], [n for n in was if n not in now]
        if added or removed:
            out.append(f"module parameters/buffers changed: added {added}, removed {removed}")
        for n in now:
            if n in was and was[n] != now[n]:
                out += _tensor_changes(f"parameter/buffer {n}", was[n], now[n])
    return out


def size_changes(old: CallSignature, new: CallSignature) -> set[Dim] | None:
    """The dims whose sizes differ, when sizes of same-rank tensors are all that differ; else None."""
    if old.spec != new.spec or old.training != new.training or old.state != new.state or old.aliases != new.aliases:
        return None
    dims: set[Dim] = set()
    for i, (a, b) in enumerate(zip(old.leaves, new.leaves)):
        if isinstance(a, TensorMeta) and isinstance(b, TensorMeta):
            if len(a.shape) != len(b.shape) or (a.dtype, a.device, a.requires_grad) != (
                    b.dtype, b.device, b.requires_grad):
                return None
            dims |= {(i, d) for d, (x, y) in enumerate(zip(a.shape, b.shape)) if x != y}
        elif a != b:
            return None
    return dims


# -- symbolic trace -----------------------------------------------------------------------------------


class _LinearAsMatmul(torch.overrides.TorchFunctionMode):
    """`F.linear` on 3-d inputs reads concrete sizes in C++ (`_flatten_nd_linear`), which would
    specialize every size of the input; spelled as matmul + add it stays symbolic."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.linear or func is torch._C._nn.linear:
            x, w, *rest = args
            b = rest[0] if rest else kwargs.get("bias")
            out = torch.matmul(x, w.t())
            return out if b is None else out + b
        return func(*args, **kwargs)


class SymbolicTrace:
    """The program traced once with the `dynamic` dims of its tensor arguments as symbols.

    `dims` are the dims that really stayed symbolic (a size of 0 or 1 is specialized by the
    ShapeEnv, and so is a dim the program compares with a constant); `guards` the size relations the
    trace relied on. The aten graph here is never lowered: `derive` makes a static one per size.
    """

    def __init__(self, fn: Callable, args: tuple, kwargs: dict, dynamic: set[Dim]):
        from torch._subclasses.fake_tensor import FakeTensorMode
        from torch.fx.experimental.symbolic_shapes import DimDynamic, ShapeEnv, StatelessSymbolicContext

        from .rng_guard import RngGuard
        from .tracing import make_fx

        self.fn = fn
        module = fn if isinstance(fn, torch.nn.Module) else None
        leaves, in_spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
        self.names = [n for n, _ in named_leaves(args, kwargs, fn)]
        positions = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
        state = module_state(module)
        self.shape_env = ShapeEnv(duck_shape=False)
        fake_mode = FakeTensorMode(shape_env=self.shape_env, allow_non_fake_inputs=True)

        def fake(t: torch.Tensor, i: int | None) -> torch.Tensor:
            dyn = [DimDynamic.DYNAMIC if i is not None and (i, d) in dynamic else DimDynamic.STATIC
                   for d in range(t.dim())]
            return fake_mode.from_tensor(t.detach(), symbolic_context=StatelessSymbolicContext(dynamic_sizes=dyn))

        reached = reach(fn)  # tensors and Python values read through closures/globals (frontend/sources.py)
        closed = [t for _, t in reached.tensors]
        fakes = [fake(leaves[i], i) for i in positions] + [fake(t, None) for t in list(state.values()) + closed]
        self.symbols: dict[sympy.Symbol, Dim] = {}
        for i, t in zip(positions, fakes):
            for d, s in enumerate(t.shape):
                if isinstance(s, torch.SymInt) and isinstance(s.node.expr, sympy.Symbol):
                    self.symbols.setdefault(s.node.expr, (i, d))
        cap = Captured(None, in_spec, positions, {i: x for i, x in enumerate(leaves) if i not in positions},
                       list(state))  # type: ignore[arg-type]

        flat_fn = flat_function(fn, module, leaves, in_spec, cap, _LinearAsMatmul, closed=closed)

        rng = RngGuard()  # frontend/rng_guard.py
        try:  # grad mode on: see capture()
            with torch.enable_grad(), rng:
                self.gm = make_fx(torch.func.functionalize(flat_fn, remove="mutations"), tracing_mode="real",
                                  decomposition_table=DECOMPOSITIONS, _allow_non_fake_inputs=True)(*fakes)
        except SymbolicTraceError:
            raise
        except Exception as e:
            first = str(e).splitlines()[0][:200] if str(e) else ""
            raise SymbolicTraceError(f"symbolic trace failed: {type(e).__name__}: {first}") from e
        self.gm.graph.eliminate_dead_code()
        rng.check(self.gm)
        cap.sources = prune_sources(self.gm, len(positions) + len(state), [src for src, _ in reached.tensors])
        cap.guards = reached.guards
        reached.guards.refresh()  # after the program's own side effects (sources.py)
        self.template = cap
        self.guards = [g.expr for g in self.shape_env.guards]
        self.ranges = {s: self.shape_env.var_to_range[s] for s in self.symbols if s in self.shape_env.var_to_range}
        pinned = {s for s, r in self.ranges.items() if r.lower == r.upper}
        pinned |= {s for s, v in getattr(self.shape_env, "replacements", {}).items() if getattr(v, "is_number", False)}
        self.dims = frozenset(d for s, d in self.symbols.items() if s not in pinned)  # really symbolic

    def _sizes(self, args: tuple, kwargs: dict) -> dict[sympy.Symbol, int]:
        leaves = pytree.tree_leaves((tuple(args), dict(kwargs)))
        return {s: int(leaves[i].shape[d]) for s, (i, d) in self.symbols.items()}

    def _readable(self, expr: Any) -> str:
        names = {s: sympy.Symbol(f"{self.names[i]}.size({d})") for s, (i, d) in self.symbols.items()}
        return str(expr.xreplace(names))

    def check(self, args: tuple, kwargs: dict) -> str | None:
        """None when the trace's size guards hold for this call, else the first that fails."""
        sizes = self._sizes(args, kwargs)
        for s, r in self.ranges.items():
            v = sizes[s]
            if not (r.lower <= v <= r.upper):
                return (f"{self._readable(s)} = {v} is outside the range the symbolic trace assumed "
                        f"[{r.lower}, {r.upper}]")
        subs = {s: sympy.Integer(v) for s, v in sizes.items()}
        for g in self.guards:
            try:
                ok = bool(g.xreplace(subs))
            except TypeError:  # not decidable from the sizes alone: be safe
                ok = False
            if not ok:
                values = ", ".join(f"{self._readable(s)} = {sizes[s]}" for s in sorted(g.free_symbols, key=str)
                                   if s in sizes)
                return f"size guard `{self._readable(g)}` of the symbolic trace fails ({values})"
        return None

    def derive(self, args: tuple, kwargs: dict) -> Captured:
        """A static capture for this call's sizes, from the symbolic aten graph (the user's Python is
        not run again)."""
        from .tracing import make_fx

        leaves = pytree.tree_leaves((tuple(args), dict(kwargs)))
        module = self.fn if isinstance(self.fn, torch.nn.Module) else None
        tensors = [leaves[i] for i in self.template.tensor_positions] + list(module_state(module).values())
        tensors += self.template.source_tensors()
        with torch.no_grad():
            gm = make_fx(self.gm, tracing_mode="fake", _allow_non_fake_inputs=True)(*tensors)
        gm.graph.eliminate_dead_code()
        _check_static(gm)
        t = self.template
        return Captured(gm, t.in_spec, list(t.tensor_positions), dict(t.constants), list(t.state_names),
                        t.out_spec, list(t.out_leaves), list(t.sources), t.guards, set(t.tracked_writes))
