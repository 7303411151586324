"""Small models shared by the tests (MLPs and a pre-norm transformer block)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """Linear -> ReLU -> Linear -> SiLU -> Linear."""

    def __init__(self, d_in=8, d_hidden=16, d_out=4):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d_in, d_hidden), nn.Linear(d_hidden, d_hidden)
        self.fc3 = nn.Linear(d_hidden, d_out)

    def forward(self, x):
        return self.fc3(F.silu(self.fc2(torch.relu(self.fc1(x)))))


class TransformerBlock(nn.Module):
    """Pre-norm transformer block: attention from matmul + softmax (optionally causal), LayerNorm, a
    GELU MLP of `mult` x width, residuals; with `classes`, a mean-pooled classifier head."""

    def __init__(self, d=16, heads=2, mult=4, causal=False, classes=None):
        super().__init__()
        self.heads, self.causal = heads, causal
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, mult * d), nn.Linear(mult * d, d)
        self.head = nn.Linear(d, classes) if classes else None

    def forward(self, x, causal: bool | None = None):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-2, -1) / (d // self.heads) ** 0.5
        if self.causal if causal is None else causal:
            scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        att = torch.softmax(scores, dim=-1) @ v
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        x = x + self.down(F.gelu(self.up(self.ln2(x))))
        return x if self.head is None else self.head(x.mean(1))
