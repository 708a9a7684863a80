"""Optimisers (SGD with momentum, Adam) and Polyak averaging.

Both optimisers take per-group multipliers (Caffe's ``lr_mult``/``decay_mult``): for each
parameter ``w`` with gradient ``g`` the rate is ``lr * lr_mult`` and the decay
``wd * decay_mult``.

SGD (the paper's optimiser)::

    d = g + wd * decay_mult * w
    v = momentum * v + d                 (v starts at d on the first step)
    w = w - lr * lr_mult * (d + momentum * v   if nesterov else v)

This is PyTorch's formulation; with a constant learning rate it equals Caffe's
``v = m v + lr d; w -= v``. The learning rate enters at the update, so a
schedule that changes ``lr`` takes effect at once.

Adam (Kingma and Ba 2015) with decoupled weight decay (Loshchilov and Hutter 2019), for the
t-th step::

    m = beta1 * m + (1 - beta1) * g          (m, v start at 0)
    v = beta2 * v + (1 - beta2) * g * g
    w = w - lr * lr_mult * (wd * decay_mult * w
                            + (m / (1 - beta1**t)) / (sqrt(v / (1 - beta2**t)) + eps))

Each parameter's step is its gradient's running mean over its running root-mean-square, so
every layer moves at about ``lr`` per step whatever the scale of its gradients; networks
without batch normalisation, whose layers' gradients differ by orders of magnitude at the
start, leave their initial plateau in far fewer steps than with SGD.
"""
from __future__ import annotations

import numpy as np

from . import backend


def _fused_kernels(w, g):
    """``kernels.cpu.sgd`` when it can update this parameter (NumPy, Numba importable)."""
    if not backend.cpu_kernels().available():
        return None
    sgd = backend.cpu_kernels("sgd")
    return sgd if sgd.fusable(w, g) else None


class Optimizer:
    """What SGD and Adam share: parameter groups, ``zero_grad``, per-parameter buffers
    (``self.buffers[name][i]`` for the i-th parameter, created at its first step) and
    their checkpointing.

    ``params`` is an iterable of ``Parameter``s or of dicts (parameter groups)
    ``{"params": [...], "lr_mult": 2.0, "decay_mult": 0.0}``. Each parameter's
    own ``lr_mult``/``decay_mult`` attributes multiply the group's.
    Subclasses set ``buffer_names`` and ``hyper_names`` and write ``step``.
    """
    buffer_names: tuple = ()
    hyper_names: tuple = ()

    def __init__(self, params, lr: float, weight_decay: float):
        name = type(self).__name__
        if lr < 0 or weight_decay < 0:
            raise ValueError(f"{name}: lr and weight_decay must be >= 0, got {lr}, {weight_decay}")
        self.lr, self.weight_decay = lr, weight_decay
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
                raise ValueError(f"{name}: a parameter appears in more than one group")
            seen.add(id(p))
        self.buffers = {b: [None] * len(self.params) for b in self.buffer_names}

    @property
    def params(self):
        return [p for g in self.param_groups for p in g["params"]]

    @classmethod
    def hyper_keys(cls) -> tuple:
        """The hyper-parameters a checkpoint keeps (and a wrapper forwards)."""
        return ("lr", "weight_decay") + cls.hyper_names

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _with_grads(self):
        """(index, parameter, its rate, its decay) of every parameter that has a gradient."""
        i = 0
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    lr = self.lr * group["lr_mult"] * getattr(p, "lr_mult", 1.0)
                    wd = self.weight_decay * group["decay_mult"] * getattr(p, "decay_mult", 1.0)
                    yield i, p, lr, wd
                i += 1

    # --- checkpoints
    def state_dict(self) -> dict:
        """Hyper-parameters (JSON-able) and buffers (NumPy arrays), keyed ``<name><i>`` for
        the i-th parameter (SGD's momentum buffers: just ``<i>``)."""
        return {"hyper": {k: getattr(self, k) for k in self.hyper_keys()},
                "buffers": {f"{self._prefix(b)}{i}": backend.to_numpy(a)
                            for b, arrays in self.buffers.items()
                            for i, a in enumerate(arrays) if a is not None}}

    def load_state_dict(self, state: dict) -> None:
        hyper = state["hyper"]
        for k in self.hyper_keys():
            setattr(self, k, type(getattr(self, k))(hyper[k]))
        params = self.params
        buffers = {b: [None] * len(params) for b in self.buffer_names}
        prefixes = sorted(((self._prefix(b), b) for b in self.buffer_names),
                          key=lambda pb: -len(pb[0]))
        for key, a in state["buffers"].items():
            prefix, name = next(((p, b) for p, b in prefixes if key.startswith(p)), (None, None))
            index = key[len(prefix):] if name else ""
            if not index.isdigit() or int(index) >= len(params) \
                    or tuple(a.shape) != params[int(index)].shape:
                raise ValueError(f"{type(self).__name__}.load_state_dict: buffer {key!r} of "
                                 f"shape {tuple(a.shape)} does not fit the parameters")
            p = params[int(index)]
            buffers[name][int(index)] = backend.to_device(np.asarray(a), p.device).astype(p.dtype)
        self.buffers = buffers

    def _prefix(self, buffer_name: str) -> str:
        return "" if buffer_name == self.buffer_names[0] and len(self.buffer_names) == 1 \
            else buffer_name


