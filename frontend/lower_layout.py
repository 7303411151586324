"""Lowering rules for layout and constant ops: views, slicing, cat/stack/split, flips, repeats, pads,
scatters of slices, copies, and the factories (full/zeros/ones/arange/scalar_tensor).

IR values have value semantics, so aliasing ops (view, alias, clone, contiguous) need no copy: the
output shape comes from torch's fake result and the IR op just reshapes, permutes or expands.
"""

from __future__ import annotations

import torch

from . import gradient_ops  # noqa: F401  (defines torch.ops.ember.untracked_update, zero_gradient)
from .lowering import Fallback, aten, norm_dim, norm_dims, out_dtype, out_shape, overloads, register, typed

prims = torch.ops.prims


@register(*overloads(aten.view, "default"), *overloads(aten._unsafe_view, "default"),
          *overloads(aten.reshape, "default"), *overloads(aten.view_copy, "default"),
          *overloads(aten.squeeze, "default", "dim", "dims"), *overloads(aten.squeeze_copy, "default", "dim", "dims"),
          *overloads(aten.unsqueeze, "default"), *overloads(aten.unsqueeze_copy, "default"),
          *overloads(aten.flatten, "using_ints"), *overloads(aten.unflatten, "int"),
          # in-place metadata changes (torch.matmul squeezes its fresh result): later uses read this node
          *overloads(aten.squeeze_, "default", "dim", "dims"), *overloads(aten.unsqueeze_, "default"))
def _reshape(L, node, a):
    return L.reshape(a.self, out_shape(node))


@register(*overloads(aten.alias, "default"), *overloads(aten.alias_copy, "default"),
          *overloads(aten.clone, "default"), *overloads(aten.contiguous, "default"),
          *overloads(aten.lift_fresh_copy, "default"))
def _identity(L, node, a):
    return a.self


# Stop-gradients (frontend/capture_mode.py puts them where eager autograd records nothing): markers
# for the IR autodiff, dropped by the runtime before fusion (ir/ops/gradient.py).
@register(*overloads(aten.detach, "default"), *overloads(aten.detach_copy, "default"))
def _stop_gradient(L, node, a):
    return L.add("stop_gradient", [a.self])


@register(torch.ops.ember.untracked_update.default)
def _untracked_update(L, node, a):
    return L.add("untracked_update", [a.new, L.cast(a.old, a.new.dtype)])


@register(torch.ops.ember.zero_gradient.default)
def _zero_gradient(L, node, a):
    return L.add("zero_gradient", [a.value, a.like])


@register(torch.ops.ember.no_derivative.default)
def _no_derivative(L, node, a):
    return L.add("no_derivative", [a.value, a.like], name=a.op)


@register(*overloads(aten.expand, "default"), *overloads(aten.expand_copy, "default"))
def _expand(L, node, a):
    return L.expand(a.self, out_shape(node))


def _permute(L, x, dims):
    dims = tuple(norm_dim(d, x.type.rank) for d in dims)
    return x if dims == tuple(range(len(dims))) else L.add("permute", [x], dims=dims)


@register(*overloads(aten.permute, "default"), *overloads(aten.permute_copy, "default"))
def _permute_rule(L, node, a):
    return _permute(L, a.self, a.dims)


@register(*overloads(aten.transpose, "int"), *overloads(aten.transpose_copy, "int"),
          *overloads(aten.transpose_, "default"))
def _transpose(L, node, a):
    r = a.self.type.rank
    if r == 0:
        return a.self
    perm = list(range(r))
    d0, d1 = norm_dim(a.dim0, r), norm_dim(a.dim1, r)
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return _permute(L, a.self, perm)


@register(*overloads(aten.t, "default"), *overloads(aten.t_copy, "default"), *overloads(aten.t_, "default"))
def _t(L, node, a):
    return _permute(L, a.self, (1, 0)) if a.self.type.rank == 2 else a.self


