"""`ember.compile(module)` is an nn.Module (api/module.py): it shares the module's parameters, buffers
and state-dict keys, forwards attributes, and a mode or dtype change reaches the next call. Every
check compares with eager PyTorch on a copy of the module."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

import ember


class MLP(nn.Module):
    def __init__(self, d: int = 6, h: int = 16, classes: int = 3, p: float = 0.0):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, h), nn.Linear(h, classes)
        self.drop = nn.Dropout(p)
        self.scale = 1.0  # a Python attribute the forward reads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(F.gelu(self.fc1(x)))) * self.scale

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc1(x)


class WithLoss(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(x), y)


def test_compile_of_a_module_is_a_module_sharing_its_state():
    model = MLP()
    compiled = ember.compile(model)
    assert isinstance(compiled, nn.Module) and isinstance(compiled, ember.CompiledModule)
    assert isinstance(ember.compile(lambda x: x + 1), ember.CompiledFunction)  # functions: unchanged
    assert [id(p) for p in compiled.parameters()] == [id(p) for p in model.parameters()]
    assert list(compiled.state_dict()) == list(model.state_dict())  # no "_orig_mod." prefix
    sd = compiled.state_dict(keep_vars=True)
    assert all(sd[k] is v for k, v in model.state_dict(keep_vars=True).items())
    assert dict(compiled.named_modules())["fc1"] is model.fc1


def test_load_state_dict_updates_the_module_and_the_next_call():
    model, other = MLP().eval(), MLP().eval()
    compiled = ember.compile(model)
    x = torch.randn(5, 6)
    with torch.no_grad():
        assert_close(compiled(x), model(x))
        assert compiled.load_state_dict(other.state_dict()).missing_keys == []
        assert all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))
        assert_close(compiled(x), other(x))
    assert compiled.recompile_reasons == []  # new values, same program


def test_attributes_and_methods_are_the_modules():
    model = MLP().eval()
    compiled = ember.compile(model)
    assert compiled.fc1 is model.fc1 and compiled.scale == 1.0
    x = torch.randn(4, 6)
    with torch.no_grad():
        assert_close(compiled.hidden(x), model.hidden(x))  # a method, run by the module itself
        compiled(x)
        compiled.scale = 3.0  # written on the module: the graph read it, so it traces again
        assert model.scale == 3.0 and "scale" not in compiled.__dict__
        assert_close(compiled(x), model(x))
    assert len(compiled.graphs) == 1 and compiled.num_recompiles == 1  # CompiledFunction's introspection
    assert compiled._ember.fn is model and compiled._orig_mod is model
    text = repr(compiled)
    assert text.startswith("CompiledModule(\n  MLP(") and "(fc1): Linear" in text and "graph(s)" in text
    assert "ember.compile(MLP)" in compiled.guard_report()


def test_adamw_on_compiled_parameters_trains_like_eager():
    model = MLP()
    ref = copy.deepcopy(model)
    compiled = ember.compile(WithLoss(model))
    eager = WithLoss(ref)
    # eps=1e-3: Adam amplifies a gradient's float32 rounding by up to lr / eps (1e6 with the default eps)
    opt = torch.optim.AdamW(compiled.parameters(), lr=1e-2, eps=1e-3)
    ref_opt = torch.optim.AdamW(eager.parameters(), lr=1e-2, eps=1e-3)
    for _ in range(4):
        x, y = torch.randn(8, 6), torch.randint(0, 3, (8,))
        loss, ref_loss = compiled(x, y), eager(x, y)
        assert_close(loss, ref_loss)
        loss.backward()
        ref_loss.backward()
        opt.step()
        ref_opt.step()
        opt.zero_grad()
        ref_opt.zero_grad()
    assert_close(dict(model.named_parameters()), dict(ref.named_parameters()))
    assert not any(torch.equal(a, b) for a, b in zip(model.parameters(), MLP().parameters()))
    assert compiled.recompile_reasons == []


def test_eval_and_train_switch_the_graph_for_dropout():
    model = nn.Sequential(nn.Dropout(0.5))
    compiled = ember.compile(model)
    x = torch.randn(64, 64) + 3.0  # no zeros of its own
    assert compiled.eval() is compiled and not model.training and not compiled.training
    assert torch.equal(compiled(x), x)  # eval: dropout is the identity, exactly
    compiled.train()
    assert model.training and model[0].training
    out = compiled(x)
    dropped = out == 0
    assert torch.equal(out[~dropped], x[~dropped] * 2)  # kept elements scaled by 1 / (1 - p)
    # 4096 elements, p = 0.5: the dropped fraction's std is 0.0078; +-0.06 is ~8 std
    assert abs(dropped.float().mean().item() - 0.5) < 0.06
    assert not torch.equal(compiled(x), out)  # fresh randomness per call
    compiled.eval()
    assert torch.equal(compiled(x), x)
    assert len(compiled.recompile_reasons) == 1 and "training flag" in compiled.recompile_reasons[0]


def test_batchnorm_running_stats_follow_train_and_eval():
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU())
    ref = copy.deepcopy(model)
    compiled = ember.compile(model)
    with torch.no_grad():
        for _ in range(3):
            x = torch.randn(8, 4)
            assert_close(compiled(x), ref(x), rtol=1e-4, atol=1e-5)  # batch statistics: reductions reorder
        assert int(model[1].num_batches_tracked) == 3
        assert_close(dict(model.named_buffers()), dict(ref.named_buffers()), rtol=1e-5, atol=1e-6)
        compiled.eval()
        ref.eval()
        x = torch.randn(5, 4)
        assert_close(compiled(x), ref(x), rtol=1e-4, atol=1e-5)
        assert int(model[1].num_batches_tracked) == 3  # eval reads the running stats, never writes them


def test_to_dtype_converts_the_module_and_recompiles():
    model = MLP().eval()
    compiled = ember.compile(model)
    x = torch.randn(4, 6)
    with torch.no_grad():
        compiled(x)
        assert compiled.to(torch.float64) is compiled
        assert all(p.dtype == torch.float64 for p in model.parameters())
        x64 = x.double()
        torch.testing.assert_close(compiled(x64), model(x64), rtol=1e-7, atol=1e-7)
    assert any("dtype changed float32 -> float64" in r for r in compiled.recompile_reasons)


def test_a_compiled_module_nested_in_another_module():
    class Parent(nn.Module):
        def __init__(self, block: nn.Module):
            super().__init__()
            self.block, self.head = block, nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(torch.tanh(self.block(x)))

    block = MLP()
    ref = Parent(copy.deepcopy(block))
    parent = Parent(ember.compile(block))
    parent.head.load_state_dict(ref.head.state_dict())
    assert list(parent.state_dict()) == list(ref.state_dict())  # "block.fc1.weight", ...
    parent.load_state_dict(ref.state_dict())
    parent.eval()
    ref.eval()
    assert not block.training
    x = torch.randn(5, 6)
    out, expected = parent(x), ref(x)
    assert_close(out.detach(), expected.detach())
    out.sum().backward()
    expected.sum().backward()
    grads = {n: p.grad for n, p in parent.named_parameters()}
    assert_close(grads, {n: p.grad for n, p in ref.named_parameters()})
    parent.double()
    assert block.fc1.weight.dtype == torch.float64
    with torch.no_grad():
        torch.testing.assert_close(parent(x.double()), ref.double()(x.double()), rtol=1e-7, atol=1e-7)


def test_explain_and_deepcopy_of_a_compiled_module():
    model = MLP().eval()
    compiled = ember.compile(model)
    x = torch.randn(3, 6)
    with torch.no_grad():
        compiled(x)
        compiled(x[:2])
    report = str(ember.explain(compiled, x))
    assert "Guards and recompiles" in report and "shape changed [3, 6] -> [2, 6]" in report
    twin = copy.deepcopy(compiled)
    assert isinstance(twin, ember.CompiledModule) and twin.fc1 is not model.fc1 and twin.graphs == []
    with torch.no_grad():
        assert_close(twin(x), model(x))
