"""The host path of a call (docs/architecture.md, "Host path"): launches bound at plan time, the
arena of internal temporaries, the fast guard before the full signature, optimizer hyperparameters
written into one tensor per program. Each test checks a value against eager PyTorch, so a fast path
that served a call it should not have shows as a wrong number."""

import pytest
import torch
from torch import nn

import ember
from ember.codegen import kernel as kernel_mod
from ember.runtime.executor import prepared
from ember.runtime.plan import Buf

TOL = dict(rtol=1e-5, atol=1e-5)


def _two_kernels(x, w):
    return torch.softmax(x @ w, dim=-1) * 2  # the matmul's result is an internal temporary


def test_two_calls_return_distinct_outputs_the_arena_never_clobbers():
    f = ember.compile(_two_kernels)
    w = torch.randn(8, 6)
    x1, x2 = torch.randn(4, 8), torch.randn(4, 8)
    out1 = f(x1, w)
    out2 = f(x2, w)
    plan = f.graphs[0].compiled.plan
    assert prepared(plan, torch.device("cpu")).arena_specs  # the temporary is in the arena (the point)
    assert out1 is not out2 and out1.data_ptr() != out2.data_ptr()
    torch.testing.assert_close(out1, _two_kernels(x1, w), **TOL)  # still the first call's value
    torch.testing.assert_close(out2, _two_kernels(x2, w), **TOL)


def test_temporaries_past_the_arena_limit_are_allocated_per_call(monkeypatch):
    from ember.runtime import executor

    monkeypatch.setattr(executor, "ARENA_MAX_BYTES", 0)
    f = ember.compile(_two_kernels)
    x, w = torch.randn(4, 8), torch.randn(8, 6)
    torch.testing.assert_close(f(x, w), _two_kernels(x, w), **TOL)
    assert not prepared(f.graphs[0].compiled.plan, torch.device("cpu")).arena_specs


def test_changed_shapes_strides_dtypes_and_values_guard_again():
    f = ember.compile(lambda x, s: x * s + 1, dynamic=False)
    x = torch.randn(5, 6)
    torch.testing.assert_close(f(x, 2.0), x * 2 + 1)
    torch.testing.assert_close(f(x, 3.0), x * 3 + 1)                       # a new scalar value
    xt = torch.randn(6, 5).t()
    torch.testing.assert_close(f(xt, 3.0), xt * 3 + 1)                     # new strides, same shape
    xd = x.double()
    torch.testing.assert_close(f(xd, 3.0), xd * 3 + 1)                     # new dtype
    xb = torch.randn(7, 6)
    torch.testing.assert_close(f(xb, 3.0), xb * 3 + 1)                     # new shape
    torch.testing.assert_close(f(x, s=3.0), x * 3 + 1)                     # keywords
    torch.testing.assert_close(f(x, s=3.0), x * 3 + 1)
    torch.testing.assert_close(f(x, s=4.0), x * 4 + 1)
    torch.testing.assert_close(f(s=4.0, x=xb), xb * 4 + 1)                 # other order and shape
    torch.testing.assert_close(f(x, 4.0), x * 4 + 1)
    assert any("dtype changed" in r for r in f.recompile_reasons)


def test_aliased_arguments_take_the_full_path():
    def g(a, b):
        a.add_(b)
        return a * 2

    f = ember.compile(g)
    for _ in range(2):  # the second call is served by the fast guard
        a, b = torch.randn(4), torch.randn(4)
        want = a + b
        torch.testing.assert_close(f(a, b), want * 2)
        torch.testing.assert_close(a, want)
    y = torch.randn(4)
    y0 = y.clone()
    torch.testing.assert_close(f(y, y), 4 * y0)  # one tensor twice: as eager, a = 2y, returns 4y
    torch.testing.assert_close(y, 2 * y0)


def test_module_state_changes_reach_the_graph():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(6, 8), nn.Dropout(0.5), nn.Linear(8, 3))
    f = ember.compile(m)
    x = torch.randn(4, 6)
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(f(x), m(x), **TOL)
        torch.testing.assert_close(f(x), m(x), **TOL)
        m[0].weight.add_(1.0)                                        # in place: same tensor, new values
        torch.testing.assert_close(f(x), m(x), **TOL)
        m[2].weight = nn.Parameter(torch.randn(3, 8))                # replaced, same metadata
        torch.testing.assert_close(f(x), m(x), **TOL)
        m[2].bias.data = torch.randn(3)                              # new memory, same object
        torch.testing.assert_close(f(x), m(x), **TOL)
        m[0].weight.data = torch.randn(6, 8).t()                     # same object, other strides
        torch.testing.assert_close(f(x), m(x), **TOL)
        m.train()                                                    # a training flag: dropout now
        assert f(x).shape == (4, 3)
        m.eval()
        torch.testing.assert_close(f(x), m(x), **TOL)
    assert any("training flag" in r for r in f.recompile_reasons)


def test_the_stub_is_hit_once_per_kernel_and_nothing_else_changes():
    f = ember.compile(_two_kernels)
    x, w = torch.randn(4, 8), torch.randn(8, 6)
    f(x, w)  # compiled, planned and run for real
    launches = f.graphs[0].compiled.plan.launches
    assert len(launches) >= 2
    for _ in range(2):  # the full path's call and the fast guard's
        with kernel_mod.stub_launches() as calls:
            out = f(x, w)
        assert [c.kernel for c in calls] == [s.kernel for s in launches]
        assert out.shape == (4, 6)
    torch.testing.assert_close(f(x, w), _two_kernels(x, w), **TOL)  # launches again after the stub


