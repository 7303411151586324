"""Every entry of ember's decomposition table against torch's own kernel.

For each entry the decomposition (a Python function, called directly on CPU tensors) and the op are
run on the same inputs; every output must match (shape, dtype, values), so must the inputs after
the call (batch norm updates running statistics), and so must the gradients: static mode
differentiates the decomposed graph, and the Dynamo backend hands the decomposition's outputs to
torch's backward formulas, so a wrong auxiliary output is as bad as a wrong result. Samples come
from OpInfo (`op_db`, float32): the samples run forward and backward under a dispatch mode that
records every call of a table entry; entries OpInfo does not reach (CompositeImplicitAutograd ops
never reach a dispatch mode) have hand-written samples.
"""

from __future__ import annotations

import functools
import warnings
from collections import defaultdict
from collections.abc import Callable

import pytest
import torch
from torch._C import DispatchKey
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from ember.frontend.decompositions import DECOMPOSITIONS

aten = torch.ops.aten
Call = tuple[tuple, dict]
ENTRIES = sorted(DECOMPOSITIONS, key=str)


def _is_own_kernel(op: torch._ops.OpOverload, fn: Callable) -> bool:
    """Core ATen maps every CompositeImplicitAutograd op to its own C++ kernel: nothing to compare
    (the ops that kernel calls have entries of their own)."""
    return (getattr(getattr(fn, "func", None), "__name__", "") == "_special_op_to_decompose_cia"
            and fn.keywords.get("kernel") is op)


# -- samples -------------------------------------------------------------------------------------


@functools.cache
def _opinfo_calls() -> dict[torch._ops.OpOverload, list[Call]]:
    """Up to 3 recorded calls per table entry, from every float32 OpInfo sample run forward and
    backward (backward formulas call entries such as `native_layer_norm_backward`)."""
    from torch.testing._internal.common_methods_invocations import op_db

    wanted = {op for op, fn in DECOMPOSITIONS.items() if not _is_own_kernel(op, fn)}
    calls: dict[torch._ops.OpOverload, list[Call]] = defaultdict(list)

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if func in wanted and len(calls[func]) < 3:
                calls[func].append(pytree.tree_map_only(torch.Tensor, lambda t: t.detach().clone(), (args, kwargs)))
            return func(*args, **kwargs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for info in op_db:
            if torch.float32 not in info.supported_dtypes("cpu"):
                continue
            try:
                # sample_inputs_func directly: `sample_inputs` reseeds torch and walks the stack per sample
                samples = list(info.sample_inputs_func(info, "cpu", torch.float32, info.supports_autograd))
            except Exception:
                continue
            for s in samples:
                try:
                    with Recorder():
                        out = info(s.input, *s.args, **s.kwargs)
                        outs = [o for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor) and o.requires_grad]
                        ins = [t for t in pytree.tree_leaves((s.input, s.args, s.kwargs))
                               if isinstance(t, torch.Tensor) and t.requires_grad]
                        if outs and ins:
                            torch.autograd.grad(outs, ins, [torch.randn_like(o) for o in outs], allow_unused=True)
                except Exception:  # samples meant to raise, ops without autograd: their calls so far count
                    pass
    return calls


def _r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


def _sdpa_calls() -> list[Call]:
    q, k, v = _r(2, 4, 5, 8), _r(2, 4, 6, 8), _r(2, 4, 6, 8)
    mask = _r(5, 6)
    mask[1] = float("-inf")  # a fully masked row: torch's kernel gives output 0 and logsumexp 0
    return [((q, k, v), {}), ((q, k, v, 0.0, True), {}), ((q, k[:, :, :5], v[:, :, :5], 0.0, True), {"scale": 0.3}),
            ((q, k, v), {"attn_mask": mask}), ((_r(2, 4, 7, 8), k, v, 0.0, True), {}),
            ((q, k[:, :2], v[:, :2]), {}),  # grouped-query attention
            ((q.transpose(1, 2).contiguous().transpose(1, 2), k, v), {})]


