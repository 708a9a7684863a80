"""Caffe files written from a GoogLeNet of ours, for the import tests.

The schema here is declared on its own, from Caffe's ``caffe.proto`` (message and field
numbers), independently of ``trainer.caffe_import``; the bytes are written by the protobuf
library. ``deploy_prototxt`` writes the text definition the way bvlc_googlenet's
``deploy.prototxt`` is laid out (layer names, types, settings, in-place ReLUs, concat).
"""
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from models.googlenet import INCEPTION

_T = descriptor_pb2.FieldDescriptorProto


def _messages():
    f = descriptor_pb2.FileDescriptorProto(name="caffe_writer_test.proto", package="caffetest")

    def message(name, *fields):
        m = f.message_type.add(name=name)
        for fname, number, ftype, repeated, *rest in fields:
            fld = m.field.add(name=fname, number=number, type=ftype,
                              label=_T.LABEL_REPEATED if repeated else _T.LABEL_OPTIONAL)
            if rest:
                fld.type_name = ".caffetest." + rest[0]
            if repeated and ftype in (_T.TYPE_FLOAT, _T.TYPE_INT64):
                fld.options.packed = True
    message("BlobShape", ("dim", 1, _T.TYPE_INT64, True))
    message("BlobProto", ("num", 1, _T.TYPE_INT32, False), ("channels", 2, _T.TYPE_INT32, False),
            ("height", 3, _T.TYPE_INT32, False), ("width", 4, _T.TYPE_INT32, False),
            ("data", 5, _T.TYPE_FLOAT, True), ("shape", 7, _T.TYPE_MESSAGE, False, "BlobShape"))
    message("LayerParameter", ("name", 1, _T.TYPE_STRING, False),
            ("type", 2, _T.TYPE_STRING, False), ("bottom", 3, _T.TYPE_STRING, True),
            ("top", 4, _T.TYPE_STRING, True), ("blobs", 7, _T.TYPE_MESSAGE, True, "BlobProto"))
    message("V1LayerParameter", ("name", 4, _T.TYPE_STRING, False),
            ("blobs", 6, _T.TYPE_MESSAGE, True, "BlobProto"))
    message("NetParameter", ("name", 1, _T.TYPE_STRING, False),
            ("layers", 2, _T.TYPE_MESSAGE, True, "V1LayerParameter"),
            ("layer", 100, _T.TYPE_MESSAGE, True, "LayerParameter"))
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return {n: message_factory.GetMessageClass(pool.FindMessageTypeByName("caffetest." + n))
            for n in ("NetParameter", "LayerParameter", "BlobProto", "V1LayerParameter")}


MESSAGES = _messages()

INCEPTION_PARTS = [("1x1", "conv_1x1"), ("3x3_reduce", "conv_3x3_reduce"), ("3x3", "conv_3x3"),
                   ("5x5_reduce", "conv_5x5_reduce"), ("5x5", "conv_5x5"),
                   ("pool_proj", "pool_proj")]


def caffe_layer_names(aux=True):
    """(Caffe layer name, our module name) of every layer with weights, in network order."""
    pairs = [("conv1/7x7_s2", "conv1"), ("conv2/3x3_reduce", "conv2_reduce"),
             ("conv2/3x3", "conv2")]
    for block in INCEPTION:
        pairs += [(f"{block}/{c}", f"{block}.{o}") for c, o in INCEPTION_PARTS]
        if aux and block in ("inception_4a", "inception_4d"):
            k = 1 if block == "inception_4a" else 2
            pairs += [(f"loss{k}/{p}", f"aux{k}.{p}") for p in ("conv", "fc", "classifier")]
    return pairs + [("loss3/classifier", "classifier")]


def write_caffemodel(model, path, legacy_fc_shapes=False, aux=True):
    """Our model's weights as a binary NetParameter with Caffe's layer names."""
    net = MESSAGES["NetParameter"](name="GoogleNet")
    params = dict(model.named_parameters())
    for caffe_name, ours in caffe_layer_names(aux):
        layer = net.layer.add(name=caffe_name, type="Convolution" if params[
            ours + ".weight"].ndim == 4 else "InnerProduct")
        for part in ("weight", "bias"):
            a = params[f"{ours}.{part}"].numpy()
            blob = layer.blobs.add()
            if legacy_fc_shapes and a.ndim < 4:
                dims = (1,) * (4 - a.ndim) + a.shape
                blob.num, blob.channels, blob.height, blob.width = dims
            else:
                blob.shape.dim.extend(a.shape)
            blob.data.extend(a.reshape(-1).tolist())
    # A layer without weights, as in a real file.
    net.layer.add(name="prob", type="Softmax")
    with open(path, "wb") as f:
        f.write(net.SerializeToString())


def write_v1_caffemodel(path):
    net = MESSAGES["NetParameter"](name="old")
    old = net.layers.add(name="conv1")
    old.blobs.add().data.extend([1.0, 2.0])
    with open(path, "wb") as f:
        f.write(net.SerializeToString())


