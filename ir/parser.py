"""Parse the printer's text back into a `Graph` (round trip: parse(str(g)) prints identically)."""

from __future__ import annotations

import ast
import re
from typing import Any

import torch

from .graph import Graph, Node
from .types import NAME_DTYPES, TensorType

_TYPE = re.compile(r"%([\w.]+):\s*(\w+)\[([\d,\s]*)\]")
_CALL = re.compile(r"^(\w+)\(([^)]*)\)(?:\s*\{(.*)\})?$")
_LABEL = re.compile(r"^(.*[)}])\s+#\s*([\w.]+)$")  # a node's trailing `# label` (ir/graph.py Node.label)
_CONSTANTS = {"inf": float("inf"), "nan": float("nan"), "True": True, "False": False, "None": None}


class ParseError(ValueError):
    pass


def _literal(node: ast.AST) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in NAME_DTYPES:
            return NAME_DTYPES[node.id]
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_literal(node.operand)
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values)}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "device":
        return torch.device(*[_literal(a) for a in node.args])
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "torch":
        value = getattr(torch, node.attr, None)
        if isinstance(value, (torch.dtype, torch.memory_format, torch.layout)):
            return value
    raise ParseError(f"not an IR attribute literal: {ast.unparse(node)}")


def _type(match: re.Match) -> tuple[str, TensorType]:
    name, dtype, dims = match.groups()
    if dtype not in NAME_DTYPES:
        raise ParseError(f"unknown dtype {dtype!r}")
    shape = tuple(int(d) for d in dims.split(",") if d.strip())
    return name, TensorType(shape, NAME_DTYPES[dtype])


def parse_graph(text: str) -> Graph:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    if not lines or not lines[0].startswith("graph(") or lines[-1] != "}":
        raise ParseError("expected 'graph(...) {' ... '}'")
    g = Graph()
    env = {}
    for m in _TYPE.finditer(lines[0]):
        name, t = _type(m)
        env[name] = g.add_input(t, name)
    for lineno, line in enumerate(lines[1:-1], start=2):
        if line.startswith("return"):
            names = re.findall(r"%([\w.]+)", line)
            try:
                g.set_outputs(env[n] for n in names)
            except KeyError as e:
                raise ParseError(f"line {lineno}: return of undefined value %{e.args[0]}") from None
            continue
        labelled = _LABEL.match(line)
        line, label = (labelled.group(1), labelled.group(2)) if labelled else (line, None)
        lhs, sep, rhs = line.partition(" = ")
        if not sep:
            raise ParseError(f"line {lineno}: expected '%v: type = op(...)': {line}")
        outs = [_type(m) for m in _TYPE.finditer(lhs)]
        m = _CALL.match(rhs)
        if not m:
            raise ParseError(f"line {lineno}: expected 'op(%a, ...) {{attrs}}': {rhs}")
        op, args, attr_text = m.groups()
        inputs = []
        for a in filter(None, (a.strip() for a in args.split(","))):
            if not a.startswith("%") or a[1:] not in env:
                raise ParseError(f"line {lineno}: undefined or malformed operand {a}")
            inputs.append(env[a[1:]])
        try:
            call = ast.parse(f"f({attr_text or ''})", mode="eval").body
        except SyntaxError as e:
            raise ParseError(f"line {lineno}: cannot parse attributes {attr_text!r}: {e.msg}") from None
        attrs = {k.arg: _literal(k.value) for k in call.keywords}
        node = Node(op, inputs, attrs, [t for _, t in outs], label)
        for (name, _), v in zip(outs, node.outputs):
            v.name = name
            env[name] = v
        g.nodes.append(node)
    return g
