"""The CPU kernels' lab: each kernel's first version beside the promoted one, both validated
against the plain NumPy path, then timed on GoogLeNet's shapes.

    python -m kernels.cpu.lab                  # batch 8, every kernel, one thread
    python -m kernels.cpu.lab --batch 32 --only pool,lrn
    python -m kernels.cpu.lab --only winograd  # 3x3: direct, F(2x2), F(4x4); 5x5: direct, F(4x4)
    python -m kernels.cpu.lab --only transforms  # the Winograd transforms, v1 and v2
    python -m kernels.cpu.lab --only gemm      # the products by NumPy's BLAS, MKL and our own

Version 1 of each kernel is the direct transcription: per-element signed indexing
(``col[r, base + q] = x[n, c, hh, ww] if inside else 0``), one window scanned tap by tap per
output, LRN per element in float64 with ``pow``, under Numba's default ``error_model``.
Version 2 is what ``kernels.cpu`` runs (version 3 for max pooling). What changed (timings: ``docs/performance_cpu.md``):

* ``error_model="numpy"``: Python's error model checks every float division for zero,
  which keeps loops with a division scalar;
* unsigned indices (``loops.py``): a signed index that LLVM cannot prove >= 0 keeps Numba's
  negative-index wrap-around select in the loop, which blocks vectorisation; on the same
  loop structure, im2col ran 3.6x faster with unsigned indices;
* im2col from zero-padded copies of each plane (one per stride phase), so that every row
  of the column matrix is a run of contiguous copies with no padding cases (the first
  promoted version, row by row with its own edge zeroing, totalled 13.4 ms here at batch
  8 against 9.9 ms);
* max pooling over -inf padded planes, one long loop per row and column pass (the stride
  a compile-time constant), instead of window by window; version 3 (max pooling only, what
  ``kernels.cpu`` runs for GoogLeNet's 3x3/1 and 3x3/2 pools): the whole flat array of a
  run's planes in blocks, its borders redone, and for 3x3/1 a gather backward;
* LRN by blocks of pixels, channel by channel, in the data's dtype, ``s ** 0.75`` as
  ``sqrt(s) * sqrt(sqrt(s))``;
* the Winograd transforms of F(4x4, 3x3) (input, output, gradient), F(4x4, 5x5) (output,
  gradient) and F(2x2, 3x3): each pass over a plane is one loop over all its tiles, where
  version 1 looped tile row by tile row over 7 or 14 tiles, too few for the vector loop,
  and F(4x4, 3x3)'s input transform reads each row of S de-interleaved into contiguous runs
  (``--only transforms``: 1.2-4.2x; the results are the same to the bit).

Times are per call over the whole batch on one thread (``time.thread_time``, median of
``--repeat``), so a busy machine disturbs them less than wall-clock times.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
from numba import njit

from layers import caffe, dispatch
from layers.im2col import col2im as np_col2im
from layers.im2col import conv_out_size
from layers.im2col import im2col as np_im2col

from . import conv, lrn, parallel, pool, winograd
from .loops import u64


# ---------------------------------------------------------------- version 1 of each
@njit(cache=True)
def im2col_v1(x, n0, kh, kw, stride, pad, oh, ow, col):
    """Per-element signed indexing: one branch per row, the wrap-around select per element."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    p = oh * ow
    g = col.shape[1] // p
    for r in range(c * kh * kw):
        ci, i, j = r // (kh * kw), (r // kw) % kh, r % kw
        for gi in range(g):
            for yy in range(oh):
                hh = yy * stride + i - pad
                for q in range(ow):
                    ww = q * stride + j - pad
                    inside = hh >= 0 and hh < h and ww >= 0 and ww < w
                    col[r, gi * p + yy * ow + q] = x[n0 + gi, ci, hh, ww] if inside else 0


@njit(cache=True)
def max_pool_forward_v1(x, k, s, pad, y, winner):
    """One window at a time, taps in order, -inf outside the input."""
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for ni in range(n):
        for ci in range(c):
            for yy in range(oh):
                for xx in range(ow):
                    best, arg = -np.inf, 0
                    for t in range(k * k):
                        hh, ww = yy * s - pad + t // k, xx * s - pad + t % k
                        v = x[ni, ci, hh, ww] if 0 <= hh < h and 0 <= ww < w else -np.inf
                        if t == 0 or v > best:
                            best, arg = v, t
                    y[ni, ci, yy, xx] = best
                    winner[ni, ci, yy, xx] = arg


@njit(cache=True)
def max_pool_backward_v1(gy, winner, k, s, pad, gx):
    n, c, h, w = gx.shape
    oh, ow = gy.shape[2], gy.shape[3]
    gx[:] = 0
    for ni in range(n):
        for ci in range(c):
            for yy in range(oh):
                for xx in range(ow):
                    t = winner[ni, ci, yy, xx]
                    hh, ww = yy * s - pad + t // k, xx * s - pad + t % k
                    if 0 <= hh < h and 0 <= ww < w:
                        gx[ni, ci, hh, ww] += gy[ni, ci, yy, xx]


@njit(cache=True)
def lrn_forward_v1(x3, size, alpha, beta, k, y3):
    """Per element: the window sum, then pow, in float64."""
    n, c, hw = x3.shape
    half = size // 2
    for ni in range(n):
        for ci in range(c):
            for p in range(hw):
                acc = 0.0
                for cc in range(max(0, ci - half), min(c, ci + half + 1)):
                    v = np.float64(x3[ni, cc, p])
                    acc += v * v
                y3[ni, ci, p] = x3[ni, ci, p] * (k + alpha / size * acc) ** -beta


