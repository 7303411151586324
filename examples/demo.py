"""ember in one minute: compile a small model on CPU, print its IR and kernels, check it against eager.

Run:  python examples/demo.py
On CPU the generated Triton kernels run through Triton's interpreter; on a CUDA tensor they run on the GPU.
"""

import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import ember  # noqa: E402


class Block(nn.Module):
    """Linear -> GELU -> Linear with a residual, then LayerNorm: a transformer MLP block."""

    def __init__(self, dim: int = 32, hidden: int = 64):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x + self.fc2(torch.nn.functional.gelu(self.fc1(x))))


def main() -> None:
    torch.manual_seed(0)
    model = Block().eval()
    x = torch.randn(8, 32)
    start = time.perf_counter()
    with torch.no_grad():
        compiled = ember.trace(model, x)
        print(f"ember {ember.__version__}: IR after the pass pipeline\n{compiled}\n")
        print(f"{compiled.num_kernels} Triton kernels per call; torch fallbacks: {compiled.unsupported() or 'none'}")
        for k in compiled.kernels:
            print(f"  {k.name}: {' + '.join(k.ops)}")
        out = compiled(x)
        ref = model(x)
    err = (out - ref).abs().max().item()
    print(f"\nmax |ember - eager| = {err:.2e}  ({time.perf_counter() - start:.1f} s including compilation)")
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    print("OK: ember matches eager PyTorch")


if __name__ == "__main__":
    main()
