"""Launch-path choice and plan caching: CPU tensors run under Triton's interpreter, other devices
call the JITFunction; the choice is made per launch, never through a process-wide setting."""

from __future__ import annotations

import torch
from test_codegen_util import graph_of, rand

from ember.codegen import Kernel, generated_kernels
from ember.codegen.kernel import GPU_OPTIONS
from ember.ir import TensorType
from ember.runtime import compile_graph


class _FakeJit:
    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        return lambda *args, **kw: self.calls.append((grid, args, kw))


def test_non_cpu_device_calls_the_jit_function(monkeypatch):
    cg = compile_graph(graph_of("exp", [TensorType((64,), torch.float32)]))
    step = cg.kernels[0]
    fake = _FakeJit()
    monkeypatch.setattr(Kernel, "jit", property(lambda self: fake))
    step.kernel.launch(step.grid, [1, 2], step.constexprs, torch.device("cuda", 0), step.num_warps)
    # GPU_OPTIONS: contraction off and the pipelining stages, stated (codegen/kernel.py)
    assert fake.calls == [(step.grid, (1, 2), {**step.constexprs, "num_warps": step.num_warps, **GPU_OPTIONS})]


def test_plans_are_cached_per_input_layout():
    cg = compile_graph(graph_of("neg", [TensorType((5, 6), torch.float32)]))
    x = rand((5, 6), torch.float32)
    cg([x])
    first = cg.plan
    cg([rand((5, 6), torch.float32)])
    assert cg.plan is first
    y = rand((6, 5), torch.float32).t()
    assert torch.equal(cg([y])[0], -y) and cg.plan is not first


def test_generated_kernels_carry_signature_and_constexprs():
    cg = compile_graph(graph_of("add", [TensorType((3, 4), torch.float16)] * 2))
    name = cg.kernels[0].name
    specs = [s for s in generated_kernels() if s.name == name]
    assert specs and specs[0].signature["in0_ptr"] == "*fp16" and specs[0].signature["BLOCK"] == "constexpr"
    assert specs[0].constexprs["BLOCK"] >= 16 and specs[0].jit.fn.__name__ == name


def test_plans_per_graph_are_bounded(monkeypatch):
    """A caller cycling through input layouts keeps at most MAX_PLANS plans; a dropped one is rebuilt."""
    from ember.runtime import executor

    monkeypatch.setattr(executor, "MAX_PLANS", 2)
    cg = compile_graph(graph_of("neg", [TensorType((4, 4), torch.float32)]))
    layouts = [rand((4, 4), torch.float32), rand((4, 4), torch.float32).t(), rand((4, 8), torch.float32)[:, ::2]]
    for x in layouts + layouts[:1]:
        assert torch.equal(cg([x])[0], -x)
    assert len(cg._plans) == 2
