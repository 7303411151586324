"""The model zoo (tests/zoo.py) trains in every ember mode as in eager PyTorch.

For each model and each mode (`ember.compile(model)` + backward, `ember.compile_step`,
`torch.compile(model, backend="ember")`, `with ember.eager():`) the model and an eager copy (deepcopy:
the same weights) take 3 AdamW steps on fresh random batches; every step compares the output, the
loss, every gradient (where the mode exposes them: compile_step keeps them inside its graph; its
gradients are checked by `test_compile_step_gradients`), every parameter after the update and the
buffers (batch-norm running statistics) against eager with torch.optim.AdamW. The LMs have one
block here; two-block variants run under `-m slow`.

The compile_step test also counts kernels per training step against eager's (`CountKernels`):
measured, ember's step is 0.22-0.37x eager's with torch.optim.AdamW's CPU default (one parameter at a
time) but 0.57-1.06x eager's with `foreach=True`, the GPU default (0.27-0.41x and 0.62-1.16x before
the weight updates shared one multi-tensor launch, passes/horizontal.py; the other updates are
epilogues of the kernels reducing their gradients): attention, layer norm and their
backwards are one aten op each in eager and several kernels in ember, the token embedding's backward
is a sort of the tokens (a torch call) and one scatter kernel, and the split of qkv's gradient is
assembled by `cat` kernels.

Tolerance: float32 chains of ops (testing.CHAIN_TOLERANCES: rtol 1e-4, atol 1e-5) for everything;
ember sums in another order than torch and rounds after every kernel, not every op.
"""

from __future__ import annotations

import contextlib
import copy
import functools
from collections import Counter

import pytest
import torch
from testing import CHAIN_TOLERANCES
from torch.utils._python_dispatch import TorchDispatchMode
from zoo import GPT, ZOO, Entry, Llama, lm_loss

import ember
from ember.api import dynamo

STEPS = 3
RTOL, ATOL = CHAIN_TOLERANCES[torch.float32]
# AdamW's hyperparameters keep the step well conditioned, so that float32 tolerance is the right test.
# Float32 gradients carry absolute rounding noise (measured, ember vs torch and torch vs float64 alike:
# ~1e-9 in the LMs' small gradients, up to 3e-7 in the convolution weights' under train-mode batch
# norm, sums whose largest terms are ~1), and Adam's update lr * m / (sqrt(v) + eps) moves by up to
# lr / eps times a change of a gradient near zero. lr=1e-2 with torch's default eps=1e-8 (a gain of 1e6)
# failed: a llama wq gradient of 3.29e-8 that ember computes as 3.25e-8 moved that parameter by 1.7e-5;
# eps=1e-5 (gain 1e3) still failed on a resnet conv weight (5e-5). lr / eps = 10 bounds the effect of
# 3e-7 of noise to 3e-6 per step. Gradients above eps take Adam steps and smaller ones (measured
# gradients span 1e-6..1e-1) near-SGD steps, so both regimes are compared; weight_decay=0.1 (GPT's) makes the decay
# term, lr * wd * p ~ 1e-4, visible at this tolerance.
ADAMW = dict(lr=1e-2, eps=1e-3, weight_decay=0.1)


def close(actual, expected, what: str) -> None:
    if not expected.is_floating_point():  # num_batches_tracked: an exact count
        assert torch.equal(actual, expected), f"{what}: {actual} != {expected}"
        return
    torch.testing.assert_close(actual.detach(), expected.detach(), rtol=RTOL, atol=ATOL, msg=lambda m: f"{what}: {m}")


