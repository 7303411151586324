"""Checks for random programs (tests/programs.py): ember.compile against eager PyTorch.

`run_program` (forward values, and the caller's tensors after in-place writes) and `run_gradients`
(gradients of a random linear function of the outputs) return an `Outcome` classified as the OpInfo
harness does (tests/opinfo_harness.py):

- `pass`;
- `mismatch`: a value, dtype, shape, gradient or mutated input differs, or ember returns where eager
  raises;
- `error`: ember raised a clear error (a user error naming the op or the line, torch's own message,
  a refusal). `eager_error` says whether eager raised too (the program is invalid: ember must raise)
  or not (ember refused a program eager runs);
- `internal`: a KeyError, AttributeError, AssertionError, IndexError, TypeError, ... that passed
  through ember's code: a bug;
- `timeout`.

Shared by tests/test_random_programs.py (which fails on anything but a pass, or an error where eager
raises too) and benchmarks/fuzz.py (which counts them).
"""

from __future__ import annotations

import functools
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from opinfo_harness import EMBER_DIR, Mismatch, SampleTimeout, alarm, error_outcome
from programs import Program, graph_inputs

import ember
from ember.ir import evaluate
from ember.runtime import compile_graph


@dataclass
class Outcome:
    status: str            # pass / mismatch / error / internal / timeout
    detail: str = ""       # what differed, or "Type: first line" of ember's error
    eager_error: str = ""  # eager's error, when eager raises on the program
    where: str = ""        # internal: the innermost frames of ember's code
    note: str = ""         # error: whether its first line names the program's line ("user line")

    def to_json(self) -> dict:
        return asdict(self)

    @property
    def ok(self) -> bool:
        """What the tests accept: a pass, or a clear error where eager raises too."""
        return self.status == "pass" or (self.status == "error" and bool(self.eager_error))


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:300] if lines else ''}"


def _ember_failed(e: BaseException, eager_error: BaseException | None, program_file: str = "") -> Outcome:
    """ember raised `e`: a clear error, or internal (see opinfo_harness.error_outcome)."""
    o = error_outcome(e)
    eager = _first_line(eager_error) if eager_error is not None else ""
    if o.status == "internal" and eager_error is not None and type(e) is type(eager_error) and (
            getattr(e, "ember_user_error", False) or getattr(e, "ember_call", None)
            or str(eager_error).strip().splitlines()[0] in str(e)):
        # eager's exception type, raised by torch for the user's call (`ember_call`: frontend/errors.Watch
        # saw it leave the call) and re-made for the user or passed through ember's frames untouched
        o.status = "error"
    where, note = "", ""
    if o.status == "error":  # does the first line name the program's line (frontend/errors.py)?
        note = "user line" if program_file and program_file in str(e).partition("\n")[0] else "no user line"
    if o.status == "internal":
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.startswith(EMBER_DIR + "/")]
        where = " <- ".join(f"{f.filename.removeprefix(EMBER_DIR + '/')}:{f.lineno} {f.name}"
                            for f in frames[-3:][::-1])
    return Outcome(o.status, o.detail, eager, where, note)


def _tolerance(t: torch.Tensor, prog: Program) -> tuple[float, float]:
    return prog.tolerances if t.is_floating_point() else (0.0, 0.0)


