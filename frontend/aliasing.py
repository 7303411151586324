"""Aliasing between a call's tensors, and outputs that alias inputs, so static mode matches eager.

- **Inputs that share memory.** Capture fakes each input separately (the same tensor passed twice
  becomes one fake, so the trace even reads one placeholder for both). `alias_groups` finds the
  inputs of a call whose memory overlaps; the groups are part of the signature (a graph traced
  with `f(t, t)` is never reused for `f(a, b)`), and a graph that updates an input in place is not
  run when that input overlaps another (the graph would read the other input's stale value):
  `StaticGraph.run` runs the call eagerly instead, with a logged reason.
- **Outputs that are inputs or views of them.** Eager returns `x` itself for `lambda x: x` and a
  view of `x` for `x[1:]`, `x.t()`, `x.view(...)`. `output_views` finds, in the functionalized aten
  graph, each output that is a chain of view ops from an input (or from the new value of an input
  updated in place, or from a closed-over tensor, or from another output); `ViewChain.replay` runs
  those view ops on the caller's real tensor after the call, which gives exactly eager's result
  (its `_base`, storage, strides and autograd history).
- **In-place metadata changes of inputs** (`t_`, `transpose_`, `unsqueeze_`, `resize_`, ...)
  reach the captured graph as `as_strided_` on a placeholder, which lowering cannot replicate:
  `check_input_mutations` refuses them with the op named.
- **Outputs in containers that are not pytrees** (a user class): tracing would return the object
  built during capture, holding fake tensors, on every call. `check_outputs` refuses them.
"""

from __future__ import annotations

import operator
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils import _pytree as pytree

from .capture import CaptureError
from .lowering import Lowered

aten = torch.ops.aten


# -- inputs that share memory -------------------------------------------------------------------


def _span(t: torch.Tensor) -> tuple[int, int]:
    """Bytes [start, end) of `t`'s storage that `t` can touch."""
    size = t.element_size()
    start = t.storage_offset() * size
    extent = sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride()))
    return start, start + (extent + 1) * size


def alias_groups(tensors: Sequence[torch.Tensor]) -> tuple[tuple[int, ...], ...]:
    """Groups (of indices into `tensors`, two or more each) of tensors whose memory overlaps.

    Overlap is judged on the byte range each tensor can touch, so two interleaved views that share
    no element (`x[::2]`, `x[1::2]`) count as overlapping: conservative, never missing an alias.
    """
    by_storage: dict[int, list[int]] = {}  # runs on every call of ember.compile: kept cheap
    for i, t in enumerate(tensors):
        if t.is_meta or t.numel() == 0:
            continue
        try:
            ptr = t.untyped_storage().data_ptr()
        except (RuntimeError, NotImplementedError):  # tensors without storage (sparse, subclasses)
            continue
        by_storage.setdefault(ptr, []).append(i)
    groups: list[tuple[int, ...]] = []
    for idx in by_storage.values():
        if len(idx) < 2:
            continue
        spans = sorted(((str(tensors[i].device),) + _span(tensors[i]), i) for i in idx)
        run: list[int] = []
        end = -1
        device = None
        for (dev, s, e), i in spans:  # sweep: a tensor starting before the run's end joins the run
            if run and dev == device and s < end:
                run.append(i)
                end = max(end, e)
            else:
                if len(run) > 1:
                    groups.append(tuple(sorted(run)))
                run, end, device = [i], e, dev
        if len(run) > 1:
            groups.append(tuple(sorted(run)))
    return tuple(sorted(groups))


def describe_groups(groups: Sequence[Sequence[int]], names: Sequence[str]) -> str:
    """'x and y share memory; a, b and c share memory'."""
    def one(g: Sequence[int]) -> str:
        n = [names[i] for i in g]
        return (", ".join(n[:-1]) + " and " + n[-1]) + " share memory"

    return "; ".join(one(g) for g in groups)


def mutated_alias_clash(groups: Sequence[Sequence[int]], mutated: Sequence[int]) -> list[tuple[int, ...]]:
    """The alias groups that hold an input the graph updates in place."""
    m = set(mutated)
    return [tuple(g) for g in groups if m.intersection(g)]


# -- in-place changes of inputs -----------------------------------------------------------------


