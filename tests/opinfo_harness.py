"""OpInfo conformance: PyTorch's `op_db` samples (float32, CPU) through ember, compared with eager.

Each sample runs three ways against eager PyTorch on its own copy of the inputs:

- `forward`: `ember.compile` on inputs that do not require grad (the inference graph);
- `gradient`: `ember.compile` on inputs that require grad: outputs, then `torch.autograd.grad` of the
  differentiable outputs with the same random cotangents, against every floating input that requires
  grad. Where eager has no derivative (its backward raises "the derivative ... is not implemented", or
  an op without autograd returns outputs that do not require grad), ember must not invent one: it
  raises too, or its outputs do not require grad either (a user's sum of such an output with others
  would otherwise get a gradient eager never gives);
- `eager`: the op called under `with ember.eager():`.

Every outcome is `pass`, `mismatch` (a value, dtype, shape, structure, gradient or mutated input
differs), `error` (ember raised: a refusal), `internal` (a KeyError/AttributeError/AssertionError/...
that passed through ember's code: a bug, not a refusal), `timeout`, or `skip` (eager itself raises,
or there is nothing to differentiate). Random ops (`RANDOM_OPS`, OpInfo's nondeterministic outputs,
or an op whose eager result changes with the seed) compare shapes, dtypes and the mean, not values.

Shared by tests/test_opinfo.py (a fixed subset) and benchmarks/opinfo_sweep.py (all of op_db).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
import re
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils import _pytree as pytree

import ember

DTYPE = torch.float32
# ember's own code: the package (the repository root) less its tests, benchmarks and examples
EMBER_DIR = str(Path(ember.__file__).resolve().parent)
NOT_EMBER = tuple(f"{EMBER_DIR}/{d}/" for d in ("tests", "benchmarks", "examples"))

# Ops that always sample (compared by statistics). Samples of other ops that draw random numbers
# (dropout with p > 0, rrelu in training, ...) are found per sample by running eager with two seeds
# (`_changes_with_seed`), so their deterministic samples (p = 0, eval mode) still compare values.
RANDOM_OPS = {
    "bernoulli", "cauchy", "exponential", "geometric", "log_normal", "multinomial", "normal", "uniform",
    "rand_like", "randn", "randn_like", "randint", "randint_like", "svd_lowrank", "pca_lowrank",
}
# Ops whose outputs hold uninitialized memory: shapes and dtypes only.
UNINITIALIZED_OPS = {"empty", "empty_like", "new_empty", "new_empty_strided", "empty_strided", "empty_permuted",
                     "resize_", "resize_as_"}
# Exception types that mean a bug in ember when they pass through its code (issue 9 drives them to 0),
# rather than a refusal (ember's own error types, NotImplementedError, torch's RuntimeError).
INTERNAL_TYPES = (KeyError, AttributeError, AssertionError, IndexError, NameError, TypeError, ZeroDivisionError,
                  RecursionError, StopIteration)
STATUSES = ("pass", "mismatch", "error", "internal", "timeout", "skip")


class SampleTimeout(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` in ember swallows it."""


@dataclass
class Outcome:
    status: str                      # one of STATUSES
    detail: str = ""                 # what differed, or "Type: first line" of the error
    max_abs_diff: float | None = None
    note: str = ""                   # informational (eager mode: ops that failed to build and fell back)


@dataclass
class SampleResult:
    op: str                          # OpInfo full name (name.variant)
    index: int                       # sample index within the op's sample_inputs
    description: str
    random: bool
    forward: Outcome
    gradient: Outcome
    eager: Outcome
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


# -- op selection ---------------------------------------------------------------------------------


def float32_ops() -> list:
    """Every OpInfo of op_db that supports float32 on CPU (677 in torch 2.13)."""
    from torch.testing._internal.common_methods_invocations import op_db

    return [op for op in op_db if DTYPE in op.supported_dtypes("cpu")]


def find_ops(names: list[str] | None = None) -> list:
    ops = float32_ops()
    if names is None:
        return ops
    by_name = {op.full_name: op for op in ops}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(f"not float32 OpInfos: {missing}")
    return [by_name[n] for n in names]


def is_random(op) -> bool:
    return op.name in RANDOM_OPS or op.name in UNINITIALIZED_OPS or bool(op.has_nondeterministic_output)


def supports_grad(op) -> bool:
    return bool(op.supports_autograd) and DTYPE in op.supported_backward_dtypes("cpu")


