"""Winograd F(2x2, 3x3): a 3x3 stride-1 "same" convolution with 16 multiplies per 2x2 output
tile instead of 36 (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", 2016).

For each 4x4 input tile ``d`` (tiles start every 2 pixels, at -pad) and each 3x3 filter ``g``,
the 2x2 outputs of the correlation are ``Y = A^T [(G g G^T) * (B^T d B)] A`` with::

    B^T = [[1, 0, -1,  0],     G = [[  1,    0,    0],     A^T = [[1, 1,  1,  0],
           [0, 1,  1,  0],          [1/2,  1/2,  1/2],            [0, 1, -1, -1]]
           [0, -1, 1,  0],          [1/2, -1/2,  1/2],
           [0, 1,  0, -1]]          [  0,    0,    1]]

Summed over input channels, the elementwise product becomes 16 GEMMs, one per position
``k`` of the 4x4 transformed tile::

    U[k] = (G g G^T)[k]      (O, C)        filter transform, once per call
    V[k] = (B^T d B)[k]      (C, T)        input transform, T tiles of a chunk of images
    M[k] = U[k] @ V[k]       (O, T)
    y    = A^T M A (+ b, ReLU)             output transform, 2x2 pixels per tile

``kernels.cpu.conv`` runs forward passes this way where it measured faster (:func:`worth_it`);
backward stays on im2col + GEMM, which measured faster there (``docs/performance_cpu.md``).
The rounding differs from the direct sum's: the transforms add and subtract up to 4 x 4
inputs at a time, so the float32 error grows by a small constant factor (measured about
5e-7 of the output's scale on GoogLeNet's shapes; ``tests/test_cpu_kernels.py`` holds it to
1e-5).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from .loops import copy, u64


def applies(w_shape, stride: int, pad: int) -> bool:
    """3x3 kernels, stride 1, padding 1 ("same")."""
    return tuple(w_shape[2:]) == (3, 3) and stride == 1 and pad == 1


def worth_it(c: int, o: int, h: int, w: int) -> bool:
    """Whether F(2x2, 3x3) beat im2col + GEMM for this forward on one core. Measured on
    GoogLeNet's 3x3 convolutions at batch 8: 1.3-1.5x on the 56x56 and 28x28 maps, 1.1-1.2x
    at 14x14, 0.6-0.7x at 7x7, where the per-plane transform work and the small GEMMs
    (16 tiles per image) cost more than the multiplies saved."""
    return min(c, o) >= 64 and h >= 14 and w >= 14


# G g G^T for a filter g flattened to 9 numbers is one linear map: (G g G^T)[a, b] =
# sum_ij G[a, i] G[b, j] g[i, j], i.e. the Kronecker product G (x) G, a 16 x 9 matrix.
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])
_GG = np.kron(_G, _G)


def filter_transform(w):
    """U (16, O, C) = G g G^T for every filter g of w (O, C, 3, 3): one GEMM,
    (G (x) G) (16, 9) @ w.reshape(O*C, 9).T, whose (16, O*C) result is U's layout. (A Numba
    loop over the filters took 3.1 ms for 320x160 filters; this GEMM 0.7 ms.)"""
    o, c = w.shape[:2]
    u = np.matmul(_GG.astype(w.dtype), w.reshape(o * c, 9).T)
    return u.reshape(16, o, c)


def tiles(h: int, w: int) -> tuple[int, int]:
    """2x2 output tiles along H and W (the last ones half outside an odd-sized map)."""
    return (h + 1) // 2, (w + 1) // 2


@njit(cache=True, nogil=True, error_model="numpy")
def input_transform(x3, n0, h, w, v):
    """V (16, C, g*TH*TW) of images n0 .. n0+g-1 of x3 (N, C, H*W). Each (image, channel)
    plane is first copied into a zero-bordered buffer so that every 4x4 tile reads in
    bounds."""
    c = x3.shape[1]
    th, tw = (h + 1) // 2, (w + 1) // 2
    nt = th * tw
    g = v.shape[2] // nt
    hp, wp = 2 * th + 2, 2 * tw + 2
    buf = np.zeros((hp, wp), dtype=v.dtype)
    for gi in range(g):
        for ci in range(c):
            src = x3[n0 + gi, ci]
            for yy in range(h):
                copy(buf[yy + 1], 1, src, yy * w, w)
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
def output_transform(m, bias, has_bias, relu, n0, h, w, y3):
    """y3[n0 + gi, o] (N, O, H*W) = A^T M A (+ bias[o], then ReLU) for every tile of
    M (16, O, g*TH*TW); the half-tiles past an odd-sized map's edge are dropped."""
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

