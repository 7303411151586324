"""Concatenation without a copy: each piece of a `cat` is stored by the kernel that computes it
straight into its slice of the cat's buffer, so the cat itself launches nothing.

The backward of a fused projection split into pieces (a qkv projection's q, k and v) is such a cat:
three matmuls produce dq, dk and dv, the cat joins them for the projection's weight- and
input-gradient matmuls. A piece qualifies when it reaches the cat through views only (reshape,
permute) from a value computed by a kernel, and nothing else reads that value or the views in
between (the slice is their only storage). A cat is placed only when every non-empty piece
qualifies; the planner then lays out each producer's output as the inverse views of its slice
(`piece_view`), and checks at the cat that every piece really is there (`placed`), launching the
copy kernel otherwise (a producer kind that allocates its outputs itself, a reshape strides cannot
invert): placement never changes a value, at worst it saves nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import Graph, Node, Value
from ..ir.registry import is_view
from . import views as V
from .views import View

CHAIN_OPS = ("reshape", "permute")  # views with an inverse view


@dataclass(frozen=True)
class Slot:
    cat: Node
    index: int               # the piece's position among the cat's inputs
    chain: tuple[Node, ...]  # the view nodes from the computed value to the piece, in order


def cat_slots(graph: Graph, donated: set[Value]) -> dict[Value, Slot]:
    """{value computed by a kernel: its slot}, for the cats whose pieces all qualify. A piece that
    is a graph output keeps storage of its own (the caller may mutate it); a donated value lives in
    its input's memory, which only its own kernel may write (the schedule orders that input's
    readers before it)."""
    users = graph.users()
    excluded = set(graph.outputs) | donated
    only_use = lambda v, node: v not in excluded and users.get(v, []) == [node]
    slots: dict[Value, Slot] = {}
    for cat in graph.nodes:
        if cat.op != "cat" or cat.out in donated:
            continue
        found = {}
        for k, piece in enumerate(cat.inputs):
            if piece.type.numel == 0:
                continue
            chain, v, user = [], piece, cat
            while only_use(v, user) and v.producer is not None and v.producer.op in CHAIN_OPS:
                chain.append(v.producer)
                v, user = v.producer.inputs[0], v.producer
            if not only_use(v, user) or v.producer is None or is_view(v.producer.op) or v in found:
                break
            found[v] = Slot(cat, k, tuple(reversed(chain)))
        else:
            if found:
                slots.update(found)
    return slots


def piece_slice(cat: Node, index: int, out: View) -> View:
    """The slice of the cat's output view `out` that piece `index` fills."""
    dim = cat.attrs["dim"]
    start = sum(v.shape[dim] for v in cat.inputs[:index])
    return V.slice_(out, dim, start, start + cat.inputs[index].shape[dim], 1)


def piece_view(slot: Slot, out: View) -> View | None:
    """The view the computed value must have so that its views (`slot.chain`) land on its slice of
    the cat's output view `out`; None when a reshape cannot be inverted with strides."""
    view = piece_slice(slot.cat, slot.index, out)
    for node in reversed(slot.chain):
        if node.op == "permute":
            inverse = [0] * len(node.attrs["dims"])
            for i, d in enumerate(node.attrs["dims"]):
                inverse[d] = i
            view = V.permute(view, tuple(inverse))
        else:
            view = V.reshape(view, node.inputs[0].shape)
            if view is None:
                return None
    return view


def resolve(bufs: list, view: View) -> View:
    """`view` over the buffer it addresses: an "alias" buffer (a piece's slice at an offset, for
    kernels that store without one) is its base buffer shifted by the alias offset."""
    spec = bufs[view.buf]
    return View(spec.base, spec.offset + view.offset, view.shape, view.strides) if spec.kind == "alias" else view
