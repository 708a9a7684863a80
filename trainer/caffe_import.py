"""``import-caffe``: Caffe's GoogLeNet weights (``bvlc_googlenet``) as a weights file of ours.

A Caffe model is two files: the network definition in protobuf text format
(``deploy.prototxt``) and the trained weights, a binary ``NetParameter`` whose layers carry
their parameters as ``BlobProto``s (``bvlc_googlenet.caffemodel``). Both are read with the
``protobuf`` package, using the few fields of Caffe's schema declared below (the field
numbers are Caffe's, from ``caffe.proto``); fields not declared are skipped.

Caffe's layer names map to ours by a few rules (``caffe_name_to_ours``)::

    conv1/7x7_s2 -> conv1              inception_3a/1x1         -> inception_3a.conv_1x1
    conv2/3x3_reduce -> conv2_reduce   inception_3a/3x3_reduce  -> inception_3a.conv_3x3_reduce
    conv2/3x3 -> conv2                 inception_3a/pool_proj   -> inception_3a.pool_proj
    loss3/classifier -> classifier     loss1/conv, loss1/fc, loss1/classifier -> aux1.conv, ...

and every layer's settings (outputs, kernel, stride, padding, pooling kind, LRN size, alpha
and beta, the Inception concatenation order) and every blob's shape are checked against our
network before anything is written. Caffe's weight layouts are ours: convolution
(out, in, kh, kw), inner product (out, in), both with the input flattened channel-major.

The weights file records Caffe's preprocessing (BGR, pixels 0-255, mean 104/117/123, no std),
which ``eval``, ``predict`` and ``export`` then apply. Only the current ``layer`` format is
read; files in the pre-2015 ``layers`` (V1) format are refused with the way to upgrade them.
"""
from __future__ import annotations

import math
import os
import re

import numpy as np

from data.preprocessing import Preprocessing
from trainer import checkpoint as ckpt
from trainer.config import UsageError
from trainer.logs import log


# message -> [(field, number, type, label, message/enum type, default)], Caffe's numbering.
# Types: "string", "int32", "uint32", "int64", "float", "double", "bool", a message or an enum.
SCHEMA = {
    "BlobShape": [("dim", 1, "int64", "repeated", None, None)],
    "BlobProto": [("shape", 7, "BlobShape", "optional", None, None),
                  ("data", 5, "float", "repeated", None, None),
                  ("double_data", 8, "double", "repeated", None, None),
                  ("num", 1, "int32", "optional", None, None),
                  ("channels", 2, "int32", "optional", None, None),
                  ("height", 3, "int32", "optional", None, None),
                  ("width", 4, "int32", "optional", None, None)],
    "V1LayerParameter": [],   # only its presence matters: it is refused
    "NetParameter": [("name", 1, "string", "optional", None, None),
                     ("input", 3, "string", "repeated", None, None),
                     ("input_shape", 8, "BlobShape", "repeated", None, None),
                     ("input_dim", 4, "int32", "repeated", None, None),
                     ("layers", 2, "V1LayerParameter", "repeated", None, None),
                     ("layer", 100, "LayerParameter", "repeated", None, None)],
    "LayerParameter": [("name", 1, "string", "optional", None, None),
                       ("type", 2, "string", "optional", None, None),
                       ("bottom", 3, "string", "repeated", None, None),
                       ("top", 4, "string", "repeated", None, None),
                       ("blobs", 7, "BlobProto", "repeated", None, None),
                       ("convolution_param", 106, "ConvolutionParameter", "optional", None, None),
                       ("pooling_param", 121, "PoolingParameter", "optional", None, None),
                       ("lrn_param", 118, "LRNParameter", "optional", None, None),
                       ("inner_product_param", 117, "InnerProductParameter", "optional", None,
                        None),
                       ("dropout_param", 108, "DropoutParameter", "optional", None, None),
                       ("input_param", 143, "InputParameter", "optional", None, None)],
    "ConvolutionParameter": [("num_output", 1, "uint32", "optional", None, None),
                             ("bias_term", 2, "bool", "optional", None, "true"),
                             ("pad", 3, "uint32", "repeated", None, None),
                             ("kernel_size", 4, "uint32", "repeated", None, None),
                             ("group", 5, "uint32", "optional", None, "1"),
                             ("stride", 6, "uint32", "repeated", None, None),
                             ("pad_h", 9, "uint32", "optional", None, None),
                             ("pad_w", 10, "uint32", "optional", None, None),
                             ("kernel_h", 11, "uint32", "optional", None, None),
                             ("kernel_w", 12, "uint32", "optional", None, None),
                             ("stride_h", 13, "uint32", "optional", None, None),
                             ("stride_w", 14, "uint32", "optional", None, None),
                             ("dilation", 18, "uint32", "repeated", None, None)],
    "PoolingParameter": [("pool", 1, "PoolMethod", "optional", None, "MAX"),
                         ("kernel_size", 2, "uint32", "optional", None, None),
                         ("stride", 3, "uint32", "optional", None, "1"),
                         ("pad", 4, "uint32", "optional", None, "0"),
                         ("kernel_h", 5, "uint32", "optional", None, None),
                         ("kernel_w", 6, "uint32", "optional", None, None),
                         ("stride_h", 7, "uint32", "optional", None, None),
                         ("stride_w", 8, "uint32", "optional", None, None),
                         ("pad_h", 9, "uint32", "optional", None, None),
                         ("pad_w", 10, "uint32", "optional", None, None),
                         ("global_pooling", 12, "bool", "optional", None, None),
                         ("round_mode", 13, "RoundMode", "optional", None, "CEIL")],
    "LRNParameter": [("local_size", 1, "uint32", "optional", None, "5"),
                     ("alpha", 2, "float", "optional", None, "1"),
                     ("beta", 3, "float", "optional", None, "0.75"),
                     ("norm_region", 4, "NormRegion", "optional", None, "ACROSS_CHANNELS"),
                     ("k", 5, "float", "optional", None, "1")],
    "InnerProductParameter": [("num_output", 1, "uint32", "optional", None, None),
                              ("bias_term", 2, "bool", "optional", None, "true"),
                              ("axis", 5, "int32", "optional", None, "1"),
                              ("transpose", 6, "bool", "optional", None, None)],
    "DropoutParameter": [("dropout_ratio", 1, "float", "optional", None, "0.5")],
    "InputParameter": [("shape", 1, "BlobShape", "repeated", None, None)],
}
ENUMS = {"PoolMethod": ["MAX", "AVE", "STOCHASTIC"], "RoundMode": ["CEIL", "FLOOR"],
         "NormRegion": ["ACROSS_CHANNELS", "WITHIN_CHANNEL"]}
