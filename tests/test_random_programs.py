"""Differential testing: random programs compiled by ember against eager PyTorch, the reference
interpreter over the optimized IR, and the same graph run unfused (one kernel per op).

Failures found by these sweeps live on as named regression tests at the bottom of this file."""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from programs import Program, graph_inputs, programs

import ember
from ember.ir import evaluate
from ember.runtime import compile_graph

# The default run keeps to a few hundred programs (sizes are runtime args, so most kernels are cache
# hits); `pytest -m slow` runs the long sweep. EMBER_RANDOM_PROGRAMS overrides the default count.
DEFAULT_EXAMPLES = int(os.environ.get("EMBER_RANDOM_PROGRAMS", "400"))
HALF_EXAMPLES = int(os.environ.get("EMBER_RANDOM_HALF_PROGRAMS", "100"))


def _close(got, expected, rtol, atol, what: str, prog: Program) -> None:
    assert len(got) == len(expected), prog.source
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.dtype == e.dtype and g.shape == e.shape, f"output {i}: {g.dtype}{list(g.shape)} vs {what} " \
                                                          f"{e.dtype}{list(e.shape)}\n{prog.source}"
        torch.testing.assert_close(g, e, rtol=rtol, atol=atol, equal_nan=True,
                                   msg=lambda m, i=i: f"output {i} vs {what}: {m}\n{prog.source}")


def check_program(prog: Program, xs: list[torch.Tensor] | None = None) -> None:
    fn = prog.function()
    xs = prog.inputs() if xs is None else xs
    rtol, atol = prog.tolerances
    with torch.no_grad():
        expected = fn(*xs)
        got = ember.compile(fn)(*xs)
        _close(got, expected, rtol, atol, "eager", prog)
        sg = ember.trace(fn, *xs)
        inputs = graph_inputs(sg, tuple(xs))
        n = len(expected)
        fused = sg.compiled(inputs)[:n]
        # fusion never changes results: the same graph, one kernel per op
        unfused = compile_graph(sg.graph, fuse=False)(inputs)[:n]
        _close(fused, unfused, rtol, atol, "unfused", prog)
        # and the reference interpreter agrees with the kernels
        ref = evaluate(sg.graph, *inputs)[:n]
        _close(fused, ref, rtol, atol, "interpreter", prog)


@given(programs())
@settings(max_examples=DEFAULT_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_programs_match_eager(prog):
    check_program(prog)


@given(programs(dtypes=(torch.float16,)))
@settings(max_examples=HALF_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_half_programs_match_eager(prog):
    check_program(prog)


@pytest.mark.slow
@given(programs(max_steps=10, dtypes=(torch.float32, torch.float32, torch.float16), long_dims=True))
@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_programs_long_sweep(prog):
    check_program(prog)


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
