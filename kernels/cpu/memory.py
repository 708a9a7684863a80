"""Keep freed memory in the process, so that a training step's large arrays reuse pages
instead of asking the kernel for new ones every step.

glibc's malloc hands out requests above its *mmap threshold* as fresh ``mmap`` regions and
unmaps them on ``free``. The threshold adapts to the sizes freed, but only up to 32 MiB on
64-bit Linux, and GoogLeNet's activations at batch 32 on 224x224 images are larger (conv1's
output is 103 MB, conv2's 77 MB). Each step then began with the kernel faulting in and
zeroing those arrays again (transparent huge pages: each fault zeroes 2 MB): in steps 3 to
11 of runs on a 2-core machine, 0.07 to 0.63 s of system time per training step on average
and up to 1 s in one step, where batch 8 (all arrays under 32 MiB) had none in steady state.
With the mmap threshold and the trim threshold (memory returned from the heap's top) raised
to 1 GiB, freed arrays stay in the heap for the next step: 0.08 to 0.11 s per step on
average over the same steps, and most steps after the fourth had no fault at all.
The peak resident set is about the same (the same arrays are alive at the peak); memory
freed stays with the process until it exits.

:func:`keep_freed_memory` is called by the first :func:`kernels.cpu.parallel.run` (the
first layer on the CPU kernels). ``GOOGLENET_KEEP_MEMORY=0`` leaves malloc's defaults.
Elsewhere than glibc it does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

M_TRIM_THRESHOLD = -1     # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
THRESHOLD = 1 << 30

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB, once; True when they were set."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("GOOGLENET_KEEP_MEMORY", "1").strip() == "0":
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.restype, mallopt.argtypes = ctypes.c_int, [ctypes.c_int, ctypes.c_int]
    _done = bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD,
                                                                       THRESHOLD))
    return _done
