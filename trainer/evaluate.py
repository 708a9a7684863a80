"""``eval`` and ``predict``: testing trained checkpoints and weights files.

Multi-crop testing averages the softmax over crops: 1 (centre), 10 (corners + centre,
mirrored) or the paper's 144 (4 scales x 3 squares x 6 crops x 2 mirrors). Several files
make an ensemble, as in the paper's section 7: the softmax is averaged over models and crops,

    p(class | image) = 1 / (M C) * sum_{m=1..M} sum_{c=1..C} softmax(f_m(crop_c(image)))

and ``eval --table`` prints its Table 3: 1..M models x 1, 10, 144 crops, with the cost
(M x C forward passes per image) relative to one model on one crop. Each file is tested with
its own image size and preprocessing (``data.preprocessing``), so our checkpoints and an
imported Caffe model can be averaged together.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import numpy as np

import layers as L
from data import DataLoader, ImageFolder, UnreadableImageError, load_image
from data.folder import is_image_file
from data.preprocessing import Prepared, Preprocessing
from data.transforms import Crops144, TenCrop, eval_transform
from engine import backend, no_grad
from trainer import checkpoint as ckpt
from trainer.config import UsageError, device_for
from trainer.logs import log, progress
from trainer.loop import TrainingError, topk_correct

CROP_TRANSFORMS = {1: eval_transform, 10: TenCrop, 144: Crops144}


def load_model(path: str, device: str, prefer_average: bool = True):
    """(model in eval mode, spec, class names, image size, which weights, Preprocessing) from
    a training checkpoint or a weights file. Uses the Polyak-averaged weights when the file
    has them (and ``prefer_average``), else the raw weights."""
    weights, meta, which = ckpt.read_model_file(path, prefer_average)
    spec, model = ckpt.build_model(meta["model"], path)
    ckpt.load_weights(model, weights, path, which)
    bad = [n for n, p in model.named_parameters() if not np.isfinite(backend.to_numpy(p.data)).all()]
    if bad:
        raise TrainingError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinity "
                            f"(e.g. {bad[0]}): the run diverged; its predictions would be "
                            f"meaningless")
    model.to(device).eval()
    try:
        prep = Preprocessing.from_meta(meta.get("preprocessing"), spec.in_channels)
    except (TypeError, ValueError) as exc:
        raise ckpt.CheckpointError(f"{path}: its preprocessing is malformed ({exc})") from None
    return model, spec, meta["classes"], int(meta["model"].get("image_size", 224)), which, prep


@dataclass
class Member:
    """One model of an ensemble, with the crop size and preprocessing it is tested with."""
    path: str
    model: object
    spec: object
    size: int
    which: str
    prep: Preprocessing


def load_ensemble(paths, device: str, prefer_average: bool = True, image_size=None):
    """(members, class names) for checkpoints/weights files that must agree on their classes
    (same names in the same order; UsageError naming both files otherwise)."""
    members, classes = [], None
    for path in paths:
        model, spec, names, size, which, prep = load_model(path, device, prefer_average)
        if classes is not None and list(names) != list(classes):
            diff = next((i for i, (a, b) in enumerate(zip(names, classes)) if a != b),
                        min(len(names), len(classes)))
            raise UsageError(
                f"--checkpoint {path}: its {len(names)} classes differ from the "
                f"{len(classes)} of {paths[0]} (first difference at index {diff}: "
                f"{names[diff] if diff < len(names) else 'none'!r} vs "
                f"{classes[diff] if diff < len(classes) else 'none'!r}); an ensemble "
                f"averages the same classes")
        classes = list(names)
        size = image_size or size
        _check_size(spec, size)
        members.append(Member(path, model, spec, size, which, prep))
    return members, classes


def crop_transform(crops: int, size: int, prep: Preprocessing):
    """The test transform for ``crops`` crops of ``size``, ending in the file's preprocessing."""
    return Prepared(CROP_TRANSFORMS[crops](size, **prep.transform_args()), prep)


