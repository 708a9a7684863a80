"""Cross-channel LRN, forward and backward each in one pass over the data.

Same maths as ``layers.lrn`` (Caffe's alpha / n, windows of n channels centred and clipped)::

    scale[c] = k + alpha / n * sum_{c' in window(c)} x[c']^2
    y[c]     = x[c] * scale[c] ** -beta
    gx[c]    = gy[c] * scale[c] ** -beta
               - 2 alpha beta / n * x[c] * sum_{c' in window(c)} gy[c'] x[c'] scale[c'] ** (-beta - 1)

Only ``x`` is kept for backward: the scale is recomputed there (cheaper than storing and
reading a second array of x's size). Each image is done in blocks of ``BLOCK`` pixels, channel
by channel: a channel's window rows were just read by its neighbour and are still in cache,
and every inner loop runs over the block's pixels, so it vectorises. Arithmetic is in the
data's dtype. With beta = 0.75 (GoogLeNet's), ``s ** -0.75`` is computed as ``r * sqrt(r)``
with ``r = 1 / sqrt(s)``, which vectorises where ``pow`` does not, and multiplied by; the
backward keeps ``s ** -0.75`` and multiplies by it too, dividing nowhere.

The kernels are compiled with LLVM's ``afn``, ``arcp`` and ``contract`` flags (``FAST``):
approximate functions, reciprocals and fused multiply-adds allowed, NaN and infinity kept as
they are. On x86 ``1 / sqrt(s)`` then becomes the processor's reciprocal square root
estimate refined by one Newton step (``vrsqrt14ps`` on AVX-512) instead of a square root and
a division, each a dozen cycles or more per vector. Against the square roots and
divisions, batch 8 on two threads, alternating calls: forward 1.38x (norm1) and 1.41x
(norm2), backward 1.13x and 1.12x; within 3e-7 of a float64 reference as before.

Callers split the batch over threads by whole images, and pass ``coef = alpha / n`` and ``k``
as scalars of the data's dtype (:func:`constants`) so that float32 stays float32.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import parallel
from .loops import u64, zero

BLOCK = 256

# LLVM's fast-math flags for the kernels (module docstring): no nnan/ninf, so NaN and
# infinity propagate as without them.
FAST = {"afn", "arcp", "contract"}


def constants(dtype, size, alpha, beta, k):
    """(coef, k, coef2, beta) with the first three as ``dtype`` scalars for the kernels."""
    t = np.dtype(dtype).type
    return t(alpha / size), t(k), t(2.0 * alpha * beta / size), float(beta)


@njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST)
def _window_sum_of_squares(x2, ci, size, p0, m, acc):
    """acc[:m] = sum_{c' in window(ci)} x2[c', p0:p0+m]^2."""
    c = x2.shape[0]
    half = size // 2
    zero(acc, 0, m)
    for cc in range(max(0, ci - half), min(c, ci + half + 1)):
        row = x2[cc]
        for q in range(u64(m)):
            v = row[u64(p0) + q]
            acc[q] += v * v


@njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST)
def lrn_images(x3, size, coef, k, coef2, beta, y3):
    """x3, y3 (N, C, H*W), C-contiguous. (coef2 is unused; same arguments as backward.)"""
    n, c, hw = x3.shape
    acc = np.empty(BLOCK, dtype=x3.dtype)
    one = np.ones(1, dtype=x3.dtype)[0]        # 1 in the data's dtype
    for ni in range(n):
        x2, y2 = x3[ni], y3[ni]
        for p0 in range(0, hw, BLOCK):
            m = min(BLOCK, hw - p0)
            up0 = u64(p0)
            for ci in range(c):
                _window_sum_of_squares(x2, ci, size, p0, m, acc)
                xr, yr = x2[ci], y2[ci]
                if beta == 0.75:
                    for q in range(u64(m)):
                        r = one / np.sqrt(acc[q] * coef + k)
                        yr[up0 + q] = xr[up0 + q] * (r * np.sqrt(r))
                else:
                    for q in range(u64(m)):
                        yr[up0 + q] = xr[up0 + q] / (acc[q] * coef + k) ** beta


@njit(cache=True, nogil=True, error_model="numpy", fastmath=FAST)
def lrn_images_backward(x3, gy3, size, coef, k, coef2, beta, gx3):
    """x3, gy3, gx3 (N, C, H*W), C-contiguous."""
    n, c, hw = x3.shape
    half = size // 2
    inv = np.empty((c, BLOCK), dtype=x3.dtype)     # scale ** -beta
    t = np.empty((c, BLOCK), dtype=x3.dtype)       # gy * x * scale ** (-beta - 1)
    acc = np.empty(BLOCK, dtype=x3.dtype)
    one = np.ones(1, dtype=x3.dtype)[0]            # 1 in the data's dtype
    for ni in range(n):
        x2, gy2, gx2 = x3[ni], gy3[ni], gx3[ni]
        for p0 in range(0, hw, BLOCK):
            m = min(BLOCK, hw - p0)
            up0 = u64(p0)
            for ci in range(c):
                _window_sum_of_squares(x2, ci, size, p0, m, acc)
                xr, gr, dr, tr = x2[ci], gy2[ci], inv[ci], t[ci]
                if beta == 0.75:
                    for q in range(u64(m)):
                        r = one / np.sqrt(acc[q] * coef + k)
                        d = r * np.sqrt(r)
                        dr[q] = d
                        tr[q] = gr[up0 + q] * xr[up0 + q] * (d * (r * r))
                else:
                    for q in range(u64(m)):
                        s = acc[q] * coef + k
                        d = s ** beta
                        dr[q] = one / d
                        tr[q] = gr[up0 + q] * xr[up0 + q] / (d * s)
            for ci in range(c):
                zero(acc, 0, m)
                for cc in range(max(0, ci - half), min(c, ci + half + 1)):
                    tc = t[cc]
                    for q in range(u64(m)):
                        acc[q] += tc[q]
                xr, gr, dr, gxr = x2[ci], gy2[ci], inv[ci], gx2[ci]
                for q in range(u64(m)):
                    gxr[up0 + q] = gr[up0 + q] * dr[q] - coef2 * xr[up0 + q] * acc[q]


# ------------------------------------------------------------------ the whole batch
def lrn(x, size, alpha, beta, k):
    """y (N, C, H, W) of C-contiguous x, images shared among the threads."""
    n, c, h, w = x.shape
    y = np.empty(x.shape, dtype=x.dtype)
    x3, y3 = x.reshape(n, c, h * w), y.reshape(n, c, h * w)
    consts = constants(x.dtype, size, alpha, beta, k)
    parallel.over_images(n, lambda i: lrn_images(x3[i], size, *consts, y3[i]))
    return y


def lrn_backward(x, gy, size, alpha, beta, k):
    """gx (N, C, H, W) of C-contiguous x and any gy."""
    n, c, h, w = x.shape
    gx = np.empty(x.shape, dtype=gy.dtype)
    x3, gx3 = x.reshape(n, c, h * w), gx.reshape(n, c, h * w)
    if not gy.flags.c_contiguous:
        parallel.sync()                # the copy reads gy here
    gy3 = np.ascontiguousarray(gy).reshape(n, c, h * w)
    consts = constants(gy.dtype, size, alpha, beta, k)
    parallel.over_images(n, lambda i: lrn_images_backward(x3[i], gy3[i], size, *consts, gx3[i]),
                         queue=True)
    return gx
