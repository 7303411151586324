"""Row-kernel code for `pick` (ir/ops/cross_entropy.py), the target logit of a one-pass cross-entropy.

`ROW_HOOKS[op](em, node)` is called by the row emitter (codegen/row.py `_RowEmitter.reduction`) for a
reduction it does not spell itself, and returns the name of the node's row value ([BM], compute
dtype). `em` is the row emitter: `e` (the Emitter), `operand(v, tile)`, `L` (the layout: its
`loads`), `kidx` (the rows' indices over the kept dims) and `up(x, dtype)` (a loaded value in its
compute dtype).

`pick` is a direct load of x at (row, index[row]): N elements, never the row, and no sweep. Lanes
whose index is out of range load nothing (the frontend's `check_index` raises eager's error).
"""

from __future__ import annotations

from ..ir import Node


def emit_pick(em, node: Node) -> str:
    e = em.e
    x, index = node.inputs
    i = em.L.loads.index((x, "tile"))
    if em.L.is_row(index):
        t = em.operand(index, False)
    else:  # the row dims all have size 1 (R == 1): the index is spelled like a tile, of one column
        t = e.tmp(f"tl.reduce(tl.where(m2, {em.operand(index, True)}, 0), 1, tl.standard._sum_combine)", "t")
    ok = e.tmp(f"({t} >= 0) & ({t} < R)", "ok")
    col = e.tmp(f"tl.where({ok}, {t}, 0) + rzero", "i")  # rzero: the kernel's index width
    row = " + ".join([f"ld{i}_off"] + [f"{k} * ld{i}_k{d}" for d, k in enumerate(em.kidx)]) + " + rzero"
    v = e.tmp(f"tl.load(ld{i}_ptr + ({row} + {col} * ld{i}_r0), mask=rmask & {ok}, other=0)", "x")
    return em.up(v, x.dtype)


ROW_HOOKS = {"pick": emit_pick}
