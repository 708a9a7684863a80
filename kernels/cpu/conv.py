"""The convolution's non-GEMM work, over a *chunk* of ``g`` images starting at image ``n0``.

``layers.conv`` runs a convolution chunk by chunk: im2col of the chunk into a reused
workspace, one GEMM, then an epilogue that writes the NCHW output. The chunk's column matrix
has one column per output pixel of the chunk, ordered (image, oh, ow), and one row per
(c, i, j) like the weight's (in, kh, kw)::

    col[(c, i, j), (gi, oh, ow)] = x[n0 + gi, c, oh*s + i - pad, ow*s + j - pad]   (0 outside)

Kernels (all ``cache=True, nogil=True``, serial: ``parallel.run`` gives each thread whole
chunks, and col2im sums each (image, channel) plane's taps in a fixed order, so there are no
races and results are deterministic):

* :func:`im2col` -- fill ``col`` (C*kh*kw, g*OH*OW); also gathers chunks for 1x1 convolutions on small maps.
* :func:`col2im` -- the adjoint: every (image, channel) plane of ``gx`` sums its taps' rows
  in a fixed tap order, the plane staying in cache while it does.
* :func:`epilogue` -- ``y[n0 + gi, o, p] = act(src[o, gi*P + p] + b[o])``: bias, ReLU and the
  (O, g*P) -> (g, O, P) transpose in one pass. With ``g = 1`` it may run in place on y[n0].
* :func:`prologue` -- the backward's start: ``out[o, gi*P + p] = gy[n0 + gi, o, p] * (y > 0)``,
  the ReLU mask and the (g, O, P) -> (O, g*P) gather in one pass.
"""
from __future__ import annotations

from numba import njit

from .loops import add, add_strided, copy, copy_strided, u64, zero


@njit(cache=True, nogil=True, error_model="numpy")
def _valid_range(size_out, size_in, tap, stride, pad):
    """[lo, hi): the outputs q whose input q*stride + tap - pad lies in [0, size_in)."""
    lo = -((tap - pad) // stride)              # ceil((pad - tap) / stride)
    if lo < 0:
        lo = 0
    hi = (size_in - 1 + pad - tap) // stride + 1
    if hi > size_out:
        hi = size_out
    if hi < lo:
        hi = lo
    return lo, hi


@njit(cache=True, nogil=True, error_model="numpy")
def im2col(x, n0, kh, kw, stride, pad, oh, ow, col):
    """x (N, C, H, W) -> col (C*kh*kw, g*OH*OW) for images n0 .. n0+g-1 (g from col's width).

    Each row of ``col`` is filled one output row at a time: zeros where the tap reads the
    padding, a copy of an input row segment elsewhere (contiguous when stride is 1)."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    p = oh * ow
    g = col.shape[1] // p
    for gi in range(g):
        for ci in range(c):
            plane = x[n0 + gi, ci]
            for i in range(kh):
                for j in range(kw):
                    row = col[(ci * kh + i) * kw + j]
                    lo, hi = _valid_range(ow, w, j, stride, pad)
                    for yy in range(oh):
                        hh = yy * stride + i - pad
                        base = gi * p + yy * ow
                        if hh < 0 or hh >= h:
                            zero(row, base, ow)
                            continue
                        zero(row, base, lo)
                        start = lo * stride + j - pad      # >= 0 by the choice of lo
                        if stride == 1:
                            copy(row, base + lo, plane[hh], start, hi - lo)
                        else:
                            copy_strided(row, base + lo, plane[hh], start, stride, hi - lo)
                        zero(row, base + hi, ow - hi)


@njit(cache=True, nogil=True, error_model="numpy")
def col2im(col, n0, kh, kw, stride, pad, oh, ow, gx):
    """Adjoint of :func:`im2col`: overwrite gx[n0 .. n0+g-1] (N, C, H, W) with the sum of
    every tap's contribution, one (image, channel) plane at a time, taps in order."""
    c, h, w = gx.shape[1], gx.shape[2], gx.shape[3]
    p = oh * ow
    g = col.shape[1] // p
    for gi in range(g):
        for ci in range(c):
            plane = gx[n0 + gi, ci]
            for hh in range(h):
                zero(plane[hh], 0, w)
            for i in range(kh):
                for j in range(kw):
                    row = col[(ci * kh + i) * kw + j]
                    lo, hi = _valid_range(ow, w, j, stride, pad)
                    for yy in range(oh):
                        hh = yy * stride + i - pad
                        if hh < 0 or hh >= h:
                            continue
                        base = gi * p + yy * ow
                        start = lo * stride + j - pad
                        if stride == 1:
                            add(plane[hh], start, row, base + lo, hi - lo)
                        else:
                            add_strided(plane[hh], start, stride, row, base + lo, hi - lo)


@njit(cache=True, nogil=True, error_model="numpy")
def epilogue(src, bias, has_bias, relu, y3, n0):
    """y3[n0 + gi, o, q] = src[o, gi*P + q] (+ bias[o]), then max(., 0) when ``relu``.

    src (O, g*P), y3 (N, O, P). NaN stays NaN under the ReLU, as with ``np.maximum``."""
    o_, gp = src.shape
    p = y3.shape[2]
    g = gp // p
    for gi in range(g):
        for o in range(o_):
            s_row, y_row = src[o], y3[n0 + gi, o]
            base = u64(gi * p)
            b = bias[o] if has_bias else 0
            if relu:
                for q in range(u64(p)):
                    v = s_row[base + q] + b
                    y_row[q] = 0 if v < 0 else v
            else:
                for q in range(u64(p)):
                    y_row[q] = s_row[base + q] + b


@njit(cache=True, nogil=True, error_model="numpy")
def prologue(gy3, y3, relu, n0, out):
    """out[o, gi*P + q] = gy3[n0 + gi, o, q], zeroed where y3 <= 0 when ``relu``.

    gy3, y3 (N, O, P) (gy3 may be a strided view, e.g. a slice of a concatenation's
    gradient); out (O, g*P)."""
    o_, gp = out.shape
    p = gy3.shape[2]
    g = gp // p
    for gi in range(g):
        for o in range(o_):
            g_row, o_row = gy3[n0 + gi, o], out[o]
            base = u64(gi * p)
            if relu:
                y_row = y3[n0 + gi, o]
                for q in range(u64(p)):
                    o_row[base + q] = g_row[q] if y_row[q] > 0 else 0
            else:
                copy(o_row, base, g_row, 0, p)
