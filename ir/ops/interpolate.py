"""Interpolation ops (`F.interpolate`): `upsample_nearest(x)` (`exact`: nearest-exact) and
`upsample_linear(x)` (linear, bilinear, trilinear; align_corners) over the last n = len(output_size)
dims, and their backward ops, as window ops (ir/ops/window.py: gathers of the pointwise emitter).

Source indices and weights follow torch's CPU kernels exactly: float32 opmath (float64 for float64),
an explicit scale as 1/scale (`F.interpolate(scale_factor=...)` passes it on), 2-d nearest's
shortcuts for out == in and out == 2 * in (`nearest_mode`: the 1-d and 3-d forward kernels have none),
nearest-exact's (dst + 0.5) * scale in double. The backward ops are
gathers read the other way: each input element loops over a static range of candidate outputs
(`_reverse_range`, found by running the same index math on the host) and keeps those whose source
index is its own, summing in output order as torch does. Each pair is a linear map and its
transpose, so each one's VJP is the other.
"""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ..registry import FLOAT, Domain, OpDef, register
from ..types import TensorType, py_literal
from . import onnx_rules
from .window import _acc_dtype, _all, _in_size, _lit, _out_index, _spatial, _tl

aten = torch.ops.aten


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _np(dtype: torch.dtype):
    return np.float64 if dtype == torch.float64 else np.float32


def _scale(in_size: int, out_size: int, scale, align_corners: bool | None, dtype: torch.dtype) -> float:
    """torch's area_pixel_compute_scale / compute_scales_value, rounded to the opmath dtype."""
    f = _np(dtype)
    if align_corners:
        return float(f(in_size - 1) / f(out_size - 1)) if out_size > 1 else 0.0
    if scale is not None and scale > 0:
        return float(f(1.0 / scale))
    return float(f(in_size) / f(out_size))


def nearest_mode(attrs: dict, n: int, backward: bool = False) -> str:
    """How torch's CPU kernels find nearest source indices: "exact" (nearest-exact), "shortcut"
    (out == in copies, out == 2 * in halves, whatever the scale: the 2-d forward and every backward
    kernel) or "plain" (the scale throughout: the 1-d and 3-d forward kernels). ember follows each, so
    where they disagree (an explicit scale with out == in or 2 * in, 1-d and 3-d) the gradient is
    eager's, which is not the transpose of eager's forward there."""
    if attrs.get("exact", False):
        return "exact"
    return "shortcut" if backward or n == 2 else "plain"


def _nearest_host(o: np.ndarray, in_size: int, out_size: int, scale, mode: str) -> np.ndarray:
    """Source indices of outputs `o`, as torch's CPU kernels compute them."""
    if mode == "shortcut" and out_size == in_size:
        return o
    if mode == "shortcut" and out_size == 2 * in_size:
        return o >> 1
    sc = np.float32(_scale(in_size, out_size, scale, None, torch.float32))
    src = np.float32((o + 0.5) * np.float64(sc)) if mode == "exact" else o.astype(np.float32) * sc
    return np.minimum(np.floor(src).astype(np.int64), in_size - 1)


def _nearest_src(e, o: str, in_size: int, out_size: int, scale, mode: str) -> str:
    """The same source index in the kernel."""
    if mode == "shortcut" and out_size == in_size:
        return o
    if mode == "shortcut" and out_size == 2 * in_size:
        return e.tmp(f"{o} // 2", "w")
    sc = py_literal(_scale(in_size, out_size, scale, None, torch.float32), torch.float32)
    if mode == "exact":  # (dst + 0.5) * scale in double, rounded to float, floored (floorf)
        src = f"(({o}.to(tl.float64) + 0.5) * {sc}).to(tl.float32)"
    else:
        src = f"{o}.to(tl.float32) * tl.full([], {sc}, tl.float32)"
    return e.tmp(f"tl.minimum(tl.floor({src}).to(tl.int32), {in_size - 1})", "w")


