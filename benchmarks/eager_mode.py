"""Eager-mode benchmark: kernels per step of torch eager, ember eager mode and ember static mode.

    python benchmarks/eager_mode.py [--json PATH]

The same programs run three ways, and the table counts the kernels one step launches:

- `torch eager`: the non-view aten ops PyTorch dispatches in one step (forward, and for training
  steps the backward ops autograd issues), counted live by a dispatch mode with the rule
  `ember.explain` uses (views and metadata ops are not kernels);
- `ember eager`: kernel launches of one step inside `ember.eager()` (`ember.eager_stats().launches`;
  a warm-up step builds the kernels first), plus the non-view ops that fell through to torch;
- `ember static`: kernels the compiled graph launches per call: `ember.compile` for forward-only
  programs; for training steps the forward + backward graphs `torch.compile(backend="ember")`
  hands to ember (AOTAutograd), summed.

Training steps are forward + `loss.backward()`; the optimizer update is not included. Every mode's
result (output, or loss and gradients) is checked against torch eager. CPU, Triton's interpreter,
tiny shapes: the kernel counts are the point, not the time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
from fusion_patterns import MLPBlock, TransformerBlock  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import ember  # noqa: E402
from ember.api import dynamo  # noqa: E402
from ember.api.explain import _METADATA_OPS  # noqa: E402

B, S, D = 2, 8, 32


class _CountOps(TorchDispatchMode):
    """Counts the non-view aten ops that run (forward and backward), as `ember.explain` counts eager."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if not (func.is_view or name in _METADATA_OPS or func.namespace != "aten"):
            self.ops[str(func)] = self.ops[str(func)] + 1
        return func(*args, **(kwargs or {}))


def _programs() -> list[tuple[str, bool, Callable[[], tuple[Any, tuple]]]]:
    """(name, is training step, builder of (model or fn, args))."""
    def mlp():
        return MLPBlock(D, 4 * D), (torch.randn(B, S, D),)

    def block():
        mask = torch.triu(torch.full((S, S), float("-inf")), diagonal=1)
        return TransformerBlock(D), (torch.randn(B, S, D), mask)

    def softmax():
        return (lambda x: torch.softmax(x, dim=-1)), (torch.randn(B * S, 4 * D),)

    def layernorm():
        return (lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b)), (
            torch.randn(B * S, 4 * D), torch.randn(4 * D), torch.randn(4 * D))

    return [("mlp_block train step", True, mlp), ("transformer_block forward", False, block),
            ("transformer_block train step", True, block), ("softmax", False, softmax),
            ("layernorm", False, layernorm)]


def _step(fn: Any, args: tuple, train: bool) -> Any:
    """One step: forward (no grad), or forward + backward returning (loss, grads)."""
    if not train:
        with torch.no_grad():
            return fn(*args)
    for p in fn.parameters():
        p.grad = None
    loss = fn(*args).square().mean()
    loss.backward()
    return (loss.detach(), [p.grad.clone() for p in fn.parameters()])


def _close(a: Any, b: Any) -> bool:
    # float32 rounding only: measured on these programs, every output, loss and gradient of both
    # ember modes is within 5e-7 of torch's (reductions summed in another order)
    try:
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        return True
    except AssertionError:
        return False


def measure(name: str, train: bool, build: Callable) -> dict[str, Any]:
    torch.manual_seed(0)
    fn, args = build()
    if isinstance(fn, torch.nn.Module):
        fn.train(train)
        fn.requires_grad_(train)
    row: dict[str, Any] = {"program": name}

    counter = _CountOps()
    with counter:
        ref = _step(fn, args, train)
    row["torch_eager"] = sum(counter.ops.values())

    _step_eager = ember.eager()(_step)
    _step_eager(fn, args, train)                       # warm-up: builds the kernels
    ember.reset_eager_stats()
    out = _step_eager(fn, args, train)
    st = ember.eager_stats()
    row["ember_eager"] = st.launches
    row["ember_eager_torch_ops"] = sum(n for op, n in st.fallthrough.items()
                                       if not st.reasons.get(op, "").startswith("view op"))
    row["ember_eager_ok"] = _close(out, ref)

    if train:
        dynamo.reset_compiled_graphs()
        torch._dynamo.reset()
        compiled = torch.compile(fn, backend="ember")
        out = _step(compiled, args, train)
        graphs = dynamo.compiled_graphs()
        row["ember_static"] = sum(g.num_kernels for g in graphs)
        row["ember_static_via"] = "torch.compile fwd+bwd: " + "+".join(str(g.num_kernels) for g in graphs)
    else:
        compiled = ember.compile(fn)
        with torch.no_grad():
            out = compiled(*args)
        row["ember_static"] = compiled.graphs[0].num_kernels
        row["ember_static_via"] = "ember.compile"
    row["ember_static_ok"] = _close(out, ref)
    return row


def run() -> dict[str, Any]:
    """Every program, measured: {"meta": machine and versions, "rows": one dict per program}."""
    rows = []
    for name, train, build in _programs():
        t = time.perf_counter()
        rows.append(measure(name, train, build))
        rows[-1]["seconds"] = round(time.perf_counter() - t, 1)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"), "machine": platform.machine(),
            "cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "triton": triton.__version__, "shape": {"batch": B, "seq": S, "dim": D}}
    return {"meta": meta, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    meta, lines = result["meta"], []
    lines.append(f"{'program':30s} {'torch eager':>11s} {'ember eager':>11s} {'(+torch ops)':>12s} "
                 f"{'ember static':>12s}  check        static from")
    for r in result["rows"]:
        eager_ok, static_ok = ("ok" if r[k] else "MISMATCH" for k in ("ember_eager_ok", "ember_static_ok"))
        check = "ok" if r["ember_eager_ok"] and r["ember_static_ok"] else f"eager {eager_ok}, static {static_ok}"
        lines.append(f"{r['program']:30s} {r['torch_eager']:>11d} {r['ember_eager']:>11d} "
                     f"{r['ember_eager_torch_ops']:>12d} {r['ember_static']:>12d}  {check:12s} {r['ember_static_via']}")
    lines += ["", f"{meta['date']}  {platform.system()} {meta['machine']}, {meta['cpus']} cpus, "
                  f"python {meta['python']}, torch {meta['torch']}, triton {meta['triton']} (interpreter on CPU); "
                  f"batch={B} seq={S} dim={D}",
              "kernels per step; training steps = forward + loss.backward() (no optimizer update); "
              "(+torch ops) = non-view ops ember eager left to torch"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows to this file")
    opts = parser.parse_args(argv)
    result = run()
    print(format_table(result))
    if opts.json:
        Path(opts.json).write_text(json.dumps(result, indent=2))
    return result["rows"]


if __name__ == "__main__":
    main()
