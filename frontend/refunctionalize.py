"""Functionalize in-place writes that decompositions leave on their own temporaries.

`capture` runs `make_fx` over `torch.func.functionalize(fn)`, but the decomposition table is applied
by make_fx's proxy mode, *below* functionalization: a C++ composite decomposed there (`_pad_circular`
fills slices of an `empty` with `copy_`, `instance_norm` writes running stats back through a view)
reaches the fx graph with its in-place ops intact. The IR has value semantics, so lowering such a
`copy_` as a functional copy would drop the write (circular padding came back all zeros). Tracing
the graph once more under functionalization turns every such write into a `slice_scatter` /
`copy` of the base value; only writes back into graph inputs stay as trailing `copy_` nodes.
"""

from __future__ import annotations

import torch
from torch.fx import traceback as fx_traceback

from .tracing import make_fx

aten = torch.ops.aten


def inner_mutations(gm: torch.fx.GraphModule) -> list[torch.fx.Node]:
    """Mutating aten ops other than functionalization's write-back `copy_(input, value)`."""
    found = []
    for node in gm.graph.nodes:
        op = node.target
        if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload) or not op._schema.is_mutable:
            continue
        if op is aten.copy_.default and node.args[0].op == "placeholder":
            continue
        found.append(node)
    return found


# The user's line and torch call of each node (frontend/errors.py Watch): errors name them, and
# lowering reads the call (torch.gather vs a loss's target). A re-trace carries them over through
# fx's node-meta replay, which copies a node's meta["custom"] to the nodes traced from it.
_USER_META = ("ember_where", "ember_call")


def _keeping_user_meta(gm: torch.fx.GraphModule):
    for n in gm.graph.nodes:
        kept = {k: n.meta[k] for k in _USER_META if k in n.meta}
        if kept:
            n.meta["custom"] = {**(n.meta.get("custom") or {}), **kept}

    def run(*args):
        with fx_traceback.preserve_node_meta():
            return torch.fx.Interpreter(gm).run(*args)

    return run


def _restore_user_meta(gm: torch.fx.GraphModule) -> None:
    for n in gm.graph.nodes:
        custom = n.meta.get("custom") or {}
        for k in _USER_META:
            if k in custom:
                n.meta.setdefault(k, custom[k])


def refunctionalize(gm: torch.fx.GraphModule, rounds: int = 4) -> torch.fx.GraphModule:
    """`gm` itself when it is functional apart from input write-backs, else `gm` re-traced under
    `torch.func.functionalize`, with ember's decompositions (the functional ops this produces,
    `masked_fill_` -> `masked_fill`, get decomposed like any other; a decomposition that again leaves
    in-place writes is functionalized in the next round)."""
    from .decompositions import DECOMPOSITIONS

    for _ in range(rounds):
        if not inner_mutations(gm):
            return gm
        fakes = [n.meta["val"] for n in gm.graph.nodes if n.op == "placeholder"]
        with torch.no_grad():
            gm = make_fx(torch.func.functionalize(_keeping_user_meta(gm), remove="mutations"), tracing_mode="real",
                         decomposition_table=DECOMPOSITIONS, _allow_non_fake_inputs=True)(*fakes)
        _restore_user_meta(gm)
        gm.graph.eliminate_dead_code()  # copy_ into inputs is impure, so input mutations survive
    left = inner_mutations(gm)
    if left:
        raise RuntimeError("ember: in-place writes into temporaries survive functionalization: "
                           + ", ".join(sorted({str(n.target) for n in left})))
    return gm
