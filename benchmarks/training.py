"""Training-step benchmark: kernels, bytes and saved activations of one AdamW training step.

    python benchmarks/training.py [--size tiny|small|large] [--json PATH]

Two classifiers (an MLP and a small transformer block with a mean-pooled head), cross-entropy loss,
AdamW. One training step runs three ways from the same initial weights and the same batch:

- `torch eager`: `F.cross_entropy(model(x), y).backward()` and `torch.optim.AdamW(foreach=False)`.
  Kernels are the non-view aten ops dispatched in one step (forward, backward and optimizer), counted
  live with `ember.explain`'s rule (views and metadata ops are not kernels); bytes are each op's
  input + output bytes as `ember.explain` counts them. Counted on a second step, so the optimizer's
  state initialization (two `zeros_like` per parameter on step 1) is not in the count.
- `eager foreach`: the same with `torch.optim.AdamW(foreach=True)` (the default on CUDA): each
  `torch._foreach_*` op updates every parameter at once and counts as one kernel (on a GPU it is one
  launch per chunk of tensors). Bytes as above; saved bytes are the eager forward's.
- `ember static`: `ember.compile(model + loss)` (loss inside the compiled module, so the loss is
  fused too), `loss.backward()` through ember's forward and backward graphs (`AutogradGraph`), and
  `ember.optim.AdamW.step()`. Kernels: forward + backward graphs' `num_kernels` + the optimizer
  step's `num_kernels`.
- `ember step`: `ember.compile_step(model, F.cross_entropy, ember.optim.AdamW)`: forward, loss,
  backward and update as one graph; kernels = its `num_kernels`.

Ember's bytes are counted at kernel boundaries by `ember.passes.cost` over the fusion partition of
each compiled graph. `+torch` counts the torch ops an ember path runs per step outside its kernels,
live on a second step (a dispatch mode, ops of the interpreter's own argument copies excluded):
`Tensor.copy_` write-backs (new parameters / optimizer state / buffers copied into the caller's
tensors when the graph's outputs are not stored in place: each reads and writes the tensor, their
bytes are reported apart as `+copy bytes`), AdamW's per-parameter 0-dim step counter and, for
`loss.backward()`, the loss-gradient seed; eager's kernel count includes the same 0-dim ops (shown
as `0-d`). Saved bytes: what is kept from forward to backward: eager's from
`torch.autograd.graph.saved_tensors_hooks` during the eager forward (distinct tensors, as
tests/test_autodiff.py measures them; `act` = those not viewing a parameter's or an input's
storage); ember's from `AutogradGraph.partition` (`saved_bytes`, and `saved_activation_bytes` as
`act`). The whole-step graph keeps nothing across a forward/backward boundary: n/a.

`check`: after one step, every parameter of each ember path matches eager's (rtol 1e-4, atol 1e-5).
On a CUDA machine, median step time (`triton.testing.do_bench`) of torch eager (torch.optim's
default foreach AdamW), torch.compile (default backend: the model + loss module and the optimizer
step each compiled), ember static and ember step; on CPU, times are not measured. CPU runs go
through Triton's interpreter: the structure is the point, not the time.
"""

from __future__ import annotations

import argparse
import copy
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))  # the GPT of examples/train_lm.py

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torch.utils import _pytree as pytree  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

import ember  # noqa: E402
from ember.api.explain import _METADATA_OPS, _read_bytes  # noqa: E402
from ember.codegen import kernel as kernel_module  # noqa: E402
from ember.passes.cost import group_cost, is_kernel  # noqa: E402
from ember.passes.fusion import partition  # noqa: E402
from ember.runtime.memory import plan_memory  # noqa: E402

MB = 1024 * 1024
# eps 1e-4 rather than torch's 1e-8: Adam's first update is lr * g / (|g| + eps), whose sensitivity to the
# gradient, lr * eps / (|g| + eps)^2, peaks at lr / eps where |g| is near 0. Float32 gradients carry
# absolute rounding errors up to ~2e-7 here (eager's own, against a float64 step, as large as ember's), so
# the one-step comparison is only conditioned when lr / eps * 2e-7 is well inside ATOL: with eps 1e-4 the
# bound is 2e-6 (20% of ATOL) wherever g lands. With 1e-6 an element with |g| ~ 1e-6 (resnet, seed
# 1216225412: eager -8.47e-7, ember -7.28e-7, float64 -7.99e-7) turned that noise into 3.7e-5.
ADAMW = dict(lr=1e-3, weight_decay=1e-2, eps=1e-4)
RTOL, ATOL = 1e-4, 1e-5