_CLASSES = {}


def caffe_messages() -> dict:
    """Message classes for the schema above (built once from a FileDescriptorProto)."""
    if _CLASSES:
        return _CLASSES
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    fdp = descriptor_pb2.FileDescriptorProto(name="googlenet_caffe_subset.proto",
                                             package="caffe", syntax="proto2")
    for name, values in ENUMS.items():
        enum = fdp.enum_type.add(name=name)
        for i, v in enumerate(values):
            enum.value.add(name=v, number=i)
    fd = descriptor_pb2.FieldDescriptorProto
    scalar = {"string": fd.TYPE_STRING, "int32": fd.TYPE_INT32, "uint32": fd.TYPE_UINT32,
              "int64": fd.TYPE_INT64, "float": fd.TYPE_FLOAT, "double": fd.TYPE_DOUBLE,
              "bool": fd.TYPE_BOOL}
    for name, fields in SCHEMA.items():
        msg = fdp.message_type.add(name=name)
        for fname, number, ftype, label, _, default in fields:
            f = msg.field.add(name=fname, number=number,
                              label=fd.LABEL_REPEATED if label == "repeated" else fd.LABEL_OPTIONAL)
            if ftype in scalar:
                f.type = scalar[ftype]
                if label == "repeated" and ftype in ("float", "double", "int64"):
                    f.options.packed = True       # Caffe declares blob data and dims packed
            elif ftype in ENUMS:
                f.type, f.type_name = fd.TYPE_ENUM, f".caffe.{ftype}"
            else:
                f.type, f.type_name = fd.TYPE_MESSAGE, f".caffe.{ftype}"
            if default is not None:
                f.default_value = default
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    for name in SCHEMA:
        descriptor = pool.FindMessageTypeByName(f"caffe.{name}")
        _CLASSES[name] = message_factory.GetMessageClass(descriptor)
    return _CLASSES


class CaffeError(ValueError):
    """The Caffe files cannot be read or do not describe our GoogLeNet; says which and why."""


# ------------------------------------------------------------------ reading the two files
def read_caffemodel(path: str):
    """The NetParameter in a binary .caffemodel; CaffeError when it is not one we can read."""
    from google.protobuf.message import DecodeError
    with open(path, "rb") as f:
        blob = f.read()
    net = caffe_messages()["NetParameter"]()
    try:
        net.ParseFromString(blob)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise CaffeError(f"{path}: not a readable Caffe model: the protobuf data is truncated "
                         f"or is not a NetParameter ({exc})") from None
    _refuse_v1(net, path)
    if not any(layer.blobs for layer in net.layer):
        raise CaffeError(f"{path}: not a Caffe model with weights (no layer holds a blob; "
                         f"{len(net.layer)} layers read)")
    return net


