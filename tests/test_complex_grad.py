"""Gradients through complex values that live only inside externs (FFTs, `abs`/`angle`/`real` of a
complex tensor, ...): each extern's VJP is torch's own derivative of the op, complex cotangents
included (PyTorch's convention: the conjugate Wirtinger derivative times 2), and autodiff's own
handling of complex cotangents (summing the cotangents of a value used twice) runs as torch ops.
Checked against eager autograd on fresh random inputs; a gradient torch has no rule for still
raises clearly."""

import pytest
import torch
from testing import CHAIN_TOLERANCES

import ember

f32, f64 = torch.float32, torch.float64


def grads_match(fn, *shapes, dtype=f32):
    """`ember.compile(fn)` forward and backward of a scalar loss against eager, on fresh inputs."""
    xs = [torch.randn(s, dtype=dtype, requires_grad=True) for s in shapes]
    refs = [x.detach().clone().requires_grad_() for x in xs]
    out, ref = ember.compile(fn)(*xs), fn(*refs)
    rtol, atol = CHAIN_TOLERANCES[dtype]
    torch.testing.assert_close(out, ref, rtol=rtol, atol=atol)
    out.backward()
    ref.backward()
    for x, r in zip(xs, refs):
        assert x.grad is not None
        torch.testing.assert_close(x.grad, r.grad, rtol=rtol, atol=atol)


CASES = {
    "rfft_abs": (lambda x: torch.fft.rfft(x).abs().sum(), [(8,)]),
    "rfft_real_imag": (lambda x: (torch.fft.rfft(x).real * 2 + torch.fft.rfft(x).imag).sum(), [(6,)]),
    "rfft_angle": (lambda x: torch.fft.rfft(x).angle().sum(), [(8,)]),
    "fft_abs_sq": (lambda x: (torch.fft.fft(x).abs() ** 2).sum(), [(3, 8)]),
    "ifft_abs": (lambda x: torch.fft.ifft(x).abs().sum(), [(7,)]),
    "rfft_irfft": (lambda x: (torch.fft.irfft(torch.fft.rfft(x) * 1j, n=8) * torch.arange(8.0)).sum(), [(8,)]),
    "fft2_view_as_real": (lambda x: torch.view_as_real(torch.fft.fft2(x)).sin().sum(), [(4, 4)]),
    "conj": (lambda x: (torch.fft.fft(x).conj() * torch.fft.fft(x.flip(0))).real.sum(), [(5,)]),
    # views of complex values between externs (their VJPs are views of complex cotangents)
    "views": (lambda x: torch.fft.rfft(x).T[1:].reshape(-1).angle().sum(), [(3, 8)]),
    "slice_and_sum": (lambda x: torch.fft.rfft(x)[:, 1:3].real.sum() + torch.fft.rfft(x).sum().abs(), [(3, 8)]),
    "expand": (lambda x: torch.fft.rfft(x).unsqueeze(0).expand(2, -1, -1).abs().sum(), [(3, 8)]),
    "eigvals": (lambda x: torch.linalg.eigvals(x @ x.T + x).abs().sum(), [(3, 3)]),
}


def real_loss(fn):
    """A real scalar loss of `fn`'s (maybe complex) output, with fixed random weights."""
    def loss(x):
        out = fn(x)
        out = torch.view_as_real(out) if out.is_complex() else out
        return (out * torch.linspace(-1, 2, out.numel(), dtype=x.dtype).reshape(out.shape)).sum()
    return loss


# formerly refused (tests/test_op_fixes.py), now torch's gradients
CASES.update({
    "irfft_rfft": (real_loss(lambda x: torch.fft.irfft(torch.fft.rfft(x))), [(3, 8)]),
    "hfft": (real_loss(lambda x: torch.fft.hfft(x)), [(3, 8)]),
    "view_as_real_rfft": (real_loss(lambda x: torch.view_as_real(torch.fft.rfft(x))), [(3, 8)]),
    "stft_abs": (real_loss(lambda x: torch.stft(x, 4, return_complex=True, window=torch.ones(4, dtype=x.dtype)).abs()),
                 [(3, 8)]),
})


@pytest.mark.parametrize("dtype", [f32, f64])
@pytest.mark.parametrize("case", list(CASES))
def test_complex_intermediate_gradients(case, dtype):
    fn, shapes = CASES[case]
    grads_match(fn, *shapes, dtype=dtype)


def test_complex_value_used_twice_accumulates():
    """A complex value with two consumers gets the sum of their (complex) cotangents."""
    def fn(x, w):
        z = torch.fft.rfft(x)
        return (z.abs() * w).sum() + z.angle().sum() + (z * z).real.sum()
    grads_match(fn, (8,), (5,), dtype=f64)
    grads_match(fn, (8,), (5,), dtype=f32)


def test_op_without_derivative_after_complex_values_still_raises():
    """An op torch cannot differentiate stays refused with torch's reason, complex values upstream or not."""
    x = torch.randn(8, requires_grad=True)
    fn = lambda x: torch.igamma(torch.fft.rfft(x).abs() + 1, torch.ones(5)).sum()  # noqa: E731
    with pytest.raises(NotImplementedError, match="derivative for 'igamma: input' is not implemented"):
        fn(x).backward()  # eager refuses too
    with pytest.raises(NotImplementedError, match=r"aten\.igamma\.default\): PyTorch has no derivative"):
        ember.compile(fn)(x).backward()


def test_argmax_of_complex_magnitude_stops_the_gradient():
    """argmax stops the gradient, as in eager: only x.sum()'s path reaches x."""
    x = torch.randn(8, requires_grad=True)
    ember.compile(lambda x: torch.fft.rfft(x).abs().argmax().float() * x.sum())(x).backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, float(torch.fft.rfft(x.detach()).abs().argmax())))


@pytest.mark.parametrize("norm", [None, "ortho"])
def test_complex_output_with_loss_built_outside(norm):
    """A complex output of the compiled function keeps its history: a loss built from it outside gets
    torch's gradient (a complex cotangent enters ember's backward), as in eager."""
    x = torch.randn(3, 8, requires_grad=True)
    xr = x.detach().clone().requires_grad_()
    out = ember.compile(lambda x: torch.fft.rfft(x, norm=norm))(x)
    ref = torch.fft.rfft(xr, norm=norm)
    torch.testing.assert_close(out.detach(), ref.detach())
    assert out.requires_grad
    (out.abs().sum() + out.conj().imag.sum() + x.sum()).backward()
    (ref.abs().sum() + ref.conj().imag.sum() + xr.sum()).backward()
    rtol, atol = CHAIN_TOLERANCES[f32]
    torch.testing.assert_close(x.grad, xr.grad, rtol=rtol, atol=atol)
    with torch.no_grad():
        assert not ember.compile(lambda x: torch.fft.rfft(x))(x).requires_grad
