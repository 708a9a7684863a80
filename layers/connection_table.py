"""Convolution with a connection table: output map o reads only the input maps ``table[o]``.

LeNet-5's C3 (LeCun et al. 1998, Table I) connects each of its 16 maps to 3, 4 or 6
of S2's 6 maps, "to keep the number of connections within reasonable bounds" and to
break the symmetry between maps. Only the connected kernels exist as parameters:

    w  (K, kh, kw)      the K = sum_o |table[o]| kernels, ordered by o, then by input map
    b  (O,)
    y[:, o] = b[o] + sum_{c in table[o]} conv(x[:, c], w[kernel (o, c)])

Forward scatters ``w`` into a dense (O, C, kh, kw) weight that is zero off the table
and runs the ordinary convolution; backward runs the convolution's backward and
gathers the dense weight gradient back at the table's entries. Multiply-adds count
the connected kernels only.
"""
from __future__ import annotations

import math

import numpy as np

from engine.backend import get_array_module, random_generator
from engine.module import Module, Parameter
from engine.tensor import Function, Tensor

from ._check import check_float, check_rank
from .conv import Conv2dFunction


def table_indices(table, in_channels: int):
    """(out index, in index) arrays of the table's connections, in the kernels' order.
    ``table`` is a sequence, one entry per output map, of input map indices."""
    rows, cols = [], []
    for o, inputs in enumerate(table):
        inputs = list(inputs)
        if not inputs or len(set(inputs)) != len(inputs) or \
                any(not 0 <= c < in_channels for c in inputs):
            raise ValueError(f"connection table: output map {o} lists inputs {inputs}; need "
                             f"distinct indices in [0, {in_channels})")
        rows += [o] * len(inputs)
        cols += sorted(inputs)
    return np.array(rows), np.array(cols)


class TableConv2dFunction(Function):
    def __init__(self, table, stride: int = 1, pad: int = 0):
        self.table, self.stride, self.pad = [sorted(t) for t in table], int(stride), int(pad)

    def forward(self, x, w, b):
        op = "table_conv2d"
        check_rank(op, "x", x, 4, "N, C, H, W")
        check_rank(op, "w", w, 3, "connections, kh, kw")
        check_float(op, x=x, w=w, b=b)
        rows, cols = table_indices(self.table, x.shape[1])
        if w.shape[0] != len(rows) or tuple(b.shape) != (len(self.table),):
            raise ValueError(f"{op}: the table has {len(rows)} connections into "
                             f"{len(self.table)} maps; got w {tuple(w.shape)}, b {tuple(b.shape)}")
        xp = get_array_module(x)
        self.rows, self.cols = xp.asarray(rows), xp.asarray(cols)
        dense = xp.zeros((len(self.table), x.shape[1]) + w.shape[1:], dtype=w.dtype)
        dense[self.rows, self.cols] = w
        self.conv = Conv2dFunction(self.stride, self.pad)
        return self.conv.forward(x, dense, b)

    def macs(self, xs, ys) -> int:
        n, o, oh, ow = ys[0].shape
        return n * oh * ow * xs[1].size

    def backward(self, gy):
        self.conv.needs_grad = self.needs_grad
        gx, gdense, gb = self.conv.backward(gy)
        gw = gdense[self.rows, self.cols] if gdense is not None else None
        return gx, gw, gb


def table_conv2d(x, w, b, table, stride: int = 1, pad: int = 0) -> Tensor:
    """Convolution where output map o sees only input maps ``table[o]``; w (K, kh, kw)."""
    return TableConv2dFunction(table, stride, pad)(x, w, b)


class TableConv2d(Module):
    """A convolution with a connection table; weights xavier-uniform over each map's own
    fan-in (|table[o]| kh kw), biases zero."""

    def __init__(self, in_channels: int, table, ksize: int, stride: int = 1, pad: int = 0,
                 dtype="float32"):
        super().__init__()
        rows, cols = table_indices(table, in_channels)
        self.in_channels, self.table = in_channels, [sorted(t) for t in table]
        self.ksize, self.stride, self.pad = ksize, stride, pad
        gen = random_generator(np)
        w = np.empty((len(rows), ksize, ksize), dtype=dtype)
        for o, inputs in enumerate(self.table):
            a = math.sqrt(3.0 / (len(inputs) * ksize * ksize))
            w[rows == o] = gen.uniform(-a, a, (len(inputs), ksize, ksize))
        self.weight = Parameter(w)
        self.bias = Parameter(np.zeros(len(self.table), dtype=dtype))

    def forward(self, x):
        return table_conv2d(x, self.weight, self.bias, self.table, self.stride, self.pad)

    def extra_repr(self):
        return f"{self.in_channels}, {len(self.table)}, k={self.ksize}, table"