def _linear_host(o: np.ndarray, in_size: int, out_size: int, scale, align: bool, dtype: torch.dtype):
    if out_size == in_size:
        return o, o
    f = _np(dtype)
    sc = f(_scale(in_size, out_size, scale, align, dtype))
    if align:
        src = sc * o.astype(f)
    else:
        src = np.maximum(sc * (o.astype(f) + f(0.5)) - f(0.5), f(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    return i0, i0 + (i0 < in_size - 1)


def _linear_src(e, o: str, in_size: int, out_size: int, scale, align: bool, dtype: torch.dtype):
    """(i0, i1, lambda0, lambda1) of output index `o`: torch's compute_source_index_and_lambda, which
    copies where out == in whatever the scale."""
    op = _opmath(dtype)
    t = _tl(op)
    if out_size == in_size:
        return o, o, _lit(1, op), _lit(0, op)
    sc = _lit(_scale(in_size, out_size, scale, align, op), op)
    of = f"{o}.to({t})"
    if align:
        src = e.tmp(f"{sc} * {of}", "r")
    else:
        src = e.tmp(f"tl.maximum({sc} * ({of} + {_lit(0.5, op)}) - {_lit(0.5, op)}, {_lit(0, op)})", "r")
    i0 = e.tmp(f"tl.minimum(tl.floor({src}).to(tl.int32), {in_size - 1})", "w")
    i1 = e.tmp(f"{i0} + ({i0} < {in_size - 1}).to(tl.int32)", "w")
    l1 = e.tmp(f"tl.minimum(tl.maximum({src} - {i0}.to({t}), {_lit(0, op)}), {_lit(1, op)})", "r")
    l0 = e.tmp(f"{_lit(1, op)} - {l1}", "r")
    return i0, i1, l0, l1


def _scales_of(a: dict, n: int) -> tuple:
    return tuple(a["scales"]) if a.get("scales") is not None else (None,) * n


def _upsample_nearest_emit(ctx, node) -> str:
    a = node.attrs
    x = node.inputs[0]
    n = len(a["output_size"])
    out = _out_index(ctx, node.out)
    lead, sp = out[:-n], out[-n:]
    scales = _scales_of(a, n)
    mode = nearest_mode(a, n)
    src = [_nearest_src(ctx.e, sp[i], x.shape[-n + i], a["output_size"][i], scales[i], mode) for i in range(n)]
    return ctx.bind(ctx.load(x, lead + src, ctx.mask), node.out.dtype)


def _upsample_linear_emit(ctx, node) -> str:
    a = node.attrs
    x = node.inputs[0]
    e, n = ctx.e, len(a["output_size"])
    out = _out_index(ctx, node.out)
    lead, sp = out[:-n], out[-n:]
    scales = _scales_of(a, n)
    dims = [_linear_src(e, sp[i], x.shape[-n + i], a["output_size"][i], scales[i], a["align_corners"], x.dtype)
            for i in range(n)]
    t = _tl(_opmath(x.dtype))

    def interp(i: int, where: list[str]) -> str:  # t0 * w0 + t1 * w1, outer dim first (torch's order)
        if i == n:
            return e.tmp(f"{ctx.load(x, lead + where, ctx.mask)}.to({t})", "r")
        i0, i1, l0, l1 = dims[i]
        t0, t1 = interp(i + 1, where + [i0]), interp(i + 1, where + [i1])
        return e.tmp(f"{t0} * {l0} + {t1} * {l1}", "r")

    return ctx.bind(interp(0, []), node.out.dtype)


def _reverse_range(src_of, in_size: int, out_size: int) -> tuple[int, int, int]:
    """For a gather read the other way: the outputs o that read input h lie in
    [(h * out_size) // in_size - back, ... + count); returns (out_size, back, count), found from the
    source indices of every output (`src_of(o)`: arrays of sources per output)."""
    o = np.arange(out_size)
    base = (np.arange(in_size) * out_size) // in_size
    lo = np.full(in_size, np.iinfo(np.int64).max)
    hi = np.full(in_size, -1)
    for s in src_of(o):
        np.minimum.at(lo, s, o)
        np.maximum.at(hi, s, o)
    read = hi >= 0
    back = int(max(0, (base - lo)[read].max(initial=0))) + 1  # one of slack each side: float ties
    count = int((hi - (base - back))[read].max(initial=0)) + 2
    return out_size, back, count


def _candidates(e, h: str, in_size: int, rng: tuple[int, int, int]) -> list[tuple[str, str]]:
    out_size, back, count = rng
    base = e.tmp(f"({h} * {out_size}) // {in_size} - {back}", "w")
    res = []
    for c in range(count):
        o = e.tmp(f"{base} + {c}", "w")
        res.append((o, _all(f"{o} >= 0", f"{o} < {out_size}")))
    return res


def _upsample_nearest_backward_emit(ctx, node) -> str:
    a = node.attrs
    (ct,) = node.inputs
    e, n = ctx.e, len(a["output_size"])
    out = _out_index(ctx, node.out)
    lead, sp = out[:-n], out[-n:]
    scales = _scales_of(a, n)
    per_dim = []
    for i in range(n):
        isz, osz = node.out.shape[-n + i], a["output_size"][i]
        mode = nearest_mode(a, n, backward=True)
        rng = _reverse_range(lambda o, i=i, isz=isz, osz=osz: [_nearest_host(o, isz, osz, scales[i], mode)],
                             isz, osz)
        per_dim.append([(o, _all(c, f"{_nearest_src(e, o, isz, osz, scales[i], mode)} == {sp[i]}"))
                        for o, c in _candidates(e, sp[i], isz, rng)])
    acc_t = _acc_dtype(ct.dtype)
    acc = e.tmp(f"tl.full({ctx.block}, 0, {_tl(acc_t)})", "acc")
    for combo in itertools.product(*per_dim):
        m = e.tmp(_all(ctx.mask, *(c for _, c in combo)), "m")
        g = ctx.load(ct, lead + [o for o, _ in combo], m)
        acc = e.tmp(f"{acc} + tl.where({m}, {g}.to({_tl(acc_t)}), 0)", "acc")
    return ctx.bind(acc, node.out.dtype)


def _upsample_linear_backward_emit(ctx, node) -> str:
    a = node.attrs
    (ct,) = node.inputs
    e, n = ctx.e, len(a["output_size"])
    out = _out_index(ctx, node.out)
    lead, sp = out[:-n], out[-n:]
    scales = _scales_of(a, n)
    op = _opmath(ct.dtype)
    t = _tl(op)
    per_dim = []
    for i in range(n):
        isz, osz = node.out.shape[-n + i], a["output_size"][i]
        rng = _reverse_range(lambda o, i=i, isz=isz, osz=osz: _linear_host(o, isz, osz, scales[i],
                                                                            a["align_corners"], op), isz, osz)
        opts = []
        for o, c in _candidates(e, sp[i], isz, rng):
            i0, i1, l0, l1 = _linear_src(e, o, isz, osz, scales[i], a["align_corners"], op)
            opts.append((o, c, ((f"{i0} == {sp[i]}", l0), (f"{i1} == {sp[i]}", l1))))
        per_dim.append(opts)
    acc = e.tmp(f"tl.full({ctx.block}, 0, {t})", "acc")
    for combo in itertools.product(*per_dim):
        m = e.tmp(_all(ctx.mask, *(c for _, c, _ in combo)), "m")
        g = e.tmp(f"{ctx.load(ct, lead + [o for o, _, _ in combo], m)}.to({t})", "r")
        for corner in itertools.product(*(ws for _, _, ws in combo)):  # torch's order: h0w0, h0w1, h1w0, h1w1
            hit = _all(m, *(h for h, _ in corner))
            w = " * ".join(lam for _, lam in corner)
            acc = e.tmp(f"{acc} + tl.where({hit}, {w} * {g}, 0)", "acc")
    return ctx.bind(acc, node.out.dtype)


def _upsample_infer(name: str):
    def infer(types, output_size, scales=None, **a) -> TensorType:
        (t,) = types
        if t.dtype not in FLOAT:
            raise TypeError(f"{name}: needs a floating-point input, got {t.dtype}")
        lead, _ = _spatial(t, len(output_size), name)
        if any(o < 1 for o in output_size) or (scales is not None and len(scales) != len(output_size)):
            raise ValueError(f"{name}: invalid output_size {output_size} / scales {scales}")
        return TensorType(lead + tuple(output_size), t.dtype)
    return infer


def _upsample_backward_infer(name: str):
    def infer(types, output_size, input_size, scales=None, **a) -> TensorType:
        (t,) = types
        n = len(output_size)
        if t.dtype not in FLOAT or len(input_size) != n:
            raise TypeError(f"{name}: needs a floating-point cotangent and {n} input sizes, got {types}")
        lead, sizes = _spatial(t, n, name)
        if tuple(sizes) != tuple(output_size):
            raise ValueError(f"{name}: cotangent {t} does not have output_size {output_size}")
        return TensorType(lead + tuple(input_size), t.dtype)
    return infer


_NEAREST = {1: aten.upsample_nearest1d, 2: aten.upsample_nearest2d, 3: aten.upsample_nearest3d}
_NEAREST_EXACT = {1: aten._upsample_nearest_exact1d, 2: aten._upsample_nearest_exact2d,
                  3: aten._upsample_nearest_exact3d}
_LINEAR = {1: aten.upsample_linear1d, 2: aten.upsample_bilinear2d, 3: aten.upsample_trilinear3d}


def _flat(x: torch.Tensor, n: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    lead = tuple(x.shape[:x.dim() - n])
    return x.reshape((1, -1) + tuple(x.shape[x.dim() - n:])), lead


def _nearest_impl(x, output_size, scales=None, exact=False):
    n = len(output_size)
    f, lead = _flat(x, n)
    y = (_NEAREST_EXACT if exact else _NEAREST)[n].default(f, list(output_size), *_scales_of({"scales": scales}, n))
    return y.reshape(lead + tuple(output_size))


def _nearest_backward_impl(ct, output_size, input_size, scales=None, exact=False):
    n = len(output_size)
    f, lead = _flat(ct, n)
    fn = getattr(aten, ("_upsample_nearest_exact" if exact else "upsample_nearest") + f"{n}d_backward").default
    y = fn(f, list(output_size), [1, f.shape[1]] + list(input_size), *_scales_of({"scales": scales}, n))
    return y.reshape(lead + tuple(input_size))


def _linear_impl(x, output_size, align_corners, scales=None):
    n = len(output_size)
    f, lead = _flat(x, n)
    y = _LINEAR[n].default(f, list(output_size), align_corners, *_scales_of({"scales": scales}, n))
    return y.reshape(lead + tuple(output_size))


def _linear_backward_impl(ct, output_size, input_size, align_corners, scales=None):
    n = len(output_size)
    f, lead = _flat(ct, n)
    fn = getattr(aten, {1: "upsample_linear1d", 2: "upsample_bilinear2d", 3: "upsample_trilinear3d"}[n]
                 + "_backward").default
    y = fn(f, list(output_size), [1, f.shape[1]] + list(input_size), align_corners,
           *_scales_of({"scales": scales}, n))
    return y.reshape(lead + tuple(input_size))


def _nearest_cost(node) -> int:
    return node.out.type.numel


def _linear_cost(node) -> int:
    return 3 * 2 ** len(node.attrs["output_size"]) * node.out.type.numel


_UP = dict(output_size=(7,), scales=None)
register(OpDef("upsample_nearest", "layout", _upsample_infer("upsample_nearest"), _nearest_impl,
               emit=_upsample_nearest_emit, cost=_nearest_cost, onnx=onnx_rules.upsample_nearest,
               vjp=lambda g, inputs, out, ct, output_size, **a: [g.add(
                   "upsample_nearest_backward", [ct], output_size=output_size,
                   input_size=_in_size(inputs[0], len(output_size)), **a)],
               domains=(Domain(FLOAT, _UP, shapes=((2, 3, 5),)),
                        Domain(FLOAT, dict(output_size=(5, 9), scales=(1.7, 2.3), exact=False), shapes=((2, 3, 3, 4),)),
                        Domain(FLOAT, dict(output_size=(4, 3, 7), scales=None, exact=True), shapes=((2, 2, 3, 5),)),
                        Domain(FLOAT, dict(output_size=(3, 10), scales=None, exact=False), shapes=((2, 7, 5),)),
                        # out == in and out == 2 * in with other scales: 2-d takes shortcuts, 3-d does not
                        Domain(FLOAT, dict(output_size=(3, 8), scales=(1.2, 2.1), exact=False), shapes=((2, 3, 3, 4),)),
                        Domain(FLOAT, dict(output_size=(4, 3, 10), scales=(2.1, 1.1, 2.1), exact=False),
                               shapes=((2, 2, 3, 5),))),
               aten=(aten.upsample_nearest1d.default, aten.upsample_nearest2d.default,
                     aten.upsample_nearest3d.default, aten._upsample_nearest_exact1d.default,
                     aten._upsample_nearest_exact2d.default, aten._upsample_nearest_exact3d.default),
               doc="out[o] = x[src(o)] per dim, torch's nearest / nearest-exact (exact) source index"))
register(OpDef("upsample_nearest_backward", "layout", _upsample_backward_infer("upsample_nearest_backward"),
               _nearest_backward_impl, emit=_upsample_nearest_backward_emit, cost=_nearest_cost,
               vjp=lambda g, inputs, out, ct, output_size, input_size, **a: [g.add(
                   "upsample_nearest", [ct], output_size=output_size, **a)],
               domains=(Domain(FLOAT, dict(output_size=(5, 9), input_size=(3, 4), scales=(1.7, 2.3), exact=False),
                               shapes=((2, 3, 5, 9),)),
                        Domain(FLOAT, dict(output_size=(4, 3, 7), input_size=(2, 3, 5), scales=None, exact=True),
                               shapes=((2, 4, 3, 7),)),
                        # torch's backward kernels take the shortcuts in 3-d too (`nearest_mode`)
                        Domain(FLOAT, dict(output_size=(4, 3, 10), input_size=(2, 3, 5), scales=(2.1, 1.1, 2.1),
                                           exact=False), shapes=((2, 4, 3, 10),))),
               doc="upsample_nearest's transpose (as torch's backward kernels compute it): each input sums the "
                   "cotangents of the outputs that read it"))
_LIN = dict(output_size=(7,), align_corners=False, scales=None)
register(OpDef("upsample_linear", "layout", _upsample_infer("upsample_linear"), _linear_impl,
               emit=_upsample_linear_emit, cost=_linear_cost,
               vjp=lambda g, inputs, out, ct, output_size, **a: [g.add(
                   "upsample_linear_backward", [ct], output_size=output_size,
                   input_size=_in_size(inputs[0], len(output_size)), **a)],
               domains=(Domain(FLOAT, _LIN, shapes=((2, 3, 5),)),
                        Domain(FLOAT, dict(output_size=(7, 9), align_corners=True, scales=None), shapes=((2, 3, 4),)),
                        Domain(FLOAT, dict(output_size=(5, 9), align_corners=False, scales=(1.7, 2.3)),
                               shapes=((2, 3, 3, 4),)),
                        Domain(FLOAT, dict(output_size=(3, 4, 7), align_corners=False, scales=None),
                               shapes=((2, 2, 3, 5),)),
                        # out == in along H with a scale of 1.21: torch copies there
                        Domain(FLOAT, dict(output_size=(3, 9), align_corners=False, scales=(1.21, 2.3)),
                               shapes=((2, 3, 3, 4),))),
               doc="linear / bilinear / trilinear interpolation, torch's source index and weights"))
register(OpDef("upsample_linear_backward", "layout", _upsample_backward_infer("upsample_linear_backward"),
               _linear_backward_impl, emit=_upsample_linear_backward_emit, cost=_linear_cost,
               vjp=lambda g, inputs, out, ct, output_size, input_size, **a: [g.add(
                   "upsample_linear", [ct], output_size=output_size, **a)],
               domains=(Domain(FLOAT, dict(output_size=(5, 9), input_size=(3, 4), align_corners=False,
                                           scales=(1.7, 2.3)), shapes=((2, 3, 5, 9),)),
                        Domain(FLOAT, dict(output_size=(7, 9), input_size=(3, 4), align_corners=True, scales=None),
                               shapes=((2, 7, 9),)),
                        Domain(FLOAT, dict(output_size=(2, 3), input_size=(5, 7), align_corners=False, scales=None),
                               shapes=((3, 2, 3),))),
               doc="upsample_linear's transpose: each input sums weight * cotangent of the outputs that read it"))
