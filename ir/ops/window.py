"""Window ops: pooling over windows of any geometry (overlapping, padded, dilated, ceil_mode's partial
windows) and interpolation (nearest, nearest-exact, linear), forward and backward, over the last
n = len(kernel_size) (or len(output_size)) dims, for n = 1, 2, 3.

They are gathers: generator ops of the pointwise emitter (codegen/pointwise.py) whose `emit` hook
computes, for each output element, the input elements it reads (shapes are static, so the window
loop unrolls at codegen time) and loads them masked, as `cat` does. The backward ops are the same
gathers read the other way: each *input* element loops over the (static, small) set of outputs that
can read it, so gradients are deterministic and need no atomics. Each sums in the order torch's
CPU kernels do (outputs in row-major order), so float32 results match eager up to FMA contraction.

- `max_pool(x)` / `max_pool_index(x)`: the value and the int64 position in the input plane torch's
  indices hold: the first maximum in window order, or where the window holds NaN, the last NaN (torch
  keeps `val > max || isnan(val)`); padding is never picked. The value is the input element itself
  (-0.0 stays -0.0). Both emit one shared loop when they meet in a kernel. `max_pool`'s VJP is
  `max_pool_backward(ct, index)`: each input element sums the cotangents of the windows whose index
  names it, so ties (ReLU zeros) get the whole gradient at one element, as in torch.
- `avg_pool(x)` and `avg_pool_backward(ct)`: torch's divisor rules (count_include_pad counts padding
  inside the padded input only; divisor_override); half types accumulate in float32.
- `adaptive_avg_pool(x)` and its backward (ir/ops/adaptive_pool.py): windows [floor(o*I/O),
  ceil((o+1)*I/O)) of unequal sizes.
- interpolation (`upsample_nearest`, `upsample_linear` and their backward ops) lives in
  ir/ops/interpolate.py, on the helpers here; the bytes every window op's loads read are counted in
  ir/ops/window_cost.py (`window_read_bytes`), and `WINDOW_OPS` names them all.
"""

from __future__ import annotations

import itertools
import math

import torch

from ..registry import FLOAT, INT, Domain, OpDef, register
from ..types import TRITON_NAMES, TensorType, compute_dtype, py_literal
from . import onnx_rules

aten = torch.ops.aten
NUMERIC_NO_BOOL = FLOAT + INT
# Generator ops of the pointwise emitter that read their inputs at other elements than their own, as
# the gathers of ir/ops/index.py do: fusion keeps their inputs group inputs (passes/fusion.py).
WINDOW_OPS = frozenset({"max_pool", "max_pool_index", "max_pool_backward", "avg_pool", "avg_pool_backward",
                        "upsample_nearest", "upsample_nearest_backward", "upsample_linear",
                        "upsample_linear_backward", "adaptive_avg_pool", "adaptive_avg_pool_backward"})


# -- geometry ------------------------------------------------------------------------------------------


def pool_out_size(size: int, k: int, s: int, p: int, d: int, ceil_mode: bool) -> int:
    """torch's pooling_output_shape: the last window must start inside the input or its left padding."""
    o = (size + 2 * p - d * (k - 1) - 1 + (s - 1 if ceil_mode else 0)) // s + 1
    if ceil_mode and (o - 1) * s >= size + p:
        o -= 1
    return o


