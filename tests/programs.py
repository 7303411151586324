"""Random PyTorch programs for differential testing (hypothesis strategies).

A program is a list of steps over a growing pool of tensors: pointwise ops with broadcasting,
reductions, matmuls and layout ops. Values stay bounded (no exp of large numbers, safe denominators)
so float32 comparisons with tight tolerances are meaningful. Every choice is drawn from hypothesis, so
a failing program shrinks to a small one and prints as readable Python (`Program.source`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st

UNARY = {
    "tanh": "torch.tanh({})", "sigmoid": "torch.sigmoid({})", "relu": "torch.relu({})", "neg": "-{}",
    "abs": "torch.abs({})", "sin": "torch.sin({})", "gelu": "torch.nn.functional.gelu({})",
    "exp_bounded": "torch.exp(torch.tanh({}))", "log_safe": "torch.log(torch.abs({}) + 1)",
    "square": "{} * {}",
}
BINARY = {
    "add": "{} + {}", "sub": "{} - {}", "mul": "{} * {}", "max": "torch.maximum({}, {})",
    "div_safe": "{} / (torch.abs({}) + 1)", "where": "torch.where({0} > 0, {0}, {1})",
}
REDUCE = {"sum": "{}.sum({dim}, keepdim={k})", "mean": "{}.mean({dim}, keepdim={k})",
          "amax": "{}.amax({dim}, keepdim={k})", "softmax": "torch.softmax({}, {dim})",
          "var": "{}.var({dim}, keepdim={k})"}


@dataclass
class Program:
    shapes: list[tuple[int, ...]]
    lines: list[str] = field(default_factory=list)
    pool: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)

    @property
    def source(self) -> str:
        args = ", ".join(f"x{i}" for i in range(len(self.shapes)))
        body = "\n".join(f"    {ln}" for ln in self.lines)
        return f"def program({args}):\n{body}\n    return ({', '.join(self.outputs)},)\n"

    def function(self):
        scope: dict = {"torch": torch}
        exec(compile(self.source, "<random program>", "exec"), scope)
        return scope["program"]

    def inputs(self) -> list[torch.Tensor]:
        return [torch.randn(s) for s in self.shapes]


def _broadcast(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...] | None:
    try:
        return tuple(torch.broadcast_shapes(a, b))
    except RuntimeError:
        return None


@st.composite
def programs(draw, max_steps: int = 6) -> Program:
    dims = st.sampled_from([1, 2, 3, 5, 8])
    base = draw(st.lists(dims, min_size=1, max_size=3))
    shapes = [tuple(base)]
    for _ in range(draw(st.integers(0, 2))):
        # a second input broadcasting against the first: some dims replaced by 1 or dropped
        s = [d if draw(st.booleans()) else 1 for d in base]
        shapes.append(tuple(s[draw(st.integers(0, len(s) - 1)):]))
    prog = Program(shapes)
    prog.pool = [(f"x{i}", s) for i, s in enumerate(shapes)]
    for step in range(draw(st.integers(1, max_steps))):
        name = f"t{step}"
        a, sa = draw(st.sampled_from(prog.pool))
        kind = draw(st.sampled_from(["unary", "binary", "binary", "reduce", "matmul", "layout"]))
        line, shape = None, None
        if kind == "binary":
            b, sb = draw(st.sampled_from(prog.pool))
            shape = _broadcast(sa, sb)
            if shape is not None:
                line = BINARY[draw(st.sampled_from(sorted(BINARY)))].format(a, b)
        elif kind == "reduce" and len(sa) > 0:
            op = draw(st.sampled_from(sorted(REDUCE)))
            dim = draw(st.integers(-len(sa), len(sa) - 1))
            keep = draw(st.booleans()) or op == "softmax"
            if op == "var" and sa[dim] < 2:
                op = "sum"
            line = REDUCE[op].format(a, dim=dim, k=keep)
            shape = tuple(1 if i == dim % len(sa) else d for i, d in enumerate(sa)) if keep else \
                tuple(d for i, d in enumerate(sa) if i != dim % len(sa))
        elif kind == "matmul" and len(sa) >= 2:
            n = draw(st.sampled_from([1, 3, 4]))
            w = f"torch.linspace(-1, 1, {sa[-1] * n}).reshape({sa[-1]}, {n})"
            line, shape = f"{a} @ {w}", sa[:-1] + (n,)
        elif kind == "layout" and len(sa) >= 1:
            choice = draw(st.sampled_from(["transpose", "unsqueeze_expand", "slice", "flatten", "flip", "cat"]))
            if choice == "transpose" and len(sa) >= 2:
                line, shape = f"{a}.transpose(0, -1)", (sa[-1],) + sa[1:-1] + (sa[0],)
            elif choice == "unsqueeze_expand":
                line, shape = f"{a}.unsqueeze(0).expand(2, *{a}.shape)", (2,) + sa
            elif choice == "slice" and sa[-1] >= 2:
                line, shape = f"{a}[..., ::2]", sa[:-1] + ((sa[-1] + 1) // 2,)
            elif choice == "flatten":
                n = 1
                for d in sa:
                    n *= d
                line, shape = f"{a}.reshape({n})", (n,)
            elif choice == "flip":
                line, shape = f"{a}.flip(-1)", sa
            elif choice == "cat":
                line, shape = f"torch.cat([{a}, {a} * 2], dim=-1)", sa[:-1] + (2 * sa[-1],)
        if line is None:  # unary as the fallback keeps every step productive
            line, shape = UNARY[draw(st.sampled_from(sorted(UNARY)))].format(a, a), sa
        prog.lines.append(f"{name} = {line}")
        prog.pool.append((name, shape))
    n_out = draw(st.integers(1, 2))
    prog.outputs = [v for v, _ in prog.pool[-n_out:]]
    return prog
