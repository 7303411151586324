"""ember's decomposition table: which aten ops capture splits into simpler ones, and how.

One table serves static mode (`capture`), the Dynamo backend (AOTAutograd's `decompositions`) and
eager mode (each op captured alone). It is core ATen's table (`torch.export`'s defaults: torch's
decompositions plus every CompositeImplicitAutograd op mapped to its own kernel), plus composites
ember wants as fusable primitives, minus ops the IR has as primitives (the `aten` overloads of
their registry entries, ir/registry.py), with these corrections
(each found by tests/test_decompositions.py, which runs every entry against torch's kernel and
compares every output and the gradients):

- Mutable overloads (in-place, `out=`) are dropped: every ember trace is functionalized above the
  decompositions, so they are never consulted, and several of torch's entries neither write `out`
  nor update `self`.
- `detach` is not decomposed: its no-op decomposition (an alias) would erase the stop-gradient that static
  mode's IR autodiff needs.
- `special_log_ndtr` is not decomposed: torch's decomposition selects between two branches with `where`, and
  the unselected branch overflows, so its gradient is NaN where torch's is finite.
- `_scaled_dot_product_flash_attention_for_cpu` and its backward are not decomposed: they lower to
  the fused `attention` op and its backward kernels (frontend/lower_attention.py; torch's own
  decomposition returns the attention probabilities in the logsumexp slot).
- ember's own versions of ops whose torch decomposition gets an output or a gradient wrong:
  `_safe_softmax` (NaN gradient on fully masked rows), `index_fill` (the
  filled value's gradient counted repeated indices several times; negative indices failed),
  `fill.Tensor` (through `aten.copy`, which autograd cannot differentiate) and `native_group_norm`
  (torch's CPU branch flattens per-channel scale and shift with `as_strided`, which ember runs as an
  extern: 5 launches where ember's is one row kernel), `_native_batch_norm_legit_no_training` (torch's
  calls the mutable `_native_batch_norm_legit`, whose decomposition is dropped, so AOTAutograd's
  inference graph of an eval-mode BatchNorm held a mutable op and the Dynamo backend failed).
- Results that do not depend on an input autograd differentiates (`fill`, `zero`, a `repeat` with no
  elements, `bernoulli`'s draws: `rand < p` goes through a bool) are wrapped in
  `ember::zero_gradient(result, input)` (IR `zero_gradient`): eager's result requires grad (with a
  zero gradient), and the IR's activity analysis would otherwise see a constant.
"""

from __future__ import annotations

import torch
from torch._decomp import core_aten_decompositions, get_decompositions
from torch._prims_common import get_computation_dtype
from torch.fx.experimental.symbolic_shapes import statically_known_true
from torch.utils import _pytree as pytree

from ..ir.ops import scatter as _scatter  # noqa: F401  (registers ember::sort_index)
from ..ir.registry import primitive_aten_ops
from .gradient_ops import no_derivative, zero_gradient

aten = torch.ops.aten

_NEG_INF = float("-inf")


