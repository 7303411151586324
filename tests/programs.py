"""Random PyTorch programs for differential testing (hypothesis strategies).

A program is a list of steps over a growing pool of tensors: pointwise ops with broadcasting,
reductions (over one or two dims, keepdim or not), row patterns (softmax, log_softmax, layernorm,
rmsnorm), matmuls (with a constant weight, or batched between pool tensors), and layout ops
(transpose, permute, expand, slices, reshapes that split and merge dims, flip, cat, select). Values
stay bounded (no exp of large numbers, safe denominators, weights scaled by 1/K) so comparisons with
tight tolerances are meaningful.

Inputs are float32, float16, bfloat16, float64, int32, int64 or bool (`dtypes`; with `mixed`, each
input its own dtype, and steps convert, compare, promote and take argmax between them); dims may be
0 (`zero_dims`: sums over them give 0, amax raises as in eager). Each input is laid out in one of
`LAYOUTS`: contiguous, transposed, sliced with a step, expanded (stride 0), the same tensor as an
earlier input, a view overlapping an earlier input's storage, or an arbitrary `as_strided` view of a
larger buffer (random positive strides and storage offset; overlapping elements only in inputs that
are never written), possibly of the same buffer as an earlier strided input.

Each step runs on small real tensors while the program is drawn, which gives its result's shape and
dtype and finds steps eager rejects: those are replaced, or with `allow_raise` now and then kept as
the program's last step (then ember must raise too). Every choice is drawn from hypothesis, so a
failing program shrinks to a small one and prints as readable Python (`Program.source`, with the
code that builds its inputs).
"""

from __future__ import annotations

import hashlib
import linecache
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from hypothesis import strategies as st
from programs_nn import INVALID_NN, nn_step
from testing import CHAIN_TOLERANCES

FLOATS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
ALL_DTYPES = FLOATS + (torch.int32, torch.int64, torch.bool)
HALF = (torch.float16, torch.bfloat16)

UNARY = {
    "tanh": "torch.tanh({})", "sigmoid": "torch.sigmoid({})", "relu": "torch.relu({})", "neg": "-{}",
    "abs": "torch.abs({})", "sin": "torch.sin({})", "gelu": "torch.nn.functional.gelu({})",
    "exp_bounded": "torch.exp(torch.tanh({}))", "log_safe": "torch.log(torch.abs({}) + 1)",
    "square": "{} * {}", "silu": "torch.nn.functional.silu({})", "scale": "{} * 0.5 + 1",
    "clamp": "{}.clamp(-1, 1)", "rsqrt_safe": "torch.rsqrt({} * {} + 1)",
}
BINARY = {
    "add": "{} + {}", "sub": "{} - {}", "mul": "{} * {}", "max": "torch.maximum({}, {})",
    "div_safe": "{} / (torch.abs({}) + 1)", "where": "torch.where({0} > 0, {0}, {1})",
}
REDUCE = {"sum": "{}.sum({dim}, keepdim={k})", "mean": "{}.mean({dim}, keepdim={k})",
          "amax": "{}.amax({dim}, keepdim={k})", "amin": "{}.amin({dim}, keepdim={k})",
          "softmax": "torch.softmax({}, {dim})", "log_softmax": "torch.log_softmax({}, {dim})",
          "var": "{}.var({dim}, keepdim={k})"}
# integer steps: values start in [-5, 5]; wrap-around on overflow is the same in eager and ember
INT_UNARY = {"neg": "-{}", "abs": "torch.abs({})", "affine": "{} * 3 + 1", "clamp": "{}.clamp(-2, 2)",
             "floordiv": "{} // 2", "mod": "{} % 3", "not": "~{}", "square": "{} * {}"}
INT_BINARY = {"add": "{} + {}", "sub": "{} - {}", "mul": "{} * {}", "max": "torch.maximum({}, {})",
              "min": "torch.minimum({}, {})", "where": "torch.where({0} > 0, {0}, {1})",
              "and": "{} & {}", "or": "{} | {}", "xor": "{} ^ {}"}
# int mean raises in eager ("could not infer output dtype"): ember must raise too
INT_REDUCE = {"sum": "{}.sum({dim}, keepdim={k})", "prod": "{}.prod({dim}, keepdim={k})",
              "amax": "{}.amax({dim}, keepdim={k})", "amin": "{}.amin({dim}, keepdim={k})",
              "argmax": "{}.argmax({dim}, keepdim={k})", "argmin": "{}.argmin({dim}, keepdim={k})",
              "mean": "{}.mean({dim}, keepdim={k})"}