# -- samples ---------------------------------------------------------------------------------------


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def make_samples(op, requires_grad: bool, seed: int, limit: int | None) -> list:
    """The op's first `limit` samples, generated from `seed`: calling twice gives independent copies
    with equal values and the same aliasing between a sample's tensors (deepcopy cannot copy
    non-leaf tensors that require grad)."""
    _seed(seed)
    return list(itertools.islice(op.sample_inputs("cpu", DTYPE, requires_grad=requires_grad), limit))


def describe(sample) -> str:
    def show(x: Any) -> str:
        if isinstance(x, torch.Tensor):
            if x.layout != torch.strided:
                return f"{str(x.dtype).replace('torch.', '')}{list(x.shape)} {x.layout}"
            extra = "" if x.is_contiguous() or x.numel() <= 1 else f" strides={x.stride()}"
            return f"{str(x.dtype).replace('torch.', '')}{list(x.shape)}{extra}"
        if isinstance(x, list | tuple):
            inner = ", ".join(show(v) for v in x)
            return f"[{inner}]" if isinstance(x, list) else f"({inner})"
        return repr(x)

    parts = [show(sample.input)] + [show(a) for a in sample.args]
    parts += [f"{k}={show(v)}" for k, v in sample.kwargs.items()]
    text = ", ".join(parts)
    return (text[:240] + "...") if len(text) > 240 else text


def _call(op, sample) -> Any:
    return op(sample.input, *sample.args, **sample.kwargs)


def _tensors(sample) -> list[torch.Tensor]:
    leaves = pytree.tree_leaves((sample.input, sample.args, sample.kwargs))
    return [t for t in leaves if isinstance(t, torch.Tensor)]


# -- comparison ------------------------------------------------------------------------------------


class Mismatch(Exception):
    def __init__(self, detail: str, max_abs_diff: float | None = None):
        super().__init__(detail)
        self.detail, self.max_abs_diff = detail, max_abs_diff


def _max_abs_diff(a: torch.Tensor, e: torch.Tensor) -> float | None:
    try:
        a, e = a.detach().to_dense(), e.detach().to_dense()
        if a.is_complex() or e.is_complex():
            a, e = torch.view_as_real(a.resolve_conj()), torch.view_as_real(e.resolve_conj())
        a, e = a.double(), e.double()
        both_nan = a.isnan() & e.isnan()
        same_inf = (a == e) & a.isinf()
        d = (a - e).abs().masked_fill(both_nan | same_inf, 0)
        return float(d.nan_to_num(math.inf).max()) if d.numel() else 0.0
    except Exception:  # diff of mismatched shapes/layouts: the detail says enough
        return None


def _tensor_stats_close(a: torch.Tensor, e: torch.Tensor, values: bool) -> None:
    """Random outputs: equal shape/dtype; for `values`, the means agree within 6 standard errors."""
    if not values or not e.is_floating_point() or e.numel() < 64:
        return
    a, e = a.detach().double().flatten(), e.detach().double().flatten()
    a, e = a[a.isfinite()], e[e.isfinite()]
    if e.numel() < 64 or a.numel() < 64:
        return
    err = 6 * (float(e.std()) + float(a.std())) / math.sqrt(min(a.numel(), e.numel())) + 1e-6
    if abs(float(a.mean()) - float(e.mean())) > err:
        raise Mismatch(f"mean {float(a.mean()):.4g} vs eager {float(e.mean()):.4g} (random op, bound {err:.3g})")


# A float result outside assert_close's float32 tolerances still passes when it is as accurate as
# eager's own float32 result, both measured against the op computed in float64 (the rule of
# torch._dynamo.utils.same): a different summation order or fused rounding legitimately moves a
# result by more than 1.3e-6 relative; a wrong result is far less accurate than eager's.
FP64_MULTIPLIER, FP64_FLOOR = 3.0, 1e-5


def _as_accurate(a: torch.Tensor, e: torch.Tensor, r: Any) -> float | None:
    """Root-mean-square error of `a` against the float64 value `r`, when it is within the bound set
    by eager's `e`; None when it is not (or there is no usable reference)."""
    if not isinstance(r, torch.Tensor) or r.shape != e.shape or not (e.is_floating_point() or e.is_complex()):
        return None
    a, e, r = (torch.view_as_real(t.detach().resolve_conj()) if t.is_complex() else t.detach()
               for t in (a.to_dense(), e.to_dense(), r.to_dense()))
    a, e, r = a.double(), e.double(), r.double()
    finite = a.isfinite()
    if not torch.equal(finite, e.isfinite()) or not torch.equal(a[~finite].nan_to_num(), e[~finite].nan_to_num()):
        return None  # NaN/inf where eager has none (or a different one)
    keep = finite & r.isfinite()
    if not keep.any():
        return None if finite.any() else 0.0
    rmse = lambda x: float(((x[keep] - r[keep]) ** 2).mean().sqrt())
    err = rmse(a)
    return err if err <= FP64_MULTIPLIER * rmse(e) + FP64_FLOOR else None


