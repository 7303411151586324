"""`ember.load(path)`: the program `ember.save` wrote (format: api/artifact.py), callable without the
Python code that defined it.

Every check runs before anything executes: the manifest (format and ember version, each file's size
and sha256), the IR (parsed from literals, extern targets and attribute strings checked, verified by
the type rules), the schedules, the weights (safetensors, each against its graph input's type) and the
kernels, which ember generates again from the graph and schedule for the load device and compares with
the saved sources byte for byte. A failure raises `ArtifactError` naming the file and the problem.

A loaded function takes the caller's arguments only (parameters, buffers and constants come from the
artifact) and checks them against the saved signature: structure, each tensor's shape, dtype and
device, each non-tensor value. When an input or a saved tensor (`state_dict()`'s, made to require grad)
requires grad under grad mode, it differentiates `autodiff.ir` (the trace before the passes, gradient
markers kept) with ember's IR autodiff, as `ember.compile` does (runtime/autograd.py): every kernel is
again ember's own, generated from the IR. A program that updates its inputs in place is saved without
it, and refuses gradients. A loaded training step: api/load_step.py.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.utils import _pytree as pytree

from ..frontend.aliasing import alias_groups
from ..frontend.lowering import RandomSeed
from ..ir import Graph, ParseError, VerificationError, parse_graph, verify
from ..ir.types import DTYPE_NAMES, NAME_DTYPES
from ..passes.autodiff import active_outputs
from ..runtime.autograd import AutogradGraph
from ..runtime.driver import Executable
from ..runtime.outputs import write_back
from ..runtime.restore import kernel_sources, restore
from .artifact import ArtifactError, check_graph, json_file, read_folder, safetensors_torch
from .signature import autocast_state


def load(path: str, device: torch.device | str | None = None) -> Any:
    """The artifact at `path` as a callable: a `LoadedFunction` for a saved function or module, a
    `LoadedStep` for a saved `compile_step` (`device`: where its tensors go; default the saved one)."""
    manifest, files = read_folder(path)
    program = json_file(files, "program.json")
    device = torch.device(device if device is not None else program.get("device", "cpu"))
    try:
        exe = executable(files, program, device)
        weights = read_tensors(files, "weights.safetensors", device)
        if manifest["kind"] == "step":
            from .load_step import LoadedStep

            return LoadedStep(path, program, exe, weights, read_tensors(files, "optimizer.safetensors", device),
                              device)
        return LoadedFunction(path, program, exe, weights, device, differentiable_graph(files, exe))
    except (KeyError, IndexError, TypeError) as e:  # (only a forged program.json that matches its hash gets here)
        raise ArtifactError(f"ember.load: program.json does not describe graph.ir ({type(e).__name__}: {e})") \
            from None


# -- the checked pieces --------------------------------------------------------------------------------
def executable(files: dict[str, bytes], program: dict, device: torch.device) -> Executable:
    """The saved graph and schedules as an executable whose kernels for `device` equal the saved ones."""
    try:
        graph = parse_graph(files["graph.ir"].decode())
    except (KeyError, UnicodeDecodeError, ParseError) as e:
        raise ArtifactError(f"ember.load: graph.ir cannot be read: {e}") from None
    check_graph(graph)
    try:
        verify(graph)
    except (VerificationError, ValueError, TypeError, RuntimeError) as e:
        raise ArtifactError(f"ember.load: graph.ir does not verify: {e}") from None
    schedules = json_file(files, "schedule.json")
    try:
        donate = {int(k): int(j) for k, j in program["donate"].items()}
        exe = restore(graph, schedules, donate, name=program.get("name"))
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ArtifactError(f"ember.load: schedule.json does not fit graph.ir ({type(e).__name__}: {e})") from None
    target = "cpu" if device.type == "cpu" else "cuda"
    folder = f"kernels/{target}/"
    stored = {name[len(folder):-3]: data for name, data in files.items() if name.startswith(folder)}
    made = {name: source.encode() for name, source in kernel_sources(exe, device).items()}
    for name in sorted(set(stored) | set(made)):
        if stored.get(name) != made.get(name):
            why = ("is not in the artifact" if name not in stored else "is no longer generated" if name not in made
                   else "differs from the source generated from graph.ir and schedule.json")
            raise ArtifactError(f"ember.load: kernel {folder}{name}.py {why}; the artifact does not match its "
                                f"graph (edited, or written by another ember)")
    return exe


def differentiable_graph(files: dict[str, bytes], exe: Executable) -> Graph | None:
    """`autodiff.ir` parsed and checked as graph.ir is, over the same inputs; None when not saved."""
    if "autodiff.ir" not in files:
        return None
    try:
        graph = parse_graph(files["autodiff.ir"].decode())
    except (UnicodeDecodeError, ParseError) as e:
        raise ArtifactError(f"ember.load: autodiff.ir cannot be read: {e}") from None
    check_graph(graph, "autodiff.ir")
    try:
        verify(graph)
    except (VerificationError, ValueError, TypeError, RuntimeError) as e:
        raise ArtifactError(f"ember.load: autodiff.ir does not verify: {e}") from None
    if [v.type for v in graph.inputs] != [v.type for v in exe.graph.inputs] \
            or len(graph.outputs) < len(exe.graph.outputs):
        raise ArtifactError("ember.load: autodiff.ir does not take graph.ir's inputs")
    return graph


def read_tensors(files: dict[str, bytes], name: str, device: torch.device) -> dict[str, torch.Tensor]:
    if name not in files:
        raise ArtifactError(f"ember.load: the artifact has no {name}")
    try:
        tensors = safetensors_torch().load(files[name])
    except Exception as e:  # safetensors' own error for a malformed header or buffer
        raise ArtifactError(f"ember.load: {name} is not a valid safetensors file ({e})") from None
    return {k: t.to(device) for k, t in tensors.items()}


def graph_inputs(exe: Executable, program: dict, weights: dict[str, torch.Tensor], first: int) -> list:
    """The saved inputs from graph input `first` on: state, closed-over tensors, lifted constants (a
    `RandomSeed` where a fresh seed is drawn per call), each checked against its input's type."""
    keys = [f"state/{n}" for n in program["state"]] + [f"source/{k}" for k in range(program["sources"])]
    keys += [e.get("tensor") for e in program["lifted"]]
    device = next(iter(weights.values())).device if weights else torch.device(program.get("device", "cpu"))
    out = []
    for value, key in zip(exe.graph.inputs[first:], keys):
        if key is None:
            out.append(RandomSeed(device))
            continue
        t = weights.get(key)
        if t is None or tuple(t.shape) != value.shape or t.dtype != value.dtype:
            got = "missing" if t is None else f"{DTYPE_NAMES[t.dtype]}{list(t.shape)}"
            raise ArtifactError(f"ember.load: weights.safetensors: {key} is {got}, graph input %{value.name} is "
                                f"{value.type}")
        out.append(t)
    if len(out) != len(keys):
        raise ArtifactError("ember.load: program.json lists more saved inputs than graph.ir has")
    return out


