"""Differential testing: random programs compiled by ember against eager PyTorch, the reference
interpreter over the optimized IR, and the same graph run unfused (one kernel per op); and their
gradients (torch.autograd.grad of a random linear function of the outputs) against eager's. Inputs
come in every layout of `programs.LAYOUTS`: non-contiguous, expanded, passed twice, overlapping.

Failures found by these sweeps live on as named regression tests at the bottom of this file."""

import functools
import os
from collections.abc import Callable

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from programs import Program, graph_inputs, programs

import ember
from ember.ir import evaluate
from ember.runtime import compile_graph

# The default run keeps to a few hundred programs (sizes are runtime args, so most kernels are cache
# hits); `pytest -m slow` runs the long sweeps. EMBER_RANDOM_PROGRAMS (forward, float32),
# EMBER_RANDOM_HALF_PROGRAMS and EMBER_RANDOM_GRAD_PROGRAMS override the default counts.
DEFAULT_EXAMPLES = int(os.environ.get("EMBER_RANDOM_PROGRAMS", "300"))
HALF_EXAMPLES = int(os.environ.get("EMBER_RANDOM_HALF_PROGRAMS", "100"))
GRAD_EXAMPLES = int(os.environ.get("EMBER_RANDOM_GRAD_PROGRAMS", "100"))


def _close(got, expected, rtol, atol, what: str, prog: Program, wide: Callable[[], list] | None = None) -> None:
    """`got` matches `expected` within (rtol, atol), or where not, is as accurate as `expected`
    against `wide()`, the same values computed in float64: |got - wide| <= 3 |expected - wide| +
    atol + rtol |wide| per element. (Eager float16 rounds after every op, ember once per kernel; and
    sums of terms that cancel leave rounding noise of the terms' size.)"""
    assert len(got) == len(expected), prog.source
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g.dtype == e.dtype and g.shape == e.shape, f"output {i}: {g.dtype}{list(g.shape)} vs {what} " \
                                                          f"{e.dtype}{list(e.shape)}\n{prog.source}"
        try:
            torch.testing.assert_close(g, e, rtol=rtol, atol=atol, equal_nan=True,
                                       msg=lambda m, i=i: f"output {i} vs {what}: {m}\n{prog.source}")
        except AssertionError:
            if wide is None or not _as_accurate(g, e, wide()[i], rtol, atol):
                raise


def _as_accurate(g: torch.Tensor, e: torch.Tensor, w: torch.Tensor, rtol: float, atol: float) -> bool:
    g, e, w = g.detach().double(), e.detach().double(), w.detach().double()
    ok = (g - w).abs() <= 3 * (e - w).abs() + atol + rtol * w.abs()
    return bool((ok | (g.isnan() & e.isnan())).all())


def check_program(prog: Program, seed: int = 0) -> None:
    fn = prog.function()
    rtol, atol = prog.tolerances
    with torch.no_grad():
        bases, xs = prog.make_inputs(seed=seed)  # eager and ember each get their own copy
        expected = fn(*xs)
        c_bases, c_xs = prog.make_inputs(seed=seed)
        got = ember.compile(fn)(*c_xs)

        @functools.cache
        def wide() -> tuple[list, list]:  # outputs and leaves after the call, in float64
            w_bases, w_xs = prog.make_inputs(seed=seed, wide=True)
            return list(fn(*w_xs)), w_bases

        _close(got, expected, rtol, atol, "eager", prog, lambda: wide()[0])
        # in-place writes reach the caller's tensors (and every alias of them) as in eager
        _close(c_bases, bases, rtol, atol, "eager, leaf tensors b<i> after the call", prog, lambda: wide()[1])
        _, xs = prog.make_inputs(seed=seed)
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


def check_gradients(prog: Program, seed: int = 0) -> None:
    """Gradients of `sum_i (out_i * w_i).sum()` (random w_i) through ember.compile against eager's,
    with respect to the program inputs and to the leaf tensors they are views of (an input passed
    twice or overlapping another sums its gradients there); the outputs are compared too."""
    fn = prog.function()
    rtol, atol = prog.tolerances
    bases, xs = prog.make_inputs(requires_grad=True, seed=seed)
    expected = fn(*xs)
    weights = [torch.randn(e.shape, generator=torch.Generator().manual_seed(seed + k)).to(e.dtype)
               for k, e in enumerate(expected)]
    loss = sum((e * w).sum() for e, w in zip(expected, weights))
    want = _grads(loss, xs + bases)
    c_bases, c_xs = prog.make_inputs(requires_grad=True, seed=seed)
    got = ember.compile(fn)(*c_xs)

    @functools.cache
    def wide() -> tuple[list, list]:  # outputs and gradients (of x<i>, then b<i>) in float64
        w_bases, w_xs = prog.make_inputs(requires_grad=True, seed=seed, wide=True)
        out = fn(*w_xs)
        return [o.detach() for o in out], _grads(sum((o * w.double()).sum() for o, w in zip(out, weights)),
                                                 w_xs + w_bases)

    _close([g.detach() for g in got], [e.detach() for e in expected], rtol, atol, "eager", prog, lambda: wide()[0])
    missing = [i for i, g in enumerate(got) if not g.requires_grad]
    assert not missing, f"outputs {missing} do not require grad (eager's do)\n{prog.source}"
    grads = _grads(sum((g * w).sum() for g, w in zip(got, weights)), c_xs + c_bases)
    n = len(xs)
    _close(grads[:n], want[:n], rtol, atol, "eager gradient of x<i>", prog, lambda: wide()[1][:n])
    # A leaf's gradient sums its views' (torch's view backward, not ember): terms of size up to
    # max|grad x<i>| may cancel, so the absolute tolerance scales with them.
    scale = max([float(g.abs().max()) for g in want[:n] if g.numel()] + [1.0])
    _close(grads[n:], want[n:], rtol, atol * scale, "eager gradient of b<i>", prog, lambda: wide()[1][n:])


def _grads(loss: torch.Tensor, wrt: list[torch.Tensor]) -> list[torch.Tensor]:
    gs = torch.autograd.grad(loss, wrt, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(gs, wrt)]


@given(programs(inplace=True))
@settings(max_examples=DEFAULT_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_programs_match_eager(prog):
    check_program(prog)


@given(programs(dtypes=(torch.float16,), inplace=True))
@settings(max_examples=HALF_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_half_programs_match_eager(prog):
    check_program(prog)


@given(programs())
@settings(max_examples=GRAD_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_program_gradients_match_eager(prog):
    check_gradients(prog)


@pytest.mark.slow
@given(programs(max_steps=10, dtypes=(torch.float32, torch.float32, torch.float16)))
@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_program_gradients_long_sweep(prog):
    check_gradients(prog)


@pytest.mark.slow
@given(programs(max_steps=10, dtypes=(torch.float32, torch.float32, torch.float16), long_dims=True, inplace=True))
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