def compare(actual: Any, expected: Any, what: str, random_op: bool = False, values: bool = True,
            reference64: Callable[[], Any] | None = None) -> list[str]:
    """Raise `Mismatch` unless `actual` matches eager's `expected` (pytrees of tensors and values).
    `reference64()` gives the same pytree computed in float64 (see `_as_accurate`); the returned notes
    name the leaves that passed only by that rule."""
    a_leaves, a_spec = pytree.tree_flatten(actual)
    e_leaves, e_spec = pytree.tree_flatten(expected)
    if a_spec != e_spec:
        raise Mismatch(" ".join(f"{what}: structure {a_spec} vs eager {e_spec}".split()))
    notes: list[str] = []
    ref64: list | None = None
    for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
        where = f"{what}[{i}]" if len(e_leaves) > 1 else what
        if not isinstance(e, torch.Tensor):
            if isinstance(a, torch.Tensor):
                raise Mismatch(f"{where}: a tensor where eager gives {type(e).__name__} {e!r}")
            same = a == e or (isinstance(e, float) and isinstance(a, float) and math.isnan(a) and math.isnan(e))
            if not same:
                raise Mismatch(f"{where}: {a!r} vs eager {e!r}")
            continue
        if not isinstance(a, torch.Tensor):
            raise Mismatch(f"{where}: {type(a).__name__} where eager gives a tensor")
        if a.shape != e.shape or a.dtype != e.dtype:
            raise Mismatch(f"{where}: {a.dtype}{list(a.shape)} vs eager {e.dtype}{list(e.shape)}")
        if a.layout != e.layout or a.device != e.device:
            raise Mismatch(f"{where}: layout/device {a.layout}/{a.device} vs eager {e.layout}/{e.device}")
        if type(a) is not torch.Tensor and type(a) is not torch.nn.Parameter and type(e) is torch.Tensor:
            raise Mismatch(f"{where}: a {type(a).__name__} where eager gives a torch.Tensor")
        if random_op:
            _tensor_stats_close(a, e, values)
            continue
        try:
            torch.testing.assert_close(a.detach(), e.detach(), equal_nan=True)
        except AssertionError as err:
            if ref64 is None and reference64 is not None:
                try:
                    ref64 = pytree.tree_leaves(reference64())
                except Exception:
                    ref64 = []
            err64 = _as_accurate(a, e, ref64[i]) if ref64 and len(ref64) == len(e_leaves) else None
            diff = _max_abs_diff(a, e)
            if err64 is not None:
                notes.append(f"{where}: {diff:.3g} off eager, as accurate vs float64 (rmse {err64:.3g})")
                continue
            text = " ".join(ln.strip() for ln in str(err).splitlines() if ln.strip())
            text = re.sub(r"Tensor-likes are not (close|equal)! | \(up to [^)]* allowed\)", "", text)
            raise Mismatch(f"{where}: {text[:300]}", diff) from None
    return notes


# -- running one sample ----------------------------------------------------------------------------


