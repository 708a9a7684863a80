"""The training application under hostile use: every case ends in one clear line and an
exit code (0 ok, 2 usage or input error, 1 training failure), never a traceback, and no
checkpoint is ever lost or corrupted."""
import argparse
import csv
import dataclasses
import os
import re
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from models.googlenet import SPEC
from trainer import checkpoint as ckpt
from trainer.cli import build_parser
from trainer.cli import main as cli_main
from trainer.config import RESUMABLE_CHANGES, TrainConfig, recipe_for, resolve

TINY = ["--builtin-classes", "3", "--builtin-train", "4", "--builtin-val", "2",
        "-b", "6", "-j", "0", "--print-freq", "1"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv):
    return cli_main(SPEC, argv)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("builtin"))


@pytest.fixture(scope="module")
def run(tmp_path_factory, data_dir):
    """A finished one-epoch run: its output directory."""
    out = str(tmp_path_factory.mktemp("run") / "out")
    assert main(["train", "--builtin-dir", data_dir, "--output-dir", out, *TINY,
                 "--epochs", "1"]) == 0
    return out


def rows(out):
    with open(os.path.join(out, "metrics.csv")) as f:
        return list(csv.DictReader(f))


def one_line_error(capsys, *needles):
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------ help and defaults
def _help_defaults():
    """{dest: (paper default, built-in default)} as train --help states them."""
    parser = build_parser(SPEC)
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found = {}
    for action in sub.choices["train"]._actions:
        m = re.search(r"\(default: ([^;)]+)(?:; on the built-in data: ([^)]+))?\)$",
                      action.help or "")
        if m:
            found[action.dest] = (m.group(1), m.group(2) or m.group(1))
    return found


