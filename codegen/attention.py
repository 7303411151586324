"""Flash attention kernels for the `attention`, `attention_grad_q` and `attention_grad_kv` ops
(ir/ops/attention.py).

Forward: one program per (BM query rows, batch * head); it loops over key blocks of BN keys with the
online softmax (running max `m`, running sum `l`, an accumulator rescaled by exp(m_old - m_new)), so
the [L, S] scores are never stored. A causal kernel stops at the diagonal block (a query never sees
later keys); a boolean or additive mask is loaded per [BM, BN] tile through its strides (0 where it
broadcasts). Stores `out` and the row logsumexp `m + log(l)` the backward reads.

Backward, two kernels (FlashAttention-2's): `attention_grad_q`, one program per (BM query rows,
batch * head), computes and stores `delta = rowsum(dO * O)` for its rows, then accumulates dQ over
the key blocks, P recomputed as exp(S - lse); `attention_grad_kv`, one program per (BN keys, batch *
kv head), accumulates dK and dV over the query blocks of every query head of its group (grouped-
query attention: the sum over the group happens in registers, no atomics, deterministic). Causal
programs skip the blocks past the diagonal in both.

Accumulation is float32 (float64 for float64). On a GPU half-precision operands go to `tl.dot` as
they are and P / dS are rounded to the operand dtype for their GEMMs (FlashAttention's choice);
float32 follows `torch.get_float32_matmul_precision()` (PREC). The interpreter computes half `tl.dot`
wrongly, so under INTERP every operand is widened first (as codegen/matmul.py does).
"""

from __future__ import annotations

import torch

from ..ir.kernel_group import pow2
from ..ir.ops.half import load_cast, store_cast
from ..ir.types import compute_dtype, py_literal
from .emitter import Emitter, ptr_sig
from .kernel import Kernel, make_kernel, render
from .launch import LaunchConfig, cdiv, interpreted

_TENSOR = ("off", "sb", "sh", "sm", "sd")  # a [B, H, rows, cols] operand: offset and four strides


def _ptr_params(name: str, dtype: torch.dtype, dims: int = 4) -> list[tuple[str, str]]:
    strides = [(f"{name}_{s}", "int") for s in _TENSOR[1:1 + dims]]
    return [(f"{name}_ptr", ptr_sig(dtype)), (f"{name}_off", "int")] + strides


# (name, dims, dtype role) of each operand, in the op's input order then its outputs ("io": q's dtype,
# "acc": the computation dtype); the mask (if any) follows the inputs.
_OPERANDS = {
    "attention": ([("q", 4, "io"), ("k", 4, "io"), ("v", 4, "io")], [("o", 4, "io"), ("ls", 3, "acc")]),
    "attention_grad_q": ([("q", 4, "io"), ("k", 4, "io"), ("v", 4, "io"), ("ot", 4, "io"), ("lse", 3, "acc"),
                          ("do", 4, "io")], [("dq", 4, "io"), ("dl", 3, "acc")]),
    "attention_grad_kv": ([("q", 4, "io"), ("k", 4, "io"), ("v", 4, "io"), ("lse", 3, "acc"), ("dl", 3, "acc"),
                           ("do", 4, "io")], [("dk", 4, "io"), ("dv", 4, "io")]),
}


def attention_params(op: str, dtype: torch.dtype, mask: torch.dtype | None) -> list[tuple[str, str]]:
    acc = compute_dtype(dtype)
    ins, outs = _OPERANDS[op]
    p = []
    for name, dims, role in ins + ([("mk", 4, None)] if mask is not None else []) + outs:
        p += _ptr_params(name, {"io": dtype, "acc": acc, None: mask}[role], dims)
    p += [("H", "int"), ("HK", "int"), ("G", "int"), ("L", "int"), ("S", "int"), ("D", "int"), ("DV", "int")]
    return p + [(n, "constexpr") for n in ("BM", "BN", "BD", "BDV", "PREC", "INTERP")]


def _base(name: str, b: str, h: str) -> str:
    return f"{name}_off + {b} * {name}_sb + {h} * {name}_sh"


