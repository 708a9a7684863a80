"""Naive loop implementations used as independent references in the tests.

They follow the definitions (and Caffe's C++ loops) literally, pixel by pixel,
in float64, sharing no code with ``layers``. Slow on purpose: tiny shapes only.
"""
import math

import numpy as np


def conv2d(x, w, b=None, stride=1, pad=0):
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh = (h + 2 * pad - kh) // stride + 1
    ow = (wd + 2 * pad - kw) // stride + 1
    y = np.zeros((n, o, oh, ow))
    for ni in range(n):
        for oi in range(o):
            for p in range(oh):
                for q in range(ow):
                    acc = 0.0 if b is None else float(b[oi])
                    for ci in range(c):
                        for i in range(kh):
                            for j in range(kw):
                                hh, ww = p * stride + i - pad, q * stride + j - pad
                                if 0 <= hh < h and 0 <= ww < wd:
                                    acc += float(w[oi, ci, i, j]) * float(x[ni, ci, hh, ww])
                    y[ni, oi, p, q] = acc
    return y


def pooled_size(size, k, s, pad, ceil_mode):
    # Caffe's PoolingLayer::Reshape, written out again.
    if ceil_mode:
        out = int(math.ceil(float(size + 2 * pad - k) / s)) + 1
    else:
        out = int(math.floor(float(size + 2 * pad - k) / s)) + 1
    if pad and (out - 1) * s >= size + pad:
        out -= 1
    return out


def max_pool2d(x, k, s, pad=0, ceil_mode=True):
    """Caffe's MAX pooling loop; also returns the argmax (flat h*W+w index in x)."""
    n, c, h, w = x.shape
    oh, ow = pooled_size(h, k, s, pad, ceil_mode), pooled_size(w, k, s, pad, ceil_mode)
    y = np.full((n, c, oh, ow), -np.inf)
    arg = np.full((n, c, oh, ow), -1)
    for ni in range(n):
        for ci in range(c):
            for p in range(oh):
                for q in range(ow):
                    hs, ws = p * s - pad, q * s - pad
                    he, we = min(hs + k, h), min(ws + k, w)
                    hs, ws = max(hs, 0), max(ws, 0)
                    for hh in range(hs, he):
                        for ww in range(ws, we):
                            if x[ni, ci, hh, ww] > y[ni, ci, p, q]:
                                y[ni, ci, p, q] = x[ni, ci, hh, ww]
                                arg[ni, ci, p, q] = hh * w + ww
    return y, arg


def avg_pool2d(x, k, s, pad=0, ceil_mode=True):
    """Caffe's AVE pooling loop: the divisor counts padding, not ceil overflow."""
    n, c, h, w = x.shape
    oh, ow = pooled_size(h, k, s, pad, ceil_mode), pooled_size(w, k, s, pad, ceil_mode)
    y = np.zeros((n, c, oh, ow))
    for ni in range(n):
        for ci in range(c):
            for p in range(oh):
                for q in range(ow):
                    hs, ws = p * s - pad, q * s - pad
                    he, we = min(hs + k, h + pad), min(ws + k, w + pad)
                    size = (he - hs) * (we - ws)
                    hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
                    y[ni, ci, p, q] = x[ni, ci, hs:he, ws:we].sum() / size
    return y


def lrn(x, size=5, alpha=1e-4, beta=0.75, k=1.0):
    n, c, h, w = x.shape
    y = np.zeros_like(x, dtype=np.float64)
    half = (size - 1) // 2
    for ci in range(c):
        lo, hi = max(0, ci - half), min(c, ci + half + 1)
        s = (x[:, lo:hi].astype(np.float64) ** 2).sum(axis=1)
        y[:, ci] = x[:, ci] / (k + alpha / size * s) ** beta
    return y


def softmax_cross_entropy(z, t):
    total = 0.0
    for zi, ti in zip(z.astype(np.float64), t):
        m = max(zi)
        lse = m + math.log(sum(math.exp(v - m) for v in zi))
        total += lse - zi[ti]
    return total / len(t)


def linear(x, w, b=None):
    y = np.zeros((x.shape[0], w.shape[0]))
    for i in range(x.shape[0]):
        for o in range(w.shape[0]):
            y[i, o] = sum(float(x[i, k]) * float(w[o, k]) for k in range(x.shape[1]))
            if b is not None:
                y[i, o] += b[o]
    return y
