"""Bytes the window ops' emit hooks load (passes/cost.py): each tap of an unrolled window loop is a
load instruction, and the coordinates it reads are found by running the hook's index math on the
host; `unrolled_loads` bounds the loop a lowering may unroll (`MAX_LOADS`)."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import torch

from ..registry import get_op
from ..types import TensorType
from .adaptive_pool import _adaptive_candidates, adaptive_window


def _dim_taps(node, i: int) -> list[list[np.ndarray]]:
    """Along window dim i: per load tap of the node's emit hook, the input coordinates each load
    instruction reads (one array per input it loads there), found by running the hook's index math on
    the host. A load instruction of the hook reads the product of its taps' coordinates over the dims."""
    a = node.attrs
    n = _rank(a)
    in_size = node.inputs[0].shape[-n + i]
    out_size = node.out.shape[-n + i]
    o = np.arange(out_size)
    h = np.arange(out_size)  # the hook's own index: for backward ops an input element
    if node.op in ("max_pool", "max_pool_index", "avg_pool"):
        d = a["dilation"][i] if "dilation" in a else 1
        taps = [o * a["stride"][i] + j * d - a["padding"][i] for j in range(a["kernel_size"][i])]
        return [[t[(t >= 0) & (t < in_size)]] for t in taps]
    if node.op == "adaptive_avg_pool":
        start, end = (o * in_size) // out_size, -(-((o + 1) * in_size) // out_size)
        return [[(start + j)[start + j < end]] for j in range(adaptive_window(in_size, out_size))]
    if node.op == "adaptive_avg_pool_backward":
        back, count = _adaptive_candidates(out_size, in_size)
        res = []
        for c in range(count):
            oo = (h * in_size) // out_size - back + c
            start, end = (oo * out_size) // in_size, -(-((oo + 1) * out_size) // in_size)
            ok = (oo >= 0) & (oo < in_size) & (start <= h) & (h < end)
            res.append([oo[ok]])
        return res
    if node.op == "max_pool_backward":
        k, s, p, d = (a[key][i] for key in ("kernel_size", "stride", "padding", "dilation"))
        res = []
        for j in reversed(range(k)):
            num = h + p - j * d
            ok = (num >= 0) & (num % s == 0) & (num // s < in_size)
            res.append([num[ok] // s] * 2)  # the cotangent and the index, at the same places
        return res
    if node.op == "avg_pool_backward":
        k, s, p = (a[key][i] for key in ("kernel_size", "stride", "padding"))
        res = []
        for t in reversed(range((k + s - 1) // s)):
            oo = (h + p) // s - t
            res.append([oo[(oo >= 0) & (oo < in_size) & (oo * s + k - p > h)]])
        return res
    from .interpolate import _linear_host, _nearest_host, _opmath, _reverse_range, _scales_of, nearest_mode

    scale = _scales_of(a, n)[i]
    if node.op == "upsample_nearest":
        return [[_nearest_host(o, in_size, out_size, scale, nearest_mode(a, n))]]
    if node.op == "upsample_linear":
        return [[s] for s in _linear_host(o, in_size, out_size, scale, a["align_corners"], node.inputs[0].dtype)]
    # backward ops: the hook's output is the forward's input; candidates o = base(h) + c
    fwd_in, fwd_out = out_size, in_size
    if node.op == "upsample_nearest_backward":
        src_of = lambda oo: [_nearest_host(oo, fwd_in, fwd_out, scale, nearest_mode(a, n, backward=True))]
    else:
        src_of = lambda oo: _linear_host(oo, fwd_in, fwd_out, scale, a["align_corners"], _opmath(node.inputs[0].dtype))
    _, back, count = _reverse_range(src_of, fwd_in, fwd_out)
    res = []
    for c in range(count):
        oo = (h * fwd_out) // fwd_in - back + c
        ok = (oo >= 0) & (oo < fwd_out)
        if node.op == "upsample_nearest_backward":
            src = _nearest_host(np.clip(oo, 0, fwd_out - 1), fwd_in, fwd_out, scale, nearest_mode(a, n, backward=True))
            ok &= src == h
        res.append([oo[ok]])
    return res


def _rank(attrs: dict) -> int:
    """The number of window dims of a window op."""
    return len(next(attrs[k] for k in ("kernel_size", "output_size", "input_size") if k in attrs))


def _loads(node) -> list[tuple[int, int]]:
    """(input position, distinct elements) of each load instruction the node's emit hook emits."""
    a = node.attrs
    n = _rank(a)
    lead = math.prod(node.out.shape[:-n])
    per_dim = [_dim_taps(node, i) for i in range(n)]
    loads = []
    if node.op == "upsample_linear":  # 2**n corner loads, each reading the product of its dims' taps
        for corner in itertools.product(*per_dim):
            loads.append((0, lead * math.prod(len(np.unique(t[0])) for t in corner)))
        return loads
    for combo in itertools.product(*per_dim):
        for k in range(len(combo[0])):
            loads.append((k, lead * math.prod(len(np.unique(t[k])) for t in combo)))
    return loads


def window_read_bytes(nodes: list) -> int:
    """Bytes the emit hooks of these window nodes (of one kernel) load: each load instruction counts
    the distinct elements it reads (the cost model's convention); max_pool and max_pool_index of one
    input share their loop (`_memo`), so it counts once."""
    total, seen = 0, set()
    for node in nodes:
        family = "max" if node.op in ("max_pool", "max_pool_index") else node.op
        key = (family, node.inputs[0], node.out.shape, tuple(sorted((k, repr(v)) for k, v in node.attrs.items())))
        if key in seen:
            continue
        seen.add(key)
        for k, count in _loads(node):
            total += count * node.inputs[k].dtype.itemsize
    return total


# Windows larger than this many unrolled loads run as externs (frontend/lower_pool.py,
# frontend/lower_interpolate.py): the kernel source grows with the loop, and so does compile time.
MAX_LOADS = 512


def unrolled_loads(op: str, x: TensorType, attrs: dict) -> int:
    """How many load instructions the emit hook of `op` on an input of type `x` unrolls."""
    out = get_op(op).infer([x, TensorType(x.shape, torch.int64)][:get_op(op).arity], **attrs)
    node = SimpleNamespace(op=op, attrs=attrs, inputs=[SimpleNamespace(shape=x.shape, dtype=x.dtype)] * 2,
                           out=SimpleNamespace(shape=out.shape))
    return len(_loads(node))