# MLP: (batch, features, hidden, classes); transformer: (batch, seq, dim, heads, classes);
SIZES = {  # gpt: (batch, seq, vocab, dim, heads, layers); resnet: (batch, channels, image size, classes)
    "tiny": {"mlp": (16, 12, 24, 5), "transformer": (2, 4, 16, 2, 5), "gpt": (2, 8, 16, 16, 2, 1),
             "resnet": (2, 4, 8, 5)},
    "small": {"mlp": (128, 256, 512, 10), "transformer": (8, 32, 64, 4, 10), "gpt": (8, 32, 64, 48, 4, 2),
              "resnet": (8, 16, 16, 10)},
    "large": {"mlp": (1024, 1024, 4096, 1000), "transformer": (16, 256, 512, 8, 100),
              "gpt": (16, 256, 256, 512, 8, 4), "resnet": (64, 64, 32, 100)},
}


class MLP(nn.Module):
    """features -> hidden -> hidden -> classes, GELU between."""

    def __init__(self, features: int, hidden: int, classes: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(features, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                                 nn.Linear(hidden, classes))

    def forward(self, x):
        return self.net(x)


class TransformerClassifier(nn.Module):
    """A pre-norm transformer block (attention + GELU MLP) over a sequence, mean-pooled into a linear
    head. The qkv projection has no bias: a key bias shifts every score of a row equally, so softmax
    makes its gradient exactly zero, and Adam turns the rounding noise of a zero gradient into
    updates of about lr/10 that no float32 tolerance can compare (tests/test_train.py uses SGD there
    for this reason)."""

    def __init__(self, dim: int, heads: int, classes: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim, bias=False), nn.Linear(dim, dim)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = torch.softmax(q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5, dim=-1) @ v
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        x = x + self.down(F.gelu(self.up(self.ln2(x))))
        return self.head(x.mean(1))


class WithLoss(nn.Module):
    """`F.cross_entropy(model(x), y)` as one module, so `ember.compile` captures the loss too."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, y):
        return F.cross_entropy(self.model(x), y)


def build_mlp(size: str, device: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    batch, features, hidden, classes = SIZES[size]["mlp"]
    model = MLP(features, hidden, classes).to(device)
    return model, torch.randn(batch, features, device=device), torch.randint(0, classes, (batch,), device=device)


def build_transformer(size: str, device: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    batch, seq, dim, heads, classes = SIZES[size]["transformer"]
    model = TransformerClassifier(dim, heads, classes).to(device)
    x = torch.randn(batch, seq, dim, device=device)
    return model, x, torch.randint(0, classes, (batch,), device=device)


class GPT(nn.Module):
    """examples/train_lm.py's character-level GPT (embedding, learned positions, causal attention, a
    tied head), its logits as (batch, vocab, seq): the layout F.cross_entropy takes with (batch, seq)
    targets."""

    def __init__(self, vocab: int, context: int, dim: int, heads: int, layers: int):
        super().__init__()
        from train_lm import CharGPT  # examples/ is on sys.path (top of this file)

        self.lm = CharGPT(vocab, context, dim, heads, layers)

    def forward(self, idx):
        return self.lm(idx).transpose(1, 2)


class ResNet(nn.Module):
    """A ResNet-style CNN: conv-BN-ReLU stem, one residual block, max pooling, global average pooling
    and a linear head (batch norm in train mode: the step updates its running statistics)."""

    def __init__(self, channels: int, classes: int):
        super().__init__()
        c = channels
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                   nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.pool, self.head = nn.MaxPool2d(2), nn.Linear(c, classes)

    def forward(self, x):
        x = self.stem(x)
        x = self.pool(F.relu(x + self.block(x)))
        return self.head(F.adaptive_avg_pool2d(x, 1).flatten(1))


def build_gpt(size: str, device: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    batch, seq, vocab, dim, heads, layers = SIZES[size]["gpt"]
    model = GPT(vocab, seq, dim, heads, layers).to(device)
    tokens = torch.randint(0, vocab, (batch, seq + 1), device=device)
    return model, tokens[:, :-1], tokens[:, 1:]


def build_resnet(size: str, device: torch.device) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    batch, channels, image, classes = SIZES[size]["resnet"]
    model = ResNet(channels, classes).to(device)
    x = torch.randn(batch, 3, image, image, device=device)
    return model, x, torch.randint(0, classes, (batch,), device=device)


MODELS: dict[str, Callable] = {"mlp": build_mlp, "transformer": build_transformer, "gpt": build_gpt,
                               "resnet": build_resnet}


# -- measuring ----------------------------------------------------------------------------------------


class CountOps(TorchDispatchMode):
    """Non-view aten ops dispatched (forward, backward, optimizer), with the bytes each reads and
    writes, by `ember.explain`'s rules; `copies` and `copy_bytes` for `Tensor.copy_`. Ops that
    Triton's interpreter dispatches while it runs an ember kernel (copies of the kernel's arguments)
    are not the program's and are not counted: on a GPU they do not exist."""

    def __init__(self):
        super().__init__()
        self.ops: Counter = Counter()
        self.bytes = 0
        self.zero_dim = 0  # ops whose every tensor is 0-dim: the loss-gradient seed, AdamW's step counters
        self.copies = self.copy_bytes = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func._schema.name.split("::")[-1]
        if not (func.is_view or name in _METADATA_OPS or func.namespace != "aten" or kernel_module._interpreting):
            self.ops[str(func)] += 1
            ins = [t for t in pytree.tree_leaves((args, kwargs or {})) if isinstance(t, torch.Tensor)]
            outs = [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]
            self.bytes += sum(_read_bytes(t) for t in ins) + sum(t.nbytes for t in outs)
            self.zero_dim += all(t.dim() == 0 for t in ins + outs)
            if name == "copy_":
                self.copies += 1
                self.copy_bytes += 2 * args[0].nbytes
        return out

    @property
    def kernels(self) -> int:
        return sum(self.ops.values())


