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

Paths (chosen by ``layers.dispatch``): the plain one above over NumPy or CuPy; on NumPy
arrays the Numba kernels of ``kernels.cpu.conv``, which run the same maths chunk by chunk of
images on all cores without a batch-sized column matrix; on CuPy arrays, for the stride-1
"same" 1x1/3x3/5x5 float32 convolutions, the custom CUDA kernels of ``kernels.conv_cuda``.
``impl`` ("plain", "cpu", "cuda") asks one call for one path.
"""
from __future__ import annotations

import numpy as np

from engine.backend import cpu_kernels, get_array_module
from engine.tensor import Function, Tensor

from ._check import check_float, check_rank
from .concat import ConcatFunction
from .dispatch import KernelFunction
from .im2col import col2im, conv_out_size, im2col
from .pooling import MaxPool2dFunction


class Conv2dFunction(KernelFunction):
    """Convolution with optional bias and fused ReLU (``relu=True`` applies max(0, .))."""

    op = "conv2d"
    fresh_grads = True     # every path computes gx, gW and gb into new arrays

    def __init__(self, stride: int = 1, pad: int = 0, relu: bool = False, impl: str | None = None):
        self.stride, self.pad, self.relu, self.impl = int(stride), int(pad), relu, impl

    def settings(self) -> str:
        return f"stride {self.stride}, pad {self.pad}"

    def setup(self, x, w, b=None):
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
        self.x, self.w, self.has_bias = x, w, b is not None
        y = super().forward(x, w) if b is None else super().forward(x, w, b)
        if self.relu:
            self.y = y  # the ReLU mask is y > 0; y is the next layer's input anyway
        return y

    # ------------------------------------------------ plain: im2col + GEMM over xp
    def forward_plain(self, x, w, b=None):
        xp = get_array_module(x)
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

    def _masked(self, gy):
        """gy times the ReLU's derivative, and the bias gradient (or None)."""
        if self.relu:
            gy = gy * (self.y > 0)
        gb = gy.sum(axis=(0, 2, 3)) if self.has_bias and self.needs_grad[2] else None
        return gy, gb

    def _grads(self, gx, gw, gb):
        return (gx, gw, gb) if self.has_bias else (gx, gw)

    def backward_plain(self, gy):
        gy, gb = self._masked(gy)
        xp, x, w = get_array_module(gy), self.x, self.w
        need_x, need_w = self.needs_grad[0], self.needs_grad[1]
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
        return self._grads(gx, gw.reshape(w.shape) if gw is not None else None, gb)

    # ------------------------------------------------ cpu: kernels.cpu.conv
    def forward_cpu(self, x, w, b=None):
        conv = cpu_kernels("conv")
        return conv.conv2d(x, w, b, self.stride, self.pad, self.relu)

    def backward_cpu(self, gy):
        conv = cpu_kernels("conv")
        need_b = self.has_bias and self.needs_grad[2]
        return self._grads(*conv.conv2d_backward(
            gy, self.x, self.w, self.y if self.relu else None, self.stride, self.pad, self.relu,
            self.needs_grad[0], self.needs_grad[1], need_b))

    # ------------------------------------------------ cuda: kernels.conv_cuda
    def cuda_supports(self, x, w, b=None) -> bool:
        from kernels import conv_cuda
        return x.dtype == "float32" and conv_cuda.supports(x.shape, w.shape, self.stride, self.pad)

    def forward_cuda(self, x, w, b=None):
        from kernels import conv_cuda
        return conv_cuda.conv_forward(x, w, b, relu=self.relu)

    def backward_cuda(self, gy):
        from kernels import conv_cuda
        gy, gb = self._masked(gy)
        gx = conv_cuda.conv_backward_data(gy, self.w) if self.needs_grad[0] else None
        gw = (conv_cuda.conv_backward_weight(self.x, gy, self.w.shape[2])
              if self.needs_grad[1] else None)
        return self._grads(gx, gw, gb)


