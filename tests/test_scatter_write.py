"""Non-accumulating scatters (ir/ops/scatter.py `scatter`, `index_copy`, `index_put`; the
`segment_write` kernel of codegen/scatter.py; frontend/lower_scatter.py): values and gradients
against eager on fresh random inputs with many repeated indices, negative indices, several index
tensors, boolean masks; eager's range errors; and that each runs as the sort plus one scatter kernel.

Exactness: a write copies one source element, so every dtype is compared bit for bit. With repeated
indices eager's CPU kernels write serially, in source order, so the last source wins; ember's kernel
writes each destination's last source (after a stable sort), on every device. (On CUDA eager's result
with repeated indices is undefined: these comparisons are CPU ones.) Accumulating `index_put` with
several index tensors sums in source order from x: float32/float64 results are eager's bit for bit,
half types are compared with eager in float64 within the one-op tolerance (test_scatter.py).
"""

from __future__ import annotations

import pytest
import torch
from testing import TOLERANCES, assert_compiled_gradients_match, assert_index_error_like_eager, check_static_graph

import ember
from ember.ir.ops.scatter import SORT_TARGET

aten = torch.ops.aten
F32, F64, F16, BF16 = torch.float32, torch.float64, torch.float16, torch.bfloat16
I64, I32, B = torch.int64, torch.int32, torch.bool


def _rand(shape, dtype):
    if dtype == B:
        return torch.randint(0, 2, shape).bool()
    if not dtype.is_floating_point:
        return torch.randint(-50, 50, shape, dtype=dtype)
    return torch.randn(shape, dtype=dtype)


def _idx(shape, low, high, dtype=I64):
    return torch.randint(low, high, shape, dtype=dtype)


def _put(x, i, v):
    y = x.clone()
    y[i] = v
    return y


def _put2(x, i, j, v):
    y = x.clone()
    y[i, j] = v
    return y


def _put_apart(x, i, j, v):  # indexed dims not adjacent: torch puts the index shape first
    y = x.clone()
    y[i, :, j] = v
    return y


def _scatter_inplace(x, i, s):
    x.scatter_(1, i, s)  # mutates the input: written back after the run
    return x * 1


# name -> (fn, inputs(value dtype, index dtype), accumulates). Index ranges are small against their
# lengths: most destinations are written several times.
CASES = {
    "scatter_dim0": (lambda x, i, s: x.scatter(0, i, s),
                     lambda dt, it: (_rand((5, 4), dt), _idx((12, 4), 0, 5), _rand((12, 4), dt)), False),
    "scatter_3d_dim1_src_larger": (lambda x, i, s: torch.scatter(x, 1, i, s),
                                   lambda dt, it: (_rand((2, 6, 3), dt), _idx((2, 9, 2), 0, 6), _rand((3, 10, 3), dt)),
                                   False),
    "scatter_value_last_dim": (lambda x, i: x.scatter(-1, i, 2.0 if x.dtype != B else True),
                               lambda dt, it: (_rand((3, 7), dt), _idx((3, 11), 0, 7)), False),
    # reduce='add' is a scatter_add (eager warns it is deprecated)
    "scatter_reduce_add_value": (lambda x, i: x.scatter(1, i, 3, reduce="add"),
                                 lambda dt, it: (_rand((4, 6), dt), _idx((4, 15), 0, 6)), True),
    "scatter_inplace": (_scatter_inplace, lambda dt, it: (_rand((3, 6), dt), _idx((3, 10), 0, 6), _rand((3, 10), dt)),
                        False),
    "index_put_rows_negative": (_put, lambda dt, it: (_rand((6, 3), dt), _idx((20,), -6, 6, it), _rand((20, 3), dt)),
                                False),
    "index_put_dim1_2d_index": (lambda x, i, v: aten.index_put(x, [None, i], v),
                                lambda dt, it: (_rand((2, 5, 3), dt), _idx((4, 6), -5, 5, it),
                                                _rand((2, 4, 6, 3), dt)), False),
    "index_put_broadcast_value": (_put, lambda dt, it: (_rand((7, 4), dt), _idx((9,), -7, 7, it), _rand((4,), dt)),
                                  False),
    "index_put_two_indices": (_put2, lambda dt, it: (_rand((4, 5, 2), dt), _idx((15,), -4, 4, it),
                                                     _idx((15,), -5, 5, it), _rand((15, 2), dt)), False),
    "index_put_broadcast_indices": (_put2, lambda dt, it: (_rand((4, 5), dt), _idx((6, 1), -4, 4, it),
                                                           _idx((3,), 0, 5, it), _rand((3,), dt)), False),
    "index_put_apart": (_put_apart, lambda dt, it: (_rand((4, 3, 5), dt), _idx((8,), -4, 4, it),
                                                    _idx((8,), 0, 5, I64), _rand((8, 3), dt)), False),
    "index_put_two_accumulate": (lambda x, i, j, v: aten.index_put(x, [i, j], v, True),
                                 lambda dt, it: (_rand((4, 5, 2), dt), _idx((30,), -4, 4, it), _idx((30,), 0, 5, it),
                                                 _rand((30, 2), dt)), True),
    "index_copy_dim1": (lambda x, i, s: x.index_copy(1, i, s),
                        lambda dt, it: (_rand((3, 6, 2), dt), _idx((14,), 0, 6), _rand((3, 14, 2), dt)), False),
    "mask_scalar": (lambda x, m: _put(x, m, 0.0 if x.dtype != B else False),
                    lambda dt, it: (_rand((5, 4), dt), torch.rand(5, 4) > 0.5), False),
    "mask_rows_tensor_value": (lambda x, m, v: _put(x, m, v),
                               lambda dt, it: (_rand((5, 4), dt), torch.rand(5) > 0.5, _rand((), dt)), False),
    "mask_row_value": (lambda x, m, v: _put(x, m, v),
                       lambda dt, it: (_rand((5, 4), dt), torch.rand(5) > 0.5, _rand((4,), dt)), False),
    "mask_dim1_accumulate": (lambda x, m, v: aten.index_put(x, [None, m], v, True),
                             lambda dt, it: (_rand((3, 5, 4), dt), torch.rand(5, 4) > 0.5, _rand((3, 1), dt)), True),
}
DTYPES = [(F32, I64), (F64, I32), (I32, I64), (F16, I64), (B, I64)]


