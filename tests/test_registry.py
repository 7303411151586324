"""Tests generated from the op registry, as PyTorch's OpInfo and JAX's grad_test_spec do: every
registered pointwise, reduction, composite and constant op (the registry is iterated, never a hand
list) on samples drawn from its declared `domains`:

(a) the reference `impl` against torch eager (the aten overload it is lowered from),
(b) its VJP rule against torch.autograd (float64),
(c) the generated kernel (a one-op graph through `compile_ir`) against the reference interpreter,

plus the entry's other rules: type rules accept exactly the declared dtypes and reject the listed
ones (no case is dropped because a type rule refused it), the lowering table agrees with `aten`,
views, arity and cost. The default run samples a few dtypes; `-m slow` runs every declared one.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_codegen_util import TOL, assert_same

import ember
from ember.frontend import lower_pointwise
from ember.frontend.capture import capture
from ember.frontend.decompositions import DECOMPOSITIONS
from ember.frontend.lowering import LOWERINGS, load_rules, lower
from ember.ir import OPS, Graph, TensorType, evaluate
from ember.ir.domains import ALL
from ember.ir.ops.index import GATHER_OPS
from ember.ir.ops.window import WINDOW_OPS
from ember.ir.registry import flops, is_view, primitive_aten_ops, view_root
from ember.passes.autodiff import vjp_graph
from ember.runtime import compile_ir

F32, F16, BF16, F64 = torch.float32, torch.float16, torch.bfloat16, torch.float64
I32, U8, B = torch.int32, torch.uint8, torch.bool

load_rules()  # every aten rule registered, as a first capture would
SAMPLED_KINDS = ("pointwise", "reduction", "scan", "composite", "constant", "conv", "attention")
# dtypes the default run compiles; every other declared dtype runs under -m slow.
FAST = (F32, BF16, I32, B)

# Input shapes by arity when a domain names none: a non-contiguous input (a transposed view, read
# through runtime strides), broadcasting ones (a size-1 dim, a missing leading dim).
SHAPES = {0: (), 1: ((6, 8),), 2: ((3, 1, 8), (4, 8)), 3: ((4, 1), (4, 8), (8,))}


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _shapes(op: str, domain) -> tuple[tuple[int, ...], ...]:
    if domain.shapes is not None:
        return domain.shapes
    arity = OPS[op].arity
    assert isinstance(arity, int), f"{op}: a variadic op needs `shapes` in its domains"
    return SHAPES[arity]


def _types(op: str, domain, dtype: torch.dtype) -> list[TensorType]:
    return [TensorType(s, domain.input_dtype(i, dtype)) for i, s in enumerate(_shapes(op, domain))]


def _inputs(op: str, domain, dtype: torch.dtype) -> list[torch.Tensor]:
    xs = []
    for i, s in enumerate(_shapes(op, domain)):
        if OPS[op].arity == 1 and domain.shapes is None:  # transposed: non-contiguous
            xs.append(domain.sample(i, s[::-1], dtype).t())
        else:
            xs.append(domain.sample(i, s, dtype))
    return xs


def _graph(op: str, domain, dtype: torch.dtype) -> Graph:
    g = Graph()
    xs = [g.add_input(t) for t in _types(op, domain, dtype)]
    out = g.add(op, xs, **domain.attrs_for(dtype))
    g.set_outputs(out if isinstance(out, list) else [out])
    return g


def _sampled() -> list[tuple[str, int]]:
    return [(n, k) for n, o in sorted(OPS.items()) if o.kind in SAMPLED_KINDS or n in GATHER_OPS | WINDOW_OPS
            for k in range(len(o.domains))]  # gathers: layout ops, kernels of the pointwise emitter


def _cases(fast: tuple[torch.dtype, ...] = FAST) -> list:
    """pytest params (op, domain index, dtype) over each domain's dtypes; those not in `fast` are slow."""
    cases = []
    for op, k in _sampled():
        for d in OPS[op].domains[k].dtypes:
            marks = () if d in fast else (pytest.mark.slow,)
            cases.append(pytest.param(op, k, d, id=f"{op}-{k}-{_name(d)}", marks=marks))
    return cases


# -- the entries themselves -------------------------------------------------------------------------


def test_every_sampled_kind_declares_domains_and_cost():
    for name, op in OPS.items():
        if op.kind in SAMPLED_KINDS:
            assert op.domains, f"{name}: no sample domains (generated tests would skip it)"
        if op.kind in ("pointwise", "reduction", "matmul", "constant"):
            assert op.cost, f"{name}: no cost"
        assert all(isinstance(a, torch._ops.OpOverload) for a in op.aten), name