def _slice(L, x, dim, start, end, step=1):
    size = x.shape[dim]
    start = 0 if start is None else start
    end = size if end is None else end
    start = min(max(start + size if start < 0 else start, 0), size)
    end = min(max(end + size if end < 0 else end, start), size)
    if (start, end, step) == (0, size, 1):
        return x
    return L.add("slice", [x], dim=dim, start=start, end=end, step=step)


@register(*overloads(aten.slice, "Tensor"), *overloads(aten.slice_copy, "Tensor"))
def _slice_rule(L, node, a):
    return _slice(L, a.self, norm_dim(a.dim, a.self.type.rank), a.start, a.end, a.step)


@register(*overloads(aten.select, "int"), *overloads(aten.select_copy, "int"))
def _select(L, node, a):
    d = norm_dim(a.dim, a.self.type.rank)
    index = a.index + a.self.shape[d] if a.index < 0 else a.index
    return L.add("select", [a.self], dim=d, index=index)


def _cat(L, xs, dim):
    return xs[0] if len(xs) == 1 else L.add("cat", xs, dim=dim)


@register(aten.cat.default)
def _cat_rule(L, node, a):
    dt, shape = out_dtype(node), out_shape(node)
    # torch skips legacy empty 1-D inputs of shape (0,) next to higher-rank ones.
    xs = [L.cast(x, dt) for x in a.tensors if not (x.type.rank == 1 and x.shape[0] == 0 and len(shape) > 1)]
    if not xs:
        return L.const(0, dt, shape)
    return _cat(L, xs, norm_dim(a.dim, len(shape)))


@register(*overloads(aten.stack, "default"))
def _stack(L, node, a):
    dt, shape = out_dtype(node), out_shape(node)
    d = norm_dim(a.dim, len(shape))
    xs = [L.reshape(L.cast(x, dt), x.shape[:d] + (1,) + x.shape[d:]) for x in a.tensors]
    return _cat(L, xs, d)


@register(*overloads(aten.split_with_sizes, "default"), *overloads(aten.split, "Tensor"),
          *overloads(aten.split_with_sizes_copy, "default"), *overloads(aten.split_copy, "Tensor"))
def _split(L, node, a):
    d = norm_dim(a.dim, a.self.type.rank)
    outs, start = [], 0
    for v in node.meta["val"]:
        outs.append(_slice(L, a.self, d, start, start + v.shape[d]))
        start += v.shape[d]
    return outs


@register(*overloads(aten.unbind, "int"), *overloads(aten.unbind_copy, "int"))
def _unbind(L, node, a):
    d = norm_dim(a.dim, a.self.type.rank)
    return [L.add("select", [a.self], dim=d, index=i) for i in range(a.self.shape[d])]


@register(aten.flip.default)
def _flip(L, node, a):
    dims = norm_dims(a.dims, a.self.type.rank) if len(a.dims) else ()
    return L.add("flip", [a.self], dims=dims) if dims else a.self


@register(*overloads(aten.repeat, "default"))
def _repeat(L, node, a):
    reps = tuple(a.repeats)
    shape = (1,) * (len(reps) - a.self.type.rank) + a.self.shape
    # [s0, s1] repeated [r0, r1] = reshape(expand([1, s0, 1, s1] -> [r0, s0, r1, s1]), [r0*s0, r1*s1])
    x = L.reshape(a.self, tuple(v for s in shape for v in (1, s)))
    x = L.expand(x, tuple(v for r, s in zip(reps, shape) for v in (r, s)))
    return L.reshape(x, out_shape(node))


