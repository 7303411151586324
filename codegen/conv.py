"""Convolution emitter: implicit GEMM for `conv2d`, `conv2d_input_grad` and `conv2d_weight_grad`
(ir/ops/conv.py), with an optional pointwise epilogue on the accumulator tile (bias, activation,
residual, batch norm in eval: whatever pointwise nodes follow over the conv's output shape).

Each op is a GEMM per group (grid axis 1) whose operand tiles are gathered by index math, never
materialized (no im2col buffer, no zero-inserted copy for the transposed conv):

| op          | M (rows)         | N (cols)          | K (contraction)       | A [BM, BK] | B [BK, BN] |
|-------------|------------------|-------------------|-----------------------|------------|------------|
| conv2d      | N * OH * OW      | Co/g              | C/g * KH * KW         | x (gather) | w          |
| input_grad  | N * H * W        | C/g               | Co/g * KH * KW        | ct (gather)| w          |
| weight_grad | Co/g             | C/g (one tap each)| N * OH * OW           | ct         | x (gather) |

Padding is masked zeros; the transposed conv keeps the taps where `h + pad - kh * dil` is a
non-negative multiple of the stride. Every operand, epilogue input and output is addressed through
its 4 runtime strides, so NCHW and channels_last tensors (and any view) need no copy; sizes are
runtime arguments. Accumulation is fp32 (fp64 for fp64); the tile is rounded to the conv's dtype
before the epilogue, where eager would store it. Constexprs: BM, BN, BK, PREC (tl.dot precision for
fp32 on a GPU) and INTERP (half operands are upcast under the interpreter, as in matmul.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..ir import Node, Value
from ..ir.kernel_group import pow2
from ..ir.ops.half import HALF_TYPES, load_cast, round_half, store_cast
from ..ir.types import compute_dtype
from .emitter import Emitter, emit_tile, ptr_sig, tl_compute
from .kernel import Kernel, make_kernel, render
from .launch import LaunchConfig, cdiv, interpreted

SIZES = ("NB", "CI", "H", "W", "CO", "OH", "OW", "KH", "KW", "CIG", "COG", "SH", "SW", "PH", "PW", "DH", "DW",
         "M", "NN", "K")


@dataclass
class ConvEpilogue:
    """The pointwise tail of a conv group: `nodes` over the conv result `conv` (as MatmulEpilogue)."""

    conv: Value
    nodes: list[Node] = field(default_factory=list)
    loads: list[Value] = field(default_factory=list)     # epilogue inputs read from memory
    outputs: list[Value] = field(default_factory=list)   # stored values (may include conv itself)
    scalars: list[Node] = field(default_factory=list)    # inlined 0-dim constants


def conv_params(dtype: torch.dtype, ep: ConvEpilogue) -> list[tuple[str, str]]:
    p: list[tuple[str, str]] = []
    for t in ("a", "b"):
        p += [(f"{t}_ptr", ptr_sig(dtype)), (f"{t}_off", "int")] + [(f"{t}_s{d}", "int") for d in range(4)]
    for i, v in enumerate(ep.loads):
        p += [(f"e{i}_ptr", ptr_sig(v.dtype)), (f"e{i}_off", "int")] + [(f"e{i}_s{d}", "int") for d in range(4)]
    for j, v in enumerate(ep.outputs):
        p += [(f"o{j}_ptr", ptr_sig(v.dtype)), (f"o{j}_off", "int")] + [(f"o{j}_s{d}", "int") for d in range(4)]
    p += [(s, "int") for s in SIZES]
    return p + [(n, "constexpr") for n in ("BM", "BN", "BK", "PREC", "INTERP")]


def gemm_sizes(node: Node, flat: bool = False) -> tuple[int, int, int, int]:
    """(M, N, K, programs along grid axis 1) of the conv node's GEMM (see the module doc); K is the
    inner loop's length (the channels per tap for conv2d and its input gradient); axis 1 runs over the
    groups, times the taps for the weight gradient (one (kh, kw) per program). `flat`: K runs over
    taps and channels (`_flat_loop`)."""
    a = node.attrs
    g = a["groups"]
    if node.op == "conv2d":
        (n, _, oh, ow), (co, cig, kh, kw) = node.out.shape, node.inputs[1].shape
        return n * oh * ow, co // g, cig * (kh * kw if flat else 1), g
    if node.op == "conv2d_input_grad":
        (n, _, h, w), (co, cig, kh, kw) = node.out.shape, node.inputs[1].shape
        return n * h * w, cig, co // g * (kh * kw if flat else 1), g
    (co, cig, kh, kw), (n, _, oh, ow) = node.out.shape, node.inputs[1].shape
    return (co // g, cig * kh * kw, n * oh * ow, g) if flat else (co // g, cig, n * oh * ow, g * kh * kw)


def conv_sizes(node: Node, flat: bool = False) -> list[int]:
    """The runtime size arguments (SIZES) of a conv node's kernel."""
    a = node.attrs
    if node.op == "conv2d":
        x, w, out = node.inputs[0].shape, node.inputs[1].shape, node.out.shape
    elif node.op == "conv2d_input_grad":
        x, w, out = node.out.shape, node.inputs[1].shape, node.inputs[0].shape
    else:
        x, w, out = node.inputs[0].shape, node.out.shape, node.inputs[1].shape
    g = a["groups"]
    m, nn, k, _ = gemm_sizes(node, flat)
    return [x[0], x[1], x[2], x[3], w[0], out[2], out[3], w[2], w[3], x[1] // g, w[0] // g,
            *a["stride"], *a["padding"], *a["dilation"], m, nn, k]


