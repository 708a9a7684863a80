"""Pooling kernels: max pooling (maximum and winning tap; backward by scatter to the winners)
and average pooling.

Same semantics as ``layers.pooling`` (Caffe): windows of k x k with stride s start at
``oh*s - pad``; for max pooling, positions outside the input (padding and the extra
rows/columns ceil mode reaches) count as -inf, taps are scanned in order t = i*k + j and the
first maximum wins (strict ``>``), so ``winner`` (uint8, t < 256) is identical to the NumPy
path's.

Max pooling's forward copies each plane into a -inf padded buffer laid out so that each row
and column pass is one long loop, which vectorises: 2 (k - 1) passes for a k x k window
instead of k^2 - 1 tap by tap (3x3, stride 1: 1.0-1.25x the tap-by-tap version it replaced).
Backward: ``gx[window start + (t // k, t % k)] += gy`` for every output, plane by plane, in
raster order of the outputs. Callers split the batch over threads by whole images
(``parallel``), so overlapping windows (3x3/2, 3x3/1) need no atomics and the sum order is
fixed.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import parallel
from .loops import copy, u64


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _offer(best, arg, b0, src, s0, stride, n, tap):
    """Candidates src[s0 + t*stride] for outputs b0 + t, t < n: keep each if strictly better."""
    for t in range(n):
        v = src[s0 + t * stride]
        better = v > best[b0 + t]
        best[b0 + t] = v if better else best[b0 + t]
        arg[b0 + t] = tap if better else arg[b0 + t]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _offer_max(best, b0, src, s0, stride, n):
    """:func:`_offer` without the winners (inference: nothing will go backward)."""
    for t in range(n):
        v = src[s0 + t * stride]
        best[b0 + t] = v if v > best[b0 + t] else best[b0 + t]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _row_pass(xpad, k, stride, hb, harg):
    """hb[q] = max_j xpad[stride*q + j] (first maximum), harg[q] = its j."""
    for q in range(u64(hb.size)):
        hb[q] = xpad[q * stride]
        harg[q] = 0
    for j in range(1, k):
        _offer(hb, harg, u64(0), xpad, u64(j), stride, u64(hb.size), np.uint8(j))


@njit(cache=True, nogil=True, error_model="numpy")
def _max_pool_separable(x, k, s, pad, y, winner, track):
    """Any stride (GoogLeNet's 3x3/2 and 3x3/1 pools), in two passes over a -inf padded plane:

    * along rows: hb[r, xx] = max_j xpad[r, s*xx + j] and its j. With the padded width
      ``wp = s * wq``, position (r, xx) of hb is q = r*wq + xx and reads xpad[s*q + j]: one
      long loop per j over all rows at once;
    * down columns: y[yy, xx] = max_i hb[s*yy + i, xx], tap i*k + (its j).

    The first maximum of the rows' first maxima is the first maximum in tap order, so the
    winners are the tap scan's (NaNs aside)."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    wq = max(ow - 1 + (k + s - 1) // s, (w + pad + s - 1) // s)
    wp = s * wq
    rows = max((oh - 1) * s + k, h + pad)
    m = rows * wq
    xpad = np.empty(rows * wp + k, dtype=x.dtype)   # + k: the last row's taps read past it
    cm = oh * s * wq                                 # the column pass's positions
    hb_all = np.full(max(m, cm + (k - 1) * wq), -np.inf, dtype=x.dtype)
    harg_all = np.zeros(hb_all.size, dtype=np.uint8)
    hb, harg = hb_all[:m], harg_all[:m]              # the row pass fills these
    cb = np.empty(cm, dtype=x.dtype)
    carg = np.empty(cm, dtype=np.uint8)
    for t in range(u64(xpad.size)):
        xpad[t] = -np.inf
    for ni in range(n):
        for ci in range(c):
            plane, y_plane, w_plane = x[ni, ci], y[ni, ci], winner[ni, ci]
            for hh in range(h):
                copy(xpad, (hh + pad) * wp + pad, plane[hh], 0, w)
            if s == 1:      # a constant stride: LLVM vectorises plain loads
                _row_pass(xpad, k, u64(1), hb, harg)
            elif s == 2:    # ... or loads pairs and shuffles
                _row_pass(xpad, k, u64(2), hb, harg)
            else:
                _row_pass(xpad, k, u64(s), hb, harg)
            if not track:
                for yy in range(oh):
                    y_row = y_plane[yy]
                    copy(y_row, 0, hb, yy * s * wq, ow)
                    for i in range(1, k):
                        _offer_max(y_row, u64(0), hb, u64((yy * s + i) * wq), u64(1), u64(ow))
                continue
            # Down the columns over the whole plane at once: position q = yy*s*wq + xx reads
            # hb[q + i*wq] for row tap i, one long loop per tap (the s - 1 rows between
            # output rows are computed too and dropped: cheaper than short loops of ow).
            copy(cb, 0, hb_all, 0, cm)
            copy(carg, 0, harg_all, 0, cm)
            for i in range(1, k):
                ri = u64(i * wq)
                ik = np.uint8(i * k)
                for q in range(u64(cm)):
                    v = hb_all[ri + q]
                    better = v > cb[q]
                    cb[q] = v if better else cb[q]
                    carg[q] = ik + harg_all[ri + q] if better else carg[q]
            for yy in range(oh):
                copy(y_plane[yy], 0, cb, yy * s * wq, ow)
                copy(w_plane[yy], 0, carg, yy * s * wq, ow)


@njit(cache=True, nogil=True, error_model="numpy")
def max_pool_forward(x, k, s, pad, y, winner, track=True):
    """x (N, C, H, W) -> y (N, C, OH, OW) and winner (N, C, OH, OW) uint8 (left unwritten
    when ``track`` is False)."""
    _max_pool_separable(x, k, s, pad, y, winner, track)


@njit(cache=True, nogil=True, error_model="numpy")
def max_pool_backward(gy, winner, k, s, pad, gx):
    """Overwrite gx (N, C, H, W) with the scatter of gy (N, C, OH, OW) to each window's winner."""
    n, c, h, w = gx.shape
    oh, ow = gy.shape[2], gy.shape[3]
    ti = np.empty(k * k, dtype=np.int64)      # tap -> (row, column) in its window
    tj = np.empty(k * k, dtype=np.int64)
    for t in range(k * k):
        ti[t], tj[t] = t // k, t % k
    for ni in range(n):
        for ci in range(c):
            plane = gx[ni, ci].reshape(h * w)
            g_plane, w_plane = gy[ni, ci], winner[ni, ci]
            for t in range(u64(h * w)):
                plane[t] = 0
            for yy in range(oh):
                g_row, w_row = g_plane[yy], w_plane[yy]
                h0 = yy * s - pad
                for xx in range(ow):
                    tap = w_row[xx]
                    hh = h0 + ti[tap]
                    ww = xx * s - pad + tj[tap]
                    if hh >= 0 and hh < h and ww >= 0 and ww < w:
                        plane[u64(hh * w + ww)] += g_row[xx]


@njit(cache=True, nogil=True, error_model="numpy")
def avg_pool_forward(x, k, s, pad, dh, dw, y):
    """y[yy, xx] = (sum of the window's taps inside x, in tap order) / (dh[yy] * dw[xx]),
    Caffe's divisors (``caffe.avg_pool_divisors``) given per axis; sums in float64."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for ni in range(n):
        for ci in range(c):
            plane, y_plane = x[ni, ci], y[ni, ci]
            for yy in range(oh):
                for xx in range(ow):
                    acc = 0.0
                    for i in range(max(0, pad - yy * s), min(k, h + pad - yy * s)):
                        row = plane[yy * s - pad + i]
                        for j in range(max(0, pad - xx * s), min(k, w + pad - xx * s)):
                            acc += row[xx * s - pad + j]
                    y_plane[yy, xx] = acc / (dh[yy] * dw[xx])


@njit(cache=True, nogil=True, error_model="numpy")
def avg_pool_backward(gy, k, s, pad, dh, dw, gx):
    """Overwrite gx with every output's gy / divisor spread over its window's taps."""
    n, c, h, w = gx.shape
    oh, ow = gy.shape[2], gy.shape[3]
    for ni in range(n):
        for ci in range(c):
            plane, g_plane = gx[ni, ci], gy[ni, ci]
            plane[:, :] = 0
            for yy in range(oh):
                for xx in range(ow):
                    share = g_plane[yy, xx] / (dh[yy] * dw[xx])
                    for i in range(max(0, pad - yy * s), min(k, h + pad - yy * s)):
                        row = plane[yy * s - pad + i]
                        for j in range(max(0, pad - xx * s), min(k, w + pad - xx * s)):
                            row[xx * s - pad + j] += share


# ------------------------------------------------------------------ the whole batch
def max_pool2d(x, k, s, pad, oh, ow, track=True):
    """(y, winner) (N, C, OH, OW) of x (N, C, H, W), images shared among the threads;
    winner is None unless ``track`` (only backward needs it)."""
    y = np.empty(x.shape[:2] + (oh, ow), dtype=x.dtype)
    winner = np.empty(y.shape if track else (x.shape[0], 1, 1, 1), dtype=np.uint8)
    parallel.over_images(x.shape[0], lambda i: max_pool_forward(x[i], k, s, pad, y[i],
                                                                winner[i], track))
    return y, (winner if track else None)


def max_pool2d_backward(gy, winner, k, s, pad, x_shape):
    """gx (x_shape): gy scattered to each window's winning tap."""
    gx = np.empty(x_shape, dtype=gy.dtype)
    parallel.over_images(gy.shape[0], lambda i: max_pool_backward(gy[i], winner[i], k, s, pad,
                                                                  gx[i]))
    return gx


def avg_pool2d(x, k, s, pad, dh, dw):
    """y (N, C, len(dh), len(dw)): window sums over Caffe's divisors dh[yy] * dw[xx]."""
    y = np.empty(x.shape[:2] + (len(dh), len(dw)), dtype=x.dtype)
    parallel.over_images(x.shape[0], lambda i: avg_pool_forward(x[i], k, s, pad, dh, dw, y[i]))
    return y


def avg_pool2d_backward(gy, k, s, pad, dh, dw, x_shape):
    """gx (x_shape): every output's gy / divisor spread over its window."""
    gx = np.empty(x_shape, dtype=gy.dtype)
    parallel.over_images(gy.shape[0], lambda i: avg_pool_backward(gy[i], k, s, pad, dh, dw,
                                                                  gx[i]))
    return gx