@contextlib.contextmanager
def alarm(seconds: float | None) -> Iterator[None]:
    """Raise SampleTimeout after `seconds` (main thread only; None: no limit)."""
    if not seconds:
        yield
        return

    def on_alarm(signum, frame):
        raise SampleTimeout(f"more than {seconds:g} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def error_outcome(exc: BaseException) -> Outcome:
    """`internal` when an internal exception type passed through ember's code, else `error`."""
    if isinstance(exc, SampleTimeout):
        return Outcome("timeout", f"timeout: {exc}")
    lines = str(exc).strip().splitlines()
    first = f"{type(exc).__name__}: {lines[0][:300] if lines else ''}"
    frames = [f.filename for f in traceback.extract_tb(exc.__traceback__)]
    in_ember = any(f.startswith(EMBER_DIR + "/") and not f.startswith(NOT_EMBER) for f in frames)
    internal = isinstance(exc, INTERNAL_TYPES) and in_ember
    return Outcome("internal" if internal else "error", first)


def _guarded(fn: Callable[[], Outcome], timeout: float | None) -> Outcome:
    """`fn()`'s outcome; a mismatch, an error or running past `timeout` seconds become outcomes too."""
    try:
        with alarm(timeout):
            try:
                return fn()
            except Mismatch as m:
                return Outcome("mismatch", m.detail, m.max_abs_diff)
            except Exception as e:
                return error_outcome(e)
    except SampleTimeout as e:  # raised inside fn, or just after it returned
        return error_outcome(e)


def _ember_compiled(op) -> Callable:
    def program(inp, args, kwargs):
        return op(inp, *args, **kwargs)

    program.__name__ = program.__qualname__ = re.sub(r"\W", "_", op.full_name)
    return ember.compile(program)


def _grad_outputs(out: Any, sample) -> list:
    """The output leaves autograd differentiates (after the sample's output_process_fn_grad)."""
    return pytree.tree_leaves(sample.output_process_fn_grad(out))


def _differentiable(leaves: list) -> list[int]:
    return [k for k, t in enumerate(leaves) if isinstance(t, torch.Tensor) and t.requires_grad
            and (t.is_floating_point() or t.is_complex())]


def _to64(sample) -> tuple:
    """(input, args, kwargs) of `sample` with float tensors in float64 (complex in complex128)."""
    def conv(t: Any) -> Any:
        if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()):
            wide = torch.complex128 if t.is_complex() else torch.float64
            return t.detach().to(wide).requires_grad_(t.requires_grad)
        return t

    return pytree.tree_map(conv, (sample.input, sample.args, sample.kwargs))


def _once(fn: Callable[[], Any]) -> Callable[[], Any]:
    cache: list = []
    return lambda: cache[0] if cache else (cache.append(fn()) or cache[0])


def _forward64(op, pristine, seed: int) -> Callable[[], tuple]:
    """(outputs, input tensors after the call) of the op in float64, computed on first use."""
    def run() -> tuple:
        inp, args, kwargs = _to64(pristine)
        _seed(seed)
        with torch.no_grad():
            out = op(inp, *args, **kwargs)
        return out, [t for t in pytree.tree_leaves((inp, args, kwargs)) if isinstance(t, torch.Tensor)]

    return _once(run)


def _check_forward(op, ref_out, ref_sample, cand, random_op: bool, values: bool, ref64) -> Outcome:
    with torch.no_grad():
        out = _ember_compiled(op)(cand.input, cand.args, cand.kwargs)
    return _compared(op, ref_out, ref_sample, cand, out, random_op, values, ref64)


def _check_eager(op, ref_out, ref_sample, cand, random_op: bool, values: bool, ref64) -> Outcome:
    ember.reset_eager_stats()
    with ember.eager():
        out = _call(op, cand)
    errors = ember.eager_stats().errors
    outcome = _compared(op, ref_out, ref_sample, cand, out, random_op, values, ref64)
    outcome.note = "; ".join([outcome.note] * bool(outcome.note) + [f"{k}: {v}" for k, v in sorted(errors.items())])
    return outcome


def _compared(op, ref_out, ref_sample, cand, out, random_op: bool, values: bool, ref64) -> Outcome:
    notes = compare(out, ref_out, "output", random_op, values, lambda: ref64()[0])
    notes += compare(_tensors(cand), _tensors(ref_sample), "input after the call", random_op, values,
                     lambda: ref64()[1])
    return Outcome("pass", note="; ".join(notes))


