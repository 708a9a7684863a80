"""The SGD update of ``engine.optim.SGD`` in one pass per parameter, parameters shared among
the threads.

Per element, with ``d = g + wd * w`` (weight decay folded into the gradient)::

    v = d                    on the first step (momentum buffer just created)
    v = momentum * v + d     afterwards
    w = w - lr * (d + momentum * v   if nesterov else v)

NumPy needs five or six passes over each parameter for this (and temporaries); one loop reads
w, g and v once and writes w and v once, which on GoogLeNet's 13 M parameters is the
difference between about 50 and 10 ms per step on two cores. The arithmetic is in the
parameters' dtype, as NumPy's in-place operations do it.
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


def update(items, momentum: float, nesterov: bool) -> None:
    """Apply :func:`sgd_update` to every ``(w, g, v, lr, wd, first)`` of ``items`` (contiguous
    NumPy arrays of one float dtype per item, updated in place), runs of items per thread."""
    def body(run):
        for w, g, v, lr, wd, first in run:
            t = w.dtype.type
            sgd_update(w.reshape(-1), g.reshape(-1), v.reshape(-1), t(lr), t(wd), t(momentum),
                       nesterov, first)
    parallel.run(body, items)


def fusable(w, g) -> bool:
    """Contiguous NumPy float arrays of one dtype: what :func:`update` takes."""
    return (type(w) is np.ndarray and type(g) is np.ndarray and w.dtype == g.dtype
            and w.dtype.kind == "f" and w.flags.c_contiguous and g.flags.c_contiguous)
