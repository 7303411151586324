"""SGD, RMSprop, Adam and AdamW whose `step()` runs as fused ember kernels.

Each class subclasses its torch.optim namesake, so the constructor arguments, defaults and checks,
param groups (`add_param_group`, per-group hyperparameters), `zero_grad`, hooks, LR schedulers and
the `state_dict` format are torch's own: a state_dict moves between ember and torch.optim in both
directions. Only `step()` differs: each parameter's update is an IR rule (below, next to the torch
code it mirrors, operation by operation so rounding matches torch's single-tensor CPU path), and
`engine.FusedStep` runs all of them as one graph, one multi-tensor kernel per dtype group, in place.

Not supported (raise at construction): `differentiable=True`, `capturable=True`, `fused=True`
(ember fuses its own kernels; `foreach` is accepted and ignored), complex and sparse gradients.
"""

from __future__ import annotations

import functools

import torch

from .engine import Builder, FusedStep, ParamUpdate


def _scalar_dtype() -> torch.dtype:
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _share_counters(states: list[dict]) -> None:
    """Make the step counters just created for `states` 0-dim views of one 1-D buffer, in order, so
    that a step advances and reads them all with one op each (`_advance`). Only fresh counters are
    rebased (no one holds them yet); each stays a 0-dim tensor of torch's dtype, and a state_dict
    saves and loads them as torch's own."""
    steps = [st["step"] for st in states if "step" in st]
    if len(steps) < 2 or len({(t.dtype, t.device) for t in steps}) != 1 or any(t.dim() for t in steps):
        return
    base = torch.stack(steps)
    for i, st in enumerate(st for st in states if "step" in st):
        st["step"] = base[i]


@functools.lru_cache(maxsize=256)
def _lerp_weight(w: float, dtype: torch.dtype) -> tuple[bool, float, float]:
    """(|w| < 0.5, w, 1 - w rounded in `dtype`): the branch and operands of torch's lerp kernel."""
    wt = torch.tensor(w, dtype=dtype)
    return bool(abs(wt) < 0.5), float(wt), float(1 - wt)


def _cdtype(p: torch.Tensor) -> torch.dtype:
    return torch.float64 if p.dtype == torch.float64 else torch.float32


class _EmberOptimizer:
    """Mixin over a torch.optim class: `step()` builds one `ParamUpdate` per parameter with a
    gradient (`_update`) and runs them fused. After a step, `num_kernels` is the number of kernels
    it launched and `in_place` whether they wrote the parameters and states directly."""

    _unsupported = ("differentiable", "capturable", "fused")

    def __init__(self, params, *args, **kwargs):
        super().__init__(params, *args, **kwargs)  # the torch.optim class after this mixin in the MRO
        self._check_supported()

    def _check_supported(self) -> None:
        for group in self.param_groups:
            for flag in self._unsupported:
                if group.get(flag):
                    raise NotImplementedError(f"ember.optim.{type(self).__name__}: {flag}=True is not supported")

    def add_param_group(self, param_group: dict) -> None:
        super().add_param_group(param_group)
        self._check_supported()

    @property
    def engine(self) -> FusedStep:
        if getattr(self, "_ember_engine", None) is None:
            self._ember_engine = FusedStep()
        return self._ember_engine

    @property
    def num_kernels(self) -> int:
        return self.engine.num_kernels

    @property
    def in_place(self) -> bool:
        return self.engine.in_place

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            params = []
            for group in self.param_groups:
                for p in group["params"]:
                    grad = p.grad
                    if grad is None:
                        continue
                    if grad.is_sparse:
                        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")
                    if p.dtype.is_complex:  # (not torch.is_complex: a Parameter pays torch-function dispatch)
                        raise NotImplementedError(f"ember.optim.{type(self).__name__}: complex parameters")
                    params.append((group, p))
            self.engine(self._updates(params))
        return loss

    def _updates(self, params: list[tuple[dict, torch.Tensor]]) -> list[ParamUpdate]:
        """One `ParamUpdate` per (group, parameter). Step counters advance together, as torch's foreach
        path does: one in-place add and one read of all of them, not two host ops per parameter."""
        get = self.state.get
        empty: dict = {}
        fresh = [p for _, p in params if "step" not in get(p, empty)]
        for group, p in params:
            self._init_state(group, p)
        if fresh:
            _share_counters([get(p, empty) for p in fresh])
        # (self.state is a defaultdict: `.get`, so that a stateless parameter (SGD) gets no entry, as in torch)
        states = [get(p, empty) for _, p in params]  # one lookup per parameter
        steps = [st["step"] for st in states if "step" in st]
        values = iter(self._advance(steps) if steps else ())
        # a group's scalars for one step count, worked out once per step (`_AdamBase._update`)
        self._step_memo: dict = {}
        try:
            return [self._update(group, p, next(values) if "step" in st else None, st or None)
                    for (group, p), st in zip(params, states)]
        except BaseException:  # nothing stepped: the counters go back
            if steps:
                torch._foreach_sub_(steps, 1)
            raise
        finally:
            self._step_memo = {}

    def _advance(self, steps: list[torch.Tensor]) -> list[float]:
        """Add 1 to every step counter; their new values. Counters made together are elements of one
        buffer (`_share_counters`): while `steps` is exactly that buffer, one `add_` and one `tolist`
        (~5 us for 12 counters on CPU, against ~30 for `_foreach_add_` and a stack). Otherwise (a
        counter replaced or loaded, parameters stepping in another order or subset): torch's foreach."""
        base = steps[0]._base
        if base is not None and base.numel() == len(steps) and all(
                t._base is base and t.storage_offset() == i for i, t in enumerate(steps)):
            base.add_(1)
            return base.tolist()
        torch._foreach_add_(steps, 1)
        one_kind = len({(t.dtype, t.device) for t in steps}) == 1  # (a loaded state may mix them)
        return torch.stack(steps).tolist() if one_kind else [float(t) for t in steps]

    def _init_state(self, group: dict, p: torch.Tensor) -> None:
        """Create the parameter's optimizer state on its first step (torch's names and layouts)."""

    def _update(self, group: dict, p: torch.Tensor, step: float | None, state: dict | None = None) -> ParamUpdate:
        """The parameter's update; `step`: its step counter, already advanced (None: it keeps none);
        `state`: `self.state[p]` when the caller looked it up already."""
        raise NotImplementedError