def _check_gradient(op, ref_sample, cand, pristine, seed: int, random_op: bool, values: bool) -> Outcome:
    wrt_ref = [t for t in _tensors(ref_sample) if t.requires_grad and t.is_floating_point()]
    wrt = [t for t in _tensors(cand) if t.requires_grad and t.is_floating_point()]
    if not wrt_ref:
        return Outcome("skip", "no input requires grad")
    try:
        _seed(seed)
        ref_out = _call(op, ref_sample)
        ref_leaves = _grad_outputs(ref_out, ref_sample)
        keep = _differentiable(ref_leaves)
        if not keep:
            if not any(isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex()) for t in ref_leaves):
                # (integer results: nothing anyone could differentiate)
                return Outcome("skip", "no differentiable output")
            return _no_derivative_like_eager(op, cand, seed, "eager's outputs do not require grad", False)
        cots = [torch.randn_like(ref_leaves[k]) for k in keep]
    except Exception as e:
        return Outcome("skip", f"eager raises: {error_outcome(e).detail}")
    try:
        ref_grads = torch.autograd.grad([ref_leaves[k] for k in keep], wrt_ref, cots, allow_unused=True,
                                        retain_graph=True)
    except Exception as e:
        if "derivative" in str(e) and "not implemented" in str(e):
            return _no_derivative_like_eager(op, cand, seed, f"eager's backward raises: {str(e).splitlines()[0]}",
                                             True)
        return Outcome("skip", f"eager raises: {error_outcome(e).detail}")

    def run64() -> tuple:  # outputs, inputs after the call, gradients: all in float64
        inp, args, kwargs = _to64(pristine)
        _seed(seed)
        out = op(inp, *args, **kwargs)
        tensors = [t for t in pytree.tree_leaves((inp, args, kwargs)) if isinstance(t, torch.Tensor)]
        leaves = _grad_outputs(out, pristine)
        wrt64 = [t for t in tensors if t.requires_grad and t.is_floating_point()]
        gs = torch.autograd.grad([leaves[k] for k in keep], wrt64, [c.to(leaves[k].dtype) for c, k in zip(cots, keep)],
                                 allow_unused=True)
        return out, tensors, _zeros(gs, wrt64)

    ref64 = _once(run64)
    _seed(seed)
    out = _ember_compiled(op)(cand.input, cand.args, cand.kwargs)
    notes = compare(out, ref_out, "output (inputs require grad)", random_op, values, lambda: ref64()[0])
    notes += compare(_tensors(cand), _tensors(ref_sample), "input after the call", random_op, values,
                     lambda: ref64()[1])
    leaves = _grad_outputs(out, cand)
    # An output eager differentiates must carry a gradient in ember too (extra ones are harmless:
    # eager marks e.g. batch norm's saved statistics non-differentiable).
    dropped = [k for k in keep if k not in _differentiable(leaves)]
    if dropped:
        through = torch.autograd.grad([ref_leaves[k] for k in dropped], wrt_ref,
                                      [cots[keep.index(k)] for k in dropped], allow_unused=True)
        zero = all(g is None or not g.any() for g in through)
        raise Mismatch(f"output leaves {dropped} do not require grad, eager's do "
                       + ("(eager's gradient through them is zero)" if zero else "(a gradient is dropped)"))
    grads = torch.autograd.grad([leaves[k] for k in keep], wrt, cots, allow_unused=True)
    notes += compare(_zeros(grads, wrt), _zeros(ref_grads, wrt_ref), "grad", random_op, values, lambda: ref64()[2])
    return Outcome("pass", note="; ".join(notes))


def _no_derivative_like_eager(op, cand, seed: int, why: str, must_raise: bool) -> Outcome:
    """Eager has no derivative here (`why`). Its backward raises (`must_raise`): ember's must raise too.
    Its outputs do not require grad (a constant to autograd): ember's may, with a zero gradient."""
    wrt = [t for t in _tensors(cand) if t.requires_grad and t.is_floating_point()]
    try:
        _seed(seed)
        leaves = _grad_outputs(_ember_compiled(op)(cand.input, cand.args, cand.kwargs), cand)
        keep = _differentiable(leaves)
        if not keep and not must_raise:
            return Outcome("pass", note=f"no gradient, as in eager ({why})")
        grads = torch.autograd.grad([leaves[k] for k in keep], wrt, [torch.randn_like(leaves[k]) for k in keep],
                                    allow_unused=True) if keep else ()
    except Exception as e:
        return Outcome("pass", note=f"raises like eager ({why}): {error_outcome(e).detail}")
    if must_raise:
        raise Mismatch(f"{why}; ember returns a gradient")
    if all(g is None or not g.any() for g in grads):
        return Outcome("pass", note=f"zero gradient ({why})")
    raise Mismatch(f"{why}; ember returns a nonzero gradient")


def _zeros(grads: tuple, wrt: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.zeros_like(t) if g is None else g for g, t in zip(grads, wrt)]


def _changes_with_seed(op, a_out, sample, seed: int) -> bool:
    """Eager's result for another seed differs: the op draws random numbers."""
    try:
        _seed(seed + 1)
        with torch.no_grad():
            b_out = _call(op, sample)
        compare(b_out, a_out, "probe")
        return False
    except Exception:
        return True


