"""Image transforms for training and testing GoogLeNet (Pillow + NumPy).

Every transform is called as ``t(img, rng)``: ``img`` is a PIL image (or, after ``ToArray``,
an array) and ``rng`` a ``np.random.Generator`` that is the transform's only source of
randomness.  The data loader derives that generator from (seed, epoch, sample index), so the
same sample gets the same augmentation however many worker processes there are.

Training follows section 6 of the paper:
  * ``RandomResizedCrop``: a crop covering 8%-100% of the image area with aspect ratio in
    [3/4, 4/3], resized to the network input with a randomly chosen interpolation
    (bilinear, area, nearest, bicubic with equal probability);
  * ``ColorJitter`` and ``Lighting``: the photometric distortions of Howard (2013): brightness,
    contrast and colour in random order, plus AlexNet's PCA lighting noise;
  * ``RandomHorizontalFlip`` with p = 0.5.

Testing: resize the shorter side to ``int(size * 256 / 224)`` and take the centre crop
(``eval_transform``), or the multi-crop sets ``ten_crop`` (10 crops) and ``crops_144``
(the paper's 144 crops).  Arrays are float32 CHW, normalised by mean/std per channel.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageEnhance

__all__ = [
    "IMAGENET_MEAN", "IMAGENET_STD", "IMAGENET_EIGVAL", "IMAGENET_EIGVEC", "INTERPOLATIONS",
    "Compose", "RandomResizedCrop", "RandomHorizontalFlip", "ColorJitter", "Lighting",
    "ToArray", "ResizeShorter", "CenterCrop", "to_array", "resize_shorter", "center_crop",
    "eval_resize_size", "train_transform", "eval_transform", "ten_crop", "crops_144",
    "TenCrop", "Crops144", "ConvertMode",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Principal components of ImageNet RGB pixels (values in [0, 1]), as used by AlexNet's
# lighting noise: eigenvalues and the matching eigenvectors as columns.
IMAGENET_EIGVAL = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
# "area" interpolation is Pillow's BOX filter: each output pixel averages the input pixels it
# covers, which is what OpenCV's INTER_AREA does when shrinking.
INTERPOLATIONS = (Image.BILINEAR, Image.BOX, Image.NEAREST, Image.BICUBIC)


class Compose:
    """Apply transforms in order, handing each the same generator: ``x = t(x, rng)``."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x, rng: np.random.Generator):
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self):
        return "Compose(" + ", ".join(repr(t) for t in self.transforms) + ")"


class RandomResizedCrop:
    """Crop a random region of ``scale`` x area and ``ratio`` aspect, resize to (size, size).

    The target area is uniform in ``scale`` times the image area; the aspect ratio (w / h) is
    log-uniform in ``ratio`` so that 3/4 and 4/3 are equally likely.  A draw whose rounded
    crop does not fit in the image, or whose rounded area or aspect falls outside the bounds,
    is rejected; after ``attempts`` rejections the largest centred crop whose aspect is
    clamped into ``ratio`` is used instead (the whole image when its aspect is already inside).
    The interpolation is drawn uniformly from ``interpolations``.
    """

    def __init__(self, size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3),
                 interpolations=INTERPOLATIONS, attempts: int = 10):
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < lo <= hi <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < lo <= hi, got {ratio}")
        self.size = int(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.interpolations = tuple(interpolations)
        self.attempts = int(attempts)

    def get_params(self, width: int, height: int, rng: np.random.Generator):
        """Return the crop box (left, top, w, h) in pixels for an image of width x height."""
        area = width * height
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        for _ in range(self.attempts):
            target = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(log_lo, log_hi))
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if not (0 < w <= width and 0 < h <= height):
                continue
            # Rounding to whole pixels can push a crop just past a bound on tiny images.
            frac, ar = w * h / area, w / h
            if not (self.scale[0] <= frac <= self.scale[1]
                    and self.ratio[0] <= ar <= self.ratio[1]):
                continue
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, w, h
        return self.fallback_box(width, height)

    def fallback_box(self, width: int, height: int):
        """The largest centred crop whose aspect ratio is clamped into ``ratio``."""
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, min(height, int(round(width / self.ratio[0])))
        elif in_ratio > self.ratio[1]:
            w, h = min(width, int(round(height * self.ratio[1]))), height
        else:
            w, h = width, height
        return (width - w) // 2, (height - h) // 2, w, h

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        left, top, w, h = self.get_params(img.width, img.height, rng)
        resample = self.interpolations[int(rng.integers(len(self.interpolations)))]
        # resize(box=...) crops and resamples in one step: no intermediate image.
        return img.resize((self.size, self.size), resample, box=(left, top, left + w, top + h))

    def __repr__(self):
        return f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio})"


