"""Dynamic dims of `ember.compile`: one symbolic trace from which a static graph is derived per size.

`SymbolicTrace` traces the program once with `make_fx(tracing_mode="symbolic")` over fake inputs
whose dynamic dims are symbols (a `ShapeEnv` without duck sizing: equal sizes are not assumed
equal). Every size relation the trace relied on is recorded by the ShapeEnv as a guard (`Eq(s1, 32)`
for a dim meeting a fixed-size weight, divisibility for a reshape, `s0 >= 2` for the 0/1
specialization, a branch on a size); `check` evaluates them for new sizes and names the first that
fails. ember's IR is static-shaped, so the symbolic graph is not lowered itself: `derive` re-traces
the *symbolic aten graph* (not the user's Python) with concrete fake inputs, giving a static aten
graph that lowering, the passes and the planner handle as usual. Kernels take sizes and strides as
run-time arguments and are cached by source hash, so every derived graph reuses the kernels the
first one built.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy
import torch
from torch.utils import _pytree as pytree

from ..frontend.capture import (
    DECOMPOSITIONS,
    Captured,
    SymbolicTraceError,
    _check_static,
    flat_function,
    module_state,
    prune_sources,
)
from ..frontend.sources import reach
from .signature import named_leaves

Dim = tuple[int, int]  # (leaf index in the flattened (args, kwargs), dim)


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

        from ..frontend.rng_guard import RngGuard
        from ..frontend.tracing import make_fx

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
        reached.guards.refresh()  # after the program's own side effects (frontend/sources.py)
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
        from ..frontend.tracing import make_fx

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