def test_help_shows_the_defaults_the_code_uses(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "%%" not in text and "exit codes:" in text
    paper = resolve(TrainConfig(data=ROOT), SPEC)      # any existing folder stands for --data
    builtin = resolve(TrainConfig(), SPEC)
    checked = 0
    for name, (p, b) in _help_defaults().items():
        assert str(getattr(paper, name)) == p, name
        assert str(getattr(builtin, name)) == b, name
        checked += 1
    assert checked >= 18
    # The description's summary of the built-in recipe is the recipe.
    r = recipe_for(SPEC, True)
    assert f"{r['epochs']} epochs at {r['image_size']}x{r['image_size']}" in " ".join(text.split())


def test_short_aliases():
    args = build_parser(SPEC).parse_args(["train", "-b", "7", "-j", "3"])
    assert args.batch_size == 7 and args.workers == 3
    args = build_parser(SPEC).parse_args(["eval", "--checkpoint", "x", "-b", "5", "-j", "2"])
    assert args.batch_size == 5 and args.workers == 2


@pytest.mark.parametrize("argv,needle", [
    (["train", "--ema-decay", "1.5"], "--ema-decay"),
    (["train", "--aux-weight", "-1"], "--aux-weight"),
    (["train", "--lr", "0"], "--lr"),
    (["train", "--crop-scale", "2"], "--crop-scale"),
    (["train", "--image-size", "5000"], "--image-size 5000"),
    (["train", "--epochs", "0"], "--epochs"),
    (["predict", "--checkpoint", "x.npz", "--topk", "0", "a.png"], "--topk 0"),
    (["eval", "--checkpoint", "x.npz", "--image-size", "0"], "--image-size 0"),
])
def test_bad_values_are_usage_errors(argv, needle, capsys, tmp_path):
    assert main(argv + (["--output-dir", str(tmp_path)] if argv[0] == "train" else [])) == 2
    one_line_error(capsys, needle)


def test_bad_flags_exit_2():
    with pytest.raises(SystemExit) as e:
        main(["train", "--no-such-flag"])
    assert e.value.code == 2


def test_eval_checks_image_size_before_loading(run, capsys):
    assert main(["eval", "--checkpoint", os.path.join(run, "last.npz"), "--image-size",
                 "5000"]) == 2
    one_line_error(capsys, "--image-size 5000")


# ------------------------------------------------------------------ output directory
def test_a_run_is_never_overwritten_silently(run, data_dir, capsys):
    before = open(os.path.join(run, "last.npz"), "rb").read()
    assert main(["train", "--builtin-dir", data_dir, "--output-dir", run, *TINY]) == 2
    one_line_error(capsys, "already holds a run", "--resume")
    assert open(os.path.join(run, "last.npz"), "rb").read() == before


def test_output_dir_that_is_a_file_fails_before_any_work(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    data = tmp_path / "data"
    assert main(["train", "--builtin-dir", str(data), "--output-dir", str(f / "sub"), *TINY]) == 2
    one_line_error(capsys, "--output-dir")
    assert not data.exists()           # refused before generating the data


def test_files_are_written_with_the_umask(run):
    mask = os.umask(0o022)
    os.umask(mask)
    for name in ("last.npz", "best.npz", "metrics.csv", "curves.png"):
        mode = stat.S_IMODE(os.stat(os.path.join(run, name)).st_mode)
        assert mode == 0o666 & ~mask, (name, oct(mode))


def test_main_and_auxiliary_losses_are_logged_apart(run):
    r = rows(run)[0]
    for key in ("train_loss", "train_aux1_loss", "train_aux2_loss", "train_total_loss",
                "val_loss", "lr"):
        assert key in r and np.isfinite(float(r[key])), key
    total = float(r["train_loss"]) + 0.3 * (float(r["train_aux1_loss"]) + float(r["train_aux2_loss"]))
    assert float(r["train_total_loss"]) == pytest.approx(total, rel=1e-5)
    assert float(r["train_total_loss"]) > float(r["train_loss"])   # the main column is not the total


# ------------------------------------------------------------------ resume
def _copy_run(run, dest):
    import shutil
    shutil.copytree(run, dest)
    return str(dest)


def test_resume_restores_the_saved_settings(tmp_path, data_dir):
    out = str(tmp_path / "o")
    assert main(["train", "--builtin-dir", data_dir, "--output-dir", out, *TINY, "--epochs", "1",
                 "--init", "xavier", "--crop-scale", "0.3", "--lr", "0.002"]) == 0
    assert main(["train", "--resume", os.path.join(out, "last.npz"), "--epochs", "2"]) == 0
    _, meta = ckpt.load_checkpoint(os.path.join(out, "last.npz"))
    cfg = meta["config"]
    assert (cfg["init"], cfg["crop_scale"], cfg["lr"], cfg["epochs"]) == ("xavier", 0.3, 0.002, 2)
    assert meta["epoch"] == 2


def test_resume_refuses_changed_settings(run, capsys):
    assert main(["train", "--resume", os.path.join(run, "last.npz"), "--aux-weight", "0.5",
                 "--epochs", "2"]) == 2
    one_line_error(capsys, "--aux-weight 0.5", "0.3")
    saved = ckpt.load_checkpoint(os.path.join(run, "last.npz"))[1]["config"]["optimizer"]
    other = "sgd" if saved == "adam" else "adam"
    assert main(["train", "--resume", os.path.join(run, "last.npz"), "--optimizer", other,
                 "--epochs", "2"]) == 2
    one_line_error(capsys, f"--optimizer {other}", saved)


def test_resume_drops_log_rows_written_after_the_checkpoint(run, tmp_path):
    out = _copy_run(run, tmp_path / "o")
    with open(os.path.join(out, "metrics.csv"), "a") as f:   # killed after the CSV, before the
        f.write(",".join(["2"] * len(rows(out)[0])) + "\n")   # checkpoint of epoch 2
    assert main(["train", "--resume", os.path.join(out, "last.npz"), "--epochs", "2"]) == 0
    assert [r["epoch"] for r in rows(out)] == ["1", "2"]
    assert rows(out)[1]["train_loss"] != "2"


def test_best_is_saved_before_last(monkeypatch, tmp_path, data_dir):
    """A kill during the best.npz save must not lose that epoch's best: last.npz still holds
    the previous epoch, so a resume redoes the epoch and writes best.npz again."""
    order = []
    real = ckpt.save_checkpoint
    monkeypatch.setattr(ckpt, "save_checkpoint",
                        lambda path, *a, **k: (order.append(os.path.basename(path)),
                                               real(path, *a, **k))[1])
    assert main(["train", "--builtin-dir", data_dir, "--output-dir", str(tmp_path / "o"), *TINY,
                 "--epochs", "1"]) == 0
    assert order == ["best.npz"]        # last.npz, the same checkpoint, is linked to it after
    best, last = (tmp_path / "o" / n for n in ("best.npz", "last.npz"))
    assert best.read_bytes() == last.read_bytes()
    # Epoch 2 without a better accuracy: last.npz alone is written, best.npz keeps epoch 1.
    import trainer.loop as loop
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: {"loss": 1.0, "top1": -1.0,
                                                           "top5": 0.0, "images": 6})
    before = best.read_bytes()
    assert main(["train", "--resume", str(last), "--epochs", "2"]) == 0
    assert order == ["best.npz", "last.npz"]
    assert best.read_bytes() == before and ckpt.read_meta(str(last))["epoch"] == 2


def test_atomic_copy_links_or_copies_and_never_half(tmp_path, monkeypatch):
    from engine.io import atomic_copy
    src, dst = tmp_path / "a.npz", tmp_path / "b.npz"
    src.write_bytes(b"first")
    dst.write_bytes(b"old")
    atomic_copy(src, dst)
    assert dst.read_bytes() == b"first" and os.path.samefile(src, dst)
    src.unlink()
    src.write_bytes(b"second")      # a writer replaces the file: the other name keeps its own
    assert dst.read_bytes() == b"first"

    def no_links(a, b):
        raise OSError("hard links not supported")
    monkeypatch.setattr(os, "link", no_links)
    atomic_copy(src, dst)
    assert dst.read_bytes() == b"second" and not os.path.samefile(src, dst)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.npz", "b.npz"]   # no temporaries


def test_stale_partial_files_are_removed(run, tmp_path):
    out = _copy_run(run, tmp_path / "o")
    stale = os.path.join(out, ".last.npz.abcd1234.tmp")
    with open(stale, "wb") as f:
        f.write(b"PK\x03\x04half")
    assert main(["train", "--resume", os.path.join(out, "last.npz"), "--epochs", "2"]) == 0
    assert not os.path.exists(stale)


def _rewrite(path, arrays, meta):
    ckpt.save_checkpoint(path, arrays, meta)


def test_resume_with_a_missing_weight_or_bad_metadata(run, tmp_path, capsys):
    out = _copy_run(run, tmp_path / "o")
    last = os.path.join(out, "last.npz")
    arrays, meta = ckpt.load_checkpoint(last)
    del arrays["model/conv1.weight"]
    _rewrite(last, arrays, meta)
    assert main(["train", "--resume", last, "--epochs", "2"]) == 2
    one_line_error(capsys, "conv1.weight")
    arrays, meta = ckpt.load_checkpoint(os.path.join(run, "last.npz"))
    meta["epoch"] = "three"
    _rewrite(last, arrays, meta)
    assert main(["train", "--resume", last, "--epochs", "2"]) == 2
    one_line_error(capsys, "malformed")
    meta["config"] = {"nonsense": 1}
    _rewrite(last, arrays, meta)
    assert main(["train", "--resume", last, "--epochs", "2"]) == 2
    one_line_error(capsys, "nonsense")


# ------------------------------------------------------------------ failures during a run
def test_nan_validation_loss_saves_nothing(monkeypatch, run, tmp_path, capsys):
    import trainer.loop as loop
    out = _copy_run(run, tmp_path / "o")
    before = {n: open(os.path.join(out, n), "rb").read() for n in ("last.npz", "best.npz")}
    monkeypatch.setattr(loop, "evaluate", lambda *a, **k: {"loss": float("nan"), "top1": 50.0,
                                                           "top5": 100.0, "images": 6})
    assert main(["train", "--resume", os.path.join(out, "last.npz"), "--epochs", "2"]) == 1
    one_line_error(capsys, "validation loss is nan", "not saved")
    for n, b in before.items():
        assert open(os.path.join(out, n), "rb").read() == b


def test_disk_full_is_one_line(monkeypatch, run, tmp_path, capsys):
    out = _copy_run(run, tmp_path / "o")

    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(ckpt, "save_checkpoint", full)
    assert main(["train", "--resume", os.path.join(out, "last.npz"), "--epochs", "2"]) == 1
    one_line_error(capsys, "No space left on device")
    ckpt.load_checkpoint(os.path.join(out, "last.npz"))          # still intact


def test_nan_weights_are_refused_by_eval(run, tmp_path, capsys):
    path = str(tmp_path / "nan.npz")
    arrays, meta = ckpt.load_checkpoint(os.path.join(run, "last.npz"))
    arrays["ema/conv1.weight"] = arrays["ema/conv1.weight"] * np.nan
    ckpt.save_checkpoint(path, arrays, meta)
    assert main(["eval", "--checkpoint", path]) == 1
    one_line_error(capsys, "NaN")


# ------------------------------------------------------------------ images and folders
def _write_modes(folder):
    """One image per Pillow mode worth checking, all showing the same grey level 128 (or a
    known colour), saved under the extensions torchvision reads."""
    folder.mkdir(parents=True, exist_ok=True)
    a16 = np.full((20, 20), 128 * 257, np.uint16)
    Image.fromarray(a16).save(folder / "grey16.png")                  # mode I;16
    Image.fromarray(np.full((20, 20), 128, np.uint8)).save(folder / "grey.pgm")
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(folder / "rgb.tif")
    Image.fromarray(np.full((20, 20, 3), 128, np.uint8)).save(folder / "rgb.tiff")
    Image.new("CMYK", (20, 20), (0, 0, 0, 127)).save(folder / "cmyk.jpg", quality=100)
    p = Image.new("P", (20, 20), 0)
    p.putpalette([128, 128, 128] + [0] * 765)
    p.save(folder / "palette.gif")
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))                  # fully transparent
    rgba.save(folder / "transparent.png")


