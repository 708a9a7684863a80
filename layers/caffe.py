"""Caffe's semantics for GoogLeNet, in one place.

GoogLeNet was reproduced in Caffe (``bvlc_googlenet``); these are the details
the paper leaves open and that this project follows exactly. The layers and the
model import them from here rather than restating them.
"""
from __future__ import annotations

import math

import numpy as np

# --------------------------------------------------------------- pooling sizes

def pooled_size(size: int, ksize: int, stride: int, pad: int, ceil_mode: bool = True) -> int:
    """Output length of a pooling window sliding over ``size`` (+ ``pad`` each side).

    Caffe rounds *up* (ceil mode): ``ceil((size + 2 pad - k) / stride) + 1``, so
    112 -> 56 -> 28 -> 14 -> 7 with 3x3/2 windows. With padding it then drops a
    last window that would start inside the right/bottom padding only:
    ``if (out - 1) * stride >= size + pad: out -= 1``. Floor mode is the usual
    ``(size + 2 pad - k) // stride + 1``.
    """
    if ceil_mode:
        out = -(-(size + 2 * pad - ksize) // stride) + 1
        if pad > 0 and (out - 1) * stride >= size + pad:
            out -= 1
        return out
    return (size + 2 * pad - ksize) // stride + 1


def avg_pool_divisors(size: int, out: int, ksize: int, stride: int, pad: int) -> np.ndarray:
    """How many positions each average-pooling window divides by, along one axis.

    Caffe counts the zero padding inside ``[-pad, size + pad)`` but not the
    extra positions ceil mode can reach beyond it:
    ``min(start + k, size + pad) - start`` with ``start = o * stride - pad``.
    The 2-D divisor is the outer product of the two axes' counts.
    """
    starts = np.arange(out) * stride - pad
    return (np.minimum(starts + ksize, size + pad) - starts).astype(np.int64)


# ------------------------------------------------------------------------- LRN
# Across channels, y = x / (k + alpha / n * sum_{window of n channels} x^2) ** beta.
# Caffe divides alpha by n (Chainer's LRN does not); windows are centred and
# zero-padded at the channel ends.
LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K = 5, 1e-4, 0.75, 1.0

# ------------------------------------------------------------- initialisation
BIAS_FILL = 0.2            # every convolution and hidden linear layer
CLASSIFIER_BIAS_FILL = 0.0  # the three classifiers
BIAS_LR_MULT, BIAS_DECAY_MULT = 2.0, 0.0   # biases: twice the learning rate, no decay


def xavier_uniform(shape, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Caffe's "xavier" filler: U(-a, a) with a = sqrt(3 / fan_in).

    ``fan_in`` is the number of inputs to one output unit: in*kh*kw for a
    convolution weight (out, in, kh, kw), ``in`` for a linear weight (out, in).
    The variance 1/fan_in keeps activations' scale roughly constant layer to layer.
    """
    fan_in = int(np.prod(shape[1:]))
    a = math.sqrt(3.0 / fan_in)
    return rng.uniform(-a, a, size=shape).astype(dtype)


def msra_gaussian(shape, rng: np.random.Generator, dtype=np.float32) -> np.ndarray:
    """Caffe's "msra" filler (He et al. 2015): N(0, 2 / fan_in).

    Twice xavier's variance makes up for ReLU zeroing half of each layer's
    outputs, so the signal keeps its scale through GoogLeNet's 22 layers.
    """
    fan_in = int(np.prod(shape[1:]))
    return (rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)).astype(dtype)
