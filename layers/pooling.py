"""Max and average pooling with Caffe's rounding.

Shapes: x (N, C, H, W) -> y (N, C, OH, OW), ``OH = caffe.pooled_size(H, k, s, pad, ceil_mode)``.

Both loop over the k*k window taps; each tap is one strided slice of the
padded input covering every output pixel (see ``im2col.tap_slice``).

* Max: ``y = max over taps``; the tap that won (first one on ties, as Caffe) is
  kept as a small integer per output, and backward sends ``gy`` to it:
  ``gx[winner of p] += gy[p]``.
* Average: ``y = (sum over taps) / divisor``, with Caffe's divisor (padding
  counted, ceil-mode overflow not: ``caffe.avg_pool_divisors``); backward
  spreads ``gy / divisor`` over every tap.

On NumPy arrays both run as Numba kernels (``kernels.cpu.pool``) when ``kernels.cpu`` is
enabled: max pooling's maximum and winning tap over -inf padded planes and a backward that
scatters ``gy`` to the winners plane by plane; average pooling window by window. Same
winners, same maths; the tap loops above stay as the reference and the CuPy path.
"""
from __future__ import annotations

import numpy as np

import kernels.cpu as cpu_kernels
from engine.backend import get_array_module, is_cupy_array
from engine.tensor import Function, Tensor

from . import caffe
from ._check import check_float, check_rank
from .im2col import pad_hw, tap_slice


def _geometry(op, x, k, s, pad, ceil_mode):
    check_rank(op, "x", x, 4, "N, C, H, W")
    check_float(op, x=x)
    if k < 1 or s < 1 or pad < 0:
        raise ValueError(f"{op}: need ksize >= 1, stride >= 1, pad >= 0; got {k}, {s}, {pad}")
    if pad >= k:
        raise ValueError(f"{op}: pad {pad} must be smaller than ksize {k}")
    h, w = x.shape[2:]
    if k > h + 2 * pad or k > w + 2 * pad:
        raise ValueError(f"{op}: window {k}x{k} is larger than the padded input "
                         f"{h + 2 * pad}x{w + 2 * pad} (x {tuple(x.shape)}, pad {pad})")
    oh = caffe.pooled_size(h, k, s, pad, ceil_mode)
    ow = caffe.pooled_size(w, k, s, pad, ceil_mode)
    if (oh - 1) * s >= h + pad or (ow - 1) * s >= w + pad:
        raise ValueError(f"{op}: with stride {s} > window {k} the last window starts past the "
                         f"input (x {tuple(x.shape)}); use ceil_mode=False or a smaller stride")
    # Rows/columns the windows reach beyond the usual padding (ceil mode).
    extra_h = max(0, (oh - 1) * s + k - (h + 2 * pad))
    extra_w = max(0, (ow - 1) * s + k - (w + 2 * pad))
    return oh, ow, extra_h, extra_w


