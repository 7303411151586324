"""aten -> IR lowering: the rule table, the helpers rules share, the driver and the extern fallback.

`LOWERINGS` maps each aten overload to a rule `rule(L, node, a) -> Value | list[Value]`, where `L` is
the `Lowerer` (it appends IR nodes), `node` the fx node (its meta['val'] is the fake result, giving
torch's output shape and dtype) and `a` the op's arguments bound by schema name (`a.self`, `a.dim`)
with fx nodes replaced by IR values. The rules live in the `lower_*` modules, one per op family.
A rule raises `Fallback` to decline a call; any op without a rule, declined, or touching a dtype
ember cannot compile becomes an `extern` node that calls the torch op, so no program is refused.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch._prims_common import ELEMENTWISE_TYPE_PROMOTION_KIND, elementwise_dtypes
from torch.fx.node import map_arg

from ..ir import Graph, TensorType, Value
from ..ir.ops.extern import COMPLEX, INPUT
from ..ir.printer import format_attr
from ..ir.types import COMPILABLE_DTYPES
from .void_ops import is_void, lower_void

aten = torch.ops.aten
Rule = Callable[..., Any]
LOWERINGS: dict[torch._ops.OpOverload, Rule] = {}


def register(*ops: torch._ops.OpOverload) -> Callable[[Rule], Rule]:
    def deco(rule: Rule) -> Rule:
        for op in ops:
            if op in LOWERINGS:
                raise ValueError(f"two lowerings for {op}")
            LOWERINGS[op] = rule
        return rule

    return deco


def overloads(packet: Any, *names: str) -> list[torch._ops.OpOverload]:
    """The named overloads of an op that exist in this torch version (rules stay valid across 2.11+)."""
    return [getattr(packet, n) for n in names if n in packet.overloads()]


class Fallback(Exception):
    """Raised by a rule that cannot lower this particular call; the op runs as an extern."""


class LoweringError(RuntimeError):
    """A bug or an unrepresentable program: the lowered IR would disagree with torch."""


class Args(dict):
    """Arguments bound by schema name, readable as attributes."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


def bind(op: torch._ops.OpOverload, args: tuple, kwargs: dict) -> Args:
    a = Args()
    for i, arg in enumerate(op._schema.arguments):
        if i < len(args) and not arg.kwarg_only:
            a[arg.name] = args[i]
        elif arg.name in kwargs:
            a[arg.name] = kwargs[arg.name]
        else:
            a[arg.name] = arg.default_value if arg.has_default_value() else None
    return a


# -- helpers shared by rules --------------------------------------------------------------------


def out_val(node: torch.fx.Node) -> torch.Tensor:
    return node.meta["val"]


def out_dtype(node: torch.fx.Node) -> torch.dtype:
    return node.meta["val"].dtype


def out_shape(node: torch.fx.Node) -> tuple[int, ...]:
    return tuple(int(s) for s in node.meta["val"].shape)


def typed(value: Any, dtype: torch.dtype) -> Any:
    """A Python scalar of the kind `dtype` holds, so `full` attrs print and parse exactly."""
    if dtype == torch.bool:
        return bool(value)
    if dtype.is_floating_point:
        return float(value)
    return int(value)


def promote(*xs: Any) -> torch.dtype:
    """torch's default type promotion over IR values and Python scalars (0-dim values count as
    scalars of their category, as in torch)."""
    stand_ins = [torch.empty((1,) * min(x.type.rank, 1), dtype=x.dtype, device="meta") if isinstance(x, Value)
                 else x for x in xs if x is not None]
    return elementwise_dtypes(*stand_ins, type_promotion_kind=ELEMENTWISE_TYPE_PROMOTION_KIND.DEFAULT)[1]


def norm_dim(dim: int, rank: int) -> int:
    r = max(rank, 1)
    if not -r <= dim < r:
        raise LoweringError(f"dim {dim} out of range for rank {rank}")
    return dim % r


def norm_dims(dims: Any, rank: int) -> tuple[int, ...]:
    """None or [] mean every dim; negative dims wrap; 0-dim tensors reduce over nothing."""
    if rank == 0:
        return ()
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return tuple(range(rank))
    if isinstance(dims, int):
        dims = [dims]
    return tuple(sorted({norm_dim(d, rank) for d in dims}))


# -- the lowerer ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RandomSeed:
    """A trailing graph input that takes a fresh 0-dim int64 seed from torch's default generator (of
    `device`) at every call: how random ops (frontend/lower_random.py) follow `torch.manual_seed`."""

    device: torch.device

    def draw(self) -> torch.Tensor:
        return torch.randint(0, 2**63 - 1, (), dtype=torch.int64, device=self.device)


@dataclass
class Lowered:
    graph: Graph
    num_user_outputs: int
    mutated_inputs: list[int] = field(default_factory=list)   # graph output num_user_outputs+k updates input k
    lifted: list[torch.Tensor | RandomSeed] = field(default_factory=list)  # the last graph inputs

    @property
    def constants(self) -> list[torch.Tensor]:
        """The trailing inputs of one call: lifted tensors, and a fresh seed per `RandomSeed`."""
        return [t.draw() if isinstance(t, RandomSeed) else t for t in self.lifted]


