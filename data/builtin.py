"""A small built-in image classification dataset, generated deterministically.

Each class is a kind of shape or texture (disc, star, triangle, stripes, checkerboard, ...)
drawn at a random position, scale, rotation and colour over a noisy background with a faint
colour ramp. Colour says nothing about the class (foreground and background colours are drawn
independently for every image), so a network has to learn shapes and textures: edges, corners,
curvature, periodicity. The classes are easy to tell apart for a person at 64x64 pixels, so a
short training run shows a loss that falls and an accuracy that rises well above chance.

The drawing is sized for the built-in run's 64-pixel inputs and its few thousand steps. Stripes
are wide (a period of 13-20 pixels at 72x72) and checkerboards fine (cells of 4-6 pixels), so
the two textures also differ in scale: at one scale, a short run from scratch called 29 of 30
validation stripes checkerboards (both are a patch of parallel edges in a disc or a square;
telling one orientation from two takes longer to learn than telling coarse from fine). The
"gradient" class is always a ramp over the whole image, never a ramp inside a disc or square
that would look like those classes; every single shape is at least a third of the image
across.

``make_synthetic_imagefolder`` writes the images as PNG files in the ImageFolder layout the
training command reads (``root/train/<class>/*.png``, ``root/val/<class>/*.png``) and a
``manifest.json`` describing what was generated, so a second call with the same parameters
reuses the files instead of drawing them again.

Every image is drawn from its own RNG seeded by (seed, split, class, index): asking for more
images per class keeps the first ones identical, and the same seed always gives the same bytes.

Rendering is done at twice the output resolution and box-filtered down, which anti-aliases the
shape edges cheaply; pixel noise is added after the downsampling so it stays per-pixel.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import shutil
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from engine.io import atomic_write

from .loader import default_start_method

__all__ = ["CLASS_NAMES", "GENERATOR_VERSION", "render_image", "make_synthetic_imagefolder"]

# Bump whenever the drawing code changes, so old datasets on disk are regenerated.
GENERATOR_VERSION = 3
MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "synthetic-imagefolder"

# Order matters: num_classes=k takes the first k.  The default run uses the first ten; the last
# two make a harder problem (--builtin-classes 12): a square or a hexagon differs from a disc
# only at its corners, which a short run from scratch does not learn (in 6-epoch runs with
# squares among the ten, 21 of 30 validation squares were called discs).
CLASS_NAMES = (
    "circle", "star", "triangle", "stripes", "checkerboard",
    "ring", "cross", "dots", "gradient", "blobs",
    "square", "hexagon",
)

_SPLIT_IDS = {"train": 0, "val": 1}


# ---------------------------------------------------------------------------------------------
# Drawing helpers.  All work on a square canvas of side `big` (twice the output size), with
# float32 images (H, W, 3) in [0, 255] and float32 masks (H, W) in [0, 1].
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=8)
def _grid(big: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), each (big, big) float32."""
    c = np.arange(big, dtype=np.float32) + 0.5
    return c[:, None].repeat(big, 1), c[None, :].repeat(big, 0)


def _mask_from(draw_fn, big: int) -> np.ndarray:
    """Run `draw_fn(ImageDraw)` on a blank 'L' canvas and return it as a (big, big) mask."""
    canvas = Image.new("L", (big, big), 0)
    draw_fn(ImageDraw.Draw(canvas))
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _regular_polygon(cx, cy, r, n, theta, jitter=0.0, rng=None):
    """Vertices of an n-gon of circumradius r, optionally with angular jitter per vertex."""
    angles = theta + 2 * np.pi * np.arange(n) / n
    if jitter and rng is not None:
        angles = angles + rng.uniform(-jitter, jitter, n)
    return [(cx + r * np.cos(a), cy + r * np.sin(a)) for a in angles]


