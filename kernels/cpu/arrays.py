"""Whole-array work that would otherwise run on the main thread alone, shared among the
pool's threads: the sum of two gradients, a gradient's copy, the sum of a convolution's
partial weight gradients, the Inception modules' depth concatenation, and the linear
layers' GEMMs.

Each is plain NumPy on slices (NumPy releases the GIL inside its copy, add and matmul loops,
so the threads run at once), split into contiguous runs along the first axis (images, or a
weight's rows). The adds, copies and concatenations compute every element as the
whole-array call does, so their results are bitwise NumPy's. On a 2-core machine the copies and adds
of a batch of 8 took 1.5x less wall time this way, and the products of the auxiliary heads'
1024 x 2048 linear layer at batch 8 1.2x (forward), 1.45x (gx) and 1.6x (gw) less; a whole
training step at batch 8 took 5% less (paired steps, median of 16).

Arrays under ``MIN_SIZE`` elements stay on the calling thread: handing them to the pool
costs more than it saves.
"""
from __future__ import annotations

import numpy as np

from . import gemm, parallel

MIN_SIZE = 1 << 16


def _small(a) -> bool:
    """Whether ``a`` is done on the calling thread (which first runs what a pipeline has
    queued, since it may read those results)."""
    small = parallel.threads() == 1 or a.size < MIN_SIZE or a.ndim == 0 or a.shape[0] < 2
    if small:
        parallel.sync()
    return small


def add(a, b):
    """a + b, a new array (a and b of one shape)."""
    if _small(a) or a.shape != b.shape:
        parallel.sync()
        return a + b
    out = np.empty(a.shape, dtype=np.result_type(a, b))
    parallel.over_images(a.shape[0], lambda s: np.add(a[s], b[s], out=out[s]), queue=True)
    return out


def add_into(a, b) -> None:
    """a += b in place (b broadcast to a's shape on the calling thread)."""
    if a.shape != b.shape:
        parallel.sync()
        a += b
        return
    sum_into([a, b])


def sum_into(parts) -> None:
    """parts[0] += parts[1] + ... in that order, element by element (((p0 + p1) + p2) + ...,
    as adding them one at a time does), rows shared among the threads."""
    if len(parts) == 1:
        return
    if _small(parts[0]):
        sum_rows(parts, parts[0], 0)
        return
    parallel.over_threads(lambda t: sum_rows(parts, parts[0], t))


def sum_rows(parts, out, t: int) -> None:
    """Share t (:func:`parallel.share`) of out's rows = parts[0] + parts[1] + ... in that
    order, element by element (out may be parts[0]); an array under MIN_SIZE elements is
    all share 0's. For a caller that runs the shares itself (the partial weight gradients
    of a convolution's runs, ``parallel.after_queue(shared=True)``)."""
    n = out.shape[0]
    lo, hi = parallel.share(n, t) if out.size >= MIN_SIZE else (0, n if t == 0 else 0)
    if lo == hi:
        return
    s = slice(lo, hi)
    if len(parts) == 1:
        np.copyto(out[s], parts[0][s])
        return
    np.add(parts[0][s], parts[1][s], out=out[s])
    for part in parts[2:]:
        np.add(out[s], part[s], out=out[s])


def copy(a):
    """A C-contiguous copy of a."""
    if _small(a):
        return a.copy()
    out = np.empty(a.shape, dtype=a.dtype)
    parallel.over_images(a.shape[0], lambda s: np.copyto(out[s], a[s]))
    return out


def concat(xs, axis: int):
    """np.concatenate(xs, axis) for axis >= 1: each run of images copies its slice of every
    input into its slice of the output."""
    shape = list(xs[0].shape)
    shape[axis] = sum(x.shape[axis] for x in xs)
    out = np.empty(shape, dtype=np.result_type(*xs))
    if _small(out) or axis == 0:
        parallel.sync()
        return np.concatenate(xs, axis=axis, out=out)
    bounds = np.cumsum([0] + [x.shape[axis] for x in xs])

    def body(s):
        index = [s] + [slice(None)] * (out.ndim - 1)
        for x, lo, hi in zip(xs, bounds[:-1], bounds[1:]):
            index[axis] = slice(lo, hi)
            out[tuple(index)] = x[s]
    parallel.over_images(out.shape[0], body, queue=True)
    return out


def matmul_spans(m: int, k: int, n: int) -> tuple[bool, list]:
    """How :func:`matmul` splits (M, K) @ (K, N): (by columns, [(lo, hi), ...] one per run),
    a single span when it runs whole on the calling thread."""
    if parallel.threads() == 1 or max(m * k, k * n, m * n) < MIN_SIZE or max(m, n) < 2:
        return False, [(0, m)]
    by_columns = n >= 8 * m
    size = n if by_columns else m
    runs = min(size, 2 * parallel.threads())
    return by_columns, [(size * i // runs, size * (i + 1) // runs) for i in range(runs)]


def matmul(a, b, independent: bool = False):
    """a (M, K) @ b (K, N), the M rows of the result in runs on the threads (single-threaded
    BLAS on each), or its N columns where the result is much wider than tall, N >= 8 M (the
    Winograd filter transform's (36, 9) @ (9, O*C): 1.5-2.2x the row split, whose runs all
    read all of b; a linear layer's (1000, 8) @ (8, 1024) weight gradient is 1.45x faster
    by rows).
    Unlike the functions above, the last bit may differ from one whole GEMM's: BLAS may pick
    other kernels for the smaller products. ``independent``: a and b are nothing a pipeline
    has queued (:func:`parallel.pipeline`), e.g. weights, so the product need not wait."""
    return matmuls([(a, b)], independent)[0]


def matmuls(products, independent: bool = False) -> list:
    """[a @ b for a, b in products], each split as :func:`matmul` splits it (so the same
    bits), all in one pool call: the threads take the products' runs as they come free (a
    linear layer's input and weight gradients: one hand-off to the pool instead of two)."""
    outs, work = [], []
    for a, b in products:
        m, n = a.shape[0], b.shape[1]
        out = np.empty((m, n), dtype=np.result_type(a, b))
        by_columns, spans = matmul_spans(m, a.shape[1], n)
        outs.append(out)
        work += [(a, b, out, by_columns, lo, hi) for lo, hi in spans]
    if len(work) == 1:
        a, b, out = work[0][:3]
        if not independent:
            parallel.sync()
        gemm.matmul(a, b, out=out)
        return outs

    def body(items):
        for a, b, out, by_columns, lo, hi in items:
            if by_columns:
                gemm.matmul(a, b[:, lo:hi], out=out[:, lo:hi])
            else:
                gemm.matmul(a[lo:hi], b, out=out[lo:hi])
    parallel.run(body, work, blas=True, groups=len(work), independent=independent)
    return outs
