"""`ember.export_onnx`: a function or module, captured as `ember.trace` captures it, written as an ONNX
model (codegen/onnx.py: each op's `onnx` rule in the registry).

The graph exported is ember's IR after the pass pipeline (decompositions, simplification, the fused
`attention` op, CSE, DCE), for the example call's shapes and dtypes (no dynamic dims): what ember's
kernels compute, before any kernel is generated or run. The module's parameters and buffers (and
tensors the program reads through closures or globals) become initializers holding their values
now; the tensor arguments become the model's inputs, named as the function's parameters (`x`,
`xs_1_`); the tensor results its outputs (`output`, or `output_0`, `output_1`, ... in the order
`torch.utils._pytree` flattens them). Non-tensor arguments are baked in, as in a trace. In-place
updates of inputs and buffers (a train-mode BatchNorm's running statistics) are not part of the
model (a warning says so): export inference code, a module in `eval()` mode.

An op without an ONNX mapping (an `extern` torch call, random numbers, special functions) raises
`OnnxExportError` naming it, and the user's line that produced it where capture recorded one.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import torch

from ..frontend.capture import Captured, capture, module_state
from ..frontend.errors import boundary
from ..frontend.lowering import Lowered, Lowerer, load_rules
from ..frontend.refunctionalize import refunctionalize
from ..frontend.sources import source_name
from ..ir import Graph, Node
from ..runtime.driver import compile_ir
from .signature import check_arity, fn_name, named_leaves
from .static import _sanitize


class _LocatingLowerer(Lowerer):
    """The frontend's lowering, remembering the user's line of each IR node it builds (the fx node's
    `ember_where`, frontend/errors.py), for export errors."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.where: dict[Node, str] = {}

    def lower_node(self, node: torch.fx.Node) -> Any:
        start = len(self.g.nodes)
        out = super().lower_node(node)
        line = node.meta.get("ember_where")
        if line is not None:
            for n in self.g.nodes[start:]:
                self.where.setdefault(n, str(line))
        return out


@boundary  # capture errors name the user's line, as ember.trace's do
def _capture(fn: Callable, args: tuple) -> tuple[Captured, Lowered, dict[Node, str], list[str]]:
    check_arity(fn, args, {})
    captured = capture(fn, args, {})
    module = fn if isinstance(fn, torch.nn.Module) else None
    names = [_sanitize(n) for n, x in named_leaves(args, {}, fn) if isinstance(x, torch.Tensor)]
    params = {n for n, _ in module.named_parameters()} if module is not None else set()
    names += [("p_" if n in params else "b_") + _sanitize(n) for n in captured.state_names]
    names += ["c_" + _sanitize(source_name(s)) for s in captured.sources]
    load_rules()
    lowerer = _LocatingLowerer(refunctionalize(captured.gm), names)
    lowered = lowerer.run()
    return captured, lowered, lowerer.where, names


def _locator(graph: Graph, where: dict[Node, str]) -> Callable[[Node], str | None]:
    """The user's line of a node of the optimized graph: passes rebuild nodes, so the first captured
    node of the same op (the same torch op for an extern) that has a line."""

    def locate(node: Node) -> str | None:
        for n in graph.nodes:
            if n.op == node.op and n.attrs.get("target") == node.attrs.get("target") and n in where:
                return where[n]
        return None

    return locate


def export_onnx(fn: Callable, path: str | os.PathLike | None, *example_args: Any) -> Any:
    """Capture `fn(*example_args)` (a function or an `nn.Module`) and write it to `path` as an ONNX model
    (opset 18; None: do not write). Returns the `onnx.ModelProto`. Needs the `onnx` extra
    (`pip install ember[onnx]`); raises `ember.OnnxExportError` for an op without an ONNX mapping."""
    try:
        import onnx
    except ImportError:
        raise ImportError("ember.export_onnx needs the onnx package: pip install 'ember[onnx]'") from None
    from ..codegen.onnx import to_onnx

    args = tuple(example_args)
    captured, lowered, where, names = _capture(fn, args)
    graph = lowered.graph
    if lowered.mutated_inputs:
        updated = [names[i] for i in lowered.mutated_inputs]
        warnings.warn(f"ember.export_onnx: {fn_name(fn)} updates {', '.join(updated)} in place; the ONNX model "
                      "computes its results only, not the updates (export a module in eval() mode)", stacklevel=2)
    graph.set_outputs(graph.outputs[:lowered.num_user_outputs])
    # the one driver's passes (its schedule is made too, but no plan or kernel before a call)
    optimized = compile_ir(graph, name=fn_name(fn)).graph
    if len(optimized.inputs) != len(graph.inputs):
        raise AssertionError("the pass pipeline changed the graph's inputs")
    user = sum(isinstance(x, torch.Tensor) for _, x in named_leaves(args, {}, fn))
    module = fn if isinstance(fn, torch.nn.Module) else None
    state = [module_state(module)[n] for n in captured.state_names]  # in the graph's input order
    values = state + list(captured.source_tensors()) + list(lowered.constants)
    initializers = {user + k: t for k, t in enumerate(values)}
    model = to_onnx(optimized, initializers, where=_locator(graph, where), name=_sanitize(fn_name(fn)),
                    doc=f"{fn_name(fn)} exported by ember")
    if path is not None:
        onnx.save(model, os.fspath(path))
    return model
