"""The op registry: one `OpDef` per primitive, holding every rule for it side by side.

An entry carries its kind, its type rule (`infer`), its reference implementation in torch (`impl`),
its reverse-mode derivative in IR ops (`vjp`) and, depending on kind, its Triton expression (`triton`,
pointwise ops) or its decomposition into other IR ops (`decompose`, composite ops lowered before
codegen). A later issue adds `cost` to the same entry, so adding an op stays one entry in one place.

VJP rules (JAX style, one per differentiable op, in the op's entry)::

    vjp(g: Graph, inputs: list[Value], out: Value, ct: Value, **attrs) -> list[Value | None]

`inputs` and `out` are the node's values inside `g`, `ct` the cotangent of `out` (same type). The
rule appends IR nodes to `g` (`g.add(op, inputs, **attrs)`) and returns one cotangent per input, of
exactly that input's type, or None for "zero / not differentiable" (an integer input, the condition
of `where`, an op with zero derivative such as `floor`). Rules may build cotangents for inputs that do
not need one; `passes.autodiff` removes them with DCE. An op whose entry has `vjp=None` is either
never reached by a float cotangent (comparisons, integer ops, constants) or cannot be differentiated
(`extern`): autodiff raises an error naming it. The helpers below (`scalar`, `zeros`,
`unbroadcast`, `restore_reduced`) are shared by the rules in `ops/*.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KINDS = ("pointwise", "reduction", "matmul", "layout", "constant", "composite", "extern")


@dataclass
class OpDef:
    name: str
    kind: str
    # infer(in_types, **attrs) -> TensorType | list[TensorType]
    infer: Callable[..., Any]
    # impl(*tensors, **attrs) -> torch.Tensor | tuple: the reference semantics, in torch.
    impl: Callable[..., Any]
    # pointwise: triton(args: list[str], dtypes: list[dtype], out: dtype, **attrs) -> expression text
    triton: Callable[..., str] | None = None
    # composite: decompose(graph, inputs, **attrs) -> Value, appending primitive nodes to `graph`
    decompose: Callable[..., Any] | None = None
    # vjp(graph, inputs, out, cotangent, **attrs) -> list[Value | None]: see the module docstring.
    vjp: Callable[..., list] | None = None
    # reduction: the combine used by the reduction emitter ("sum", "prod", "max", "min", "argmax", ...)
    combine: str | None = None
    # The inputs whose gradient dependence the output carries (None: all). `passes.autodiff`'s activity
    # analysis stops elsewhere: nothing downstream of `stop_gradient` is differentiated, so an op with
    # no VJP there (an extern) is not an error.
    active_inputs: tuple[int, ...] | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"op {self.name}: unknown kind {self.kind!r}")


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
