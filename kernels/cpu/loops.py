"""The inner loops every kernel is made of: copy, add and zero a run of a 1-D array.

Why these exist: Numba accepts negative indices (``a[-1]``), so for a signed index it emits
``i < 0 ? i + len : i`` on every access. When LLVM cannot prove an index is non-negative,
as with ``a[base + q]`` or ``a[q + shift]``, that select stays in the loop and the loop does
not vectorise: a run copy ran at a quarter of the speed. These loops index with unsigned
integers, which cannot be negative, so the check disappears. Callers pass offsets they know
to be >= 0.

All are ``inline="always"``: they compile into the caller's loops.
"""
from __future__ import annotations

import numpy as np
from numba import njit

u64 = np.uint64


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def zero(dst, d0, n):
    """dst[d0:d0+n] = 0."""
    d = u64(d0)
    for t in range(u64(n)):
        dst[d + t] = 0


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def copy(dst, d0, src, s0, n):
    """dst[d0:d0+n] = src[s0:s0+n]."""
    d, s = u64(d0), u64(s0)
    for t in range(u64(n)):
        dst[d + t] = src[s + t]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def copy_strided(dst, d0, src, s0, stride, n):
    """dst[d0:d0+n] = src[s0:s0+n*stride:stride]."""
    d, s, st = u64(d0), u64(s0), u64(stride)
    for t in range(u64(n)):
        dst[d + t] = src[s + t * st]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def add(dst, d0, src, s0, n):
    """dst[d0:d0+n] += src[s0:s0+n]."""
    d, s = u64(d0), u64(s0)
    for t in range(u64(n)):
        dst[d + t] += src[s + t]


@njit(cache=True, nogil=True, error_model="numpy", inline="always")
def add_strided(dst, d0, stride, src, s0, n):
    """dst[d0:d0+n*stride:stride] += src[s0:s0+n]."""
    d, s, st = u64(d0), u64(s0), u64(stride)
    for t in range(u64(n)):
        dst[d + t * st] += src[s + t]
