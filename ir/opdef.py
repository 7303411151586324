"""`OpDef`: one op's entry in the registry (ir/registry.py), holding every rule for it side by side
(JAX style).

An entry carries what every stage asks about the op, so adding an op is one entry in one place:

- `kind` and `arity` (how many inputs), the type rule `infer` and the reference implementation in
  torch `impl` (the interpreter runs it; it is the oracle of every test);
- `view`: the result is a view of input 0's storage (reshape, permute, expand, slice, select, flip
  and the gradient markers): no data moves, the runtime folds it into offsets and strides (copying
  only a reshape that strides cannot express). `is_view(op)` and `view_root(v)` (ir/registry.py) are
  the one answer to "is this a view" for the passes and the runtime;
- `cost`: flops per output element, or `cost(node) -> flops` (matmul, reductions);
- code: `triton` (a pointwise expression, used by every kernel kind that fuses pointwise ops), or
  `emit`/`emit_args` for generator ops the pointwise emitter asks to emit themselves (`full`, `cat`;
  see `emit` below), or `decompose` (composites rewritten into primitives before codegen);
- `vjp`, the reverse-mode rule (its contract and shared helpers: ir/vjp.py), and `active_inputs`;
- `domains`: where generated tests sample the op (`Domain`, ir/domains.py: dtypes the type rule
  accepts, value ranges, attributes), as OpInfo's sample inputs or JAX's grad_test_spec;
  tests/test_registry.py checks impl vs eager, VJP vs torch.autograd and codegen vs the
  interpreter on them;
- `aten`: the aten overloads the frontend lowers to this op. Capture keeps those of a `primitive`
  op whole (frontend/decompositions.py drops them from torch's decomposition table); tests check
  that the lowering table agrees.

Emit hooks (generator ops inside the pointwise emitter, codegen/pointwise.py)::

    emit(ctx, node) -> str            # the name of the bound value of node.out
    emit_args(node) -> list[int]      # runtime ints the emitted code reads, as ctx.args(node)

`ctx` offers `e` (the Emitter: `tmp`, `line`, `index`), `block` (the shape text of a kernel value),
`mask` (in-bounds lanes), `zero` (a block of zeros of the kernel's index width), `dims(v)` (index
expressions of v's dims), `load(v, index, mask)` (a group input loaded at per-dim `index`
expressions), `args(node)` (the names of the node's runtime ints) and `bind(expr, dtype)` (a
value of IR dtype `dtype`, rounded to a half type like any op result); an entry with `emit_checks`
may call `check(bad)`: lanes where `bad` holds raise the kernel's error flag, which the executor
turns into an IndexError after the run (a gather's index out of range).
Group inputs read only by emit-hook nodes are left to those hooks to load.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .domains import Domain

KINDS = ("pointwise", "reduction", "scan", "matmul", "conv", "attention", "scatter", "layout", "constant",
         "composite", "extern")


@dataclass
class OpDef:
    name: str
    kind: str
    # infer(in_types, **attrs) -> TensorType | list[TensorType]
    infer: Callable[..., Any]
    # impl(*tensors, **attrs) -> torch.Tensor | tuple: the reference semantics, in torch.
    impl: Callable[..., Any]
    # The number of inputs, or (min, max) with max None for variadic ops (cat, extern).
    arity: int | tuple[int, int | None] = 1
    # pointwise: triton(e, args: list[str], dtypes: list[dtype], out: dtype, **attrs) -> expression text
    triton: Callable[..., str] | None = None
    # generator ops of the pointwise emitter: emit(ctx, node) -> value name, emit_args(node) -> ints
    # (see the module doc).
    emit: Callable[..., str] | None = None
    emit_args: Callable[..., list[int]] | None = None
    # The emit hook may raise the kernel's error flag (`ctx.check`: an index out of range).
    emit_checks: bool = False
    # composite: decompose(graph, inputs, **attrs) -> Value, appending primitive nodes to `graph`
    decompose: Callable[..., Any] | None = None
    # vjp(graph, inputs, out, cotangent, **attrs) -> list[Value | None]: see the module doc.
    vjp: Callable[..., list] | None = None
    # The VJP rule takes `needs=` (see the module doc).
    vjp_needs: bool = False
    # reduction, scan: the combine used by the reduction emitter ("sum", "prod", "max", "min", "argmax", ...)
    combine: str | None = None
    # The inputs whose gradient dependence the output carries (None: all). `passes.autodiff`'s activity
    # analysis stops elsewhere: nothing downstream of `stop_gradient` is differentiated, so an op with
    # no VJP there (an extern) is not an error.
    active_inputs: tuple[int, ...] | None = None
    # The result is a view of input 0 (see the module doc).
    view: bool = False
    # flops per output element, or cost(node) -> flops.
    cost: float | Callable[..., int] = 0
    # Where generated tests sample the op (empty: it is tested by hand, e.g. layout ops and extern).
    domains: tuple[Domain, ...] = ()
    # The aten overloads the frontend lowers to this op (see the module doc).
    aten: tuple[Any, ...] = ()
    # onnx(b, args: list[str], types: list[TensorType], out, **attrs) -> output name(s): ONNX nodes for
    # one node, built with codegen/onnx.py's `OnnxBuilder` `b` (None: `ember.export_onnx` refuses the op).
    onnx: Callable[..., Any] | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"op {self.name}: unknown kind {self.kind!r}")
        if (self.kind == "composite") != (self.decompose is not None):
            raise ValueError(f"op {self.name}: composites, and only they, have a `decompose` rule")
        if self.view and self.kind != "layout":
            raise ValueError(f"op {self.name}: only layout ops are views")

    @property
    def primitive(self) -> bool:
        """Kept whole down to codegen (capture keeps its `aten` overloads whole too); False for
        composites, which `passes.decompose` rewrites into primitives first."""
        return self.decompose is None

    def takes(self, n: int) -> bool:
        """Does the op accept `n` inputs?"""
        if isinstance(self.arity, int):
            return n == self.arity
        lo, hi = self.arity
        return n >= lo and (hi is None or n <= hi)

    def flops(self, node) -> int:
        return int(self.cost(node) if callable(self.cost) else self.cost * node.outputs[0].type.numel)