# ---------------------------------------------------------------- Winograd transforms, v1
# Tile row by tile row: each row's loops run over its TW tiles (7 or 14 on GoogLeNet's
# maps), too few for LLVM's vector loops, which then run scalar. Version 2
# (``winograd``) loops over all of a plane's tiles at once.
@njit(cache=True, nogil=True, error_model="numpy")
def input_transform_f2_v1(x3, n0, h, w, k, v):
    """F(2x2, 3x3): V (16, C, g*TH*TW) = B^T d B for every 4x4 tile d of images n0 .. n0+g-1
    of x3 (N, C, H*W) (``k`` unused). Each (image, channel) plane is first copied into a
    zero-bordered buffer so that every tile reads in bounds."""
    c = x3.shape[1]
    th, tw = (h + 1) // 2, (w + 1) // 2
    nt = th * tw
    g = v.shape[2] // nt
    hp, wp = 2 * th + 2, 2 * tw + 2
    buf = np.zeros((hp, wp), dtype=v.dtype)
    for gi in range(g):
        for ci in range(c):
            src = x3[n0 + gi, ci]
            winograd._load_plane(buf, 1, src, h, w)
            t0 = gi * nt
            for ty in range(th):
                r0, r1, r2, r3 = buf[2 * ty], buf[2 * ty + 1], buf[2 * ty + 2], buf[2 * ty + 3]
                for tx in range(tw):
                    t = u64(t0 + ty * tw + tx)
                    j = 2 * tx
                    # S = B^T d (rows), then V = S B (columns)
                    s00, s01, s02, s03 = r0[j] - r2[j], r0[j + 1] - r2[j + 1], r0[j + 2] - r2[j + 2], r0[j + 3] - r2[j + 3]
                    s10, s11, s12, s13 = r1[j] + r2[j], r1[j + 1] + r2[j + 1], r1[j + 2] + r2[j + 2], r1[j + 3] + r2[j + 3]
                    s20, s21, s22, s23 = r2[j] - r1[j], r2[j + 1] - r1[j + 1], r2[j + 2] - r1[j + 2], r2[j + 3] - r1[j + 3]
                    s30, s31, s32, s33 = r1[j] - r3[j], r1[j + 1] - r3[j + 1], r1[j + 2] - r3[j + 2], r1[j + 3] - r3[j + 3]
                    v[0, ci, t], v[1, ci, t] = s00 - s02, s01 + s02
                    v[2, ci, t], v[3, ci, t] = s02 - s01, s01 - s03
                    v[4, ci, t], v[5, ci, t] = s10 - s12, s11 + s12
                    v[6, ci, t], v[7, ci, t] = s12 - s11, s11 - s13
                    v[8, ci, t], v[9, ci, t] = s20 - s22, s21 + s22
                    v[10, ci, t], v[11, ci, t] = s22 - s21, s21 - s23
                    v[12, ci, t], v[13, ci, t] = s30 - s32, s31 + s32
                    v[14, ci, t], v[15, ci, t] = s32 - s31, s31 - s33


@njit(cache=True, nogil=True, error_model="numpy")
def output_transform_f2_v1(m, bias, has_bias, relu, k, n0, h, w, y3):
    """F(2x2, 3x3): y3[n0 + gi, o] (N, O, H*W) = A^T M A (+ bias[o], then ReLU) for every
    tile of M (16, O, g*TH*TW) (``k`` unused); the half-tiles past an odd-sized map's edge
    are dropped."""
    o_ = m.shape[1]
    th, tw = (h + 1) // 2, (w + 1) // 2
    nt = th * tw
    g = m.shape[2] // nt
    for gi in range(g):
        for o in range(o_):
            dst = y3[n0 + gi, o]
            b = bias[o] if has_bias else 0
            t0 = gi * nt
            for ty in range(th):
                for tx in range(tw):
                    t = u64(t0 + ty * tw + tx)
                    # T = A^T M (rows), then Y = T A (columns)
                    q0 = m[0, o, t] + m[4, o, t] + m[8, o, t]
                    q1 = m[1, o, t] + m[5, o, t] + m[9, o, t]
                    q2 = m[2, o, t] + m[6, o, t] + m[10, o, t]
                    q3 = m[3, o, t] + m[7, o, t] + m[11, o, t]
                    p0 = m[4, o, t] - m[8, o, t] - m[12, o, t]
                    p1 = m[5, o, t] - m[9, o, t] - m[13, o, t]
                    p2 = m[6, o, t] - m[10, o, t] - m[14, o, t]
                    p3 = m[7, o, t] - m[11, o, t] - m[15, o, t]
                    y00, y01 = q0 + q1 + q2 + b, q1 - q2 - q3 + b
                    y10, y11 = p0 + p1 + p2 + b, p1 - p2 - p3 + b
                    if relu:
                        y00, y01 = max(y00, 0), max(y01, 0)
                        y10, y11 = max(y10, 0), max(y11, 0)
                    yy, xx = 2 * ty, 2 * tx
                    dst[yy * w + xx] = y00
                    if xx + 1 < w:
                        dst[yy * w + xx + 1] = y01
                    if yy + 1 < h:
                        dst[(yy + 1) * w + xx] = y10
                        if xx + 1 < w:
                            dst[(yy + 1) * w + xx + 1] = y11


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _store_rows_v1(rows, ty, h, w, b, relu, dst):
    """dst (H*W) rows 4 ty .. 4 ty + 3 (those inside the map) = rows[r, :W] + b, then ReLU:
    the last step of the 4x4-tile output transforms."""
    for r in range(min(4, h - 4 * ty)):
        row = rows[r]
        base = u64((4 * ty + r) * w)
        if relu:
            for q in range(u64(w)):
                val = row[q] + b
                dst[base + q] = 0 if val < 0 else val
        else:
            for q in range(u64(w)):
                dst[base + q] = row[q] + b


