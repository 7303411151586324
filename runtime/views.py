"""Strided views over runtime buffers: layout ops become offset/stride arithmetic, not kernels.

Unlike torch views these allow negative strides (flip), since our kernels address memory through
runtime strides; a view only needs a copy when torch must see it (graph outputs, extern inputs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class View:
    buf: int                     # index of the buffer in the plan
    offset: int                  # in elements, from the buffer tensor's first element
    shape: tuple[int, ...]
    strides: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def extent(self) -> int:
        """Largest |element offset| any index of the view can reach (decides int64 indexing)."""
        return abs(self.offset) + sum((s - 1) * abs(st) for s, st in zip(self.shape, self.strides) if s > 0)

    def torch_viewable(self) -> bool:
        return all(st >= 0 for st in self.strides)

    def same_elements(self, other: View) -> bool:
        """Whether both views address the same element at every index (size-1 dims aside)."""
        key = lambda v: (v.buf, v.offset, [(s, st) for s, st in zip(v.shape, v.strides) if s != 1])
        return key(self) == key(other)

    def dense(self) -> bool:
        """Non-overlapping and dense: the strides are a permutation of some contiguous layout's."""
        expected = 1
        for stride, size in sorted((st, s) for s, st in zip(self.shape, self.strides) if s > 1):
            if stride != expected:
                return False
            expected *= size
        return True


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, acc = [], 1
    for s in reversed(shape):
        strides.append(acc)
        acc *= max(s, 1)
    return tuple(reversed(strides))


def permute(v: View, dims: tuple[int, ...]) -> View:
    return View(v.buf, v.offset, tuple(v.shape[d] for d in dims), tuple(v.strides[d] for d in dims))


def expand(v: View, shape: tuple[int, ...]) -> View:
    lead = len(shape) - len(v.shape)
    strides = [0] * lead + [0 if s == 1 and n != 1 else st for s, n, st in zip(v.shape, shape[lead:], v.strides)]
    return View(v.buf, v.offset, tuple(shape), tuple(strides))


def slice_(v: View, dim: int, start: int, end: int, step: int) -> View:
    shape, strides = list(v.shape), list(v.strides)
    shape[dim] = max(0, (end - start + step - 1) // step)
    strides[dim] = v.strides[dim] * step
    return View(v.buf, v.offset + start * v.strides[dim], tuple(shape), tuple(strides))


def select(v: View, dim: int, index: int) -> View:
    return View(v.buf, v.offset + index * v.strides[dim], v.shape[:dim] + v.shape[dim + 1:],
                v.strides[:dim] + v.strides[dim + 1:])


def flip(v: View, dims: tuple[int, ...]) -> View:
    offset, strides = v.offset, list(v.strides)
    for d in dims:
        if v.shape[d] > 0:
            offset += (v.shape[d] - 1) * strides[d]
        strides[d] = -strides[d]
    return View(v.buf, offset, v.shape, tuple(strides))


def reshape(v: View, shape: tuple[int, ...]) -> View | None:
    """The view of `v` with `shape` when one exists (torch's computeStride rule), else None."""
    shape = tuple(shape)
    if v.numel == 0 or not v.shape:
        return View(v.buf, v.offset, shape, contiguous_strides(shape))
    new = [0] * len(shape)
    view_d = len(shape) - 1
    chunk = v.strides[-1]
    t_numel = v_numel = 1
    for d in range(len(v.shape) - 1, -1, -1):
        t_numel *= v.shape[d]
        if d == 0 or (v.shape[d - 1] != 1 and v.strides[d - 1] != t_numel * chunk):
            while view_d >= 0 and (v_numel < t_numel or shape[view_d] == 1):
                new[view_d] = v_numel * chunk
                v_numel *= shape[view_d]
                view_d -= 1
            if v_numel != t_numel:
                return None
            if d > 0:
                chunk = v.strides[d - 1]
                t_numel = v_numel = 1
    if view_d != -1:
        return None
    return View(v.buf, v.offset, shape, tuple(new))


# The view rule of each IR view op (`ir.registry.is_view`) as offset/stride arithmetic: (view, attrs) ->
# the output view, or None when strides cannot express it (a reshape that must copy). The gradient
# markers, views too, never reach the planner (the schedule drops them).
VIEW_RULES = {
    "reshape": lambda v, a: reshape(v, a["shape"]),
    "permute": lambda v, a: permute(v, a["dims"]),
    "expand": lambda v, a: expand(v, a["shape"]),
    "slice": lambda v, a: slice_(v, a["dim"], a["start"], a["end"], a["step"]),
    "select": lambda v, a: select(v, a["dim"], a["index"]),
    "flip": lambda v, a: flip(v, a["dims"]),
}