BOOL_UNARY = {"not": "~{}", "logical_not": "torch.logical_not({})", "to_int": "{}.int()"}
BOOL_BINARY = {"and": "{} & {}", "or": "{} | {}", "xor": "{} ^ {}", "eq": "{} == {}",
               "where": "torch.where({0}, {1}, {0})"}
BOOL_REDUCE = {"any": "{}.any({dim}, keepdim={k})", "all": "{}.all({dim}, keepdim={k})",
               "sum": "{}.sum({dim}, keepdim={k})"}
# steps that eager rejects, most of the time (by shape, rank, dtype or index): ember must raise too
INVALID = {"broadcast": "{0} + torch.ones(7, 6, dtype={0}.dtype)", "matmul": "{0} @ torch.ones(7, 3, dtype={0}.dtype)",
           "reshape": "{0}.reshape(-1, 7)", "dim": "{0}.sum({n})", "cat": "torch.cat([{0}, {0}.unsqueeze(0)])",
           "bool_sub": "{0}.bool() - {0}.bool()", "view": "{0}.transpose(0, -1).view(-1)",
           "select": "{0}.reshape(-1).select(0, {0}.numel())", "inplace_shape": "{0}.clone().add_({0}.unsqueeze(0))"}
# float ops with jumps (floor, round, sign): only of exact values, where 1 ulp cannot cross a jump
STEP_UNARY = {"floor": "torch.floor({})", "round": "torch.round({})", "sign": "torch.sign({})",
              "trunc": "torch.trunc({} * 4)"}
# float ops whose result is bit-for-bit the same wherever computed: only values built from inputs by
# these may be compared, truncated to ints or argmax'ed (anything else may sit 1 ulp off eager's and
# flip a comparison legitimately)
EXACT_FLOAT = {"relu", "neg", "abs", "clamp", "max", "where", "amax", "amin", "layout", "convert"}
# row patterns over the last dim (shape-preserving). layer_norm's eps is 1e-3: a constant row (an
# expanded input) centers to rounding noise that 1/sqrt(eps) amplifies, and torch's Welford mean is
# exact there while a sum / n is not (1 ulp * 316 at eps=1e-5 exceeds float32 tolerances).
NORMS = {
    "layer_norm": "torch.nn.functional.layer_norm({0}, {0}.shape[-1:], eps=1e-3)",
    "rmsnorm": "{0} * torch.rsqrt(({0} * {0}).mean(-1, keepdim=True) + 1e-6)",
    "center": "{0} - {0}.mean(-1, keepdim=True)",
}
# eager float16/bfloat16 rounds after every op, ember after every kernel: compare with looser
# tolerances (a program is compared at the loosest of the float dtypes it computes in); ints and
# bools exactly
TOLERANCES = CHAIN_TOLERANCES  # tests/testing.py: the one tolerance table
# How an input is laid out in memory. "alias": the very tensor of an earlier input of the same shape;
# "overlap": a view of the same storage as an earlier input, shifted by a few elements; "strided":
# `as_strided` with random strides and offset into a flat buffer (its own, or an earlier strided
# input's).
LAYOUTS = ("contiguous", "transposed", "stepped", "expanded", "alias", "overlap", "strided", "strided")


@dataclass(frozen=True)
class Layout:
    kind: str = "contiguous"
    of: int | None = None  # the earlier input an alias/overlap/strided input shares storage with
    strides: tuple[int, ...] = ()  # "strided" only
    offset: int = 0
    overlapping: bool = False  # "strided": elements share memory (never written)


class Val(NamedTuple):
    """A tensor in the program's pool: its name, shape, dtype, and whether its value is exact
    (computed from inputs by ops that round the same everywhere, see EXACT_FLOAT)."""
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    exact: bool = True