class SGD(Optimizer):
    """``SGD(params, lr, momentum=0, weight_decay=0, nesterov=False)``; see the module
    docstring for the update and ``Optimizer`` for ``params``."""
    buffer_names = ("velocity",)
    hyper_names = ("momentum", "nesterov")

    def __init__(self, params, lr: float, momentum: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False):
        if momentum < 0:
            raise ValueError(f"SGD: momentum must be >= 0, got {momentum}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov needs momentum > 0")
        super().__init__(params, lr, weight_decay)
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    @property
    def velocity(self) -> list:
        return self.buffers["velocity"]

    def step(self) -> None:
        fused = []
        for i, p, lr, wd in self._with_grads():
            if self.momentum and _fused_kernels(p.data, p.grad):
                first = self.velocity[i] is None
                if first:
                    self.velocity[i] = np.empty_like(p.data)
                fused.append((p.data, p.grad, self.velocity[i], lr, wd, first))
                continue
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
        if fused:   # NumPy parameters: the same update in one pass each, on all cores
            backend.cpu_kernels("sgd").update(fused, self.momentum, self.nesterov)


class Adam(Optimizer):
    """``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0)``, the weight
    decay decoupled from the gradient statistics (PyTorch's ``AdamW``); see the module
    docstring for the update and ``Optimizer`` for ``params``."""
    buffer_names = ("m", "v")
    hyper_names = ("beta1", "beta2", "eps", "steps")

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        beta1, beta2 = betas
        if not (0 <= beta1 < 1 and 0 <= beta2 < 1 and eps > 0):
            raise ValueError(f"Adam: betas must be in [0, 1) and eps > 0, got {betas}, {eps}")
        super().__init__(params, lr, weight_decay)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.steps = 0      # t: the bias corrections use it; one count for all parameters

    def step(self) -> None:
        self.steps += 1
        c1, c2 = 1.0 - self.beta1 ** self.steps, 1.0 - self.beta2 ** self.steps
        m_all, v_all, fused = self.buffers["m"], self.buffers["v"], []
        for i, p, lr, wd in self._with_grads():
            if m_all[i] is None:
                xp = backend.get_array_module(p.data)
                m_all[i], v_all[i] = xp.zeros_like(p.data), xp.zeros_like(p.data)
            if _fused_kernels(p.data, p.grad):
                fused.append((p.data, p.grad, m_all[i], v_all[i], lr, wd))
                continue
            m, v, g = m_all[i], v_all[i], p.grad
            m *= self.beta1
            m += (1 - self.beta1) * g
            v *= self.beta2
            v += (1 - self.beta2) * (g * g)
            if wd:
                p.data -= (lr * wd) * p.data
            p.data -= (lr / c1) * m / (backend.get_array_module(v).sqrt(v / c2) + self.eps)
        if fused:
            backend.cpu_kernels("sgd").adam_update(fused, self.beta1, self.beta2, self.eps, c1, c2)


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
        fused = []
        for name, p in model.named_parameters():
            s = self.shadow[name]
            if _fused_kernels(s, p.data):
                fused.append((s, p.data))
                continue
            s *= d
            s += (1 - d) * p.data
        if fused:   # NumPy parameters: one pass each, on all cores
            backend.cpu_kernels("sgd").average(fused, d)

    def swap(self, model) -> None:
        for name, p in model.named_parameters():
            p.data, self.shadow[name] = self.shadow[name], p.data
