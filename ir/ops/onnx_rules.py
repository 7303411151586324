"""ONNX rules (`OpDef.onnx`, see codegen/onnx.py) longer than a line, for the ops of reduction.py,
index.py, conv.py, attention.py, scan.py, window.py and adaptive_pool.py; each entry names its rule.

Like the kernels, a rule gives torch's value: a NaN in a max/min reduction or an argmax wins
(onnxruntime's ReduceMax and ArgMax skip it), integer sums accumulate in int64, the fused
`attention` op is its reference formula (float32 softmax, a fully masked row gives 0). Pooling over
the last dims of any leading shape runs as ONNX's N=1, C=leading elements.
"""

from __future__ import annotations

import math

import torch

from ..registry import get_op
from ..types import is_float

_ARG_DTYPES = (torch.float32, torch.float64, torch.int32, torch.int8, torch.uint8)  # onnxruntime's ArgMax


def _any_nan(b, x, dims, keepdim):
    """Does the reduced slice hold a NaN (bool, the reduction's shape)?"""
    n = b.op("Cast", [b.op("IsNaN", [x])], to=6)  # int32
    return b.op("Cast", [b.op("ReduceMax", [n, b.ints(dims)], keepdims=int(keepdim))], to=9)  # bool


def reduce(op_type: str, acc: bool = False):
    """sum/prod (`acc`: integers and bool accumulate in int64), amax/amin (NaN wins; bool as int32)."""

    def rule(b, args, types, out, dims=(), keepdim=False):
        (x,), t = args, types[0]
        if acc and not is_float(t.dtype):
            x = b.cast(x, t.dtype, torch.int64)
        elif t.dtype == torch.bool:
            x = b.cast(x, t.dtype, torch.int32)
        if not dims:
            return b.op("Identity", [x])
        r = b.op(op_type, [x, b.ints(dims)], keepdims=int(keepdim))
        if t.dtype == torch.bool and not acc:
            return b.cast(r, torch.int32, torch.bool)
        if not acc and is_float(t.dtype):
            r = b.op("Where", [_any_nan(b, args[0], dims, keepdim), b.const(math.nan, t.dtype), r])
        return r

    return rule


def arg_reduce(op_type: str):
    """argmax/argmin: the first extreme; a NaN counts as the extreme (torch's), dim=None flattens."""

    def rule(b, args, types, out, dim=None, keepdim=False):
        (x,), t = args, types[0]
        if dim is None:
            x, axis = b.op("Reshape", [x, b.ints([-1])]), 0
        else:
            axis = dim
        src = t.dtype
        if src not in _ARG_DTYPES:  # bool, int16, int64: as float64 (int64 beyond 2**53 would tie)
            x, src = b.cast(x, t.dtype, torch.float64), torch.float64
        keep = int(keepdim and dim is not None)
        r = b.op(op_type, [x], axis=axis, keepdims=keep, select_last_index=0)
        if is_float(t.dtype):
            nan = b.op("Cast", [b.op("IsNaN", [x])], to=6)
            first_nan = b.op("ArgMax", [nan], axis=axis, keepdims=keep, select_last_index=0)
            has = b.op("Cast", [b.op("ReduceMax", [nan, b.ints([axis])], keepdims=keep)], to=9)
            r = b.op("Where", [has, first_nan, r])
        if dim is None:
            r = b.op("Reshape", [r, b.ints(out.shape)])
        return r

    return rule


# -- gathers ------------------------------------------------------------------------------------------


def gather(b, args, types, out, dim):
    """torch.gather: the index may be smaller than x along the other dims (GatherElements' may not)."""
    x, index = args
    xt, it = types
    if any(i != s for d, (i, s) in enumerate(zip(it.shape, xt.shape)) if d != dim):
        axes = [d for d in range(xt.rank) if d != dim]
        x = b.op("Slice", [x, b.ints([0] * len(axes)), b.ints([it.shape[d] for d in axes]), b.ints(axes)])
    return b.op("GatherElements", [x, index], axis=dim)


def index(b, args, types, out, dim, wrap):
    """x[..., i_0, ..., i_k-1] from `dim`: one index Gathers; several are linearized over the
    flattened indexed dims (negative indices wrapped first where `wrap`, as Gather would wrap one)."""
    x, *idx = args
    xt = types[0]
    if len(idx) == 1:
        return b.op("Gather", [x, idx[0]], axis=dim)
    sizes = xt.shape[dim:dim + len(idx)]
    lin = None
    for k, (i, t) in enumerate(zip(idx, types[1:])):
        i = b.cast(i, t.dtype, torch.int64)
        if wrap:
            i = b.op("Where", [b.op("Less", [i, b.const(0, torch.int64)]),
                               b.op("Add", [i, b.const(sizes[k], torch.int64)]), i])
        lin = i if lin is None else b.op("Add", [b.op("Mul", [lin, b.const(sizes[k], torch.int64)]), i])
    flat = xt.shape[:dim] + (math.prod(sizes),) + xt.shape[dim + len(idx):]
    return b.op("Gather", [b.op("Reshape", [x, b.ints(flat)]), lin], axis=dim)