@njit(cache=True, nogil=True, error_model="numpy")
def input_transform_f4_v1(x3, n0, h, w, k, v):
    """F(4x4, 3x3): V (36, C, g*TH*TW) = B^T d B for every 6x6 tile d of images n0 .. n0+g-1 of x3
    (N, C, H*W) (any strides); ``k`` from :func:`constants`. Per tile row, S = B^T d runs along whole
    buffer rows, then each of S's six rows gives six of V's matrices, tiles contiguous."""
    c = x3.shape[1]
    th, tw = (h + 3) // 4, (w + 3) // 4
    nt = th * tw
    g = v.shape[2] // nt
    wp = 4 * tw + 2
    buf = np.zeros((4 * th + 2, wp), dtype=v.dtype)    # rows/columns past the map stay 0
    s = np.empty((6, wp), dtype=v.dtype)
    c2, c4, c5 = k[0], k[1], k[2]
    for gi in range(g):
        for ci in range(c):
            src = x3[n0 + gi, ci]
            winograd._load_plane(buf, 1, src, h, w)
            for ty in range(th):
                r0, r1, r2 = buf[4 * ty], buf[4 * ty + 1], buf[4 * ty + 2]
                r3, r4, r5 = buf[4 * ty + 3], buf[4 * ty + 4], buf[4 * ty + 5]
                for q in range(u64(wp)):
                    s[0, q], s[1, q], s[2, q], s[3, q], s[4, q], s[5, q] = winograd._bt6(
                        r0[q], r1[q], r2[q], r3[q], r4[q], r5[q], c2, c4, c5)
                t0 = u64(gi * nt + ty * tw)
                for a in range(6):
                    sa = s[a]
                    va0, va1, va2 = v[6 * a, ci], v[6 * a + 1, ci], v[6 * a + 2, ci]
                    va3, va4, va5 = v[6 * a + 3, ci], v[6 * a + 4, ci], v[6 * a + 5, ci]
                    for tx in range(u64(tw)):
                        j = 4 * tx
                        t = t0 + tx
                        va0[t], va1[t], va2[t], va3[t], va4[t], va5[t] = winograd._bt6(
                            sa[j], sa[j + 1], sa[j + 2], sa[j + 3], sa[j + 4], sa[j + 5],
                            c2, c4, c5)


@njit(cache=True, nogil=True, error_model="numpy")
def gradient_transform_f4_v1(g3, n0, h, w, k, u):
    """F(4x4, 3x3), for the weight gradient: Z (36, O, g*TH*TW) = A e A^T for every 4x4
    tile e of the output gradient g3[n0 .. n0+g-1] (*, O, H*W) (any strides; zero past the
    map's edge). Then gW = G^T (sum over tiles of Z * V) G (:func:`filter_gradient`), V the
    input transform of x: the forward's Y = A^T (U * V) A, differentiated with respect to
    the filter."""
    o_ = g3.shape[1]
    th, tw = (h + 3) // 4, (w + 3) // 4
    nt = th * tw
    g = u.shape[2] // nt
    wp = 4 * tw
    buf = np.zeros((4 * th, wp), dtype=u.dtype)        # rows/columns past the map stay 0
    s = np.empty((6, wp), dtype=u.dtype)
    c2, c4, c8 = k[0], k[1], k[3]
    for gi in range(g):
        for oi in range(o_):
            src = g3[n0 + gi, oi]
            winograd._load_plane(buf, 0, src, h, w)
            for ty in range(th):
                r0, r1, r2, r3 = buf[4 * ty], buf[4 * ty + 1], buf[4 * ty + 2], buf[4 * ty + 3]
                for q in range(u64(wp)):
                    s[0, q], s[1, q], s[2, q], s[3, q], s[4, q], s[5, q] = winograd._a4(
                        r0[q], r1[q], r2[q], r3[q], c2, c4, c8)
                t0 = u64(gi * nt + ty * tw)
                for a in range(6):
                    sa = s[a]
                    ua0, ua1, ua2 = u[6 * a, oi], u[6 * a + 1, oi], u[6 * a + 2, oi]
                    ua3, ua4, ua5 = u[6 * a + 3, oi], u[6 * a + 4, oi], u[6 * a + 5, oi]
                    for tx in range(u64(tw)):
                        j = 4 * tx
                        t = t0 + tx
                        ua0[t], ua1[t], ua2[t], ua3[t], ua4[t], ua5[t] = winograd._a4(
                            sa[j], sa[j + 1], sa[j + 2], sa[j + 3], c2, c4, c8)


@njit(cache=True, nogil=True, error_model="numpy")
def output_transform_f4_v1(m, bias, has_bias, relu, k, n0, h, w, y3):
    """F(4x4, 3x3): y3[n0 + gi, o] (N, O, H*W) = A^T M A (+ bias[o], then ReLU) for every tile of
    M (36, O, g*TH*TW); the parts of tiles past the map's edge are dropped. Per tile row,
    T = A^T M for all its tiles, then the four output rows, written in full."""
    o_ = m.shape[1]
    th, tw = (h + 3) // 4, (w + 3) // 4
    nt = th * tw
    g = m.shape[2] // nt
    tr = np.empty((4, 6, tw), dtype=m.dtype)
    rows = np.empty((4, 4 * tw), dtype=m.dtype)
    c2, c4, c8 = k[0], k[1], k[3]
    for gi in range(g):
        for o in range(o_):
            dst = y3[n0 + gi, o]
            b = bias[o] if has_bias else 0
            for ty in range(th):
                t0 = u64(gi * nt + ty * tw)
                for col in range(6):
                    m0, m1, m2 = m[col, o], m[6 + col, o], m[12 + col, o]
                    m3, m4, m5 = m[18 + col, o], m[24 + col, o], m[30 + col, o]
                    for tx in range(u64(tw)):
                        t = t0 + tx
                        tr[0, col, tx], tr[1, col, tx], tr[2, col, tx], tr[3, col, tx] = winograd._at6(
                            m0[t], m1[t], m2[t], m3[t], m4[t], m5[t], c2, c4, c8)
                for r in range(4):
                    e, row = tr[r], rows[r]
                    for tx in range(u64(tw)):
                        j = 4 * tx
                        row[j], row[j + 1], row[j + 2], row[j + 3] = winograd._at6(
                            e[0, tx], e[1, tx], e[2, tx], e[3, tx], e[4, tx], e[5, tx],
                            c2, c4, c8)
                _store_rows_v1(rows, ty, h, w, b, relu, dst)


