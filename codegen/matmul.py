"""Matmul emitter: tiled tl.dot over [..., M, K] @ [..., K, N] with broadcast batch dims.

Both operands are addressed through runtime strides (batch strides 0 where broadcast), so
transposed or sliced operands need no copy. Accumulation is fp32 (fp64 for fp64); the tile is
cast back to the input dtype on store. Two constexprs are chosen per launch: PREC (tl.dot
input_precision for fp32 on a GPU, from torch.get_float32_matmul_precision()) and INTERP (the
interpreter computes half-precision tl.dot wrongly, so operands are upcast there).
"""

from __future__ import annotations

import torch

from .emitter import Emitter, ptr_sig, tl_dtype, unravel
from .kernel import Kernel, make_kernel, render


def matmul_params(dtype: torch.dtype, nb: int) -> list[tuple[str, str]]:
    p = [("a_ptr", ptr_sig(dtype)), ("a_off", "int")] + [(f"a_bst{i}", "int") for i in range(nb)]
    p += [("a_sm", "int"), ("a_sk", "int"), ("b_ptr", ptr_sig(dtype)), ("b_off", "int")]
    p += [(f"b_bst{i}", "int") for i in range(nb)] + [("b_sk", "int"), ("b_sn", "int")]
    p += [("c_ptr", ptr_sig(dtype))] + [(f"bs{i}", "int") for i in range(nb)]
    p += [("M", "int"), ("N", "int"), ("K", "int")]
    return p + [(n, "constexpr") for n in ("BM", "BN", "BK", "PREC", "INTERP")]


def matmul_args(a: tuple, a_shape: tuple[int, ...], b: tuple, b_shape: tuple[int, ...], c_ptr,
                batch: tuple[int, ...]) -> list:
    """a, b: (pointer object, offset, strides). Batch dims broadcast right-aligned to `batch`."""

    def batch_strides(shape, strides):
        lead = len(batch) - (len(shape) - 2)
        out = [0] * len(batch)
        for i in range(len(shape) - 2):
            out[lead + i] = 0 if shape[i] == 1 else strides[i]
        return out

    (ap, ao, ast), (bp, bo, bst) = a, b
    return ([ap, ao] + batch_strides(a_shape, ast) + [ast[-2], ast[-1], bp, bo] + batch_strides(b_shape, bst)
            + [bst[-2], bst[-1], c_ptr] + list(batch) + [a_shape[-2], b_shape[-1], a_shape[-1]])


def emit_matmul(dtype: torch.dtype, nb: int, int64: bool = False) -> Kernel:
    acc_t = "tl.float64" if dtype == torch.float64 else "tl.float32"
    e = Emitter()
    e.line("pid = tl.program_id(0)")
    e.line(f"bid = tl.program_id(1){'.to(tl.int64)' if int64 else ''}")
    e.line("nn = (N + BN - 1) // BN")  # tl.cdiv/tl.zeros are jit wrappers: not callable under the interpreter
    e.line("pm = pid // nn")
    e.line("pn = pid % nn")
    bidx = unravel(e, "bid", [f"bs{i}" for i in range(nb)], "b")
    a_base = " + ".join(["a_off"] + [f"{i} * a_bst{k}" for k, i in enumerate(bidx)])
    b_base = " + ".join(["b_off"] + [f"{i} * b_bst{k}" for k, i in enumerate(bidx)])
    e.line(f"a_base = {a_base}")
    e.line(f"b_base = {b_base}")
    cast = ".to(tl.int64)" if int64 else ""
    e.line(f"rm = (pm * BM + tl.arange(0, BM)){cast}")
    e.line(f"rn = (pn * BN + tl.arange(0, BN)){cast}")
    e.line(f"rk = tl.arange(0, BK){cast}")
    e.line(f"acc = tl.full([BM, BN], 0, {acc_t})")
    e.line("for k0 in range(0, K, BK):")
    e.indent += 1
    e.line("ka = k0 + rk")
    e.line("a = tl.load(a_ptr + (a_base + rm[:, None] * a_sm + ka[None, :] * a_sk), "
           "mask=(rm[:, None] < M) & (ka[None, :] < K), other=0)")
    e.line("b = tl.load(b_ptr + (b_base + ka[:, None] * b_sk + rn[None, :] * b_sn), "
           "mask=(ka[:, None] < K) & (rn[None, :] < N), other=0)")
    if dtype in (torch.float16, torch.bfloat16):
        e.line("if INTERP:")
        e.line("    a = a.to(tl.float32)")
        e.line("    b = b.to(tl.float32)")
    if dtype == torch.float32:
        e.line("acc = tl.dot(a, b, acc, input_precision=PREC)")
    else:
        e.line("acc = tl.dot(a, b, acc)")
    e.indent -= 1
    e.line("cmask = (rm[:, None] < M) & (rn[None, :] < N)")
    e.line(f"tl.store(c_ptr + (bid * M * N + rm[:, None] * N + rn[None, :]), acc.to({tl_dtype(dtype)}), mask=cmask)")
    params = matmul_params(dtype, nb)
    return make_kernel("mm", render(params, e.text()), "matmul", ["matmul"], params)