class _Pool2dFunction(Function):
    """What max and average pooling share: the window settings, and the backward
    scatter of a per-tap gradient onto the input pixels that tap read."""

    def __init__(self, ksize: int, stride: int, pad: int = 0, ceil_mode: bool = True):
        self.k, self.s, self.pad, self.ceil_mode = int(ksize), int(stride), int(pad), ceil_mode

    def _spread(self, xp, tap_grad, oh, ow, dtype):
        """gx = sum over taps t of ``tap_grad(t)`` (N, C, OH, OW), each added at the strided
        slice of the (padded) input that tap t covered; the padding is then cropped."""
        n, c, h, w = self.x_shape
        k, s, pad = self.k, self.s, self.pad
        eh, ew = self.pad_extra
        gpad = xp.zeros((n, c, h + 2 * pad + eh, w + 2 * pad + ew), dtype=dtype)
        for t in range(k * k):
            gpad[tap_slice(t // k, t % k, s, oh, ow)] += tap_grad(t)
        return xp.ascontiguousarray(gpad[:, :, pad:pad + h, pad:pad + w])


class MaxPool2dFunction(_Pool2dFunction):

    def forward(self, x):
        xp = get_array_module(x)
        k, s, pad = self.k, self.s, self.pad
        oh, ow, eh, ew = _geometry("max_pool2d", x, k, s, pad, self.ceil_mode)
        self.x_shape, self.pad_extra = x.shape, (eh, ew)
        self.fused = not is_cupy_array(x) and cpu_kernels.enabled()
        if self.fused:
            from kernels.cpu import parallel, pool
            y = np.empty(x.shape[:2] + (oh, ow), dtype=x.dtype)
            self.winner = winner = np.empty(y.shape, dtype=np.uint8)
            parallel.over_images(x.shape[0], lambda i: pool.max_pool_forward(
                x[i], k, s, pad, y[i], winner[i]))
            return y
        xpad = pad_hw(x, pad, -xp.inf, eh, ew)
        y = xpad[tap_slice(0, 0, s, oh, ow)].copy()
        winner = xp.zeros(y.shape, dtype=xp.uint8)
        for t in range(1, k * k):
            cand = xpad[tap_slice(t // k, t % k, s, oh, ow)]
            better = cand > y           # strict: the first maximum wins ties
            xp.copyto(y, cand, where=better)
            winner[better] = t
        self.winner = winner
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        k, s, pad = self.k, self.s, self.pad
        oh, ow = gy.shape[2:]
        if self.fused:
            from kernels.cpu import parallel, pool
            gx = np.empty(self.x_shape, dtype=gy.dtype)
            parallel.over_images(gy.shape[0], lambda i: pool.max_pool_backward(
                gy[i], self.winner[i], k, s, pad, gx[i]))
            return gx
        return self._spread(xp, lambda t: xp.where(self.winner == t, gy, 0), oh, ow, gy.dtype)


class AvgPool2dFunction(_Pool2dFunction):

    def _axis_divisors(self, h, w, oh, ow, dtype):
        """Caffe's divisors along H and along W; a window's divisor is their product."""
        return (caffe.avg_pool_divisors(h, oh, self.k, self.s, self.pad).astype(dtype),
                caffe.avg_pool_divisors(w, ow, self.k, self.s, self.pad).astype(dtype))

    def _divisor(self, xp, h, w, oh, ow, dtype):
        dh, dw = self._axis_divisors(h, w, oh, ow, dtype)
        return xp.asarray(dh[:, None] * dw[None, :])

    def forward(self, x):
        xp = get_array_module(x)
        k, s, pad = self.k, self.s, self.pad
        oh, ow, eh, ew = _geometry("avg_pool2d", x, k, s, pad, self.ceil_mode)
        self.x_shape, self.pad_extra = x.shape, (eh, ew)
        self.fused = not is_cupy_array(x) and cpu_kernels.enabled()
        if self.fused:
            from kernels.cpu import parallel, pool
            dh, dw = self._axis_divisors(x.shape[2], x.shape[3], oh, ow, x.dtype)
            y = np.empty(x.shape[:2] + (oh, ow), dtype=x.dtype)
            parallel.over_images(x.shape[0], lambda i: pool.avg_pool_forward(
                x[i], k, s, pad, dh, dw, y[i]))
            return y
        xpad = pad_hw(x, pad, 0.0, eh, ew)
        y = xpad[tap_slice(0, 0, s, oh, ow)].copy()
        for t in range(1, k * k):
            y += xpad[tap_slice(t // k, t % k, s, oh, ow)]
        y /= self._divisor(xp, x.shape[2], x.shape[3], oh, ow, x.dtype)
        return y

    def backward(self, gy):
        xp = get_array_module(gy)
        n, _, h, w = self.x_shape
        k, s, pad = self.k, self.s, self.pad
        oh, ow = gy.shape[2:]
        if self.fused:
            from kernels.cpu import parallel, pool
            dh, dw = self._axis_divisors(h, w, oh, ow, gy.dtype)
            gx = np.empty(self.x_shape, dtype=gy.dtype)
            parallel.over_images(n, lambda i: pool.avg_pool_backward(
                gy[i], k, s, pad, dh, dw, gx[i]))
            return gx
        share = gy / self._divisor(xp, h, w, oh, ow, gy.dtype)
        return self._spread(xp, lambda t: share, oh, ow, gy.dtype)


def max_pool2d(x, ksize: int, stride: int, pad: int = 0, ceil_mode: bool = True) -> Tensor:
    """Max pooling over ksize x ksize windows (Caffe's ceil rounding by default)."""
    return MaxPool2dFunction(ksize, stride, pad, ceil_mode)(x)


def avg_pool2d(x, ksize: int, stride: int, pad: int = 0, ceil_mode: bool = True) -> Tensor:
    """Average pooling; the divisor counts padding as Caffe does."""
    return AvgPool2dFunction(ksize, stride, pad, ceil_mode)(x)