@njit(cache=True, nogil=True, error_model="numpy")
def output_transform_f45_v1(m, bias, has_bias, relu, k, n0, h, w, y3):
    """F(4x4, 5x5): y3[n0 + gi, o] (N, O, H*W) = A^T M A (+ bias[o], then ReLU) for every
    tile of M (64, O, g*TH*TW); as :func:`output_transform_f4`, with 8x8 tiles."""
    o_ = m.shape[1]
    th, tw = (h + 3) // 4, (w + 3) // 4
    nt = th * tw
    g = m.shape[2] // nt
    tr = np.empty((4, 8, tw), dtype=m.dtype)
    rows = np.empty((4, 4 * tw), dtype=m.dtype)
    for gi in range(g):
        for o in range(o_):
            dst = y3[n0 + gi, o]
            b = bias[o] if has_bias else 0
            for ty in range(th):
                t0 = u64(gi * nt + ty * tw)
                for col in range(8):
                    m0, m1, m2, m3 = m[col, o], m[8 + col, o], m[16 + col, o], m[24 + col, o]
                    m4, m5, m6, m7 = m[32 + col, o], m[40 + col, o], m[48 + col, o], m[56 + col, o]
                    for tx in range(u64(tw)):
                        t = t0 + tx
                        tr[0, col, tx], tr[1, col, tx], tr[2, col, tx], tr[3, col, tx] = winograd._at8(
                            m0[t], m1[t], m2[t], m3[t], m4[t], m5[t], m6[t], m7[t], k)
                for r in range(4):
                    e, row = tr[r], rows[r]
                    for tx in range(u64(tw)):
                        j = 4 * tx
                        row[j], row[j + 1], row[j + 2], row[j + 3] = winograd._at8(
                            e[0, tx], e[1, tx], e[2, tx], e[3, tx], e[4, tx], e[5, tx],
                            e[6, tx], e[7, tx], k)
                _store_rows_v1(rows, ty, h, w, b, relu, dst)


@njit(cache=True, nogil=True, error_model="numpy")
def gradient_transform_f45_v1(g3, n0, h, w, k, u):
    """F(4x4, 5x5), for the weight gradient: Z (64, O, g*TH*TW) = A e A^T for every 4x4
    tile e of the output gradient g3[n0 .. n0+g-1] (*, O, H*W) (any strides; zero past the
    map's edge); as :func:`gradient_transform_f4`, with A 8x4."""
    o_ = g3.shape[1]
    th, tw = (h + 3) // 4, (w + 3) // 4
    nt = th * tw
    g = u.shape[2] // nt
    wp = 4 * tw
    buf = np.zeros((4 * th, wp), dtype=u.dtype)        # rows/columns past the map stay 0
    s = np.empty((8, wp), dtype=u.dtype)
    for gi in range(g):
        for oi in range(o_):
            src = g3[n0 + gi, oi]
            winograd._load_plane(buf, 0, src, h, w)
            for ty in range(th):
                r0, r1, r2, r3 = buf[4 * ty], buf[4 * ty + 1], buf[4 * ty + 2], buf[4 * ty + 3]
                for q in range(u64(wp)):
                    (s[0, q], s[1, q], s[2, q], s[3, q], s[4, q], s[5, q], s[6, q],
                     s[7, q]) = winograd._a8(r0[q], r1[q], r2[q], r3[q], k)
                t0 = u64(gi * nt + ty * tw)
                for a in range(8):
                    sa = s[a]
                    ua0, ua1, ua2, ua3, ua4, ua5, ua6, ua7 = winograd._rows8(u, a, oi)
                    for tx in range(u64(tw)):
                        j = 4 * tx
                        t = t0 + tx
                        ua0[t], ua1[t], ua2[t], ua3[t], ua4[t], ua5[t], ua6[t], ua7[t] = winograd._a8(
                            sa[j], sa[j + 1], sa[j + 2], sa[j + 3], k)


# The first versions by the number of transformed values per tile, as in
# ``winograd.TRANSFORMS`` and ``GRADIENT_TRANSFORMS``: (input, output, gradient); None where
# the promoted version is still the first (F(4x4, 5x5)'s input) or there is none.
TRANSFORMS_V1 = {16: (input_transform_f2_v1, output_transform_f2_v1, None),
                 36: (input_transform_f4_v1, output_transform_f4_v1, gradient_transform_f4_v1),
                 64: (None, output_transform_f45_v1, gradient_transform_f45_v1)}


# ---------------------------------------------------------------- shapes and harness
CONVS = [  # (name, C, H, k, stride, pad): every distinct im2col of GoogLeNet (1x1 need none)
    ("conv1", 3, 224, 7, 2, 3), ("conv2", 64, 56, 3, 1, 1),
    ("3a.3x3", 96, 28, 3, 1, 1), ("3a.5x5", 16, 28, 5, 1, 2),
    ("3b.3x3", 128, 28, 3, 1, 1), ("3b.5x5", 32, 28, 5, 1, 2),
    ("4e.3x3", 160, 14, 3, 1, 1), ("4e.5x5", 32, 14, 5, 1, 2),
    ("5b.3x3", 192, 7, 3, 1, 1), ("5b.5x5", 48, 7, 5, 1, 2),
]
POOLS = [  # (name, C, H, stride, pad)
    ("pool1", 64, 112, 2, 0), ("pool2", 192, 56, 2, 0), ("pool3", 480, 28, 2, 0),
    ("pool4", 832, 14, 2, 0), ("3b.pool", 256, 28, 1, 1), ("4e.pool", 528, 14, 1, 1),
    ("5b.pool", 832, 7, 1, 1),
]
LRNS = [("norm1", 64, 56), ("norm2", 192, 56)]


