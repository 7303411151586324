"""Train a character-level GPT on a text that ships with the repository, with `ember.compile_step`.

The text is ember's own docs/architecture.md. The model is GPT-style: token embedding plus learned
positions, pre-LayerNorm blocks of causal `F.scaled_dot_product_attention` and a GELU MLP, and a
head tied to the embedding. Forward, loss, backward (the embedding's gradient included) and the
AdamW update run as one static graph per step. The loss is printed as it falls; then a sample is
generated with `ember.compile(model)` (a fixed context window, so one compiled graph serves it).

    python examples/train_lm.py [--steps 300]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import ember  # noqa: E402

TEXT = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class CharGPT(nn.Module):
    def __init__(self, vocab: int, context: int, d: int = 32, heads: int = 2, layers: int = 2):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Parameter(torch.zeros(context, d))
        # GPT-2's initialization: with the head tied to N(0, 1) embeddings the first logits would be
        # O(sqrt(d)) and the first loss far above a uniform guess
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[Block(d, heads) for _ in range(layers)])
        self.ln = nn.LayerNorm(d)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.tok(idx) + self.pos)
        return self.ln(x) @ self.tok.weight.t()  # the head is the embedding, transposed (weight tying)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def sample(model: nn.Module, chars: list[str], start: str, length: int, context: int) -> str:
    stoi = {c: i for i, c in enumerate(chars)}
    run = ember.compile(model.eval())
    idx = [stoi.get(c, 0) for c in start]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _ in range(length):
            window = ([0] * context + idx)[-context:]  # always `context` tokens: one compiled graph
            logits = run(torch.tensor([window]))[0, -1]
            idx.append(int(torch.multinomial(torch.softmax(logits / 0.8, -1), 1, generator=g)))
    return "".join(chars[i] for i in idx)


def train(steps: int = 300, batch: int = 8, context: int = 32, seed: int = 0, quiet: bool = False) -> dict:
    torch.manual_seed(seed)
    text = TEXT.read_text()
    chars = sorted(set(text))
    data = torch.tensor([chars.index(c) for c in text])
    model = CharGPT(len(chars), context)
    step = ember.compile_step(model, lm_loss, ember.optim.AdamW(model.parameters(), lr=3e-3))
    losses, start = [], time.perf_counter()
    for i in range(1, steps + 1):
        at = torch.randint(0, len(data) - context - 1, (batch,))
        x = torch.stack([data[a:a + context] for a in at])
        y = torch.stack([data[a + 1:a + context + 1] for a in at])
        losses.append(step(x, y).item())
        if not quiet and (i % 10 == 0 or i == steps):
            avg = sum(losses[-10:]) / len(losses[-10:])
            sys.stdout.write(f"\rstep {i}/{steps}  loss {avg:.3f}  {time.perf_counter() - start:.0f}s")
            sys.stdout.flush()
    if not quiet:
        print()
    return {"losses": losses, "uniform_loss": math.log(len(chars)), "kernels_per_step": step.num_kernels,
            "seconds": time.perf_counter() - start, "model": model, "chars": chars, "context": context}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args()
    m = train(args.steps)
    first, last = sum(m["losses"][:10]) / 10, sum(m["losses"][-10:]) / 10
    print(f"loss {first:.3f} -> {last:.3f} (a uniform guess: {m['uniform_loss']:.3f}); "
          f"{m['kernels_per_step']} kernels per training step; {m['seconds']:.0f}s")
    print("sample:", repr(sample(m["model"], m["chars"], "The ", 120, m["context"])))


if __name__ == "__main__":
    main()
