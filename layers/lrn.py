"""Local response normalisation across channels (AlexNet, Caffe).

x, y: (N, C, H, W). With a window of ``n = size`` channels centred on c
(zero-padded at the channel ends)::

    scale[c] = k + alpha / n * sum_{c' in window(c)} x[c']^2
    y[c]     = x[c] * scale[c] ** -beta

Backward (the window is symmetric, so "c' whose window holds c" is window(c))::

    gx[c] = gy[c] * scale[c] ** -beta
            - 2 alpha beta / n * x[c] * sum_{c' in window(c)} gy[c'] y[c'] / scale[c']

On NumPy arrays, when ``kernels.cpu`` is enabled, forward and backward are one Numba pass
each (``kernels.cpu.lrn``), which keeps only ``x`` and recomputes the scale in backward.
"""
from __future__ import annotations

import numpy as np

import kernels.cpu as cpu_kernels
from engine.backend import is_cupy_array
from engine.tensor import Function, Tensor

from . import caffe
from ._check import check_float, check_rank


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


class LRNFunction(Function):
    def __init__(self, size=caffe.LRN_SIZE, alpha=caffe.LRN_ALPHA, beta=caffe.LRN_BETA,
                 k=caffe.LRN_K):
        if size < 1 or size % 2 == 0:
            raise ValueError(f"lrn: size must be a positive odd number (as in Caffe), got {size}")
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def forward(self, x):
        check_rank("lrn", "x", x, 4, "N, C, H, W")
        check_float("lrn", x=x)
        self.fused = not is_cupy_array(x) and cpu_kernels.enabled()
        if self.fused:
            from kernels.cpu import lrn as K
            from kernels.cpu import parallel
            n, c, h, w = x.shape
            self.x = x = np.ascontiguousarray(x)
            y = np.empty((n, c, h, w), dtype=x.dtype)
            x3, y3 = x.reshape(n, c, h * w), y.reshape(n, c, h * w)
            consts = K.constants(x.dtype, self.size, self.alpha, self.beta, self.k)
            parallel.over_images(n, lambda i: K.lrn_forward(x3[i], self.size, *consts, y3[i]))
            return y
        scale = window_sum(x * x, self.size)
        scale *= self.alpha / self.size
        scale += self.k
        y = x * scale ** -self.beta
        self.x, self.scale = x, scale
        return y

    def backward(self, gy):
        if self.fused:
            from kernels.cpu import lrn as K
            from kernels.cpu import parallel
            n, c, h, w = self.x.shape
            gx = np.empty((n, c, h, w), dtype=gy.dtype)
            x3, gx3 = self.x.reshape(n, c, h * w), gx.reshape(n, c, h * w)
            gy3 = np.ascontiguousarray(gy).reshape(n, c, h * w)
            consts = K.constants(gy.dtype, self.size, self.alpha, self.beta, self.k)
            parallel.over_images(n, lambda i: K.lrn_backward(x3[i], gy3[i], self.size, *consts,
                                                             gx3[i]))
            return gx
        x, scale = self.x, self.scale
        pow_ = scale ** -self.beta
        y = x * pow_
        inner = window_sum(gy * y / scale, self.size)
        return gy * pow_ - (2.0 * self.alpha * self.beta / self.size) * x * inner


def lrn(x, size: int = caffe.LRN_SIZE, alpha: float = caffe.LRN_ALPHA,
        beta: float = caffe.LRN_BETA, k: float = caffe.LRN_K) -> Tensor:
    """Cross-channel LRN with Caffe's alpha / n (defaults: GoogLeNet's 5, 1e-4, 0.75, 1)."""
    return LRNFunction(size, alpha, beta, k)(x)
