"""Pointwise ops: unary, binary, ternary and casts, all with broadcasting.

IR pointwise ops take inputs of one dtype (the frontend inserts `convert` nodes for torch's type
promotion) and broadcast like torch. Each declares the dtypes it takes (those torch's kernel takes:
no `neg` of bool), which its type rule enforces and generated tests sample. The Triton rule of
each op receives its arguments already loaded in the compute dtype (half types upcast to float32)
and returns an expression; `e.tmp(expr)` binds a temporary when an expression needs a value more
than once.

VJP rules follow torch's derivatives.yaml formulas (so ties and special values match eager): unary
rules map (g, x, y, ct) to x's cotangent, and every pointwise rule's results are summed back over
broadcast dims (`unbroadcast`) by `_vjp`. "zero" marks ops with a zero derivative (floor, sign, ...);
comparisons, logical and bitwise ops have no rule: their outputs carry no float cotangent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..registry import ALL, FLOAT, INTEGRAL, NUMERIC, Domain, OpDef, register, scalar, unbroadcast
from ..types import TRITON_NAMES, TensorType, broadcast_shapes, compute_dtype, is_float, is_int
from .half import HALF_TYPES, round_half
from .pointwise_onnx import ONNX

aten = torch.ops.aten

# -- type rules -----------------------------------------------------------------------------------


def _same_dtype(name: str, types: list[TensorType]) -> torch.dtype:
    dtypes = {t.dtype for t in types}
    if len(dtypes) != 1:
        raise TypeError(f"{name}: inputs must share one dtype (insert convert), got {sorted(map(str, dtypes))}")
    return dtypes.pop()


def _infer(name: str, out: str, dtypes: tuple[torch.dtype, ...] | None):
    """out: 'same' | 'bool'; dtypes: the input dtypes the op accepts (None: any)."""

    def infer(types: list[TensorType], **attrs) -> TensorType:
        dtype = _same_dtype(name, types)
        if dtypes is not None and dtype not in dtypes:
            raise TypeError(f"{name}: does not take {dtype} inputs (takes {', '.join(map(str, dtypes))})")
        shape = broadcast_shapes(*(t.shape for t in types))
        return TensorType(shape, torch.bool if out == "bool" else dtype)

    return infer


def pointwise(name: str, impl, triton, *, arity: int = 1, out: str = "same", dtypes=ALL, domains=None, aten=(),
              doc: str = "", vjp=None) -> OpDef:
    """A pointwise op over inputs of one dtype out of `dtypes`, broadcasting; one flop per element.
    `domains` defaults to one `Domain` over `dtypes`."""
    return register(OpDef(name, "pointwise", _infer(name, out, dtypes), impl, arity=arity, triton=triton, doc=doc,
                          vjp=vjp, cost=1, domains=domains or (Domain(dtypes),), aten=tuple(aten),
                          onnx=ONNX.get(name)))


# -- VJP helpers ----------------------------------------------------------------------------------


def _f(g, op: str, *xs, **attrs):
    """g.add with positional inputs: `_f(g, "mul", a, b)`."""
    return g.add(op, list(xs), **attrs)


def _c(g, value, like):
    """A scalar constant of `like`'s dtype."""
    return scalar(g, value, like.dtype)


def _vjp(rule):
    """Wrap a rule returning cotangents at the output's (broadcast) shape: sum each back to its input's
    shape; inputs that are not floating point get None."""

    def vjp(g, inputs, out, ct, **attrs):
        cts = rule(g, inputs, out, ct, **attrs)
        return [None if c is None or not is_float(x.dtype) else unbroadcast(g, c, x.shape)
                for x, c in zip(inputs, cts)]

    return vjp


def _unary_vjp(rule):
    """rule(g, x, y, ct) -> cotangent of x; "zero" for ops whose derivative is zero; None: no rule."""
    if rule is None:
        return None
    if rule == "zero":
        return lambda g, inputs, out, ct, **attrs: [None]
    return _vjp(lambda g, inputs, out, ct, **attrs: [rule(g, inputs[0], out, ct)])


def _fused_backward(rule, dtypes=HALF_TYPES):
    """A rule whose torch counterpart is one backward kernel (`tanh_backward`, `silu_backward`,
    `gelu_backward`, `sigmoid_backward`): for the half types `dtypes` it computes in float32 and rounds
    once, as that kernel does (kernels round every half-typed IR value, so a chain in the half type
    would round at each step). Other rules spell derivatives.yaml formulas of separate ops, each
    rounded in eager too. Wraps rule(g, inputs, out, ct, **attrs) -> [cotangent of inputs[0]]."""

    def wrapped(g, inputs, out, ct, **attrs):
        dtype = inputs[0].dtype
        if dtype not in dtypes:
            return rule(g, inputs, out, ct, **attrs)
        up = [_f(g, "convert", v, dtype=torch.float32) for v in inputs]
        (c,) = rule(g, up, _f(g, "convert", out, dtype=torch.float32), _f(g, "convert", ct, dtype=torch.float32),
                    **attrs)
        return [_f(g, "convert", c, dtype=dtype)]

    return wrapped