def run_op(op, limit_samples: int | None = None, timeout: float | None = 60.0, seed: int = 0,
           checks: tuple[str, ...] = ("forward", "gradient", "eager")) -> list[SampleResult]:
    """Every sample (up to `limit_samples`) of `op` through the `checks`; one result each."""
    # copies: eager's, ember.compile's, ember.eager()'s, the random probe's, the float64 reference's
    forward = [make_samples(op, False, seed, limit_samples) for _ in range(5)]
    grads = None
    if "gradient" in checks:  # (an op without autograd too: ember must not differentiate it either)
        try:
            grads = [make_samples(op, True, seed, limit_samples) for _ in range(3)]
        except Exception:
            if supports_grad(op):
                raise
    results = []
    for i, (ref, cand, eag, probe, pristine) in enumerate(zip(*forward)):
        start = time.perf_counter()
        sample_seed = seed * 1000 + i
        random_op = is_random(op)
        values = op.name not in UNINITIALIZED_OPS and not op.has_nondeterministic_output
        skipped = None
        try:
            _seed(sample_seed)
            with torch.no_grad():
                ref_out = _call(op, ref)
            random_op = random_op or _changes_with_seed(op, ref_out, probe, sample_seed)
            ref64 = _forward64(op, pristine, sample_seed)
        except Exception as e:
            skipped = Outcome("skip", f"eager raises: {error_outcome(e).detail}")
        outcomes = {}
        for check in ("forward", "gradient", "eager"):
            if check not in checks:
                outcomes[check] = Outcome("skip", "not run")
            elif check == "gradient":
                if grads is None:
                    outcomes[check] = Outcome("skip", "no autograd")
                elif i >= min(len(g) for g in grads):
                    outcomes[check] = Outcome("skip", "no sample")
                else:
                    g_ref, g_cand, g_64 = (g[i] for g in grads)
                    outcomes[check] = _guarded(lambda: _check_gradient(op, g_ref, g_cand, g_64, sample_seed,
                                                                       random_op, values), timeout)
            elif skipped is not None:
                outcomes[check] = skipped
            else:
                run = _check_forward if check == "forward" else _check_eager
                cand_sample = cand if check == "forward" else eag

                def go(run=run, cand_sample=cand_sample):
                    _seed(sample_seed)
                    return run(op, ref_out, ref, cand_sample, random_op, values, ref64)

                outcomes[check] = _guarded(go, timeout)
        results.append(SampleResult(op.full_name, i, describe(ref), random_op, outcomes["forward"],
                                    outcomes["gradient"], outcomes["eager"], time.perf_counter() - start))
    return results


# -- summaries -------------------------------------------------------------------------------------


def group_key(detail: str) -> str:
    """An error's first line with numbers (sizes, indices) replaced, so one cause is one group."""
    return re.sub(r"(?<![A-Za-z_.])\d+", "N", detail)[:200]


def summarize(results: list[dict]) -> dict:
    """Counts per check and status (random ops apart), and errors grouped by first line."""
    out: dict[str, Any] = {"samples": len(results), "ops": len({r["op"] for r in results})}
    for check in ("forward", "gradient", "eager"):
        counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        random_counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        groups: dict[str, dict[str, int]] = {"error": {}, "internal": {}, "timeout": {}}
        for r in results:
            o = r[check]
            (random_counts if r["random"] else counts)[o["status"]] += 1
            if o["status"] in groups:
                k = group_key(o["detail"])
                groups[o["status"]][k] = groups[o["status"]].get(k, 0) + 1
        # passes that needed the float64 rule (outside assert_close's float32 tolerances)
        counts_fp64 = sum(1 for r in results if not r["random"] and r[check]["status"] == "pass"
                          and "as accurate vs float64" in r[check].get("note", ""))
        out[check] = {"non_random": counts, "random": random_counts, "passes_by_fp64_rule": counts_fp64,
                      **{f"{s}_groups": dict(sorted(g.items(), key=lambda kv: -kv[1])) for s, g in groups.items()}}
    notes: dict[str, int] = {}
    for r in results:
        parts = r["eager"].get("note", "").split("; ")
        for part in filter(lambda p: p and "as accurate vs float64" not in p, parts):
            k = group_key(part)
            notes[k] = notes.get(k, 0) + 1
    out["eager"]["fallback_error_groups"] = dict(sorted(notes.items(), key=lambda kv: -kv[1]))
    return out


def mismatches(results: list[dict], include_random: bool = False) -> list[tuple[str, dict]]:
    """(check, result) for every mismatching sample."""
    return [(c, r) for r in results for c in ("forward", "gradient", "eager")
            if r[c]["status"] == "mismatch" and (include_random or not r["random"])]
