"""Accumulating scatters: `index_add` and `scatter_add`, deterministic (no float atomics).

- `index_add(x, index, src) {dim, wrap=False}` == `x.index_add(dim, index, src)`: index 1-D (int64
  or int32), every entry in [0, x.shape[dim]); with `wrap` (index_put) in [-size, size), negative
  entries counting from the end.
- `scatter_add(x, index, src) {dim}` == `x.scatter_add(dim, index, src)` with `index.shape ==
  src.shape` (the frontend slices a larger src down to the index's shape, which is all torch reads).

Both sum the source rows that hit a destination row in source order, starting from x, in the
compute dtype (float32 for half types, rounded once): for float32 and float64 that is eager's CPU
result bit for bit, and the result never depends on thread scheduling.

They are composites. `decompose` sorts the indices once (stable) with `ember::sort_index`, an
extern that also raises eager's error for an index out of range (IndexError for index_put's
wrapped indices, RuntimeError for index_add and scatter_add; on a GPU an async device assert, as
torch's own CUDA kernels), then `segment_add` (kind "scatter", codegen/scatter.py) lets each
program own a block of destination rows: it finds each row's run in the sorted indices by binary
search and sums the source rows of the run through the permutation, in order: O(N*D + V*log N)
work, no write outside the program's own rows whatever the indices hold. (A masked sum over every
source per destination block would be O(V*N*D).) `scatter_add` is an `index_add` over the
flattened tensors with a linear index. A destination that is a `full` constant (embedding
backward's zeros) is not read: the kernel starts from its value.

VJPs: ct_x = ct; ct_src = `index_select(ct, index)` (wrapped: `index`) / `gather(ct, index)`
(ir/ops/index.py). The index gets no cotangent. Compiled graphs are differentiated after the pass
pipeline, so `segment_add` has a rule too: it keeps the unsorted keys as an input for it.
"""

from __future__ import annotations

import math

import torch

from ..registry import FLOAT, INT, Domain, OpDef, register
from ..types import TensorType, compute_dtype
from .extern import INPUT

INDEX_DTYPES = (torch.int64, torch.int32)
VALUE_DTYPES = FLOAT + INT


# -- the sort: stable, with torch's range check ----------------------------------------------------


@torch.library.custom_op("ember::sort_index", mutates_args=(),
                         schema="(Tensor key, Tensor index, int low, int size, int dim) -> (Tensor, Tensor)")
def sort_index(key: torch.Tensor, index: torch.Tensor, low: int, size: int, dim: int) -> tuple[torch.Tensor,
                                                                                             torch.Tensor]:
    """`torch.sort(key, stable=True)` (values, permutation) after checking every `index` entry is in
    [low, size) (for `index_add`, `index` is `key` and low 0; `scatter_add` sorts linear indices and
    checks the index along `dim`; a wrapped index, the user's index, low -size). A CPU index out of
    range raises eager's error: index_put's IndexError (a wrapped index), index_add's and
    scatter_add's RuntimeError. On a GPU the check is an async device assert (no host sync), as in
    torch's own CUDA scatter kernels."""
    if index.numel():
        lo, hi = torch.aminmax(index)
        if index.device.type == "cpu":
            bad = int(lo) if int(lo) < low else int(hi)
            check = torch._check_index if low < 0 else torch._check
            check(low <= int(lo) and int(hi) < size,
                  lambda: f"index {bad} is out of bounds for dimension {dim} with size {size}")
        else:
            torch._assert_async((lo >= low) & (hi < size), f"index out of bounds for dimension {dim} with size {size}")
    values, order = torch.sort(key, stable=True)
    return values, order


@sort_index.register_fake
def _(key, index, low, size, dim):
    return torch.empty_like(key), torch.empty(key.shape, dtype=torch.int64, device=key.device)


SORT_TARGET = "ember.sort_index.default"


def sorted_runs(g, key, index, size: int, dim: int, low: int = 0):
    """(sorted key, permutation): the extern call of `sort_index` (see it for `index` and `low`)."""
    sorted_key, order = g.add("extern", [key, index], target=SORT_TARGET,
                              args=((INPUT, 0), (INPUT, 1), low, size, dim), kwargs={})
    return sorted_key, order


# -- segment_add: the primitive the scatter kernel runs --------------------------------------------