def _time(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.thread_time()
        fn()
        times.append(time.thread_time() - t0)
    return statistics.median(times)


def _row(name, times):
    return f"{name:<10}" + "".join(f"{t * 1e3:>10.2f}" for t in times) + (
        f"{times[0] / times[-1]:>9.1f}x" if len(times) > 1 else "")


def lab_im2col(n, repeat):
    print(f"im2col, one call per image (ms for the batch){'v1':>7}{'v2':>10}  v1/v2")
    rng = np.random.default_rng(0)
    total = [0.0, 0.0]
    for name, c, h, k, s, p in CONVS:
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)
        oh = conv_out_size(h, k, s, p)
        cols = [np.empty((c * k * k, oh * oh), np.float32) for _ in range(2)]
        i = min(1, n - 1)                        # an image past the first where there is one
        for fn, col in zip((im2col_v1, conv.im2col), cols):
            fn(x, i, k, k, s, p, oh, oh, col)
            assert np.array_equal(col, np_im2col(x[i:i + 1], k, k, s, p)), name
        gx = np.empty_like(x)
        conv.col2im(cols[1], i, k, k, s, p, oh, oh, gx)
        assert np.allclose(gx[i], np_col2im(cols[1], (1, c, h, h), k, k, s, p)[0], atol=1e-5)
        times = [_time(lambda f=fn, col=col: [f(x, i, k, k, s, p, oh, oh, col) for i in range(n)],
                       repeat) for fn, col in zip((im2col_v1, conv.im2col), cols)]
        total = [a + b for a, b in zip(total, times)]
        print(_row(name, times))
    print(_row("total", total))


def _pool_v3(kind):
    """Version 3 of max pooling, the forward and backward ``kernels.cpu`` runs for GoogLeNet's
    two geometries (``pool.FLAT_KERNELS``; 3x3/2 backward: version 2's scatter), in version
    1's signatures."""
    forward, backward = pool.FLAT_KERNELS[kind]
    return (lambda x, k, s, p, y, wn: forward(x, y, wn, True),
            pool.max_pool_backward if backward is None
            else lambda gy, wn, k, s, p, gx: backward(gy, wn, gx))


def lab_pool(n, repeat):
    print(f"max pool forward | backward (ms)   {'v1':>10}{'v2':>10}{'v3':>10}  v1/v3")
    rng = np.random.default_rng(1)
    from layers.pooling import MaxPool2dFunction
    totals = [[0.0] * 3, [0.0] * 3]
    for name, c, h, s, p in POOLS:
        x = rng.standard_normal((n, c, h, h)).astype(np.float32)
        oh = caffe.pooled_size(h, 3, s, p)
        kind = pool._flat_kind(x.shape, 3, s, p, oh, oh)
        assert kind, name
        forward_v3, backward_v3 = _pool_v3(kind)
        ref = MaxPool2dFunction(3, s, p)
        with dispatch.use("plain"):
            y_ref = ref.forward(x)
        outs = []
        for fn in (max_pool_forward_v1, pool.max_pool_forward, forward_v3):
            y, wn = np.empty((n, c, oh, oh), np.float32), np.empty((n, c, oh, oh), np.uint8)
            fn(x, 3, s, p, y, wn)
            assert np.array_equal(y, y_ref) and np.array_equal(wn, ref.winner), name
            outs.append((y, wn))
        fwd = [_time(lambda f=fn, o=o: f(x, 3, s, p, *o), repeat)
               for fn, o in zip((max_pool_forward_v1, pool.max_pool_forward, forward_v3), outs)]
        y, wn = outs[1]
        with dispatch.use("plain"):
            gx_ref = ref.backward(y)
        grads = [np.empty_like(x) for _ in range(3)]
        for fn, gx in zip((max_pool_backward_v1, pool.max_pool_backward, backward_v3), grads):
            fn(y, wn, 3, s, p, gx)
            assert np.allclose(gx, gx_ref, atol=1e-5), name
        assert np.array_equal(grads[2], grads[1]), name     # the scatter's sums, bit for bit
        bwd = [_time(lambda f=fn, gx=gx: f(y, wn, 3, s, p, gx), repeat)
               for fn, gx in zip((max_pool_backward_v1, pool.max_pool_backward, backward_v3),
                                 grads)]
        for tot, t in zip(totals, (fwd, bwd)):
            for i in range(3):
                tot[i] += t[i]
        print(_row(name, fwd) + "  |" + _row("", bwd)[10:])
    print(_row("total", totals[0]) + "  |" + _row("", totals[1])[10:])


def lab_lrn(n, repeat):
    print(f"LRN forward (ms)                  {'v1':>10}{'v2':>10}  v1/v2;  v2 backward")
    rng = np.random.default_rng(2)
    from layers.lrn import LRNFunction
    for name, c, h in LRNS:
        x = (rng.standard_normal((n, c, h * h)) * 10).astype(np.float32)
        with dispatch.use("plain"):
            y_ref = LRNFunction().forward(x.reshape(n, c, h, h)).reshape(n, c, h * h)
        consts = lrn.constants(np.float32, caffe.LRN_SIZE, caffe.LRN_ALPHA, caffe.LRN_BETA,
                               caffe.LRN_K)
        y1, y2, gx = np.empty_like(x), np.empty_like(x), np.empty_like(x)
        args = (caffe.LRN_SIZE, caffe.LRN_ALPHA, caffe.LRN_BETA, caffe.LRN_K)
        lrn_forward_v1(x, *args, y1)
        lrn.lrn_images(x, caffe.LRN_SIZE, *consts, y2)
        for y in (y1, y2):
            assert np.allclose(y, y_ref, rtol=1e-5, atol=1e-6), name
        times = [_time(lambda: lrn_forward_v1(x, *args, y1), repeat),
                 _time(lambda: lrn.lrn_images(x, caffe.LRN_SIZE, *consts, y2), repeat)]
        back = _time(lambda: lrn.lrn_images_backward(x, y2, caffe.LRN_SIZE, *consts, gx), repeat)
        print(_row(name, times) + f"{back * 1e3:>12.2f}")


