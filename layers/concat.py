"""Depth concatenation: the Inception module's four branches joined along channels.

The plain path is ``xp.concatenate``; on NumPy arrays ``layers.dispatch`` picks the CPU path,
the same copy with the images shared among the pool's threads (``kernels.cpu.arrays``).
Backward hands each input its slice of gy (views, no copy).
"""
from __future__ import annotations

from engine.backend import cpu_kernels, get_array_module
from engine.tensor import Tensor

from .dispatch import KernelFunction


class ConcatFunction(KernelFunction):
    """xs[i] (N, C_i, H, W) -> (N, sum C_i, H, W); backward splits gy back by C_i."""

    op = "concat"

    def __init__(self, axis: int = 1):
        self.axis = axis

    def setup(self, *xs):
        if not xs:
            raise ValueError("concat: needs at least one input")
        ref = xs[0].shape
        for i, x in enumerate(xs):
            if x.ndim != len(ref) or any(a != b for d, (a, b) in enumerate(zip(x.shape, ref))
                                         if d != self.axis % len(ref)):
                raise ValueError(f"concat: input {i} has shape {tuple(x.shape)}, which does not "
                                 f"match {tuple(ref)} outside axis {self.axis}")
        self.sizes = [x.shape[self.axis] for x in xs]

    def cpu_supports(self, *xs) -> bool:
        return self.axis % xs[0].ndim != 0

    def forward_plain(self, *xs):
        return get_array_module(*xs).concatenate(xs, axis=self.axis)

    def forward_cpu(self, *xs):
        arrays = cpu_kernels("arrays")
        return arrays.concat(xs, self.axis % xs[0].ndim)

    def backward_plain(self, gy):
        index = [slice(None)] * gy.ndim
        grads, start = [], 0
        for size in self.sizes:
            index[self.axis] = slice(start, start + size)
            grads.append(gy[tuple(index)])
            start += size
        return tuple(grads)

    backward_cpu = backward_plain


def concat(xs, axis: int = 1) -> Tensor:
    return ConcatFunction(axis)(*xs)
