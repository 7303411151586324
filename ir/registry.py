"""The op registry: one `OpDef` per op, holding every rule for it side by side (JAX style).

An entry carries what every stage asks about the op, so adding an op is one entry in one place:

- `kind` and `arity` (how many inputs), the type rule `infer` and the reference implementation in
  torch `impl` (the interpreter runs it; it is the oracle of every test);
- `view`: the result is a view of input 0's storage (reshape, permute, expand, slice, select, flip
  and the gradient markers): no data moves, the runtime folds it into offsets and strides (copying
  only a reshape that strides cannot express). `is_view(op)` and `view_root(v)` below are the one
  answer to "is this a view" for the passes and the runtime;
- `cost`: flops per output element, or `cost(node) -> flops` (matmul, reductions);
- code: `triton` (a pointwise expression, used by every kernel kind that fuses pointwise ops), or
  `emit`/`emit_args` for generator ops the pointwise emitter asks to emit themselves (`full`, `cat`;
  see `emit` below), or `decompose` (composites rewritten into primitives before codegen);
- `vjp`, the reverse-mode rule (below), and `active_inputs`;
- `domains`: where generated tests sample the op (`Domain`: dtypes the type rule accepts, value
  ranges, attributes), as OpInfo's sample inputs or JAX's grad_test_spec; tests/test_registry.py
  checks impl vs eager, VJP vs torch.autograd and codegen vs the interpreter on them;
- `aten`: the aten overloads the frontend lowers to this op. Capture keeps those of a `primitive`
  op whole (frontend/decompositions.py drops them from torch's decomposition table); tests check
  that the lowering table agrees.

VJP rules (one per differentiable op, in the op's entry)::

    vjp(g: Graph, inputs: list[Value], out: Value, ct: Value, **attrs) -> list[Value | None]

`inputs` and `out` are the node's values inside `g`, `ct` the cotangent of `out` (same type). The
rule appends IR nodes to `g` (`g.add(op, inputs, **attrs)`) and returns one cotangent per input, of
exactly that input's type, or None for "zero / not differentiable" (an integer input, the condition
of `where`, an op with zero derivative such as `floor`). Rules may build cotangents for inputs that do
not need one; `passes.autodiff` removes them with DCE. A node with several outputs (`extern`) gets
`out` and `ct` as lists, `ct[k]` None where no cotangent reaches output k; an entry with `vjp_needs`
also gets `needs` (per input: does it need a cotangent), for rules whose work DCE cannot prune
(`extern` asks torch for those gradients only). An op whose entry has `vjp=None` is never reached by
a float cotangent (comparisons, integer ops, constants): autodiff raises an error naming it. The
helpers below (`scalar`, `zeros`, `unbroadcast`, `restore_reduced`) are shared by the rules in
`ops/*.py`.

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

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

KINDS = ("pointwise", "reduction", "scan", "matmul", "conv", "attention", "scatter", "layout", "constant",
         "composite", "extern")

# dtype families domains and type rules name (the dtypes generated kernels compute on).
FLOAT = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
INT = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
NUMERIC = FLOAT + INT
INTEGRAL = INT + (torch.bool,)  # bitwise ops: bool is an integer there
ALL = NUMERIC + (torch.bool,)


@dataclass(frozen=True)
class Domain:
    """A region where generated tests sample an op: inputs of one dtype out of `dtypes` (dtypes the
    type rule accepts with these `attrs`), values in [low, high] (`ranges` per input overrides it),
    `nonzero` inputs kept away from 0 (divisors), `fixed` inputs of a fixed dtype (where's condition,
    rand's seed), `shapes` the input shapes when the op needs particular ones (default: the tests'
    broadcasting shapes). An attribute equal to `DTYPE` stands for the dtype under test (generator
    ops, whose `dtypes` are the output's). `grad`: the VJP is checked here against torch.autograd
    (False where the derivative is not defined at the samples)."""

    dtypes: tuple[torch.dtype, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    low: float = -3.0
    high: float = 3.0
    ranges: dict[int, tuple[float, float]] = field(default_factory=dict)
    nonzero: tuple[int, ...] = ()
    fixed: dict[int, torch.dtype] = field(default_factory=dict)
    shapes: tuple[tuple[int, ...], ...] | None = None
    grad: bool = True
    # The dtypes of `ALL` the type rule rejects with these attrs (None: all but `dtypes`). Tests check
    # each is rejected, and that a dtype neither sampled nor rejected here is sampled by another domain.
    rejects: tuple[torch.dtype, ...] | None = None

    def rejected(self) -> tuple[torch.dtype, ...]:
        return tuple(d for d in ALL if d not in self.dtypes) if self.rejects is None else self.rejects

    def attrs_for(self, dtype: torch.dtype) -> dict[str, Any]:
        return {k: dtype if v is DTYPE else v for k, v in self.attrs.items()}

    def input_dtype(self, i: int, dtype: torch.dtype) -> torch.dtype:
        return self.fixed.get(i, dtype)

    def sample(self, i: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Input `i` of `shape` for the dtype under test `dtype`: uniform in its range (integers:
        the integers in it); a `nonzero` input gets magnitudes from 0.5 (integers: 1) up to the
        range's largest, either sign (uint8: positive)."""
        dtype = self.input_dtype(i, dtype)
        low, high = self.ranges.get(i, (self.low, self.high))
        if dtype == torch.bool:
            return torch.randint(0, 2, shape).bool()
        if dtype == torch.uint8:
            low = max(low, 0.0)
        if i in self.nonzero:
            small = 0.5 if dtype.is_floating_point else 1.0
            low, high = small, max(abs(low), abs(high), small)
        if dtype.is_floating_point:
            x = torch.rand(shape, dtype=torch.float64) * (high - low) + low
        else:
            x = torch.randint(math.ceil(low), math.floor(high) + 1, shape).double()
        if i in self.nonzero and dtype != torch.uint8:
            x = torch.where(torch.rand(shape) < 0.5, -x, x)
        return x.to(dtype)


DTYPE = object()  # a `Domain.attrs` value standing for the dtype under test


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


OPS: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in OPS:
        raise ValueError(f"op {opdef.name!r} registered twice")
    OPS[opdef.name] = opdef
    return opdef


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown IR op {name!r}; registered ops: {', '.join(sorted(OPS))}") from None


def check_arity(name: str, n: int) -> None:
    """Raise a TypeError naming the op when it does not take `n` inputs."""
    op = get_op(name)
    if not op.takes(n):
        want = op.arity if isinstance(op.arity, int) else (
            f"at least {op.arity[0]}" if op.arity[1] is None else f"{op.arity[0]} to {op.arity[1]}")
        raise TypeError(f"{name}: takes {want} input(s), got {n}")


def is_view(op: str) -> bool:
    """Is a node of `op` a view of its first input (no kernel, no data moved)?"""
    return get_op(op).view


def view_root(v):
    """The value whose storage `v` reads: `v` followed back through view ops to a graph input or the
    result of an op that is not a view."""
    while v.producer is not None and is_view(v.producer.op):
        v = v.producer.inputs[0]
    return v


def flops(node) -> int:
    """The flops a kernel spends on `node` (its entry's `cost`)."""
    return get_op(node.op).flops(node)


def primitive_aten_ops() -> set:
    """The aten overloads capture must not decompose: those of every primitive op's entry."""
    return {a for op in OPS.values() if op.primitive for a in op.aten}


# -- helpers for VJP rules (they only call `g.add`, so ir/registry imports nothing from graph) ------


def scalar(g, value, dtype):
    """A 0-dim `full` constant: how IR spells a scalar operand."""
    return g.add("full", [], shape=(), value=value, dtype=dtype)


def zeros(g, type):
    return g.add("full", [], shape=tuple(type.shape), value=0.0 if type.dtype.is_floating_point else 0,
                 dtype=type.dtype)


def unbroadcast(g, v, shape):
    """Sum `v` (of a broadcast shape) back down to `shape`: over the leading dims it added and the
    dims where `shape` has size 1, then reshape. The reverse of implicit broadcasting and `expand`."""
    shape = tuple(shape)
    if tuple(v.shape) == shape:
        return v
    lead = len(v.shape) - len(shape)
    dims = tuple(range(lead)) + tuple(lead + i for i, s in enumerate(shape) if s == 1 and v.shape[lead + i] != 1)
    if dims:
        # a half cotangent rounded from float32 terms (a half operand's VJP): sum the float32 terms, round
        # once, as torch's fused norm backward kernels accumulate weight gradients (rounding every term
        # first put instance_norm's bfloat16 weight gradient an ulp further from float64 than torch)
        src = v.producer
        if src is not None and src.op == "convert" and v.dtype in (torch.float16, torch.bfloat16) \
                and src.inputs[0].dtype == torch.float32:
            return g.add("convert", [unbroadcast(g, src.inputs[0], shape)], dtype=v.dtype)
        v = g.add("sum", [v], dims=dims, keepdim=False)
    if tuple(v.shape) != shape:
        v = g.add("reshape", [v], shape=shape)
    return v


def restore_reduced(g, v, in_shape, dims, keepdim):
    """Reshape a reduction's result (or its cotangent) to the keepdim shape, then expand it to the
    reduction's input shape `in_shape`: the broadcast a reduction's VJP starts from."""
    in_shape = tuple(in_shape)
    keep = tuple(1 if i in dims else s for i, s in enumerate(in_shape))
    if tuple(v.shape) != keep:
        v = g.add("reshape", [v], shape=keep)
    if keep != in_shape:
        v = g.add("expand", [v], shape=in_shape)
    return v
