"""Local response normalisation across channels (AlexNet, Caffe).

x, y: (N, C, H, W). With a window of ``n = size`` channels centred on c
(zero-padded at the channel ends)::

    scale[c] = k + alpha / n * sum_{c' in window(c)} x[c']^2
    y[c]     = x[c] * scale[c] ** -beta

Backward (the window is symmetric, so "c' whose window holds c" is window(c))::

    gx[c] = gy[c] * scale[c] ** -beta
            - 2 alpha beta / n * x[c] * sum_{c' in window(c)} gy[c'] y[c'] / scale[c']

That is the plain path (NumPy or CuPy). On NumPy arrays ``layers.dispatch`` normally picks
the Numba kernels of ``kernels.cpu.lrn`` instead: forward and backward one pass each, keeping
only ``x`` and recomputing the scale in backward.
"""
from __future__ import annotations

import numpy as np

from engine.backend import cpu_kernels
from engine.tensor import Tensor

from . import caffe
from ._check import check_float, check_rank
from .dispatch import KernelFunction


def window_sum(a, size: int):
    """sum_{c' in window(c)} a[c'] over axis 1, windows of ``size`` centred, clipped at the ends.

    One slice add per offset (``size`` of them); a window wider than the
    channel count simply clips to all channels.
    """
    c = a.shape[1]
    out = a.copy()
    for d in range(1, size // 2 + 1):
        if d >= c:
            break
        out[:, d:] += a[:, :c - d]   # channel c receives c - d
        out[:, :c - d] += a[:, d:]   # channel c receives c + d
    return out


class LRNFunction(KernelFunction):
    op = "lrn"

    def __init__(self, size=caffe.LRN_SIZE, alpha=caffe.LRN_ALPHA, beta=caffe.LRN_BETA,
                 k=caffe.LRN_K, impl: str | None = None):
        if size < 1 or size % 2 == 0:
            raise ValueError(f"lrn: size must be a positive odd number (as in Caffe), got {size}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)
        self.impl = impl

    def setup(self, x):
        check_rank("lrn", "x", x, 4, "N, C, H, W")
        check_float("lrn", x=x)

    def forward_plain(self, x):
        scale = window_sum(x * x, self.size)
        scale *= self.alpha / self.size
        scale += self.k
        y = x * scale ** -self.beta
        self.x, self.scale = x, scale
        return y

    def backward_plain(self, gy):
        x, scale = self.x, self.scale
        pow_ = scale ** -self.beta
        y = x * pow_
        inner = window_sum(gy * y / scale, self.size)
        return gy * pow_ - (2.0 * self.alpha * self.beta / self.size) * x * inner

    def forward_cpu(self, x):
        lrn = cpu_kernels("lrn")
        self.x = x = np.ascontiguousarray(x)
        return lrn.lrn(x, self.size, self.alpha, self.beta, self.k)

    def backward_cpu(self, gy):
        lrn = cpu_kernels("lrn")
        return lrn.lrn_backward(self.x, gy, self.size, self.alpha, self.beta, self.k)


def lrn(x, size: int = caffe.LRN_SIZE, alpha: float = caffe.LRN_ALPHA,
        beta: float = caffe.LRN_BETA, k: float = caffe.LRN_K, impl: str | None = None) -> Tensor:
    """Cross-channel LRN with Caffe's alpha / n (defaults: GoogLeNet's 5, 1e-4, 0.75, 1).
    ``impl``: see ``layers.dispatch``."""
    return LRNFunction(size, alpha, beta, k, impl)(x)
