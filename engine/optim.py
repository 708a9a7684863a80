"""Stochastic gradient descent with momentum, weight decay and per-group multipliers.

For each parameter ``w`` with gradient ``g``, learning rate ``lr * lr_mult`` and
decay ``wd * decay_mult``::

    d = g + wd * decay_mult * w
    v = momentum * v + d                 (v starts at d on the first step)
    w = w - lr * lr_mult * (d + momentum * v   if nesterov else v)

This is PyTorch's formulation; with a constant learning rate it equals Caffe's
``v = m v + lr d; w -= v``. The learning rate enters at the update, so a
schedule that changes ``lr`` takes effect at once.
"""
from __future__ import annotations

import numpy as np

from . import backend


def _fusable(w, g) -> bool:
    """Whether ``kernels.cpu.sgd`` can update this parameter (NumPy, Numba importable)."""
    from kernels import cpu
    if not cpu.available():
        return False
    from kernels.cpu import sgd
    return sgd.fusable(w, g)


class SGD:
    """``SGD(params, lr, momentum=0, weight_decay=0, nesterov=False)``.

    ``params`` is an iterable of ``Parameter``s or of dicts (parameter groups)
    ``{"params": [...], "lr_mult": 2.0, "decay_mult": 0.0}``. Each parameter's
    own ``lr_mult``/``decay_mult`` attributes multiply the group's.
    """

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        if lr < 0 or momentum < 0 or weight_decay < 0:
            raise ValueError(f"SGD: lr, momentum and weight_decay must be >= 0, got "
                             f"{lr}, {momentum}, {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov needs momentum > 0")
        self.lr, self.momentum, self.weight_decay, self.nesterov = lr, momentum, weight_decay, nesterov
        params = list(params)
        if params and not isinstance(params[0], dict):
            params = [{"params": params}]
        self.param_groups = []
        for group in params:
            g = {"params": list(group["params"]), "lr_mult": float(group.get("lr_mult", 1.0)),
                 "decay_mult": float(group.get("decay_mult", 1.0))}
            self.param_groups.append(g)
        seen = set()
        for p in self.params:
            if id(p) in seen:
                raise ValueError("SGD: a parameter appears in more than one group")
            seen.add(id(p))
        self.velocity = [None] * len(self.params)

    @property
    def params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        i, fused = 0, []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(i, p, group, fused)
                i += 1
        if fused:   # NumPy parameters: the same update in one pass each, on all cores
            from kernels.cpu import sgd
            sgd.update(fused, self.momentum, self.nesterov)

    def _update(self, i, p, group, fused):
        lr = self.lr * group["lr_mult"] * getattr(p, "lr_mult", 1.0)
        wd = self.weight_decay * group["decay_mult"] * getattr(p, "decay_mult", 1.0)
        if self.momentum and _fusable(p.data, p.grad):
            first = self.velocity[i] is None
            if first:
                self.velocity[i] = np.empty_like(p.data)
            fused.append((p.data, p.grad, self.velocity[i], lr, wd, first))
            return
        d = p.grad if wd == 0 else p.grad + wd * p.data
        if self.momentum:
            v = self.velocity[i]
            if v is None:
                v = self.velocity[i] = d.copy()
            else:
                v *= self.momentum
                v += d
            d = d + self.momentum * v if self.nesterov else v
        p.data -= lr * d  # in place: keeps the array the model and the optimizer share

    # --- checkpoints
    def state_dict(self) -> dict:
        """Hyper-parameters (JSON-able) and momentum buffers (NumPy arrays by index)."""
        return {
            "hyper": {"lr": self.lr, "momentum": self.momentum,
                      "weight_decay": self.weight_decay, "nesterov": self.nesterov},
            "velocity": {str(i): backend.to_numpy(v)
                         for i, v in enumerate(self.velocity) if v is not None},
        }

    def load_state_dict(self, state: dict) -> None:
        hyper = state["hyper"]
        self.lr = float(hyper["lr"])
        self.momentum = float(hyper["momentum"])
        self.weight_decay = float(hyper["weight_decay"])
        self.nesterov = bool(hyper["nesterov"])
        params = self.params
        velocity = [None] * len(params)
        for key, v in state["velocity"].items():
            i = int(key)
            if i >= len(params) or tuple(v.shape) != params[i].shape:
                raise ValueError(f"SGD.load_state_dict: momentum buffer {i} of shape "
                                 f"{tuple(v.shape)} does not fit the parameters")
            velocity[i] = backend.to_device(np.asarray(v), params[i].device).astype(params[i].dtype)
        self.velocity = velocity


class PolyakAverage:
    """Exponential moving average of a model's parameters (Polyak averaging), for evaluation.

    After every optimiser step ``avg = d * avg + (1 - d) * w``, with the decay warmed up as
    ``d_t = min(decay, (1 + t) / (10 + t))`` for the t-th update (t = 1, 2, ...), so that early
    averages are not dominated by the random initialisation. ``swap(model)`` exchanges the
    model's weights with the averages (call it again to undo).
    """

    def __init__(self, model, decay: float):
        if not 0 <= decay < 1:
            raise ValueError(f"PolyakAverage: decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {n: p.data.copy() for n, p in model.named_parameters()}

    def current_decay(self) -> float:
        """The decay the next update uses."""
        t = self.updates + 1
        return min(self.decay, (1 + t) / (10 + t))

    def update(self, model) -> None:
        d = self.current_decay()
        self.updates += 1
        for name, p in model.named_parameters():
            s = self.shadow[name]
            s *= d
            s += (1 - d) * p.data

    def swap(self, model) -> None:
        for name, p in model.named_parameters():
            p.data, self.shadow[name] = self.shadow[name], p.data
