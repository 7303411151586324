"""Load-and-first-call of an `ember.save` artifact against compile-and-first-call, in fresh processes.

    python benchmarks/save_load.py [--json PATH] [--cases mlp,transformer,mlp_step] [--repeats 3]
                                   [--device cuda] [--cold-triton-cache]

Per case, the parent saves the artifact (and the inputs) once; then fresh interpreters (the best of
`--repeats` each, alternating), timed from
after `import ember` (imports cost the same for both and are not counted; their heap is then frozen,
`gc.freeze`, so that a full collection does not land at random in either side's timing):

- compile: builds the model, then `ember.trace` (capture, lowering, passes) and the plan and kernels for
  the inputs (for `mlp_step`, the step program `compile_step` builds at its first call);
- load: `ember.load` with no model code, by phase: manifest (read and hash every file), graph (parse,
  check, verify, saved schedules, plan and kernels generated again and compared with the saved
  sources), weights (safetensors);
- then, in both, the first call and a second one.

Cases: `mlp` (LayerNorm, Linear 64->256, GELU, Linear 256->64, residual; batch 8), `transformer` (two
pre-norm blocks: causal attention with 4 heads, GELU MLP; d=64, batch 2 x 32 tokens), `mlp_step`
(the mlp with a mean-squared-error loss, AdamW, one training step). Kernels run under Triton's
interpreter on CPU: a first call pays the interpreter's one-time setup (process-wide, and an AST
rewrite per kernel) on both sides, and the on-disk kernel source cache is warm for both.
On a GPU (`--device cuda`) a first call compiles each kernel with Triton unless Triton's on-disk cache
holds it: by default the children share the cache (warmed by the parent's own first call, so both
sides find every kernel compiled: what ember's compile and load cost); `--cold-triton-cache` gives
every child an empty one (both sides compile every kernel with Triton). benchmarks/gpu_check.py runs both.
JSON: `{"cases": [{"name", "compile_s", "load_s", "compile_first_call_s", "load_first_call_s",
"steady_call_s", "load_phases"}], "device", "cold_triton_cache"}` (`*_first_call_s`: from the start to
the end of the first call).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

CASES = ("mlp", "transformer", "mlp_step")


class MLP(nn.Module):
    def __init__(self, d: int = 64):
        super().__init__()
        self.norm, self.up, self.down = nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        return x + self.down(nn.functional.gelu(self.up(self.norm(x))))


class Block(nn.Module):
    def __init__(self, d: int = 64, heads: int = 4):
        super().__init__()
        self.heads, self.n1, self.qkv, self.proj, self.mlp = heads, nn.LayerNorm(d), nn.Linear(d, 3 * d), \
            nn.Linear(d, d), MLP(d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.n1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.mlp(x + self.proj(a.transpose(1, 2).reshape(b, t, d)))


def build(case: str, device: str = "cpu"):
    """(model, example inputs) of a case on `device`, the same in every process (seeded)."""
    torch.manual_seed(0)
    if case == "transformer":
        model, args = nn.Sequential(Block(), Block()).eval(), (torch.randn(2, 32, 64),)
    elif case == "mlp_step":
        model, args = MLP(), (torch.randn(8, 64), torch.randn(8, 64))
    else:
        model, args = MLP().eval(), (torch.randn(8, 64),)
    return model.to(device), tuple(a.to(device) for a in args)


def _step(model):
    import ember

    return ember.compile_step(model, nn.functional.mse_loss, ember.optim.AdamW(model.parameters(), lr=1e-3))


def child_compile(case: str, root: str, device: str = "cpu") -> dict:
    """Compile (capture, lowering, passes, schedule, plan and kernels for these inputs), then call."""
    import ember
    from ember.api.save_step import step_program
    from ember.runtime.restore import contiguous_plan

    model, args = build(case, device)
    start = time.perf_counter()
    if case.endswith("_step"):
        step = _step(model)
        program, _ = step_program(step, *args)  # (the program the first step would build)
        contiguous_plan(program.compiled, device)
        call = lambda: step(*args)
    else:
        with torch.no_grad():
            sg = ember.trace(model, *args)
        contiguous_plan(sg.compiled, device)
        call = lambda: sg(*args)
    return _calls(start, call)


def child_load(case: str, root: str, device: str = "cpu") -> dict:
    """`ember.load` by phases (no model code: `build` is not called), then call."""
    import ember  # noqa: F401
    from ember.api import load as L

    path = os.path.join(root, case)
    args = torch.load(os.path.join(root, case + ".pt"))
    phases, start = {}, time.perf_counter()
    t = start
    manifest, files = L.read_folder(path)
    program = L.json_file(files, "program.json")
    device = torch.device(program["device"])
    phases["manifest"], t = time.perf_counter() - t, time.perf_counter()
    exe = L.executable(files, program, device)
    phases["graph"], t = time.perf_counter() - t, time.perf_counter()
    weights = L.read_tensors(files, "weights.safetensors", device)
    if manifest["kind"] == "step":
        from ember.api.load_step import LoadedStep

        f = LoadedStep(path, program, exe, weights, L.read_tensors(files, "optimizer.safetensors", device), device)
    else:
        f = L.LoadedFunction(path, program, exe, weights, device)
    phases["weights"] = time.perf_counter() - t
    return {**_calls(start, lambda: f(*args)), "phases": phases}


def _calls(start: float, call) -> dict:
    """Seconds to be ready (`ready`), to the end of the first call (`first`), and of a second call."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    ready = time.perf_counter()
    with torch.no_grad():
        call()
        sync()
        first = time.perf_counter()
        call()
        sync()
    return {"ready": ready - start, "first": first - start, "steady": time.perf_counter() - first}


