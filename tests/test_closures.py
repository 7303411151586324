"""What a compiled program reads besides its arguments (frontend/sources.py): tensors reached through
closures, globals and attributes are graph inputs (gradients reach them, in-place updates and
rebindings are seen), and the Python values it reads are guarded (a change re-traces with a reason
naming the value; `ember.trace`'s graph refuses to run)."""

import copy
import types

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ember

W = torch.randn(3, 4)
SCALE = 2.0
CFG = types.SimpleNamespace(shift=0.5)


def _uses_global_tensor(x):
    return x @ W


def _uses_global_float(x):
    return x * SCALE


def _helper(x):
    return x - CFG.shift


def _calls_helper(x):
    return _helper(x).exp()


def _close(a, b):
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# -- tensors -----------------------------------------------------------------------------------------


def test_closed_over_module_gets_gradients():
    lin = nn.Linear(4, 3)
    ref = copy.deepcopy(lin)
    x = torch.randn(5, 4)
    cf = ember.compile(lambda x: torch.tanh(lin(x)).sum())
    out = cf(x)
    out.backward()
    ref_out = torch.tanh(ref(x)).sum()
    ref_out.backward()
    _close(out, ref_out)
    _close(lin.weight.grad, ref.weight.grad)
    _close(lin.bias.grad, ref.bias.grad)
    # a second backward accumulates, as eager's
    cf(x).backward()
    torch.tanh(ref(x)).sum().backward()
    _close(lin.weight.grad, ref.weight.grad)


def test_closed_over_parameter_updates_and_rebinding_are_seen():
    lin = nn.Linear(4, 3)
    cf = ember.compile(lambda x: lin(x))
    x = torch.randn(2, 4)
    _close(cf(x), lin(x))
    with torch.no_grad():
        lin.weight.mul_(-2)                       # in place: same object, new values
    _close(cf(x), lin(x))
    lin.weight = nn.Parameter(torch.randn(3, 4))  # rebinding: a new object
    _close(cf(x), lin(x))
    assert cf.num_recompiles == 0                 # same metadata: an input, not a reason to re-trace
    lin.weight = nn.Parameter(torch.randn(5, 4))  # new shape (eager now fails on the bias's shape...)
    lin.bias = nn.Parameter(torch.randn(5))       # (...until it is replaced too)
    _close(cf(x), lin(x))
    assert cf.num_recompiles == 1 and "lin.weight" in cf.recompile_reasons[0]
    lin = nn.Linear(4, 2)  # noqa: F841  (the closure variable itself rebound: read through the cell)
    out = cf(x)
    assert out.shape == (2, 2) and "closure variable 'lin'" in cf.recompile_reasons[-1]


def test_global_tensor_gradient_update_and_reassignment():
    global W
    w0 = W
    try:
        W = torch.randn(3, 4, requires_grad=True)
        ref = W.detach().clone().requires_grad_()
        x = torch.randn(2, 3)
        cf = ember.compile(_uses_global_tensor)
        out = cf(x)
        out.sum().backward()
        (x @ ref).sum().backward()
        _close(W.grad, ref.grad)
        with torch.no_grad():
            W.add_(1)
        _close(cf(x), x @ W)
        W = torch.randn(3, 4)                     # reassigned, same shape: read at the call
        _close(cf(x), x @ W)
        assert cf.num_recompiles == 0
        W = torch.randn(3, 6)                     # new shape: re-traced, the reason names it
        _close(cf(x), x @ W)
        assert cf.num_recompiles == 1 and "'W'" in cf.recompile_reasons[0]
        assert "float32[3, 4] on cpu -> a tensor float32[3, 6]" in cf.recompile_reasons[0]
    finally:
        W = w0


def test_closed_over_buffer_updated_in_place():
    buf = torch.zeros(3)

    def f(x):
        buf.add_(x)
        return buf * 2

    cf = ember.compile(f)
    ref_buf = torch.zeros(3)
    assert buf.abs().sum() == 0                   # capture does not touch the real tensor
    for _ in range(3):
        x = torch.randn(3)
        out = cf(x)
        ref_buf.add_(x)
        _close(buf, ref_buf)
        _close(out, ref_buf * 2)


def test_plain_tensor_attribute_of_a_module_is_an_input():
    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.mask = torch.ones(4)             # not a buffer: a plain attribute

        def forward(self, x):
            return self.fc(x) * self.mask

    m = Masked()
    cm = ember.compile(m)
    x = torch.randn(2, 4)
    _close(cm(x), m(x))
    m.mask = torch.randn(4)
    _close(cm(x), m(x))


def test_loss_closing_over_class_weights_in_compile_step():
    weights = torch.rand(4) + 0.5
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    ref = copy.deepcopy(model)
    loss_fn = lambda out, y: F.cross_entropy(out, y, weight=weights)  # noqa: E731
    opt, ref_opt = ember.optim.SGD(model.parameters(), lr=0.1), torch.optim.SGD(ref.parameters(), lr=0.1)
    step = ember.compile_step(model, loss_fn, opt)
    for i in range(3):
        if i == 2:
            weights.mul_(2)                       # in place: seen by the next step
        x, y = torch.randn(5, 6), torch.randint(0, 4, (5,))
        loss = step(x, y)
        ref_opt.zero_grad()
        ref_loss = loss_fn(ref(x), y)
        ref_loss.backward()
        ref_opt.step()
        _close(loss, ref_loss.detach())
        for p, q in zip(model.parameters(), ref.parameters()):
            _close(p, q)