def check_input_mutations(gm: torch.fx.GraphModule, names: Sequence[str]) -> None:
    """Refuse in-place metadata changes (shape/strides/storage) of the program's inputs: the
    functionalized graph spells them `as_strided_(input, ...)` followed by `copy_`, and a static
    graph of values cannot change the caller's tensor's shape."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    for node in gm.graph.nodes:
        op = node.target
        if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload) or op is aten.copy_.default:
            continue
        if not op._schema.is_mutable or not node.args or node.args[0] not in placeholders:
            continue
        what = names[placeholders.index(node.args[0])] if placeholders.index(node.args[0]) < len(names) else "an input"
        # the value written back names the user's op: aten.t for t_(), aten.unsqueeze for unsqueeze_()
        srcs = [u.args[1] for u in node.users if u.target is aten.copy_.default and len(u.args) > 1]
        user_op = next((f"{s.target._schema.name.split('::')[-1]}_" for s in srcs
                        if isinstance(getattr(s, "target", None), torch._ops.OpOverload)), None)
        if user_op in (None, "as_strided_"):
            user_op = "resize_/as_strided_"
        elif user_op in ("t_", "permute_", "transpose_"):
            user_op = "t_/transpose_"
        raise CaptureError(f"ember.trace: the program changes the shape or strides of {what} in place "
                           f"({user_op}, traced as {op}); a static graph cannot change the caller's tensor. "
                           f"Use the out-of-place op and return its result, or run this function eagerly")


def untracked_writes(gm: torch.fx.GraphModule) -> set[int]:
    """Inputs (placeholder indices) whose final in-place update is one eager autograd does not
    record (made under torch.no_grad() or through `.data`: capture marks it `ember::untracked_update`,
    see frontend/capture_mode.py). Eager allows those on leaves that require grad, and they leave the
    tensor's gradient history as it was."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    out = set()
    for n in gm.graph.nodes:
        if n.target is aten.copy_.default and n.args[0] in placeholders:
            src = n.args[1]
            while isinstance(src, torch.fx.Node) and src.target is aten.copy.default:  # value of its 2nd arg
                src = src.args[1]
            if isinstance(src, torch.fx.Node) and str(src.target) == "ember.untracked_update.default":
                out.add(placeholders.index(n.args[0]))
    return out


# -- outputs that are inputs or views of them ----------------------------------------------------


@dataclass(frozen=True)
class ViewChain:
    """An output that eager returns as an alias: `steps` (fx view nodes, applied in order) on the
    root, which is graph input `index` (kind "input"), a closed-over tensor (kind "attr", `attr`),
    or another output (kind "output", `index` into the user outputs)."""

    kind: str
    index: int
    steps: tuple[torch.fx.Node, ...]
    attr: torch.Tensor | None = None

    def replay(self, root: torch.Tensor) -> torch.Tensor:
        t = root
        for node in self.steps:
            if node.target is operator.getitem:
                t = t[node.args[1]]
            elif node.target is aten.view.default:
                try:
                    t = t.view(node.args[1])
                except RuntimeError:  # traced where `reshape` gave a view; for these strides it copies
                    t = t.reshape(node.args[1])
            else:
                t = node.target(t, *node.args[1:], **node.kwargs)
        return t


def _is_view(node: torch.fx.Node) -> bool:
    op = node.target
    if node.op != "call_function" or not isinstance(op, torch._ops.OpOverload) or not op.is_view:
        return False
    if not node.args or not isinstance(node.args[0], torch.fx.Node):
        return False
    rest = (node.args[1:], node.kwargs)
    return not any(isinstance(x, torch.fx.Node) for x in pytree.tree_leaves(rest))


