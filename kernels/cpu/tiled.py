"""A matrix product of our own, register-tiled: the products of the F(4x4, 3x3) layers
(:func:`kernels.cpu.winograd.forward_f4`, called from its compiled loop over bands), and in
the kernel lab (``python -m kernels.cpu.lab --only gemm``) beside OpenBLAS.

out (M, N) = a (M, K) @ b (K, N), float32, or stacks of them. The product is cut into tiles
of MR = 8 rows by NR = 32 columns. A tile's 8 x 32 sums stay in 16 vector registers of 16
floats for the whole of K; per step p of K:

    b0, b1 = b[p, j0:j0+16], b[p, j0+16:j0+32]          two vector loads
    for i in 0..7:   s = broadcast(a[i0+i, p])           one value to all 16 lanes
                     acc[i][0] += s * b0; acc[i][1] += s * b1     fused multiply-adds

16 multiply-adds for 2 loads and 8 broadcasts, the ratio that keeps the FMA units busy.
After K steps the tile is stored once. The last tile of a row of tiles takes the 17-32
columns left with its second vector masked to the columns there are (N = 49: two tiles),
or 1-16 columns in one masked vector; rows left over at the bottom (M not a multiple of 8)
go one at a time. ``a`` may have any strides (each a[i, p]
is read alone and broadcast); ``b``'s and ``out``'s rows must be contiguous.

Numba has no vector type, so the tile is written in LLVM's IR inside a Numba intrinsic:
``<16 x float>`` loads and stores, ``llvm.fma``, ``llvm.masked.load``/``store`` for the
last vector. LLVM maps a 16-float vector onto one AVX-512 register, two AVX2 ones, or
four SSE/NEON ones, so the code runs on any CPU; it is fast where there are 32 vector
registers for the tile (AVX-512).

What the lab shows (``docs/performance_cpu.md``, fourteenth round; one thread, a 2-core AMD
EPYC, Zen 4, whose timings move by 20% from run to run): on a single warm product of the
Winograd shapes the tiles run at 0.9-1.2x OpenBLAS's rate (OpenBLAS copies both operands
into its own layout, "packing", on every call; the tiles read them where they are); on the
stacks of 16 and 36 products, whose operands come from L3 and memory as in a training step,
0.73-1.68x over three runs; on the large 1x1 products, which OpenBLAS blocks for the
cache, 0.78-1.09x. Called product by product from Python inside training steps they ran at
OpenBLAS's rate. Inside the F(4x4, 3x3) layers' compiled loop, each block of 64 output
channels' 36 products followed at once by their output transform while in cache, the
layers' calls ran 1.05-1.23x the transforms around OpenBLAS (sixteenth round).
"""
from __future__ import annotations

import functools

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

MR, NR = 8, 32                      # a tile's rows and columns (NR: two vectors of 16)
_LANES = 16

_F32 = ir.FloatType()
_VEC = ir.VectorType(_F32, _LANES)
_I32, _I64 = ir.IntType(32), ir.IntType(64)
_MASK = ir.VectorType(ir.IntType(1), _LANES)


def _intrinsics(builder):
    """llvm.fma, llvm.masked.load and llvm.masked.store on <16 x float>."""
    mod, ptr = builder.module, _VEC.as_pointer()
    fma = cgutils.get_or_insert_function(
        mod, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]), "llvm.fma.v16f32")
    load = cgutils.get_or_insert_function(
        mod, ir.FunctionType(_VEC, [ptr, _I32, _MASK, _VEC]),
        "llvm.masked.load.v16f32.p0v16f32")
    store = cgutils.get_or_insert_function(
        mod, ir.FunctionType(ir.VoidType(), [_VEC, ptr, _I32, _MASK]),
        "llvm.masked.store.v16f32.p0v16f32")
    return fma, load, store


def _splat(builder, value, vec_type):
    """A vector of ``vec_type`` with ``value`` in every lane."""
    undef = ir.Constant(vec_type, ir.Undefined)
    first = builder.insert_element(undef, value, _I32(0))
    zeros = ir.Constant(ir.VectorType(_I32, _LANES), [0] * _LANES)
    return builder.shuffle_vector(first, undef, zeros)


