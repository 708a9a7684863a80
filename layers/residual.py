"""The residual join of ResNet: ``y = relu(a + b)``, a block's output plus its shortcut.

    y = max(a + b, 0),   ga = gb = gy * (y > 0)

One op instead of an add and a ReLU: it keeps only y (for the mask), not a + b as
well. Both inputs receive the same gradient array; the engine adds it into each
input's pending gradient (``a`` is usually a function of the block input that
``b`` is, or ``b`` is that input itself, and the two contributions then sum there).
Backward functions never modify the gradients they are given, so sharing is safe.
"""
from __future__ import annotations

from engine.backend import get_array_module
from engine.tensor import Function, Tensor

from ._check import check_float


class AddReLUFunction(Function):
    def forward(self, a, b):
        check_float("add_relu", a=a, b=b)
        if a.shape != b.shape:
            raise ValueError(f"add_relu: shapes differ, {tuple(a.shape)} and {tuple(b.shape)} "
                             f"(a projection shortcut must match the block's output)")
        xp = get_array_module(a)
        self.y = y = a + b
        xp.maximum(y, 0, out=y)
        return y

    def backward(self, gy):
        g = gy * (self.y > 0)
        return g, g


def add_relu(a, b) -> Tensor:
    """relu(a + b) for two tensors of one shape."""
    return AddReLUFunction()(a, b)