def _load(e: Emitter, name: str, dtype: torch.dtype, rows: str, cols: str, nrows: str, ncols: str, b: str,
          h: str) -> str:
    """A [rows, cols] tile of a [B, H, R, C] operand, widened to its compute dtype under INTERP."""
    offsets = f"{_base(name, b, h)} + {rows}[:, None] * {name}_sm + {cols}[None, :] * {name}_sd"
    t = e.tmp(f"tl.load({name}_ptr + ({offsets}), "
              f"mask=({rows}[:, None] < {nrows}) & ({cols}[None, :] < {ncols}), other=0)", name)
    if dtype in (torch.float16, torch.bfloat16):
        e.line("if INTERP:")
        e.indent += 1
        e.line(f"{t} = {load_cast(e, t, dtype)}")
        e.indent -= 1
    return t


def _dot(dtype: torch.dtype, a: str, b: str, acc: str | None = None) -> str:
    prec = ", input_precision=PREC" if dtype == torch.float32 else ""
    return f"tl.dot({a}, {b}{', ' + acc if acc else ''}{prec})"


def _scores(e: Emitter, dtype: torch.dtype, mask: torch.dtype | None, causal: bool, s: str, rows: str, cols: str,
            b: str, h: str, transposed: bool) -> str:
    """`s` (raw q k^T of the tile, [rows, cols] = [BM, BN], or [BN, BM] when `transposed`) scaled and
    masked; returns the name of the validity mask (the caller zeroes P outside it)."""
    qi, kj = (f"{cols}[None, :]", f"{rows}[:, None]") if transposed else (f"{rows}[:, None]", f"{cols}[None, :]")
    valid = f"({qi} < L) & ({kj} < S)"
    if causal:
        valid += f" & ({kj} <= {qi})"
    if mask is not None:
        qs, ks = (f"{cols}[None, :]", f"{rows}[:, None]") if transposed else (f"{rows}[:, None]", f"{cols}[None, :]")
        m = e.tmp(f"tl.load(mk_ptr + ({_base('mk', b, h)} + {qs} * mk_sm + {ks} * mk_sd), mask={valid}, other=0)", "mk")
        if mask == torch.bool:
            valid += f" & ({m} != 0)"
        else:
            e.line(f"{s} = {s} + {load_cast(e, m, mask)}.to({s}.dtype)")
    return e.tmp(valid, "ok")


def _query_program(dtype: torch.dtype, scale: float, int64: bool) -> tuple[Emitter, str, str]:
    """The start of a kernel over (batch * heads, query blocks): its ids (batch * heads on grid axis 0:
    axis 1 stops at 65,535), row and column ranges, the scale, and its q tile; (emitter, accumulation
    type, q)."""
    acc_t = "tl.float64" if dtype == torch.float64 else "tl.float32"
    e = Emitter()
    cast = ".to(tl.int64)" if int64 else ""
    e.line(f"bh = tl.program_id(0){cast}")
    e.line("pm = tl.program_id(1)")
    e.line("b = bh // H")
    e.line("h = bh % H")
    e.line("hk = h // G")
    e.line(f"rm = pm{cast} * BM + tl.arange(0, BM)")
    e.line("rd = tl.arange(0, BD)")
    e.line("rdv = tl.arange(0, BDV)")
    e.line(f"scale = tl.full([], {py_literal(scale, torch.float64)}, {acc_t})")
    return e, acc_t, _load(e, "q", dtype, "rm", "rd", "L", "D", "b", "h")