# -- convolution and attention ------------------------------------------------------------------------


def conv2d(b, args, types, out, stride, padding, dilation, groups):
    return b.op("Conv", args, strides=list(stride), pads=list(padding) * 2, dilations=list(dilation), group=groups)


def attention(b, args, types, out, scale, is_causal):
    """The reference formula (attention.py `_impl`): scores in float32 (float64 for float64), masked
    to -inf, softmax with an all-masked row giving 0, then @ v; also lse, the row logsumexp."""
    q, k, v = args[:3]
    qt, kt = types[0], types[1]
    acc = torch.float64 if qt.dtype == torch.float64 else torch.float32
    q, k, v = (b.cast(a, qt.dtype, acc) for a in (q, k, v))
    (bs, h, length, _), (_, hk, s, _) = qt.shape, kt.shape
    if hk != h:  # grouped-query attention: kv head j serves query heads j*g .. j*g+g-1
        g = h // hk
        k, v = (b.op("Reshape", [b.op("Expand", [b.op("Reshape", [a, b.ints([bs, hk, 1, s, t.shape[3]])]),
                                                 b.ints([bs, hk, g, s, t.shape[3]])]),
                                 b.ints([bs, h, s, t.shape[3]])]) for a, t in ((k, kt), (v, types[2])))
    sc = b.op("Mul", [b.op("MatMul", [q, b.op("Transpose", [k], perm=[0, 1, 3, 2])]), b.const(scale, acc)])
    ninf = b.const(-math.inf, acc)
    if is_causal:
        keep = torch.ones(length, s, dtype=torch.bool).tril()
        sc = b.op("Where", [b.tensor(keep), sc, ninf])
    if len(args) > 3:
        mask, mt = args[3], types[3]
        if mt.dtype == torch.bool:
            sc = b.op("Where", [mask, sc, ninf])
        else:
            sc = b.op("Add", [sc, b.cast(mask, mt.dtype, acc)])
    m = b.op("ReduceMax", [sc, b.ints([3])], keepdims=1)
    m = b.op("Where", [b.op("Equal", [m, ninf]), b.const(0.0, acc), m])
    e = b.op("Exp", [b.op("Sub", [sc, m])])
    total = b.op("ReduceSum", [e, b.ints([3])], keepdims=1)
    empty = b.op("Equal", [total, b.const(0.0, acc)])
    p = b.op("Div", [e, b.op("Where", [empty, b.const(1.0, acc), total])])
    o = b.cast(b.op("MatMul", [p, v]), acc, qt.dtype)
    lse = b.op("Where", [empty, b.const(0.0, acc), b.op("Add", [m, b.op("Log", [total])])])
    return [o, b.op("Squeeze", [lse, b.ints([3])])]


# -- scans and pooling ----------------------------------------------------------------------------------


def cumsum(b, args, types, out, dim=0):
    x = b.cast(args[0], types[0].dtype, out.dtype)  # integers and bool in int64
    return b.op("CumSum", [x, b.const(dim, torch.int64)])


def _pooled(b, x, t, n, run, out):
    """`run(x)` on x viewed as (1, leading elements, *last n dims), viewed back to `out`'s shape."""
    lead = math.prod(t.shape[:t.rank - n])
    x = b.op("Reshape", [x, b.ints((1, lead) + tuple(t.shape[t.rank - n:]))])
    return b.op("Reshape", [run(x), b.ints(out.shape)])


def max_pool(b, args, types, out, kernel_size, stride, padding, dilation, ceil_mode):
    """MaxPool (torch's and ONNX's ceil_mode windows agree); integers as float64 (onnxruntime has no
    integer MaxPool; exact below 2**53), a NaN in a window wins as in torch."""
    t = types[0]
    x = args[0] if is_float(t.dtype) else b.cast(args[0], t.dtype, torch.float64)

    def pool(v):
        return b.op("MaxPool", [v], kernel_shape=list(kernel_size), strides=list(stride), pads=list(padding) * 2,
                    dilations=list(dilation), ceil_mode=int(ceil_mode))

    def run(v):
        r = pool(v)
        if is_float(t.dtype):
            nan = pool(b.op("Cast", [b.op("IsNaN", [v])], to=1))  # float32: 1 where a NaN is
            r = b.op("Where", [b.op("Greater", [nan, b.const(0.0, torch.float32)]), b.const(math.nan, t.dtype), r])
        return r

    r = _pooled(b, x, t, len(kernel_size), run, out)
    return r if is_float(t.dtype) else b.cast(r, torch.float64, t.dtype)