def test_every_image_mode_is_read_as_a_viewer_shows_it(tmp_path):
    from data import ImageFolder
    _write_modes(tmp_path / "c")
    ds = ImageFolder(str(tmp_path))
    names = {os.path.basename(p): i for i, (p, _) in enumerate(ds.samples)}
    assert set(names) == {"grey16.png", "grey.pgm", "rgb.tif", "rgb.tiff", "cmyk.jpg",
                          "palette.gif", "transparent.png"}
    for name, i in names.items():
        img, _ = ds[i]
        a = np.asarray(img).astype(int)
        assert img.mode == "RGB" and a.shape == (20, 20, 3)
        want = 255 if name == "transparent.png" else 128       # transparent: over white
        assert np.abs(a - want).max() <= 2, (name, a.mean())


def test_symlink_loops_are_counted_once(tmp_path, capsys):
    from data import ImageFolder
    cls = tmp_path / "a"
    cls.mkdir()
    for i in range(3):
        Image.new("RGB", (4, 4)).save(cls / f"{i}.png")
    os.symlink(str(cls), str(cls / "loop"))
    assert len(ImageFolder(str(tmp_path))) == 3
    assert "symbolic link" in capsys.readouterr().err


def test_a_class_with_no_readable_image_is_reported(tmp_path, capsys):
    from data import DataLoader, ImageFolder
    for c in ("good", "bad"):
        (tmp_path / c).mkdir()
    for i in range(2):
        Image.new("RGB", (8, 8)).save(tmp_path / "good" / f"{i}.png")
        (tmp_path / "bad" / f"{i}.png").write_bytes(b"broken")
    loader = DataLoader(ImageFolder(str(tmp_path)), 2)
    list(loader)
    assert loader.unreadable_classes() == ["bad"]