def decode_value(v: Any) -> Any:
    if isinstance(v, dict):
        if "float" in v:
            return float(v["float"])
        if "size" in v:
            return torch.Size(v["size"])
        if "tuple" in v:
            return tuple(decode_value(e) for e in v["tuple"])
    return v


def check_autocast(program: dict, what: str) -> None:
    """A saved program holds the casts of the autocast regions it was traced in: called in others, it
    would compute in other dtypes than eager (the caller re-saves under the autocast it runs in)."""
    saved = [tuple(e) for e in program.get("autocast", [])]
    now = [(device, DTYPE_NAMES[dtype]) for device, dtype in autocast_state()]
    if saved != now:
        show = lambda regions: ", ".join(f"{d} {t}" for d, t in regions) or "off"  # noqa: E731
        raise ValueError(f"{what}: the artifact was traced with autocast {show(saved)}, called with autocast "
                         f"{show(now)}; save it under the autocast it runs in")


def check_tensor(t: Any, want: dict, device: torch.device, what: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what}: expected a tensor, got {type(t).__name__}")
    dtype = NAME_DTYPES[want["dtype"]]
    if list(t.shape) != want["shape"] or t.dtype != dtype or t.device.type != device.type:
        raise TypeError(f"{what}: the artifact was saved for {want['dtype']}{want['shape']} on {device.type}, got "
                        f"{DTYPE_NAMES[t.dtype]}{list(t.shape)} on {t.device.type}")