class StackedConv1x1Function(Function):
    """1x1 convolutions (stride 1, no padding, with biases) that read the same input, run as
    one: their weights stacked along the output channels make one convolution, so each chunk
    of images takes one GEMM instead of one per convolution, and backward makes the input's
    gradient in one product, W_stacked^T @ gY, instead of one per convolution summed
    afterwards. The Inception modules' 1x1, 3x3-reduce and 5x5-reduce convolutions are such
    siblings (in GoogLeNet's 3a, 64 + 96 + 16 output channels become one GEMM of 176).

    x (N, C, H, W), w_i (O_i, C, 1, 1), b_i (O_i,) for i < count; outputs
    y_i = relu?(w_i * x + b_i) (N, O_i, H, W), channel slices of one (N, sum O_i, H, W) array.
    The convolution itself is a :class:`Conv2dFunction` on the stacked weights (its plain,
    CPU or CUDA path); this class only stacks the weights and biases, splits the outputs,
    hands their gradients to the convolution's backward (as pieces along the channels to the
    CPU kernel, which reads them where they are; joined for the other paths) and splits the
    weight and bias gradients again. An
    output that nothing used gets a zero gradient, so its convolution's weight and bias
    gradients are zeros (called alone, it would get none).
    """

    fresh_grads = True     # the weight and bias gradients are row blocks of a new array

    @property
    def deferrable_backward(self) -> bool:
        """Its backward is a convolution's on its CPU kernel when the convolution is on the
        CPU path (``engine.tensor.BackwardSchedule``)."""
        return getattr(self.conv, "path", None) == "cpu"

    def __init__(self, count: int, relu: bool, impl: str | None = None):
        self.count, self.relu, self.impl = int(count), relu, impl

    def forward(self, x, *wb):
        if len(wb) != 2 * self.count:
            raise ValueError(f"conv1x1 stack: expected {self.count} (weight, bias) pairs, got "
                             f"{len(wb)} arrays")
        ws, bs = wb[0::2], wb[1::2]
        for w in ws:
            if w.ndim != 4 or w.shape[2:] != (1, 1):
                raise ValueError(f"conv1x1 stack: weights must be (out, in, 1, 1), got "
                                 f"{tuple(w.shape)}")
        xp = get_array_module(x, *ws)
        self.sizes = [w.shape[0] for w in ws]
        self.conv = Conv2dFunction(1, 0, self.relu, self.impl)
        self.conv.needs_grad = (self.needs_grad[0], any(self.needs_grad[1::2]),
                                any(self.needs_grad[2::2]))
        y = self.conv.forward(x, xp.concatenate(ws), xp.concatenate(bs))
        bounds = np.cumsum([0] + self.sizes)
        return tuple(y[:, lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:]))

    def macs(self, xs, ys) -> int:
        return sum(y.size for y in ys) * xs[0].shape[1]

    def backward(self, *gys):
        if getattr(self.conv, "path", None) == "cpu":
            # the CPU kernel reads the pieces where they are (no joined copy first)
            gx, gw, gb = self.conv.backward_cpu(list(gys))
        else:
            gy = ConcatFunction(axis=1).forward(*gys)     # joined first, on its own path
            gx, gw, gb = self.conv.backward(gy)
        grads, start = [gx], 0
        for size in self.sizes:
            grads.append(None if gw is None else gw[start:start + size])
            grads.append(None if gb is None else gb[start:start + size])
            start += size
        return tuple(grads)


