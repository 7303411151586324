"""Native convolution kernels (ir/ops/conv.py, codegen/conv.py, frontend/lower_conv.py): conv2d
forward, input gradient and weight gradient as implicit GEMMs, against eager PyTorch on fresh random
inputs, across stride / padding / dilation / groups (depthwise included), bias, NCHW and
channels_last, float32 and float16; the pointwise epilogue fused into the conv kernel; both loop
variants of the emitter (the interpreter's flattened K and the GPU's loop over taps)."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from testing import TOLERANCES, cudnn_tf32

import ember
from ember.codegen import conv as conv_codegen
from ember.codegen import kernel as kernel_module

F32, F16 = torch.float32, torch.float16

# (N, C, H, W), (Co, C/groups, KH, KW), stride, padding, dilation, groups
CONFIGS = {
    "plain": ((2, 3, 7, 6), (4, 3, 3, 3), 1, 1, 1, 1),
    "strided": ((2, 4, 9, 8), (6, 4, 3, 2), (2, 3), (1, 0), 1, 1),
    "dilated": ((1, 3, 9, 9), (5, 3, 3, 3), 1, 2, (2, 1), 1),
    "grouped": ((2, 6, 7, 7), (4, 3, 3, 3), 2, 1, 1, 2),
    "depthwise": ((2, 8, 6, 7), (8, 1, 3, 3), 1, 1, 1, 8),
    "depthwise_x2": ((1, 4, 8, 8), (8, 1, 5, 5), 2, 2, 1, 4),
    "pointwise_1x1": ((2, 16, 5, 5), (24, 16, 1, 1), 1, 0, 1, 1),
    "depthwise_small": ((1, 2, 5, 5), (4, 1, 3, 3), 2, 1, 1, 2),  # channel multiplier 2, strided
    "many_channels": ((1, 20, 5, 6), (18, 20, 3, 3), 1, 1, 1, 1),  # > 16 channels per tap: the tap loop
}


def _inputs(name, dtype=F32, channels_last=False, bias=True):
    xs, ws, stride, padding, dilation, groups = CONFIGS[name]
    x = torch.randn(xs, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    w = torch.randn(ws, dtype=dtype) / (ws[1] * ws[2] * ws[3]) ** 0.5
    if channels_last:  # (as `model.to(memory_format=torch.channels_last)` leaves the weights)
        w = w.to(memory_format=torch.channels_last)
    b = torch.randn(ws[0], dtype=dtype) if bias else None
    conv = lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups)
    return conv, x, w, b


class Launches:
    """The generated kernels launched while it is active: (kind, ops) each."""

    def __init__(self, monkeypatch):
        self.log = []
        launch = kernel_module._interpret  # the final call of every interpreted launch

        def logged(launcher, args):
            self.log.append((launcher.kernel.kind, tuple(launcher.kernel.ops)))
            return launch(launcher, args)

        monkeypatch.setattr(kernel_module, "_interpret", logged)

    def take(self) -> list:
        out, self.log = self.log, []
        return out


def _check_grads(conv, x, w, b, dtype=F32):
    """Values and gradients vs eager. float16 is compared with eager in float64 rounded to float16:
    torch's CPU float16 convolutions round partial sums (about 1% off the float64 result on a
    3x3x4 kernel, measured), while ember accumulates in float32 as a GPU does."""
    ref = torch.float64 if dtype == F16 else None
    leaves_e = [t.detach().to(ref or t.dtype).requires_grad_() for t in (x, w, b) if t is not None]
    leaves_c = [t.detach().clone().requires_grad_() for t in (x, w, b) if t is not None]
    fn = lambda *a: conv(*a) if len(a) == 3 else conv(*a, None)
    want = fn(*leaves_e)
    got = ember.compile(fn)(*leaves_c)
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(got.detach(), want.detach().to(dtype), rtol=rtol, atol=atol)
    ct = torch.randn(want.shape, dtype=dtype)
    want.backward(ct.to(want.dtype))
    got.backward(ct)
    for name, c, e in zip("xwb", leaves_c, leaves_e):
        torch.testing.assert_close(c.grad, e.grad.to(dtype), rtol=rtol, atol=atol,
                                   msg=lambda m, n=name: f"d{n}: {m}")


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_and_gradients_match_torch(name, monkeypatch):
    launches = Launches(monkeypatch)
    conv, x, w, b = _inputs(name)
    _check_grads(conv, x, w, b)
    kinds = [ops[0] for kind, ops in launches.take() if kind == "conv"]
    assert sorted(kinds) == ["conv2d", "conv2d_input_grad", "conv2d_weight_grad"], kinds  # no torch conv


@pytest.mark.parametrize("name", ["strided", "grouped", "depthwise"])
def test_channels_last_input_reads_through_strides(name, monkeypatch):
    launches = Launches(monkeypatch)
    conv, x, w, b = _inputs(name, channels_last=True)
    assert not x.is_contiguous() and (w.shape[1] == 1 or not w.is_contiguous())
    _check_grads(conv, x, w, b)
    assert all(kind != "pointwise" or set(ops) - {"copy"} for kind, ops in launches.take()), "an input was copied"


@pytest.mark.parametrize("name", ["plain", "grouped", "depthwise", "many_channels"])
def test_float16_accumulates_in_float32(name):
    conv, x, w, b = _inputs(name, dtype=F16)
    _check_grads(conv, x, w, b, dtype=F16)


@pytest.mark.parametrize("flat", [False, True])
@pytest.mark.parametrize("name", ["strided", "dilated", "depthwise_small", "grouped"])
def test_both_loop_variants(name, flat, monkeypatch):
    """The interpreter picks one variant per conv (`use_flat`); the other (the GPU's loop over taps,
    or the flattened K) must compute the same."""
    monkeypatch.setattr(conv_codegen, "use_flat", lambda node, target: flat)
    conv, x, w, b = _inputs(name)
    _check_grads(conv, x, w, b)


def test_conv1d_is_a_conv2d_with_height_one(monkeypatch):
    launches = Launches(monkeypatch)
    x, w, b = torch.randn(2, 4, 11), torch.randn(6, 2, 3), torch.randn(6)
    conv = lambda x, w, b: F.conv1d(x, w, b, stride=2, padding=1, dilation=2, groups=2)
    _check_grads(conv, x, w, b)
    assert sum(kind == "conv" for kind, _ in launches.take()) == 3


def test_bias_relu_residual_is_one_kernel(monkeypatch):
    """Forward: the conv and its epilogue (bias, residual add, relu) are one kernel. Backward: the
    relu's mask and the bias gradient are one row kernel (the mask is the cotangent both convs
    read, so it cannot be their prologue), then the input and weight gradients: 3 kernels."""
    launches = Launches(monkeypatch)
    conv, x, w, b = _inputs("plain")
    r = torch.randn(conv(x, w, b).shape)
    fn = lambda x, w, b, r: torch.relu(conv(x, w, b) + r)
    leaves = [t.clone().requires_grad_() for t in (x, w, b, r)]
    out = ember.compile(fn)(*leaves)
    # one launch; it also stores the relu's mask (`gt`), which the backward reads
    assert launches.take() == [("conv", ("conv2d", "add", "add", "relu", "gt"))]
    torch.testing.assert_close(out, fn(x, w, b, r))
    out.sum().backward()
    kinds = sorted(kind for kind, _ in launches.take())
    assert kinds == ["conv", "conv", "row"], kinds
    want = [t.clone().requires_grad_() for t in (x, w, b, r)]
    fn(*want).sum().backward()
    for got, exp in zip(leaves, want):
        torch.testing.assert_close(got.grad, exp.grad)


def test_batch_norm_in_eval_is_the_conv_epilogue(monkeypatch):
    """Eval batch norm is pointwise: (y - mean) * rsqrt(var + eps) * weight + bias. Its terms over the
    output shape join the conv kernel; the per-channel scale rsqrt(var + eps) * weight has the
    shape (C, 1, 1), not the conv's, so it is one tiny kernel of its own: 2 launches."""
    launches = Launches(monkeypatch)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()).eval()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.normal_()
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        got = ember.compile(model)(x)
    torch.testing.assert_close(got, model(x), rtol=TOLERANCES[F32][0], atol=TOLERANCES[F32][1])
    assert launches.take() == [("pointwise", ("add", "sqrt", "reciprocal")),
                               ("conv", ("conv2d", "add", "sub", "mul", "mul", "add", "relu"))]


