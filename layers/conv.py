"""2-D convolution: im2col + GEMM, with a plain GEMM for 1x1 kernels.

Shapes: x (N, C, H, W), w (O, C, kh, kw), b (O,), y (N, O, OH, OW) with
``OH = (H + 2 pad - kh) // stride + 1``.

    y[n, o, p] = b[o] + sum_{c,i,j} w[o, c, i, j] * xpad[n, c, p_h*s + i, p_w*s + j]

With ``col = im2col(x)`` (C*kh*kw, N*OH*OW) and ``W = w.reshape(O, -1)``:

    forward          Y  = W @ col                      (O, N*OH*OW)
    backward weight  gW = gY @ col.T
    backward input   gx = col2im(W.T @ gY)
    backward bias    gb = gY summed over N*OH*OW

A 1x1 stride-1 unpadded convolution needs no im2col: ``x[n]`` viewed as
(C, H*W) already is ``col`` for image n (39 of GoogLeNet's 59 convolutions).

On CuPy arrays, the stride-1 "same" 1x1/3x3/5x5 float32 convolutions go to the
custom CUDA kernels of ``kernels.conv_cuda`` when it supports the shape; the
environment variable ``GOOGLENET_CONV_IMPL`` (or the ``impl`` argument) forces
"custom" or "im2col", and "auto" is the default.

On NumPy arrays, when ``kernels.cpu`` is enabled (the default; ``GOOGLENET_CPU_KERNELS=0``
or ``impl="im2col"`` gives the plain path above), the convolution runs chunk by chunk
(:meth:`Conv2dFunction._forward_cpu`), the chunks shared among threads
(``kernels.cpu.parallel``): ``g`` images at a time, so that one GEMM has at least
``COLUMNS_PER_GEMM`` columns (1x1: one image, ``x[n]`` itself), with

    col_c = im2col(x[n0:n0+g])            (C*kh*kw, g*OH*OW), a reused workspace
    Y_c   = W @ col_c                     (O, g*OH*OW); with g = 1 straight into y[n0]
    y[n0:n0+g] = relu(Y_c + b)            one Numba pass: bias, ReLU, (O, g, P) -> (g, O, P)

and backward likewise per chunk (ReLU mask and gather, gW += gY_c @ col_c.T,
gx[chunk] = col2im(W.T @ gY_c)). No batch-sized column matrix is ever built: the columns
of a chunk stay in cache between im2col and the GEMM, and the workspaces are reused.
"""
from __future__ import annotations

import os

import numpy as np

import kernels.cpu as cpu_kernels
from engine.backend import get_array_module, is_cupy_array
from engine.tensor import Function, Tensor

from ._check import check_float, check_rank
from .im2col import col2im, conv_out_size, im2col

IMPLS = ("auto", "custom", "im2col")
# CPU chunking: images per GEMM so that it has at least this many columns (output pixels).
# Larger GEMMs run closer to BLAS's peak; smaller chunks keep the columns in cache.
COLUMNS_PER_GEMM = 1024


def _select_impl(impl, x, w, stride, pad) -> str:
    """'custom' when the CUDA kernels should run this convolution, 'cpu' for the Numba
    kernels on NumPy arrays, else 'im2col' (the plain path)."""
    impl = impl or os.environ.get("GOOGLENET_CONV_IMPL", "auto")
    if impl not in IMPLS:
        raise ValueError(f"conv2d: impl must be one of {IMPLS}, got {impl!r}")
    if impl == "im2col":
        return "im2col"
    if not is_cupy_array(x):
        return "cpu" if cpu_kernels.enabled() else "im2col"
    from kernels import conv_cuda
    ok = x.dtype == "float32" and conv_cuda.supports(x.shape, w.shape, stride, pad)
    if impl == "custom" and not ok:
        raise ValueError(f"conv2d: the custom CUDA kernels do not support x {tuple(x.shape)}, "
                         f"w {tuple(w.shape)}, stride {stride}, pad {pad}, dtype {x.dtype}")
    return "custom" if ok else "im2col"