def emit_attention(dtype: torch.dtype, mask: torch.dtype | None, causal: bool, scale: float, int64: bool) -> Kernel:
    e, acc_t, q = _query_program(dtype, scale, int64)
    cast = ".to(tl.int64)" if int64 else ""
    e.line(f"m_i = tl.full([BM], float('-inf'), {acc_t})")
    e.line(f"l_i = tl.full([BM], 0, {acc_t})")
    e.line(f"acc = tl.full([BM, BDV], 0, {acc_t})")
    e.line("end = S")
    if causal:  # query i sees keys 0..i: the last key block this program needs holds key pm*BM + BM - 1
        e.line("end = tl.minimum(S, (pm + 1) * BM)")
    e.line("for n0 in range(0, end, BN):")
    e.indent += 1
    e.line(f"rn = n0{cast} + tl.arange(0, BN)")
    kt = e.tmp(f"tl.load(k_ptr + ({_base('k', 'b', 'hk')} + rn[None, :] * k_sm + rd[:, None] * k_sd), "
               "mask=(rn[None, :] < S) & (rd[:, None] < D), other=0)", "k")
    if dtype in (torch.float16, torch.bfloat16):
        e.line("if INTERP:")
        e.indent += 1
        e.line(f"{kt} = {load_cast(e, kt, dtype)}")
        e.indent -= 1
    s = e.tmp(f"{_dot(dtype, q, kt)}.to({acc_t}) * scale", "s")
    ok = _scores(e, dtype, mask, causal, s, "rm", "rn", "b", "h", False)
    e.line(f"{s} = tl.where({ok}, {s}, float('-inf'))")
    e.line(f"m_new = tl.maximum(m_i, tl.reduce({s}, 1, tl.standard._elementwise_max))")
    e.line("m_safe = tl.where(m_new == float('-inf'), 0, m_new)")  # a row masked so far: exp(-inf - 0) = 0
    e.line("alpha = tl.exp(m_i - m_safe)")
    e.line(f"p = tl.exp({s} - m_safe[:, None])")
    e.line("l_i = l_i * alpha + tl.reduce(p, 1, tl.standard._sum_combine)")
    v = _load(e, "v", dtype, "rn", "rdv", "S", "DV", "b", "hk")
    e.line(f"acc = {_dot(dtype, f'p.to({v}.dtype)', v, 'acc * alpha[:, None]')}")
    e.line("m_i = m_new")
    e.indent -= 1
    e.line("empty = l_i == 0")  # every key masked: out 0, lse 0 (torch's CPU flash kernel)
    e.line("out = acc / tl.where(empty, 1, l_i)[:, None]")
    e.line("lse = tl.where(empty, 0, m_i + tl.log(tl.where(empty, 1, l_i)))")
    e.line(f"tl.store(o_ptr + ({_base('o', 'b', 'h')} + rm[:, None] * o_sm + rdv[None, :] * o_sd), "
           f"{store_cast(e, 'out', dtype)}, mask=(rm[:, None] < L) & (rdv[None, :] < DV))")
    e.line(f"tl.store(ls_ptr + ({_base('ls', 'b', 'h')} + rm * ls_sm), lse, mask=rm < L)")
    params = attention_params("attention", dtype, mask)
    tag = ("_causal" if causal else "") + ("_mask" if mask is not None else "")
    return make_kernel("attn" + tag, render(params, e.text()), "attention", ["attention"], params)


def emit_attention_grad_q(dtype: torch.dtype, mask: torch.dtype | None, causal: bool, scale: float,
                           int64: bool) -> Kernel:
    """dQ of BM query rows of one head: delta = rowsum(dO * O) first (stored for the dK/dV kernel),
    then a loop over the key blocks the rows see, P recomputed as exp(S - lse)."""
    e, acc_t, q = _query_program(dtype, scale, int64)
    cast = ".to(tl.int64)" if int64 else ""
    do = _load(e, "do", dtype, "rm", "rdv", "L", "DV", "b", "h")
    ot = _load(e, "ot", dtype, "rm", "rdv", "L", "DV", "b", "h")
    # delta in the computation dtype, from the stored (rounded) dO and O, as the IR's
    # sum(convert(dO) * convert(O)) would
    e.line(f"dl = tl.reduce({do}.to({acc_t}) * {ot}.to({acc_t}), 1, tl.standard._sum_combine)")
    e.line(f"tl.store(dl_ptr + ({_base('dl', 'b', 'h')} + rm * dl_sm), dl, mask=rm < L)")
    lse = e.tmp(f"tl.load(lse_ptr + ({_base('lse', 'b', 'h')} + rm * lse_sm), mask=rm < L, other=0)", "lse")
    e.line(f"dq = tl.full([BM, BD], 0, {acc_t})")
    e.line("end = S")
    if causal:
        e.line("end = tl.minimum(S, (pm + 1) * BM)")
    e.line("for n0 in range(0, end, BN):")
    e.indent += 1
    e.line(f"rn = n0{cast} + tl.arange(0, BN)")
    k = _load(e, "k", dtype, "rn", "rd", "S", "D", "b", "hk")
    v = _load(e, "v", dtype, "rn", "rdv", "S", "DV", "b", "hk")
    s = e.tmp(f"{_dot(dtype, q, f'tl.trans({k})')}.to({acc_t}) * scale", "s")
    ok = _scores(e, dtype, mask, causal, s, "rm", "rn", "b", "h", False)
    p = e.tmp(f"tl.where({ok}, tl.exp({s} - {lse}[:, None]), 0)", "p")
    dp = e.tmp(f"{_dot(dtype, do, f'tl.trans({v})')}.to({acc_t})", "dp")
    ds = e.tmp(f"{p} * ({dp} - dl[:, None])", "ds")
    e.line(f"dq = {_dot(dtype, f'{ds}.to({k}.dtype)', k, 'dq')}")
    e.indent -= 1
    e.line(f"tl.store(dq_ptr + ({_base('dq', 'b', 'h')} + rm[:, None] * dq_sm + rd[None, :] * dq_sd), "
           f"{store_cast(e, e.tmp('dq * scale', 'dq'), dtype)}, mask=(rm[:, None] < L) & (rd[None, :] < D))")
    params = attention_params("attention_grad_q", dtype, mask)
    tag = ("_causal" if causal else "") + ("_mask" if mask is not None else "")
    return make_kernel("attn_dq" + tag, render(params, e.text()), "attention", ["attention_grad_q"], params)


