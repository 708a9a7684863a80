"""Metrics CSV, curve plot, progress bar and average meter."""

import csv
import io
import math

import numpy as np
import pytest
from PIL import Image

from models.plot import append_metrics_csv, plot_curves, read_metrics_csv
from models.progress import AverageMeter, ProgressBar, format_duration


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def _log(path, epochs):
    for e in range(1, epochs + 1):
        append_metrics_csv(path, {
            "epoch": e, "train_loss": 2.3 * math.exp(-e / 5), "train_top1": 10 + 8 * e,
            "val_loss": np.float32(2.4 * math.exp(-e / 6)), "val_top1": 9 + 7 * e,
            "val_top5": min(100.0, 40 + 10 * e), "lr": 0.01 * 0.96 ** (e // 8),
            "img_per_s": 35.5, "wall_s": 12.0 * e})


def test_csv_header_once_and_order(tmp_path):
    path = str(tmp_path / "sub" / "metrics.csv")
    _log(path, 3)
    rows = _rows(path)
    assert rows[0] == ["epoch", "train_loss", "train_top1", "val_loss", "val_top1", "val_top5",
                       "lr", "img_per_s", "wall_s"]
    assert len(rows) == 4 and rows[1][0] == "1" and rows[3][0] == "3"
    # Keys in another order, one missing: columns stay put, the gap is empty.
    append_metrics_csv(path, {"val_top1": 50, "epoch": 4, "train_loss": 0.5})
    rows = _rows(path)
    assert rows[0][:3] == ["epoch", "train_loss", "train_top1"]
    assert rows[4][:3] == ["4", "0.5", ""] and rows[4][4] == "50"


def test_csv_new_column_appended(tmp_path):
    path = str(tmp_path / "m.csv")
    append_metrics_csv(path, {"epoch": 1, "loss": 1.0})
    append_metrics_csv(path, {"epoch": 2, "loss": 0.5, "note": "resumed"})
    assert _rows(path) == [["epoch", "loss", "note"], ["1", "1", ""], ["2", "0.5", "resumed"]]
    columns, rows = read_metrics_csv(path)
    assert columns == ["epoch", "loss", "note"]
    assert rows[1] == {"epoch": 2.0, "loss": 0.5, "note": None}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.csv"]


def test_plot_png(tmp_path):
    csv_path, png = str(tmp_path / "m.csv"), str(tmp_path / "out" / "curves.png")
    _log(csv_path, 12)
    append_metrics_csv(csv_path, {"epoch": 13, "train_loss": float("nan"), "val_loss": None})
    assert plot_curves(csv_path, png, size=(900, 360), title="run") == png
    with Image.open(png) as img:
        img.load()
        assert img.format == "PNG" and img.size == (900, 360)
        # Something was drawn in colour (the curves), not only black axes on white.
        a = np.asarray(img.convert("RGB")).astype(int)
    coloured = (np.abs(a[..., 0] - a[..., 1]) > 60) | (np.abs(a[..., 1] - a[..., 2]) > 60)
    assert coloured.sum() > 500
    # Left and right panels both have curves.
    assert coloured[:, :450].sum() > 100 and coloured[:, 450:].sum() > 100


@pytest.mark.parametrize("epochs", [0, 1])
def test_plot_degenerate(tmp_path, epochs):
    csv_path, png = str(tmp_path / "m.csv"), str(tmp_path / "c.png")
    if epochs:
        _log(csv_path, epochs)
    else:
        with open(csv_path, "w") as f:
            f.write("epoch,train_loss\n")
    plot_curves(csv_path, png)
    with Image.open(png) as img:
        assert img.size == (1200, 480)


def test_progress_non_tty_lines():
    out = io.StringIO()
    bar = ProgressBar(10, epoch=2, epochs=5, stream=out, print_freq=4)
    assert not bar.tty
    for step in range(1, 11):
        bar.update(step, images=32, loss=2.0 / step, top1=10.0 * step)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3  # steps 4, 8 and the last
    assert "\r" not in out.getvalue()
    assert lines[0].startswith("epoch 2/5 step 4/10 loss 0.500 top1 40.0%")
    assert "img/s" in lines[0] and "eta" in lines[0]
    assert lines[-1].startswith("epoch 2/5 step 10/10 ") and "eta 0:00" in lines[-1]


def test_progress_tty_redraws_in_place():
    out = io.StringIO()
    bar = ProgressBar(4, epoch=1, epochs=1, stream=out, tty=True, width=8, min_interval=0.0)
    for step in range(1, 5):
        bar.update(step, images=8, loss=1.0, lr=0.01)
    bar.close()
    text = out.getvalue()
    assert text.count("\r") == 4 and text.endswith("\n") and text.count("\n") == 1
    assert "[##......]" in text and "[########]" in text and "lr 0.01" in text


def test_progress_tty_rate_limited():
    out = io.StringIO()
    bar = ProgressBar(1000, stream=out, tty=True, min_interval=3600)
    for step in range(1, 1001):
        bar.update(step, loss=1.0)
    # First step draws, the rest wait for the interval, except the final step.
    assert out.getvalue().count("\r") == 2


def test_progress_close_shows_unprinted_last_state():
    # An epoch that ends before `total` (a batch of unreadable images vanished) still gets
    # its final numbers printed by close().
    out = io.StringIO()
    bar = ProgressBar(10, stream=out, print_freq=4)
    for step in range(1, 10):
        bar.update(step, images=4, loss=1.0 / step)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3 and lines[-1].startswith("step 9/10 loss 0.111")
    bar.close()  # idempotent
    assert len(out.getvalue().splitlines()) == 3


def test_format_duration():
    assert format_duration(62) == "1:02"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(float("nan")) == "?"


def test_average_meter():
    m = AverageMeter("loss")
    assert m.avg == 0.0
    m.update(2.0, n=3)
    m.update(4.0, n=1)
    assert m.val == 4.0 and m.count == 4 and m.avg == pytest.approx(2.5)
    m.reset()
    assert m.count == 0 and m.sum == 0.0
