"""OpInfo conformance (tests/opinfo_harness.py): op_db samples through ember.compile (forward and
gradients) and ember.eager() against eager PyTorch, float32 on CPU.

The default run takes the first sample of a fixed list of ops chosen to cover the op families
(pointwise, type conversion, reductions, scans, softmax/losses, norms, matmul, layout, indexing,
convolution/pooling, attention, random ops, data-dependent ops); `pytest -m slow` runs every sample
of every float32 op, and `benchmarks/opinfo_sweep.py` the same sweep with counts. A mismatch fails;
a refusal (an ember error, NotImplementedError, a torch error) passes and is printed with its count.
"""

from __future__ import annotations

import contextlib
import time

import opinfo_harness as h
import pytest
import torch
from torch._subclasses.fake_tensor import is_fake
from torch.testing._internal.common_dtype import floating_types
from torch.testing._internal.opinfo.core import OpInfo, SampleInput

DEFAULT_OPS = [
    # pointwise: unary, binary, ternary, comparisons, conversions
    "abs", "exp", "log1p", "sigmoid", "tanh", "erf", "rsqrt", "sin", "round", "nan_to_num", "frac",
    "nn.functional.gelu", "nn.functional.silu", "nn.functional.softplus", "nn.functional.hardtanh",
    "nn.functional.leaky_relu", "add", "mul", "div.floor_rounding", "pow", "atan2", "maximum", "remainder",
    "clamp", "lerp", "addcmul", "where", "masked_fill", "eq", "logical_and", "isnan", "bfloat16", "to",
    # reductions and scans
    "sum", "mean", "amax", "argmax", "var", "std_mean", "prod", "logsumexp", "linalg.vector_norm", "cumsum",
    # softmax, losses, norms
    "softmax", "log_softmax", "nn.functional.cross_entropy", "nn.functional.nll_loss", "nn.functional.mse_loss",
    "nn.functional.binary_cross_entropy_with_logits", "nn.functional.layer_norm", "nn.functional.rms_norm",
    "nn.functional.batch_norm", "nn.functional.group_norm", "nn.functional.instance_norm",
    # matmul
    "matmul", "addmm", "baddbmm", "einsum", "nn.functional.linear", "outer",
    # layout and indexing
    "reshape", "permute", "transpose", "expand", "cat", "stack", "flip", "roll", "narrow", "chunk", "unbind",
    "tril", "repeat", "unfold", "slice_scatter", "nn.functional.pad.constant", "nn.functional.pad.circular",
    "gather", "index_select", "index_add", "scatter_add", "index_put", "nn.functional.embedding", "topk",
    # convolution, pooling, resampling, attention
    "nn.functional.conv2d", "nn.functional.max_pool2d", "nn.functional.avg_pool2d",
    "nn.functional.interpolate.bilinear", "nn.functional.scaled_dot_product_attention",
    # factories, random ops, data-dependent ops (refused), complex intermediates
    "arange", "full_like", "rand_like", "nn.functional.dropout", "nonzero", "item", "fft.rfft",
]


# Known mismatches, fixed under issue 8 (strict: once fixed, the entry must go).
KNOWN_MISMATCHES: dict[str, str] = {}


def _report(results: list[h.SampleResult]) -> str:
    lines = []
    for r in results:
        for check in ("forward", "gradient", "eager"):
            o = getattr(r, check)
            lines.append(f"{r.op} #{r.index} [{r.description}] {check}: {o.status} {o.detail}")
    return "\n".join(lines)


def _assert_no_mismatch(results: list[h.SampleResult]) -> None:
    print(_report(results))
    bad = [(r, c) for r in results for c in ("forward", "gradient", "eager")
           if getattr(r, c).status in ("mismatch", "timeout")]
    assert not bad, "\n".join(f"{r.op} sample #{r.index} ({r.description}), {c}: {getattr(r, c).detail}"
                              for r, c in bad)


