"""Reverse-mode automatic differentiation of IR graphs (JAX-style: each op's VJP rule lives in its
registry entry, `OpDef.vjp`, and builds IR ops; this pass only walks the graph backwards).

API (what the autograd bridge, losses and `compile_step` build on)
------------------------------------------------------------------
`vjp_graph(graph, wrt=None, outputs=0) -> Graph`
    The *joint* graph. Inputs: `graph.inputs` followed by one cotangent input per differentiated
    output (named `ct_<k>`, of that output's type). Outputs: `graph.outputs` followed by one gradient
    per entry of `wrt`, of exactly that input's shape and dtype (a `full` zero where no path leads
    from the input to a differentiated output). `wrt` lists input indices (default: every floating
    input); `outputs` is an output index or a list of them (default 0). Integer and bool inputs have
    no gradient (asking for one is a ValueError); integer/bool values stop the gradient.

`grad_graph(graph, wrt=None, out_index=0) -> Graph`
    Like `vjp_graph` with the cotangent fixed to ones (a `full`), so no cotangent input: outputs are
    `graph.outputs` + gradients. For a scalar loss this is d loss / d inputs.

`forward_backward(graph, wrt=None, outputs=0, policy="mincut") -> remat.Partition`
    `vjp_graph` followed by `remat.partition`: a forward graph (inputs -> outputs + saved values) and
    a backward graph (saved values + cotangents -> gradients); see `passes/remat.py` for the exact
    convention and the recomputation policy.

Semantics follow `torch.autograd`: fan-out accumulates cotangents with `add`; an op whose entry has
no VJP raises `NotImplementedError` naming it only when a cotangent actually has to flow through it
from a differentiated input. An `extern` call's VJP is PyTorch's derivative of the op, traced and
lowered to IR (ir/ops/extern.py, frontend/extern_vjp.py); it raises for an op torch cannot
differentiate either. Complex values (only externs make or read them) get complex cotangents from
those derivatives, summed by torch's `add` (an extern) where a complex value is used twice. The
joint graph is verified and dead-code eliminated (cotangents built by rules for inputs that need
none disappear); it may still contain composite ops (`mean`, `var`, `std`): `run_pipeline`
decomposes them like any other graph.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..ir import Graph, Value, get_op, verify
from ..ir.ops.extern import INPUT
from ..ir.types import is_float
from ..ir.vjp import zeros
from .dce import dce
from .rewrite import GraphRewriter


def _check_args(graph: Graph, wrt: Sequence[int] | None, outputs: int | Sequence[int]) -> tuple[list[int], list[int]]:
    outs = [outputs] if isinstance(outputs, int) else list(outputs)
    for i in outs:
        if not 0 <= i < len(graph.outputs):
            raise IndexError(f"output index {i} out of range: the graph has {len(graph.outputs)} outputs")
        if not (is_float(graph.outputs[i].dtype) or graph.outputs[i].dtype.is_complex):
            raise ValueError(f"output {i} is {graph.outputs[i].type}: only floating-point and complex outputs are "
                             f"differentiable")
    if wrt is None:
        wrt = [i for i, v in enumerate(graph.inputs) if is_float(v.dtype)]
    wrt = list(wrt)
    for i in wrt:
        if not 0 <= i < len(graph.inputs):
            raise IndexError(f"input index {i} out of range: the graph has {len(graph.inputs)} inputs")
        if not is_float(graph.inputs[i].dtype):
            raise ValueError(f"input {i} (%{graph.inputs[i].name}) is {graph.inputs[i].type}: "
                             f"only floating-point inputs have gradients")
    return wrt, outs


def _differentiate(graph: Graph, wrt: list[int], outs: list[int], seed_inputs: bool) -> Graph:
    rw = GraphRewriter(graph)
    for node in graph.nodes:
        rw.copy(node)
    g = rw.out
    forward_nodes = list(g.nodes)
    primal_outputs = [rw.map[v] for v in graph.outputs]

    cts: dict[Value, Value] = {}

    def accumulate(v: Value, c: Value) -> None:
        if v not in cts:
            cts[v] = c
        elif v.dtype.is_complex:  # IR ops take no complex values: torch's add, as an extern
            cts[v] = g.add("extern", [cts[v], c], target="aten.add.Tensor", args=((INPUT, 0), (INPUT, 1)), kwargs={})
        else:
            cts[v] = g.add("add", [cts[v], c])

    for k, i in enumerate(outs):
        out = primal_outputs[i]
        if not seed_inputs and out.dtype.is_complex:  # `full` makes no complex value
            raise ValueError(f"output {i} is {out.type}: grad_graph needs a real output (use vjp_graph)")
        seed = g.add_input(out.type, f"ct_{k}") if seed_inputs else g.add("full", [], shape=out.shape, value=1.0,
                                                                         dtype=out.dtype)
        accumulate(out, seed)

    # Activity: float values that depend on a differentiated input. Only they receive cotangents.
    wrt_values = [g.inputs[i] for i in wrt]
    active = _active(g, wrt_values)

    for node in reversed(forward_nodes):
        if not any(v in cts for v in node.outputs) or not any(v in active for v in node.inputs):
            continue
        opdef = get_op(node.op)
        if opdef.vjp is None:
            what = f"'{node.op}'" + (f" (target {node.attrs['target']})" if "target" in node.attrs else "")
            if any(v.dtype.is_complex for v in node.inputs + node.outputs):
                what += " on complex values"
            raise NotImplementedError(
                f"cannot differentiate through op {what}: it has no VJP rule, and a gradient must flow "
                f"through it to an input ({node})")
        if len(node.outputs) == 1:
            out, ct = node.outputs[0], cts[node.outputs[0]]
        else:  # an extern returning several tensors: lists, None where no cotangent reaches (registry doc)
            out, ct = list(node.outputs), [cts.get(v) for v in node.outputs]
        needs = {"needs": tuple(v in active for v in node.inputs)} if opdef.vjp_needs else {}
        results = opdef.vjp(g, list(node.inputs), out, ct, **needs, **node.attrs)
        if len(results) != len(node.inputs):
            raise RuntimeError(f"VJP rule of '{node.op}' returned {len(results)} cotangents for "
                               f"{len(node.inputs)} inputs")
        for x, c in zip(node.inputs, results):
            if c is None or x not in active:
                continue
            if c.type != x.type:
                raise RuntimeError(f"VJP rule of '{node.op}' returned a cotangent of type {c.type} for an input "
                                   f"of type {x.type} ({node})")
            accumulate(x, c)

    grads = [cts[v] if v in cts else zeros(g, v.type) for v in wrt_values]
    g.set_outputs(primal_outputs + grads)
    return verify(dce(g))


def _active(graph: Graph, wrt_values: list[Value]) -> set[Value]:
    """Float values that depend on `wrt_values` through ops that carry a gradient (not through integer
    values, nor `stop_gradient`: `OpDef.active_inputs`). Complex values are active too: only externs
    make or read them, and an extern's VJP (torch's derivative) carries their complex cotangents."""
    active: set[Value] = set(wrt_values)
    for node in graph.nodes:
        carried = get_op(node.op).active_inputs
        sources = node.inputs if carried is None else [node.inputs[i] for i in carried]
        if any(v in active for v in sources):
            active.update(v for v in node.outputs if is_float(v.dtype) or v.dtype.is_complex)
    return active


def active_outputs(graph: Graph, wrt: Sequence[int]) -> list[int]:
    """Indices of the outputs that depend on the inputs `wrt` through differentiable ops: those that
    require grad in eager autograd (a `torch.no_grad()` result or an integer output does not)."""
    active = _active(graph, [graph.inputs[i] for i in wrt])
    return [k for k, v in enumerate(graph.outputs) if v in active]


def reaching_inputs(graph: Graph, wrt: Sequence[int], out_index: int | Sequence[int] = 0) -> list[bool]:
    """For each input in `wrt`: whether output `out_index` (or any of a list of outputs) depends on it
    through ops that carry a gradient (`_active` read backwards). Where it does not, eager autograd
    leaves the input's `.grad` None (not zeros) and torch's optimizers skip it."""
    needed = {graph.outputs[i] for i in ([out_index] if isinstance(out_index, int) else out_index)}
    for node in reversed(graph.nodes):
        if any(v in needed for v in node.outputs if is_float(v.dtype) or v.dtype.is_complex):
            carried = get_op(node.op).active_inputs
            needed.update(node.inputs if carried is None else [node.inputs[i] for i in carried])
    return [graph.inputs[i] in needed for i in wrt]


def vjp_graph(graph: Graph, wrt: Sequence[int] | None = None, outputs: int | Sequence[int] = 0) -> Graph:
    """Joint forward + backward graph: inputs + cotangents -> outputs + gradients (see module doc)."""
    wrt, outs = _check_args(graph, wrt, outputs)
    return _differentiate(graph, wrt, outs, seed_inputs=True)


def grad_graph(graph: Graph, wrt: Sequence[int] | None = None, out_index: int = 0) -> Graph:
    """Joint graph with the cotangent of output `out_index` fixed to ones: inputs -> outputs + gradients."""
    wrt, outs = _check_args(graph, wrt, out_index)
    return _differentiate(graph, wrt, outs, seed_inputs=False)


def forward_backward(graph: Graph, wrt: Sequence[int] | None = None, outputs: int | Sequence[int] = 0,
                     policy: str = "mincut"):
    """`vjp_graph` then `remat.partition` into forward and backward graphs (a `remat.Partition`)."""
    from .remat import partition

    joint = vjp_graph(graph, wrt, outputs)
    return partition(joint, len(graph.inputs), len(graph.outputs), policy=policy)
