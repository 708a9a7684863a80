"""Pooling kernels: max pooling (maximum and winning tap; backward by scatter to the winners)
and average pooling (on small maps one matrix product, :func:`avg_pool_matrix`).

Same semantics as ``layers.pooling`` (Caffe): windows of k x k with stride s start at
``oh*s - pad``; for max pooling, positions outside the input (padding and the extra
rows/columns ceil mode reaches) count as -inf, taps are scanned in order t = i*k + j and the
first maximum wins (strict ``>``), so ``winner`` (uint8, t < 256) is identical to the NumPy
path's (NaNs aside, and windows whose taps inside the input are all -inf: the NumPy path may
then name a padding tap, these kernels the first tap inside).

GoogLeNet's two geometries have kernels of their own that treat all the planes of a run of
images as one flat array, in blocks of whole planes that stay in the L1 cache:

* 3x3, stride 1, pad 1 (the inception blocks' pools): along rows,
  ``hb[q] = max(x[q-1], x[q], x[q+1])``, then down columns,
  ``y[q] = max(hb[q-W], hb[q], hb[q+W])``, each one long loop over the block; the first and
  last column and row of each plane, where a tap falls outside, are then redone with their
  taps inside only. So a winner is always a tap inside its plane, which backward relies on:
  ``gx[p] = sum over taps t = 8..0 of gy[o] where winner[o] == t``, o = p minus t's
  offset, one gather loop over the flat array in the raster order of the outputs (the
  scatter's order: the same sums, bit for bit). Measured against the plane-by-plane kernels
  below on 4 images, one thread: forward 1.7x (28x28) to 3.7x (7x7), backward 2.5-5x.
* 3x3, stride 2, no pad, even H and W (pool1 to pool4, Caffe's ceil giving H/2): the row
  pass reads ``x[2q .. 2q+2]`` over the block, the column pass output row by output row;
  the last column and row of each plane have two taps. 1.1x (56x56) to 2.5x (112x112).

Other geometries copy each plane into a -inf padded buffer laid out so that each row and
column pass is one long loop, which vectorises: 2 (k - 1) passes for a k x k window instead of
k^2 - 1 tap by tap. Backward: ``gx[window start + (t // k, t % k)] += gy`` for every output,
plane by plane, in raster order of the outputs. Callers split the batch over threads by whole
images (``parallel``), so overlapping windows (3x3/2, 3x3/1) need no atomics and the sum
order is fixed.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import arrays, parallel
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


# ------------------------------------------------------------------ whole planes at once
# Elements per block: the block and its row pass (4 + 1 bytes each) stay in L1 (one thread,
# 4 images of 3x3/1 pools: 2048-4096 1.7-3.7x the plane-by-plane kernel, 16384 1.35-3.35x).
BLOCK = 4096


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _keep(v, t, cand, tc):
    """(value, tap) after offering cand with tap tc: strictly greater wins."""
    better = cand > v
    return (cand if better else v), (tc if better else t)


@njit(cache=True, nogil=True, error_model="numpy")
def max_pool_3x3_same(x, y, winner, track):
    """3x3 windows, stride 1, pad 1: x (N, C, H, W) C-contiguous, H, W >= 2 -> y and
    winner (N, C, H, W), winner unwritten unless ``track``. Blocks of BLOCK elements
    (whole planes): rows, row ends, columns, then each plane's first and last row."""
    n, c, h, w = x.shape
    hw = h * w
    planes = n * c
    xf = x.reshape(planes * hw)
    yf = y.reshape(planes * hw)
    wf = winner.reshape(winner.size)
    per = max(1, BLOCK // hw)
    hb = np.empty(per * hw, dtype=x.dtype)
    ha = np.empty(per * hw, dtype=np.uint8)
    W = u64(w)
    for p0 in range(0, planes, per):
        p1 = min(planes, p0 + per)
        lo = u64(p0 * hw)
        m = u64((p1 - p0) * hw)
        for q in range(u64(1), m - u64(1)):
            v, t = xf[lo + q - u64(1)], np.uint8(0)
            v, t = _keep(v, t, xf[lo + q], np.uint8(1))
            v, t = _keep(v, t, xf[lo + q + u64(1)], np.uint8(2))
            hb[q] = v
            ha[q] = t
        for r in range((p1 - p0) * h):
            q = u64(r * w)
            v, t = _keep(xf[lo + q], np.uint8(1), xf[lo + q + u64(1)], np.uint8(2))
            hb[q] = v
            ha[q] = t
            q = q + W - u64(1)
            v, t = _keep(xf[lo + q - u64(1)], np.uint8(0), xf[lo + q], np.uint8(1))
            hb[q] = v
            ha[q] = t
        for q in range(W, m - W):
            v, t = hb[q - W], ha[q - W]
            v, t = _keep(v, t, hb[q], ha[q] + np.uint8(3))
            v, t = _keep(v, t, hb[q + W], ha[q + W] + np.uint8(6))
            yf[lo + q] = v
            if track:
                wf[lo + q] = t
        for pl in range(p1 - p0):
            top = u64(pl * hw)
            bottom = top + u64(hw) - W
            for xx in range(W):
                q = top + xx
                v, t = _keep(hb[q], ha[q] + np.uint8(3), hb[q + W], ha[q + W] + np.uint8(6))
                yf[lo + q] = v
                if track:
                    wf[lo + q] = t
                q = bottom + xx
                v, t = _keep(hb[q - W], ha[q - W], hb[q], ha[q] + np.uint8(3))
                yf[lo + q] = v
                if track:
                    wf[lo + q] = t


@njit(cache=True, nogil=True, error_model="numpy")
def max_pool_3x3_same_backward(gy, winner, gx):
    """gx (N, C, H, W) = sum over taps t = 8..0 of gy[p - offset(t)] where that output's
    winner is t (3x3, stride 1, pad 1; winners from :func:`max_pool_3x3_same`, all inside
    the plane). The first and last W + 1 positions, whose outputs could lie outside the
    array, check their bounds."""
    n, c, h, w = gx.shape
    L = n * c * h * w
    gyf = gy.reshape(L)
    wf = winner.reshape(L)
    gxf = gx.reshape(L)
    W = u64(w)
    lo = min(L, w + 1)
    hi = max(lo, L - w - 1)
    zero = np.zeros(1, dtype=gx.dtype)[0]
    for p in range(u64(lo), u64(hi)):
        acc = zero
        o = p - W + u64(1)
        acc = acc + gyf[o - u64(2)] if wf[o - u64(2)] == 8 else acc
        acc = acc + gyf[o - u64(1)] if wf[o - u64(1)] == 7 else acc
        acc = acc + gyf[o] if wf[o] == 6 else acc
        o = p + u64(1)
        acc = acc + gyf[o - u64(2)] if wf[o - u64(2)] == 5 else acc
        acc = acc + gyf[o - u64(1)] if wf[o - u64(1)] == 4 else acc
        acc = acc + gyf[o] if wf[o] == 3 else acc
        o = p + W + u64(1)
        acc = acc + gyf[o - u64(2)] if wf[o - u64(2)] == 2 else acc
        acc = acc + gyf[o - u64(1)] if wf[o - u64(1)] == 1 else acc
        acc = acc + gyf[o] if wf[o] == 0 else acc
        gxf[p] = acc
    for p in range(lo):
        gxf[p] = _gather_checked(gyf, wf, p, w, zero)
    for p in range(hi, L):
        gxf[p] = _gather_checked(gyf, wf, p, w, zero)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _gather_checked(gyf, wf, p, w, zero):
    """:func:`max_pool_3x3_same_backward`'s sum for one position, outputs bounds-checked."""
    acc = zero
    for t in range(8, -1, -1):
        o = p - ((t // 3) - 1) * w - ((t % 3) - 1)
        if o >= 0 and o < gyf.size and wf[o] == t:
            acc += gyf[o]
    return acc


@njit(cache=True, nogil=True, error_model="numpy")
def max_pool_3x3_half(x, y, winner, track):
    """3x3 windows, stride 2, no pad: x (N, C, H, W) C-contiguous with H, W even -> y and
    winner (N, C, H/2, W/2) (Caffe's ceil mode). The last column's and the last row's
    windows reach one past the plane: two taps there."""
    n, c, h, w = x.shape
    oh, ow = h // 2, w // 2
    hw = h * w
    planes = n * c
    xf = x.reshape(planes * hw)
    yf = y.reshape(planes * oh * ow)
    wf = winner.reshape(winner.size)
    per = max(1, BLOCK // hw)
    hb = np.empty(per * h * ow, dtype=x.dtype)
    ha = np.empty(per * h * ow, dtype=np.uint8)
    OW = u64(ow)
    for p0 in range(0, planes, per):
        p1 = min(planes, p0 + per)
        lo = u64(p0 * hw)
        m = u64((p1 - p0) * h * ow)
        for q in range(m - u64(1)):
            s0 = lo + u64(2) * q
            v, t = xf[s0], np.uint8(0)
            v, t = _keep(v, t, xf[s0 + u64(1)], np.uint8(1))
            v, t = _keep(v, t, xf[s0 + u64(2)], np.uint8(2))
            hb[q] = v
            ha[q] = t
        for r in range((p1 - p0) * h):
            q = u64(r * ow) + OW - u64(1)
            s0 = lo + u64(2) * q
            v, t = _keep(xf[s0], np.uint8(0), xf[s0 + u64(1)], np.uint8(1))
            hb[q] = v
            ha[q] = t
        out = u64(p0 * oh * ow)
        for rr in range((p1 - p0) * oh):
            r0 = u64(2 * rr) * OW
            o0 = out + u64(rr) * OW
            last = rr % oh == oh - 1
            for xx in range(OW):
                v, t = hb[r0 + xx], ha[r0 + xx]
                v, t = _keep(v, t, hb[r0 + OW + xx], ha[r0 + OW + xx] + np.uint8(3))
                if not last:
                    v, t = _keep(v, t, hb[r0 + u64(2) * OW + xx],
                                 ha[r0 + u64(2) * OW + xx] + np.uint8(6))
                yf[o0 + xx] = v
                if track:
                    wf[o0 + xx] = t


# ------------------------------------------------------------------ a band of a map at a time
# For a convolution that pools its own output (``kernels.cpu.conv.conv2d_max_pool``): the
# 3x3/2 pool of :func:`max_pool_3x3_half` (same taps, same winners) over a band of rows of
# the convolution's output while it is in cache, and its backward as the convolution's
# masked output gradient of a band, ready for the weight gradient's product.
@njit(cache=True, nogil=True, error_model="numpy")
def max_pool_3x3_half_band(src, width, first, count, two_last, y, winner, r0):
    """Pooled rows r0 .. r0+count-1 of every plane o, 3x3 windows, stride 2: row r0 + k from
    rows first + 2k .. first + 2k + 2 of src (O, rows * width), only the first two for the
    last one when ``two_last`` (the map's end in Caffe's ceil mode); even ``width``, the last
    column's windows two taps wide. y, winner (O, OH, width / 2); taps in order t = 3 i + j,
    the first maximum wins (strict >)."""
    o_ = src.shape[0]
    ow = width // 2
    OW = u64(ow)
    rows = 2 * count + (0 if two_last else 1)
    hb = np.empty(rows * ow, dtype=src.dtype)
    ha = np.empty(rows * ow, dtype=np.uint8)
    for o in range(o_):
        s = src[o]
        for rr in range(rows):                       # along rows: max of 3 (2 at the end)
            base = u64((first + rr) * width)
            hq = u64(rr * ow)
            for q in range(OW - u64(1)):
                s0 = base + u64(2) * q
                v, t = s[s0], np.uint8(0)
                v, t = _keep(v, t, s[s0 + u64(1)], np.uint8(1))
                v, t = _keep(v, t, s[s0 + u64(2)], np.uint8(2))
                hb[hq + q] = v
                ha[hq + q] = t
            q = OW - u64(1)
            s0 = base + u64(2) * q
            v, t = _keep(s[s0], np.uint8(0), s[s0 + u64(1)], np.uint8(1))
            hb[hq + q] = v
            ha[hq + q] = t
        yo, wo = y[o], winner[o]
        for k in range(count):                       # down columns
            r = u64(2 * k) * OW
            yr, wr = yo[r0 + k], wo[r0 + k]
            three = not (two_last and k == count - 1)
            for xx in range(OW):
                v, t = hb[r + xx], ha[r + xx]
                v, t = _keep(v, t, hb[r + OW + xx], ha[r + OW + xx] + np.uint8(3))
                if three:
                    v, t = _keep(v, t, hb[r + u64(2) * OW + xx],
                                 ha[r + u64(2) * OW + xx] + np.uint8(6))
                yr[xx] = v
                wr[xx] = t


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def max_pool_3x3_half_band_backward(gy, y, winner, y0, y1, width, out, gb, sum_rows):
    """out (O, (y1 - y0) * width) = the gradient reaching rows y0 .. y1-1 of the pooled map
    from gy (O, OH, OW) through the winners, where the pooled value y > 0 (a ReLU before the
    pool: its winner is then > 0 too): the adjoint of :func:`max_pool_3x3_half_band`, sent
    window by window in raster order (the order, and so the sums, of :func:`max_pool_backward`
    followed by the ReLU's mask). With ``sum_rows``, gb[o] (float64) gets the sum of out's
    row o (the bias gradient), as :func:`kernels.cpu.conv.prologue` sums it."""
    o_, oh, ow = gy.shape
    n = (y1 - y0) * width
    r_lo = max(0, (y0 - 1) // 2)                     # windows reaching row y0 ...
    r_hi = min(oh, (y1 - 1) // 2 + 1)                # ... and row y1 - 1
    for o in range(o_):
        row = out[o]
        for q in range(u64(n)):
            row[q] = 0
        go, yo, wo = gy[o], y[o], winner[o]
        for r in range(r_lo, r_hi):
            for xx in range(ow):
                if yo[r, xx] > 0:
                    t = np.int64(wo[r, xx])
                    yy = 2 * r + t // 3
                    if y0 <= yy < y1:
                        row[(yy - y0) * width + 2 * xx + t % 3] += go[r, xx]
        if sum_rows:
            total = 0.0
            for q in range(u64(n)):
                total += row[q]
            gb[o] += total


# By ``_flat_kind``: (forward, backward); 3x3/2 goes backward by the scatter.
FLAT_KERNELS = {"same": (max_pool_3x3_same, max_pool_3x3_same_backward),
                "half": (max_pool_3x3_half, None)}


# ------------------------------------------------------------------ the whole batch
def max_pool2d(x, k, s, pad, oh, ow, track=True):
    """(y, winner) (N, C, OH, OW) of x (N, C, H, W), images shared among the threads;
    winner is None unless ``track`` (only backward needs it)."""
    y = np.empty(x.shape[:2] + (oh, ow), dtype=x.dtype)
    winner = np.empty(y.shape if track else (x.shape[0], 1, 1, 1), dtype=np.uint8)
    kind = _flat_kind(x.shape, k, s, pad, oh, ow)
    if kind:
        flat = FLAT_KERNELS[kind][0]
        if not x.flags.c_contiguous:
            parallel.sync()            # the copy reads x here
            x = np.ascontiguousarray(x)    # one flat array (the 3x3/1 backward needs its winners)
        fn = lambda i: flat(x[i], y[i], winner[i], track)                 # noqa: E731
    else:
        fn = lambda i: max_pool_forward(x[i], k, s, pad, y[i], winner[i], track)  # noqa: E731
    parallel.over_images(x.shape[0], fn, queue=True)
    return y, (winner if track else None)


def _flat_kind(shape, k, s, pad, oh, ow):
    """"same" (3x3/1, pad 1), "half" (3x3/2, no pad, even sides halved) or None."""
    h, w = shape[2:]
    if k == 3 and s == 1 and pad == 1 and h >= 2 and w >= 2:
        return "same"
    if k == 3 and s == 2 and pad == 0 and h % 2 == w % 2 == 0 and (oh, ow) == (h // 2, w // 2):
        return "half"
    return None


def max_pool2d_backward(gy, winner, k, s, pad, x_shape):
    """gx (x_shape): gy sent to each window's winning tap (gathered for 3x3/1, else
    scattered)."""
    gx = np.empty(x_shape, dtype=gy.dtype)
    kind = _flat_kind(x_shape, k, s, pad, *gy.shape[2:])
    gather = FLAT_KERNELS[kind][1] if kind else None
    if gather is not None:
        if not gy.flags.c_contiguous:
            parallel.sync()            # the copy reads gy here
            gy = np.ascontiguousarray(gy)
        fn = lambda i: gather(gy[i], winner[i], gx[i])                    # noqa: E731
    else:
        fn = lambda i: max_pool_backward(gy[i], winner[i], k, s, pad, gx[i])  # noqa: E731
    parallel.over_images(gy.shape[0], fn, queue=True)
    return gx


# Average pooling is linear: on a map small enough, one (OH*OW, H*W) matrix P holds it,
# P[o, i] = 1 / divisor(o) where pixel i lies in output o's window, and every plane of the
# batch goes through it in one product, y (N*C, OH*OW) = x (N*C, H*W) @ P^T, backward
# gx = gy @ P. GoogLeNet's auxiliary heads (14x14 -> 4x4 by 5x5/3) and pool5 (7x7 -> 1x1),
# batch 8, two threads, forward and backward each: 2.0-2.7x (aux) and 1.15x (pool5) the
# window-by-window kernels below, about 2 ms less a training step (0.5%; 40 paired steps
# measured 1.001x, within their noise). Up to MATRIX_ENTRIES entries (16 KiB in float32);
# larger maps take the kernels.
MATRIX_ENTRIES = 1 << 12
_matrices: dict = {}


def avg_pool_matrix(h, w, k, s, pad, dh, dw, dtype) -> np.ndarray:
    """P (len(dh) * len(dw), H*W) of :func:`avg_pool2d` as a product (read-only, cached)."""
    key = (h, w, k, s, pad, tuple(dh.tolist()), tuple(dw.tolist()), np.dtype(dtype))
    p = _matrices.get(key)
    if p is None:
        oh, ow = len(dh), len(dw)
        p4 = np.zeros((oh, ow, h, w))
        for yy in range(oh):
            y0, y1 = max(0, yy * s - pad), min(h, yy * s - pad + k)
            for xx in range(ow):
                x0, x1 = max(0, xx * s - pad), min(w, xx * s - pad + k)
                p4[yy, xx, y0:y1, x0:x1] = 1.0 / (float(dh[yy]) * float(dw[xx]))
        p = p4.reshape(oh * ow, h * w).astype(dtype)
        p.flags.writeable = False
        _matrices[key] = p
    return p


def _as_product(shape, dh, dw) -> bool:
    return len(dh) * len(dw) * shape[2] * shape[3] <= MATRIX_ENTRIES


def avg_pool2d(x, k, s, pad, dh, dw):
    """y (N, C, len(dh), len(dw)): window sums over Caffe's divisors dh[yy] * dw[xx]."""
    n, c, h, w = x.shape
    if _as_product(x.shape, dh, dw):
        p = avg_pool_matrix(h, w, k, s, pad, dh, dw, x.dtype)
        x2 = np.ascontiguousarray(x).reshape(n * c, h * w)
        return arrays.matmul(x2, p.T).reshape(n, c, len(dh), len(dw))
    y = np.empty(x.shape[:2] + (len(dh), len(dw)), dtype=x.dtype)
    parallel.over_images(x.shape[0], lambda i: avg_pool_forward(x[i], k, s, pad, dh, dw, y[i]))
    return y


def avg_pool2d_backward(gy, k, s, pad, dh, dw, x_shape):
    """gx (x_shape): every output's gy / divisor spread over its window."""
    n, c, h, w = x_shape
    if _as_product(x_shape, dh, dw):
        p = avg_pool_matrix(h, w, k, s, pad, dh, dw, gy.dtype)
        gy2 = np.ascontiguousarray(gy).reshape(n * c, len(dh) * len(dw))
        return arrays.matmul(gy2, p).reshape(x_shape)
    gx = np.empty(x_shape, dtype=gy.dtype)
    parallel.over_images(gy.shape[0], lambda i: avg_pool_backward(gy[i], k, s, pad, dh, dw,
                                                                  gx[i]))
    return gx
