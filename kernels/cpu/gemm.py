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
import threading

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_MKL_THREADING_SEQUENTIAL = 1

CHOICES = ("auto", "mkl", "numpy")
_choice = os.environ.get("GOOGLENET_BLAS", "auto").strip().lower() or "auto"
if _choice not in CHOICES:
    raise ValueError(f"GOOGLENET_BLAS must be one of {', '.join(CHOICES)}, not {_choice!r}")
_mkl = None          # the loaded library's functions, or False once loading failed
_load_error = ""
_load_lock = threading.Lock()
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
    """The addresses of the products used, ``cblas_?gemm`` and ``cblas_?gemm_batch_strided``
    for float32 and float64 (``fns[dtype]``: (plain, batched, 1 and 0 in that dtype)); MKL
    set to its sequential layer, one thread."""

    def __init__(self, lib):
        lib.MKL_Set_Threading_Layer.argtypes = [ctypes.c_int]
        lib.MKL_Set_Threading_Layer(_MKL_THREADING_SEQUENTIAL)
        lib.MKL_Set_Num_Threads.argtypes = [ctypes.c_int]
        lib.MKL_Set_Num_Threads(1)
        self.fns = {}
        for dtype, letter in ((np.float32, "s"), (np.float64, "d")):
            plain, batched = (ctypes.cast(getattr(lib, f"cblas_{letter}gemm{suffix}"),
                                          ctypes.c_void_p).value
                              for suffix in ("", "_batch_strided"))
            self.fns[np.dtype(dtype)] = (plain, batched, dtype(1), dtype(0))
        _compile_product()


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
        with _load_lock:                    # the pool's threads may ask at once
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


# ------------------------------------------------------------------ the call, in Numba
# The products are called from compiled code: a ctypes call with its arguments converted,
# and the three ``.ctypes.data`` that find the arrays, cost 6.8 microseconds of Python (under
# the GIL) around each product, 643 products a batch-8 training step; a Numba function takes
# the arrays in 0.3. MKL is reached through the function's address, an argument, so that the
# compiled code can be cached on disk. Integer arguments are passed as 64-bit values:
# right for MKL's 32-bit (LP64) interface and its 64-bit one (ILP64) alike on x86-64, where
# each takes a whole register or stack slot and the callee reads its low half.
@intrinsic
def _call(typingctx, fn, args, alpha, beta):
    """The C function at address ``fn`` called with the tuple ``args`` of integers (addresses
    included), with ``alpha`` and ``beta`` (the data's float type) inserted where
    cblas_?gemm and cblas_?gemm_batch_strided take them: after the first six integers
    (layout, transposes, M, N, K) and after B's (two for the plain product, B and ldb;
    three for the batched one, with B's stride)."""
    if not (isinstance(args, types.BaseTuple) and len(args) in (12, 16)
            and all(isinstance(t, types.Integer) for t in args) and alpha == beta
            and isinstance(alpha, types.Float)):
        return None
    beta_at = 10 if len(args) == 12 else 13

    def codegen(context, builder, signature, call_args):
        ints = [context.cast(builder, builder.extract_value(call_args[1], j), t, types.int64)
                for j, t in enumerate(signature.args[1])]
        values = ints[:6] + [call_args[2]] + ints[6:beta_at] + [call_args[3]] + ints[beta_at:]
        fnty = ir.FunctionType(ir.VoidType(), [v.type for v in values])
        builder.call(builder.inttoptr(call_args[0], fnty.as_pointer()), values)
        return context.get_dummy_value()
    return types.void(fn, args, alpha, beta), codegen


@njit(cache=True, nogil=True, inline="always")
def _blas_layout(s0, s1, rows, cols, size):
    """(transposed, leading dimension) of a (rows, cols) matrix with strides (s0, s1) bytes
    as BLAS sees it, or (0, 0) when neither its rows nor its columns are contiguous."""
    if (s1 == size or cols == 1) and s0 % size == 0:
        ld = s0 // size if rows > 1 else cols
        if ld >= max(1, cols):
            return _NO_TRANS, ld
    if (s0 == size or rows == 1) and s1 % size == 0:
        ld = s1 // size if cols > 1 else rows
        if ld >= max(1, rows):
            return _TRANS, ld
    return 0, 0