def _ops(sg) -> list[str]:
    return [n.op for n in sg.graph.nodes]


# (not an accumulating bool: a torch fallback, test_data_dependent_mask_and_bool_accumulate_fall_back)
@pytest.mark.parametrize("name,dtype,itype", [
    pytest.param(name, dt, it, id=f"{name}-{str(dt).removeprefix('torch.')}-{str(it).removeprefix('torch.')}")
    for name in sorted(CASES) for dt, it in DTYPES if not (CASES[name][2] and dt == B)])
def test_lowering_matches_eager(name, dtype, itype):
    fn, make, accumulates = CASES[name]
    args = make(dtype, itype)
    cf = ember.compile(fn)
    got = cf(*[a.clone() for a in args])
    want = fn(*[a.clone() for a in args])
    for sg in cf.graphs:  # native: no extern in the captured graph; the kernel graph sorts once
        check_static_graph(sg)
        assert not sg.unsupported(), sg.unsupported()
        if name.startswith("mask"):  # a where: no sort, no scatter
            assert SORT_TARGET not in [n.attrs.get("target") for n in sg.graph.nodes]
            continue
        assert _ops(sg).count("segment_add" if accumulates else "segment_write") == 1, _ops(sg)
        assert [n.attrs.get("target") for n in sg.graph.nodes].count(SORT_TARGET) == 1
    if accumulates and dtype == F16:
        ref = fn(*[a.double() if a.is_floating_point() else a for a in args]).to(dtype)
        torch.testing.assert_close(got, ref, rtol=TOLERANCES[dtype][0], atol=TOLERANCES[dtype][1])
    else:
        assert got.dtype == want.dtype and torch.equal(got, want), (got, want)


def test_last_write_wins_and_does_not_depend_on_the_run():
    """Three destinations written a hundred times each: the last source of each, every run, as eager's."""
    x, i = torch.randn(3, 5), torch.randint(0, 3, (300,))
    v = torch.randn(300, 5)
    fn = lambda x, i, v: x.index_put((i,), v)
    first = ember.compile(fn)(x, i, v)
    last = {int(k): n for n, k in enumerate(i)}
    assert torch.equal(first, torch.stack([v[last[k]] for k in range(3)]))
    assert torch.equal(first, fn(x, i, v))
    assert torch.equal(first, ember.compile(fn)(x, i, v))


