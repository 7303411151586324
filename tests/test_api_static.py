"""ember.trace / ember.compile: the StaticGraph object, signature caching, pytree outputs, mutation
write-back, parameters as inputs, extern fallbacks and the errors a user can hit."""

import pytest
import torch
from testing import assert_close, assert_matches, check_static_graph

import ember


def test_trace_returns_a_printable_callable_graph():
    def f(x, y):
        return torch.relu(x @ y) + 1

    x, y = torch.randn(3, 4), torch.randn(4, 2)
    sg = ember.trace(f, x, y)
    assert isinstance(sg, ember.StaticGraph)
    assert isinstance(sg.graph, ember.ir.Graph)
    text = str(sg)
    assert text.startswith("graph(%x: f32[3, 4], %y: f32[4, 2])") and "matmul(%x, %y)" in text and "relu" in text
    assert text == str(sg.graph)
    assert sg.unsupported() == {}
    assert sg.num_kernels == len(sg.kernels) >= 1
    check_static_graph(sg)
    x2, y2 = torch.randn(3, 4), torch.randn(4, 2)  # new inputs, same signature
    assert_close(sg(x2, y2), f(x2, y2))


def test_capture_never_touches_caller_tensors():
    def f(x):
        x.mul_(0)
        return x + 1

    x = torch.randn(4)
    before = x.clone()
    ember.trace(f, x)
    assert torch.equal(x, before)


def test_compile_caches_per_signature():
    calls = []

    def f(x, n):
        calls.append(1)  # runs once per trace, never when a cached graph is reused
        return x * n

    cf = ember.compile(f)
    x = torch.randn(3)
    assert_close(cf(x, 2), x * 2)
    x2 = torch.randn(3)
    assert_close(cf(x2, 2), x2 * 2)
    assert len(cf.cache) == 1 and len(calls) == 1
    cf(torch.randn(4), 2)                        # new shape
    cf(torch.randn(3, dtype=torch.float16), 2)   # new dtype
    assert_close(cf(x, 3), x * 3)                # non-tensor args are constants of the graph
    assert len(cf.cache) == 4 and len(calls) == 4
    assert cf.__name__ == "f"


def test_outputs_keep_pytree_structure():
    def f(x, pair, scale=1.0):
        a, b = pair
        return {"sum": a + b, "list": [x * scale, (x.sum(), "tag", 3)], "none": None}

    x = torch.randn(2, 3)
    pair = (torch.randn(3), torch.randn(2, 3))
    out = assert_matches(f, x, pair, scale=2.0)(x, pair, scale=2.0)
    assert isinstance(out, dict) and isinstance(out["list"], list) and out["list"][1][1:] == ("tag", 3)
    single = ember.compile(lambda x: x * 2)(x)
    assert isinstance(single, torch.Tensor)


def test_outputs_alias_inputs_like_eager():
    # eager returns x itself and views of x; computed outputs (clone, x * 1) never alias x
    # (more cases in tests/test_aliasing.py)
    x = torch.randn(3)
    same, view, cloned, t, times_one = ember.compile(lambda x: (x, x.view(3, 1), x.clone(), x.t(), x * 1))(x)
    assert same is x and view._base is x and t._base is x
    before = x.clone()
    cloned.zero_()
    times_one.zero_()
    assert torch.equal(x, before)
    view.zero_()
    assert torch.equal(x, torch.zeros(3))


def test_closed_over_tensors_are_constants():
    c = torch.randn(3)
    assert_matches(lambda x: x * c + torch.tensor([1.0, 2.0, 3.0]), torch.randn(2, 3))


def test_input_mutation_is_written_back():
    def f(x, y):
        x.add_(1)
        y[0] = y[1] * 2
        return x * y

    assert_matches(f, torch.randn(3, 3), torch.randn(3, 3), mutates=True)


