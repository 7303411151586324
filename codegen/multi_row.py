"""Multi-row kernels: one launch runs several independent small row groups (a "multi" group of row
members, passes/horizontal.py: in a training step, each vector parameter's update fused with the row
sum of its gradient), each member with its own row kernel body (codegen/row.py).

Member k owns programs [first_k, first_k + programs_k) of the grid. A program compares its id with the
members' first programs (runtime ints `first1..`) and branches to its member's body: the row kernel's
own source, inlined, with every parameter and local renamed `m{k}_...` and its program id made
relative to the member's first program. Unique names matter: Triton merges a name assigned in both
branches of an `if` and requires one type, while the members' tiles differ ([BM] of each member's
BM). Each member keeps its own tile sizes (constexprs `m{k}_BM`, `m{k}_BR`) and index width. Members
that may raise the index error flag (`row_checked`) share the kernel's one `err_ptr`.

Inlined rather than called as per-member jit functions: Triton's interpreter (which runs the kernels
of CPU tensors here) cannot call a jit function from a kernel module loaded without TRITON_INTERPRET.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

from .emitter import INTERP
from .kernel import Kernel, make_kernel, render
from .launch import LaunchConfig, cdiv
from .row import RowLayout, row_source

# Runtime parameters of one launch at most (codegen/multi.py's bound); more members: more launches.
MAX_PARAMS = 1024
FLAG = "err_ptr"  # the row kernels' error flag parameter: one for all members


class _Rename(ast.NodeTransformer):
    def __init__(self, names: set[str], prefix: str):
        self.names, self.prefix = names, prefix

    def visit_Name(self, node: ast.Name) -> ast.Name:
        if node.id in self.names:
            node.id = self.prefix + node.id
        return node


def _member(source: str, k: int) -> tuple[list[ast.stmt], dict[str, str]]:
    """(statements of member k's body, renamed; the module's other functions by name: scan combines)."""
    module = ast.parse(source)
    fns = [n for n in module.body if isinstance(n, ast.FunctionDef)]
    (kernel,) = [f for f in fns if f.name == "KERNEL"]
    helpers = {f.name: ast.unparse(f) for f in fns if f is not kernel}
    local = {a.arg for a in kernel.args.args} | {n.id for n in ast.walk(kernel)
                                                 if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    local -= {FLAG, INTERP}  # shared by the members: one error flag, one interpreter switch
    # the emitter's `pid = tl.program_id(0)` (codegen/emitter.py emit_rows): the member's own program id
    (pid,) = [s for s in kernel.body if isinstance(s, ast.Assign) and ast.unparse(s) == "pid = tl.program_id(0)"]
    pid.value = ast.parse(f"pid - first{k}" if k else "pid", mode="eval").body
    body = []
    for stmt in kernel.body:
        if stmt is pid:
            stmt.targets = [_Rename(local, f"m{k}_").visit(t) for t in stmt.targets]  # keep the outer pid
            body.append(stmt)
        else:
            body.append(_Rename(local, f"m{k}_").visit(stmt))
    return body, helpers


def multi_row_params(params: Sequence[Sequence[tuple[str, str]]]) -> list[tuple[str, str]]:
    """The kernel's parameters: per member its row parameters renamed (runtime ones, then `first{k}`
    past the first member), the shared error flag, then every member's constexprs (INTERP once)."""
    out: list[tuple[str, str]] = []
    for k, ps in enumerate(params):
        out += [(f"m{k}_{n}", t) for n, t in ps if t != "constexpr" and n != FLAG]
        out += [(f"first{k}", "int")] if k else []
    if any(n == FLAG for ps in params for n, _ in ps):
        out.append((FLAG, "*i32"))
    out += [(f"m{k}_{n}", t) for k, ps in enumerate(params) for n, t in ps if t == "constexpr" and n != INTERP]
    return out + ([(INTERP, "constexpr")] if any(n == INTERP for ps in params for n, _ in ps) else [])