def test_views_are_the_layout_ops_the_runtime_folds_into_strides():
    views = {n for n in OPS if is_view(n)}
    assert views == {"reshape", "permute", "expand", "slice", "select", "flip",
                     "stop_gradient", "untracked_update", "zero_gradient", "no_derivative"}
    g = Graph()
    x = g.add_input(TensorType((4, 6), F32))
    v = g.add("flip", [g.add("slice", [g.add("permute", [x], dims=(1, 0))], dim=0, start=1, end=5, step=2)],
              dims=(0,))
    c = g.add("cat", [v, v], dim=0)
    assert view_root(v) is x and view_root(c) is c and view_root(g.add("exp", [v])) is not x


def test_flops_come_from_each_entry():
    g = Graph()
    a, b = g.add_input(TensorType((2, 3, 4), F32)), g.add_input(TensorType((4, 5), F32))
    m = g.add("matmul", [a, b])
    s = g.add("sum", [m], dims=(2,), keepdim=False)
    e = g.add("exp", [s])
    r = g.add("reshape", [e], shape=(6,))
    by_op = {n.op: flops(n) for n in g.nodes}
    assert by_op == {"matmul": 2 * 2 * 3 * 5 * 4, "sum": 30, "exp": 6, "reshape": 0}
    assert r.producer.op == "reshape"


def test_wrong_arity_is_refused_when_building():
    g = Graph()
    x = g.add_input(TensorType((3,), F32))
    with pytest.raises(TypeError, match="exp: takes 1 input"):
        g.add("exp", [x, x])
    with pytest.raises(TypeError, match="where: takes 3 input"):
        g.add("where", [x])
    with pytest.raises(TypeError, match="cat: takes at least 1"):
        g.add("cat", [], dim=0)


@pytest.mark.parametrize("op", sorted(n for n, o in OPS.items() if o.domains))
def test_type_rule_accepts_the_declared_dtypes_and_rejects_the_listed_ones(op):
    """Each domain's dtypes are accepted and its rejections refused; a dtype neither sampled nor
    rejected by a domain must be sampled by another domain of the op (nothing falls through)."""
    opdef = OPS[op]
    sampled = {d for dom in opdef.domains for d in dom.dtypes}
    for k, dom in enumerate(opdef.domains):
        for d in dom.dtypes:
            opdef.infer(_types(op, dom, d), **dom.attrs_for(d))  # raises: a rejection not declared
        for d in dom.rejected():
            with pytest.raises(TypeError):
                opdef.infer(_types(op, dom, d), **dom.attrs_for(d))
                pytest.fail(f"{op} domain {k}: the type rule accepts {d}, listed as rejected")
        unlisted = set(ALL) - set(dom.dtypes) - set(dom.rejected()) - sampled
        assert not unlisted, f"{op} domain {k}: {sorted(map(str, unlisted))} neither sampled nor rejected"


# -- (a) the reference implementation against torch eager --------------------------------------------

# Registry attribute names that differ from aten's argument names.
ATEN_NAMES = {"dims": "dim"}
# Declared dtypes the aten op refuses although the IR op takes them (an IR program reaches them
# through another aten op); the reason is in the entry's impl.
EAGER_REFUSES = {("argmax", B): "torch.max(x, dim) lowers its indices to argmax",
                 ("argmin", B): "torch.min(x, dim) lowers its indices to argmin"}
# Declared cases where eager's result depends on the memory layout; (a) compares with eager's scalar
# loop (on float32 inputs, rounded once), which the reference and kernels follow (the entry's impl).
LAYOUT_DEPENDENT = {("div", BF16, "trunc"): "torch's vectorized loop truncates the bfloat16-rounded quotient"}
# Ops whose aten overloads take other arguments than the op's attributes (sizes, a length).
UNBINDABLE = {"full": "aten.full takes a size and a fill value", "arange": "aten.arange takes start, end, step",
              "index_select": "aten.index_select takes dim between its tensors (tests/test_index.py)",
              "gather": "aten.gather takes dim between its tensors (tests/test_index.py)",
              "index": "aten.index.Tensor takes a list of optional tensors (tests/test_index.py)",
              "iota": "prims.iota takes a length and start/step"}


