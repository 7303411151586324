"""`ember.compile(module)`: an `nn.Module` whose forward runs through ember, as `torch.compile`
returns an `OptimizedModule`.

The wrapper is the module in everything but the forward. It holds the module's own parameter,
buffer and submodule dicts (not copies), so `parameters()` hands an optimizer the module's tensors
and `state_dict()` has the module's keys (no `_orig_mod.` prefix); `train()`/`eval()`, `.to()`,
`apply()` and state-dict loading act on the module itself (its class may override them), and other
attributes are read from and written to the module. Nothing is invalidated by hand: the module's
training flags and its parameters' metadata are part of every call's signature key
(api/signature.py), so the first call after `eval()` or `.to(torch.float64)` traces, or reuses, the
graph for the new mode or dtype.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .compiled import CompiledFunction

# the module's containers the wrapper holds: what nn.Module's own methods (parameters(),
# named_modules(), register_buffer(), zero_grad(), ...) read on the wrapper
_SHARED = ("_parameters", "_buffers", "_non_persistent_buffers_set", "_modules")


class CompiledModule(torch.nn.Module):
    """`ember.compile(module)`. `_orig_mod` is the module, `_ember` the `CompiledFunction` that
    runs it (its `graphs`, `recompile_reasons`, `programs`, ... are reachable on the wrapper too,
    unless the module has an attribute of that name)."""

    def __init__(self, compiled: CompiledFunction):
        super().__init__()
        module = compiled.fn
        object.__setattr__(self, "_orig_mod", module)
        for name in _SHARED:
            object.__setattr__(self, name, getattr(module, name))
        object.__setattr__(self, "_ember", compiled)  # last: the wrapper is complete (see `training`)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self._ember(*args, **kwargs)

    # -- the module's mode, state and conversions -------------------------------------------------
    @property  # type: ignore[override]
    def training(self) -> bool:
        return self._orig_mod.training

    @training.setter
    def training(self, mode: bool) -> None:
        if "_ember" in self.__dict__:  # nn.Module.__init__ sets it before the wrapper holds a module
            self._orig_mod.training = mode

    def train(self, mode: bool = True) -> CompiledModule:
        self._orig_mod.train(mode)
        return self

    def _apply(self, fn: Callable, recurse: bool = True) -> CompiledModule:  # .to(), .double(), .cuda()...
        self._orig_mod._apply(fn, recurse)
        return self

    def apply(self, fn: Callable[[torch.nn.Module], None]) -> CompiledModule:
        self._orig_mod.apply(fn)
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return self._orig_mod.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        return self._orig_mod.load_state_dict(state_dict, strict=strict, assign=assign)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:  # a parent's load_state_dict
        self._orig_mod._load_from_state_dict(*args, **kwargs)

    # -- attributes: the module's ---------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        module, compiled = self.__dict__.get("_orig_mod"), self.__dict__.get("_ember")
        if module is None or compiled is None:  # not built yet (or being copied)
            raise AttributeError(name)
        try:
            return getattr(module, name)
        except AttributeError:
            if name.startswith("_") or not hasattr(compiled, name):
                raise
            return getattr(compiled, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__ or name == "training":  # the wrapper's own hooks, its mode property
            super().__setattr__(name, value)
        else:
            setattr(self._orig_mod, name, value)

    def __delattr__(self, name: str) -> None:
        if name in self.__dict__:
            super().__delattr__(name)
        else:
            delattr(self._orig_mod, name)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(dir(self._orig_mod)))

    def __deepcopy__(self, memo: dict) -> CompiledModule:
        """A compile of a deep copy of the module (compiled graphs are not copied: they trace again)."""
        cf = self._ember
        return CompiledModule(type(cf)(copy.deepcopy(self._orig_mod, memo), dynamic=cf.dynamic,
                                       recompile_limit=cf.recompile_limit))

    def guard_report(self) -> str:
        return self._ember.guard_report()

    def __repr__(self) -> str:
        cf = self._ember
        inner = repr(self._orig_mod).replace("\n", "\n  ")
        return (f"CompiledModule(\n  {inner}\n  # ember.compile: {len(cf.programs)} program(s), "
                f"{len(cf.cache)} graph(s), {cf.num_recompiles} recompile(s); see guard_report()\n)")