def test_parameters_are_graph_inputs():
    m = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    with torch.no_grad():
        cf = ember.compile(m)
        assert_close(cf(x), m(x))
        sg = cf.graphs[0]
        assert len(sg.graph.inputs) == 3 and sg.lowered.constants == []
        assert "p_weight" in str(sg) and "p_bias" in str(sg)
        m.weight.mul_(2)  # in-place update after compiling
        m.bias.fill_(0.5)
        assert_close(cf(x), m(x))
    assert len(cf.cache) == 1


def test_buffers_are_mutated_in_train_mode():
    m = torch.nn.BatchNorm1d(4)
    ref = torch.nn.BatchNorm1d(4)
    x = torch.randn(8, 4)
    cf = ember.compile(m)
    with torch.no_grad():
        for _ in range(2):
            assert_close(cf(x), ref(x), rtol=1e-4, atol=1e-5)
    assert_close(dict(m.named_buffers()), dict(ref.named_buffers()), rtol=1e-5, atol=1e-6)
    assert int(m.num_batches_tracked) == 2


def test_wrong_argument_count_is_a_type_error():
    def f(x, y):
        return x + y

    cf = ember.compile(f)
    x = torch.randn(2)
    with pytest.raises(TypeError, match="f"):
        cf(x)
    with pytest.raises(TypeError, match="too many positional"):
        cf(x, x, x)
    sg = ember.trace(f, x, x)
    with pytest.raises(TypeError):
        sg(x)
    with pytest.raises(ValueError, match=r"shape \[3\]"):
        sg(x, torch.randn(3))


def test_mixed_devices_are_rejected():
    cf = ember.compile(lambda x, y: x + y)
    with pytest.raises(ValueError, match="cpu.*meta|meta.*cpu"):
        cf(torch.randn(2), torch.randn(2, device="meta"))


def test_autograd_is_never_silently_dropped():
    w = torch.randn(3, requires_grad=True)
    cf = ember.compile(lambda x, w: x * w)
    x = torch.randn(3)
    out = cf(x, w)  # grad mode: a differentiable result (ember's IR autodiff, tests/test_autograd.py)
    assert out.requires_grad
    out.sum().backward()
    assert_close(w.grad, x)
    with torch.no_grad():
        out = cf(x, w)
    assert not out.requires_grad
    assert_close(out, (x * w).detach())


def test_unsupported_ops_fall_back_to_torch():
    def f(x):
        return torch.kthvalue(x, 2, 1).values * 2, torch.sort(x, -1).values + 1, x.exp()

    cf = assert_matches(f, torch.randn(3, 4), externs=("aten.kthvalue.default", "aten.sort.default"))
    assert cf.graphs[0].unsupported() == {"aten.kthvalue.default": 1, "aten.sort.default": 1}


def test_complex_tensors_fall_back_to_torch():
    def f(z, x):
        w = z * z * 1j + 1
        return w.abs() + x, torch.view_as_real(w).sum(-1), w

    z = torch.randn(3, 2, dtype=torch.complex64)
    cf = assert_matches(f, z, torch.randn(3, 2), externs=(
        "aten.mul.Tensor", "aten.add.Tensor", "aten.abs.default", "aten.view_as_real.default"))
    assert cf.graphs[0].unsupported()


def test_data_dependent_programs_are_refused_clearly():
    def f(x):
        return x * 2 if x.sum() > 0 else x

    for fn in (f, lambda x: x * x.sum().item(), lambda x: x[x > 0]):
        with pytest.raises(ember.CaptureError, match="data-dependent"):
            ember.trace(fn, torch.randn(3))


def test_closed_over_tensors_are_read_at_call_time():
    step = torch.tensor(1.0)
    table = torch.ones(3)
    cf = ember.compile(lambda x: x * step + table)
    x = torch.randn(3)
    assert_close(cf(x), x + 1)
    step.fill_(3.0)
    table.mul_(2)
    assert_close(cf(x), x * 3 + 2)
