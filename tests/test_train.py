"""Whole training steps: `ember.compile_step` (forward, loss, backward and the optimizer update in one
static graph) against the eager PyTorch loop, step by step; and the digits example's accuracy."""

import copy
import importlib.util
import pathlib

import pytest
import torch
import torch.nn.functional as F
from models import TransformerBlock
from torch import nn

import ember
from ember.passes.autodiff import grad_graph
from ember.runtime.driver import compile_ir


def Block():
    return TransformerBlock(16, 2, 2, classes=5)


def mlp():
    return nn.Sequential(nn.Linear(12, 24), nn.GELU(), nn.Linear(24, 24), nn.ReLU(), nn.Linear(24, 5))


# eps well above float32 rounding of near-zero gradients: Adam's and RMSprop's g / (sqrt(v) + eps) would
# otherwise turn a 1e-9 difference in a vanishing gradient into a visible parameter difference.
OPTIMIZERS = {
    "sgd_momentum": (ember.optim.SGD, torch.optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "adamw": (ember.optim.AdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=1e-2, eps=1e-6)),
    "rmsprop": (ember.optim.RMSprop, torch.optim.RMSprop, dict(lr=1e-3, centered=True, momentum=0.5, eps=1e-5)),
}


# Steps compared one by one against the eager loop: every step after the second runs the same program
# (tests/test_optim.py follows the optimizers alone for 50 steps)
STEPS = 10


def run_both(make_model, opt_name, inputs, steps):
    torch.manual_seed(0)
    model = make_model()
    ref = copy.deepcopy(model)
    ember_cls, torch_cls, kwargs = OPTIMIZERS[opt_name]
    opt, ref_opt = ember_cls(model.parameters(), **kwargs), torch_cls(ref.parameters(), **kwargs)
    step = ember.compile_step(model, F.cross_entropy, opt)
    for i in range(steps):
        x, y = inputs(i)
        loss = step(x, y)
        ref_opt.zero_grad()
        ref_loss = F.cross_entropy(ref(x), y)
        ref_loss.backward()
        ref_opt.step()
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-4, atol=1e-5, msg=f"loss at step {i}")
        for (name, p), q in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5, msg=f"{name} after step {i}")
        for (name, b), c in zip(model.named_buffers(), ref.buffers()):  # batch-norm statistics
            torch.testing.assert_close(b, c, rtol=1e-4, atol=1e-6, msg=f"buffer {name} after step {i}")
    for (name, s), t in zip(opt.state_dict()["state"].items(), ref_opt.state_dict()["state"].values()):
        for key in t:
            torch.testing.assert_close(s[key], t[key], rtol=1e-4, atol=1e-5, msg=f"optimizer state {name}.{key}")
    return step


@pytest.mark.parametrize("opt_name", sorted(OPTIMIZERS))
def test_compile_step_matches_the_eager_loop_mlp(opt_name):
    data = [(torch.randn(16, 12), torch.randint(0, 5, (16,))) for _ in range(STEPS)]
    step = run_both(mlp, opt_name, lambda i: data[i], STEPS)
    # From the model's structure: for L linear layers, forward + backward is L matmuls (bias and
    # activation as epilogues), the loss (softmax, cross-entropy and its gradient: one row kernel),
    # L - 1 input-gradient and L weight-gradient matmuls (the activation's derivative as an epilogue)
    # and L bias-gradient sums over the batch, independent small row kernels sharing one multi-row launch
    # (passes/horizontal.py): 3L + 1. The optimizer adds one multi-tensor kernel that updates every
    # weight matrix (the biases' updates fuse into their sums).
    layers = sum(isinstance(m, nn.Linear) for m in step.loss_module.model.modules())
    assert grad_kernels(step) == 3 * layers + 1, [k.ops for k in step.last.compiled.kernels]
    assert step.num_kernels == expected_kernels(step) == 3 * layers + 2, [k.ops for k in step.last.compiled.kernels]