def read_prototxt(path: str):
    """The NetParameter in a text .prototxt (fields outside our schema are skipped)."""
    from google.protobuf import text_format
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise CaffeError(f"{path}: not a text .prototxt (it is not UTF-8 text)") from None
    net = caffe_messages()["NetParameter"]()
    try:
        text_format.Parse(text, net, allow_unknown_field=True)
    except text_format.ParseError as exc:
        raise CaffeError(f"{path}: not a Caffe network definition ({exc})") from None
    _refuse_v1(net, path)
    if not net.layer:
        raise CaffeError(f"{path}: defines no layers")
    return net


def _refuse_v1(net, path):
    if len(net.layers):
        raise CaffeError(f"{path} uses Caffe's legacy V1 'layers' format, which is not read: "
                         f"convert it with Caffe's tools (upgrade_net_proto_binary for a "
                         f".caffemodel, upgrade_net_proto_text for a .prototxt)")


def blob_array(blob, where: str) -> np.ndarray:
    """A BlobProto's values in its shape (``shape.dim``, or the legacy num/channels/height/
    width), float32."""
    if blob.HasField("shape"):
        shape = tuple(int(d) for d in blob.shape.dim)
    else:
        shape = (blob.num, blob.channels, blob.height, blob.width)
    values = blob.data if len(blob.data) else blob.double_data
    if len(values) != math.prod(shape):
        raise CaffeError(f"{where}: the blob of shape {shape} holds {len(values)} values, not "
                         f"{math.prod(shape)}")
    return np.asarray(values, dtype=np.float32).reshape(shape)


# ------------------------------------------------------------------ Caffe names -> ours
_INCEPTION_PARTS = {"1x1": "conv_1x1", "3x3_reduce": "conv_3x3_reduce", "3x3": "conv_3x3",
                    "5x5_reduce": "conv_5x5_reduce", "5x5": "conv_5x5", "pool_proj": "pool_proj",
                    "pool": "pool"}
_FIXED = {"conv1/7x7_s2": "conv1", "conv2/3x3_reduce": "conv2_reduce", "conv2/3x3": "conv2",
          "pool1/3x3_s2": "pool1", "pool1/norm1": "norm1", "conv2/norm2": "norm2",
          "pool2/3x3_s2": "pool2", "pool3/3x3_s2": "pool3", "pool4/3x3_s2": "pool4",
          "loss3/classifier": "classifier"}
_AUX_PARTS = {"conv": "conv", "fc": "fc", "classifier": "classifier"}
# Pools that our GoogLeNet computes from the input size (Caffe's values at 224x224).
_FUNCTIONAL_POOLS = {"pool5/7x7_s1": ("AVE", 7, 1, 0), "loss1/ave_pool": ("AVE", 5, 3, 0),
                     "loss2/ave_pool": ("AVE", 5, 3, 0)}


def caffe_name_to_ours(name: str) -> str | None:
    """Our module name for a Caffe layer name (None: a layer without a module of ours)."""
    if name in _FIXED:
        return _FIXED[name]
    m = re.fullmatch(r"(inception_[345][a-e])/(\w+)", name)
    if m and m.group(2) in _INCEPTION_PARTS:
        return f"{m.group(1)}.{_INCEPTION_PARTS[m.group(2)]}"
    m = re.fullmatch(r"loss([12])/(\w+)", name)
    if m and m.group(2) in _AUX_PARTS:
        return f"aux{m.group(1)}.{_AUX_PARTS[m.group(2)]}"
    return None


def _pair(repeated, single_h, single_w, default):
    values = list(repeated) if not isinstance(repeated, int) else [repeated]
    h = single_h or (values[0] if values else default)
    w = single_w or (values[-1] if values else default)
    return h, w


_PARAMS = {"Convolution": "convolution_param", "InnerProduct": "inner_product_param",
           "Pooling": "pooling_param", "LRN": "lrn_param"}