def eager_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    opt.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    return loss.detach()


def saved_by_eager(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, int, int]:
    """Eager forward + loss under saved_tensors_hooks: (loss, saved bytes, saved activation bytes).
    Distinct saved tensors are keyed as tests/test_autodiff.py keys them."""
    seen: dict[tuple, tuple[int, bool]] = {}
    inputs = {t.untyped_storage().data_ptr() for t in [x, y, *model.parameters(), *model.buffers()]}

    def pack(t):
        ptr = t.untyped_storage().data_ptr()
        seen[(ptr, t.storage_offset(), tuple(t.shape), t.stride())] = (t.nbytes, ptr not in inputs)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    return loss, sum(n for n, _ in seen.values()), sum(n for n, act in seen.values() if act)


def graph_bytes(graph) -> int:
    """Bytes read + written at the boundaries of the kernels (and torch fallbacks) fusion forms."""
    return sum(group_cost(g).bytes_moved for g in partition(graph) if is_kernel(g) or g.kind == "extern")


def _max_diff(model: nn.Module, ref: nn.Module) -> tuple[bool, float, float]:
    """(all parameters close, max abs difference, max difference as a fraction of the tolerance)."""
    err, frac = 0.0, 0.0
    for p, q in zip(model.parameters(), ref.parameters()):
        d = (p.detach() - q.detach()).abs()
        err = max(err, d.max().item())
        frac = max(frac, (d / (ATOL + RTOL * q.detach().abs())).max().item())
    return frac <= 1.0, err, frac


def _bench_ms(fn: Callable[[], Any]) -> float:
    import triton.testing

    return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))