def _spatial(t: TensorType, n: int, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    if not 1 <= n <= 3 or t.rank < n:
        raise ValueError(f"{name}: {n} window dims on {t}")
    return t.shape[:-n], t.shape[-n:]


def _check_pool(name: str, t: TensorType, kernel_size, stride, padding, dilation) -> None:
    n = len(kernel_size)
    if not (len(stride) == len(padding) == len(dilation) == n):
        raise ValueError(f"{name}: kernel_size, stride, padding, dilation of different lengths")
    for k, s, p, d in zip(kernel_size, stride, padding, dilation):
        if k < 1 or s < 1 or d < 1 or p < 0 or 2 * p > d * (k - 1) + 1:
            raise ValueError(f"{name}: invalid window k={k} s={s} p={p} d={d}")


def _pool_out(name: str, t: TensorType, kernel_size, stride, padding, dilation, ceil_mode) -> tuple[int, ...]:
    _check_pool(name, t, kernel_size, stride, padding, dilation)
    lead, sizes = _spatial(t, len(kernel_size), name)
    out = tuple(pool_out_size(i, k, s, p, d, ceil_mode)
                for i, k, s, p, d in zip(sizes, kernel_size, stride, padding, dilation))
    if any(o < 1 for o in out):
        raise ValueError(f"{name}: output size {out} is too small for input {t}")
    return lead + out


# -- emit helpers ----------------------------------------------------------------------------------


def _out_index(ctx, v) -> list[str]:
    """Index expressions of `v`'s dims in the kernel; 0 along a size-1 dim (the value may be a
    broadcast member of a larger pointwise group)."""
    return [i if s != 1 else f"({i} * 0)" for i, s in zip(ctx.dims(v), v.shape)]


def _tl(dtype: torch.dtype) -> str:
    return TRITON_NAMES[compute_dtype(dtype)]


def _lit(value, dtype: torch.dtype) -> str:
    return f"tl.full([], {py_literal(value, dtype)}, {_tl(dtype)})"


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _all(*conds: str) -> str:
    return " & ".join(f"({c})" for c in conds)


def _in_size(x, n: int) -> tuple[int, ...]:
    return tuple(x.shape[-n:])


def _plane_pos(e, coords: list[str], sizes: tuple[int, ...]) -> str:
    terms = [f"{c}.to(tl.int64) * {math.prod(sizes[i + 1:])}" for i, c in enumerate(coords)]
    return e.tmp(" + ".join(terms), "q")


def _memo(ctx) -> dict:
    """Per-kernel cache: `max_pool` and `max_pool_index` of one input share one window loop."""
    return ctx.__dict__.setdefault("_window_memo", {})


def _max_loop(ctx, node) -> tuple[str, str]:
    a = node.attrs
    x = node.inputs[0]
    key = ("max", x, tuple(_out_index(ctx, node.out)), tuple(sorted((k, repr(v)) for k, v in a.items())))
    memo = _memo(ctx)
    if key in memo:
        return memo[key]
    e, n = ctx.e, len(a["kernel_size"])
    out = _out_index(ctx, node.out)
    lead, sp = out[:-n], out[-n:]
    sizes = x.shape[-n:]
    floating = x.dtype.is_floating_point
    # torch starts from -inf (an integer type's lowest) at the window's first position not left of
    # the input (its start, moved right by the dilation while negative), then keeps
    # `val > max || isnan(val)`: a window of only -inf (or only padding) keeps that position.
    lowest = float("-inf") if floating else int(torch.iinfo(x.dtype).min)
    best = e.tmp(f"tl.full({ctx.block}, {py_literal(lowest, x.dtype)}, {_tl(x.dtype)})", "b")
    first = []
    for i in range(n):
        s, p, d = a["stride"][i], a["padding"][i], a["dilation"][i]
        st = e.tmp(f"{sp[i]} * {s} - {p}", "w")
        first.append(e.tmp(f"tl.where({st} < 0, {st} + ((0 - {st} + {d - 1}) // {d}) * {d}, {st})", "w"))
    idx = e.tmp(f"{_plane_pos(e, first, sizes)} + tl.full({ctx.block}, 0, tl.int64)", "j")
    for offs in itertools.product(*(range(k) for k in a["kernel_size"])):
        coords, conds = [], [ctx.mask]
        for i, j in enumerate(offs):
            c = e.tmp(f"{sp[i]} * {a['stride'][i]} + {j * a['dilation'][i] - a['padding'][i]}", "w")
            coords.append(c)
            conds += [f"{c} >= 0", f"{c} < {sizes[i]}"]
        valid = e.tmp(_all(*conds), "m")
        v = ctx.load(x, lead + coords, valid)
        take = [f"{v} > {best}"] + ([f"{v} != {v}"] if floating else [])
        upd = e.tmp(f"{valid} & ({' | '.join(f'({t})' for t in take)})", "u")
        best = e.tmp(f"tl.where({upd}, {v}, {best})", "b")
        idx = e.tmp(f"tl.where({upd}, {_plane_pos(e, coords, sizes)}, {idx})", "j")
    memo[key] = best, idx
    return best, idx


def _max_pool_emit(ctx, node) -> str:
    return ctx.bind(_max_loop(ctx, node)[0], node.out.dtype)


def _max_pool_index_emit(ctx, node) -> str:
    return _max_loop(ctx, node)[1]


def _windows_of(e, h: str, k: int, s: int, p: int, d: int, o_size: int) -> list[tuple[str, str]]:
    """(output index, condition) of each window offset j whose window can hold input index `h`, in
    increasing output order: o*s - p + j*d == h."""
    res = []
    for j in reversed(range(k)):
        num = e.tmp(f"{h} + {p - j * d}", "w")
        if s == 1:
            o, cond = num, [f"{num} >= 0", f"{num} < {o_size}"]
        else:
            o = e.tmp(f"{num} // {s}", "w")
            cond = [f"{num} >= 0", f"{num} % {s} == 0", f"{o} < {o_size}"]
        res.append((o, _all(*cond)))
    return res


def _max_pool_backward_emit(ctx, node) -> str:
    a = node.attrs
    ct, index = node.inputs
    e, n = ctx.e, len(a["kernel_size"])
    out = _out_index(ctx, node.out)
    lead, sp = out[:-n], out[-n:]
    sizes = node.out.shape[-n:]
    me = _plane_pos(e, sp, sizes)
    per_dim = [_windows_of(e, sp[i], a["kernel_size"][i], a["stride"][i], a["padding"][i], a["dilation"][i],
                           ct.shape[-n + i]) for i in range(n)]
    acc_t = _acc_dtype(ct.dtype)
    acc = e.tmp(f"tl.full({ctx.block}, 0, {_tl(acc_t)})", "acc")
    for combo in itertools.product(*per_dim):
        m = e.tmp(_all(ctx.mask, *(c for _, c in combo)), "m")
        where = lead + [o for o, _ in combo]
        g = ctx.load(ct, where, m)
        hit = e.tmp(f"{m} & ({ctx.load(index, where, m)} == {me})", "m")
        acc = e.tmp(f"{acc} + tl.where({hit}, {g}.to({_tl(acc_t)}), 0)", "acc")
    return ctx.bind(acc, node.out.dtype)


def _avg_divisor(e, sp: list[str], sizes, a) -> str:
    """torch's divisor of each output window (a float of the accumulation dtype when emitted)."""
    if a["divisor_override"]:
        return f"tl.full([], {int(a['divisor_override'])}, tl.int32)"
    factors = []
    for i, o in enumerate(sp):
        k, s, p, size = a["kernel_size"][i], a["stride"][i], a["padding"][i], sizes[i]
        start = e.tmp(f"{o} * {s} - {p}", "w")
        end = e.tmp(f"tl.minimum({start} + {k}, {size + p})", "w")
        if a["count_include_pad"]:
            factors.append(f"({end} - {start})")
        else:
            factors.append(f"(tl.minimum({end}, {size}) - tl.maximum({start}, 0))")
    return e.tmp(" * ".join(factors), "w")


def _avg_pool_emit(ctx, node) -> str:
    a = node.attrs
    x = node.inputs[0]
    e, n = ctx.e, len(a["kernel_size"])
    out = _out_index(ctx, node.out)
    lead, sp = out[:-n], out[-n:]
    sizes = x.shape[-n:]
    acc_t = _acc_dtype(x.dtype)
    acc = e.tmp(f"tl.full({ctx.block}, 0, {_tl(acc_t)})", "acc")
    for offs in itertools.product(*(range(k) for k in a["kernel_size"])):
        coords, conds = [], [ctx.mask]
        for i, j in enumerate(offs):
            c = e.tmp(f"{sp[i]} * {a['stride'][i]} + {j - a['padding'][i]}", "w")
            coords.append(c)
            conds += [f"{c} >= 0", f"{c} < {sizes[i]}"]
        valid = e.tmp(_all(*conds), "m")
        v = ctx.load(x, lead + coords, valid)
        acc = e.tmp(f"{acc} + tl.where({valid}, {v}.to({_tl(acc_t)}), 0)", "acc")
    div = _avg_divisor(e, sp, sizes, a)
    return ctx.bind(f"{acc} / ({div}).to({_tl(acc_t)})", node.out.dtype)


def _avg_pool_backward_emit(ctx, node) -> str:
    a = node.attrs
    (ct,) = node.inputs
    e, n = ctx.e, len(a["kernel_size"])
    out = _out_index(ctx, node.out)
    lead, sp = out[:-n], out[-n:]
    sizes = node.out.shape[-n:]
    per_dim = []
    for i in range(n):  # outputs o with o*s - p <= h < o*s - p + k, increasing
        k, s, p, osz = a["kernel_size"][i], a["stride"][i], a["padding"][i], ct.shape[-n + i]
        hi = e.tmp(f"({sp[i]} + {p}) // {s}", "w")
        opts = []
        for t in reversed(range((k + s - 1) // s)):
            o = e.tmp(f"{hi} - {t}", "w")
            opts.append((o, _all(f"{o} >= 0", f"{o} < {osz}", f"{o} * {s} + {k - p} > {sp[i]}")))
        per_dim.append(opts)
    acc_t = _acc_dtype(ct.dtype)
    acc = e.tmp(f"tl.full({ctx.block}, 0, {_tl(acc_t)})", "acc")
    for combo in itertools.product(*per_dim):
        m = e.tmp(_all(ctx.mask, *(c for _, c in combo)), "m")
        os_ = [o for o, _ in combo]
        g = ctx.load(ct, lead + os_, m)
        div = _avg_divisor(e, os_, sizes, a)
        acc = e.tmp(f"{acc} + tl.where({m}, {g}.to({_tl(acc_t)}) / ({div}).to({_tl(acc_t)}), 0)", "acc")
    return ctx.bind(acc, node.out.dtype)


# -- pooling: types and references ---------------------------------------------------------------------


def _pool_attrs(kernel_size, stride, padding, dilation, ceil_mode):
    return dict(kernel_size=tuple(kernel_size), stride=tuple(stride), padding=tuple(padding),
                dilation=tuple(dilation), ceil_mode=bool(ceil_mode))


def _max_pool_infer(types, kernel_size, stride, padding, dilation, ceil_mode, index=False) -> TensorType:
    (t,) = types
    if t.dtype not in NUMERIC_NO_BOOL:
        raise TypeError(f"max_pool: no max pooling of {t.dtype}")
    shape = _pool_out("max_pool", t, kernel_size, stride, padding, dilation, ceil_mode)
    return TensorType(shape, torch.int64 if index else t.dtype)


def _as_batch(x: torch.Tensor, n: int) -> torch.Tensor:
    """x as (1, B, *spatial) for torch's pooling functions (1-d: (1, B, 1, L), pooled as 2-d)."""
    x = x.reshape((1, -1) + tuple(x.shape[x.dim() - n:]))
    return x.unsqueeze(2) if n == 1 else x


def _two_d(n: int, values, fill) -> tuple:
    return (fill,) + tuple(values) if n == 1 else tuple(values)


def _torch_max_pool(x, kernel_size, stride, padding, dilation, ceil_mode):
    n = len(kernel_size)
    fn = torch.nn.functional.max_pool3d if n == 3 else torch.nn.functional.max_pool2d
    v, i = fn(_as_batch(x, n), _two_d(n, kernel_size, 1), _two_d(n, stride, 1), _two_d(n, padding, 0),
              _two_d(n, dilation, 1), ceil_mode, return_indices=True)
    lead = tuple(x.shape[:x.dim() - n])
    shape = lead + tuple(v.shape[v.dim() - n:])
    return v.reshape(shape), i.reshape(shape)


def _max_pool_vjp(g, inputs, out, ct, **a):
    (x,) = inputs
    index = g.add("max_pool_index", [x], **a)
    return [g.add("max_pool_backward", [ct, index], input_size=tuple(x.shape[-len(a["kernel_size"]):]), **a)]


def _max_pool_backward_vjp(g, inputs, out, ct, input_size, **a):
    """The transpose of scattering by index: each window reads the cotangent at its index (`gather`
    over the flattened plane, ir/ops/index.py). The indices get none."""
    grad, index = inputs
    n = len(input_size)
    lead = tuple(grad.shape[:-n])
    plane = g.add("reshape", [ct], shape=lead + (math.prod(input_size),))
    flat = g.add("reshape", [index], shape=lead + (math.prod(index.shape[-n:]),))
    picked = g.add("gather", [plane, flat], dim=len(lead))
    return [g.add("reshape", [picked], shape=tuple(grad.shape)), None]


def _max_pool_backward_infer(types, kernel_size, stride, padding, dilation, ceil_mode, input_size) -> TensorType:
    ct, index = types
    if ct.dtype not in FLOAT or index.dtype != torch.int64 or index.shape != ct.shape:
        raise TypeError(f"max_pool_backward: takes a float cotangent and int64 indices of its shape, got {types}")
    n = len(kernel_size)
    lead, _ = _spatial(ct, n, "max_pool_backward")
    t = TensorType(lead + tuple(input_size), ct.dtype)
    if _pool_out("max_pool_backward", t, kernel_size, stride, padding, dilation, ceil_mode) != ct.shape:
        raise ValueError(f"max_pool_backward: cotangent {ct} does not fit input size {input_size}")
    return t


def _max_pool_backward_impl(ct, index, kernel_size, stride, padding, dilation, ceil_mode, input_size):
    n = len(kernel_size)
    lead = tuple(ct.shape[:ct.dim() - n])
    self = _as_batch(torch.empty(lead + tuple(input_size), dtype=ct.dtype), n)
    fn = aten.max_pool3d_with_indices_backward if n == 3 else aten.max_pool2d_with_indices_backward
    r = fn(_as_batch(ct, n), self, _two_d(n, kernel_size, 1), _two_d(n, stride, 1), _two_d(n, padding, 0),
           _two_d(n, dilation, 1), ceil_mode, _as_batch(index, n))
    return r.reshape(lead + tuple(input_size))


def _avg_pool_infer(types, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    (t,) = types
    if t.dtype not in FLOAT:
        raise TypeError(f"avg_pool: needs a floating-point input, got {t.dtype}")
    n = len(kernel_size)
    if any(2 * p > k for p, k in zip(padding, kernel_size)):
        raise ValueError("avg_pool: padding must be at most half the kernel size")
    return TensorType(_pool_out("avg_pool", t, kernel_size, stride, padding, (1,) * n, ceil_mode), t.dtype)


def _avg_pool_impl(x, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override):
    n = len(kernel_size)
    fn = aten.avg_pool3d if n == 3 else aten.avg_pool2d
    v = fn(_as_batch(x, n), _two_d(n, kernel_size, 1), _two_d(n, stride, 1), _two_d(n, padding, 0), ceil_mode,
           count_include_pad, divisor_override)
    return v.reshape(tuple(x.shape[:x.dim() - n]) + tuple(v.shape[v.dim() - n:]))


def _avg_attrs(a: dict) -> dict:
    return {k: a[k] for k in ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                              "divisor_override")}


def _avg_pool_backward_infer(types, input_size, **a) -> TensorType:
    (ct,) = types
    lead, _ = _spatial(ct, len(a["kernel_size"]), "avg_pool_backward")
    t = TensorType(lead + tuple(input_size), ct.dtype)
    if _avg_pool_infer([t], **a).shape != ct.shape:
        raise ValueError(f"avg_pool_backward: cotangent {ct} does not fit input size {input_size}")
    return t


def _avg_pool_backward_impl(ct, input_size, kernel_size, stride, padding, ceil_mode, count_include_pad,
                            divisor_override):
    n = len(kernel_size)
    lead = tuple(ct.shape[:ct.dim() - n])
    self = _as_batch(torch.empty(lead + tuple(input_size), dtype=ct.dtype), n)
    fn = aten.avg_pool3d_backward if n == 3 else aten.avg_pool2d_backward
    r = fn(_as_batch(ct, n), self, _two_d(n, kernel_size, 1), _two_d(n, stride, 1), _two_d(n, padding, 0),
           ceil_mode, count_include_pad, divisor_override)
    return r.reshape(lead + tuple(input_size))


def _window_cost(node) -> int:
    a = node.attrs
    return math.prod(a["kernel_size"]) * node.out.type.numel


_POOL = _pool_attrs((3, 3), (2, 2), (1, 1), (1, 1), False)
_POOL_CEIL = _pool_attrs((2, 3), (2, 1), (1, 0), (2, 1), True)
_POOL_1D = _pool_attrs((3,), (2,), (1,), (2,), True)
_AVG = dict(kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), ceil_mode=True, count_include_pad=False,
            divisor_override=None)
_AVG_1D = dict(kernel_size=(3,), stride=(1,), padding=(1,), ceil_mode=False, count_include_pad=True,
               divisor_override=None)
_F3D = (torch.float64, torch.float32)  # torch has no CPU avg_pool3d in half precision
_AVG_3D = dict(kernel_size=(2, 3, 3), stride=(1, 2, 2), padding=(1, 1, 0), ceil_mode=False,
               count_include_pad=True, divisor_override=5)

register(OpDef("max_pool", "layout", _max_pool_infer, lambda x, **a: _torch_max_pool(x, **a)[0],
               emit=_max_pool_emit, vjp=_max_pool_vjp, cost=_window_cost, onnx=onnx_rules.max_pool,
               domains=(Domain(NUMERIC_NO_BOOL, _POOL, shapes=((2, 3, 7, 6),), rejects=(torch.bool,)),
                        Domain(FLOAT, _POOL_CEIL, shapes=((2, 9, 7),), rejects=(torch.bool,)),
                        Domain(FLOAT, _POOL_1D, shapes=((3, 10),), rejects=(torch.bool,))),
               doc="max over windows (kernel_size, stride, padding, dilation, ceil_mode) of the last dims"))
register(OpDef("max_pool_index", "layout", lambda types, **a: _max_pool_infer(types, index=True, **a),
               lambda x, **a: _torch_max_pool(x, **a)[1], emit=_max_pool_index_emit, cost=_window_cost,
               domains=(Domain(NUMERIC_NO_BOOL, _POOL, shapes=((2, 3, 7, 6),), rejects=(torch.bool,)),
                        Domain(FLOAT, _POOL_1D, shapes=((3, 10),), rejects=(torch.bool,))),
               doc="the position in the input plane of max_pool's element (torch's indices)"))
# Sampled where one window covers the whole plane: a random index must lie in its window (the
# gather reads each element's windows only); max_pool's VJP checks it on real windows.
_WHOLE = dict(_pool_attrs((3, 4), (1, 1), (0, 0), (1, 1), False), input_size=(3, 4))
register(OpDef("max_pool_backward", "layout", _max_pool_backward_infer, _max_pool_backward_impl, arity=2,
               emit=_max_pool_backward_emit, cost=_window_cost, vjp=_max_pool_backward_vjp,
               domains=(Domain(FLOAT, _WHOLE, shapes=((2, 3, 1, 1), (2, 3, 1, 1)), fixed={1: torch.int64},
                               ranges={1: (0, 11)}),),
               doc="for each input element, the sum of the cotangents whose index names it"))
register(OpDef("avg_pool", "layout", _avg_pool_infer, _avg_pool_impl, emit=_avg_pool_emit, onnx=onnx_rules.avg_pool,
               vjp=lambda g, inputs, out, ct, **a: [g.add("avg_pool_backward", [ct], input_size=tuple(
                   inputs[0].shape[-len(a["kernel_size"]):]), **a)], cost=_window_cost,
               domains=(Domain(FLOAT, _AVG, shapes=((2, 3, 7, 6),)), Domain(FLOAT, _AVG_1D, shapes=((3, 8),)),
                        Domain(_F3D, _AVG_3D, shapes=((2, 4, 5, 6),), rejects=INT + (torch.bool,))),
               doc="mean over windows, torch's divisor rules"))
register(OpDef("avg_pool_backward", "layout", _avg_pool_backward_infer, _avg_pool_backward_impl,
               emit=_avg_pool_backward_emit, cost=_window_cost,
               vjp=lambda g, inputs, out, ct, input_size, **a: [g.add("avg_pool", [ct], **a)],
               domains=(Domain(FLOAT, dict(_AVG, input_size=(7, 6)), shapes=((2, 3, 4, 4),)),
                        Domain(_F3D, dict(_AVG_3D, input_size=(4, 5, 6)), shapes=((2, 5, 3, 2),),
                               rejects=INT + (torch.bool,))),
               doc="avg_pool's transpose: each input element sums cotangent / divisor of its windows"))
