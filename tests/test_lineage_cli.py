"""The lineage networks through the shared command line: ``summary`` against the published
counts, LeNet-5's built-in digits (a held-out test split, never trained on) and a short run,
and train -> eval -> predict for a batch-norm network (its running statistics saved)."""
import os

import numpy as np
import pytest

from trainer import checkpoint as ckpt
from trainer.cli import main as cli_main

TINY = ["--builtin-classes", "3", "--builtin-train", "4", "--builtin-val", "2",
        "--batch-size", "6", "--workers", "0", "--print-freq", "1", "--epochs", "1"]


def run(spec_module, argv):
    import importlib
    return cli_main(importlib.import_module(f"models.{spec_module}").SPEC, argv)


# name, parameters, multiply-adds: the published figures (the sources are in each module)
PUBLISHED = [("lenet5", "60,850", 332_824), ("alexnet", "60,965,224", 724_406_816),
             ("nin", "966,986", 222_486_528), ("resnet34", "21,797,672", 3_663_761_408),
             ("resnet18", "11,689,512", 1_814_073_344)]


@pytest.mark.parametrize("name,params,macs", PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_summary_prints_the_published_counts(name, params, macs, capsys):
    assert run(name, ["summary"]) == 0
    out = capsys.readouterr().out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    assert params in total and f"({macs:,})" in total, total
    assert "published:" in out


def test_summary_rows():
    from models.lenet5 import SPEC
    from trainer.summary import summarize
    rows, totals = summarize(SPEC, 32, 10)
    assert list(rows) == ["c1", "s2", "c3", "s4", "c5", "f6", "output"]
    assert rows["c3"]["shape"] == (16, 10, 10) and rows["c3"]["params"] == 1516


# ------------------------------------------------------------------------ digits
@pytest.fixture(scope="module")
def digits_root(tmp_path_factory):
    pytest.importorskip("sklearn")
    from data.digits import make_digits_imagefolder
    return make_digits_imagefolder(str(tmp_path_factory.mktemp("digits")))


def test_digits_imagefolder_splits(digits_root):
    from PIL import Image

    from data import ImageFolder
    sets = {s: ImageFolder(digits_root, s, mode="L") for s in ("train", "val", "test")}
    counts = {s: len(d) for s, d in sets.items()}
    assert sum(counts.values()) == 1797 and counts["test"] >= 350 and counts["train"] >= 1250
    ids = {s: {os.path.basename(p) for p, _ in d.samples} for s, d in sets.items()}
    assert not ids["test"] & ids["train"] and not ids["test"] & ids["val"]   # held out
    assert all(d.classes == [str(i) for i in range(10)] for d in sets.values())
    per_class = np.bincount([t for _, t in sets["test"].samples])
    assert per_class.min() >= 34                                  # stratified: ~20% of each
    with Image.open(sets["test"].samples[0][0]) as img:
        assert img.size == (32, 32) and img.mode == "L"
        a = np.asarray(img)
    assert a[:2].max() == 0 and a[2:30, 2:30].max() > 200           # 28x28 digit, centred
    stamp = os.path.getmtime(os.path.join(digits_root, "manifest.json"))
    from data.digits import make_digits_imagefolder
    make_digits_imagefolder(digits_root)                          # reused, not rewritten
    assert os.path.getmtime(os.path.join(digits_root, "manifest.json")) == stamp


def test_digits_image_is_the_scanned_digit():
    pytest.importorskip("sklearn")
    from data.digits import load_sklearn_digits, to_lenet_image
    images, labels = load_sklearn_digits()
    from PIL import Image
    digit = to_lenet_image(images[0]).crop((2, 2, 30, 30))          # the 28x28 digit
    small = np.asarray(digit.resize((8, 8), Image.BOX), np.float64)  # back to 8x8 by area
    assert np.corrcoef(small.ravel(), images[0].ravel())[0, 1] > 0.95


def test_lenet5_trains_on_the_digits_and_tests_on_the_held_out_split(digits_root, tmp_path,
                                                                     capsys):
    """Two epochs of the built-in recipe already classify most held-out digits; the full
    default run (8 epochs) reaches about 99% (README)."""
    out = str(tmp_path / "run")
    assert run("lenet5", ["train", "--epochs", "2", "--output-dir", out, "--builtin-dir",
                          os.path.dirname(digits_root), "--print-freq", "20"]) == 0 \
        or pytest.fail(capsys.readouterr().err)
    capsys.readouterr()
    assert run("lenet5", ["eval", "--checkpoint", os.path.join(out, "last.npz"), "--data",
                          digits_root, "--split", "test"]) == 0
    text = capsys.readouterr().out
    error = float(text.split("top-1 error ")[1].split("%")[0])
    assert text.startswith("359 images") or text.startswith("360 images"), text
    assert error < 15.0, text
    assert run("lenet5", ["eval", "--checkpoint", os.path.join(out, "last.npz"), "--split",
                          "nope"]) == 2
    assert "--split nope" in capsys.readouterr().err


# -------------------------------------------------------- a batch-norm network end to end
def test_resnet18_train_eval_predict_keep_the_running_statistics(tmp_path, capsys):
    out = str(tmp_path / "run")
    data = str(tmp_path / "data")
    assert run("resnet18", ["train", *TINY, "--image-size", "32", "--output-dir", out,
                            "--builtin-dir", data]) == 0
    arrays, meta = ckpt.load_checkpoint(os.path.join(out, "last.npz"))
    groups = ckpt.unpack_namespaces(arrays)
    var = groups["model"]["layer4.1.bn2.running_var"]
    assert var.shape == (512,) and not np.allclose(var, 1.0)       # trained, and saved
    from trainer.evaluate import load_model
    model, *_ = load_model(os.path.join(out, "last.npz"), "cpu")
    np.testing.assert_array_equal(dict(model.named_buffers())["layer4.1.bn2.running_var"], var)
    capsys.readouterr()
    assert run("resnet18", ["eval", "--checkpoint", os.path.join(out, "last.npz")]) == 0
    assert "top-1 error" in capsys.readouterr().out
    weights = str(tmp_path / "weights.npz")                # a weights file keeps them too
    assert run("resnet18", ["export", "--checkpoint", os.path.join(out, "last.npz"),
                            "--format", "npz", weights]) == 0
    exported, _ = ckpt.load_checkpoint(weights)
    np.testing.assert_array_equal(
        ckpt.unpack_namespaces(exported)["model"]["layer4.1.bn2.running_var"], var)
    assert run("resnet18", ["eval", "--checkpoint", weights, "--data", data + "/" +
                            os.listdir(data)[0]]) == 0


def test_alexnet_is_built_for_its_training_size(tmp_path):
    out = str(tmp_path / "run")
    assert run("alexnet", ["train", *TINY, "--output-dir", out,
                           "--builtin-dir", str(tmp_path / "data")]) == 0
    arrays, meta = ckpt.load_checkpoint(os.path.join(out, "last.npz"))
    assert meta["model"]["image_size"] == 67
    assert ckpt.unpack_namespaces(arrays)["model"]["fc6.weight"].shape == (4096, 256)
    spec, model = ckpt.build_model(meta["model"])
    assert spec.name == "alexnet" and model.fc6.weight.shape == (4096, 256)
