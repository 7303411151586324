"""Checks that need a CUDA device, run by `python benchmarks/gpu_check.py` (`pytest -m gpu`).

They are deselected from the default CPU run by the `gpu` marker; on a machine without CUDA they fail
(never skip), so a GPU session cannot mistake "nothing ran" for "passed".

Covered on CUDA against eager CUDA PyTorch: fused patterns, small models trained by compile_step, eager
mode, every zoo model (tests/zoo.py: embeddings, scatter-add, conv forward / input-grad / weight-grad,
pooling, attention, norms) through `ember.compile` forward + backward + ember.optim.AdamW and through
`compile_step` + AdamW (the horizontal multi-tensor update), a long-row cumsum, a float16
channels_last conv with its gradients, out-of-range embedding indices (the error flag), and an AdamW
step whose hyperparameters reach the kernels as launch arguments (host scalars).
Kept small: most of the run is Triton compile time, one compile per distinct kernel.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from models import MLP, TransformerBlock
from test_index_checks import bad_token_step_changes_nothing
from test_scan import _check_values
from test_zoo import compile_step_like_eager, train_like_eager
from testing import CHAIN_TOLERANCES, cudnn_tf32
from zoo import ZOO, Entry

import ember

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def cuda():
    assert torch.cuda.is_available(), "the gpu tests need a CUDA device"
    return torch.device("cuda")


@pytest.mark.parametrize("name", ["softmax", "layernorm", "cross_entropy", "bias_gelu", "matmul_f16"])
def test_patterns_on_gpu(cuda, name):
    x = torch.randn(64, 1000, device=cuda)
    w, b = torch.randn(1000, device=cuda), torch.randn(1000, device=cuda)
    t = torch.randint(0, 1000, (64,), device=cuda)
    fns = {
        "softmax": (lambda x: x.softmax(-1), (x,)),
        "layernorm": (lambda x, w, b: F.layer_norm(x, (1000,), w, b), (x, w, b)),
        "cross_entropy": (lambda x, t: F.cross_entropy(x, t), (x, t)),
        "bias_gelu": (lambda x, b: F.gelu(x + b), (x, b)),
        "matmul_f16": (lambda a, c: a @ c, (x[:, :256].half(), torch.randn(256, 128, device=cuda).half())),
    }
    fn, args = fns[name]
    with torch.no_grad():
        sg = ember.trace(fn, *args)
        # the float16 matmul's tolerance (testing.TOLERANCES[float16]) for all five patterns; the float32
        # ones are not checked tighter here (tests/test_fusion.py does on CPU)
        torch.testing.assert_close(sg(*args), fn(*args), rtol=2e-3, atol=2e-3)
    # 64 rows x 1000 classes do not fit one program, so the loss's mean is a second kernel
    assert sg.num_kernels == (2 if name == "cross_entropy" else 1), [k.ops for k in sg.kernels]


def test_models_forward_backward_and_training_on_gpu(cuda):
    torch.manual_seed(0)
    cases = [(MLP(64, 256, 10), torch.randn(32, 64)), (TransformerBlock(64, 4, 4, classes=10), torch.randn(4, 16, 64))]
    for model, x in cases:
        model, x = model.to(cuda), x.to(cuda)
        y = torch.randint(0, 10, (x.shape[0],), device=cuda)
        ref = copy.deepcopy(model)
        opt = ember.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        ref_opt = torch.optim.SGD(ref.parameters(), lr=0.05, momentum=0.9)
        step = ember.compile_step(model, F.cross_entropy, opt)
        for _ in range(5):
            loss = step(x, y)
            ref_opt.zero_grad()
            ref_loss = F.cross_entropy(ref(x), y)
            ref_loss.backward()
            ref_opt.step()
            # TF32 matmuls on the GPU unless the precision is "highest": tolerances for that
            torch.testing.assert_close(loss, ref_loss.detach(), rtol=1e-2, atol=1e-3)


def test_eager_mode_on_gpu(cuda):
    model = MLP(16, 32, 4).to(cuda)
    x = torch.randn(8, 16, device=cuda)
    ember.reset_eager_stats()
    with ember.eager():
        out = model(x)
        out.sum().backward()
    torch.testing.assert_close(out, model(x))
    assert ember.eager_stats().launches > 0


@pytest.fixture
def ieee_fp32():
    """float32 matmuls and convolutions in full precision on both sides, so float32 tolerances are fair:
    ember's matmul uses TF32 unless torch.get_float32_matmul_precision() is "highest" (plan.py
    group_matmul) and its conv whenever torch.backends.cudnn.allow_tf32 (group_conv, cudnn's default:
    True), as eager does. Set before compiling: a plan keeps the conv precision it was built with."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    with cudnn_tf32(False):
        yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cuda.matmul.allow_tf32 = saved[1]