def _expanded_base(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape an expanded input is expanded from: its first dim > 1 becomes 1."""
    dims = [i for i, d in enumerate(shape) if d > 1]
    return tuple(1 if dims and i == dims[0] else d for i, d in enumerate(shape))


def _extent(shape: tuple[int, ...], strides: tuple[int, ...], offset: int) -> int:
    """Elements of storage an as_strided view needs."""
    if any(d == 0 for d in shape):
        return offset
    return offset + sum((d - 1) * s for d, s in zip(shape, strides)) + 1


@dataclass
class Program:
    shapes: list[tuple[int, ...]]
    dtype: torch.dtype = torch.float32
    lines: list[str] = field(default_factory=list)
    pool: list[Val] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    layouts: list[Layout] = field(default_factory=list)  # per input; missing ones are contiguous
    dtypes: list[torch.dtype] = field(default_factory=list)  # per input; missing ones are `dtype`
    raises: str = ""  # the last step raises in eager (found while drawing): its error

    def layout(self, i: int) -> Layout:
        return self.layouts[i] if i < len(self.layouts) else Layout()

    def input_dtype(self, i: int) -> torch.dtype:
        return self.dtypes[i] if i < len(self.dtypes) else self.dtype

    def _rand(self, i: int, shape: list[int]) -> str:
        d = self.input_dtype(i)
        return f"rand({shape})" if d == torch.float32 else f"rand({shape}, {d})"

    @property
    def input_source(self) -> str:
        """Python that builds the inputs from leaf tensors `b0, b1, ...` (what gradients are taken of);
        `rand(shape, dtype)` is randn for floats, mostly randint(-5, 6) for ints, a coin for bools."""
        lines, n_bases, base_of = [], 0, {}
        for i, shape in enumerate(self.shapes):
            lay, s = self.layout(i), list(shape)
            if lay.kind == "alias":
                lines.append(f"x{i} = x{lay.of}")
                continue
            if lay.kind == "overlap":  # x{of} was built as the first elements of its own flat base
                n = _numel(shape)
                lines.append(f"x{i} = flat{lay.of}[{max(1, n // 2)}:{max(1, n // 2) + n}].view({s})")
                continue
            if lay.kind == "strided" and lay.of is not None:
                lines.append(f"x{i} = {base_of[lay.of]}.as_strided({s}, {list(lay.strides)}, {lay.offset})")
                continue
            b = f"b{n_bases}"
            n_bases += 1
            if lay.kind == "strided":  # a flat buffer long enough for every input viewing it
                users = [j for j in range(len(self.shapes)) if j == i or
                         (self.layout(j).kind == "strided" and self.layout(j).of == i)]
                n = max(_extent(self.shapes[j], self.layout(j).strides, self.layout(j).offset) for j in users) + 2
                base_of[i] = b
                lines.append(f"{b} = {self._rand(i, [n])}; x{i} = {b}.as_strided({s}, {list(lay.strides)}, "
                             f"{lay.offset})")
            elif lay.kind == "transposed" and len(s) >= 2:
                lines.append(f"{b} = {self._rand(i, [s[-1]] + s[1:-1] + [s[0]])}; x{i} = {b}.transpose(0, -1)")
            elif lay.kind == "stepped" and len(s) >= 1:
                lines.append(f"{b} = {self._rand(i, s[:-1] + [2 * s[-1]])}; x{i} = {b}[..., ::2]")
            elif lay.kind == "expanded" and any(d > 1 for d in s):
                lines.append(f"{b} = {self._rand(i, list(_expanded_base(shape)))}; x{i} = {b}.expand({s})")
            elif self._overlapped(i):  # a flat base longer than x{i}: a later input overlaps it
                n = _numel(shape)
                lines.append(f"{b} = {self._rand(i, [n + max(1, n // 2)])}; flat{i} = {b}; "
                             f"x{i} = {b}[:{n}].view({s})")
            else:
                lines.append(f"{b} = {self._rand(i, s)}; x{i} = {b}")
        return "\n".join(lines)

    def _overlapped(self, i: int) -> bool:
        return any(self.layout(j).kind == "overlap" and self.layout(j).of == i for j in range(len(self.shapes)))

    @property
    def source(self) -> str:
        args = ", ".join(f"x{i}" for i in range(len(self.shapes)))
        body = "\n".join(f"    {ln}" for ln in self.lines)
        dts = sorted({str(self.input_dtype(i)) for i in range(len(self.shapes))})
        head = f"# inputs: {self.shapes}, {', '.join(dts)}\n"
        if any(self.layout(i).kind != "contiguous" or self.input_dtype(i) != torch.float32
               for i in range(len(self.shapes))):
            head += "".join(f"#   {ln}\n" for ln in self.input_source.splitlines())
        if self.raises:
            head += f"# eager raises at the last step: {self.raises}\n"
        return f"{head}def program({args}):\n{body}\n    return ({', '.join(self.outputs)},)\n"

    def function(self):
        """The program as a function. Its code names a (never written) file whose lines linecache
        holds: a user's file to ember's errors, which name the line that raised, and to tracebacks."""
        source = self.source
        name = os.path.join(tempfile.gettempdir(), "ember-random-programs",
                            f"program_{hashlib.sha1(source.encode()).hexdigest()[:12]}.py")
        linecache.cache[name] = (len(source), None, source.splitlines(True), name)
        scope: dict = {"torch": torch}
        exec(compile(source, name, "exec"), scope)
        return scope["program"]

    def make_inputs(self, requires_grad: bool = False, seed: int | None = None, wide: bool = False
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(leaf tensors, program inputs built from them by `input_source`). The same `seed` gives
        equal values and the same aliasing: independent copies for eager and ember. `wide`: the
        same values with floats in float64 (a reference for accuracy). `requires_grad` applies to
        the float leaves."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        bases: list[torch.Tensor] = []

        def rand(shape: list[int], dtype: torch.dtype = torch.float32) -> torch.Tensor:
            if dtype.is_floating_point:
                t = torch.randn(shape, generator=gen).to(dtype)
                t = (t.double() if wide else t).requires_grad_(requires_grad)
            elif dtype == torch.bool:
                t = torch.randint(0, 2, shape, generator=gen).bool()
            else:  # small values, and one in 8 anywhere in a wide range (overflow wraps, casts round)
                big = 2**31 if dtype == torch.int32 else 2**40
                t = torch.where(torch.randint(0, 8, shape, generator=gen) == 0,
                                torch.randint(-big, big, shape, generator=gen),
                                torch.randint(-5, 6, shape, generator=gen)).to(dtype)
            bases.append(t)
            return t

        scope: dict = {"rand": rand, "torch": torch}
        exec(self.input_source, scope)
        return bases, [scope[f"x{i}"] for i in range(len(self.shapes))]

    def inputs(self) -> list[torch.Tensor]:
        return self.make_inputs()[1]

    @property
    def float_dtypes(self) -> set[torch.dtype]:
        """The float dtypes the program computes in (inputs and every step)."""
        dts = {self.input_dtype(i) for i in range(len(self.shapes))} | {v.dtype for v in self.pool}
        return {d for d in dts if d.is_floating_point} or {self.dtype}

    @property
    def tolerances(self) -> tuple[float, float]:
        """(rtol, atol) for float outputs: the loosest of the program's float dtypes."""
        return max((TOLERANCES[d] for d in self.float_dtypes), key=lambda t: t[0])


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    try:
        return tuple(torch.broadcast_shapes(a, b))
    except RuntimeError:
        return None


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _kind(dtype: torch.dtype) -> str:
    return "float" if dtype.is_floating_point else "bool" if dtype == torch.bool else "int"


def _layout(draw, a: str, sa: tuple[int, ...]) -> str | None:
    choice = draw(st.sampled_from(["transpose", "unsqueeze_expand", "slice", "flatten", "flip", "cat",
                                   "permute", "split_last", "select", "narrow", "transpose_reshape"]))
    r = len(sa)
    if choice == "transpose" and r >= 2:
        return f"{a}.transpose(0, -1)"
    if choice == "unsqueeze_expand":
        return f"{a}.unsqueeze(0).expand(2, *{a}.shape)"
    if choice == "slice" and sa[-1] >= 2:
        return f"{a}[..., ::2]"
    if choice == "narrow" and sa[0] >= 2:
        return f"{a}[1:]"
    if choice == "flatten":
        return f"{a}.reshape({_numel(sa)})"
    if choice == "flip":
        return f"{a}.flip(-1)"
    if choice == "cat":
        return f"torch.cat([{a}, {a} * 2], dim=-1)"
    if choice == "permute" and r >= 2:
        return f"{a}.permute{tuple(draw(st.permutations(range(r))))}"
    if choice == "split_last" and sa[-1] in (4, 6, 8, 10, 16):
        return f"{a}.reshape(*{a}.shape[:-1], 2, {sa[-1] // 2})"
    if choice == "select" and r >= 2:  # raises on a dim of size 0 (the step is replaced or kept)
        return f"{a}.select(-1, {sa[-1] - 1})"
    if choice == "transpose_reshape" and r >= 2:  # a non-viewable reshape: needs a copy or index math
        return f"{a}.transpose(0, -1).reshape(-1)"
    return None


def _writable(prog: Program, i: int) -> bool:
    """torch refuses in-place writes into an expanded tensor (elements sharing memory), and into
    other self-overlapping views they are ill-defined."""
    lay = prog.layout(i)
    lay = prog.layout(lay.of) if lay.kind == "alias" else lay
    if lay.kind == "strided" and lay.overlapping:
        return False
    return lay.kind != "expanded" or all(d <= 1 for d in prog.shapes[i])


def _inplace(draw, prog: Program) -> str | None:
    """An in-place update of an input (all of it, or a slice of it): aliases, overlapping inputs and
    views taken of it before see the new values in eager PyTorch."""
    targets = [i for i in range(len(prog.shapes)) if _writable(prog, i)]
    if not targets:
        return None
    i = draw(st.sampled_from(targets))
    x, sx, kind = f"x{i}", prog.shapes[i], _kind(prog.input_dtype(i))
    if len(sx) >= 1 and sx[-1] >= 2 and draw(st.booleans()):  # write through a view of the input
        x, sx = f"x{i}[..., 1:]", sx[:-1] + (sx[-1] - 1,)
    # sources: fresh values (torch refuses a source that partially overlaps the target) that cast to
    # the target's dtype without truncating a float that may be 1 ulp off eager's
    ok = {"float": ("float", "int"), "int": ("int", "bool"), "bool": ("bool",)}[kind]
    sources = [v for v in prog.pool if v.name.startswith("t") and _broadcast(v.shape, sx) == sx
               and _kind(v.dtype) in ok]
    own = {"float": ["mul_(0.5)", "clamp_(-0.5, 0.5)"], "int": ["mul_(2)", "clamp_(-2, 2)"],
           "bool": ["logical_not_()"]}[kind]
    choice = draw(st.sampled_from(own + (["add_", "copy_"] if sources else [])))
    if choice in own:
        return f"{x}.{choice}"
    src = draw(st.sampled_from(sources))
    fresh = {"float": "{} * 0.5", "int": "{} * 2", "bool": "~{}"}[_kind(src.dtype)].format(src.name)
    if choice == "add_" and kind == "bool":
        choice = "logical_or_"
    return f"{x}.{choice}({fresh})"


def _shape(draw, long_dims: bool, zero_dims: bool) -> list[int]:
    # a 0 now and then (a dim of size 0 anywhere: broadcasting, reductions, matmuls over it)
    dims = st.sampled_from([1, 2, 3, 5, 8] * 3 + [0] * zero_dims)
    base = draw(st.lists(dims, min_size=1, max_size=3))
    if long_dims and draw(st.integers(0, 9)) == 0:
        # now and then a long dim: several programs per kernel, rows that loop (> 4096 columns)
        base[draw(st.integers(0, len(base) - 1))] = draw(st.sampled_from([33, 130, 1100, 4100]))
        while _numel(tuple(base)) > 9000:
            base[base.index(max(base))] //= 4
    return base


def _strided(draw, shape: tuple[int, ...], overlapping: bool) -> tuple[tuple[int, ...], int]:
    """Random strides and storage offset. Not `overlapping`: in a random dim order, each stride
    exceeds the span of the dims inside it by a random gap, so no two elements share memory.
    `overlapping`: strides drawn freely (0 included), for inputs never written."""
    offset = draw(st.integers(0, 7))
    if overlapping:
        return tuple(draw(st.integers(0, 5)) for _ in shape), offset
    strides = [0] * len(shape)
    span = 1  # 1 + the largest offset reached by the dims placed so far
    for d in draw(st.permutations(range(len(shape)))):
        strides[d] = span + draw(st.sampled_from([0, 0, 1, 3]))
        span += strides[d] * max(shape[d] - 1, 0)
    return tuple(strides), offset


def _layouts(draw, prog: Program) -> None:
    """A layout for each input; aliases and views of an earlier input take its dtype."""
    shapes = prog.shapes
    for i, s in enumerate(shapes):
        kind = draw(st.sampled_from(LAYOUTS))
        same = [j for j in range(i) if shapes[j] == s and prog.layout(j).kind != "alias"]
        if kind == "overlap":  # of an input that can become the start of a flat base
            same = [j for j in same if prog.layout(j).kind not in ("overlap", "strided") and not prog._overlapped(j)]
        if kind in ("alias", "overlap") and not same:
            kind = "contiguous"
        if kind == "overlap":  # the input it overlaps becomes contiguous (the start of a longer flat base)
            prog.layouts[same[0]] = Layout()
        if kind == "strided":
            overlapping = draw(st.integers(0, 3)) == 0
            strides, offset = _strided(draw, s, overlapping)
            bases = [j for j in range(i) if prog.layout(j).kind == "strided" and prog.layout(j).of is None]
            of = draw(st.sampled_from([None] + bases)) if bases else None
            prog.layouts.append(Layout(kind, of, strides, offset, overlapping))
            if of is not None:
                prog.dtypes[i] = prog.input_dtype(of)
            continue
        of = same[0] if kind in ("alias", "overlap") else None
        if of is not None:
            prog.dtypes[i] = prog.input_dtype(of)
        prog.layouts.append(Layout(kind, of))


@dataclass
class _Step:
    line: str
    exact: bool = False


def _unary(draw, prog: Program, a: Val) -> _Step:
    kind = _kind(a.dtype)
    if kind == "int":
        return _Step(INT_UNARY[draw(st.sampled_from(sorted(INT_UNARY)))].format(a.name, a.name), a.exact)
    if kind == "bool":
        return _Step(BOOL_UNARY[draw(st.sampled_from(sorted(BOOL_UNARY)))].format(a.name), a.exact)
    names = sorted(u for u in UNARY if not (a.dtype in HALF and u == "square"))
    op = draw(st.sampled_from(names + sorted(STEP_UNARY) * a.exact))
    if op in STEP_UNARY:
        return _Step(STEP_UNARY[op].format(a.name), True)
    return _Step(UNARY[op].format(a.name, a.name), a.exact and op in EXACT_FLOAT)


def _binary(draw, prog: Program, a: Val, mixed: bool) -> _Step | None:
    kind = _kind(a.dtype)
    # operands of a lower category promote (an int or bool joins a float op, a bool an int op)
    ok = {"float": ("float", "int") if mixed else ("float",), "int": ("int", "bool"), "bool": ("bool",)}[kind]
    b = draw(st.sampled_from(prog.pool))
    if _kind(b.dtype) not in ok or _broadcast(a.shape, b.shape) is None:
        return None
    table = {"float": BINARY, "int": INT_BINARY, "bool": BOOL_BINARY}[kind]
    op = draw(st.sampled_from(sorted(table)))
    exact = a.exact and b.exact and (kind != "float" or op in EXACT_FLOAT)
    return _Step(table[op].format(a.name, b.name), exact)


def _reduce(draw, prog: Program, a: Val, discrete: bool) -> _Step | None:
    sa, kind = a.shape, _kind(a.dtype)
    if not sa:
        return None
    table = {"float": REDUCE, "int": INT_REDUCE, "bool": BOOL_REDUCE}[kind]
    ops = sorted(table)
    if kind == "float" and discrete and a.exact:
        ops.append("argmax")
    op = draw(st.sampled_from(ops))
    dim = draw(st.integers(-len(sa), len(sa) - 1))
    keep = draw(st.booleans()) or op in ("softmax", "log_softmax")
    if op == "argmax":
        return _Step(f"{a.name}.argmax({dim}, keepdim={keep})", True)
    exact = kind != "float" or (a.exact and op in EXACT_FLOAT)
    if len(sa) >= 2 and op in ("sum", "mean", "amax", "any") and draw(st.booleans()):  # over two dims
        other = draw(st.sampled_from([d for d in range(len(sa)) if d != dim % len(sa)]))
        return _Step(table[op].format(a.name, dim=(dim % len(sa), other), k=keep), exact)
    if op == "var" and sa[dim] < 2:
        op = "sum"
    return _Step(table[op].format(a.name, dim=dim, k=keep), exact)


def _matmul(draw, prog: Program, a: Val, batched: bool) -> _Step | None:
    sa, kind = a.shape, _kind(a.dtype)
    if len(sa) < 2 or kind == "bool" or _numel(sa[:-1]) > 512:  # (the interpreter runs a program per row)
        return None
    if batched:  # a Gram matrix of a pool tensor: batched, the second operand transposed (strided)
        scale = f" / {sa[-1]}" if kind == "float" else ""
        return _Step(f"{a.name} @ {a.name}.transpose(-2, -1){scale}", kind == "int")
    n = draw(st.sampled_from([1, 3, 4]))
    k = sa[-1]
    if kind == "int":
        return _Step(f"{a.name} @ (torch.arange({k * n}) % 3 - 1).to({a.name}.dtype).reshape({k}, {n})", True)
    w = f"torch.linspace(-1, 1, {k * n}, dtype={a.name}.dtype).reshape({k}, {n}) / {max(k, 1)}"
    return _Step(f"{a.name} @ ({w})")


def _convert(draw, prog: Program, a: Val, dtypes: tuple[torch.dtype, ...], compare: bool) -> _Step | None:
    """A cast or (`compare`) a comparison. A float becomes an int or bool only when exact: a value
    1 ulp off eager's (legitimately) would truncate or compare differently."""
    to = draw(st.sampled_from(dtypes))
    kind, to_kind = _kind(a.dtype), _kind(to)
    if kind == "float" and to_kind != "float" and not a.exact:
        return None
    if compare and draw(st.integers(0, 2)) == 0:  # a comparison with another pool tensor (promoting)
        b = draw(st.sampled_from(prog.pool))
        if _broadcast(a.shape, b.shape) is None or (_kind(b.dtype) == "float" and not b.exact) \
                or (kind == "float" and not a.exact):
            return None
        op = draw(st.sampled_from(["<", "<=", ">", "==", "!="]))
        return _Step(f"({a.name} {op} {b.name})", True)
    if kind == "float" and to_kind == "int":  # in range: a cast of inf or nan to int is undefined
        return _Step(f"{a.name}.clamp(-100, 100).to({to})", True)
    if kind != "bool" and to_kind == "bool":
        return _Step(f"({a.name} > 0)", a.exact)
    return _Step(f"{a.name}.to({to})", a.exact)


def _run_step(scope: dict, name: str, line: str) -> str:
    """Run `name = line` on the draw-time tensors; the error's first line if eager rejects it."""
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            exec(f"{name} = {line}", scope)
        return ""
    except Exception as e:
        lines = str(e).strip().splitlines()
        return f"{type(e).__name__}: {lines[0][:200] if lines else ''}"


def _fallback(a: Val) -> str:
    """A step eager accepts for any operand: a copy that keeps shape and dtype."""
    return {"float": "torch.relu({})", "int": "torch.abs({})", "bool": "~{}"}[_kind(a.dtype)].format(a.name)


@st.composite
def programs(draw, max_steps: int = 6, dtypes: tuple[torch.dtype, ...] = (torch.float32,),
             long_dims: bool = False, layouts: bool = True, inplace: bool = False, zero_dims: bool = False,
             mixed: bool = False, allow_raise: bool = False, discrete: bool = True, min_steps: int = 1,
             nn: bool = False) -> Program:
    """`layouts`: inputs in every layout of LAYOUTS (else contiguous); `inplace`: steps may write
    into an input in place (the caller compares the inputs after the call); `zero_dims`: dims of
    size 0; `mixed`: each input a dtype of `dtypes`, and steps that cast, compare, promote and take
    argmax (results in other dtypes; with `discrete=False`, only casts between `dtypes`, for
    gradients); `allow_raise`: now and then the last step is one eager rejects
    (amax over a dim of size 0, mean of ints, ...): then ember must raise too; `nn`: steps of
    tests/programs_nn.py (conv, pooling, interpolate, embedding, losses, gather/scatter/index_add,
    cat/stack, layer/group/batch norm, attention, scans), about one step in three."""
    base = _shape(draw, long_dims, zero_dims)
    shapes = [tuple(base)]
    for _ in range(draw(st.integers(0, 2))):
        # a second input broadcasting against the first: some dims replaced by 1 or dropped
        s = [d if draw(st.booleans()) else 1 for d in base]
        shapes.append(tuple(s[draw(st.integers(0, len(s) - 1)):]))
    if layouts and draw(st.booleans()):  # an input of x0's shape, to alias or overlap x0
        shapes.append(tuple(base))
    prog = Program(shapes, draw(st.sampled_from(dtypes)))
    prog.dtypes = [prog.dtype] + [draw(st.sampled_from(dtypes)) if mixed else prog.dtype for _ in shapes[1:]]
    if layouts:
        _layouts(draw, prog)
    _, xs = prog.make_inputs(seed=0)
    scope: dict = {"torch": torch, **{f"x{i}": x for i, x in enumerate(xs)}}
    prog.pool = [Val(f"x{i}", tuple(x.shape), x.dtype) for i, x in enumerate(xs)]

    def new_input(shape: tuple[int, ...], dtype: torch.dtype) -> str:
        """A further (contiguous) program input, e.g. batch_norm's running stats written in place."""
        name = f"x{len(prog.shapes)}"
        if prog.layouts:
            prog.layouts.append(Layout())
        prog.shapes.append(tuple(shape))
        prog.dtypes.append(dtype)
        scope[name] = torch.randn(shape).to(dtype)
        prog.pool.append(Val(name, tuple(shape), dtype, False))
        return name

    invalid = {**INVALID, **INVALID_NN} if nn else INVALID
    for step in range(draw(st.integers(min_steps, max_steps))):
        name = f"t{step}"
        a = draw(st.sampled_from(prog.pool))
        kind = draw(st.sampled_from(["unary", "binary", "binary", "reduce", "norm", "matmul", "bmm",
                                     "layout", "layout"] + ["inplace"] * inplace + ["convert"] * mixed
                                    + ["nn"] * (6 * nn)))
        s: _Step | None = None
        if kind == "inplace":
            line = _inplace(draw, prog)
            s = _Step(line) if line else None
        elif kind == "binary":
            s = _binary(draw, prog, a, mixed)
        elif kind == "reduce":
            s = _reduce(draw, prog, a, mixed and discrete)
        elif kind == "norm" and a.shape and _kind(a.dtype) == "float":
            s = _Step(NORMS[draw(st.sampled_from(sorted(NORMS)))].format(a.name))
        elif kind in ("matmul", "bmm"):
            s = _matmul(draw, prog, a, kind == "bmm")
        elif kind == "layout" and a.shape:
            line = _layout(draw, a.name, a.shape)
            s = _Step(line, a.exact) if line else None
        elif kind == "convert":
            s = _convert(draw, prog, a, dtypes, discrete)
        elif kind == "nn":
            got = nn_step(draw, prog.pool, a, new_input if inplace else None)
            s = _Step(*got) if got else None
        if s is None:  # unary as the fallback keeps every step productive
            s = _unary(draw, prog, a)
        if allow_raise and draw(st.sampled_from([False] * 39 + [True])):  # a step eager may reject
            bad = draw(st.sampled_from(sorted(invalid)))
            s, kind = _Step(invalid[bad].format(a.name, n=len(a.shape))), "nn" if bad in INVALID_NN else "invalid"
        error = _run_step(scope, name, s.line)
        if error and allow_raise and draw(st.booleans()):
            prog.lines.append(f"{name} = {s.line}")  # eager raises here: so must ember
            prog.raises = error
            # an output (else dead code, which eager runs all the same; but an index out of range
            # there is a data-dependent error ember does not see: fuzz notes, finding 1)
            if kind == "nn" or draw(st.booleans()):
                prog.outputs = [name]
            break
        if error:
            s = _Step(_fallback(a), a.exact)
            error = _run_step(scope, name, s.line)
            assert not error, f"{s.line}: {error}"
        prog.lines.append(f"{name} = {s.line}")
        t = scope[name]
        prog.pool.append(Val(name, tuple(t.shape), t.dtype, s.exact))
        if kind == "inplace":  # values sharing memory with an input may have changed: no longer exact
            written = {x.untyped_storage().data_ptr() for x in xs}
            prog.pool = [v._replace(exact=False) if scope[v.name].untyped_storage().data_ptr() in written else v
                         for v in prog.pool]
    n_out = draw(st.integers(1, 2))
    prog.outputs = prog.outputs + [v.name for v in prog.pool[-n_out:]]
    return prog


def fuzz_programs(max_steps: int = 10, nn: bool = True) -> st.SearchStrategy[tuple[bool, Program]]:
    """The fuzzing mix (benchmarks/fuzz.py and the slow sweep): (gradients?, program). Three in four
    check forward values: every dtype, mixed in a program, dims of size 0, long dims, every layout,
    in-place writes, now and then a step eager rejects. One in four checks gradients: float dtypes
    (float32 mostly), every layout, dims of size 0. `nn`: also the steps of tests/programs_nn.py."""
    forward = programs(max_steps=max_steps, dtypes=ALL_DTYPES + (torch.float32,) * 2, long_dims=True,
                       inplace=True, zero_dims=True, mixed=True, allow_raise=True, min_steps=2, nn=nn)
    grads = programs(max_steps=max_steps, dtypes=(torch.float32,) * 3 + FLOATS[1:], zero_dims=True,
                     mixed=True, discrete=False, min_steps=2, nn=nn)
    return st.one_of(forward.map(lambda p: (False, p)), forward.map(lambda p: (False, p)),
                     forward.map(lambda p: (False, p)), grads.map(lambda p: (True, p)))


def graph_inputs(sg, args: tuple, kwargs: dict | None = None) -> list[torch.Tensor]:
    """The tensors a StaticGraph feeds its IR graph for a call: the tensor leaves of (args, kwargs),
    then the module's parameters and buffers, then lifted constants (closed-over tensors)."""
    from torch.utils import _pytree as pytree

    from ember.frontend.capture import module_state

    leaves = pytree.tree_leaves((tuple(args), dict(kwargs or {})))
    tensors = [leaves[i] for i in sg.captured.tensor_positions]
    return tensors + list(module_state(sg._module).values()) + list(sg.lowered.constants)
