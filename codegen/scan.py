"""Scan emitter: an inclusive prefix combine (cumsum, cumprod, logcumsumexp) along one dim of any-strided input.

The input is seen as rows x cols: rows enumerate the other dims (row-major), unravelled with runtime
sizes and strides, cols are the scanned dim. Each program owns BM rows and walks them BR columns at
a time, in order: `tl.associative_scan` scans the chunk, the prefix carried from the chunks before is
combined in, and the chunk's last column becomes the next carry. So a row of any length is one
launch, and the result does not depend on the grid (deterministic). As torch's CPU kernels, float32
accumulates in float64, half types in float32 (the carry too), each output rounded on store;
integers and bool accumulate in int64. Combines other than Triton's sum (product, logaddexp) are
`@triton.jit` functions of the module, which `tl.associative_scan` calls both under the interpreter
and when compiled (the kernel itself spells the carry's combine inline: under the interpreter it
cannot call a jit function).

A scan whose rows fit one row-kernel block is fused instead (passes/fusion.py): `scan_tile` is then a
tile op of the row emitter (codegen/row.py), with its pointwise prologue and epilogue and any
reduction over the same rows.
"""

from __future__ import annotations

import torch

from ..ir.kernel_group import pow2
from ..ir.ops.half import load_cast, store_cast
from ..ir.types import compute_dtype, py_literal
from .emitter import Emitter, bind_value, emit_rows, literal, offset_expr, ptr_sig, tl_dtype
from .kernel import Kernel, make_kernel, render
from .launch import LaunchConfig, cdiv, interpreted

# logaddexp as torch's `_log_add_exp_helper`: max + log1p(exp(min - max)) (log1p with the classic
# log(w) * u / (w - 1) correction: the interpreter has no libdevice), the same infinity twice stays it,
# NaN propagates (tl.maximum/minimum do not promise to).
_LOG_ADD_EXP = [
    ("mx", "tl.maximum({a}, {b})"),
    ("mn", "tl.minimum({a}, {b})"),
    ("u", "tl.exp({mn} - {mx})"),
    ("w", "1.0 + {u}"),
    ("r", "{mx} + tl.where({w} == 1.0, {u}, tl.log({w}) * ({u} / ({w} - 1.0)))"),
    ("r", "tl.where(({mn} == {mx}) & (({mn} - {mn}) != 0), {mx}, {r})"),
    ("r", "tl.where(({a} != {a}) | ({b} != {b}), {a} + {b}, {r})"),
]


def _extremum(cmp: str) -> list[tuple[str, str]]:
    """torch's cummax/cummin step: the later element b wins when it is NaN, or when the running a is
    not NaN and b >= a (cummax; <= for cummin): ties give the latest index, the last NaN wins."""
    return [("t", f"({{b}} != {{b}}) | (({{a}} == {{a}}) & ({{b}} {cmp} {{a}}))"), ("r", "tl.where({t}, {b}, {a})"),
            ("ri", "tl.where({t}, {bi}, {ai})")]


# combine -> (the combine function `tl.associative_scan` calls (None: `_<combine>_combine`, defined in
# the module from the steps), its steps: (name, expression of a, b (and the indices ai, bi) and earlier
# names), identity ("low"/"high": the dtype's lowest/highest)). The kernel combines the carry by the
# same steps inline: under the interpreter it cannot call a jit function. `INDEX_COMBINES` scan
# (value, index) pairs and give the index.
_COMBINES = {
    "sum": ("tl.standard._sum_combine", [("r", "{a} + {b}")], 0),
    "prod": (None, [("r", "{a} * {b}")], 1),
    "logsumexp": (None, _LOG_ADD_EXP, float("-inf")),
    "max": (None, _extremum(">=")[:2], "low"),
    "min": (None, _extremum("<=")[:2], "high"),
    "argmax": (None, _extremum(">="), "low"),
    "argmin": (None, _extremum("<="), "high"),
}
INDEX_COMBINES = ("argmax", "argmin")


def _steps(steps: list[tuple[str, str]], names: dict[str, str], bind) -> list[str]:
    """Emit `steps` on the operands in `names`; `bind(name, expr)` -> the bound name. Returns the
    result: the last name (its index too for (value, index) combines)."""
    names = dict(names)
    for name, expr in steps:
        names[name] = bind(name, expr.format(**names))
    return [names["r"], names["ri"]] if "ri" in names else [names[steps[-1][0]]]


