"""User ops (`ember.custom_op`, api/custom_op.py): registry entries made at run time.

A *Triton body* is a user function whose body is elementwise `tl` arithmetic, e.g.::

    def gated(x, y):
        return tl.where(x > 0, x * y, 0.0)

It becomes a pointwise op whose Triton rule is the body itself, checked and re-spelled here: the
source (`inspect.getsource`) is parsed and every node is checked against a small grammar (positional
parameters, `name = expr` lines, one final `return expr`; in expressions: the parameters and local
names, public `tl.*` and `tl.math.*` names, calls of `tl`'s elementwise functions (`ELEMENTWISE`),
`.to(...)` of a value, numbers, `float('inf'|'-inf'|'nan')`, `+ - * /`, `& | ^ ~`, one comparison,
unary minus). Other `tl` functions (reductions, scans, shape changes, memory access) are refused: in a
pointwise kernel they would combine an arbitrary block of elements. The kernel text is
`ast.unparse` of the checked tree with names replaced by the kernel's temporaries: nothing but that
grammar reaches a kernel (under the interpreter a kernel is Python that runs), whatever the file on
disk holds. The body is part of the kernel's source, whose hash names and caches the kernel
(codegen/source_cache.py), so a changed body never reuses a stale kernel.
The function is never called.

A *row body* is a Triton body that also uses row reductions, `tl.sum(expr, axis=-1, keep_dims=True)`
(`tl.max`, `tl.min` too), or a parameter's length `x.shape[k]`: it is split into pointwise parts and
ember's own reductions over the last dim (ir/ops/custom_row.py) and is a composite op.

A *torch body* (a function of torch ops ember lowers) becomes a `composite` whose `decompose`
inlines its lowered IR: it fuses like the ops it is made of.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Callable

from ..registry import FLOAT, Domain, OpDef, register
from ..types import TRITON_NAMES, compute_dtype, py_literal
from .pointwise import _infer

_BINOPS = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.BitAnd, ast.BitOr, ast.BitXor)
_UNARY = (ast.USub, ast.UAdd, ast.Invert)
_COMPARE = (ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Eq, ast.NotEq)
_FLOAT_WORDS = ("inf", "-inf", "nan")

# `tl` (and `tl.math`) functions a body may call: elementwise, so a value is the same whatever block of
# elements a kernel holds (tl.sum, tl.cumsum, tl.reshape, tl.load ... are not).
ELEMENTWISE = frozenset({"abs", "add", "cast", "cdiv", "ceil", "clamp", "cos", "div_rn", "erf", "exp", "exp2", "fdiv",
                         "floor", "fma", "log", "log2", "maximum", "minimum", "mul", "rsqrt", "sigmoid", "sin", "sqrt",
                         "sqrt_rn", "sub", "umulhi", "where", "zeros_like"})
# row reductions (a call `tl.<name>(expr, axis=-1, keep_dims=True)`) and the IR reduction each is
ROW_REDUCTIONS = {"sum": "sum", "max": "amax", "min": "amin"}


ATTR_TYPES = (float, int, bool)  # the static attributes a custom op may take (parameters with a default)
RESERVED = frozenset({"tl", "float", "op", "inputs", "out_types", "types"})  # (Graph.add's, a type rule's own)

# Names of the ops registered here (a name is never reused in a process: api/custom_op.py).
REGISTERED: set[str] = set()


def custom_op_of(node) -> str | None:
    """The user op a node runs or came from: a Triton-body op by its name, a node a torch body or a
    custom VJP inlined by its label (`<name>`, `<name>.vjp`); None for ember's own nodes."""
    return node.op if node.op in REGISTERED else node.label


class BodyError(TypeError):
    """A Triton body outside the grammar this module accepts (the message names the line)."""