def test_strided_destination_and_source():
    """x and src as transposed views (the kernel reads them through strides)."""
    x, s, i = torch.randn(4, 6), torch.randn(4, 9), torch.randint(-6, 6, (9,))
    fn = lambda x, i, s: x.t().index_put((i,), s.t()) * 1
    assert torch.equal(ember.compile(fn)(x, i, s), fn(x, i, s))
    fn = lambda x, i, s: x.t().scatter(0, i, s.t()) * 1
    i2 = torch.randint(0, 6, (5, 3))
    x3, s3 = torch.randn(3, 6), torch.randn(3, 5)
    assert torch.equal(ember.compile(fn)(x3, i2, s3), fn(x3, i2, s3))


# -- gradients: torch's formulas (tools/autograd/derivatives.yaml) -----------------------------------


GRAD_CASES = ["scatter_dim0", "scatter_value_last_dim", "index_put_rows_negative", "index_put_broadcast_value",
              "index_put_two_indices", "index_put_broadcast_indices", "index_put_apart", "index_put_two_accumulate",
              "index_copy_dim1", "mask_scalar", "mask_rows_tensor_value", "mask_row_value",
              "mask_dim1_accumulate"]


@pytest.mark.parametrize("name", GRAD_CASES)
def test_gradients_match_eager(name):
    """float64 against eager's autograd: x gets the cotangent with the written positions zeroed (or
    all of it, accumulating), a source every entry's cotangent at its index, an overwritten one too
    (torch's `grad.gather`, `grad[indices]`), summed to a broadcast value's shape."""
    fn, make, _ = CASES[name]
    assert_compiled_gradients_match(fn, make(F64, I64), rtol=1e-12, atol=1e-12)


def test_gradient_graph_runs_scatter_kernels():
    """The differentiated graph of a write: the write of zeros into the cotangent and a gather (of
    every source, an overwritten one too, as torch's formula); no torch call but the sort."""
    from ember.ir import Graph, TensorType
    from ember.passes.autodiff import vjp_graph
    from ember.runtime import compile_ir

    g = Graph()
    gx, gi, gv = (g.add_input(TensorType(s, d)) for s, d in (((6, 3), F64), ((10,), I64), ((10, 3), F64)))
    g.set_outputs([g.add("index_put", [gx, gi, gv], dim=0, accumulate=False)])
    joint = vjp_graph(g, [0, 2])
    exe = compile_ir(joint)
    ct = torch.randn(6, 3, dtype=F64)
    x, i, v = torch.randn(6, 3, dtype=F64), torch.randint(-6, 6, (10,)), torch.randn(10, 3, dtype=F64)
    out, ct_x, ct_v = exe([x, i, v, ct])
    assert torch.equal(out, x.index_put((i,), v))
    assert torch.equal(ct_x, ct.index_put((i,), torch.zeros(10, 3, dtype=F64)))
    assert torch.equal(ct_v, ct[i])
    externs = [n.attrs["target"] for n in exe.graph.nodes if n.op == "extern"]
    assert externs == [SORT_TARGET], externs  # one sort: the forward's and the VJP's are CSE'd
    assert [n.op for n in exe.graph.nodes].count("segment_write") == 2  # x's and x's cotangent


# -- errors and fallbacks --------------------------------------------------------------------------


@pytest.mark.parametrize("fn,args,bad,error", [
    (lambda x, i, v: x.index_put((i,), v), (torch.zeros(7, 2), [1, 9, 2], torch.ones(3, 2)), 9, IndexError),
    (lambda x, i, v: x.index_put((i,), v), (torch.zeros(7, 2), [1, -8, 2], torch.ones(3, 2)), -8, IndexError),
    (lambda x, i, s: x.scatter(0, i, s), (torch.zeros(4, 3), [[0, 4, 1]], torch.ones(1, 3)), 4, RuntimeError),
    (lambda x, i, s: x.scatter(1, i, 1.0), (torch.zeros(4, 3), [[0, -1, 1]], None), -1, RuntimeError),
    (lambda x, i, s: x.index_copy(0, i, s), (torch.zeros(4, 3), [0, -1], torch.ones(2, 3)), -1, IndexError),
    (lambda x, i, s: x.index_copy(1, i, s), (torch.zeros(4, 3), [0, 3], torch.ones(4, 2)), 3, IndexError),
    (lambda x, i, s: x.index_fill(1, i, 2.0), (torch.zeros(4, 3), [0, 3], None), 3, IndexError),
    (lambda x, i, s: x.index_fill(0, i, 2.0), (torch.zeros(4, 3), [-5, 3], None), -5, IndexError),
], ids=["index_put_high", "index_put_low", "scatter", "scatter_value", "index_copy_negative", "index_copy_high",
        "index_fill_high", "index_fill_low"])