def _combine_function(combine: str) -> str:
    lines: list[str] = []

    def bind(name: str, expr: str) -> str:
        lines.append(f"    {name} = {expr}")
        return name

    index = combine in INDEX_COMBINES
    ops = {"a": "a", "b": "b", "ai": "ai", "bi": "bi"} if index else {"a": "a", "b": "b"}
    result = _steps(_COMBINES[combine][1], ops, bind)
    body = "\n".join(lines)
    params = "a, ai, b, bi" if index else "a, b"
    return f"@triton.jit\ndef _{combine}_combine({params}):\n{body}\n    return {', '.join(result)}\n"


def accumulation_dtype(out_dtype: torch.dtype) -> torch.dtype:
    """torch's CPU scans accumulate in `acc_type<T, false>`: float64 for float32, float32 for halves,
    int64 for integers; the same here keeps each output the rounding of (nearly) the same sum."""
    return torch.float64 if out_dtype == torch.float32 else compute_dtype(out_dtype)


def work_dtype(combine: str, x_dtype: torch.dtype, out_dtype: torch.dtype) -> torch.dtype:
    """The dtype values are combined in: sums and products as torch accumulates them; extremes
    compare the input's values exactly (bool as int32)."""
    if combine in ("sum", "prod", "logsumexp"):
        return accumulation_dtype(out_dtype)
    return torch.int32 if x_dtype == torch.bool else compute_dtype(x_dtype)


def _identity(combine: str, wt: torch.dtype):
    value = _COMBINES[combine][2]
    if value in ("low", "high"):
        if wt.is_floating_point:
            return float("-inf") if value == "low" else float("inf")
        return torch.iinfo(wt).min if value == "low" else torch.iinfo(wt).max
    return value


def with_combines(source: str, combines) -> str:
    """Kernel module `source` with the jit combine functions `tl.associative_scan` calls for these
    combines (those that are not Triton's own), defined before the kernel."""
    defs = [_combine_function(c) for c in dict.fromkeys(combines) if _COMBINES[c][0] is None]
    if not defs:
        return source
    head = "\n\n\n@triton.jit\ndef KERNEL("
    assert source.count(head) == 1
    return source.replace(head, "\n\n\n" + "\n\n".join(defs) + head, 1)


def _scan_call(e: Emitter, combine: str, x: str, index: str) -> list[str]:
    fn = _COMBINES[combine][0] or f"_{combine}_combine"
    if combine in INDEX_COMBINES:
        e.line(f"sv, si = tl.associative_scan(({x}, {index}), 1, {fn})")
        return ["sv", "si"]
    return [e.tmp(f"tl.associative_scan({x}, 1, {fn})", "s")]


def scan_tile(e: Emitter, x: str, mask: str, combine: str, x_dtype: torch.dtype, out_dtype: torch.dtype,
              index: str) -> str:
    """The inclusive scan of tile `x` ([BM, BR], columns in order along the scanned dim; `index` their
    positions) in a row kernel holding whole rows (codegen/row.py): masked lanes hold the identity
    (they follow the row's last column, so they could not change it anyway); the result (values, or
    the index of an extreme) bound as a value of `out_dtype`."""
    wt = work_dtype(combine, x_dtype, out_dtype)
    t = e.tmp(f"tl.where({mask}, ({x}).to({tl_dtype(wt)}), {literal(_identity(combine, wt), wt)})", "s")
    y = _scan_call(e, combine, t, f"({index}).to(tl.int64)")
    return bind_value(e, y[-1], out_dtype)


def scan_params(x_dtype: torch.dtype, out_dtype: torch.dtype, nk: int) -> list[tuple[str, str]]:
    p = [("x_ptr", ptr_sig(x_dtype)), ("x_off", "int")] + [(f"x_kst{i}", "int") for i in range(nk)] + [("x_rst", "int")]
    p += [("out_ptr", ptr_sig(out_dtype))] + [(f"o_kst{i}", "int") for i in range(nk)] + [("o_rst", "int")]
    p += [(f"ks{i}", "int") for i in range(nk)] + [("M", "int"), ("R", "int")]
    return p + [("BM", "constexpr"), ("BR", "constexpr")]


