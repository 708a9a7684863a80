"""Softmax, log-softmax and the softmax cross-entropy loss over logits (N, K)."""
from __future__ import annotations

from engine.backend import get_array_module
from engine.tensor import Function, Tensor

from ._check import check_float, check_rank


def _log_softmax(z, axis=-1):
    """Stable log-softmax: z - max - log(sum(exp(z - max)))."""
    xp = get_array_module(z)
    shifted = z - z.max(axis=axis, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=axis, keepdims=True))


class Softmax(Function):
    def __init__(self, axis=-1):
        self.axis = axis

    def forward(self, z):
        check_float("softmax", z=z)
        xp = get_array_module(z)
        self.y = xp.exp(_log_softmax(z, self.axis))
        return self.y

    def backward(self, gy):
        y = self.y
        return y * (gy - (gy * y).sum(axis=self.axis, keepdims=True))


class LogSoftmax(Function):
    def __init__(self, axis=-1):
        self.axis = axis

    def forward(self, z):
        check_float("log_softmax", z=z)
        self.y = _log_softmax(z, self.axis)
        return self.y

    def backward(self, gy):
        xp = get_array_module(gy)
        return gy - xp.exp(self.y) * gy.sum(axis=self.axis, keepdims=True)


class SoftmaxCrossEntropy(Function):
    """loss = -mean_n log softmax(z_n)[t_n]; gradient (softmax(z) - onehot(t)) / N."""

    def __init__(self, labels):
        self.labels = labels

    def forward(self, z):
        op = "softmax_cross_entropy"
        check_rank(op, "logits", z, 2, "N, classes")
        check_float(op, logits=z)
        xp = get_array_module(z)
        t = self.labels
        t = t.data if isinstance(t, Tensor) else t
        t = xp.asarray(t)
        if t.dtype.kind not in "iu":
            raise TypeError(f"{op}: labels must be integers, got dtype {t.dtype}")
        if t.shape != (z.shape[0],):
            raise ValueError(f"{op}: labels must have shape ({z.shape[0]},) for logits "
                             f"{tuple(z.shape)}, got {tuple(t.shape)}")
        if t.size and (int(t.min()) < 0 or int(t.max()) >= z.shape[1]):
            raise ValueError(f"{op}: labels must be in [0, {z.shape[1]}), got values from "
                             f"{int(t.min())} to {int(t.max())}")
        logp = _log_softmax(z)
        rows = xp.arange(z.shape[0])
        self.t, self.logp = t, logp
        return -logp[rows, t].mean(keepdims=False).reshape(())

    def backward(self, gy):
        xp = get_array_module(self.logp)
        n = self.logp.shape[0]
        g = xp.exp(self.logp)
        g[xp.arange(n), self.t] -= 1
        return g * (gy / n)


def softmax(z, axis: int = -1) -> Tensor:
    return Softmax(axis)(z)


def log_softmax(z, axis: int = -1) -> Tensor:
    return LogSoftmax(axis)(z)


def softmax_cross_entropy(logits, labels) -> Tensor:
    """Mean cross-entropy of integer ``labels`` (N,) under ``softmax(logits)`` (N, K)."""
    return SoftmaxCrossEntropy(labels)(logits)
