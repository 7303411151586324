"""ember.save / ember.load (api/save.py, api/load.py, format in api/artifact.py): a saved function and a
saved compile_step training step run in a fresh process that has only ember and torch, equal eager
(the function) and uninterrupted training (the step); a damaged artifact raises before anything runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
from torch import nn

import ember
from ember.api.artifact import ArtifactError, check_graph, sha256
from ember.codegen.kernel import kernel_count
from ember.ir import parse_graph
from ember.runtime import executor


def _net() -> nn.Module:
    return nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.LayerNorm(12), nn.Linear(12, 3)).eval()


def _train_net() -> nn.Module:  # batch norm in train mode: buffers the step updates
    return nn.Sequential(nn.Linear(6, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Linear(12, 3))


def _optimizer(model: nn.Module) -> torch.optim.Optimizer:
    # two param groups (the loader maps each back); lr/eps <= 10 keeps Adam's first step well conditioned
    linear = [p for n, p in model.named_parameters() if not n.startswith("1.")]
    return ember.optim.Adam([{"params": linear}, {"params": model[1].parameters(), "lr": 5e-3}], lr=1e-2, eps=1e-3)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """One function artifact and one step artifact (saved after 2 steps), with what they must give:
    eager's output, and the losses and weights of 2 more steps of the original, uninterrupted step."""
    root = tmp_path_factory.mktemp("artifacts")
    model = _net()
    x = torch.randn(5, 6)
    ember.save(ember.compile(model), str(root / "fn"), x)  # (ember.compile's wrapper is unwrapped)

    net = _train_net()
    step = ember.compile_step(net, nn.functional.cross_entropy, _optimizer(net))
    xs, ts = torch.randn(4, 8, 6), torch.randint(0, 3, (4, 8))
    for i in range(2):
        step(xs[i], ts[i])
    ember.save(step, str(root / "step"), xs[0], ts[0])
    losses = torch.stack([step(xs[i], ts[i]) for i in (2, 3)])
    data = {"x": x, "xs": xs[2:], "ts": ts[2:]}
    torch.save(data, root / "data.pt")
    with torch.no_grad():
        expected = {"y": model(x), "losses": losses, "state": {k: v.clone() for k, v in net.state_dict().items()}}
    return root, data, expected


# A fresh interpreter with ember and torch only: the models above are defined in this file, which it never imports.
CHILD = r"""
import sys
import torch
import ember
root = sys.argv[1]
data = torch.load(root + "/data.pt")
f = ember.load(root + "/fn")
with torch.no_grad():
    y = f(data["x"])
step = ember.load(root + "/step")
losses = torch.stack([step(x, t) for x, t in zip(data["xs"], data["ts"])])
assert not [m for m in sys.modules if "test_save_load" in m]
torch.save({"y": y, "losses": losses, "state": step.state_dict()}, root + "/child.pt")
"""


def test_fresh_process_runs_the_artifacts_without_the_model_code(saved):
    root, _, expected = saved
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", CHILD, str(root)], check=True, env=env, timeout=300, cwd=str(root))
    got = torch.load(root / "child.pt")
    torch.testing.assert_close(got["y"], expected["y"])
    # the same kernels on the same values as the uninterrupted step: equal, not merely close
    torch.testing.assert_close(got["losses"], expected["losses"], rtol=0, atol=0)
    assert got["state"].keys() == expected["state"].keys()
    for k, v in expected["state"].items():
        torch.testing.assert_close(got["state"][k], v, rtol=0, atol=0, msg=k)


def test_loaded_function_checks_its_arguments(saved):
    root, data, expected = saved
    f = ember.load(str(root / "fn"))
    with torch.no_grad():
        torch.testing.assert_close(f(data["x"]), expected["y"])
        with pytest.raises(TypeError, match=r"saved for f32\[5, 6\].*got f32\[4, 6\]"):
            f(torch.randn(4, 6))
        with pytest.raises(TypeError, match="structure"):
            f(data["x"], data["x"])
    assert set(f.state_dict()) == set(_net().state_dict())