def conv_args(node: Node, a: tuple, b: tuple, loads: list[tuple], load_shapes: list, outs: list[tuple],
              flat: bool = False) -> list:
    """a, b: the node's two inputs, loads: epilogue inputs, outs: outputs, each (pointer, offset,
    strides). Loads broadcast right-aligned to the conv's 4-d output (size-1 dims get stride 0)."""
    args: list = []
    for ptr, off, strides in (a, b):
        args += [ptr, off] + list(strides)
    for (ptr, off, strides), shape in zip(loads, load_shapes):
        full = [0] * 4
        for i, (s, st) in enumerate(zip(shape, strides)):
            full[4 - len(shape) + i] = 0 if s == 1 else st
        args += [ptr, off] + full
    for ptr, off, strides in outs:
        args += [ptr, off] + list(strides)
    return args + conv_sizes(node, flat)


def _channel_loop(e: Emitter, length: str, b_stride: str) -> None:
    """The innermost loop over the `length` channels of one tap: A rows at `roff` (valid where
    `rmask`), A channel offsets `ca`, the weight tile at `wb` (its channels `b_stride` apart); the
    caller's tl.dot accumulates."""
    e.line(f"for c0 in range(0, {length}, BK):")
    e.indent += 1
    e.line(f"cin = (c0 + rk) < {length}")
    e.line("a = tl.load(a_ptr + (roff[:, None] + (ca + c0 * a_s1)[None, :]), mask=rmask[:, None] & cin[None, :], "
           "other=0)")
    e.line(f"b = tl.load(b_ptr + (wb + c0 * {b_stride}), mask=cin[:, None] & nok[None, :], other=0)")


