"""ONNX export checked by onnxruntime: GoogLeNet on photographs and random input, and the
pooling corner cases (Caffe's ceil rounding and divisors) op by op."""

import numpy as np
import pytest
from PIL import Image

import layers as L
from data.preprocessing import Preprocessing
from data.transforms import eval_transform
from engine import Module, Tensor, no_grad
from models.googlenet import SPEC, build
from trainer import checkpoint as ckpt
from trainer.cli import main as cli_main

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

CLASSES = [f"c{i:02d}" for i in range(20)]


def ours(model, x):
    with no_grad():
        return model(Tensor(x)).numpy()


def session(path_or_bytes):
    return ort.InferenceSession(path_or_bytes, providers=["CPUExecutionProvider"])


def photographs(size, prep):
    """scikit-image's bundled photographs through our test transform -> (N, 3, S, S)."""
    data = pytest.importorskip("skimage.data")
    t = eval_transform(size, **prep.transform_args())
    images = [getattr(data, n)() for n in ("astronaut", "chelsea", "coffee", "rocket")]
    return np.stack([prep.finish(t(Image.fromarray(a), None)) for a in images])


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A GoogLeNet (xavier init, so every class has its own logit) saved as a weights file
    and exported with the command line at 224x224."""
    tmp = tmp_path_factory.mktemp("onnx")
    model = build(len(CLASSES), aux_logits=True, seed=7, init="xavier")
    weights = {n: p.numpy() for n, p in model.named_parameters()}
    src = str(tmp / "w.npz")
    ckpt.save_weights_file(src, weights, ckpt.model_meta(SPEC, model, 224, "xavier"), CLASSES,
                           Preprocessing.ours().to_meta(), weights="ema")
    out = str(tmp / "g.onnx")
    assert cli_main(SPEC, ["export", "--checkpoint", src, "--format", "onnx", out]) == 0
    return model.eval(), out


def test_graph_metadata_and_dynamic_batch(exported):
    _, path = exported
    proto = onnx.load(path)
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 13
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 224, 224]
    from trainer.export import onnx_metadata
    meta = onnx_metadata(path)
    assert meta["classes"] == CLASSES and meta["weights"] == "ema"
    assert meta["preprocessing"] == Preprocessing.ours().to_meta()
    ops = {n.op_type for n in proto.graph.node}
    assert {"Conv", "MaxPool", "LRN", "Concat", "AveragePool", "Gemm"} <= ops
    assert not any("aux" in t.name for t in proto.graph.initializer)
    lrn = next(n for n in proto.graph.node if n.op_type == "LRN")
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in lrn.attribute}
    assert attrs["size"] == 5 and np.isclose(attrs["alpha"], 1e-4) and attrs["bias"] == 1.0
    pools = [n for n in proto.graph.node if n.op_type == "MaxPool"]
    assert all(onnx.helper.get_attribute_value(a) == 1 for n in pools[:2] for a in n.attribute
               if a.name == "ceil_mode")


def test_onnxruntime_matches_our_forward_on_photographs_and_noise(exported):
    model, path = exported
    sess = session(path)
    x = photographs(224, Preprocessing.ours()).astype(np.float32)
    noise = np.random.default_rng(0).standard_normal((2, 3, 224, 224)).astype(np.float32)
    for batch in (x, noise, x[:1]):
        ref, got = ours(model, batch), sess.run(None, {"input": batch})[0]
        assert got.shape == ref.shape
        assert np.abs(got - ref).max() <= 1e-4
        for r, g in zip(ref, got):
            assert np.argmax(r) == np.argmax(g)
            assert set(np.argsort(-r)[:5]) == set(np.argsort(-g)[:5])


class Corners(Module):
    """Pools where Caffe's rounding differs from the textbook: ceil overflow, padding plus
    overflow (average divisors), a last window that would start in the padding; LRN with a
    large alpha so that alpha / n shows."""

    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.conv = L.Conv2d(3, 8, 3, 1, 1, relu=True)

    def forward(self, x):
        x = self.conv(x)
        if self.kind == "lrn":
            return L.lrn(x, 5, 0.5, 0.75, 2.0)
        k, s, p = {"max-pad-overflow": (3, 2, 1), "avg-pad-overflow": (3, 2, 1),
                   "avg-ceil": (3, 2, 0), "max-drop-last": (2, 2, 1),
                   "avg-drop-last": (2, 2, 1), "avg-pad": (3, 1, 1)}[self.kind]
        pool = L.max_pool2d if self.kind.startswith("max") else L.avg_pool2d
        return L.concat([pool(x, k, s, p), pool(x * 2.0, k, s, p)])


@pytest.mark.parametrize("kind,size", [("max-pad-overflow", 6), ("avg-pad-overflow", 6),
                                       ("avg-ceil", 8), ("max-drop-last", 5),
                                       ("avg-drop-last", 5), ("avg-pad", 7), ("lrn", 6)])
def test_caffe_pooling_and_lrn_export_exactly(kind, size):
    from trainer.onnx_export import to_onnx
    model = Corners(kind)
    proto = to_onnx(model, size)
    x = np.random.default_rng(1).standard_normal((3, 3, size, size)).astype(np.float32)
    ref, got = ours(model, x), session(proto.SerializeToString()).run(None, {"input": x})[0]
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_an_op_without_converter_is_named(tmp_path):
    from trainer.onnx_export import ExportError, to_onnx

    class Summing(Module):
        def forward(self, x):
            return x.sum(axis=1)
    with pytest.raises(ExportError, match="no converter for Sum"):
        to_onnx(Summing(), 8)
