"""Train the classic feed-forward digit classifier with ember's whole-step compilation.

scikit-learn's bundled 8x8 digits (1797 images, shipped with the package: no download), an MLP,
AdamW, and `ember.compile_step`: forward, loss, backward and the optimizer update run as one static
graph of fused Triton kernels (through Triton's interpreter on CPU). Evaluation on a held-out split
reports loss, accuracy, per-class and macro precision/recall/F1 and the confusion matrix; the
state_dict is saved, reloaded into a fresh model, and gives the same metrics.

    pip install -e ".[examples]"   # scikit-learn
    python examples/train_digits.py [--epochs 12]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

import ember  # noqa: E402


def load_data(seed: int = 0):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # pixel values 0..16
    y = torch.tensor(digits.target, dtype=torch.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    return xtr, xte, ytr, yte


def make_model() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64), nn.GELU(), nn.Linear(64, 10))


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    model.eval()
    with torch.no_grad():
        logits = ember.compile(model)(x)
        loss = nn.functional.cross_entropy(logits, y).item()
    pred = logits.argmax(1)
    p, r, f, _ = precision_recall_fscore_support(y, pred, labels=list(range(10)), zero_division=0)
    return {"loss": loss, "accuracy": (pred == y).float().mean().item(), "precision": p, "recall": r, "f1": f,
            "macro": (p.mean(), r.mean(), f.mean()), "confusion": confusion_matrix(y, pred, labels=list(range(10)))}


def report(m: dict) -> str:
    lines = [f"loss {m['loss']:.4f}  accuracy {m['accuracy']:.2%}", "class  precision  recall     f1"]
    for c in range(10):
        lines.append(f"  {c}      {m['precision'][c]:.3f}    {m['recall'][c]:.3f}  {m['f1'][c]:.3f}")
    lines.append("macro      {:.3f}    {:.3f}  {:.3f}".format(*m["macro"]))
    lines.append("confusion matrix (rows: true, columns: predicted)")
    lines += ["  " + " ".join(f"{v:3d}" for v in row) for row in m["confusion"]]
    return "\n".join(lines)


def progress(epoch: int, epochs: int, loss: float, start: float) -> None:
    done = int(30 * epoch / epochs)
    sys.stdout.write(f"\r[{'#' * done}{'.' * (30 - done)}] epoch {epoch}/{epochs}  loss {loss:.4f}  "
                     f"{time.perf_counter() - start:.0f}s")
    sys.stdout.flush()


def train(epochs: int = 12, batch: int = 128, seed: int = 0, quiet: bool = False, make=make_model) -> dict:
    """Train `make()` (the MLP by default; examples/train_cnn.py passes its CNN) and evaluate it."""
    torch.manual_seed(seed)
    xtr, xte, ytr, yte = load_data(seed)
    model = make()
    opt = ember.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    step = ember.compile_step(model, nn.functional.cross_entropy, opt)
    start = time.perf_counter()
    n = (len(xtr) // batch) * batch  # full batches only: one compiled step serves every batch
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(len(xtr))[:n]
        total = 0.0
        for i in range(0, n, batch):
            idx = perm[i:i + batch]
            total += step(xtr[idx], ytr[idx]).item()
        if not quiet:
            progress(epoch, epochs, total / (n // batch), start)
    if not quiet:
        print()
    metrics = evaluate(model, xte, yte)
    # Save and reload the state_dict: a fresh model must give the same metrics.
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "digits.pt")
        torch.save(model.state_dict(), path)
        fresh = make()
        fresh.load_state_dict(torch.load(path))
    reloaded = evaluate(fresh, xte, yte)
    metrics["reloaded_accuracy"] = reloaded["accuracy"]
    metrics["reloaded_loss"] = reloaded["loss"]
    metrics["seconds"] = time.perf_counter() - start
    metrics["kernels_per_step"] = step.num_kernels
    return metrics


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=12)
    args = ap.parse_args()
    m = train(args.epochs)
    print(report(m))
    print(f"reloaded state_dict: loss {m['reloaded_loss']:.4f}  accuracy {m['reloaded_accuracy']:.2%}")
    print(f"{m['kernels_per_step']} kernels per training step; {m['seconds']:.0f}s in all")


if __name__ == "__main__":
    main()