def test_dynamic_shapes_with_a_closed_over_module():
    lin = nn.Linear(4, 3)
    ref = copy.deepcopy(lin)
    cf = ember.compile(lambda x: lin(x).relu().sum(), dynamic=True)
    for n in (2, 5):
        x = torch.randn(n, 4)
        cf(x).backward()
        ref(x).relu().sum().backward()
        _close(lin.weight.grad, ref.weight.grad)


# -- guarded Python values ---------------------------------------------------------------------------


def test_global_float_change_recompiles():
    global SCALE
    cf = ember.compile(_uses_global_float)
    x = torch.randn(3)
    try:
        _close(cf(x), x * 2)
        SCALE = 3.0
        _close(cf(x), x * 3)
        assert cf.recompile_reasons == ["global 'SCALE' of module test_closures changed: 2.0 -> 3.0"]
        SCALE = 2.0                               # back: the first graph serves again, no new trace
        _close(cf(x), x * 2)
        assert cf.num_recompiles == 1
    finally:
        SCALE = 2.0


def test_module_float_attribute_change_recompiles():
    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.scale = 0.5

        def forward(self, x):
            return self.fc(x) * self.scale

    m = Scaled()
    cm = ember.compile(m)
    x = torch.randn(2, 3)
    _close(cm(x), m(x))
    m.scale = 4.0
    _close(cm(x), m(x))
    assert len(cm.recompile_reasons) == 1 and "scale" in cm.recompile_reasons[0]
    assert "0.5 -> 4.0" in cm.recompile_reasons[0]
    m.fc.eps_like = 1e-3                          # a new attribute nothing read: no re-trace
    _close(cm(x), m(x))
    assert cm.num_recompiles == 1


def test_closure_cell_change_recompiles():
    k = 1.5

    def f(x):
        return x * k

    cf = ember.compile(f)
    x = torch.randn(3)
    _close(cf(x), f(x))
    k = -2.0  # noqa: F841  (read through f's closure cell)
    _close(cf(x), f(x))
    assert len(cf.recompile_reasons) == 1 and "closure variable 'k'" in cf.recompile_reasons[0]


def test_helper_global_through_a_config_object_recompiles():
    cf = ember.compile(_calls_helper)
    x = torch.randn(3)
    _close(cf(x), _calls_helper(x))
    CFG.shift = -1.0
    try:
        _close(cf(x), _calls_helper(x))
        assert len(cf.recompile_reasons) == 1 and "CFG.shift" in cf.recompile_reasons[0]
    finally:
        CFG.shift = 0.5


def test_default_dtype_change_recompiles():
    cf = ember.compile(lambda x: x + torch.ones(3))
    x = torch.randn(3)
    assert cf(x).dtype == torch.float32
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        out = cf(x)
    finally:
        torch.set_default_dtype(old)
    assert out.dtype == torch.float64
    assert cf.recompile_reasons == ["torch.get_default_dtype() changed: torch.float32 -> torch.float64"]


def test_side_effects_of_the_program_do_not_re_trace():
    calls = []

    def f(x):
        calls.append(1)                           # runs at capture only
        return x + 1

    cf = ember.compile(f)
    for _ in range(3):
        cf(torch.randn(2))
    assert len(calls) == 1 and cf.num_recompiles == 0


def test_trace_refuses_a_stale_graph():
    global SCALE
    x = torch.randn(3)
    sg = ember.trace(_uses_global_float, x)
    _close(sg(x), x * 2)
    SCALE = 5.0
    try:
        with pytest.raises(ValueError, match="global 'SCALE' of module test_closures changed: 2.0 -> 5.0"):
            sg(x)
    finally:
        SCALE = 2.0
    _close(sg(x), x * 2)


def test_tied_weights_untied_later():
    a, b = nn.Linear(4, 4, bias=False), nn.Linear(4, 4, bias=False)
    b.weight = a.weight                           # one tensor at two paths: one graph input
    cf = ember.compile(lambda x: b(a(x)).sum())
    x = torch.randn(3, 4)
    _close(cf(x), b(a(x)).sum())
    b.weight = nn.Parameter(a.weight.detach() * 2)  # untied, same metadata: the two inputs must differ
    _close(cf(x), b(a(x)).sum())
    assert "is no longer the same tensor as" in cf.recompile_reasons[-1]


class _Slotted:
    __slots__ = ("w",)

    def __init__(self):
        self.w = nn.Parameter(torch.randn(3))


def test_slotted_object_attribute_and_unreachable_tensors():
    s = _Slotted()
    x = torch.randn(3)
    out = ember.compile(lambda x: (x * s.w).sum())(x)
    out.backward()
    _close(s.w.grad, x)
    hidden = types.MappingProxyType({"w": nn.Parameter(torch.randn(3))})  # a library object ember does not enter
    with pytest.raises(ember.CaptureError, match="requires grad"):
        ember.compile(lambda x: (x * hidden["w"]).sum())(x)


class _GlobalScaled(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 3)

    def forward(self, x):
        return self.fc(x) * SCALE


def test_module_forward_reading_a_global_recompiles():
    global SCALE
    m = _GlobalScaled()
    cm = ember.compile(m)
    x = torch.randn(2, 3)
    try:
        _close(cm(x), m(x))
        SCALE = -1.0
        _close(cm(x), m(x))
        assert cm.recompile_reasons == ["global 'SCALE' of module test_closures changed: 2.0 -> -1.0"]
    finally:
        SCALE = 2.0
