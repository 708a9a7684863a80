"""Fully connected layer: x (N, in), w (out, in), b (out,) -> y = x @ w.T + b, (N, out)."""
from __future__ import annotations

from engine.tensor import Function, Tensor

from ._check import check_float, check_rank


class LinearFunction(Function):
    def forward(self, x, w, b=None):
        check_rank("linear", "x", x, 2, "N, in_features; flatten NCHW first")
        check_rank("linear", "w", w, 2, "out, in")
        check_float("linear", **({"x": x, "w": w} if b is None else {"x": x, "w": w, "b": b}))
        if x.shape[1] != w.shape[1]:
            raise ValueError(f"linear: x has {x.shape[1]} features but w expects {w.shape[1]} "
                             f"(x {tuple(x.shape)}, w {tuple(w.shape)})")
        if b is not None and tuple(b.shape) != (w.shape[0],):
            raise ValueError(f"linear: b must have shape ({w.shape[0]},), got {tuple(b.shape)}")
        self.x, self.w, self.has_bias = x, w, b is not None
        y = x @ w.T
        if b is not None:
            y += b
        return y

    def macs(self, xs, ys) -> int:
        return ys[0].size * xs[1].shape[1]

    def backward(self, gy):
        gx = gy @ self.w if self.needs_grad[0] else None
        gw = gy.T @ self.x if self.needs_grad[1] else None
        if not self.has_bias:
            return gx, gw
        return gx, gw, gy.sum(axis=0)


def linear(x, w, b=None) -> Tensor:
    return LinearFunction()(x, w) if b is None else LinearFunction()(x, w, b)
