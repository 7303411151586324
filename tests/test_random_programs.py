"""Differential testing: random programs compiled by ember against eager PyTorch, the reference
interpreter over the optimized IR, and the same graph run unfused (one kernel per op); and their
gradients (torch.autograd.grad of a random linear function of the outputs) against eager's. Inputs
come in every layout of `programs.LAYOUTS` (non-contiguous, expanded, passed twice, overlapping,
`as_strided` with random strides and offsets) and every dtype (float16/32/64, bfloat16, int32/64,
bool, mixed in one program), with dims of size 0; a program eager rejects must make ember raise a
clear error, not an internal one (tests/program_checks.py classifies outcomes).

Failures found by these sweeps live on as named regression tests at the bottom of this file."""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from program_checks import check, run_gradients, run_program
from programs import ALL_DTYPES, FLOATS, Layout, Program, fuzz_programs, programs

import ember

# The default run keeps to a few hundred programs (sizes are runtime args, so most kernels are cache
# hits); `pytest -m slow` runs the long sweeps. EMBER_RANDOM_PROGRAMS (forward, float32),
# EMBER_RANDOM_HALF_PROGRAMS, EMBER_RANDOM_MIXED_PROGRAMS and EMBER_RANDOM_GRAD_PROGRAMS override
# the default counts; EMBER_FUZZ_PROGRAMS the slow fuzzing sweep's (benchmarks/fuzz.py runs the same
# mix and counts outcomes instead of stopping at the first failure).
DEFAULT_EXAMPLES = int(os.environ.get("EMBER_RANDOM_PROGRAMS", "200"))
HALF_EXAMPLES = int(os.environ.get("EMBER_RANDOM_HALF_PROGRAMS", "80"))
MIXED_EXAMPLES = int(os.environ.get("EMBER_RANDOM_MIXED_PROGRAMS", "80"))
GRAD_EXAMPLES = int(os.environ.get("EMBER_RANDOM_GRAD_PROGRAMS", "70"))
FUZZ_EXAMPLES = int(os.environ.get("EMBER_FUZZ_PROGRAMS", "10000"))


def check_program(prog: Program, seed: int = 0) -> None:
    """ember.compile, the unfused graph and the reference interpreter against eager (or all raise)."""
    check(run_program(prog, seed), prog)


def check_gradients(prog: Program, seed: int = 0) -> None:
    check(run_gradients(prog, seed), prog)