@register(aten.constant_pad_nd.default)
def _pad(L, node, a):
    x, pad, dt = a.self, list(a.pad), out_dtype(node)
    if any(p < 0 for p in pad):
        raise Fallback("negative padding")
    for i in range(len(pad) // 2):  # pad pairs start at the last dim
        d = x.type.rank - 1 - i
        lo, hi = pad[2 * i], pad[2 * i + 1]
        parts = []
        for n in (lo, None, hi):
            if n is None:
                parts.append(x)
            elif n:
                parts.append(L.const(a.value, dt, x.shape[:d] + (n,) + x.shape[d + 1:]))
        x = _cat(L, parts, d)
    return x


@register(*overloads(aten.slice_scatter, "default"))
def _slice_scatter(L, node, a):
    x, d = a.self, norm_dim(a.dim, a.self.type.rank)
    if a.step != 1:
        raise Fallback("strided slice_scatter")
    size = x.shape[d]
    start = 0 if a.start is None else (a.start + size if a.start < 0 else a.start)
    start = min(max(start, 0), size)
    end = start + a.src.shape[d]
    parts = [_slice(L, x, d, 0, start), L.cast(a.src, x.dtype), _slice(L, x, d, end, size)]
    return _cat(L, [p for p in parts if p.shape[d]] or [parts[1]], d)


@register(*overloads(aten.select_scatter, "default"))
def _select_scatter(L, node, a):
    x, d = a.self, norm_dim(a.dim, a.self.type.rank)
    i = a.index + x.shape[d] if a.index < 0 else a.index
    src = L.reshape(L.cast(a.src, x.dtype), x.shape[:d] + (1,) + x.shape[d + 1:])
    parts = [_slice(L, x, d, 0, i), src, _slice(L, x, d, i + 1, x.shape[d])]
    return _cat(L, [p for p in parts if p.shape[d]], d)


@register(aten.copy.default)
def _copy(L, node, a):
    out = L.expand(L.cast(a.src, a.self.dtype), a.self.shape)
    # autograd keeps the overwritten tensor attached (zero gradient): `x.clone().copy_(y)` requires grad
    # when x does, as in eager (ir/ops/gradient.py)
    return L.add("zero_gradient", [out, a.self]) if a.self.dtype.is_floating_point else out


# -- factories --------------------------------------------------------------------------------------


def _stored(value, dtype: torch.dtype):
    """`value` as a tensor of `dtype` holds it: a factory's half-precision fill is rounded once, here
    (Python scalar operands of arithmetic stay unrounded: torch computes them in float32)."""
    if dtype in (torch.float16, torch.bfloat16) and not isinstance(value, bool):
        return torch.tensor(value, dtype=dtype).item()
    return value


@register(*overloads(aten.full, "default"), *overloads(aten.full_like, "default"),
          *overloads(aten.new_full, "default"), *overloads(aten.fill, "Scalar"))
def _full(L, node, a):
    value = a.get("fill_value", a.get("value"))
    return L.const(_stored(value, out_dtype(node)), out_dtype(node), out_shape(node))


@register(*overloads(aten.zeros, "default"), *overloads(aten.zeros_like, "default"),
          *overloads(aten.new_zeros, "default"), *overloads(aten.empty, "memory_format"),
          *overloads(aten.empty_like, "default"), *overloads(aten.new_empty, "default"))
def _zeros(L, node, a):
    # empty* have unspecified contents; zeros is a valid (and deterministic) choice.
    return L.const(0, out_dtype(node), out_shape(node))


@register(*overloads(aten.ones, "default"), *overloads(aten.ones_like, "default"),
          *overloads(aten.new_ones, "default"))
def _ones(L, node, a):
    return L.const(1, out_dtype(node), out_shape(node))


@register(aten.scalar_tensor.default)
def _scalar_tensor(L, node, a):
    return L.const(_stored(a.s, out_dtype(node)), out_dtype(node))


@register(*overloads(aten.fill, "Tensor"))
def _fill_tensor(L, node, a):
    return L.expand(L.cast(a.value, out_dtype(node)), out_shape(node))


@register(*overloads(aten.arange, "default", "start", "start_step"))
def _arange(L, node, a):
    dt = out_dtype(node)
    start = a.start if a.get("start") is not None else 0
    step = a.get("step") if a.get("step") is not None else 1
    (length,) = out_shape(node)
    if typed(start, dt) != start or typed(step, dt) != step:
        raise Fallback("arange bounds not representable in its dtype")
    return L.add("arange", [], start=typed(start, dt), step=typed(step, dt), length=length, dtype=dt)


@register(*overloads(prims.iota, "default"))
def _iota(L, node, a):
    dt = out_dtype(node)
    return L.add("arange", [], start=typed(a.start, dt), step=typed(a.step, dt), length=a.length, dtype=dt)
