"""`ember.save(fn_or_module_or_step, path, *example_args)`: a compiled program as data, loadable in a
process that does not have the program's Python code (`ember.load`, api/load.py; the format in
api/artifact.py).

A function or module is traced for the example call (`ember.trace`); what is saved is its optimized
graph, the schedules for the CPU and GPU targets, the kernels they generate for contiguous inputs, the
tensors the graph reads besides the caller's (parameters, buffers, closed-over tensors, lifted
constants) and how a call's arguments and results map onto the graph. A `compile_step` training step
saves its step graph (forward, gradient and optimizer update in one), the model's state and the
optimizer's: its class, param groups and state tensors (moments, step counts).

Refused with a clear error (NotImplementedError) rather than saved wrong: results that are views of
inputs, example tensors that share memory, argument or result structures pytree cannot write as JSON,
non-tensor values other than numbers, strings, None and sizes, optimizer hyperparameters held as tensors.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from torch.utils import _pytree as pytree

from ..frontend.capture import module_state
from ..frontend.lowering import RandomSeed
from ..ir import Graph, format_graph, parse_graph
from ..ir.types import DTYPE_NAMES
from ..runtime.driver import Executable
from ..runtime.restore import kernel_sources, restore
from ..runtime.schedule import build_schedule
from .artifact import safetensors_torch, write_folder
from .compiled import CompiledFunction
from .signature import autocast_state
from .static import StaticGraph

TARGETS = {"cpu": "cpu", "cuda": "cuda"}  # schedule target -> the device type its plans are made for


def save(obj: Any, path: str, *example_args: Any, **example_kwargs: Any) -> None:
    """Write `obj` (a function, an nn.Module, what `ember.compile` / `ember.trace` returned, or a
    `compile_step` step) compiled for the example call into the folder `path` (replaced if it holds an
    artifact). A step's example is one batch `(x, y)`; saving does not run the program."""
    from .distributed import DistributedStep
    from .train import CompiledStep  # (api/train.py imports api/static.py, as this module does)

    if isinstance(obj, DistributedStep):
        raise NotImplementedError("ember.save: a DistributedDataParallel step is not saved; save "
                                  "ember.compile_step(model.module, loss_fn, optimizer) of one process instead")
    if isinstance(obj, CompiledStep):
        if len(example_args) != 2 or example_kwargs:
            raise TypeError("ember.save(step, path, x, y): a training step's example is one batch (x, y)")
        from .save_step import step_files

        write_folder(path, step_files(obj, *example_args), "step")
        return
    with torch.no_grad():
        sg = obj if isinstance(obj, StaticGraph) else StaticGraph(_unwrap(obj), example_args, example_kwargs)
    if isinstance(obj, StaticGraph):
        sg._example.check(example_args, example_kwargs)
    write_folder(path, function_files(sg, example_args, example_kwargs), "function")


def _unwrap(obj: Any) -> Any:
    """The user's function or module under `ember.compile`'s wrappers."""
    inner = getattr(obj, "_ember", obj)  # a CompiledModule's CompiledFunction
    return inner.fn if isinstance(inner, CompiledFunction) else obj


# -- pieces both kinds write -------------------------------------------------------------------------
def program_files(exe: Executable) -> tuple[dict[str, bytes], Graph]:
    """graph.ir, schedule.json and kernels/<target>/*.py of a compiled graph; the graph they describe."""
    graph = exe.schedule_for(torch.device("cpu")).graph  # the optimized graph, gradient markers stripped
    text = format_graph(graph)  # (names every value: the schedule refers to them)
    if format_graph(parse_graph(text)) != text:
        raise NotImplementedError("ember.save: this graph's text does not parse back identically (a bug)")
    schedules = {t: build_schedule(graph, t, exe.fuse, exe.donate, exe.host).to_dict() for t in TARGETS}
    files = {"graph.ir": text.encode(), "schedule.json": json.dumps(schedules).encode()}
    # the kernels a load must regenerate: made through the load path itself (runtime/restore.py)
    loaded = restore(graph, schedules, exe.donate)
    for target, device in TARGETS.items():
        for name, source in sorted(kernel_sources(loaded, device).items()):
            files[f"kernels/{target}/{name}.py"] = source.encode()
    return files, graph


def tensor_meta(t: torch.Tensor) -> dict:
    return {"shape": list(t.shape), "dtype": DTYPE_NAMES[t.dtype]}


def safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """Tensors as safetensors, each its own contiguous CPU copy (safetensors refuses shared memory:
    the step counters of an ember optimizer are views of one buffer)."""
    return safetensors_torch().save({k: t.detach().to("cpu").contiguous().clone() for k, t in tensors.items()})


def autocast_json(regions: tuple | None = None) -> list:
    """Autocast regions ((device, dtype), ...; default: those a trace made now is made under,
    api/signature.py `autocast_state`) as JSON."""
    return [[device, DTYPE_NAMES[dtype]] for device, dtype in (autocast_state() if regions is None else regions)]