def runtime_params(params: Sequence[tuple[str, str]]) -> int:
    """Runtime parameters one member adds to a launch (its own, less the shared flag, plus `first`)."""
    return sum(t != "constexpr" and n != FLAG for n, t in params) + 1


def emit_multi_row(members: Sequence[tuple[RowLayout, bool, bool]]) -> Kernel:
    """The kernel running `members` ((layout, looped, int64) each: `emit_row`'s arguments), member k
    on programs [first_k, first_(k+1))."""
    sources = [row_source(*m) for m in members]
    helpers: dict[str, str] = {}
    branches = []
    for k, (source, _) in enumerate(sources):
        body, defs = _member(source, k)
        helpers.update(defs)
        branches.append(body)
    # if pid < first1: member 0 / elif pid < first2: member 1 / ... / else: the last member
    tree: list[ast.stmt] = branches[-1]
    for k in range(len(branches) - 2, -1, -1):
        tree = [ast.If(ast.parse(f"pid < first{k + 1}", mode="eval").body, branches[k], tree)]
    text = ast.unparse(ast.fix_missing_locations(ast.Module([ast.parse("pid = tl.program_id(0)").body[0], *tree], [])))
    params = multi_row_params([p for _, p in sources])
    source = render(params, "\n".join("    " + line for line in text.splitlines()))
    if helpers:  # scan combine functions (codegen/scan.py with_combines), once each
        head = "\n\n\n@triton.jit\ndef KERNEL("
        source = source.replace(head, "\n\n\n" + "\n\n\n".join(helpers.values()) + head, 1)
    ops = list(dict.fromkeys(op for layout, _, _ in members for op in layout.group.ops))
    return make_kernel("mr_" + "_".join(ops)[:40], source, "multi", ops, params)


def multi_row_args(params: Sequence[Sequence[tuple[str, str]]], args: Sequence[list], programs: Sequence[int],
                   flag) -> tuple[list, int]:
    """(runtime args in `multi_row_params` order, programs in the grid). Per member: its row params,
    the args of its row kernel launch (`err_ptr` among them: dropped, `flag` is passed once) and its
    programs."""
    out: list = []
    first = 0
    for k, (ps, xs, n) in enumerate(zip(params, args, programs)):
        runtime = [p for p in ps if p[1] != "constexpr"]
        assert len(runtime) == len(xs), (runtime, xs)
        out += [x for (name, _), x in zip(runtime, xs) if name != FLAG] + ([first] if k else [])
        first += n
    if any(n == FLAG for ps in params for n, _ in ps):
        out.append(flag)
    return out, first


def launch_config(configs: Sequence[LaunchConfig]) -> LaunchConfig:
    """The members' row configs side by side: their programs end to end, their tiles as `m{k}_BM`,
    `m{k}_BR`, and the most warps any member takes (a member's tile spread over more threads; the
    members are small, so few programs run anyway)."""
    return LaunchConfig((sum(c.grid[0] for c in configs),),
                        {f"m{k}_{n}": v for k, c in enumerate(configs) for n, v in c.constexprs.items()},
                        max(c.num_warps for c in configs))


def member_config(config: LaunchConfig, k: int, rows: int) -> LaunchConfig:
    """Member k's own row config within `config` (a multi-row one), for `rows` rows."""
    bm, br = config.constexprs[f"m{k}_BM"], config.constexprs[f"m{k}_BR"]
    return LaunchConfig((cdiv(rows, bm),), {"BM": bm, "BR": br}, config.num_warps)


def chunks(sizes: Sequence[int]) -> list[range]:
    """Members (runtime params each: `runtime_params`) split in order into launches of at most
    `MAX_PARAMS` runtime parameters (one flag pointer aside)."""
    out, start, total = [], 0, 0
    for k, n in enumerate(sizes):
        if k > start and total + n > MAX_PARAMS - 1:
            out.append(range(start, k))
            start, total = k, 0
        total += n
    return out + [range(start, len(sizes))] if sizes else out


__all__ = ["emit_multi_row", "multi_row_args", "multi_row_params", "launch_config", "member_config", "chunks",
           "runtime_params", "MAX_PARAMS"]