def _flat_loop(e: Emitter, op: str) -> list[str]:
    """conv2d and its input gradient with K = (tap, channel) flattened: the index math and padding
    masks are per tile element, in one loop. Chosen under the interpreter, where a statement costs
    ~0.1 ms whatever its block and numpy runs the element work: 1 iteration instead of one per tap."""
    grad = op == "conv2d_input_grad"
    if grad:  # rows: input pixels (n, h, w); cols: input channels of the group; K: (kh, kw, co)
        e.line("m_w = rm % W")
        e.line("m_h = (rm // W) % H")
        e.line("m_n = rm // (W * H)")
        e.line("r0 = m_h + PH")
        e.line("s0 = m_w + PW")
        e.line("cols = rn * b_s1")
    else:  # rows: output pixels (n, oh, ow); cols: output channels of the group; K: (kh, kw, ci)
        e.line("m_ow = rm % OW")
        e.line("m_oh = (rm // OW) % OH")
        e.line("m_n = rm // (OW * OH)")
        e.line("r0 = m_oh * SH - PH")
        e.line("s0 = m_ow * SW - PW")
        e.line("cols = (grp * COG + rn) * b_s0")
    e.line("nb = a_off + m_n * a_s0")
    e.line("for k0 in range(0, K, BK):")
    e.indent += 1
    e.line("ka = k0 + rk")
    e.line("kin = ka < K")
    e.line(f"kc = grp * {'COG' if grad else 'CIG'} + ka % {'COG' if grad else 'CIG'}")
    e.line(f"tap = ka // {'COG' if grad else 'CIG'}")
    e.line("kh = tap // KW")
    e.line("kw = tap % KW")
    if grad:  # the output pixel a tap comes from: (h + pad - kh * dil) / stride, when that divides
        e.line("th = r0[:, None] - (kh * DH)[None, :]")
        e.line("tw = s0[:, None] - (kw * DW)[None, :]")
        e.line("thc = tl.where(th >= 0, th, 0)")  # no division of negatives (C and Python round apart)
        e.line("twc = tl.where(tw >= 0, tw, 0)")
        e.line("ih = thc // SH")
        e.line("iw = twc // SW")
        e.line("amask = (rok[:, None] & kin[None, :] & (th >= 0) & (tw >= 0) & (thc - ih * SH == 0) "
               "& (twc - iw * SW == 0) & (ih < OH) & (iw < OW))")
        e.line("bk = kc * b_s0 + kh * b_s2 + kw * b_s3")
    if not grad:
        e.line("ih = r0[:, None] + (kh * DH)[None, :]")
        e.line("iw = s0[:, None] + (kw * DW)[None, :]")
        e.line("amask = rok[:, None] & kin[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)")
        e.line("bk = (ka % CIG) * b_s1 + kh * b_s2 + kw * b_s3")
        # x's offset: a row part (n, oh, ow) plus a column part (channel, tap): one tile-sized add
        e.line("a = tl.load(a_ptr + ((nb + r0 * a_s2 + s0 * a_s3)[:, None] + (kc * a_s1 + kh * DH * a_s2 "
               "+ kw * DW * a_s3)[None, :]), mask=amask, other=0)")
    else:
        e.line("a = tl.load(a_ptr + (nb[:, None] + (kc * a_s1)[None, :] + ih * a_s2 + iw * a_s3), mask=amask, "
               "other=0)")
    e.line("b = tl.load(b_ptr + (b_off + bk[:, None] + cols[None, :]), mask=kin[:, None] & nok[None, :], other=0)")
    if grad:
        return ["m_n[:, None]", "(grp * CIG + rn)[None, :]", "m_h[:, None]", "m_w[:, None]"]
    return ["m_n[:, None]", "(grp * COG + rn)[None, :]", "m_oh[:, None]", "m_ow[:, None]"]


