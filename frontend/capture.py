"""Capture a PyTorch callable as a functional aten-level fx graph.

`make_fx` traces over fake tensors (the caller's tensors are never read or written), under
`torch.func.functionalize` (in-place updates of inputs become `copy_` nodes at the end of the graph,
which lowering turns into extra outputs), with ember's decomposition table (so the ops that reach
lowering form a small set). Module parameters and buffers are traced as inputs via
`torch.func.functional_call`, never baked in as constants.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._decomp import core_aten_decompositions, get_decompositions
from torch.fx.experimental.proxy_tensor import make_fx
from torch.utils import _pytree as pytree

aten = torch.ops.aten


def _decomposition_table() -> dict:
    table = dict(core_aten_decompositions())
    # Composites that core ATen keeps but ember wants as primitives it can fuse.
    table.update(get_decompositions([
        aten.native_layer_norm, aten._softmax, aten._log_softmax, aten.native_batch_norm,
        aten._native_batch_norm_legit, aten._native_batch_norm_legit_functional,
        aten._native_batch_norm_legit_no_training, aten.native_group_norm, aten.native_dropout,
        aten.hardtanh, aten.leaky_relu, aten.elu, aten.isinf, aten.repeat, aten.clamp.Tensor,
    ]))
    # Ops the IR has as primitives (or lowers to matmul) must not be decomposed further.
    for op in (aten.silu, aten.gelu, aten.sigmoid, aten.tanh, aten.mv, aten.dot, aten.addmm, aten.embedding):
        for overload in op.overloads():
            table.pop(getattr(op, overload), None)
    return table


DECOMPOSITIONS = _decomposition_table()


# How make_fx reports reading a tensor's values while tracing with fake tensors.
_DATA_DEPENDENT = ("data-dependent", "DataDependent", "item() cannot be called", "cannot be called on meta tensors")


class CaptureError(RuntimeError):
    """The program cannot be captured as a static graph (e.g. data-dependent control flow)."""


@dataclass
class Captured:
    """An fx graph whose placeholders are, in order: the tensor leaves of the user's (args, kwargs),
    then the module's parameters and buffers (`state_names`)."""

    gm: torch.fx.GraphModule
    in_spec: pytree.TreeSpec
    tensor_positions: list[int]          # which leaves of the flattened (args, kwargs) are tensors
    constants: dict[int, Any]            # the other leaves, baked into the graph
    state_names: list[str]               # parameter/buffer names, as placeholders after the user tensors
    out_spec: pytree.TreeSpec | None = None
    out_leaves: list[tuple[str, Any]] = field(default_factory=list)  # ("tensor", k) or ("const", value)


def _check_static(gm: torch.fx.GraphModule) -> None:
    """Fake tracing lets `.item()` and data-dependent shapes through as symbolic values; a static
    graph cannot hold them, so name the op that produced one."""
    symbolic = (torch.SymInt, torch.SymFloat, torch.SymBool)
    for node in gm.graph.nodes:
        for v in pytree.tree_leaves(node.meta.get("val")):
            if isinstance(v, symbolic) or (isinstance(v, torch.Tensor) and not all(
                    isinstance(s, int) for s in v.shape)):
                raise CaptureError(f"ember.trace: {node.target} gives a data-dependent value (e.g. .item(), "
                                   f"nonzero, or control flow on tensor values), which a static graph cannot hold")


def module_state(module: torch.nn.Module | None) -> dict[str, torch.Tensor]:
    if module is None:
        return {}
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def flat_function(fn: Callable, module: torch.nn.Module | None, leaves: list, in_spec, cap: Captured,
                  context: Callable[[], Any] = contextlib.nullcontext) -> Callable[..., list[torch.Tensor]]:
    """`fn` as a function of a flat list of tensors (the call's tensors, then the module's state),
    returning the flat list of output tensors; records the output structure in `cap`. `context`
    wraps the call (the symbolic trace rewrites F.linear there)."""

    def flat_fn(*tensors: torch.Tensor) -> list[torch.Tensor]:
        user, params = tensors[:len(cap.tensor_positions)], tensors[len(cap.tensor_positions):]
        flat = list(leaves)
        for i, t in zip(cap.tensor_positions, user):
            flat[i] = t
        a, kw = pytree.tree_unflatten(flat, in_spec)
        with context():
            if module is not None:
                out = torch.func.functional_call(module, dict(zip(cap.state_names, params)), a, kw)
            else:
                out = fn(*a, **kw)
        out_leaves, cap.out_spec = pytree.tree_flatten(out)
        outs: list[torch.Tensor] = []
        cap.out_leaves = []
        for leaf in out_leaves:
            if isinstance(leaf, torch.Tensor):
                cap.out_leaves.append(("tensor", len(outs)))
                outs.append(leaf)
            elif isinstance(leaf, (torch.SymInt, torch.SymFloat, torch.SymBool)):
                raise SymbolicTraceError("the program returns a size as a Python number")
            else:
                cap.out_leaves.append(("const", leaf))
        return outs

    return flat_fn


class SymbolicTraceError(RuntimeError):
    """A dynamic-shape trace cannot represent the program (e.g. it returns a size as a number)."""


def capture(fn: Callable, args: tuple, kwargs: dict | None = None) -> Captured:
    """Trace `fn(*args, **kwargs)` into an fx graph of functional aten ops (see module doc)."""
    module = fn if isinstance(fn, torch.nn.Module) else None
    leaves, in_spec = pytree.tree_flatten((tuple(args), dict(kwargs or {})))
    positions = [i for i, x in enumerate(leaves) if isinstance(x, torch.Tensor)]
    constants = {i: x for i, x in enumerate(leaves) if not isinstance(x, torch.Tensor)}
    state = module_state(module)
    cap = Captured(None, in_spec, positions, constants, list(state))  # type: ignore[arg-type]

    flat_fn = flat_function(fn, module, leaves, in_spec, cap)

    tensors = [leaves[i] for i in positions] + list(state.values())
    traced = torch.func.functionalize(flat_fn, remove="mutations")
    try:
        # no_grad: static mode captures the forward only; _allow_non_fake_inputs lets closed-over
        # tensors through, which make_fx records as get_attr constants.
        with torch.no_grad():
            gm = make_fx(traced, tracing_mode="fake", decomposition_table=DECOMPOSITIONS,
                         _allow_non_fake_inputs=True)(*tensors)
    except Exception as e:  # make_fx wraps many failure kinds; name the cause for the user
        if any(m in str(e) or m in type(e).__name__ for m in _DATA_DEPENDENT):
            raise CaptureError(f"ember.trace: the program has data-dependent behaviour "
                               f"(e.g. .item(), or control flow on tensor values): {e}") from e
        raise
    gm.graph.eliminate_dead_code()  # copy_ is impure, so input mutations survive
    _check_static(gm)
    cap.gm = gm
    return cap
