"""Ensembles (eval/predict over several files, eval --table), weights-only export and
fine-tuning from a weights file, end to end through the command line."""
import os
import re

import numpy as np
import pytest
from PIL import Image

from data.preprocessing import Preprocessing
from data.transforms import eval_transform
from engine import Tensor, no_grad
from models.googlenet import SPEC, build
from trainer import checkpoint as ckpt
from trainer.cli import main as cli_main

CLASSES = ["disc", "ring", "stripes"]
SIZE = 64


def main(argv):
    return cli_main(SPEC, argv)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """val/<class>/*.png: one noisy 72x72 image per class."""
    root = tmp_path_factory.mktemp("ens")
    rng = np.random.default_rng(5)
    for c in CLASSES:
        os.makedirs(root / "val" / c)
        Image.fromarray(rng.integers(0, 256, (72, 80, 3), dtype=np.uint8)).save(
            root / "val" / c / "a.png")
    return root


def _weights_file(path, seed, classes=CLASSES, prep=None):
    model = build(len(classes), aux_logits=False, seed=seed, init="xavier")
    ckpt.save_weights_file(str(path), {n: p.numpy() for n, p in model.named_parameters()},
                           ckpt.model_meta(SPEC, model, SIZE, "xavier"), classes,
                           (prep or Preprocessing.ours()).to_meta(), weights="model")
    return model.eval()


@pytest.fixture(scope="module")
def members(folder):
    return [(str(folder / f"m{s}.npz"), _weights_file(folder / f"m{s}.npz", s)) for s in (1, 2)]


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _by_hand(models, image):
    """Mean over models of softmax(logits) on the centre crop, computed here."""
    x = eval_transform(SIZE)(Image.open(image).convert("RGB"), None)[None]
    with no_grad():
        return np.mean([_softmax(m(Tensor(x)).numpy().astype(np.float64))[0] for m in models],
                       axis=0)


def test_predict_averages_the_models_softmax(folder, members, capsys):
    image = str(folder / "val" / "ring" / "a.png")
    args = ["predict", image, "--topk", "3"]
    for path, _ in members:
        args += ["--checkpoint", path]
    assert main(args) == 0
    printed = {name: float(p) for name, p in
               re.findall(r"\d\. (\w+)\s+([\d.]+)%", capsys.readouterr().out)}
    want = _by_hand([m for _, m in members], image)
    single = _by_hand([members[0][1]], image)
    assert not np.allclose(want, single, atol=1e-3)       # averaging changes the answer
    for k, name in enumerate(CLASSES):
        assert printed[name] == pytest.approx(100 * want[k], abs=0.006)


def test_eval_ensemble_and_table(folder, members, capsys):
    paths = [p for p, _ in members]
    models = [m for _, m in members]
    probs = np.stack([_by_hand(models, str(folder / "val" / c / "a.png")) for c in CLASSES])
    top1 = 100.0 * np.mean(probs.argmax(axis=1) != np.arange(3))
    assert main(["eval", "--checkpoint", *paths, "--data", str(folder)]) == 0
    out = capsys.readouterr().out
    assert f"3 images, 2 models, 1 crop(s), model weights: top-1 error {top1:.2f}%" in out

    assert main(["eval", "--checkpoint", *paths, "--data", str(folder), "--table"]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if re.match(r"\s+\d+\s+\d+\s+\d+ ", line)]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("1", "1", "1"), ("1", "10", "10"), ("1", "144", "144"),
        ("2", "1", "2"), ("2", "10", "20"), ("2", "144", "288")]
    assert rows[3][3] == f"{top1:.2f}%" and rows[0][5] == "base"


