"""Gathering ops as native kernels (ir/ops/index.py, frontend/lower_index.py): embedding, index_select,
gather and advanced indexing against eager on fresh random inputs (float, half, integer and bool
tables; int64 and int32 indices; multi-dim indices; non-contiguous tables), their fusion (an
embedding plus its positional embedding is one kernel), gradients through `ember.compile`, and the
out-of-range error: eager raises, so must ember, without reading outside the table."""

import pytest
import torch
import torch.nn.functional as F
from byte_counter import count_bytes
from testing import assert_close, assert_matches

import ember

I64, I32 = torch.int64, torch.int32


def _table(shape, dtype):
    if dtype == torch.bool:
        return torch.rand(shape) < 0.5
    if not dtype.is_floating_point:
        return torch.randint(-100, 100, shape, dtype=dtype)
    return torch.randn(shape).to(dtype)


def _idx(high, shape, dtype=I64, low=0):
    return torch.randint(low, high, shape, dtype=dtype)


# name -> (fn, make args(dtype, index dtype)); every one must lower without an extern.
CASES = {
    "embedding_2d": (lambda w, i: F.embedding(i, w), lambda dt, it: (_table((11, 4), dt), _idx(11, (3, 5), it))),
    "embedding_1d": (lambda w, i: F.embedding(i, w), lambda dt, it: (_table((7, 6), dt), _idx(7, (9,), it))),
    "index_select_0": (lambda x, i: x.index_select(0, i), lambda dt, it: (_table((6, 5), dt), _idx(6, (8,), it))),
    "index_select_1_transposed": (lambda x, i: x.t().index_select(1, i),
                                  lambda dt, it: (_table((9, 4), dt), _idx(9, (5,), it))),
    "index_select_last": (lambda x, i: torch.index_select(x, -1, i),
                          lambda dt, it: (_table((2, 3, 7), dt), _idx(7, (4,), it))),
    "gather_1": (lambda x, i: torch.gather(x, 1, i), lambda dt, it: (_table((4, 6, 3), dt), _idx(6, (4, 9, 3), it))),
    "gather_smaller_index": (lambda x, i: torch.gather(x, 0, i),
                             lambda dt, it: (_table((5, 6), dt), _idx(5, (3, 4), it))),
    "gather_transposed": (lambda x, i: torch.gather(x.t(), -1, i),
                          lambda dt, it: (_table((6, 4), dt), _idx(6, (4, 2), it))),
    "take_along_dim": (lambda x, i: torch.take_along_dim(x, i, 1),
                       lambda dt, it: (_table((3, 7), dt), _idx(7, (3, 2), I64))),
    "x[i]": (lambda x, i: x[i], lambda dt, it: (_table((6, 3, 2), dt), _idx(6, (4,), it, low=-6))),
    "x[i]_2d": (lambda x, i: x[i], lambda dt, it: (_table((6, 3), dt), _idx(6, (2, 5), it, low=-6))),
    "x[:, i]": (lambda x, i: x[:, i], lambda dt, it: (_table((3, 8, 2), dt), _idx(8, (5,), it, low=-8))),
    "x[..., i]": (lambda x, i: x[..., i], lambda dt, it: (_table((2, 3, 5), dt), _idx(5, (2, 2), it))),
    "x[i, j]": (lambda x, i, j: x[i, j], lambda dt, it: (_table((5, 6, 3), dt), _idx(5, (4,), it, low=-5),
                                                        _idx(6, (2, 1), it, low=-6))),
    "x[i, :, j]": (lambda x, i, j: x[i, :, j], lambda dt, it: (_table((4, 3, 5), dt), _idx(4, (2,), it),
                                                             _idx(5, (2,), it))),
    "x[i]_transposed": (lambda x, i: x.t()[i] + 0, lambda dt, it: (_table((5, 7), dt), _idx(7, (3,), it))),
}


@pytest.mark.parametrize("index_dtype", [I64, I32], ids=["i64", "i32"])
@pytest.mark.parametrize("name", sorted(CASES))
def test_gathers_match_eager(name, index_dtype):
    fn, make = CASES[name]
    for dtype in (torch.float32, torch.float16):
        assert_matches(fn, *make(dtype, index_dtype))


OTHER_DTYPES = [torch.bfloat16, torch.float64, torch.int32, torch.int64, torch.bool]


@pytest.mark.parametrize("name,dtype", [("embedding_2d", d) for d in OTHER_DTYPES[:2]]  # float weights only
                         + [(n, d) for n in ("gather_1", "x[i, j]") for d in OTHER_DTYPES])
def test_gathers_of_other_dtypes(name, dtype):
    fn, make = CASES[name]
    assert_matches(fn, *make(dtype, I64))


def test_embedding_with_positions_and_scale_is_one_kernel():
    """Token embedding + positional embedding, scaled (GPT's input): one kernel, which reads the rows the
    tokens pick and the positions, nothing else."""
    wte, wpe = torch.randn(50, 16), torch.randn(8, 16)
    tokens = torch.randint(0, 50, (2, 8))
    fn = lambda t, a, b: (F.embedding(t, a) + b) * 0.5
    sg = ember.trace(fn, tokens, wte, wpe)
    assert not sg.unsupported()
    assert [k.ops for k in sg.kernels] == [["index", "add", "mul"]]
    assert_close(sg(tokens, wte, wpe), fn(tokens, wte, wpe))