def _sdpa_backward_calls() -> list[Call]:
    out = []
    for (q, k, v, *rest), kw in _sdpa_calls():
        causal = rest[1] if len(rest) > 1 else False
        o, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, **kw)
        out.append(((torch.randn_like(o), q, k, v, o, lse, 0.0, causal), kw))
    return out


def _batch_norm_calls() -> list[tuple]:  # (input, weight, bias, running_mean, running_var)
    return [(_r(3, 4, 5), _r(4), _r(4), _r(4), torch.rand(4) + 0.5),
            (_r(6, 2), _r(2), _r(2), _r(2), torch.rand(2) + 0.5)]


def _gpu_batch_norm_backward_calls() -> list[Call]:
    """(input, grad, weight, running stats, saved mean and invstd, eps): cuDNN's and MIOpen's order."""
    out = []
    for x, w, b, rm, rv in _batch_norm_calls():
        _, mean, invstd = aten.native_batch_norm(x, w, b, rm.clone(), rv.clone(), True, 0.1, 1e-5)
        out.append(((x, torch.randn_like(x), w, rm, rv, mean, invstd, 1e-5), {}))
    return out


def _rnn_calls(kind: str, packed: bool) -> list[Call]:
    """nn.RNN/GRU/LSTM's aten call: one layer, and two bidirectional layers (batch first)."""
    out = []
    for layers, bidir, batch_first in ((1, False, False), (2, True, True)):
        mode = {"rnn_relu": "RNN_RELU", "rnn_tanh": "RNN_TANH"}.get(kind, kind.upper())
        m = torch.nn.RNNBase(mode, 3, 4, num_layers=layers, bidirectional=bidir, batch_first=batch_first)
        params = [p.detach() for p in m._flat_weights]
        h = _r(layers * (2 if bidir else 1), 2, 4)
        hx = [h, torch.randn_like(h)] if kind == "lstm" else h
        if packed:  # PackedSequence data: steps of a batch of 2 sequences of lengths 3 and 2
            out.append(((_r(5, 3), torch.tensor([2, 2, 1]), hx, params, True, layers, 0.0, False, bidir), {}))
        else:
            x = _r(2, 3, 3) if batch_first else _r(3, 2, 3)
            out.append(((x, hx, params, True, layers, 0.0, False, bidir, batch_first), {}))
    return out


def _matmul_calls() -> list[Call]:
    shapes = [((3, 4), (4, 5)), ((2, 3, 4), (4,)), ((4,), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 2)), ((4,), (4,))]
    return [((_r(*a), _r(*b)), {}) for a, b in shapes]


def _stft_calls() -> list[Call]:
    w = torch.hann_window(8)
    return [((_r(2, 40), 8, 2, 8, w, True, "reflect", False, None, True), {}),
            ((_r(40), 8), {"hop_length": 3, "center": False, "return_complex": True, "normalized": True})]


def _istft_calls() -> list[Call]:
    spec = torch.stft(_r(2, 40), 8, 2, window=torch.hann_window(8), return_complex=True)
    w = torch.hann_window(8)
    return [((spec, 8, 2, 8, w), {}), ((spec, 8, 2, 8, w, True, False, None, 30), {})]


def _upsample_calls(rank: int, mode: str) -> list[Call]:
    x = _r(2, 3, *[5, 4, 3][:rank])
    size, scales = [7, 6, 5][:rank], [1.7, 0.6, 2.0][:rank]
    if mode == "nearest":
        return [((x, size, None), {}), ((x, None, scales), {})]
    return [((x, size, False, None), {}), ((x, None, True, scales), {}), ((x, [3, 2, 2][:rank], False, None), {})]


