"""The package is loaded once: a second copy (the repository root imported under its folder's name)
would define ember's torch custom ops again and silently turn them into torch fallbacks."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import ember

ROOT = Path(ember.__file__).resolve().parent


def test_one_copy_of_the_package():
    copies = sorted(name for name, mod in list(sys.modules.items())
                    if not (name == "ember" or name.startswith("ember.")) and mod is not ember
                    and str(getattr(mod, "__file__", None) or "").startswith(str(ROOT / "frontend")))
    assert not copies, copies


def test_custom_ops_lower_to_their_ir_ops():
    """`x.clone().zero_()` stays attached to x (a zero gradient, as in eager): ember's custom op
    `ember::zero_gradient`, lowered to the IR op of that name, not to a torch fallback."""
    x = torch.randn(3, requires_grad=True)
    ops = [n.op for n in ember.trace(lambda x: x.clone().zero_() + x, x).captured_graph.nodes]
    assert "zero_gradient" in ops and "extern" not in ops
