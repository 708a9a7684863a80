"""The command line end to end on a tiny built-in dataset: train, resume, eval, predict, summary."""
import csv
import os

import numpy as np
import pytest
from PIL import Image

from models.googlenet import SPEC
from trainer import checkpoint as ckpt
from trainer.cli import main as cli_main

TINY = ["--builtin-classes", "3", "--builtin-train", "4", "--builtin-val", "2",
        "--batch-size", "6", "--workers", "0", "--print-freq", "1"]


def main(argv):
    return cli_main(SPEC, argv)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("synthetic"))


def train(tmp, data_dir, name, *extra):
    out = os.path.join(tmp, name)
    code = main(["train", "--builtin-dir", data_dir, "--output-dir", out, *TINY, *extra])
    return code, out


def rows(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    tmp = str(tmp_path_factory.mktemp("runs"))
    code, out = train(tmp, data_dir, "straight", "--epochs", "2")
    assert code == 0
    return tmp, out


def test_train_writes_metrics_curves_and_checkpoints(trained):
    _, out = trained
    assert [r["epoch"] for r in rows(out)] == ["1", "2"]
    for r in rows(out):
        assert np.isfinite(float(r["train_loss"])) and 0 <= float(r["val_top1"]) <= 100
    with Image.open(os.path.join(out, "curves.png")) as im:
        assert im.format == "PNG" and im.size[0] > 100
    arrays, meta = ckpt.load_checkpoint(os.path.join(out, "last.npz"))
    assert meta["epoch"] == 2 and meta["classes"] == sorted(meta["classes"])
    assert "model/conv1.weight" in arrays and "ema/inception_5b.pool_proj.bias" in arrays
    assert not any(k.startswith("__") for k in arrays)


def test_resume_gives_the_same_run(trained, data_dir):
    """Stopping after epoch 1 and resuming must reproduce the uninterrupted run exactly."""
    tmp, straight = trained
    code, out = train(tmp, data_dir, "resumed", "--epochs", "1")
    assert code == 0
    code = main(["train", "--epochs", "2", "--resume", os.path.join(out, "last.npz")])
    assert code == 0
    a, b = rows(straight), rows(out)
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "lr", "step"):
        assert [r[key] for r in a] == [r[key] for r in b], key
    wa, _ = ckpt.load_checkpoint(os.path.join(straight, "last.npz"))
    wb, _ = ckpt.load_checkpoint(os.path.join(out, "last.npz"))
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


@pytest.mark.filterwarnings("ignore:overflow encountered", "ignore:invalid value encountered")
def test_divergence_stops_cleanly_and_keeps_the_last_checkpoint(trained, data_dir, capsys):
    tmp, straight = trained
    good = os.path.join(straight, "last.npz")
    out = os.path.join(tmp, "diverge")
    os.makedirs(out)
    import shutil
    shutil.copy(good, os.path.join(out, "last.npz"))
    before = open(os.path.join(out, "last.npz"), "rb").read()
    code = main(["train", "--builtin-dir", data_dir, "--output-dir", out, *TINY, "--epochs", "4",
                 "--lr", "1e12", "--overwrite"])
    assert code == 1
    assert "loss became" in capsys.readouterr().err
    assert open(os.path.join(out, "last.npz"), "rb").read() == before


@pytest.mark.parametrize("crops", ["1", "10", "144"])
def test_eval_reports_errors_for_every_crop_scheme(trained, capsys, crops):
    _, out = trained
    code = main(["eval", "--checkpoint", os.path.join(out, "last.npz"), "--crops", crops,
                 "--workers", "0"])
    assert code == 0
    line = capsys.readouterr().out
    assert f"6 images, {crops} crop(s), ema weights: top-1 error" in line


def test_predict_prints_top_classes_and_reports_bad_files(trained, data_dir, tmp_path, capsys):
    _, out = trained
    img = next(os.path.join(r, f) for r, _, fs in os.walk(data_dir) for f in fs
               if f.endswith(".png") and os.sep + "val" + os.sep in r)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    code = main(["predict", "--checkpoint", os.path.join(out, "best.npz"), img, str(bad)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out.count("%") == 3          # three classes in this tiny set
    assert "broken.jpg: cannot read image" in captured.err


def test_summary_totals_match_the_paper(capsys):
    assert main(["summary"]) == 0
    out = capsys.readouterr().out
    assert "6,998,552      1.583G" in out and "13,378,280" in out
    assert "inception_4e             832x14x14" in out


def test_clear_errors(tmp_path, capsys):
    (tmp_path / "train" / "a").mkdir(parents=True)
    assert main(["train", "--data", str(tmp_path), "--output-dir", str(tmp_path / "o")]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nope")]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["train", "--image-size", "32"]) == 2
    assert "--image-size 32" in capsys.readouterr().err
    assert main(["eval", "--checkpoint", str(tmp_path / "missing.npz")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_cuda_request_without_gpu_is_explained(tmp_path, capsys):
    from engine import backend
    if backend.cuda_available():
        pytest.skip("a GPU is present")
    assert main(["summary"]) == 0
    capsys.readouterr()
    assert main(["train", "--device", "cuda", "--output-dir", str(tmp_path), *TINY,
                 "--builtin-dir", str(tmp_path / "d")]) == 2
    assert "cupy-cuda" in capsys.readouterr().err