def _on(device: torch.device, entry: Entry) -> Entry:
    return Entry(lambda: entry.make().to(device), lambda: tuple(t.to(device) for t in entry.batch()), entry.loss)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_trains_like_eager_on_gpu(cuda, ieee_fp32, name):
    """tests/test_zoo.py's checks on CUDA: `ember.compile` forward + backward (output, loss, every
    gradient) + ember.optim.AdamW, and `compile_step` with AdamW, 3 steps each against eager CUDA with
    torch.optim.AdamW (every parameter and buffer after each step), float32 chain tolerances."""
    entry = _on(cuda, ZOO[name])
    train_like_eager(entry, "compile")
    compile_step_like_eager(entry)


def test_long_row_cumsum_on_gpu(cuda):
    """Rows longer than a row kernel's block (4096) are a scan kernel of their own, walking 1024-column
    chunks (the last one partial) with the carry between them; ember and eager both within rounding of
    the float64 scan (tests/test_scan.py's bound)."""
    x = torch.randn(3, 5000, device=cuda)
    fn = ember.compile(lambda x: x.cumsum(1))
    with torch.no_grad():
        got = fn(x)
    _check_values(got, x.cumsum(1), x, torch.cumsum, 1)
    assert fn.graphs[0].num_kernels == 1 and not fn.graphs[0].unsupported()


def test_float16_channels_last_conv_on_gpu(cuda):
    """conv2d + bias on a channels_last float16 input, forward and both gradients, against eager CUDA
    float16 (float32 accumulation on both sides; a conv is a sum of 144 / 128 products: chain tolerance)."""
    x = torch.randn(2, 16, 8, 8, device=cuda, dtype=torch.float16).to(memory_format=torch.channels_last)
    w = (torch.randn(24, 16, 3, 3, device=cuda) / 12).half().to(memory_format=torch.channels_last)
    b = torch.randn(24, device=cuda, dtype=torch.float16)
    conv = lambda x, w, b: F.conv2d(x, w, b, padding=1)
    leaves_e = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    leaves_c = [t.detach().clone().requires_grad_() for t in (x, w, b)]
    want, got = conv(*leaves_e), ember.compile(conv)(*leaves_c)
    rtol, atol = CHAIN_TOLERANCES[torch.float16]
    torch.testing.assert_close(got.detach(), want.detach(), rtol=rtol, atol=atol)
    ct = torch.randn_like(want)
    want.backward(ct)
    got.backward(ct)
    for name, c, e in zip("xwb", leaves_c, leaves_e):
        torch.testing.assert_close(c.grad, e.grad, rtol=rtol, atol=atol, msg=lambda m, n=name: f"d{n}: {m}")


# Last in the file: eager CUDA is never given a bad index (a device-side assert would poison the context
# for every later test); ember's gather masks the load and raises its error flag instead.
def test_out_of_range_embedding_index_raises_on_gpu(cuda):
    w = torch.randn(11, 8, device=cuda)
    idx = torch.randint(0, 11, (4, 5), device=cuda)
    emb = ember.compile(lambda w, i: F.embedding(i, w) * 2)
    with torch.no_grad():
        assert torch.equal(emb(w, idx), F.embedding(idx, w) * 2)
        for bad in (11, -1):
            idx[1, 2] = bad
            with pytest.raises(IndexError):
                emb(w, idx)

    # a training step: raises before any parameter or optimizer state is written (the executor reads the
    # flags before the first step that writes a donated buffer)
    bad_token_step_changes_nothing(cuda)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hyperparameters_reach_gpu_kernels_as_arguments(cuda, dtype):
    # runtime/plan.py `Host`: the step's `hp` stays a CPU tensor; its values are launch arguments (fp32
    # or fp64 parameters), so no step copies them to the device, and a learning rate changing every step
    # (bias corrections too) reaches the kernels the next launch
    params = [torch.nn.Parameter(torch.randn(s, device=cuda, dtype=dtype)) for s in [(64, 33), (33,), (5, 7)]]
    ref = copy.deepcopy(params)
    opt = ember.optim.AdamW(params, lr=1e-2, eps=1e-3, weight_decay=0.1)
    ref_opt = torch.optim.AdamW(ref, lr=1e-2, eps=1e-3, weight_decay=0.1, foreach=False)
    scheds = [torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5) for o in (opt, ref_opt)]
    for _ in range(3):
        for p, r in zip(params, ref):
            p.grad = torch.randn_like(p)
            r.grad = p.grad.clone()
        opt.step()
        ref_opt.step()
        for s in scheds:
            s.step()
        for p, r in zip(params, ref):
            torch.testing.assert_close(p.detach(), r.detach())
    (program,) = opt.engine.programs()
    assert program.hp.tensor.device.type == "cpu" and not program.compiled.plan.host_pointer