def _where0(g, cond, ct):
    """ct where cond holds, else 0."""
    return _f(g, "where", cond, ct, _c(g, 0.0, ct))


def _cube(g, y):
    """torch's `pow(y, 3)`: y * y * y, computed in float32 and rounded once for float16 (torch's CPU
    kernel computes bfloat16 op by op)."""
    if y.dtype != torch.float16:
        return _f(g, "mul", _f(g, "mul", y, y), y)
    w = _f(g, "convert", y, dtype=torch.float32)
    return _f(g, "convert", _f(g, "mul", _f(g, "mul", w, w), w), dtype=y.dtype)


def _rsqrt_vjp(g, x, y, ct):  # torch: -0.5 * grad * result.pow(3)
    return _f(g, "mul", _f(g, "mul", _c(g, -0.5, y), ct), _cube(g, y))


def _silu_vjp(g, x, y, ct):  # torch: grad * sigmoid(x) * (1 + x * (1 - sigmoid(x)))
    s = _f(g, "sigmoid", x)
    d = _f(g, "add", _c(g, 1.0, x), _f(g, "mul", x, _f(g, "sub", _c(g, 1.0, x), s)))
    return _f(g, "mul", _f(g, "mul", ct, s), d)


def _erf_vjp(g, x, y, ct):  # 2/sqrt(pi) * exp(-x^2)
    d = _f(g, "mul", _c(g, 1.1283791670955126, x), _f(g, "exp", _f(g, "neg", _f(g, "mul", x, x))))
    return _f(g, "mul", ct, d)


def _gelu_vjp(g, inputs, out, ct, approximate="none"):
    (x,) = inputs
    if approximate == "tanh":  # torch's gelu_backward, tanh branch
        kappa = 0.044715
        x_sq = _f(g, "mul", x, x)
        x_cube = _f(g, "mul", x_sq, x)
        inner = _f(g, "mul", _c(g, SQRT_2_OVER_PI, x), _f(g, "add", x, _f(g, "mul", _c(g, kappa, x), x_cube)))
        t = _f(g, "tanh", inner)
        left = _f(g, "mul", _c(g, 0.5, x), x)
        right = _f(g, "add", _c(g, 1.0, x), t)
        left_d = _f(g, "mul", _c(g, 0.5, x), right)
        right_d = _f(g, "mul", _f(g, "mul", _f(g, "sub", _c(g, 1.0, x), _f(g, "mul", t, t)), _c(g, SQRT_2_OVER_PI, x)),
                     _f(g, "add", _c(g, 1.0, x), _f(g, "mul", _c(g, 3.0 * kappa, x), x_sq)))
        return [_f(g, "mul", ct, _f(g, "add", left_d, _f(g, "mul", left, right_d)))]
    # exact: cdf(x) + x * pdf(x)
    cdf = _f(g, "mul", _c(g, 0.5, x), _f(g, "add", _c(g, 1.0, x), _f(g, "erf", _f(g, "mul", x, _c(g, SQRT1_2, x)))))
    pdf = _f(g, "mul", _c(g, 0.3989422804014327, x), _f(g, "exp", _f(g, "mul", _c(g, -0.5, x), _f(g, "mul", x, x))))
    return [_f(g, "mul", ct, _f(g, "add", cdf, _f(g, "mul", x, pdf)))]


# -- Triton helpers (text) ------------------------------------------------------------------------


def _lit(value, dtype: torch.dtype) -> str:
    """A literal of `dtype` that Triton will not promote the expression by."""
    return f"tl.full([], {value!r}, {TRITON_NAMES[compute_dtype(dtype)]})"


def _expm1(e, x: str) -> str:
    # expm1 via the classic exp(x)-1 correction: exact where exp rounds to 1, no libdevice needed.
    u = e.tmp(f"tl.exp({x})")
    d = e.tmp(f"{u} - 1.0")
    safe_log = f"tl.log(tl.where({u} == 1.0, 2.0, {u}))"
    r = e.tmp(f"tl.where({u} == 1.0, {x}, {d} * {x} / {safe_log})")
    return f"tl.where({d} == -1.0, -1.0, tl.where({u} == float('inf'), {u}, {r}))"


def _log1p(e, x: str) -> str:
    u = e.tmp(f"1.0 + {x}")
    d = e.tmp(f"{u} - 1.0")
    r = e.tmp(f"tl.where({d} == 0.0, {x}, tl.log({u}) * ({x} / tl.where({d} == 0.0, 1.0, {d})))")
    return f"tl.where({u} == float('inf'), {u}, {r})"


