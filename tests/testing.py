"""Test helpers: compare an ember-compiled program with eager PyTorch and check its IR round-trips.

Every frontend test goes through `assert_matches`, so every captured graph is also checked to print,
parse back and print identically.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.utils import _pytree as pytree

from ember.api.compiled import CompiledFunction, compile
from ember.api.static import StaticGraph
from ember.ir import Graph, parse_graph, verify

# The tests' one tolerance table, (rtol, atol) per dtype, in two columns; other test files import it.
# - one op or one kernel (`TOLERANCES`), against eager or the reference interpreter: ember computes
#   half types in float32 and rounds once, as torch's CPU kernels do, but transcendental functions
#   and reduction orders differ by an ulp or two. float64 stays tight enough that a float64 op
#   computed in float32 by mistake (relative errors ~1e-7) fails;
# - chains of ops and matmuls (`CHAIN_TOLERANCES`: random programs, sums of K products): eager rounds
#   a half value after every op and ember after every kernel, and float32 sums run in another order,
#   so differences grow along the chain (float32: ~n ulps for n up to a thousand terms).
_TABLE = {  #       one op / kernel     chains, matmuls
    torch.float64: ((1e-9, 1e-9), (1e-9, 1e-9)),
    torch.float32: ((1.3e-5, 1e-5), (1e-4, 1e-5)),
    torch.float16: ((2e-3, 2e-3), (1e-2, 1e-2)),
    torch.bfloat16: ((1.6e-2, 1e-2), (2e-2, 2e-2)),
}
TOLERANCES = {dtype: one for dtype, (one, _) in _TABLE.items()}
CHAIN_TOLERANCES = {dtype: chain for dtype, (_, chain) in _TABLE.items()}


def check_roundtrip(graph: Graph) -> None:
    text = str(graph)
    again = str(parse_graph(text))
    assert again == text, f"IR does not round-trip:\n{text}\n---- parsed back as ----\n{again}"
    verify(parse_graph(text))


def check_static_graph(sg: StaticGraph) -> None:
    check_roundtrip(sg.captured_graph)
    check_roundtrip(sg.graph)


def assert_close(actual: Any, expected: Any, rtol: float | None = None, atol: float | None = None) -> None:
    a_leaves, a_spec = pytree.tree_flatten(actual)
    e_leaves, e_spec = pytree.tree_flatten(expected)
    assert a_spec == e_spec, f"output structure {a_spec} != eager {e_spec}"
    for i, (a, e) in enumerate(zip(a_leaves, e_leaves)):
        if not isinstance(e, torch.Tensor):
            assert a == e, f"output {i}: {a!r} != eager {e!r}"
            continue
        assert isinstance(a, torch.Tensor), f"output {i}: got {type(a).__name__}, eager gives a tensor"
        assert not a.requires_grad, f"output {i} requires grad"
        r, t = TOLERANCES.get(e.dtype, (0, 0))
        torch.testing.assert_close(a, e, rtol=r if rtol is None else rtol, atol=t if atol is None else atol,
                                   equal_nan=True, msg=lambda m, i=i: f"output {i}: {m}")


def _clone(args: Any) -> Any:
    return pytree.tree_map(lambda x: x.clone() if isinstance(x, torch.Tensor) else x, args)


def assert_matches(fn: Callable, *args: Any, rtol: float | None = None, atol: float | None = None,
                   mutates: bool = False, externs: tuple[str, ...] = (), **kwargs: Any) -> CompiledFunction:
    """Run `fn` eagerly and through `ember.compile` on the same inputs; compare outputs (and, when
    `mutates`, the inputs after the call); check the caller's inputs are otherwise untouched, and that
    only the torch ops named in `externs` fell back to extern calls."""
    compiled = compile(fn)
    before = _clone((args, kwargs))
    with torch.no_grad():
        if mutates:
            eager_args, eager_kwargs = _clone((args, kwargs))
            expected = fn(*eager_args, **eager_kwargs)
        else:
            expected = fn(*args, **kwargs)
        actual = compiled(*args, **kwargs)
    assert_close(actual, expected, rtol, atol)
    assert_close((args, kwargs), (eager_args, eager_kwargs) if mutates else before)
    for sg in compiled.graphs:
        check_static_graph(sg)
        unexpected = set(sg.unsupported()) - set(externs)
        assert not unexpected, f"ops fell back to extern: {sorted(unexpected)}\n{sg}"
    return compiled


def assert_vjp_matches(fn: Callable, inputs: tuple, out: torch.Tensor, grads: tuple, cotangent: torch.Tensor) -> None:
    """ember's `out = fn(*inputs)` and `grads` (of `out` w.r.t. `inputs` for `cotangent`) against eager's,
    at the chains tolerance (attention sums over the keys)."""
    want_out = fn(*inputs)
    want = torch.autograd.grad(want_out, inputs, cotangent)
    rtol, atol = CHAIN_TOLERANCES[want_out.dtype]
    torch.testing.assert_close(out, want_out, rtol=rtol, atol=atol)
    for i, (a, b) in enumerate(zip(grads, want, strict=True)):
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol, msg=lambda m, i=i: f"gradient of input {i}: {m}")


@contextlib.contextmanager
def cudnn_tf32(allow: bool):
    """`torch.backends.cudnn.allow_tf32 = allow` for the block, through `cudnn.flags()` with the other
    flags kept: torch's test utilities (imported by the OpInfo tests) forbid setting it directly."""
    c = torch.backends.cudnn
    with c.flags(enabled=c.enabled, benchmark=c.benchmark, deterministic=c.deterministic, allow_tf32=allow):
        yield


