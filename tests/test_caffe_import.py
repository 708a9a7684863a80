"""Caffe import: a .caffemodel written by the protobuf library from a GoogLeNet of ours
(tests/caffe_files.py declares its own copy of Caffe's schema) must give back the same logits;
legacy, truncated and foreign files must be refused in one line."""
import numpy as np
import pytest
from PIL import Image

from data.preprocessing import Prepared, Preprocessing
from data.transforms import eval_transform
from engine import Tensor, no_grad
from models.googlenet import SPEC, build
from trainer import checkpoint as ckpt
from trainer.cli import main as cli_main

pytest.importorskip("google.protobuf")
from caffe_files import deploy_prototxt, write_caffemodel, write_v1_caffemodel  # noqa: E402

CLASSES = 6


def main(argv):
    return cli_main(SPEC, argv)


def _model(aux=True):
    model = build(CLASSES, aux_logits=aux, seed=11, init="msra")
    rng = np.random.default_rng(3)
    for name, p in model.named_parameters():      # msra leaves the classifiers at zero
        if "classifier" in name:
            p.data[...] = rng.standard_normal(p.shape).astype(np.float32) * 0.05
    return model


@pytest.fixture(scope="module")
def caffe_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("caffe")
    model = _model()
    write_caffemodel(model, tmp / "g.caffemodel")
    (tmp / "deploy.prototxt").write_text(deploy_prototxt(CLASSES))
    return model, tmp


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    assert err.startswith("error:") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err
    return err


def test_imported_weights_give_the_same_logits(caffe_files, capsys):
    model, tmp = caffe_files
    names = tmp / "names.txt"
    names.write_text("".join(f"n0{i} class {i}\n" for i in range(CLASSES)))
    out = tmp / "imported.npz"
    assert main(["import-caffe", str(tmp / "deploy.prototxt"), str(tmp / "g.caffemodel"),
                 "-o", str(out), "--classes", str(names)]) == 0
    assert "with the auxiliary heads" in capsys.readouterr().err
    from trainer.evaluate import load_model
    loaded, _, classes, size, which, prep = load_model(str(out), "cpu")
    assert classes[2] == "n02 class 2" and size == 224 and which == "caffe"
    assert prep == Preprocessing.caffe()
    x = np.random.default_rng(0).standard_normal((2, 3, 96, 96)).astype(np.float32)
    with no_grad():
        want, got = model.eval()(Tensor(x)).numpy(), loaded(Tensor(x)).numpy()
    np.testing.assert_array_equal(got, want)
    arrays, _ = ckpt.load_checkpoint(str(out))
    assert "model/aux2.classifier.weight" in arrays


def test_legacy_blob_shapes_and_missing_aux_heads(tmp_path, capsys):
    model = _model(aux=False)
    write_caffemodel(model, tmp_path / "g.caffemodel", legacy_fc_shapes=True, aux=False)
    (tmp_path / "deploy.prototxt").write_text(deploy_prototxt(CLASSES))
    out = tmp_path / "w.npz"
    assert main(["import-caffe", str(tmp_path / "deploy.prototxt"),
                 str(tmp_path / "g.caffemodel"), "-o", str(out)]) == 0
    arrays, meta = ckpt.load_checkpoint(str(out))
    assert meta["model"]["aux_logits"] is False and meta["classes"][0] == "0"
    np.testing.assert_array_equal(arrays["model/classifier.weight"], model.classifier.weight.data)


def test_bad_files_are_refused_in_one_line(caffe_files, tmp_path, capsys):
    _, tmp = caffe_files
    proto, model = str(tmp / "deploy.prototxt"), str(tmp / "g.caffemodel")
    out = str(tmp_path / "o.npz")
    write_v1_caffemodel(tmp_path / "v1.caffemodel")
    assert main(["import-caffe", proto, str(tmp_path / "v1.caffemodel"), "-o", out]) == 2
    _one_line_error(capsys, "legacy V1", "upgrade_net_proto_binary")

    data = (tmp / "g.caffemodel").read_bytes()
    (tmp_path / "cut.caffemodel").write_bytes(data[:len(data) // 2 + 3])
    assert main(["import-caffe", proto, str(tmp_path / "cut.caffemodel"), "-o", out]) == 2
    _one_line_error(capsys, "cut.caffemodel", "truncated")

    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "photo.png")
    assert main(["import-caffe", proto, str(tmp_path / "photo.png"), "-o", out]) == 2
    _one_line_error(capsys, "photo.png")
    assert main(["import-caffe", str(tmp_path / "photo.png"), model, "-o", out]) == 2
    _one_line_error(capsys, "photo.png")

    (tmp_path / "alpha.prototxt").write_text(deploy_prototxt(CLASSES, lrn_alpha="0.001"))
    assert main(["import-caffe", str(tmp_path / "alpha.prototxt"), model, "-o", out]) == 2
    _one_line_error(capsys, "pool1/norm1", "alpha")

    wide = deploy_prototxt(CLASSES).replace("num_output: 64\n    pad: 3", "num_output: 32\n    pad: 3")
    (tmp_path / "wide.prototxt").write_text(wide)
    assert main(["import-caffe", str(tmp_path / "wide.prototxt"), model, "-o", out]) == 2
    _one_line_error(capsys, "conv1/7x7_s2", "32 outputs")

    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    assert main(["import-caffe", proto, model, "-o", out, "--classes",
                 str(tmp_path / "three.txt")]) == 2
    _one_line_error(capsys, "--classes", "3 names")
    assert main(["import-caffe", proto, str(tmp_path / "missing.caffemodel"), "-o", out]) == 2
    _one_line_error(capsys, "no such file")


def test_caffe_preprocessing_is_bgr_0_255_minus_mean():
    """Our transform path with Caffe's preprocessing equals the direct formula."""
    prep = Preprocessing.caffe()
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8))
    x = Prepared(eval_transform(64, **prep.transform_args()), prep)(img)
    crop = np.asarray(img.resize((73, 73), Image.BILINEAR), np.float32)[4:68, 4:68]
    want = (crop[:, :, ::-1] - np.array([104, 117, 123], np.float32)).transpose(2, 0, 1)
    np.testing.assert_allclose(x, want, atol=2e-3)
    np.testing.assert_allclose(prep.apply(np.asarray(img)), (np.asarray(
        img, np.float32)[:, :, ::-1] - [104, 117, 123]).transpose(2, 0, 1), atol=1e-4)