def _tanh(e, x: str) -> str:
    # tanh(|x|) = -expm1(-2|x|) / (2 + expm1(-2|x|)): accurate near 0, saturates cleanly.
    m = e.tmp(_expm1(e, f"-2.0 * tl.abs({x})"))
    t = e.tmp(f"-{m} / (2.0 + {m})")
    return f"tl.where({x} < 0, -{t}, {t})"


def _erf(e, x: str) -> str:
    return f"tl.erf({x})"


def _round(e, x: str, dtype: torch.dtype) -> str:
    if not is_float(dtype):
        return x
    # Adding and subtracting 2**mantissa rounds half to even in IEEE arithmetic.
    big = 2.0**52 if dtype == torch.float64 else 2.0**23
    a = e.tmp(f"tl.abs({x})")
    r = e.tmp(f"({a} + {big!r}) - {big!r}")
    return f"tl.where({a} < {big!r}, tl.where({x} < 0, -{r}, {r}), {x})"


def _trunc(e, x: str) -> str:
    return f"tl.where({x} < 0, tl.ceil({x}), tl.floor({x}))"


def _pow(e, x: str, y: str, dtype: torch.dtype) -> str:
    ax = e.tmp(f"tl.abs({x})")
    if compute_dtype(dtype) == torch.float32:
        # exp2(y * log2|x|) in float32 is off by |y log2 x| ulps (11 near 1e5); in float64 it rounds
        # to float32 correctly in practice, like torch's powf.
        r = e.tmp(f"tl.exp2({y}.to(tl.float64) * tl.log2({ax}.to(tl.float64))).to(tl.float32)")
    else:
        r = e.tmp(f"tl.exp2({y} * tl.log2({ax}))")
    yi = e.tmp(f"{y} == tl.floor({y})")
    odd = e.tmp(f"{yi} & (tl.floor({y} * 0.5) * 2.0 != {y})")
    r = e.tmp(f"tl.where(({x} < 0) & {odd}, -{r}, {r})")
    r = e.tmp(f"tl.where(({x} < 0) & ({yi} == 0), float('nan'), {r})")
    return f"tl.where(({y} == 0) | ({x} == 1.0), 1.0, {r})"


def _div(e, a: str, b: str, dtype: torch.dtype, rounding_mode) -> str:
    if rounding_mode is None:
        return f"{a} / {b}"
    if is_int(dtype):
        q = e.tmp(f"{a} // {b}")  # Triton integer division truncates (C semantics)
        if rounding_mode == "trunc":
            return q
        return f"tl.where(({a} % {b} != 0) & (({a} < 0) != ({b} < 0)), {q} - 1, {q})"
    if rounding_mode == "trunc":
        return _trunc(e, e.tmp(f"{a} / {b}"))
    # floor division as torch computes it (div_floor_floating): exact via fmod.
    mod = e.tmp(_fmod(a, b, dtype))
    div = e.tmp(f"({a} - {mod}) / {b}")
    div = e.tmp(f"tl.where(({mod} != 0) & (({b} < 0) != ({mod} < 0)), {div} - 1.0, {div})")
    fl = e.tmp(f"tl.floor({div})")
    fl = e.tmp(f"tl.where({div} - {fl} > 0.5, {fl} + 1.0, {fl})")
    # a zero quotient takes the sign of a / b, as torch's (copysign(0, a / b)): 0.0 * q carries q's sign
    fl = e.tmp(f"tl.where({div} == 0, 0.0 * ({a} / {b}), {fl})")
    return f"tl.where({b} == 0, {a} / {b}, {fl})"


def _fmod(a: str, b: str, dtype: torch.dtype) -> str:
    """C's fmod (torch.fmod; integers: Triton's `%` truncates as C does). A float `%` is exact under
    Triton's interpreter (numpy's fmod), but compiled for a GPU it is a division, a truncation and an
    fma: fmod(1e10, 3.3) = 323.7, not 0.296. On a GPU, libdevice's exact fmod, which the interpreter
    lacks: the kernel's INTERP constexpr chooses (codegen/emitter.py `interp_params`; the untaken
    branch is never compiled nor run)."""
    if not dtype.is_floating_point:
        return f"{a} % {b}"
    return f"(({a} % {b}) if INTERP else tl.extra.cuda.libdevice.fmod({a}, {b}))"


def _remainder(e, a: str, b: str, dtype: torch.dtype) -> str:
    r = e.tmp(_fmod(a, b, dtype))  # then the sign of the divisor, as torch's remainder
    return f"tl.where(({r} != 0) & (({r} < 0) != ({b} < 0)), {r} + {b}, {r})"


