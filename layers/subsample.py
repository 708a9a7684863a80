"""LeNet-5's trainable subsampling (layers S2 and S4 of LeCun et al. 1998).

x (N, C, H, W) with H, W multiples of k; coef, bias (C,)::

    s[n, c, i, j] = sum_{a, b < k} x[n, c, k i + a, k j + b]      (non-overlapping k x k)
    y[n, c, i, j] = coef[c] * s[n, c, i, j] + bias[c]

"The four inputs to a unit in S2 are added, then multiplied by a trainable
coefficient, and added to a trainable bias" (section II.B): two parameters per map.
The squashing function that follows is a separate op (``layers.tanh``).

Backward::

    gcoef[c] = sum gy * s,   gbias[c] = sum gy,   gx[.., k i + a, k j + b] = coef[c] gy[.., i, j]
"""
from __future__ import annotations

import numpy as np

from engine.backend import get_array_module
from engine.module import Module, Parameter
from engine.tensor import Function, Tensor

from ._check import check_float, check_rank


class SubsampleFunction(Function):
    def __init__(self, ksize: int = 2):
        if ksize < 1:
            raise ValueError(f"subsample: ksize must be >= 1, got {ksize}")
        self.k = int(ksize)

    def forward(self, x, coef, bias):
        op, k = "subsample", self.k
        check_rank(op, "x", x, 4, "N, C, H, W")
        check_float(op, x=x, coef=coef, bias=bias)
        n, c, h, w = x.shape
        if h % k or w % k:
            raise ValueError(f"subsample: the map {h}x{w} must be a multiple of the "
                             f"{k}x{k} window (x {tuple(x.shape)})")
        for name, a in (("coef", coef), ("bias", bias)):
            if tuple(a.shape) != (c,):
                raise ValueError(f"subsample: {name} must have shape ({c},), got {tuple(a.shape)}")
        self.s = x.reshape(n, c, h // k, k, w // k, k).sum(axis=(3, 5))
        self.coef = coef
        return self.s * coef.reshape(1, c, 1, 1) + bias.reshape(1, c, 1, 1)

    def macs(self, xs, ys) -> int:
        return ys[0].size * self.k * self.k

    def backward(self, gy):
        xp = get_array_module(gy)
        n, c, oh, ow = gy.shape
        k = self.k
        gx = None
        if self.needs_grad[0]:
            share = (gy * self.coef.reshape(1, c, 1, 1))[:, :, :, None, :, None]
            gx = xp.ascontiguousarray(xp.broadcast_to(share, (n, c, oh, k, ow, k)))
            gx = gx.reshape(n, c, oh * k, ow * k)
        gcoef = (gy * self.s).sum(axis=(0, 2, 3)) if self.needs_grad[1] else None
        gbias = gy.sum(axis=(0, 2, 3)) if self.needs_grad[2] else None
        return gx, gcoef, gbias


def subsample(x, coef, bias, ksize: int = 2) -> Tensor:
    """coef[c] * (sum of each non-overlapping ksize x ksize window) + bias[c]."""
    return SubsampleFunction(ksize)(x, coef, bias)


class Subsample2d(Module):
    """Trainable subsampling of ``channels`` maps; ``coef`` and ``bias`` (C,) start at
    ``coef_fill`` and ``bias_fill`` (LeNet: 1/4, so that a unit first averages, and 0)."""

    def __init__(self, channels: int, ksize: int = 2, coef_fill: float = 0.25,
                 bias_fill: float = 0.0, dtype="float32"):
        super().__init__()
        self.channels, self.ksize = channels, ksize
        self.coef = Parameter(np.full(channels, coef_fill, dtype=dtype))
        self.bias = Parameter(np.full(channels, bias_fill, dtype=dtype))

    def forward(self, x):
        return subsample(x, self.coef, self.bias, self.ksize)

    def extra_repr(self):
        return f"{self.channels}, k={self.ksize}"
