"""Deterministic scatters (no float atomics), accumulating and writing.

Accumulating:
- `index_add(x, index, src) {dim, wrap=False}` == `x.index_add(dim, index, src)`: index 1-D (int64
  or int32), every entry in [0, x.shape[dim]); with `wrap` in [-size, size), negative entries
  counting from the end.
- `scatter_add(x, index, src) {dim}` == `x.scatter_add(dim, index, src)` with `index.shape ==
  src.shape` (the frontend slices a larger src down to the index's shape, which is all torch reads).

Writing (the last source of a destination, in source order, wins; rows no index names keep x):
- `index_copy(x, index, src) {dim}` == `x.index_copy(dim, index, src)`, indices in [0, size).
- `scatter(x, index, src) {dim}` == `x.scatter(dim, index, src)`, `index.shape == src.shape`.

And both: `index_put(x, i_0, ..., i_{k-1}, values) {dim, accumulate}` == `x[:, ..., i_0, ..., i_{k-1}]
= values` (`+=` with `accumulate`): the k indices, of one shape S and dtype, index dims dim..dim+k-1 and wrap
(negative entries count from the end), as advanced indexing does; values shaped like what that
indexing reads, `x.shape[:dim] + S + x.shape[dim+k:]`. The k indices become one linear index over
the indexed dims (flattened into one).

Sums go in source order, starting from x, in the compute dtype (float32 for half types, rounded
once): for float32 and float64 that is eager's CPU result bit for bit. Writes keep the last source:
eager's CPU result with repeated indices (its CPU kernels write serially, in order). On CUDA eager's
result with repeated indices is undefined (whichever thread writes last); ember's is the CPU one,
on every device and every run.

They are composites. `decompose` sorts the indices once (stable) with `ember::sort_index`, an
extern that also raises eager's error for an index out of range (IndexError for index_put and
index_copy, RuntimeError for index_add and the scatters; on a GPU an async device assert, as torch's
own CUDA kernels), then `segment_add` / `segment_write` (kind "scatter", codegen/scatter.py) lets
each program own a block of destination rows: it finds each row's run in the sorted indices by
binary search and sums the source rows of the run through the permutation, in order (a write: takes
the run's last one): O(N*D + V*log N) work, no write outside the program's own rows whatever the
indices hold. (A masked sum over every source per destination block would be O(V*N*D).) The
scatters run over the flattened tensors with a linear index. A destination that is a `full`
constant (embedding backward's zeros) is not read: the kernel starts from its value.

VJPs, torch's (tools/autograd/derivatives.yaml): the source's cotangent is the cotangent gathered at
the index (`index_select`, `gather`, `index`), for a write too (a source another overwrote gets it
all the same, as in eager); x's is the cotangent (accumulating) or the cotangent with the written
positions zeroed (writing: the same write of zeros into it). The index gets no cotangent. Compiled
graphs are differentiated after the pass pipeline, so `segment_add` and `segment_write` have rules
too: they keep the unsorted keys as an input for them.
"""

from __future__ import annotations

import math

import torch

from ..registry import ALL, FLOAT, INT, Domain, OpDef, register, zeros
from ..types import TensorType, compute_dtype
from .extern import INPUT

INDEX_DTYPES = (torch.int64, torch.int32)
VALUE_DTYPES = FLOAT + INT  # what a sum accumulates
WRITE_DTYPES = ALL  # what a write copies


# -- the sort: stable, with torch's range check ----------------------------------------------------


@torch.library.custom_op("ember::sort_index", mutates_args=(),
                         schema="(Tensor key, Tensor[] index, int[] low, int[] size, int[] dim, bool index_error)"
                                " -> (Tensor, Tensor)")
