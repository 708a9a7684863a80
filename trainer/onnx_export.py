"""ONNX export: the network's forward pass, recorded op by op, as an ONNX graph.

``to_onnx(model, image_size, ...)`` runs one forward pass in eval mode on a batch of 2 and
records every ``Function`` called (``record_ops``): the function object with its settings
(stride, window, alpha...), the tensors it read and the tensors it made. Parameters become
initializers under their names (``conv1.weight``...), the batch becomes the graph input
``input`` (N, C, S, S) with a symbolic batch dimension, the model's result the output
``logits`` (N, classes). Each recorded function is handed to the converter registered for its
class, which emits the ONNX nodes; nothing about a particular network is written here, so any
network built from supported ops exports. Adding an op is one small function::

    @converts(MyFunction)
    def _my_op(g, f, x):                 # f: the recorded function, x: its input names
        return g.node("OnnxOp", x, attr=f.setting)

An op without a converter stops the export with an error naming it.

Caffe's semantics are kept exactly (the tests compare onnxruntime with our forward):
* pooling rounds the output size up (``ceil_mode=1``); where ONNX's ceil formula would give
  another size than Caffe's (Caffe drops a last window that starts in the padding), floor
  rounding is used when it gives Caffe's size, else the end padding is written out;
* average pooling divides by Caffe's count (padding counted, ceil overflow not):
  ``count_include_pad=0`` without padding, 1 with padding when no window overflows, and an
  explicit zero ``Pad`` then ``count_include_pad=0`` otherwise;
* ONNX's LRN divides alpha by the window size, as Caffe does: alpha, beta, k and n carry over.
"""
from __future__ import annotations

import contextlib
import json

import numpy as np

import layers as L
from engine import backend
from engine import ops
from engine.tensor import Function, Tensor
from layers import caffe
from layers.im2col import conv_out_size

OPSET = 17
CONVERTERS: dict = {}


class ExportError(ValueError):
    """The model uses something ONNX export does not cover; the message names it."""


def converts(*function_classes):
    """Register a converter ``fn(g, f, *input_names) -> output name(s)`` for those classes."""
    def register(fn):
        for cls in function_classes:
            CONVERTERS[cls] = fn
        return fn
    return register


@contextlib.contextmanager
def record_ops():
    """Within the block, every ``Function`` call is appended to the yielded list as
    ``(function, inputs, outputs)`` (the objects passed and returned). It wraps
    ``Function.__call__`` for the duration, so record one forward pass at a time."""
    calls = []
    original = Function.__call__

    def recording_call(self, *inputs):
        out = original(self, *inputs)
        calls.append((self, list(inputs), list(out) if isinstance(out, tuple) else [out]))
        return out

    Function.__call__ = recording_call
    try:
        yield calls
    finally:
        Function.__call__ = original