def compare_state(model, ref, step: int) -> None:
    """Every parameter and buffer close to eager's after a step; then eager's are set to ember's, so
    the next step is compared from the same state. Training is chaotic in float32: ViT (seed
    1662774512) turned 7.5e-7 of parameter rounding after step 0 into 5e-5 in the class token's next
    gradient, while from the same parameters ember's gradient is as close to float64 as eager's."""
    for (name, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
        close(p, q, f"parameter {name} after step {step}")
    for (name, b), c in zip(model.named_buffers(), ref.buffers(), strict=True):
        close(b, c, f"buffer {name} after step {step}")
    with torch.no_grad():
        for p, q in zip([*model.parameters(), *model.buffers()], [*ref.parameters(), *ref.buffers()]):
            q.copy_(p)


def eager_step(ref, entry, x, y):
    out = ref(x)
    loss = entry.loss(out, y)
    loss.backward()
    return out, loss


# Eager mode compiles every op of a model on its own (many small kernels, slow with empty caches): gpt
# and resnet in the default run, all five models under -m slow.
_SLOW_EAGER = {"llama", "mobilenet", "vit"}


@pytest.mark.parametrize("name,mode", [
    pytest.param(n, m, marks=pytest.mark.slow) if m == "eager" and n in _SLOW_EAGER else (n, m)
    for n in sorted(ZOO) for m in ("compile", "dynamo", "eager")])
def test_trains_like_eager(name, mode):
    train_like_eager(ZOO[name], mode)


def train_like_eager(entry, mode: str) -> None:
    """Forward, backward (gradients in .grad) and an optimizer step, 3 times, against eager."""
    model = entry.make()
    ref = copy.deepcopy(model)
    context = contextlib.nullcontext
    if mode == "compile":
        run, opt = ember.compile(model), ember.optim.AdamW(model.parameters(), **ADAMW)
    elif mode == "dynamo":
        torch._dynamo.reset()  # compile for this model instance, not an earlier test's
        dynamo.reset_compiled_graphs()
        run, opt = torch.compile(model, backend="ember"), ember.optim.AdamW(model.parameters(), **ADAMW)
    else:  # torch's own optimizer: its update ops run on ember kernels too. strict: an op that ember
        # should run but fails to build or run raises instead of quietly falling back to torch
        run, opt, context = model, torch.optim.AdamW(model.parameters(), **ADAMW), lambda: ember.eager(strict=True)
        ember.reset_eager_stats()
    ref_opt = torch.optim.AdamW(ref.parameters(), **ADAMW)
    for step in range(STEPS):
        x, y = entry.batch()
        with context():
            out = run(x)
            loss = entry.loss(out, y)
            loss.backward()
        ref_out, ref_loss = eager_step(ref, entry, x, y)
        close(out, ref_out, f"output at step {step}")
        close(loss, ref_loss, f"loss at step {step}")
        for (pname, p), q in zip(model.named_parameters(), ref.parameters(), strict=True):
            close(p.grad, q.grad, f"gradient of {pname} at step {step}")
        with context():
            opt.step()
            opt.zero_grad()
        ref_opt.step()
        ref_opt.zero_grad()
        compare_state(model, ref, step)
    # ember ran the model, once compiled for all steps
    if mode == "compile":
        assert len(run.graphs) == 1, run.recompile_reasons
    elif mode == "dynamo":  # one subgraph (no graph break), compiled as IR (not run op by op)
        graphs = dynamo.compiled_graphs()
        assert [g.kind for g in graphs] == ["forward", "backward"] and all(g.graph is not None for g in graphs)
    else:
        stats = ember.eager_stats()
        assert stats.ops_ember > stats.ops_fallthrough, stats.summary()


def compile_step_like_eager(entry) -> tuple:
    """`compile_step` (forward, loss, backward, AdamW in one graph), 3 steps, against eager; returns
    the step, the eager model and the last batch."""
    model = entry.make()
    ref = copy.deepcopy(model)
    step_fn = ember.compile_step(model, entry.loss, ember.optim.AdamW(model.parameters(), **ADAMW))
    ref_opt = torch.optim.AdamW(ref.parameters(), **ADAMW)
    for step in range(STEPS):
        x, y = entry.batch()
        loss = step_fn(x, y)
        _, ref_loss = eager_step(ref, entry, x, y)
        ref_opt.step()
        ref_opt.zero_grad()
        close(loss, ref_loss, f"loss at step {step}")
        compare_state(model, ref, step)
    assert len(step_fn._programs) == 1 and not step_fn.recompile_reasons  # one graph for all steps
    return step_fn, ref, x, y


@pytest.mark.parametrize("name", sorted(ZOO))
def test_compile_step_trains_like_eager(name):
    entry = ZOO[name]
    step_fn, ref, x, y = compile_step_like_eager(entry)
    # The goal: kernels per training step <= 0.5x eager's. ember's count includes its extern
    # calls (each runs at least one torch kernel). Eager here is torch.optim.AdamW's default on the
    # CPU, one parameter at a time; `foreach` (the default on a GPU) updates all parameters in ~7
    # kernels, and against it the goal is not met yet (printed, not asserted: see the module docstring).
    ours = step_fn.num_kernels + len(step_fn.last.compiled.externs)
    single, foreach = (eager_kernels(entry, ref, x, y, foreach=f) for f in (False, True))
    print(f"{name}: {ours} kernels per step ({step_fn.num_kernels} + {ours - step_fn.num_kernels} externs); "
          f"eager {single} ({ours / single:.2f}x), eager foreach {foreach} ({ours / foreach:.2f}x)")
    assert ours <= 0.5 * single, (ours, single)


# Two blocks: the residual stream's gradient summed over blocks, each block's parameters distinct.
DEEPER = {"gpt2": Entry(functools.partial(GPT, layers=2), ZOO["gpt"].batch, lm_loss),
          "llama2": Entry(functools.partial(Llama, layers=2), ZOO["llama"].batch, lm_loss)}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["compile", "compile_step", "dynamo", "eager"])