def sort_index(key: torch.Tensor, index: list[torch.Tensor], low: list[int], size: list[int], dim: list[int],
               index_error: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.sort(key, stable=True)` (values, permutation) after checking every entry of `index[k]`
    is in [low[k], size[k]) (`key` is the index, or the linear index, they address; a wrapped index
    has low -size). A CPU index out of range raises eager's error, naming the first index tensor
    out of range and its dim `dim[k]`: IndexError with `index_error` (index_put, index_copy),
    RuntimeError otherwise (index_add, the scatters). On a GPU the check is an async device assert
    (no host sync), as in torch's own CUDA scatter kernels."""
    for i, low_k, size_k, dim_k in zip(index, low, size, dim):
        if not i.numel():
            continue
        lo, hi = torch.aminmax(i)
        if i.device.type == "cpu":
            bad = int(lo) if int(lo) < low_k else int(hi)
            check = torch._check_index if index_error else torch._check
            check(low_k <= int(lo) and int(hi) < size_k,
                  lambda: f"index {bad} is out of bounds for dimension {dim_k} with size {size_k}")
        else:
            torch._assert_async((lo >= low_k) & (hi < size_k),
                                f"index out of bounds for dimension {dim_k} with size {size_k}")
    values, order = torch.sort(key, stable=True)
    return values, order


@sort_index.register_fake
def _(key, index, low, size, dim, index_error):
    return torch.empty_like(key), torch.empty(key.shape, dtype=torch.int64, device=key.device)


SORT_TARGET = "ember.sort_index.default"


def sorted_runs(g, key, checks: list[tuple], index_error: bool):
    """(sorted key, permutation): the extern call of `sort_index`; `checks` lists (index, low, size,
    dim) per index tensor to check."""
    n = len(checks)
    sorted_key, order = g.add("extern", [key] + [c[0] for c in checks], target=SORT_TARGET,
                              args=((INPUT, 0), [(INPUT, k + 1) for k in range(n)], [c[1] for c in checks],
                                    [c[2] for c in checks], [c[3] for c in checks], index_error), kwargs={})
    return sorted_key, order


# -- segment_add, segment_write: the primitives the scatter kernel runs ----------------------------


def _segment_infer(op: str, dtypes: tuple[torch.dtype, ...]):
    def infer(types: list[TensorType], dim: int, size: int, init=None) -> TensorType:
        src, key, order, index = types[:4]
        if not 0 <= dim < src.rank:
            raise ValueError(f"{op}: dim {dim} out of range for {src}")
        if (key.rank != 1 or key.shape != order.shape or key.shape != index.shape
                or key.shape[0] != src.shape[dim]):
            raise ValueError(f"{op}: needs 1-d keys, sorted keys and permutation of {src.shape[dim]} entries, "
                             f"got {index}, {key} and {order}")
        if key.dtype not in INDEX_DTYPES or index.dtype != key.dtype or order.dtype != torch.int64:
            raise TypeError(f"{op}: keys must be int64 or int32 and the permutation int64, got {key.dtype}, "
                            f"{order.dtype}")
        if src.dtype not in dtypes:
            raise TypeError(f"{op}: cannot scatter {src.dtype}")
        shape = src.shape[:dim] + (size,) + src.shape[dim + 1:]
        if len(types) == 5 and types[4] != TensorType(shape, src.dtype):
            raise ValueError(f"{op}: the destination {types[4]} is not {TensorType(shape, src.dtype)}")
        if len(types) == 4 and init is None:
            raise ValueError(f"{op}: without a destination input, `init` gives its value")
        return TensorType(shape, src.dtype)

    return infer


def _segment_base(src, x, dim, size, init, dtype):
    shape = src.shape[:dim] + (size,) + src.shape[dim + 1:]
    return x.to(dtype) if x is not None else torch.full(shape, init, dtype=dtype, device=src.device)


def _segment_add_impl(src, key, order, index, x=None, dim=0, size=0, init=None):
    acc = compute_dtype(src.dtype)
    base = _segment_base(src, x, dim, size, init, acc)
    return base.index_add(dim, key, src.to(acc).index_select(dim, order)).to(src.dtype)


def _segment_write_impl(src, key, order, index, x=None, dim=0, size=0, init=None):
    """Each run's last entry (the stable sort keeps source order within a run) written: the runs'
    keys are then distinct, so the copy does not depend on torch's order."""
    base = _segment_base(src, x, dim, size, init, src.dtype).clone()
    if not key.numel():
        return base
    last = torch.ones_like(key, dtype=torch.bool)
    last[:-1] = key[1:] != key[:-1]
    return base.index_copy(dim, key[last].long(), src.index_select(dim, order[last]))


def _segment_vjp(g, inputs, out, ct, dim, size, init=None):
    """The graph is differentiated after the pipeline, so the primitive has a rule too: the unsorted
    keys (which only the VJP reads) give `index_select(ct, keys)`; x gets ct."""
    if not out.dtype.is_floating_point:
        return [None] * len(inputs)
    return [g.add("index_select", [ct, inputs[3]], dim=dim), None, None, None] + [ct] * (len(inputs) == 5)


def _segment_write_vjp(g, inputs, out, ct, dim, size, init=None):
    """As `segment_add`'s, but x gets ct with the written rows zeroed: zeros written there the same
    way (a 0-dim zero, expanded: the kernel reads one element)."""
    if not out.dtype.is_floating_point:
        return [None] * len(inputs)
    src, key, order, keys = inputs[:4]
    ct_src = g.add("index_select", [ct, keys], dim=dim)
    if len(inputs) == 4:
        return [ct_src, None, None, None]
    zero = g.add("expand", [g.add("full", [], shape=(), value=0.0, dtype=ct.dtype)], shape=src.shape)
    ct_x = g.add("segment_write", [zero, key, order, keys, ct], dim=dim, size=size, init=None)
    return [ct_src, None, None, None, ct_x]


_SEGMENT_DOC = ("along dim into `size` rows by keys: `key` sorted, `order` the stable permutation that sorts "
                "`index`; starting from x (5th input) or the constant `init`; the scatter kernel (which does "
                "not read `index`)")
register(OpDef("segment_add", "scatter", _segment_infer("segment_add", VALUE_DTYPES), _segment_add_impl,
               arity=(4, 5), vjp=_segment_vjp, cost=lambda node: node.inputs[0].type.numel,
               doc="sum src's slices " + _SEGMENT_DOC))
register(OpDef("segment_write", "scatter", _segment_infer("segment_write", WRITE_DTYPES), _segment_write_impl,
               arity=(4, 5), vjp=_segment_write_vjp, cost=lambda node: node.out.type.numel,
               doc="write the last (in source order) of src's slices " + _SEGMENT_DOC))


# -- index_add, index_copy ---------------------------------------------------------------------------


def _check_index(name: str, index: TensorType) -> None:
    if index.dtype not in INDEX_DTYPES:
        raise TypeError(f"{name}: the index must be int64 or int32, got {index.dtype}")


def _check_values(name: str, x: TensorType, src: TensorType, dtypes=VALUE_DTYPES) -> None:
    if x.dtype != src.dtype or x.dtype not in dtypes:
        raise TypeError(f"{name}: needs x and src of one dtype ({'' if dtypes is ALL else 'numeric, '}not "
                        f"complex), got {x.dtype} and {src.dtype}")


def _index_add_infer(name: str, dtypes):
    def infer(types: list[TensorType], dim: int, wrap: bool = False) -> TensorType:
        x, index, src = types
        _check_index(name, index)
        _check_values(name, x, src, dtypes)
        if index.rank != 1 or x.rank == 0 or not 0 <= dim < x.rank or src.rank != x.rank:
            raise ValueError(f"{name}: needs x and src of one rank >= 1, a 1-d index and a valid dim, got {x}, "
                             f"{index}, {src}, dim={dim}")
        want = x.shape[:dim] + (index.shape[0],) + x.shape[dim + 1:]
        if src.shape != want:
            raise ValueError(f"{name}: src must have shape {want}, got {src}")
        return x

    return infer


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


def _segment(g, op: str, x, src, keys, dim: int, checks: list[tuple], index_error: bool):
    """`op` (segment_add / segment_write) of src into x (not read when it is a constant) along `dim` by
    `keys` in [0, x.shape[dim]), after the sort checks the caller's indices (`sorted_runs`)."""
    key, order = sorted_runs(g, keys, checks, index_error)
    init = _constant_value(x)
    size = x.shape[dim]
    if init is not None:
        return g.add(op, [src, key, order, keys], dim=dim, size=size, init=init)
    return g.add(op, [src, key, order, keys, x], dim=dim, size=size, init=None)


def _wrapped(g, index, size: int):
    """`index` with negative entries counted from the end of a dim of `size`."""
    zero, n = (g.add("full", [], shape=(), value=v, dtype=index.dtype) for v in (0, size))
    return g.add("where", [g.add("lt", [index, zero]), g.add("add", [index, n]), index])


def _index_add_decompose(g, x, index, src, dim, wrap=False):
    size = x.shape[dim]
    key = _wrapped(g, index, size) if wrap else index  # the check sees the caller's values
    return _segment(g, "segment_add", x, src, key, dim, [(index, -size if wrap else 0, size, dim)], wrap)


def _index_copy_decompose(g, x, index, src, dim):
    return _segment(g, "segment_write", x, src, index, dim, [(index, 0, x.shape[dim], dim)], True)


def _float_vjp(rule, x_rule=None):
    """ct for x (or `x_rule(g, ct, inputs, **attrs)`: a write), `rule(g, ct, index, dim, wrap)` for src."""
    def vjp(g, inputs, out, ct, dim, wrap=False):
        if not inputs[0].dtype.is_floating_point:
            return [None, None, None]
        ct_x = ct if x_rule is None else x_rule(g, ct, inputs, dim)
        return [ct_x, None, rule(g, ct, inputs[1], dim, wrap)]

    return vjp


def _index_add_src_ct(g, ct, index, dim, wrap):
    if wrap:
        return g.add("index", [ct, index], dim=dim, wrap=True)
    return g.add("index_select", [ct, index], dim=dim)


def _write_zeros(op: str):
    """x's cotangent of a write: ct with the written positions zeroed (the same write of zeros)."""
    return lambda g, ct, inputs, dim: g.add(op, [ct, inputs[1], zeros(g, inputs[2].type)], dim=dim)


_SHAPES_3D = ((4, 5, 3), (7,), (4, 7, 3))
register(OpDef("index_add", "composite", _index_add_infer("index_add", VALUE_DTYPES), _accumulated(torch.index_add),
               arity=3, decompose=_index_add_decompose,
               vjp=_float_vjp(_index_add_src_ct),
               domains=(Domain(VALUE_DTYPES, {"dim": 1}, shapes=_SHAPES_3D, fixed={1: torch.int64},
                               ranges={1: (0, 4)}),
                        Domain(VALUE_DTYPES, {"dim": 0, "wrap": True}, shapes=((6, 4), (9,), (9, 4)),
                               fixed={1: torch.int32}, ranges={1: (-6, 5)})),
               doc="x.index_add(dim, index, src), summed in source order (deterministic); `wrap`: negative "
                   "indices count from the end (index_put)"))
register(OpDef("index_copy", "composite", _index_add_infer("index_copy", WRITE_DTYPES),
               lambda x, index, src, dim: x.index_copy(dim, index.long(), src), arity=3,
               decompose=_index_copy_decompose,
               vjp=_float_vjp(_index_add_src_ct, _write_zeros("index_copy")),
               domains=(Domain(WRITE_DTYPES, {"dim": 1}, shapes=_SHAPES_3D, fixed={1: torch.int64},
                               ranges={1: (0, 4)}, rejects=()),
                        Domain(WRITE_DTYPES, {"dim": 0}, shapes=((6, 4), (9,), (9, 4)), fixed={1: torch.int32},
                               ranges={1: (0, 5)}, rejects=())),
               doc="x.index_copy(dim, index, src); with repeated indices the last source wins (deterministic)"))


# -- scatter_add, scatter ------------------------------------------------------------------------------


def _scatter_infer(name: str, dtypes):
    def infer(types: list[TensorType], dim: int) -> TensorType:
        x, index, src = types
        _check_index(name, index)
        _check_values(name, x, src, dtypes)
        if not (index.rank == src.rank == x.rank) or not 0 <= dim < max(x.rank, 1):
            raise ValueError(f"{name}: needs x, index and src of one rank and a valid dim, got {x}, {index}, "
                             f"{src}, dim={dim}")
        if index.shape != src.shape or any(i > s for d, (i, s) in enumerate(zip(index.shape, x.shape)) if d != dim):
            raise ValueError(f"{name}: needs index shaped as src, within x outside dim {dim}, got {x}, {index}, "
                             f"{src}")
        return x

    return infer


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


def _scatter_decompose(op: str):
    def decompose(g, x, index, src, dim):
        if x.type.rank == 0:  # a 0-dim scatter: a 1-element one
            x1, idx1, src1 = (g.add("reshape", [v], shape=(1,)) for v in (x, index, src))
            return g.add("reshape", [decompose(g, x1, idx1, src1, 0)], shape=())
        n, numel = index.type.numel, x.type.numel
        flat = lambda v, size: v if v.shape == (size,) else g.add("reshape", [v], shape=(size,))
        lin = flat(_linear_index(g, index, x.shape, dim), n)
        out = _segment(g, op, flat(x, numel), flat(src, n), lin, 0, [(flat(index, n), 0, x.shape[dim], dim)], False)
        return out if out.shape == x.shape else g.add("reshape", [out], shape=x.shape)

    return decompose


_gather_ct = lambda g, ct, index, dim, wrap: g.add("gather", [ct, index], dim=dim)
register(OpDef("scatter_add", "composite", _scatter_infer("scatter_add", VALUE_DTYPES),
               _accumulated(torch.scatter_add), arity=3,
               decompose=_scatter_decompose("segment_add"),
               vjp=_float_vjp(_gather_ct),
               domains=(Domain(VALUE_DTYPES, {"dim": 1}, shapes=((4, 5, 3), (3, 8, 2), (3, 8, 2)),
                               fixed={1: torch.int64}, ranges={1: (0, 4)}),
                        Domain(VALUE_DTYPES, {"dim": 0}, shapes=((6, 4), (9, 4), (9, 4)), fixed={1: torch.int32},
                               ranges={1: (0, 5)})),
               doc="x.scatter_add(dim, index, src) with index.shape == src.shape, summed in source order"))
register(OpDef("scatter", "composite", _scatter_infer("scatter", WRITE_DTYPES),
               lambda x, index, src, dim: torch.scatter(x, dim, index.long(), src), arity=3,
               decompose=_scatter_decompose("segment_write"),
               vjp=_float_vjp(_gather_ct, _write_zeros("scatter")),
               domains=(Domain(WRITE_DTYPES, {"dim": 1}, shapes=((4, 5, 3), (3, 8, 2), (3, 8, 2)),
                               fixed={1: torch.int64}, ranges={1: (0, 4)}, rejects=()),
                        Domain(WRITE_DTYPES, {"dim": 0}, shapes=((6, 4), (9, 4), (9, 4)), fixed={1: torch.int32},
                               ranges={1: (0, 5)}, rejects=())),
               doc="x.scatter(dim, index, src) with index.shape == src.shape; with repeated positions the last "
                   "source wins (deterministic)"))


# -- index_put -----------------------------------------------------------------------------------------


def _index_put_infer(types: list[TensorType], dim: int, accumulate: bool) -> TensorType:
    x, *idx, values = types
    for i in idx:
        _check_index("index_put", i)
    _check_values("index_put", x, values, VALUE_DTYPES if accumulate else WRITE_DTYPES)
    k = len(idx)
    if not idx or any(i != idx[0] for i in idx) or not 0 <= dim <= x.rank - k:
        raise ValueError(f"index_put: needs index tensors of one type for dims {dim}..{dim + k - 1} of {x}, got "
                         f"{idx}")
    want = x.shape[:dim] + idx[0].shape + x.shape[dim + k:]
    if values.shape != want:
        raise ValueError(f"index_put: values must have shape {want}, got {values}")
    return x


def _index_put_impl(x, *rest, dim, accumulate):
    *idx, values = rest
    indices = [None] * dim + list(idx)
    if not accumulate:
        return torch.ops.aten.index_put(x, indices, values)
    acc = compute_dtype(x.dtype)  # as the kernel: in the compute dtype, rounded once
    return torch.ops.aten.index_put(x.to(acc), indices, values.to(acc), True).to(x.dtype)


def _index_put_decompose(g, x, *rest, dim, accumulate):
    """One linear index over the indexed dims (wrapped), the indexed dims of x and the index dims of
    values flattened into one; the sort checks each index tensor."""
    *idx, values = rest
    k = len(idx)
    sizes = x.shape[dim:dim + k]
    n = idx[0].type.numel
    if k == 1:
        key = _wrapped(g, idx[0], sizes[0])
    else:
        i64 = torch.int64
        key = None
        for i, size in zip(idx, sizes):
            i = _wrapped(g, g.add("convert", [i], dtype=i64) if i.dtype != i64 else i, size)
            key = i if key is None else g.add("add", [g.add("mul", [key, g.add("full", [], shape=(), value=size,
                                                                               dtype=i64)]), i])
    rest_shape = x.shape[dim + k:]
    reshape = lambda v, shape: v if v.shape == shape else g.add("reshape", [v], shape=shape)
    key = reshape(key, (n,))
    flat_x = reshape(x, x.shape[:dim] + (math.prod(sizes),) + rest_shape)
    src = reshape(values, x.shape[:dim] + (n,) + rest_shape)
    checks = [(i, -size, size, dim + m) for m, (i, size) in enumerate(zip(idx, sizes))]
    out = _segment(g, "segment_add" if accumulate else "segment_write", flat_x, src, key, dim, checks, True)
    return reshape(out, x.shape)


def _index_put_vjp(g, inputs, out, ct, dim, accumulate):
    x, *idx, values = inputs
    if not x.dtype.is_floating_point:
        return [None] * len(inputs)
    ct_x = ct if accumulate else g.add("index_put", [ct, *idx, zeros(g, values.type)], dim=dim, accumulate=False)
    return [ct_x] + [None] * len(idx) + [g.add("index", [ct, *idx], dim=dim, wrap=True)]


register(OpDef("index_put", "composite", _index_put_infer, _index_put_impl, arity=(3, None),
               decompose=_index_put_decompose, vjp=_index_put_vjp,
               domains=(Domain(WRITE_DTYPES, {"dim": 0, "accumulate": False}, shapes=((6, 4), (9,), (9, 4)),
                               fixed={1: torch.int64}, ranges={1: (-6, 5)}, rejects=()),
                        Domain(WRITE_DTYPES, {"dim": 1, "accumulate": False},
                               shapes=((3, 5, 4, 2), (2, 4), (2, 4), (3, 2, 4, 2)),
                               fixed={1: torch.int64, 2: torch.int64}, ranges={1: (-5, 4), 2: (-4, 3)}, rejects=()),
                        Domain(VALUE_DTYPES, {"dim": 1, "accumulate": True},
                               shapes=((3, 5, 4, 2), (7,), (7,), (3, 7, 2)),
                               fixed={1: torch.int32, 2: torch.int32}, ranges={1: (-5, 4), 2: (-4, 3)})),
               doc="x[..., i_0, ..., i_k-1] = values from dim (+= with accumulate), indices wrapped; repeated "
                   "positions: summed in source order, or the last source written (deterministic)"))
