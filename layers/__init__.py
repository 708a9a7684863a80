"""GoogLeNet's layers, each with a hand-written forward and backward.

Functional forms take Tensors (or arrays, treated as constants) and return a
Tensor; modules hold parameters and call them. Read ``conv.py`` and
``im2col.py`` first, then ``pooling.py``, ``lrn.py``, and the small ones.
``dispatch.py`` says how an op picks its plain code or a CPU/CUDA kernel.
"""
from . import caffe, dispatch
from .activation import DropoutFunction, ReLUFunction, dropout, relu
from .concat import ConcatFunction, concat
from .conv import Conv2dFunction, conv2d
from .im2col import col2im, im2col
from .linear import LinearFunction, linear
from .loss import (LogSoftmax, Softmax, SoftmaxCrossEntropy, log_softmax, softmax,
                   softmax_cross_entropy)
from .lrn import LRNFunction, lrn
from .modules import AvgPool2d, Concat, Conv2d, Dropout, Flatten, Linear, LRN, MaxPool2d, ReLU
from .pooling import AvgPool2dFunction, MaxPool2dFunction, avg_pool2d, max_pool2d
from engine.ops import flatten

__all__ = [
    "caffe", "dispatch", "conv2d", "max_pool2d", "avg_pool2d", "lrn", "concat", "relu", "linear", "dropout",
    "flatten", "softmax", "log_softmax", "softmax_cross_entropy", "im2col", "col2im",
    "Conv2d", "Linear", "MaxPool2d", "AvgPool2d", "LRN", "ReLU", "Dropout", "Flatten", "Concat",
    "Conv2dFunction", "MaxPool2dFunction", "AvgPool2dFunction", "LRNFunction", "ReLUFunction",
    "DropoutFunction", "ConcatFunction", "LinearFunction", "Softmax", "LogSoftmax",
    "SoftmaxCrossEntropy",
]