def test_gathers_fuse_with_consumers_not_with_the_table_producer():
    """The table a gather reads must be in memory (the emit hook loads it at other elements): exp(w)
    is its own kernel; the gather, its consumer and the index arithmetic's consumer join one."""
    w, i = torch.randn(6, 4), torch.randint(0, 6, (5,))
    fn = lambda w, i: w.exp()[i].relu() * 2
    sg = ember.trace(fn, w, i)
    assert [k.ops for k in sg.kernels] == [["exp"], ["index", "relu", "mul"]]
    assert_close(sg(w, i), fn(w, i))


@pytest.mark.parametrize("name", ["embedding_2d", "index_select_1_transposed", "gather_1", "x[i, j]", "x[i, :, j]",
                                  "x[i]_2d"])
def test_gradients_match_eager(name):
    """Repeated indices accumulate (index_add / scatter_add); indices get no gradient."""
    fn, make = CASES[name]
    args = make(torch.float64, I64)
    leaves = [a.clone().requires_grad_(a.is_floating_point()) for a in args]
    mine = [a.clone().requires_grad_(a.is_floating_point()) for a in args]
    want = fn(*leaves)
    got = ember.compile(fn)(*mine)
    ct = torch.randn_like(want)
    want.backward(ct)
    got.backward(ct)
    assert_close(got.detach(), want.detach())
    assert_close(mine[0].grad, leaves[0].grad)


def test_embedding_padding_row_gets_no_gradient():
    w = torch.randn(6, 3, requires_grad=True)
    idx = torch.tensor([[1, 2, 2], [2, 5, 1]])
    out = ember.compile(lambda w, i: F.embedding(i, w, padding_idx=2))(w, idx)
    out.backward(torch.ones_like(out))
    want = torch.zeros(6, 3)
    want[1], want[5] = 2.0, 1.0
    assert_close(out.detach(), F.embedding(idx, w.detach()))
    assert torch.equal(w.grad, want)


@pytest.mark.parametrize("name,fn,args", [
    ("index_select past the end", lambda x, i: x.index_select(0, i), (torch.randn(5, 3), torch.tensor([0, 5]))),
    ("index_select negative", lambda x, i: x.index_select(1, i), (torch.randn(5, 3), torch.tensor([-1]))),
    ("embedding negative", lambda w, i: F.embedding(i, w), (torch.randn(5, 3), torch.tensor([[1, -1]]))),
    ("gather past the end", lambda x, i: torch.gather(x, 1, i), (torch.randn(2, 3), torch.tensor([[0, 1], [3, 0]]))),
    ("x[i] below -size", lambda x, i: x[i], (torch.randn(4, 2), torch.tensor([1, -5]))),
    ("x[:, i] past the end", lambda x, i: x[:, i] * 2, (torch.randn(4, 2), torch.tensor([2]))),
])
def test_out_of_range_raises_and_reads_nothing_outside(name, fn, args):
    """Eager raises (IndexError, or RuntimeError for gather); ember raises the same type, after kernels
    whose loads never left the table (their addresses, recorded under the interpreter)."""
    with pytest.raises((IndexError, RuntimeError)) as eager:
        fn(*args)
    with torch.no_grad():
        sg = ember.trace(fn, *args)
        assert not sg.unsupported()
        with count_bytes() as launches, pytest.raises(eager.type, match="index out of (range|bounds)"):
            sg(*args)
    assert launches
    inside = lambda x: any(t.data_ptr() <= x < t.data_ptr() + t.numel() * t.element_size() for t in args)
    for rec in launches:
        for addrs in rec.loads.values():  # every address loaded is the table's or an index's
            assert all(inside(x) for a in addrs for x in a.tolist()), name


def test_out_of_range_raises_through_compile():
    f = ember.compile(lambda w, i: F.embedding(i, w) * 2)
    w = torch.randn(4, 3)
    f(w, torch.tensor([0, 3]))
    with pytest.raises(IndexError):
        f(w, torch.tensor([0, 4]))


def test_gpt_forward_runs_no_torch_op():
    """The zoo's GPT (tests/zoo.py): token embedding + learned positions (`pos(arange(T))`, a slice) is
    one kernel, and no op of the forward falls back to torch."""
    from zoo import GPT

    model, idx = GPT().eval(), torch.randint(0, 32, (2, 8))
    with torch.no_grad():
        sg = ember.trace(model, idx)
        assert not sg.unsupported()
        assert ["index", "add"] in [k.ops for k in sg.kernels]
        assert_close(sg(idx), model(idx), 1e-5, 1e-5)


def test_int32_indices_in_the_64_bit_kernel_variant(monkeypatch):
    """Past 2**31 elements kernels index in int64; an int32 index widens before it meets a stride."""
    monkeypatch.setattr("ember.runtime.plan.INT32_LIMIT", 10)
    fn = lambda x, i, j: x[i] + torch.gather(x, 1, j)
    x, i, j = torch.randn(6, 5), _idx(6, (6,), I32, low=-6), _idx(5, (6, 5), I32)
    sg = ember.trace(fn, x, i, j)
    assert_close(sg(x, i, j), fn(x, i, j))
    assert [k.ops for k in sg.kernels] == [["index", "gather", "add"]]
    assert "pid.to(tl.int64)" in sg.kernels[0].source
