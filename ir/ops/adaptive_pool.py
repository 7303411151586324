"""Adaptive average pooling as a window op (ir/ops/window.py): output element o of a dim of size O
over an input of size I averages the window [floor(o*I/O), ceil((o+1)*I/O)), of unequal sizes; the
backward op sums, for each input element, the cotangents of the (statically bounded) windows that
hold it, divided by their sizes, in torch's order."""

from __future__ import annotations

import itertools

import numpy as np
import torch

from ..registry import FLOAT, INT, Domain, OpDef, register
from ..types import TensorType
from . import onnx_rules
from .window import _F3D, _acc_dtype, _all, _as_batch, _in_size, _out_index, _spatial, _tl, _two_d

aten = torch.ops.aten

def adaptive_window(size: int, out: int) -> int:
    """The longest adaptive window along a dim (the unrolled loop's length)."""
    return max(-(-((o + 1) * size) // out) - (o * size) // out for o in range(out))


def _adaptive_bounds(e, o: str, size: int, out: int) -> tuple[str, str]:
    start = e.tmp(f"({o} * {size}) // {out}", "w")
    end = e.tmp(f"(({o} + 1) * {size} + {out - 1}) // {out}", "w")
    return start, end


def _adaptive_avg_pool_emit(ctx, node) -> str:
    """torch's cpu_adaptive_avg_pool: the window's sum in window order, divided by each window size."""
    x = node.inputs[0]
    e, n = ctx.e, len(node.attrs["output_size"])
    out = _out_index(ctx, node.out)
    lead, sp = out[:-n], out[-n:]
    sizes, osz = x.shape[-n:], node.out.shape[-n:]
    bounds = [_adaptive_bounds(e, sp[i], sizes[i], osz[i]) for i in range(n)]
    acc_t = _acc_dtype(x.dtype)
    acc = e.tmp(f"tl.full({ctx.block}, 0, {_tl(acc_t)})", "acc")
    for offs in itertools.product(*(range(adaptive_window(sizes[i], osz[i])) for i in range(n))):
        coords = [e.tmp(f"{bounds[i][0]} + {j}", "w") for i, j in enumerate(offs)]
        valid = e.tmp(_all(ctx.mask, *(f"{c} < {bounds[i][1]}" for i, c in enumerate(coords))), "m")
        acc = e.tmp(f"{acc} + tl.where({valid}, {ctx.load(x, lead + coords, valid)}.to({_tl(acc_t)}), 0)", "acc")
    for start, end in bounds:
        acc = e.tmp(f"{acc} / ({end} - {start}).to({_tl(acc_t)})", "acc")
    return ctx.bind(acc, node.out.dtype)


def _adaptive_candidates(size: int, out: int) -> tuple[int, int]:
    """(back, count): the windows holding input h are among o = (h * out) // size - back + c, c < count."""
    base = (np.arange(size) * out) // size
    lo, hi = np.full(size, out), np.full(size, -1)
    for o in range(out):
        h = np.arange((o * size) // out, -(-((o + 1) * size) // out))
        lo[h], hi[h] = np.minimum(lo[h], o), np.maximum(hi[h], o)
    back = int((base - lo).max())
    return back, int((hi - (base - back)).max()) + 1


def _adaptive_avg_pool_backward_emit(ctx, node) -> str:
    """torch's backward: each window adds cotangent / size / size to its elements, in output order."""
    (ct,) = node.inputs
    e, n = ctx.e, len(node.attrs["input_size"])
    out = _out_index(ctx, node.out)
    lead, sp = out[:-n], out[-n:]
    sizes, osz = node.out.shape[-n:], ct.shape[-n:]
    per_dim = []
    for i in range(n):
        back, count = _adaptive_candidates(sizes[i], osz[i])
        base = e.tmp(f"({sp[i]} * {osz[i]}) // {sizes[i]} - {back}", "w")
        opts = []
        for c in range(count):
            o = e.tmp(f"{base} + {c}", "w")
            start, end = _adaptive_bounds(e, o, sizes[i], osz[i])
            opts.append((o, _all(f"{o} >= 0", f"{o} < {osz[i]}", f"{start} <= {sp[i]}", f"{sp[i]} < {end}"),
                         (start, end)))
        per_dim.append(opts)
    acc_t = _acc_dtype(ct.dtype)
    acc = e.tmp(f"tl.full({ctx.block}, 0, {_tl(acc_t)})", "acc")
    for combo in itertools.product(*per_dim):
        m = e.tmp(_all(ctx.mask, *(c for _, c, _ in combo)), "m")
        g = e.tmp(f"{ctx.load(ct, lead + [o for o, _, _ in combo], m)}.to({_tl(acc_t)})", "r")
        for _, _, (start, end) in combo:
            g = e.tmp(f"{g} / ({end} - {start}).to({_tl(acc_t)})", "r")
        acc = e.tmp(f"{acc} + tl.where({m}, {g}, 0)", "acc")
    return ctx.bind(acc, node.out.dtype)


def _adaptive_infer(types, output_size) -> TensorType:
    (t,) = types
    if t.dtype not in FLOAT:
        raise TypeError(f"adaptive_avg_pool: needs a floating-point input, got {t.dtype}")
    lead, sizes = _spatial(t, len(output_size), "adaptive_avg_pool")
    if any(o < 1 for o in output_size) or any(s < 1 for s in sizes):
        raise ValueError(f"adaptive_avg_pool: output_size {output_size} invalid for {t}")
    return TensorType(lead + tuple(output_size), t.dtype)


def _adaptive_backward_infer(types, input_size) -> TensorType:
    (t,) = types
    n = len(input_size)
    if t.dtype not in FLOAT:
        raise TypeError(f"adaptive_avg_pool_backward: needs a floating-point cotangent, got {t.dtype}")
    lead, _ = _spatial(t, n, "adaptive_avg_pool_backward")
    return TensorType(lead + tuple(input_size), t.dtype)


_ADAPTIVE = {2: aten._adaptive_avg_pool2d, 3: aten._adaptive_avg_pool3d}


def _adaptive_impl(x, output_size):
    n = len(output_size)
    v = _ADAPTIVE[max(n, 2)].default(_as_batch(x, n), list(_two_d(n, output_size, 1)))
    return v.reshape(tuple(x.shape[:x.dim() - n]) + tuple(output_size))


def _adaptive_backward_impl(ct, input_size):
    n = len(input_size)
    lead = tuple(ct.shape[:ct.dim() - n])
    self = _as_batch(torch.empty(lead + tuple(input_size), dtype=ct.dtype), n)
    fn = aten._adaptive_avg_pool3d_backward if n == 3 else aten._adaptive_avg_pool2d_backward
    return fn.default(_as_batch(ct, n), self).reshape(lead + tuple(input_size))


register(OpDef("adaptive_avg_pool", "layout", _adaptive_infer, _adaptive_impl, emit=_adaptive_avg_pool_emit,
               onnx=onnx_rules.adaptive_avg_pool,
               vjp=lambda g, inputs, out, ct, output_size: [g.add(
                   "adaptive_avg_pool_backward", [ct], input_size=_in_size(inputs[0], len(output_size)))],
               cost=lambda node: node.inputs[0].type.numel,
               domains=(Domain(FLOAT, dict(output_size=(3, 4)), shapes=((2, 3, 7, 10),)),
                        Domain(FLOAT, dict(output_size=(3,)), shapes=((3, 8),)),
                        Domain(_F3D, dict(output_size=(2, 3, 2)), shapes=((2, 3, 5, 7),), rejects=INT + (torch.bool,))),
               doc="mean over adaptive windows [floor(o*I/O), ceil((o+1)*I/O)) of the last dims"))
register(OpDef("adaptive_avg_pool_backward", "layout", _adaptive_backward_infer, _adaptive_backward_impl,
               emit=_adaptive_avg_pool_backward_emit, cost=lambda node: node.out.type.numel,
               vjp=lambda g, inputs, out, ct, input_size: [g.add(
                   "adaptive_avg_pool", [ct], output_size=_in_size(inputs[0], len(input_size)))],
               domains=(Domain(FLOAT, dict(input_size=(7, 10)), shapes=((2, 3, 3, 4),)),
                        Domain(_F3D, dict(input_size=(3, 5, 7)), shapes=((2, 2, 3, 2),), rejects=INT + (torch.bool,))),
               doc="adaptive_avg_pool's transpose"))