def _conv(name, bottom, top, n, k, s=1, p=0):
    return (f'layer {{\n  name: "{name}"\n  type: "Convolution"\n  bottom: "{bottom}"\n'
            f'  top: "{top}"\n  param {{ lr_mult: 1 decay_mult: 1 }}\n'
            f'  param {{ lr_mult: 2 decay_mult: 0 }}\n'
            f'  convolution_param {{\n    num_output: {n}\n    pad: {p}\n    kernel_size: {k}\n'
            f'    stride: {s}\n    weight_filler {{ type: "xavier" std: 0.1 }}\n'
            f'    bias_filler {{ type: "constant" value: 0.2 }}\n  }}\n}}\n'
            f'layer {{ name: "{name}_relu" type: "ReLU" bottom: "{top}" top: "{top}" }}\n')


def _pool(name, bottom, top, method, k, s, p=0):
    return (f'layer {{\n  name: "{name}"\n  type: "Pooling"\n  bottom: "{bottom}"\n'
            f'  top: "{top}"\n  pooling_param {{ pool: {method} kernel_size: {k} stride: {s}'
            f'{f" pad: {p}" if p else ""} }}\n}}\n')


def _lrn(name, bottom, top):
    return (f'layer {{\n  name: "{name}"\n  type: "LRN"\n  bottom: "{bottom}"\n  top: "{top}"\n'
            f'  lrn_param {{ local_size: 5 alpha: 0.0001 beta: 0.75 }}\n}}\n')


def deploy_prototxt(num_classes, size=224, lrn_alpha="0.0001"):
    """bvlc_googlenet's deploy.prototxt for ``num_classes`` classes (main path only)."""
    out = ['name: "GoogleNet"\n',
           f'layer {{\n  name: "data"\n  type: "Input"\n  top: "data"\n'
           f'  input_param {{ shape: {{ dim: 10 dim: 3 dim: {size} dim: {size} }} }}\n}}\n',
           _conv("conv1/7x7_s2", "data", "conv1/7x7_s2", 64, 7, 2, 3),
           _pool("pool1/3x3_s2", "conv1/7x7_s2", "pool1/3x3_s2", "MAX", 3, 2),
           _lrn("pool1/norm1", "pool1/3x3_s2", "pool1/norm1"),
           _conv("conv2/3x3_reduce", "pool1/norm1", "conv2/3x3_reduce", 64, 1),
           _conv("conv2/3x3", "conv2/3x3_reduce", "conv2/3x3", 192, 3, 1, 1),
           _lrn("conv2/norm2", "conv2/3x3", "conv2/norm2"),
           _pool("pool2/3x3_s2", "conv2/norm2", "pool2/3x3_s2", "MAX", 3, 2)]
    bottom = "pool2/3x3_s2"
    for block, (c1, c3r, c3, c5r, c5, pp) in INCEPTION.items():
        if block in ("inception_4a", "inception_5a"):
            pool = "pool3/3x3_s2" if block == "inception_4a" else "pool4/3x3_s2"
            out.append(_pool(pool, bottom, pool, "MAX", 3, 2))
            bottom = pool
        b = block
        out += [_conv(f"{b}/1x1", bottom, f"{b}/1x1", c1, 1),
                _conv(f"{b}/3x3_reduce", bottom, f"{b}/3x3_reduce", c3r, 1),
                _conv(f"{b}/3x3", f"{b}/3x3_reduce", f"{b}/3x3", c3, 3, 1, 1),
                _conv(f"{b}/5x5_reduce", bottom, f"{b}/5x5_reduce", c5r, 1),
                _conv(f"{b}/5x5", f"{b}/5x5_reduce", f"{b}/5x5", c5, 5, 1, 2),
                _pool(f"{b}/pool", bottom, f"{b}/pool", "MAX", 3, 1, 1),
                _conv(f"{b}/pool_proj", f"{b}/pool", f"{b}/pool_proj", pp, 1),
                f'layer {{\n  name: "{b}/output"\n  type: "Concat"\n  bottom: "{b}/1x1"\n'
                f'  bottom: "{b}/3x3"\n  bottom: "{b}/5x5"\n  bottom: "{b}/pool_proj"\n'
                f'  top: "{b}/output"\n}}\n']
        bottom = f"{b}/output"
    out += [_pool("pool5/7x7_s1", bottom, "pool5/7x7_s1", "AVE", 7, 1),
            'layer {\n  name: "pool5/drop_7x7_s1"\n  type: "Dropout"\n  bottom: "pool5/7x7_s1"\n'
            '  top: "pool5/7x7_s1"\n  dropout_param { dropout_ratio: 0.4 }\n}\n',
            f'layer {{\n  name: "loss3/classifier"\n  type: "InnerProduct"\n'
            f'  bottom: "pool5/7x7_s1"\n  top: "loss3/classifier"\n'
            f'  param {{ lr_mult: 1 decay_mult: 1 }}\n  param {{ lr_mult: 2 decay_mult: 0 }}\n'
            f'  inner_product_param {{\n    num_output: {num_classes}\n'
            f'    weight_filler {{ type: "xavier" }}\n'
            f'    bias_filler {{ type: "constant" value: 0 }}\n  }}\n}}\n',
            'layer {\n  name: "prob"\n  type: "Softmax"\n  bottom: "loss3/classifier"\n'
            '  top: "prob"\n}\n']
    return "".join(out).replace("alpha: 0.0001", f"alpha: {lrn_alpha}")