@given(programs(inplace=True))
@settings(max_examples=DEFAULT_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_programs_match_eager(prog):
    check_program(prog)


@given(programs(dtypes=(torch.float16, torch.bfloat16), inplace=True))
@settings(max_examples=HALF_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_half_programs_match_eager(prog):
    check_program(prog)


@given(programs(dtypes=ALL_DTYPES, inplace=True, zero_dims=True, mixed=True, allow_raise=True))
@settings(max_examples=MIXED_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_mixed_dtype_programs_match_eager(prog):
    # every dtype (ints, bools, float64, bfloat16), mixed in one program, dims of size 0, and now and
    # then a program eager rejects (amax over an empty dim, mean of ints): ember must raise too
    check_program(prog)


@given(programs(dtypes=(torch.float32, torch.float32, torch.float64), zero_dims=True))
@settings(max_examples=GRAD_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_program_gradients_match_eager(prog):
    check_gradients(prog)


@pytest.mark.slow
@given(programs(max_steps=10, dtypes=(torch.float32, torch.float32) + FLOATS[1:], mixed=True, discrete=False))
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_program_gradients_long_sweep(prog):
    check_gradients(prog)


@pytest.mark.slow
@given(programs(max_steps=10, dtypes=(torch.float32, torch.float32, torch.float16), long_dims=True, inplace=True))
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_programs_long_sweep(prog):
    check_program(prog)


@pytest.mark.slow
@given(fuzz_programs())
@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_fuzz_sweep(case):
    # the mix of benchmarks/fuzz.py (forward programs of every dtype, layout and size incl. 0, and
    # gradient programs): 0 mismatches, 0 internal errors
    gradients, prog = case
    check(run_gradients(prog) if gradients else run_program(prog, deep=False), prog)


# -- regressions: shrunk programs the sweeps found ----------------------------------------------------


def _run(source_lines: list[str], shapes: list[tuple[int, ...]], outputs: list[str],
         dtype: torch.dtype = torch.float32) -> None:
    check_program(Program(shapes, dtype, source_lines, outputs=outputs))


def test_regression_squeezed_row_broadcast_along_columns():
    # amax without keepdim gives a [2] row value; `x0 + t1` broadcasts it along the *last* dim.
    # The row kernel once read it per row (found by test_random_half_programs_match_eager).
    def program(x0):
        t0 = x0 @ x0.transpose(-2, -1)
        t1 = t0.amax(1, keepdim=False)
        return (x0 + t1,)

    x = torch.randn(2, 1)
    with torch.no_grad():
        got = ember.compile(program)(x)
    torch.testing.assert_close(got[0], program(x)[0])


def test_regression_matmul_operand_producer_stays_out_of_its_epilogue():
    # abs(x0) feeds the matmul and the add after it; with equal shapes it once joined the matmul's
    # group as if it were epilogue (found by test_random_programs_match_eager).
    def program(x0):
        t0 = torch.abs(x0)
        return (t0 + t0 @ torch.full((1, 1), 0.5),)

    x = torch.randn(1, 1)
    with torch.no_grad():
        got = ember.compile(program)(x)
    torch.testing.assert_close(got[0], program(x)[0])


def test_zero_size_dims_reduce_like_eager():
    # a dim of size 0: sums are 0, means NaN, softmax empty, a matmul over K = 0 is zeros
    _run(["t0 = x0.sum(0)", "t1 = x0.mean(0)", "t2 = torch.softmax(x0, 0)", "t3 = x0.transpose(0, 1) @ x0",
          "t4 = (x0 > 0).sum(0)"], [(0, 3)], ["t0", "t1", "t2", "t3", "t4"])


@pytest.mark.parametrize("line, dtype", [("x0.amax(0)", torch.float32), ("x0.argmin(0)", torch.float32),
                                         ("x0.mean(1)", torch.int32), ("x0.bool() - x0.bool()", torch.float32),
                                         ("x0 - x0.bool()", torch.int32), ("torch.rsub(x0, x0.bool())", torch.float32)])
@pytest.mark.parametrize("used", [True, False])
def test_programs_eager_rejects_raise_a_clear_error(line, dtype, used):
    # amax/argmin over a dim of size 0, the mean of ints, bool subtraction: eager raises, so must ember
    # (a clear error, not an internal one, nor a result), also where the result is unused (dead code).
    # An int minus a bool passed fake tensors and returned a result (found by benchmarks/fuzz.py).
    outcome = run_program(Program([(0, 3)], dtype, [f"t0 = {line}", "t1 = x0 * 2"], outputs=["t0" if used else "t1"]))
    assert outcome.status == "error" and outcome.eager_error, outcome


def test_strided_inputs_sharing_a_buffer_written_in_place():
    # x0 and x1 are as_strided views of one buffer with random strides and offsets; x1 sees x0's write
    layouts = [Layout("strided", None, (9, 2), 3), Layout("strided", 0, (1, 4), 20)]
    prog = Program([(3, 4), (3, 4)], torch.float32, ["t0 = x0.mul_(0.5)", "t1 = x1 + t0.sum(0)"],
                   outputs=["t1"], layouts=layouts)
    check_program(prog)
    prog.dtypes = [torch.int64, torch.int64]
    prog.lines = ["t0 = x0.mul_(2)", "t1 = x1 + t0.sum(0)"]
    check_program(prog)


def test_checks_report_a_wrong_value(monkeypatch):
    # the fuzzer's checks catch a result off by more than the dtype's tolerance (and call it a mismatch)
    prog = Program([(2, 3)], torch.bfloat16, ["t0 = torch.tanh(x0)"], outputs=["t0"])
    assert run_program(prog).status == "pass"
    monkeypatch.setattr(ember, "compile", lambda fn: lambda *xs: tuple(o * 1.05 for o in fn(*xs)))
    assert run_program(prog, deep=False).status == "mismatch"


def test_regression_double_flip_of_an_input_written_in_place():
    # flip(flip(x)) is x's memory again; it was returned as a view of x, so the program's later
    # in-place write into x showed through (eager's flip copies), and writing the output changed x
    # (found by benchmarks/fuzz.py --deep --seed 1)
    _run(["t0 = x0.flip(-1)", "t1 = x0[..., 1:].clamp_(-0.5, 0.5)", "t2 = t0.flip(-1)"], [(2, 4)], ["t2"])
    x = torch.randn(2, 4)
    with torch.no_grad():
        out = ember.compile(lambda x: (x.flip(0).flip(0),))(x)[0]
    out.zero_()
    assert x.ne(0).all()
