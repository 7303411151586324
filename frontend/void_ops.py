"""Lowering of aten ops that return nothing: checks such as `_linalg_check_errors`.

`torch.linalg.inv(x)` is `linalg_inv_ex(x)` (the inverse and an `info` code) followed by
`_linalg_check_errors(info, "linalg.inv")`, which raises `LinAlgError` for a singular matrix and
returns nothing. The IR is a dataflow graph: a node nothing reads is dead code, so a check lowered as
is would be dropped and a singular input would silently give a wrong inverse. Instead the check is an
`extern` that also passes the values computed with it through (`passthrough`, ir/ops/extern.py):
the other outputs of the op that produced `info`. Later uses read those, so the check runs before
the result is used, as in eager.

Metadata assertions that tracing has already decided for the static shapes are dropped; any other
op without results raises a clear error naming it rather than being dropped.
"""

from __future__ import annotations

import operator

import torch

aten = torch.ops.aten

# Asserts about sizes and metadata: decided at trace time for a static graph.
_DECIDED = {getattr(aten, name).default for name in (
    "_assert_tensor_metadata", "_assert_scalar", "sym_constrain_range", "sym_constrain_range_for_size")
    if hasattr(aten, name)}


def is_void(op: torch._ops.OpOverload) -> bool:
    return not op._schema.returns


def lower_void(L, node: torch.fx.Node, op: torch._ops.OpOverload, args: tuple, kwargs: dict) -> None:
    """Lower a call of `op` (which returns nothing) by rebinding the values it checks (module doc)."""
    if op in _DECIDED:
        return None
    checked = set(node.all_input_nodes)
    producers = {n.args[0] for n in checked if n.target is operator.getitem}
    siblings = [u for p in producers for u in p.users
                if u.target is operator.getitem and u not in checked and u in L.env
                and isinstance(u.meta.get("val"), torch.Tensor)]
    if not siblings:
        raise NotImplementedError(f"{op}: ember cannot run this op: it returns nothing and checks no value the "
                                  f"program uses, so the compiled graph would skip it")
    values = L.extern(op, args, kwargs, [s.meta["val"] for s in siblings], passthrough=[L.env[s] for s in siblings])
    for s, v in zip(siblings, values):
        L.env[s] = v  # later users read the checked values
    return None
