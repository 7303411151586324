"""A loaded `compile_step` training step (`ember.load` of what api/save_step.py wrote).

`step(x, y) -> loss` runs the saved step graph on the loaded parameters, buffers and optimizer state,
updating them in place, exactly as the original step would have: the optimizer is rebuilt as the
same ember.optim class with the saved param groups and state (`step.optimizer`: attach an LR scheduler
to it as to any), and each step's hyperparameters come from it through the same `_updates` that
`compile_step` uses. `state_dict()` gives the trained weights by the model's own names
(`model.load_state_dict(step.state_dict())`), `optimizer.state_dict()` torch's optimizer state.
"""

from __future__ import annotations

import json

import torch

from .. import optim as ember_optim
from ..frontend.lowering import RandomSeed
from ..optim.engine import HostScalars
from ..runtime.driver import Executable
from ..runtime.outputs import write_back
from .artifact import ArtifactError
from .load import check_autocast, check_tensor, decode_value, fresh, graph_inputs
from .save_step import rule_name
from .train import CompiledStep


class LoadedStep:
    """`step(x, y) -> loss` for batches of the saved shapes; see the module doc."""

    _updates = CompiledStep._updates  # the per-parameter updates, built as compile_step builds them

    def __init__(self, path: str, program: dict, exe: Executable, weights: dict[str, torch.Tensor],
                 opt_tensors: dict[str, torch.Tensor], device: torch.device):
        self.path, self.name, self.device = path, program.get("name", "step"), device
        self.compiled, self.graph = exe, exe.graph
        self._program = program
        self._saved = graph_inputs(exe, program, weights, 2)  # after x and y
        self._state = dict(zip(program["state"], self._saved))
        self._structure = program["updates"]
        self._grad_dummies: dict[int, torch.Tensor] = {}
        self.optimizer = self._optimizer(program["optimizer"], opt_tensors)
        # the parameters the loss does not reach: no update, no state (compile_step's TracedLoss)
        self._skip = {id(self._saved[i - 2]) for i in program.get("unreached", [])}
        hp = exe.graph.inputs[2 + len(self._saved)]
        self._hp = HostScalars(hp.shape[0], hp.dtype)

    def _optimizer(self, saved: dict, opt_tensors: dict[str, torch.Tensor]):
        cls = getattr(ember_optim, saved["class"], None) if saved["class"] in ember_optim.__all__ else None
        if cls is None or not hasattr(cls, "_updates"):
            raise ArtifactError(f"ember.load: program.json names the optimizer {saved['class']!r}, "
                                f"not an ember.optim one")
        groups = []
        for g in saved["groups"]:
            params = []
            for i, flag in zip(g["params"], g["requires_grad"]):
                t = self._saved[i - 2] if 2 <= i < 2 + len(self._saved) else None
                if t is None or isinstance(t, RandomSeed) or not t.is_floating_point():
                    raise ArtifactError(f"ember.load: program.json: optimizer parameter {i} is not a float tensor")
                params.append(t.requires_grad_(flag))
            groups.append({"params": params, **{k: decode_value(v) for k, v in g["hyper"].items()}})
        opt = cls(groups)
        state: dict[int, dict] = {}
        for key, t in opt_tensors.items():
            i, name = key.split("/", 1)
            state.setdefault(int(i), {})[name] = t
        for i, values in saved["values"].items():
            state.setdefault(int(i), {}).update({k: decode_value(v) for k, v in values.items()})
        sd = opt.state_dict()
        opt.load_state_dict({"state": state, "param_groups": sd["param_groups"]})
        return opt

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The model's parameters and buffers, by their names in the model (updated by every step)."""
        return {name.removeprefix("model."): t for name, t in self._state.items() if name.startswith("model.")}

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_tensor(x, self._program["x"], self.device, f"{self.name} step: x")
        check_tensor(y, self._program["y"], self.device, f"{self.name} step: y")
        check_autocast(self._program, f"{self.name} step")
        advanced: list[dict] = []
        with torch.no_grad():
            try:
                return self._run(x, y, advanced)
            except BaseException:  # nothing changed (compile_step's rule): the step counters go back
                if advanced:
                    torch._foreach_sub_([state["step"] for state in advanced], 1)
                raise

    def _run(self, x: torch.Tensor, y: torch.Tensor, advanced: list[dict]) -> torch.Tensor:
        updates = self._updates(advanced, self._skip)
        structure = [[rule_name(u.rule), json.loads(json.dumps(u.flags)), len(u.scalars)] for u, _ in updates]
        if structure != self._structure:
            raise ValueError(f"{self.name} step: the optimizer's updates no longer have the saved structure "
                             f"(a hyperparameter that shapes the graph changed: momentum, amsgrad, weight decay "
                             f"on/off, ...); saved {self._structure}, now {structure}")
        hp = self._hp.set([float(s) for u, _ in updates for s in u.scalars])
        states = [t for u, _ in updates for t in u.tensors()[2:]]
        inputs = [x, y] + fresh(self._saved)
        outs = self.compiled(inputs + [hp] + states)
        n_user, mutated = self._program["num_user_outputs"], self._program["mutated_inputs"]
        donated = set(self._program["donated_buffers"])
        left = [(i, outs[n_user + k]) for k, i in enumerate(mutated) if i not in donated]
        write_back([inputs[i] for i, _ in left], [v for _, v in left])
        return outs[0]

    def __repr__(self) -> str:
        return f"<ember.load({self.path!r}): {self.name} training step, {type(self.optimizer).__name__}>"
