"""The convolution on the CPU, chunk by chunk: :func:`conv2d` and :func:`conv2d_backward`;
and a convolution with its ReLU and a 3x3/2 max pool as one op, band by band:
:func:`conv2d_max_pool` and :func:`conv2d_max_pool_backward` (GoogLeNet's conv1 + pool1).

A convolution (``layers.conv`` has the maths) runs ``g`` images at a time, so that one GEMM
has at least ``COLUMNS_PER_GEMM`` columns (1x1 on maps of 16x16 and up: one image,
``x[n]`` itself; on smaller maps the chunk's images gathered, so that the weights are read
once per chunk), the chunks shared among threads (``parallel``)::

    col_c = im2col(x[n0:n0+g])            (C*kh*kw, g*OH*OW), a reused workspace
    Y_c   = W @ col_c                     (O, g*OH*OW); with g = 1 straight into y[n0]
    y[n0:n0+g] = relu(Y_c + b)            one Numba pass: bias, ReLU, (O, g, P) -> (g, O, P)

and backward likewise per chunk (ReLU mask and gather, gW += gY_c @ col_c.T,
gx[chunk] = col2im(W.T @ gY_c)). No batch-sized column matrix is ever built: the columns of a
chunk stay in cache between im2col and the GEMM, and the workspaces are reused.

The non-GEMM work is done by Numba kernels over a *chunk* of ``g`` images starting at image
``n0``. The chunk's column matrix
has one column per output pixel of the chunk, ordered (image, oh, ow), and one row per
(c, i, j) like the weight's (in, kh, kw)::

    col[(c, i, j), (gi, oh, ow)] = x[n0 + gi, c, oh*s + i - pad, ow*s + j - pad]   (0 outside)

Kernels (all ``cache=True, nogil=True``, serial: ``parallel.run`` gives each thread whole
chunks, and col2im sums each (image, channel) plane's taps in a fixed order, so there are no
races and results are deterministic):

* :func:`im2col` -- fill ``col`` (C*kh*kw, g*OH*OW) from zero-padded copies of each plane.
* :func:`phase_planes` and :func:`im2col_rows` -- the same for one large image in bands of
  output rows (conv1: ``BAND_COLUMNS``), the padded copies made once per image.
* :func:`col2im` -- the adjoint: every (image, channel) plane of ``gx`` sums its taps' rows
  in a fixed tap order, the plane staying in cache while it does.
* :func:`epilogue` -- ``y[n0 + gi, o, p] = act(src[o, gi*P + p] + b[o])``: bias, ReLU and the
  (O, g*P) -> (g, O, P) transpose in one pass. With ``g = 1`` it may run in place on y[n0].
* :func:`prologue` -- the backward's start: ``out[o, gi*P + p] = gy[n0 + gi, o, p] * (y > 0)``,
  the ReLU mask and the (g, O, P) -> (O, g*P) gather in one pass.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit

from . import arrays, gemm, parallel, pool, winograd, workspace
from .loops import add, add_strided, copy, copy_strided, u64, zero

# Images per GEMM so that it has at least this many columns (output pixels). Larger GEMMs run
# closer to BLAS's peak; smaller chunks keep the columns in cache.
COLUMNS_PER_GEMM = 1024

# An image with more than twice this many output pixels (conv1's 112x112) runs in bands of
# whole output rows of about this many columns: the band's columns, the GEMM's result and
# the masked gradient then stay in the core's L2 cache, where a whole image's (7.4 MB of
# columns for conv1) go out to memory and back, and OpenBLAS runs (64, 147) @ (147, 1792)
# at 1.3x the rate of (64, 147) @ (147, 12544).
BAND_COLUMNS = 2048

# 1x1 convolutions on maps of at least this many pixels (16x16) take one image per GEMM,
# x[n] in place; on smaller maps a chunk's images are gathered into one GEMM.
POINTWISE_IN_PLACE = 256


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


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _phase_planes(plane, s, pad, hp, wq, buf):
    """buf (s, hp, wq) = the ``s`` phase planes of one zero-padded (H, W) plane: phase r
    holds the padded plane's columns r, r + s, r + 2 s, ... Only positions inside the image
    are written, so the padding keeps whatever zeros ``buf`` was made with."""
    h, w = plane.shape
    for r in range(max(0, pad), min(hp, h + pad)):
        src = plane[r - pad]
        for ph in range(s):
            # phase columns q whose padded column q*s + ph lies inside the image
            q0 = max(0, -((ph - pad) // s))
            q1 = min(wq, (w - 1 + pad - ph) // s + 1)
            if q1 <= q0:
                continue
            if s == 1:
                copy(buf[0, r], q0, src, q0 - pad, q1 - q0)
            else:
                copy_strided(buf[ph, r], q0, src, q0 * s + ph - pad, s, q1 - q0)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _tap_rows(buf, ci, kh, kw, s, ow, y0, y1, col, base):
    """col[(ci, i, j), base + (yy - y0)*OW + xx] for output rows y0 <= yy < y1, from channel
    ci's phase planes ``buf``: tap (i, j) of row yy is OW contiguous values of phase j % s,
    row yy*s + i, from column j // s."""
    for i in range(kh):
        for j in range(kw):
            row = col[(ci * kh + i) * kw + j]
            ph, off = j % s, j // s
            for yy in range(y0, y1):
                copy(row, base + (yy - y0) * ow, buf[ph, yy * s + i], off, ow)