def fresh(inputs: list) -> list[torch.Tensor]:
    return [t.draw() if isinstance(t, RandomSeed) else t for t in inputs]


# -- a loaded function --------------------------------------------------------------------------------
class LoadedFunction:
    """`f(*args, **kwargs)` for the saved signature; `state_dict()` the saved parameters and buffers;
    `graph` the optimized IR; `compiled` the executable (its `kernels`, `schedule`)."""

    def __init__(self, path: str, program: dict, exe: Executable, weights: dict[str, torch.Tensor],
                 device: torch.device, autodiff: Graph | None = None):
        self.path, self.name, self.device = path, program.get("name", "fn"), device
        self._autodiff = autodiff
        self._autograd: dict[tuple, AutogradGraph] = {}
        self.compiled, self.graph = exe, exe.graph
        self._signature, self._program = program["signature"], program
        self._n_user = sum("tensor" in s for s in self._signature)
        try:
            self._in_spec = pytree.treespec_loads(program["in_spec"])
            self._out_spec = pytree.treespec_loads(program["out_spec"])
        except Exception as e:  # a container type this process does not know
            raise ArtifactError(f"ember.load: program.json: a saved argument/result structure cannot be read ({e})") \
                from None
        self._saved = graph_inputs(exe, program, weights, self._n_user)
        self._state = dict(zip(program["state"], self._saved))
        self._outputs = [(kind, v if kind == "tensor" else decode_value(v)) for kind, v in program["outputs"]]
        self._n_out, self._mutated = program["num_user_outputs"], program["mutated_inputs"]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The saved parameters and buffers by their names in the saved module (as it updates them)."""
        return dict(self._state)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        leaves, spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
        if spec != self._in_spec:
            raise TypeError(f"{self.name}(): the arguments' structure differs from the saved call's:\n  saved  "
                            f"{self._in_spec}\n  called {spec}")
        user: list = [None] * self._n_user
        for i, (leaf, want) in enumerate(zip(leaves, self._signature)):
            if "tensor" in want:
                check_tensor(leaf, want, self.device, f"{self.name}() argument {i}")
                user[want["tensor"]] = leaf
            elif leaf != decode_value(want["value"]) or type(leaf) is not type(decode_value(want["value"])):
                raise TypeError(f"{self.name}() argument {i}: the artifact was saved for the value "
                                f"{decode_value(want['value'])!r}, got {leaf!r}")
        check_autocast(self._program, f"{self.name}()")
        if any(i < self._n_user for i in self._mutated) and alias_groups(user):
            raise ValueError(f"{self.name}(): the program updates an input in place, and the inputs share memory")
        inputs = user + fresh(self._saved)
        if torch.is_grad_enabled() and any(t.requires_grad for t in inputs):
            if self._autodiff is None:
                raise RuntimeError(f"{self.name}(): this artifact computes no gradients (its program updates an "
                                   f"input in place); call it under torch.no_grad() or with tensors that do not "
                                   f"require grad")
            outs = self._differentiable(inputs)(inputs)
        else:
            with torch.no_grad():
                outs = self.compiled(inputs)
                write_back([inputs[i] for i in self._mutated], outs[self._n_out:self._n_out + len(self._mutated)])
        leaves = [outs[v] if kind == "tensor" else v for kind, v in self._outputs]
        return pytree.tree_unflatten(leaves, self._out_spec)

    def _differentiable(self, inputs: list[torch.Tensor]) -> AutogradGraph:
        """The forward/backward pair of `autodiff.ir` for the inputs that require grad now (one per such
        set), as api/static.py makes it: its differentiable outputs are the float results a gradient
        can reach (a detached one does not require grad, as in eager)."""
        graph = self._autodiff
        wrt = tuple(i for i, t in enumerate(inputs) if t.requires_grad and t.is_floating_point())
        outs = tuple(i for i in active_outputs(graph, wrt) if i < self._n_out
                     and (graph.outputs[i].dtype.is_floating_point or graph.outputs[i].dtype.is_complex))
        ag = self._autograd.get((wrt, outs))
        if ag is None:
            ag = self._autograd[wrt, outs] = AutogradGraph(graph, wrt, outs)
        return ag

    def __repr__(self) -> str:
        return f"<ember.load({self.path!r}): {self.name}, {self.compiled.num_kernels} kernel(s) on {self.device}>"
