"""Lowering rules for pooling whose windows tile the input: avg / adaptive-avg / max pooling (2-d and
3-d) and their backward ops, as row reductions over a window view of the input.

A pooling window tiles the input when stride == kernel, with no padding and no dilation (adaptive
pooling: when each input size is a multiple of the output size). Then the input, cut to the windows
it holds (floor mode drops a remainder), reshaped to (..., o1, k1, o2, k2), has one window per
kept index and its elements along the k dims: pooling is a reduction over those dims, one row kernel
with its neighbours (a producer such as BN-apply + ReLU joins it as prologue), and exact. Any other
configuration (overlapping windows, padding, dilation, ceil_mode's partial windows) lowers to the
window ops of ir/ops/window.py (`max_pool`, `max_pool_index`, `avg_pool` and their backward ops:
gathers of the pointwise emitter, with the same index semantics), adaptive average pooling whose
windows do not tile the input to `adaptive_avg_pool`. A window loop longer than `MAX_LOADS` raises
Fallback: the op runs as an extern.

Max pooling must give the whole gradient to one element per window, the one torch's index records:
the first maximum in window order, or where the window holds NaN, the last NaN (torch's kernels keep
`val > max || isnan(val)`). The IR's `amax` VJP splits the gradient among ties (ReLU zeros before a
max pool are ties), so the value is not an `amax`: the index is computed first, from reductions over
the plane position `pos` of each element (an `iota` expression: the position torch's indices hold),
and the value is the one-hot sum `sum(where(pos == index, x, 0))`, whose VJP routes the cotangent to
that element alone. (The one cost: a maximum of -0.0 comes back as +0.0.) The backward ops
(`avg_pool2d_backward`, `max_pool2d_with_indices_backward`, ... , which the Dynamo backend and eager
mode run) are the same window views read the other way: the cotangent broadcast over its window
(divided by the window size), or put at the recorded index; the indices are assumed to be in their
own window, as every forward's are.
"""

from __future__ import annotations

import math

import torch

from ..ir import Value
from ..ir.ops.window_cost import MAX_LOADS, unrolled_loads
from .lowering import Fallback, aten, out_shape, overloads, register


def _sizes(value, n: int, default: list[int] | None = None) -> list[int]:
    """An int[n] argument (one int for all n, or [] for `default`) as a list of n ints."""
    if value is None or (isinstance(value, (list, tuple)) and len(value) == 0):
        return list(default) if default is not None else [0] * n
    value = list(value) if isinstance(value, (list, tuple)) else [value]
    return value * n if len(value) == 1 else value


def _window_attrs(n: int, kernel, stride, padding, dilation=None, ceil_mode=False) -> dict:
    """The attributes of a window op (ir/ops/window.py) for a pooling call's arguments."""
    kernel = _sizes(kernel, n)
    return dict(kernel_size=tuple(kernel), stride=tuple(_sizes(stride, n, kernel)), padding=tuple(_sizes(padding, n)),
                dilation=tuple(_sizes(dilation, n, [1] * n)), ceil_mode=bool(ceil_mode))


def _avg_attrs(n: int, a) -> dict:
    attrs = _window_attrs(n, a.kernel_size, a.stride, a.padding, None, a.ceil_mode)
    del attrs["dilation"]
    return dict(attrs, count_include_pad=bool(a.count_include_pad), divisor_override=a.divisor_override)


def window_op(L, op: str, inputs: list[Value], **attrs) -> Value:
    """A window op (ir/ops/window.py), unless its unrolled loop is too long (then an extern)."""
    try:
        loads = unrolled_loads(op, inputs[0].type, attrs)
    except (TypeError, ValueError) as e:  # a dtype or a size the op does not take (empty windows)
        raise Fallback(str(e)) from None
    if loads > MAX_LOADS:
        raise Fallback(f"{op}: a window loop of more than {MAX_LOADS} loads")
    return L.add(op, inputs, **attrs)


