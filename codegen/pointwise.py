"""Pointwise emitter: a *group* of pointwise nodes becomes one kernel over a flat iteration space.

Each program handles BLOCK linear indices of the group's iteration shape; indices are unraveled
into per-dim indices with sizes passed at run time, and every input and output is addressed through
runtime offset + strides (stride 0 broadcasts, negative strides serve flip). So one kernel source
serves any sizes, strides and broadcasting of the same ranks and dtypes. Groups may hold:
pointwise ops (their registry `triton` rule), `full` (inlined literal), `arange`, and `cat` (whose
inputs are loaded with shifted, masked indices). Fusion hands bigger groups to the same emitter.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import Node, Value, get_op
from ..ir.ops.half import load_cast, store_cast
from ..ir.types import compute_dtype
from .emitter import Emitter, bind_value, offset_expr, ptr_sig, py_literal, tl_compute, unravel
from .kernel import Kernel, make_kernel, render


@dataclass
class PointwiseGroup:
    nodes: list[Node]          # topological order
    inputs: list[Value]        # values loaded from memory
    outputs: list[Value]       # values stored; each has the full iteration shape
    shape: tuple[int, ...]     # iteration space
    label: list[str] | None = None  # IR op names reported for the kernel (defaults to the node ops)

    @property
    def ops(self) -> list[str]:
        return self.label or [n.op for n in self.nodes if not (n.op == "full" and n.out.type.rank == 0)]


def _cat_nodes(group: PointwiseGroup) -> list[Node]:
    return [n for n in group.nodes if n.op == "cat"]


def pointwise_params(group: PointwiseGroup) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for i, v in enumerate(group.inputs):
        params += [(f"in{i}_ptr", ptr_sig(v.dtype)), (f"in{i}_off", "int")]
        params += [(f"in{i}_st{d}", "int") for d in range(v.type.rank)]
    for j, v in enumerate(group.outputs):
        params += [(f"out{j}_ptr", ptr_sig(v.dtype)), (f"out{j}_off", "int")]
        params += [(f"out{j}_st{d}", "int") for d in range(len(group.shape))]
    params += [("numel", "int")] + [(f"s{d}", "int") for d in range(len(group.shape))]
    for c, node in enumerate(_cat_nodes(group)):
        params += [(f"cat{c}_lo{k}", "int") for k in range(len(node.inputs) + 1)]
    return params + [("BLOCK", "constexpr")]


def pointwise_args(group: PointwiseGroup, ins: list[tuple], outs: list[tuple]) -> list:
    """Runtime args in param order. `ins`/`outs`: (pointer object, offset, strides) per value."""
    args: list = []
    for v, (ptr, off, strides) in zip(group.inputs, ins):
        # Size-1 dims get stride 0, so broadcasting needs no special code in the kernel.
        args += [ptr, off] + [0 if s == 1 else st for s, st in zip(v.shape, strides)]
    for ptr, off, strides in outs:
        args += [ptr, off] + list(strides)
    numel = 1
    for s in group.shape:
        numel *= s
    args += [numel] + list(group.shape)
    for node in _cat_nodes(group):
        lo, dim = 0, node.attrs["dim"]
        for v in node.inputs:
            args.append(lo)
            lo += v.shape[dim]
        args.append(lo)
    return args


def emit_pointwise(group: PointwiseGroup, int64: bool = False) -> Kernel:
    """The kernel for `group`; `int64` selects 64-bit index math (huge tensors or offsets)."""
    rank = len(group.shape)
    e = Emitter()
    e.line("pid = tl.program_id(0)")
    start = "pid.to(tl.int64) * BLOCK" if int64 else "pid * BLOCK"
    e.line(f"lin = {start} + tl.arange(0, BLOCK)")
    e.line("mask = lin < numel")
    e.line("zero = lin * 0")
    idx = unravel(e, "lin", [f"s{d}" for d in range(rank)], "i")
    e.index = lambda k: idx[rank + k] if rank + k >= 0 else "zero"
    env: dict[Value, str] = {}
    cat_inputs = {v for n in _cat_nodes(group) for v in n.inputs}

    def dims_of(v: Value) -> list[str]:
        return idx[rank - v.type.rank:]

    def load(i: int, v: Value, index: list[str], mask: str) -> str:
        off = offset_expr(f"in{i}_off", index, [f"in{i}_st{d}" for d in range(v.type.rank)], "zero")
        x = e.tmp(f"tl.load(in{i}_ptr + ({off}), mask={mask}, other=0)", "x")
        if compute_dtype(v.dtype) != v.dtype:
            x = e.tmp(load_cast(e, x, v.dtype), "x")
        return x

    for i, v in enumerate(group.inputs):
        if v not in cat_inputs or any(v in n.inputs for n in group.nodes if n.op != "cat") or v in group.outputs:
            env[v] = load(i, v, dims_of(v), "mask")

    cat_count = 0
    for node in group.nodes:
        out = node.out
        if node.op == "full":
            # Block-shaped, not 0-dim: the interpreter cannot combine 0-dim booleans (`&`, `|`).
            env[out] = e.tmp(f"tl.full([BLOCK], {py_literal(node.attrs['value'], node.attrs['dtype'])}, "
                             f"{tl_compute(node.attrs['dtype'])})", "c")
            continue
        if node.op == "arange":
            a = node.attrs
            wide = "tl.float64" if a["dtype"].is_floating_point else "tl.int64"
            i_last = dims_of(out)[0] if out.shape[0] != 1 else "zero"
            expr = (f"{py_literal(a['start'], a['dtype'])} + {py_literal(a['step'], a['dtype'])} * "
                    f"{i_last}.to({wide})")
            env[out] = bind_value(e, expr, out.dtype)
            continue
        if node.op == "cat":
            env[out] = _emit_cat(e, group, node, cat_count, dims_of(out), load)
            cat_count += 1
            continue
        opdef = get_op(node.op)
        args = [env[v] for v in node.inputs]
        expr = opdef.triton(e, args, [v.dtype for v in node.inputs], out.dtype, **node.attrs)
        env[out] = bind_value(e, expr, out.dtype, node.op)

    for j, v in enumerate(group.outputs):
        off = offset_expr(f"out{j}_off", idx, [f"out{j}_st{d}" for d in range(rank)], "zero")
        e.line(f"tl.store(out{j}_ptr + ({off}), {store_cast(e, env[v], v.dtype)}, mask=mask)")

    params = pointwise_params(group)
    ops = group.ops
    prefix = "pw_" + "_".join(dict.fromkeys(ops))[:40] if ops else "pw"
    return make_kernel(prefix, render(params, e.text()), "pointwise", ops, params)


def _emit_cat(e: Emitter, group: PointwiseGroup, node: Node, c: int, index: list[str], load) -> str:
    """Each input covers [lo_k, lo_k+1) of the cat dim: load it there (masked) and select."""
    d = node.attrs["dim"]
    val = None
    for k, v in enumerate(node.inputs):
        i = group.inputs.index(v)
        m = e.tmp(f"mask & ({index[d]} >= cat{c}_lo{k}) & ({index[d]} < cat{c}_lo{k + 1})", "m")
        shifted = list(index)
        shifted[d] = e.tmp(f"{index[d]} - cat{c}_lo{k}", "i")
        x = load(i, v, shifted, m)
        val = x if val is None else e.tmp(f"tl.where({m}, {x}, {val})", "v")
    return val
