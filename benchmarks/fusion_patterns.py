"""The programs the fusion benchmark measures, each at three sizes.

`tiny` is for tests, `small` for CPU runs (Triton's interpreter), `large` for GPU timing.
Every pattern is a plain PyTorch function or module plus a builder of example inputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

SIZES = ("tiny", "small", "large")
# (rows, cols) of the 2-D patterns, per size.
ROWS_COLS = {"tiny": (8, 32), "small": (256, 1024), "large": (8192, 4096)}
# (batch, seq, dim, vocab) of the model-like patterns, per size.
MODEL = {"tiny": (1, 8, 32, 64), "small": (2, 64, 128, 8192), "large": (8, 1024, 1024, 32768)}


@dataclass
class Pattern:
    name: str
    build: Callable[[str, torch.device, torch.dtype], tuple[Callable, tuple]]  # -> (fn, args)
    rtol: float = 1e-4
    atol: float = 1e-4


def _randn(*shape: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(*shape, device=device, dtype=dtype)


def bias_gelu(size, device, dtype):
    m, n = ROWS_COLS[size]
    args = (_randn(m, n, device=device, dtype=dtype), _randn(n, device=device, dtype=dtype))
    return (lambda x, b: F.gelu(x + b)), args


def swiglu(size, device, dtype):
    m, n = ROWS_COLS[size]

    def fn(x):
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
    return fn, (_randn(m, 2 * n, device=device, dtype=dtype),)


def softmax(size, device, dtype):
    m, n = ROWS_COLS[size]
    return (lambda x: torch.softmax(x, dim=-1)), (_randn(m, n, device=device, dtype=dtype),)


def log_softmax(size, device, dtype):
    m, n = ROWS_COLS[size]
    return (lambda x: torch.log_softmax(x, dim=-1)), (_randn(m, n, device=device, dtype=dtype),)


def layernorm(size, device, dtype):
    m, n = ROWS_COLS[size]
    args = (_randn(m, n, device=device, dtype=dtype), _randn(n, device=device, dtype=dtype),
            _randn(n, device=device, dtype=dtype))
    return (lambda x, w, b: F.layer_norm(x, (x.shape[-1],), w, b)), args


def rmsnorm(size, device, dtype):
    m, n = ROWS_COLS[size]

    def fn(x, w):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    return fn, (_randn(m, n, device=device, dtype=dtype), _randn(n, device=device, dtype=dtype))


def cross_entropy(size, device, dtype):
    b, s, _, vocab = MODEL[size]
    logits = _randn(b * s, vocab, device=device, dtype=dtype)
    target = torch.randint(0, vocab, (b * s,), device=device)
    return (lambda x, t: F.cross_entropy(x, t)), (logits, target)


def attention(size, device, dtype):
    b, s, d, _ = MODEL[size]
    heads, hd = 4, d // 4
    q, k, v = (_randn(b, heads, s, hd, device=device, dtype=dtype) for _ in range(3))
    mask = torch.triu(torch.full((s, s), float("-inf"), device=device, dtype=dtype), diagonal=1)

    def fn(q, k, v, mask):
        scores = q @ k.transpose(-2, -1) * (1.0 / math.sqrt(q.shape[-1])) + mask
        return torch.softmax(scores, dim=-1) @ v
    return fn, (q, k, v, mask)


class MLPBlock(nn.Module):
    """LayerNorm(x + Linear(GELU(Linear(x))))."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2, self.norm = nn.Linear(dim, hidden), nn.Linear(hidden, dim), nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(x + self.fc2(F.gelu(self.fc1(x))))


class TransformerBlock(nn.Module):
    """Pre-norm block: x + Attn(LN(x)), then x + MLP(LN(x)); causal, `heads` heads."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x, mask):
        b, s, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-2, -1) * (1.0 / math.sqrt(d // self.heads)) + mask, dim=-1)
        x = x + self.proj((att @ v).transpose(1, 2).reshape(b, s, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def mlp_block(size, device, dtype):
    b, s, d, _ = MODEL[size]
    model = MLPBlock(d, 4 * d).to(device=device, dtype=dtype).eval()
    return model, (_randn(b, s, d, device=device, dtype=dtype),)


def transformer_block(size, device, dtype):
    b, s, d, _ = MODEL[size]
    model = TransformerBlock(d).to(device=device, dtype=dtype).eval()
    mask = torch.triu(torch.full((s, s), float("-inf"), device=device, dtype=dtype), diagonal=1)
    return model, (_randn(b, s, d, device=device, dtype=dtype), mask)


PATTERNS: list[Pattern] = [
    Pattern("bias_gelu", bias_gelu),
    Pattern("swiglu", swiglu),
    Pattern("softmax", softmax),
    Pattern("log_softmax", log_softmax),
    Pattern("layernorm", layernorm),
    Pattern("rmsnorm", rmsnorm),
    Pattern("cross_entropy", cross_entropy),
    Pattern("attention", attention, 1e-3, 1e-3),
    Pattern("mlp_block", mlp_block, 1e-3, 1e-3),
    Pattern("transformer_block", transformer_block, 1e-3, 1e-3),
]
