"""The op registry: one `OpDef` per primitive, holding every rule for it side by side.

An entry carries its kind, its type rule (`infer`), its reference implementation in torch (`impl`)
and, depending on kind, its Triton expression (`triton`, pointwise ops) or its decomposition into
other IR ops (`decompose`, composite ops lowered before codegen). Later issues add `vjp` and `cost`
to the same entry, so adding an op stays one entry in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

KINDS = ("pointwise", "reduction", "matmul", "layout", "constant", "composite", "extern")


@dataclass
class OpDef:
    name: str
    kind: str
    # infer(in_types, **attrs) -> TensorType | list[TensorType]
    infer: Callable[..., Any]
    # impl(*tensors, **attrs) -> torch.Tensor | tuple: the reference semantics, in torch.
    impl: Callable[..., Any]
    # pointwise: triton(args: list[str], dtypes: list[dtype], out: dtype, **attrs) -> expression text
    triton: Callable[..., str] | None = None
    # composite: decompose(graph, inputs, **attrs) -> Value, appending primitive nodes to `graph`
    decompose: Callable[..., Any] | None = None
    # reduction: the combine used by the reduction emitter ("sum", "prod", "max", "min", "argmax", ...)
    combine: str | None = None
    doc: str = ""

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"op {self.name}: unknown kind {self.kind!r}")


OPS: dict[str, OpDef] = {}


def register(opdef: OpDef) -> OpDef:
    if opdef.name in OPS:
        raise ValueError(f"op {opdef.name!r} registered twice")
    OPS[opdef.name] = opdef
    return opdef


def get_op(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"unknown IR op {name!r}; registered ops: {', '.join(sorted(OPS))}") from None