def _rms_norm_backward_calls() -> list[Call]:
    x, w = _r(2, 3, 4), _r(4)
    _, rstd = aten._fused_rms_norm(x, [4], w, 1e-5)
    return [((torch.randn_like(x), x, [4], rstd, w, [True, True]), {}), ((torch.randn_like(x), x, [4], rstd, None,
                                                                       [True, False]), {})]


HAND: dict[torch._ops.OpOverload, Callable[[], list[Call]]] = {
    aten._scaled_dot_product_flash_attention_for_cpu.default: _sdpa_calls,
    aten._scaled_dot_product_flash_attention_for_cpu_backward.default: _sdpa_backward_calls,
    aten._safe_softmax.default: lambda: [((torch.where(torch.rand(3, 4, 5) < 0.3, float("-inf"), _r(3, 4, 5))
                                           .index_fill(1, torch.tensor([2]), float("-inf")), d), {}) for d in (1, -1)],
    aten.index_fill.int_Tensor: lambda: [((_r(4, 5), 1, torch.tensor([0, 3, 3, -1]), _r(())), {}),
                                         ((_r(()), 0, torch.tensor([0]), _r(())), {})],
    aten.index_fill.int_Scalar: lambda: [((_r(4, 5), 0, torch.tensor([1, 1, -4]), 2.5), {}),
                                         ((torch.arange(6), 0, torch.tensor([2]), 7), {})],
    aten._fused_rms_norm.default: lambda: [((_r(2, 3, 4), [4], _r(4), 1e-5), {}),
                                           ((_r(2, 3, 4), [3, 4], None, None), {})],
    aten._fused_rms_norm_backward.default: _rms_norm_backward_calls,
    aten._native_batch_norm_legit_functional.default: lambda: [
        ((x, w, b, rm, rv, t, 0.1, 1e-5), {}) for x, w, b, rm, rv in _batch_norm_calls() for t in (True, False)],
    aten._native_batch_norm_legit_no_training.default: lambda: [
        ((x, w, b, rm, rv, 0.1, 1e-5), {}) for x, w, b, rm, rv in _batch_norm_calls()],
    aten.cudnn_batch_norm.default: lambda: [
        ((x, w, b, rm, rv, t, 0.1, 1e-5), {}) for x, w, b, rm, rv in _batch_norm_calls() for t in (True, False)],
    aten.cudnn_batch_norm_backward.default: lambda: [
        (a + (torch.empty(0, dtype=torch.uint8),), kw) for a, kw in _gpu_batch_norm_backward_calls()],
    aten.miopen_batch_norm_backward.default: _gpu_batch_norm_backward_calls,
    aten._reshape_alias.default: lambda: [((_r(3, 4), [2, 6], [6, 1]), {}), ((_r(4, 3).t(), [3, 2, 2], [1, 6, 3]), {})],
    aten._unsafe_index.Tensor: lambda: [((_r(4, 5), [torch.tensor([0, 2, 2]), None]), {}),
                                        ((_r(4, 5), [None, torch.tensor([[1], [3]])]), {})],
    aten._unsafe_index_put.default: lambda: [((_r(4, 5), [torch.tensor([0, 2])], _r(2, 5), False), {}),
                                             ((_r(4, 5), [torch.tensor([1, 1, 3])], _r(3, 5), True), {})],
    aten._upsample_bicubic2d_aa.vec: lambda: _upsample_calls(2, "linear"),
    aten._upsample_bilinear2d_aa.vec: lambda: _upsample_calls(2, "linear"),
    aten._upsample_lanczos2d_aa.vec: lambda: _upsample_calls(2, "linear"),
    aten._upsample_nearest_exact1d.vec: lambda: _upsample_calls(1, "nearest"),
    aten._upsample_nearest_exact2d.vec: lambda: _upsample_calls(2, "nearest"),
    aten._upsample_nearest_exact3d.vec: lambda: _upsample_calls(3, "nearest"),
    aten.upsample_bicubic2d.vec: lambda: _upsample_calls(2, "linear"),
    aten.upsample_linear1d.vec: lambda: _upsample_calls(1, "linear"),
    aten.upsample_trilinear3d.vec: lambda: _upsample_calls(3, "linear"),
    aten.upsample_nearest1d.vec: lambda: _upsample_calls(1, "nearest"),
    aten.upsample_nearest3d.vec: lambda: _upsample_calls(3, "nearest"),
    aten._weight_norm_interface.default: lambda: [((_r(4, 3), _r(4, 1), 0), {}), ((_r(4, 3), _r(1, 3), 1), {})],
    aten.affine_grid_generator.default: lambda: [((_r(2, 2, 3), [2, 3, 4, 5], False), {}),
                                                 ((_r(2, 3, 4), [2, 3, 2, 3, 4], True), {})],
    aten.broadcast_tensors.default: lambda: [(([_r(3, 1), _r(1, 4), _r(())],), {})],
    aten.clamp_max.default: lambda: [((_r(4, 5), 0.3), {}), ((torch.arange(6), 2), {})],
    aten.fill.Tensor: lambda: [((_r(4, 5), _r(())), {})],
    aten.fill.Scalar: lambda: [((_r(4, 5), 1.5), {}), ((torch.arange(6), 3), {})],
    aten.floor_divide.Scalar: lambda: [((_r(4, 5), 0.7), {}), ((torch.arange(-6, 6), 4), {})],
    aten.gru.input: lambda: _rnn_calls("gru", False),
    aten.gru.data: lambda: _rnn_calls("gru", True),
    aten.lstm.input: lambda: _rnn_calls("lstm", False),
    aten.lstm.data: lambda: _rnn_calls("lstm", True),
    aten.rnn_relu.input: lambda: _rnn_calls("rnn_relu", False),
    aten.rnn_relu.data: lambda: _rnn_calls("rnn_relu", True),
    aten.rnn_tanh.input: lambda: _rnn_calls("rnn_tanh", False),
    aten.rnn_tanh.data: lambda: _rnn_calls("rnn_tanh", True),
    aten.hann_window.default: lambda: [((8,), {}), ((1,), {"dtype": torch.float64})],
    aten.hann_window.periodic: lambda: [((8, False), {}), ((7, True), {})],
    aten.isin.Scalar_Tensor: lambda: [((2, torch.tensor([1, 2, 3])), {}),
                                      ((5, torch.tensor([1, 2])), {"invert": True})],
    aten.isin.Tensor_Scalar: lambda: [((torch.tensor([1, 2, 3, 2]), 2), {}),
                                      ((torch.tensor([1.5, 2.0]), 2), {"invert": True})],
    aten.stft.center: _stft_calls,
    aten.istft.default: _istft_calls,
    aten.matmul.default: _matmul_calls,
    aten.norm.Scalar: lambda: [((_r(4, 5), 3), {}), ((_r(4, 5),), {})],
    aten.norm.ScalarOpt_dim_dtype: lambda: [((_r(4, 5), 2, [1], True), {"dtype": torch.float64}),
                                            ((_r(4, 5), None, [0], False), {"dtype": torch.float32})],
    aten.norm.ScalarOpt_dtype: lambda: [((_r(4, 5), 1), {"dtype": torch.float64}),
                                        ((_r(4, 5), None), {"dtype": torch.float32})],
    aten.one_hot.default: lambda: [((torch.tensor([0, 3, 1]), 5), {}), ((torch.tensor([[0, 1], [2, 0]]),), {})],
    aten.pad_sequence.default: lambda: [(([_r(3, 2), _r(1, 2), _r(2, 2)], bf, 0.5, side), {})
                                        for bf, side in ((False, "right"), (True, "left"))],
    aten.resize_as.default: lambda: [((_r(2, 3), _r(3, 2)), {}), ((_r(2, 3), _r(5)), {})],
    aten.special_xlog1py.other_scalar: lambda: [((_r(4, 5), 0.5), {})],
    aten.special_xlog1py.self_scalar: lambda: [((0.5, torch.rand(4, 5)), {})],
    aten.xlogy.Scalar_Other: lambda: [((_r(4, 5), 2.0), {}), ((_r(3), 0.0), {})],
    aten.xlogy.Scalar_Self: lambda: [((2.0, torch.rand(4, 5)), {}), ((0.0, torch.rand(3)), {})],
    aten.squeeze_copy.dims: lambda: [((_r(1, 3, 1, 2), [0, 2]), {}), ((_r(1, 3), [1]), {})],
    aten.unsafe_split_with_sizes.default: lambda: [((_r(5, 3), [2, 3], 0), {}), ((_r(2, 6), [1, 4, 1], 1), {})],
    aten.zero.default: lambda: [((_r(4, 5),), {})],
}