def test_ensemble_members_must_agree_on_classes(folder, members, tmp_path, capsys):
    other = tmp_path / "other.npz"
    _weights_file(other, 3, classes=["disc", "ring", "square"])
    assert main(["eval", "--checkpoint", members[0][0], str(other), "--data", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other.npz" in err and "'square'" in err


def test_members_keep_their_own_preprocessing(folder, members, tmp_path, capsys):
    """A BGR 0-255 member (as imported from Caffe) gets BGR 0-255 inputs in an ensemble."""
    model = members[0][1]
    bgr = tmp_path / "bgr.npz"
    w = {n: p.numpy().copy() for n, p in model.named_parameters()}
    # Same network on BGR 0-255 input: reverse conv1's input channels and scale them so
    # that it computes exactly what the RGB member computes on its input.
    prep = Preprocessing(3, "BGR", 255.0, tuple(255 * m for m in (0.406, 0.456, 0.485)),
                         tuple(255 * s for s in (0.225, 0.224, 0.229)))
    ckpt.save_weights_file(str(bgr), {**w, "conv1.weight": w["conv1.weight"][:, ::-1].copy()},
                           ckpt.model_meta(SPEC, model, SIZE, "xavier"), CLASSES, prep.to_meta(),
                           weights="model")
    image = str(folder / "val" / "disc" / "a.png")
    outs = []
    for path in (members[0][0], str(bgr)):
        assert main(["predict", "--checkpoint", path, image]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A one-epoch training run on the tiny built-in data."""
    tmp = tmp_path_factory.mktemp("ft")
    out = tmp / "run"
    assert main(["train", "--builtin-dir", str(tmp / "d"), "--output-dir", str(out),
                 "--builtin-classes", "3", "--builtin-train", "4", "--builtin-val", "2",
                 "--batch-size", "6", "--epochs", "1"]) == 0
    return tmp, out


def test_weights_export_is_smaller_and_evaluates_the_same(run, capsys):
    tmp, out = run
    last = str(out / "last.npz")
    w, small = str(tmp / "w.npz"), str(tmp / "w_noaux.npz")
    assert main(["export", "--checkpoint", last, "--format", "npz", w]) == 0
    assert main(["export", "--checkpoint", last, "--format", "npz", "--no-aux", small]) == 0
    assert os.path.getsize(last) / os.path.getsize(w) > 2.5
    assert os.path.getsize(last) / os.path.getsize(small) > 5
    arrays, meta = ckpt.load_checkpoint(w)
    assert meta["kind"] == "weights" and meta["weights"] == "ema"
    assert meta["preprocessing"]["mean"] and len(meta["classes"]) == 3
    ema = ckpt.load_checkpoint(last)[0]
    np.testing.assert_array_equal(arrays["model/conv1.weight"], ema["ema/conv1.weight"])
    capsys.readouterr()
    lines = []
    for path in (last, w):
        assert main(["eval", "--checkpoint", path]) == 0
        lines.append(capsys.readouterr().out)
    assert lines[0] == lines[1]
    assert main(["train", "--resume", w, "--output-dir", str(tmp / "x")]) == 2
    assert "weights-only" in capsys.readouterr().err


def test_fine_tuning_keeps_the_body_and_reinitialises_the_classifiers(run, capsys):
    from trainer.finetune import load_initial_weights, output_layer_parameters
    tmp, out = run
    w = str(tmp / "w.npz")
    if not os.path.exists(w):
        assert main(["export", "--checkpoint", str(out / "last.npz"), "--format", "npz", w]) == 0
    model = build(5, aux_logits=True, seed=0, init="msra")
    assert output_layer_parameters(model, 3, 64) == [
        "classifier.weight", "classifier.bias", "aux1.classifier.weight",
        "aux1.classifier.bias", "aux2.classifier.weight", "aux2.classifier.bias"]
    fresh = model.classifier.weight.numpy().copy()
    load_initial_weights(model, w, list("abcde"), SPEC, 64)
    err = capsys.readouterr().err
    assert "re-initialised classifier.weight, classifier.bias, aux1.classifier.weight" in err
    saved = ckpt.load_checkpoint(w)[0]
    np.testing.assert_array_equal(model.inception_4e.conv_3x3.weight.numpy(),
                                  saved["model/inception_4e.conv_3x3.weight"])
    np.testing.assert_array_equal(model.classifier.weight.numpy(), fresh)

    assert main(["train", "--builtin-dir", str(tmp / "d"), "--output-dir", str(tmp / "ft"),
                 "--builtin-classes", "4", "--builtin-train", "4", "--builtin-val", "2",
                 "--batch-size", "8", "--epochs", "1", "--weights", w]) == 0
    err = capsys.readouterr().err
    assert "fine-tuning from" in err and "re-initialised classifier.weight" in err
    assert main(["train", "--weights", str(tmp / "nope.npz"), "--output-dir",
                 str(tmp / "y")]) == 2
    assert "--weights" in capsys.readouterr().err


def test_runs_saved_before_weights_existed_still_resume(run, tmp_path):
    from trainer.loop import _saved_config
    _, out = run
    arrays, meta = ckpt.load_checkpoint(str(out / "last.npz"))
    del meta["config"]["weights"]
    old = str(tmp_path / "old.npz")
    ckpt.save_checkpoint(old, arrays, meta)
    assert _saved_config(old)["weights"] is None
