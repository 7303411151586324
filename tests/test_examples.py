"""The training examples, under `pytest -m slow` (each 25-40 s with empty kernel caches, past the
default suite's budget): a CNN on the digits (compile_step through convolutions, batch norm and max
pooling) and a character-level GPT (through an embedding and attention). The digits MLP example runs
in the default suite (tests/test_train.py)."""

from __future__ import annotations

import importlib.util
import math
import pathlib
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    sys.path.insert(0, str(EXAMPLES))  # train_cnn imports train_digits
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # 25 s on 2 cores, beyond the default suite's budget; CNN training against eager stays
def test_cnn_example_reaches_97_percent():  # in the default run (test_zoo.py resnet/mobilenet, test_extern_vjp.py)
    cnn, digits = _load("train_cnn"), _load("train_digits")
    metrics = digits.train(epochs=3, batch=cnn.BATCH, quiet=True, make=cnn.make_model)  # the example runs 4
    assert metrics["accuracy"] >= 0.97, digits.report(metrics)
    assert metrics["reloaded_accuracy"] == metrics["accuracy"]


@pytest.mark.slow  # ~25-40 s with empty kernel caches; GPT training against eager stays in the default run
def test_lm_example_loss_falls_and_samples():  # (test_zoo.py gpt/llama in every mode, test_train.py)
    lm = _load("train_lm")
    m = lm.train(steps=8, quiet=True)  # the example runs 300; a few steps already learn the characters' frequencies
    first, last = sum(m["losses"][:3]) / 3, sum(m["losses"][-3:]) / 3
    assert all(math.isfinite(x) for x in m["losses"])
    assert first < m["uniform_loss"] + 0.1 and last < first - 0.2, m["losses"]
    text = lm.sample(m["model"], m["chars"], "The ", 12, m["context"])
    assert text.startswith("The ") and len(text) == 16 and set(text) <= set(m["chars"])
