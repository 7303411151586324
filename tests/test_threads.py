"""Concurrent calls of compiled functions (issue 9): 8 threads x 50 calls, the same and different
functions, first calls (compiles) racing too; every result compared with eager PyTorch."""

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import ember

THREADS, CALLS = 8, 50


def _attention_ish(x, w):
    return torch.softmax(x @ w, dim=-1) * 2.0


def _pointwise(x):
    return torch.sigmoid(x) * x + 1.0


# The CUDA variant runs on a GPU machine (`benchmarks/gpu_check.py`, `-m gpu`); without CUDA it fails.
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_threads_share_and_race_compiled_functions(device):
    assert device == "cpu" or torch.cuda.is_available(), "the gpu tests need a CUDA device"
    fa, fb = ember.compile(_attention_ish), ember.compile(_pointwise)  # nothing compiled yet: first calls race
    w = torch.randn(16, 8, device=device)

    def worker(k: int) -> list[str]:
        failures = []
        for i in range(CALLS):
            x = torch.randn(4, 16, device=device)
            fn, ref, args = (fa, _attention_ish, (x, w)) if (k + i) % 2 else (fb, _pointwise, (x,))
            try:
                torch.testing.assert_close(fn(*args), ref(*args))
            except Exception as e:  # noqa: BLE001  (collect every failure, report them together)
                failures.append(f"thread {k} call {i}: {type(e).__name__}: {str(e).splitlines()[0]}")
        return failures

    with ThreadPoolExecutor(THREADS) as pool:
        failures = [f for fs in pool.map(worker, range(THREADS)) for f in fs]
    assert failures == []
    assert len(fa.programs) == 1 and len(fb.programs) == 1  # racing first calls compiled once