def assert_step_trains_like(step: Callable, model: torch.nn.Module, ref: torch.nn.Module, ref_opt: Any,
                            batches: list[tuple[torch.Tensor, torch.Tensor]], loss_fn: Callable,
                            rtol: float | None = None, atol: float | None = None) -> None:
    """`step` (an `ember.compile_step` over `model`) against `ref` (a copy of the model) trained by
    `ref_opt` on the same batches: every step's loss, then every parameter."""
    for x, y in batches:
        loss = step(x, y)
        ref_opt.zero_grad()
        ref_loss = loss_fn(ref(x), y)
        ref_loss.backward()
        ref_opt.step()
        torch.testing.assert_close(loss, ref_loss.detach(), rtol=rtol, atol=atol)
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=rtol, atol=atol)


def assert_compiled_gradients_match(fn: Callable, args: list, rtol: float, atol: float) -> None:
    """The gradients `ember.compile(fn)` gives every floating input of `args` against eager's autograd,
    for one random cotangent."""
    leaves = [a.clone().requires_grad_() if a.is_floating_point() else a for a in args]
    refs = [a.clone().requires_grad_() if a.is_floating_point() else a for a in args]
    ct = torch.randn(fn(*args).shape, dtype=fn(*args).dtype)
    compile(fn)(*leaves).backward(ct)
    fn(*refs).backward(ct)
    for a, b in zip(leaves, refs):
        if a.is_floating_point():
            torch.testing.assert_close(a.grad, b.grad, rtol=rtol, atol=atol)


def assert_index_error_like_eager(fn: Callable, x: torch.Tensor, index: list, value: Any, bad: int,
                                  error: type[Exception]) -> None:
    """`fn(x, index, value)` compiled with indices in range, then called with `index` (holding `bad`,
    out of range): eager's exception type and a message naming the index, from both."""
    i = torch.tensor(index)
    cf = compile(fn)
    cf(x, torch.zeros_like(i), value)
    message = rf"index {bad} is out of bounds for dimension \d with size \d"
    with pytest.raises(error, match=message):
        fn(x, i, value)
    with pytest.raises(error, match=message):
        cf(x, i, value)
