"""Real handwritten digits for LeNet-5's built-in run: scikit-learn's 1,797 scanned digits.

scikit-learn ships the UCI "optical recognition of handwritten digits" test set: 8x8 images
of 17 grey levels (0-16), about 180 per class, written by 43 people. They are written once
as an ImageFolder of 32x32 grayscale PNGs, the digit (upscaled to 28x28, bilinear) centred in
the 32x32 field as LeNet-5 expects, white on black::

    root/train/<digit>/*.png   70% of each class
    root/val/<digit>/*.png     10%, for choosing the best epoch
    root/test/<digit>/*.png    20%, held out: never trained on nor used for choosing

The split is stratified and fixed (a seeded permutation of each class), and a
``manifest.json`` records it, so a second call reuses the files. scikit-learn is an optional
dependency: ``pip install -e ".[digits]"``.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
from PIL import Image

from engine.io import atomic_write

from .folder import SplitError

VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = (("train", 0.7), ("val", 0.1), ("test", 0.2))
SIDE, DIGIT_SIDE = 32, 28


def load_sklearn_digits():
    """(images (1797, 8, 8) float in [0, 16], labels (1797,)) from scikit-learn."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise SplitError("the built-in digits dataset needs scikit-learn: "
                           "pip install -e \".[digits]\" (or pip install scikit-learn)") from None
    digits = load_digits()
    return digits.images, digits.target


def to_lenet_image(image8: np.ndarray) -> Image.Image:
    """An 8x8 digit (0-16) as a 32x32 8-bit grayscale image, the digit 28x28 in the middle."""
    small = Image.fromarray(np.round(np.asarray(image8) * (255.0 / 16.0)).astype(np.uint8))
    digit = np.asarray(small.resize((DIGIT_SIDE, DIGIT_SIDE), Image.BILINEAR))
    canvas = np.zeros((SIDE, SIDE), np.uint8)
    m = (SIDE - DIGIT_SIDE) // 2
    canvas[m:m + DIGIT_SIDE, m:m + DIGIT_SIDE] = digit
    return Image.fromarray(canvas, mode="L")


def split_indices(labels: np.ndarray, seed: int = 0) -> dict:
    """{split: sorted sample indices}, each class cut 70/10/20 after a seeded shuffle."""
    rng = np.random.default_rng(seed)
    out = {name: [] for name, _ in SPLITS}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(round(len(idx) * SPLITS[0][1]))
        n_val = int(round(len(idx) * SPLITS[1][1]))
        out["train"] += idx[:n_train].tolist()
        out["val"] += idx[n_train:n_train + n_val].tolist()
        out["test"] += idx[n_train + n_val:].tolist()
    return {k: sorted(v) for k, v in out.items()}


def make_digits_imagefolder(root: str, seed: int = 0) -> str:
    """Write (once) the digits as ``root/{train,val,test}/<digit>/<index>.png``; return root."""
    images, labels = load_sklearn_digits()
    splits = split_indices(labels, seed)
    manifest = {"format": "sklearn-digits-imagefolder", "version": VERSION, "seed": seed,
                "side": SIDE, "counts": {k: len(v) for k, v in splits.items()}}
    path = os.path.join(root, MANIFEST_NAME)
    if os.path.isfile(path):
        try:
            with open(path) as f:
                if json.load(f) == manifest:
                    return root
        except (OSError, ValueError):
            pass
    for name, _ in SPLITS:                        # a stale or partial copy: write it afresh
        shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    for name, indices in splits.items():
        for i in indices:
            folder = os.path.join(root, name, str(int(labels[i])))
            os.makedirs(folder, exist_ok=True)
            to_lenet_image(images[i]).save(os.path.join(folder, f"{i:04d}.png"))
    with atomic_write(path) as f:                 # last: its presence means "complete"
        f.write(json.dumps(manifest, indent=1).encode())
    return root