class ConvReluMaxPoolFunction(KernelFunction):
    """``max_pool2d(relu(conv2d(x, w, b, stride, pad)), pool_k, pool_s, pool_pad, ceil_mode)``
    as one op: x (N, C, H, W), w (O, C, kh, kw), b (O,) -> y (N, O, PH, PW).

    Its plain path is the two ops one after the other, each on the path ``layers.dispatch``
    gives it. On NumPy arrays the CPU kernel (:func:`kernels.cpu.conv.conv2d_max_pool`)
    takes GoogLeNet's conv1 + pool1 kind: a 3x3/2 pool in Caffe's ceil mode over an output
    with even sides that is large enough to run in bands, a bias, and no input gradient.
    It pools each band of the convolution's output while the band is in cache, so that the
    output (26 MB at batch 8 for conv1) is never written out and read back; its backward
    makes each band's masked gradient straight from the pooled one (the pool's winners and
    the pooled values' signs), never the dense gradient of the convolution's output.
    ``impl``: None as ``layers.dispatch`` chooses, "plain" for both ops' plain paths, "cpu"
    for the fused kernel (an error where it cannot run the call)."""

    op = "conv2d_relu_max_pool"
    fresh_grads = True

    def __init__(self, stride: int = 1, pad: int = 0, pool_k: int = 3, pool_s: int = 2,
                 pool_pad: int = 0, ceil_mode: bool = True, impl: str | None = None):
        self.stride, self.pad, self.impl = int(stride), int(pad), impl
        self.pool_args = (int(pool_k), int(pool_s), int(pool_pad), bool(ceil_mode))

    def settings(self) -> str:
        k, s, p, ceil = self.pool_args
        return f"stride {self.stride}, pad {self.pad}; pool {k}x{k}/{s}, pad {p}, ceil {ceil}"

    def setup(self, x, w, b=None):
        Conv2dFunction(self.stride, self.pad).setup(x, w, b)

    def cpu_supports(self, x, w, b=None) -> bool:
        return (b is not None and not self.needs_grad[0] and self.pool_args == (3, 2, 0, True)
                and cpu_kernels("conv").pool_bands(x.shape, w.shape, self.stride, self.pad)
                is not None)

    def macs(self, xs, ys) -> int:
        n, _, h, wd = xs[0].shape
        o, c, kh, kw = xs[1].shape
        oh, ow = (conv_out_size(h, kh, self.stride, self.pad),
                  conv_out_size(wd, kw, self.stride, self.pad))
        return n * o * oh * ow * c * kh * kw

    # ------------------------------------------------ plain: the two ops
    def forward_plain(self, x, w, b=None):
        impl = "plain" if self.impl == "plain" else None
        self.conv = Conv2dFunction(self.stride, self.pad, relu=True, impl=impl)
        self.conv.needs_grad = self.needs_grad
        self.pool = MaxPool2dFunction(*self.pool_args, impl=impl)
        self.pool.needs_grad = (any(self.needs_grad),)
        return self.pool.forward(self.conv.forward(x, w, b))

    def backward_plain(self, gy):
        return self.conv.backward(self.pool.backward(gy))

    # ------------------------------------------------ cpu: kernels.cpu.conv
    def forward_cpu(self, x, w, b):       # cpu_supports: only with a bias
        y, self.winner = cpu_kernels("conv").conv2d_max_pool(x, w, b, self.stride, self.pad)
        self.x, self.w, self.y = x, w, y
        return y

    def backward_cpu(self, gy):
        gw, gb = cpu_kernels("conv").conv2d_max_pool_backward(
            gy, self.y, self.winner, self.x, self.w, self.stride, self.pad, self.needs_grad[1],
            self.needs_grad[2])
        return None, gw, gb


def conv2d(x, w, b=None, stride: int = 1, pad: int = 0, relu: bool = False,
           impl: str | None = None, groups: int = 1) -> Tensor:
    """Convolve ``x`` (N, C, H, W) with ``w`` (O, C/groups, kh, kw), add ``b`` (O,), optionally
    ReLU. ``groups > 1``: see :mod:`layers.grouped_conv`.

    ``impl``: None takes the path ``layers.dispatch`` chooses; "plain", "cpu" or "cuda"
    insists on one (an error when it cannot run this call)."""
    if groups == 1:
        f = Conv2dFunction(stride, pad, relu, impl)
    else:
        from .grouped_conv import GroupedConv2dFunction
        f = GroupedConv2dFunction(groups, stride, pad, relu, impl)
    return f(x, w) if b is None else f(x, w, b)