def _cudnn_batch_norm(x, w, b, running_mean, running_var, train, factor, eps):
    out, mean, invstd = aten.native_batch_norm(x, w, b, running_mean, running_var, train, factor, eps)
    if not train:  # cuDNN's inference kernel saves no statistics
        mean, invstd = w.new_zeros(0), w.new_zeros(0)
    return out, mean, invstd, torch.empty(0, dtype=torch.uint8)


def _gpu_batch_norm_backward(x, g, w, rm, rv, sm, sv, eps, reserve=None):
    return aten.native_batch_norm_backward(g, x, w, rm, rv, sm, sv, True, eps, [True, True, True])


def _rms_norm_backward(grad, x, shape, rstd, w, mask):
    """The gradient of CPU `rms_norm` with the eps the samples' rstd came from (1e-5)."""
    x = x.detach().requires_grad_()
    w = None if w is None else w.detach().requires_grad_()
    with torch.enable_grad():
        y = torch.nn.functional.rms_norm(x, shape, w, 1e-5)
    gx, *gw = torch.autograd.grad(y, [x] + ([w] if w is not None else []), grad)
    return gx if mask[0] else None, gw[0] if mask[1] and gw else None


# Kernels that exist only on GPUs (cuDNN, MIOpen, fused RMSNorm's backward): on CPU the reference is
# the CPU op they stand for.
REFERENCE: dict[torch._ops.OpOverload, Callable] = {
    aten.cudnn_batch_norm.default: _cudnn_batch_norm,
    aten.cudnn_batch_norm_backward.default: _gpu_batch_norm_backward,
    aten.miopen_batch_norm_backward.default: _gpu_batch_norm_backward,
    aten._fused_rms_norm_backward.default: _rms_norm_backward,
}