@njit(cache=True, nogil=True, inline="always")
def _bounds(x):
    """[lo, hi): the bytes x's elements span."""
    lo = hi = np.int64(x.ctypes.data)
    for i in range(x.ndim):
        span = (x.shape[i] - 1) * x.strides[i]
        if span < 0:
            lo += span
        else:
            hi += span
    return lo, hi + x.itemsize


def _signatures():
    """One compiled version per dtype and rank (compiled when MKL is loaded): any layout
    converts to a read-only 'A' array (the function reads only their shapes, strides and
    addresses) at 0.3 microseconds a call, where a version for each combination of layouts
    met in a step meant 15 compilations."""
    sigs = []
    for real in (types.float32, types.float64):
        for ndim in (2, 3):
            array = types.Array(real, ndim, "A", readonly=True)
            sigs.append(types.boolean(types.int64, types.int64, real, real, array, array, array,
                                      types.int64))
    return sigs


_compiled = False


def _compile_product() -> None:
    """Compile :func:`_product`'s versions (:func:`_signatures`; loaded from Numba's cache
    after the first time) once, when MKL is loaded rather than at import: only a process
    that uses MKL needs them. Every other layout then converts to these."""
    global _compiled
    if not _compiled:
        for signature in _signatures():
            _product.compile(signature)
        _product.disable_compile()
        _compiled = True


@njit(cache=True, nogil=True)
def _product(fn, batched, one, beta, a, b, out, large_out):
    """out = a @ b + beta out by MKL at ``fn`` (2-D) or ``batched`` (3-D stacks) (``one``: 1
    in the data's type; ``beta`` 0 or 1, out not read when 0) when BLAS can take
    the operands as they lie; False (nothing done) otherwise: an empty product, a result of
    more than ``large_out`` bytes, a layout BLAS has no name for, differing stack counts,
    out overlapping a or b."""
    size = out.itemsize
    m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
    if (b.shape[-2] != k or out.shape[-2] != m or out.shape[-1] != n or out.size == 0
            or min(m, n, k) == 0 or out.size * size > large_out or out.strides[-1] != size
            or out.strides[-2] % size):
        return False
    ta, lda = _blas_layout(a.strides[-2], a.strides[-1], m, k, size)
    tb, ldb = _blas_layout(b.strides[-2], b.strides[-1], k, n, size)
    ldc = out.strides[-2] // size if m > 1 else n
    if ta == 0 or tb == 0 or ldc < n:
        return False
    lo, hi = _bounds(out)
    for x_lo, x_hi in (_bounds(a), _bounds(b)):
        if x_lo < hi and lo < x_hi:
            return False
    pa, pb, pc = a.ctypes.data, b.ctypes.data, out.ctypes.data
    if out.ndim == 2:
        _call(fn, (_ROW_MAJOR, ta, tb, m, n, k, pa, lda, pb, ldb, pc, ldc), one, beta)
        return True
    count = out.shape[0]
    sa, sb, sc = a.strides[0], b.strides[0], out.strides[0]
    if (a.shape[0] != count or b.shape[0] != count or sa % size or sb % size or sc % size
            or sa < 0 or sb < 0 or sc < 0):
        return False
    _call(batched, (_ROW_MAJOR, ta, tb, m, n, k, pa, lda, sa // size, pb, ldb, sb // size,
                    pc, ldc, sc // size, count), one, beta)
    return True


def matmul(a, b, out, accumulate=False):
    """out[...] = a @ b and return out: a (M, K), b (K, N), out (M, N), or stacks of them
    (count, M, K) @ (count, K, N) -> (count, M, N); out may not overlap a or b and is not
    read, unless ``accumulate``: then out += a @ b (in the product itself on MKL, beta = 1:
    a running sum of products without a pass over the arrays to add each one)."""
    mkl = _mkl if _mkl is not None else _load()
    if not mkl and _choice == "mkl":
        _load()                             # the error saying why MKL is not there
    if mkl and _choice != "numpy":
        fns = mkl.fns.get(out.dtype)
        if (fns is not None and type(a) is np.ndarray and type(b) is np.ndarray
                and type(out) is np.ndarray and a.dtype == out.dtype and b.dtype == out.dtype
                and a.ndim == b.ndim == out.ndim and out.ndim in (2, 3)
                and out.flags.writeable
                and _product(fns[0], fns[1], fns[2], fns[2 if accumulate else 3], a, b, out,
                             LARGE_OUT)):
            return out
    if accumulate:
        out += np.matmul(a, b)
        return out
    return np.matmul(a, b, out=out)
