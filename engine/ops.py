"""The arithmetic a model and its loss need, each a small ``Function``.

Binary ops broadcast like NumPy; their backward sums the gradient back down to
each input's shape (:func:`sum_to`).
"""
from __future__ import annotations

from .backend import get_array_module
from .tensor import Function, Tensor, as_tensor


def sum_to(g, shape):
    """Sum ``g`` over the axes broadcasting added or stretched to reach ``shape``."""
    if g.shape == tuple(shape):
        return g
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and g.shape[lead + i] != 1)
    g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape) if lead else g


class Add(Function):
    def forward(self, a, b):
        self.shapes = a.shape, b.shape
        return a + b

    def backward(self, gy):
        return sum_to(gy, self.shapes[0]), sum_to(gy, self.shapes[1])


class Mul(Function):
    def forward(self, a, b):
        self.a, self.b = a, b
        return a * b

    def backward(self, gy):
        ga = sum_to(gy * self.b, self.a.shape) if self.needs_grad[0] else None
        gb = sum_to(gy * self.a, self.b.shape) if self.needs_grad[1] else None
        return ga, gb


class Neg(Function):
    def forward(self, x):
        return -x

    def backward(self, gy):
        return -gy


class Reciprocal(Function):
    def forward(self, x):
        self.y = 1 / x
        return self.y

    def backward(self, gy):
        return -gy * self.y * self.y


class MatMul(Function):
    """``y = a @ b`` for 2-D ``a`` (m, k) and ``b`` (k, n)."""

    def forward(self, a, b):
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            raise ValueError(f"matmul: expected (m, k) @ (k, n), got {a.shape} @ {b.shape}")
        self.a, self.b = a, b
        return a @ b

    def backward(self, gy):
        ga = gy @ self.b.T if self.needs_grad[0] else None
        gb = self.a.T @ gy if self.needs_grad[1] else None
        return ga, gb


class Reshape(Function):
    def __init__(self, shape):
        self.shape = tuple(shape)

    def forward(self, x):
        self.in_shape = x.shape
        return x.reshape(self.shape)

    def backward(self, gy):
        return gy.reshape(self.in_shape)


class Sum(Function):
    def __init__(self, axis=None, keepdims=False):
        self.axis, self.keepdims = axis, keepdims

    def forward(self, x):
        self.in_shape = x.shape
        return x.sum(axis=self.axis, keepdims=self.keepdims)

    def backward(self, gy):
        if self.axis is not None and not self.keepdims:
            axes = (self.axis,) if isinstance(self.axis, int) else self.axis
            axes = sorted(a % len(self.in_shape) for a in axes)
            for a in axes:
                gy = gy.reshape(gy.shape[:a] + (1,) + gy.shape[a:])
        elif self.axis is None and not self.keepdims:
            gy = gy.reshape((1,) * len(self.in_shape))
        return _broadcast_to(gy, self.in_shape)


def _broadcast_to(g, shape):
    xp = get_array_module(g)
    return xp.broadcast_to(g, shape).copy()


def add(a, b) -> Tensor:
    a = as_tensor(a)
    return Add()(a, as_tensor(b, a))


def mul(a, b) -> Tensor:
    a = as_tensor(a)
    return Mul()(a, as_tensor(b, a))


def neg(x) -> Tensor:
    return Neg()(x)


def reciprocal(x) -> Tensor:
    return Reciprocal()(x)


def matmul(a, b) -> Tensor:
    return MatMul()(a, b)


def reshape(x, shape) -> Tensor:
    return Reshape(shape)(x)


def flatten(x, start_dim: int = 1) -> Tensor:
    """Merge all axes from ``start_dim`` on: NCHW -> (N, C*H*W), C-major as NumPy does."""
    x = as_tensor(x)
    lead = x.shape[:start_dim]
    return Reshape(lead + (-1,))(x)


def sum(x, axis=None, keepdims=False) -> Tensor:  # noqa: A001 (mirrors NumPy's name)
    return Sum(axis, keepdims)(x)


def mean(x, axis=None, keepdims=False) -> Tensor:
    x = as_tensor(x)
    if axis is None:
        count = x.size
    else:
        axes = (axis,) if isinstance(axis, int) else axis
        count = 1
        for a in axes:
            count *= x.shape[a]
    return mul(sum(x, axis, keepdims), 1.0 / count)
