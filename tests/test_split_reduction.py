"""Split reductions and coalesced column reductions (codegen/row.py `split_plan`, `COLUMN_BM`).

A reduction with few output rows over a long reduced extent runs on a GPU as two launches: stage 1's
programs (row block, slice) write partial results, stage 2 combines them and runs the epilogue. A
reduction over leading dims (a bias gradient) tiles [BM, BR] with BM along the contiguous kept dim.
The GPU plans are checked on CPU (`compile_graph(g, device="cuda")`: nothing runs); the interpreter
never splits by default (it pays per program), so the CPU tests lower the thresholds to take the
two-stage path and compare with eager.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from byte_counter import count_bytes
from testing import assert_close

import ember
from ember.codegen import row
from ember.ir import Graph, TensorType
from ember.passes.cost import split_costs
from ember.runtime import compile_graph
from ember.runtime.schedule import Schedule, splits

F32 = torch.float32


def _graph(shape, dtype, op: str, **attrs) -> Graph:
    g = Graph()
    x = g.add_input(TensorType(shape, dtype))
    g.set_outputs([g.add(op, [x], **attrs)])
    return g


@pytest.fixture
def split_on_cpu(monkeypatch):
    """The interpreter splits too: launches of fewer than 8 programs over rows of 64+ elements, 16+
    elements per program (so [7, 300]-sized inputs take the two-stage path)."""
    monkeypatch.setitem(row.SPLIT_PROGRAMS, "cpu", 8)
    monkeypatch.setattr(row, "SPLIT_MIN_R", 64)
    monkeypatch.setattr(row, "SPLIT_MIN_WORK", 16)


# -- GPU plans (nothing runs) -------------------------------------------------------------------------

def test_full_sum_of_8192x4096_fills_an_h100():
    # one row of 33.5M elements: 263 slices of 128000 (a multiple of the 1024-element chunk), 2 per SM
    # of an H100's 132, then one program combining the 263 partials
    exe = compile_graph(_graph((8192, 4096), F32, "sum", dims=(0, 1), keepdim=False), device="cuda")
    one, two = exe.plan.launches
    assert math.prod(one.grid) >= 132 and one.grid == (1, 263) and one.name.startswith("row_split_sum")
    assert one.constexprs["RC"] % one.constexprs["BR"] == 0 and 263 * one.constexprs["RC"] >= 8192 * 4096
    assert two.grid == (1,) and two.name.startswith("row_combine_sum") and two.constexprs["BS"] == 512
    assert (one.split_stage, two.split_stage) == (1, 2)
    # argmax (the reduction kernel: (value, index) partials) and the unfused sum split the same way
    for g, fuse in ((_graph((8192, 4096), F32, "argmax", dim=None, keepdim=False), True),
                    (_graph((8192, 4096), F32, "sum", dims=(0, 1), keepdim=False), False)):
        one, two = compile_graph(g, device="cuda", fuse=fuse).plan.launches
        assert one.name.startswith("red_split_") and math.prod(one.grid) >= 132 and two.name.startswith("red_combine_")


def test_explain_reports_both_stages_at_their_own_bytes():
    report = ember.explain(lambda x: x.sum(), torch.empty(8192, 4096, device="meta"), target="h100")
    one, two = report.kernels
    x = 8192 * 4096 * 4
    assert one.grid == (1, 263) and (one.bytes_read, one.bytes_written) == (x, 263 * 4)
    assert (two.bytes_read, two.bytes_written) == (263 * 4, 4)
    # the roofline of the first stage: 134 MB at 3.35 TB/s, about 40 us (one program: bandwidth-bound too,
    # but the estimate is a lower bound, and the split is what lets a GPU approach it)
    assert 35 < one.estimate_us < 45


def test_many_rows_or_short_rows_do_not_split():
    for shape, dims in (((4096, 8192), (1,)),   # 4096 rows: already >= 2 programs per SM
                        ((64, 1024), (1,)),    # rows shorter than SPLIT_MIN_R
                        ((64, 4096), (1,))):   # 16 programs of 4 rows: a slice would hold < SPLIT_MIN_WORK
        (step,) = compile_graph(_graph(shape, F32, "sum", dims=dims, keepdim=False), device="cuda").plan.launches
        assert len(step.grid) == 1 and "RC" not in step.constexprs, (shape, step.grid)
    # the CPU target (the interpreter) keeps one stage
    (step,) = compile_graph(_graph((64, 40000), F32, "sum", dims=(0, 1), keepdim=False)).plan.launches
    assert step.grid == (1,)


def test_mid_sized_column_sum_splits_too():
    # [2048, 768]: 6 programs of 128 columns would each stream 2048 rows; 16 slices of 128 rows instead
    exe = compile_graph(_graph((2048, 768), F32, "sum", dims=(0,), keepdim=False), device="cuda")
    one, _ = exe.plan.launches
    assert one.grid == (6, 16) and one.constexprs["RC"] * one.constexprs["BM"] >= row.SPLIT_MIN_WORK


def test_dependent_reductions_and_stored_tiles_keep_one_kernel():
    # softmax stores tiles, and its sum needs the max: one looped row kernel, not a split
    g = Graph()
    x = g.add_input(TensorType((2, 100000), F32))
    m = g.add("amax", [x], dims=(1,), keepdim=True)
    e = g.add("exp", [g.add("sub", [x, m])])
    g.set_outputs([g.add("div", [e, g.add("sum", [e], dims=(1,), keepdim=True)])])
    (step,) = compile_graph(g, device="cuda").plan.launches
    assert len(step.grid) == 1


def test_schedule_json_keeps_the_split_and_its_cost():
    exe = compile_graph(_graph((8192, 4096), F32, "sum", dims=(0, 1), keepdim=False), device="cuda")
    sched = exe.schedule_for(torch.device("cuda"))
    again = Schedule.from_dict(sched.to_dict(), sched.graph)
    (e1,), (e2,) = sched.kernels, again.kernels
    assert e2.config == e1.config and splits(e2.config) == 263
    assert (e2.cost.bytes_read, e2.cost.bytes_written) == (e1.cost.bytes_read, e1.cost.bytes_written)
    assert e1.cost.bytes_read == 8192 * 4096 * 4 + 263 * 4  # the input, then the partials


# -- coalesced column reductions -------------------------------------------------------------------------

def test_column_sum_tiles_run_along_the_contiguous_dim():
    # a bias gradient: sum over dim 0 of [65536, 768]; rows of the tile are the 768 contiguous columns,
    # 128 of them (512 contiguous bytes per tile row, not 4 x 4 = 16 bytes), and the 6 programs that
    # leaves are split 44 ways along dim 0
    for fuse in (True, False):
        exe = compile_graph(_graph((65536, 768), F32, "sum", dims=(0,), keepdim=False), device="cuda", fuse=fuse)
        one, two = exe.plan.launches
        assert one.constexprs["BM"] == row.COLUMN_BM == 128 and one.constexprs["BM"] * one.constexprs["BR"] == 4096
        assert one.grid == (6, 44) and two.grid[0] * two.constexprs["BM"] >= 768
    # the kept dim's stride in the load is 1 (the runtime argument the JIT specializes to a constant)
    exe = compile_graph(_graph((1024, 512), F32, "sum", dims=(0,), keepdim=False), device="cuda")
    (step,) = exe.plan.launches
    assert step.constexprs == {"BM": 128, "BR": 32}  # R = 1024 > BR: looped over 32-row chunks (no split)
    assert "for c0 in range(0, R, BR)" in step.source
    params = re.search(r"def \w+\((.*?)\)", step.source).group(1).split(", ")
    assert step.args[params.index("ld0_k0")] == 1 and step.args[params.index("ld0_r0")] == 512


@pytest.mark.parametrize("dtype", [F32, torch.bfloat16], ids=str)
def test_column_sum_loads_vectors_on_sm90(dtype):
    # compiled as the JIT compiles the launch (its divisibility specialization): 128-bit global loads
    from test_sm90_compile import _compile, _planned_jobs

    plan = compile_graph(_graph((65536, 768), dtype, "sum", dims=(0,), keepdim=False), device="cuda").plan
    for job in _planned_jobs(plan.steps, plan.bufs):
        ptx = _compile(job).asm["ptx"]
        loads = set(re.findall(r"\bld\.global[.\w]*", ptx))
        assert loads and all(".v4." in a or ".v2." in a for a in loads), (job[1], loads)
        assert ".local" not in ptx


# -- the two-stage path on CPU, against eager -------------------------------------------------------------

def _x(shape, dtype):
    if dtype == torch.bool:
        return torch.rand(shape) < 0.3
    if not dtype.is_floating_point:
        return torch.randint(-50, 50, shape, dtype=dtype)
    return torch.randn(shape).to(dtype)


def _with_specials(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[1, 7] = float("nan")
    x[2, :] = float("-inf")
    x[3, 123] = x[3, 250] = x[3].max() + 1  # a tie across slices: the first index wins
    return x


CASES = {
    "sum": (lambda x: x.sum(), F32),
    "sum_f16": (lambda x: x.sum(), torch.float16),
    "sum_int_exact": (lambda x: x.sum(), torch.int32),
    "sum_bool": (lambda x: x.sum(), torch.bool),
    "mean_bf16": (lambda x: x.mean(), torch.bfloat16),
    "rows_with_epilogue": (lambda x: (x * x).sum(1).sqrt() + 1, F32),
    "row_load_both_stages": (lambda x: (x - x[:, :1]).sum(1) + x[:, 0], F32),  # loaded by both stages
    "two_reductions": (lambda x: x.sum(1) * x.abs().amax(1), F32),
    "amax_nan": (lambda x: _with_specials(x).amax(1), F32),
    "amin_int": (lambda x: x.amin(), torch.int64),
    "column": (lambda x: x.sum(0), F32, (400, 6)),
    "column_bf16": (lambda x: x.sum(0), torch.bfloat16, (400, 6)),
    "argmax_specials": (lambda x: _with_specials(x).argmax(1), F32),
    "argmin_ties_int": (lambda x: x.argmin(1), torch.int16),
    "argmax_all": (lambda x: x.argmax(), F32),
    "prod": (lambda x: (1 + x / 100).prod(1), F32),
    "prod_int": (lambda x: (x % 3 + 1).prod(1), torch.int64),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_stages_match_eager(name, split_on_cpu):
    fn, dtype, *shape = CASES[name]
    x = _x(shape[0] if shape else (7, 300), dtype)
    sg = ember.trace(fn, x)
    got = sg(x)
    launches = sg.compiled.kernels
    assert [s.split_stage for s in launches][-2:] == [1, 2], [k.name for k in launches]
    assert launches[-2].grid[1] > 1
    want = fn(x)
    if not want.dtype.is_floating_point:
        assert torch.equal(got, want), (got, want)  # integer sums, products and indices: exact
    else:
        assert_close(got, want)


def test_unfused_reduction_splits_on_cpu(split_on_cpu):
    x = torch.randn(5, 400)
    g = _graph((5, 400), F32, "sum", dims=(1,), keepdim=True)
    exe = compile_graph(g, fuse=False)
    (got,) = exe([x])
    assert [s.kernel.name.split("_")[1] for s in exe.plan.launches] == ["split", "combine"]
    assert_close(got, x.sum(1, keepdim=True))


def test_split_bytes_are_the_counted_bytes(split_on_cpu):
    # stage 1 reads the input once and writes S partials per row; stage 2 reads them and writes the rows
    x = torch.randn(7, 300)
    with torch.no_grad():
        sg = ember.trace(lambda x: (x * x).sum(1).sqrt(), x)
        with count_bytes() as launches:
            sg(x)
    (entry,) = sg.compiled.schedule.kernels
    costs = split_costs(entry.group, splits(entry.config))
    assert [(k.read, k.written) for k in launches] == [(c.bytes_read, c.bytes_written) for c in costs]