def _segment_infer(types: list[TensorType], dim: int, size: int, init=None) -> TensorType:
    src, key, order, index = types[:4]
    if not 0 <= dim < src.rank:
        raise ValueError(f"segment_add: dim {dim} out of range for {src}")
    if key.rank != 1 or key.shape != order.shape or key.shape != index.shape or key.shape[0] != src.shape[dim]:
        raise ValueError(f"segment_add: needs 1-d keys, sorted keys and permutation of {src.shape[dim]} entries, "
                         f"got {index}, {key} and {order}")
    if key.dtype not in INDEX_DTYPES or index.dtype != key.dtype or order.dtype != torch.int64:
        raise TypeError(f"segment_add: keys must be int64 or int32 and the permutation int64, got {key.dtype}, "
                        f"{order.dtype}")
    if src.dtype not in VALUE_DTYPES:
        raise TypeError(f"segment_add: cannot accumulate {src.dtype}")
    shape = src.shape[:dim] + (size,) + src.shape[dim + 1:]
    if len(types) == 5 and types[4] != TensorType(shape, src.dtype):
        raise ValueError(f"segment_add: the destination {types[4]} is not {TensorType(shape, src.dtype)}")
    if len(types) == 4 and init is None:
        raise ValueError("segment_add: without a destination input, `init` gives its value")
    return TensorType(shape, src.dtype)


def _segment_impl(src, key, order, index, x=None, dim=0, size=0, init=None):
    shape = src.shape[:dim] + (size,) + src.shape[dim + 1:]
    acc = compute_dtype(src.dtype)
    base = x.to(acc) if x is not None else torch.full(shape, init, dtype=acc, device=src.device)
    return base.index_add(dim, key, src.to(acc).index_select(dim, order)).to(src.dtype)


def _segment_vjp(g, inputs, out, ct, dim, size, init=None):
    """The graph is differentiated after the pipeline, so the primitive has a rule too: the unsorted
    keys (which only the VJP reads) give `index_select(ct, keys)`."""
    if not out.dtype.is_floating_point:
        return [None] * len(inputs)
    return [g.add("index_select", [ct, inputs[3]], dim=dim), None, None, None] + [ct] * (len(inputs) == 5)


register(OpDef("segment_add", "scatter", _segment_infer, _segment_impl, arity=(4, 5), vjp=_segment_vjp,
               cost=lambda node: node.inputs[0].type.numel,
               doc="sum src's slices along dim into `size` rows by keys: `key` sorted, `order` the stable "
                   "permutation that sorts `index`; starting from x (5th input) or the constant `init`; the "
                   "scatter kernel (which does not read `index`)"))


# -- index_add ---------------------------------------------------------------------------------------


def _check_index(name: str, index: TensorType) -> None:
    if index.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name}: the index must be int64 or int32, got {index.dtype}")


def _check_values(name: str, x: TensorType, src: TensorType) -> None:
    if x.dtype != src.dtype or x.dtype not in VALUE_DTYPES:
        raise TypeError(f"{name}: needs x and src of one numeric dtype (not bool), got {x.dtype} and {src.dtype}")


def _index_add_infer(types: list[TensorType], dim: int, wrap: bool = False) -> TensorType:
    x, index, src = types
    _check_index("index_add", index)
    _check_values("index_add", x, src)
    if index.rank != 1 or x.rank == 0 or not 0 <= dim < x.rank or src.rank != x.rank:
        raise ValueError(f"index_add: needs x and src of one rank >= 1, a 1-d index and a valid dim, got {x}, "
                         f"{index}, {src}, dim={dim}")
    want = x.shape[:dim] + (index.shape[0],) + x.shape[dim + 1:]
    if src.shape != want:
        raise ValueError(f"index_add: src must have shape {want}, got {src}")
    return x


def _accumulated(fn):
    """`fn` computed in the compute dtype (half types: float32, rounded once), as the kernel does."""
    def impl(x, index, src, dim, wrap=False):
        acc = compute_dtype(x.dtype)
        if wrap:
            index = torch.where(index < 0, index + x.shape[dim], index)
        return fn(x.to(acc), dim, index, src.to(acc)).to(x.dtype)

    return impl


def _constant_value(x):
    """The value of `x` when it is a `full` constant of its own shape (a destination not to read)."""
    p = x.producer
    return p.attrs["value"] if p is not None and p.op == "full" and p.out.shape == x.shape else None


def _segment(g, x, src, keys, dim: int, checked, low: int, checked_size: int, checked_dim: int):
    """`segment_add` of src into x (not read when it is a constant) along `dim` by `keys` in
    [0, x.shape[dim]), after the sort checks `checked` (the caller's indices, along the caller's
    `checked_dim`) is in [low, checked_size)."""
    key, order = sorted_runs(g, keys, checked, checked_size, checked_dim, low)
    init = _constant_value(x)
    size = x.shape[dim]
    if init is not None:
        return g.add("segment_add", [src, key, order, keys], dim=dim, size=size, init=init)
    return g.add("segment_add", [src, key, order, keys, x], dim=dim, size=size, init=None)


def _index_add_decompose(g, x, index, src, dim, wrap=False):
    size = x.shape[dim]
    key = index
    if wrap:  # negative indices count from the end; the check sees the caller's values
        zero, n = (g.add("full", [], shape=(), value=v, dtype=index.dtype) for v in (0, size))
        key = g.add("where", [g.add("lt", [index, zero]), g.add("add", [index, n]), index])
    return _segment(g, x, src, key, dim, index, -size if wrap else 0, size, dim)