# -- SGD ----------------------------------------------------------------------------------------------


def sgd_rule(b: Builder, p, g, states, flags):
    """torch's _single_tensor_sgd. Slots: weight_decay, momentum', 1-dampening', momentum, -lr, where
    momentum' = 0 and 1-dampening' = 1 on a buffer's first step (buf = 0*0 + 1*grad = grad, torch's
    clone), so the first step needs no graph of its own."""
    weight_decay, use_momentum, nesterov, maximize = flags
    if maximize:
        g = b.neg(g)
    if weight_decay:
        g = b.add(g, b.mul(b.s(0), p))                      # grad.add(param, alpha=weight_decay)
    new_states = []
    if use_momentum:
        buf = b.add(b.mul(states[0], b.s(1)), b.mul(b.s(2), g))  # buf.mul_(momentum).add_(grad, alpha=1-d)
        new_states.append(buf)
        g = b.add(g, b.mul(b.s(3), buf)) if nesterov else buf
    return b.add(p, b.mul(b.s(4), g)), new_states          # param.add_(grad, alpha=-lr)


class SGD(_EmberOptimizer, torch.optim.SGD):
    """torch.optim.SGD (lr, momentum, dampening, weight_decay, nesterov, maximize), fused."""

    def _update(self, group, p, step, state=None):
        momentum = float(group["momentum"])
        wd = float(group["weight_decay"])
        states, mom, damp = [], momentum, 1.0 - float(group["dampening"])
        if momentum != 0:
            state = self.state[p]
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                mom, damp = 0.0, 1.0
            states = [state["momentum_buffer"]]
        flags = (wd != 0, momentum != 0, bool(group["nesterov"]), bool(group["maximize"]))
        return ParamUpdate(sgd_rule, flags, (wd, mom, damp, momentum, -float(group["lr"])), p, p.grad, states)


# -- RMSprop ------------------------------------------------------------------------------------------


def rmsprop_rule(b: Builder, p, g, states, flags):
    """torch's _single_tensor_rmsprop. Slots: weight_decay, alpha, 1-alpha, lerp weight 1-alpha and its
    complement, eps, momentum, -lr. States: square_avg, [momentum_buffer], [grad_avg]."""
    weight_decay, centered, use_momentum, maximize, small = flags
    square_avg, rest = states[0], list(states[1:])
    buf = rest.pop(0) if use_momentum else None
    grad_avg = rest.pop(0) if centered else None
    if maximize:
        g = b.neg(g)
    if weight_decay:
        g = b.add(g, b.mul(b.s(0), p))
    square_avg = b.add(b.mul(square_avg, b.s(1)), b.mul(b.mul(b.s(2), g), g))  # mul_(alpha).addcmul_(g, g, 1-a)
    if centered:
        grad_avg = b.lerp(grad_avg, g, small, b.s(3), b.s(4))
        avg = b.sqrt(b.sub(square_avg, b.mul(grad_avg, grad_avg)))  # addcmul(ga, ga, value=-1).sqrt_()
    else:
        avg = b.sqrt(square_avg)
    avg = b.add(avg, b.s(5))
    new_states = [square_avg]
    if use_momentum:
        buf = b.add(b.mul(buf, b.s(6)), b.div(g, avg))     # buf.mul_(momentum).addcdiv_(grad, avg)
        new_states.append(buf)
        p = b.add(p, b.mul(b.s(7), buf))                   # param.add_(buf, alpha=-lr)
    else:
        p = b.add(p, b.div(b.mul(b.s(7), g), avg))         # param.addcdiv_(grad, avg, value=-lr)
    if centered:
        new_states.append(grad_avg)
    return p, new_states


