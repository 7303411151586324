"""Train a small CNN on scikit-learn's 8x8 digits as images, with ember's whole-step compilation.

The digits (1797 images shipped with scikit-learn: no download) as 1x8x8 images; two 3x3
convolutions with batch normalization (train mode: running statistics updated in the step), ReLU,
max pooling and a linear head; AdamW; `ember.compile_step` makes forward, loss, backward (the
convolutions' and the pooling's gradients included) and the update one static graph. Evaluation on
a held-out split reports loss, accuracy, per-class precision/recall/F1 and the confusion matrix;
the state_dict is saved and reloaded into a fresh model, which gives the same metrics.

    pip install -e ".[examples]"   # scikit-learn
    python examples/train_cnn.py [--epochs 4]
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

from torch import nn  # noqa: E402
from train_digits import report, train  # noqa: E402  (the same data, loop and report as the MLP example)

BATCH = 64  # more, smaller steps than the MLP's 128: 98% after 3 epochs (about 35 s on 2 CPU cores)


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),                      # the flat 64 pixels as a 1x8x8 image
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    m = train(args.epochs, batch=BATCH, make=make_model)
    print(report(m))
    print(f"reloaded state_dict: loss {m['reloaded_loss']:.4f}  accuracy {m['reloaded_accuracy']:.2%}")
    print(f"{m['kernels_per_step']} kernels per training step; {m['seconds']:.0f}s in all")


if __name__ == "__main__":
    main()