def _avg_divisors(size, k, s, p, n_out, include_pad) -> torch.Tensor:
    """torch's avg_pool divisor along one dim, per output position (ceil_mode windows included)."""
    out = []
    for o in range(n_out):
        start = o * s - p
        end = min(start + k, size + p)
        count = end - start if include_pad else min(end, size) - max(start, 0)
        out.append(count)
    return torch.tensor(out, dtype=torch.float64)


def avg_pool(b, args, types, out, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    """The window sums (the input padded with zeros to every window, ceil_mode's last one too, then
    AveragePool times the window size), divided by torch's divisor for each output position."""
    t, n = types[0], len(kernel_size)
    sizes, outs = t.shape[t.rank - n:], out.shape[out.rank - n:]
    extra = [max(0, (o - 1) * s + k - (i + 2 * p)) for i, o, s, k, p in zip(sizes, outs, stride, kernel_size, padding)]
    if divisor_override is not None:
        divisor = torch.tensor(float(divisor_override), dtype=torch.float64)
    else:
        divisor = torch.ones((), dtype=torch.float64)
        for d in range(n):
            v = _avg_divisors(sizes[d], kernel_size[d], stride[d], padding[d], outs[d], count_include_pad)
            divisor = divisor.unsqueeze(-1) * v
    window = math.prod(kernel_size)

    def run(x):
        pads = [0, 0] + list(padding) + [0, 0] + [p + e for p, e in zip(padding, extra)]
        x = b.op("Pad", [x, b.ints(pads)], mode="constant")
        mean = b.op("AveragePool", [x], kernel_shape=list(kernel_size), strides=list(stride))
        return b.op("Div", [b.op("Mul", [mean, b.const(float(window), t.dtype)]), b.tensor(divisor.to(t.dtype))])

    return _pooled(b, args[0], t, n, run, out)


def adaptive_avg_pool(b, args, types, out, output_size):
    """Windows of equal size (each input size a multiple of the output's) are an AveragePool; others
    one ReduceMean per window [floor(o*I/O), ceil((o+1)*I/O)) of each dim in turn, concatenated (a
    NaN stays in its windows, as in torch)."""
    t, n = types[0], len(output_size)
    sizes = t.shape[t.rank - n:]
    if not any(s % o for s, o in zip(sizes, output_size)):
        kernel = [s // o for s, o in zip(sizes, output_size)]
        return _pooled(b, args[0], t, n, lambda x: b.op("AveragePool", [x], kernel_shape=kernel, strides=kernel), out)
    x = args[0]
    for j, (size, o_size) in enumerate(zip(sizes, output_size)):
        dim = t.rank - n + j
        parts = []
        for o in range(o_size):
            lo, hi = (o * size) // o_size, -((-(o + 1) * size) // o_size)
            window = b.op("Slice", [x, b.ints([lo]), b.ints([hi]), b.ints([dim])])
            parts.append(b.op("ReduceMean", [window, b.ints([dim])], keepdims=1))
        x = b.op("Concat", parts, axis=dim)
    return x


def upsample_nearest(b, args, types, out, output_size, scales=None, exact=False):
    """A Gather of the flattened last dims at the source indices the op's own reference computes on
    an input holding each element's index (nearest copies an element: exact in the opmath dtype)."""
    t, n = types[0], len(output_size)
    lead, sizes = t.shape[:t.rank - n], t.shape[t.rank - n:]
    numel = math.prod(sizes)
    probe = torch.float64 if t.dtype == torch.float64 else torch.float32
    if probe == torch.float32 and numel > 2**24:
        raise NotImplementedError(f"upsample_nearest of {numel} elements per plane (indices past float32's)")
    where = torch.arange(numel, dtype=probe).reshape((1,) + tuple(sizes))
    index = get_op("upsample_nearest").impl(where, output_size, scales, exact).reshape(-1).to(torch.int64)
    x = b.op("Reshape", [args[0], b.ints(tuple(lead) + (numel,))])
    return b.op("Reshape", [b.op("Gather", [x, b.tensor(index)], axis=len(lead)), b.ints(out.shape)])