def _sign(e, x: str, dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return x
    if dtype == torch.uint8:  # no -1 (Triton refuses a negative literal with an unsigned operand)
        return f"({x} != 0).to(tl.uint8)"
    return f"tl.where({x} > 0, 1, tl.where({x} < 0, -1, {x}))"


def _convert(e, x: str, src: torch.dtype, dtype: torch.dtype) -> str:
    if dtype == torch.bool:
        return f"{x} != 0"
    if dtype in HALF_TYPES:
        # An explicit cast to a half type rounds there (as torch rounds: see ir/ops/half.py), even
        # inside a fused kernel computing in float32.
        return round_half(e, x, src, dtype)
    return f"{x}.to({TRITON_NAMES[compute_dtype(dtype)]})"


SQRT1_2 = 0.7071067811865476
SQRT_2_OVER_PI = 0.7978845608028654


def _gelu(e, x: str, approximate: str) -> str:
    if approximate == "tanh":
        inner = e.tmp(f"{SQRT_2_OVER_PI!r} * ({x} + 0.044715 * {x} * {x} * {x})")
        return f"0.5 * {x} * (1.0 + {e.tmp(_tanh(e, inner))})"
    return f"0.5 * {x} * (1.0 + tl.erf({x} * {SQRT1_2!r}))"


# -- unary ----------------------------------------------------------------------------------------
_UNARY = [
    # (name, torch reference, triton rule (e, x, dtype) -> expr, dtypes accepted, output,
    #  vjp (g, x, y, ct) -> cotangent of x | "zero" | None). The aten overload is aten.<name>.default.
    ("neg", torch.neg, lambda e, x, d: f"-{x}", NUMERIC, "same",
     lambda g, x, y, ct: _f(g, "neg", ct)),
    ("abs", torch.abs, lambda e, x, d: f"tl.abs({x})", NUMERIC, "same",
     lambda g, x, y, ct: _f(g, "mul", ct, _f(g, "sign", x))),
    ("exp", torch.exp, lambda e, x, d: f"tl.exp({x})", FLOAT, "same",
     lambda g, x, y, ct: _f(g, "mul", ct, y)),
    ("exp2", torch.exp2, lambda e, x, d: f"tl.exp2({x})", FLOAT, "same",
     lambda g, x, y, ct: _f(g, "mul", _f(g, "mul", ct, y), _c(g, 0.6931471805599453, y))),
    ("log", torch.log, lambda e, x, d: f"tl.log({x})", FLOAT, "same",
     lambda g, x, y, ct: _f(g, "div", ct, x)),
    ("log1p", torch.log1p, lambda e, x, d: _log1p(e, x), FLOAT, "same",
     lambda g, x, y, ct: _f(g, "div", ct, _f(g, "add", x, _c(g, 1.0, x)))),
    ("expm1", torch.expm1, lambda e, x, d: _expm1(e, x), FLOAT, "same",
     lambda g, x, y, ct: _f(g, "mul", ct, _f(g, "add", y, _c(g, 1.0, y)))),
    ("sqrt", torch.sqrt, lambda e, x, d: f"tl.sqrt({x})", FLOAT, "same",
     lambda g, x, y, ct: _f(g, "div", ct, _f(g, "mul", _c(g, 2.0, y), y))),
    ("rsqrt", torch.rsqrt, lambda e, x, d: f"1.0 / tl.sqrt({x})", FLOAT, "same",
     _rsqrt_vjp),
    ("reciprocal", torch.reciprocal, lambda e, x, d: f"1.0 / {x}", FLOAT, "same",
     lambda g, x, y, ct: _f(g, "mul", ct, _f(g, "neg", _f(g, "mul", y, y)))),
    ("sin", torch.sin, lambda e, x, d: f"tl.sin({x})", FLOAT, "same",
     lambda g, x, y, ct: _f(g, "mul", ct, _f(g, "cos", x))),
    ("cos", torch.cos, lambda e, x, d: f"tl.cos({x})", FLOAT, "same",
     lambda g, x, y, ct: _f(g, "mul", ct, _f(g, "neg", _f(g, "sin", x)))),
    ("tanh", torch.tanh, lambda e, x, d: _tanh(e, x), FLOAT, "same",
     lambda g, x, y, ct: _f(g, "mul", ct, _f(g, "sub", _c(g, 1.0, y), _f(g, "mul", y, y)))),
    ("sigmoid", torch.sigmoid, lambda e, x, d: f"1.0 / (1.0 + tl.exp(-{x}))", FLOAT, "same",
     lambda g, x, y, ct: _f(g, "mul", _f(g, "mul", ct, _f(g, "sub", _c(g, 1.0, y), y)), y)),  # torch: (g * (1 - y)) * y
    ("relu", torch.relu, lambda e, x, d: f"tl.where({x} < 0, 0, {x})", NUMERIC, "same",
     lambda g, x, y, ct: _where0(g, _f(g, "gt", y, _c(g, 0.0, y)), ct)),
    ("silu", F.silu, lambda e, x, d: f"{x} / (1.0 + tl.exp(-{x}))", FLOAT, "same",
     _silu_vjp),
    ("erf", torch.erf, lambda e, x, d: _erf(e, x), FLOAT, "same",
     _erf_vjp),
    ("floor", torch.floor, lambda e, x, d: f"tl.floor({x})" if is_float(d) else x, NUMERIC, "same",
     "zero"),
    ("ceil", torch.ceil, lambda e, x, d: f"tl.ceil({x})" if is_float(d) else x, NUMERIC, "same",
     "zero"),
    ("trunc", torch.trunc, lambda e, x, d: _trunc(e, x) if is_float(d) else x, NUMERIC, "same",
     "zero"),
    ("round", torch.round, lambda e, x, d: _round(e, x, d), NUMERIC, "same",
     "zero"),
    ("sign", torch.sign, lambda e, x, d: _sign(e, x, d), ALL, "same",
     "zero"),
    ("isnan", torch.isnan, lambda e, x, d: f"{x} != {x}", ALL, "bool",
     None),
    ("logical_not", torch.logical_not, lambda e, x, d: f"{x} == 0", ALL, "bool",
     None),
    ("bitwise_not", torch.bitwise_not, lambda e, x, d: f"{x} == 0" if d == torch.bool else f"~{x}", INTEGRAL, "same",
     None),
    # Any dtype: materialize_outputs copies graph outputs of every dtype, extern-only ones included.
    ("copy", torch.clone, lambda e, x, d: x, None, "same",
     lambda g, x, y, ct: ct),
]

# Where generated tests sample the unary ops whose default domain (-3, 3) would leave theirs.
_UNARY_DOMAINS = {
    "log": Domain(FLOAT, low=0.1), "sqrt": Domain(FLOAT, low=0.1), "rsqrt": Domain(FLOAT, low=0.1),
    "log1p": Domain(FLOAT, low=-0.9), "reciprocal": Domain(FLOAT, nonzero=(0,)),
    "copy": Domain(ALL, rejects=()),
}
# Lowered from another aten op than aten.<name>.default (copy: aten.clone is an identity).
_UNARY_ATEN = {"copy": ()}

# Ops whose backward is one float32 kernel in torch, for these half types (and gelu, below): see
# _fused_backward. torch's CPU sigmoid_backward computes float16 in float16, op by op.
_FUSED_BACKWARD = {"sigmoid": (torch.bfloat16,), "tanh": HALF_TYPES, "silu": HALF_TYPES}

for _name, _ref, _rule, _dtypes, _out, _grad in _UNARY:
    if _name in _FUSED_BACKWARD:
        _grad = _fused_backward((lambda rule: lambda g, inputs, out, ct: [rule(g, inputs[0], out, ct)])(_grad),
                                _FUSED_BACKWARD[_name])
        _grad = _vjp(_grad)
    else:
        _grad = _unary_vjp(_grad)
    pointwise(
        _name,
        (lambda ref: lambda x: ref(x))(_ref),
        (lambda rule: lambda e, args, dtypes, out: rule(e, args[0], dtypes[0]))(_rule),
        out=_out,
        dtypes=_dtypes,
        domains=(_UNARY_DOMAINS[_name],) if _name in _UNARY_DOMAINS else None,
        aten=_UNARY_ATEN.get(_name, (getattr(aten, _name).default,)),
        vjp=_grad,
    )

pointwise(
    "gelu",
    lambda x, approximate="none": F.gelu(x, approximate=approximate),
    lambda e, args, dtypes, out, approximate="none": _gelu(e, args[0], approximate),
    dtypes=FLOAT,
    domains=(Domain(FLOAT, {"approximate": "none"}), Domain(FLOAT, {"approximate": "tanh"})),
    aten=(aten.gelu.default,),
    doc="GELU, exact (erf) or approximate='tanh'",
    vjp=_vjp(_fused_backward(_gelu_vjp)),
)


def _softplus(e, x: str, dtype: torch.dtype, beta, threshold) -> str:
    # torch's kernel: x * beta > threshold ? x : log1p(exp(x * beta)) / beta, in the compute dtype.
    xb = e.tmp(f"{x} * {_lit(beta, dtype)}")
    soft = e.tmp(_log1p(e, e.tmp(f"tl.exp({xb})")))
    return f"tl.where({xb} > {_lit(threshold, dtype)}, {x}, {soft} / {_lit(beta, dtype)})"


def _softplus_vjp(g, inputs, out, ct, beta=1.0, threshold=20.0):
    # derivatives.yaml: softplus_backward(grad, self, beta, threshold): z = exp(x * beta);
    # x * beta > threshold ? grad : grad * z / (z + 1). One kernel in torch (_fused_backward).
    (x,) = inputs
    xb = _f(g, "mul", x, _c(g, beta, x))
    z = _f(g, "exp", xb)
    soft = _f(g, "div", _f(g, "mul", ct, z), _f(g, "add", z, _c(g, 1.0, z)))
    return [_f(g, "where", _f(g, "gt", xb, _c(g, threshold, xb)), ct, soft)]


pointwise(
    "softplus",
    lambda x, beta=1.0, threshold=20.0: F.softplus(x, beta, threshold),
    lambda e, args, dtypes, out, beta=1.0, threshold=20.0: _softplus(e, args[0], dtypes[0], beta, threshold),
    dtypes=FLOAT,
    domains=(Domain(FLOAT, {"beta": 1.0, "threshold": 20.0}), Domain(FLOAT, {"beta": 2.0, "threshold": 1.0})),
    aten=(aten.softplus.default,),
    doc="log1p(exp(x * beta)) / beta, x where x * beta > threshold",
    vjp=_vjp(_fused_backward(_softplus_vjp)),
)


def _convert_infer(types: list[TensorType], dtype: torch.dtype) -> TensorType:
    return TensorType(types[0].shape, dtype)


def _convert_vjp(g, inputs, out, ct, dtype):
    (x,) = inputs
    if not is_float(x.dtype):
        return [None]
    return [ct if x.dtype == ct.dtype else _f(g, "convert", ct, dtype=x.dtype)]


register(OpDef(
    "convert", "pointwise", _convert_infer,
    lambda x, dtype: x.to(dtype),
    triton=lambda e, args, dtypes, out, dtype: _convert(e, args[0], dtypes[0], dtype),
    vjp=_convert_vjp,
    cost=1,
    # From any dtype (extern-only ones too); sampled in [0, 3], where every target holds the value.
    domains=tuple(Domain(ALL, {"dtype": t}, low=0.0, rejects=())
                  for t in (torch.float32, torch.float16, torch.bfloat16, torch.int32, torch.bool)),
    aten=(aten._to_copy.default, torch.ops.prims.convert_element_type.default),
    doc="cast to `dtype` (float to int truncates toward zero, to bool tests != 0)",
    onnx=ONNX["convert"],
))

# -- binary ---------------------------------------------------------------------------------------


def _pow_vjp(g, a, b, y, ct):
    # torch: grad * b * a^(b-1), 0 where b == 0; grad * y * log(a), 0 where a == 0 and b >= 0.
    ga = _f(g, "mul", ct, _f(g, "mul", b, _f(g, "pow", a, _f(g, "sub", b, _c(g, 1.0, b)))))
    ga = _f(g, "where", _f(g, "eq", b, _c(g, 0.0, b)), _c(g, 0.0, ct), ga)
    zero_base = _f(g, "logical_and", _f(g, "eq", a, _c(g, 0.0, a)), _f(g, "ge", b, _c(g, 0.0, b)))
    gb = _f(g, "mul", ct, _f(g, "where", zero_base, _c(g, 0.0, y), _f(g, "mul", y, _f(g, "log", a))))
    return [ga, gb]


def _minmax_vjp(g, a, b, ct, a_loses: str, b_loses: str):
    # torch: ties split the gradient evenly; the losing side gets 0 (NaN compares false: both get it).
    half = _f(g, "where", _f(g, "eq", a, b), _f(g, "mul", ct, _c(g, 0.5, ct)), ct)
    return [_f(g, "where", _f(g, a_loses, a, b), _c(g, 0.0, ct), half),
            _f(g, "where", _f(g, b_loses, a, b), _c(g, 0.0, ct), half)]

_BINARY = [
    # (name, torch reference, triton rule (e, a, b, dtype) -> expr, dtypes accepted, output,
    #  vjp (g, a, b, y, ct) -> [cotangent of a, of b] at y's shape | None). The aten overloads are
    #  aten.<name>'s Tensor and Scalar overloads, or its default one (_BINARY_ATEN: others).
    # bool add is logical or in torch; int1 + int1 would wrap to 0 in Triton.
    ("add", torch.add, lambda e, a, b, d: f"{a} | {b}" if d == torch.bool else f"{a} + {b}", ALL, "same",
     lambda g, a, b, y, ct: [ct, ct]),
    ("sub", torch.sub, lambda e, a, b, d: f"{a} - {b}", NUMERIC, "same",
     lambda g, a, b, y, ct: [ct, _f(g, "neg", ct)]),
    ("mul", torch.mul, lambda e, a, b, d: f"{a} * {b}", ALL, "same",
     lambda g, a, b, y, ct: [_f(g, "mul", ct, b), _f(g, "mul", ct, a)]),
    ("pow", torch.pow, lambda e, a, b, d: _pow(e, a, b, d), FLOAT, "same",
     _pow_vjp),
    ("maximum", torch.maximum, lambda e, a, b, d: f"tl.where(({a} > {b}) | ({a} != {a}), {a}, {b})", ALL, "same",
     lambda g, a, b, y, ct: _minmax_vjp(g, a, b, ct, "lt", "gt")),
    ("minimum", torch.minimum, lambda e, a, b, d: f"tl.where(({a} < {b}) | ({a} != {a}), {a}, {b})", ALL, "same",
     lambda g, a, b, y, ct: _minmax_vjp(g, a, b, ct, "gt", "lt")),
    ("fmod", torch.fmod, lambda e, a, b, d: _fmod(a, b, d), NUMERIC, "same",
     lambda g, a, b, y, ct: [ct, _f(g, "neg", _f(g, "mul", ct, _f(g, "div", a, b, rounding_mode="trunc")))]),
    ("remainder", torch.remainder, lambda e, a, b, d: _remainder(e, a, b, d), NUMERIC, "same",
     lambda g, a, b, y, ct: [ct, _f(g, "neg", _f(g, "mul", ct, _f(g, "div", a, b, rounding_mode="floor")))]),
    ("eq", torch.eq, lambda e, a, b, d: f"{a} == {b}", ALL, "bool",
     None),
    ("ne", torch.ne, lambda e, a, b, d: f"{a} != {b}", ALL, "bool",
     None),
    ("lt", torch.lt, lambda e, a, b, d: f"{a} < {b}", ALL, "bool",
     None),
    ("le", torch.le, lambda e, a, b, d: f"{a} <= {b}", ALL, "bool",
     None),
    ("gt", torch.gt, lambda e, a, b, d: f"{a} > {b}", ALL, "bool",
     None),
    ("ge", torch.ge, lambda e, a, b, d: f"{a} >= {b}", ALL, "bool",
     None),
    ("logical_and", torch.logical_and, lambda e, a, b, d: f"({a} != 0) & ({b} != 0)", ALL, "bool",
     None),
    ("logical_or", torch.logical_or, lambda e, a, b, d: f"({a} != 0) | ({b} != 0)", ALL, "bool",
     None),
    ("logical_xor", torch.logical_xor, lambda e, a, b, d: f"({a} != 0) ^ ({b} != 0)", ALL, "bool",
     None),
    ("bitwise_and", torch.bitwise_and, lambda e, a, b, d: f"{a} & {b}", INTEGRAL, "same",
     None),
    ("bitwise_or", torch.bitwise_or, lambda e, a, b, d: f"{a} | {b}", INTEGRAL, "same",
     None),
    ("bitwise_xor", torch.bitwise_xor, lambda e, a, b, d: f"{a} ^ {b}", INTEGRAL, "same",
     None),
]

# Where generated tests sample the binary ops whose default domain (-3, 3) would leave theirs.
_BINARY_DOMAINS = {
    "pow": Domain(FLOAT, ranges={0: (0.1, 3.0)}),
    "fmod": Domain(NUMERIC, nonzero=(1,)),  # integer modulo by zero is undefined behaviour in a kernel
    "remainder": Domain(NUMERIC, nonzero=(1,)),
}


_BINARY_ATEN = {
    "pow": (aten.pow.Tensor_Tensor, aten.pow.Tensor_Scalar, aten.pow.Scalar),
    "remainder": (aten.remainder.Tensor, aten.remainder.Scalar, aten.remainder.Scalar_Tensor),
}


def _binary_aten(name: str) -> tuple:
    if name in _BINARY_ATEN:
        return _BINARY_ATEN[name]
    packet = getattr(aten, name)
    return tuple(getattr(packet, o) for o in ("Tensor", "Scalar") if o in packet.overloads()) or (packet.default,)


for _name, _ref, _rule, _dtypes, _out, _grad in _BINARY:
    pointwise(
        _name,
        (lambda ref: lambda a, b: ref(a, b))(_ref),
        (lambda rule: lambda e, args, dtypes, out: rule(e, args[0], args[1], dtypes[0]))(_rule),
        arity=2,
        out=_out,
        dtypes=_dtypes,
        domains=(_BINARY_DOMAINS[_name],) if _name in _BINARY_DOMAINS else None,
        aten=_binary_aten(_name),
        vjp=None if _grad is None else _vjp((lambda rule: lambda g, inputs, out, ct: rule(g, *inputs, out, ct))(_grad)),
    )


def _div_vjp(g, inputs, out, ct, rounding_mode=None):
    if rounding_mode is not None:  # floor/trunc division: zero derivative, as in torch
        return [None, None]
    a, b = inputs
    return [_f(g, "div", ct, b), _f(g, "div", _f(g, "mul", _f(g, "neg", ct), a), _f(g, "mul", b, b))]


def _div_infer(types: list[TensorType], rounding_mode=None) -> TensorType:
    if rounding_mode not in (None, "trunc", "floor"):
        raise ValueError(f"div: rounding_mode must be None, 'trunc' or 'floor', got {rounding_mode!r}")
    if rounding_mode is None and not is_float(_same_dtype("div", types)):
        raise TypeError("div: true division needs floating-point inputs (convert first)")
    return _infer("div", "same", NUMERIC)(types)


def _div_impl(a: torch.Tensor, b: torch.Tensor, rounding_mode=None) -> torch.Tensor:
    if rounding_mode == "trunc" and a.dtype == torch.bfloat16:
        # torch's CPU kernel truncates the float32 quotient in its scalar loop but the quotient
        # rounded to bfloat16 in its vectorized one (-2.828 / -0.5664 = 4.993: 4, or 5 by layout).
        # The reference and kernels take the float32 quotient, as the scalar loop does.
        return torch.div(a.float(), b.float(), rounding_mode="trunc").to(a.dtype)
    return torch.div(a, b, rounding_mode=rounding_mode)


register(OpDef(
    "div", "pointwise", _div_infer,
    _div_impl,
    arity=2,
    triton=lambda e, args, dtypes, out, rounding_mode=None: _div(e, args[0], args[1], dtypes[0], rounding_mode),
    vjp=_vjp(_div_vjp),
    cost=1,
    domains=(Domain(FLOAT, nonzero=(1,)), Domain(NUMERIC, {"rounding_mode": "trunc"}, nonzero=(1,)),
             Domain(NUMERIC, {"rounding_mode": "floor"}, nonzero=(1,))),
    aten=(aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode, aten.div.Scalar_mode),
    onnx=ONNX["div"],
))

# -- ternary and clamp ----------------------------------------------------------------------------


def _where_infer(types: list[TensorType]) -> TensorType:
    c, a, b = types
    if c.dtype != torch.bool:
        raise TypeError(f"where: condition must be bool, got {c.dtype}")
    dtype = _same_dtype("where", [a, b])
    return TensorType(broadcast_shapes(c.shape, a.shape, b.shape), dtype)


register(OpDef(
    "where", "pointwise", _where_infer, torch.where,
    arity=3,
    triton=lambda e, args, dtypes, out: f"tl.where({args[0]}, {args[1]}, {args[2]})",
    vjp=_vjp(lambda g, inputs, out, ct: [None, _where0(g, inputs[0], ct),
                                         _f(g, "where", inputs[0], _c(g, 0.0, ct), ct)]),
    cost=1,
    domains=(Domain(ALL, fixed={0: torch.bool}, rejects=()),),
    aten=(aten.where.self,),
    onnx=ONNX["where"],
))


def _clamp_infer(types: list[TensorType], min=None, max=None) -> TensorType:
    return _infer("clamp", "same", NUMERIC)(types)


def _clamp(e, args, dtypes, out, min=None, max=None) -> str:
    x = args[0]
    # Comparisons that are false for NaN keep NaN, as torch.clamp does.
    if min is not None:
        x = e.tmp(f"tl.where({x} < {_lit(min, dtypes[0])}, {_lit(min, dtypes[0])}, {x})")
    if max is not None:
        x = e.tmp(f"tl.where({x} > {_lit(max, dtypes[0])}, {_lit(max, dtypes[0])}, {x})")
    return x


def _clamp_vjp(g, inputs, out, ct, min=None, max=None):
    # torch: grad where min <= x <= max (NaN x: 0), bounds that are None ignored.
    (x,) = inputs
    masks = []
    if min is not None:
        masks.append(_f(g, "ge", x, _c(g, min, x)))
    if max is not None:
        masks.append(_f(g, "le", x, _c(g, max, x)))
    if not masks:
        return [ct]
    mask = masks[0] if len(masks) == 1 else _f(g, "logical_and", *masks)
    return [_where0(g, mask, ct)]


register(OpDef(
    "clamp", "pointwise", _clamp_infer,
    lambda x, min=None, max=None: torch.clamp(x, min, max),
    triton=_clamp,
    vjp=_vjp(_clamp_vjp),
    cost=1,
    # Bounds of every numeric dtype (a negative one would wrap for uint8), then fractional ones.
    domains=(Domain(NUMERIC, {"min": 0, "max": 2}), Domain(FLOAT, {"min": -0.5, "max": None}, rejects=(torch.bool,)),
             Domain(FLOAT, {"min": None, "max": 0.25}, rejects=(torch.bool,))),
    aten=(aten.clamp.default,),
    doc="clamp to scalar bounds (tensor bounds lower to maximum/minimum)",
    onnx=ONNX["clamp"],
))
