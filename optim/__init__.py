"""ember.optim: drop-in torch.optim optimizers whose `step()` is a fused ember graph.

    opt = ember.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    loss.backward(); opt.step(); opt.zero_grad()

Same constructor arguments, param groups and `state_dict` format as torch.optim (each class
subclasses its namesake); each step runs one multi-tensor kernel per dtype group of parameters,
updating parameters and optimizer state in place. See `optimizers.py` (the update rules) and `engine.py` (graph, cache,
in-place execution).
"""

from .engine import Builder, FusedStep, ParamUpdate
from .optimizers import SGD, Adam, AdamW, RMSprop

__all__ = ["SGD", "RMSprop", "Adam", "AdamW", "FusedStep", "ParamUpdate", "Builder"]
