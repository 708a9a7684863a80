"""CPU kernels in Numba for the loops NumPy runs slowly: im2col/col2im, the convolution's
bias + ReLU epilogue and ReLU-mask prologue, Winograd transforms, max pooling with its
argmax, average pooling, LRN, and the SGD update.

The layers call these on NumPy arrays and keep their plain NumPy code as the reference path
(CuPy arrays never come here). Each module ends with the whole-batch functions the layers
call (``conv.conv2d``, ``pool.max_pool2d``, ``lrn.lrn`` and their ``*_backward``), which share
the batch out over the threads. Modules:

* ``conv``      -- the convolution chunk by chunk: im2col / col2im over a chunk of images,
  epilogue and prologue of the GEMMs; conv1's kind band by band, with its 3x3/2 max pool
  on each band while it is in cache (``conv2d_max_pool``);
* ``winograd``  -- Winograd F(2x2, 3x3), F(4x4, 3x3) and F(4x4, 5x5) transforms, for the 3x3
  and 5x5 convolutions where faster;
* ``pool``      -- max pooling (maximum and winning tap; GoogLeNet's 3x3/1 and 3x3/2 pools
  over all of a run's planes at once, with a gather backward for 3x3/1; other windows
  plane by plane over -inf padded planes, backward by scatter) and average pooling;
* ``lrn``       -- cross-channel LRN forward and backward in one pass each;
* ``sgd``       -- ``engine.SGD``'s and ``engine.Adam``'s updates in one pass per parameter;
* ``loops``     -- the copy/add/zero loops they share (unsigned indices, so they vectorise);
* ``arrays``    -- whole-array NumPy work the main thread would otherwise do alone (gradient
  sums and copies, concatenation, the linear layers' GEMMs), in slices on the pool;
* ``gemm``      -- the matrix products: MKL's sequential SGEMM where the ``mkl`` package is
  installed (``GOOGLENET_BLAS``; called from compiled code), NumPy's BLAS otherwise, one
  thread per product;
* ``parallel``  -- the thread pool: whole images per thread, OpenBLAS on one thread;
* ``memory``    -- keeps freed memory in the process (glibc's mmap threshold), so large
  arrays reuse pages from step to step;
* ``workspace`` -- per-thread buffers reused from call to call instead of reallocated;
* ``tiled``     -- a register-tiled matrix product of our own (vector code written in LLVM's
  IR): the F(4x4, 3x3) layers' products inside ``winograd.forward_f4``, timed by the lab
  beside BLAS's;
* ``lab``       -- first versions beside the promoted ones, validated and timed
  (``python -m kernels.cpu.lab``).

Every kernel is ``@njit(cache=True, nogil=True)``: compiled on its first call (not at import)
and cached on disk, so later processes load machine code instead of compiling again. Numba
checks only the file that defines a cached function: after editing ``loops`` or ``tiled``,
whose functions the others compile into their own, delete ``kernels/cpu/__pycache__``. The
kernels themselves are serial; ``parallel`` runs them on several images at once, each thread
writing only its own images, so there are no atomics and the results are deterministic.
On CPUs with AVX-512 they are compiled for 512-bit vectors (:func:`_wide_vectors`; LLVM
would pick 256-bit ones on Intel's).

Which ops use them is decided in one place, ``layers.dispatch``: a layer takes its kernel
when :func:`available` (Numba importable), unless ``GOOGLENET_KERNELS=plain`` or
``layers.dispatch.use("plain")`` asks for the plain NumPy path, which is how the tests compare
the two. ``docs/performance_cpu.md`` has the measurements.
"""
from __future__ import annotations

import os

_numba_ok: bool | None = None


def _wide_vectors() -> None:
    """Let LLVM give the kernels' loops 512-bit vectors on CPUs with AVX-512.

    LLVM tunes Intel's AVX-512 CPUs (Skylake-X to Sapphire Rapids) to prefer 256-bit vectors,
    and Numba compiles for the host's tuning, so there every loop here ran on half-width
    vectors; AMD's Zen 4 already got 512-bit ones. Adding ``-prefer-256-bit`` to the target
    features Numba compiles with: batch-8 training steps 1.030x on a 2-core Intel Xeon
    (16 pairs of processes, quartiles 1.015-1.045; 1.013x over 24 earlier pairs;
    ``docs/performance_cpu.md``, "Seventeenth round"), the built-in run's curve the same to
    the digit (the kernels' loops reorder no sums but the float64 bias-gradient sums).

    Numba fixes its target once per process, when it first compiles or decorates, so this
    runs when the package is imported, before any kernel module. It does nothing when
    ``NUMBA_CPU_FEATURES`` or ``GOOGLENET_WIDE_VECTORS=0`` is set, when Numba is missing,
    or when something else in the process has already set Numba's target up."""
    if os.environ.get("GOOGLENET_WIDE_VECTORS", "1") == "0" or os.environ.get("NUMBA_CPU_FEATURES"):
        return
    try:
        import llvmlite.binding as llvm
        from numba.core import config, registry
    except Exception:  # ImportError, or a broken LLVM install: the plain paths remain
        return
    if config.CPU_FEATURES is not None or "_toplevel_target_context" in vars(registry.cpu_target):
        return
    try:
        features = llvm.get_host_cpu_features().flatten()
    except RuntimeError:  # LLVM cannot read this CPU's features: leave Numba's default
        return
    if "+avx512f" in features.split(","):
        config.CPU_FEATURES = features + ",-prefer-256-bit"


_wide_vectors()


def available() -> bool:
    """True when Numba imports (and so the kernels can compile)."""
    global _numba_ok
    if _numba_ok is None:
        try:
            import numba  # noqa: F401
            _numba_ok = True
        except Exception:  # ImportError, or a broken LLVM install
            _numba_ok = False
    return _numba_ok
