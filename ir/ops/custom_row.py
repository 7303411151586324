"""Row bodies: Triton-body custom ops (ir/ops/custom.py) with row reductions, as IR.

A row body reduces along the last dim with `tl.sum(expr, axis=-1, keep_dims=True)` (`tl.max`,
`tl.min`) and may read a parameter's length `x.shape[k]`::

    def rms(x, eps=1e-6):
        return x * tl.rsqrt(tl.sum(x * x, axis=-1, keep_dims=True) / x.shape[-1] + eps)

`RowProgram` splits the checked body once, when the op is declared, into steps:

- a *part*: a reduction-free expression (with the local lines it reads) over tensor parameters and
  earlier reductions' results; api/custom_op.py registers it as a pointwise Triton-body op
  (`register_part`) whose kernel text is that expression;
- a *reduction*: ember's own `sum` / `amax` / `amin` over the last dim, keeping it, of a parameter,
  an earlier reduction or a part. Innermost first: `tl.sum(tl.exp(x - tl.max(x, ...)), ...)` is
  `amax`, a part, `sum`.

`build` adds the steps' nodes for inputs of known types (a part's attributes: the op's attributes it
reads, and each length it reads, as an int). So the op is a composite like a torch body: the
row-kernel machinery fuses its reductions with the parts around them (an RMS norm is one row
kernel), and the reductions are torch's: `tl.max`/`tl.min` propagate a
NaN in the row like `torch.amax`/`amin` (Triton's own would drop it).

The result is the last part, which reads every tensor parameter (so it has the op's broadcast shape,
and its node holds the op's inputs and every attribute): its VJP is the whole op's (the derivative of
`reference`, or `vjp`), and no gradient reaches the reductions and parts before it (they have no
VJP; none is needed, as torch's autograd never sees inside the op either). A reduction merged (cse)
with a same one outside the op still gets that outside use's gradient: gradients add.
"""

from __future__ import annotations

import ast
import copy
from dataclasses import dataclass

from ..graph import Graph, Value
from .custom import TritonBody, _int_index, row_reduction


@dataclass
class Part:
    """A pointwise step: `body` over the values named `inputs`; `lengths`: its attribute names that are
    a parameter's length, `(parameter, k)` for `parameter.shape[k]`. `op`: its registered op's name.
    The `final` part (the result) reads every parameter, first and in order, and every attribute."""

    inputs: list[str]
    body: TritonBody
    lengths: dict[str, tuple[str, int]]
    final: bool = False
    op: str = ""


@dataclass
class Reduce:
    """A reduction (`sum`, `amax`, `amin`) of the value named `source` over its last dim, kept."""

    op: str
    source: str


class RowProgram:
    """The steps of a row body (see the module doc), each defining a name: `steps` in order, `result`
    the name of the value the op returns."""

    def __init__(self, body: TritonBody) -> None:
        self.body = body
        self._taken = {"tl", *body.params, *body.attrs, *(t for t, _ in body.assigns)}
        self.steps: list[tuple[str, Part | Reduce]] = []
        self.rows: list[str] = []  # the reductions' names, in order
        self.lengths: dict[tuple[str, int], str] = {}
        self.locals: list[tuple[str, ast.expr]] = []  # the body's lines, reductions and lengths named
        for target, value in body.assigns:
            self.locals.append((target, self._lift(value)))
        self.result = self._add_part(self._lift(body.result), body.result, final=True)

    @property
    def parts(self) -> list[Part]:
        return [step for _, step in self.steps if isinstance(step, Part)]

    def _fresh(self, stem: str) -> str:
        k = 0
        while f"{stem}{k}" in self._taken:
            k += 1
        self._taken.add(f"{stem}{k}")
        return f"{stem}{k}"

    def _lift(self, expr: ast.expr) -> ast.expr:
        """`expr` with each reduction (innermost first) and each length replaced by its name."""
        program = self

        class Lift(ast.NodeTransformer):
            def visit_Subscript(self, node: ast.Subscript) -> ast.expr:  # the grammar's `x.shape[k]`
                key = (node.value.value.id, _int_index(node.slice))
                if key not in program.lengths:
                    program.lengths[key] = program._fresh(f"{key[0]}_len")
                return ast.Name(program.lengths[key], ast.Load())

            def visit_Call(self, node: ast.Call) -> ast.expr:
                original = node
                node = self.generic_visit(node)
                kind = row_reduction(node.func)
                if kind is None:
                    return node
                source = program._operand(node.args[0], original)
                name = program._fresh("row")
                program.steps.append((name, Reduce(kind, source)))
                program.rows.append(name)
                return ast.Name(name, ast.Load())

        return Lift().visit(copy.deepcopy(expr))

    def _operand(self, expr: ast.expr, where: ast.AST) -> str:
        """The name of a reduction's operand: a parameter or a reduction (through local aliases), else a
        new part."""
        while isinstance(expr, ast.Name) and expr.id not in self.body.params and expr.id not in self.rows:
            defs = [v for t, v in self.locals if t == expr.id]
            if not defs:
                break
            expr = defs[-1]
        if isinstance(expr, ast.Name) and (expr.id in self.body.params or expr.id in self.rows):
            return expr.id
        return self._add_part(expr, where, final=False)

    def _add_part(self, expr: ast.expr, where: ast.AST, final: bool) -> str:
        """A part computing `expr` with the local lines it reads (liveness, last line first)."""
        used, kept = _names(expr), []
        for target, value in reversed(self.locals):
            if target in used:
                kept.append((target, value))
                used = (used - {target}) | _names(value)
        kept.reverse()
        inputs = [n for n in [*self.body.params, *self.rows] if n in used or (final and n in self.body.params)]
        if not set(inputs) & used:
            self.body.fail(where, "the result must read a tensor parameter or a reduction" if final
                           else "a row reduction must reduce an expression of a tensor parameter")
        lengths = {name: key for key, name in self.lengths.items() if name in used}
        attrs = [a for a in self.body.attrs if final or a in used] + list(lengths)
        part = Part(inputs, TritonBody.part(self.body, inputs, attrs, kept, expr), lengths, final)
        name = self._fresh("part")
        self.steps.append((name, part))
        return name

    def build(self, g: Graph, inputs: list[Value], attrs: dict) -> Value:
        """Add the steps' nodes to `g` for `inputs` (the op's promoted tensors) and the op's `attrs`;
        returns the result's value."""
        env: dict[str, Value] = dict(zip(self.body.params, inputs))
        for name, step in self.steps:
            if isinstance(step, Reduce):
                v = env[step.source]
                env[name] = g.add(step.op, [v], dims=(v.type.rank - 1,) if v.type.rank else (), keepdim=True)
                continue
            values = {a: attrs[a] for a in step.body.attrs if a in attrs}
            for a, (param, k) in step.lengths.items():
                shape = env[param].shape
                if not -len(shape) <= k < len(shape):
                    raise IndexError(f"custom op {self.body.name}: `{param}.shape[{k}]` of an input of shape "
                                     f"{list(shape)}")
                values[a] = shape[k]
            env[name] = g.add(step.op, [env[n] for n in step.inputs], **values)
        return env[self.result]


def _names(expr: ast.expr) -> set[str]:
    return {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)} - {"tl"}