def check_layer(layer, modules: dict, where: str, settings_required: bool = True) -> None:
    """CaffeError unless the layer's settings are those of the module it maps to.

    A .caffemodel repeats the settings next to the weights, but a file may leave them out;
    with ``settings_required=False`` a layer without them is not checked here (its blob
    shapes still are)."""
    name, kind = layer.name, layer.type
    if not settings_required and kind in _PARAMS and not layer.HasField(_PARAMS[kind]):
        return
    ours = caffe_name_to_ours(name)
    module = modules.get(ours) if ours else None

    def need(ok, what):
        if not ok:
            raise CaffeError(f"{where}: layer {name!r} ({kind}): {what}")
    if kind == "Convolution":
        p = layer.convolution_param
        need(module is not None and hasattr(module, "ksize"), "no such convolution in GoogLeNet")
        k = _pair(p.kernel_size, p.kernel_h, p.kernel_w, 0)
        s = _pair(p.stride, p.stride_h, p.stride_w, 1)
        pad = _pair(p.pad, p.pad_h, p.pad_w, 0)
        need(p.num_output == module.out_channels,
             f"{p.num_output} outputs, GoogLeNet's {ours} has {module.out_channels}")
        need(k == (module.ksize,) * 2 and s == (module.stride,) * 2 and pad == (module.pad,) * 2,
             f"kernel {k}, stride {s}, pad {pad}; GoogLeNet's {ours} has {module.ksize}, "
             f"{module.stride}, {module.pad}")
        need(p.group == 1 and all(d == 1 for d in p.dilation) and p.bias_term,
             "grouped, dilated or bias-free convolutions are not GoogLeNet's")
    elif kind == "InnerProduct":
        p = layer.inner_product_param
        need(module is not None and hasattr(module, "out_features"),
             "no such fully connected layer in GoogLeNet")
        need(not p.transpose and p.axis == 1 and p.bias_term, "transposed, axis != 1 or "
             "bias-free inner products are not GoogLeNet's")
        if ours != "classifier" and not ours.endswith(".classifier"):
            need(p.num_output == module.out_features,
                 f"{p.num_output} outputs, GoogLeNet's {ours} has {module.out_features}")
    elif kind == "Pooling":
        p = layer.pooling_param
        method = "MAX" if p.pool == 0 else "AVE" if p.pool == 1 else "STOCHASTIC"
        k = _pair(p.kernel_size, p.kernel_h, p.kernel_w, 0)
        s = _pair(p.stride, p.stride_h, p.stride_w, 1)
        pad = _pair(p.pad, p.pad_h, p.pad_w, 0)
        need(p.round_mode == 0 and not p.global_pooling, "GoogLeNet's pools round up (CEIL)")
        if name in _FUNCTIONAL_POOLS:
            want = _FUNCTIONAL_POOLS[name]
            need((method, k[0], s[0], pad[0]) == want and k[0] == k[1] and s[0] == s[1],
                 f"{method} {k}/{s} pad {pad}; GoogLeNet's is {want[0]} {want[1]}/{want[2]}")
            return
        need(module is not None and hasattr(module, "ceil_mode"), "no such pool in GoogLeNet")
        need(method == "MAX" and k == (module.ksize,) * 2 and s == (module.stride,) * 2
             and pad == (module.pad,) * 2,
             f"{method} {k}/{s} pad {pad}; GoogLeNet's {ours} is MAX {module.ksize}/"
             f"{module.stride} pad {module.pad}")
    elif kind == "LRN":
        p = layer.lrn_param
        need(module is not None and hasattr(module, "alpha"), "no such LRN in GoogLeNet")
        need(p.norm_region == 0 and p.local_size == module.size
             and math.isclose(p.alpha, module.alpha, rel_tol=1e-6)
             and math.isclose(p.beta, module.beta, rel_tol=1e-6)
             and math.isclose(p.k, module.k, rel_tol=1e-6),
             f"size {p.local_size}, alpha {p.alpha:g}, beta {p.beta:g}, k {p.k:g}; GoogLeNet's "
             f"is across channels, {module.size}, {module.alpha:g}, {module.beta:g}, "
             f"{module.k:g}")
    elif kind == "Concat" and re.fullmatch(r"inception_[345][a-e]/output", name):
        block = name.split("/")[0]
        want = [f"{block}/{b}" for b in ("1x1", "3x3", "5x5", "pool_proj")]
        need(list(layer.bottom) == want, f"concatenates {list(layer.bottom)}, GoogLeNet "
                                         f"concatenates {want} in that order")


def _input_size(net, path) -> int:
    shapes = [list(s.dim) for s in net.input_shape]
    if net.input_dim:
        shapes.append(list(net.input_dim)[:4])
    for layer in net.layer:
        if layer.type == "Input":
            shapes += [list(s.dim) for s in layer.input_param.shape]
    if not shapes:
        return 224
    shape = shapes[0]
    if len(shape) != 4 or shape[1] != 3 or shape[2] != shape[3]:
        raise CaffeError(f"{path}: input shape {shape}; GoogLeNet takes (N, 3, S, S)")
    return int(shape[2])


