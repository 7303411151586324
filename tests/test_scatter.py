"""Accumulating scatters (ir/ops/scatter.py, codegen/scatter.py, frontend/lower_scatter.py): every
lowering against eager on fresh random inputs with many duplicate indices, determinism, embedding
gradients, the out-of-range error, and the kernels a scatter costs.

Exactness: the scatter kernel sums the sources of a destination in source order, starting from the
destination, in float32/float64: eager's CPU order (index_put, index_add, scatter_add and the
embedding backward accumulate serially), so float32 and float64 results are equal bit for bit. Half
types accumulate in float32 and round once, where eager rounds after every addition: they are
compared with eager run in float64 (then rounded), within the one-op tolerance (about one ulp).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from testing import TOLERANCES, assert_compiled_gradients_match, assert_index_error_like_eager, check_static_graph

import ember
from ember.codegen import scatter
from ember.ir.ops.scatter import SORT_TARGET

aten = torch.ops.aten
F32, F64, F16 = torch.float32, torch.float64, torch.float16
I64, I32 = torch.int64, torch.int32


def _idx(shape, low, high, dtype):
    return torch.randint(low, high, shape, dtype=dtype)


# name -> (fn, inputs(value dtype, index dtype), exact in float32/float64). Index ranges are small
# against their lengths: most destinations are hit several times.
CASES = {
    "index_put_1d": (lambda x, i, v: x.index_put((i,), v, accumulate=True),
                     lambda dt, it: (torch.randn(9, dtype=dt), _idx((40,), -9, 9, it), torch.randn(40, dtype=dt)),
                     True),
    "index_put_rows": (lambda x, i, v: x.index_put((i,), v, accumulate=True),
                       lambda dt, it: (torch.randn(7, 5, dtype=dt), _idx((30,), -7, 7, it),
                                       torch.randn(30, 5, dtype=dt)), True),
    "index_put_2d_index_dim1": (lambda x, i, v: aten.index_put(x, [None, i], v, True),
                                lambda dt, it: (torch.randn(2, 6, 3, dtype=dt), _idx((4, 5), 0, 6, it),
                                                torch.randn(2, 4, 5, 3, dtype=dt)), True),
    "index_put_broadcast_values": (lambda x, i, v: x.index_put((i,), v, accumulate=True),
                                   lambda dt, it: (torch.randn(7, 5, dtype=dt), _idx((30,), 0, 7, it),
                                                   torch.randn(5, dtype=dt)), True),
    # alpha=2 scales exactly, so torch's x + alpha * s is the same number either way
    "index_add_alpha": (lambda x, i, s: torch.index_add(x, 0, i, s, alpha=2),
                        lambda dt, it: (torch.randn(7, 5, dtype=dt), _idx((30,), 0, 7, it),
                                        torch.randn(30, 5, dtype=dt)), True),
    "index_add_dim1": (lambda x, i, s: x.index_add(1, i, s),
                       lambda dt, it: (torch.randn(3, 6, 4, dtype=dt), _idx((20,), 0, 6, it),
                                       torch.randn(3, 20, 4, dtype=dt)), True),
    "scatter_add_1d": (lambda x, i, s: x.scatter_add(0, i, s),
                       lambda dt, it: (torch.randn(5, dtype=dt), _idx((30,), 0, 5, I64), torch.randn(30, dtype=dt)),
                       True),
    "scatter_add_src_larger": (lambda x, i, s: x.scatter_add(0, i, s),
                               lambda dt, it: (torch.randn(6, 4, dtype=dt), _idx((15, 3), 0, 6, I64),
                                               torch.randn(16, 4, dtype=dt)), True),
    "scatter_add_3d_last_dim": (lambda x, i, s: torch.scatter_add(x, 2, i, s),
                                lambda dt, it: (torch.randn(2, 3, 5, dtype=dt), _idx((2, 3, 12), 0, 5, I64),
                                                torch.randn(2, 3, 12, dtype=dt)), True),
    "embedding_backward_padding": (lambda g, i: aten.embedding_dense_backward(g, i, 7, 2, False),
                                   lambda dt, it: (torch.randn(3, 10, 4, dtype=dt), _idx((3, 10), 0, 7, it)), True),
    # scale_grad_by_freq divides each gradient by its index's count before summing: rounded quotients
    "embedding_backward_freq": (lambda g, i: aten.embedding_dense_backward(g, i, 7, -1, True),
                                lambda dt, it: (torch.randn(30, 4, dtype=dt), _idx((30,), 0, 7, it)), False),
}
# scatter_add's index is int64 in torch; the rest take int32 too.
DTYPES = [(F32, I64), (F64, I32), (F16, I64)]


@pytest.mark.parametrize("dtype,itype", DTYPES, ids=lambda p: str(p).removeprefix("torch."))
@pytest.mark.parametrize("name", sorted(CASES))
def test_lowering_matches_eager(name, dtype, itype):
    fn, make, exact = CASES[name]
    args = make(dtype, itype)
    cf = ember.compile(fn)
    got = cf(*args)
    for sg in cf.graphs:  # native: no extern in the captured graph; the kernel graph sorts once
        check_static_graph(sg)
        assert not sg.unsupported(), sg.unsupported()
        assert [n.op for n in sg.graph.nodes].count("segment_add") == (2 if "freq" in name else 1)  # + the counts
        assert [n.attrs.get("target") for n in sg.graph.nodes].count(SORT_TARGET) == 1  # one sort: CSE'd
    if dtype in (F16, torch.bfloat16):
        want = fn(*[a.double() if a.is_floating_point() else a for a in args]).to(dtype)
        torch.testing.assert_close(got, want, rtol=TOLERANCES[dtype][0], atol=TOLERANCES[dtype][1])
    elif exact:
        assert torch.equal(got, fn(*args)), (got - fn(*args)).abs().max()
    else:
        torch.testing.assert_close(got, fn(*args), rtol=TOLERANCES[dtype][0], atol=TOLERANCES[dtype][1])


def test_results_do_not_depend_on_the_run():
    """Two runs, and a second compile, give the same bits (sums in source order, no atomics)."""
    fn, make, _ = CASES["index_put_rows"]
    x, i, v = make(F32, I64)
    i = torch.randint(0, 3, (300,))  # three destinations, a hundred sources each
    v = torch.randn(300, 5) * 1e3
    first = ember.compile(fn)(x, i, v)
    assert torch.equal(first, ember.compile(fn)(x, i, v))
    assert torch.equal(first, ember.compile(fn)(x, i, v))
    assert torch.equal(first, fn(x, i, v))


class _Embed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 6, padding_idx=3)

    def forward(self, tokens):
        return (F.gelu(self.emb(tokens)) * torch.arange(6.0)).sum()


@pytest.mark.parametrize("itype", [I64, I32])
def test_embedding_gradient_through_compile(itype):
    """nn.Embedding with padding_idx and repeated tokens: loss and weight gradient as eager's (the
    backward is the scatter kernel: index_select's VJP, no embedding-backward extern)."""
    model, ref = _Embed(), _Embed()
    ref.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 11, (4, 9), dtype=itype)
    tokens[0, :4] = 3
    compiled = ember.compile(model)
    loss = compiled(tokens)
    loss.backward()
    ref_loss = ref(tokens)
    ref_loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=TOLERANCES[F32][0], atol=TOLERANCES[F32][1])
    grad, want = model.emb.weight.grad, ref.emb.weight.grad
    assert torch.equal(grad[3], torch.zeros(6))
    torch.testing.assert_close(grad, want, rtol=TOLERANCES[F32][0], atol=TOLERANCES[F32][1])


