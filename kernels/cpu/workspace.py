"""Scratch buffers reused across calls: the im2col columns of one chunk of images, the GEMM
result before its epilogue, the masked output gradient of a chunk.

``get(slot, shape, dtype)`` returns a view of a flat buffer kept per (thread, slot, dtype)
that only ever grows (the same view object each time for the same shape: callers must not
reshape it in place), so a training step allocates no new column matrices after the first
one. A slot's content is valid until the same thread's next ``get`` of that slot: callers use
a buffer within one chunk of one layer call and never return it. Each of the pool's threads
(``parallel``) has its own buffers.
"""
from __future__ import annotations

import math
import threading

import numpy as np

_local = threading.local()
_all: list = []          # every thread's buffer dict, for nbytes() and release()
_lock = threading.Lock()


def _buffers() -> dict:
    bufs = getattr(_local, "buffers", None)
    if bufs is None:
        bufs = _local.buffers = {}
        _local.views = {}
        with _lock:
            _all.append((bufs, _local.views))
    return bufs


def get(slot: str, shape, dtype) -> np.ndarray:
    # The views handed out are kept per (slot, shape, dtype), so that a call a kernel makes
    # hundreds of times a step is one dictionary lookup. Python's own work costs several
    # times more inside a step than alone (the kernels' data has pushed the interpreter's
    # out of the caches): 4 microseconds a call here, 0.5 alone, when each call sliced and
    # reshaped a new view.
    try:
        return _local.views[slot, shape, dtype]
    except (AttributeError, KeyError, TypeError):    # TypeError: a shape given as a list
        return _new_view(slot, tuple(shape), dtype)


def _new_view(slot, shape, dtype) -> np.ndarray:
    bufs = _buffers()
    kind = np.dtype(dtype)
    size = math.prod(shape)
    buf = bufs.get((slot, kind))
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype=kind)
        bufs[(slot, kind)] = buf
        views = _local.views                  # the old buffer's views go with it
        for key in [key for key in views if key[0] == slot and np.dtype(key[2]) == kind]:
            del views[key]
    view = buf[:size].reshape(shape)
    _local.views[slot, shape, dtype] = view
    return view


def nbytes() -> int:
    """Bytes held by all threads' workspaces."""
    with _lock:
        return sum(b.nbytes for bufs, _ in _all for b in bufs.values())


def release() -> None:
    """Free every buffer (the next call allocates again)."""
    with _lock:
        for bufs, views in _all:
            bufs.clear()
            views.clear()
