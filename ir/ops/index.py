"""Gathering ops: `index_select`, `gather` and `index` (advanced indexing) read their first input, the
table, at positions that other inputs, the integer indices, hold.

- `index_select(x, index) {dim}` is `torch.index_select(x, dim, index)` (a 1-D index);
- `gather(x, index) {dim}` is `torch.gather(x, dim, index)` (an index of x's rank, the output's shape);
- `index(x, i_0, ..., i_{k-1}) {dim, wrap}` is `x[:, ..., :, i_0, ..., i_{k-1}]` with the k indices of
  one shape S indexing dims dim..dim+k-1 (numpy's `take` when k == 1): the result's shape is
  `x.shape[:dim] + S + x.shape[dim+k:]`. `wrap`: negative indices count from the end, as
  `aten.index.Tensor` does; without it they are out of range (embedding).

They are generator ops of the pointwise emitter (`emit` hooks, like `cat`): a kernel loads the indices
at the output element, then the table there, so a gather joins the pointwise groups around it (an
embedding, plus its positional embedding, scaled, is one kernel). Fusion keeps every input of a
gather a group input (`GATHER_OPS`, passes/fusion.py): the hook loads them from memory, a value the
group computes exists only at the group's own element. An index out of range (or negative where not
wrapped) is never read: its load is masked and the hook raises the kernel's error flag
(`ctx.check`), which the executor turns into eager's IndexError after the run.

VJPs add the cotangent back at the indices: `index_add` into zeros for `index_select` (and for `index`,
through the linear position over its indexed dims), `scatter_add` for `gather` (ir/ops/scatter.py).
Indices get no cotangent.
"""

from __future__ import annotations

import math

import torch

from ..registry import ALL, Domain, OpDef, register, zeros
from ..types import TensorType
from . import onnx_rules

GATHER_OPS = frozenset({"index_select", "gather", "index", "searchsorted"})  # searchsorted: ir/ops/search.py

# What an index out of range raises, as eager does, by the code a kernel stores in its error flag
# (runtime/executor.py reads the flags): `gather` raises RuntimeError, the others IndexError.
INDEX_ERRORS: dict[int, tuple[type[Exception], str]] = {
    1: (IndexError, "index out of range in self"),
    2: (RuntimeError, "gather: index out of bounds for the gathered dimension"),
    # A one-hot gather (lower_reduction.py) of cross-entropy's target (eager: IndexError); a user's
    # one-per-row torch.gather raises code 2 (eager: RuntimeError).
    3: (IndexError, "index out of range: a target (nll_loss, cross_entropy) or one-per-row gather index"),
    4: (RuntimeError, "index out of range: INDICES element is out of DATA bounds"),  # index_select, dim > 0
}
ERROR_CODES = {"index": 1, "gather": 2, "target": 3, "index_select": 4}
INDEX_DTYPES = (torch.int64, torch.int32)


def _check_index(op: str, t: TensorType) -> None:
    if t.dtype not in INDEX_DTYPES:
        raise TypeError(f"{op}: indices must be int64 or int32, got {t}")


def _index_select_infer(types: list[TensorType], dim) -> TensorType:
    x, index = types
    _check_index("index_select", index)
    if index.rank != 1 or not 0 <= dim < x.rank:
        raise ValueError(f"index_select: needs a 1-D index and 0 <= dim < rank, got {x}, {index}, dim={dim}")
    return TensorType(x.shape[:dim] + index.shape + x.shape[dim + 1:], x.dtype)


def _gather_infer(types: list[TensorType], dim) -> TensorType:
    x, index = types
    _check_index("gather", index)
    if index.rank != x.rank or not 0 <= dim < x.rank or any(
            i > s for d, (i, s) in enumerate(zip(index.shape, x.shape)) if d != dim):
        raise ValueError(f"gather: index {index} does not fit {x} along dims other than {dim}")
    return TensorType(index.shape, x.dtype)


def _index_infer(types: list[TensorType], dim, wrap) -> TensorType:
    x, *idx = types
    for t in idx:
        _check_index("index", t)
    if not idx or any(t != idx[0] for t in idx) or not 0 <= dim <= x.rank - len(idx):
        raise ValueError(f"index: {len(idx)} indices of one type indexing {x} from dim {dim}, got {idx}")
    return TensorType(x.shape[:dim] + idx[0].shape + x.shape[dim + len(idx):], x.dtype)


def _check_index_type(t: TensorType) -> TensorType:
    _check_index("check_index", t)
    return t