def test_index_out_of_range_raises_like_eager(fn, args, bad, error):
    """Compiled with indices in range, then called with one out of range: eager's exception type, and
    a message naming the index (index_copy's eager message has a prefix)."""
    assert_index_error_like_eager(fn, *args, bad, error)


@pytest.mark.parametrize("dtype", [F32, F64, I32, B])
def test_index_fill_is_a_checked_where(dtype):
    """index_fill (frontend/decompositions.py) is a `where` over the filled positions, after the
    scatters' checked sort of its indices (negative ones wrap); value's gradient counts a repeated
    position once, as eager's (float64)."""
    x, i = _rand((4, 6, 2), dtype), torch.tensor([5, -1, 0, 2, 0])
    value = torch.tensor(-1.5, dtype=dtype) if dtype.is_floating_point else torch.tensor(True, dtype=dtype)
    fn = lambda x, i, v: x.index_fill(1, i, v)
    cf = ember.compile(fn)
    assert torch.equal(cf(x, i, value), fn(x, i, value))
    sg = cf.graphs[0]
    assert not sg.unsupported() and "where" in _ops(sg) and not {"segment_write", "segment_add"} & set(_ops(sg))
    if dtype == F64:
        leaves = [x.clone().requires_grad_(), value.clone().requires_grad_()]
        refs = [x.clone().requires_grad_(), value.clone().requires_grad_()]
        ct = torch.randn(4, 6, 2, dtype=F64)
        i = torch.tensor([5, 3, 0, 2, 0])  # (eager's backward refuses negative indices: index_select)
        cf(leaves[0], i, leaves[1]).backward(ct)
        fn(refs[0], i, refs[1]).backward(ct)
        for a, b in zip(leaves, refs):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)


def test_second_index_out_of_range_names_its_dim():
    fn = _put2
    x, v = torch.zeros(3, 4), torch.ones(2)
    cf = ember.compile(fn)
    cf(x, torch.tensor([0, 1]), torch.tensor([0, 1]), v)
    for i, j, message in (([0, 5], [0, 1], "index 5 is out of bounds for dimension 0 with size 3"),
                          ([0, 1], [0, -5], "index -5 is out of bounds for dimension 1 with size 4")):
        with pytest.raises(IndexError, match=message):
            fn(x, torch.tensor(i), torch.tensor(j), v)
        with pytest.raises(IndexError, match=message):
            cf(x, torch.tensor(i), torch.tensor(j), v)


def test_data_dependent_mask_and_bool_accumulate_fall_back():
    """A mask with a value per selected element has a data-dependent count: the differentiable torch
    fallback, equal to eager; so is an accumulating bool index_put (the kernel sums numbers)."""
    x, m = torch.randn(5, 4), torch.tensor([True, False, True, False, True])
    v = torch.randn(3, 4)
    cf = ember.compile(lambda x, m, v: _put(x, m, v))
    assert torch.equal(cf(x, m, v), _put(x, m, v))
    assert any("index_put" in t for sg in cf.graphs for t in sg.unsupported())
    fn = lambda x, i, v: aten.index_put(x, [i], v, True)
    xb, ib, vb = torch.zeros(4, dtype=B), torch.tensor([0, 0, 2]), torch.tensor([True, False, True])
    cf = ember.compile(fn)
    assert torch.equal(cf(xb, ib, vb), fn(xb, ib, vb))
    assert any("index_put" in t for sg in cf.graphs for t in sg.unsupported())


def test_index_put_costs_the_sort_and_one_scatter_kernel():
    """`x[i, j] = v`: the wrapped linear index (one pointwise kernel), the sort (the one torch call)
    and one scatter kernel."""
    x, i, j, v = torch.randn(4, 5, 8), torch.randint(0, 4, (6,)), torch.randint(0, 5, (6,)), torch.randn(6, 8)
    report = ember.explain(_put2, x, i, j, v)
    assert [k.kind for k in report.kernels] == ["pointwise", "extern", "scatter"]
    assert [f.target for f in report.fallbacks] == [SORT_TARGET]
    scatter = report.kernels[-1]
    # the bytes model: the 6x8 values, sorted keys and permutation (int64), the 4x5x8 destination
    # (which the kernel reads only where nothing is written); writes the destination once
    assert scatter.bytes_read == 6 * 8 * 4 + 2 * 6 * 8 + 4 * 5 * 8 * 4
    assert scatter.bytes_written == 4 * 5 * 8 * 4