# Random ops: the values depend on how each consumes the generator; compare properties instead.
def _bernoulli_props(out: torch.Tensor, p: torch.Tensor) -> None:
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert abs(out.mean().item() - p.mean().item()) < 0.02  # 40k draws: the standard error is 0.0025


def _dropout_props(outs, x: torch.Tensor, p: float, train: bool) -> None:
    y, mask = outs
    assert mask.dtype == torch.bool
    torch.testing.assert_close(y, x * mask / (1 - p))
    assert abs(mask.float().mean().item() - (1 - p)) < 0.02


RANDOM: dict[torch._ops.OpOverload, tuple[Callable[[], list[Call]], Callable]] = {
    aten.bernoulli.default: (lambda: [((torch.rand(200, 200),), {})], _bernoulli_props),
    aten.native_dropout.default: (lambda: [((_r(200, 200), 0.3, True), {})], _dropout_props),
}
# Ops whose values are undefined (uninitialized memory): only the output metadata is compared.
UNINITIALIZED = {aten.empty_like.default, aten.new_empty.default}

# -- the check -----------------------------------------------------------------------------------

RTOL, ATOL = 1.3e-6, 1e-5           # float32 (assert_close's defaults)
GRAD_RTOL, GRAD_ATOL = 1e-5, 1e-4   # gradients chain several float32 ops