def _in_range(index: torch.Tensor, size: int) -> None:
    if index.numel() and (bool((index < 0).any()) or bool((index >= size).any())):
        raise IndexError("index out of range in self")


def _index_impl(x: torch.Tensor, *idx: torch.Tensor, dim, wrap) -> torch.Tensor:
    idx = tuple(i.long() for i in idx)
    if wrap:
        idx = tuple(torch.where(i < 0, i + x.shape[dim + k], i) for k, i in enumerate(idx))
    for k, i in enumerate(idx):
        _in_range(i, x.shape[dim + k])
    return x[(slice(None),) * dim + idx]


# -- emit hooks (codegen/pointwise.py's `_Context`) ------------------------------------------------------


def _checked(ctx, i: str, size: str, wrap: bool = False, code: int = 1) -> tuple[str, str]:
    """(the index `i` where in range else 0, in-range lanes); out-of-range lanes raise the kernel's
    error flag and are never loaded."""
    e = ctx.e
    if wrap:
        i = e.tmp(f"tl.where({i} < 0, {i} + {size}, {i})", "i")
    ok = e.tmp(f"({i} >= 0) & ({i} < {size})", "ok")
    ctx.check(f"{ctx.mask} & ~{ok}", code)
    # (+ zero: an int32 index widens to the kernel's index width, so i * stride cannot overflow)
    return e.tmp(f"tl.where({ok}, {i}, 0) + {ctx.zero}", "i"), e.tmp(f"{ctx.mask} & {ok}", "m")


def _index_select_emit(ctx, node) -> str:
    x, index = node.inputs
    d = node.attrs["dim"]
    pos = list(ctx.dims(node.out))
    code = ERROR_CODES["index" if d == 0 else "index_select"]  # eager's error differs by dim
    i, m = _checked(ctx, ctx.load(index, [pos[d]], ctx.mask), ctx.args(node)[0], code=code)
    pos[d] = i
    return ctx.load(x, pos, m)


def _gather_emit(ctx, node) -> str:
    x, index = node.inputs
    d = node.attrs["dim"]
    pos = list(ctx.dims(node.out))
    i, m = _checked(ctx, ctx.load(index, pos, ctx.mask), ctx.args(node)[0], code=ERROR_CODES["gather"])
    pos[d] = i
    return ctx.load(x, pos, m)


def _index_emit(ctx, node) -> str:
    x, *idx = node.inputs
    d, wrap = node.attrs["dim"], node.attrs["wrap"]
    out = ctx.dims(node.out)
    s = idx[0].type.rank
    at, m = [], None
    for k, v in enumerate(idx):
        i, ok = _checked(ctx, ctx.load(v, out[d:d + s], ctx.mask), ctx.args(node)[k], wrap)
        at.append(i)
        m = ok if m is None else ctx.e.tmp(f"{m} & {ok}", "m")
    return ctx.load(x, out[:d] + at + out[d + s:], m)


# -- VJPs -------------------------------------------------------------------------------------------------


def _index_select_vjp(g, inputs, out, ct, dim):
    x, index = inputs
    return [g.add("index_add", [zeros(g, x.type), index, ct], dim=dim), None]


def _gather_vjp(g, inputs, out, ct, dim):
    x, index = inputs
    return [g.add("scatter_add", [zeros(g, x.type), index, ct], dim=dim), None]


def _index_vjp(g, inputs, out, ct, dim, wrap):
    """The cotangent added at the indexed positions: the k indices become one linear position over
    dims dim..dim+k-1 (wrapped like the forward), and `index_add` adds the cotangent, flattened to
    match, into zeros of x with those dims flattened."""
    x, *idx = inputs
    sizes = x.shape[dim:dim + len(idx)]
    lin = None
    for k, i in enumerate(idx):
        i = g.add("convert", [i], dtype=torch.int64) if i.dtype != torch.int64 else i
        if wrap:
            neg = g.add("lt", [i, g.add("full", [], shape=(), value=0, dtype=torch.int64)])
            i = g.add("where", [neg, g.add("add", [i, g.add("full", [], shape=(), value=sizes[k],
                                                                   dtype=torch.int64)]), i])
        if lin is not None:
            lin = g.add("add", [g.add("mul", [lin, g.add("full", [], shape=(), value=sizes[k],
                                                         dtype=torch.int64)]), i])
        else:
            lin = i
    n = idx[0].type.numel
    lin = g.add("reshape", [lin], shape=(n,))
    flat = x.shape[:dim] + (math.prod(sizes),) + x.shape[dim + len(idx):]
    ct = g.add("reshape", [ct], shape=x.shape[:dim] + (n,) + x.shape[dim + len(idx):])
    acc = g.add("index_add", [zeros(g, TensorType(flat, x.dtype)), lin, ct], dim=dim)
    return [g.add("reshape", [acc], shape=x.shape)] + [None] * len(idx)