def _float_vjp(rule):
    def vjp(g, inputs, out, ct, dim, wrap=False):
        if not inputs[0].dtype.is_floating_point:
            return [None, None, None]
        return [ct, None, rule(g, ct, inputs[1], dim, wrap)]

    return vjp


def _index_add_src_ct(g, ct, index, dim, wrap):
    if wrap:
        return g.add("index", [ct, index], dim=dim, wrap=True)
    return g.add("index_select", [ct, index], dim=dim)


_SHAPES_3D = ((4, 5, 3), (7,), (4, 7, 3))
register(OpDef("index_add", "composite", _index_add_infer, _accumulated(torch.index_add), arity=3,
               decompose=_index_add_decompose,
               vjp=_float_vjp(_index_add_src_ct),
               domains=(Domain(VALUE_DTYPES, {"dim": 1}, shapes=_SHAPES_3D, fixed={1: torch.int64},
                               ranges={1: (0, 4)}),
                        Domain(VALUE_DTYPES, {"dim": 0, "wrap": True}, shapes=((6, 4), (9,), (9, 4)),
                               fixed={1: torch.int32}, ranges={1: (-6, 5)})),
               doc="x.index_add(dim, index, src), summed in source order (deterministic); `wrap`: negative "
                   "indices count from the end (index_put)"))


# -- scatter_add ---------------------------------------------------------------------------------------


def _scatter_add_infer(types: list[TensorType], dim: int) -> TensorType:
    x, index, src = types
    _check_index("scatter_add", index)
    _check_values("scatter_add", x, src)
    if not (index.rank == src.rank == x.rank) or not 0 <= dim < max(x.rank, 1):
        raise ValueError(f"scatter_add: needs x, index and src of one rank and a valid dim, got {x}, {index}, "
                         f"{src}, dim={dim}")
    if index.shape != src.shape or any(i > s for d, (i, s) in enumerate(zip(index.shape, x.shape)) if d != dim):
        raise ValueError(f"scatter_add: needs index shaped as src, within x outside dim {dim}, got {x}, {index}, "
                         f"{src}")
    return x


def _linear_index(g, index, x_shape: tuple[int, ...], dim: int):
    """The flat position in x (contiguous) that each index entry addresses: its own coordinates in
    every dim but `dim`, the index's value along `dim`."""
    shape = index.shape
    strides = [math.prod(x_shape[d + 1:]) for d in range(len(x_shape))]
    i64 = torch.int64
    lin = g.add("convert", [index], dtype=i64) if index.dtype != i64 else index
    if strides[dim] != 1:
        lin = g.add("mul", [lin, g.add("full", [], shape=(), value=strides[dim], dtype=i64)])
    for d in range(len(shape)):
        if d == dim or shape[d] == 1:
            continue
        coord = g.add("iota", [], shape=tuple(shape), dim=d, dtype=i64)
        if strides[d] != 1:
            coord = g.add("mul", [coord, g.add("full", [], shape=(), value=strides[d], dtype=i64)])
        lin = g.add("add", [lin, coord])
    return lin


def _scatter_add_decompose(g, x, index, src, dim):
    if x.type.rank == 0:  # a 0-dim scatter: a 1-element index_add
        x1, idx1, src1 = (g.add("reshape", [v], shape=(1,)) for v in (x, index, src))
        return g.add("reshape", [_index_add_decompose(g, x1, idx1, src1, 0)], shape=())
    n, numel = index.type.numel, x.type.numel
    flat = lambda v, size: v if v.shape == (size,) else g.add("reshape", [v], shape=(size,))
    lin = flat(_linear_index(g, index, x.shape, dim), n)
    out = _segment(g, flat(x, numel), flat(src, n), lin, 0, flat(index, n), 0, x.shape[dim], dim)
    return out if out.shape == x.shape else g.add("reshape", [out], shape=x.shape)


register(OpDef("scatter_add", "composite", _scatter_add_infer, _accumulated(torch.scatter_add), arity=3,
               decompose=_scatter_add_decompose,
               vjp=_float_vjp(lambda g, ct, index, dim, wrap: g.add("gather", [ct, index], dim=dim)),
               domains=(Domain(VALUE_DTYPES, {"dim": 1}, shapes=((4, 5, 3), (3, 8, 2), (3, 8, 2)),
                               fixed={1: torch.int64}, ranges={1: (0, 4)}),
                        Domain(VALUE_DTYPES, {"dim": 0}, shapes=((6, 4), (9, 4), (9, 4)), fixed={1: torch.int32},
                               ranges={1: (0, 5)})),
               doc="x.scatter_add(dim, index, src) with index.shape == src.shape, summed in source order"))
