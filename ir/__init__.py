"""ember's IR: types, graph, op registry, printer/parser, verifier and reference interpreter."""

from . import ops  # noqa: F401  (registers every op)
from .graph import Graph, Node, Value
from .interpreter import Interpreter, evaluate
from .opdef import OpDef
from .parser import ParseError, parse_graph
from .printer import format_graph
from .registry import OPS, get_op, register
from .types import TensorType
from .verifier import VerificationError, verify

__all__ = [
    "Graph", "Node", "Value", "TensorType", "OpDef", "OPS", "get_op", "register", "Interpreter",
    "evaluate", "parse_graph", "format_graph", "verify", "VerificationError", "ParseError",
]