def predict_probs(model, batch: np.ndarray, device: str, chunk: int = 64) -> np.ndarray:
    """Softmax probabilities for images (N, C, S, S) or crops (N, n_crops, C, S, S),
    averaged over the crops: (N, classes)."""
    crops = batch.shape[1] if batch.ndim == 5 else 1
    flat = batch.reshape((-1,) + batch.shape[-3:]).astype(model.dtype)
    out = []
    with no_grad():
        for i in range(0, len(flat), chunk):
            logits = model(backend.to_device(flat[i:i + chunk], device))
            out.append(L.softmax(logits).numpy())
    # Image-major: crop j of image i is row i * crops + j of the flattened batch.
    probs = np.concatenate(out).reshape(len(batch), crops, -1)
    return probs.mean(axis=1)


def ensemble_average(probs) -> np.ndarray:
    """The ensemble's prediction: the mean of the models' (crop-averaged) softmax outputs,
    each (N, classes). Every model has the same number of crops, so this is also the mean
    over all models x crops, as in the paper."""
    return np.mean(np.stack(probs), axis=0)


def _check_size(spec, size, flag="--image-size"):
    try:
        spec.check_image_size(size, flag)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _eval_split(args, members, classes):
    """The ImageFolder to evaluate on: --data, else the data the first checkpoint trained on."""
    data = args.data
    first = args.checkpoint[0]
    spec = members[0].spec
    if data is None:
        saved = ckpt.read_meta(first).get("config") or {}
        data = saved.get("data")
        if data is None:
            if not saved:
                raise UsageError(f"{first} does not say what it was trained on: pass --data")
            from data.builtin import make_builtin
            from trainer.config import TrainConfig
            data = make_builtin(spec.builtin_data, TrainConfig.from_dict(saved))
    split = getattr(args, "split", "val")
    split_root = os.path.join(data, split) if os.path.isdir(os.path.join(data, split)) else data
    if split != "val" and split_root == data:
        raise UsageError(f"--split {split}: {data} has no {split} folder")
    dataset = ImageFolder(split_root, classes=None, mode="L" if spec.in_channels == 1 else "RGB")
    if list(dataset.classes) != list(classes):
        raise UsageError(f"{split_root}: its classes {dataset.classes[:5]}... differ from the "
                         f"checkpoint's {classes[:5]}...")
    return split_root, dataset


