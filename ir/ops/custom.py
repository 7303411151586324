"""User ops (`ember.custom_op`, api/custom_op.py): registry entries made at run time.

A *Triton body* is a user function whose body is elementwise `tl` arithmetic, e.g.::

    def gated(x, y):
        return tl.where(x > 0, x * y, 0.0)

It becomes a pointwise op whose Triton rule is the body itself, checked and re-spelled here: the
source (`inspect.getsource`) is parsed and every node is checked against a small grammar (positional
parameters, `name = expr` lines, one final `return expr`; in expressions: the parameters and local
names, public `tl.*` and `tl.math.*` names and calls, `.to(...)` of a value, numbers,
`float('inf'|'-inf'|'nan')`, `+ - * /`, `& | ^ ~`, one comparison, unary minus). The kernel text is
`ast.unparse` of the checked tree with names replaced by the kernel's temporaries: nothing but that
grammar reaches a kernel (under the interpreter a kernel is Python that runs), whatever the file on
disk holds. The body is part of the kernel's source, whose hash names and caches the kernel
(codegen/source_cache.py), so a changed body never reuses a stale kernel.
The function is never called.

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
    `assigns` and `result`."""

    def __init__(self, fn: Callable) -> None:
        self.name = getattr(fn, "__name__", "?")
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


def register_composite(name: str, arity: int, infer: Callable, impl: Callable, decompose: Callable,
                       vjp: Callable) -> OpDef:
    """A composite whose `decompose` inlines the lowered IR of a torch body (labelled with `name`)."""
    REGISTERED.add(name)
    return register(OpDef(name, "composite", infer, impl, arity=arity, decompose=decompose, vjp=vjp,
                          domains=(Domain(FLOAT),), doc="custom op (torch body)"))