WINOGRAD = [  # (name, C, O, H): GoogLeNet's 3x3 convolutions, stride 1, "same"
    ("conv2", 64, 192, 56), ("3a.3x3", 96, 128, 28), ("3b.3x3", 128, 192, 28),
    ("4e.3x3", 160, 320, 14), ("5b.3x3", 192, 384, 7),
]


WINOGRAD_5X5 = [  # (name, C, O, H): GoogLeNet's 5x5 convolutions, stride 1, "same"
    ("3a.5x5", 16, 32, 28), ("3b.5x5", 32, 96, 28), ("4e.5x5", 32, 128, 14),
    ("5b.5x5", 48, 128, 7),
]


def _float64_reference(x, w, gy):
    """(y, gx, gW) of the "same" convolution by the plain path in float64."""
    from layers import conv2d
    from engine.tensor import Tensor
    with dispatch.use("plain"):
        xt, wt = Tensor(x.astype(np.float64), requires_grad=True), Tensor(
            w.astype(np.float64), requires_grad=True)
        yt = conv2d(xt, wt, None, 1, w.shape[2] // 2)
        yt.backward(gy.astype(np.float64))
    return yt.data, xt.grad, wt.grad


def _check_all(fns, out, ref, name):
    """Run each of ``fns`` (writing ``out``) and hold it to 5e-5 of ``ref``'s scale."""
    for fn in fns:
        fn()
        scale = max(float(np.abs(ref).max()), 1.0)
        assert np.abs(out.reshape(ref.shape) - ref).max() <= 5e-5 * scale, name


def _direct_and_winograd(x, w, gy, sizes):
    """(forward, backward, y, gx): one image per call, the "same" convolution of x by w
    (O, C, k, k) into y by im2col + GEMM, then by F(m x m, k x k) for each m in ``sizes``;
    and the input gradient of gy into gx by GEMM + col2im, then by the same Winograd forms
    with the filters turned around and transposed."""
    n, c, h, _ = x.shape
    o, k = w.shape[0], w.shape[2]
    pad, p = k // 2, h * h
    x3, gy3 = x.reshape(n, c, p), gy.reshape(n, o, p)
    w2 = np.ascontiguousarray(w.reshape(o, c * k * k))
    flipped = np.ascontiguousarray(w.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])
    u = {m: winograd.filter_transform(w, m) for m in sizes}
    u_t = {m: winograd.filter_transform(flipped, m) for m in sizes}
    zeros = np.zeros(max(c, o), np.float32)
    y, gx = np.empty((n, o, p), np.float32), np.empty((n, c, p), np.float32)
    gcol = np.empty((c * k * k, p), np.float32)

    def fwd_direct():
        for i in range(n):
            np.matmul(w2, conv.columns(x, i, 1, k, k, 1, pad, h, h), out=y[i])

    def fwd(m):
        for i in range(n):
            conv._winograd_chunk(x3, i, u[m], zeros, False, False, h, h, y, i, 1)

    def gx_direct():
        for i in range(n):
            np.matmul(w2.T, gy3[i], out=gcol)
            conv.col2im(gcol, 0, k, k, 1, pad, h, h, gx[i:i + 1].reshape(1, c, h, h))

    def gx_wino(m):
        for i in range(n):
            conv._winograd_chunk(gy3, i, u_t[m], zeros, False, False, h, h, gx, i, 1)

    forward = [fwd_direct] + [lambda m=m: fwd(m) for m in sizes]
    backward = [gx_direct] + [lambda m=m: gx_wino(m) for m in sizes]
    return forward, backward, y, gx


def _checked_layer(rng, name, n, c, o, h, k, sizes):
    """(x, gy, float64 references, forward, backward) for a "same" k x k layer drawn from
    ``rng``: the closures of :func:`_direct_and_winograd`, each already checked once."""
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    w = (rng.standard_normal((o, c, k, k)) / np.sqrt(k * k * c)).astype(np.float32)
    gy = rng.standard_normal((n, o, h, h)).astype(np.float32)
    refs = _float64_reference(x, w, gy)
    forward, backward, y, gx = _direct_and_winograd(x, w, gy, sizes)
    _check_all(forward, y, refs[0], name)
    _check_all(backward, gx, refs[1], name)
    return x, gy, refs, forward, backward