def phase_shape(c, kh, kw, stride, oh, ow):
    """(C, stride, rows, columns) of an image's phase planes (:func:`phase_planes`)."""
    return c, stride, (oh - 1) * stride + kh, ow + (kw - 1) // stride


@njit(cache=True, nogil=True, error_model="numpy")
def im2col(x, n0, kh, kw, stride, pad, oh, ow, col):
    """x (N, C, H, W) -> col (C*kh*kw, g*OH*OW) for images n0 .. n0+g-1 (g from col's width).

    Each (image, channel) plane is first copied into ``stride`` zero-padded *phase planes*,
    phase r holding the padded plane's columns r, r + stride, r + 2 stride, ... (stride 1:
    the padded plane itself). Tap (i, j) of output row yy then reads phase j % stride, row
    yy*stride + i, from column j // stride on: every row of ``col`` is filled by contiguous
    copies of OW values, with no padding cases left (1.25-1.6x the row-by-row version that
    zero-filled the edges itself, and for stride 2 read every other value)."""
    c = x.shape[1]
    s = stride
    p = oh * ow
    g = col.shape[1] // p
    hp = (oh - 1) * s + kh                       # padded rows the taps read
    wq = ow + (kw - 1) // s                      # columns of each phase plane they read
    buf = np.zeros((s, hp, wq), dtype=col.dtype)     # the padding stays zero
    for gi in range(g):
        for ci in range(c):
            _phase_planes(x[n0 + gi, ci], s, pad, hp, wq, buf)
            _tap_rows(buf, ci, kh, kw, s, ow, 0, oh, col, gi * p)


@njit(cache=True, nogil=True, error_model="numpy")
def phase_planes(x, n, pad, bufs):
    """bufs (C, s, rows, columns) (:func:`phase_shape`, zero-filled once by the caller) =
    every channel's phase planes of image n, for :func:`im2col_rows`."""
    for ci in range(x.shape[1]):
        _phase_planes(x[n, ci], bufs.shape[1], pad, bufs.shape[2], bufs.shape[3], bufs[ci])


@njit(cache=True, nogil=True, error_model="numpy")
def im2col_rows(bufs, kh, kw, ow, y0, y1, col):
    """col (C*kh*kw, (y1 - y0)*OW) = one image's column matrix for output rows y0 .. y1-1,
    read from its phase planes ``bufs`` (:func:`phase_planes`)."""
    for ci in range(bufs.shape[0]):
        _tap_rows(bufs[ci], ci, kh, kw, bufs.shape[1], ow, y0, y1, col, 0)


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
def im2col_small(x, n0, pad, wp, taps, col):
    """:func:`im2col` for small maps: each (image, channel) plane is copied into a zeroed
    buffer padded to width ``wp``, and tap t's row then reads its P values at
    ``taps[t, q]`` (:func:`small_map_taps`): one loop of P per tap, where im2col runs a loop
    (and its edge cases) per tap and output row, which costs more than the copying itself
    on 4x4 and 2x2 maps."""
    c, h, w = x.shape[1], x.shape[2], x.shape[3]
    kk, p = taps.shape
    g = col.shape[1] // p
    buf = np.zeros((h + 2 * pad) * wp, dtype=x.dtype)
    for gi in range(g):
        for ci in range(c):
            plane = x[n0 + gi, ci]
            for hh in range(h):
                copy(buf, (hh + pad) * wp + pad, plane[hh], 0, w)
            for t in range(kk):
                row, tap = col[ci * kk + t], taps[t]
                base = u64(gi * p)
                for q in range(u64(p)):
                    row[base + q] = buf[tap[q]]


