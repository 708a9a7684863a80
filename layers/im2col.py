"""im2col and col2im: a convolution's patches as the columns of one matrix.

For an input ``x`` (N, C, H, W), a kernel kh x kw, stride s and padding p,
``im2col`` builds ``col`` of shape (C*kh*kw, N*OH*OW) whose column for output
pixel (n, oh, ow) holds the kh*kw*C input values that pixel's kernel window
covers. A convolution is then one matrix product ``W.reshape(O, C*kh*kw) @ col``.

Both functions loop over the kh*kw kernel taps (at most 49), never over
pixels or images: each tap is one strided slice of the padded input, covering
every output pixel at once. ``col2im`` sums, for each input pixel, the
contributions of every tap that read it: each tap adds its slice once, in a
fixed order, so the result is deterministic (no atomics on a GPU either).
"""
from __future__ import annotations

from engine.backend import get_array_module


def conv_out_size(size: int, k: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - k) // stride + 1


def pad_hw(x, pad: int, value=0.0, extra_h: int = 0, extra_w: int = 0):
    """Pad H and W of an NCHW array by ``pad`` (plus ``extra`` at the bottom/right)."""
    if pad == 0 and extra_h == 0 and extra_w == 0:
        return x
    xp = get_array_module(x)
    n, c, h, w = x.shape
    out = xp.full((n, c, h + 2 * pad + extra_h, w + 2 * pad + extra_w), value, dtype=x.dtype)
    out[:, :, pad:pad + h, pad:pad + w] = x
    return out


def tap_slice(i: int, j: int, stride: int, oh: int, ow: int):
    """Index of the input pixels that kernel tap (i, j) reads for every output pixel."""
    return (slice(None), slice(None),
            slice(i, i + stride * (oh - 1) + 1, stride),
            slice(j, j + stride * (ow - 1) + 1, stride))


def im2col(x, kh: int, kw: int, stride: int, pad: int):
    """(N, C, H, W) -> col (C*kh*kw, N*OH*OW), rows ordered (c, i, j) like W's (in, kh, kw)."""
    xp = get_array_module(x)
    n, c, h, w = x.shape
    oh, ow = conv_out_size(h, kh, stride, pad), conv_out_size(w, kw, stride, pad)
    xpad = pad_hw(x, pad)
    col = xp.empty((c, kh, kw, n, oh, ow), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            col[:, i, j] = xpad[tap_slice(i, j, stride, oh, ow)].transpose(1, 0, 2, 3)
    return col.reshape(c * kh * kw, n * oh * ow)


def col2im(col, x_shape, kh: int, kw: int, stride: int, pad: int):
    """The adjoint of :func:`im2col`: (C*kh*kw, N*OH*OW) -> (N, C, H, W), summing overlaps."""
    xp = get_array_module(col)
    n, c, h, w = x_shape
    oh, ow = conv_out_size(h, kh, stride, pad), conv_out_size(w, kw, stride, pad)
    col = col.reshape(c, kh, kw, n, oh, ow)
    gpad = xp.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=col.dtype)
    for i in range(kh):
        for j in range(kw):
            gpad[tap_slice(i, j, stride, oh, ow)] += col[:, i, j].transpose(1, 0, 2, 3)
    return xp.ascontiguousarray(gpad[:, :, pad:pad + h, pad:pad + w])