def _close(got, expected, what: str, prog: Program, wide: Callable[[], list] | None = None,
           atol_scale: float = 1.0) -> None:
    """Raise `Mismatch` unless `got` matches `expected` (float outputs within the program's
    tolerances, ints and bools exactly), or where not, is as accurate as `expected` against
    `wide()`, the same values computed in float64: |got - wide| <= 3 |expected - wide| + atol +
    rtol |wide| per element. (Eager float16 rounds after every op, ember once per kernel; and sums
    of terms that cancel leave rounding noise of the terms' size.)"""
    if len(got) != len(expected):
        raise Mismatch(f"{what}: {len(got)} values vs {len(expected)}")
    for i, (g, e) in enumerate(zip(got, expected)):
        if g.dtype != e.dtype or g.shape != e.shape:
            raise Mismatch(f"{what} {i}: {g.dtype}{list(g.shape)} vs {e.dtype}{list(e.shape)}")
        rtol, atol = _tolerance(e, prog)
        try:
            torch.testing.assert_close(g, e, rtol=rtol, atol=atol * atol_scale, equal_nan=True)
        except AssertionError as err:
            try:
                w = wide()[i] if wide is not None and e.is_floating_point() else None
            except Exception:  # noqa: BLE001  (no float64 reference: the mismatch stands)
                w = None
            if w is None or not _as_accurate(g, e, w, rtol, atol * atol_scale):
                text = " ".join(ln.strip() for ln in str(err).splitlines() if ln.strip())
                raise Mismatch(f"{what} {i}: {text[:400]}") from None


def _as_accurate(g: torch.Tensor, e: torch.Tensor, w: torch.Tensor, rtol: float, atol: float) -> bool:
    g, e, w = g.detach().double(), e.detach().double(), w.detach().double()
    ok = (g - w).abs() <= 3 * (e - w).abs() + atol + rtol * w.abs()
    return bool((ok | (g.isnan() & e.isnan())).all())


def _eager(call: Callable[[], object]) -> tuple[object, BaseException | None]:
    try:
        return call(), None
    except Exception as e:  # noqa: BLE001  (an invalid program: ember must raise too)
        return None, e


def run_program(prog: Program, seed: int = 0, deep: bool = True) -> Outcome:
    """Outputs of ember.compile against eager's, and the caller's tensors after the call (in-place
    writes reach them, and every alias of them, as in eager). `deep`: also the same graph run
    unfused (one kernel per op: fusion never changes results) and by the reference interpreter."""
    fn = prog.function()
    with torch.no_grad():
        bases, xs = prog.make_inputs(seed=seed)  # eager and ember each get their own copy
        expected, eager_error = _eager(lambda: fn(*xs))
        c_bases, c_xs = prog.make_inputs(seed=seed)
        try:
            got = ember.compile(fn)(*c_xs)
        except Exception as e:  # noqa: BLE001
            return _ember_failed(e, eager_error, fn.__code__.co_filename)
        if eager_error is not None:
            return Outcome("mismatch", "ember returns where eager raises", _first_line(eager_error))

        @functools.cache
        def wide() -> tuple[list, list]:  # outputs and leaves after the call, in float64
            w_bases, w_xs = prog.make_inputs(seed=seed, wide=True)
            return list(fn(*w_xs)), w_bases

        try:
            _close(got, expected, "output (vs eager)", prog, lambda: wide()[0])
            _close(c_bases, bases, "leaf tensor b<i> after the call", prog, lambda: wide()[1])
        except Mismatch as m:
            return Outcome("mismatch", m.detail)
        if not deep:
            return Outcome("pass")
        _, xs = prog.make_inputs(seed=seed)
        try:
            sg = ember.trace(fn, *xs)
            inputs = graph_inputs(sg, tuple(xs))
            n = len(expected)
            fused = sg.compiled(inputs)[:n]
            unfused = compile_graph(sg.graph, fuse=False)(inputs)[:n]
            ref = evaluate(sg.graph, *inputs)[:n]
        except Exception as e:  # noqa: BLE001
            return _ember_failed(e, None)
        try:
            _close(fused, unfused, "output (fused) vs unfused", prog)
            _close(fused, ref, "output (kernels) vs the reference interpreter", prog)
        except Mismatch as m:
            return Outcome("mismatch", m.detail)
    return Outcome("pass")


