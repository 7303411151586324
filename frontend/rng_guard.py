"""Programs that reseed or restore torch's global random generator: kept exact, or refused.

A compiled program draws one seed per call from torch's default generator (`lowering.RandomSeed`).
`torch.manual_seed(0)` inside the program runs once, at capture, and never again: eager gives the
same numbers on every call and leaves the generator in a state ember cannot reproduce (ember's
Philox streams consume the generator differently from torch's kernels). So, while the program is
traced, the seeding functions are recorded (they still run: the program may branch on them) and, when
the program seeded, the generator's state is restored afterwards (the trace is not the call). Only
calls from the tracing thread are recorded, so other threads may seed and draw meanwhile. Then `RngGuard.check` refuses
with a `CaptureError` naming the call when the program both reseeds and draws random numbers, or
leaves a generator in another state than it found it. A program that only saves, reseeds and
restores around deterministic ops (OpInfo's `wrapper_set_seed`) has no random effect and compiles.
"""

from __future__ import annotations

import threading
from typing import Any

import torch

from .capture_mode import CaptureError

# (module, attribute) of every function that reseeds or restores a global generator.
_SEEDERS = [(mod, name) for mod, names in (
    (torch, ("manual_seed", "seed", "set_rng_state")),
    (torch.random, ("manual_seed", "seed", "set_rng_state")),
    (torch.cuda, ("manual_seed", "manual_seed_all", "seed", "seed_all", "set_rng_state", "set_rng_state_all")),
) for name in names if hasattr(mod, name)]


def _states() -> list[torch.Tensor]:
    states = [torch.random.get_rng_state()]
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states += torch.cuda.get_rng_state_all()
    return states


def _set_states(states: list[torch.Tensor]) -> None:
    torch.random.set_rng_state(states[0])
    if len(states) > 1:
        torch.cuda.set_rng_state_all(states[1:])


# The seeding functions are wrapped while at least one thread traces (a count, under a lock): the
# wrappers record a call only for the guard active in the calling thread, so another thread that seeds
# or draws random numbers meanwhile is neither recorded nor undone.
_lock = threading.Lock()
_installed: list[tuple[Any, str, Any]] = []
_tracing = 0
_active = threading.local()


def _recording(qualname: str, fn: Any) -> Any:
    def seeder(*args: Any, **kwargs: Any) -> Any:
        guard = getattr(_active, "guard", None)
        if guard is not None:
            guard.calls.append(qualname)
        return fn(*args, **kwargs)

    return seeder


def _install() -> None:
    global _tracing
    with _lock:
        if _tracing == 0:
            _installed[:] = [(mod, name, getattr(mod, name)) for mod, name in _SEEDERS]
            for mod, name, fn in _installed:
                setattr(mod, name, _recording(f"{mod.__name__}.{name}", fn))
        _tracing += 1


def _uninstall() -> None:
    global _tracing
    with _lock:
        _tracing -= 1
        if _tracing == 0:
            for mod, name, fn in _installed:
                setattr(mod, name, fn)


class RngGuard:
    """`with guard: <trace>` then `guard.check(gm)` (see module doc)."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.changed = False

    def __enter__(self) -> RngGuard:
        self.states = _states()
        self.outer = getattr(_active, "guard", None)
        _active.guard = self
        _install()
        return self

    def __exit__(self, *exc: Any) -> None:
        _uninstall()
        _active.guard = self.outer
        if not self.calls:  # the program never seeded: any change of state is another thread's draws
            return
        now = _states()
        self.changed = len(now) != len(self.states) or not all(map(torch.equal, now, self.states))
        if self.changed:
            _set_states(self.states)

    def check(self, gm: torch.fx.GraphModule) -> None:
        """Raise `CaptureError` when the traced program's randomness cannot be replayed per call."""
        random_ops = [str(n.target) for n in gm.graph.nodes if n.op == "call_function"
                      and isinstance(n.target, torch._ops.OpOverload)
                      and torch.Tag.nondeterministic_seeded in n.target.tags]
        if not self.calls:
            return
        called = f"calls {self.calls[0]}()"
        if self.calls and random_ops:
            raise CaptureError(
                f"ember.trace: the program {called} and draws random numbers ({random_ops[0]}): a compiled "
                f"program draws its seed from torch's generator at each call, it cannot replay the reseeding; "
                f"seed outside the compiled function, or pass a torch.Generator to the random ops")
        if self.changed:
            raise CaptureError(
                f"ember.trace: the program {called} and leaves torch's global random generator changed, which "
                f"a compiled program cannot replay on every call; seed outside the compiled function")