def _rotated_rect(cx, cy, half_w, half_h, theta):
    """Corners of a rectangle centred on (cx, cy), rotated by theta."""
    c, s = np.cos(theta), np.sin(theta)
    pts = []
    for dx, dy in ((-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)):
        pts.append((cx + dx * c - dy * s, cy + dx * s + dy * c))
    return pts


def _random_colour(rng, avoid: np.ndarray, min_dist: float = 100.0) -> np.ndarray:
    """An RGB colour at least `min_dist` away from `avoid` (so the object stays visible)."""
    best, best_d = None, -1.0
    for _ in range(30):
        c = rng.integers(0, 256, 3).astype(np.float32)
        d = float(np.linalg.norm(c - avoid))
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def _centre_and_radius(rng, big, r_lo, r_hi):
    r = rng.uniform(r_lo, r_hi) * big
    cx, cy = rng.uniform(0.3, 0.7, 2) * big
    return cx, cy, r


def _region_mask(rng, big):
    """A large disc or rotated square: the area a texture class is painted in."""
    cx, cy, r = _centre_and_radius(rng, big, 0.28, 0.45)
    if rng.random() < 0.5:
        return _mask_from(lambda d: d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255), big)
    pts = _rotated_rect(cx, cy, r * 0.85, r * 0.85, rng.uniform(0, np.pi / 2))
    return _mask_from(lambda d: d.polygon(pts, fill=255), big)


def _rotated_coords(rng, big):
    """Coordinates (u, v) of the canvas rotated by a random angle, with a random phase."""
    yy, xx = _grid(big)
    theta = rng.uniform(0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    u = xx * c + yy * s + rng.uniform(0, big)
    v = -xx * s + yy * c + rng.uniform(0, big)
    return u, v


# ---------------------------------------------------------------------------------------------
# One painter per class: painter(rng, big, fg, bg_mean) -> (mask (big, big), fill).
# `fill` is a colour (3,) or an image (big, big, 3) painted where the mask is on.
# ---------------------------------------------------------------------------------------------

def _paint_circle(rng, big, fg, bg_mean):
    cx, cy, r = _centre_and_radius(rng, big, 0.2, 0.36)
    return _mask_from(lambda d: d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255), big), fg


def _paint_square(rng, big, fg, bg_mean):
    cx, cy, r = _centre_and_radius(rng, big, 0.17, 0.30)
    pts = _rotated_rect(cx, cy, r, r, rng.uniform(0, np.pi / 2))
    return _mask_from(lambda d: d.polygon(pts, fill=255), big), fg


def _paint_triangle(rng, big, fg, bg_mean):
    cx, cy, r = _centre_and_radius(rng, big, 0.22, 0.38)
    pts = _regular_polygon(cx, cy, r, 3, rng.uniform(0, 2 * np.pi), jitter=0.15, rng=rng)
    return _mask_from(lambda d: d.polygon(pts, fill=255), big), fg


def _paint_stripes(rng, big, fg, bg_mean):
    u, _ = _rotated_coords(rng, big)
    period = rng.uniform(0.18, 0.28) * big
    on = (np.mod(u, period) < period * rng.uniform(0.35, 0.6)).astype(np.float32)
    return on * _region_mask(rng, big), fg


def _paint_checkerboard(rng, big, fg, bg_mean):
    u, v = _rotated_coords(rng, big)
    period = rng.uniform(0.06, 0.09) * big
    on = ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    return on * _region_mask(rng, big), fg


def _paint_ring(rng, big, fg, bg_mean):
    cx, cy, r = _centre_and_radius(rng, big, 0.18, 0.38)
    ri = r * rng.uniform(0.45, 0.72)

    def draw(d):
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        d.ellipse((cx - ri, cy - ri, cx + ri, cy + ri), fill=0)
    return _mask_from(draw, big), fg


