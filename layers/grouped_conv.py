"""Grouped convolution: ``g`` independent convolutions over slices of the channels.

x (N, C, H, W), w (O, C/g, kh, kw), b (O,). Group ``j`` sees input channels
``[j C/g, (j+1) C/g)`` and produces output channels ``[j O/g, (j+1) O/g)``::

    y[:, group j] = conv2d(x[:, group j], w[group j], b[group j])

AlexNet's two towers are ``g = 2``: conv2, conv4 and conv5 each ran half on one GPU,
half on the other, and Caffe's ``group: 2`` reproduces that on one device. Each group
runs the ordinary convolution (:class:`layers.conv.Conv2dFunction`, whichever kernel it
picks), and the results are joined along channels; backward splits ``gy`` the same way
and joins the groups' input, weight and bias gradients.
"""
from __future__ import annotations

from engine.backend import get_array_module

from ._check import check_float, check_rank
from .conv import Conv2dFunction


class GroupedConv2dFunction(Conv2dFunction):
    """``Conv2dFunction`` with ``groups > 1``: one inner ungrouped function per group."""

    def __init__(self, groups: int, stride: int = 1, pad: int = 0, relu: bool = False,
                 impl: str | None = None):
        super().__init__(stride, pad, relu, impl)
        self.groups = int(groups)

    def _validate_groups(self, x, w, b):
        op, g = "conv2d", self.groups
        check_rank(op, "x", x, 4, "N, C, H, W")
        check_rank(op, "w", w, 4, "out, in/groups, kh, kw")
        check_float(op, **({"x": x, "w": w} if b is None else {"x": x, "w": w, "b": b}))
        if g < 1 or x.shape[1] % g or w.shape[0] % g:
            raise ValueError(f"conv2d: groups={g} must divide the input channels "
                             f"{x.shape[1]} and the output channels {w.shape[0]}")
        if w.shape[1] * g != x.shape[1]:
            raise ValueError(f"conv2d: with groups={g}, w must have {x.shape[1] // g} input "
                             f"channels (x {tuple(x.shape)}), got w {tuple(w.shape)}")

    def forward(self, x, w, b=None):
        self._validate_groups(x, w, b)
        xp = get_array_module(x)
        g, ci, co = self.groups, x.shape[1] // self.groups, w.shape[0] // self.groups
        self.has_bias, self.parts = b is not None, []
        ys = []
        for j in range(g):
            part = Conv2dFunction(self.stride, self.pad, self.relu, self.impl)
            args = [xp.ascontiguousarray(x[:, j * ci:(j + 1) * ci]), w[j * co:(j + 1) * co]]
            if b is not None:
                args.append(b[j * co:(j + 1) * co])
            ys.append(part.forward(*args))
            self.parts.append(part)
        return xp.concatenate(ys, axis=1)

    def backward(self, gy):
        xp = get_array_module(gy)
        co = gy.shape[1] // self.groups
        grads = []
        for j, part in enumerate(self.parts):
            part.needs_grad = self.needs_grad
            grads.append(part.backward(xp.ascontiguousarray(gy[:, j * co:(j + 1) * co])))
        joined = tuple(None if grads[0][i] is None
                       else xp.concatenate([gr[i] for gr in grads], axis=1 if i == 0 else 0)
                       for i in range(len(grads[0])))
        return joined