class RMSprop(_EmberOptimizer, torch.optim.RMSprop):
    """torch.optim.RMSprop (lr, alpha, eps, weight_decay, momentum, centered, maximize), fused."""

    def _init_state(self, group, p):
        state = self.state[p]
        if len(state) == 0:
            state["step"] = torch.zeros((), dtype=_scalar_dtype())
            state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["momentum"] > 0:
                state["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["centered"]:
                state["grad_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(self, group, p, step, state=None):
        state = state if state is not None else self.state[p]
        alpha, momentum, wd = float(group["alpha"]), float(group["momentum"]), float(group["weight_decay"])
        small, w, one_minus_w = _lerp_weight(1 - alpha, _cdtype(p))
        states = [state["square_avg"]]
        if momentum > 0:
            states.append(state["momentum_buffer"])
        if group["centered"]:
            states.append(state["grad_avg"])
        flags = (wd != 0, bool(group["centered"]), momentum > 0, bool(group["maximize"]), small)
        scalars = (wd, alpha, 1 - alpha, w, one_minus_w, float(group["eps"]), momentum, -float(group["lr"]))
        return ParamUpdate(rmsprop_rule, flags, scalars, p, p.grad, states)


# -- Adam / AdamW -------------------------------------------------------------------------------------


def adam_rule(b: Builder, p, g, states, flags):
    """torch's _single_tensor_adam (capturable=False). Slots: weight_decay (Adam) or 1 - lr*weight_decay
    (AdamW), lerp weight 1-beta1 and its complement, beta2, 1-beta2, sqrt(1-beta2**step), eps,
    -lr/(1-beta1**step). States: exp_avg, exp_avg_sq, [max_exp_avg_sq]."""
    weight_decay, decoupled, amsgrad, maximize, small = flags
    exp_avg, exp_avg_sq = states[0], states[1]
    if maximize:
        g = b.neg(g)
    if weight_decay:
        if decoupled:
            p = b.mul(p, b.s(0))                           # param.mul_(1 - lr * weight_decay)
        else:
            g = b.add(g, b.mul(b.s(0), p))                 # grad.add(param, alpha=weight_decay)
    exp_avg = b.lerp(exp_avg, g, small, b.s(1), b.s(2))    # exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq = b.add(b.mul(exp_avg_sq, b.s(3)), b.mul(b.mul(b.s(4), g), g))
    new_states = [exp_avg, exp_avg_sq]
    second = exp_avg_sq
    if amsgrad:
        second = b.maximum(states[2], exp_avg_sq)         # torch.maximum(max_exp_avg_sq, exp_avg_sq)
        new_states.append(second)
    denom = b.add(b.div(b.sqrt(second), b.s(5)), b.s(6))  # (sqrt / bias_correction2_sqrt).add_(eps)
    return b.add(p, b.div(b.mul(b.s(7), exp_avg), denom)), new_states  # addcdiv_(m, denom, -step_size)


class _AdamBase(_EmberOptimizer):
    _decoupled = False

    def _init_state(self, group, p):
        state = self.state[p]
        if len(state) == 0:
            state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if group["amsgrad"]:
                state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

    def _update(self, group, p, step, state=None):
        state = state if state is not None else self.state[p]
        memo = getattr(self, "_step_memo", None)
        key = (id(group), step, _cdtype(p))  # (the group's values do not change within one step)
        hit = memo.get(key) if memo is not None else None
        if hit is None:
            lr, wd, eps = float(group["lr"]), float(group["weight_decay"]), float(group["eps"])
            beta1, beta2 = (float(x) for x in group["betas"])
            decoupled = bool(group.get("decoupled_weight_decay", self._decoupled))
            small, w, one_minus_w = _lerp_weight(1 - beta1, key[2])
            bias_correction1 = 1 - beta1**step
            bias_correction2 = 1 - beta2**step
            step_size = lr / bias_correction1
            flags = (wd != 0, decoupled, bool(group["amsgrad"]), bool(group["maximize"]), small)
            scalars = (1 - lr * wd if decoupled else wd, w, one_minus_w, beta2, 1 - beta2, bias_correction2**0.5,
                       eps, -step_size)
            hit = (flags, scalars)
            if memo is not None:
                memo[key] = hit
        flags, scalars = hit
        states = [state["exp_avg"], state["exp_avg_sq"]]
        if flags[2]:
            states.append(state["max_exp_avg_sq"])
        return ParamUpdate(adam_rule, flags, scalars, p, p.grad, states)


class Adam(_AdamBase, torch.optim.Adam):
    """torch.optim.Adam (lr, betas, eps, weight_decay, amsgrad, maximize), fused."""


class AdamW(_AdamBase, torch.optim.AdamW):
    """torch.optim.AdamW (lr, betas, eps, weight_decay, amsgrad, maximize), fused."""

    _decoupled = True