def _tiled_kernel(in_sizes, out_sizes, kernel, stride, padding, dilation=None) -> list[int]:
    """The window sizes when the windows tile the input (see the module doc), else Fallback."""
    n = len(in_sizes)
    kernel = _sizes(kernel, n)
    stride = _sizes(stride, n, kernel)
    if stride != kernel or any(_sizes(padding, n)) or any(d != 1 for d in _sizes(dilation, n, [1] * n)):
        raise Fallback("pooling windows that overlap, skip, or are padded or dilated")
    if any(o * k > i for o, k, i in zip(out_sizes, kernel, in_sizes)):
        raise Fallback("partial pooling windows (ceil_mode)")
    return kernel


def _windows(L, x: Value, kernel: list[int], out_sizes: list[int]) -> tuple[Value, tuple[int, ...]]:
    """x cut to its windows and reshaped to (..., o1, k1, o2, k2, ...); the window (k) dims."""
    n = len(kernel)
    lead = x.type.rank - n
    for i, (o, k) in enumerate(zip(out_sizes, kernel)):
        if o * k != x.shape[lead + i]:
            x = L.add("slice", [x], dim=lead + i, start=0, end=o * k, step=1)
    shape = x.shape[:lead] + tuple(s for o, k in zip(out_sizes, kernel) for s in (o, k))
    return L.reshape(x, shape), tuple(lead + 2 * i + 1 for i in range(n))


def _unwindow(L, t: Value, in_shape: tuple[int, ...], kernel: list[int], out_sizes: list[int],
              dtype: torch.dtype) -> Value:
    """The inverse of `_windows` for a gradient: back to the input shape, zeros in the cut remainder."""
    n = len(kernel)
    lead = len(in_shape) - n
    t = L.reshape(t, in_shape[:lead] + tuple(o * k for o, k in zip(out_sizes, kernel)))
    for i in range(n):
        d = lead + i
        rest = in_shape[d] - t.shape[d]
        if rest:
            t = L.add("cat", [t, L.const(0, dtype, t.shape[:d] + (rest,) + t.shape[d + 1:])], dim=d)
    return t


def _attached(L, grad_input: Value, x: Value) -> Value:
    """A backward op's result depends on `self` only through its shape; torch's derivative of these
    ops gives `self` a zero gradient, so the result still requires grad when `self` does."""
    return L.add("zero_gradient", [grad_input, x]) if x.dtype.is_floating_point else grad_input


