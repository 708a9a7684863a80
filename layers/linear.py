"""Fully connected layer: x (N, in), w (out, in), b (out,) -> y = x @ w.T + b, (N, out).

Backward: gx = gy @ w (N, in), gw = gy.T @ x (out, in), gb = sum_n gy[n].

The plain path is those three products as written. On NumPy arrays ``layers.dispatch``
picks the CPU path: the same products with the *weight's* rows or columns shared among the
pool's threads (``kernels.cpu.arrays.matmul``), since with a small batch each product is
mostly a pass over a weight-sized array (GoogLeNet's auxiliary heads have a 1024 x 2048
one), which the main thread would otherwise make alone. y and gx are computed as written,
(N, in) @ (in, out) and (N, out) @ (out, in), each thread taking a span of the result's
columns: BLAS then reads w along its rows. Computed transposed instead (w @ x.T and
w.T @ gy.T, spans of rows), MKL ran gx's products at 16-17 GFLOP/s in training steps. As
written, one thread, a quarter of the columns, w out of the cache as it is in a step: gx
1.3x faster (344 against 457 us for the 1024 x 2048 weight, 218 against 281 for 1000 x
1024), y 1.06x and 1.29x; in batch-8 training steps the five layers' gx products took 5.0
instead of 7.2 thread-ms.
"""
from __future__ import annotations

from engine.backend import cpu_kernels
from engine.tensor import Tensor

from ._check import check_float, check_rank
from .dispatch import KernelFunction


class LinearFunction(KernelFunction):
    op = "linear"
    fresh_grads = True     # gx, gw and gb are new arrays on both paths

    def setup(self, x, w, b=None):
        check_rank("linear", "x", x, 2, "N, in_features; flatten NCHW first")
        check_rank("linear", "w", w, 2, "out, in")
        check_float("linear", **({"x": x, "w": w} if b is None else {"x": x, "w": w, "b": b}))
        if x.shape[1] != w.shape[1]:
            raise ValueError(f"linear: x has {x.shape[1]} features but w expects {w.shape[1]} "
                             f"(x {tuple(x.shape)}, w {tuple(w.shape)})")
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise ValueError(f"linear: b must have shape ({w.shape[0]},), got {tuple(b.shape)}")
        self.x, self.w, self.has_bias = x, w, b is not None

    def forward_plain(self, x, w, b=None):
        y = x @ w.T
        if b is not None:
            y += b
        return y

    def forward_cpu(self, x, w, b=None):
        arrays = cpu_kernels("arrays")
        y = arrays.matmul(x, w.T)              # (N, out): spans of w's rows per thread
        if b is not None:
            y += b
        return y

    def macs(self, xs, ys) -> int:
        return ys[0].size * xs[1].shape[1]

    def backward_plain(self, gy):
        gx = gy @ self.w if self.needs_grad[0] else None
        gw = gy.T @ self.x if self.needs_grad[1] else None
        return self._with_bias(gy, gx, gw)

    def backward_cpu(self, gy):
        arrays = cpu_kernels("arrays")
        # gx (N, in) = gy @ w with spans of w's columns; gw (out, in) with spans of its
        # rows; both products in one pool call
        products = [(gy, self.w)] if self.needs_grad[0] else []
        if self.needs_grad[1]:
            products.append((gy.T, self.x))
        outs = arrays.matmuls(products)
        gx = outs.pop(0) if self.needs_grad[0] else None
        gw = outs.pop(0) if self.needs_grad[1] else None
        return self._with_bias(gy, gx, gw)

    def _with_bias(self, gy, gx, gw):
        if not self.has_bias:
            return gx, gw
        return gx, gw, gy.sum(axis=0)


def linear(x, w, b=None) -> Tensor:
    return LinearFunction()(x, w) if b is None else LinearFunction()(x, w, b)
