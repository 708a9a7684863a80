"""Worked solution of exercise 4b (the regions that replace the stub's TODOs).

v1 is the definition with the padding already done, so no bounds checks. v2 changes the
order of the loops so that the innermost one walks contiguous memory (v) with no
dependence between iterations, which the compiler vectorises, and keeps a block of TK
output rows in a small accumulator that stays in the L1 cache while the C*KS*KS taps
stream through it: each input row is loaded once per TK output channels instead of once
per output. On a CPU that is the same idea as the GPU's shared-memory tile: bring a value
close once, use it many times.
"""
import numpy as np
from numba import njit

TK = 16


# BEGIN YOUR CODE: v1
@njit
def conv_v1(xpad, w, y):
    """Fill y (N, K, H, W) from xpad (N, C, H+2P, W+2P) and w (K, C, KS, KS), one output at a time."""
    n_img, c_in, _, _ = xpad.shape
    k_out, _, ks, _ = w.shape
    _, _, h_out, w_out = y.shape
    for n in range(n_img):
        for k in range(k_out):
            for h in range(h_out):
                for v in range(w_out):
                    acc = np.float32(0.0)
                    for c in range(c_in):
                        for r in range(ks):
                            for s in range(ks):
                                acc += w[k, c, r, s] * xpad[n, c, h + r, v + s]
                    y[n, k, h, v] = acc
# END YOUR CODE: v1


# BEGIN YOUR CODE: v2
@njit
def conv_v2(xpad, w, y):
    """Fill y like conv_v1, TK output channels x one output row at a time."""
    n_img, c_in, _, _ = xpad.shape
    k_out, _, ks, _ = w.shape
    _, _, h_out, w_out = y.shape
    acc = np.empty((TK, w_out), dtype=np.float32)
    for n in range(n_img):
        for k0 in range(0, k_out, TK):
            tk = min(TK, k_out - k0)                 # the last block may be narrower
            for h in range(h_out):
                acc[:tk] = 0.0
                for c in range(c_in):
                    for r in range(ks):
                        row = xpad[n, c, h + r]
                        for s in range(ks):
                            for kk in range(tk):
                                wv = w[k0 + kk, c, r, s]
                                for v in range(w_out):   # contiguous: vectorised
                                    acc[kk, v] += wv * row[v + s]
                for kk in range(tk):
                    y[n, k0 + kk, h] = acc[kk]
# END YOUR CODE: v2