def _bind(overload, op: str, domain, dtype: torch.dtype):
    """(args, kwargs) calling `overload` with the op's inputs and attributes, or None if its schema
    does not take them (tensors positionally, attributes by name)."""
    n = len(_shapes(op, domain))
    schema = overload._schema.arguments
    if len(schema) < n or any(not str(a.type).startswith("Tensor") for a in schema[:n]):
        return None
    attrs = {ATEN_NAMES.get(k, k): v for k, v in domain.attrs_for(dtype).items()}
    names = {a.name for a in schema[n:]}
    if not set(attrs) <= names:
        return None
    for a in schema[n:]:  # an int argument gets a single dim
        if str(a.type) == "int" and isinstance(attrs.get(a.name), tuple):
            if len(attrs[a.name]) != 1:
                return None
            attrs[a.name] = attrs[a.name][0]
    return attrs


def _aten_case(op: str, k: int):
    domain = OPS[op].domains[k]
    for overload in OPS[op].aten:
        if _bind(overload, op, domain, domain.dtypes[0]) is not None:
            return overload
    return None


def test_every_op_with_aten_ops_is_compared_with_eager():
    unchecked = sorted(op for op, o in OPS.items() if o.aten and o.domains and op not in UNBINDABLE
                       and all(_aten_case(op, k) is None for k in range(len(o.domains))))
    assert not unchecked, f"no domain of these ops binds to one of their aten overloads: {unchecked}"
    assert all(_aten_case(op, k) is None for op in UNBINDABLE for k in range(len(OPS[op].domains)))


@pytest.mark.parametrize("op,k,dtype", [p for p in _cases(fast=ALL) if _aten_case(*p.values[:2]) is not None])
def test_impl_matches_eager(op, k, dtype):
    domain = OPS[op].domains[k]
    overload = _aten_case(op, k)
    xs = [x.contiguous() for x in _inputs(op, domain, dtype)]
    kwargs = _bind(overload, op, domain, dtype)
    ref = OPS[op].impl(*xs, **domain.attrs_for(dtype))
    if (op, dtype) in EAGER_REFUSES:
        with pytest.raises(RuntimeError):
            overload(*xs, **kwargs)
        return
    if (op, dtype, domain.attrs.get("rounding_mode")) in LAYOUT_DEPENDENT:
        assert_same(ref, overload(*[x.float() for x in xs], **kwargs).to(dtype))
        return
    assert_same(ref, overload(*xs, **kwargs))


# -- (b) VJP rules against torch.autograd ------------------------------------------------------------


def _vjp_cases() -> list:
    cases = []
    for op, k in _sampled():
        domain = OPS[op].domains[k]
        if OPS[op].vjp is None or not domain.grad or F64 not in domain.dtypes:
            continue
        types = _types(op, domain, F64)
        out = OPS[op].infer(types, **domain.attrs_for(F64))
        out = out[0] if isinstance(out, list) else out  # multi-output ops (attention): output 0 is differentiated
        if out.dtype.is_floating_point and any(t.dtype.is_floating_point for t in types):
            cases.append(pytest.param(op, k, id=f"{op}-{k}"))
    return cases


def test_every_differentiable_op_has_its_vjp_checked():
    checked = {p.values[0] for p in _vjp_cases()}
    missing = sorted(n for n, o in OPS.items() if o.vjp is not None and o.domains and n not in checked
                     and n != "rand")  # rand's only input is its integer seed
    assert not missing, f"VJP rules no domain checks (no float64 domain with a float output): {missing}"


@pytest.mark.parametrize("op,k", _vjp_cases())
def test_vjp_matches_autograd(op, k):
    domain = OPS[op].domains[k]
    g = _graph(op, domain, F64)
    wrt = [i for i, v in enumerate(g.inputs) if v.dtype.is_floating_point]
    joint = vjp_graph(g, wrt)
    xs = _inputs(op, domain, F64)
    ct = torch.randn(g.outputs[0].shape, dtype=F64).to(g.outputs[0].dtype)
    got = evaluate(joint, *xs, ct)[len(g.outputs):]
    leaves = [x.clone().requires_grad_(i in wrt) for i, x in enumerate(xs)]
    out = OPS[op].impl(*leaves, **domain.attrs_for(F64))
    out = out[0] if isinstance(out, tuple) else out
    want = torch.autograd.grad(out, [leaves[i] for i in wrt], ct, allow_unused=True)
    for i, a, b in zip(wrt, got, want):
        b = torch.zeros_like(xs[i]) if b is None else b
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9, msg=lambda m, i=i: f"{op}: input {i}: {m}")


