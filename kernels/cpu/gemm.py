"""The CPU kernels' matrix products, C = A @ B on the calling thread: by Intel's MKL
(``cblas_sgemm``, sequential) when the ``mkl`` package is installed, else by NumPy's
``matmul`` (the BLAS NumPy was built with: OpenBLAS for NumPy's wheels).

Each product is single-threaded: the pool (:mod:`kernels.cpu.parallel`) gives each of its
threads its own images or rows, so the BLAS must not start threads of its own.

Why MKL where it is there: on the step's own shapes (``python -m kernels.cpu.lab --only
gemm``: one thread, warm operands, the AVX-512 kernels of both libraries) MKL's SGEMM ran
1.02-1.45x OpenBLAS's rate: conv1's band (64, 147) @ (147, 2016) 1.13x and its weight
gradient 1.45x, conv2's Winograd gradient products 1.19x and 1.34x, a 28x28 1x1 layer's
(320, 256) @ (256, 3136) 1.15x; whole training steps 1.065x at batch 8 and 1.116x at batch
32 (``docs/performance_cpu.md``, ninth round). PyTorch's CPU build uses MKL for its own
products. Both libraries compute the same sums in other orders, so results agree to
float32 rounding (the tests compare each path with a float64 product).

One kind of product stays on NumPy's BLAS: a result of more than ``LARGE_OUT`` bytes
(16 MiB). conv2's Winograd forward writes 36 x (192, 784) floats (21.7 MB) per 4-image
chunk from products with only 64 terms each; there MKL's stores into a C that is not in
the cache ran at 0.5-0.6x OpenBLAS's rate (which first zero-fills C with fast streaming
stores), 26 against 14 thread-ms a step at batch 8, while on every other product of the step
it was as fast or faster.

``GOOGLENET_BLAS=numpy`` (or :func:`use` ``("numpy")``) keeps every product on NumPy;
``mkl`` insists on MKL (an error if it cannot be loaded); ``auto`` (the default) uses MKL
when it loads and the CPU is Intel's (the only kind it was measured on).

Layouts: A and B may each be a row-major matrix with any row stride or the transpose of one
(``x.T`` of a C-contiguous array, a column slice of one); C must have unit column stride.
A stack of matrices ``(count, M, K) @ (count, K, N)`` whose matrices lie a fixed distance
apart in each operand is one ``cblas_?gemm_batch_strided`` call. Anything else (other
dtypes, other strides, broadcasting) goes to NumPy.
"""
from __future__ import annotations

import ctypes
import os
import sys

import numpy as np

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_MKL_THREADING_SEQUENTIAL = 1

CHOICES = ("auto", "mkl", "numpy")
_choice = os.environ.get("GOOGLENET_BLAS", "auto").strip().lower() or "auto"
if _choice not in CHOICES:
    raise ValueError(f"GOOGLENET_BLAS must be one of {', '.join(CHOICES)}, not {_choice!r}")
_mkl = None          # the loaded library's functions, or False once loading failed
_load_error = ""
LARGE_OUT = 16 << 20


def _candidates():
    """Where the ``mkl`` wheel puts libmkl_rt (its data files go to <prefix>/lib)."""
    names = ("libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so", "libmkl_rt.dylib")
    dirs = []
    try:
        from importlib import metadata
        for f in metadata.distribution("mkl").files or ():
            if os.path.basename(str(f)).startswith(("libmkl_rt.", "mkl_rt.")):
                yield os.path.normpath(str(f.locate()))
    except Exception:       # no mkl distribution: look in the usual places
        pass
    for prefix in (sys.prefix, sys.base_prefix, os.environ.get("CONDA_PREFIX", "")):
        if prefix:
            dirs += [os.path.join(prefix, "lib"), os.path.join(prefix, "Library", "bin")]
    for d in dirs:
        for name in names:
            yield os.path.join(d, name)


class _Mkl:
    """ctypes bindings of the products used (plain and batched, float32 and float64), with
    their argument types fixed; MKL set to its sequential layer, one thread."""

    def __init__(self, lib):
        lib.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
        lib.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL)
        lib.MKL_Set_Num_Threads.argtypes = [ctypes.c_int]
        lib.MKL_Set_Num_Threads(1)
        i, p = ctypes.c_int, ctypes.c_void_p
        lp = ctypes.c_longlong
        self.gemm, self.batch = {}, {}
        for dtype, letter, real in ((np.float32, "s", ctypes.c_float),
                                    (np.float64, "d", ctypes.c_double)):
            g = getattr(lib, f"cblas_{letter}gemm")
            g.argtypes = [i, i, i, i, i, i, real, p, i, p, i, real, p, i]
            g.restype = None
            b = getattr(lib, f"cblas_{letter}gemm_batch_strided")
            b.argtypes = [i, i, i, lp, lp, lp, real, p, lp, lp, p, lp, lp, real, p, lp, lp,
                          lp]
            b.restype = None
            self.gemm[np.dtype(dtype)] = g
            self.batch[np.dtype(dtype)] = b


