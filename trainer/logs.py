"""What a run shows and keeps: progress bars, the per-epoch CSV log, the curves.

* ``progress(iterable, ...)``: a tqdm bar on a terminal; elsewhere (a log file, CI) one plain
  line every ``print_freq`` steps, since a redrawn bar makes an unreadable file.
* ``append_metrics_csv(path, row)`` adds one row per epoch.  The header is written with the
  first row; a later row with a new column rewrites the file with that column appended at the
  end (old rows get an empty cell), so existing columns never move.
  ``truncate_metrics_csv(path, epoch)`` drops rows after an epoch (a resumed run rewrites them).
* ``plot_curves(csv_path, png_path)``: matplotlib, three panels against the epoch: the losses
  (main training loss, validation loss, and each auxiliary loss apart, dashed), the accuracies
  in percent with the chance level, and the learning rate.
"""

from __future__ import annotations

import csv
import math
import os
import sys

from engine.io import atomic_write

__all__ = ["AverageMeter", "progress", "log", "append_metrics_csv", "read_metrics_csv",
           "truncate_metrics_csv", "plot_curves"]


def log(msg: str) -> None:
    """A line for the person running the command (stderr, so stdout stays for results)."""
    print(msg, file=sys.stderr, flush=True)


class AverageMeter:
    """Running average of a value weighted by sample counts."""

    def __init__(self):
        self.sum, self.count = 0.0, 0

    def update(self, value: float, n: int = 1) -> None:
        self.sum += float(value) * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / self.count if self.count else float("nan")


class progress:
    """``for x in progress(loader, desc="epoch 1/20", print_freq=10): ...; bar.set(loss=...)``.

    On a terminal: a tqdm bar with the values given to ``set`` as its postfix. Elsewhere:
    a line ``desc step/total k=v ...`` every ``print_freq`` steps and at the end.
    """

    def __init__(self, iterable, desc: str = "", total: int | None = None, print_freq: int = 10,
                 unit: str = "batch", file=None):
        from tqdm.auto import tqdm
        self.file = file or sys.stderr
        self.desc, self.print_freq = desc, max(1, int(print_freq))
        self.total = total if total is not None else len(iterable)
        self.tty = hasattr(self.file, "isatty") and self.file.isatty()
        self.values: dict = {}
        self.step = 0
        self.iterable = iterable
        self.bar = (tqdm(total=self.total, desc=desc, unit=unit, file=self.file, leave=True,
                         dynamic_ncols=True) if self.tty else None)

    def __iter__(self):
        try:
            for item in self.iterable:
                yield item
                self.step += 1
                if self.bar is not None:
                    self.bar.update(1)
                elif self.step % self.print_freq == 0 or self.step == self.total:
                    print(f"{self.desc} {self.step}/{self.total} {self._format()}".rstrip(),
                          file=self.file, flush=True)
        finally:
            self.close()

    def set(self, **values) -> None:
        self.values.update(values)
        if self.bar is not None:
            self.bar.set_postfix_str(self._format(), refresh=False)

    def _format(self) -> str:
        def fmt(v):
            return f"{v:.4g}" if isinstance(v, float) else str(v)
        return " ".join(f"{k}={fmt(v)}" for k, v in self.values.items())

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# ---------------------------------------------------------------------------------------------
# CSV
# ---------------------------------------------------------------------------------------------

def _cell(value) -> str:
    if value is None:
        return ""
    if hasattr(value, "item"):  # NumPy / CuPy scalars
        value = value.item()
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return format(value, ".8g")
    return str(value)


def _read_header(path: str):
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return next(csv.reader(f), None)
    except FileNotFoundError:
        return None


def append_metrics_csv(path: str, row: dict) -> None:
    """Append `row` (column -> value) to the CSV at `path`, creating it with a header if new."""
    path = os.fspath(path)
    header = _read_header(path)
    if not header:
        header = list(row)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            w.writerow([_cell(row.get(c)) for c in header])
        return
    new_cols = [c for c in row if c not in header]
    if not new_cols:
        with open(path, "a", newline="", encoding="utf-8") as f:
            csv.writer(f).writerow([_cell(row.get(c)) for c in header])
        return
    # A new column: rewrite the whole (small) file through a temporary one, so a crash never
    # leaves a log with half the rows.
    _, rows = read_metrics_csv(path, raw=True)
    header = header + new_cols
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        for r in rows:
            w.writerow([r.get(c, "") for c in header])
        w.writerow([_cell(row.get(c)) for c in header])


def _number(text: str):
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def read_metrics_csv(path: str, raw: bool = False):
    """-> (columns, rows): rows are dicts column -> float (None for empty/non-numeric cells).

    With ``raw=True`` the cells are left as the strings found in the file.
    """
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = list(reader.fieldnames or [])
        rows = []
        for r in reader:
            if raw:
                rows.append({c: (r.get(c) or "") for c in columns})
            else:
                rows.append({c: _number(r.get(c)) for c in columns})
    return columns, rows


def truncate_metrics_csv(path: str, last_epoch: int) -> int:
    """Keep only the rows whose 'epoch' is <= last_epoch (atomically); return rows dropped.

    A run killed after writing an epoch's row but before its checkpoint resumes from the
    epoch before: without this its log would hold that epoch twice."""
    if not os.path.exists(path):
        return 0
    columns, rows = read_metrics_csv(path, raw=True)
    keep = [r for r in rows if _number(r.get("epoch")) is None or _number(r["epoch"]) <= last_epoch]
    if len(keep) == len(rows):
        return 0
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for r in keep:
            w.writerow([r.get(c, "") for c in columns])
    return len(rows) - len(keep)


def plot_curves(csv_path: str, png_path: str, title: str | None = None,
                chance: float | None = None) -> str:
    """Draw the curves of ``metrics.csv`` to ``png_path`` (written atomically); return it.

    Loss panel: ``train_loss`` (main classifier) and ``val_loss`` solid, ``train_aux*_loss``
    dashed; accuracy panel: every ``*top1``/``*top5`` column, in percent, with ``chance`` (the
    accuracy of guessing, in percent) as a dotted line; learning-rate panel: ``lr``.
    Empty cells and NaNs break a curve instead of being drawn as zero.
    """
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    columns, rows = read_metrics_csv(csv_path)
    xs = [r.get("epoch") if r.get("epoch") is not None else i + 1 for i, r in enumerate(rows)]

    def series(col):
        return [r.get(col) if r.get(col) is not None else float("nan") for r in rows]

    fig, (ax_loss, ax_acc, ax_lr) = plt.subplots(1, 3, figsize=(15, 4.5))
    for col in columns:
        if col.endswith("loss") and col != "train_total_loss":
            aux = "aux" in col
            ax_loss.plot(xs, series(col), "--" if aux else "-", marker="." if not aux else None,
                         label=col)
        elif "top1" in col or "top5" in col:
            ax_acc.plot(xs, series(col), "-", marker=".", label=col)
    if chance is not None:
        ax_acc.axhline(chance, color="grey", linestyle=":", label=f"chance ({chance:.3g}%)")
    if "lr" in columns:
        ax_lr.plot(xs, series("lr"), "-", marker=".", color="tab:purple")
    for ax, name in ((ax_loss, "loss (cross-entropy)"), (ax_acc, "accuracy (%)"),
                     (ax_lr, "learning rate")):
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    ax_acc.set_ylim(0, 100)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_write(png_path) as f:  # a viewer polling the file never sees half a PNG
        fig.savefig(f, format="png", dpi=80)
    plt.close(fig)
    return png_path
