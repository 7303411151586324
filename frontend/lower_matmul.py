"""Lowering rules for matrix products: mm, bmm, matmul, addmm, baddbmm, linear, mv, dot.

The IR `matmul` takes two floating-point operands of rank >= 2 and one dtype; vectors are reshaped
to matrices here and the extra dim dropped after, as torch.matmul specifies.

Eager PyTorch refuses operands of different dtypes for all of these (`f32 @ f64` raises), but their
meta kernels do not check, so the fake trace lets them through: `same_dtype` raises eager's error
instead of lowering with an implicit conversion.
"""

from __future__ import annotations

from ..ir import Value
from .lowering import Fallback, aten, out_dtype, out_shape, overloads, register


class DtypeMismatchError(RuntimeError):
    """Operands of a matrix product have different dtypes (eager PyTorch raises too)."""


def same_dtype(node, *operands) -> None:
    dts = list(dict.fromkeys(v.dtype for v in operands if isinstance(v, Value)))
    if len(dts) > 1:
        names = " and ".join(str(d).removeprefix("torch.") for d in dts)
        raise DtypeMismatchError(f"{node.target}: expected all tensor operands to have the same dtype, but got "
                                 f"{names} (eager PyTorch raises here too; convert one operand explicitly)")


def matmul(L, node, a, b):
    dt = out_dtype(node)
    if not dt.is_floating_point:
        raise Fallback("integer matmul")
    a, b = L.cast(a, dt), L.cast(b, dt)
    if a.type.rank == 1:
        a = L.reshape(a, (1,) + a.shape)
    if b.type.rank == 1:
        b = L.reshape(b, b.shape + (1,))
    return L.reshape(L.add("matmul", [a, b]), out_shape(node))


def _scaled(L, x, s, dt):
    return x if s == 1 else L.add("mul", [x, L.const(s, dt)])


@register(aten.mm.default, aten.bmm.default, *overloads(aten.matmul, "default"),
          *overloads(aten.mv, "default"), *overloads(aten.dot, "default"))
def _mm(L, node, a):
    other = a.get("mat2", a.get("other", a.get("vec", a.get("tensor"))))
    same_dtype(node, a.self, other)
    return matmul(L, node, a.self, other)


@register(aten.addmm.default, *overloads(aten.baddbmm, "default"))
def _addmm(L, node, a):
    dt = out_dtype(node)
    m1, m2 = (a.mat1, a.mat2) if "mat1" in a else (a.batch1, a.batch2)
    same_dtype(node, a.self, m1, m2)
    out = _scaled(L, matmul(L, node, m1, m2), a.alpha, dt)
    if a.beta == 0:  # torch ignores the input (even NaN) when beta == 0
        return out
    return L.add("add", [_scaled(L, L.cast(a.self, dt), a.beta, dt), out])


@register(*overloads(aten.linear, "default"))
def _linear(L, node, a):
    same_dtype(node, a.input, a.weight, a.bias)
    dt = out_dtype(node)
    w = L.cast(a.weight, dt)
    wt = L.add("permute", [w], dims=(1, 0)) if w.type.rank == 2 else w
    out = matmul(L, node, a.input, wt)
    return out if a.bias is None else L.add("add", [out, L.cast(a.bias, dt)])
