"""`torch.compile(model, backend="ember")`: ember as a TorchDynamo backend.

Dynamo captures the program's Python into fx subgraphs, breaking the graph where it cannot trace
(prints, `.item()`, branches on tensor values); the breaks run eagerly and each subgraph comes here.
AOTAutograd (`aot_module_simplified`) turns a subgraph into functional aten graphs, with ember's
decomposition table: a forward graph and, when inputs require grad, a joint-derived backward graph.
Each is lowered with the frontend's aten -> IR table and compiled by the one driver
(`runtime.compile_ir`), as `ember.trace` compiles its graphs; results go through the shared output
stage (`runtime.outputs`: write-back of mutated inputs, torch's strides). AOTAutograd's runtime
wraps the graphs in one `torch.autograd.Function`, so `loss.backward()` runs the ember backward.

Why AOTAutograd's joint graph and not ember's own IR autodiff (`passes/autodiff.py`, which static
mode, `ember.trace`/`ember.compile`, uses through `runtime/autograd.py`): a Dynamo backend gets a torch-level graph over
fake example inputs and must return a callable with eager's semantics, and AOTAutograd's wrappers
already provide them: input mutations are functionalized and replayed on the caller's tensors,
outputs that alias an input or each other come back as real views, random ops run once in the
forward with the backward reading what they drew, and a double backward is refused with an error
rather than a gradient without history. ember then compiles plain functional aten graphs only.
Using ember's autodiff here would mean capturing Dynamo's graph with ember's own frontend,
differentiating it with `runtime.autograd.AutogradGraph` and taking those duties over (the
mutation and aliasing checks `api/static.py` makes for its traces, outputs regenerated as views);
the gain would be ember's min-cut choosing what the backward saves or recomputes.

Graphs with symbolic shapes (Dynamo's automatic dynamic shapes after a size changed) cannot become
static IR; they run op by op under `ember.eager()`, still on ember kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.utils import _pytree as pytree

from ..frontend.decompositions import DECOMPOSITIONS
from ..frontend.lowering import lower
from ..runtime.driver import compile_ir
from ..runtime.outputs import restride, write_back


@dataclass
class DynamoGraph:
    """One aten graph compiled for the backend: `kind` is 'forward', 'backward' or 'inference'."""

    kind: str
    graph: Any | None               # the IR after the pipeline (None: ran in eager mode)
    num_kernels: int = 0
    externs: list[str] = field(default_factory=list)


# The record of compiled graphs, newest last. Dynamo keeps the compiled callables (bounded by its
# own `cache_size_limit`); this list only reports them, and keeps the last `RECORDS_KEPT`, so a
# long-lived process that keeps recompiling does not hold every IR graph it ever made.
RECORDS_KEPT = 256
_compiled: list[DynamoGraph] = []


def _record(graph: DynamoGraph) -> None:
    _compiled.append(graph)
    del _compiled[:max(len(_compiled) - RECORDS_KEPT, 0)]


def compiled_graphs() -> list[DynamoGraph]:
    """The aten graphs the backend compiled in this process (the last `RECORDS_KEPT`), oldest first."""
    return list(_compiled)


def reset_compiled_graphs() -> None:
    _compiled.clear()


def _symbolic(gm: torch.fx.GraphModule) -> bool:
    for node in gm.graph.nodes:
        for v in pytree.tree_leaves(node.meta.get("val")):
            if isinstance(v, (torch.SymInt, torch.SymFloat, torch.SymBool)):
                return True
            if isinstance(v, torch.Tensor) and not all(isinstance(s, int) for s in v.shape):
                return True
    return False


def _boxed(fn: Callable[[list], Any]) -> Callable[[list], Any]:
    fn._boxed_call = True  # type: ignore[attr-defined]  (AOTAutograd passes one list of args)
    return fn


def _eager_fallback(gm: torch.fx.GraphModule, kind: str) -> Callable:
    from .eager import eager

    _record(DynamoGraph(kind, None))

    def run(args: list) -> Any:
        with eager():
            return gm(*args)

    return _boxed(run)


def compile_aten_graph(gm: torch.fx.GraphModule, example_inputs: list, kind: str = "forward") -> Callable:
    """Compile a functional aten fx graph (as AOTAutograd hands them over) with ember.

    The result takes the graph's inputs as one list (AOTAutograd's boxed convention) and returns its
    outputs: graph inputs returned as outputs are passed through, `None` outputs stay `None`."""
    if _symbolic(gm):
        return _eager_fallback(gm, kind)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    original = out_node.args
    results: list[tuple[str, Any]] = []   # ("graph", k) | ("input", i) | ("const", value)
    computed: list[torch.fx.Node] = []
    for o in pytree.tree_leaves(original[0], is_leaf=lambda x: x is None):
        if isinstance(o, torch.fx.Node) and o.op == "placeholder":
            results.append(("input", placeholders.index(o)))
        elif isinstance(o, torch.fx.Node):
            if o not in computed:
                computed.append(o)
            results.append(("graph", computed.index(o)))
        else:
            results.append(("const", o))
    out_spec = pytree.tree_structure(original[0], is_leaf=lambda x: x is None)
    strides = [tuple(n.meta["val"].stride()) for n in computed]
    out_node.args = (tuple(computed),)
    # AOTAutograd calls its compilers under its fake mode; ember's lowering reads real tensors (a
    # 0-dim constant such as `torch.tensor(2.0)` folds into the IR by its value), so leave it.
    with unset_fake_temporarily():
        try:
            lowered = lower(gm)
        finally:
            out_node.args = original
        compiled = compile_ir(lowered.graph)
        graph = compiled.graph
    record = DynamoGraph(kind, graph)
    _record(record)
    n_user = lowered.num_user_outputs

    def run(args: list) -> Any:
        tensors = list(args)
        args.clear()  # boxed convention: let AOTAutograd's inputs be freed as early as possible
        outs = compiled(tensors + lowered.constants)
        if not record.num_kernels:
            record.num_kernels, record.externs = compiled.num_kernels, compiled.externs
        write_back([tensors[i] for i in lowered.mutated_inputs], outs[n_user:])
        fixed = restride(outs[:n_user], strides)  # torch's layout, as the traced program expects
        leaves = [fixed[v] if kind_ == "graph" else tensors[v] if kind_ == "input" else v for kind_, v in results]
        return pytree.tree_unflatten(leaves, out_spec)

    return _boxed(run)


def ember_backend(gm: torch.fx.GraphModule, example_inputs: list, **kwargs: Any) -> Callable:
    """The Dynamo backend: each captured subgraph through AOTAutograd, both graphs compiled by ember.

    Through Dynamo's `aot_autograd` wrapper, not `aot_module_simplified` alone: Dynamo's DDPOptimizer
    (torch.compile of a DistributedDataParallel model) counts on it to know that AOTAutograd compiled a
    bucket's graph, whose first call then returns fake tensors for DDPOptimizer's own shape propagation;
    otherwise that fake first call reaches the real run (api/distributed.py)."""
    from torch._dynamo.backends.common import aot_autograd

    return aot_autograd(
        fw_compiler=lambda g, ex: compile_aten_graph(g, ex, "forward"),
        bw_compiler=lambda g, ex: compile_aten_graph(g, ex, "backward"),
        inference_compiler=lambda g, ex: compile_aten_graph(g, ex, "inference"),
        decompositions=DECOMPOSITIONS,
    )(gm, example_inputs)


def register() -> None:
    """Make `torch.compile(..., backend="ember")` find this backend (idempotent)."""
    from torch._dynamo.backends.registry import _COMPILER_FNS, register_backend

    if "ember" not in _COMPILER_FNS:
        register_backend(compiler_fn=ember_backend, name="ember")
