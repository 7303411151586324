"""Pointwise emitter: a *group* of pointwise nodes becomes one kernel over a flat iteration space.

Each program handles BLOCK linear indices of the group's iteration shape; indices are unraveled
into per-dim indices with sizes passed at run time, and every input and output is addressed through
runtime offset + strides (stride 0 broadcasts, negative strides serve flip). So one kernel source
serves any sizes, strides and broadcasting of the same ranks and dtypes. Each node is emitted by its
registry entry: its `triton` rule (pointwise ops, `arange`), or, for generator ops, its `emit` hook
(`full`: a literal block; `cat`: its inputs loaded at shifted, masked indices; the gathers: the table
loaded at the indices, ir/ops/index.py), which gets a `_Context` and the runtime ints its `emit_args`
lists (cat's bounds) as extra kernel parameters; a group with a checking hook (`emit_checks`) also
takes an error flag pointer (`err_ptr`, see `checked`).
Fusion hands bigger groups to the same emitter.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import Node, Value, get_op
from ..ir.kernel_group import pow2
from ..ir.ops.half import load_cast, store_cast
from ..ir.types import compute_dtype
from .emitter import HOST_SIGS, Emitter, bind_value, host_scalar, interp_params, offset_expr, ptr_sig, unravel
from .kernel import Kernel, make_kernel, render
from .launch import LaunchConfig, cdiv, interpreted


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


def _arg_nodes(group: PointwiseGroup) -> list[Node]:
    """Nodes whose emit hook reads runtime ints (`OpDef.emit_args`), in group order."""
    return [n for n in group.nodes if get_op(n.op).emit_args is not None]


def checked(group: PointwiseGroup) -> bool:
    """Does the kernel take an error flag (`err_ptr`, an int32 the planner zeroes)? When an emit hook
    may raise it (`OpDef.emit_checks`: a gather's index out of range)."""
    return any(get_op(n.op).emit_checks for n in group.nodes)


def _arg_names(c: int, count: int) -> list[str]:
    return [f"g{c}_arg{k}" for k in range(count)]


def hostable(group: PointwiseGroup) -> frozenset[int]:
    """Inputs that may be host scalars (`emit_pointwise`'s `host`): those of a host scalar dtype the
    kernel loads itself (an emit hook loads its inputs at indices of its own)."""
    hooked = [n for n in group.nodes if get_op(n.op).emit is not None]
    return frozenset(i for i, v in enumerate(group.inputs)
                     if v.dtype in HOST_SIGS and not any(v in n.inputs for n in hooked))


def pointwise_params(group: PointwiseGroup, host: frozenset[int] = frozenset()) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for i, v in enumerate(group.inputs):
        if i in host:
            params.append((f"in{i}_val", HOST_SIGS[v.dtype]))
            continue
        params += [(f"in{i}_ptr", ptr_sig(v.dtype)), (f"in{i}_off", "int")]
        params += [(f"in{i}_st{d}", "int") for d in range(v.type.rank)]
    for j, v in enumerate(group.outputs):
        params += [(f"out{j}_ptr", ptr_sig(v.dtype)), (f"out{j}_off", "int")]
        params += [(f"out{j}_st{d}", "int") for d in range(len(group.shape))]
    params += [("numel", "int")] + [(f"s{d}", "int") for d in range(len(group.shape))]
    if checked(group):
        params.append(("err_ptr", "*i32"))
    for c, node in enumerate(_arg_nodes(group)):
        params += [(name, "int") for name in _arg_names(c, len(get_op(node.op).emit_args(node)))]
    return params + [("BLOCK", "constexpr")]


def pointwise_args(group: PointwiseGroup, ins: list[tuple], outs: list[tuple], flag=None,
                   host: frozenset[int] = frozenset()) -> list:
    """Runtime args in param order. `ins`/`outs`: (pointer object, offset, strides) per value (a host
    input's "pointer" is its value's placeholder); `flag`: the error flag's pointer object when the
    group is `checked`."""
    args: list = []
    for i, (v, (ptr, off, strides)) in enumerate(zip(group.inputs, ins)):
        if i in host:
            args.append(ptr)
            continue
        # Size-1 dims get stride 0, so broadcasting needs no special code in the kernel.
        args += [ptr, off] + [0 if s == 1 else st for s, st in zip(v.shape, strides)]
    for ptr, off, strides in outs:
        args += [ptr, off] + list(strides)
    numel = 1
    for s in group.shape:
        numel *= s
    args += [numel] + list(group.shape)
    if checked(group):
        if flag is None:
            raise ValueError("pointwise_args: this kernel checks its indices and needs an error flag")
        args.append(flag)
    for node in _arg_nodes(group):
        args += get_op(node.op).emit_args(node)
    return args


class _Context:
    """What an `emit` hook may use (ir/opdef.py's module doc)."""

    block = "[BLOCK]"
    mask = "mask"
    zero = "zero"  # a block of zeros of the index width (int64 in the wide variant)

    def __init__(self, e: Emitter, group: PointwiseGroup, idx: list[str], load) -> None:
        self.e, self.group, self.idx, self._load = e, group, idx, load
        self._args = {n: _arg_names(c, len(get_op(n.op).emit_args(n))) for c, n in enumerate(_arg_nodes(group))}

    def dims(self, v: Value) -> list[str]:
        return self.idx[len(self.idx) - v.type.rank:]

    def load(self, v: Value, index: list[str], mask: str) -> str:
        return self._load(self.group.inputs.index(v), v, index, mask)

    def args(self, node: Node) -> list[str]:
        return self._args[node]

    def bind(self, expr: str, dtype) -> str:
        return bind_value(self.e, expr, dtype)

    def check(self, bad: str, code: int = 1) -> None:
        """Raise the error flag to `code` (ir/ops/index.py `INDEX_ERRORS`) where `bad` (a block of
        booleans) holds; the executor raises after the run. Lanes may race to store: any code wins."""
        self.e.line(f"tl.store(err_ptr + zero, (zero + {code}).to(tl.int32), mask={bad})")


def emit_pointwise(group: PointwiseGroup, int64: bool = False, host: frozenset[int] = frozenset()) -> Kernel:
    """The kernel for `group`; `int64` selects 64-bit index math (huge tensors or offsets); `host`: the
    inputs passed by value (host scalars, codegen/emitter.py; a subset of `hostable(group)`)."""
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

    def load(i: int, v: Value, index: list[str], mask: str) -> str:
        if i in host:
            return e.tmp(f"tl.broadcast_to({host_scalar(f'in{i}_val', v.dtype)}, [BLOCK])", "x")
        off = offset_expr(f"in{i}_off", index, [f"in{i}_st{d}" for d in range(v.type.rank)], "zero")
        x = e.tmp(f"tl.load(in{i}_ptr + ({off}), mask={mask}, other=0)", "x")
        if compute_dtype(v.dtype) != v.dtype:
            x = e.tmp(load_cast(e, x, v.dtype), "x")
        return x

    ctx = _Context(e, group, idx, load)
    e.check = lambda bad, code=1: ctx.check(f"mask & ({bad})", code)
    # Inputs read only by emit hooks are theirs to load (cat loads each at its own offset).
    hooked = [n for n in group.nodes if get_op(n.op).emit is not None]
    for i, v in enumerate(group.inputs):
        if v in group.outputs or any(v in n.inputs for n in group.nodes if n not in hooked) \
                or not any(v in n.inputs for n in hooked):
            env[v] = load(i, v, ctx.dims(v), "mask")

    for node in group.nodes:
        opdef = get_op(node.op)
        if opdef.emit is not None:
            env[node.out] = opdef.emit(ctx, node)
            continue
        args = [env[v] for v in node.inputs]
        expr = opdef.triton(e, args, [v.dtype for v in node.inputs], node.out.dtype, **node.attrs)
        env[node.out] = bind_value(e, expr, node.out.dtype, node.op)

    for j, v in enumerate(group.outputs):
        off = offset_expr(f"out{j}_off", idx, [f"out{j}_st{d}" for d in range(rank)], "zero")
        e.line(f"tl.store(out{j}_ptr + ({off}), {store_cast(e, env[v], v.dtype)}, mask=mask)")

    params = pointwise_params(group, host) + interp_params(e.text())
    ops = group.ops
    prefix = "pw_" + "_".join(dict.fromkeys(ops))[:40] if ops else "pw"
    return make_kernel(prefix, render(params, e.text()), "pointwise", ops, params)


def launch_config(numel: int, target: str) -> LaunchConfig:
    """One program per BLOCK elements of the iteration space. The interpreter pays about a millisecond
    per program instance and vectorizes each one with numpy: blocks of up to 65536 elements (a CNN
    training step ran 1.6x faster with 16384 than with 4096, and 7% faster again with 65536; 131072
    was slower: numpy's temporaries leave the cache)."""
    block = min(max(pow2(numel), 16), 65536 if interpreted(target) else 1024)
    return LaunchConfig((cdiv(numel, block),), {"BLOCK": block})