@pytest.mark.parametrize("kind", ["transposed", "conv3d"])
def test_transposed_and_3d_stay_torch_calls_and_train(kind):
    """No kernels for these: they stay externs, differentiable through torch's own derivative."""
    if kind == "transposed":
        x, w = torch.randn(1, 3, 5, 5), torch.randn(3, 4, 3, 3)
        conv = lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1)
    else:
        x, w = torch.randn(1, 2, 4, 4, 4), torch.randn(3, 2, 3, 3, 3)
        conv = lambda x, w: F.conv3d(x, w, padding=1)
    assert [n.op for n in ember.trace(conv, x, w).captured_graph.nodes] == ["extern"]
    _check_grads(lambda x, w, b: conv(x, w), x, w, None)


def test_cuda_plan_follows_cudnn_tf32_flag_after_first_plan():
    """On CUDA a conv's fp32 precision follows torch.backends.cudnn.allow_tf32, read when the plan is
    built; the plan cache is keyed on it, so flipping the flag after a first call replans (the
    GPU's plan is built here on CPU, launching nothing)."""
    from ember.runtime import compile_ir

    x, w = torch.randn(1, 3, 6, 6), torch.randn(4, 3, 3, 3)
    graph = ember.trace(lambda x, w: F.conv2d(x, w, padding=1), x, w).lowered.graph
    exe = compile_ir(graph, torch.device("cpu"))
    precs = []
    for flag in (True, False, True):
        with cudnn_tf32(flag):
            plan = exe.plan_at(torch.device("cuda"), [tuple(x.stride()), tuple(w.stride())])
        precs.append({s.constexprs.get("PREC") for s in plan.steps if hasattr(s, "constexprs")} - {None})
    assert precs == [{"tf32"}, {"ieee"}, {"tf32"}]