def _safe_softmax(x: torch.Tensor, dim: int, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Softmax whose rows of only -inf give 0 (SDPA's math path with fully masked rows). The softmax
    runs on those rows replaced by zeros, so its gradient there is finite (and then discarded by the
    `where`): torch's decomposition differentiates the softmax of -inf rows and gets NaN."""
    masked = (x == _NEG_INF).all(dim, keepdim=True)
    out = torch.softmax(torch.where(masked, 0, x), dim, dtype=dtype)
    return torch.where(masked, 0, out)


def _fill_tensor(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`x`'s shape filled with the 0-dim `value`, as an expand: torch's decomposition copies with
    `aten.copy`, which autograd cannot differentiate (value's gradient is the sum of x's)."""
    torch._check(value.dim() == 0, lambda: f"fill only supports 0-dimension value tensor but got {value.dim()}")
    return zero_gradient(value.to(x.dtype).expand(x.shape).clone(), x)


def _fill_scalar(x: torch.Tensor, value) -> torch.Tensor:
    return zero_gradient(torch.full_like(x, value), x)


def _zero(x: torch.Tensor) -> torch.Tensor:
    return zero_gradient(torch.zeros_like(x), x)


def _repeat(x: torch.Tensor, repeats) -> torch.Tensor:
    """torch's decomposition, attached to `x` when the result has no elements (then it is an `empty`)."""
    out = _TORCH_REPEAT(x, repeats)
    return zero_gradient(out, x) if statically_known_true(out.numel() == 0) else out


def _index_fill(x: torch.Tensor, dim: int, index: torch.Tensor, value) -> torch.Tensor:
    """`x` with the positions `index` along `dim` set to `value`, as a `where` over a mask of the
    positions: a position listed twice is still filled once, so `value`'s gradient counts it once
    (torch's decomposition expands `value` per index entry and copies it in)."""
    n = x.size(dim) if x.dim() else 1
    idx = index.reshape(-1)
    idx = torch.where(idx < 0, idx + n, idx)
    # eager's IndexError for an index out of range: the scatters' checked sort (the mask does not
    # depend on the order of the indices)
    idx, _ = torch.ops.ember.sort_index(idx, [index.reshape(-1)], [-n], [n], [dim if x.dim() else 0], True)
    hit = (torch.arange(n, device=x.device).unsqueeze(1) == idx.unsqueeze(0)).any(1)
    shape = [1] * x.dim()
    if x.dim():
        shape[dim] = n
    if not isinstance(value, torch.Tensor):
        value = torch.scalar_tensor(value, dtype=x.dtype, device=x.device)
    return torch.where(hit.reshape(shape), value.to(x.dtype), x)


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                                 attn_mask: torch.Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                                 scale: float | None = None, enable_gqa: bool = False):
    """`F.scaled_dot_product_attention` captured as torch's CPU flash op whatever the device: the meta
    and CUDA dispatchers pick other kernels (the math path decomposes into a dozen ops), the CPU flash
    op lowers to the fused `attention` (frontend/lower_attention.py). Called by capture's
    TorchFunctionMode (frontend/capture_mode.py); NotImplemented (torch's composite runs, and raises
    eager's errors) for dropout, other ranks, a mask with is_causal, heads that do not group."""
    qkv = (query, key, value)
    if dropout_p or any(t.dim() != 4 for t in qkv) or len({t.dtype for t in qkv}) != 1 \
            or not query.is_floating_point() or (attn_mask is not None and is_causal):
        return NotImplemented
    h, hk = query.size(1), key.size(1)
    if hk != value.size(1) or (h != hk and (not enable_gqa or h % hk)):
        return NotImplemented
    if attn_mask is not None and (attn_mask.dim() > 4 or attn_mask.dtype not in (torch.bool, query.dtype)):
        return NotImplemented
    return aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, 0.0, is_causal, attn_mask=attn_mask,
                                                             scale=scale)[0]


def _native_group_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, n: int, c: int,
                       hxw: int, group: int, eps: float):
    """GroupNorm as one row reduction: the input viewed as (N, G, C/G, HxW), mean and biased variance
    over the last two dims, the affine applied per channel in that same view (every value is a row
    or a tile of it, so fusion makes it one kernel). torch's decomposition (its CPU branch) folds the
    statistics into per-(N, C) scale and shift and flattens them with `as_strided`, which ember runs
    as an extern: 5 launches. Mean and rstd, which torch's backward reads, are (N, G) in the input
    dtype, or float32 when a half input has float32 parameters (torch's mixed-type CPU kernel)."""
    torch._check(x.ndim >= 2, lambda: f"Expected at least 2 dimensions for input tensor but received {x.ndim}")
    torch._check(c % group == 0, lambda: "Expected number of channels in input to be divisible by num_groups, "
                 f"but got input of shape {x.shape} and num_groups = {group}")
    cpg = c // group
    # converted after the view and before the view back: a conversion over the input's own shape
    # would be a kernel of its own
    xr = x.reshape(n, group, cpg, hxw).to(get_computation_dtype(x.dtype))
    var, mean = torch.var_mean(xr, dim=[2, 3], unbiased=False, keepdim=True)
    rstd = torch.rsqrt(var + eps)
    out = (xr - mean) * rstd
    # parameters expanded to the tile before they meet it, so a half parameter's conversion is a
    # tile op in the row kernel rather than a kernel over its own (1, G, C/G, 1) shape
    if weight is not None:
        out = out * weight.reshape(1, group, cpg, 1).expand(xr.shape)
    if bias is not None:
        out = out + bias.reshape(1, group, cpg, 1).expand(xr.shape)
    params = [t.dtype for t in (weight, bias) if t is not None]
    mixed = x.dtype in (torch.float16, torch.bfloat16) and params and all(d == torch.float32 for d in params)
    stats = torch.float32 if mixed else x.dtype
    return out.to(x.dtype).reshape(x.shape), mean.reshape(n, group).to(stats), rstd.reshape(n, group).to(stats)


