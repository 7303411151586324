"""Host overhead per call: ember's Python path around its kernels against `torch.compile`'s.

    python benchmarks/host_overhead.py [--json PATH] [--cases x_plus_1,mlp_no_grad,...] [--calls N]

Four cases, each run side by side in one process on the same function and inputs:

- `x_plus_1`: `x + 1` on a [64, 64] float32 tensor (one kernel);
- `mlp_no_grad`: an MLP block (LayerNorm, Linear 64->256, GELU, Linear 256->64, residual) under
  `torch.no_grad()`;
- `mlp_fwd_bwd`: the same block, `model(x).sum().backward()` (forward and backward graphs,
  gradients accumulated into `.grad`);
- `adamw_12`: an AdamW step over 12 parameter tensors (6 Linear layers' weights and biases):
  `ember.optim.AdamW.step()` against `torch.compile`d `torch.optim.AdamW.step()`.

ember runs with only the final driver launch replaced by a no-op (`ember.codegen.kernel.stub_launches`):
guards, signature, plan lookup, buffer allocation, argument binding and the output stage all run, the
kernel does not (its results are garbage; nothing reads them). `torch.compile` (default backend,
inductor, on CPU) runs whole, its kernels included: at these sizes they cost a few µs. The figure is
the best of `--repeats` rounds of the mean µs per call over `--calls` calls, after warm-up; ember's
and torch's rounds alternate, so load from other processes reaches both alike.
JSON: `{"cases": [{"name", "ember_us", "torch_compile_us"}], ...}`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402
from torch import nn  # noqa: E402

import ember  # noqa: E402
from ember.codegen import kernel as kernel_mod  # noqa: E402

torch.set_num_threads(1)


def stubbed():
    """ember's launches stubbed at the final driver call."""
    return kernel_mod.stub_launches()


def _mlp() -> nn.Module:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(64)
            self.fc1 = nn.Linear(64, 256)
            self.fc2 = nn.Linear(256, 64)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(x))))

    return Block()


def case_x_plus_1() -> tuple[Callable, Callable]:
    def f(x):
        return x + 1

    x = torch.randn(64, 64)
    e, t = ember.compile(f), torch.compile(f)
    return (lambda: e(x)), (lambda: t(x))


def _mlp_case(body: Callable[[Callable, torch.Tensor], Any]) -> tuple[Callable, Callable]:
    """ember.compile and torch.compile of one MLP, each called as `body(compiled, x)`."""
    torch.manual_seed(0)
    m = _mlp()
    x = torch.randn(16, 64)
    e, t = ember.compile(m), torch.compile(m)
    return (lambda: body(e, x)), (lambda: body(t, x))


def _no_grad_call(fn: Callable, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return fn(x)


def case_mlp_no_grad() -> tuple[Callable, Callable]:
    return _mlp_case(_no_grad_call)


def case_mlp_fwd_bwd() -> tuple[Callable, Callable]:
    return _mlp_case(lambda fn, x: fn(x).sum().backward())


def case_adamw_12() -> tuple[Callable, Callable]:
    torch.manual_seed(0)

    def params() -> list[torch.Tensor]:
        torch.manual_seed(0)
        ps = [p for m in [nn.Linear(64, 64) for _ in range(6)] for p in m.parameters()]
        for p in ps:
            p.grad = torch.randn_like(p)
        return ps

    eopt = ember.optim.AdamW(params(), lr=1e-3, weight_decay=0.01)
    topt = torch.optim.AdamW(params(), lr=1e-3, weight_decay=0.01)

    @torch.compile
    def tstep():
        topt.step()

    return eopt.step, tstep


CASES = {"x_plus_1": case_x_plus_1, "mlp_no_grad": case_mlp_no_grad, "mlp_fwd_bwd": case_mlp_fwd_bwd,
         "adamw_12": case_adamw_12}


def _round_us(fn: Callable, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1e6


def side_by_side(ember_fn: Callable, torch_fn: Callable, calls: int, repeats: int) -> tuple[float, float]:
    """(ember µs, torch.compile µs) per call: the best of `repeats` rounds each, the two alternating
    round by round, so that a load that comes and goes on the machine reaches both alike."""
    with stubbed():  # ember's first calls (tracing, planning) need no kernel either
        for _ in range(5):
            ember_fn()
    for _ in range(5):  # warm-up: compiles, plans, caches
        torch_fn()
    ember_rounds, torch_rounds = [], []
    for _ in range(repeats):
        with stubbed():
            ember_rounds.append(_round_us(ember_fn, calls))
        torch_rounds.append(_round_us(torch_fn, calls))
    return min(ember_rounds), min(torch_rounds)


def run(cases: list[str], calls: int = 200, repeats: int = 7) -> dict:
    rows = []
    for name in cases:
        ember_us, torch_us = side_by_side(*CASES[name](), calls, repeats)
        rows.append({"name": name, "ember_us": round(ember_us, 1), "torch_compile_us": round(torch_us, 1)})
    return {"cases": rows, "calls": calls, "repeats": repeats, "torch": torch.__version__,
            "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}


def format_table(result: dict) -> str:
    lines = [f"{'case':<14}{'ember µs':>12}{'torch.compile µs':>18}{'ratio':>8}"]
    for r in result["cases"]:
        lines.append(f"{r['name']:<14}{r['ember_us']:>12.1f}{r['torch_compile_us']:>18.1f}"
                     f"{r['ember_us'] / r['torch_compile_us']:>8.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args(argv)
    result = run(a.cases.split(","), a.calls, a.repeats)
    print(format_table(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