def test_predict_takes_folders_and_reports_once(run, data_dir, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (80, 80), (200, 10, 10)).save(folder / "a.png")
    Image.new("RGB", (80, 80), (10, 200, 10)).save(folder / "b.jpg")
    (folder / "c.png").write_bytes(b"broken")
    code = main(["predict", "--checkpoint", os.path.join(run, "last.npz"), str(folder)])
    out, err = capsys.readouterr()
    assert code == 2
    assert out.count("a.png") == 1 and out.count("b.jpg") == 1
    assert err.count("c.png") == 1 and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", "--checkpoint", os.path.join(run, "last.npz"), str(empty)]) == 2
    one_line_error(capsys, "no image files")


# ------------------------------------------------------------------ loader processes
def test_loader_uses_forkserver_once_cuda_may_be_in_use(monkeypatch):
    import data.loader as loader
    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    assert loader.default_start_method() == "fork"
    monkeypatch.setitem(sys.modules, "cupy", object())
    assert loader.default_start_method() == "forkserver"


def test_forkserver_loader_matches_inline(tmp_path):
    from data import DataLoader, ImageFolder
    from data.transforms import train_transform
    for c in ("x", "y"):
        (tmp_path / c).mkdir()
        for i in range(3):
            Image.fromarray(np.random.default_rng(i).integers(0, 255, (20, 20, 3), np.uint8)).save(
                tmp_path / c / f"{i}.png")
    ds = ImageFolder(str(tmp_path))
    kw = dict(batch_size=2, shuffle=True, transform=train_transform(16), seed=4)
    a = list(DataLoader(ds, **kw))
    b = list(DataLoader(ds, workers=2, start_method="forkserver", **kw))
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    """kill -9 of the training process must not leave loader workers (or their shared-memory
    batches) behind."""
    for c in ("x", "y"):
        (tmp_path / c).mkdir()
        for i in range(4):
            Image.new("RGB", (16, 16)).save(tmp_path / c / f"{i}.png")
    script = textwrap.dedent(f"""
        import sys, time, multiprocessing as mp
        sys.path.insert(0, {ROOT!r})
        from data import DataLoader, ImageFolder
        loader = DataLoader(ImageFolder({str(tmp_path)!r}), 1, workers=2)
        it = iter(loader)
        next(it)
        print(" ".join(str(p.pid) for p in mp.active_children()), flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids = [int(p) for p in proc.stdout.readline().split()]
    assert len(pids) == 2
    proc.kill()
    proc.wait()
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [p for p in pids if os.path.exists(f"/proc/{p}") and
                 "Z" not in open(f"/proc/{p}/stat").read().split()[2]]
    assert not alive, f"workers {alive} outlived their parent"


# ------------------------------------------------------------------ per-image centring
@pytest.mark.parametrize("caffe", [False, True])
def test_centred_preprocessing_removes_each_images_mean(caffe):
    """Both routes (transforms + finish, and apply on raw pixels) centre each image and each
    crop on its own, per channel, and agree with each other."""
    import dataclasses
    from data.preprocessing import Preprocessing
    from data.transforms import to_array
    prep = dataclasses.replace(Preprocessing.caffe() if caffe else Preprocessing(), center=True)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    a = prep.apply(pixels)
    b = prep.finish(to_array(Image.fromarray(pixels), **prep.transform_args()))
    np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(a.mean(axis=(1, 2)), 0, atol=1e-5)
    plain = dataclasses.replace(prep, center=False).apply(pixels)
    np.testing.assert_allclose(a, plain - plain.mean(axis=(1, 2), keepdims=True), atol=1e-5)
    crops = prep.finish(rng.standard_normal((4, 3, 5, 5)).astype(np.float32) + 7)
    np.testing.assert_allclose(crops.mean(axis=(2, 3)), 0, atol=1e-5)
    assert Preprocessing.from_meta(prep.to_meta()) == prep