def member_probs(member, dataset, crops: int, args, device: str, desc: str):
    """(probs (N, classes), labels (N,), skipped paths) of one model over ``dataset``."""
    batch = max(1, args.batch_size // crops)
    loader = DataLoader(dataset, batch, transform=crop_transform(crops, member.size, member.prep),
                        workers=args.workers or 0)
    probs, labels = [], []
    bar = progress(loader, desc=desc, print_freq=max(1, len(loader) // 10))
    for x, t in bar:
        probs.append(predict_probs(member.model, x, device))
        labels.append(t)
    if not probs:
        raise TrainingError(f"{dataset.root}: no readable images")
    return np.concatenate(probs), np.concatenate(labels), loader.skipped


def errors(probs: np.ndarray, labels: np.ndarray) -> tuple:
    """(top-1 error, top-5 error) in percent."""
    n = len(labels)
    return (100.0 - 100.0 * topk_correct(probs, labels, 1) / n,
            100.0 - 100.0 * topk_correct(probs, labels, 5) / n)


def _all_probs(members, dataset, crops, args, device):
    probs, labels, skipped = [], None, []
    for k, m in enumerate(members, 1):
        desc = f"eval {crops} crop(s)" + (f", model {k}/{len(members)}" if len(members) > 1 else "")
        p, t, skipped = member_probs(m, dataset, crops, args, device, desc)
        if labels is not None and not np.array_equal(t, labels):
            raise TrainingError(f"{m.path}: saw different images than {members[0].path}")
        probs.append(p)
        labels = t
    return probs, labels, skipped


def run_eval(args) -> dict:
    """Top-1/top-5 error of one model or an ensemble (``args.checkpoint`` a list); with
    ``args.table`` the paper's Table 3 breakdown over 1..M models x 1, 10, 144 crops."""
    device = device_for(args.device)
    if args.image_size is not None and args.image_size < 1:
        raise UsageError(f"--image-size {args.image_size}: must be >= 1")
    paths = list(args.checkpoint)
    members, classes = load_ensemble(paths, device, not args.raw_weights, args.image_size)
    split_root, dataset = _eval_split(args, members, classes)
    which = "/".join(sorted({m.which for m in members}))
    if getattr(args, "table", False):
        rows = table_rows(members, dataset, args, device)
        print(format_table(rows, len(rows[0]["labels"]) if rows else 0, which))
        return {"rows": [{k: v for k, v in r.items() if k != "labels"} for r in rows]}
    probs, labels, skipped = _all_probs(members, dataset, args.crops, args, device)
    top1, top5 = errors(ensemble_average(probs), labels)
    n = len(labels)
    result = {"images": n, "crops": args.crops, "models": len(members), "weights": which,
              "top1_error": top1, "top5_error": top5}
    models = f"{len(members)} models, " if len(members) > 1 else ""
    print(f"{n} images, {models}{args.crops} crop(s), {which} weights: top-1 error "
          f"{top1:.2f}%, top-5 error {top5:.2f}%")
    if skipped:
        log(f"{len(skipped)} unreadable image(s) skipped")
    return result


TABLE_CROPS = (1, 10, 144)


def table_rows(members, dataset, args, device, crop_schemes=TABLE_CROPS) -> list:
    """One row per (number of models m, crops): the first m models averaged; the cost is
    m x crops forward passes per image, relative to one model on one crop (the paper's)."""
    rows = []
    for crops in crop_schemes:
        probs, labels, _ = _all_probs(members, dataset, crops, args, device)
        for m in range(1, len(members) + 1):
            top1, top5 = errors(ensemble_average(probs[:m]), labels)
            rows.append({"models": m, "crops": crops, "cost": m * crops, "top1_error": top1,
                         "top5_error": top5, "labels": labels})
    rows.sort(key=lambda r: (r["models"], r["crops"]))
    return rows


def format_table(rows, images: int, which: str) -> str:
    """The rows as the paper's Table 3 (plus top-1), with top-5 relative to the first row."""
    base = rows[0]["top5_error"] if rows else 0.0
    lines = [f"{images} images, {which} weights",
             f"{'models':>6} {'crops':>5} {'cost':>5} {'top-1 error':>11} {'top-5 error':>11} "
             f"{'vs base':>8}"]
    for r in rows:
        delta = r["top5_error"] - base
        lines.append(f"{r['models']:>6} {r['crops']:>5} {r['cost']:>5} {r['top1_error']:>10.2f}% "
                     f"{r['top5_error']:>10.2f}% {'base' if r is rows[0] else f'{delta:+.2f}%':>8}")
    return "\n".join(lines)


def expand_images(paths) -> list:
    """Image files named, plus the image files found (recursively, sorted) in folders named."""
    out = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs
                           if is_image_file(f))
            if not found:
                raise UsageError(f"{p}: a folder with no image files")
            out += found
        else:
            out.append(p)
    return out


def run_predict(args) -> int:
    if args.topk < 1:
        raise UsageError(f"--topk {args.topk}: must be >= 1")
    device = device_for(args.device)
    images = expand_images(args.images)
    members, classes = load_ensemble(list(args.checkpoint), device, not args.raw_weights,
                                     args.image_size)
    transforms = [crop_transform(args.crops, m.size, m.prep) for m in members]
    mode = "L" if members[0].spec.in_channels == 1 else "RGB"
    failures = 0
    for path in images:
        try:
            img = load_image(path, mode)
            xs = [t(img, None) for t in transforms]
        except UnreadableImageError as exc:
            print(f"error: {path}: cannot read image ({exc.reason})", file=sys.stderr)
            failures += 1
            continue
        except ValueError as exc:      # e.g. an image smaller than the crop
            print(f"error: {path}: {exc}", file=sys.stderr)
            failures += 1
            continue
        probs = ensemble_average([predict_probs(m.model, x[None], device)[0]
                                  for m, x in zip(members, xs)])
        top = np.argsort(-probs)[:min(args.topk, len(classes))]
        print(path)
        for rank, k in enumerate(top, 1):
            print(f"  {rank}. {classes[k]:<24} {100 * probs[k]:6.2f}%")
    return 2 if failures else 0