def encode_value(v: Any, what: str) -> Any:
    """A non-tensor argument or result as JSON (numbers, strings, None, torch.Size)."""
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else {"float": repr(v)}
    if isinstance(v, torch.Size):
        return {"size": list(v)}
    raise NotImplementedError(f"ember.save: {what} {v!r} ({type(v).__name__}) cannot be saved as data")


def treespec_text(spec: Any, what: str) -> str:
    try:
        return pytree.treespec_dumps(spec)
    except Exception as e:  # a container type pytree cannot serialize (a custom class, a namedtuple)
        raise NotImplementedError(f"ember.save: the {what} structure cannot be saved as data ({e})") from None


def weight_tensors(module: Any, cap: Any, lifted: list) -> tuple[dict[str, torch.Tensor], list]:
    """What weights.safetensors holds: the module's state (`state/<name>`), the tensors the trace read
    through closures and globals (`source/k`) and lifted constants (`const/k`); and the lifted entries."""
    tensors: dict[str, torch.Tensor] = {}
    state = module_state(module)
    for name in cap.state_names:
        tensors[f"state/{name}"] = state[name]
    for k, t in enumerate(cap.source_tensors()):
        tensors[f"source/{k}"] = t
    return tensors, lifted_entries(lifted, tensors)


def lifted_entries(lifted: list, tensors: dict[str, torch.Tensor]) -> list:
    """The graph's trailing lifted inputs: a constant (saved as `const/k`) or a fresh random seed per call."""
    out = []
    for k, t in enumerate(lifted):
        if isinstance(t, RandomSeed):
            out.append({"seed": True})
        else:
            tensors[f"const/{k}"] = t
            out.append({"tensor": f"const/{k}"})
    return out


# -- a function or module ---------------------------------------------------------------------------
def function_files(sg: StaticGraph, args: tuple, kwargs: dict) -> dict[str, bytes]:
    cap, lowered = sg.captured, sg.lowered
    if sg.views:
        raise NotImplementedError("ember.save: a result is an input or a view of one (eager returns it as an "
                                  "alias); return a computed tensor (e.g. .clone()) to save this program")
    if sg._aliases:
        raise NotImplementedError("ember.save: the example tensors share memory; save with distinct tensors")
    leaves, in_spec = pytree.tree_flatten((tuple(args), dict(kwargs)))
    signature = []
    for i, leaf in enumerate(leaves):
        if isinstance(leaf, torch.Tensor):
            signature.append({"tensor": cap.tensor_positions.index(i), **tensor_meta(leaf)})
        else:
            signature.append({"value": encode_value(leaf, "argument")})
    tensors, lifted = weight_tensors(sg._module, cap, lowered.lifted)
    files, graph = program_files(sg.compiled)
    outputs = [["tensor", sg._out_index[v]] if kind == "tensor" else ["const", encode_value(v, "result")]
               for kind, v in cap.out_leaves]
    program = {"name": type(sg.fn).__name__ if sg._module is not None else getattr(sg.fn, "__name__", "fn"),
               "in_spec": treespec_text(in_spec, "argument"), "signature": signature,
               "device": next((t.device.type for t in leaves if isinstance(t, torch.Tensor)), "cpu"),
               "state": list(cap.state_names), "sources": len(cap.sources), "lifted": lifted,
               "out_spec": treespec_text(cap.out_spec, "result"), "outputs": outputs,
               "num_user_outputs": lowered.num_user_outputs, "mutated_inputs": list(lowered.mutated_inputs),
               "donate": {str(k): j for k, j in sg.compiled.donate.items()},
               "autocast": autocast_json(sg.key[5][0])}  # the autocast regions of the trace
    assert len(graph.inputs) == len(cap.tensor_positions) + len(tensors) + sum("seed" in e for e in lifted)
    autodiff = autodiff_text(sg, graph)
    if autodiff is not None:
        files["autodiff.ir"] = autodiff.encode()
    files["program.json"] = json.dumps(program, indent=1).encode()
    files["weights.safetensors"] = safetensors_bytes(tensors)
    return files


def autodiff_text(sg: StaticGraph, graph: Graph) -> str | None:
    """The graph a loaded function differentiates (api/load.py): the trace before the passes, whose
    gradient markers (detach, no_grad) the optimized graph no longer has, over the same inputs. None
    (the loaded function then refuses gradients) for a program that updates its inputs in place (its
    gradient history needs the trace's write-back rules) or whose text does not parse back."""
    if sg.lowered.mutated_inputs:
        return None
    text = format_graph(sg.graph)
    parsed = parse_graph(text)
    if format_graph(parsed) != text or [v.type for v in parsed.inputs] != [v.type for v in graph.inputs]:
        return None
    return text