@pytest.mark.parametrize("name", sorted(DEEPER))
def test_deeper_language_models_train_like_eager(name, mode):
    if mode == "compile_step":
        compile_step_like_eager(DEEPER[name])
    else:
        train_like_eager(DEEPER[name], mode)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_compile_step_gradients(name):
    """compile_step's gradients, which never leave its graph: after one plain SGD step with lr=1,
    old - new parameter is the gradient (the subtraction adds at most an ulp of the parameter:
    <= 5e-7 for the N(0, 1) embeddings, far less elsewhere; below the tolerance). AdamW alone would
    not show them: its first update is about lr * sign(g) and later ones are ratios of gradients,
    blind to a gradient off by a constant factor."""
    entry = ZOO[name]
    model = entry.make()
    ref = copy.deepcopy(model)
    before = [p.detach().clone() for p in model.parameters()]
    x, y = entry.batch()
    loss = ember.compile_step(model, entry.loss, ember.optim.SGD(model.parameters(), lr=1.0))(x, y)
    _, ref_loss = eager_step(ref, entry, x, y)
    close(loss, ref_loss, "loss")
    for (pname, p), old, q in zip(model.named_parameters(), before, ref.parameters(), strict=True):
        close(old - p, q.grad, f"gradient of {pname}")


# -- kernels per training step ------------------------------------------------------------------

class CountKernels(TorchDispatchMode):
    """Counts the aten ops eager PyTorch runs that would launch a device kernel: not views (they
    alias), not `.item()` reads (`_local_scalar_dense`: Adam's bias corrections read its step
    counter), not allocations (`empty`), not the updates of the optimizer's step counters (0-dim
    tensors that stay on the CPU when the parameters are on a GPU). One aten op counts as one kernel:
    a lower bound (a convolution's backward or attention's backward launch several on a GPU)."""

    def __init__(self, cpu_tensors: set[int]):
        super().__init__()
        self.cpu_tensors, self.ops = cpu_tensors, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        first = args[0] if args else None
        first = first[0] if isinstance(first, (list, tuple)) and first else first
        no_kernel = (func.is_view or func.namespace == "profiler" or id(first) in self.cpu_tensors
                     or func.__name__.split(".")[0] in ("_local_scalar_dense", "empty", "_unsafe_view", "lift_fresh"))
        if not no_kernel:
            self.ops[str(func)] += 1
        return func(*args, **(kwargs or {}))


def eager_kernels(entry, model, x, y, foreach: bool) -> int:
    """Kernels of one eager training step (forward, loss, backward, torch.optim.AdamW), counted on a
    second step (the first creates the optimizer's state)."""
    model = copy.deepcopy(model)
    opt = torch.optim.AdamW(model.parameters(), **ADAMW, foreach=foreach)

    def step():
        entry.loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()

    step()
    with CountKernels({id(s["step"]) for s in opt.state.values()}) as counter:
        step()
    return sum(counter.ops.values())