class _Detaching(nn.Module):  # a gradient marker the optimized graph no longer holds: autodiff.ir keeps it
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(6, 12), nn.Linear(12, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return self.b(h) * h.detach().sum(-1, keepdim=True), h.detach()


def test_loaded_function_differentiates_like_eager(tmp_path):
    model = _Detaching()
    x = torch.randn(5, 6)
    ember.save(model, str(tmp_path / "fn"), x)
    f = ember.load(str(tmp_path / "fn"))
    params = f.state_dict()
    for t in params.values():
        t.requires_grad_()
    xg, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, h = f(xg)
    ref_out, ref_h = model(ref_x)
    assert not h.requires_grad  # a detached result stays detached
    ct = torch.randn_like(ref_out)
    (out * ct).sum().backward()
    (ref_out * ct).sum().backward()
    torch.testing.assert_close(out.detach(), ref_out.detach())
    torch.testing.assert_close(xg.grad, ref_x.grad)
    for name, p in model.named_parameters():
        torch.testing.assert_close(params[name].grad, p.grad, msg=name)
    with torch.no_grad():  # and without grad mode, the saved kernels as before
        torch.testing.assert_close(f(x)[0], ref_out.detach())


def test_a_loaded_program_that_updates_inputs_refuses_gradients(tmp_path):
    net = _train_net()  # batch norm in train mode: its running statistics are updated in place
    x = torch.randn(8, 6)
    ember.save(net, str(tmp_path / "fn"), x)
    f = ember.load(str(tmp_path / "fn"))
    with pytest.raises(RuntimeError, match="computes no gradients .*updates an input in place"):
        f(x.clone().requires_grad_())


def test_resumed_training_equals_uninterrupted_in_process(saved):
    root, data, expected = saved
    step = ember.load(str(root / "step"))
    with pytest.raises(TypeError, match=r"step: x: the artifact was saved for f32\[8, 6\]"):
        step(torch.randn(3, 6), data["ts"][0])  # (refused before the optimizer's step counters move)
    losses = torch.stack([step(x, t) for x, t in zip(data["xs"], data["ts"])])
    torch.testing.assert_close(losses, expected["losses"], rtol=0, atol=0)
    fresh = _train_net()
    fresh.load_state_dict(step.state_dict())  # the trained weights, by the model's own names
    for k, v in fresh.state_dict().items():
        torch.testing.assert_close(v, expected["state"][k], rtol=0, atol=0, msg=k)
    assert [s["step"].item() for s in step.optimizer.state_dict()["state"].values()] == [4.0] * 6
    assert [g["lr"] for g in step.optimizer.param_groups] == [1e-2, 5e-3]


# -- damaged artifacts: a clear error, raised before any kernel is generated or run ------------------
@pytest.fixture
def damaged(saved, tmp_path, monkeypatch):
    def ran(*args, **kwargs):
        raise AssertionError("a damaged artifact ran a plan")

    monkeypatch.setattr(executor.Prepared, "run", ran)
    path = tmp_path / "fn"
    shutil.copytree(saved[0] / "fn", path)
    return path


def _rehash(path, name: str) -> None:
    """Make the manifest agree with an edited file (what a deliberate edit would do)."""
    manifest = json.loads((path / "manifest.json").read_text())
    data = (path / name).read_bytes()
    manifest["files"][name] = {"bytes": len(data), "sha256": sha256(data)}
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage, message", [
    ("truncate", r"weights\.safetensors .* is truncated"),
    ("flip", r"graph\.ir .* was modified"),
    ("version", "format version 99"),
    ("ember", "written by ember '0.0.1'"),
    ("missing", r"kernels/cpu/.*cannot be read"),
])
def test_damaged_artifact_raises_before_anything_runs(damaged, damage, message):
    if damage == "truncate":
        w = damaged / "weights.safetensors"
        w.write_bytes(w.read_bytes()[:-7])
    elif damage == "flip":
        g = damaged / "graph.ir"
        data = bytearray(g.read_bytes())
        data[len(data) // 2] ^= 0x01
        g.write_bytes(bytes(data))
    elif damage in ("version", "ember"):
        manifest = json.loads((damaged / "manifest.json").read_text())
        manifest["format_version" if damage == "version" else "ember"] = 99 if damage == "version" else "0.0.1"
        (damaged / "manifest.json").write_text(json.dumps(manifest))
    else:
        os.remove(next((damaged / "kernels" / "cpu").iterdir()))
    made = kernel_count()
    with pytest.raises(ArtifactError, match=message):
        ember.load(str(damaged))
    assert kernel_count() == made  # refused from the manifest alone: nothing generated


def test_edited_graph_with_a_matching_manifest_is_caught_by_its_kernels(damaged):
    g = damaged / "graph.ir"
    text = g.read_text()
    assert " relu(" in text
    g.write_text(text.replace(" relu(", " abs("))
    _rehash(damaged, "graph.ir")
    with pytest.raises(ArtifactError, match="kernel kernels/cpu/.* the artifact does not match its graph"):
        ember.load(str(damaged))


@pytest.mark.parametrize("node, message", [
    ("%1: f32[2] = extern(%x) {target='builtins.eval.default', args=(), kwargs={}}", "not registered"),
    ("%1: f32[2] = extern(%x) {target='aten.__class__.__init__', args=(), kwargs={}}", "not a torch operator"),
    ("%1: f32[2] = extern(%x) {target='aten.add', args=(), kwargs={}}", "not a torch operator name"),
    ("%1: f32[2] = abs(%x) {mode='x) or __import__(\"os\").system(\"true\"'}", "not a plain word"),
])
def test_a_forged_graph_names_no_code(node, message):
    """What the hashes cannot stop (a forger rewrites the manifest too) is stopped by what a graph may
    say: extern calls name registered torch operators, attribute strings are plain words."""
    graph = parse_graph(f"graph(%x: f32[2]) {{\n  {node}\n  return (%1)\n}}")
    with pytest.raises(ArtifactError, match=message):
        check_graph(graph)


def test_save_refuses_what_it_cannot_write_as_data(tmp_path):
    x = torch.randn(3)
    with pytest.raises(NotImplementedError, match="view"):
        ember.save(lambda x: x[1:], str(tmp_path / "a"), x)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an ember artifact"):
        ember.save(lambda x: x * 2, str(tmp_path / "b"), x)
    assert (tmp_path / "b" / "notes.txt").read_text() == "mine"


def test_arguments_values_results_and_random_seeds(tmp_path):
    """Non-tensor arguments are part of the saved signature; containers come back; a random op draws
    from torch's generator per call, as the traced program does."""
    w = torch.randn(4)

    def fn(inputs, scale):
        a = inputs["a"] * w * scale
        return {"sum": a + torch.rand_like(a), "shape": a.shape}

    args = ({"a": torch.randn(4)}, 2.0)
    sg = ember.trace(fn, *args)
    ember.save(sg, str(tmp_path / "f"), *args)
    f = ember.load(str(tmp_path / "f"))
    torch.manual_seed(3)
    got = f(*args)
    torch.manual_seed(3)
    want = sg(*args)
    torch.testing.assert_close(got["sum"], want["sum"], rtol=0, atol=0)
    assert got["shape"] == torch.Size([4])
    with pytest.raises(TypeError, match="saved for the value 2.0, got 3.0"):
        f(args[0], 3.0)


def test_a_loaded_artifact_runs_under_the_autocast_it_was_traced_in(tmp_path):
    model = _net()
    x = torch.randn(5, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ember.save(model, str(tmp_path / "bf16"), x)
        want = model(x)
    ember.save(model, str(tmp_path / "f32"), x)
    f16, f32 = ember.load(str(tmp_path / "bf16")), ember.load(str(tmp_path / "f32"))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        got = f16(x)
        with pytest.raises(ValueError, match="traced with autocast off, called with autocast cpu bf16"):
            f32(x)
    assert got.dtype == want.dtype == torch.bfloat16
    torch.testing.assert_close(got, want.detach(), rtol=2e-2, atol=2e-2)
    with torch.no_grad(), pytest.raises(ValueError, match="traced with autocast cpu bf16, called with autocast off"):
        f16(x)