def _paint_cross(rng, big, fg, bg_mean):
    cx, cy, r = _centre_and_radius(rng, big, 0.18, 0.38)
    half_w = r * rng.uniform(0.16, 0.3)
    theta = rng.uniform(0, np.pi / 2)
    bar1 = _rotated_rect(cx, cy, r, half_w, theta)
    bar2 = _rotated_rect(cx, cy, half_w, r, theta)

    def draw(d):
        d.polygon(bar1, fill=255)
        d.polygon(bar2, fill=255)
    return _mask_from(draw, big), fg


def _paint_dots(rng, big, fg, bg_mean):
    cx, cy, spread = _centre_and_radius(rng, big, 0.22, 0.42)
    n = int(rng.integers(6, 17))
    rd = rng.uniform(0.025, 0.05) * big
    centres = rng.uniform(-1, 1, (n, 2)) * spread + (cx, cy)

    def draw(d):
        for x, y in centres:
            d.ellipse((x - rd, y - rd, x + rd, y + rd), fill=255)
    return _mask_from(draw, big), fg


def _paint_gradient(rng, big, fg, bg_mean):
    # A strong two-colour ramp over the whole image; the background only ever has a faint one.
    other = _random_colour(rng, fg, min_dist=160.0)
    u, _ = _rotated_coords(rng, big)
    u = u - u.min()
    t = (u / max(float(u.max()), 1e-6))[..., None]
    return np.ones((big, big), np.float32), fg * (1 - t) + other * t


def _paint_blobs(rng, big, fg, bg_mean):
    # Smooth random field: a tiny noise image upsampled bicubically, then thresholded.
    low = rng.standard_normal((5, 5)).astype(np.float32)
    field = np.asarray(Image.fromarray(low, mode="F").resize((big, big), Image.BICUBIC))
    thresh = np.quantile(field, 1.0 - rng.uniform(0.25, 0.45))
    return (field > thresh).astype(np.float32), fg


def _paint_star(rng, big, fg, bg_mean):
    cx, cy, r = _centre_and_radius(rng, big, 0.18, 0.40)
    inner = r * rng.uniform(0.38, 0.5)
    theta = rng.uniform(0, 2 * np.pi)
    pts = []
    for k in range(10):
        rr = r if k % 2 == 0 else inner
        a = theta + np.pi * k / 5
        pts.append((cx + rr * np.cos(a), cy + rr * np.sin(a)))
    return _mask_from(lambda d: d.polygon(pts, fill=255), big), fg


def _paint_hexagon(rng, big, fg, bg_mean):
    cx, cy, r = _centre_and_radius(rng, big, 0.2, 0.34)
    pts = _regular_polygon(cx, cy, r, 6, rng.uniform(0, np.pi / 3))
    return _mask_from(lambda d: d.polygon(pts, fill=255), big), fg


_PAINTERS = {
    "circle": _paint_circle, "square": _paint_square, "triangle": _paint_triangle,
    "stripes": _paint_stripes, "checkerboard": _paint_checkerboard, "ring": _paint_ring,
    "cross": _paint_cross, "dots": _paint_dots, "gradient": _paint_gradient,
    "blobs": _paint_blobs, "star": _paint_star, "hexagon": _paint_hexagon,
}


def _background(rng, big) -> np.ndarray:
    """A base colour with a faint ramp across it: (big, big, 3) float32."""
    base = rng.integers(0, 256, 3).astype(np.float32)
    u, _ = _rotated_coords(rng, big)
    ramp = (u - u.mean()) / big * rng.uniform(0, 40)
    return np.clip(base + ramp[..., None], 0, 255).astype(np.float32)


