"""PyTorch's own derivative of an `extern` call, as IR: the VJP provider of ir/ops/extern.py.

For one extern call (its target, argument templates, input and output types, which inputs need a
gradient and which outputs have a cotangent), `make_fx` traces `torch.autograd.grad` of that single
op on fake tensors of those types, with ember's decompositions: the aten ops of torch's derivative
formula (`convolution_backward`, `max_pool2d_with_indices_backward`, the pointwise ops of atan's
derivative, ...). The op's own call in the trace is replaced by the extern's outputs, which are
inputs of the VJP graph: the derivative reads the values the forward computed (max-pool's indices,
so ties get the gradient where torch's forward put it; a random op is not drawn again) and the
forward does not run twice. `lower` turns the rest into IR: ember kernels where ember lowers an op,
externs otherwise. Graphs are cached per call signature. When a decomposition reads tensor values
(`take`'s bounds check), the derivative is traced again with its aten ops kept whole (externs).

An op whose derivative cannot be traced this way (`embedding_bag`'s forward-only variant) gets one
that torch computes at run time (frontend/eager_derivatives.py).

Refused with a NotImplementedError naming the op: an op torch cannot differentiate either, a
derivative with data-dependent shapes (an index by a boolean mask), and a custom (non-aten) op
whose derivative gives no gradient for an input that needs one: its autograd may follow arguments
capture decided for detached inputs (linear_cross_entropy's `compute_input_grad`), so the missing
gradient could be a wrong zero. A complex input's gradient is torch's too (its backward ops on
complex values lower to externs: IR ops take no complex dtype).

Fake tensors are contiguous (the runtime passes an extern's inputs contiguous, except its `strided`
ones) and on the CPU unless the call names a device; a derivative that reads an input's memory
layout (`as_strided`'s) is refused for a `strided` input, whose layout the IR does not record.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
from torch._subclasses.fake_tensor import FakeTensorMode

from ..ir import TensorType
from ..ir.ops.extern import ExternVJP, fill_template, resolve_target, set_vjp_provider
from .decompositions import DECOMPOSITIONS
from .eager_derivatives import EAGER_DERIVATIVES
from .lowering import lower
from .tracing import make_fx

aten = torch.ops.aten

# Ops whose derivative reads the input's strides and storage offset, not only its values.
_GEOMETRY = {"aten.as_strided.default", "aten.as_strided_copy.default", "aten.as_strided_scatter.default"}

# torch's messages for an op that has no derivative
_NO_DERIVATIVE = ("derivative for", "no autograd formula", "autograd kernel was not registered",
                  "does not have a grad_fn")
# torch's exceptions for a trace that needs tensor values (a decomposition's checks, a boolean mask)
_DATA_DEPENDENT = ("DataDependentOutputException", "DynamicOutputShapeException", "GuardOnDataDependentSymNode")

_CACHE: OrderedDict[Any, ExternVJP] = OrderedDict()  # least recently used first
_CACHE_SIZE = 512
_CACHE_LOCK = threading.Lock()  # programs compile in several threads (tests/test_threads.py)


def extern_vjp(target: str, args: Any, kwargs: dict, in_types: Sequence[TensorType], out_types: Sequence[TensorType],
               needs: Sequence[bool], cts: Sequence[int], strided: Sequence[int] = ()) -> ExternVJP:
    """The VJP graph of one extern call (see the module doc and `ir.ops.extern.ExternVJP`)."""
    key = (target, _freeze(args), _freeze(kwargs), tuple(in_types), tuple(out_types), tuple(needs), tuple(cts),
           tuple(strided))
    with _CACHE_LOCK:
        try:
            hit = _CACHE.get(key)
        except TypeError:  # an unhashable attribute: build it every time
            key, hit = None, None
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    vjp = _build(target, args, kwargs, list(in_types), list(out_types), needs, list(cts), strided)
    if key is not None:
        with _CACHE_LOCK:
            _CACHE[key] = vjp
            if len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return vjp


def _build(target: str, args: Any, kwargs: dict, in_types: list[TensorType], out_types: list[TensorType],
           needs: Sequence[bool], cts: list[int], strided: Sequence[int]) -> ExternVJP:
    wrt = [i for i, (t, need) in enumerate(zip(in_types, needs))
           if need and (t.dtype.is_floating_point or t.dtype.is_complex)]
    what = f"cannot differentiate through op 'extern' (target {target})"
    if target in _GEOMETRY and any(i in strided for i in wrt):
        raise NotImplementedError(f"{what}: its derivative depends on the memory layout of an input torch saw "
                                  f"non-contiguous, which the IR does not record")
    op = resolve_target(target)
    n_in, n_out = len(in_types), len(out_types)
    got: list[int] = []  # the inputs of `wrt` torch's derivative reaches (the traced outputs)

    def derivative(*ts: torch.Tensor) -> list[torch.Tensor]:
        xs = [t.detach().requires_grad_(i in wrt) for i, t in enumerate(ts[:n_in])]
        with torch.enable_grad():
            out = op(*fill_template(tuple(args), xs), **fill_template(dict(kwargs), xs))
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        pairs = [(outs[k], c) for k, c in zip(cts, ts[n_in + n_out:])
                 if isinstance(outs[k], torch.Tensor) and outs[k].requires_grad]
        if not pairs:  # torch marks the outputs non-differentiable: no gradient flows
            return []
        grads = torch.autograd.grad([o for o, _ in pairs], [xs[i] for i in wrt], [c for _, c in pairs],
                                    allow_unused=True)
        got[:] = [i for i, gr in zip(wrt, grads) if gr is not None]
        return [gr for gr in grads if gr is not None]

    if target in EAGER_DERIVATIVES:  # torch differentiates it at run time (frontend/eager_derivatives.py)
        derivative, got[:] = EAGER_DERIVATIVES[target](op, args, kwargs, n_in, cts, wrt)
    device = _device((args, kwargs))
    with FakeTensorMode(allow_non_fake_inputs=True):
        fakes = [torch.empty(t.shape, dtype=t.dtype, device=device)
                 for t in in_types + out_types + [out_types[k] for k in cts]]
    try:
        try:
            gm = make_fx(derivative, tracing_mode="fake", decomposition_table=DECOMPOSITIONS)(*fakes)
        except Exception as e:  # a decomposition read tensor values (`take`'s bounds check): keep ops whole
            if type(e).__name__ not in _DATA_DEPENDENT:
                raise
            gm = make_fx(derivative, tracing_mode="fake")(*fakes)
        _reuse_forward(gm, op, n_in, what)
        lowered = lower(gm)
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        if any(m in str(e) for m in _NO_DERIVATIVE):
            raise NotImplementedError(f"{what}: PyTorch has no derivative for {target} either ({first})") from e
        if type(e).__name__ in _DATA_DEPENDENT:
            raise NotImplementedError(f"{what}: PyTorch's derivative of it reads tensor values (a data-dependent "
                                      f"shape: {type(e).__name__}: {first})") from e
        raise
    if lowered.lifted or lowered.mutated_inputs:
        raise NotImplementedError(f"{what}: torch's derivative reads tensor constants or random numbers, or updates "
                                  f"an input in place")
    if op.namespace != "aten" and set(got) != set(wrt):
        # A custom op's autograd may follow arguments decided from `requires_grad` at capture, where
        # inputs are detached (linear_cross_entropy's `compute_input_grad`): a missing gradient may
        # be a wrong zero, so it is refused rather than returned.
        missing = sorted(set(wrt) - set(got))
        raise NotImplementedError(f"{what}: torch's derivative of this custom op gives no gradient for input(s) "
                                  f"{missing}, maybe because capture called it for inputs that do not require grad; "
                                  f"run it eagerly")
    return ExternVJP(lowered.graph, tuple(got))


def _reuse_forward(gm: torch.fx.GraphModule, op: Any, n_in: int, what: str) -> None:
    """Rewrite the trace so that the derivative reads the extern's outputs (placeholders after the
    inputs) instead of the op's call, and instead of the calls a derivative formula makes again with
    the same arguments (erfinv's), unless the op is random; drop `detach`es (nothing in a VJP graph
    is differentiated again)."""
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is aten.detach.default:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    calls = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is op]
    random = isinstance(op, torch._ops.OpOverload) and torch.Tag.nondeterministic_seeded in op.tags
    if not calls and random:
        raise NotImplementedError(f"{what}: torch's derivative would draw its random numbers again")
    outputs = [n for n in gm.graph.nodes if n.op == "placeholder"][n_in:]
    same = (calls[0].args, calls[0].kwargs) if calls else None
    for call in calls[:1] + ([] if random else calls[1:]):
        if (call.args, call.kwargs) != same:
            continue
        if isinstance(call.meta.get("val"), (list, tuple)):
            for user in list(call.users):  # getitem(call, k)
                user.replace_all_uses_with(outputs[user.args[1]])
                gm.graph.erase_node(user)
        else:
            call.replace_all_uses_with(outputs[0])
        gm.graph.erase_node(call)
    gm.graph.eliminate_dead_code()
    gm.recompile()


def _device(attrs: Any) -> torch.device:
    """The device the call names (a factory's `device=`), else the CPU."""
    found: list[torch.device] = []
    torch.utils._pytree.tree_map(lambda x: found.append(x) if isinstance(x, torch.device) else None, attrs)
    return found[0] if found else torch.device("cpu")


def _freeze(x: Any) -> Any:
    """A hashable stand-in of an attribute template (lists and dicts become tuples)."""
    if isinstance(x, (list, tuple)):
        return (type(x).__name__, tuple(_freeze(y) for y in x))
    if isinstance(x, dict):
        return ("dict", tuple(sorted((k, _freeze(v)) for k, v in x.items())))
    return x


set_vjp_provider(extern_vjp)
