"""ReLU and (inverted) dropout."""
from __future__ import annotations

from engine.backend import get_array_module, uniform
from engine.tensor import Function, Tensor

from ._check import check_float


class ReLUFunction(Function):
    """y = max(x, 0); backward passes gy where y > 0 (keeps y, not x)."""

    def forward(self, x):
        check_float("relu", x=x)
        self.y = get_array_module(x).maximum(x, 0)
        return self.y

    def backward(self, gy):
        return gy * (self.y > 0)


def relu(x) -> Tensor:
    return ReLUFunction()(x)


class DropoutFunction(Function):
    """Inverted dropout: keep each element with probability 1 - p and scale it by 1 / (1 - p),
    so the expectation is unchanged and evaluation needs no rescaling. Keeps the mask."""

    def __init__(self, p: float):
        self.p = float(p)

    def forward(self, x):
        check_float("dropout", x=x)
        xp = get_array_module(x)
        keep = uniform(x.shape, x.dtype, xp) >= self.p
        self.mask = keep * x.dtype.type(1.0 / (1.0 - self.p))
        return x * self.mask

    def backward(self, gy):
        return gy * self.mask


def dropout(x, p: float, training: bool = True) -> Tensor:
    """Zero each element with probability ``p`` when training; the identity otherwise.

    Masks come from the engine's generator, so ``engine.manual_seed`` makes them
    reproducible; inside ``engine.backend.per_sample_random`` each sample's mask comes from
    its own key instead (the trainer's choice: masks then do not depend on the batch).
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: p must be in [0, 1), got {p}")
    if not training or p == 0.0:
        return x if isinstance(x, Tensor) else Tensor(x)
    return DropoutFunction(p)(x)
