"""Per-epoch metrics: a CSV log and a PNG of the loss and accuracy curves (Pillow only).

``append_metrics_csv(path, row)`` adds one row per epoch.  The header is written with the
first row; a later row with a new column rewrites the file with that column appended at the
end (old rows get an empty cell), so existing columns never move.

``plot_curves(csv_path, png_path)`` draws two panels side by side:
  * loss: every column whose name contains 'loss' (train_loss, val_loss, ...);
  * accuracy: every column whose name contains 'top' or 'acc' (train_top1, val_top1, val_top5),
    plotted in the units they were logged in (fractions or percent);
against the 'epoch' column (or the row number when there is none).  Empty cells and NaNs
break a curve instead of being drawn as zero.
"""

from __future__ import annotations

import csv
import math
import os

from PIL import Image, ImageDraw, ImageFont

from engine.io import atomic_write

__all__ = ["append_metrics_csv", "read_metrics_csv", "plot_curves"]

_PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189),
            (140, 86, 75), (227, 119, 194), (127, 127, 127)]


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


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------

def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable font (Pillow >= 10.1 + FreeType)
    except TypeError:
        return ImageFont.load_default()


def _text_size(draw, text, font):
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top, left, top


def _put_text(draw, xy, text, font, fill=(0, 0, 0), align="left", valign="top"):
    """Draw text with its box aligned to (x, y); anchors done by hand so bitmap fonts work."""
    w, h, ox, oy = _text_size(draw, text, font)
    x, y = xy
    x -= {"left": 0, "center": w / 2, "right": w}[align]
    y -= {"top": 0, "middle": h / 2, "bottom": h}[valign]
    draw.text((x - ox, y - oy), text, font=font, fill=fill)