def render_image(class_name: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one RGB image (size x size) of `class_name` using only `rng` for randomness."""
    big = 2 * size
    bg = _background(rng, big)
    fg = _random_colour(rng, bg.reshape(-1, 3).mean(0))
    mask, fill = _PAINTERS[class_name](rng, big, fg, bg)
    mask = mask[..., None]
    img = bg * (1 - mask) + np.broadcast_to(fill, bg.shape) * mask
    # 2x2 box filter: anti-aliased edges at the output resolution.
    img = 0.25 * (img[0::2, 0::2] + img[0::2, 1::2] + img[1::2, 0::2] + img[1::2, 1::2])
    img = img + rng.normal(0.0, rng.uniform(2.0, 12.0), img.shape)
    return Image.fromarray(np.clip(np.rint(img), 0, 255).astype(np.uint8), mode="RGB")


# ---------------------------------------------------------------------------------------------
# On-disk dataset
# ---------------------------------------------------------------------------------------------

def _expected_manifest(num_classes, train_per_class, val_per_class, image_size, seed):
    return {
        "format": MANIFEST_FORMAT,
        "generator_version": GENERATOR_VERSION,
        "classes": list(CLASS_NAMES[:num_classes]),
        "counts": {"train": train_per_class, "val": val_per_class},
        "image_size": image_size,
        "seed": seed,
    }


def _read_manifest(root: str):
    try:
        with open(os.path.join(root, MANIFEST_NAME), encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and m.get("format") == MANIFEST_FORMAT else None


def _is_complete(root: str, manifest: dict, expected: dict) -> bool:
    """True when the manifest matches the request and every listed file is on disk."""
    if manifest.get("status") != "complete":
        return False
    if {k: manifest.get(k) for k in expected} != expected:
        return False
    for split, count in expected["counts"].items():
        split_dir = os.path.join(root, split)
        try:
            present = sorted(d for d in os.listdir(split_dir) if not d.startswith("."))
        except OSError:
            return False
        if present != sorted(expected["classes"]):
            return False
        for name in expected["classes"]:
            files = os.listdir(os.path.join(split_dir, name))
            if len([f for f in files if f.endswith(".png")]) != count:
                return False
    return True


_BLOCK = 60   # images per generation task


def _render_block(task) -> int:
    """Draw and write the images ``indices`` of one class of one split; return how many."""
    root, split, split_id, class_id, name, indices, image_size, seed = task
    class_dir = os.path.join(root, split, name)
    for i in indices:
        rng = np.random.default_rng([seed, split_id, class_id, i])
        img = render_image(name, image_size, rng)
        # compress_level 1: several times faster than the default, files stay small.
        img.save(os.path.join(class_dir, f"{name}_{i:05d}.png"), compress_level=1)
    return len(indices)


def _write_json_atomic(path: str, obj: dict) -> None:
    with atomic_write(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def make_synthetic_imagefolder(root: str, num_classes: int = 10, train_per_class: int = 50,
                               val_per_class: int = 20, image_size: int = 64,
                               seed: int = 0) -> str:
    """Write (or reuse) the synthetic dataset as an ImageFolder tree under `root`; return root.

    Layout: ``root/train/<class>/<class>_00000.png`` ... and the same under ``root/val``, plus
    ``root/manifest.json``.  If a complete dataset with the same parameters is already there,
    nothing is written.  If our manifest is there but differs (or generation was interrupted),
    the train/val folders are deleted and drawn again.  A root holding train/val folders without
    our manifest is someone else's data and is never deleted: that raises ValueError instead.

    Train and val images come from different RNG streams, so they never coincide.
    """
    if not 1 <= num_classes <= len(CLASS_NAMES):
        raise ValueError(f"num_classes must be in 1..{len(CLASS_NAMES)}, got {num_classes}")
    if train_per_class < 0 or val_per_class < 0:
        raise ValueError("image counts per class must be >= 0")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")

    root = os.fspath(root)
    expected = _expected_manifest(num_classes, train_per_class, val_per_class, image_size, seed)
    manifest = _read_manifest(root)
    if manifest is not None and _is_complete(root, manifest, expected):
        return root

    split_dirs = [os.path.join(root, s) for s in _SPLIT_IDS]
    if manifest is None and any(os.path.isdir(d) and os.listdir(d) for d in split_dirs):
        raise ValueError(f"{root} already holds train/val folders that were not generated here "
                         f"(no {MANIFEST_NAME}); refusing to overwrite them")

    os.makedirs(root, exist_ok=True)
    # Mark the tree as ours before touching it, so an interrupted run is cleaned up next time.
    _write_json_atomic(os.path.join(root, MANIFEST_NAME), dict(expected, status="building"))
    for d in split_dirs:
        shutil.rmtree(d, ignore_errors=True)

    # One task per (split, class, block of images); every image has its own RNG, so the bytes
    # do not depend on how the tasks are shared among processes.
    tasks = []
    for split, split_id in _SPLIT_IDS.items():
        count = expected["counts"][split]
        for class_id, name in enumerate(expected["classes"]):
            os.makedirs(os.path.join(root, split, name), exist_ok=True)
            for start in range(0, count, _BLOCK):
                tasks.append((root, split, split_id, class_id, name,
                              range(start, min(count, start + _BLOCK)), image_size, seed))
    total = sum(len(t[5]) for t in tasks)
    workers = min(os.cpu_count() or 1, 8, len(tasks)) if total >= 4 * _BLOCK else 1
    if default_start_method() != "fork":
        # Only forked workers: a spawned or forkserver one would re-run the caller's script,
        # which need not guard itself with `if __name__ == "__main__"`.
        workers = 1
    with tqdm(total=total, desc="generating the built-in images", unit="img", leave=False,
              disable=None) as bar:
        if workers > 1:
            ctx = multiprocessing.get_context("fork")
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                for done in pool.map(_render_block, tasks):
                    bar.update(done)
        else:
            for task in tasks:
                bar.update(_render_block(task))

    _write_json_atomic(os.path.join(root, MANIFEST_NAME), dict(expected, status="complete"))
    return root


def cache_dir(name: str) -> str:
    """Where generated datasets live: ``$GOOGLENET_DATA_DIR/<name>``, else
    ``$XDG_CACHE_HOME/googlenet-engine/<name>`` (``~/.cache/googlenet-engine/<name>``)."""
    base = os.environ.get("GOOGLENET_DATA_DIR")
    if not base:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        base = os.path.join(cache, "googlenet-engine")
    return os.path.join(base, name)


def make_shapes(cfg) -> str:
    """The built-in shapes dataset for a training config (its ``builtin_*`` fields)."""
    name = (f"shapes-v{GENERATOR_VERSION}-{cfg.builtin_classes}c-{cfg.builtin_train}+"
            f"{cfg.builtin_val}-{cfg.builtin_size}px")
    root = os.path.join(cfg.builtin_dir, name) if cfg.builtin_dir else cache_dir(name)
    return make_synthetic_imagefolder(root, num_classes=cfg.builtin_classes,
                                      train_per_class=cfg.builtin_train,
                                      val_per_class=cfg.builtin_val,
                                      image_size=cfg.builtin_size, seed=0)


def make_digits(cfg) -> str:
    """scikit-learn's scanned digits as 32x32 grayscale images (``data/digits.py``), with a
    held-out test/ split beside train/ and val/."""
    from .digits import VERSION, make_digits_imagefolder
    name = f"digits-v{VERSION}"
    root = os.path.join(cfg.builtin_dir, name) if cfg.builtin_dir else cache_dir(name)
    return make_digits_imagefolder(root)


# Built-in datasets by name (``NetworkSpec.builtin_data``): each takes a TrainConfig and
# returns the root of an ImageFolder with train/ and val/ splits, generating it once.
BUILTIN_DATASETS = {"shapes": make_shapes, "digits": make_digits}


def make_builtin(name: str, cfg) -> str:
    if name not in BUILTIN_DATASETS:
        raise ValueError(f"unknown built-in dataset {name!r}; known: {sorted(BUILTIN_DATASETS)}")
    return BUILTIN_DATASETS[name](cfg)