def _mainloop(e: Emitter, op: str, cast: str, flat: bool) -> list[str]:
    """The loops of `op` accumulating into `acc`; returns the [BM, BN]-broadcastable index expressions
    of the output's 4 dims. For conv2d and its input gradient the taps (kh, kw) are the outer loops
    and channels the inner one, so the spatial index math and padding masks are per row ([BM]
    vectors, hoisted out of the inner loops), not per tile element: under the interpreter every
    statement costs, whatever its block."""
    e.line(f"rk = tl.arange(0, BK){cast}")
    e.line("rok = rm < M")
    e.line("nok = rn < NN")
    if flat and op != "conv2d_weight_grad":
        return _flat_loop(e, op)

    if op == "conv2d":  # rows: output pixels (n, oh, ow); cols: output channels of the group
        e.line("m_ow = rm % OW")
        e.line("m_oh = (rm // OW) % OH")
        e.line("m_n = rm // (OW * OH)")
        e.line("co = grp * COG + rn")
        e.line("ih0 = m_oh * SH - PH")
        e.line("iw0 = m_ow * SW - PW")
        e.line("nb = a_off + m_n * a_s0")
        e.line("ca = (grp * CIG + rk) * a_s1")
        e.line("bb = b_off + rk[:, None] * b_s1 + co[None, :] * b_s0")
        e.line("for kh in range(0, KH):")
        e.indent += 1
        e.line("ih = ih0 + kh * DH")
        e.line("hm = rok & (ih >= 0) & (ih < H)")
        e.line("hoff = nb + ih * a_s2")
        e.line("for kw in range(0, KW):")
        e.indent += 1
        e.line("iw = iw0 + kw * DW")
        e.line("rmask = hm & (iw >= 0) & (iw < W)")
        e.line("roff = hoff + iw * a_s3")
        e.line("wb = bb + (kh * b_s2 + kw * b_s3)")
        _channel_loop(e, "CIG", "b_s1")
        return ["m_n[:, None]", "co[None, :]", "m_oh[:, None]", "m_ow[:, None]"]
    if op == "conv2d_input_grad":  # rows: input pixels (n, h, w); cols: input channels of the group
        e.line("m_w = rm % W")
        e.line("m_h = (rm // W) % H")
        e.line("m_n = rm // (W * H)")
        e.line("th0 = m_h + PH")
        e.line("tw0 = m_w + PW")
        e.line("nb = a_off + m_n * a_s0")
        e.line("cb = grp * COG + rk")
        e.line("ca = cb * a_s1")
        e.line("bb = b_off + cb[:, None] * b_s0 + rn[None, :] * b_s1")
        # the output pixel a tap comes from: (h + pad - kh * dil) / stride, when that divides exactly
        e.line("for kh in range(0, KH):")
        e.indent += 1
        e.line("th = th0 - kh * DH")
        e.line("thc = tl.where(th >= 0, th, 0)")  # no division of negatives (C and Python round apart)
        e.line("oh = thc // SH")
        e.line("hm = rok & (th >= 0) & (thc - oh * SH == 0) & (oh < OH)")
        e.line("hoff = nb + oh * a_s2")
        e.line("for kw in range(0, KW):")
        e.indent += 1
        e.line("tw = tw0 - kw * DW")
        e.line("twc = tl.where(tw >= 0, tw, 0)")
        e.line("ow = twc // SW")
        e.line("rmask = hm & (tw >= 0) & (twc - ow * SW == 0) & (ow < OW)")
        e.line("roff = hoff + ow * a_s3")
        e.line("wb = bb + (kh * b_s2 + kw * b_s3)")
        _channel_loop(e, "COG", "b_s0")
        return ["m_n[:, None]", "(grp * CIG + rn)[None, :]", "m_h[:, None]", "m_w[:, None]"]
    # weight grad: rows: output channels of the group; cols: input channels of the group, one tap
    # (kh, kw) per program along grid axis 1 (flat: cols (tap, channel), index math per element);
    # K: (n, oh, ow). a = x (gathered into the B tile), b = ct (the A tile).
    e.line("co = grp * COG + rm")
    e.line("ctb = b_off + co[:, None] * b_s1")
    if flat:
        e.line("kw = (rn // CIG) % KW")
        e.line("kh = rn // (CIG * KW)")
        e.line("ci = rn % CIG")
        e.line("h0 = kh * DH - PH")
        e.line("w0 = kw * DW - PW")
        e.line("xc = ((grp * CIG + ci) * a_s1 + h0 * a_s2 + w0 * a_s3)[None, :]")
        e.line("h0 = h0[None, :]")
        e.line("w0 = w0[None, :]")
    else:
        e.line("h0 = kh * DH - PH")
        e.line("w0 = kw * DW - PW")
        e.line("xc = ((grp * CIG + rn) * a_s1 + (h0 * a_s2 + w0 * a_s3))[None, :]")
    e.line("for k0 in range(0, K, BK):")
    e.indent += 1
    e.line("ka = k0 + rk")
    e.line("kin = ka < K")
    e.line("k_ow = ka % OW")
    e.line("k_oh = (ka // OW) % OH")
    e.line("k_n = ka // (OW * OH)")
    e.line("a = tl.load(b_ptr + (ctb + (k_n * b_s0 + k_oh * b_s2 + k_ow * b_s3)[None, :]), "
           "mask=rok[:, None] & kin[None, :], other=0)")
    e.line("rh = k_oh * SH")
    e.line("rw = k_ow * SW")
    e.line("ih = rh[:, None] + h0")
    e.line("iw = rw[:, None] + w0")
    e.line("kmask = kin[:, None] & nok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)")
    # x's offset: a row part (n, oh, ow) plus a column part (channel, tap): one tile-sized add
    e.line("b = tl.load(a_ptr + ((a_off + k_n * a_s0 + rh * a_s2 + rw * a_s3)[:, None] + xc), mask=kmask, other=0)")
    if flat:
        return ["co[:, None]", "ci[None, :]", "kh[None, :]", "kw[None, :]"]
    return ["co[:, None]", "rn[None, :]", "kh", "kw"]