def _copy(call: Call, grad: bool = False, double: bool = False) -> Call:
    def copy(t: torch.Tensor) -> torch.Tensor:
        t = t.detach().clone()
        if double and t.dtype == torch.float32:
            t = t.double()
        return t.requires_grad_() if grad and t.is_floating_point() else t

    return pytree.tree_map_only(torch.Tensor, copy, call)


def _compare(want, got, what: str, rtol: float, atol: float, values: bool = True,
             exact: Callable[[], object] | None = None) -> None:
    """`got` must match torch's `want` leaf by leaf. Where float32 rounding alone separates them
    (a reduction summed in another order over large OpInfo values), `exact()` gives torch's result
    in float64: the decomposition passes if it is at most twice as far from it as torch's kernel,
    plus rounding noise of a few dozen float32 ulps of the result's magnitude (a real defect is
    off by a sizeable fraction of it)."""
    wl, gl = pytree.tree_leaves(want), pytree.tree_leaves(got)
    assert len(wl) == len(gl), f"{what}: {len(gl)} results, torch gives {len(wl)}"
    truth = None
    for i, (w, g) in enumerate(zip(wl, gl)):
        if not isinstance(w, torch.Tensor):
            assert w == g or (w != w and g != g), f"{what} {i}: {g!r}, torch gives {w!r}"
            continue
        assert isinstance(g, torch.Tensor), f"{what} {i}: {type(g).__name__}, torch gives a tensor"
        assert (g.shape, g.dtype) == (w.shape, w.dtype), \
            f"{what} {i}: {g.dtype}{list(g.shape)}, torch gives {w.dtype}{list(w.shape)}"
        if not values:
            continue
        try:
            torch.testing.assert_close(g.detach(), w.detach(), rtol=rtol, atol=atol, equal_nan=True,
                                       msg=lambda m, i=i: f"{what} {i}: {m}")
        except AssertionError:
            if exact is None or not w.is_floating_point():
                raise
            truth = pytree.tree_leaves(exact()) if truth is None else truth
            t = truth[i].detach()
            torch_err, err = _error(w.detach(), t), _error(g.detach(), t)
            noise = 64 * torch.finfo(w.dtype).eps * t.abs().nan_to_num(posinf=0, neginf=0).max().item()
            assert err <= 2 * torch_err + noise, f"{what} {i}: off torch's float64 result by {err:.3g} " \
                                                 f"(torch's float32 kernel: {torch_err:.3g})"


def _error(x: torch.Tensor, exact: torch.Tensor) -> float:
    """Largest distance from the float64 result; a NaN (or inf) where the exact result has none is
    infinitely far."""
    x = x.double()
    same = (x == exact) | (x.isnan() & exact.isnan())
    return torch.where(same, 0, (x - exact).abs().nan_to_num(nan=float("inf"))).max().item() if x.numel() else 0.0


def _run(fn: Callable, call: Call, double: bool = False) -> tuple:
    """fn's result and its tensor inputs after the call (batch norm updates running statistics)."""
    args, kwargs = _copy(call, double=double)
    inputs = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
    return fn(*args, **kwargs), inputs


def _vjp(fn: Callable, call: Call, cotangents: list | str, only: int | None = None, double: bool = False):
    """Gradients of sum(out_i * cotangent_i) w.r.t. the floating inputs (or only the `only`-th), and
    the cotangents used. `cotangents="differentiable"`: random ones for the outputs that require
    grad, None for the others; "all": random ones for every floating output."""
    args, kwargs = _copy(call, grad=True, double=double)
    ins = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.requires_grad]
    if only is not None:
        for j, t in enumerate(ins):
            t.requires_grad_(j == only)
        ins = [ins[only]]
    with torch.enable_grad():
        out = fn(*args, **kwargs)
    outs = [o for o in pytree.tree_leaves(out) if isinstance(o, torch.Tensor) and o.is_floating_point()]
    if isinstance(cotangents, str):
        cotangents = [torch.randn_like(o) if o.requires_grad or cotangents == "all" else None for o in outs]
    cots = [None if c is None else c.to(o.dtype) for o, c in zip(outs, cotangents)]
    pairs = [(o, c) for o, c in zip(outs, cots) if c is not None and o.requires_grad]
    if not pairs:
        return [torch.zeros_like(t) for t in ins], cotangents
    grads = torch.autograd.grad([o for o, _ in pairs], ins, [c for _, c in pairs], allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(ins, grads)], cotangents


