"""Random PyTorch programs for differential testing (hypothesis strategies).

A program is a list of steps over a growing pool of tensors: pointwise ops with broadcasting,
reductions (over one or two dims, keepdim or not), row patterns (softmax, log_softmax, layernorm,
rmsnorm), matmuls (with a constant weight, or batched between pool tensors), and layout ops
(transpose, permute, expand, slices, reshapes that split and merge dims, flip, cat, select). Values
stay bounded (no exp of large numbers, safe denominators, weights scaled by 1/K) so comparisons with
tight tolerances are meaningful. Inputs are float32 or float16, and each is laid out in one of
`LAYOUTS`: contiguous, transposed, sliced with a step, expanded (stride 0), the same tensor as an
earlier input, or a view overlapping an earlier input's storage. Every choice is drawn from
hypothesis, so a failing program shrinks to a small one and prints as readable Python
(`Program.source`, with the code that builds its inputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st

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
# row patterns over the last dim (shape-preserving). layer_norm's eps is 1e-3: a constant row (an
# expanded input) centers to rounding noise that 1/sqrt(eps) amplifies, and torch's Welford mean is
# exact there while a sum / n is not (1 ulp * 316 at eps=1e-5 exceeds float32 tolerances).
NORMS = {
    "layer_norm": "torch.nn.functional.layer_norm({0}, {0}.shape[-1:], eps=1e-3)",
    "rmsnorm": "{0} * torch.rsqrt(({0} * {0}).mean(-1, keepdim=True) + 1e-6)",
    "center": "{0} - {0}.mean(-1, keepdim=True)",
}
# eager float16 rounds after every op, ember after every kernel: compare with looser tolerances
TOLERANCES = {torch.float32: (1e-4, 1e-5), torch.float16: (1e-2, 1e-2)}
# How an input is laid out in memory. "alias": the very tensor of an earlier input of the same shape;
# "overlap": a view of the same storage as an earlier input, shifted by a few elements.
LAYOUTS = ("contiguous", "transposed", "stepped", "expanded", "alias", "overlap")


@dataclass(frozen=True)
class Layout:
    kind: str = "contiguous"
    of: int | None = None  # the earlier input an alias/overlap shares storage with


def _expanded_base(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape an expanded input is expanded from: its first dim > 1 becomes 1."""
    dims = [i for i, d in enumerate(shape) if d > 1]
    return tuple(1 if dims and i == dims[0] else d for i, d in enumerate(shape))


