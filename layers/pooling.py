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

That is the plain path (NumPy or CuPy). On NumPy arrays ``layers.dispatch`` normally picks
the Numba kernels of ``kernels.cpu.pool`` instead: max pooling's maximum and winning tap in
long loops over the planes (GoogLeNet's 3x3/1 and 3x3/2 windows over all planes of a run at
once, other windows plane by plane) and a backward that sends ``gy`` to the winners;
average pooling on small maps as one matrix product over all planes (it is linear:
``kernels.cpu.pool.avg_pool_matrix``), elsewhere window by window. Same winners, same
maths (the product's float32 sums in another order).
"""
from __future__ import annotations

from engine.backend import cpu_kernels, get_array_module
from engine.tensor import Tensor

from . import caffe
from ._check import check_float, check_rank
from .dispatch import KernelFunction
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


class _Pool2dFunction(KernelFunction):
    """What max and average pooling share: the window settings and geometry, and the
    backward scatter of a per-tap gradient onto the input pixels that tap read."""

    def __init__(self, ksize: int, stride: int, pad: int = 0, ceil_mode: bool = True,
                 impl: str | None = None):
        self.k, self.s, self.pad, self.ceil_mode = int(ksize), int(stride), int(pad), ceil_mode
        self.impl = impl

    def settings(self) -> str:
        return f"ksize {self.k}, stride {self.s}, pad {self.pad}"

    def setup(self, x):
        oh, ow, eh, ew = _geometry(self.op, x, self.k, self.s, self.pad, self.ceil_mode)
        self.x_shape, self.out_hw, self.pad_extra = x.shape, (oh, ow), (eh, ew)

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
    op = "max_pool2d"

    def forward_plain(self, x):
        xp = get_array_module(x)
        k, s, (oh, ow), (eh, ew) = self.k, self.s, self.out_hw, self.pad_extra
        xpad = pad_hw(x, self.pad, -xp.inf, eh, ew)
        y = xpad[tap_slice(0, 0, s, oh, ow)].copy()
        winner = xp.zeros(y.shape, dtype=xp.uint8)
        for t in range(1, k * k):
            cand = xpad[tap_slice(t // k, t % k, s, oh, ow)]
            better = cand > y           # strict: the first maximum wins ties
            xp.copyto(y, cand, where=better)
            winner[better] = t
        self.winner = winner
        return y

    def backward_plain(self, gy):
        xp = get_array_module(gy)
        return self._spread(xp, lambda t: xp.where(self.winner == t, gy, 0), *self.out_hw,
                            gy.dtype)

    def forward_cpu(self, x):
        pool = cpu_kernels("pool")
        # Called outside a graph (no_grad, inference) nothing goes backward: skip the winners.
        track = self.needs_grad != (False,)
        y, self.winner = pool.max_pool2d(x, self.k, self.s, self.pad, *self.out_hw, track)
        return y

    def backward_cpu(self, gy):
        pool = cpu_kernels("pool")
        return pool.max_pool2d_backward(gy, self.winner, self.k, self.s, self.pad, self.x_shape)


class AvgPool2dFunction(_Pool2dFunction):
    op = "avg_pool2d"

    def _axis_divisors(self, h, w, oh, ow, dtype):
        """Caffe's divisors along H and along W; a window's divisor is their product."""
        return (caffe.avg_pool_divisors(h, oh, self.k, self.s, self.pad).astype(dtype),
                caffe.avg_pool_divisors(w, ow, self.k, self.s, self.pad).astype(dtype))

    def _divisor(self, xp, h, w, oh, ow, dtype):
        dh, dw = self._axis_divisors(h, w, oh, ow, dtype)
        return xp.asarray(dh[:, None] * dw[None, :])

    def forward_plain(self, x):
        xp = get_array_module(x)
        k, s, (oh, ow), (eh, ew) = self.k, self.s, self.out_hw, self.pad_extra
        xpad = pad_hw(x, self.pad, 0.0, eh, ew)
        y = xpad[tap_slice(0, 0, s, oh, ow)].copy()
        for t in range(1, k * k):
            y += xpad[tap_slice(t // k, t % k, s, oh, ow)]
        y /= self._divisor(xp, x.shape[2], x.shape[3], oh, ow, x.dtype)
        return y

    def backward_plain(self, gy):
        xp = get_array_module(gy)
        h, w = self.x_shape[2:]
        share = gy / self._divisor(xp, h, w, *self.out_hw, gy.dtype)
        return self._spread(xp, lambda t: share, *self.out_hw, gy.dtype)

    def forward_cpu(self, x):
        pool = cpu_kernels("pool")
        dh, dw = self._axis_divisors(*x.shape[2:], *self.out_hw, x.dtype)
        return pool.avg_pool2d(x, self.k, self.s, self.pad, dh, dw)

    def backward_cpu(self, gy):
        pool = cpu_kernels("pool")
        dh, dw = self._axis_divisors(*self.x_shape[2:], *self.out_hw, gy.dtype)
        return pool.avg_pool2d_backward(gy, self.k, self.s, self.pad, dh, dw, self.x_shape)


def max_pool2d(x, ksize: int, stride: int, pad: int = 0, ceil_mode: bool = True,
               impl: str | None = None) -> Tensor:
    """Max pooling over ksize x ksize windows (Caffe's ceil rounding by default).
    ``impl``: see ``layers.dispatch``."""
    return MaxPool2dFunction(ksize, stride, pad, ceil_mode, impl)(x)


def avg_pool2d(x, ksize: int, stride: int, pad: int = 0, ceil_mode: bool = True,
               impl: str | None = None) -> Tensor:
    """Average pooling; the divisor counts padding as Caffe does. ``impl``: see
    ``layers.dispatch``."""
    return AvgPool2dFunction(ksize, stride, pad, ceil_mode, impl)(x)
