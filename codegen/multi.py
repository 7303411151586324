"""Multi-tensor kernels: one launch runs the same pointwise nodes over several members (a "multi"
group, passes/horizontal.py: the per-parameter updates of an optimizer step).

The members' programs are laid end to end: member k owns programs [start_k, start_k + cdiv(numel_k,
BLOCK)). A program finds its member by comparing its id with the starts (runtime ints: the table of
program offsets, fixed at plan time) and selects that member's pointers and size with `tl.where`
(selects, not branches: an int argument equal to 1 is a constexpr under Triton's JIT, which an
`if` could not merge with an int). It then handles one block of the member's elements in flattened
order: every full-shape value must be laid out contiguously (`addressable`; the planner runs the
other members as ordinary pointwise kernels), and single-element inputs (hyperparameters) are
loaded once per program, not per element. An input that every member reads from one buffer (the
optimizer's `hp` tensor on the device) is passed as one pointer with a per-member offset; one held
on the host (`host`: the optimizer's hyperparameters, codegen/emitter.py host scalars) as a value
per member, selected like the pointers.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..ir import Value, get_op
from ..ir.kernel_group import pow2
from ..ir.ops.half import load_cast, store_cast
from ..ir.types import compute_dtype
from .emitter import HOST_SIGS, BlockContext, Emitter, bind_value, host_scalar, interp_params, ptr_sig
from .kernel import Kernel, make_kernel, render
from .launch import LaunchConfig, cdiv, interpreted
from .pointwise import PointwiseGroup

# Runtime parameters of one launch at most (pointers and ints, 8 bytes each: 8 KB of kernel
# parameters; CUDA 12.1+ allows 32 KB). More members are split over several launches.
MAX_PARAMS = 1024


def _contiguous(shape: tuple[int, ...], strides: Sequence[int]) -> bool:
    expected = 1
    for n, st in zip(reversed(shape), reversed(tuple(strides))):
        if n != 1 and st != expected:
            return False
        expected *= n
    return True


def addressable(group: PointwiseGroup, in_strides: Sequence[Sequence[int]], out_strides: Sequence[Sequence[int]],
                ) -> bool:
    """Whether the multi-tensor kernel can run member `group` with these layouts: each full-shape
    value row-major contiguous (element i of the member at offset + i), single elements anywhere."""
    values = list(zip(group.inputs, in_strides)) + list(zip(group.outputs, out_strides))
    return all(_scalar(group, v) or _contiguous(v.shape, st) for v, st in values)


def _scalar(group: PointwiseGroup, v: Value) -> bool:
    """A single-element input broadcast over the member (a member of one element reads its own
    one-element values as full ones, so it shares the kernel of bigger members)."""
    return v.shape != group.shape


def multi_params(template: PointwiseGroup, count: int, shared: Sequence[bool],
                 host: Sequence[bool] | None = None) -> list[tuple[str, str]]:
    host = host or [False] * len(template.inputs)
    params = [(f"in{i}_ptr", ptr_sig(v.dtype)) for i, v in enumerate(template.inputs) if shared[i] and not host[i]]
    for k in range(count):
        for i, v in enumerate(template.inputs):
            if host[i]:
                params.append((f"m{k}_in{i}_val", HOST_SIGS[v.dtype]))
                continue
            params += ([] if shared[i] else [(f"m{k}_in{i}_ptr", ptr_sig(v.dtype))]) + [(f"m{k}_in{i}_off", "int")]
        for j, v in enumerate(template.outputs):
            params += [(f"m{k}_out{j}_ptr", ptr_sig(v.dtype)), (f"m{k}_out{j}_off", "int")]
        params += [(f"m{k}_numel", "int")] + ([(f"m{k}_start", "int")] if k else [])
    return params + [("BLOCK", "constexpr")]


def params_per_member(template: PointwiseGroup, shared: Sequence[bool], host: Sequence[bool] | None = None) -> int:
    return len(multi_params(template, 2, shared, host)) - len(multi_params(template, 1, shared, host))


def emit_multi(template: PointwiseGroup, count: int, shared: Sequence[bool],
               host: Sequence[bool] | None = None) -> Kernel:
    """The kernel running `template`'s nodes over `count` members; `shared[i]`: input i is one buffer
    for all members (one pointer parameter, an offset per member); `host[i]`: input i is a host
    scalar in every member (a value parameter per member)."""
    host = host or [False] * len(template.inputs)
    e = Emitter()
    e.line("pid = tl.program_id(0)")
    ins = [f"in{i}" for i in range(len(template.inputs))]
    outs = [f"out{j}" for j in range(len(template.outputs))]

    def member(k: int) -> dict[str, str]:
        sel = {"start": f"m{k}_start" if k else "0", "numel": f"m{k}_numel"}
        for i, (name, v) in enumerate(zip(ins, template.inputs)):
            sel[name] = (host_scalar(f"m{k}_in{i}_val", v.dtype) if host[i] else
                         f"m{k}_in{i}_off" if shared[i] else f"m{k}_in{i}_ptr + m{k}_in{i}_off")
        for j, name in enumerate(outs):
            sel[name] = f"m{k}_out{j}_ptr + m{k}_out{j}_off"
        return sel

    for name, expr in member(0).items():
        e.line(f"{name} = {expr}")
    for k in range(1, count):
        e.line(f"sel = pid >= m{k}_start")
        for name, expr in member(k).items():
            e.line(f"{name} = tl.where(sel, {expr}, {name})")
    for i, name in enumerate(ins):
        if shared[i] and not host[i]:
            e.line(f"{name} = in{i}_ptr + {name}")
    e.line("lin = (pid - start) * BLOCK + tl.arange(0, BLOCK)")
    e.line("mask = lin < numel")

    env: dict[Value, str] = {}
    for i, v in enumerate(template.inputs):
        x = e.tmp(f"tl.broadcast_to({ins[i]}, [BLOCK])" if host[i] else
                  f"tl.broadcast_to(tl.load({ins[i]}), [BLOCK])" if _scalar(template, v)
                  else f"tl.load({ins[i]} + lin, mask=mask, other=0)", "x")
        env[v] = e.tmp(load_cast(e, x, v.dtype), "x") if compute_dtype(v.dtype) != v.dtype else x
    ctx = BlockContext(e, "[BLOCK]")
    for node in template.nodes:
        opdef = get_op(node.op)
        if opdef.emit is not None:  # `full` (a literal block): its hook needs only the emitter and block
            env[node.out] = opdef.emit(ctx, node)
            continue
        args = [env[v] for v in node.inputs]
        expr = opdef.triton(e, args, [v.dtype for v in node.inputs], node.out.dtype, **node.attrs)
        env[node.out] = bind_value(e, expr, node.out.dtype, node.op)
    for j, v in enumerate(template.outputs):
        e.line(f"tl.store({outs[j]} + lin, {store_cast(e, env[v], v.dtype)}, mask=mask)")

    params = multi_params(template, count, shared, host) + interp_params(e.text())
    ops = template.ops
    prefix = "mt_" + "_".join(dict.fromkeys(ops))[:40] if ops else "mt"
    return make_kernel(prefix, render(params, e.text()), "multi", ops, params)


def multi_args(template: PointwiseGroup, members: Sequence[tuple[list[tuple], list[tuple], int]],
               shared: Sequence[bool], block: int, host: Sequence[bool] | None = None) -> tuple[list, int]:
    """(runtime args in param order, programs in the grid). `members`: per member (inputs as
    (pointer object, offset): a host input's pointer object is its value's placeholder, outputs as
    (pointer object, offset), numel)."""
    host = host or [False] * len(template.inputs)
    args: list = [members[0][0][i][0] for i in range(len(template.inputs)) if shared[i] and not host[i]]
    start = 0
    for k, (ins, outs, numel) in enumerate(members):
        for i, (ptr, off) in enumerate(ins):
            args += [ptr] if host[i] else ([] if shared[i] else [ptr]) + [off]
        for ptr, off in outs:
            args += [ptr, off]
        args += [numel] + ([start] if k else [])
        start += cdiv(numel, block)
    return args, start


def launch_config(numels: Sequence[int], target: str) -> LaunchConfig:
    """One block size for all members (the largest member's pointwise block, up to 2048 on a GPU: a
    program also pays for selecting its member, so it handles more elements than a plain pointwise
    program); one program per block of each member."""
    block = min(max(pow2(max(numels)), 16), 16384 if interpreted(target) else 2048)
    return LaunchConfig((sum(cdiv(n, block) for n in numels),), {"BLOCK": block})


def chunks(count: int, per_member: int, shared: int) -> list[range]:
    """Members [0, count) split into launches of at most `MAX_PARAMS` runtime parameters: `shared`
    pointers, then `per_member` per member (the first has no start)."""
    size = max(1, (MAX_PARAMS - shared + 1) // max(per_member, 1))
    return [range(i, min(i + size, count)) for i in range(0, count, size)]


__all__ = ["addressable", "emit_multi", "multi_args", "launch_config", "chunks", "params_per_member",
           "MAX_PARAMS"]