def instance_norm(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                  running_mean: torch.Tensor | None, running_var: torch.Tensor | None, use_input_stats: bool,
                  momentum: float, eps: float, cudnn_enabled: bool):
    """`torch.instance_norm` as one row reduction: GroupNorm with one channel per group (the input viewed
    as (N, C, 1, HxW), as `_native_group_norm`), the affine applied in the row kernel. torch's composite
    repeats weight and bias per sample (`expand` + `clone`: two copy kernels before the row kernel) and
    runs batch norm over per-sample copies of the running statistics. It is C++
    (CompositeImplicitAutograd), so make_fx never sees it: capture calls this in its place
    (frontend/capture_mode.py).

    Running statistics, as torch's composite updates them: each sample's statistics blended into a
    copy of the running ones, the copies averaged over the batch, i.e. `(1 - momentum) * running +
    momentum * mean over N` of the per-(n, c) mean and unbiased variance (from the row kernel's
    statistics, through a stop-gradient: eager records no history for them). Without input
    statistics (eval) the input is normalized by the running ones: pointwise."""
    if (running_mean is None) != (running_var is None):  # eager's batch norm kernel checks it, not its decomposition
        raise ValueError("running_mean and running_var must either both be None or neither be None")
    if x.numel() == 0 or x.ndim < 2:
        return NotImplemented
    n, c = x.shape[0], x.shape[1]
    hxw = x.numel() // (n * c)
    acc = get_computation_dtype(x.dtype)
    if not use_input_stats:
        if running_mean is None:
            return NotImplemented  # torch's composite raises
        return _normalize_by_running_stats(x, weight, bias, running_mean, running_var, eps)
    if running_mean is None:
        return _native_group_norm(x, weight, bias, n, c, hxw, c, eps)[0]
    if hxw < 2:  # an unbiased variance of one element: left to torch's composite
        return NotImplemented
    xr = x.reshape(n, c, 1, hxw).to(acc)
    var, mean = torch.var_mean(xr, dim=[2, 3], unbiased=False, keepdim=True)
    out = (xr - mean) * torch.rsqrt(var + eps)
    if weight is not None:
        out = out * weight.reshape(1, c, 1, 1).expand(xr.shape)
    if bias is not None:
        out = out + bias.reshape(1, c, 1, 1).expand(xr.shape)
    for running, stat in ((running_mean, mean), (running_var, var * (hxw / (hxw - 1)))):
        batch = stat.detach().reshape(n, c).mean(0)
        running.copy_(((1 - momentum) * running.to(acc) + momentum * batch).to(running.dtype))
    return out.to(x.dtype).reshape(x.shape)


def _normalize_by_running_stats(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                                running_mean: torch.Tensor, running_var: torch.Tensor, eps: float) -> torch.Tensor:
    """Eval-mode instance norm: `(x - running_mean) / sqrt(running_var + eps)` per channel, then the
    affine. Every per-channel value is expanded to the input's shape before it meets another, so the
    whole expression is one pointwise kernel (a `rsqrt` over (C,) alone would be a kernel of its own)."""
    acc = get_computation_dtype(x.dtype)
    shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)

    def per_channel(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(shape).expand(x.shape).to(acc)

    out = (x.to(acc) - per_channel(running_mean)) * torch.rsqrt(per_channel(running_var) + eps)
    if weight is not None:
        out = out * per_channel(weight)
    if bias is not None:
        out = out + per_channel(bias)
    return out.to(x.dtype)


def functional_instance_norm(x: torch.Tensor, running_mean: torch.Tensor | None = None,
                             running_var: torch.Tensor | None = None, weight: torch.Tensor | None = None,
                             bias: torch.Tensor | None = None, use_input_stats: bool = True, momentum: float = 0.1,
                             eps: float = 1e-5):
    """`F.instance_norm` (the call a TorchFunctionMode sees first), with its size check."""
    if use_input_stats:
        torch.nn.functional._verify_spatial_size(x.size())
    return instance_norm(x, weight, bias, running_mean, running_var, use_input_stats, momentum, eps, False)


_TORCH_REPEAT = get_decompositions([aten.repeat.default])[aten.repeat.default]
_TORCH_LOG_SOFTMAX = get_decompositions([aten._log_softmax.default])[aten._log_softmax.default]
_TORCH_BERNOULLI = get_decompositions([aten.bernoulli.default])[aten.bernoulli.default]


def _bernoulli(x: torch.Tensor, *, generator=None) -> torch.Tensor:
    """torch's decomposition (`rand < x`, through a bool), attached to `x`: eager's result requires grad
    with a zero gradient, so a parameter reached only through it still gets a `.grad` (that an
    optimizer's weight decay and momentum act on: compile_step, api/train.py)."""
    return zero_gradient(_TORCH_BERNOULLI(x, generator=generator), x)


def _underivable(op: str, name: str):
    """aten::`name` by torch's decomposition, each floating input attached with `ember::no_derivative`:
    torch has no derivative for it (its backward raises), while the decomposition's ops have one (a
    silent zero); so a gradient that must reach an input raises here too."""
    table = get_decompositions([op])
    decomposed = table[op]

    def underivable(*args, **kwargs):
        out = decomposed(*args, **kwargs)
        for x in pytree.tree_leaves((args, kwargs)):
            if isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex()):
                out = no_derivative(out, x, name)
        return out

    return underivable