def _weight_gradients(x, gy, refs, k):
    """(im2col + GEMM, F(4x4, k x k)) closures for a "same" k x k layer's weight gradient,
    one image per call, each checked against the float64 reference first."""
    n, c, h = x.shape[:3]
    o, count = gy.shape[1], winograd.values_per_tile(4, k)
    x3, gy3 = x.reshape(n, c, h * h), gy.reshape(n, o, h * h)
    gw2, part = np.empty((o, c * k * k), np.float32), np.empty((count, o, c), np.float32)

    def gw_direct():
        total = np.zeros((o, c * k * k), np.float32)
        for i in range(n):
            np.matmul(gy3[i], conv.columns(x, i, 1, k, k, 1, k // 2, h, h).T, out=gw2)
            total += gw2
        return total.reshape(o, c, k, k)

    def gw_f4():
        total = np.zeros((count, o, c), np.float32)
        for i in range(n):
            conv._winograd_weights_chunk(x3, i, gy3[i:i + 1], h, h, 1, part)
            total += part
        return winograd.filter_gradient(total)

    for fn in (gw_direct, gw_f4):
        assert np.abs(fn() - refs[2]).max() <= 5e-5 * max(float(np.abs(refs[2]).max()), 1)
    return gw_direct, gw_f4


def lab_winograd_5x5(n, repeat):
    """The 5x5 layers two ways, one image per call: im2col + GEMM (+ col2im) and
    F(4x4, 5x5), forward, input gradient and weight gradient, each checked against the
    plain float64 convolution first."""
    rng = np.random.default_rng(4)
    print(f"5x5 conv, ms for the batch:  forward{'direct':>9}{'F4':>7}"
          f"  | input grad{'direct':>7}{'F4':>7}  | weight grad{'direct':>7}{'F4':>7}")
    for name, c, o, h in WINOGRAD_5X5:
        x, gy, refs, forward, backward = _checked_layer(rng, name, n, c, o, h, 5, (4,))
        times = [[_time(fn, repeat) * 1e3 for fn in fns]
                 for fns in (forward, backward, _weight_gradients(x, gy, refs, 5))]
        print(f"{name:<29}" + "".join(f"{t:>7.2f}" for t in times[0]) + " " * 14
              + "".join(f"{t:>7.2f}" for t in times[1]) + " " * 15
              + "".join(f"{t:>7.2f}" for t in times[2]))


def lab_winograd(n, repeat):
    """The 3x3 layers three ways, one image per call: im2col + GEMM (+ col2im), F(2x2, 3x3)
    and F(4x4, 3x3), for the forward, the input gradient and the weight gradient (F(2x2,
    3x3) has none), each checked against the plain float64 convolution first. BLAS on one
    thread, like a pool thread's. A training step chooses differently on the small maps
    (``winograd.choose``): there the chunks hold several images, both threads share the
    memory bandwidth, and each chunk's GEMMs read all of U. Then the 5x5 layers
    (:func:`lab_winograd_5x5`)."""
    parallel.claim_cores()
    rng = np.random.default_rng(3)
    print(f"3x3 conv, ms for the batch:  forward{'direct':>9}{'F2':>7}{'F4':>7}"
          f"  | input grad{'direct':>7}{'F2':>7}{'F4':>7}  | weight grad{'direct':>7}{'F4':>7}")
    for name, c, o, h in WINOGRAD:
        x, gy, refs, forward, backward = _checked_layer(rng, name, n, c, o, h, 3, (2, 4))
        times = [[_time(fn, repeat) * 1e3 for fn in fns]
                 for fns in (forward, backward, _weight_gradients(x, gy, refs, 3))]
        print(f"{name:<29}" + "".join(f"{t:>7.2f}" for t in times[0]) + " " * 14
              + "".join(f"{t:>7.2f}" for t in times[1]) + " " * 15
              + "".join(f"{t:>7.2f}" for t in times[2]))
    lab_winograd_5x5(n, repeat)


def lab_transforms(n, repeat):
    """The Winograd transforms that changed, version 1 (:func:`input_transform_f4_v1` and
    the rest above) against ``winograd``'s, on a pool thread's chunk of a batch (half the
    images, as at batch 8 on two threads): F(4x4, 3x3) on the 56x56 and 28x28 layers,
    F(4x4, 5x5)'s output and gradient transforms on the 28x28 ones, and F(2x2, 3x3) on the
    14x14 ones. Each pair must give the same bits (the same sums in the same order) before
    it is timed."""
    rng = np.random.default_rng(5)
    g = max(1, n // 2)
    print(f"Winograd transforms, {g} images per call (ms)      v1        v2   v1/v2")
    layers = [(name, c, o, h, 36) for name, c, o, h in WINOGRAD if h >= 16]
    layers += [(name, c, o, h, 64) for name, c, o, h in WINOGRAD_5X5 if h >= 16]
    layers += [(name, c, o, h, 16) for name, c, o, h in WINOGRAD if h == 14]
    for name, c, o, h, count in layers:
        nt = winograd.tiles(h, h, 2 if count == 16 else 4)
        k = winograd.constants(np.float32, count)
        x = rng.standard_normal((g, c, h * h), dtype=np.float32)
        gy = rng.standard_normal((g, o, h * h), dtype=np.float32)
        m = rng.standard_normal((count, o, g * nt), dtype=np.float32)
        bias = rng.standard_normal(o, dtype=np.float32)
        v1 = TRANSFORMS_V1[count]
        cases = [("input", (v1[0], winograd.TRANSFORMS[count][0]),
                  lambda f, out: f(x, 0, h, h, k, out), (count, c, g * nt)),
                 ("output", (v1[1], winograd.TRANSFORMS[count][1]),
                  lambda f, out: f(m, bias, True, True, k, 0, h, h, out), (g, o, h * h)),
                 ("gradient", (v1[2], winograd.GRADIENT_TRANSFORMS.get(count)),
                  lambda f, out: f(gy, 0, h, h, k, out), (count, o, g * nt))]
        cases = [case for case in cases if case[1][0] is not None]
        for what, fns, call, shape in cases:
            outs = [np.full(shape, np.nan, np.float32) for _ in fns]
            for f, out in zip(fns, outs):
                call(f, out)
            assert np.array_equal(outs[0], outs[1]), f"{name} {what}: v2 differs from v1"
            times = [_time(lambda f=f, out=out: call(f, out), repeat) for f, out in zip(fns, outs)]
            form = {16: "F(2x2, 3x3)", 36: "F(4x4, 3x3)", 64: "F(4x4, 5x5)"}[count]
            print(f"{name:<8} {form} {what:<9}{'':>17}" + "".join(f"{t * 1e3:>10.3f}" for t in times)
                  + f"{times[0] / times[1]:>7.2f}x")


# (name, a's shape, b's shape, a transposed, b transposed): products of a batch-8 training
# step as one pool thread makes them (4 images), with their layouts.
GEMMS = [
    ("conv1 band fwd", (64, 147), (147, 2016), False, False),
    ("conv1 band gW^T", (147, 2016), (2016, 64), False, True),
    ("conv2 wino fwd", (36, 192, 64), (36, 64, 784), False, False),
    ("conv2 wino gx", (36, 64, 192), (36, 192, 196), False, False),     # one image a chunk
    ("conv2 wino gW", (36, 192, 196), (36, 196, 64), False, True),
    ("3b wino fwd", (36, 192, 128), (36, 128, 49), False, False),      # one image a chunk
    ("3b wino fwd[0]", (192, 128), (128, 49), False, False),           # one of them, warm
    ("conv2 wino gx[0]", (64, 192), (192, 196), False, False),
    ("4e F2 fwd", (16, 320, 160), (16, 160, 49), False, False),
    ("3b 1x1 fwd", (320, 256), (256, 3136), False, False),
    ("4b 1x1 gW", (288, 784), (784, 512), False, True),
    ("4b 1x1 gx", (512, 288), (288, 784), True, False),
    ("4e 3x3 fwd", (320, 1440), (1440, 784), False, False),
    ("5b 1x1 fwd", (832, 832), (832, 196), False, False),
]


def lab_gemm(n, repeat):
    """The kernels' products by NumPy's BLAS, by MKL (``kernels.cpu.gemm``) and by our own
    register-tiled product (``kernels.cpu.tiled``, where b's rows are contiguous), each
    checked against a float64 product, then timed on one thread: the shapes of one pool
    thread's share of a batch-8 step (``--batch`` does not change them). The single products
    run with their operands in the cache, the stacks of 16 and 36 (6-30 MB) and the large
    1x1 products with theirs coming from L3 and memory, as in a step. Products with more
    than ``gemm.LARGE_OUT`` bytes of result (marked *) run on NumPy's BLAS in a step, where
    their result is not in the cache; here all are timed."""
    from . import gemm
    parallel.claim_cores()              # OpenBLAS on one thread, as in the pool
    previous, large = gemm.choice(), gemm.LARGE_OUT
    gemm.LARGE_OUT = 1 << 62
    libraries = ["numpy"]
    try:
        gemm.use("mkl")
        libraries.append("mkl")
    except RuntimeError as e:
        print(f"(MKL not measured: {e})")
    from . import tiled
    names = libraries + ["tiled"]
    print(f"products, one thread (ms per call){'':>14}" + "".join(f"{x:>10}" for x in names)
          + "  GFLOP/s" + " " * 7 * (len(names) - 1)
          + ("  numpy/mkl" if len(libraries) > 1 else "") + "  numpy/tiled")
    rng = np.random.default_rng(0)
    try:
        for name, sa, sb, ta, tb in GEMMS:
            a = rng.standard_normal(sa[:-2] + sa[-2:][::-1] if ta else sa).astype(np.float32)
            b = rng.standard_normal(sb[:-2] + sb[-2:][::-1] if tb else sb).astype(np.float32)
            a = np.swapaxes(a, -1, -2) if ta else a
            b = np.swapaxes(b, -1, -2) if tb else b
            out = np.empty(np.broadcast_shapes(sa[:-2], sb[:-2]) + (sa[-2], sb[-1]), np.float32)
            ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
            times = []
            for lib in libraries:
                gemm.use(lib)
                out.fill(np.nan)
                gemm.matmul(a, b, out)
                err = np.abs(out - ref).max() / np.abs(ref).max()
                assert err < 1e-5, f"{name} by {lib}: relative error {err:.1e}"
                times.append(_time(lambda: gemm.matmul(a, b, out), repeat))
            ours = None
            if not tb:
                out.fill(np.nan)
                tiled.matmul(a, b, out)
                err = np.abs(out - ref).max() / np.abs(ref).max()
                assert err < 1e-5, f"{name} by tiled: relative error {err:.1e}"
                ours = _time(lambda: tiled.matmul(a, b, out), repeat)
            flops = 2 * out.size * sa[-1]
            mark = "*" if out.nbytes > large else " "
            print(f"{name:<15}{mark}{str(sa) + ' @ ' + str(sb):>32}"
                  + "".join(f"{t * 1e3:>10.2f}" for t in times)
                  + (f"{ours * 1e3:>10.2f}" if ours else f"{'-':>10}")
                  + "".join(f"{flops / t / 1e9:>7.0f}" for t in times)
                  + (f"{flops / ours / 1e9:>7.0f}" if ours else f"{'-':>7}")
                  + (f"{times[0] / times[1]:>9.2f}x" if len(times) > 1 else "")
                  + (f"{times[0] / ours:>11.2f}x" if ours else f"{'-':>12}"))
    finally:
        gemm.use(previous)
        gemm.LARGE_OUT = large


LABS = {"im2col": lab_im2col, "pool": lab_pool, "lrn": lab_lrn, "winograd": lab_winograd,
        "transforms": lab_transforms, "gemm": lab_gemm}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.cpu.lab", description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8, help="images per call (default 8)")
    ap.add_argument("--repeat", type=int, default=5, help="timed calls per median (default 5)")
    ap.add_argument("--only", default=",".join(LABS), help=f"subset of {','.join(LABS)}")
    args = ap.parse_args(argv)
    unknown = sorted(set(args.only.split(",")) - set(LABS))
    if unknown or args.batch < 1 or args.repeat < 1:
        ap.error(f"--only takes {','.join(LABS)}; --batch and --repeat at least 1"
                 + (f" (unknown: {','.join(unknown)})" if unknown else ""))
    for name in args.only.split(","):
        LABS[name](args.batch, args.repeat)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