def test_embedding_backward_costs_one_scatter_kernel():
    """The destination is zeros: the kernel starts from the constant instead of reading them (no zero
    fill kernel), after one sort of the indices."""
    g, i = torch.randn(12, 4), torch.randint(0, 5, (12,))
    report = ember.explain(lambda g, i: aten.embedding_dense_backward(g, i, 5, -1, False), g, i)
    kinds = [k.kind for k in report.kernels]
    assert kinds.count("scatter") == 1 and kinds.count("extern") == 1, kinds
    scatter = next(k for k in report.kernels if k.kind == "scatter")
    # reads the 12x4 gradient (masked by a pointwise kernel first), the sorted keys and the
    # permutation (int64): nothing of the 5x4 destination; writes it once
    assert scatter.bytes_read == 12 * 4 * 4 + 2 * 12 * 8 and scatter.bytes_written == 5 * 4 * 4


@pytest.mark.parametrize("fn,args,bad,error", [
    (lambda x, i, v: x.index_put((i,), v, accumulate=True), (torch.zeros(7, 2), [1, 9, 2], torch.ones(3, 2)), 9,
     IndexError),
    (lambda x, i, v: x.index_put((i,), v, accumulate=True), (torch.zeros(7, 2), [1, -8, 2], torch.ones(3, 2)), -8,
     IndexError),
    (lambda x, i, s: x.scatter_add(0, i, s), (torch.zeros(4, 3), [[0, 4, 1]], torch.ones(1, 3)), 4, RuntimeError),
    (lambda x, i, s: x.index_add(1, i, s), (torch.zeros(2, 5), [0, -1], torch.ones(2, 2)), -1, RuntimeError),
], ids=["index_put_high", "index_put_low", "scatter_add", "index_add"])
def test_index_out_of_range_raises_like_eager(fn, args, bad, error):
    """Compiled with indices in range, then called with one out of range: eager's exception type and
    its message (naming the index); the check runs before the kernel, which could not write out of
    bounds anyway (a program writes only its own destination rows)."""
    # (ember's message starts with the torch call that raised it: the scatter's sort, `ember.sort_index`)
    assert_index_error_like_eager(fn, *args, bad, error)