@pytest.fixture(scope="module")
def counts(request):
    """Collects every result of the module and prints the counts (refusals and internal errors
    included) on the terminal when the module is done."""
    results: list[h.SampleResult] = []
    yield results
    if results:
        summary = h.summarize([r.to_json() for r in results])
        text = "; ".join(f"{c} " + " ".join(f"{k}={v}" for k, v in summary[c]["non_random"].items() if v)
                         for c in ("forward", "gradient", "eager"))
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print(f"\nOpInfo: {summary['samples']} samples of {summary['ops']} ops: {text}")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN_MISMATCHES[n], strict=True))
                                  if n in KNOWN_MISMATCHES else n for n in DEFAULT_OPS])
def test_opinfo_first_sample(name: str, counts: list) -> None:
    results = h.run_op(h.find_ops([name])[0], limit_samples=1, timeout=60)
    counts.extend(results)
    _assert_no_mismatch(results)


@pytest.mark.slow
@pytest.mark.parametrize("name", [op.full_name for op in h.float32_ops()])
def test_opinfo_all_samples(name: str, counts: list) -> None:
    results = h.run_op(h.find_ops([name])[0], limit_samples=None, timeout=120)
    counts.extend(results)
    _assert_no_mismatch(results)


# -- the harness catches what it is meant to catch -----------------------------------------------------


def _opinfo(name: str, fn, make_input=lambda rg: torch.randn(3, 4, requires_grad=rg)) -> OpInfo:
    def samples(op, device, dtype, requires_grad, **kwargs):
        yield SampleInput(make_input(requires_grad))

    return OpInfo(name, op=fn, dtypes=floating_types(), sample_inputs_func=samples, supports_out=False)


def test_harness_flags_a_wrong_forward_and_gradient() -> None:
    # ember.compile traces the program on fake tensors, so it takes the other branch: ember's value
    # and gradient differ from eager's; ember.eager() runs it on real tensors and agrees.
    op = _opinfo("differs_when_traced", lambda x: x * 3 if is_fake(x) else x * 2)
    (r,) = h.run_op(op)
    assert (r.forward.status, r.gradient.status, r.eager.status) == ("mismatch", "mismatch", "pass"), r
    assert r.forward.max_abs_diff > 0 and not r.random


def test_harness_compares_mutated_inputs() -> None:
    # The output matches; only the in-place write into the input differs.
    def fn(x):
        total = x.sum()
        if not is_fake(x):
            x.add_(1)
        return total

    (r,) = h.run_op(_opinfo("mutates_when_eager", fn), checks=("forward",))
    assert r.forward.status == "mismatch" and "input after the call" in r.forward.detail, r.forward


def test_harness_tells_random_ops_and_internal_errors() -> None:
    (r,) = h.run_op(_opinfo("draws", lambda x: x + torch.rand_like(x)), checks=("forward",))
    assert r.random and r.forward.status == "pass", r
    internal = h.error_outcome(_raise_in_ember(KeyError("x")))
    refusal = h.error_outcome(_raise_in_ember(NotImplementedError("aten.foo: no rule")))
    assert (internal.status, refusal.status) == ("internal", "error")
    assert h.error_outcome(KeyError("raised outside ember")).status == "error"


def test_harness_times_out_a_hanging_sample() -> None:
    def fn(x):
        if is_fake(x):  # only while ember traces it
            time.sleep(30)
        return x + 1

    (r,) = h.run_op(_opinfo("hangs_when_traced", fn), timeout=0.5)
    assert (r.forward.status, r.gradient.status, r.eager.status) == ("timeout", "timeout", "pass"), r
    assert r.seconds < 10


def _raise_in_ember(exc: Exception) -> Exception:
    """`exc` with a traceback through a frame of ember's own code (a file name inside the package)."""
    code = compile("raise exc", f"{h.EMBER_DIR}/frontend/somewhere.py", "exec")
    try:
        exec(code, {"exc": exc})
    except Exception as e:
        return e
    raise AssertionError("unreachable")
