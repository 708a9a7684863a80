"""The layers, each with a hand-written forward and backward: GoogLeNet's, and those
of its lineage (LeNet-5's scaled tanh, connection table and trainable subsampling,
AlexNet's grouped convolution, NiN's global average pooling, ResNet's batch norm and
residual join).

Functional forms take Tensors (or arrays, treated as constants) and return a
Tensor; modules hold parameters and call them. Read ``conv.py`` and
``im2col.py`` first, then ``pooling.py``, ``lrn.py``, and the small ones.
``dispatch.py`` says how an op picks its plain code or a CPU/CUDA kernel.
"""
from . import caffe, dispatch
from .activation import DropoutFunction, ReLUFunction, dropout, relu
from .concat import ConcatFunction, concat
from .conv import Conv2dFunction, ConvReluMaxPoolFunction, StackedConv1x1Function, conv2d
from .im2col import col2im, im2col
from .linear import LinearFunction, linear
from .loss import (LogSoftmax, Softmax, SoftmaxCrossEntropy, log_softmax, softmax,
                   softmax_cross_entropy)
from .lrn import LRNFunction, lrn
from .modules import (AvgPool2d, Concat, Conv2d, Dropout, Flatten, Linear, LRN, MaxPool2d, ReLU,
                      stacked_conv1x1)
from .pooling import AvgPool2dFunction, MaxPool2dFunction, avg_pool2d, max_pool2d
from engine.ops import flatten
from .batchnorm import BatchNorm2d, BatchNormFunction, batch_norm
from .connection_table import TableConv2d, TableConv2dFunction, table_conv2d
from .global_pool import GlobalAvgPool2d, GlobalAvgPool2dFunction, global_avg_pool2d
from .grouped_conv import GroupedConv2dFunction
from .residual import AddReLUFunction, add_relu
from .subsample import Subsample2d, SubsampleFunction, subsample
from .tanh import Tanh, TanhFunction, scaled_tanh, tanh

__all__ = [
    "caffe", "dispatch", "conv2d", "max_pool2d", "avg_pool2d", "lrn", "concat", "relu", "linear", "dropout",
    "flatten", "softmax", "log_softmax", "softmax_cross_entropy", "im2col", "col2im",
    "Conv2d", "Linear", "MaxPool2d", "AvgPool2d", "LRN", "ReLU", "Dropout", "Flatten", "Concat",
    "Conv2dFunction", "MaxPool2dFunction", "AvgPool2dFunction", "LRNFunction", "ReLUFunction",
    "DropoutFunction", "ConcatFunction", "LinearFunction", "Softmax", "LogSoftmax",
    "SoftmaxCrossEntropy",
    "batch_norm", "table_conv2d", "global_avg_pool2d", "add_relu", "subsample", "tanh",
    "scaled_tanh", "BatchNorm2d", "TableConv2d", "GlobalAvgPool2d", "Subsample2d", "Tanh",
    "BatchNormFunction", "TableConv2dFunction", "GlobalAvgPool2dFunction",
    "GroupedConv2dFunction", "AddReLUFunction", "SubsampleFunction", "TanhFunction",
    "StackedConv1x1Function", "stacked_conv1x1", "ConvReluMaxPoolFunction",
]