class Lowerer:
    def __init__(self, gm: torch.fx.GraphModule, input_names: list[str] | None = None):
        self.gm = gm
        self.g = Graph()
        self.env: dict[torch.fx.Node, Any] = {}
        self.input_names = input_names or []
        self.constants: list[torch.Tensor | RandomSeed] = []
        self.seeds: dict[torch.device, Value] = {}
        self.streams = 0

    def lift(self, t: torch.Tensor, name: str) -> Value:
        """A tensor the program closes over becomes a trailing graph input; its value travels with the
        program (fx lists placeholders first, so lifted inputs always follow the traced ones)."""
        self.constants.append(t)
        return self.g.add_input(TensorType.of(t), name)

    def seed(self, device: torch.device) -> Value:
        """The graph's random seed input on `device` (one per graph, fed per call; see RandomSeed)."""
        if device not in self.seeds:
            self.constants.append(RandomSeed(device))
            self.seeds[device] = self.g.add_input(TensorType((), torch.int64), "seed")
        return self.seeds[device]

    def stream(self) -> int:
        """A fresh stream id: each random op of a graph draws independent numbers from the one seed."""
        self.streams += 1
        return self.streams - 1

    # IR building helpers ----------------------------------------------------------------------
    def add(self, op: str, inputs: list[Value], **attrs: Any) -> Any:
        return self.g.add(op, inputs, **attrs)

    def const(self, value: Any, dtype: torch.dtype, shape: tuple[int, ...] = ()) -> Value:
        return self.g.add("full", [], shape=tuple(shape), value=typed(value, dtype), dtype=dtype)

    def cast(self, v: Value, dtype: torch.dtype) -> Value:
        return v if v.dtype == dtype else self.g.add("convert", [v], dtype=dtype)

    def operand(self, x: Any, dtype: torch.dtype) -> Value:
        """An IR value of `dtype` for a tensor operand or a Python scalar (which becomes a 0-dim full)."""
        if isinstance(x, Value):
            return self.cast(x, dtype)
        if isinstance(x, (bool, int, float)):
            return self.const(x, dtype)
        raise Fallback(f"operand {x!r} is not a tensor or real scalar")

    def reshape(self, v: Value, shape: tuple[int, ...]) -> Value:
        return v if v.shape == tuple(shape) else self.g.add("reshape", [v], shape=tuple(shape))

    def expand(self, v: Value, shape: tuple[int, ...]) -> Value:
        return v if v.shape == tuple(shape) else self.g.add("expand", [v], shape=tuple(shape))

    # driver -----------------------------------------------------------------------------------
    def run(self) -> Lowered:
        placeholders: list[torch.fx.Node] = []
        mutations: dict[int, Value] = {}
        outputs: list[Value] = []
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                i = len(placeholders)
                placeholders.append(node)
                name = self.input_names[i] if i < len(self.input_names) else None
                self.env[node] = self.g.add_input(TensorType.of(node.meta["val"]), name)
            elif node.op == "get_attr":
                t = getattr(self.gm, node.target)
                fresh = all(u.target is aten.lift_fresh_copy.default for u in node.users)
                if fresh and t.dim() == 0 and t.dtype in COMPILABLE_DTYPES and t.device.type != "meta":
                    # torch.tensor(2.0) written in the program: a true constant, folded into the IR.
                    # (Tensors the program closes over stay inputs: the caller may update them.)
                    self.env[node] = self.const(t.item(), t.dtype)
                else:
                    self.env[node] = self.lift(t, node.target.replace(".", "_"))
            elif node.op == "call_function":
                if node.target is operator.getitem:
                    self.env[node] = self.env[node.args[0]][node.args[1]]
                elif node.target is aten.copy_.default and node.args[0].op == "placeholder":
                    # functionalization's write-back of a mutated input: becomes an extra output.
                    dst = self.env[node.args[0]]
                    src = self.cast(self.env[node.args[1]], dst.dtype)
                    self.env[node] = self.expand(src, dst.shape)
                    mutations[placeholders.index(node.args[0])] = self.env[node]
                else:
                    self.env[node] = self.lower_node(node)
            elif node.op == "output":
                outputs = [self.env[n] for n in torch.utils._pytree.tree_leaves(node.args[0])]
            else:
                raise LoweringError(f"unexpected fx node {node.op} {node.target}")
        mutated = sorted(mutations)
        self.g.set_outputs(outputs + [mutations[i] for i in mutated])
        return Lowered(self.g, len(outputs), mutated, self.constants)

    def lower_node(self, node: torch.fx.Node) -> Any:
        op = node.target
        if not isinstance(op, torch._ops.OpOverload):
            raise LoweringError(f"cannot lower call to {op!r}: ember captures aten ops only")
        op = _functional_variant(op)
        args = map_arg(node.args, lambda n: self.env[n])
        kwargs = map_arg(node.kwargs, lambda n: self.env[n])
        val = node.meta.get("val")
        if val is None and is_void(op):  # a check such as _linalg_check_errors (frontend/void_ops.py)
            return lower_void(self, node, op, args, kwargs)
        rule = LOWERINGS.get(op)
        if rule is not None and _compilable(args, kwargs, val):
            try:
                return self._match(node, rule(self, node, bind(op, args, kwargs)), val)
            except Fallback:
                pass
        strided = {self.env[n] for n in node.all_input_nodes if isinstance(self.env.get(n), Value)
                   and isinstance(n.meta.get("val"), torch.Tensor) and not n.meta["val"].is_contiguous()}
        return self.extern(op, args, kwargs, val, strided)

    def _match(self, node: torch.fx.Node, out: Any, val: Any) -> Any:
        """Check a rule's result against torch's (shape must agree; dtype is converted to torch's)."""
        if isinstance(val, (list, tuple)):
            return [o if v is None else self._match(node, o, v) for o, v in zip(out, val)]
        if tuple(out.shape) != tuple(val.shape):
            raise LoweringError(f"lowering of {node.target} gives {out.type} but torch gives shape "
                                f"{list(val.shape)}")
        return self.cast(out, val.dtype)

    def extern(self, op: torch._ops.OpOverload, args: tuple, kwargs: dict, val: Any,
               strided: set[Value] = frozenset(), passthrough: list[Value] = ()) -> Any:
        """A call of the torch op; `strided`: values torch saw non-contiguous; `passthrough`: values
        returned unchanged after the call (a check's checked values: frontend/void_ops.py). See
        ir/ops/extern.py."""
        inputs: list[Value] = []

        def template(x: Any) -> Any:
            if isinstance(x, Value):
                inputs.append(x)
                return (INPUT, len(inputs) - 1)
            if isinstance(x, (list, tuple)):
                return type(x)(template(y) for y in x)
            if isinstance(x, complex):  # not an IR attribute (ir/ops/extern.py)
                return (COMPLEX, x.real, x.imag)
            try:
                format_attr(x)
            except TypeError:
                raise LoweringError(f"{op}: argument {x!r} cannot be recorded for an extern call") from None
            return x

        targs = tuple(template(x) for x in args)
        tkwargs = {k: template(v) for k, v in kwargs.items()}
        layout = {"strided": tuple(i for i, v in enumerate(inputs) if v in strided)}
        extra = {"passthrough": len(passthrough)} if passthrough else {}
        out = self.g.add("extern", inputs + list(passthrough), target=str(op), args=targs, kwargs=tkwargs,
                         **(layout if layout["strided"] else {}), **extra)
        if isinstance(val, (list, tuple)):
            return out if isinstance(out, list) else [out]
        return out


