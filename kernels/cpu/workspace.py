"""Scratch buffers reused across calls: the im2col columns of one chunk of images, the GEMM
result before its epilogue, the masked output gradient of a chunk.

``get(slot, shape, dtype)`` returns a view of a flat buffer kept per (thread, slot, dtype)
that only ever grows, so a training step allocates no new column matrices after the first
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
        with _lock:
            _all.append(bufs)
    return bufs


def get(slot: str, shape, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    size = math.prod(shape)
    bufs = _buffers()
    buf = bufs.get((slot, dtype))
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype=dtype)
        bufs[(slot, dtype)] = buf
    return buf[:size].reshape(shape)


def nbytes() -> int:
    """Bytes held by all threads' workspaces."""
    with _lock:
        return sum(b.nbytes for bufs in _all for b in bufs.values())


def release() -> None:
    """Free every buffer (the next call allocates again)."""
    with _lock:
        for bufs in _all:
            bufs.clear()