def test_lr_schedule_takes_effect_without_a_recompile_or_a_tensor_per_step(monkeypatch):
    torch.manual_seed(0)
    ref = [nn.Parameter(torch.randn(5, 4)) for _ in range(6)] + [nn.Parameter(torch.randn(4)) for _ in range(6)]
    mine = [nn.Parameter(p.detach().clone()) for p in ref]
    topt = torch.optim.AdamW(ref, lr=1e-2, weight_decay=0.1, foreach=False)
    eopt = ember.optim.AdamW(mine, lr=1e-2, weight_decay=0.1)
    made = []
    for step in range(4):
        for p, q in zip(ref, mine):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()
        for opt in (topt, eopt):
            for group in opt.param_groups:
                group["lr"] = 1e-2 / (1 + step)                  # a schedule: a new value every step
        topt.step()
        if step >= 1:  # after the first step: no tensor made for the hyperparameters
            real = torch.tensor
            monkeypatch.setattr(torch, "tensor", lambda *a, **k: made.append(a) or real(*a, **k))
        eopt.step()
        monkeypatch.undo()
        for p, q in zip(ref, mine):
            torch.testing.assert_close(q, p, **TOL)
    assert made == [] and eopt.engine.num_graphs_built == 1
    assert eopt.num_kernels == 1 and eopt.in_place  # weights and biases: one launch (horizontal fusion)
    (program,) = eopt.engine.programs()
    assert program.hp.values[-1] == -1e-2 / 4 / (1 - 0.9**4)  # the last step's -lr / bias correction


def test_compile_step_keeps_its_hyperparameter_tensor():
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    ref = nn.Linear(4, 3)
    ref.load_state_dict(model.state_dict())
    opt = ember.optim.SGD(model.parameters(), lr=0.1)
    topt = torch.optim.SGD(ref.parameters(), lr=0.1)
    step = ember.compile_step(model, nn.functional.mse_loss, opt)
    hp = None
    for k in range(3):
        x, y = torch.randn(8, 4), torch.randn(8, 3)
        for o in (opt, topt):
            o.param_groups[0]["lr"] = 0.1 * (k + 1)
        step(x, y)
        topt.zero_grad()
        nn.functional.mse_loss(ref(x), y).backward()
        topt.step()
        hp = hp if hp is not None else step.last.hp.tensor
        assert step.last.hp.tensor is hp and len(step._programs) == 1
        for p, q in zip(ref.parameters(), model.parameters()):
            torch.testing.assert_close(q, p, **TOL)


class _FakeCompiled:
    """What `JITFunction.run` returns: a compiled kernel with its launcher."""

    packed_metadata = "meta"
    function = "fn"

    def __init__(self):
        self.runs = []

    def launch_metadata(self, grid, stream, *args):
        return None

    def run(self, *args):
        self.runs.append(args)


class _FakeJit:
    def __init__(self, compiled):
        self.compiled, self.calls = compiled, []

    def __getitem__(self, grid):
        def launch(*args, **kw):
            self.calls.append(args)
            return self.compiled
        return launch


class _Ptr:
    def __init__(self, address):
        self.address = address

    def data_ptr(self):
        return self.address


def test_gpu_launcher_calls_the_compiled_kernel_directly(monkeypatch):
    """After the first launch (through the JIT), a launch with the same pointer alignment calls the
    compiled kernel's launcher with every parameter in order, constexprs in their places; another
    alignment goes through the JIT again."""
    f = ember.compile(lambda x: x + 1)
    f(torch.randn(64))
    step = f.graphs[0].compiled.plan.launches[0]
    compiled = _FakeCompiled()
    jit = _FakeJit(compiled)
    monkeypatch.setattr(kernel_mod.Kernel, "jit", property(lambda self: jit))
    monkeypatch.setattr(kernel_mod, "_current_device", lambda: 0)
    monkeypatch.setattr(kernel_mod, "_current_stream", lambda device: "stream")
    launcher = step.kernel.bind(step.grid, step.constexprs, torch.device("cuda", 0), step.num_warps)
    args = [_Ptr(1024) if isinstance(a, Buf) else a for a in step.args]
    launcher(args)
    launcher(args)
    assert len(jit.calls) == 1 and len(compiled.runs) == 1
    names = [n for n, _ in step.kernel.params]
    grid = tuple(step.grid) + (1,) * (3 - len(step.grid))
    assert compiled.runs[0][:7] == (*grid, "stream", "fn", "meta", None)  # (no launch hook: no metadata)
    full = compiled.runs[0][9:]
    assert len(full) == len(names)
    for name, kind in step.kernel.params:
        value = full[names.index(name)]
        assert (value == step.constexprs[name]) if kind == "constexpr" else (value is not None)
    launcher([_Ptr(1028) if isinstance(a, _Ptr) else a for a in args])  # misaligned: the JIT again
    assert len(jit.calls) == 2 and len(compiled.runs) == 1


@pytest.mark.slow  # torch.compile (inductor) compiles C++ on CPU: tens of seconds
def test_host_overhead_benchmark_reports_both_sides(tmp_path):
    import json
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import host_overhead

    path = tmp_path / "out.json"
    host_overhead.main(["--cases", "x_plus_1", "--calls", "5", "--repeats", "1", "--json", str(path)])
    (row,) = json.loads(path.read_text())["cases"]
    assert row["name"] == "x_plus_1" and row["ember_us"] > 0 and row["torch_compile_us"] > 0