class RandomHorizontalFlip:
    """Mirror left-right with probability p (works on PIL images and CHW arrays)."""

    def __init__(self, p: float = 0.5):
        self.p = float(p)

    def __call__(self, x, rng: np.random.Generator):
        # Always draw, so the stream of later draws does not depend on the outcome's branch.
        if rng.random() < self.p:
            if isinstance(x, Image.Image):
                return x.transpose(Image.FLIP_LEFT_RIGHT)
            return np.ascontiguousarray(x[..., ::-1])
        return x

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class ColorJitter:
    """Howard's photometric distortions: brightness, contrast and colour, in random order.

    Each factor is uniform in [1 - s, 1 + s] for its strength s (0 disables it), applied with
    PIL's ImageEnhance: brightness scales pixel values, contrast blends with the mean grey
    level, colour blends with the greyscale image (saturation).
    """

    def __init__(self, brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4):
        self.strengths = (("brightness", float(brightness), ImageEnhance.Brightness),
                          ("contrast", float(contrast), ImageEnhance.Contrast),
                          ("saturation", float(saturation), ImageEnhance.Color))

    def __call__(self, img: Image.Image, rng: np.random.Generator) -> Image.Image:
        order = rng.permutation(len(self.strengths))
        factors = [rng.uniform(1 - s, 1 + s) for _, s, _ in self.strengths]
        for k in order:
            _, s, enhancer = self.strengths[k]
            if s > 0:
                img = enhancer(img).enhance(float(factors[k]))
        return img

    def __repr__(self):
        return "ColorJitter(" + ", ".join(f"{n}={s}" for n, s, _ in self.strengths) + ")"


class Lighting:
    """AlexNet's PCA lighting noise on a normalised CHW array.

    Adds ``eigvec @ (alpha * eigval)`` to every pixel, alpha ~ N(0, alphastd) per component.
    The shift is computed for pixel values in [0, 1] and divided by ``std`` because it is
    applied after normalisation (a shift commutes with subtracting the mean).
    """

    def __init__(self, alphastd: float = 0.1, eigval=IMAGENET_EIGVAL, eigvec=IMAGENET_EIGVEC,
                 std=IMAGENET_STD):
        self.alphastd = float(alphastd)
        self.eigval = np.asarray(eigval, np.float64)
        self.eigvec = np.asarray(eigvec, np.float64)
        self.std = np.asarray(std, np.float64)

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        alpha = rng.normal(0.0, self.alphastd, 3)
        if self.alphastd == 0:
            return x
        shift = self.eigvec @ (alpha * self.eigval) / self.std
        return (x + shift.astype(np.float32)[:, None, None]).astype(np.float32, copy=False)

    def __repr__(self):
        return f"Lighting(alphastd={self.alphastd})"