class GraphBuilder:
    """Names for tensors, the ONNX nodes and initializers emitted so far."""

    def __init__(self):
        from onnx import helper
        self.helper = helper
        self.nodes, self.initializers = [], []
        self.names: dict = {}       # id(tensor) -> ONNX name
        self.shapes: dict = {}      # ONNX name -> traced shape
        self._count = 0

    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def node(self, op_type: str, inputs, outputs=None, **attrs):
        """Append one node; returns its output name (or names when several are given)."""
        outputs = outputs or [self.fresh(op_type.lower())]
        self.nodes.append(self.helper.make_node(op_type, list(inputs), list(outputs),
                                                name=self.fresh("n" + op_type), **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def constant(self, array, hint: str = "const") -> str:
        from onnx import numpy_helper
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def add_parameter(self, name: str, array) -> None:
        from onnx import numpy_helper
        self.initializers.append(numpy_helper.from_array(
            np.ascontiguousarray(backend.to_numpy(array), np.float32), name))

    def name_of(self, value, dtype=np.float32) -> str:
        """The ONNX name of a recorded input: a tensor seen before, or a constant."""
        if isinstance(value, Tensor) and id(value) in self.names:
            return self.names[id(value)]
        data = backend.to_numpy(value.data if isinstance(value, Tensor) else np.asarray(value))
        name = self.constant(data.astype(dtype), "const")
        self.shapes[name] = data.shape
        return name


# ------------------------------------------------------------------ the converters
@converts(L.Conv2dFunction)
def _conv(g, f, x, w, b=None):
    k = g.shapes[w][2:]
    y = g.node("Conv", [x, w] + ([b] if b else []), kernel_shape=list(k),
               strides=[f.stride] * 2, pads=[f.pad] * 4)
    return g.node("Relu", [y]) if f.relu else y


@converts(L.StackedConv1x1Function)
def _stacked_conv1x1(g, f, x, *wb):
    """One Conv (+ Relu) per stacked convolution, as they would have been recorded alone."""
    outs = []
    for w, b in zip(wb[0::2], wb[1::2]):
        y = g.node("Conv", [x, w, b], kernel_shape=[1, 1], strides=[1, 1], pads=[0] * 4)
        outs.append(g.node("Relu", [y]) if f.relu else y)
    return outs


@converts(L.LinearFunction)
def _linear(g, f, x, w, b=None):
    return g.node("Gemm", [x, w] + ([b] if b else []), transB=1)


@converts(L.ReLUFunction)
def _relu(g, f, x):
    return g.node("Relu", [x])


@converts(L.ConcatFunction)
def _concat(g, f, *xs):
    return g.node("Concat", list(xs), axis=f.axis)


@converts(L.LRNFunction)
def _lrn(g, f, x):
    return g.node("LRN", [x], size=f.size, alpha=f.alpha, beta=f.beta, bias=f.k)


def _onnx_pooled(size, k, s, pads, ceil_mode):
    span = size + pads - k
    return (-(-span // s) if ceil_mode else span // s) + 1


def _rounding(sizes, wants, k, s, pads):
    """The ONNX ``ceil_mode`` (1, else 0) whose output sizes are Caffe's; None if neither."""
    for ceil_mode in (1, 0):
        if all(_onnx_pooled(n, k, s, pads, ceil_mode) == w for n, w in zip(sizes, wants)):
            return ceil_mode
    return None


def _pool_sizes(g, f, x):
    sizes = list(g.shapes[x][2:])
    return sizes, [caffe.pooled_size(n, f.k, f.s, f.pad, f.ceil_mode) for n in sizes]


@converts(L.MaxPool2dFunction)
def _max_pool(g, f, x):
    sizes, wants = _pool_sizes(g, f, x)
    common = {"kernel_shape": [f.k, f.k], "strides": [f.s, f.s]}
    ceil_mode = _rounding(sizes, wants, f.k, f.s, 2 * f.pad)
    if ceil_mode is not None:
        return g.node("MaxPool", [x], pads=[f.pad] * 4, ceil_mode=ceil_mode, **common)
    # Write out the end padding that makes floor rounding give Caffe's size.
    ends = [max(0, (w - 1) * f.s + f.k - n - f.pad) for n, w in zip(sizes, wants)]
    if any(_onnx_pooled(n, f.k, f.s, f.pad + e, 0) != w for n, w, e in zip(sizes, wants, ends)):
        raise ExportError(f"max_pool2d {f.k}x{f.k}/{f.s} pad {f.pad} on {sizes}: no ONNX "
                          f"padding gives Caffe's output size {wants}")
    return g.node("MaxPool", [x], pads=[f.pad, f.pad] + ends, ceil_mode=0, **common)


@converts(L.ConvReluMaxPoolFunction)
def _conv_relu_max_pool(g, f, x, w, b):
    """Conv, Relu and MaxPool, as the two ops would have been recorded alone."""
    y = _conv(g, L.Conv2dFunction(f.stride, f.pad, relu=True), x, w, b)
    n, _, h, wd = g.shapes[x]
    o, _, kh, kw = g.shapes[w]
    g.shapes[y] = (n, o, conv_out_size(h, kh, f.stride, f.pad),
                   conv_out_size(wd, kw, f.stride, f.pad))
    return _max_pool(g, L.MaxPool2dFunction(*f.pool_args), y)


@converts(L.AvgPool2dFunction)
def _avg_pool(g, f, x):
    sizes, wants = _pool_sizes(g, f, x)
    common = {"kernel_shape": [f.k, f.k], "strides": [f.s, f.s]}
    overflow = any((w - 1) * f.s + f.k > n + 2 * f.pad for n, w in zip(sizes, wants))
    ceil_mode = _rounding(sizes, wants, f.k, f.s, 2 * f.pad)
    if ceil_mode is not None and (f.pad == 0 or not overflow):
        # No padding: divide by the window clipped to the input; padding without overflow:
        # every window is whole, divide by k*k. Both are Caffe's counts.
        return g.node("AveragePool", [x], pads=[f.pad] * 4, ceil_mode=ceil_mode,
                      count_include_pad=int(f.pad > 0), **common)
    # Padding and ceil overflow: zero-pad explicitly, then count only what lies inside the
    # padded map, which is Caffe's divisor min(start + k, size + pad) - start.
    ceil_mode = _rounding([n + 2 * f.pad for n in sizes], wants, f.k, f.s, 0)
    if ceil_mode is None:
        raise ExportError(f"avg_pool2d {f.k}x{f.k}/{f.s} pad {f.pad} on {sizes}: ONNX "
                          f"gives another output size than Caffe's {wants}")
    p = f.pad
    pads = g.constant(np.array([0, 0, p, p, 0, 0, p, p], np.int64), "pads")
    padded = g.node("Pad", [x, pads], mode="constant")
    return g.node("AveragePool", [padded], pads=[0] * 4, ceil_mode=ceil_mode,
                  count_include_pad=0, **common)


@converts(ops.Reshape)
def _reshape(g, f, x):
    shape = list(f.shape)
    if shape and shape[0] == g.shapes[x][0]:
        shape[0] = 0            # keep the batch dimension symbolic: 0 copies the input's
    return g.node("Reshape", [x, g.constant(np.array(shape, np.int64), "shape")])


@converts(ops.Add)
def _add(g, f, a, b):
    return g.node("Add", [a, b])


@converts(ops.Mul)
def _mul(g, f, a, b):
    return g.node("Mul", [a, b])


@converts(ops.Neg)
def _neg(g, f, x):
    return g.node("Neg", [x])


@converts(ops.Reciprocal)
def _reciprocal(g, f, x):
    return g.node("Reciprocal", [x])


@converts(ops.MatMul)
def _matmul(g, f, a, b):
    return g.node("MatMul", [a, b])


@converts(L.Softmax)
def _softmax(g, f, x):
    return g.node("Softmax", [x], axis=-1)


# ------------------------------------------------------------------ the export
def to_onnx(model, image_size: int, in_channels: int = 3, metadata: dict | None = None,
            graph_name: str = "network"):
    """An ``onnx.ModelProto`` of ``model``'s eval-mode forward pass at ``image_size``:
    input ``input`` float32 (batch, in_channels, S, S), output ``logits`` float32
    (batch, classes); ``metadata`` (str -> JSON-able) goes to ``metadata_props``.

    Raises ExportError naming any op without a converter."""
    import onnx
    from onnx import TensorProto, helper

    from engine import no_grad
    was_training = model.training
    model.eval()
    x = Tensor(np.random.default_rng(0).standard_normal(
        (2, in_channels, image_size, image_size)).astype(getattr(model, "dtype", np.float32)))
    try:
        with no_grad(), record_ops() as calls:
            out = model(x)
    finally:
        model.train(was_training)
    if not isinstance(out, Tensor):
        raise ExportError(f"{type(model).__name__} returned {type(out).__name__}, not one "
                          "tensor of logits")

    g = GraphBuilder()
    g.names[id(x)] = "input"
    g.shapes["input"] = x.shape
    for name, p in model.named_parameters():
        g.names[id(p)] = name
        g.shapes[name] = p.shape
        g.add_parameter(name, p.data)
    for f, inputs, outputs in calls:
        convert = CONVERTERS.get(type(f))
        if convert is None:
            raise ExportError(f"ONNX export has no converter for {type(f).__name__} (used by "
                              f"{type(model).__name__}); register one with "
                              f"trainer.onnx_export.converts")
        names = convert(g, f, *[g.name_of(v) for v in inputs])
        names = [names] if isinstance(names, str) else list(names)
        for t, name in zip(outputs, names):
            g.names[id(t)] = name
            g.shapes[name] = t.shape
    if id(out) not in g.names:
        raise ExportError("the model's output was not made by a recorded op")
    last = g.names[id(out)]
    g.node("Identity", [last], ["logits"])

    used = {i for n in g.nodes for i in n.input}
    g.initializers = [t for t in g.initializers if t.name in used]
    graph = helper.make_graph(
        g.nodes, graph_name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                       ["batch", in_channels, image_size, image_size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       ["batch"] + list(out.shape[1:]))],
        g.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="googlenet-engine")
    for key, value in (metadata or {}).items():
        entry = onnx_model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(onnx_model)
    return onnx_model