def emit_conv(op: str, dtype: torch.dtype, ep: ConvEpilogue, int64: bool = False, flat: bool = False) -> Kernel:
    """The kernel of conv op `op` on `dtype` with epilogue `ep` (`ep.nodes` may be empty: then the
    conv's own result is the one output); `flat`: K = (tap, channel) in one loop (`_flat_loop`)."""
    acc_t = "tl.float64" if dtype == torch.float64 else "tl.float32"
    cast = ".to(tl.int64)" if int64 else ""
    e = Emitter()
    e.line("pid = tl.program_id(0)")
    e.line(f"grp = tl.program_id(1){cast}")
    if op == "conv2d_weight_grad" and not flat:  # grid axis 1: (group, tap)
        e.line("kw = grp % KW")
        e.line("kh = (grp // KW) % KH")
        e.line("grp = grp // (KW * KH)")
    e.line("nn = (NN + BN - 1) // BN")
    e.line(f"rm = ((pid // nn) * BM + tl.arange(0, BM)){cast}")
    e.line(f"rn = ((pid % nn) * BN + tl.arange(0, BN)){cast}")
    e.line(f"acc = tl.full([BM, BN], 0, {acc_t})")
    base = e.indent
    coords = _mainloop(e, op, cast, flat)
    if dtype in HALF_TYPES:
        e.line("if INTERP:")  # the interpreter's half tl.dot is wrong: widen (bfloat16 by its bits)
        e.indent += 1
        e.line(f"a = {load_cast(e, 'a', dtype)}")
        e.line(f"b = {load_cast(e, 'b', dtype)}")
        e.indent -= 1
    e.line("acc = tl.dot(a, b, acc, input_precision=PREC)" if dtype == torch.float32 else "acc = tl.dot(a, b, acc)")
    e.indent = base
    e.line("cmask = (rm < M)[:, None] & (rn < NN)[None, :]")
    _emit_epilogue(e, ep, dtype, coords)
    params = conv_params(dtype, ep)
    tail = "_".join(dict.fromkeys(n.op for n in ep.nodes))[:40]
    prefix = {"conv2d": "conv", "conv2d_input_grad": "convdx", "conv2d_weight_grad": "convdw"}[op]
    return make_kernel(prefix + ("_" + tail if tail else ""), render(params, e.text()), "conv",
                       [op] + [n.op for n in ep.nodes], params)