@njit(cache=True, nogil=True, error_model="numpy")
def col2im_small(col, n0, pad, wp, taps, gx):
    """:func:`col2im` for small maps, the adjoint of :func:`im2col_small`: every tap's row is
    added into a zeroed padded plane in tap order (so each pixel sums its taps in the same
    order as col2im: the results are identical), whose inside is then gx[n0 + gi, ci]."""
    c, h, w = gx.shape[1], gx.shape[2], gx.shape[3]
    kk, p = taps.shape
    g = col.shape[1] // p
    buf = np.empty((h + 2 * pad) * wp, dtype=gx.dtype)
    for gi in range(g):
        for ci in range(c):
            zero(buf, 0, buf.size)
            for t in range(kk):
                row, tap = col[ci * kk + t], taps[t]
                base = u64(gi * p)
                for q in range(u64(p)):
                    buf[tap[q]] += row[base + q]
            plane = gx[n0 + gi, ci]
            for hh in range(h):
                copy(plane[hh], 0, buf, (hh + pad) * wp + pad, w)


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
def bias_relu(y2, bias, has_bias, relu, c0, c1):
    """In place on columns c0 .. c1-1 of y2 (O, P): y2[o] = y2[o] (+ bias[o]), then
    max(., 0) when ``relu``.

    The epilogue of a one-image chunk (or band), whose GEMM wrote straight into y[n0].
    Calling :func:`epilogue` with src and y3 the same memory ran 7x slower: LLVM cannot tell
    that the two rows are the same, and the loop it keeps for possibly overlapping arrays is
    not vectorised."""
    o_ = y2.shape[0]
    lo, hi = u64(c0), u64(c1)
    for o in range(o_):
        row = y2[o]
        b = bias[o] if has_bias else 0
        if relu:
            for q in range(lo, hi):
                v = row[q] + b
                row[q] = 0 if v < 0 else v
        else:
            for q in range(lo, hi):
                row[q] += b


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def prologue(gy3, y3, relu, n0, c0, width, out, gb, sum_rows, strided=False, o0=0):
    """out[o, gi*width + q] = gy3[n0 + gi, o, c0 + q], zeroed where y3[n0 + gi, o0 + o] <= 0
    when ``relu``: columns c0 .. c0+width-1 of g = out.shape[1] // width images (whole
    images: c0 = 0, width = P; a band of one image: g = 1). With ``sum_rows``, gb[o]
    (float64) also gets the sum of out's row o, in the same pass (the bias gradient; its
    additions may be reordered, ``fastmath={"reassoc"}``, so that they vectorise).

    gy3 (N, O, P), y3 (N, o0 + O or more, P); gy3 may be a strided view, e.g. a slice of a
    concatenation's gradient, which ``strided`` says; out (O, g*width). ``o0``: gy3 is the
    gradient of channels o0 .. o0+O-1 of y3 (one of a convolution's gradient pieces)."""
    if relu and sum_rows and not strided:
        _masked_with_sums(gy3, y3, n0, c0, width, out, gb, o0)
        return
    o_, gp = out.shape
    g = gp // width
    lo = u64(c0)
    for gi in range(g):
        for o in range(o_):
            g_row, o_row = gy3[n0 + gi, o], out[o]
            base = u64(gi * width)
            if relu and strided:
                # gy3 a strided view (a concatenation's gradient): the masked load from its
                # rows ran up to 7x slower in isolation (1.2x over a training step's calls)
                # than a plain copy of the row followed by the mask in place.
                y_row = y3[n0 + gi, o0 + o]
                copy(o_row, base, g_row, c0, width)
                for q in range(u64(width)):
                    o_row[base + q] = o_row[base + q] if y_row[lo + q] > 0 else 0
            elif relu:
                y_row = y3[n0 + gi, o0 + o]
                for q in range(u64(width)):
                    o_row[base + q] = g_row[lo + q] if y_row[lo + q] > 0 else 0
            else:
                copy(o_row, base, g_row, c0, width)
            if sum_rows:
                total = 0.0
                for q in range(u64(width)):
                    total += o_row[base + q]
                gb[o] += total


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _masked_with_sums(gy3, y3, n0, c0, width, out, gb, o0):
    """:func:`prologue` with the ReLU mask and the row sums, gy3 C-contiguous: the sum in
    the loop that masks (it reads the value just stored) instead of a second pass over
    the row, 1.3-2.1x alone on GoogLeNet's shapes (float32: the same bits; the sums'
    order may differ for float64)."""
    o_, gp = out.shape
    lo = u64(c0)
    for gi in range(gp // width):
        base = u64(gi * width)
        for o in range(o_):
            g_row, y_row, o_row = gy3[n0 + gi, o], y3[n0 + gi, o0 + o], out[o]
            total = 0.0
            for q in range(u64(width)):
                o_row[base + q] = g_row[lo + q] if y_row[lo + q] > 0 else 0
                total += o_row[base + q]
            gb[o] += total


# ------------------------------------------------------------------ the whole batch
_NO_SUMS = np.zeros(1)      # prologue's gb when it sums nothing


def _out_size(size, k, stride, pad):
    return (size + 2 * pad - k) // stride + 1


# Maps of at most this many output pixels use im2col_small / col2im_small (measured on
# GoogLeNet's 8x8 to 2x2 maps: 1.3x, 3x and 6-8x faster; slower from 16x16 up).
SMALL_MAP = 64


@functools.lru_cache(maxsize=256)
def small_map_taps(h, w, kh, kw, stride, pad):
    """taps (kh*kw, OH*OW) int64: where tap (i, j) of output (yy, xx) lies in the plane padded
    by ``pad`` on every side and laid out with width w + 2 pad."""
    oh, ow = _out_size(h, kh, stride, pad), _out_size(w, kw, stride, pad)
    i, j = np.divmod(np.arange(kh * kw), kw)
    yy, xx = np.divmod(np.arange(oh * ow), ow)
    taps = (yy * stride + i[:, None]) * (w + 2 * pad) + xx * stride + j[:, None]
    taps.flags.writeable = False
    return taps


def columns(x, n0, g, kh, kw, stride, pad, oh, ow):
    """The column matrix (C*kh*kw, g*OH*OW) of images n0 .. n0+g-1: :func:`im2col` into the
    "col" workspace; for a 1x1 stride-1 unpadded kernel x[n0] itself when g = 1, else the
    images' planes side by side (:func:`prologue` without a mask: one run of H*W per image
    and channel, 7-22x faster than im2col's row by row on 4x4 and 2x2 maps)."""
    n, c, h, w = x.shape
    p = oh * ow
    direct = kh == kw == 1 and stride == 1 and pad == 0
    if direct and g == 1:
        return x[n0].reshape(c, p)
    col = workspace.get("col", (c * kh * kw, g * p), x.dtype)
    if direct:
        x3 = x.reshape(n, c, p)
        prologue(x3, x3, False, n0, 0, p, col, _NO_SUMS, False)
    elif p <= SMALL_MAP:
        im2col_small(x, n0, pad, w + 2 * pad, small_map_taps(h, w, kh, kw, stride, pad), col)
    else:
        im2col(x, n0, kh, kw, stride, pad, oh, ow, col)
    return col


def bands(oh, ow):
    """[(y0, y1), ...]: output rows in bands of about BAND_COLUMNS pixels, or None when the
    image is small enough to run whole."""
    if oh * ow <= 2 * BAND_COLUMNS:
        return None
    rows = max(1, BAND_COLUMNS // ow)
    return [(y0, min(oh, y0 + rows)) for y0 in range(0, oh, rows)]


def _phase_buffers(x, kh, kw, stride, oh, ow):
    """A zero-filled (C, s, rows, columns) buffer for :func:`phase_planes`, one per run: only
    the inside is ever rewritten, so the padding stays zero from image to image."""
    return np.zeros(phase_shape(x.shape[1], kh, kw, stride, oh, ow), dtype=x.dtype)


def images_per_chunk(n, p, pointwise) -> int:
    """Images per GEMM: enough for COLUMNS_PER_GEMM columns, while leaving at least one
    chunk per run to share out, and as many chunks in every run (``parallel.runs``: two
    runs per thread, one for small batches): 32 images at 14x14 make 8 chunks of 4, not 6
    of 6 and a last of 2, which left runs of 6 and 12 images and one thread waiting a third
    of the layer.
    A 1x1 convolution takes one image at a time on maps of 16x16 and up: its GEMM then
    reads x[n] in place, and on 28x28 maps gathering images cost more than it gained
    (whole steps 0.987x). On smaller maps the chunk's images are gathered into one GEMM,
    which reads the weights once instead of once per image: GoogLeNet's stacked 1x1
    weights on 7x7 maps are 2 MiB, more than a core's L2, and OpenBLAS ran (624, 832) @
    (832, 49) at 114 GFLOP/s with the weights in cache and 65 without. Whole steps 1.018x
    at batch 8 and 1.028x at batch 32 against one image per GEMM on 14x14 and 7x7 maps."""
    if pointwise and p >= POINTWISE_IN_PLACE:
        return 1
    k = parallel.runs(n)
    g = max(1, min(-(-COLUMNS_PER_GEMM // p), -(-n // k)))
    for fewer in range(g, 0, -1):                # the largest that gives whole rounds
        if (-(-n // fewer)) % k == 0:
            return fewer
    return g


def winograd_size(x_shape, w_shape, stride, pad, phase="forward") -> int:
    """m of the Winograd F(m x m, r x r) (r = 3 or 5) for this layer's ``phase`` ("forward",
    "input", "weights"), 0 for im2col + GEMM (``winograd.applies`` and ``winograd.choose``)."""
    if not winograd.applies(w_shape, stride, pad):
        return 0
    return winograd.choose(x_shape[1], w_shape[0], x_shape[2], x_shape[3], phase, w_shape[2])


def _stack(slot, count, rows, cols, dtype):
    """(whole, part): a C-contiguous (count, rows + 1 or 2, cols) workspace and its
    (count, rows, cols) part, for the products. The transforms get ``whole``, whose type
    tells Numba that rows are contiguous: through the strided part their loads and stores
    ran 1.3-1.9x slower (not vectorised). The unused row(s) set the matrices apart by
    something other than a multiple of 4 KiB: at such a distance the transforms' streams
    into all of them would share one set of the L1 cache (measured 5x slower with
    F(2x2, 3x3)'s 16)."""
    extra = 1 if (rows + 1) * cols * np.dtype(dtype).itemsize % 4096 else 2
    whole = workspace.get(slot, (count, rows + extra, cols), dtype)
    return whole, whole[:, :rows]


def _winograd_chunk(src3, s0, u, bias, has_bias, relu, h, w, out3, n0, g):
    """out3[n0:n0+g] (N, O, H*W) = relu(conv_same(src3[s0:s0+g]) + bias) by Winograd (3x3 or
    5x5 filters), on the calling thread; src3 (*, C, H*W) may be a strided view;
    u ((m+r-1)^2, O, C) is the transformed filter (``winograd.filter_transform``), whose
    first dimension says which F(m x m, r x r)."""
    count, o, c = u.shape
    m = winograd.tile_size(u)
    k = winograd.constants(u.dtype, count)
    if winograd.banded(u):                             # F(4x4, 3x3): band by band
        band, images, block = winograd.band_rows(c, o, h, w)
        images = min(images, g)
        cols = (band if images == 1 else winograd.tiles(h, 1, 4)) * winograd.tiles(1, w, 4)
        v_all, _ = _stack("wino_v", count, c, images * cols, u.dtype)
        prod_all, _ = _stack("wino_m", count, block, images * cols, u.dtype)
        winograd.forward_f4(src3, s0, g, h, w, u, bias, has_bias, relu, k, band, images, block,
                            v_all, prod_all, out3, n0)
        return
    into, out_of = winograd.TRANSFORMS[count]
    nt = g * winograd.tiles(h, w, m)
    v_all, v = _stack("wino_v", count, c, nt, u.dtype)
    prod_all, prod = _stack("wino_m", count, o, nt, u.dtype)
    into(src3, s0, h, w, k, v_all)
    gemm.matmul(u, v, out=prod)              # (m+2)^2 GEMMs (O, C) @ (C, g*tiles)
    out_of(prod_all, bias, has_bias, relu, k, n0, h, w, out3)


def _winograd_weights_chunk(x3, n0, gy_images, h, w, g, out, accumulate=False):
    """out ((4+r-1)^2, O, C) = sum over the tiles of images n0 .. n0+g-1 of Z[k] V[k]^T
    (added to out with ``accumulate``), by
    F(4x4, r x r) (r = 3 or 5, from out's first dimension, 36 or 64): V the input transform
    of x3 (N, C, H*W), Z the gradient transform of gy_images (g, O, H*W), the masked output
    gradient; :func:`winograd.filter_gradient` of the sum over chunks is gW."""
    count, o, c = out.shape
    k = winograd.constants(out.dtype, count)
    nt = g * winograd.tiles(h, w, 4)
    v_all, v = _stack("wino_v", count, c, nt, out.dtype)
    z_all, z = _stack("wino_z", count, o, nt, out.dtype)
    winograd.TRANSFORMS[count][0](x3, n0, h, w, k, v_all)
    winograd.GRADIENT_TRANSFORMS[count](gy_images, 0, h, w, k, z_all)
    gemm.matmul(z, v.transpose(0, 2, 1), out, accumulate)  # count (O, tiles) @ (tiles, C)


def _flat_images(x):
    """x (N, C, H, W) as (N, C, H*W): a view when each channel's pixels are contiguous (a
    channel slice of a larger map too); otherwise a copy, which reads x at once, so what a
    pipeline has queued runs first (:func:`parallel.pipeline`)."""
    n, c, h, w = x.shape
    if not (x.strides[3] == x.itemsize and (h == 1 or x.strides[2] == w * x.itemsize)):
        parallel.sync()
    return x.reshape(n, c, h * w)


def conv2d(x, w, b, stride, pad, relu):
    """y (N, O, OH, OW) = relu(conv(x, w) + b) for x (N, C, H, W), w (O, C, kh, kw), b (O,)
    or None. Per chunk of g images: col = im2col, Y = W @ col, y[chunk] = relu(Y + b); or
    Winograd F(m x m, r x r) where :func:`winograd_size`."""
    n, c, h, wd = x.shape
    m = winograd_size(x.shape, w.shape, stride, pad)
    if m:
        y = np.empty((n, w.shape[0], h, wd), dtype=x.dtype)
        x3, y3 = _flat_images(x), y.reshape(n, -1, h * wd)
        u = winograd.filter_transform(w, m)
        bias = b if b is not None else u[0, :, 0]        # unused when there is no bias

        def wino(chunks):
            for n0, g in chunks:
                _winograd_chunk(x3, n0, u, bias, b is not None, relu, h, wd, y3, n0, g)

        # One image per chunk: its transformed tiles and products (with F(4x4, 3x3), 2.25x
        # the image's size and 2.25x the output's) stay in cache from the input transform
        # through the products to the output transform; a thread's four images at once
        # spilled them (layers alone, two threads, batch 8: inception 3a's 3x3 1.39x, 3b's
        # 3x3 1.09x, 3b's 5x5 1.37x, conv2 1.04x). F(4x4, 3x3) on small maps takes the
        # images ``winograd.forward_f4`` puts side by side in a band (14x14: two).
        per = 1
        if winograd.banded(u):
            per = winograd.band_rows(c, w.shape[0], h, wd)[1]
        parallel.run(wino, parallel.chunks(n, per), blas=True, groups=parallel.runs(n),
                     images=True)
        return y
    o, _, kh, kw = w.shape
    oh, ow = _out_size(h, kh, stride, pad), _out_size(wd, kw, stride, pad)
    p, ck = oh * ow, c * kh * kw
    w2 = np.ascontiguousarray(w.reshape(o, ck))
    y = np.empty((n, o, oh, ow), dtype=x.dtype)
    y3 = y.reshape(n, o, p)
    bias = b if b is not None else w2[:, 0]    # unused when there is no bias
    direct = kh == kw == 1 and stride == 1 and pad == 0   # x[n] is image n's column matrix

    row_bands = None if direct else bands(oh, ow)

    def body(chunks):
        if row_bands:                         # one image at a time, band by band
            planes = _phase_buffers(x, kh, kw, stride, oh, ow)
            for n0, _ in chunks:
                phase_planes(x, n0, pad, planes)
                y2 = y3[n0]
                for y0, y1 in row_bands:
                    col = workspace.get("col", (ck, (y1 - y0) * ow), x.dtype)
                    im2col_rows(planes, kh, kw, ow, y0, y1, col)
                    gemm.matmul(w2, col, out=y2[:, y0 * ow:y1 * ow])
                    bias_relu(y2, bias, b is not None, relu, y0 * ow, y1 * ow)
            return
        for n0, g in chunks:
            col = columns(x, n0, g, kh, kw, stride, pad, oh, ow)
            if g == 1:
                gemm.matmul(w2, col, out=y3[n0])
                bias_relu(y3[n0], bias, b is not None, relu, 0, p)
                continue
            out = workspace.get("gemm", (o, g * p), x.dtype)
            gemm.matmul(w2, col, out=out)
            epilogue(out, bias, b is not None, relu, y3, n0)

    per_chunk = 1 if row_bands else images_per_chunk(n, p, direct)
    parallel.run(body, parallel.chunks(n, per_chunk), blas=True, groups=parallel.runs(n),
                 images=True)
    return y


def conv2d_backward(gy, x, w, y, stride, pad, relu, need_x, need_w, need_b):
    """(gx, gW, gb) of :func:`conv2d` (None where not needed); ``y`` is the forward's output
    (its ReLU mask; unused without ``relu``). Per chunk: gY = gy[chunk] * (y > 0),
    gb += row sums of gY, gW += gY @ im2col(x[chunk]).T, gx[chunk] = col2im(W.T @ gY) (or by
    Winograd where :func:`winograd_size` says so). Each run of chunks returns partial gW
    and gb, added in run order.

    ``gy`` may also be a list of pieces along the channels (N, O_i, OH, OW), O_0 + O_1 + ...
    = O, as stacked convolutions' gradients come (``layers.conv.StackedConv1x1Function``):
    the masked copy gY then reads each piece where it is, with no joined copy made first."""
    pieces = list(gy) if isinstance(gy, (list, tuple)) else [gy]
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = pieces[0].shape[2:]
    p, ck = oh * ow, c * kh * kw
    w2t = np.ascontiguousarray(w.reshape(o, ck)).T
    flat, first = [], 0              # (gy3, its first channel, strided) of each piece
    for piece in pieces:
        gy3 = _flat_images(piece)
        flat.append((gy3, first, not gy3.flags.c_contiguous))
        first += piece.shape[1]
    y3 = y.reshape(n, o, p) if relu else flat[0][0]
    direct = kh == kw == 1 and stride == 1 and pad == 0
    gx = np.empty(x.shape, dtype=x.dtype) if need_x else None
    # gx by Winograd: the masked gradient correlated with the filters turned around and
    # transposed, w'[c, o] = w[o, c, ::-1, ::-1], the same "same" convolution as forward.
    wino = winograd_size(x.shape, w.shape, stride, pad, "input") if need_x else 0
    if wino:
        u_t = winograd.turned_filter_transform(w, wino)
        gx3 = gx.reshape(n, c, p)
    # gW by F(4x4, 3x3) or F(4x4, 5x5): each run sums the chunks' transformed products
    # ((4+r-1)^2, O, C) instead.
    wino_w = need_w and winograd_size(x.shape, w.shape, stride, pad, "weights") == 4
    gw_shape = (winograd.values_per_tile(4, kh), o, c) if wino_w else (o, ck)
    x3 = x.reshape(n, c, h * wd) if wino_w else None

    # conv1's kind (a large map, no input gradient): gW and gb band by band (BAND_COLUMNS),
    # summed as gW^T = col @ gY^T (OpenBLAS: 1.25x gY @ col^T on conv1's bands).
    row_bands = None if (direct or need_x or wino_w) else bands(oh, ow)
    if row_bands:
        gw_shape = (ck, o)

    def body(chunks):
        """One run of chunks; returns its (gW, gb) partial sums. The run's first GEMM writes
        its gW straight into the sum (no zero-filled start), the others add theirs to it
        inside the product (``gemm.matmul``'s ``accumulate``)."""
        gw2 = None
        gb = np.zeros(o, dtype=np.float64) if need_b else None
        gb_sum = gb if need_b else _NO_SUMS

        def masked(n0, c0, width, gyc):
            """gyc (O, g*width) = gY of the chunk's columns c0 .. c0+width-1, and gb's sums."""
            for gy3, lo, strided in flat:
                hi = lo + gy3.shape[1]
                prologue(gy3, y3, relu, n0, c0, width, gyc[lo:hi],
                         gb_sum[lo:hi] if need_b else gb_sum, need_b, strided, lo)

        def add_gw(fill):
            """fill(gw2, accumulate): the chunk's products into the run's sum."""
            nonlocal gw2
            if gw2 is None:
                gw2 = np.empty(gw_shape, dtype=x.dtype)
                fill(gw2, False)
            else:
                fill(gw2, True)

        if row_bands:
            planes = _phase_buffers(x, kh, kw, stride, oh, ow)
            for n0, _ in chunks:
                phase_planes(x, n0, pad, planes)
                for y0, y1 in row_bands:
                    width = (y1 - y0) * ow
                    gyc = workspace.get("gy", (o, width), x.dtype)
                    masked(n0, y0 * ow, width, gyc)
                    if need_w:
                        col = workspace.get("col", (ck, width), x.dtype)
                        im2col_rows(planes, kh, kw, ow, y0, y1, col)
                        add_gw(lambda part, acc: gemm.matmul(col, gyc.T, part, acc))
            return gw2, gb
        for n0, g in chunks:
            gyc = workspace.get("gy", (o, g * p), x.dtype)
            # ReLU mask, (g, O, P) -> (O, g*P), and gb's sums
            masked(n0, 0, p, gyc)
            if wino or wino_w:
                gy_images = gyc.reshape(o, g, p).transpose(1, 0, 2)     # (g, O, P) view
            if wino_w:
                add_gw(lambda part, acc: _winograd_weights_chunk(x3, n0, gy_images, h, wd, g,
                                                                  part, acc))
            elif need_w:
                col = columns(x, n0, g, kh, kw, stride, pad, oh, ow)
                add_gw(lambda part, acc: gemm.matmul(gyc, col.T, part, acc))
            if wino:
                # F(4x4, 5x5)'s 8x8 tiles (4x the gradient's size) one image at a time, as
                # in forward (inception 3b's 5x5 backward alone 1.21x); the 3x3 layers' did
                # not gain (0.99-1.07x).
                per = 1 if u_t.shape[0] == 64 else g
                for i in range(0, g, per):
                    _winograd_chunk(gy_images, i, u_t, u_t[0, :, 0], False, False, h, wd, gx3,
                                    n0 + i, per)
            elif need_x:
                if direct and g == 1:
                    gemm.matmul(w2t, gyc, out=gx[n0].reshape(c, p))
                    continue
                gcol = workspace.get("gcol", (ck, g * p), x.dtype)
                gemm.matmul(w2t, gyc, out=gcol)
                if direct:
                    epilogue(gcol, gcol[:, 0], False, False, gx.reshape(n, c, p), n0)
                elif p <= SMALL_MAP:
                    col2im_small(gcol, n0, pad, wd + 2 * pad,
                                 small_map_taps(h, wd, kh, kw, stride, pad), gx)
                else:
                    col2im(gcol, n0, kh, kw, stride, pad, oh, ow, gx)
        return gw2, gb

    per_chunk = 1 if row_bands else images_per_chunk(n, p, direct)
    parts = parallel.run(body, parallel.chunks(n, per_chunk), blas=True, groups=parallel.runs(n),
                         images=True)
    gw = np.empty(w.shape, dtype=x.dtype) if need_w else None
    gb = np.empty(o, dtype=x.dtype) if need_b else None
    if need_w or need_b:
        share = _sum_runs(parts, gw, gb, wino_w, row_bands)
        if parallel.is_queued(parts):      # (parallel.pipeline) summed once the runs have run
            parallel.after_queue(share, shared=True)
        else:
            parallel.over_threads(share)
    return gx, gw, gb


# ------------------------------------------------------------------ convolution, ReLU, max pool
def pool_bands(x_shape, w_shape, stride, pad):
    """The bands of output rows (even numbers of rows) that :func:`conv2d_max_pool` takes
    the convolution in, or None when it does not take this one: it takes a convolution
    large enough to run in bands (conv1's kind) whose output has even sides, for a 3x3/2
    max pool in Caffe's ceil mode (which halves them)."""
    oh = _out_size(x_shape[2], w_shape[2], stride, pad)
    ow = _out_size(x_shape[3], w_shape[3], stride, pad)
    found = bands(oh, ow)
    if found is None or oh % 2 or ow % 2:
        return None
    rows = found[0][1] - found[0][0]
    rows -= rows % 2
    return [(y0, min(oh, y0 + rows)) for y0 in range(0, oh, rows)] if rows else None


def conv2d_max_pool(x, w, b, stride, pad):
    """(y, winner) (N, O, OH/2, OW/2) = max_pool_3x3/2(relu(conv(x, w) + b)) and the pool's
    winning taps, for a convolution :func:`pool_bands` takes. Band by band as
    :func:`conv2d` runs it (the same products), each band pooled while it is in cache
    (:func:`pool.max_pool_3x3_half_band`): the convolution's output is never written out,
    nor read back by the pool. A band's last two rows are kept for the next band's first
    window, which reaches back into them."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = _out_size(h, kh, stride, pad), _out_size(wd, kw, stride, pad)
    ck = c * kh * kw
    row_bands = pool_bands(x.shape, w.shape, stride, pad)
    w2 = np.ascontiguousarray(w.reshape(o, ck))
    y = np.empty((n, o, oh // 2, ow // 2), dtype=x.dtype)
    winner = np.empty(y.shape, dtype=np.uint8)
    rows = row_bands[0][1] - row_bands[0][0]

    def body(chunks):
        planes = _phase_buffers(x, kh, kw, stride, oh, ow)
        band = np.empty((o, (rows + 2) * ow), dtype=x.dtype)   # two rows kept, then the band
        for n0, _ in chunks:
            phase_planes(x, n0, pad, planes)
            for y0, y1 in row_bands:
                width = (y1 - y0) * ow
                col = workspace.get("col", (ck, width), x.dtype)
                im2col_rows(planes, kh, kw, ow, y0, y1, col)
                gemm.matmul(w2, col, out=band[:, 2 * ow:2 * ow + width])
                bias_relu(band, b, True, True, 2 * ow, 2 * ow + width)
                last = y1 == oh
                r0 = 0 if y0 == 0 else y0 // 2 - 1       # the first window this band ends
                count = y1 // 2 - 1 + last - r0
                pool.max_pool_3x3_half_band(band, ow, 2 if y0 == 0 else 0, count, last,
                                            y[n0], winner[n0], r0)
                band[:, :2 * ow] = band[:, width:width + 2 * ow]
    parallel.run(body, parallel.chunks(n, 1), blas=True, groups=parallel.runs(n), images=True)
    return y, winner


def conv2d_max_pool_backward(gy, y, winner, x, w, stride, pad, need_w, need_b):
    """(gW, gb) of :func:`conv2d_max_pool` (None where not needed; no input gradient) from
    gy (N, O, OH/2, OW/2) and the forward's y and winners: band by band, the pool's
    backward and the ReLU's mask as the band's masked output gradient
    (:func:`pool.max_pool_3x3_half_band_backward`), then gW^T += col @ gY^T as
    :func:`conv2d_backward` does on conv1's bands (the same products and sums)."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = _out_size(h, kh, stride, pad), _out_size(wd, kw, stride, pad)
    ck = c * kh * kw
    row_bands = pool_bands(x.shape, w.shape, stride, pad)
    if not gy.flags.c_contiguous:
        parallel.sync()                # the copy reads gy here
        gy = np.ascontiguousarray(gy)

    def body(chunks):
        gw2 = None
        gb = np.zeros(o, dtype=np.float64) if need_b else None
        planes = _phase_buffers(x, kh, kw, stride, oh, ow) if need_w else None
        for n0, _ in chunks:
            if need_w:
                phase_planes(x, n0, pad, planes)
            for y0, y1 in row_bands:
                width = (y1 - y0) * ow
                gyc = workspace.get("gy", (o, width), x.dtype)
                pool.max_pool_3x3_half_band_backward(gy[n0], y[n0], winner[n0], y0, y1, ow,
                                                     gyc, gb if need_b else _NO_SUMS, need_b)
                if need_w:
                    col = workspace.get("col", (ck, width), x.dtype)
                    im2col_rows(planes, kh, kw, ow, y0, y1, col)
                    if gw2 is None:
                        gw2 = gemm.matmul(col, gyc.T, np.empty((ck, o), dtype=x.dtype))
                    else:
                        gemm.matmul(col, gyc.T, gw2, accumulate=True)
        return gw2, gb

    parts = parallel.run(body, parallel.chunks(n, 1), blas=True, groups=parallel.runs(n),
                         images=True)
    gw = np.empty(w.shape, dtype=x.dtype) if need_w else None
    gb = np.empty(o, dtype=x.dtype) if need_b else None
    if need_w or need_b:
        share = _sum_runs(parts, gw, gb, False, True)
        if parallel.is_queued(parts):
            parallel.after_queue(share, shared=True)
        else:
            parallel.over_threads(share)
    return gw, gb


def _sum_runs(parts, gw, gb, wino_w, row_bands):
    """share(t): share t (``parallel.over_threads``) of adding conv2d_backward's runs'
    partial sums in run order, whichever thread ran which run, into gw (O, C, kh, kw) and
    gb (O,) (either may be None); F(4x4, r x r)'s transformed sums are transformed back
    to gW on the way (:func:`winograd.filter_gradient_rows`)."""
    def share(t):
        if gw is not None:
            partial = [part[0] for part in parts]
            if wino_w:
                winograd.filter_gradient_rows(partial, gw, t)
            else:
                gw2 = gw.reshape(gw.shape[0], -1)
                arrays.sum_rows(partial, gw2.T if row_bands else gw2, t)
        if gb is not None and t == 0:
            total = parts[0][1]
            for _, gb_part in parts[1:]:
                total += gb_part
            gb[...] = total
    return share
