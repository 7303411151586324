"""`ember.custom_op`: a user operation that is one op to PyTorch and one IR node to ember.

Two flavors, told apart by `reference=`:

- a **Triton body** (`reference=` given): `fn` is elementwise `tl` arithmetic over its tensor
  parameters (grammar: ir/ops/custom.py); `reference` is the same function in torch, run by eager
  calls, the reference interpreter and the tests. The op is a pointwise IR op whose kernel text is
  the body, so it fuses with its neighbours like any pointwise op (and into row and matmul kernels as
  a prologue or epilogue). Inputs are promoted to one floating dtype (torch's promotion; integers to
  the default dtype) and broadcast; the result has that dtype.
- a **row body**: a Triton body with row reductions `tl.sum/max/min(expr, axis=-1, keep_dims=True)`
  or lengths `x.shape[k]` is a composite instead: its pointwise parts become Triton-body ops of their
  own and its reductions ember's (ir/ops/custom_row.py), so it is one row kernel with its neighbours.
  Its gradient is still the derivative of `reference` (or `vjp`): the parts have none.
- a **torch body** (no `reference`): `fn` is made of torch ops ember lowers; the op is a composite
  whose decomposition is `fn`'s IR (a custom normalization becomes one row kernel with its
  neighbours).

Parameters with a default (a float, int or bool) after the tensors are static attributes: node
attributes in the IR (a different value, a different kernel), constants in a Triton body, keywords
to `reference`, a torch body and `vjp`. The nodes a torch body or a VJP inlines are labelled with the
op's name (`Node.label`: explain's `KernelInfo.custom_ops`).

`vjp(*inputs, out, grad, **attrs) -> gradient per input (or None)`, in torch, is optional: without it the
gradient is the derivative of `reference` (of `fn` for a torch body). Either way it is traced into
IR ops where ember differentiates the op, and run by torch's autograd in eager calls. A gradient of
a broadcast shape is summed to its input's shape, as torch's autograd does.

The decorated object calls `torch.ops.ember_custom.<name>` (a `torch.library.custom_op`, with a fake
implementation and autograd), so make_fx and Dynamo see one opaque op, which the frontend lowers to
the registered IR op (frontend/lower_custom.py). Names are unique: a second op named `gated` (a
redefined function) is `gated_2`, so no compiled graph or kernel of the first is reused for it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch._prims_common import ELEMENTWISE_TYPE_PROMOTION_KIND, elementwise_dtypes

from ..codegen.lru import LRU
from ..frontend.lower_custom import add_rule, trace_ir
from ..ir import OPS, Graph, TensorType
from ..ir.ops.custom import ATTR_TYPES, RESERVED, TritonBody, register_composite, register_part, register_pointwise
from ..ir.ops.custom_row import RowProgram
from ..passes.decompose import decompose
from ..runtime.driver import compile_ir

NAMESPACE = "ember_custom"
_TRACES_KEPT = 64  # traced IR graphs per op (one per input signature)


class CustomOp:
    """A registered custom op; call it on tensors (see the module doc)."""

    def __init__(self, fn: Callable, reference: Callable | None = None, vjp: Callable | None = None,
                 name: str | None = None) -> None:
        self.fn, self.reference, self.user_vjp = fn, reference, vjp
        self.triton = reference is not None
        self.body = TritonBody(fn) if self.triton else None
        self.program = RowProgram(self.body) if self.triton and self.body.row else None
        params = list(inspect.signature(fn).parameters.values())
        if any(p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params):
            raise TypeError(f"custom op {fn.__name__}: takes positional parameters only (no *args, **kwargs)")
        tensors = [p for p in params if p.default is p.empty]
        # static attributes: the parameters with a default (a float, int or bool), after the tensors
        self.attrs = {p.name: p.default for p in params[len(tensors):]}
        if params[:len(tensors)] != tensors or any(type(v) not in ATTR_TYPES for v in self.attrs.values()):
            raise TypeError(f"custom op {fn.__name__}: tensor parameters first, then attributes with a float, "
                            f"int or bool default")
        if RESERVED & set(self.attrs):
            raise TypeError(f"custom op {fn.__name__}: reserved names {sorted(RESERVED & set(self.attrs))}")
        self.arity = len(tensors)
        self.name = _unique_name(name or fn.__name__)
        self._traces: LRU[tuple, Any] = LRU(_TRACES_KEPT)
        schema = "(" + ", ".join([f"Tensor x{i}" for i in range(self.arity)]
                                 + [f"{type(v).__name__} {k}" for k, v in self.attrs.items()]) + ") -> Tensor"
        self.library_op = torch.library.custom_op(f"{NAMESPACE}::{self.name}", self._eager, mutates_args=(),
                                                  schema=schema)
        self.library_op.register_fake(self._fake)
        self.library_op.register_autograd(self._backward, setup_context=self._setup)
        self.op = getattr(getattr(torch.ops, NAMESPACE), self.name).default
        if self.program is not None:
            for k, part in enumerate(self.program.parts):
                part.op = _unique_name(f"{self.name}_part{k}")
                register_part(part.op, part.body, _KernelImpl(part.op), self._final_vjp if part.final else None)
            self.opdef = register_composite(self.name, self.arity, None, self._reference_call, self._row_decompose,
                                            self._ir_vjp, doc=f"custom op (Triton row body {self.body.name})")
        elif self.triton:
            self.opdef = register_pointwise(self.name, self.body, self._reference_call, self._ir_vjp)
        else:
            self.opdef = register_composite(self.name, self.arity, self._infer, self._fresh_call, self._decompose,
                                            self._ir_vjp)
        add_rule(self.op, self.name, self.arity, list(self.attrs), promoted=self.triton)
        self.__doc__, self.__name__ = fn.__doc__, self.name

    def __call__(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        xs, attrs = self._bind(args, kwargs)
        return self.op(*xs, *attrs.values())

    def _bind(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """The tensors and every attribute's value (its default unless given), checked."""
        if len(args) > self.arity + len(self.attrs) or set(kwargs) - set(self.attrs):
            raise TypeError(f"custom op {self.name}: takes {self.arity} tensor(s) and the attributes "
                            f"{list(self.attrs)} (by keyword)")
        xs, given = args[:self.arity], dict(zip(self.attrs, args[self.arity:]))
        if len(xs) != self.arity or not all(isinstance(x, torch.Tensor) for x in xs):
            raise TypeError(f"custom op {self.name}: takes {self.arity} tensor(s)")
        if set(given) & set(kwargs):
            raise TypeError(f"custom op {self.name}: attribute {sorted(set(given) & set(kwargs))} given twice")
        attrs = dict(self.attrs)
        for k, v in {**given, **kwargs}.items():
            attrs[k] = _attr_value(self.name, k, v, type(self.attrs[k]))
        return xs, attrs

    def _split(self, args: tuple) -> tuple[tuple, dict]:
        """torch.library's positional call (tensors, then attributes) as tensors and attributes."""
        return args[:self.arity], dict(zip(self.attrs, args[self.arity:]))

    def __repr__(self) -> str:
        flavor = "Triton row" if self.program else "Triton" if self.triton else "torch"
        return f"<ember custom op {self.name} ({flavor} body)>"

    # -- torch: eager implementation, fake implementation, autograd ---------------------------------
    def _reference_call(self, *xs: torch.Tensor, **attrs: Any) -> torch.Tensor:
        """The reference on inputs promoted to the op's dtype, checked to give the op's type."""
        dtype = _promoted(xs)
        shape = torch.broadcast_shapes(*(x.shape for x in xs))
        out = self.reference(*(x.to(dtype) for x in xs), **attrs)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(shape):
            raise TypeError(f"custom op {self.name}: reference must return one tensor of the broadcast shape "
                            f"{list(shape)}, got {getattr(out, 'shape', type(out).__name__)}")
        return out.to(dtype)

    def _fresh_call(self, *xs: torch.Tensor, **attrs: Any) -> torch.Tensor:
        """`fn` (torch body), its result copied when it aliases an input (a custom op's may not)."""
        out = self.fn(*xs, **attrs)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"custom op {self.name}: must return one tensor, got {type(out).__name__}")
        storages = {x.untyped_storage().data_ptr() for x in xs if x.device.type != "meta" and not _is_fake(x)}
        aliased = any(out is x for x in xs) or (not _is_fake(out) and out.untyped_storage().data_ptr() in storages)
        return out.clone() if aliased else out

    def _eager(self, *args: Any) -> torch.Tensor:
        xs, attrs = self._split(args)
        out = self._reference_call(*xs, **attrs) if self.triton else self._fresh_call(*xs, **attrs)
        return out.clone() if any(out is x for x in xs) else out

    def _fake(self, *args: Any) -> torch.Tensor:
        xs, attrs = self._split(args)
        if self.triton:
            return xs[0].new_empty(torch.broadcast_shapes(*(x.shape for x in xs)), dtype=_promoted(xs))
        return torch.empty_like(self.fn(*xs, **attrs), memory_format=torch.contiguous_format)

    def _setup(self, ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        xs, ctx.attrs = self._split(inputs)
        ctx.save_for_backward(*xs, output)

    def _backward(self, ctx: Any, grad: torch.Tensor) -> tuple:
        *xs, out = ctx.saved_tensors
        return tuple(self._gradients(xs, out, grad, ctx.attrs)) + (None,) * len(self.attrs)

    def _gradients(self, xs: list, out: torch.Tensor, grad: torch.Tensor, attrs: dict) -> list:
        """The gradient of each input (None: none), each of its input's shape and dtype."""
        if self.user_vjp is not None:
            grads = self.user_vjp(*xs, out, grad, **attrs)
            grads = list(grads) if isinstance(grads, (tuple, list)) else [grads]
            if len(grads) != len(xs):
                raise TypeError(f"custom op {self.name}: vjp returned {len(grads)} gradient(s) for {len(xs)} inputs")
        else:
            leaves = [x.detach().requires_grad_(x.is_floating_point()) for x in xs]
            with torch.enable_grad():
                o = self._reference_call(*leaves, **attrs) if self.triton else self.fn(*leaves, **attrs)
            wrt = [x for x in leaves if x.requires_grad]
            found = iter(torch.autograd.grad(o, wrt, grad, allow_unused=True) if o.requires_grad else [None] * len(wrt))
            grads = [next(found) if x.requires_grad else None for x in leaves]
        return [None if gr is None or not x.is_floating_point() else gr.sum_to_size(x.shape).to(x.dtype)
                for x, gr in zip(xs, grads)]

    # -- IR: type rule, decomposition, VJP rule -------------------------------------------------------
    def _traced(self, key: tuple, fn: Callable, types: list[TensorType], what: str) -> Any:
        hit = self._traces.get(key)
        if hit is None:
            hit = self._traces[key] = fn(types, what)
        return hit

    def _body_graph(self, types: list[TensorType], attrs: dict) -> Graph:
        def build(types, what):
            # decomposed here: the decompose pass meets this op's nodes once, not the composites
            # (`mean`) of the body it inlines
            g = decompose(trace_ir(lambda *xs: self._fresh_call(*xs, **attrs), types, what))
            if len(g.outputs) != 1:
                raise TypeError(f"{what}: must return one tensor")
            return g
        key = ("body", *types, *attrs.items())
        return self._traced(key, build, types, f"custom op {self.name}")

    def _infer(self, types: list[TensorType], /, **attrs: Any) -> TensorType:
        return self._body_graph(types, attrs).outputs[0].type

    def _decompose(self, g: Graph, /, *inputs: Any, **attrs: Any) -> Any:
        return g.inline(self._body_graph([v.type for v in inputs], attrs), list(inputs), label=self.name)[0]

    def _row_decompose(self, g: Graph, /, *inputs: Any, **attrs: Any) -> Any:
        def build(types, what):
            body = Graph()
            xs = [body.add_input(t) for t in types]
            body.set_outputs([self.program.build(body, xs, attrs)])  # (the op's type: the final part's)
            return body

        key = ("row", *(v.type for v in inputs), *attrs.items())
        template = self._traced(key, build, [v.type for v in inputs], f"custom op {self.name}")
        return g.inline(template, list(inputs), label=self.name)[0]

    def _final_vjp(self, g: Graph, inputs: list, out: Any, ct: Any, /, **attrs: Any) -> list:
        """The VJP of a row body's final part (ir/ops/custom_row.py): the op's, for its first inputs (the
        op's tensors); none for the reductions it reads (so none reaches the steps before it)."""
        grads = self._ir_vjp(g, inputs[:self.arity], out, ct, **{k: attrs[k] for k in self.attrs})
        return grads + [None] * (len(inputs) - self.arity)

    def _ir_vjp(self, g: Graph, inputs: list, out: Any, ct: Any, /, **attrs: Any) -> list:
        types = [v.type for v in inputs] + [out.type, ct.type]

        def build(types, what):
            wrt: list[int] = []

            def bwd(*ts):
                grads = self._gradients(list(ts[:self.arity]), ts[self.arity], ts[self.arity + 1], attrs)
                wrt[:] = [i for i, gr in enumerate(grads) if gr is not None]
                return [gr for gr in grads if gr is not None]

            return trace_ir(bwd, types, what), tuple(wrt)

        key = ("vjp", *types, *attrs.items())
        graph, wrt = self._traced(key, build, types, f"the gradient of custom op {self.name}")
        grads = g.inline(graph, list(inputs) + [out, ct], label=f"{self.name}.vjp")
        result: list = [None] * len(inputs)
        for i, gr in zip(wrt, grads):
            result[i] = gr
        return result


class _KernelImpl:
    """The reference implementation of a row body's part (a pointwise Triton-body op with no torch
    form): its own kernel, compiled by ember for each input signature. The reference interpreter and
    constant folding call it; the op's `reference` checks the whole op."""

    def __init__(self, op: str) -> None:
        self.op = op
        self._exes: LRU[tuple, Any] = LRU(_TRACES_KEPT)

    def __call__(self, *xs: torch.Tensor, **attrs: Any) -> torch.Tensor:
        key = (*((tuple(x.shape), x.dtype, x.device) for x in xs), *attrs.items())
        exe = self._exes.get(key)
        if exe is None:
            g = Graph()
            g.set_outputs([g.add(self.op, [g.add_input(TensorType(tuple(x.shape), x.dtype)) for x in xs], **attrs)])
            exe = self._exes[key] = compile_ir(g, name=self.op)
        return exe([x.contiguous() for x in xs])[0]


def custom_op(fn: Callable | None = None, *, reference: Callable | None = None, vjp: Callable | None = None,
              name: str | None = None) -> Any:
    """Declare a custom op (see the module doc); usable bare (`@ember.custom_op`, a torch body) or
    with arguments (`@ember.custom_op(reference=..., vjp=...)`)."""
    if fn is None:
        return lambda f: CustomOp(f, reference, vjp, name)
    return CustomOp(fn, reference, vjp, name)


def _attr_value(name: str, key: str, value: Any, kind: type) -> Any:
    """`value` as an attribute of type `kind` (an int is a float attribute's value; a bool is no int's)."""
    if kind is float and type(value) in (int, float):
        return float(value)
    if type(value) is not kind:
        raise TypeError(f"custom op {name}: attribute {key} takes a {kind.__name__}, got {value!r}")
    return value


def _promoted(xs: tuple) -> torch.dtype:
    dtype = elementwise_dtypes(*xs, type_promotion_kind=ELEMENTWISE_TYPE_PROMOTION_KIND.DEFAULT)[1]
    return dtype if dtype.is_floating_point else torch.get_default_dtype()


def _is_fake(t: torch.Tensor) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor)


def _unique_name(name: str) -> str:
    """`name`, or `name_2`, `name_3`, ...: free both as an IR op and as a torch op of NAMESPACE."""
    if not name.isidentifier() or name.startswith("_"):
        raise ValueError(f"custom op name {name!r}: use an identifier that does not start with '_'")
    taken = lambda n: n in OPS or hasattr(getattr(torch.ops, NAMESPACE), n)  # noqa: E731
    k, candidate = 1, name
    while taken(candidate):
        k += 1
        candidate = f"{name}_{k}"
    return candidate