def to_array(img: Image.Image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """PIL image (H, W) -> float32 array (C, H, W): ``(pixel / 255 - mean) / std`` per channel.

    C = len(mean): 3 reads the image as RGB, 1 as grayscale."""
    img = ConvertMode.for_channels(len(mean))(img)
    x = np.asarray(img, dtype=np.float32) * np.float32(1 / 255)
    if x.ndim == 2:
        x = x[:, :, None]
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


class ToArray:
    """Transform form of ``to_array`` (the generator is ignored)."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, img, rng=None) -> np.ndarray:
        return to_array(img, self.mean, self.std)

    def __repr__(self):
        return f"ToArray(mean={self.mean}, std={self.std})"


def resize_shorter(img: Image.Image, shorter: int, resample=Image.BILINEAR) -> Image.Image:
    """Resize keeping the aspect ratio so that the shorter side is `shorter` pixels."""
    w, h = img.size
    if w <= h:
        new = (shorter, max(shorter, int(round(h * shorter / w))))
    else:
        new = (max(shorter, int(round(w * shorter / h))), shorter)
    return img if new == (w, h) else img.resize(new, resample)


def center_crop(img: Image.Image, size: int) -> Image.Image:
    """The size x size crop at offset ((W - size) // 2, (H - size) // 2)."""
    w, h = img.size
    if w < size or h < size:
        raise ValueError(f"cannot centre-crop {size}x{size} from a {w}x{h} image")
    left, top = (w - size) // 2, (h - size) // 2
    return img.crop((left, top, left + size, top + size))


def eval_resize_size(size: int) -> int:
    """Shorter side before the evaluation centre crop: 256 for 224, in proportion otherwise."""
    return int(size * 256 / 224)


class ResizeShorter:
    def __init__(self, shorter: int, resample=Image.BILINEAR):
        self.shorter, self.resample = int(shorter), resample

    def __call__(self, img, rng=None):
        return resize_shorter(img, self.shorter, self.resample)

    def __repr__(self):
        return f"ResizeShorter({self.shorter})"


class CenterCrop:
    def __init__(self, size: int):
        self.size = int(size)

    def __call__(self, img, rng=None):
        return center_crop(img, self.size)

    def __repr__(self):
        return f"CenterCrop({self.size})"


class ConvertMode:
    """Convert a PIL image to 8-bit 'RGB' or 'L' (see ``data.folder.convert_mode``)."""

    def __init__(self, mode: str = "RGB"):
        self.mode = mode

    @classmethod
    def for_channels(cls, channels: int) -> "ConvertMode":
        return cls("L" if channels == 1 else "RGB")

    def __call__(self, img, rng=None):
        from data.folder import convert_mode
        return img if img.mode == self.mode else convert_mode(img, self.mode)

    def __repr__(self):
        return f"ConvertMode({self.mode!r})"


def train_transform(size: int, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), jitter: float = 0.4,
                    lighting: float = 0.1, flip: float = 0.5, mean=IMAGENET_MEAN,
                    std=IMAGENET_STD) -> Compose:
    """The paper's training augmentation: PIL image -> float32 (3, size, size).

    Random resized crop (random interpolation), colour jitter, horizontal flip, normalise,
    PCA lighting.  ``jitter=0`` and ``lighting=0`` turn the photometric parts off.
    """
    steps = [ConvertMode.for_channels(len(mean)), RandomResizedCrop(size, scale, ratio)]
    if jitter > 0:
        steps.append(ColorJitter(jitter, jitter, jitter))
    if flip > 0:
        steps.append(RandomHorizontalFlip(flip))
    steps.append(ToArray(mean, std))
    if lighting > 0 and len(mean) == 3:
        steps.append(Lighting(lighting, std=std))
    return Compose(steps)


def eval_transform(size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> Compose:
    """Single-crop testing: shorter side to ``int(size*256/224)``, centre crop.

    PIL image -> float32 (3, size, size); the generator argument is ignored.
    """
    return Compose([ConvertMode.for_channels(len(mean)), ResizeShorter(eval_resize_size(size)),
                    CenterCrop(size),
                    ToArray(mean, std)])


def _corner_and_centre_boxes(w: int, h: int, size: int):
    """(top, left) of the 4 corner crops then the centre crop, in that order."""
    return [(0, 0), (0, w - size), (h - size, 0), (h - size, w - size),
            ((h - size) // 2, (w - size) // 2)]


def ten_crop(img: Image.Image, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """Ten crops of the image resized to shorter side ``int(size*256/224)`` -> (10, 3, size, size).

    Order: top-left, top-right, bottom-left, bottom-right, centre, then the same five mirrored
    left-right (each crop flipped, so crop k + 5 is crop k seen in a mirror).
    """
    x = to_array(resize_shorter(ConvertMode.for_channels(len(mean))(img), eval_resize_size(size)), mean, std)
    _, h, w = x.shape
    crops = [x[:, t:t + size, l:l + size] for t, l in _corner_and_centre_boxes(w, h, size)]
    crops += [c[:, :, ::-1] for c in crops]
    return np.ascontiguousarray(np.stack(crops))


def crops_144(img: Image.Image, size: int, mean=IMAGENET_MEAN,
              std=IMAGENET_STD) -> np.ndarray:
    """The paper's 144 test crops -> float32 (144, 3, size, size).

    4 scales: shorter side 256, 288, 320, 352 (times size/224 for other input sizes);
    3 squares per scale, side = shorter side, taken at the start, middle and end of the longer
    side (left/centre/right or top/middle/bottom); per square 6 crops: 4 corners and the centre
    (size x size each) plus the whole square resized to size; each of those also mirrored.
    Order: scale, square, then the 6 crops, then their 6 mirrors.  A square image gives three
    identical squares, which keeps the count at 144 (so the softmax average weights scales the
    same way for every image).
    """
    img = ConvertMode.for_channels(len(mean))(img)
    out = []
    for base in (256, 288, 320, 352):
        s = int(round(base * size / 224))
        scaled = resize_shorter(img, s)
        w, h = scaled.size
        long_side = max(w, h)
        for offset in (0, (long_side - s) // 2, long_side - s):
            box = (offset, 0, offset + s, s) if w >= h else (0, offset, s, offset + s)
            square = scaled.crop(box)
            x = to_array(square, mean, std)
            crops = [x[:, t:t + size, l:l + size] for t, l in _corner_and_centre_boxes(s, s, size)]
            crops.append(to_array(square.resize((size, size), Image.BILINEAR), mean, std))
            out += crops + [c[:, :, ::-1] for c in crops]
    return np.ascontiguousarray(np.stack(out))


class TenCrop:
    """Transform form of ``ten_crop``: image -> (10, 3, size, size); the generator is unused."""

    def __init__(self, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.size, self.mean, self.std = int(size), tuple(mean), tuple(std)

    def __call__(self, img, rng=None):
        return ten_crop(img, self.size, self.mean, self.std)

    def __repr__(self):
        return f"TenCrop({self.size})"


class Crops144:
    """Transform form of ``crops_144``: image -> (144, 3, size, size); the generator is unused."""

    def __init__(self, size: int, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.size, self.mean, self.std = int(size), tuple(mean), tuple(std)

    def __call__(self, img, rng=None):
        return crops_144(img, self.size, self.mean, self.std)

    def __repr__(self):
        return f"Crops144({self.size})"