def _emit_epilogue(e: Emitter, ep: ConvEpilogue, dtype: torch.dtype, coords: list[str]) -> None:
    rounded = round_half(e, "acc", torch.float32, dtype) if dtype in HALF_TYPES else "acc"
    env: dict[Value, str] = {ep.conv: e.tmp(f"{rounded}.to({tl_compute(dtype)})", "v")}
    z2 = e.tmp("rm[:, None] * 0 + rn[None, :] * 0", "z")
    idx = [e.tmp(f"{c} + {z2}", "i") for c in coords]  # the output element's 4 indices, [BM, BN] each
    e.index = lambda k: idx[4 + k] if k >= -4 else z2

    def offset(p: str) -> str:
        return " + ".join([f"{p}_off"] + [f"{i} * {p}_s{d}" for d, i in enumerate(idx)])

    for i, v in enumerate(ep.loads):
        x = e.tmp(f"tl.load(e{i}_ptr + ({offset(f'e{i}')}), mask=cmask, other=0)", "x")
        env[v] = e.tmp(load_cast(e, x, v.dtype), "x") if compute_dtype(v.dtype) != v.dtype else x
    emit_tile(e, ep.scalars + ep.nodes, env, "[BM, BN]")
    for j, v in enumerate(ep.outputs):
        e.line(f"tl.store(o{j}_ptr + ({offset(f'o{j}')}), {store_cast(e, env[v], v.dtype)}, mask=cmask)")


# Interpreted, a statement costs ~0.1 ms of Triton's Python frontend whatever its block, plus numpy
# work proportional to it: few programs and loop iterations, tiles up to TILE_LIMIT elements. A GPU:
# tensor-core tiles that fit shared memory.
TILE_LIMIT = 1 << 18


def launch_config(m: int, n: int, k: int, groups: int, target: str) -> LaunchConfig:
    """(BM, BN, BK) and the grid (tiles of the group's GEMM, groups) of a conv kernel."""
    if interpreted(target):
        bm, bn, bk = (max(pow2(s), 16) for s in (m, n, k))
        bn = min(bn, 256)
        while max(bm * bk, bk * bn, bm * bn) > TILE_LIMIT:  # halve the longer of M and K
            if bm >= bk:
                bm //= 2
            else:
                bk //= 2
    else:
        bm, bn, bk = (min(max(pow2(s), 16), hi) for s, hi in ((m, 64), (n, 64), (k, 32)))
    return LaunchConfig((cdiv(m, bm) * cdiv(n, bn), groups), {"BM": bm, "BN": bn, "BK": bk})


def group_launch_config(node: Node, target: str) -> LaunchConfig | None:
    """The launch config of the conv node's group; None when the output is empty."""
    m, n, k, g = gemm_sizes(node, flat=use_flat(node, target))
    return launch_config(m, n, k, g, target)


FLAT_WEIGHT_GRAD = True


def use_flat(node: Node, target: str) -> bool:
    """Whether the conv node's kernel flattens taps and channels into K (`_flat_loop`): under the
    interpreter, when a tap has fewer than 16 channels (the first conv of a net, depthwise convs),
    where one loop per tap would run mostly masked 16-wide chunks. Measured on a (64, C, 8, 8)
    batch with 3x3 taps: C = 1: 28 ms flat, 95 ms by taps; C = 16: 175 ms flat (numpy's work on
    [BM, C*9] tiles of index math), 104 ms by taps."""
    if not interpreted(target):
        return False
    if node.op == "conv2d_weight_grad":
        return FLAT_WEIGHT_GRAD
    m, n, k, g = gemm_sizes(node)
    return k < 16 if math.prod(node.out.shape) else None
