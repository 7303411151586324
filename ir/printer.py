"""Text form of the IR: one line per node, attributes as Python-like literals. `parser` reads it back."""

from __future__ import annotations

import math
from typing import Any

import torch

from .types import DTYPE_NAMES


def format_attr(v: Any) -> str:
    if isinstance(v, torch.dtype):
        return DTYPE_NAMES[v]
    if isinstance(v, torch.device):
        return f"device({str(v)!r})"
    if isinstance(v, (torch.memory_format, torch.layout)):
        return str(v)
    if isinstance(v, bool) or v is None or isinstance(v, (int, str)):
        return repr(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, tuple):
        inner = ", ".join(format_attr(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    if isinstance(v, list):
        return "[" + ", ".join(format_attr(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k!r}: {format_attr(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"attribute value {v!r} of type {type(v).__name__} is not printable IR")


def _value(v) -> str:
    return f"%{v.name}" if v.name is not None else "%?"  # a node printed before Graph.name_values (an error)


def format_node(node) -> str:
    lhs = ", ".join(f"{_value(v)}: {v.type}" for v in node.outputs)
    args = ", ".join(_value(v) for v in node.inputs)
    text = f"{lhs} = {node.op}({args})"
    if node.attrs:
        text += " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in node.attrs.items()) + "}"
    if node.label:
        text += f"  # {node.label}"  # provenance (the custom op it came from), read back by the parser
    return text


def format_graph(graph) -> str:
    if any(v.name is None for v in graph.inputs) or any(v.name is None for n in graph.nodes for v in n.outputs):
        graph.name_values()
    params = ", ".join(f"%{v.name}: {v.type}" for v in graph.inputs)
    lines = [f"graph({params}) {{"]
    lines += [f"  {format_node(n)}" for n in graph.nodes]
    lines.append(f"  return ({', '.join(_value(v) for v in graph.outputs)})")
    lines.append("}")
    return "\n".join(lines)
