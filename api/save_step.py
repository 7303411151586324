"""`ember.save` of a `compile_step` training step (api/save.py has the function case and the shared
pieces): the step graph of one batch signature, the model's state, and the optimizer as data: its class
(one of ember.optim's), its param groups' hyperparameters and which graph inputs each group holds, and
its state (tensors in optimizer.safetensors, numbers in program.json). The loaded step rebuilds the
optimizer from these (api/load_step.py), so its step counts and hyperparameters, LR schedulers
included, drive the saved graph exactly as they drove the original one.
"""

from __future__ import annotations

import json

import torch

from .. import optim as ember_optim
from .save import autocast_json, encode_value, program_files, safetensors_bytes, tensor_meta, weight_tensors
from .train import CompiledStep, _StepProgram


def rule_name(rule) -> str:
    return f"{rule.__module__}.{rule.__qualname__}"


def step_program(step: CompiledStep, x: torch.Tensor, y: torch.Tensor) -> tuple[_StepProgram, list]:
    """The step's program for batches like (x, y), built if the step has not run one yet, and the
    structure of its updates. The optimizer is left as it was: the step counters `_updates` advances
    go back, the state it creates for a parameter that had none is dropped."""
    opt = step.optimizer
    had = {id(p) for p in opt.state}
    advanced: list[dict] = []
    try:
        with torch.no_grad():
            program, updates = step._program(x, y, advanced)
    finally:
        if advanced:
            torch._foreach_sub_([state["step"] for state in advanced], 1)
        for p in [p for p in opt.state if id(p) not in had]:
            del opt.state[p]
    structure = tuple((u.rule, u.flags, len(u.scalars)) for u, _ in updates)
    return program, [[rule_name(r), json.loads(json.dumps(flags)), n] for r, flags, n in structure]


def step_files(step: CompiledStep, x: torch.Tensor, y: torch.Tensor) -> dict[str, bytes]:
    opt = step.optimizer
    if type(opt).__name__ not in ember_optim.__all__ or getattr(ember_optim, type(opt).__name__) is not type(opt):
        raise NotImplementedError(f"ember.save: the optimizer must be an ember.optim class, not {type(opt).__name__}")
    program, structure = step_program(step, x, y)
    cap, lowered = program.static.captured, program.static.lowered
    tensors = program.tensors(step.loss_module, x, y)
    index = {id(t): i for i, t in enumerate(tensors)}
    weights, lifted = weight_tensors(step.loss_module, cap, lowered.lifted)
    files, graph = program_files(program.compiled)

    sd = opt.state_dict()
    groups = []
    for group, saved in zip(opt.param_groups, sd["param_groups"]):
        if any(id(p) not in index for p in group["params"]):
            raise NotImplementedError("ember.save: the optimizer holds a tensor the model does not use")
        hyper = {}
        for k, v in saved.items():
            if k == "params":
                continue
            if isinstance(v, tuple):  # (Adam's betas)
                hyper[k] = {"tuple": [encode_value(e, f"hyperparameter {k}") for e in v]}
            else:
                hyper[k] = encode_value(v, f"hyperparameter {k}")
        groups.append({"hyper": hyper, "params": [index[id(p)] for p in group["params"]],
                       "requires_grad": [p.requires_grad for p in group["params"]]})
    opt_tensors, opt_values = {}, {}
    for i, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                opt_tensors[f"{i}/{k}"] = v
            else:
                opt_values.setdefault(str(i), {})[k] = encode_value(v, f"optimizer state {k}")
    n_out = program.n_out
    program_json = {
        "name": type(step.loss_module.model).__name__, "x": tensor_meta(x), "y": tensor_meta(y),
        "device": x.device.type, "state": list(cap.state_names), "sources": len(cap.sources), "lifted": lifted,
        "num_user_outputs": lowered.num_user_outputs, "mutated_inputs": list(lowered.mutated_inputs),
        "donated_buffers": sorted(program.donated_buffers), "n_out": n_out,
        "unreached": program.skipped,  # parameters the loss does not reach: no update, as in eager
        "donate": {str(k): j for k, j in program.compiled.donate.items()}, "training": step.loss_module.model.training,
        "updates": structure, "optimizer": {"class": type(opt).__name__, "groups": groups, "values": opt_values},
        "autocast": autocast_json()}  # the program was traced under it (`step_program` runs here)
    assert graph.inputs[len(tensors)].name == "hp"  # then the optimizer states, in update order
    files["program.json"] = json.dumps(program_json, indent=1).encode()
    files["weights.safetensors"] = safetensors_bytes(weights)
    files["optimizer.safetensors"] = safetensors_bytes(opt_tensors)
    return files