def grad_kernels(step) -> int:
    """Kernels of the step's forward + loss + backward alone (gradients as outputs, no update)."""
    program = step.last
    return compile_ir(grad_graph(program.static.graph, program.wrt, out_index=0)).num_kernels


def expected_kernels(step, layout_copies: int = 0) -> int:
    """Kernels per training step, computed: forward + backward as compiled alone, plus one kernel for
    all weight matrices (the update rules work on flattened parameters, a different iteration shape than
    the weight-gradient matmul's output, so the update cannot be its epilogue; the matrices' updates
    share one structure and one multi-tensor launch, passes/horizontal.py); vector parameters'
    updates fuse into the row kernels that sum their gradients over the batch (one multi-row launch in
    both graphs), adding none. A rise
    means the update stopped fusing; a drop (updates as matmul epilogues) means better fusion."""
    matrices = sum(p.dim() >= 2 for p in step.loss_module.model.parameters())
    return grad_kernels(step) + min(matrices, 1) + layout_copies


def test_compile_step_matches_the_eager_loop_transformer():
    # SGD, not Adam: the key bias's gradient is zero up to rounding (softmax ignores a per-row shift), and
    # Adam's g / (|g| + eps) turns rounding noise of 1e-9 into updates of lr/10: no tolerance would hold.
    data = [(torch.randn(4, 6, 16), torch.randint(0, 5, (4,))) for _ in range(STEPS)]
    step = run_both(Block, "sgd_momentum", lambda i: data[i], STEPS)
    # No layout copies: the qkv, up and down weight gradients are sums over the batch of per-batch
    # matmuls, computed transposed by a row kernel; it stores its rows through strides, laid out so
    # that the transpose the update reads is contiguous (it copied 3 tensors per step while row outputs
    # were stored contiguously).
    assert step.num_kernels == expected_kernels(step, layout_copies=0), [k.ops for k in step.last.compiled.kernels]


def test_compile_step_updates_batchnorm_statistics():
    def make():
        return nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))

    data = [(torch.randn(10, 6), torch.randint(0, 3, (10,))) for _ in range(5)]
    run_both(make, "sgd_momentum", lambda i: data[i], 5)  # compares running_mean/var each step


def test_compile_step_refuses_a_torch_optimizer():
    model = mlp()
    with pytest.raises(TypeError, match="ember.optim"):
        ember.compile_step(model, F.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.1))


def test_digits_example_reaches_95_percent():
    path = pathlib.Path(__file__).resolve().parents[1] / "examples" / "train_digits.py"
    spec = importlib.util.spec_from_file_location("train_digits", path)
    digits = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(digits)
    metrics = digits.train(epochs=8, quiet=True)  # the example's default is 12; 8 keeps CI short
    assert metrics["accuracy"] >= 0.95, digits.report(metrics)
    assert metrics["reloaded_accuracy"] == metrics["accuracy"]
    assert abs(metrics["reloaded_loss"] - metrics["loss"]) < 1e-6


def test_compile_step_refuses_parameters_the_loss_does_not_reach():
    # eager leaves such a parameter's .grad None and torch's SGD skips it; a compiled update applied weight
    # decay and momentum to a zero gradient instead (b moved 0.011 in two steps): now refused, by name
    class Side(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)

        def forward(self, x):
            self.b(x)  # computed, never reaches the loss
            return self.a(x) + self.c(x).detach()

    model = Side()
    before = copy.deepcopy(model.state_dict())
    step = ember.compile_step(model, F.cross_entropy, ember.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1))
    with pytest.raises(ValueError, match=r"b\.weight, b\.bias, c\.weight, c\.bias") as info:
        step(torch.randn(5, 4), torch.randint(0, 3, (5,)))
    assert "a.weight" not in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    ref = Side()  # the parameters eager gives no gradient: the same four
    F.cross_entropy(ref(torch.randn(5, 4)), torch.randint(0, 3, (5,))).backward()
    assert [n for n, p in ref.named_parameters() if p.grad is None] == ["b.weight", "b.bias", "c.weight", "c.bias"]
