"""Image folders on disk: ``ImageFolder`` and ``load_image``.

``ImageFolder`` reads the usual layout ``root/<class>/**/<image>``: classes are the sorted
sub-folder names and a class's index is its position in that list. Files with any extension
torchvision's ImageFolder accepts (``IMG_EXTENSIONS``) are read, case-insensitively.

``load_image`` decodes every mode Pillow reads into 8-bit RGB (or grayscale ``L``) the way a
viewer would show it: 16-bit and 32-bit integer images are scaled down, not clipped (a 16-bit
PNG would otherwise become solid white), floating-point images in [0, 1] are scaled up,
palette images are expanded, transparent pixels are composited over white, CMYK and YCbCr are
converted.
"""
from __future__ import annotations

import os
import sys

import numpy as np
from PIL import Image

__all__ = ["IMG_EXTENSIONS", "SplitError", "UnreadableImageError", "load_image", "ImageFolder"]

# torchvision's list (plus .gif, which Pillow decodes as its first frame).
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                  ".gif")


class SplitError(ValueError):
    """A dataset folder is missing, has no class folders, or has no images."""


class UnreadableImageError(OSError):
    """An image file could not be opened or decoded; ``.path`` names it."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path = path
        self.reason = reason


def _to_8bit(img: Image.Image) -> Image.Image:
    """Integer (I;16*, I) and float (F) images -> 8-bit 'L', scaled by their range."""
    a = np.asarray(img)
    if img.mode == "F":
        a = a.astype(np.float64)
        top = 1.0 if np.nanmax(a, initial=0.0) <= 1.0 else 255.0
        a = np.clip(np.nan_to_num(a) / top * 255.0, 0, 255)
    else:
        a = a.astype(np.int64)
        top = 65535 if img.mode.startswith("I;16") or a.max(initial=0) > 255 else 255
        if a.max(initial=0) > 65535:
            top = int(a.max())
        a = np.clip(a, 0, None) * (255.0 / top)
    return Image.fromarray(np.round(a).astype(np.uint8), "L")


def convert_mode(img: Image.Image, mode: str = "RGB") -> Image.Image:
    """Any Pillow image -> 8-bit ``mode`` ('RGB' or 'L'), as a viewer would display it."""
    if img.mode in ("I", "F") or img.mode.startswith("I;16"):
        img = _to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("LA", "La", "PA", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    if img.mode == "1":
        img = img.convert("L")
    return img if img.mode == mode else img.convert(mode)


def load_image(path: str, mode: str = "RGB") -> Image.Image:
    """Open and fully decode an image as 8-bit ``mode``; raise UnreadableImageError if that fails."""
    try:
        with Image.open(path) as img:
            # load() forces the decode now: Image.open only reads the header, and a truncated
            # file would otherwise fail later, deep inside a transform.
            img.load()
            return convert_mode(img, mode)
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, zlib.error...)
        # Pillow's messages often repeat the path; the error names it once.
        why = str(exc).replace(f" '{path}'", "").replace(f"'{path}'", "the file").replace(path, "the file")
        raise UnreadableImageError(path, f"{type(exc).__name__}: {why}") from exc


def is_image_file(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def _walk_images(class_dir: str) -> list[str]:
    """Image files under class_dir, following symbolic links but entering each real folder
    once: a link back to an ancestor (a loop) would otherwise repeat the same files many times."""
    files, seen, loops = [], set(), []
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            loops.append(dirpath)
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [os.path.join(dirpath, f) for f in filenames if is_image_file(f)]
    if loops:
        print(f"warning: {class_dir}: {len(loops)} symbolic link(s) lead back into folders "
              f"already read (e.g. {loops[0]}); their files are counted once", file=sys.stderr)
    return files


class ImageFolder:
    """Images under ``root/<class>/`` (or ``root/<split>/<class>/`` when `split` is given).

    Attributes:
      root: the folder holding the class folders.
      classes: sorted class folder names; label = index in this list.
      class_to_idx: name -> label.
      samples: list of (path, label), sorted by class then path.
      targets: labels, int64 array (len,).
      mode: 'RGB' or 'L', what ``dataset[i]`` returns.

    `classes` may be passed to impose the label set of another split (e.g. val must use the
    train classes): then class folders may be missing or empty, but a folder that is not in the
    list is an error, since its images would get no label.  Files are found recursively inside
    each class folder; hidden files and folders (starting with '.') are ignored.

    Raises SplitError (a ValueError) naming the path when the folder is missing, has no class
    folders, has an empty class folder (only when `classes` is not given), or has no images.

    ``cache=True`` keeps every decoded image in memory, so that each file is read and decoded
    once per process instead of once per epoch (the built-in datasets: 3,600 images of 72x72
    are 56 MB, and opening and decoding was about 40% of the loader's time).
    """

    def __init__(self, root: str, split: str | None = None, classes=None, mode: str = "RGB",
                 cache: bool = False):
        root = os.fspath(root)
        folder = os.path.join(root, split) if split else root
        if not os.path.isdir(folder):
            what = f"split folder '{split}'" if split else "dataset folder"
            raise SplitError(f"{what} not found: {folder}")
        found = sorted(d.name for d in os.scandir(folder)
                       if d.is_dir() and not d.name.startswith("."))
        strict = classes is None
        if strict:
            if not found:
                raise SplitError(f"no class folders in {folder} "
                                 f"(expected {folder}/<class>/<image>)")
            classes = found
        else:
            classes = list(classes)
            unknown = sorted(set(found) - set(classes))
            if unknown:
                raise SplitError(f"{folder} has class folders not in the class list: {unknown}")
        self.root = folder
        self.mode = mode
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = []
        for label, name in enumerate(self.classes):
            class_dir = os.path.join(folder, name)
            files = _walk_images(class_dir) if os.path.isdir(class_dir) else []
            if not files and strict:
                raise SplitError(f"class folder has no images ({', '.join(IMG_EXTENSIONS)}): "
                                 f"{class_dir}")
            self.samples += [(p, label) for p in sorted(files)]
        if not self.samples:
            raise SplitError(f"no images ({', '.join(IMG_EXTENSIONS)}) found under {folder}")
        self.targets = np.array([s[1] for s in self.samples], dtype=np.int64)
        self._decoded: dict | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        """(PIL image in ``self.mode``, label); raises UnreadableImageError for a bad file."""
        path, label = self.samples[index]
        if self._decoded is None:
            return load_image(path, self.mode), label
        img = self._decoded.get(index)
        if img is None:
            img = self._decoded[index] = load_image(path, self.mode)
        return img.copy(), label     # the caller may change its image; the cache's stays

    def __repr__(self):
        return f"ImageFolder({self.root!r}, {len(self.classes)} classes, {len(self)} images)"