def emit_attention_grad_kv(dtype: torch.dtype, mask: torch.dtype | None, causal: bool, scale: float,
                           int64: bool) -> Kernel:
    """dK and dV of BN keys of one key/value head, over every query block of each query head of its
    group (grouped-query attention sums the group in registers: no atomics, deterministic)."""
    acc_t = "tl.float64" if dtype == torch.float64 else "tl.float32"
    e = Emitter()
    cast = ".to(tl.int64)" if int64 else ""
    e.line(f"bk = tl.program_id(0){cast}")
    e.line("pn = tl.program_id(1)")
    e.line("b = bk // HK")
    e.line("hk = bk % HK")
    e.line("rd = tl.arange(0, BD)")
    e.line("rdv = tl.arange(0, BDV)")
    e.line(f"scale = tl.full([], {py_literal(scale, torch.float64)}, {acc_t})")
    e.line(f"rn = pn{cast} * BN + tl.arange(0, BN)")
    k = _load(e, "k", dtype, "rn", "rd", "S", "D", "b", "hk")
    v = _load(e, "v", dtype, "rn", "rdv", "S", "DV", "b", "hk")
    e.line(f"dk = tl.full([BN, BD], 0, {acc_t})")
    e.line(f"dv = tl.full([BN, BDV], 0, {acc_t})")
    e.line("start = 0")
    if causal:  # queries before this key block never see it
        e.line("start = (pn * BN // BM) * BM")
    e.line("for g in range(0, G):")
    e.indent += 1
    e.line("h = hk * G + g")
    e.line("for m0 in range(start, L, BM):")
    e.indent += 1
    e.line(f"rm = m0{cast} + tl.arange(0, BM)")
    q = _load(e, "q", dtype, "rm", "rd", "L", "D", "b", "h")
    do = _load(e, "do", dtype, "rm", "rdv", "L", "DV", "b", "h")
    lse = e.tmp(f"tl.load(lse_ptr + ({_base('lse', 'b', 'h')} + rm * lse_sm), mask=rm < L, other=0)", "lse")
    dl = e.tmp(f"tl.load(dl_ptr + ({_base('dl', 'b', 'h')} + rm * dl_sm), mask=rm < L, other=0)", "dl")
    st = e.tmp(f"{_dot(dtype, k, f'tl.trans({q})')}.to({acc_t}) * scale", "s")
    ok = _scores(e, dtype, mask, causal, st, "rn", "rm", "b", "h", True)
    pt = e.tmp(f"tl.where({ok}, tl.exp({st} - {lse}[None, :]), 0)", "p")
    e.line(f"dv = {_dot(dtype, f'{pt}.to({do}.dtype)', do, 'dv')}")
    dpt = e.tmp(f"{_dot(dtype, v, f'tl.trans({do})')}.to({acc_t})", "dp")
    dst = e.tmp(f"{pt} * ({dpt} - {dl}[None, :])", "ds")
    e.line(f"dk = {_dot(dtype, f'{dst}.to({q}.dtype)', q, 'dk')}")
    e.indent -= 2
    e.line(f"tl.store(dk_ptr + ({_base('dk', 'b', 'hk')} + rn[:, None] * dk_sm + rd[None, :] * dk_sd), "
           f"{store_cast(e, e.tmp('dk * scale', 'dk'), dtype)}, mask=(rn[:, None] < S) & (rd[None, :] < D))")
    e.line(f"tl.store(dv_ptr + ({_base('dv', 'b', 'hk')} + rn[:, None] * dv_sm + rdv[None, :] * dv_sd), "
           f"{store_cast(e, 'dv', dtype)}, mask=(rn[:, None] < S) & (rdv[None, :] < DV))")
    params = attention_params("attention_grad_kv", dtype, mask)
    tag = ("_causal" if causal else "") + ("_mask" if mask is not None else "")
    return make_kernel("attn_dkv" + tag, render(params, e.text()), "attention", ["attention_grad_kv"], params)