def import_caffe(prototxt: str, caffemodel: str, classes: list | None = None):
    """(weights dict, model description, class names) of our GoogLeNet holding the Caffe
    model's weights; CaffeError on any mismatch of names, settings or shapes."""
    from models.googlenet import SPEC
    proto, weights_net = read_prototxt(prototxt), read_caffemodel(caffemodel)
    blobs = {layer.name: layer for layer in weights_net.layer if len(layer.blobs)}
    if "loss3/classifier" not in blobs:
        raise CaffeError(f"{caffemodel}: no 'loss3/classifier' layer: not bvlc_googlenet's "
                         f"weights (layers with weights: {', '.join(list(blobs)[:5])}...)")
    num_classes = len(blobs["loss3/classifier"].blobs[-1].data) or \
        len(blobs["loss3/classifier"].blobs[-1].double_data)
    aux = all(f"loss{i}/{p}" in blobs for i in (1, 2) for p in _AUX_PARTS)
    model = SPEC.build(num_classes, aux_logits=aux, seed=0)
    modules = dict(model.named_modules())
    for net, path, required in ((proto, prototxt, True), (weights_net, caffemodel, False)):
        for layer in net.layer:
            check_layer(layer, modules, path, required)
    size = _input_size(proto, prototxt)
    SPEC.check_image_size(size)

    own = dict(model.named_parameters())
    weights = {}
    for name, layer in blobs.items():
        ours = caffe_name_to_ours(name)
        if ours is None or not (ours + ".weight") in own:
            if name.startswith(("loss1/", "loss2/")) and not aux:
                continue        # an incomplete auxiliary head is left out with the others
            raise CaffeError(f"{caffemodel}: layer {name!r} ({layer.type}) holds weights but "
                             f"has no counterpart in GoogLeNet")
        if len(layer.blobs) != 2:
            raise CaffeError(f"{caffemodel}: layer {name!r} has {len(layer.blobs)} blobs, "
                             f"expected a weight and a bias")
        for blob, part in zip(layer.blobs, ("weight", "bias")):
            a = blob_array(blob, f"{caffemodel}: {name} {part}")
            want = own[f"{ours}.{part}"].shape
            if a.shape != want:
                # Old Caffe stores inner-product blobs as (1, 1, out, in) and biases as
                # (1, 1, 1, out): the same values in our order with leading ones.
                squeezed = a.reshape(a.shape[next((i for i, d in enumerate(a.shape) if d != 1),
                                                  len(a.shape)):])
                if squeezed.shape != want:
                    raise CaffeError(f"{caffemodel}: layer {name!r} {part} has shape "
                                     f"{a.shape}, GoogLeNet's {ours}.{part} has {want}")
                a = squeezed
            weights[f"{ours}.{part}"] = a
    missing = sorted(set(own) - set(weights))
    if missing:
        raise CaffeError(f"{caffemodel}: no weights for {len(missing)} of GoogLeNet's "
                         f"parameters, e.g. {', '.join(missing[:3])}")
    names = classes if classes is not None else [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise UsageError(f"--classes: {len(names)} names for the model's {num_classes} classes")
    description = ckpt.model_meta(SPEC, model, size, "xavier")
    return weights, description, names


def run_import(args, spec) -> None:
    if spec.name != "googlenet":
        raise UsageError(f"import-caffe reads Caffe's GoogLeNet (python -m models.googlenet "
                         f"import-caffe), not into {spec.title}")
    try:
        caffe_messages()
    except ImportError:
        raise UsageError("import-caffe needs the protobuf package: pip install "
                         "'googlenet-engine[caffe]' (or pip install protobuf)") from None
    for flag, path in (("prototxt", args.prototxt), ("caffemodel", args.caffemodel),
                       ("--classes", args.classes)):
        if path is not None and not os.path.isfile(path):
            raise UsageError(f"{flag} {path}: no such file")
    classes = None
    if args.classes:
        with open(args.classes, encoding="utf-8") as f:
            classes = [line.strip() for line in f if line.strip()]
    try:
        weights, description, names = import_caffe(args.prototxt, args.caffemodel, classes)
    except CaffeError as exc:
        raise UsageError(str(exc)) from None
    prep = Preprocessing.caffe()
    ckpt.save_weights_file(args.output, weights, description, names, prep.to_meta(),
                           weights="caffe", source=os.path.basename(args.caffemodel))
    log(f"wrote {args.output}: GoogLeNet, {len(names)} classes, "
        f"{'with' if description['aux_logits'] else 'without'} the auxiliary heads, "
        f"{description['image_size']}x{description['image_size']} input, preprocessing "
        f"{prep.describe()}")
