"""Global average pooling: each channel's map reduced to its mean (NiN, ResNet).

x (N, C, H, W) -> y (N, C), ``y[n, c] = mean_{h,w} x[n, c, h, w]``; backward spreads
``gy[n, c] / (H W)`` over the whole map. Unlike ``avg_pool2d`` with a whole-map window
it needs no window arithmetic and returns the flat (N, C) a classifier takes.
"""
from __future__ import annotations

from engine.backend import get_array_module
from engine.module import Module
from engine.tensor import Function, Tensor

from ._check import check_float, check_rank


class GlobalAvgPool2dFunction(Function):
    def forward(self, x):
        check_rank("global_avg_pool2d", "x", x, 4, "N, C, H, W")
        check_float("global_avg_pool2d", x=x)
        self.x_shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, gy):
        xp = get_array_module(gy)
        n, c, h, w = self.x_shape
        share = gy / (h * w)
        return xp.ascontiguousarray(xp.broadcast_to(share[:, :, None, None], self.x_shape))


def global_avg_pool2d(x) -> Tensor:
    """(N, C, H, W) -> (N, C): the mean of each map."""
    return GlobalAvgPool2dFunction()(x)


class GlobalAvgPool2d(Module):
    def forward(self, x):
        return global_avg_pool2d(x)
