"""The layers as ``Module``s: parameters plus a call to the functional form."""
from __future__ import annotations

import numpy as np

from engine import profile as _profile
from engine.backend import random_generator
from engine.module import Module, Parameter

from . import caffe
from .activation import dropout, relu
from .concat import concat
from .conv import ConvReluMaxPoolFunction, StackedConv1x1Function, conv2d
from .linear import linear
from .lrn import lrn
from .pooling import avg_pool2d, max_pool2d


def _init_rng():
    return random_generator(np)


class Conv2d(Module):
    """Convolution with a weight (out, in, k, k) and bias (out,); ``relu=True`` fuses a ReLU.

    ``groups=g`` splits the channels into g independent convolutions (weight
    (out, in/g, k, k)). Weights use Caffe's xavier filler; the bias starts at ``bias_fill`` and
    trains at ``bias_lr_mult`` x the learning rate with ``bias_decay_mult`` x decay.
    """

    def __init__(self, in_channels: int, out_channels: int, ksize: int, stride: int = 1,
                 pad: int = 0, bias: bool = True, relu: bool = False, bias_fill: float = 0.0,
                 bias_lr_mult: float = 1.0, bias_decay_mult: float = 1.0, dtype="float32",
                 groups: int = 1):
        super().__init__()
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"Conv2d: groups={groups} must divide in_channels {in_channels} "
                             f"and out_channels {out_channels}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.ksize, self.stride, self.pad, self.relu = ksize, stride, pad, relu
        self.groups = groups
        shape = (out_channels, in_channels // groups, ksize, ksize)
        self.weight = Parameter(caffe.xavier_uniform(shape, _init_rng(), dtype))
        self.bias = (Parameter(np.full(out_channels, bias_fill, dtype=dtype),
                               lr_mult=bias_lr_mult, decay_mult=bias_decay_mult)
                     if bias else None)

    def forward(self, x, pool: "MaxPool2d | None" = None):
        """The convolution of x; ``pool(conv(x))`` with a :class:`MaxPool2d` ``pool``, as one
        op where this is a ReLU convolution with a bias
        (:class:`layers.conv.ConvReluMaxPoolFunction`: on the CPU kernels the output is
        pooled band by band, never stored), except while an :class:`engine.Profiler` times
        each op: its table then keeps a row for each layer."""
        if (pool is not None and self.relu and self.bias is not None and self.groups == 1
                and _profile.active() is None):
            f = ConvReluMaxPoolFunction(self.stride, self.pad, pool.ksize, pool.stride,
                                        pool.pad, pool.ceil_mode)
            return f(x, self.weight, self.bias)
        y = conv2d(x, self.weight, self.bias, self.stride, self.pad, relu=self.relu,
                   groups=self.groups)
        return y if pool is None else pool(y)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, k={self.ksize}, s={self.stride}, "
                f"p={self.pad}{', relu' if self.relu else ''}"
                f"{f', groups={self.groups}' if self.groups > 1 else ''}")


def stacked_conv1x1(x, convs) -> list:
    """``[conv(x) for conv in convs]``, computed as one convolution when every one is a 1x1,
    stride-1, unpadded :class:`Conv2d` with a bias and the same ReLU setting
    (:class:`layers.conv.StackedConv1x1Function`); otherwise one call each. The parameters
    stay the modules' own (names, checkpoints and optimiser settings are unchanged)."""
    stackable = len(convs) > 1 and all(
        c.ksize == 1 and c.stride == 1 and c.pad == 0 and c.groups == 1 and c.bias is not None
        and c.relu == convs[0].relu for c in convs)
    if not stackable:
        return [c(x) for c in convs]
    wb = [p for c in convs for p in (c.weight, c.bias)]
    return list(StackedConv1x1Function(len(convs), convs[0].relu)(x, *wb))


class Linear(Module):
    """y = x @ weight.T + bias with weight (out, in); xavier weights as in Caffe."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 bias_fill: float = 0.0, bias_lr_mult: float = 1.0, bias_decay_mult: float = 1.0,
                 dtype="float32"):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = Parameter(caffe.xavier_uniform((out_features, in_features), _init_rng(), dtype))
        self.bias = (Parameter(np.full(out_features, bias_fill, dtype=dtype),
                               lr_mult=bias_lr_mult, decay_mult=bias_decay_mult)
                     if bias else None)

    def forward(self, x):
        return linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"{self.in_features}, {self.out_features}"


class MaxPool2d(Module):
    def __init__(self, ksize: int, stride: int, pad: int = 0, ceil_mode: bool = True):
        super().__init__()
        self.ksize, self.stride, self.pad, self.ceil_mode = ksize, stride, pad, ceil_mode

    def forward(self, x):
        return max_pool2d(x, self.ksize, self.stride, self.pad, self.ceil_mode)

    def extra_repr(self):
        return f"k={self.ksize}, s={self.stride}, p={self.pad}, ceil={self.ceil_mode}"


class AvgPool2d(MaxPool2d):
    def forward(self, x):
        return avg_pool2d(x, self.ksize, self.stride, self.pad, self.ceil_mode)


class LRN(Module):
    def __init__(self, size: int = caffe.LRN_SIZE, alpha: float = caffe.LRN_ALPHA,
                 beta: float = caffe.LRN_BETA, k: float = caffe.LRN_K):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def forward(self, x):
        return lrn(x, self.size, self.alpha, self.beta, self.k)

    def extra_repr(self):
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


class ReLU(Module):
    def forward(self, x):
        return relu(x)


class Dropout(Module):
    """Drops with probability ``p`` in ``train()`` mode; the identity in ``eval()`` mode."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return dropout(x, self.p, self.training)

    def extra_repr(self):
        return f"p={self.p}"


class Flatten(Module):
    def forward(self, x):
        return x.flatten(1)


class Concat(Module):
    def forward(self, *xs):
        return concat(xs, axis=1)