def _nice_step(span: float, target: int) -> float:
    """A step of 1, 2 or 5 x 10^k giving about `target` intervals over `span`."""
    raw = span / max(target, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _axis(lo: float, hi: float, target: int = 5, integer: bool = False):
    """Tidy axis limits and tick positions covering [lo, hi]."""
    if hi <= lo:
        pad = abs(lo) * 0.1 or 0.5
        lo, hi = lo - pad, hi + pad
    step = _nice_step(hi - lo, target)
    if integer:
        step = max(1.0, round(step))
    lo_t, hi_t = math.floor(lo / step) * step, math.ceil(hi / step) * step
    n = int(round((hi_t - lo_t) / step))
    return lo_t, hi_t, [lo_t + k * step for k in range(n + 1)], step


def _tick_label(v: float, step: float) -> str:
    decimals = max(0, -int(math.floor(math.log10(step)))) if step < 1 else 0
    if abs(v) < step * 1e-9:
        v = 0.0
    return f"{v:.{decimals}f}"


def _draw_panel(img, box, xs, series, title, ylabel, font, small):
    """One chart in `box` = (x0, y0, x1, y1): axes, grid, ticks, curves, legend."""
    draw = ImageDraw.Draw(img)
    x0, y0, x1, y1 = box
    _, th, _, _ = _text_size(draw, "Ag", font)
    _, sh, _, _ = _text_size(draw, "0", small)
    # Plot area inside the panel, leaving room for title, tick labels and axis labels.
    px0, py0 = x0 + 16 + sh + 60, y0 + th + 12
    px1, py1 = x1 - 12, y1 - sh * 2 - 22
    _put_text(draw, ((px0 + px1) / 2, y0 + 4), title, font, align="center")

    values = [v for _, ys in series for v in ys if v is not None and math.isfinite(v)]
    if not xs or not values:
        draw.rectangle((px0, py0, px1, py1), outline=(0, 0, 0))
        _put_text(draw, ((px0 + px1) / 2, (py0 + py1) / 2), "no data", font,
                  fill=(120, 120, 120), align="center", valign="middle")
        return
    integer_x = all(float(x).is_integer() for x in xs)
    xlo, xhi, xticks, xstep = _axis(min(xs), max(xs), 8, integer=integer_x)
    ylo, yhi, yticks, ystep = _axis(min(values), max(values), 5)

    def to_px(x, y):
        return (px0 + (x - xlo) / (xhi - xlo) * (px1 - px0),
                py1 - (y - ylo) / (yhi - ylo) * (py1 - py0))

    for t in yticks:
        _, py = to_px(xlo, t)
        draw.line((px0, py, px1, py), fill=(230, 230, 230))
        draw.line((px0 - 4, py, px0, py), fill=(0, 0, 0))
        _put_text(draw, (px0 - 7, py), _tick_label(t, ystep), small, align="right",
                  valign="middle")
    for t in xticks:
        px, _ = to_px(t, ylo)
        draw.line((px, py0, px, py1), fill=(240, 240, 240))
        draw.line((px, py1, px, py1 + 4), fill=(0, 0, 0))
        _put_text(draw, (px, py1 + 7), _tick_label(t, xstep), small, align="center")
    draw.rectangle((px0, py0, px1, py1), outline=(0, 0, 0))
    _put_text(draw, ((px0 + px1) / 2, y1 - 4), "epoch", font, align="center", valign="bottom")

    # Rotated y label: draw on its own strip, turn it, paste.
    w, h, ox, oy = _text_size(draw, ylabel, font)
    strip = Image.new("RGB", (w + 2, h + 2), (255, 255, 255))
    ImageDraw.Draw(strip).text((1 - ox, 1 - oy), ylabel, font=font, fill=(0, 0, 0))
    strip = strip.rotate(90, expand=True)
    img.paste(strip, (int(x0 + 6), int((py0 + py1) / 2 - strip.height / 2)))

    markers = len(xs) <= 60
    for k, (name, ys) in enumerate(series):
        colour = _PALETTE[k % len(_PALETTE)]
        segment = []
        for x, y in list(zip(xs, ys)) + [(None, None)]:
            if y is None or x is None or not math.isfinite(y):
                if len(segment) > 1:
                    draw.line(segment, fill=colour, width=2, joint="curve")
                segment = []
                continue
            p = to_px(x, y)
            segment.append(p)
            if markers:
                draw.ellipse((p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3), fill=colour)

    # Legend inside the plot area.
    names = [name for name, _ in series]
    lw = max(_text_size(draw, n, small)[0] for n in names) + 36
    line_h = sh + 8
    lh = line_h * len(names) + 6
    # Put the legend in the corner that hides the fewest data points.
    points = [to_px(x, y) for _, ys in series for x, y in zip(xs, ys)
              if y is not None and math.isfinite(y)]
    corners = [(px1 - 8 - lw, py0 + 8), (px1 - 8 - lw, py1 - 8 - lh),
               (px0 + 8, py0 + 8), (px0 + 8, py1 - 8 - lh)]

    def hidden(corner):
        cx, cy = corner
        return sum(cx - 6 <= x <= cx + lw + 6 and cy - 6 <= y <= cy + lh + 6 for x, y in points)

    lx0, ly0 = min(corners, key=hidden)  # min keeps the first (top right) on ties
    lx1, ly1 = lx0 + lw, ly0 + lh
    draw.rectangle((lx0, ly0, lx1, ly1), fill=(255, 255, 255), outline=(160, 160, 160))
    for k, name in enumerate(names):
        colour = _PALETTE[k % len(_PALETTE)]
        cy = ly0 + 3 + line_h * k + line_h / 2
        draw.line((lx0 + 6, cy, lx0 + 26, cy), fill=colour, width=3)
        _put_text(draw, (lx0 + 31, cy), name, small, valign="middle")


def plot_curves(csv_path: str, png_path: str, size=(1200, 480), title: str | None = None) -> str:
    """Draw loss and accuracy curves from the metrics CSV into a PNG of `size` (w, h)."""
    columns, rows = read_metrics_csv(csv_path)
    if "epoch" in columns:
        pairs = [(r["epoch"], r) for r in rows if r["epoch"] is not None]
    else:
        pairs = [(float(i + 1), r) for i, r in enumerate(rows)]
    xs = [x for x, _ in pairs]

    def pick(pred):
        return [(c, [r[c] for _, r in pairs]) for c in columns if c != "epoch" and pred(c)]

    loss = pick(lambda c: "loss" in c.lower())
    acc = pick(lambda c: "loss" not in c.lower() and ("top" in c.lower() or "acc" in c.lower()))

    width, height = int(size[0]), int(size[1])
    img = Image.new("RGB", (width, height), (255, 255, 255))
    font, small = _font(max(10, height // 32)), _font(max(9, height // 40))
    top = 0
    if title:
        draw = ImageDraw.Draw(img)
        _put_text(draw, (width / 2, 6), title, font, align="center")
        top = _text_size(draw, title, font)[1] + 10
    half = width // 2
    _draw_panel(img, (0, top, half, height), xs, loss, "loss", "loss", font, small)
    _draw_panel(img, (half, top, width, height), xs, acc, "accuracy", "accuracy", font, small)

    with atomic_write(png_path) as f:  # a viewer polling the file never sees half a PNG
        img.save(f, format="PNG")
    return png_path
