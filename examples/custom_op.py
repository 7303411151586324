"""Custom ops: a Triton-language pointwise op with a straight-through gradient, a torch-body row op
(an RMS norm) and a Triton-language row op (a softmax with a temperature), all fused with their
neighbours into one row kernel. Run: python examples/custom_op.py

docs/custom_ops.md explains the flavors; tests/test_custom_op.py runs this file's `main`.
"""

from __future__ import annotations

import torch
import triton.language as tl

import ember


# A Triton body: elementwise `tl` arithmetic, the kernel text of the op. `reference` is the same
# function in torch (eager calls run it); `vjp(x, out, grad)` a straight-through estimator.
@ember.custom_op(reference=lambda x: torch.where(x >= 0, 1.0, -1.0).to(x.dtype),
                 vjp=lambda x, out, grad: torch.where(x.abs() <= 1, grad, 0.0))
def ste_sign(x):
    return tl.where(x >= 0, 1.0, -1.0)


# A torch body: ember lowers what it is made of (its gradient is derived from it). `eps`, a
# parameter with a default, is a static attribute (part of the op's identity, not a tensor).
@ember.custom_op
def rms_norm(x, eps=1e-6):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + eps)


# A Triton row body: `tl.max` / `tl.sum` along the last dim (axis=-1, keep_dims=True) become ember's
# own row reductions, the rest Triton-body pointwise parts; its gradient is `reference`'s derivative.
@ember.custom_op(reference=lambda x, t: torch.softmax(x / t, -1))
def softmax_t(x, t=1.0):
    z = x / t
    e = tl.exp(z - tl.max(z, axis=-1, keep_dims=True))
    return e / tl.sum(e, axis=-1, keep_dims=True)


def layer(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return softmax_t(rms_norm(ste_sign(x * 0.5) * w + x, eps=1e-5), t=0.5)


def main() -> dict:
    x, w = torch.randn(8, 32, requires_grad=True), torch.randn(32, requires_grad=True)
    out = ember.compile(layer)(x, w)
    out.sum().backward()
    got = (out.detach(), x.grad, w.grad)
    x.grad = w.grad = None
    want = layer(x, w)  # eager: the references, with torch's autograd through the VJPs
    want.sum().backward()
    errors = [float((a - b).abs().max()) for a, b in zip(got, (want.detach(), x.grad, w.grad))]
    report = ember.explain(layer, x.detach(), w.detach())
    return {"errors": errors, "kernels": [k.ops for k in report.kernels], "report": report,
            "custom_ops": [k.custom_ops for k in report.kernels]}


if __name__ == "__main__":
    result = main()
    print(result["report"])
    print("max |ember - eager| (output, dx, dw):", result["errors"])