def measure(name: str, size: str = "small", device: str | torch.device = "cpu", timing: bool = False,
            seed: int = 0) -> dict[str, Any]:
    """One model: kernels, bytes, saved bytes and the parameter check of each path (and times)."""
    device = torch.device(device)
    torch.manual_seed(seed)
    model0, x, y = MODELS[name](size, device)
    t0 = time.perf_counter()
    row: dict[str, Any] = {"model": name, "size": size, "params": sum(p.numel() for p in model0.parameters()),
                           "inputs": [list(x.shape), list(y.shape)], "errors": {}}
    row["param_tensors"] = sum(1 for p in model0.parameters() if p.requires_grad)

    # torch eager: the reference step (saved bytes measured during its forward), then a counted step
    ref = copy.deepcopy(model0)
    ref_opt = torch.optim.AdamW(ref.parameters(), **ADAMW, foreach=False)
    ref_opt.zero_grad(set_to_none=True)
    ref_loss, saved, saved_act = saved_by_eager(ref, x, y)
    ref_loss.backward()
    ref_opt.step()
    counted = copy.deepcopy(model0)
    opt = torch.optim.AdamW(counted.parameters(), **ADAMW, foreach=False)
    eager_step(counted, opt, x, y)  # step 1 creates the optimizer state
    counter = CountOps()
    with counter:
        eager_step(counted, opt, x, y)
    row["torch_eager"] = {"kernels": counter.kernels, "zero_dim_ops": counter.zero_dim, "bytes": counter.bytes,
                          "saved_bytes": saved,
                          "saved_activation_bytes": saved_act, "ops": dict(counter.ops)}
    foreach = copy.deepcopy(model0)  # the same step with foreach AdamW: one op per foreach op, all tensors
    opt = torch.optim.AdamW(foreach.parameters(), **ADAMW, foreach=True)
    eager_step(foreach, opt, x, y)
    counter = CountOps()
    with counter:
        eager_step(foreach, opt, x, y)
    row["torch_eager_foreach"] = {"kernels": counter.kernels, "zero_dim_ops": counter.zero_dim,
                                  "bytes": counter.bytes, "saved_bytes": saved, "saved_activation_bytes": saved_act,
                                  "ops": dict(counter.ops)}

    # ember static: ember.compile(model + loss), loss.backward(), ember.optim.AdamW
    try:
        model = copy.deepcopy(model0)
        eopt = ember.optim.AdamW(model.parameters(), **ADAMW)
        compiled = ember.compile(WithLoss(model))
        loss = compiled(x, y)
        loss.backward()
        eopt.step()
        eopt.zero_grad(set_to_none=True)
        (sg,) = compiled.graphs
        (ag,) = sg._autograd.values()
        programs = eopt.engine.programs()
        ok, err, frac = _max_diff(model, ref)
        outside, in_opt = CountOps(), CountOps()  # a second step, counted: what runs outside ember's kernels
        with outside:
            compiled(x, y).backward()
        with in_opt:
            eopt.step()
        eopt.zero_grad(set_to_none=True)
        row["ember_static"] = {
            "kernels": ag.forward.num_kernels + ag.backward.num_kernels + eopt.num_kernels,
            "forward_kernels": ag.forward.num_kernels, "backward_kernels": ag.backward.num_kernels,
            "optimizer_kernels": eopt.num_kernels, "optimizer_in_place": eopt.in_place,
            "bytes": graph_bytes(ag.forward.graph) + graph_bytes(ag.backward.graph)
            + sum(graph_bytes(p.graph) for p in programs),
            # the loss-gradient seed loss.backward() fills, AdamW's per-parameter step counters and any
            # Tensor.copy_ (autograd's, of a gradient into .grad's layout; the optimizer's)
            "copies": outside.copies + in_opt.copies, "optimizer_copies": in_opt.copies,
            "torch_ops": outside.kernels + in_opt.kernels, "copy_bytes": outside.copy_bytes + in_opt.copy_bytes,
            "saved_bytes": ag.saved_bytes, "saved_activation_bytes": ag.partition.saved_activation_bytes,
            "loss_close": bool(torch.allclose(loss.detach(), ref_loss.detach(), rtol=RTOL, atol=ATOL)),
            "params_close": ok, "max_abs_diff": err, "tolerance_used": frac,
        }
    except Exception as e:  # noqa: BLE001  (one broken path must not hide the others)
        row["errors"]["ember_static"] = f"{type(e).__name__}: {e}".splitlines()[0][:200]

    # ember step: ember.compile_step(model, F.cross_entropy, ember.optim.AdamW)
    try:
        model = copy.deepcopy(model0)
        sopt = ember.optim.AdamW(model.parameters(), **ADAMW)
        step = ember.compile_step(model, F.cross_entropy, sopt)
        loss = step(x, y)
        ok, err, frac = _max_diff(model, ref)
        outside = CountOps()  # a second step, counted
        with outside:
            step(x, y)
        temps = plan_memory(step.last.compiled.plan)  # the step's temporaries (runtime/memory.py)
        row["ember_step"] = {
            "kernels": step.num_kernels, "bytes": graph_bytes(step.graph),
            "temporaries_slab_bytes": temps.slab_bytes, "temporaries_separate_bytes": temps.separate_bytes,
            "copies": outside.copies, "copy_bytes": outside.copy_bytes, "torch_ops": outside.kernels,
            "saved_bytes": None, "saved_activation_bytes": None,
            "loss_close": bool(torch.allclose(loss, ref_loss.detach(), rtol=RTOL, atol=ATOL)),
            "params_close": ok, "max_abs_diff": err, "tolerance_used": frac,
        }
    except Exception as e:  # noqa: BLE001
        row["errors"]["ember_step"] = f"{type(e).__name__}: {e}".splitlines()[0][:200]

    row["check"] = all(row.get(k, {}).get("params_close") and row[k]["loss_close"]
                       for k in ("ember_static", "ember_step"))
    row["seconds"] = round(time.perf_counter() - t0, 1)
    row["ms"] = time_steps(model0, x, y) if timing else None
    return row