EMITTERS = {"attention": emit_attention, "attention_grad_q": emit_attention_grad_q,
            "attention_grad_kv": emit_attention_grad_kv}


def _strides4(shape: tuple[int, ...], strides: tuple[int, ...]) -> list[int]:
    """A view's strides right-aligned to [B, H, rows, cols]; 0 where it broadcasts (size 1 or missing)."""
    out = [0] * 4
    lead = 4 - len(shape)
    for i, (n, st) in enumerate(zip(shape, strides)):
        out[lead + i] = 0 if n == 1 else st
    return out


def attention_args(views: list[tuple], outs: list[tuple], q_shape, k_shape, v_shape) -> list:
    """`views`: (pointer, offset, shape, strides) of each input in the kernel's order (q, k, v[, lse,
    delta, dout][, mask]); `outs`: (pointer, offset, shape, strides) of each output."""
    args = []
    for ptr, off, shape, strides in views + outs:
        args += [ptr, off] + (_rows3(shape, strides) if len(shape) == 3 else _strides4(shape, strides))
    b, h, l, d = q_shape
    hk, s, dv = k_shape[1], k_shape[2], v_shape[3]
    return args + [h, hk, h // hk, l, s, d, dv]


def _rows3(shape, strides) -> list[int]:
    return [0 if n == 1 else st for n, st in zip(shape, strides)]


def launch_config(op: str, q_shape: tuple[int, ...], k_shape: tuple[int, ...], dv: int, target: str,
                  dtype: torch.dtype = torch.float16) -> LaunchConfig:
    """Forward and dQ: programs over (batch * heads, query blocks); dK/dV: over (batch * kv heads, key
    blocks): the unbounded count on grid axis 0 (axis 1 stops at 65,535: 2M+ tokens a row). The
    interpreter pays per program and per statement: whole rows up to 128 per block. A GPU:
    FlashAttention-2's tiles where ptxas (sm_90, tests/test_sm90_compile.py) keeps them in registers
    without spilling: half operands with head dims up to 64 128 x 64 forward and 64 x 64 backward
    (4 warps), up to 128 the forward on 8 warps and the backward 64 x 32; float32/float64
    (no tensor cores at "highest" precision: FMA dots hold far larger fragments) 64 x 32 forward,
    32 x 32 backward."""
    b, h, l, d = q_shape
    hk, s = k_shape[1], k_shape[2]
    bd, bdv = pow2(max(d, 16)), pow2(max(dv, 16))
    backward = op != "attention"
    warps = 4
    if interpreted(target):
        bm, bn = min(pow2(max(l, 16)), 128), min(pow2(max(s, 16)), 128)
    elif dtype in (torch.float16, torch.bfloat16) and max(bd, bdv) <= 64:
        bm, bn = (64, 64) if backward else (128, 64)
    elif dtype in (torch.float16, torch.bfloat16) and max(bd, bdv) <= 128:
        bm, bn = (64, 32) if backward else (128, 64)
        warps = 4 if backward else 8
    else:
        bm, bn = (32, 32) if backward else (64, 32)
    # (flattening both on axis 0 costs the dK/dV kernel its last free registers at head dim 128: it spills)
    grid = (b * hk, cdiv(s, bn)) if op == "attention_grad_kv" else (b * h, cdiv(l, bm))
    return LaunchConfig(grid, {"BM": bm, "BN": bn, "BD": bd, "BDV": bdv}, warps)
