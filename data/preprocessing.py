"""How 8-bit pixels become network inputs: a property of each weights file.

Our checkpoints normalise RGB pixels in [0, 1] by the ImageNet mean and std; Caffe's
``bvlc_googlenet`` expects BGR pixels in [0, 255] minus the per-channel mean (104, 117, 123)
and no division. One rule covers both: for channel c of the file's channel order,

    x[c] = (pixel[c] * pixel_range / 255 - mean[c]) / std[c]

with ``pixel_range`` 1 (pixels in [0, 1]) or 255 (raw 8-bit values), and then, when
``center`` is set, each channel of each image (each crop) minus its own mean over the pixels:
``x[c] -= mean over (h, w) of x[c]``, so that an image's overall colour does not count, only
what varies inside it (the built-in shapes dataset paints its shapes over random colours).
Checkpoints store it as ``meta["preprocessing"]``: ``{"channels", "order", "pixel_range",
"mean", "std", "center"}``; files written before ``order``, ``pixel_range`` and ``center``
existed mean RGB (or L), 1 and no centring.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .transforms import IMAGENET_MEAN, IMAGENET_STD

ORDERS = {1: ("L",), 3: ("RGB", "BGR")}


@dataclass(frozen=True)
class Preprocessing:
    """channels: 1 or 3; order: "L", "RGB" or "BGR"; mean, std: per channel, in ``order``
    and in units of ``pixel_range``."""
    channels: int = 3
    order: str = "RGB"
    pixel_range: float = 1.0
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    center: bool = False

    def __post_init__(self):
        if self.channels not in ORDERS or self.order not in ORDERS[self.channels]:
            raise ValueError(f"preprocessing: channel order {self.order!r} does not fit "
                             f"{self.channels} channel(s)")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"preprocessing: mean {list(self.mean)} and std {list(self.std)} "
                             f"need {self.channels} value(s) each")
        if not self.pixel_range > 0 or not all(s > 0 for s in self.std):
            raise ValueError("preprocessing: pixel_range and std must be > 0")

    @classmethod
    def from_meta(cls, meta: dict | None, channels: int = 3) -> "Preprocessing":
        """From ``meta["preprocessing"]`` (None: our default for ``channels``)."""
        if not meta:
            return cls.ours(channels)
        channels = int(meta.get("channels", channels))
        default = cls.ours(channels)
        return cls(channels=channels, order=meta.get("order", default.order),
                   pixel_range=float(meta.get("pixel_range", 1.0)),
                   mean=tuple(float(v) for v in meta.get("mean", default.mean)),
                   std=tuple(float(v) for v in meta.get("std", default.std)),
                   center=bool(meta.get("center", False)))

    @classmethod
    def ours(cls, channels: int = 3) -> "Preprocessing":
        """What ``train`` uses: ImageNet statistics for RGB, 0.5/0.5 for grayscale."""
        if channels == 1:
            return cls(1, "L", 1.0, (0.5,), (0.5,))
        return cls()

    @classmethod
    def caffe(cls) -> "Preprocessing":
        """Caffe's bvlc_googlenet: BGR, 0-255, mean (104, 117, 123), no std."""
        return cls(3, "BGR", 255.0, (104.0, 117.0, 123.0), (1.0, 1.0, 1.0))

    def to_meta(self) -> dict:
        return {"channels": self.channels, "order": self.order, "pixel_range": self.pixel_range,
                "mean": list(self.mean), "std": list(self.std), "center": self.center}

    def describe(self) -> str:
        return (f"{self.order}, pixels in [0, {self.pixel_range:g}], mean "
                f"{[round(m, 4) for m in self.mean]}, std {[round(s, 4) for s in self.std]}"
                + (", each image centred" if self.center else ""))

    def _rgb(self, values) -> tuple:
        return tuple(values[::-1]) if self.order == "BGR" else tuple(values)

    def transform_args(self) -> dict:
        """``mean``/``std`` for ``data.transforms`` (RGB order, pixels in [0, 1]):
        (p * R / 255 - m) / s = (p / 255 - m / R) / (s / R)."""
        r = self.pixel_range
        return {"mean": tuple(m / r for m in self._rgb(self.mean)),
                "std": tuple(s / r for s in self._rgb(self.std))}

    def finish(self, x: np.ndarray) -> np.ndarray:
        """Arrays from ``data.transforms`` (channels on axis -3, RGB) -> the file's order,
        each image (crop) centred when ``center``."""
        if self.order == "BGR":
            x = np.ascontiguousarray(x[..., ::-1, :, :])
        if self.center:
            x = (x - x.mean(axis=(-2, -1), keepdims=True, dtype=np.float64)).astype(np.float32)
        return x

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 pixels (H, W, 3) RGB or (H, W) gray -> float32 (C, H, W) network input."""
        x = np.asarray(pixels, np.float32)
        if x.ndim == 2:
            x = x[:, :, None]
        if self.order == "BGR":
            x = x[:, :, ::-1]
        x = x * np.float32(self.pixel_range / 255.0)
        x = (x - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        if self.center:
            x = x - x.mean(axis=(0, 1), keepdims=True, dtype=np.float64).astype(np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))


class Prepared:
    """A test transform followed by ``Preprocessing.finish`` (picklable, for workers)."""

    def __init__(self, transform, prep: Preprocessing):
        self.transform, self.prep = transform, prep

    def __call__(self, img, rng=None):
        return self.prep.finish(self.transform(img, rng))

    def __repr__(self):
        return f"Prepared({self.transform!r}, {self.prep.order})"