def time_steps(model0: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, float | None]:
    """Median ms per training step (CUDA): eager, torch.compile, ember static, ember step."""
    ms: dict[str, float | None] = {}

    def attempt(key: str, make: Callable[[], Callable[[], Any]]) -> None:
        try:
            fn = make()
            fn()
            ms[key] = _bench_ms(fn)
        except Exception as e:  # noqa: BLE001
            ms[key] = None
            print(f"  timing {key} failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}", file=sys.stderr)
        finally:
            torch.cuda.empty_cache()

    def eager():
        m = copy.deepcopy(model0)
        o = torch.optim.AdamW(m.parameters(), **ADAMW)
        return lambda: eager_step(m, o, x, y)

    def torch_compile():
        m = copy.deepcopy(model0)
        o = torch.optim.AdamW(m.parameters(), **ADAMW)
        loss_fn = torch.compile(WithLoss(m))
        opt_step = torch.compile(o.step)

        def fn():
            o.zero_grad(set_to_none=True)
            loss_fn(x, y).backward()
            opt_step()
        return fn

    def ember_static():
        m = copy.deepcopy(model0)
        o = ember.optim.AdamW(m.parameters(), **ADAMW)
        loss_fn = ember.compile(WithLoss(m))

        def fn():
            o.zero_grad(set_to_none=True)
            loss_fn(x, y).backward()
            o.step()
        return fn

    def ember_step():
        m = copy.deepcopy(model0)
        step = ember.compile_step(m, F.cross_entropy, ember.optim.AdamW(m.parameters(), **ADAMW))
        return lambda: step(x, y)

    for key, make in (("torch_eager", eager), ("torch_compile", torch_compile), ("ember_static", ember_static),
                      ("ember_step", ember_step)):
        attempt(key, make)
    return ms


def run(size: str = "small", device: str | torch.device | None = None, timing: bool | None = None,
        seed: int = 0, models: list[str] | None = None) -> dict[str, Any]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    timing = device.type == "cuda" if timing is None else timing
    import triton

    result: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "size": size,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}), Triton interpreter",
        "machine": f"{platform.system()} {platform.machine()}, {os.cpu_count()} cpus, "
                   f"python {platform.python_version()}",
        "torch": torch.__version__, "triton": triton.__version__, "timed": timing, "optimizer": dict(ADAMW),
        "sizes": SIZES[size], "rows": [],
    }
    for name in models or MODELS:
        result["rows"].append(measure(name, size, device, timing, seed))
        print(f"  {name}: {'ok' if result['rows'][-1]['check'] else 'CHECK FAILED'}", file=sys.stderr, flush=True)
    return result


# -- reporting ----------------------------------------------------------------------------------------


def _b(n: int | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / MB:.2f} MB" if n >= MB else f"{n / 1024:.1f} KB"


PATHS = (("torch_eager", "torch eager"), ("torch_eager_foreach", "eager foreach"), ("ember_static", "ember static"),
         ("ember_step", "ember step"))


def _ratios(r: dict[str, Any], key: str) -> str:
    """`key`'s kernels per step over eager's (foreach=False) and over eager foreach's."""
    if r.get(key) is None:
        return "n/a"
    ours = r[key]["kernels"]
    return " / ".join(f"{ours / r[e]['kernels']:.2f}x" if r.get(e) else "n/a"
                      for e in ("torch_eager", "torch_eager_foreach"))