def _functional_variant(op: torch._ops.OpOverload) -> torch._ops.OpOverload:
    """`aten.clamp_min_.Tensor` -> `aten.clamp_min.Tensor`. Functionalization removes in-place ops on
    the program's tensors, but C++ composites (e.g. cosine_similarity) can still update their own
    temporaries in place; the IR has value semantics, so the functional op computes the same value
    (later fx nodes read the in-place node's result, never the stale input)."""
    name = op._schema.name.split("::")[-1]
    if not name.endswith("_") or name.endswith("__") or not op._schema.is_mutable:
        return op
    packet = getattr(torch.ops.aten, name[:-1], None) if op.namespace == "aten" else None
    overload = op._overloadname
    if packet is None or overload not in packet.overloads():
        return op
    return getattr(packet, overload)


def _compilable(args: tuple, kwargs: dict, val: Any) -> bool:
    values: list[Any] = []
    torch.utils._pytree.tree_map(values.append, (args, kwargs))
    metas = [v for v in torch.utils._pytree.tree_leaves(val) if isinstance(v, torch.Tensor)]
    if any(isinstance(v, complex) for v in values):
        return False
    return (all(v.dtype in COMPILABLE_DTYPES for v in values if isinstance(v, Value))
            and all(m.dtype in COMPILABLE_DTYPES for m in metas))


def load_rules() -> dict:
    """Import every rule module (each registers its rules in `LOWERINGS`, imported late: they import
    this module); returns `LOWERINGS`."""
    from . import (  # noqa: F401
        lower_attention,
        lower_conv,
        lower_index,
        lower_interpolate,
        lower_layout,
        lower_matmul,
        lower_pointwise,
        lower_pool,
        lower_random,
        lower_reduction,
        lower_scan,
        lower_scatter,
        lower_search,
    )

    return LOWERINGS


def lower(gm: torch.fx.GraphModule, input_names: list[str] | None = None) -> Lowered:
    """Lower a captured fx graph to an IR graph (see module doc)."""
    from .refunctionalize import refunctionalize

    load_rules()

    return Lowerer(refunctionalize(gm), input_names).run()