def _check_gradients(op, fn, call: Call) -> None:
    """Cotangents go to the outputs torch differentiates; outputs torch declares non-differentiable
    (layer norm's mean and rstd, flash attention's logsumexp) have no gradient to compare. When torch
    differentiates no output at all (a stop-gradient such as detach) the decomposition must not
    either. When torch cannot differentiate some input (a target, running statistics) the inputs
    are tried one at a time."""
    n_float = sum(1 for t in pytree.tree_leaves(call) if isinstance(t, torch.Tensor) and t.is_floating_point())
    for only in [None, *range(n_float)] if n_float > 1 else [None] * n_float:
        try:
            want, cots = _vjp(op, call, "differentiable", only)
        except (RuntimeError, NotImplementedError):  # torch has no derivative here: nothing to match
            continue
        if all(c is None for c in cots):  # torch differentiates none of the outputs: a stop-gradient
            got, _ = _vjp(fn, call, "all", only)
            assert not any(g.any() for g in got), f"{op}: gradient flows where torch stops it"
        else:
            _compare(want, _vjp(fn, call, cots, only)[0], "gradient", GRAD_RTOL, GRAD_ATOL,
                     exact=lambda: _vjp(op, call, cots, only, double=True)[0])
        if only is None:
            return  # every input at once worked: no need to try them one by one


def _is_derivative(op: torch._ops.OpOverload) -> bool:
    """Ops that only occur in backward graphs. ember never differentiates them: static mode and the
    Dynamo backend refuse double backward, and in eager mode autograd differentiates above the
    dispatch mode with torch's formulas. (torch's own formulas for them differentiate the composite,
    e.g. layer norm's backward as if mean and rstd moved with the input, not the op as written.)"""
    return "_backward" in op._schema.name


def check_entry(op: torch._ops.OpOverload, fn: Callable, call: Call) -> None:
    ref = REFERENCE.get(op, op)
    if op in RANDOM:
        props = RANDOM[op][1]
        want, _ = _run(ref, call)
        got, _ = _run(fn, call)
        _compare(want, got, "output", RTOL, ATOL, values=False)
        props(want, *call[0])
        props(got, *call[0])
        return
    values = op not in UNINITIALIZED
    want, want_inputs = _run(ref, call)
    got, inputs = _run(fn, call)
    _compare(want, got, "output", RTOL, ATOL, values, exact=lambda: _run(ref, call, double=True)[0])
    _compare(want_inputs, inputs, "input after the call", RTOL, ATOL, exact=lambda: _run(ref, call, double=True)[1])
    if values and not _is_derivative(op):
        _check_gradients(ref, fn, call)


@pytest.mark.parametrize("op", ENTRIES, ids=str)
def test_decomposition_matches_torch(op: torch._ops.OpOverload) -> None:
    fn = DECOMPOSITIONS[op]
    if _is_own_kernel(op, fn):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(op.name(), DispatchKey.CompositeImplicitAutograd)
        return
    calls = RANDOM[op][0]() if op in RANDOM else HAND.get(op, list)() + _opinfo_calls().get(op, [])
    assert calls, f"no sample reaches {op}: add one to HAND"
    for call in calls:
        check_entry(op, fn, call)


def test_table_holds_no_mutable_ops_and_keeps_stop_gradients():
    assert not [op for op in DECOMPOSITIONS if op._schema.is_mutable]
    assert aten.detach.default not in DECOMPOSITIONS