class Conv2dFunction(Function):
    """Convolution with optional bias and fused ReLU (``relu=True`` applies max(0, .))."""

    def __init__(self, stride: int = 1, pad: int = 0, relu: bool = False, impl: str | None = None):
        self.stride, self.pad, self.relu, self.impl = int(stride), int(pad), relu, impl

    def _validate(self, x, w, b):
        op = "conv2d"
        check_rank(op, "x", x, 4, "N, C, H, W")
        check_rank(op, "w", w, 4, "out, in, kh, kw")
        arrays = {"x": x, "w": w} if b is None else {"x": x, "w": w, "b": b}
        check_float(op, **arrays)
        if x.shape[1] != w.shape[1]:
            raise ValueError(f"conv2d: x has {x.shape[1]} channels but w expects {w.shape[1]} "
                             f"(x {tuple(x.shape)}, w {tuple(w.shape)})")
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise ValueError(f"conv2d: b must have shape ({w.shape[0]},), got {tuple(b.shape)}")
        if self.stride < 1 or self.pad < 0:
            raise ValueError(f"conv2d: stride must be >= 1 and pad >= 0, got {self.stride}, {self.pad}")
        h, wd = x.shape[2] + 2 * self.pad, x.shape[3] + 2 * self.pad
        if w.shape[2] > h or w.shape[3] > wd:
            raise ValueError(f"conv2d: kernel {w.shape[2]}x{w.shape[3]} is larger than the padded "
                             f"input {h}x{wd} (x {tuple(x.shape)}, pad {self.pad})")

    def forward(self, x, w, b=None):
        self._validate(x, w, b)
        xp = get_array_module(x)
        self.impl = _select_impl(self.impl, x, w, self.stride, self.pad)
        self.x, self.w, self.has_bias = x, w, b is not None
        if self.impl == "custom":
            from kernels import conv_cuda
            y = conv_cuda.conv_forward(x, w, b, relu=self.relu)
        elif self.impl == "cpu":
            y = self._forward_cpu(x, w, b)
        else:
            y = self._forward_gemm(xp, x, w, b)
        if self.relu:
            self.y = y  # the ReLU mask is y > 0; y is the next layer's input anyway
        return y

    def _forward_gemm(self, xp, x, w, b):
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        w2 = w.reshape(o, -1)
        if self.is_pointwise(w):
            y = xp.matmul(w2, x.reshape(n, c, h * wd)).reshape(n, o, h, wd)
        else:
            oh = conv_out_size(h, kh, self.stride, self.pad)
            ow = conv_out_size(wd, kw, self.stride, self.pad)
            col = im2col(x, kh, kw, self.stride, self.pad)
            y = (w2 @ col).reshape(o, n, oh, ow).transpose(1, 0, 2, 3)
            y = xp.ascontiguousarray(y)
        if b is not None:
            y += b.reshape(1, o, 1, 1)
        if self.relu:
            xp.maximum(y, 0, out=y)
        return y

    def macs(self, xs, ys) -> int:
        o, c, kh, kw = xs[1].shape
        return ys[0].size * c * kh * kw

    def is_pointwise(self, w) -> bool:
        return w.shape[2] == w.shape[3] == 1 and self.stride == 1 and self.pad == 0

    def backward(self, gy):
        x, w = self.x, self.w
        if self.impl == "cpu":
            return self._backward_cpu(gy, x, w)
        xp = get_array_module(gy)
        if self.relu:
            gy = gy * (self.y > 0)
        need_x, need_w = self.needs_grad[0], self.needs_grad[1]
        gb = gy.sum(axis=(0, 2, 3)) if self.has_bias and self.needs_grad[2] else None
        if self.impl == "custom":
            from kernels import conv_cuda
            gx = conv_cuda.conv_backward_data(gy, w) if need_x else None
            gw = conv_cuda.conv_backward_weight(x, gy, w.shape[2]) if need_w else None
        else:
            gx, gw = self._backward_gemm(xp, gy, x, w, need_x, need_w)
        return (gx, gw, gb) if self.has_bias else (gx, gw)

    def _backward_gemm(self, xp, gy, x, w, need_x, need_w):
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        w2 = w.reshape(o, -1)
        gx = gw = None
        if self.is_pointwise(w):
            gy3 = gy.reshape(n, o, h * wd)
            if need_w:
                gw = xp.tensordot(gy3, x.reshape(n, c, h * wd), axes=((0, 2), (0, 2)))
            if need_x:
                gx = xp.matmul(w2.T, gy3).reshape(x.shape)
        else:
            gy2 = gy.transpose(1, 0, 2, 3).reshape(o, -1)  # (O, N*OH*OW)
            if need_w:
                gw = gy2 @ im2col(x, kh, kw, self.stride, self.pad).T
            if need_x:
                gx = col2im(w2.T @ gy2, x.shape, kh, kw, self.stride, self.pad)
        return gx, (gw.reshape(w.shape) if gw is not None else None)

    # ------------------------------------------------ CPU: Numba kernels, chunks of images
    def _chunk(self, n, p, pointwise) -> int:
        """Images per GEMM: enough for COLUMNS_PER_GEMM columns, while leaving at least two
        chunks per thread to share out. A 1x1 convolution takes one image at a time down to
        7x7 maps: its GEMM then reads x[n] in place, and gathering several images would cost
        more than the slightly larger GEMM gains (single-threaded OpenBLAS runs these shapes
        within 10% of its peak)."""
        from kernels.cpu import parallel
        if pointwise and p >= 49:
            return 1
        return max(1, min(-(-COLUMNS_PER_GEMM // p), -(-n // (2 * parallel.threads()))))

    def _forward_cpu(self, x, w, b):
        """Per chunk of g images: col (C*kh*kw, g*P) = im2col, Y (O, g*P) = W @ col,
        y[chunk] (g, O, OH, OW) = relu(Y + b). Chunks run on the thread pool."""
        from kernels.cpu import conv as K
        from kernels.cpu import parallel, workspace
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        s, pad = self.stride, self.pad
        oh, ow = conv_out_size(h, kh, s, pad), conv_out_size(wd, kw, s, pad)
        p, ck = oh * ow, c * kh * kw
        w2 = np.ascontiguousarray(w.reshape(o, ck))
        y = np.empty((n, o, oh, ow), dtype=x.dtype)
        y3 = y.reshape(n, o, p)
        bias = b if b is not None else w2[:, 0]   # unused when there is no bias
        direct = self.is_pointwise(w)            # x[n] is already image n's column matrix

        def body(chunks):
            for n0, g in chunks:
                if direct and g == 1:
                    col = x[n0].reshape(c, p)
                else:
                    col = workspace.get("col", (ck, g * p), x.dtype)
                    K.im2col(x, n0, kh, kw, s, pad, oh, ow, col)
                out = y3[n0] if g == 1 else workspace.get("gemm", (o, g * p), x.dtype)
                np.matmul(w2, col, out=out)
                K.epilogue(out, bias, b is not None, self.relu, y3, n0)

        parallel.run(body, parallel.chunks(n, self._chunk(n, p, direct)), blas=True)
        return y

    def _backward_cpu(self, gy, x, w):
        """Per chunk: gY (O, g*P) = gy[chunk] * (y > 0), gb += row sums of gY,
        gW += gY @ im2col(x[chunk]).T, gx[chunk] = col2im(W.T @ gY). Each run of chunks
        returns partial gW and gb, added in run order."""
        from kernels.cpu import conv as K
        from kernels.cpu import parallel, workspace
        need_x, need_w = self.needs_grad[0], self.needs_grad[1]
        need_b = self.has_bias and self.needs_grad[2]
        n, c, h, wd = x.shape
        o, _, kh, kw = w.shape
        s, pad = self.stride, self.pad
        oh, ow = gy.shape[2:]
        p, ck = oh * ow, c * kh * kw
        w2t = np.ascontiguousarray(w.reshape(o, ck)).T
        gy3 = gy.reshape(n, o, p)
        y3 = self.y.reshape(n, o, p) if self.relu else gy3
        direct = self.is_pointwise(w)
        gx = np.empty(x.shape, dtype=x.dtype) if need_x else None

        def body(chunks):
            """One run of chunks; returns its (gW, gb) partial sums."""
            gw2 = np.zeros((o, ck), dtype=x.dtype) if need_w else None
            gb = np.zeros(o, dtype=np.float64) if need_b else None
            for n0, g in chunks:
                gyc = workspace.get("gy", (o, g * p), x.dtype)
                K.prologue(gy3, y3, self.relu, n0, gyc)       # ReLU mask, (g, O, P) -> (O, g*P)
                if need_b:
                    gb += gyc.sum(axis=1)
                if need_w:
                    if direct and g == 1:
                        col = x[n0].reshape(c, p)
                    else:
                        col = workspace.get("col", (ck, g * p), x.dtype)
                        K.im2col(x, n0, kh, kw, s, pad, oh, ow, col)
                    part = workspace.get("gw", (o, ck), x.dtype)
                    np.matmul(gyc, col.T, out=part)
                    gw2 += part
                if need_x:
                    if direct and g == 1:
                        np.matmul(w2t, gyc, out=gx[n0].reshape(c, p))
                        continue
                    gcol = workspace.get("gcol", (ck, g * p), x.dtype)
                    np.matmul(w2t, gyc, out=gcol)
                    if direct:
                        K.epilogue(gcol, gcol[:, 0], False, False, gx.reshape(n, c, p), n0)
                    else:
                        K.col2im(gcol, n0, kh, kw, s, pad, oh, ow, gx)
            return gw2, gb

        parts = parallel.run(body, parallel.chunks(n, self._chunk(n, p, direct)), blas=True)
        gw, gb = parts[0]
        for gw_part, gb_part in parts[1:]:    # fixed order, whichever thread ran which run
            if need_w:
                gw += gw_part
            if need_b:
                gb += gb_part
        gw = gw.reshape(w.shape) if need_w else None
        gb = gb.astype(x.dtype) if need_b else None
        return (gx, gw, gb) if self.has_bias else (gx, gw)


def conv2d(x, w, b=None, stride: int = 1, pad: int = 0, relu: bool = False,
           impl: str | None = None, groups: int = 1) -> Tensor:
    """Convolve ``x`` (N, C, H, W) with ``w`` (O, C/groups, kh, kw), add ``b`` (O,), optionally
    ReLU. ``groups > 1``: see :mod:`layers.grouped_conv`."""
    if groups == 1:
        f = Conv2dFunction(stride, pad, relu, impl)
    else:
        from .grouped_conv import GroupedConv2dFunction
        f = GroupedConv2dFunction(groups, stride, pad, relu, impl)
    return f(x, w) if b is None else f(x, w, b)
