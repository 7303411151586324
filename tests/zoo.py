"""A model zoo for the training tests (tests/test_zoo.py): five small models built only from standard
torch.nn / F layers, the shapes of the models people train, sized for Triton's CPU interpreter (widths
16-32, sequences of 8, batches of 2-4, 8x8 images).

Two rules keep every parameter's gradient well defined, so that AdamW, whose first update is
lr * g / (|g| + eps) ~ lr * sign(g), compares against torch.optim.AdamW at float32 tolerance:
- no bias before a normalization that removes it (Conv2d -> BatchNorm2d / GroupNorm: bias=False), and
- no key bias in attention (softmax ignores a per-row shift, so the key bias's gradient is zero up to
  rounding: ~1e-9 of noise that Adam would turn into updates of ~lr / 10 in a random direction).
Dropout: none of these models has any (TransformerEncoderLayer: dropout=0.0), so train mode is
deterministic and compares exactly with eager.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

VOCAB, SEQ, CLASSES = 32, 8, 10


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy over every position of (batch, seq, vocab) logits."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


# -- GPT-style LM --------------------------------------------------------------------------------

class GPTBlock(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d, bias=False)  # no key bias (module docstring)
        self.proj = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Token embedding + learned positions, pre-norm causal blocks, final LayerNorm, weight-tied head."""

    def __init__(self, vocab: int = VOCAB, seq: int = SEQ, d: int = 16, heads: int = 2, layers: int = 1):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(seq, d)
        self.blocks = nn.ModuleList(GPTBlock(d, heads) for _ in range(layers))
        self.lnf = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied: the embedding's gradient sums both uses

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.lnf(x))


# -- Llama-style LM ------------------------------------------------------------------------------

def rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class LlamaBlock(nn.Module):
    """RMSNorm, rotary embeddings on q and k, grouped-query attention (kv heads shared by
    heads // kv_heads query heads, repeated as Llama's `repeat_kv` does), SwiGLU MLP; no biases."""

    def __init__(self, d: int, heads: int, kv_heads: int, hidden: int):
        super().__init__()
        self.heads, self.kv_heads, self.hd = heads, kv_heads, d // heads
        self.norm1, self.norm2 = nn.RMSNorm(d, eps=1e-5), nn.RMSNorm(d, eps=1e-5)
        self.wq = nn.Linear(d, d, bias=False)
        self.wkv = nn.Linear(d, 2 * kv_heads * self.hd, bias=False)
        self.wo = nn.Linear(d, d, bias=False)
        self.w1, self.w3 = nn.Linear(d, hidden, bias=False), nn.Linear(d, hidden, bias=False)
        self.w2 = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.norm1(x)
        q = self.wq(h).view(b, t, self.heads, self.hd).transpose(1, 2)
        k, v = self.wkv(h).view(b, t, 2 * self.kv_heads, self.hd).transpose(1, 2).chunk(2, dim=1)
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        rep = self.heads // self.kv_heads
        k, v = (z[:, :, None].expand(b, self.kv_heads, rep, t, self.hd).reshape(b, self.heads, t, self.hd)
                for z in (k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.wo(att.transpose(1, 2).reshape(b, t, d))
        h = self.norm2(x)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class Llama(nn.Module):
    """Token embedding (no learned positions: rotary), Llama blocks, RMSNorm, untied head."""

    def __init__(self, vocab: int = VOCAB, seq: int = SEQ, d: int = 32, heads: int = 4, kv_heads: int = 2,
                 hidden: int = 48, layers: int = 1):
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList(LlamaBlock(d, heads, kv_heads, hidden) for _ in range(layers))
        self.norm = nn.RMSNorm(d, eps=1e-5)
        self.head = nn.Linear(d, vocab, bias=False)
        hd = d // heads
        inv_freq = 1.0 / 10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        angles = torch.outer(torch.arange(seq, dtype=torch.float32), inv_freq).repeat(1, 2)  # (seq, hd)
        self.register_buffer("cos", angles.cos(), persistent=False)
        self.register_buffer("sin", angles.sin(), persistent=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        cos, sin = self.cos[:t], self.sin[:t]
        x = self.tok(idx)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.head(self.norm(x))


# -- ResNet-style CNN ----------------------------------------------------------------------------

class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn plus the shortcut (a strided 1x1 conv + bn when the shape changes), relu."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """3x8x8 images: stem conv-bn-relu, 2x2 max pool, an identity block, a strided block, global
    average pool, linear classifier. BatchNorm2d runs in train mode (batch statistics, running
    statistics updated)."""

    def __init__(self, width: int = 8, classes: int = CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU(), nn.MaxPool2d(2))
        self.layer1 = BasicBlock(width, width)
        self.layer2 = BasicBlock(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(self.pool(x).flatten(1))


# -- MobileNet-style -----------------------------------------------------------------------------

class InvertedResidual(nn.Module):
    """MobileNetV2/V3 block: 1x1 expand, 3x3 depthwise (groups = channels), 1x1 project, with
    GroupNorm and hardswish, and the residual."""

    def __init__(self, c: int, expand: int = 2, groups: int = 2):
        super().__init__()
        h = c * expand
        self.expand = nn.Sequential(nn.Conv2d(c, h, 1, bias=False), nn.GroupNorm(groups, h), nn.Hardswish())
        self.depthwise = nn.Sequential(nn.Conv2d(h, h, 3, padding=1, groups=h, bias=False), nn.GroupNorm(groups, h),
                                       nn.Hardswish())
        self.project = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.GroupNorm(groups, c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.depthwise(self.expand(x)))


class MobileNet(nn.Module):
    """3x8x8 images: strided stem conv-GroupNorm-hardswish, an inverted-residual block, pooled head."""

    def __init__(self, width: int = 8, classes: int = CLASSES):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, padding=1, bias=False), nn.GroupNorm(2, width),
                                  nn.Hardswish())
        self.block = InvertedResidual(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.adaptive_avg_pool2d(self.block(self.stem(x)), 1).flatten(1))


# -- ViT-style -----------------------------------------------------------------------------------

class ViT(nn.Module):
    """3x8x8 images cut into 2x2 patches of 4x4 by a strided conv, a class token, learned positions,
    pre-norm nn.TransformerEncoderLayer (batch_first, GELU, dropout 0, bias=False: no key bias, see
    the module docstring), final LayerNorm, a linear head on the class token."""

    def __init__(self, d: int = 16, patch: int = 4, image: int = 8, heads: int = 2, layers: int = 1,
                 classes: int = CLASSES):
        super().__init__()
        self.patch = nn.Conv2d(3, d, patch, stride=patch)
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, 1 + (image // patch) ** 2, d) * 0.02)
        self.encoder = nn.ModuleList(
            nn.TransformerEncoderLayer(d, heads, dim_feedforward=2 * d, dropout=0.0, activation="gelu",
                                       batch_first=True, norm_first=True, bias=False)
            for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch(x).flatten(2).transpose(1, 2)  # (batch, patches, d)
        x = torch.cat((self.cls.expand(x.shape[0], -1, -1), x), dim=1) + self.pos
        for layer in self.encoder:
            x = layer(x)
        return self.head(self.norm(x[:, 0]))


# -- the zoo -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Entry:
    """A zoo model: `make()` builds it (from the current torch seed); `batch()` draws a fresh
    (input, target) pair; `loss(model(x), y)` is its training loss."""

    make: Callable[[], nn.Module]
    batch: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _tokens(batch: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    idx = torch.randint(0, VOCAB, (batch, SEQ + 1))
    return idx[:, :-1].contiguous(), idx[:, 1:].contiguous()


def _images(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randn(batch, 3, 8, 8), torch.randint(0, CLASSES, (batch,))


ZOO: dict[str, Entry] = {
    "gpt": Entry(GPT, _tokens, lm_loss),
    "llama": Entry(Llama, _tokens, lm_loss),
    "resnet": Entry(ResNet, _images, F.cross_entropy),
    "mobilenet": Entry(MobileNet, _images, F.cross_entropy),
    "vit": Entry(ViT, _images, F.cross_entropy),
}
