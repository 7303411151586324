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
            gm = make_fx(torch.func.functionalize(gm, remove="mutations"), tracing_mode="real",
                         decomposition_table=DECOMPOSITIONS, _allow_non_fake_inputs=True)(*fakes)
        gm.graph.eliminate_dead_code()  # copy_ into inputs is impure, so input mutations survive
    left = inner_mutations(gm)
    if left:
        raise RuntimeError("ember: in-place writes into temporaries survive functionalization: "
                           + ", ".join(sorted({str(n.target) for n in left})))
    return gm
