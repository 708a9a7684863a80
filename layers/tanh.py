"""Hyperbolic tangent, plain and LeNet-5's scaled form.

    y = A tanh(S x),   dy/dx = A S (1 - tanh(S x)^2) = S (A - y^2 / A)

LeCun et al. 1998 (appendix A) squash every unit with A = 1.7159, S = 2/3: then
f(1) = 1 and f(-1) = -1, the second derivative is largest at x = 1, and the gain near 0
is about 1, so unit-variance inputs keep unit variance. Backward keeps y only.
"""
from __future__ import annotations

from engine.backend import get_array_module
from engine.module import Module
from engine.tensor import Function, Tensor

from ._check import check_float

LECUN_A, LECUN_S = 1.7159, 2.0 / 3.0


class TanhFunction(Function):
    def __init__(self, scale_out: float = 1.0, scale_in: float = 1.0):
        self.a, self.s = float(scale_out), float(scale_in)

    def forward(self, x):
        check_float("tanh", x=x)
        xp = get_array_module(x)
        t = xp.tanh(x * x.dtype.type(self.s)) if self.s != 1.0 else xp.tanh(x)
        self.y = t * x.dtype.type(self.a) if self.a != 1.0 else t
        return self.y

    def backward(self, gy):
        y = self.y
        return gy * (self.s * (self.a - y * y / self.a))


def tanh(x) -> Tensor:
    """tanh(x), elementwise."""
    return TanhFunction()(x)


def scaled_tanh(x, scale_out: float = LECUN_A, scale_in: float = LECUN_S) -> Tensor:
    """``scale_out * tanh(scale_in * x)``; LeNet-5's 1.7159 tanh(2x/3) by default."""
    return TanhFunction(scale_out, scale_in)(x)


class Tanh(Module):
    """``Tanh()`` is tanh; ``Tanh(1.7159, 2/3)`` LeNet-5's squashing function."""

    def __init__(self, scale_out: float = 1.0, scale_in: float = 1.0):
        super().__init__()
        self.scale_out, self.scale_in = scale_out, scale_in

    def forward(self, x):
        return TanhFunction(self.scale_out, self.scale_in)(x)

    def extra_repr(self):
        return f"{self.scale_out} * tanh({self.scale_in:.4g} x)"