@functools.lru_cache(maxsize=None)
def _tile(rows: int, vectors: int):
    """An intrinsic tile(a, b, out, i0, j0, r): out[i0:i0+rows, j0:j0+16*vectors] =
    a[i0:i0+rows, :] @ b[:, same columns], of which the last vector keeps its first r lanes
    (r = 16: all of them)."""

    @intrinsic
    def tile(typingctx, a, b, out, i0, j0, r):
        sig = types.void(a, b, out, types.int64, types.int64, types.int64)

        def codegen(context, builder, signature, args):
            arrays = [context.make_array(t)(context, builder, v)
                      for t, v in zip(signature.args[:3], args[:3])]
            i0, j0, r = args[3:]
            size = _I64(4)
            a_row, a_col = (builder.sdiv(s, size)
                            for s in cgutils.unpack_tuple(builder, arrays[0].strides))
            ld_b, ld_out = (builder.sdiv(cgutils.unpack_tuple(builder, x.strides)[0], size)
                            for x in arrays[1:])
            k = cgutils.unpack_tuple(builder, arrays[0].shape)[1]
            a_data, b_data, out_data = (x.data for x in arrays)
            fma, masked_load, masked_store = _intrinsics(builder)
            lanes = ir.Constant(ir.VectorType(_I32, _LANES), list(range(_LANES)))
            mask = builder.icmp_unsigned(
                "<", lanes, _splat(builder, builder.trunc(r, _I32), ir.VectorType(_I32, _LANES)))
            zero = ir.Constant(_VEC, [0.0] * _LANES)

            def vector_at(data, index):
                return builder.bitcast(builder.gep(data, [index]), _VEC.as_pointer())

            # the sums, one alloca per vector: LLVM keeps each in a register
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)]
                   for _ in range(rows)]
            with cgutils.for_range(builder, k) as loop:
                p = loop.index
                b_row = builder.add(builder.mul(p, ld_b), j0)
                bv = []
                for v in range(vectors):
                    at = vector_at(b_data, builder.add(b_row, _I64(_LANES * v)))
                    bv.append(builder.call(masked_load, [at, _I32(4), mask, zero])
                              if v == vectors - 1 else builder.load(at, align=4))
                a_at = builder.add(builder.mul(i0, a_row), builder.mul(p, a_col))
                for i in range(rows):
                    at = builder.add(a_at, builder.mul(_I64(i), a_row))
                    s = _splat(builder, builder.load(builder.gep(a_data, [at])), _VEC)
                    for v in range(vectors):
                        total = builder.call(fma, [s, bv[v], builder.load(acc[i][v])])
                        builder.store(total, acc[i][v])
            for i in range(rows):
                out_row = builder.add(builder.mul(builder.add(i0, _I64(i)), ld_out), j0)
                for v in range(vectors):
                    at = vector_at(out_data, builder.add(out_row, _I64(_LANES * v)))
                    value = builder.load(acc[i][v])
                    if v == vectors - 1:
                        builder.call(masked_store, [value, at, _I32(4), mask])
                    else:
                        builder.store(value, at, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


_FULL, _EDGE = _tile(MR, NR // _LANES), _tile(MR, 1)           # 8 x 32, 8 x (<= 16)
_ROW_FULL, _ROW_EDGE = _tile(1, NR // _LANES), _tile(1, 1)     # the rows past the last 8


@njit(cache=True, nogil=True, inline="always")
def _row_of_tiles(a, b, out, i0, eight):
    """Output rows i0 .. i0+7 (``eight``) or row i0 alone, all N columns: tiles of 32
    columns, the last one of 17-32 with its second vector masked, or of 1-16."""
    n = out.shape[1]
    j0 = 0
    while j0 + 16 < n:
        if eight:
            _FULL(a, b, out, i0, j0, min(16, n - j0 - 16))
        else:
            _ROW_FULL(a, b, out, i0, j0, min(16, n - j0 - 16))
        j0 += NR
    if j0 < n:
        if eight:
            _EDGE(a, b, out, i0, j0, n - j0)
        else:
            _ROW_EDGE(a, b, out, i0, j0, n - j0)


@njit(cache=True, nogil=True)
def product(a, b, out):
    """out (M, N) = a (M, K) @ b (K, N), for compiled callers
    (:func:`kernels.cpu.winograd.forward_f4`); :func:`matmul` checks the arguments."""
    m = out.shape[0]
    full_rows = m - m % MR
    for i0 in range(0, full_rows, MR):
        _row_of_tiles(a, b, out, i0, True)
    for i in range(full_rows, m):
        _row_of_tiles(a, b, out, i, False)


@njit(cache=True, nogil=True)
def _products(a, b, out):
    for q in range(out.shape[0]):
        product(a[q], b[q], out[q])


def matmul(a, b, out):
    """out[...] = a @ b and return out: a (M, K), b (K, N), out (M, N), or stacks of them
    (count, M, K) @ (count, K, N) -> (count, M, N); float32, b's and out's rows contiguous
    (a any strides), out not overlapping a or b."""
    if not (a.dtype == b.dtype == out.dtype == np.float32):
        raise TypeError(f"tiled.matmul takes float32 arrays, got {a.dtype}, {b.dtype}, "
                        f"{out.dtype}")
    if not (a.ndim == b.ndim == out.ndim and out.ndim in (2, 3)):
        raise ValueError(f"tiled.matmul takes 2-D or 3-D arrays, got {a.shape}, {b.shape}, "
                         f"{out.shape}")
    if (a.shape[:-2] != out.shape[:-2] or b.shape[:-2] != out.shape[:-2]
            or a.shape[-1] != b.shape[-2] or out.shape[-2:] != (a.shape[-2], b.shape[-1])):
        raise ValueError(f"tiled.matmul: shapes {a.shape} @ {b.shape} -> {out.shape} "
                         "do not match")
    if not out.flags.writeable or np.may_share_memory(out, a) or np.may_share_memory(out, b):
        raise ValueError("tiled.matmul: out must be writeable and not overlap a or b")
    if out.size == 0:
        return out
    if a.shape[-1] == 0:
        out[...] = 0
        return out
    for name, x in (("a", a), ("b", b), ("out", out)):
        misaligned = any(s % 4 for s in x.strides)
        if misaligned or (name != "a" and x.shape[-1] > 1 and x.strides[-1] != 4):
            raise ValueError(f"tiled.matmul: {name}'s rows must be contiguous float32 "
                             f"(strides {x.strides})")
    (product if out.ndim == 2 else _products)(a, b, out)
    return out
