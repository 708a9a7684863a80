"""A small terminal progress bar and a running-average meter.

On a terminal the bar redraws one line in place (``\\r``), at most every ``min_interval``
seconds, e.g.::

    epoch 3/90 step 120/500 [#######.............] loss 2.301 top1 12.5% 34.2 img/s eta 1:02

When the stream is not a terminal (CI logs, ``> file``) it prints one plain line every
``print_freq`` steps and at the last step instead, so logs stay readable.
"""

from __future__ import annotations

import sys
import time

__all__ = ["AverageMeter", "ProgressBar", "format_duration"]


class AverageMeter:
    """Running sum / count / average of a scalar, weighted by `n` (e.g. the batch size)."""

    def __init__(self, name: str = ""):
        self.name = name
        self.reset()

    def reset(self) -> None:
        self.val = 0.0
        self.sum = 0.0
        self.count = 0

    def update(self, val: float, n: int = 1) -> None:
        self.val = float(val)
        self.sum += float(val) * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / self.count if self.count else 0.0

    def __repr__(self):
        return f"AverageMeter({self.name!r}, val={self.val:.4g}, avg={self.avg:.4g})"


def format_duration(seconds: float) -> str:
    """m:ss below an hour, h:mm:ss above; '?' when unknown."""
    if seconds is None or seconds != seconds or seconds < 0 or seconds == float("inf"):
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class ProgressBar:
    """Progress of one epoch of `total` steps.

    Call ``update(step, images=..., loss=..., top1=...)`` after each step (``step`` counts
    completed steps, 1..total) and ``close()`` at the end.  ``images`` is the number of images
    in that step; the img/s shown is the total since the bar started over the elapsed time.
    ``top1`` is shown as a percentage as given (pass 12.5 for 12.5%).  Extra keyword values
    are shown as ``name value``.
    """

    def __init__(self, total: int, epoch: int | None = None, epochs: int | None = None,
                 stream=None, width: int = 20, print_freq: int = 50, min_interval: float = 0.1,
                 tty: bool | None = None):
        self.total = max(int(total), 0)
        self.epoch, self.epochs = epoch, epochs
        self.stream = sys.stderr if stream is None else stream
        self.width = int(width)
        self.print_freq = max(int(print_freq), 1)
        self.min_interval = float(min_interval)
        self.tty = _isatty(self.stream) if tty is None else bool(tty)
        self.start = time.monotonic()
        self.images = 0
        self.step = 0
        self._last_draw = -float("inf")
        self._last_len = 0
        self._pending = None  # the latest update's arguments when it was not shown

    def format(self, step: int, loss=None, top1=None, **extra) -> str:
        """The status line for `step` (no newline, no carriage return)."""
        parts = []
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}/{self.epochs}" if self.epochs else
                         f"epoch {self.epoch}")
        parts.append(f"step {step}/{self.total}")
        if self.tty and self.total:
            filled = int(self.width * min(step, self.total) / self.total)
            parts.append("[" + "#" * filled + "." * (self.width - filled) + "]")
        if loss is not None:
            parts.append(f"loss {float(loss):.3f}")
        if top1 is not None:
            parts.append(f"top1 {float(top1):.1f}%")
        for name, value in extra.items():
            if value is not None:
                parts.append(f"{name} {value:.4g}" if isinstance(value, (int, float))
                             else f"{name} {value}")
        elapsed = time.monotonic() - self.start
        if self.images and elapsed > 0:
            parts.append(f"{self.images / elapsed:.1f} img/s")
        if step > 0 and self.total:
            parts.append("eta " + format_duration(elapsed / step * max(self.total - step, 0)))
        return " ".join(parts)

    def update(self, step: int, images: int = 0, loss=None, top1=None, **extra) -> None:
        """Record that `step` steps are done (the latest with `images` images) and maybe draw."""
        self.step = int(step)
        self.images += int(images)
        last = self.total and self.step >= self.total
        if self.tty:
            now = time.monotonic()
            if not last and now - self._last_draw < self.min_interval:
                self._pending = (loss, top1, extra)
                return
            self._last_draw = now
        elif not (last or self.step % self.print_freq == 0):
            self._pending = (loss, top1, extra)
            return
        self._draw(loss, top1, extra)

    def _draw(self, loss, top1, extra) -> None:
        self._pending = None
        line = self.format(self.step, loss, top1, **extra)
        if self.tty:
            # Pad with spaces so a shorter line fully covers the previous one.
            self.stream.write("\r" + line + " " * max(self._last_len - len(line), 0))
            self._last_len = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """End the bar: show the latest state if it was not shown yet (an epoch that ended
        early, or a rate-limited redraw), and on a terminal move to a new line."""
        if self._pending is not None:
            self._draw(*self._pending)
        if self.tty and self._last_len:
            self.stream.write("\n")
            self.stream.flush()
            self._last_len = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
