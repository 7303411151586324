"""Checks that need a CUDA device, run by `python benchmarks/gpu_check.py` (`pytest -m gpu`).

They are deselected from the default CPU run by the `gpu` marker; on a machine without CUDA they fail
(never skip), so a GPU session cannot mistake "nothing ran" for "passed".
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from models import MLP, TransformerBlock

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