class TritonBody:
    """The checked body of a Triton-language custom op: tensor `params`, static `attrs` (the
    parameters with a default: names in expressions, spelled as constants of the op's dtype), local
    `assigns` and `result`. `row`: it has row reductions or `x.shape[k]` lookups (a row body)."""

    def __init__(self, fn: Callable) -> None:
        self.name = getattr(fn, "__name__", "?")
        self.row = False
        try:
            source = textwrap.dedent(inspect.getsource(fn))
        except (OSError, TypeError) as e:
            raise BodyError(f"custom op {self.name}: cannot read the Triton body's source ({e})") from None
        tree = ast.parse(source)
        fdef = tree.body[0] if tree.body else None
        if not isinstance(fdef, ast.FunctionDef) or self.name == "<lambda>":
            raise BodyError(f"custom op {self.name}: write the Triton body as a `def` function")
        self.line0 = fn.__code__.co_firstlineno - fdef.lineno  # file line = tree line + line0
        a = fdef.args
        if a.vararg or a.kwarg or a.kwonlyargs:
            self._fail(fdef, "the body takes positional parameters only (no *args, **kwargs)")
        every = [p.arg for p in a.posonlyargs + a.args]
        n_attrs = len(a.defaults)
        self.params, self.attrs = every[:len(every) - n_attrs], every[len(every) - n_attrs:]
        if RESERVED & set(every):
            self._fail(fdef, f"a parameter cannot be named {sorted(RESERVED & set(every))}")
        stmts = list(fdef.body)
        if stmts and isinstance(stmts[0], ast.Expr) and isinstance(stmts[0].value, ast.Constant) \
                and isinstance(stmts[0].value.value, str):
            stmts = stmts[1:]  # docstring
        if not stmts or not isinstance(stmts[-1], ast.Return) or stmts[-1].value is None:
            self._fail(fdef, "the body must end with `return <expression>`")
        names = set(every)
        self.assigns: list[tuple[str, ast.expr]] = []
        for s in stmts[:-1]:
            if not (isinstance(s, ast.Assign) and len(s.targets) == 1 and isinstance(s.targets[0], ast.Name)):
                self._fail(s, "only `name = expression` lines may precede the return")
            target = s.targets[0].id
            if target in RESERVED or target in every:
                self._fail(s, f"`{target}` cannot be assigned")
            self._check(s.value, names)
            names.add(target)
            self.assigns.append((target, s.value))
        self.result = stmts[-1].value
        self._check(self.result, names)
        self.flops = max(1, sum(isinstance(n, (ast.BinOp, ast.UnaryOp, ast.Compare, ast.Call))
                                for n in ast.walk(fdef)))

    @classmethod
    def part(cls, whole: TritonBody, params: list[str], attrs: list[str], assigns: list[tuple[str, ast.expr]],
             result: ast.expr) -> TritonBody:
        """A pointwise part of the (checked) row body `whole` (ir/ops/custom_row.py): reduction-free
        expressions over `params`; `attrs` are constants (the op's attributes, row lengths)."""
        body = cls.__new__(cls)
        body.name, body.line0, body.row = whole.name, whole.line0, False
        body.params, body.attrs, body.assigns, body.result = params, attrs, assigns, result
        body.flops = max(1, sum(isinstance(n, (ast.BinOp, ast.UnaryOp, ast.Compare, ast.Call))
                                for e in [result, *(v for _, v in assigns)] for n in ast.walk(e)))
        return body

    def fail(self, node: ast.AST, why: str) -> None:
        """Raise BodyError for `node`, naming its line in the file."""
        self._fail(node, why)

    def _fail(self, node: ast.AST, why: str) -> None:
        line = getattr(node, "lineno", 0) + self.line0
        raise BodyError(f"custom op {self.name}, line {line}: {why}")

    def _check(self, node: ast.expr, names: set[str]) -> None:
        """Raise BodyError unless `node` is in the grammar of the module doc."""
        if isinstance(node, ast.Constant):
            if type(node.value) not in (int, float, bool):
                self._fail(node, f"constant {node.value!r} is not a number")
        elif isinstance(node, ast.Name):
            if node.id != "tl" and node.id not in names:
                self._fail(node, f"`{node.id}` is not a parameter or local name (globals and closures "
                                 f"cannot reach a kernel)")
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) \
                and node.value.attr == "shape":
            x = node.value.value
            if not (isinstance(x, ast.Name) and x.id in self.params) or _int_index(node.slice) is None:
                self._fail(node, f"`{ast.unparse(node)}`: a length is `x.shape[k]` of a tensor parameter `x`, "
                                 f"`k` an integer")
            self.row = True
        elif isinstance(node, ast.Attribute):
            if not _tl_path(node):
                self._fail(node, f"`{ast.unparse(node)}`: only public `tl.*` and `tl.math.*` names are allowed")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, _BINOPS):
            self._check(node.left, names)
            self._check(node.right, names)
        elif isinstance(node, ast.UnaryOp) and isinstance(node.op, _UNARY):
            self._check(node.operand, names)
        elif isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], _COMPARE):
            self._check(node.left, names)
            self._check(node.comparators[0], names)
        elif isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name) and f.id == "float" and not node.keywords and len(node.args) == 1 \
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value in _FLOAT_WORDS:
                return
            if isinstance(f, ast.Attribute) and f.attr == "to" and not _tl_path(f):
                if _tl_path(f.value) or (isinstance(f.value, ast.Name) and f.value.id == "tl"):
                    self._fail(node, "`.to(...)` converts a value, not a `tl` name")
                self._check(f.value, names)
            elif not (isinstance(f, ast.Attribute) and _tl_path(f)):
                self._fail(node, f"`{ast.unparse(f)}`: only `tl.*` functions and `.to(...)` may be called")
            elif row_reduction(f):
                self._check_reduction(node, names)
                return
            elif f.attr not in ELEMENTWISE:
                self._fail(node, f"`{ast.unparse(f)}` is not an elementwise `tl` function; a body may reduce "
                                 f"rows only with `tl.sum/max/min(expr, axis=-1, keep_dims=True)`")
            for arg in node.args:
                if isinstance(arg, ast.Starred):
                    self._fail(arg, "`*args` is not allowed")
                self._check(arg, names)
            for kw in node.keywords:
                if kw.arg is None:
                    self._fail(node, "`**kwargs` is not allowed")
                self._check(kw.value, names)
        else:
            self._fail(node, f"{type(node).__name__} is not allowed in a Triton body "
                             f"(arithmetic, comparisons and tl.* calls are)")

    def _check_reduction(self, node: ast.Call, names: set[str]) -> None:
        """`tl.sum(expr, axis=-1, keep_dims=True)` (or `tl.max`, `tl.min`; `axis` also positional):
        along the last dim, keeping it, so the row value broadcasts against the row as in torch."""
        keywords = {kw.arg: kw.value for kw in node.keywords}
        axis = node.args[1] if len(node.args) == 2 else keywords.get("axis")
        keep = keywords.get("keep_dims")
        form = 1 <= len(node.args) <= 2 and len(node.args) + len(keywords) == 3 and set(keywords) <= {"axis",
                                                                                                      "keep_dims"}
        kept = isinstance(keep, ast.Constant) and keep.value is True
        if not form or axis is None or _int_index(axis) != -1 or not kept:
            self._fail(node, f"`{ast.unparse(node)}`: a row reduction is `{ast.unparse(node.func)}(expr, axis=-1, "
                             f"keep_dims=True)` (along the last dim, keeping it)")
        if isinstance(node.args[0], ast.Starred):
            self._fail(node, "`*args` is not allowed")
        self._check(node.args[0], names)
        self.row = True

    def emit(self, e, args: list[str], dtype, attrs: dict) -> str:
        """The body's expression over the kernel values `args` (of compute dtype `dtype`'s); the
        attributes' values become constants, its local lines temporaries."""
        env = dict(zip(self.params, args))
        for name in self.attrs:
            env[name] = e.tmp(_attr_text(attrs[name], dtype), "a")
        for target, value in self.assigns:
            env[target] = e.tmp(_spell(value, env), "u")
        return _spell(self.result, env)


