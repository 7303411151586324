"""An IR graph as an ONNX model (`ember.export_onnx`, api/export.py).

Each op's entry in the registry may carry an `onnx` rule (ir/opdef.py), next to its other rules:

    onnx(b, args: list[str], types: list[TensorType], out: TensorType | list[TensorType], **attrs)
        -> the ONNX name of the node's output (or a list, one per output)

`args` are the ONNX names of the node's inputs, `types` their IR types. The rule builds ONNX nodes
with the `OnnxBuilder` `b` (`op`, `const`, `ints`, `tensor`, `cast`) and returns names; it raises
`NotImplementedError` for an attribute or dtype it does not map. The IR's semantics are the
reference: a rule spells torch's value in ONNX ops (NaN propagation of maximum/clamp, floor
division, torch's remainder, the fused `attention` op's formula), never ONNX's nearest op when the
two differ. An op without a rule (an `extern` torch call, random numbers, the gradient ops) is
refused by `to_onnx` with an `OnnxExportError` naming the op, the torch op of an extern, and the
user's line where the caller knows it.

Names: graph inputs keep the IR's names (`x`, `p_fc_weight`), a node's output is `v<IR name>` (the
printed IR's `%12` is `v12`; `v_12` when an input's name starts with `v`), helper values `v12_1`, ...;
ONNX nodes are named `<IR op>/v12`; the model's outputs `output` or `output_0`, `output_1`, ... Values
given as initializers (a module's parameters and buffers) are not graph inputs of the model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from ..ir import Graph, Node
from ..ir.registry import get_op
from ..ir.types import TensorType

OPSET = 18  # Reduce* ops take their axes as an input from 18 on; BitwiseAnd/Or/Xor/Not exist from 18

# TensorProto.DataType's values (fixed by the ONNX standard).
DTYPES: dict[torch.dtype, int] = {
    torch.float32: 1, torch.uint8: 2, torch.int8: 3, torch.uint16: 4, torch.int16: 5, torch.int32: 6,
    torch.int64: 7, torch.bool: 9, torch.float16: 10, torch.float64: 11, torch.uint32: 12, torch.uint64: 13,
    torch.bfloat16: 16,
}


def _onnx() -> Any:
    """The onnx package: an optional extra (`pip install ember[onnx]`), imported at the first export,
    not with ember (ember.OnnxExportError lives here)."""
    import onnx

    return onnx


class OnnxExportError(NotImplementedError):
    """An IR op (or an attribute or dtype of one) that has no ONNX mapping."""


def onnx_dtype(dtype: torch.dtype) -> int:
    try:
        return DTYPES[dtype]
    except KeyError:
        raise NotImplementedError(f"dtype {dtype} has no ONNX element type here") from None


class OnnxBuilder:
    """Collects ONNX nodes and initializers; `prefix` names what the rule being run creates."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.prefix, self.op_name = "c", "const"  # set by to_onnx before each IR node's rule
        self._counts: dict[str, int] = {}

    def fresh(self) -> str:
        k = self._counts.get(self.prefix, 0) + 1
        self._counts[self.prefix] = k
        return f"{self.prefix}_{k}"

    def op(self, op_type: str, inputs: Sequence[str], n: int = 1, **attrs: Any) -> Any:
        """Append an ONNX node; returns its output name (a list when `n` > 1). An input of "" is an
        omitted optional input."""
        outs = [self.fresh() for _ in range(n)]
        name = f"{self.op_name}/{outs[0]}"
        attrs = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(_onnx().helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if n == 1 else outs

    def tensor(self, t: torch.Tensor) -> str:
        """`t` as an initializer (any dtype: its bytes, little-endian as ONNX's raw data)."""
        name = self.fresh()
        self.initializers.append(tensor_proto(name, t))
        return name

    def const(self, value: Any, dtype: torch.dtype, shape: Sequence[int] = ()) -> str:
        """A constant of `dtype`: a scalar initializer, expanded to `shape` when it has one (the
        model stays small: a [4096, 4096] zero tensor is one element and an Expand)."""
        scalar = self.tensor(torch.tensor(value, dtype=torch.float64 if isinstance(value, float) else None).to(dtype))
        return scalar if not tuple(shape) else self.op("Expand", [scalar, self.ints(shape)])

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 constant (shapes, axes, starts...)."""
        return self.tensor(torch.tensor(list(values), dtype=torch.int64).reshape(len(values)))

    def cast(self, x: str, src: torch.dtype, dtype: torch.dtype) -> str:
        return x if src == dtype else self.op("Cast", [x], to=onnx_dtype(dtype))


def tensor_proto(name: str, t: torch.Tensor) -> Any:
    t = t.detach().cpu().contiguous()
    raw = t.reshape(-1).view(torch.uint8) if t.dtype != torch.bool else t.to(torch.uint8)
    return _onnx().helper.make_tensor(name, onnx_dtype(t.dtype), list(t.shape), raw.numpy().tobytes(), raw=True)


def _value_info(name: str, t: TensorType) -> Any:
    return _onnx().helper.make_tensor_value_info(name, onnx_dtype(t.dtype), list(t.shape))


def _describe(node: Node) -> str:
    what = f"IR op '{node.op}'"
    if node.op == "extern":
        what += f" (the torch call {node.attrs.get('target')})"
    return what


def to_onnx(graph: Graph, initializers: dict[int, torch.Tensor] | None = None,
            output_names: Sequence[str] | None = None, where: Callable[[Node], str | None] | None = None,
            name: str = "ember", doc: str = "") -> Any:
    """The ONNX model of `graph` (opset `OPSET`): graph input k is an initializer holding
    `initializers[k]` when given, else a model input; `where(node)` names the user's line of a node
    (for errors). Checked with `onnx.checker` (full check: types and shapes inferred)."""
    helper = _onnx().helper
    initializers = initializers or {}
    missing = [n for n in graph.nodes if get_op(n.op).onnx is None]
    if missing:
        others = sorted({_describe(n) for n in missing[1:]} - {_describe(missing[0])})
        raise OnnxExportError(_refusal(missing[0], "has no ONNX mapping", where)
                              + (f" (also without one: {', '.join(others)})" if others else ""))
    graph.name_values()
    b = OnnxBuilder()
    env: dict[Any, str] = {}
    inputs = []
    used = {v for n in graph.nodes for v in n.inputs} | set(graph.outputs)
    for k, v in enumerate(graph.inputs):
        env[v] = v.name
        if k in initializers and v not in used:  # a buffer the program never reads (num_batches_tracked)
            continue
        if k in initializers:
            b.initializers.append(tensor_proto(v.name, initializers[k]))
        else:
            inputs.append(_value_info(v.name, v.type))
    infos = []
    # node values are `v<IR name>` (IR names of node values are numbers), unless an input's name
    # could clash with one: then `v_`, `v__`, ...
    taken = {v.name for v in graph.inputs}
    letter = "v"
    while any(n.startswith(letter) for n in taken):
        letter += "_"
    for node in graph.nodes:
        outs = node.outputs
        b.prefix, b.op_name = f"{letter}{outs[0].name}", node.op
        start = len(b.nodes)
        try:
            results = _run_rule(b, node, [env[v] for v in node.inputs])
        except NotImplementedError as e:
            raise OnnxExportError(_refusal(node, f"cannot be exported: {e}", where)) from None
        for v, r in zip(outs, results, strict=True):
            env[v] = _rename(b, r, f"{letter}{v.name}", start)
            infos.append(_value_info(env[v], v.type))
    names = list(output_names) if output_names is not None else (
        ["output"] if len(graph.outputs) == 1 else [f"output_{k}" for k in range(len(graph.outputs))])
    while taken & set(names):  # an input called `output`
        names = [n + "_" for n in names]
    for v, out in zip(graph.outputs, names, strict=True):
        b.nodes.append(helper.make_node("Identity", [env[v]], [out], name=f"output/{out}"))
    g = helper.make_graph(b.nodes, name, inputs, [_value_info(o, v.type) for v, o in zip(graph.outputs, names)],
                          initializer=b.initializers, value_info=infos, doc_string=doc)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ember")
    _onnx().checker.check_model(model, full_check=True)
    return model


def _rename(b: OnnxBuilder, result: str, want: str, start: int) -> str:
    """Give the rule's result the IR value's name: the last node's output when that node (of this
    rule) made it, else through an Identity (a rule that returned its input unchanged)."""
    last = b.nodes[-1] if len(b.nodes) > start else None
    if last is not None and len(last.output) == 1 and last.output[0] == result and result != want:
        last.output[0] = want
        last.name = f"{b.op_name}/{want}"
    elif result != want:
        b.nodes.append(_onnx().helper.make_node("Identity", [result], [want], name=f"{b.op_name}/{want}"))
    return want


# Kinds (and pooling ops) whose half-typed nodes compute in float32 and round once (as kernels do,
# and torch's CPU ops); onnxruntime's CPU kernels mostly lack half types.
WIDENED_KINDS = ("pointwise", "reduction", "scan", "matmul", "conv")
WIDENED_OPS = ("max_pool", "avg_pool", "adaptive_avg_pool", "upsample_nearest")
HALF = (torch.float16, torch.bfloat16)


def _run_rule(b: OnnxBuilder, node: Node, args: list[str]) -> list[str]:
    """The node's rule; half-typed inputs and outputs of arithmetic kinds go through float32."""
    op = get_op(node.op)
    types = [v.type for v in node.inputs]
    outs = [v.type for v in node.outputs]
    widen = (op.kind in WIDENED_KINDS or node.op in WIDENED_OPS) and node.op != "convert" \
        and any(t.dtype in HALF for t in types + outs)
    if widen:
        args = [b.cast(a, t.dtype, torch.float32) if t.dtype in HALF else a for a, t in zip(args, types)]
        types = [TensorType(t.shape, torch.float32) if t.dtype in HALF else t for t in types]
        wide = [TensorType(t.shape, torch.float32) if t.dtype in HALF else t for t in outs]
    else:
        wide = outs
    result = op.onnx(b, args, types, wide[0] if len(wide) == 1 else wide, **node.attrs)
    results = list(result) if isinstance(result, (list, tuple)) else [result]
    if widen:
        results = [b.cast(r, w.dtype, t.dtype) for r, w, t in zip(results, wide, outs, strict=True)]
    return results


def _refusal(node: Node, why: str, where: Callable[[Node], str | None] | None) -> str:
    line = where(node) if where is not None else None
    return f"ember.export_onnx: {_describe(node)} {why}" + (f"  at {line}" if line else "")