def _child(mode: str, case: str, root: str, device: str = "cpu") -> dict:
    import ember  # noqa: F401

    # The heap after `import ember` (torch, triton) moves out of the collector's generations: otherwise a
    # full collection (~0.3 s here) lands at an arbitrary point of either side's timed work.
    gc.collect()
    gc.freeze()
    return (child_compile if mode == "compile" else child_load)(case, root, device)


def _run_child(mode: str, case: str, root: str, device: str = "cpu", cold: bool = False) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryDirectory(prefix="ember-triton-cache-") as cache:
        if cold:  # this child compiles every kernel with Triton
            env["TRITON_CACHE_DIR"] = cache
        out = subprocess.run([sys.executable, __file__, "--child", mode, case, root, device], check=True, env=env,
                             capture_output=True, text=True, timeout=1200)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_case(case: str, root: str, repeats: int = 3, device: str = "cpu", cold: bool = False) -> dict:
    import ember

    model, args = build(case, device)
    if case.endswith("_step"):
        ember.save(_step(model), os.path.join(root, case), *args)
    else:
        ember.save(model, os.path.join(root, case), *args)
    torch.save(args, os.path.join(root, case + ".pt"))
    if not cold and device != "cpu":  # warm the shared Triton cache (the interpreter keeps none)
        _run_child("compile", case, root, device)
    # the best of `repeats` fresh processes per side, alternating (load from other processes hits both alike)
    runs = [(_run_child("compile", case, root, device, cold), _run_child("load", case, root, device, cold))
            for _ in range(repeats)]
    compiled = {k: min(c[k] for c, _ in runs) for k in ("ready", "first", "steady")}
    loaded = {k: min(r[k] for _, r in runs) for k in ("ready", "first", "steady")}
    loaded["phases"] = {k: min(r["phases"][k] for _, r in runs) for k in runs[0][1]["phases"]}
    return {"name": case, "compile_s": compiled["ready"], "load_s": loaded["ready"],
            "compile_first_call_s": compiled["first"], "load_first_call_s": loaded["first"],
            "steady_call_s": loaded["steady"], "load_phases": loaded["phases"]}


def run(cases: list[str] | tuple[str, ...] = CASES, repeats: int = 3, device: str = "cpu",
        cold: bool = False) -> dict:
    with tempfile.TemporaryDirectory(prefix="ember-save-load-") as root:
        return {"cases": [run_case(case, root, repeats, device, cold) for case in cases],
                "torch": torch.__version__, "device": device, "cold_triton_cache": cold}


def format_table(result: dict) -> str:
    lines = [f"{'case':<12} {'compile':>8} {'load':>7} {'x':>6} | {'compile+1st':>11} {'load+1st':>9} {'x':>5} | "
             f"{'2nd call':>8} | load phases (s)"]
    for r in result["cases"]:
        ph = "  ".join(f"{k} {v:.3f}" for k, v in r["load_phases"].items())
        ratio = r["compile_s"] / r["load_s"]
        lines.append(f"{r['name']:<12} {r['compile_s']:>8.3f} {r['load_s']:>7.3f} {ratio:>5.0f}x | "
                     f"{r['compile_first_call_s']:>11.3f} {r['load_first_call_s']:>9.3f} "
                     f"{r['compile_first_call_s'] / r['load_first_call_s']:>4.1f}x | {r['steady_call_s']:>8.3f} | {ph}")
    cache = ", each process with an empty Triton cache" if result.get("cold_triton_cache") else \
        ", Triton's cache shared and warm"
    device = result.get("device", "cpu")
    where = "under Triton's interpreter (CPU)" if device == "cpu" else f"on {device}{cache}"
    lines.append("seconds, best of fresh processes per side, from after `import ember`; first calls run kernels "
                 + where)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", help="write the result here")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    ap.add_argument("--repeats", type=int, default=3, help="fresh processes per side; the best is kept")
    ap.add_argument("--device", default="cpu", help="where the cases run (cuda: Triton compiles on first call)")
    ap.add_argument("--cold-triton-cache", action="store_true", help="every process with an empty Triton cache")
    ap.add_argument("--child", nargs=4, help=argparse.SUPPRESS)  # internal: mode case root device
    a = ap.parse_args(argv)
    if a.child:
        mode, case, root, device = a.child
        print(json.dumps(_child(mode, case, root, device)))
        return {}
    result = run(a.cases.split(","), a.repeats, a.device, a.cold_triton_cache)
    print(format_table(result))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    main()
