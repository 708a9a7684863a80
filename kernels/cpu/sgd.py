"""The updates of ``engine.optim.SGD``, ``engine.optim.Adam`` and ``engine.optim.PolyakAverage``
in one pass per parameter, the parameters' elements shared equally among the threads.

Per element, with ``d = g + wd * w`` (weight decay folded into the gradient)::

    v = d                    on the first step (momentum buffer just created)
    v = momentum * v + d     afterwards
    w = w - lr * (d + momentum * v   if nesterov else v)

NumPy needs five or six passes over each parameter for this (and temporaries); one loop reads
w, g and v once and writes w and v once, which on GoogLeNet's 13 M parameters is the
difference between about 50 and 10 ms per step on two cores. The arithmetic is in the
parameters' dtype, as NumPy's in-place operations do it.

Adam, per element, with the bias corrections ``c1 = 1 - beta1**t``, ``c2 = 1 - beta2**t``::

    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    w = w - lr * wd * w - (lr / c1) * m / (sqrt(v / c2) + eps)

(NumPy: about twelve passes and three temporaries per parameter.)

Polyak averaging: ``avg = d * avg + (1 - d) * w`` (NumPy: three passes and a temporary; about
16 ms per step for GoogLeNet's 10 M parameters with its auxiliary heads, 5 ms in one pass).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from . import parallel
from .loops import u64


@njit(cache=True, nogil=True, error_model="numpy")
def sgd_update(w, g, v, lr, wd, momentum, nesterov, first):
    """One parameter, flat arrays of one dtype; ``lr``, ``wd``, ``momentum`` of that dtype."""
    for i in range(u64(w.size)):
        d = g[i] + wd * w[i]
        vi = d if first else momentum * v[i] + d
        v[i] = vi
        w[i] -= lr * (d + momentum * vi if nesterov else vi)


def _over_slices(items, fn) -> None:
    """``fn(item, lo, hi)`` over slices [lo, hi) of the items' flat arrays (``item[0]`` the
    parameter), cut into one run per share of the pool with equal numbers of elements: runs
    of whole items were up to 4x apart (the classifiers' weights against a convolution's)."""
    sizes = [item[0].size for item in items]
    total = sum(sizes)
    shares = min(2 * parallel.threads(), max(1, total))
    cuts = [total * k // shares for k in range(shares + 1)]
    runs, start = [[] for _ in range(shares)], 0
    for item, size in zip(items, sizes):
        for k in range(shares):              # the shares this item's [start, start+size) meets
            lo, hi = max(start, cuts[k]), min(start + size, cuts[k + 1])
            if lo < hi:
                runs[k].append((item, lo - start, hi - start))
        start += size

    def body(share):
        for run in share:
            for item, lo, hi in run:
                fn(item, lo, hi)
    parallel.run(body, runs)


def update(items, momentum: float, nesterov: bool) -> None:
    """Apply :func:`sgd_update` to every ``(w, g, v, lr, wd, first)`` of ``items`` (contiguous
    NumPy arrays of one float dtype per item, updated in place), in equal shares per thread."""
    def fn(item, lo, hi):
        w, g, v, lr, wd, first = item
        t = w.dtype.type
        sgd_update(w.reshape(-1)[lo:hi], g.reshape(-1)[lo:hi], v.reshape(-1)[lo:hi], t(lr),
                   t(wd), t(momentum), nesterov, first)
    _over_slices(items, fn)


@njit(cache=True, nogil=True, error_model="numpy")
def adam_update_one(w, g, m, v, lr, wd, beta1, beta2, eps, c1, c2):
    """One parameter, flat arrays of one dtype; the scalars of that dtype."""
    one = beta1 - beta1 + 1     # 1 in the parameters' dtype (a literal 1 would widen to float64)
    step = lr / c1
    for i in range(u64(w.size)):
        gi = g[i]
        mi = beta1 * m[i] + (one - beta1) * gi
        vi = beta2 * v[i] + (one - beta2) * gi * gi
        m[i] = mi
        v[i] = vi
        w[i] = w[i] - lr * wd * w[i] - step * mi / (np.sqrt(vi / c2) + eps)


def adam_update(items, beta1: float, beta2: float, eps: float, c1: float, c2: float) -> None:
    """Apply :func:`adam_update_one` to every ``(w, g, m, v, lr, wd)`` of ``items``
    (contiguous NumPy arrays of one float dtype per item, updated in place)."""
    def fn(item, lo, hi):
        w, g, m, v, lr, wd = item
        t = w.dtype.type
        adam_update_one(w.reshape(-1)[lo:hi], g.reshape(-1)[lo:hi], m.reshape(-1)[lo:hi],
                        v.reshape(-1)[lo:hi], t(lr), t(wd), t(beta1), t(beta2), t(eps), t(c1),
                        t(c2))
    _over_slices(items, fn)


@njit(cache=True, nogil=True, error_model="numpy")
def average_one(avg, w, d):
    """avg = d * avg + (1 - d) * w over flat arrays of one dtype; ``d`` of that dtype."""
    e = (d - d + 1) - d         # 1 - d in the parameters' dtype
    for i in range(u64(w.size)):
        avg[i] = d * avg[i] + e * w[i]


def average(items, decay: float) -> None:
    """Apply :func:`average_one` to every ``(avg, w)`` of ``items``."""
    def fn(item, lo, hi):
        avg, w = item
        average_one(avg.reshape(-1)[lo:hi], w.reshape(-1)[lo:hi], avg.dtype.type(decay))
    _over_slices(items, fn)


def fusable(w, g) -> bool:
    """Contiguous NumPy float arrays of one dtype: what :func:`update` takes."""
    return (type(w) is np.ndarray and type(g) is np.ndarray and w.dtype == g.dtype
            and w.dtype.kind == "f" and w.flags.c_contiguous and g.flags.c_contiguous)