# -- (c) generated kernels against the reference interpreter -----------------------------------------


@pytest.mark.parametrize("op,k,dtype", _cases())
def test_codegen_matches_interpreter(op, k, dtype):
    domain = OPS[op].domains[k]
    g = _graph(op, domain, dtype)
    xs = _inputs(op, domain, dtype)
    outs = compile_ir(g)(xs)
    refs = evaluate(g, *xs)
    for o, r in zip(outs, refs, strict=True):
        assert_same(o, r)


# -- aten: the lowering table agrees with the entries ------------------------------------------------


def test_declared_aten_ops_are_lowered_and_kept_whole():
    for name, op in OPS.items():
        for a in op.aten:
            assert a in LOWERINGS, f"{name}: {a} has no lowering rule"
    kept = primitive_aten_ops()
    assert not kept & set(DECOMPOSITIONS), "capture decomposes aten ops of IR primitives"
    assert torch.ops.aten.softplus.default in kept  # one entry made softplus a primitive


def test_pointwise_lowering_tables_agree_with_the_entries():
    tables = {**lower_pointwise.UNARY, **lower_pointwise.UNARY_PREDICATE, **lower_pointwise.BINARY,
              **lower_pointwise.BINARY_PREDICATE}
    # aten ops capture decomposes never reach their rule (sgn, clamp_min, ...): not declared.
    lowered = {a: name for a, name in tables.items() if a not in DECOMPOSITIONS}
    declared = {a: name for name, op in OPS.items() for a in op.aten if a in tables}
    assert lowered == declared


@pytest.mark.parametrize("op,k", [pytest.param(op, k, id=f"{op}-{k}") for op, k in _sampled()
                                  if _aten_case(op, k) is not None])
def test_lowering_gives_the_op(op, k):
    """Capturing a call of the op's aten overload (torch's decompositions included) gives the op."""
    domain = OPS[op].domains[k]
    dtype = next(d for d in domain.dtypes if (op, d) not in EAGER_REFUSES)
    overload = _aten_case(op, k)
    kwargs = _bind(overload, op, domain, dtype)
    xs = [x.contiguous() for x in _inputs(op, domain, dtype)]
    graph = lower(capture(lambda *a: overload(*a, **kwargs), tuple(xs)).gm).graph
    assert op in [n.op for n in graph.nodes], f"{overload} lowers to {[n.op for n in graph.nodes]}"


# -- softplus: a primitive with attributes, from one entry and one lowering line ----------------------


@pytest.mark.parametrize("dtype", [F32, BF16, F16])
@pytest.mark.parametrize("beta,threshold", [(1.0, 20.0), (2, 1.5)])
def test_softplus_forward_and_gradient_round_as_eager(dtype, beta, threshold):
    """One kernel each way, computing half types in float32 and rounding once, as torch's CPU
    kernels (softplus, softplus_backward) do. Exact but for results next to a rounding boundary,
    where Triton's float32 exp (numpy under the interpreter) and torch's differ by an ulp: such an
    element may round the other way (at most 1 unit of the half type), in about 2**-13 of the
    elements for float16, so a few of 512; a result rounded op by op is off in far more."""
    fn = lambda x: F.softplus(x, beta=beta, threshold=threshold)
    x = (torch.randn(512, dtype=F64) * 3).to(dtype)
    ct = torch.randn(512, dtype=F64).to(dtype)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    fn(xe).backward(ct)
    out = ember.compile(fn)(xc)
    out.backward(ct)
    assert [n.op for n in ember.trace(fn, x).captured_graph.nodes] == ["softplus"]
    for got, want in ((out.detach(), fn(x)), (xc.grad, xe.grad)):
        if dtype == F32:
            torch.testing.assert_close(got, want, rtol=TOL[F32][0], atol=TOL[F32][1])
            continue
        assert ((got.double() - want.double()).abs() <= _ulp(want)).all()
        assert (got != want).sum() <= 4, f"{(got != want).sum()} of 512 differ"


def _ulp(x: torch.Tensor) -> torch.Tensor:
    """The spacing of half-type values at |x| (float64), subnormals included."""
    bits, emin = {F16: (10, -14), BF16: (7, -126)}[x.dtype]
    _, e = torch.frexp(x.double().abs())
    return torch.ldexp(torch.ones_like(x, dtype=F64), torch.clamp(e - 1, min=emin) - bits)