def test_schedule_sorts_then_scatters():
    """`index_add` decomposes into the sort (a torch call) and one scatter kernel whose launch config
    the schedule holds (blocks of destination rows x columns)."""
    from ember.ir import Graph, TensorType
    from ember.runtime import compile_ir

    g = Graph()
    x, i, s = (g.add_input(TensorType(sh, dt)) for sh, dt in (((5, 40), F32), ((64,), I64), ((64, 40), F32)))
    g.set_outputs([g.add("index_add", [x, i, s], dim=0)])
    exe = compile_ir(g)
    xs = [torch.randn(5, 40), torch.randint(0, 5, (64,)), torch.randn(64, 40)]
    assert torch.equal(exe(xs)[0], xs[0].index_add(0, xs[1], xs[2]))
    entries = [e for e in exe.schedule_for(torch.device("cpu")).entries
               if e.config is not None or e.kind == "extern"]
    assert [e.kind for e in entries] == ["extern", "scatter"]
    assert entries[0].ops == [SORT_TARGET]
    cuda = [e for e in exe.schedule_for(torch.device("cuda")).entries if e.kind == "scatter"][0].config
    assert cuda.constexprs == {"BV": 8, "BC": 64} and cuda.grid == (1, 1)  # narrow rows: 8 per program
    # a GPT-2 embedding's gradient on a GPU: one row per program, so a frequent token delays only its own
    wide = scatter.launch_config(50257, 768, "cuda")
    assert wide.constexprs == {"BV": 1, "BC": 1024} and wide.grid == (50257, 1)


def test_strided_operands_and_64_bit_indexing(monkeypatch):
    """x and src as views: a transpose (its sides merge into one stride each: no copy) and a permute
    whose leading dims do not merge (copied first); then the int64 index variant."""
    x, s = torch.randn(4, 2, 6), torch.randn(4, 2, 9)
    i = torch.randint(0, 6, (9,))
    fn = lambda x, i, s: x.permute(1, 0, 2).index_add(2, i, s.transpose(0, 1)) * 1
    assert torch.equal(ember.compile(fn)(x, i, s), fn(x, i, s))
    fn = lambda x, i, s: x.t().index_add(1, i, s) * 1
    x2, s2 = torch.randn(7, 3), torch.randn(3, 9)
    assert torch.equal(ember.compile(fn)(x2, i, s2), fn(x2, i, s2))
    monkeypatch.setattr("ember.runtime.plan.INT32_LIMIT", 10)
    fn = lambda x, i, s: x.index_add(0, i, s)
    x3, s3 = torch.randn(6, 5), torch.randn(9, 5)
    cf = ember.compile(fn)
    assert torch.equal(cf(x3, i, s3), fn(x3, i, s3))
    assert "tl.program_id(0).to(tl.int64)" in [k for k in cf.graphs[0].kernels if k.kernel.kind == "scatter"][0].source


def test_empty_index():
    """No index entries: the destination unchanged (the sort of nothing, a kernel with empty runs)."""
    from ember.ir import Graph, TensorType
    from ember.runtime import compile_ir

    g = Graph()
    x, i, s = (g.add_input(TensorType(sh, dt)) for sh, dt in (((4, 3), F32), ((0,), I64), ((0, 3), F32)))
    g.set_outputs([g.add("index_add", [x, i, s], dim=0)])
    xs = [torch.randn(4, 3), torch.empty(0, dtype=I64), torch.empty(0, 3)]
    assert torch.equal(compile_ir(g)(xs)[0], xs[0])
    fn = lambda x, i, v: x.index_put((i,), v, accumulate=True)
    assert torch.equal(ember.compile(fn)(xs[0], xs[1], xs[2]), xs[0])


# (not scatter_add with a src larger than its index: eager's autograd refuses its own gradient there)
@pytest.mark.parametrize("name", ["index_put_2d_index_dim1", "index_add_alpha", "scatter_add_3d_last_dim",
                                  "scatter_add_1d"])
def test_gradients_through_compile(name):
    """Compiled graphs are differentiated after the pass pipeline, so through `segment_add` itself:
    the destination's gradient is the cotangent, the source's the cotangent gathered at the (wrapped,
    or linear) index; float64 against eager's autograd."""
    fn, make, _ = CASES[name]
    assert_compiled_gradients_match(fn, make(F64, I64), rtol=1e-12, atol=1e-12)