def scan_args(x: tuple, out: tuple, shape: tuple[int, ...], dim: int) -> list:
    """x, out: (pointer object, offset, strides); the output's offset must be 0."""
    xp, xoff, xst = x
    op, _, ost = out
    kept = [d for d in range(len(shape)) if d != dim]
    m = 1
    for d in kept:
        m *= shape[d]
    return ([xp, xoff] + [xst[d] for d in kept] + [xst[dim] if shape else 0]
            + [op] + [ost[d] for d in kept] + [ost[dim] if shape else 0]
            + [shape[d] for d in kept] + [m, shape[dim] if shape else 1])


def emit_scan(op: str, combine: str, x_dtype: torch.dtype, out_dtype: torch.dtype, nk: int,
              int64: bool = False) -> Kernel:
    wt = work_dtype(combine, x_dtype, out_dtype)
    steps = _COMBINES[combine][1]
    index = combine in INDEX_COMBINES
    # the carry's filler in `last` selections: -0.0 + v == v for every float v (signed zeros too)
    zero = literal(-0.0 if wt.is_floating_point else 0, wt)
    e = Emitter()
    kidx = emit_rows(e, nk, int64)
    e.line(f"x_row = {offset_expr('x_off', kidx, [f'x_kst{i}' for i in range(nk)], 'rzero')}")
    e.line(f"o_row = {offset_expr('0', kidx, [f'o_kst{i}' for i in range(nk)], 'rzero')}")
    e.line(f"cols0 = tl.arange(0, BR){'.to(tl.int64)' if int64 else ''}")
    e.line("last = (cols0 == BR - 1)[None, :]")
    e.line(f"carry = tl.full([BM], {py_literal(_identity(combine, wt), wt)}, {tl_dtype(wt)})")
    if index:
        e.line("carry_i = tl.full([BM], 0, tl.int64)")
    e.line("for r0 in range(0, R, BR):")
    e.indent += 1
    e.line("cols = r0 + cols0")
    e.line("m2 = rmask[:, None] & (cols < R)[None, :]")
    e.line("x = tl.load(x_ptr + (x_row[:, None] + (cols * x_rst)[None, :]), mask=m2, other=0)")
    # masked lanes hold the identity: before the row's end, the chunk's last column is its prefix
    e.line(f"x = tl.where(m2, ({load_cast(e, 'x', x_dtype)}).to({tl_dtype(wt)}), "
           f"{literal(_identity(combine, wt), wt)})")
    ys = _scan_call(e, combine, "x", "(cols.to(tl.int64))[None, :] + (rzero.to(tl.int64))[:, None]")
    names = {"a": "carry[:, None]", "b": ys[0]} | ({"ai": "carry_i[:, None]", "bi": ys[1]} if index else {})
    ys = _steps(steps, names, lambda name, expr: e.tmp(expr, name))
    e.line(f"tl.store(out_ptr + (o_row[:, None] + (cols * o_rst)[None, :]), {store_cast(e, ys[-1], out_dtype)}, "
           "mask=m2)")
    # the last column alone, summed with fillers: exact
    e.line(f"carry = tl.reduce(tl.where(last, {ys[0]}, {zero}), 1, tl.standard._sum_combine)")
    if index:
        e.line(f"carry_i = tl.reduce(tl.where(last, {ys[1]}, 0), 1, tl.standard._sum_combine)")
    e.indent -= 1
    params = scan_params(x_dtype, out_dtype, nk)
    return make_kernel(f"scan_{op}", with_combines(render(params, e.text()), [combine]), "scan", [op], params)


SCAN_BLOCK = 1024  # scanned rows longer than this are scanned block by block, carrying the prefix


def launch_config(m: int, r: int, target: str) -> LaunchConfig:
    """BR columns of the scanned dim per step, BM rows per program: the interpreter pays per program
    (large blocks); a GPU holds the block (float64 accumulation for float32) in registers."""
    br = min(pow2(max(r, 1)), SCAN_BLOCK)
    bm = max(1, min(pow2(m), (4096 if interpreted(target) else 2048) // br))
    return LaunchConfig((cdiv(m, bm),), {"BM": bm, "BR": br})
