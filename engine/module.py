"""``Module`` and ``Parameter``: named trees of weights with state dicts.

Assigning a ``Parameter`` or a ``Module`` as an attribute registers it, in
assignment order, so ``named_parameters()`` yields dot-separated paths such as
``inception_3a.conv_1x1.weight``: the state-dict keys of the model contract.

A *buffer* (``register_buffer``) is an array that belongs to the model's state
but is not trained: batch norm's running mean and variance. Buffers follow the
parameters in ``state_dict()``, load with them and move with ``to()``; the
optimizer never sees them.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

from . import backend
from . import profile as _profile
from .tensor import Tensor


class Parameter(Tensor):
    """A trainable tensor. ``lr_mult`` and ``decay_mult`` scale the optimizer's
    learning rate and weight decay for this parameter (Caffe trains biases at
    twice the learning rate and without decay)."""

    def __init__(self, data, lr_mult: float = 1.0, decay_mult: float = 1.0):
        super().__init__(data, requires_grad=True)
        self.lr_mult = float(lr_mult)
        self.decay_mult = float(decay_mult)

    def __repr__(self):
        return f"Parameter(shape={self.shape}, dtype={self.dtype}, device={self.device})"


class Module:
    """Base class of layers and networks. Subclasses define ``forward``."""

    def __init__(self):
        object.__setattr__(self, "_params", OrderedDict())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "training", True)

    def __setattr__(self, name, value):
        if "_params" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call Module.__init__() before "
                               f"assigning attributes")
        if name in self._buffers:          # reassigning a buffer keeps it registered
            self._buffers[name] = value
            object.__setattr__(self, name, value)
            return
        self._params.pop(name, None)
        self._modules.pop(name, None)
        if isinstance(value, Parameter):
            self._params[name] = value
        elif isinstance(value, Module):
            self._modules[name] = value
        object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        prof = _profile.active()
        if prof is None:
            return self.forward(*args, **kwargs)
        prof.enter_module(self)
        try:
            return self.forward(*args, **kwargs)
        finally:
            prof.exit_module()

    def forward(self, *args, **kwargs):
        raise NotImplementedError

    # --- traversal
    def named_modules(self, prefix: str = ""):
        yield prefix, self
        for name, m in self._modules.items():
            yield from m.named_modules(f"{prefix}.{name}" if prefix else name)

    def children(self):
        return iter(self._modules.values())

    def named_parameters(self, prefix: str = ""):
        for mod_name, m in self.named_modules(prefix):
            for name, p in m._params.items():
                yield (f"{mod_name}.{name}" if mod_name else name), p

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def register_buffer(self, name: str, array) -> None:
        """Keep ``array`` as ``self.<name>``: saved, loaded and moved like a parameter,
        never trained (running statistics)."""
        if name in self._params or name in self._modules:
            raise ValueError(f"{type(self).__name__}: {name!r} is already a parameter or module")
        self._buffers[name] = array
        object.__setattr__(self, name, array)

    def named_buffers(self, prefix: str = ""):
        for mod_name, m in self.named_modules(prefix):
            for name, b in m._buffers.items():
                yield (f"{mod_name}.{name}" if mod_name else name), b

    def _buffer_slots(self):
        """Full name -> (owning module, attribute name), for every buffer."""
        return OrderedDict(((f"{mod_name}.{name}" if mod_name else name), (m, name))
                           for mod_name, m in self.named_modules() for name in m._buffers)

    def num_parameters(self) -> int:
        return int(sum(p.size for p in self.parameters()))

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = None

    # --- modes and devices
    def train(self, mode: bool = True) -> "Module":
        for _, m in self.named_modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def to(self, device) -> "Module":
        """Move every parameter to ``device`` in place ('cpu', 'cuda' or 'auto')."""
        device = backend.normalize_device(device)
        for p in self.parameters():
            p.data = backend.to_device(p.data, device)
            if p.grad is not None:
                p.grad = backend.to_device(p.grad, device)
        for m, name in self._buffer_slots().values():
            setattr(m, name, backend.to_device(m._buffers[name], device))
        return self

    @property
    def device(self) -> str:
        params = self.parameters()
        return params[0].device if params else "cpu"

    # --- state dicts
    def state_dict(self) -> "OrderedDict[str, np.ndarray]":
        """Name -> the parameter's array, then each buffer's (live, not copies; NumPy or CuPy)."""
        state = OrderedDict((name, p.data) for name, p in self.named_parameters())
        state.update(self.named_buffers())
        return state

    def load_state_dict(self, state, strict: bool = True) -> None:
        """Copy arrays into the parameters, converting to their device and dtype.

        Raises ``KeyError`` naming missing and unexpected keys (when ``strict``)
        and ``ValueError`` naming every shape mismatch, before changing anything.
        """
        own = OrderedDict(self.named_parameters())
        buffers = self._buffer_slots()
        own.update((k, m._buffers[name]) for k, (m, name) in buffers.items())
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        if strict and (missing or unexpected):
            parts = []
            if missing:
                parts.append(f"missing keys: {', '.join(missing)}")
            if unexpected:
                parts.append(f"unexpected keys: {', '.join(unexpected)}")
            raise KeyError(f"load_state_dict({type(self).__name__}): " + "; ".join(parts))
        mismatched = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {p.shape}"
                      for k, p in own.items() if k in state and tuple(state[k].shape) != p.shape]
        if mismatched:
            raise ValueError(f"load_state_dict({type(self).__name__}): shape mismatch for "
                             + "; ".join(mismatched))
        for k, p in own.items():
            if k in state:
                device = backend.device_of(p.data if isinstance(p, Tensor) else p)
                value = backend.to_device(backend.to_numpy(state[k]) if device == "cpu"
                                          else state[k], device)
                value = value.astype(p.dtype, copy=True)
                if k in buffers:
                    m, name = buffers[k]
                    setattr(m, name, value)
                else:
                    p.data = value

    def __repr__(self):
        lines = [f"{type(self).__name__}("]
        for name, m in self._modules.items():
            sub = repr(m).replace("\n", "\n  ")
            lines.append(f"  ({name}): {sub}")
        lines.append(")")
        return "\n".join(lines) if self._modules else f"{type(self).__name__}({self.extra_repr()})"

    def extra_repr(self) -> str:
        return ""


class Sequential(Module):
    """Modules applied one after another, registered as "0", "1", ... or by name."""

    def __init__(self, *modules, **named):
        super().__init__()
        for i, m in enumerate(modules):
            setattr(self, str(i), m)
        for name, m in named.items():
            setattr(self, name, m)

    def forward(self, x):
        for m in self._modules.values():
            x = m(x)
        return x