def _attr_text(value, dtype) -> str:
    """An attribute's value in kernel text: a float as a 0-dim constant of the op's compute dtype (a
    float64 kernel keeps its double value), an int or bool as a Python literal."""
    if type(value) is float:
        return f"tl.full([], {py_literal(value, dtype)}, {TRITON_NAMES[compute_dtype(dtype)]})"
    if type(value) in (int, bool):
        return repr(value)
    raise TypeError(f"custom op attribute {value!r}: not a float, int or bool")


def row_reduction(f: ast.expr) -> str | None:
    """The IR reduction (`sum`, `amax`, `amin`) a called `f` (`tl.sum`, `tl.max`, `tl.min`) is, else None."""
    return ROW_REDUCTIONS.get(f.attr) if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) \
        and f.value.id == "tl" else None


def _int_index(node: ast.expr) -> int | None:
    """The value of an integer literal `k` or `-k`, else None."""
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        k = _int_index(node.operand)
        return None if k is None else -k
    return node.value if isinstance(node, ast.Constant) and type(node.value) is int else None


def _tl_path(node: ast.expr) -> bool:
    """Is `node` a public name of `triton.language` (`tl.where`, `tl.float32`) or of `tl.math`
    (`tl.math.exp`)? Nothing deeper, nothing private: under the interpreter a kernel is Python that
    runs, so no attribute chain may lead from `tl` to other modules or objects."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    parts.reverse()
    return (isinstance(node, ast.Name) and node.id == "tl" and 1 <= len(parts) <= 2
            and (len(parts) == 1 or parts[0] == "math") and not any(p.startswith("_") for p in parts))


class _Rename(ast.NodeTransformer):
    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def visit_Name(self, node: ast.Name) -> ast.Name:
        return ast.Name(self.env.get(node.id, node.id), node.ctx)


def _spell(node: ast.expr, env: dict[str, str]) -> str:
    return ast.unparse(_Rename(env).visit(ast.parse(ast.unparse(node), mode="eval")).body)


def register_pointwise(name: str, body: TritonBody, impl: Callable, vjp: Callable) -> OpDef:
    """A pointwise op of `body`'s arity over one floating dtype (broadcasting, like every pointwise
    op); `impl` is the user's torch reference."""
    REGISTERED.add(name)
    return register(OpDef(name, "pointwise", _infer(name, "same", FLOAT), impl, arity=len(body.params),
                          triton=lambda e, args, dtypes, out, /, **attrs: body.emit(e, args, out, attrs), vjp=vjp,
                          cost=body.flops,
                          domains=(Domain(FLOAT),), doc=f"custom op (Triton body {body.name})"))