def output_views(gm: torch.fx.GraphModule) -> dict[int, ViewChain]:
    """User output index -> how eager aliases it (see the module doc). The outputs not listed are
    fresh tensors the graph computes. Mutation write-backs (`copy_` to a placeholder) are not user
    outputs and are ignored here."""
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    # functionalization gives an input updated in place a new node for its final value; views of
    # that node are views of the caller's tensor once the value is written back
    written: dict[torch.fx.Node, torch.fx.Node] = {}
    for n in gm.graph.nodes:
        if n.target is aten.copy_.default and n.args[0] in placeholders and isinstance(n.args[1], torch.fx.Node):
            dst, src = n.args[0].meta.get("val"), n.args[1].meta.get("val")
            if dst is not None and src is not None and (src.shape, src.dtype) == (dst.shape, dst.dtype):
                written[n.args[1]] = n.args[0]
    out_node = next(n for n in gm.graph.nodes if n.op == "output")
    outs = [n for n in pytree.tree_leaves(out_node.args[0]) if isinstance(n, torch.fx.Node)]
    computed = {n: k for k, n in enumerate(outs)}  # first output position of each node
    chains: dict[int, ViewChain] = {}
    for k, node in enumerate(outs):
        steps: list[torch.fx.Node] = []
        v = node
        while True:
            if v in written:
                chains[k] = ViewChain("input", placeholders.index(written[v]), tuple(reversed(steps)))
                break
            if v.op == "placeholder":
                chains[k] = ViewChain("input", placeholders.index(v), tuple(reversed(steps)))
                break
            if v.op == "get_attr":
                chains[k] = ViewChain("attr", -1, tuple(reversed(steps)), getattr(gm, v.target))
                break
            if steps and v in computed and not _is_view(v):  # a view of another (computed) output
                chains[k] = ViewChain("output", computed[v], tuple(reversed(steps)))
                break
            if _is_view(v):
                steps.append(v)
                v = v.args[0]
            elif (v.target is operator.getitem and isinstance(v.args[0], torch.fx.Node)
                  and _is_view(v.args[0])):  # one result of a multi-output view (split, unbind)
                steps += [v, v.args[0]]
                v = v.args[0].args[0]
            else:
                break
    # an "output" root must be computed by the graph, not replayed itself
    return {k: c for k, c in chains.items() if c.kind != "output" or c.index not in chains}


# -- outputs the static graph cannot return -----------------------------------------------------


def _traced(t: torch.Tensor) -> bool:
    """A tensor made during capture (functionalized / fake), as opposed to a real one the program
    closes over."""
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor) or torch._is_functional_tensor(t) or t.device.type == "meta"


def _tensors_inside(x: Any, depth: int = 0, seen: set[int] | None = None) -> bool:
    """Whether a tensor made during capture is reachable from `x` (attributes, containers), a few
    levels deep."""
    seen = set() if seen is None else seen
    if isinstance(x, torch.Tensor):
        return _traced(x)
    if depth > 4 or id(x) in seen or isinstance(x, (str, bytes, int, float, bool, complex, type(None))):
        return False
    seen.add(id(x))
    if isinstance(x, dict):
        items: list[Any] = list(x.values())
    elif isinstance(x, (list, tuple, set, frozenset)):
        items = list(x)
    else:
        items = list(getattr(x, "__dict__", {}).values())
        items += [getattr(x, s) for s in getattr(type(x), "__slots__", ()) if isinstance(s, str) and hasattr(x, s)]
    return any(_tensors_inside(y, depth + 1, seen) for y in items)


def check_outputs(out_leaves: Sequence[tuple[str, Any]], out_spec: pytree.TreeSpec | None) -> None:
    """Refuse outputs that hold tensors inside objects pytree does not flatten (the object built
    during capture, with fake tensors in it, would be returned on every call)."""
    if out_spec is None:
        return
    paths = [p for p, _ in pytree.tree_flatten_with_path(pytree.tree_unflatten(list(range(len(out_leaves))),
                                                                               out_spec))[0]]
    for path, (kind, value) in zip(paths, out_leaves):
        if kind == "const" and _tensors_inside(value):
            where = f"output{pytree.keystr(path)}" if path else "the output"
            raise CaptureError(
                f"ember.trace: {where} is a {type(value).__module__}.{type(value).__qualname__} holding tensors the "
                f"program computed, and it is not a pytree container: a static graph returns tensors only inside "
                f"containers "
                f"torch.utils._pytree flattens. Register the class with "
                f"torch.utils._pytree.register_pytree_node, return its tensors in a tuple/dict, or use "
                f"torch.compile(fn, backend=\"ember\")")


def drop_outputs(lowered: Lowered, drop: Collection[int]) -> dict[int, int]:
    """Remove the user outputs `drop` (replayed as views, see `output_views`) from the lowered
    graph, so no kernel computes them; returns old user-output index -> new index for the rest."""
    n = lowered.num_user_outputs
    keep = [k for k in range(n) if k not in drop]
    outs = lowered.graph.outputs
    lowered.graph.set_outputs([outs[k] for k in keep] + list(outs[n:]))
    lowered.num_user_outputs = len(keep)
    return {k: j for j, k in enumerate(keep)}