def run_gradients(prog: Program, seed: int = 0) -> Outcome:
    """Gradients of `sum_i (out_i * w_i).sum()` (random w_i) through ember.compile against eager's,
    with respect to the float program inputs and to the leaf tensors they are views of (an input
    passed twice or overlapping another sums its gradients there); the outputs are compared too."""
    fn = prog.function()
    bases, xs = prog.make_inputs(requires_grad=True, seed=seed)
    floats = lambda ts: [t for t in ts if t.is_floating_point()]  # noqa: E731
    n = len(floats(xs))

    def eager():
        out = fn(*xs)
        weights = [torch.randn(o.shape, generator=torch.Generator().manual_seed(seed + k)).to(o.dtype)
                   for k, o in enumerate(out)]
        return out, weights, _grads(_loss(out, weights), floats(xs) + floats(bases))

    result, eager_error = _eager(eager)
    expected, weights, want = result if result is not None else (None, None, None)
    c_bases, c_xs = prog.make_inputs(requires_grad=True, seed=seed)
    try:
        got = ember.compile(fn)(*c_xs)
        if eager_error is None:
            missing = [i for i, (g, e) in enumerate(zip(got, expected)) if e.requires_grad and not g.requires_grad]
            if missing:
                return Outcome("mismatch", f"outputs {missing} do not require grad (eager's do)")
        grads = _grads(_loss(got, weights if eager_error is None else [torch.ones_like(g) for g in got]),
                       floats(c_xs) + floats(c_bases))
    except Exception as e:  # noqa: BLE001
        return _ember_failed(e, eager_error, fn.__code__.co_filename)
    if eager_error is not None:
        return Outcome("mismatch", "ember returns where eager raises", _first_line(eager_error))

    @functools.cache
    def wide() -> tuple[list, list]:  # outputs and gradients (of x<i>, then b<i>) in float64
        w_bases, w_xs = prog.make_inputs(requires_grad=True, seed=seed, wide=True)
        out = fn(*w_xs)
        return [o.detach() for o in out], _grads(_loss(out, [w.double() for w in weights]),
                                                 floats(w_xs) + floats(w_bases))

    try:
        _close([g.detach() for g in got], [e.detach() for e in expected], "output (vs eager)", prog, lambda: wide()[0])
        _close(grads[:n], want[:n], "gradient of x<i>", prog, lambda: wide()[1][:n])
        # A leaf's gradient sums its views' (torch's view backward, not ember): terms of size up to
        # max|grad x<i>| may cancel, so the absolute tolerance scales with them.
        scale = max([float(g[g.isfinite()].abs().max()) for g in want[:n] if g.isfinite().any()] + [1.0])
        _close(grads[n:], want[n:], "gradient of b<i>", prog, lambda: wide()[1][n:], atol_scale=scale)
    except Mismatch as m:
        return Outcome("mismatch", m.detail)
    return Outcome("pass")


def _loss(out, weights) -> torch.Tensor:
    return sum((o * w).sum() for o, w in zip(out, weights) if o.is_floating_point())


def _grads(loss: torch.Tensor, wrt: list[torch.Tensor]) -> list[torch.Tensor]:
    gs = torch.autograd.grad(loss, wrt, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for g, t in zip(gs, wrt)]


def classify(prog: Program, seed: int = 0, gradients: bool = False, deep: bool = False,
             timeout: float | None = None) -> Outcome:
    """`run_gradients` or `run_program`, with a time limit; never raises (but KeyboardInterrupt)."""
    try:
        with alarm(timeout):
            return run_gradients(prog, seed) if gradients else run_program(prog, seed, deep)
    except SampleTimeout as e:
        return Outcome("timeout", str(e))
    except Exception as e:  # noqa: BLE001  (the checks themselves failed: report it, as internal)
        return Outcome("internal", f"check failed: {_first_line(e)}", where=traceback.format_exc(limit=-3))


def check(outcome: Outcome, prog: Program) -> None:
    """Fail (a test) unless `outcome.ok`, with the program's source."""
    assert outcome.ok, (f"{outcome.status}: {outcome.detail}" + (f" (eager: {outcome.eager_error})" if
                        outcome.eager_error else "") + (f"\n  at {outcome.where}" if outcome.where else "")
                        + f"\n{prog.source}")
