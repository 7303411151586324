"""Differential testing: random programs compiled by ember against eager PyTorch."""

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from programs import programs

import ember

# The default run keeps the count modest; `pytest -m slow` runs the long sweep.
DEFAULT_EXAMPLES = int(os.environ.get("EMBER_RANDOM_PROGRAMS", "60"))


def check_program(prog) -> None:
    fn = prog.function()
    xs = prog.inputs()
    expected = fn(*xs)
    with torch.no_grad():
        got = ember.compile(fn)(*xs)
    assert len(got) == len(expected), prog.source
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5, msg=lambda m: f"{m}\n{prog.source}")


@given(programs())
@settings(max_examples=DEFAULT_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_programs_match_eager(prog):
    check_program(prog)


@pytest.mark.slow
@given(programs(max_steps=10))
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_programs_long_sweep(prog):
    check_program(prog)