def register_part(name: str, body: TritonBody, impl: Callable, vjp: Callable | None) -> OpDef:
    """A pointwise part of a row body (ir/ops/custom_row.py): a Triton-body op whose nodes carry the
    op's label, not their own name (so not in REGISTERED); `impl` runs its kernel (it has no torch
    form); `vjp`: the whole op's, on the final part only."""
    return register(OpDef(name, "pointwise", _infer(name, "same", FLOAT), impl, arity=len(body.params), vjp=vjp,
                          triton=lambda e, args, dtypes, out, /, **attrs: body.emit(e, args, out, attrs),
                          cost=body.flops, domains=(Domain(FLOAT),), doc=f"part of custom op {body.name}'s row body"))


def register_composite(name: str, arity: int, infer: Callable | None, impl: Callable, decompose: Callable,
                       vjp: Callable, doc: str = "custom op (torch body)") -> OpDef:
    """A composite whose `decompose` inlines the lowered IR of a torch body or a row body (labelled
    with `name`); `infer` None: a pointwise op's rule (one floating dtype, broadcast shapes)."""
    REGISTERED.add(name)
    return register(OpDef(name, "composite", infer or _infer(name, "same", FLOAT), impl, arity=arity,
                          decompose=decompose, vjp=vjp, domains=(Domain(FLOAT),), doc=doc))