def _intel_cpu() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            return "GenuineIntel" in f.read(4096)
    except OSError:
        import platform
        return "intel" in platform.processor().lower()


def _open():
    """The loaded library's bindings, or False (``_load_error`` says why)."""
    global _load_error
    if _choice == "auto" and not _intel_cpu():
        _load_error = "not an Intel CPU (GOOGLENET_BLAS=mkl loads it anyway)"
        return False
    for path in _candidates():
        if not os.path.exists(path):
            continue
        try:
            return _Mkl(ctypes.CDLL(path))
        except (OSError, AttributeError) as e:
            _load_error = f"{path}: {e}"
    if not _load_error:
        _load_error = "the mkl package is not installed (pip install mkl)"
    return False


def _load():
    """MKL's bindings, or False; an error when GOOGLENET_BLAS=mkl and MKL is not there."""
    global _mkl
    if _mkl is None:
        _mkl = _open()
    if not _mkl and _choice == "mkl":
        raise RuntimeError(f"GOOGLENET_BLAS=mkl, but MKL could not be loaded: {_load_error}")
    return _mkl


def use(choice: str) -> None:
    """Choose the library for the products that follow: 'auto', 'mkl' or 'numpy'."""
    global _choice, _mkl
    if choice not in CHOICES:
        raise ValueError(f"GOOGLENET_BLAS must be one of {', '.join(CHOICES)}, not {choice!r}")
    previous, _choice = _choice, choice
    if choice == "mkl":
        if not _mkl:
            _mkl = None                     # try again, whatever the CPU
        try:
            _load()
        except RuntimeError:
            _choice = previous
            raise


def choice() -> str:
    """What :func:`use` (or ``GOOGLENET_BLAS``) chose: 'auto', 'mkl' or 'numpy'."""
    return _choice


def library() -> str:
    """'mkl' or 'numpy': what the products run on now."""
    return "mkl" if _choice != "numpy" and _load() else "numpy"


def _layout(x, rows, cols, size):
    """(transposed, leading dimension) of a (rows, cols) matrix x as BLAS sees it, or None
    when neither its rows nor its columns are contiguous."""
    s0, s1 = x.strides[-2], x.strides[-1]
    if (s1 == size or cols == 1) and s0 % size == 0:
        ld = s0 // size if rows > 1 else cols
        if ld >= max(1, cols):
            return _NO_TRANS, ld
    if (s0 == size or rows == 1) and s1 % size == 0:
        ld = s1 // size if cols > 1 else rows
        if ld >= max(1, rows):
            return _TRANS, ld
    return None


def matmul(a, b, out):
    """out[...] = a @ b and return out: a (M, K), b (K, N), out (M, N), or stacks of them
    (count, M, K) @ (count, K, N) -> (count, M, N); out is never read and may not overlap
    a or b."""
    mkl = _mkl if _mkl is not None else _load()
    if not mkl and _choice == "mkl":
        _load()                             # the error saying why MKL is not there
    if not mkl or _choice == "numpy":
        return np.matmul(a, b, out=out)
    dtype = out.dtype
    fn = mkl.gemm.get(dtype)
    if (fn is None or a.dtype != dtype or b.dtype != dtype or a.ndim != out.ndim
            or b.ndim != out.ndim or out.ndim not in (2, 3)):
        return np.matmul(a, b, out=out)
    m, k = a.shape[-2:]
    n = b.shape[-1]
    if out.nbytes > LARGE_OUT:
        return np.matmul(a, b, out=out)
    if (b.shape[-2] != k or out.shape[-2:] != (m, n) or out.strides[-1] != dtype.itemsize
            or min(m, n, k) == 0 or not out.flags.writeable):
        return np.matmul(a, b, out=out)
    size = dtype.itemsize
    la, lb = _layout(a, m, k, size), _layout(b, k, n, size)
    ldc = out.strides[-2] // size if m > 1 else n
    if (la is None or lb is None or out.strides[-2] % size or ldc < n
            or np.may_share_memory(out, a) or np.may_share_memory(out, b)):
        return np.matmul(a, b, out=out)
    pa, pb, pc = a.ctypes.data, b.ctypes.data, out.ctypes.data
    if out.ndim == 2:
        fn(_ROW_MAJOR, la[0], lb[0], m, n, k, 1.0, pa, la[1], pb, lb[1], 0.0, pc, ldc)
        return out
    count = out.shape[0]
    if a.shape[0] != count or b.shape[0] != count:
        return np.matmul(a, b, out=out)
    strides = [x.strides[0] for x in (a, b, out)]
    if any(s % size or s < 0 for s in strides):
        return np.matmul(a, b, out=out)
    sa, sb, sc = (s // size for s in strides)
    mkl.batch[dtype](_ROW_MAJOR, la[0], lb[0], m, n, k, 1.0, pa, la[1], sa, pb, lb[1], sb,
                     0.0, pc, ldc, sc, count)
    return out
