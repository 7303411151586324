"""Whole training steps: `ember.compile_step` (forward, loss, backward and the optimizer update in one
static graph) against the eager PyTorch loop, step by step; and the digits example's accuracy."""

import copy
import importlib.util
import pathlib

import pytest
import torch
import torch.nn.functional as F
from models import TransformerBlock
from testing import assert_step_trains_like
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


class Side(nn.Module):
    """`a` trained; `b` computed but reaching the loss only while `use_b`; `c` only through .detach()."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 3), nn.Linear(4, 3), nn.Linear(4, 3)
        self.use_b = False

    def forward(self, x):
        side = self.b(x)  # computed either way
        out = self.a(x) + self.c(x).detach()
        return out + side if self.use_b else out


SIDE_OPTIMIZERS = {  # weight decay and momentum: a skipped parameter would otherwise still move
    "sgd": (ember.optim.SGD, torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=0.1)),
    "adamw": (ember.optim.AdamW, torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1, eps=1e-3)),
}


def train_side(opt_name, uses_b, warm_up=False):
    """Side trained by compile_step and by the eager loop on the same fresh batches, one batch per entry
    of `uses_b` (the model's use_b during it), loss and parameters compared after every step. `warm_up`:
    one eager step with b reached first, its optimizer state loaded into ember's optimizer."""
    ember_cls, torch_cls, kwargs = SIDE_OPTIMIZERS[opt_name]
    ref = Side()
    ref_opt = torch_cls(ref.parameters(), **kwargs)
    if warm_up:
        ref.use_b = True
        F.cross_entropy(ref(torch.randn(5, 4)), torch.randint(0, 3, (5,))).backward()
        ref_opt.step()
    model = copy.deepcopy(ref)
    opt = ember_cls(model.parameters(), **kwargs)
    opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))
    before = {k: (v.clone(), copy.deepcopy(opt.state.get(v))) for k, v in model.named_parameters()}
    step = ember.compile_step(model, F.cross_entropy, opt)
    for use_b in uses_b:
        model.use_b = ref.use_b = use_b
        batch = (torch.randn(5, 4), torch.randint(0, 3, (5,)))
        assert_step_trains_like(step, model, ref, ref_opt, [batch], F.cross_entropy)
    # the optimizer states: for the same parameters as torch's, equal to them
    assert len(opt.state) == len(ref_opt.state)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert (p in opt.state) == (q in ref_opt.state), name
        for key, t in ref_opt.state.get(q, {}).items():
            torch.testing.assert_close(opt.state[p][key], t, msg=f"{name}: {key}")
    return model, opt, step, before


@pytest.mark.parametrize("opt_name", sorted(SIDE_OPTIMIZERS))
def test_compile_step_skips_parameters_the_loss_does_not_reach_as_eager_does(opt_name):
    # eager leaves b's and c's .grad None and torch's optimizers skip them: no weight decay, no momentum,
    # no state. The step graph leaves them out of its gradients and its update (c still feeds the forward).
    model, opt, step, before = train_side(opt_name, [False] * 4)
    for name in ("b.weight", "b.bias", "c.weight", "c.bias"):
        p = dict(model.named_parameters())[name]
        assert torch.equal(p, before[name][0]) and p not in opt.state, name
    assert not torch.equal(model.a.weight, before["a.weight"][0])
    assert len(step.last.wrt) == 2 and len(step.last.skipped) == 4  # gradients of a.weight, a.bias only
    ref = Side()  # the parameters eager gives no gradient: the same four
    F.cross_entropy(ref(torch.randn(5, 4)), torch.randint(0, 3, (5,))).backward()
    assert [n for n, p in ref.named_parameters() if p.grad is None] == ["b.weight", "b.bias", "c.weight", "c.bias"]


@pytest.mark.parametrize("opt_name", sorted(SIDE_OPTIMIZERS))
def test_compile_step_leaves_the_earlier_state_of_an_unreached_parameter_alone(opt_name):
    # b has state (a momentum buffer; AdamW's moments and step 1) from an eager step that reached it, loaded
    # into ember's optimizer; while the loss does not reach b, torch skips it: its state and values stay
    # (train_side compares every state with torch's); once it does again (a retrace: use_b is a Python
    # value the trace read), it steps on from there.
    model, opt, step, before = train_side(opt_name, [False, False, True, False], warm_up=True)
    assert model.c.weight not in opt.state and len(step.recompile_reasons) == 2
    if opt_name == "adamw":
        assert float(opt.state[model.b.weight]["step"]) == 2 and float(opt.state[model.a.weight]["step"]) == 5


def test_a_parameter_reached_only_through_a_zero_gradient_is_updated_as_in_eager():
    # bernoulli's derivative is zero, but eager records it: q.grad is zeros (not None), so SGD applies weight
    # decay and momentum to q (the IR's `rand < p` goes through a bool: frontend/decompositions.py attaches q)
    class Sampled(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.q = nn.Linear(4, 3), nn.Parameter(torch.randn(3))

        def forward(self, x):
            return self.a(x) + 0 * torch.bernoulli(torch.sigmoid(self.q))  # (the draws differ: their value is not used)

    model = Sampled()
    ref, start = copy.deepcopy(model), model.q.detach().clone()
    ember_cls, torch_cls, kwargs = SIDE_OPTIMIZERS["sgd"]
    step = ember.compile_step(model, F.cross_entropy, ember_cls(model.parameters(), **kwargs))
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(3)]
    assert_step_trains_like(step, model, ref, torch_cls(ref.parameters(), **kwargs), batches, F.cross_entropy)
    assert not torch.equal(model.q, start)


def test_compile_step_refuses_a_loss_that_reaches_no_parameter():
    model = Side()
    step = ember.compile_step(model, F.cross_entropy, ember.optim.SGD(model.c.parameters(), lr=0.1))
    with pytest.raises(ValueError, match=r"none of the parameters to train \(c\.weight, c\.bias\)"):
        step(torch.randn(5, 4), torch.randint(0, 3, (5,)))


def test_a_saved_step_resumes_bit_exactly_with_unreached_parameters_left_alone(tmp_path):
    # the artifact records which parameters the step leaves alone; the loaded step updates the same ones
    model = Side()
    step = ember.compile_step(model, F.cross_entropy, ember.optim.AdamW(model.parameters(), lr=1e-2, eps=1e-3))
    batches = [(torch.randn(5, 4), torch.randint(0, 3, (5,))) for _ in range(4)]
    for batch in batches[:2]:
        step(*batch)
    ember.save(step, str(tmp_path / "step"), *batches[0])
    loaded = ember.load(str(tmp_path / "step"))
    untouched = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("a.")}
    want = torch.stack([step(*batch) for batch in batches[2:]])
    torch.testing.assert_close(torch.stack([loaded(*batch) for batch in batches[2:]]), want, rtol=0, atol=0)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v, rtol=0, atol=0, msg=k)
        if k in untouched:
            assert torch.equal(v, untouched[k]), k
    state = loaded.optimizer.state_dict()["state"]  # a.weight and a.bias only, 4 steps each
    assert len(state) == 2 and [s["step"].item() for s in state.values()] == [4.0, 4.0]
