"""Winograd's minimal filtering for 3x3 and 5x5 stride-1 "same" convolutions (Lavin and Gray,
"Fast Algorithms for Convolutional Neural Networks", 2016): F(m x m, 3x3) computes an m x m
output tile from an (m+2) x (m+2) input tile ``d`` (tiles start every m pixels, at -pad) as::

    Y = A^T [(G g G^T) * (B^T d B)] A        for each 3x3 filter g

Summed over input channels, the elementwise product becomes (m+2)^2 GEMMs, one per position
``k`` of the transformed tile::

    U[k] = (G g G^T)[k]      (O, C)        filter transform, once per call
    V[k] = (B^T d B)[k]      (C, T)        input transform, T tiles of a chunk of images
    M[k] = U[k] @ V[k]       (O, T)
    y    = A^T M A (+ b, ReLU)             output transform, m x m pixels per tile

Three forms, chosen per layer by ``kernels.cpu.conv`` where each measured faster:

* **F(2x2, 3x3)**: 16 multiplies per 2x2 tile (4 per output pixel and channel pair, where
  the direct convolution does 9); transformed tiles hold 4 values per pixel::

    B^T = [[1, 0, -1,  0],     G = [[  1,    0,    0],     A^T = [[1, 1,  1,  0],
           [0, 1,  1,  0],          [1/2,  1/2,  1/2],            [0, 1, -1, -1]]
           [0, -1, 1,  0],          [1/2, -1/2,  1/2],
           [0, 1,  0, -1]]          [  0,    0,    1]]

* **F(4x4, 3x3)**: 36 multiplies per 4x4 tile (2.25 per pixel), 2.25 values per pixel,
  interpolation points 0, +-1, +-2 and infinity::

    B^T = [[4,  0, -5,  0, 1, 0],    G = [[ 1/4,     0,    0],    A^T = [[1, 1,  1, 1,  1, 0],
           [0, -4, -4,  1, 1, 0],         [-1/6, -1/6, -1/6],           [0, 1, -1, 2, -2, 0],
           [0,  4, -4, -1, 1, 0],         [-1/6,  1/6, -1/6],           [0, 1,  1, 4,  4, 0],
           [0, -2, -1,  2, 1, 0],         [1/24, 1/12,  1/6],           [0, 1, -1, 8, -8, 1]]
           [0,  2, -1, -2, 1, 0],         [1/24, -1/12, 1/6],
           [0,  4,  0, -5, 0, 1]]         [   0,     0,    1]]

The weight gradient differentiates the same formula with respect to the filter: for every
m x m tile e of the (masked) output gradient, Z = A e A^T, and

    gW = G^T [sum over tiles and images of Z * (B^T d B)] G

which is again (m+2)^2 GEMMs, (O, T) @ (T, C), summed over the chunks, then one small
GEMM for G^T . G (:func:`gradient_transform_f4`, :func:`gradient_transform_f45`,
:func:`filter_gradient`). The input gradient is the forward's computation applied to the
output gradient with the filters turned around and transposed.

* **F(4x4, 5x5)** for the 5x5 "same" layers: 64 multiplies per 4x4 tile (4 per pixel,
  where the direct convolution does 25), 8x8 tiles every 4 pixels, interpolation points 0,
  +-1, +-2, +-1/2 and infinity (those of F(6x6, 3x3)). G is 8x5, A^T 4x8, B^T 8x8 (written
  out at ``_G45``, ``_AT45``, ``_BT45``; the kernels :func:`_bt8` and :func:`_at8` apply
  B^T and A^T with their rows paired into even and odd parts). Forward, input gradient and
  weight gradient (Z = A e A^T with A 8x4, :func:`_a8`; 64 GEMMs (O, T) @ (T, C) per chunk
  where im2col + GEMM multiplies 25 times per pixel and channel pair).

The rounding differs from the direct sum's: the transforms add and subtract many inputs at a
time (F(4x4, 3x3) with multipliers up to 25 in B^T d B and 64 in A^T M A), so the float32
error grows by a constant factor, measured on GoogLeNet's shapes at about 5e-7 of the
output's scale for F(2x2, 3x3), up to 4e-6 for F(4x4, 3x3) and up to 6e-6 for F(4x4, 5x5)
(``tests/test_cpu_kernels.py`` holds all three to 5e-5).
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit

from . import arrays, gemm, parallel, tiled
from .loops import copy, u64, zero


def applies(w_shape, stride: int, pad: int) -> bool:
    """3x3 or 5x5 kernels, stride 1, "same" padding (1 or 2)."""
    kh, kw = w_shape[2:]
    return kh == kw and kh in (3, 5) and stride == 1 and pad == kh // 2


def choose(c: int, o: int, h: int, w: int, phase: str = "forward", k: int = 3) -> int:
    """m of the F(m x m, 3x3) to run a 3x3 "same" layer's ``phase`` with ("forward", "input"
    gradient or "weights" gradient), or 0 for im2col + GEMM. Measured on GoogLeNet's layers
    in whole training steps, two threads, paired in one process (``docs/performance_cpu.md``):

    * F(4x4, 3x3) on maps of 16x16 and up (GoogLeNet's 56x56 and 28x28), all three phases.
      Forward and input gradient this way (instead of F(2x2, 3x3) and im2col + GEMM):
      1.046x at batch 8, 1.057x at batch 32; the weight gradient too: another 1.046x and
      1.048x (per chunk, 2.1-2.4x im2col + GEMM's);
    * on 14x14 and 15x15 maps with 64 channels or more in and out, F(4x4, 3x3) for the
      forward and the weight gradient (it computes 16x16 pixels per 14x14 map, 2.94
      multiplies per pixel where F(2x2, 3x3) does 4): the forward by :func:`forward_f4`
      with two images side by side in a band, against F(2x2, 3x3) with OpenBLAS's products
      (the layers' calls alone on two threads, summed over inception 4a-4e: 1.06x and 1.27x
      in two runs; whole steps, with :func:`forward_f4` on the larger maps too, 0.996x
      at batch 8 (100 pairs, a busy host) and 1.045x at batch 32 (20 pairs)).
      ``SMALL_MAPS_F4 = False`` gives the earlier forward, F(2x2, 3x3) (1.1-1.2x im2col +
      GEMM; F(4x4, 3x3) with OpenBLAS's products on one image at a time was 0.97-0.98x in
      its place). The weight gradient by F(4x4, 3x3): 1.042x whole steps at batch 8 (40
      pairs) and 1.006x at batch 32 (12 pairs). The input gradient by F(2x2, 3x3) with
      MKL's products: inception 4a-4e's backward alone 1.05-1.11x :func:`forward_f4`'s,
      whole steps 1.007x at batch 8 (100 pairs) and 1.003x at batch 32 (25 pairs);
    * im2col + GEMM on smaller maps (GoogLeNet's 7x7: few tiles per chunk for all of U;
      0.6-0.7x) and few channels.

    5x5 layers (``k = 5``): F(4x4, 5x5) in all three phases on maps of FIVE_BY_FIVE_MIN
    and up. The weight gradient this way, two threads, inception 3b's 5x5 layer: 1.3x
    (batch 8) and 1.4x (batch 32) its whole backward by im2col + GEMM; whole steps 1.011x
    (batch 8, 24 pairs) and 1.003x (batch 32). On 14x14 maps 0.87-1.09x, on 7x7
    0.74-1.0x."""
    if k == 5:
        return 4 if min(h, w) >= FIVE_BY_FIVE_MIN else 0
    if min(h, w) >= 16:
        return 4
    if min(h, w) >= 14 and min(c, o) >= 64:
        if phase == "weights":
            return 4
        return 4 if phase == "forward" and SMALL_MAPS_F4 else 2
    return 0


SMALL_MAPS_F4 = True


# G g G^T for a filter g flattened to 9 numbers is one linear map: (G g G^T)[a, b] =
# sum_ij G[a, i] G[b, j] g[i, j], i.e. the Kronecker product G (x) G, (m+2)^2 x 9.
_G2 = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
_G4 = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]])
# F(4x4, 5x5), interpolation points 0, +-1, +-2, +-1/2 and infinity (8x8 tiles; the same
# points as F(6x6, 3x3)): G (8, 5), and A^T (4, 8), B^T (8, 8) below.
_G45 = np.array([[-1, 0, 0, 0, 0],
                 [-2 / 9, -2 / 9, -2 / 9, -2 / 9, -2 / 9],
                 [-2 / 9, 2 / 9, -2 / 9, 2 / 9, -2 / 9],
                 [1 / 90, 1 / 45, 2 / 45, 4 / 45, 8 / 45],
                 [1 / 90, -1 / 45, 2 / 45, -4 / 45, 8 / 45],
                 [32 / 45, 16 / 45, 8 / 45, 4 / 45, 2 / 45],
                 [32 / 45, -16 / 45, 8 / 45, -4 / 45, 2 / 45],
                 [0, 0, 0, 0, 1]])
_AT45 = np.array([[1, 1, 1, 1, 1, 1, 1, 0],
                  [0, 1, -1, 2, -2, 1 / 2, -1 / 2, 0],
                  [0, 1, 1, 4, 4, 1 / 4, 1 / 4, 0],
                  [0, 1, -1, 8, -8, 1 / 8, -1 / 8, 1]])
_BT45 = np.array([[-1, 0, 21 / 4, 0, -21 / 4, 0, 1, 0],
                  [0, 1, 1, -17 / 4, -17 / 4, 1, 1, 0],
                  [0, -1, 1, 17 / 4, -17 / 4, -1, 1, 0],
                  [0, 1 / 2, 1 / 4, -5 / 2, -5 / 4, 2, 1, 0],
                  [0, -1 / 2, 1 / 4, 5 / 2, -5 / 4, -2, 1, 0],
                  [0, 2, 4, -5 / 2, -5, 1 / 2, 1, 0],
                  [0, -2, 4, 5 / 2, -5, -1 / 2, 1, 0],
                  [0, -1, 0, 21 / 4, 0, -21 / 4, 0, 1]])
# 5x5 layers take F(4x4, 5x5) on maps at least this large (GoogLeNet's 28x28; on 14x14,
# inception 4a-4e, whole steps measured 1.000x at batch 8 and 0.989x at batch 32 for the
# forward and input gradient, and the backward with the weight gradient this way
# 0.87-1.09x).
FIVE_BY_FIVE_MIN = 16

# by the number of transformed values per tile, (m+r-1)^2: F(2x2, 3x3), F(4x4, 3x3),
# F(4x4, 5x5)
_GG = {16: np.kron(_G2, _G2), 36: np.kron(_G4, _G4), 64: np.kron(_G45, _G45)}
_COUNT = {(2, 3): 16, (4, 3): 36, (4, 5): 64}


def values_per_tile(m: int, r: int) -> int:
    """(m+r-1)^2, the length of U's, V's and M's first axis for F(m x m, r x r) (one of
    the three forms above)."""
    return _COUNT[m, r]


def filter_transform(w, m: int):
    """U ((m+r-1)^2, O, C) = G g G^T for every filter g of w (O, C, r, r), r = 3 or 5: one
    GEMM, (G (x) G) ((m+r-1)^2, r^2) @ w.reshape(O*C, r^2).T, whose result is U's layout,
    its rows shared among the threads. (A Numba loop over the filters took 3.1 ms for 320x160
    filters with F(2x2, 3x3), the GEMM 0.7 ms; F(4x4, 3x3)'s 36 rows write 4 times the
    filters' size, 1 ms on one thread.)"""
    o, c, r = w.shape[:3]
    gg = _gg(values_per_tile(m, r), w.dtype)
    u = arrays.matmul(gg, w.reshape(o * c, r * r).T, independent=True)
    return u.reshape(gg.shape[0], o, c)


def turned_filter_transform(w, m: int):
    """U' ((m+r-1)^2, C, O): :func:`filter_transform` of the filters turned around and
    transposed, w'[c, o] = w[o, c, ::-1, ::-1], with which the input gradient is the
    forward's "same" convolution of the output gradient. In one pool call: each run of
    :func:`filter_transform`'s columns (filters (c, o) in order) first writes its filters
    turned (:func:`_turn_filters`), then their product (the same runs and products as
    ``arrays.matmul``, so the same bits). NumPy's copy of the reversed, transposed view took
    0.9 ms on the main thread alone for inception 4e's 320 x 160 filters, 4 ms a training
    step over GoogLeNet's layers; turning and transforming in two pool calls instead of one
    left the threads idle between them."""
    o, c, r = w.shape[:3]
    w3 = np.ascontiguousarray(w).reshape(o, c, r * r)
    gg = _gg(values_per_tile(m, r), w.dtype)
    turned = np.empty((c * o, r * r), dtype=w.dtype)
    by_columns, spans = arrays.matmul_spans(gg.shape[0], r * r, c * o)
    if not by_columns or len(spans) == 1:
        _turn_filters(w3, 0, c * o, turned)
        u = arrays.matmul(gg, turned.T, independent=True)
        return u.reshape(gg.shape[0], c, o)
    u = np.empty((gg.shape[0], c * o), dtype=w.dtype)

    def body(runs):
        for lo, hi in runs:
            _turn_filters(w3, lo, hi, turned)
            gemm.matmul(gg, turned[lo:hi].T, out=u[:, lo:hi])

    parallel.run(body, spans, blas=True, independent=True)
    return u.reshape(gg.shape[0], c, o)


@njit(cache=True, nogil=True, error_model="numpy")
def _turn_filters(w3, j0, j1, out):
    """out[j, k] = w3[o, c, K-1-k] for the filters j = c*O + o, j0 <= j < j1: w3 (O, C, K)
    the filters' K = r*r taps, out (C*O, K); reversing the flattened taps turns the r x r
    filter around."""
    o_count, taps = w3.shape[0], w3.shape[2]
    for j in range(j0, j1):
        c, o = j // o_count, j % o_count
        for k in range(taps):
            out[j, k] = w3[o, c, taps - 1 - k]


def filter_gradient(m):
    """gW (O, C, r, r) from M ((m+r-1)^2, O, C), the weight gradient's transformed sum: the
    adjoint of :func:`filter_transform`, gW[o, c] = G^T M[:, o, c] G, one GEMM
    M.reshape((m+r-1)^2, O*C).T @ (G (x) G), rows shared among the threads
    (:func:`filter_gradient_rows`)."""
    count, o, c = m.shape
    r = _TAPS[_GG[count].shape[1]]
    gw = np.empty((o, c, r, r), dtype=m.dtype)
    parallel.over_threads(lambda t: filter_gradient_rows([m], gw, t))
    return gw


def filter_gradient_rows(parts, gw, t: int) -> None:
    """Share t of gW = :func:`filter_gradient` (parts[0] + parts[1] + ...), written into gw
    (O, C, r, r): the sum (into parts[0]) and the product for share t's runs of filters,
    the runs ``arrays.matmul`` would give the product (so the same bits). For a caller that
    runs the shares itself: a convolution's runs' partial sums reduced and transformed in
    one pass each, on all threads (``parallel.after_queue(shared=True)``)."""
    count, o, c = parts[0].shape
    gg = _gg(count, gw.dtype)
    flat = [part.reshape(count, o * c) for part in parts]
    out = gw.reshape(o * c, gg.shape[1])
    _, spans = arrays.matmul_spans(o * c, count, gg.shape[1])
    first, last = parallel.share(len(spans), t)
    for lo, hi in spans[first:last]:
        total = flat[0][:, lo:hi]
        for part in flat[1:]:
            np.add(total, part[:, lo:hi], out=total)
        gemm.matmul(total.T, gg, out=out[lo:hi])


_TAPS = {9: 3, 25: 5}


@functools.lru_cache(maxsize=None)
def _gg(count: int, dtype) -> np.ndarray:
    """G (x) G for (m+r-1)^2 = count in ``dtype``, read-only."""
    gg = _GG[count].astype(dtype)
    gg.flags.writeable = False
    return gg


# forward_f4's bands: V of at most about this many bytes (whole images up to it, else the
# image's tile rows in equal parts), whole images side by side up to this many tiles, and
# blocks of this many output channels.
BAND_BYTES = 3 << 20
BAND_TILES = 32
BLOCK_CHANNELS = 64


def banded(u) -> bool:
    """Whether a layer with transformed filters u runs by :func:`forward_f4` (F(4x4, 3x3)
    in float32, the tiled product's type) rather than transforms around BLAS products."""
    return u.shape[0] == 36 and u.dtype == np.float32


def band_rows(c: int, o: int, h: int, w: int) -> tuple[int, int, int]:
    """(tile rows per band, images per band, output channels per block) of
    :func:`forward_f4` for C -> O channels on H x W maps: on small maps (14x14: 16 tiles)
    two or more whole images side by side, so that each product has 32 columns or more."""
    th, tw = tiles(h, 1, 4), tiles(1, w, 4)
    image = 36 * c * th * tw * 4
    parts = -(-image // BAND_BYTES)
    images = max(1, min(BAND_BYTES // image, BAND_TILES // (th * tw)))
    return -(-th // parts), images, min(o, BLOCK_CHANNELS)


def tile_size(u) -> int:
    """m of F(m x m, r x r) from an array of its (m+r-1)^2 transformed matrices (U, M, ...)."""
    return {16: 2, 36: 4, 64: 4}[u.shape[0]]


def tiles(h: int, w: int, m: int) -> int:
    """m x m output tiles per image (the last row and column of tiles partly outside the map
    unless H and W are multiples of m)."""
    return (-(-h // m)) * (-(-w // m))


@functools.lru_cache(maxsize=None)
def constants(dtype, count=36):
    """The transforms' multipliers as ``dtype`` values, so that products with them stay in
    the data's dtype inside the kernels (a Python float would make them float64): for
    F(4x4, 3x3) (2, 4, 5, 8); for F(4x4, 5x5) (``count`` 64) those of :func:`_bt8` and
    :func:`_at8` (the entries of B^T and A^T, written out there). Made once per
    (dtype, count), read-only."""
    values = ([21 / 4, 17 / 4, 1 / 2, 1 / 4, 5 / 2, 5 / 4, 2, 4, 5, 8, 1 / 8] if count == 64
              else [2, 4, 5, 8])
    k = np.array(values, dtype=dtype)
    k.flags.writeable = False
    return k


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _load_plane(buf, pad, src, h, w):
    """buf[pad + y, pad : pad + W] = row y of the H x W plane src (flat, H*W): the transforms
    read their tiles from a buffer whose border (and whatever lies past the map) stays 0."""
    for yy in range(h):
        copy(buf[yy + pad], pad, src, yy * w, w)


# ------------------------------------------------------------------ F(2x2, 3x3)
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _bt4(a0, a1, a2, a3):
    """B^T of F(2x2, 3x3) applied to one column (or row) of a 4x4 tile."""
    return a0 - a2, a1 + a2, a2 - a1, a1 - a3


@njit(cache=True, nogil=True, error_model="numpy")
def input_transform_f2(x3, n0, h, w, k, v):
    """F(2x2, 3x3): V (16, C, g*TH*TW) = B^T d B for every 4x4 tile d of images n0 .. n0+g-1 of
    x3 (N, C, H*W) (``k`` unused; V may have rows past C, left as they are). Each (image,
    channel) plane is first copied into a zero-bordered buffer so that every tile reads in
    bounds; then S = B^T d along whole buffer rows, tile row by tile row, in two copies
    (``sm``: each tile's columns 2 tx and 2 tx + 1; ``ss``: the two after them), and V = S B
    for all the plane's tiles in one loop, as in :func:`input_transform_f4`."""
    c = x3.shape[1]
    th, tw = (h + 1) // 2, (w + 1) // 2
    nt = th * tw
    g = v.shape[2] // nt
    buf = np.zeros((2 * th + 2, 2 * tw + 2), dtype=v.dtype)
    sm = np.empty((4, 2 * nt), dtype=v.dtype)
    ss = np.empty((4, 2 * nt), dtype=v.dtype)
    m0, m1, m2, m3 = sm[0], sm[1], sm[2], sm[3]
    s0, s1, s2, s3 = ss[0], ss[1], ss[2], ss[3]
    for gi in range(g):
        for ci in range(c):
            src = x3[n0 + gi, ci]
            _load_plane(buf, 1, src, h, w)
            for ty in range(th):
                r0, r1, r2, r3 = buf[2 * ty], buf[2 * ty + 1], buf[2 * ty + 2], buf[2 * ty + 3]
                base = u64(ty * 2 * tw)
                for q in range(u64(2 * tw)):
                    p = base + q
                    m0[p], m1[p], m2[p], m3[p] = _bt4(r0[q], r1[q], r2[q], r3[q])
                for q in range(u64(2 * tw)):
                    p = base + q
                    s0[p], s1[p], s2[p], s3[p] = _bt4(r0[q + 2], r1[q + 2], r2[q + 2], r3[q + 2])
            t0 = u64(gi * nt)
            for a in range(4):
                pa, qa = sm[a], ss[a]
                va0, va1, va2, va3 = v[4 * a, ci], v[4 * a + 1, ci], v[4 * a + 2, ci], v[4 * a + 3, ci]
                for t in range(u64(nt)):
                    j = 2 * t
                    tt = t0 + t
                    va0[tt], va1[tt], va2[tt], va3[tt] = _bt4(pa[j], pa[j + 1], qa[j], qa[j + 1])


@njit(cache=True, nogil=True, error_model="numpy")
def output_transform_f2(m, bias, has_bias, relu, k, n0, h, w, y3):
    """F(2x2, 3x3): y3[n0 + gi, o] (N, O, H*W) = A^T M A (+ bias[o], then ReLU) for every tile
    of M (16, O, g*TH*TW) (``k`` unused; O from y3, rows of M past it unused); the half-tiles
    past an odd-sized map's edge are dropped. As :func:`output_transform_f4`: T = A^T M, then
    the two output rows of every tile, each a loop over all the plane's tiles, then the rows
    stored."""
    o_ = y3.shape[1]
    th, tw = (h + 1) // 2, (w + 1) // 2
    nt = th * tw
    g = m.shape[2] // nt
    tr = np.empty((2, 4, nt), dtype=m.dtype)
    rows = np.empty((2, 2 * nt), dtype=m.dtype)
    for gi in range(g):
        t0 = u64(gi * nt)
        for o in range(o_):
            for col in range(4):
                m0, m1, m2, m3 = m[col, o], m[4 + col, o], m[8 + col, o], m[12 + col, o]
                e0, e1 = tr[0, col], tr[1, col]
                for t in range(u64(nt)):
                    tt = t0 + t
                    e0[t] = m0[tt] + m1[tt] + m2[tt]
                    e1[t] = m1[tt] - m2[tt] - m3[tt]
            for r in range(2):
                e, row = tr[r], rows[r]
                for t in range(u64(nt)):
                    j = 2 * t
                    row[j] = e[0, t] + e[1, t] + e[2, t]
                    row[j + 1] = e[1, t] - e[2, t] - e[3, t]
            _store_rows(rows, 2, 0, th, tw, h, w, bias[o] if has_bias else 0, relu, y3[n0 + gi, o])


# ------------------------------------------------------------------ F(4x4, 3x3)
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _bt6(a0, a1, a2, a3, a4, a5, c2, c4, c5):
    """B^T applied to one column (or row) of a 6x6 tile."""
    return (c4 * a0 - c5 * a2 + a4,
            a3 + a4 - c4 * (a1 + a2),
            a4 - a3 + c4 * (a1 - a2),
            a4 - a2 + c2 * (a3 - a1),
            a4 - a2 + c2 * (a1 - a3),
            c4 * a1 - c5 * a3 + a5)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _at6(e0, e1, e2, e3, e4, e5, c2, c4, c8):
    """A^T applied to one column (or row) of a 6x6 tile: four values."""
    p, q = e1 + e2, e1 - e2
    r, s = e3 + e4, e3 - e4
    return e0 + p + r, q + c2 * s, p + c4 * r, q + c8 * s + e5


@njit(cache=True, nogil=True, error_model="numpy")
def input_transform_f4(x3, n0, h, w, k, v):
    """F(4x4, 3x3): V (36, C, g*TH*TW) = B^T d B for every 6x6 tile d of images n0 .. n0+g-1 of
    x3 (N, C, H*W) (any strides; V may have rows past C, left as they are); ``k`` from
    :func:`constants`. Per plane: S = B^T d along whole buffer rows, tile row by tile row, laid
    end to end so that tile t's first four columns are S[4t .. 4t+3] whatever its row (and each
    tile row's two columns past its last tile kept aside, in ``e``); then, for each row a of S,
    its columns de-interleaved into four runs d_i[t] = S[a, 4t + i] and V = S B for all the
    plane's tiles in one loop over contiguous runs, tile t's last two columns being tile t+1's
    first two, d_0[t+1] and d_1[t+1], except at the end of a tile row, whose tiles are redone
    from ``e``. The first version looped over each tile row's TW tiles (7 or 14 on GoogLeNet's
    maps), too few for the vector loop; one loop over the plane's tiles reading S with a stride
    of 4 ran 1.4-2.1x faster than it, and the de-interleaved runs another 1.4-1.9x."""
    c = x3.shape[1]
    th, tw = (h + 3) // 4, (w + 3) // 4
    nt = th * tw
    g = v.shape[2] // nt
    buf, s, e, d = _input_f4_buffers(th, tw, v.dtype)
    for gi in range(g):
        for ci in range(c):
            _input_f4_rows(x3[n0 + gi, ci], h, w, 0, th, k, buf, s, e, d, v, ci, gi * nt)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _input_f4_buffers(rows, tw, dtype):
    """The buffers of :func:`_input_f4_rows` for up to ``rows`` tile rows of TW tiles: the
    zero-bordered plane, S, the tile rows' last columns, the de-interleaved runs."""
    nt = rows * tw
    return (np.zeros((4 * rows + 2, 4 * tw + 4), dtype=dtype), np.empty((6, 4 * nt), dtype=dtype),
            np.empty((6, 2, rows), dtype=dtype), np.empty((4, nt + 1), dtype=dtype))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _input_f4_rows(src, h, w, ty0, ty1, k, buf, s, e, d, v, ci, t0):
    """v[:, ci, t0 + t] = B^T d B for the tiles t of tile rows ty0 .. ty1-1 of the H x W plane
    src (flat), row-major: :func:`input_transform_f4` for one plane, or one band of its
    tile rows (:func:`forward_f4`). buf (rows + 2 of a band, 4 TW + 4), whose columns past
    the map are 0, takes map rows 4 ty0 - 1 on, zeros where they fall outside the map."""
    tw = (w + 3) // 4
    th = ty1 - ty0
    nt = th * tw
    y0 = 4 * ty0 - 1
    for r in range(4 * th + 2):
        if 0 <= y0 + r < h:
            copy(buf[r], 1, src, (y0 + r) * w, w)
        else:
            zero(buf[r], 0, buf.shape[1])
    c2, c4, c5 = k[0], k[1], k[2]
    s0, s1, s2, s3, s4, s5 = s[0], s[1], s[2], s[3], s[4], s[5]
    d0, d1, d2, d3 = d[0], d[1], d[2], d[3]
    for ty in range(th):
        r0, r1, r2 = buf[4 * ty], buf[4 * ty + 1], buf[4 * ty + 2]
        r3, r4, r5 = buf[4 * ty + 3], buf[4 * ty + 4], buf[4 * ty + 5]
        base = u64(ty * 4 * tw)
        for q in range(u64(4 * tw)):
            p = base + q
            s0[p], s1[p], s2[p], s3[p], s4[p], s5[p] = _bt6(
                r0[q], r1[q], r2[q], r3[q], r4[q], r5[q], c2, c4, c5)
        for i in range(2):
            q = 4 * tw + i
            e[0, i, ty], e[1, i, ty], e[2, i, ty], e[3, i, ty], e[4, i, ty], e[5, i, ty] = _bt6(
                r0[q], r1[q], r2[q], r3[q], r4[q], r5[q], c2, c4, c5)
    tb = u64(t0)
    for a in range(6):
        sa = s[a]
        for t in range(u64(nt)):
            j = 4 * t
            d0[t], d1[t], d2[t], d3[t] = sa[j], sa[j + 1], sa[j + 2], sa[j + 3]
        d0[nt], d1[nt] = 0, 0          # read by the last tile, which is redone below
        va0, va1, va2 = v[6 * a, ci], v[6 * a + 1, ci], v[6 * a + 2, ci]
        va3, va4, va5 = v[6 * a + 3, ci], v[6 * a + 4, ci], v[6 * a + 5, ci]
        for t in range(u64(nt)):
            tt = tb + t
            va0[tt], va1[tt], va2[tt], va3[tt], va4[tt], va5[tt] = _bt6(
                d0[t], d1[t], d2[t], d3[t], d0[t + 1], d1[t + 1], c2, c4, c5)
        for ty in range(th):          # each tile row's last tile, from e
            t = u64((ty + 1) * tw - 1)
            tt = tb + t
            va0[tt], va1[tt], va2[tt], va3[tt], va4[tt], va5[tt] = _bt6(
                d0[t], d1[t], d2[t], d3[t], e[a, 0, ty], e[a, 1, ty], c2, c4, c5)


@njit(cache=True, nogil=True, error_model="numpy")
def forward_f4(x3, s0, g, h, w, u, bias, has_bias, relu, k, band, images, block, v, mm, y3,
               n0):
    """y3[n0 + gi] (N, O, H*W) = relu(conv(x3[s0 + gi]) + bias) for gi < g by F(4x4, 3x3),
    one band of ``band`` tile rows at a time through all three steps: the band's input
    transform into v (36, >= C, band TW), its 36 products U[k] @ V[k] into mm (36, >= block,
    band TW) block by block by the register-tiled product (:func:`kernels.cpu.tiled.product`), its output
    transform into y3. u (36, O, C) is the transformed filter; x3 (*, C, H*W) with each
    plane's pixels contiguous.

    The image's tile rows go in ``band``-row bands (:func:`band_rows`: whole images where
    their V is at most BAND_BYTES, else equal parts; up to ``images`` whole images side by
    side in a band, tile columns one after the other), and within a band the output channels
    in blocks of ``block``: a block's 36 products (O_b, C) @ (C, band TW) are followed at
    once by its output transform, so the block's M (36, O_b, band TW; 0.2-0.9 MB on
    GoogLeNet's layers) is read back from the core's L2 instead of L3 or memory, and the
    products read V where the transform wrote it where OpenBLAS would copy ("pack") both
    operands on every call. Against the input transform, 36 OpenBLAS products and output
    transform on whole images (two threads, four images each, layer calls alone, several
    runs): conv2's forward 1.09-1.23x and input gradient 1.05-1.15x, inception 3a's and 3b's
    3x3 layers 0.87-1.34x (1.05x summed over their four calls); whole training steps at
    batch 8 1.005x (40 pairs; quartiles 0.978-1.059)."""
    c, o = x3.shape[1], y3.shape[1]
    th, tw = (h + 3) // 4, (w + 3) // 4
    band = min(band, th)
    per = images if band == th else 1          # images side by side in a band
    buf, s, e, d = _input_f4_buffers(band, tw, v.dtype)
    tr = np.empty((4, 6, band * tw), dtype=v.dtype)
    rows = np.empty((4, 4 * band * tw), dtype=v.dtype)
    for g0 in range(0, g, per):
        g1 = min(g, g0 + per)
        for ty0 in range(0, th, band):
            ty1 = min(th, ty0 + band)
            nt = (ty1 - ty0) * tw
            for gi in range(g0, g1):
                for ci in range(c):
                    _input_f4_rows(x3[s0 + gi, ci], h, w, ty0, ty1, k, buf, s, e, d, v, ci,
                                   (gi - g0) * nt)
            cols = (g1 - g0) * nt
            for o0 in range(0, o, block):
                o1 = min(o, o0 + block)
                for q in range(36):
                    tiled.product(u[q, o0:o1], v[q, :c, :cols], mm[q, :o1 - o0, :cols])
                for gi in range(g0, g1):
                    for oi in range(o0, o1):
                        _output_f4_rows(mm, oi - o0, (gi - g0) * nt, ty0, ty1, h, w,
                                        bias[oi] if has_bias else 0, relu, k, tr, rows,
                                        y3[n0 + gi, oi])


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _a4(e0, e1, e2, e3, c2, c4, c8):
    """A (the transpose of A^T) applied to one column (or row) of a 4x4 tile: six values."""
    p, q = e0 + c4 * e2, c2 * e1 + c8 * e3
    return e0, e0 + e1 + e2 + e3, e0 - e1 + e2 - e3, p + q, p - q, e3


@njit(cache=True, nogil=True, error_model="numpy")
def gradient_transform_f4(g3, n0, h, w, k, u):
    """F(4x4, 3x3), for the weight gradient: Z (36, O, g*TH*TW) (rows past O left as they are)
    = A e A^T for every 4x4 tile e of the output gradient g3[n0 .. n0+g-1] (*, O, H*W) (any
    strides; zero past the map's edge). Then gW = G^T (sum over tiles of Z * V) G
    (:func:`filter_gradient`), V the input transform of x: the forward's Y = A^T (U * V) A,
    differentiated with respect to the filter. Per plane, S = A e along whole rows for every
    tile row, end to end, then Z = S A^T for all the plane's tiles in one loop (tile t's
    columns are s[4t .. 4t+3]), as in :func:`input_transform_f4`."""
    o_ = g3.shape[1]
    th, tw = (h + 3) // 4, (w + 3) // 4
    nt = th * tw
    g = u.shape[2] // nt
    wp = 4 * tw
    buf = np.zeros((4 * th, wp), dtype=u.dtype)        # rows/columns past the map stay 0
    s = np.empty((6, 4 * nt), dtype=u.dtype)
    s0, s1, s2, s3, s4, s5 = s[0], s[1], s[2], s[3], s[4], s[5]
    c2, c4, c8 = k[0], k[1], k[3]
    for gi in range(g):
        for oi in range(o_):
            src = g3[n0 + gi, oi]
            _load_plane(buf, 0, src, h, w)
            for ty in range(th):
                r0, r1, r2, r3 = buf[4 * ty], buf[4 * ty + 1], buf[4 * ty + 2], buf[4 * ty + 3]
                base = u64(ty * wp)
                for q in range(u64(wp)):
                    p = base + q
                    s0[p], s1[p], s2[p], s3[p], s4[p], s5[p] = _a4(
                        r0[q], r1[q], r2[q], r3[q], c2, c4, c8)
            t0 = u64(gi * nt)
            for a in range(6):
                sa = s[a]
                ua0, ua1, ua2 = u[6 * a, oi], u[6 * a + 1, oi], u[6 * a + 2, oi]
                ua3, ua4, ua5 = u[6 * a + 3, oi], u[6 * a + 4, oi], u[6 * a + 5, oi]
                for t in range(u64(nt)):
                    j = 4 * t
                    tt = t0 + t
                    ua0[tt], ua1[tt], ua2[tt], ua3[tt], ua4[tt], ua5[tt] = _a4(
                        sa[j], sa[j + 1], sa[j + 2], sa[j + 3], c2, c4, c8)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _store_rows(rows, mt, ty0, th, tw, h, w, b, relu, dst):
    """dst (H*W) = rows + b, then ReLU: the last step of the output transforms of
    mt x mt tiles. rows (mt, TH * mt TW) holds, for each of the TH tile rows from ty0 on
    (ty = 0 .. TH-1), its mt output rows mt (ty0 + ty) + r (row r of rows, columns mt TW ty
    ..), of which those inside the map are stored."""
    for ty in range(th):
        y0 = mt * (ty0 + ty)
        for r in range(min(mt, h - y0)):
            row = rows[r]
            src = u64(ty * mt * tw)
            base = u64((y0 + r) * w)
            if relu:
                for q in range(u64(w)):
                    val = row[src + q] + b
                    dst[base + q] = 0 if val < 0 else val
            else:
                for q in range(u64(w)):
                    dst[base + q] = row[src + q] + b


@njit(cache=True, nogil=True, error_model="numpy")
def output_transform_f4(m, bias, has_bias, relu, k, n0, h, w, y3):
    """F(4x4, 3x3): y3[n0 + gi, o] (N, O, H*W) = A^T M A (+ bias[o], then ReLU) for every tile
    of M (36, O, g*TH*TW) (O from y3, rows of M past it unused); the parts of tiles past the
    map's edge are dropped. Per plane, T = A^T M for all its tiles in one loop, then the four
    output rows of every tile in another (tile t's pixels at 4t .. 4t+3 of each), then the rows
    stored. The first version did this tile row by tile row, loops of TW = 7 or 14 tiles, and
    ran 2.5-3.2x slower."""
    o_ = y3.shape[1]
    th, tw = (h + 3) // 4, (w + 3) // 4
    nt = th * tw
    g = m.shape[2] // nt
    tr = np.empty((4, 6, nt), dtype=m.dtype)
    rows = np.empty((4, 4 * nt), dtype=m.dtype)
    for gi in range(g):
        for o in range(o_):
            _output_f4_rows(m, o, gi * nt, 0, th, h, w, bias[o] if has_bias else 0, relu, k,
                            tr, rows, y3[n0 + gi, o])


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _output_f4_rows(m, o, t0, ty0, ty1, h, w, b, relu, k, tr, rows, dst):
    """dst (H*W, output channel o's plane) rows of tile rows ty0 .. ty1-1 = A^T M A + b (then
    ReLU), their tiles at M[:, o, t0 ..] (row-major): :func:`output_transform_f4` for one
    plane, or one band of its tile rows (:func:`forward_f4`)."""
    tw = (w + 3) // 4
    nt = (ty1 - ty0) * tw
    tb = u64(t0)
    c2, c4, c8 = k[0], k[1], k[3]
    for col in range(6):
        m0, m1, m2 = m[col, o], m[6 + col, o], m[12 + col, o]
        m3, m4, m5 = m[18 + col, o], m[24 + col, o], m[30 + col, o]
        e0, e1, e2, e3 = tr[0, col], tr[1, col], tr[2, col], tr[3, col]
        for t in range(u64(nt)):
            tt = tb + t
            e0[t], e1[t], e2[t], e3[t] = _at6(
                m0[tt], m1[tt], m2[tt], m3[tt], m4[tt], m5[tt], c2, c4, c8)
    for r in range(4):
        e, row = tr[r], rows[r]
        for t in range(u64(nt)):
            j = 4 * t
            row[j], row[j + 1], row[j + 2], row[j + 3] = _at6(
                e[0, t], e[1, t], e[2, t], e[3, t], e[4, t], e[5, t], c2, c4, c8)
    _store_rows(rows, 4, ty0, ty1 - ty0, tw, h, w, b, relu, dst)


# ------------------------------------------------------------------ F(4x4, 5x5)
@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _bt8(a0, a1, a2, a3, a4, a5, a6, a7, k):
    """B^T of F(4x4, 5x5) applied to one column (or row) of an 8x8 tile, its rows paired
    (even and odd parts); k = (21/4, 17/4, 1/2, 1/4, 5/2, 5/4, 2, 4, 5) in the data's dtype."""
    e1, o1 = a2 + a6 - k[1] * a4, a1 + a5 - k[1] * a3
    e3, o3 = k[3] * a2 - k[5] * a4 + a6, k[2] * a1 - k[4] * a3 + k[6] * a5
    e5, o5 = k[7] * a2 - k[8] * a4 + a6, k[6] * a1 - k[4] * a3 + k[2] * a5
    return (a6 - a0 + k[0] * (a2 - a4), e1 + o1, e1 - o1, e3 + o3, e3 - o3, e5 + o5,
            e5 - o5, a7 - a1 + k[0] * (a3 - a5))


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _at8(e0, e1, e2, e3, e4, e5, e6, e7, k):
    """A^T of F(4x4, 5x5) applied to one column (or row) of an 8x8 tile: four values;
    k[2], k[3], k[6], k[7], k[9], k[10] = 1/2, 1/4, 2, 4, 8, 1/8."""
    p1, q1 = e1 + e2, e1 - e2
    p2, q2 = e3 + e4, e3 - e4
    p3, q3 = e5 + e6, e5 - e6
    return (e0 + p1 + p2 + p3, q1 + k[6] * q2 + k[2] * q3, p1 + k[7] * p2 + k[3] * p3,
            q1 + k[9] * q2 + k[10] * q3 + e7)


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _rows8(v, a, i):
    """Row i of the eight matrices v[8a] .. v[8a + 7]: where row a of an 8x8 transformed tile
    goes (its eight values, one per matrix)."""
    return (v[8 * a, i], v[8 * a + 1, i], v[8 * a + 2, i], v[8 * a + 3, i], v[8 * a + 4, i],
            v[8 * a + 5, i], v[8 * a + 6, i], v[8 * a + 7, i])


@njit(cache=True, nogil=True, error_model="numpy")
def input_transform_f45(x3, n0, h, w, k, v):
    """F(4x4, 5x5): V (64, C, g*TH*TW) = B^T d B for every 8x8 tile d of images n0 .. n0+g-1 of
    x3 (N, C, H*W) (any strides; V may have rows past C), tiles every 4 pixels from (-2, -2);
    ``k`` from ``constants(dtype, 64)``. As :func:`input_transform_f4`: per tile row, S = B^T d
    along whole buffer rows, then each of S's eight rows gives eight of V's matrices."""
    c = x3.shape[1]
    th, tw = (h + 3) // 4, (w + 3) // 4
    nt = th * tw
    g = v.shape[2] // nt
    wp = 4 * tw + 4
    buf = np.zeros((4 * th + 4, wp), dtype=v.dtype)    # the padding and past the map stay 0
    s = np.empty((8, wp), dtype=v.dtype)
    for gi in range(g):
        for ci in range(c):
            src = x3[n0 + gi, ci]
            _load_plane(buf, 2, src, h, w)
            for ty in range(th):
                r0, r1, r2, r3 = buf[4 * ty], buf[4 * ty + 1], buf[4 * ty + 2], buf[4 * ty + 3]
                r4, r5, r6, r7 = buf[4 * ty + 4], buf[4 * ty + 5], buf[4 * ty + 6], buf[4 * ty + 7]
                for q in range(u64(wp)):
                    (s[0, q], s[1, q], s[2, q], s[3, q], s[4, q], s[5, q], s[6, q],
                     s[7, q]) = _bt8(r0[q], r1[q], r2[q], r3[q], r4[q], r5[q], r6[q], r7[q], k)
                t0 = u64(gi * nt + ty * tw)
                for a in range(8):
                    sa = s[a]
                    va0, va1, va2, va3, va4, va5, va6, va7 = _rows8(v, a, ci)
                    for tx in range(u64(tw)):
                        j = 4 * tx
                        t = t0 + tx
                        va0[t], va1[t], va2[t], va3[t], va4[t], va5[t], va6[t], va7[t] = _bt8(
                            sa[j], sa[j + 1], sa[j + 2], sa[j + 3], sa[j + 4], sa[j + 5],
                            sa[j + 6], sa[j + 7], k)


@njit(cache=True, nogil=True, error_model="numpy")
def output_transform_f45(m, bias, has_bias, relu, k, n0, h, w, y3):
    """F(4x4, 5x5): y3[n0 + gi, o] (N, O, H*W) = A^T M A (+ bias[o], then ReLU) for every tile
    of M (64, O, g*TH*TW) (O from y3); as :func:`output_transform_f4`, with 8x8 tiles (3-4x the
    first version's speed, which went tile row by tile row)."""
    o_ = y3.shape[1]
    th, tw = (h + 3) // 4, (w + 3) // 4
    nt = th * tw
    g = m.shape[2] // nt
    tr = np.empty((4, 8, nt), dtype=m.dtype)
    rows = np.empty((4, 4 * nt), dtype=m.dtype)
    for gi in range(g):
        t0 = u64(gi * nt)
        for o in range(o_):
            for col in range(8):
                m0, m1, m2, m3 = m[col, o], m[8 + col, o], m[16 + col, o], m[24 + col, o]
                m4, m5, m6, m7 = m[32 + col, o], m[40 + col, o], m[48 + col, o], m[56 + col, o]
                e0, e1, e2, e3 = tr[0, col], tr[1, col], tr[2, col], tr[3, col]
                for t in range(u64(nt)):
                    tt = t0 + t
                    e0[t], e1[t], e2[t], e3[t] = _at8(
                        m0[tt], m1[tt], m2[tt], m3[tt], m4[tt], m5[tt], m6[tt], m7[tt], k)
            for r in range(4):
                e, row = tr[r], rows[r]
                for t in range(u64(nt)):
                    j = 4 * t
                    row[j], row[j + 1], row[j + 2], row[j + 3] = _at8(
                        e[0, t], e[1, t], e[2, t], e[3, t], e[4, t], e[5, t], e[6, t], e[7, t],
                        k)
            _store_rows(rows, 4, 0, th, tw, h, w, bias[o] if has_bias else 0, relu, y3[n0 + gi, o])


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def _a8(e0, e1, e2, e3, k):
    """A (the transpose of A^T) of F(4x4, 5x5) applied to one column (or row) of a 4x4
    tile: eight values, its rows paired as in :func:`_at8`; k[2], k[3], k[6], k[7], k[9],
    k[10] = 1/2, 1/4, 2, 4, 8, 1/8."""
    p1, q1 = e0 + e2, e1 + e3
    p2, q2 = e0 + k[7] * e2, k[6] * e1 + k[9] * e3
    p3, q3 = e0 + k[3] * e2, k[2] * e1 + k[10] * e3
    return e0, p1 + q1, p1 - q1, p2 + q2, p2 - q2, p3 + q3, p3 - q3, e3


@njit(cache=True, nogil=True, error_model="numpy")
def gradient_transform_f45(g3, n0, h, w, k, u):
    """F(4x4, 5x5), for the weight gradient: Z (64, O, g*TH*TW) (rows past O left as they are)
    = A e A^T for every 4x4 tile e of the output gradient g3[n0 .. n0+g-1] (*, O, H*W) (any
    strides; zero past the map's edge); as :func:`gradient_transform_f4`, with A 8x4."""
    o_ = g3.shape[1]
    th, tw = (h + 3) // 4, (w + 3) // 4
    nt = th * tw
    g = u.shape[2] // nt
    wp = 4 * tw
    buf = np.zeros((4 * th, wp), dtype=u.dtype)        # rows/columns past the map stay 0
    s = np.empty((8, 4 * nt), dtype=u.dtype)
    s0, s1, s2, s3, s4, s5, s6, s7 = s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]
    for gi in range(g):
        for oi in range(o_):
            src = g3[n0 + gi, oi]
            _load_plane(buf, 0, src, h, w)
            for ty in range(th):
                r0, r1, r2, r3 = buf[4 * ty], buf[4 * ty + 1], buf[4 * ty + 2], buf[4 * ty + 3]
                base = u64(ty * wp)
                for q in range(u64(wp)):
                    p = base + q
                    s0[p], s1[p], s2[p], s3[p], s4[p], s5[p], s6[p], s7[p] = _a8(
                        r0[q], r1[q], r2[q], r3[q], k)
            t0 = u64(gi * nt)
            for a in range(8):
                sa = s[a]
                ua0, ua1, ua2, ua3, ua4, ua5, ua6, ua7 = _rows8(u, a, oi)
                for t in range(u64(nt)):
                    j = 4 * t
                    tt = t0 + t
                    ua0[tt], ua1[tt], ua2[tt], ua3[tt], ua4[tt], ua5[tt], ua6[tt], ua7[tt] = _a8(
                        sa[j], sa[j + 1], sa[j + 2], sa[j + 3], k)


# (input transform, output transform) by the number of transformed values per tile:
# F(2x2, 3x3), F(4x4, 3x3), F(4x4, 5x5)
TRANSFORMS = {16: (input_transform_f2, output_transform_f2),
              36: (input_transform_f4, output_transform_f4),
              64: (input_transform_f45, output_transform_f45)}
# the weight gradient's transform of the output gradient, F(4x4, 3x3) and F(4x4, 5x5)
GRADIENT_TRANSFORMS = {36: gradient_transform_f4, 64: gradient_transform_f45}