@dataclass
class Program:
    shapes: list[tuple[int, ...]]
    dtype: torch.dtype = torch.float32
    lines: list[str] = field(default_factory=list)
    pool: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    layouts: list[Layout] = field(default_factory=list)  # per input; missing ones are contiguous

    def layout(self, i: int) -> Layout:
        return self.layouts[i] if i < len(self.layouts) else Layout()

    @property
    def input_source(self) -> str:
        """Python that builds the inputs from leaf tensors `b0, b1, ...` (what gradients are taken of)."""
        lines, n_bases = [], 0
        for i, shape in enumerate(self.shapes):
            lay, s = self.layout(i), list(shape)
            if lay.kind == "alias":
                lines.append(f"x{i} = x{lay.of}")
                continue
            if lay.kind == "overlap":  # x{of} was built as the first elements of its own flat base
                n = _numel(shape)
                lines.append(f"x{i} = flat{lay.of}[{max(1, n // 2)}:{max(1, n // 2) + n}].view({s})")
                continue
            b = f"b{n_bases}"
            n_bases += 1
            if lay.kind == "transposed" and len(s) >= 2:
                lines.append(f"{b} = randn({[s[-1]] + s[1:-1] + [s[0]]}); x{i} = {b}.transpose(0, -1)")
            elif lay.kind == "stepped" and len(s) >= 1:
                lines.append(f"{b} = randn({s[:-1] + [2 * s[-1]]}); x{i} = {b}[..., ::2]")
            elif lay.kind == "expanded" and any(d > 1 for d in s):
                lines.append(f"{b} = randn({list(_expanded_base(shape))}); x{i} = {b}.expand({s})")
            elif self._overlapped(i):  # a flat base longer than x{i}: a later input overlaps it
                n = _numel(shape)
                lines.append(f"{b} = randn([{n + max(1, n // 2)}]); flat{i} = {b}; x{i} = {b}[:{n}].view({s})")
            else:
                lines.append(f"{b} = randn({s}); x{i} = {b}")
        return "\n".join(lines)

    def _overlapped(self, i: int) -> bool:
        return any(self.layout(j).kind == "overlap" and self.layout(j).of == i for j in range(len(self.shapes)))

    @property
    def source(self) -> str:
        args = ", ".join(f"x{i}" for i in range(len(self.shapes)))
        body = "\n".join(f"    {ln}" for ln in self.lines)
        head = f"# inputs: {self.shapes}, {self.dtype}\n"
        if any(self.layout(i).kind != "contiguous" for i in range(len(self.shapes))):
            head += "".join(f"#   {ln}\n" for ln in self.input_source.splitlines())
        return f"{head}def program({args}):\n{body}\n    return ({', '.join(self.outputs)},)\n"

    def function(self):
        scope: dict = {"torch": torch}
        exec(compile(self.source, "<random program>", "exec"), scope)
        return scope["program"]

    def make_inputs(self, requires_grad: bool = False, seed: int | None = None, wide: bool = False
                    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """(leaf tensors, program inputs built from them by `input_source`). The same `seed` gives
        equal values and the same aliasing: independent copies for eager and ember. `wide`: the
        same values in float64 (a reference for accuracy)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        bases: list[torch.Tensor] = []

        def randn(shape: list[int]) -> torch.Tensor:
            t = torch.randn(shape, generator=gen).to(self.dtype)
            t = (t.double() if wide else t).requires_grad_(requires_grad)
            bases.append(t)
            return t

        scope: dict = {"randn": randn}
        exec(self.input_source, scope)
        return bases, [scope[f"x{i}"] for i in range(len(self.shapes))]

    def inputs(self) -> list[torch.Tensor]:
        return self.make_inputs()[1]

    @property
    def tolerances(self) -> tuple[float, float]:
        return TOLERANCES[self.dtype]


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


def _reduced(shape: tuple[int, ...], dims: list[int], keep: bool) -> tuple[int, ...]:
    dims = [d % len(shape) for d in dims]
    if keep:
        return tuple(1 if i in dims else s for i, s in enumerate(shape))
    return tuple(s for i, s in enumerate(shape) if i not in dims)


def _layout(draw, a: str, sa: tuple[int, ...]) -> tuple[str | None, tuple | None]:
    choice = draw(st.sampled_from(["transpose", "unsqueeze_expand", "slice", "flatten", "flip", "cat",
                                   "permute", "split_last", "select", "narrow", "transpose_reshape"]))
    r = len(sa)
    if choice == "transpose" and r >= 2:
        return f"{a}.transpose(0, -1)", (sa[-1],) + sa[1:-1] + (sa[0],)
    if choice == "unsqueeze_expand":
        return f"{a}.unsqueeze(0).expand(2, *{a}.shape)", (2,) + sa
    if choice == "slice" and sa[-1] >= 2:
        return f"{a}[..., ::2]", sa[:-1] + ((sa[-1] + 1) // 2,)
    if choice == "narrow" and sa[0] >= 2:
        return f"{a}[1:]", (sa[0] - 1,) + sa[1:]
    if choice == "flatten":
        return f"{a}.reshape({_numel(sa)})", (_numel(sa),)
    if choice == "flip":
        return f"{a}.flip(-1)", sa
    if choice == "cat":
        return f"torch.cat([{a}, {a} * 2], dim=-1)", sa[:-1] + (2 * sa[-1],)
    if choice == "permute" and r >= 2:
        perm = draw(st.permutations(range(r)))
        return f"{a}.permute{tuple(perm)}", tuple(sa[p] for p in perm)
    if choice == "split_last" and sa[-1] in (4, 6, 8, 10, 16):
        return f"{a}.reshape(*{a}.shape[:-1], 2, {sa[-1] // 2})", sa[:-1] + (2, sa[-1] // 2)
    if choice == "select" and r >= 2:
        return f"{a}.select(-1, {sa[-1] - 1})", sa[:-1]
    if choice == "transpose_reshape" and r >= 2:  # a non-viewable reshape: needs a copy or index math
        t = (sa[-1],) + sa[1:-1] + (sa[0],)
        return f"{a}.transpose(0, -1).reshape(-1)", (_numel(t),)
    return None, None


def _writable(prog: Program, i: int) -> bool:
    """torch refuses in-place writes into an expanded tensor (elements sharing memory)."""
    lay = prog.layout(i)
    lay = prog.layout(lay.of) if lay.kind == "alias" else lay
    return lay.kind != "expanded" or all(d <= 1 for d in prog.shapes[i])


def _inplace(draw, prog: Program) -> tuple[str | None, tuple | None]:
    """An in-place update of an input (all of it, or a slice of it): aliases, overlapping inputs and
    views taken of it before see the new values in eager PyTorch."""
    targets = [i for i in range(len(prog.shapes)) if _writable(prog, i)]
    if not targets:
        return None, None
    i = draw(st.sampled_from(targets))
    x, sx = f"x{i}", prog.shapes[i]
    if len(sx) >= 1 and sx[-1] >= 2 and draw(st.booleans()):  # write through a view of the input
        x, sx = f"x{i}[..., 1:]", sx[:-1] + (sx[-1] - 1,)
    # sources: fresh values (`t * 0.5`: torch refuses a source that partially overlaps the target)
    sources = [(n, s) for n, s in prog.pool if n.startswith("t") and _broadcast(s, sx) == sx]
    choice = draw(st.sampled_from(["mul_", "clamp_", "add_", "copy_"] if sources else ["mul_", "clamp_"]))
    if choice == "mul_":
        return f"{x}.mul_(0.5)", sx
    if choice == "clamp_":
        return f"{x}.clamp_(-0.5, 0.5)", sx
    src, _ = draw(st.sampled_from(sources))
    return f"{x}.{choice}({src} * 0.5)", sx


@st.composite
def programs(draw, max_steps: int = 6, dtypes: tuple[torch.dtype, ...] = (torch.float32,),
             long_dims: bool = False, layouts: bool = True, inplace: bool = False) -> Program:
    """`layouts`: inputs in every layout of LAYOUTS (else contiguous); `inplace`: steps may write
    into an input in place (the caller compares the inputs after the call)."""
    dims = st.sampled_from([1, 2, 3, 5, 8])
    base = draw(st.lists(dims, min_size=1, max_size=3))
    if long_dims and draw(st.integers(0, 9)) == 0:
        # now and then a long dim: several programs per kernel, rows that loop (> 4096 columns)
        base[draw(st.integers(0, len(base) - 1))] = draw(st.sampled_from([33, 130, 1100, 4100]))
        while _numel(tuple(base)) > 9000:
            base[base.index(max(base))] //= 4
    shapes = [tuple(base)]
    for _ in range(draw(st.integers(0, 2))):
        # a second input broadcasting against the first: some dims replaced by 1 or dropped
        s = [d if draw(st.booleans()) else 1 for d in base]
        shapes.append(tuple(s[draw(st.integers(0, len(s) - 1)):]))
    if layouts and draw(st.booleans()):  # an input of x0's shape, to alias or overlap x0
        shapes.append(tuple(base))
    prog = Program(shapes, draw(st.sampled_from(dtypes)))
    if layouts:
        for i, s in enumerate(shapes):
            kind = draw(st.sampled_from(LAYOUTS))
            same = [j for j in range(i) if shapes[j] == s and prog.layout(j).kind != "alias"]
            if kind == "overlap":
                same = [j for j in same if prog.layout(j).kind != "overlap" and not prog._overlapped(j)]
            if kind in ("alias", "overlap") and not same:
                kind = "contiguous"
            if kind == "overlap":  # the input it overlaps becomes contiguous (the start of a longer flat base)
                prog.layouts[same[0]] = Layout()
            prog.layouts.append(Layout(kind, same[0] if kind in ("alias", "overlap") else None))
    half = prog.dtype != torch.float32
    prog.pool = [(f"x{i}", s) for i, s in enumerate(shapes)]
    for step in range(draw(st.integers(1, max_steps))):
        name = f"t{step}"
        a, sa = draw(st.sampled_from(prog.pool))
        kind = draw(st.sampled_from(["unary", "binary", "binary", "reduce", "norm", "matmul", "bmm",
                                     "layout", "layout"] + ["inplace"] * inplace))
        line, shape = None, None
        if kind == "inplace":
            line, shape = _inplace(draw, prog)
        elif kind == "binary":
            b, sb = draw(st.sampled_from(prog.pool))
            shape = _broadcast(sa, sb)
            if shape is not None:
                line = BINARY[draw(st.sampled_from(sorted(BINARY)))].format(a, b)
        elif kind == "reduce" and len(sa) > 0:
            op = draw(st.sampled_from(sorted(REDUCE)))
            dim = draw(st.integers(-len(sa), len(sa) - 1))
            keep = draw(st.booleans()) or op in ("softmax", "log_softmax")
            two = len(sa) >= 2 and op in ("sum", "mean", "amax") and draw(st.booleans())
            if two:  # a reduction over two dims
                other = draw(st.sampled_from([d for d in range(len(sa)) if d != dim % len(sa)]))
                line = REDUCE[op].format(a, dim=(dim % len(sa), other), k=keep)
                shape = _reduced(sa, [dim, other], keep)
            else:
                if op == "var" and sa[dim] < 2:
                    op = "sum"
                line = REDUCE[op].format(a, dim=dim, k=keep)
                shape = sa if op in ("softmax", "log_softmax") else _reduced(sa, [dim], keep)
        elif kind == "norm" and len(sa) > 0:
            line, shape = NORMS[draw(st.sampled_from(sorted(NORMS)))].format(a), sa
        elif kind == "matmul" and len(sa) >= 2:
            n = draw(st.sampled_from([1, 3, 4]))
            w = f"torch.linspace(-1, 1, {sa[-1] * n}, dtype={a}.dtype).reshape({sa[-1]}, {n}) / {sa[-1]}"
            line, shape = f"{a} @ ({w})", sa[:-1] + (n,)
        elif kind == "bmm" and len(sa) >= 2:
            # a Gram matrix of a pool tensor: batched, the second operand transposed (strided)
            line, shape = f"{a} @ {a}.transpose(-2, -1) / {sa[-1]}", sa[:-1] + (sa[-2],)
        elif kind == "layout" and len(sa) >= 1:
            line, shape = _layout(draw, a, sa)
        if line is None:  # unary as the fallback keeps every step productive
            names = sorted(u for u in UNARY if not (half and u == "square"))
            line, shape = UNARY[draw(st.sampled_from(names))].format(a, a), sa
        prog.lines.append(f"{name} = {line}")
        prog.pool.append((name, shape))
    n_out = draw(st.integers(1, 2))
    prog.outputs = [v for v, _ in prog.pool[-n_out:]]
    return prog


def graph_inputs(sg, args: tuple, kwargs: dict | None = None) -> list[torch.Tensor]:
    """The tensors a StaticGraph feeds its IR graph for a call: the tensor leaves of (args, kwargs),
    then the module's parameters and buffers, then lifted constants (closed-over tensors)."""
    from torch.utils import _pytree as pytree

    from ember.frontend.capture import module_state

    leaves = pytree.tree_leaves((tuple(args), dict(kwargs or {})))
    tensors = [leaves[i] for i in sg.captured.tensor_positions]
    return tensors + list(module_state(sg._module).values()) + list(sg.lowered.constants)