# -- entries ----------------------------------------------------------------------------------------------


def _check_index_impl(i: torch.Tensor, size: int, error: str) -> torch.Tensor:
    if i.numel() and (bool((i < 0).any()) or bool((i >= size).any())):
        kind, message = INDEX_ERRORS[ERROR_CODES[error]]
        raise kind(message)
    return i.clone()


def _check_index_triton(e, args, dtypes, out, size, error) -> str:
    """`i` itself; lanes outside [0, size) raise the kernel's error flag (the emitter's `check`) to the
    code of `error` ("index", "gather", "target": `ERROR_CODES`)."""
    e.check(f"({args[0]} < 0) | ({args[0]} >= {size})", ERROR_CODES[error])
    return args[0]




def _size_at(node) -> list[int]:
    return [node.inputs[0].shape[node.attrs["dim"]]]


def _sizes_indexed(node) -> list[int]:
    d = node.attrs["dim"]
    return list(node.inputs[0].shape[d:d + len(node.inputs) - 1])


aten = torch.ops.aten
_I64, _I32 = {1: torch.int64}, {1: torch.int32}
# `check_index(i) {size}` is i, or eager's IndexError when an element is outside [0, size): the guard
# of an index that a one-hot masked sum reads (cross-entropy's target logit, lower_reduction.py), which
# would otherwise pick nothing and give 0. A pointwise op, so it fuses into that row kernel.
register(OpDef(
    "check_index", "pointwise", lambda types, size, error: _check_index_type(types[0]), _check_index_impl,
    triton=_check_index_triton, emit_checks=True, cost=2,  # two comparisons per element
    onnx=lambda b, args, types, out, size, error: b.op("Identity", args),  # onnxruntime's Gather checks
    domains=(Domain(INDEX_DTYPES, {"size": 5, "error": "gather"}, ranges={0: (0, 4)}, grad=False),),
    doc="the index, checked to lie in [0, size)"))
register(OpDef(
    "index_select", "layout", _index_select_infer, lambda x, index, dim: torch.index_select(x, dim, index),
    arity=2, emit=_index_select_emit, emit_args=_size_at, emit_checks=True, vjp=_index_select_vjp,
    domains=(Domain(ALL, {"dim": 1}, shapes=((4, 5, 3), (7,)), fixed=_I64, ranges={1: (0, 4)}, rejects=()),
             Domain(ALL, {"dim": 0}, shapes=((6, 3), (4,)), fixed=_I32, ranges={1: (0, 5)}, rejects=())),
    aten=(aten.index_select.default,), doc="torch.index_select",
    onnx=lambda b, args, types, out, dim: b.op("Gather", args, axis=dim)))
register(OpDef(
    "gather", "layout", _gather_infer, lambda x, index, dim: torch.gather(x, dim, index),
    arity=2, emit=_gather_emit, emit_args=_size_at, emit_checks=True, vjp=_gather_vjp,
    domains=(Domain(ALL, {"dim": 1}, shapes=((4, 5, 3), (4, 6, 2)), fixed=_I64, ranges={1: (0, 4)}, rejects=()),
             Domain(ALL, {"dim": 0}, shapes=((6, 3), (4, 3)), fixed=_I32, ranges={1: (0, 5)}, rejects=())),
    aten=(aten.gather.default,), doc="torch.gather", onnx=onnx_rules.gather))
register(OpDef(
    "index", "layout", _index_infer, _index_impl, arity=(2, None), emit=_index_emit, emit_args=_sizes_indexed,
    emit_checks=True, vjp=_index_vjp,
    domains=(Domain(ALL, {"dim": 0, "wrap": False}, shapes=((6, 3), (2, 4)), fixed=_I64, ranges={1: (0, 5)},
                    rejects=()),
             Domain(ALL, {"dim": 1, "wrap": True}, shapes=((3, 5, 4, 2), (3,), (3,)), fixed={1: torch.int64,
                    2: torch.int64}, ranges={1: (-5, 4), 2: (-4, 3)}, rejects=())),
    aten=(aten.index.Tensor,), doc="advanced indexing: x[..., i_0, ..., i_k-1] from dim", onnx=onnx_rules.index))
