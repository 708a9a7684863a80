"""Batch normalisation (Ioffe and Szegedy 2015), per channel, with affine gamma and beta.

x: (N, C, H, W) or (N, C); gamma, beta: (C,). Statistics run over every axis but C,
``m = N*H*W`` values per channel::

    training   mu = mean(x),  var = mean((x - mu)^2)          (biased: the batch's own)
    eval       mu = running_mean,  var = running_var
    xhat = (x - mu) / sqrt(var + eps),   y = gamma * xhat + beta

Running statistics follow PyTorch's convention: after each training forward,

    running_mean = (1 - momentum) * running_mean + momentum * mu
    running_var  = (1 - momentum) * running_var  + momentum * var * m / (m - 1)

(momentum 0.1 by default; the running variance is the *unbiased* batch variance).
Caffe's BatchNorm layer instead accumulates sums with a 0.999 decay and a scale factor;
the two agree in the limit.

Backward, with sums over the m values of a channel::

    gbeta  = sum(gy),   ggamma = sum(gy * xhat)
    training   gx = gamma / sqrt(var + eps) * (gy - gbeta / m - xhat * ggamma / m)
    eval       gx = gamma / sqrt(var + eps) * gy          (mu and var are constants)

The training formula is the derivative through mu and var as well, both of which depend
on every x of the channel: with g = gy * gamma it is the usual
(g - mean(g) - xhat * mean(g * xhat)) / sqrt(var + eps), and mean(g) and mean(g * xhat)
are gamma * gbeta / m and gamma * ggamma / m, sums backward needs anyway. Forward keeps
xhat (the size of x) and 1/sqrt(var + eps).
"""
from __future__ import annotations

import numpy as np

from engine.backend import get_array_module
from engine.module import Module, Parameter
from engine.tensor import Function, Tensor

from ._check import check_float

MOMENTUM, EPS = 0.1, 1e-5


class BatchNormFunction(Function):
    """``forward(x, gamma, beta)``; in training mode updates ``running_mean`` and
    ``running_var`` in place when they are given (arrays of shape (C,))."""

    def __init__(self, training: bool, running_mean=None, running_var=None,
                 momentum: float = MOMENTUM, eps: float = EPS):
        if not 0.0 <= momentum <= 1.0 or eps <= 0:
            raise ValueError(f"batch_norm: need 0 <= momentum <= 1 and eps > 0, "
                             f"got {momentum}, {eps}")
        if (running_mean is None) != (running_var is None):
            raise ValueError("batch_norm: give both running_mean and running_var, or neither")
        if not training and running_mean is None:
            raise ValueError("batch_norm: eval mode needs running_mean and running_var")
        self.training, self.momentum, self.eps = training, float(momentum), float(eps)
        self.running_mean, self.running_var = running_mean, running_var

    def _validate(self, x, gamma, beta):
        if x.ndim not in (2, 4):
            raise ValueError(f"batch_norm: x must be (N, C) or (N, C, H, W), got shape "
                             f"{tuple(x.shape)}")
        arrays = {"x": x, "gamma": gamma, "beta": beta}
        if self.running_mean is not None:
            arrays.update(running_mean=self.running_mean, running_var=self.running_var)
        check_float("batch_norm", **arrays)
        c = x.shape[1]
        for name, a in arrays.items():
            if name != "x" and tuple(a.shape) != (c,):
                raise ValueError(f"batch_norm: {name} must have shape ({c},) for x "
                                 f"{tuple(x.shape)}, got {tuple(a.shape)}")
        if self.training and x.size // c < 2:
            raise ValueError(f"batch_norm: training needs more than one value per channel to "
                             f"estimate a variance, got x {tuple(x.shape)}")

    def forward(self, x, gamma, beta):
        self._validate(x, gamma, beta)
        xp = get_array_module(x)
        self.axes = (0,) if x.ndim == 2 else (0, 2, 3)
        bshape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
        if self.training:
            mu = x.mean(axis=self.axes)
            xc = x - mu.reshape(bshape)
            var = xp.square(xc).mean(axis=self.axes)
            if self.running_mean is not None:
                m = x.size // x.shape[1]
                self.running_mean *= 1 - self.momentum
                self.running_mean += self.momentum * mu
                self.running_var *= 1 - self.momentum
                self.running_var += (self.momentum * m / (m - 1)) * var
        else:
            xc = x - self.running_mean.reshape(bshape)
            var = self.running_var
        self.inv_std = (1.0 / xp.sqrt(var + self.eps)).astype(x.dtype, copy=False)
        xc *= self.inv_std.reshape(bshape)             # xc is ours (x - mu): now xhat
        self.xhat, self.gamma, self.bshape = xc, gamma, bshape
        self.running_mean = self.running_var = None   # backward does not need them
        y = xc * gamma.reshape(bshape)
        y += beta.reshape(bshape)
        return y

    def backward(self, gy):
        axes, bshape, xhat = self.axes, self.bshape, self.xhat
        train_x = self.training and self.needs_grad[0]
        gbeta = gy.sum(axis=axes) if self.needs_grad[2] or train_x else None
        ggamma = (gy * xhat).sum(axis=axes) if self.needs_grad[1] or train_x else None
        gx = None
        if self.needs_grad[0]:
            scale = (self.gamma * self.inv_std).reshape(bshape)
            if self.training:
                m = gy.size // gy.shape[1]
                gx = gy - (gbeta / m).reshape(bshape)
                gx -= xhat * (ggamma / m).reshape(bshape)
                gx *= scale
            else:
                gx = gy * scale
        return (gx, ggamma if self.needs_grad[1] else None,
                gbeta if self.needs_grad[2] else None)


def batch_norm(x, gamma, beta, running_mean=None, running_var=None, training: bool = True,
               momentum: float = MOMENTUM, eps: float = EPS) -> Tensor:
    """Normalise ``x`` per channel (axis 1) and apply ``gamma``/``beta``; see the module
    docstring for the statistics each mode uses and how the running ones are updated."""
    return BatchNormFunction(training, running_mean, running_var, momentum, eps)(x, gamma, beta)


class BatchNorm2d(Module):
    """Batch norm over channel axis 1 of (N, C, H, W) or (N, C) inputs.

    Parameters ``weight`` (gamma, ones) and ``bias`` (beta, zeros); buffers ``running_mean`` (zeros) and ``running_var`` (ones). ``train()`` mode
    uses and records batch statistics, ``eval()`` mode uses the running ones.
    """

    def __init__(self, channels: int, momentum: float = MOMENTUM, eps: float = EPS,
                 dtype="float32"):
        super().__init__()
        self.channels, self.momentum, self.eps = channels, momentum, eps
        self.weight = Parameter(np.ones(channels, dtype=dtype))
        self.bias = Parameter(np.zeros(channels, dtype=dtype))
        self.register_buffer("running_mean", np.zeros(channels, dtype=dtype))
        self.register_buffer("running_var", np.ones(channels, dtype=dtype))

    def forward(self, x):
        return batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                          self.training, self.momentum, self.eps)

    def extra_repr(self):
        return f"{self.channels}, momentum={self.momentum}, eps={self.eps}"
