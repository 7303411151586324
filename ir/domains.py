"""Where generated tests sample an op (`OpDef.domains`): the dtype families type rules and domains
name, and `Domain`, a region of dtypes, value ranges and attributes (as PyTorch's OpInfo sample inputs
or JAX's grad_test_spec). tests/test_registry.py checks impl vs eager, VJP vs torch.autograd and
codegen vs the interpreter on every entry's domains."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

# dtype families domains and type rules name (the dtypes generated kernels compute on).
FLOAT = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
INT = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)
NUMERIC = FLOAT + INT
INTEGRAL = INT + (torch.bool,)  # bitwise ops: bool is an integer there
ALL = NUMERIC + (torch.bool,)


@dataclass(frozen=True)
class Domain:
    """A region where generated tests sample an op: inputs of one dtype out of `dtypes` (dtypes the
    type rule accepts with these `attrs`), values in [low, high] (`ranges` per input overrides it),
    `nonzero` inputs kept away from 0 (divisors), `fixed` inputs of a fixed dtype (where's condition,
    rand's seed), `shapes` the input shapes when the op needs particular ones (default: the tests'
    broadcasting shapes). An attribute equal to `DTYPE` stands for the dtype under test (generator
    ops, whose `dtypes` are the output's). `grad`: the VJP is checked here against torch.autograd
    (False where the derivative is not defined at the samples)."""

    dtypes: tuple[torch.dtype, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    low: float = -3.0
    high: float = 3.0
    ranges: dict[int, tuple[float, float]] = field(default_factory=dict)
    nonzero: tuple[int, ...] = ()
    fixed: dict[int, torch.dtype] = field(default_factory=dict)
    shapes: tuple[tuple[int, ...], ...] | None = None
    grad: bool = True
    # The dtypes of `ALL` the type rule rejects with these attrs (None: all but `dtypes`). Tests check
    # each is rejected, and that a dtype neither sampled nor rejected here is sampled by another domain.
    rejects: tuple[torch.dtype, ...] | None = None

    def rejected(self) -> tuple[torch.dtype, ...]:
        return tuple(d for d in ALL if d not in self.dtypes) if self.rejects is None else self.rejects

    def attrs_for(self, dtype: torch.dtype) -> dict[str, Any]:
        return {k: dtype if v is DTYPE else v for k, v in self.attrs.items()}

    def input_dtype(self, i: int, dtype: torch.dtype) -> torch.dtype:
        return self.fixed.get(i, dtype)

    def sample(self, i: int, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        """Input `i` of `shape` for the dtype under test `dtype`: uniform in its range (integers:
        the integers in it); a `nonzero` input gets magnitudes from 0.5 (integers: 1) up to the
        range's largest, either sign (uint8: positive)."""
        dtype = self.input_dtype(i, dtype)
        low, high = self.ranges.get(i, (self.low, self.high))
        if dtype == torch.bool:
            return torch.randint(0, 2, shape).bool()
        if dtype == torch.uint8:
            low = max(low, 0.0)
        if i in self.nonzero:
            small = 0.5 if dtype.is_floating_point else 1.0
            low, high = small, max(abs(low), abs(high), small)
        if dtype.is_floating_point:
            x = torch.rand(shape, dtype=torch.float64) * (high - low) + low
        else:
            x = torch.randint(math.ceil(low), math.floor(high) + 1, shape).double()
        if i in self.nonzero and dtype != torch.uint8:
            x = torch.where(torch.rand(shape) < 0.5, -x, x)
        return x.to(dtype)


DTYPE = object()  # a `Domain.attrs` value standing for the dtype under test
