"""Random steps of the ops CNN and language-model training runs on (tests/programs.py, step kind "nn").

Each drawer gets the hypothesis `draw`, the program's value pool and the operand `a` (a `Val`), and
returns `(line, exact)`: a valid call on pool values with random valid arguments (or None where the
operand does not fit), `exact` when the result is bit-for-bit eager's (gather, pooling maxima and
their indices of an exact operand). Weights, biases and sources are slices of other float pool
tensors where one is large enough (so gradients reach them), else constants; index tensors are
literals in range (or an int pool tensor `% n`). Sizes stay tiny: the Triton interpreter runs one
program instance per ~1 ms.

The conv / pool / interpolate / norm / attention operands are the pool tensor itself, viewed as
(N, C, L) or (N, C, H, W) (`[None]` adds a batch dim, channels_last now and then). batch_norm in
training mode updates running statistics: in forward programs those are new program inputs (via
`new_input`), so the caller's tensors are compared after the call; in gradient programs constants.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from hypothesis import strategies as st

F = "torch.nn.functional"
MAX_NUMEL = 600  # operands larger than this are left to the other step kinds


def _numel(shape) -> int:
    return math.prod(shape)


def _floats(pool, dtype) -> list:
    return [v for v in pool if v.dtype == dtype and v.shape and _numel(v.shape) > 0]


def _const(n: int, a, lo: float = -1.0, hi: float = 1.0) -> str:
    """n values in [lo, hi] of `a`'s dtype, spelled `a.dtype`: the float64 reference run
    (program_checks `wide`) computes them in float64 too."""
    return f"torch.linspace({lo}, {hi}, {n}, dtype={a.name}.dtype)"


def _param(draw, pool, shape: tuple[int, ...], a, scale: float = 1.0) -> str:
    """A weight of `shape`: the first elements of a float pool tensor of the dtype (gradients flow
    to it), or a constant."""
    n = _numel(shape)
    big = [v for v in _floats(pool, a.dtype) if n <= _numel(v.shape) <= 64 * max(n, 1)]
    if big and draw(st.booleans()):
        v = draw(st.sampled_from(big))
        src = f"{v.name}.reshape(-1)[:{n}].reshape({list(shape)})"
    else:
        src = f"{_const(n, a)}.reshape({list(shape)})"
    return src if scale == 1.0 else f"{src} * {scale:.4g}"


def _index(draw, n: int, shape: tuple[int, ...], pool=None) -> str:
    """An int64 index tensor of `shape`, values in [0, n): a literal, or an int pool tensor % n."""
    if pool is not None and n > 0:
        ints = [v for v in pool if not v.dtype.is_floating_point and v.dtype != torch.bool and v.shape == shape]
        if ints and draw(st.booleans()):
            return f"({draw(st.sampled_from(ints)).name} % {n}).long()"
    k = _numel(shape)
    if n <= 0 and k > 0:
        n = 1  # out of range (eager raises): only reached by shapes the caller did not check
    vals = draw(st.lists(st.integers(0, max(n - 1, 0)), min_size=k, max_size=k))
    return f"torch.tensor({vals}, dtype=torch.long).reshape({list(shape)})"


def _spatial_input(draw, name: str, shape: tuple[int, ...], two_d: bool) -> tuple[str, tuple[int, ...]] | None:
    """`name` as a batched (N, C, L) (two_d False) or (N, C, H, W) tensor: expression and shape."""
    r, want = len(shape), 4 if two_d else 3
    if r > want or r < 1:
        return None
    expr, s = name, tuple(shape)
    while len(s) < want:
        expr, s = f"{expr}[None]", (1,) + s
    if two_d and r == 4 and draw(st.integers(0, 3)) == 0:
        expr = f"{expr}.contiguous(memory_format=torch.channels_last)"
    return expr, s


def conv(draw, pool, a) -> tuple[str, bool] | None:
    two_d = draw(st.booleans())
    got = _spatial_input(draw, a.name, a.shape, two_d)
    if got is None:
        return None
    x, s = got
    c, spatial = s[1], s[2:]
    if c == 0:
        return None
    groups = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
    cout = groups * draw(st.integers(1, 2))
    ks, strides, pads, dils = [], [], [], []
    for d in spatial:
        k, st_ = draw(st.integers(1, 3)), draw(st.integers(1, 2))
        p, dil = draw(st.integers(0, 1)), draw(st.integers(1, 2))
        if (d + 2 * p - dil * (k - 1) - 1) < 0:
            k, dil = 1, 1
        ks.append(k)
        strides.append(st_)
        pads.append(p)
        dils.append(dil)
    w = _param(draw, pool, (cout, c // groups, *ks), a, 1 / max(1, c // groups * _numel(ks)))
    bias = draw(st.sampled_from(["None", "const", "pool"]))
    b = "None" if bias == "None" else _param(draw, pool if bias == "pool" else [], (cout,), a)
    padding = "'same'" if all(v == 1 for v in strides) and draw(st.integers(0, 4)) == 0 else tuple(pads)
    op = "conv2d" if two_d else "conv1d"
    return (f"{F}.{op}({x}, {w}, {b}, stride={tuple(strides)}, padding={padding}, dilation={tuple(dils)}, "
            f"groups={groups})"), False


def pool2d(draw, pool, a) -> tuple[str, bool] | None:
    two_d = len(a.shape) >= 3 or draw(st.booleans())
    got = _spatial_input(draw, a.name, a.shape, two_d)
    if got is None:
        return None
    x, s = got
    kind = draw(st.sampled_from(["max", "max", "avg", "avg", "adaptive_avg", "adaptive_max"]))
    nd = 2 if two_d else 1
    if kind.startswith("adaptive"):
        size = tuple(draw(st.integers(1, 4)) for _ in range(nd))
        if kind == "adaptive_max":
            return f"{F}.adaptive_max_pool{nd}d({x}, {size})", a.exact
        return f"{F}.adaptive_avg_pool{nd}d({x}, {size})", False
    k = tuple(draw(st.integers(1, 3)) for _ in range(nd))
    stride = draw(st.sampled_from(["None", tuple(draw(st.integers(1, 2)) for _ in range(nd))]))
    pad = tuple(draw(st.integers(0, kk // 2)) for kk in k)
    ceil = draw(st.booleans())
    if kind == "max":
        dil = tuple(draw(st.integers(1, 2)) for _ in range(nd))
        idx = draw(st.sampled_from(["", "", "[0]", "[1]"])) if a.exact else ""
        ret = ", return_indices=True" if idx else ""
        return (f"{F}.max_pool{nd}d({x}, {k}, stride={stride}, padding={pad}, dilation={dil}, ceil_mode={ceil}"
                f"{ret}){idx}"), a.exact
    cip = draw(st.booleans())
    div = draw(st.sampled_from([None, None, 1, 3])) if nd == 2 else None
    extra = f", divisor_override={div}" if div else ""
    return (f"{F}.avg_pool{nd}d({x}, {k}, stride={stride}, padding={pad}, ceil_mode={ceil}, "
            f"count_include_pad={cip}{extra})"), False


def interpolate(draw, pool, a) -> tuple[str, bool] | None:
    two_d = len(a.shape) >= 3 or draw(st.booleans())
    got = _spatial_input(draw, a.name, a.shape, two_d)
    if got is None:
        return None
    x, s = got
    mode = draw(st.sampled_from(["nearest", "nearest", "linear", "nearest-exact"]))
    if mode == "linear" and two_d:
        mode = draw(st.sampled_from(["bilinear", "bilinear", "bicubic"]))
    nd = 2 if two_d else 1
    if draw(st.booleans()):
        how = f"size={tuple(draw(st.integers(1, 6)) for _ in range(nd))}"
    else:
        how = f"scale_factor={draw(st.sampled_from([2, 0.5, 1.5, 3]))}"
    ac = f", align_corners={draw(st.booleans())}" if mode in ("linear", "bilinear", "bicubic") else ""
    exact = a.exact and mode.startswith("nearest")
    return f"{F}.interpolate({x}, {how}, mode='{mode}'{ac})", exact


def embedding(draw, pool, a) -> tuple[str, bool] | None:
    if not a.shape or a.shape[-1] == 0 or _numel(a.shape) == 0:
        return None
    w = a.name if len(a.shape) == 2 else f"{a.name}.reshape(-1, {a.shape[-1]})"
    v = _numel(a.shape) // a.shape[-1]
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=1, max_size=2)))
    pad = draw(st.sampled_from([None, None, draw(st.integers(-v, v - 1))]))
    extra = f", padding_idx={pad}" if pad is not None else ""
    return f"{F}.embedding({_index(draw, v, shape, pool)}, {w}{extra})", a.exact


def loss(draw, pool, a) -> tuple[str, bool] | None:
    s = a.shape
    if not s or len(s) > 3 or s[1 if len(s) >= 2 else 0] == 0:
        return None
    cdim = 1 if len(s) >= 2 else 0
    c = s[cdim]
    tshape = tuple(d for i, d in enumerate(s) if i != cdim)
    nll = draw(st.integers(0, 2)) == 0
    reduction = draw(st.sampled_from(["mean", "sum", "none"]))
    args = [f"reduction='{reduction}'"]
    if draw(st.booleans()):
        args.append(f"weight={_const(c, a, 0.5, 1.5)}")
    if not nll and draw(st.integers(0, 3)) == 0:  # class probabilities as the target
        target = f"torch.softmax({_const(_numel(s), a)}.reshape({list(s)}), {cdim})"
    else:
        ignore = draw(st.sampled_from([None, -100, draw(st.integers(0, c - 1))]))
        target = _index(draw, c, tshape)
        if ignore is not None:
            k = _numel(tshape)
            mask = draw(st.lists(st.booleans(), min_size=k, max_size=k))
            target = (f"torch.where(torch.tensor({mask}).reshape({list(tshape)}), {ignore}, {target})")
            if ignore != -100:
                args.append(f"ignore_index={ignore}")
    if not nll and draw(st.booleans()):
        args.append(f"label_smoothing={draw(st.sampled_from([0.1, 0.3]))}")
    if nll:
        return f"{F}.nll_loss(torch.log_softmax({a.name}, {cdim}), {target}, {', '.join(args)})", False
    return f"{F}.cross_entropy({a.name}, {target}, {', '.join(args)})", False


def indexing(draw, pool, a) -> tuple[str, bool] | None:
    s, r = a.shape, len(a.shape)
    if not s:
        return None
    d = draw(st.integers(0, r - 1))
    op = draw(st.sampled_from(["gather", "scatter_add", "index_add", "index_select", "getitem"]))
    n = s[d]
    if op in ("gather", "scatter_add"):
        ishape = tuple(draw(st.integers(0, dd)) if i != d or op == "scatter_add" else draw(st.integers(0, 4))
                       for i, dd in enumerate(s))
        if n == 0 and _numel(ishape) > 0:
            return None
        idx = _index(draw, n, ishape)
        if op == "gather":
            return f"torch.gather({a.name}, {d}, {idx})", a.exact
        srcs = [v for v in pool if v.shape == s and v.dtype == a.dtype]
        # src cut to the index's shape: eager's backward of a larger src fails (ScatterAddBackward0
        # returns the gradient in the index's shape)
        src = f"{draw(st.sampled_from(srcs)).name}[{', '.join(f':{k}' for k in ishape)}]"
        target = draw(st.sampled_from([f"torch.zeros_like({a.name})", f"{a.name} * 0.5"]))
        return f"({target}).scatter_add({d}, {idx}, {src})", False
    k = draw(st.integers(0, 4))
    if n == 0 and k > 0:
        return None
    idx = _index(draw, n, (k,))
    if op == "index_select":
        return f"{a.name}.index_select({d}, {idx})", a.exact
    if op == "getitem":
        return f"{a.name}[{':, ' * d}{idx}]", a.exact
    idx2 = _index(draw, n, (k,))
    alpha = draw(st.sampled_from([1, 2, -0.5]))
    exact_alpha = alpha == 1 and not a.dtype.is_floating_point
    return f"{a.name}.index_add({d}, {idx}, {a.name}.index_select({d}, {idx2}), alpha={alpha})", exact_alpha


def join(draw, pool, a) -> tuple[str, bool] | None:
    s, r = a.shape, len(a.shape)
    if not s:
        return None
    d = draw(st.integers(-r, r - 1))
    if draw(st.booleans()):
        same = [v for v in pool if v.shape == s]
        b = draw(st.sampled_from(same))
        return f"torch.stack([{a.name}, {b.name}, {a.name}], {draw(st.integers(-r - 1, r))})", a.exact and b.exact
    fits = [v for v in pool if len(v.shape) == r and all(x == y for i, (x, y) in enumerate(zip(s, v.shape))
                                                          if i != d % r)]
    bs = draw(st.lists(st.sampled_from(fits), min_size=1, max_size=3))
    return f"torch.cat([{a.name}, {', '.join(b.name for b in bs)}], {d})", a.exact and all(b.exact for b in bs)


def norm(draw, pool, a, new_input: Callable[[tuple[int, ...], torch.dtype], str] | None) -> tuple[str, bool] | None:
    s, r = a.shape, len(a.shape)
    kind = draw(st.sampled_from(["layer_norm", "group_norm", "batch_norm", "batch_norm"]))
    if kind == "layer_norm":
        if r == 0:
            return None
        ns = s[-draw(st.integers(1, min(2, r))):]
        affine = ""
        if draw(st.booleans()):
            affine = f", {_param(draw, pool, ns, a)}, {_param(draw, pool, ns, a)}"
        return f"{F}.layer_norm({a.name}, {tuple(ns)}{affine}, eps=1e-3)", False
    if r < 2 or s[1] == 0:
        return None
    c = s[1]
    affine = ""
    if draw(st.booleans()):
        affine = f", weight={_param(draw, pool, (c,), a)}, bias={_param(draw, pool, (c,), a)}"
    if kind == "group_norm":
        g = draw(st.sampled_from([g for g in range(1, c + 1) if c % g == 0]))
        return f"{F}.group_norm({a.name}, {g}{affine}, eps=1e-3)", False
    momentum = draw(st.sampled_from([0.1, 0.5]))
    training = draw(st.integers(0, 3)) > 0
    if not training:  # eval: normalizes by (positive) running statistics
        stats = f"{_const(c, a, -0.5, 0.5)}, {_const(c, a, 0.5, 2.0)}"
    elif new_input is not None and draw(st.booleans()):  # running stats the caller sees updated
        stats = f"{new_input((c,), a.dtype)}, {new_input((c,), a.dtype)}"
    elif draw(st.booleans()):
        stats = "None, None"
    else:
        stats = f"torch.zeros({c}, dtype={a.name}.dtype), torch.ones({c}, dtype={a.name}.dtype)"
    return (f"{F}.batch_norm({a.name}, {stats}{affine}, training={training}, momentum={momentum}, eps=1e-3)"), False


def attention(draw, pool, a) -> tuple[str, bool] | None:
    s, r = a.shape, len(a.shape)
    if r < 2 or r > 4 or s[-1] == 0:
        return None
    q, L, e = a.name, s[-2], s[-1]
    kv = [v for v in pool if len(v.shape) == r and v.shape[:-2] == s[:-2] and v.shape[-1] == e
          and v.dtype == a.dtype]
    k = draw(st.sampled_from(kv))
    v = draw(st.sampled_from([x for x in pool if len(x.shape) == r and x.shape[:-1] == k.shape[:-1]
                              and x.dtype == a.dtype]))
    S = k.shape[-2]
    mask = draw(st.sampled_from(["", "causal", "bool", "float"]))
    extra = ""
    if mask == "causal":
        extra = ", is_causal=True"
    elif mask == "bool":
        m = draw(st.lists(st.booleans(), min_size=L * S, max_size=L * S))
        extra = f", attn_mask=torch.tensor({m}).reshape({L}, {S})"
    elif mask == "float":
        extra = f", attn_mask={_const(L * S, a)}.reshape({L}, {S})"
    if draw(st.integers(0, 2)) == 0:
        extra += f", scale={draw(st.sampled_from([0.3, 1.0]))}"
    return f"{F}.scaled_dot_product_attention({q}, {k.name}, {v.name}{extra})", False


def scan(draw, pool, a) -> tuple[str, bool] | None:
    if not a.shape:
        return None
    d = draw(st.integers(-len(a.shape), len(a.shape) - 1))
    op = draw(st.sampled_from(["cumsum", "cumprod", "logcumsumexp", "log_softmax", "gelu_tanh", "silu"]))
    if op == "cumsum":
        return f"torch.cumsum({a.name}, {d})", False
    if op == "cumprod":
        return f"torch.cumprod({a.name}.clamp(-1.5, 1.5), {d})", False
    if op == "logcumsumexp":
        return f"torch.logcumsumexp({a.name}, {d})", False
    if op == "log_softmax":
        return f"{F}.log_softmax({a.name}, {d})", False
    if op == "gelu_tanh":
        return f"{F}.gelu({a.name}, approximate='tanh')", False
    return f"{F}.silu({a.name})", False


DRAWERS = {"conv": conv, "pool": pool2d, "interpolate": interpolate, "embedding": embedding, "loss": loss,
           "index": indexing, "join": join, "attention": attention, "scan": scan}


def nn_step(draw, pool, a, new_input=None) -> tuple[str, bool] | None:
    """A random "nn" step on `a`, or (when `a` is not float or too large) another float pool tensor;
    None where none fits."""
    if not a.dtype.is_floating_point or _numel(a.shape) > MAX_NUMEL:
        fits = [v for v in pool if v.dtype.is_floating_point and v.shape and _numel(v.shape) <= MAX_NUMEL]
        if not fits:
            return None
        a = draw(st.sampled_from(fits))
    kind = draw(st.sampled_from(sorted(DRAWERS) + ["norm"]))
    got = norm(draw, pool, a, new_input) if kind == "norm" else DRAWERS[kind](draw, pool, a)
    return got if got is not None else scan(draw, pool, a)


# steps eager rejects for an index out of range (programs.INVALID): ember must raise too
INVALID_NN = {
    "gather_oob": "{0}.reshape(-1).gather(0, torch.tensor([{0}.numel()]))",
    "index_select_oob": "{0}.reshape(-1).index_select(0, torch.tensor([{0}.numel() + 1]))",
    "embedding_oob": "torch.nn.functional.embedding(torch.tensor([[0, {0}.numel()]]), {0}.reshape(-1, 1).float())",
    "cross_entropy_oob": "torch.nn.functional.cross_entropy({0}.reshape(1, -1).float(), torch.tensor([{0}.numel()]))",
    "scatter_add_oob": "{0}.reshape(-1).scatter_add(0, torch.tensor([-1 - {0}.numel()]), {0}.reshape(-1)[:1])",
}