def format_table(result: dict[str, Any]) -> str:
    timed = result["timed"]
    head = ["model", "path", "kernels", "+torch", "(copies)", "bytes", "+copy bytes", "saved", "saved act",
            "check"]
    if timed:
        head.append("ms/step")
    lines: list[list[str]] = []
    for r in result["rows"]:
        for key, label in PATHS:
            d = r.get(key)
            if d is None:
                cells = [r["model"], label] + ["n/a"] * 7 + ["error: " + r["errors"].get(key, "not run")]
            else:
                if key.startswith("torch_eager"):
                    check = "reference"
                elif d["params_close"] and d["loss_close"]:
                    check = f"ok ({d['max_abs_diff']:.0e})"
                else:
                    check = f"MISMATCH {d['max_abs_diff']:.1e}" + ("" if d["loss_close"] else " (loss)")
                extra = [f"({d['zero_dim_ops']} 0-d)", "", ""] if key.startswith("torch_eager") else \
                    [str(d["torch_ops"]), f"({d['copies']})", _b(d["copy_bytes"])]
                cells = [r["model"], label, str(d["kernels"]), extra[0], extra[1], _b(d["bytes"]), extra[2],
                         _b(d["saved_bytes"]), _b(d["saved_activation_bytes"]), check]
            if timed:
                ms = (r.get("ms") or {}).get(key)
                cells.append("n/a" if ms is None else f"{ms:.3f}")
            lines.append(cells)
        if timed:
            ms = (r.get("ms") or {}).get("torch_compile")
            lines.append([r["model"], "torch.compile"] + ["n/a"] * 7 + ["",
                          "n/a" if ms is None else f"{ms:.3f}"])
    widths = [max(len(c[i]) for c in [head] + lines) for i in range(len(head))]
    text = ["  ".join(c.ljust(w) if i < 2 or i == 9 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
            .rstrip() for cells in [head] + lines]
    sizes = "; ".join(f"{k} {v}" for k, v in result["sizes"].items())
    text += ["", "kernels per step against eager's: " + "; ".join(
        f"{r['model']}: static {_ratios(r, 'ember_static')}, step {_ratios(r, 'ember_step')}" for r in result["rows"])]
    temps = [(r["model"], r["ember_step"]) for r in result["rows"] if r.get("ember_step")]
    text += ["temporaries of the ember step (shared by lifetime, runtime/memory.py; one by one): " + "; ".join(
        f"{m}: {_b(d['temporaries_slab_bytes'])} ({_b(d['temporaries_separate_bytes'])})" for m, d in temps)]
    text += ["", f"{result['date']}  {result['device']}  {result['machine']}  torch {result['torch']}  "
                 f"triton {result['triton']}",
             f"size={result['size']} (mlp: batch, features, hidden, classes; transformer: batch, seq, dim, heads, "
             f"classes): {sizes}; AdamW {result['optimizer']}",
             "kernels per training step (forward, loss, backward, AdamW update): torch eager = non-view aten ops "
             "(foreach=False AdamW, steady state); eager foreach = the same with foreach=True AdamW (one op per "
             "_foreach_* call); ratios above: ember / eager, ember / eager foreach; "
             "ember static = forward + backward graphs + ember.optim step; "
             "ember step = compile_step graph.",
             "+torch = torch ops an ember path runs per step outside its kernels, counted on a second step (copies: "
             "Tensor.copy_: new values into the caller's tensors, autograd's gradient layout; plus AdamW's "
             "0-dim step counters and, for loss.backward(), the loss-gradient seed); torch eager's kernels include "
             "such 0-dim ops (0-d).",
             "bytes at kernel boundaries (ember: passes.cost over each graph's partition; eager: each op's inputs + "
             "outputs); +copy bytes = read + write of the copies; saved = kept for backward (act: activations only).",
             "check = every parameter after one step vs torch eager (rtol 1e-4, atol 1e-5; max abs diff)."]
    text.append("ms/step = median of triton.testing.do_bench; torch eager uses torch.optim's default AdamW."
                if timed else "times not measured (no CUDA)")
    return "\n".join(text)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=list(SIZES), default=None, help="default: large on CUDA, small on CPU")
    ap.add_argument("--json", help="write the results to this JSON file")
    ap.add_argument("--no-timing", action="store_true", help="skip timing even on CUDA")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), help="default: all")
    a = ap.parse_args(argv)
    cuda = torch.cuda.is_available()
    torch.set_num_threads(1)
    result = run(a.size or ("large" if cuda else "small"), timing=cuda and not a.no_timing, models=a.models)
    print(format_table(result))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
