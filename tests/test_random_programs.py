"""Differential testing: random programs compiled by ember against eager PyTorch, the reference
interpreter over the optimized IR, and the same graph run unfused (one kernel per op); and their
gradients (torch.autograd.grad of a random linear function of the outputs) against eager's. Inputs
come in every layout of `programs.LAYOUTS`: non-contiguous, expanded, passed twice, overlapping.

Failures found by these sweeps live on as named regression tests at the bottom of this file."""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from program_checks import check, run_gradients, run_program
from programs import ALL_DTYPES, FLOATS, Program, fuzz_programs, programs

import ember

# The default run keeps to a few hundred programs (sizes are runtime args, so most kernels are cache
# hits); `pytest -m slow` runs the long sweeps. EMBER_RANDOM_PROGRAMS (forward, float32),
# EMBER_RANDOM_HALF_PROGRAMS, EMBER_RANDOM_MIXED_PROGRAMS and EMBER_RANDOM_GRAD_PROGRAMS override
# the default counts; EMBER_FUZZ_PROGRAMS the slow fuzzing sweep's (benchmarks/fuzz.py runs the same
# mix and counts outcomes instead of stopping at the first failure).
DEFAULT_EXAMPLES = int(os.environ.get("EMBER_RANDOM_PROGRAMS", "300"))
HALF_EXAMPLES = int(os.environ.get("EMBER_RANDOM_HALF_PROGRAMS", "100"))
MIXED_EXAMPLES = int(os.environ.get("EMBER_RANDOM_MIXED_PROGRAMS", "100"))
GRAD_EXAMPLES = int(os.environ.get("EMBER_RANDOM_GRAD_PROGRAMS", "100"))
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