def _log_softmax(x: torch.Tensor, dim: int, half_to_float: bool) -> torch.Tensor:
    """torch's decomposition, `(x - max) - log(sum(exp(x - max)))` in the computation dtype, with the
    max detached. log_softmax does not depend on the max, and eager's backward does not
    differentiate it (`_log_softmax_backward_data`: g - exp(y) * sum(g)); the IR's amax VJP would
    (ties counted against x, zero up to rounding): a second pass over the row in every backward.
    Detached, the backward is one pointwise pass over the row (cross-entropy's softmax - onehot)."""
    if x.dim() == 0 or x.shape[dim] == 0:
        return _TORCH_LOG_SOFTMAX(x, dim, half_to_float)
    result_dtype = x.dtype
    x = x.contiguous().to(get_computation_dtype(x.dtype))
    shifted = x - torch.amax(x, dim, keepdim=True).detach()
    result = shifted - torch.log(torch.sum(torch.exp(shifted), dim, keepdim=True))
    return result if half_to_float else result.to(result_dtype)

def _batch_norm_no_training(input, weight, bias, running_mean, running_var, momentum, eps):
    """Eval-mode batch norm, functional. torch's decomposition calls the mutable
    `_native_batch_norm_legit` (training=False, nothing written), which the table drops (mutable ops'
    decompositions are dropped): it then reached AOTAutograd's inference graphs whole, and
    `torch.compile(backend="ember")` of a BatchNorm model in eval under no_grad failed."""
    from torch._decomp.decompositions import native_batch_norm_helper

    out, mean, rstd, _, _ = native_batch_norm_helper(input, weight, bias, running_mean, running_var, False,
                                                     momentum, eps, True)
    return out, mean, rstd


# ember's own decompositions (see the module doc for why each replaces torch's).
_EMBER = {
    aten._native_batch_norm_legit_no_training.default: _batch_norm_no_training,
    aten._safe_softmax.default: _safe_softmax,
    aten.fill.Tensor: _fill_tensor,
    aten.fill.Scalar: _fill_scalar,
    aten.zero.default: _zero,
    aten.repeat.default: _repeat,
    aten.bernoulli.default: _bernoulli,
    aten.index_fill.int_Scalar: _index_fill,
    aten.index_fill.int_Tensor: _index_fill,
    aten.native_group_norm.default: _native_group_norm,
    aten._log_softmax.default: _log_softmax,
    aten.heaviside.default: _underivable(aten.heaviside.default, "heaviside"),
    aten.floor_divide.default: _underivable(aten.floor_divide.default, "floor_divide"),
    aten._chunk_cat.default: _underivable(aten._chunk_cat.default, "_chunk_cat"),
}


def _decomposition_table() -> dict:
    table = dict(core_aten_decompositions())
    # Composites that core ATen keeps but ember wants as primitives it can fuse.
    table.update(get_decompositions([
        aten.native_layer_norm, aten._softmax, aten._log_softmax, aten.native_batch_norm,
        aten._native_batch_norm_legit, aten._native_batch_norm_legit_functional,
        aten._native_batch_norm_legit_no_training, aten.native_group_norm, aten.native_dropout,
        aten.hardtanh, aten.leaky_relu, aten.elu, aten.isinf, aten.repeat, aten.clamp.Tensor,
    ]))
    # The aten ops IR primitives are lowered from (their registry entries' `aten`: silu, gelu,
    # softplus, ...) must not be decomposed further, nor those ember lowers to matmul; detach is the
    # stop-gradient of static mode's autodiff; log_ndtr's decomposition has NaN gradients; index_add's
    # (an index_put) wraps negative indices, which eager's index_add refuses, index_copy's too
    # (frontend/lower_scatter.py);
    # upsample_linear1d's ignores torch's copy where out == in and a scale is given (frontend/lower_interpolate.py).
    for op in primitive_aten_ops():
        table.pop(op, None)
    for op in (aten.mv, aten.dot, aten.addmm, aten.baddbmm, aten.embedding, aten.detach, aten.special_log_ndtr,
               aten.index_add, aten.index_copy, aten.upsample_linear1d,
               aten._scaled_dot_product_flash_attention_for_cpu,  # the fused attention op (lower_attention.py)
               aten._scaled_dot_product_flash_attention_for_cpu_backward):
        for overload in op.overloads():
            table.pop(getattr(op, overload), None)
    table = {op: fn for op, fn in table.items() if not op._schema.is_mutable}
    table.update(_EMBER)
    return table


DECOMPOSITIONS = _decomposition_table()