def _keep(shape: tuple[int, ...], dims: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(1 if i in dims else s for i, s in enumerate(shape))


def _acc(dtype: torch.dtype) -> torch.dtype:
    """torch's pooling kernels accumulate half types in float32 and round once."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _average(L, x: Value, kernel: list[int], out_sizes: list[int], divisor: int | None) -> Value:
    w, dims = _windows(L, x, kernel, out_sizes)
    w = L.cast(w, _acc(x.dtype))  # after the view, so the conversion joins the reduction's kernel
    if divisor is None:
        out = L.add("mean", [w], dims=dims, keepdim=False)
    else:
        out = L.add("div", [L.add("sum", [w], dims=dims, keepdim=False), L.const(float(divisor), w.dtype)])
    return L.cast(out, x.dtype)


def _average_backward(L, grad: Value, x: Value, kernel: list[int], divisor: int | None) -> Value:
    """Each input element of a window gets the window's cotangent / its divisor; the cut remainder 0."""
    n = len(kernel)
    out_sizes = list(grad.shape[-n:])
    shape = grad.shape[:-n] + tuple(s for o, k in zip(out_sizes, kernel) for s in (o, k))
    dims = tuple(grad.type.rank - n + 2 * i + 1 for i in range(n))
    g = L.cast(L.expand(L.reshape(grad, _keep(shape, dims)), shape), _acc(grad.dtype))
    d = divisor if divisor is not None else math.prod(kernel)
    g = L.cast(L.add("div", [g, L.const(float(d), g.dtype)]), x.dtype)
    return _attached(L, _unwindow(L, g, x.shape, kernel, out_sizes, x.dtype), x)


def _eager_rejects(node, avg_pool3d: bool = False) -> None:
    """Average pooling of integers (torch's int64 kernel divides as integers; other integer dtypes
    have none) and torch's CPU avg_pool3d in half precision (no kernel) run as externs, which
    compute or raise as eager does."""
    val = node.meta["val"]
    if not val.dtype.is_floating_point:
        raise Fallback("integer average pooling")
    if avg_pool3d and val.device.type == "cpu" and val.dtype in (torch.float16, torch.bfloat16):
        raise Fallback("no CPU half-precision avg_pool3d in torch")


@register(*overloads(aten.avg_pool2d, "default"), *overloads(aten.avg_pool3d, "default"))
def _avg_pool(L, node, a):
    n = 3 if node.target._overloadpacket is aten.avg_pool3d else 2
    _eager_rejects(node, n == 3)
    out_sizes = list(out_shape(node)[-n:])
    try:
        kernel = _tiled_kernel(a.self.shape[-n:], out_sizes, a.kernel_size, a.stride, a.padding)
    except Fallback:
        return window_op(L, "avg_pool", [a.self], **_avg_attrs(n, a))
    return _average(L, a.self, kernel, out_sizes, a.divisor_override)


@register(*overloads(aten.avg_pool2d_backward, "default"), *overloads(aten.avg_pool3d_backward, "default"))
def _avg_pool_backward(L, node, a):
    n = 3 if node.target._overloadpacket is aten.avg_pool3d_backward else 2
    _eager_rejects(node, n == 3)
    try:
        kernel = _tiled_kernel(a.self.shape[-n:], a.grad_output.shape[-n:], a.kernel_size, a.stride, a.padding)
    except Fallback:
        grad = window_op(L, "avg_pool_backward", [L.cast(a.grad_output, a.self.dtype)], input_size=a.self.shape[-n:],
                       **_avg_attrs(n, a))
        return _attached(L, grad, a.self)
    return _average_backward(L, a.grad_output, a.self, kernel, a.divisor_override)


def _adaptive_kernel(in_sizes, out_sizes) -> list[int]:
    """Adaptive windows are [floor(i*I/O), ceil((i+1)*I/O)): the tiles of size I/O when O divides I."""
    if any(o == 0 or i % o for i, o in zip(in_sizes, out_sizes)):
        raise Fallback("adaptive pooling windows of unequal or overlapping sizes")
    return [i // o for i, o in zip(in_sizes, out_sizes)]


@register(*overloads(aten._adaptive_avg_pool2d, "default"), *overloads(aten._adaptive_avg_pool3d, "default"))
def _adaptive_avg_pool(L, node, a):
    n = 3 if node.target._overloadpacket is aten._adaptive_avg_pool3d else 2
    _eager_rejects(node)
    out_sizes = list(out_shape(node)[-n:])
    try:
        kernel = _adaptive_kernel(a.self.shape[-n:], out_sizes)
    except Fallback:
        return window_op(L, "adaptive_avg_pool", [a.self], output_size=tuple(out_sizes))
    return _average(L, a.self, kernel, out_sizes, None)


@register(*overloads(aten._adaptive_avg_pool2d_backward, "default"),
          *overloads(aten._adaptive_avg_pool3d_backward, "default"))
def _adaptive_avg_pool_backward(L, node, a):
    n = 3 if node.target._overloadpacket is aten._adaptive_avg_pool3d_backward else 2
    _eager_rejects(node)
    try:
        kernel = _adaptive_kernel(a.self.shape[-n:], a.grad_output.shape[-n:])
    except Fallback:
        grad = window_op(L, "adaptive_avg_pool_backward", [L.cast(a.grad_output, a.self.dtype)],
                         input_size=a.self.shape[-n:])
        return _attached(L, grad, a.self)
    return _average_backward(L, a.grad_output, a.self, kernel, None)


def _positions(L, shape: tuple[int, ...], kernel: list[int], plane: tuple[int, ...]) -> Value:
    """For a window view of `shape` (..., o1, k1, o2, k2, ...), each element's flat position in its
    input plane (`plane`: the input's pooled sizes), the index torch's max pooling records."""
    n = len(kernel)
    lead = len(shape) - 2 * n
    pos = None
    for i in range(n):
        row = math.prod(plane[i + 1:])  # elements per step along pooled dim i
        for d, step in ((lead + 2 * i, kernel[i] * row), (lead + 2 * i + 1, row)):
            term = L.add("iota", [], shape=shape, dim=d, dtype=torch.int64)
            if step != 1:
                term = L.add("mul", [term, L.const(step, torch.int64)])
            pos = term if pos is None else L.add("add", [pos, term])
    return pos


def _max_pool_n(node) -> int:
    return 3 if node.target._overloadpacket in (aten.max_pool3d_with_indices,
                                                 aten.max_pool3d_with_indices_backward) else 2


@register(*overloads(aten.max_pool2d_with_indices, "default"), *overloads(aten.max_pool3d_with_indices, "default"))
def _max_pool(L, node, a):
    n = _max_pool_n(node)
    x = a.self
    if x.dtype == torch.bool:
        raise Fallback("torch has no bool max pooling")
    out = tuple(int(s) for s in node.meta["val"][0].shape)
    out_sizes = list(out[-n:])
    try:
        kernel = _tiled_kernel(x.shape[-n:], out_sizes, a.kernel_size, a.stride, a.padding, a.dilation)
    except Fallback:
        attrs = _window_attrs(n, a.kernel_size, a.stride, a.padding, a.dilation, a.ceil_mode)
        return [window_op(L, "max_pool", [x], **attrs), window_op(L, "max_pool_index", [x], **attrs)]
    w, dims = _windows(L, x, kernel, out_sizes)
    pos = _positions(L, w.shape, kernel, x.shape[-n:])
    red = dict(dims=dims, keepdim=True)
    top = L.add("amax", [w], **red)
    first = L.add("amin", [L.add("where", [L.add("eq", [w, top]), pos, L.const(math.prod(x.shape[-n:]), torch.int64)])],
                  **red)
    if x.dtype.is_floating_point:  # a window with NaN: torch records its last NaN
        last_nan = L.add("amax", [L.add("where", [L.add("isnan", [w]), pos, L.const(-1, torch.int64)])], **red)
        index = L.add("where", [L.add("ge", [last_nan, L.const(0, torch.int64)]), last_nan, first])
        picked = L.add("where", [L.add("eq", [pos, index]), w, L.const(0, w.dtype)])
        value = L.add("sum", [picked], **red)
    else:  # no gradient to route
        index, value = first, top
    return [L.reshape(value, out), L.reshape(index, out)]


@register(*overloads(aten.max_pool2d_with_indices_backward, "default"),
          *overloads(aten.max_pool3d_with_indices_backward, "default"))
def _max_pool_backward(L, node, a):
    n = _max_pool_n(node)
    x, grad = a.self, a.grad_output
    out_sizes = list(grad.shape[-n:])
    try:
        kernel = _tiled_kernel(x.shape[-n:], out_sizes, a.kernel_size, a.stride, a.padding, a.dilation)
    except Fallback:
        if not x.dtype.is_floating_point:
            raise
        attrs = _window_attrs(n, a.kernel_size, a.stride, a.padding, a.dilation, a.ceil_mode)
        g = window_op(L, "max_pool_backward", [L.cast(grad, x.dtype), a.indices], input_size=x.shape[-n:], **attrs)
        return _attached(L, g, x)
    shape = grad.shape[:-n] + tuple(s for o, k in zip(out_sizes, kernel) for s in (o, k))
    dims = tuple(grad.type.rank - n + 2 * i + 1 for i in range(n))
    keep = _keep(shape, dims)
    pos = _positions(L, shape, kernel, x.shape[-n:])
    hit = L.add("eq", [pos, L.reshape(a.indices, keep)])
    g = L.add("where", [hit, L.reshape(L.cast(grad, x.dtype), keep), L.const(0, x.dtype)])
    return _attached(L, _unwindow(L, g, x.shape, kernel, out_sizes, x.dtype), x)
