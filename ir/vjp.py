"""Reverse-mode rules: the contract of `OpDef.vjp`, and the helpers the rules in `ops/*.py` share.

One rule per differentiable op, in the op's entry::

    vjp(g: Graph, inputs: list[Value], out: Value, ct: Value, **attrs) -> list[Value | None]

`inputs` and `out` are the node's values inside `g`, `ct` the cotangent of `out` (same type). The
rule appends IR nodes to `g` (`g.add(op, inputs, **attrs)`) and returns one cotangent per input, of
exactly that input's type, or None for "zero / not differentiable" (an integer input, the condition
of `where`, an op with zero derivative such as `floor`). Rules may build cotangents for inputs that do
not need one; `passes.autodiff` removes them with DCE. A node with several outputs (`extern`) gets
`out` and `ct` as lists, `ct[k]` None where no cotangent reaches output k; an entry with `vjp_needs`
also gets `needs` (per input: does it need a cotangent), for rules whose work DCE cannot prune
(`extern` asks torch for those gradients only). An op whose entry has `vjp=None` is never reached by
a float cotangent (comparisons, integer ops, constants): autodiff raises an error naming it.

The helpers below (`scalar`, `zeros`, `unbroadcast`, `restore_reduced`) only call `g.add`, so this
module imports nothing from graph.
"""

from __future__ import annotations

import torch


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
