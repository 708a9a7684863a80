"""``eval`` and ``predict``: testing a trained checkpoint.

Multi-crop testing averages the softmax over crops: 1 (centre), 10 (corners + centre,
mirrored) or the paper's 144 (4 scales x 3 squares x 6 crops x 2 mirrors).
"""
from __future__ import annotations

import os
import sys

import numpy as np

import layers as L
from data import DataLoader, ImageFolder, UnreadableImageError, load_image
from data.folder import is_image_file
from data.transforms import Crops144, TenCrop, eval_transform
from engine import backend, no_grad
from trainer import checkpoint as ckpt
from trainer.config import UsageError, device_for
from trainer.logs import log, progress
from trainer.loop import TrainingError, topk_correct

CROP_TRANSFORMS = {1: eval_transform, 10: TenCrop, 144: Crops144}


def load_model(path: str, device: str, prefer_average: bool = True):
    """(model in eval mode, spec, class names, image size, which weights, preprocessing) from
    a checkpoint. Uses the Polyak-averaged weights when the file has them (and
    ``prefer_average``), else the raw weights."""
    arrays, meta = ckpt.load_checkpoint(path)
    if not isinstance(meta.get("model"), dict) or not isinstance(meta.get("classes"), list):
        raise ckpt.CheckpointError(f"{path} holds no model description: not a checkpoint "
                                   "written by train")
    spec, model = ckpt.build_model(meta["model"], path)
    groups = ckpt.unpack_namespaces(arrays)
    which = "ema" if prefer_average and "ema" in groups else "model"
    if which not in groups:
        raise ckpt.CheckpointError(f"{path} holds no model weights")
    ckpt.load_weights(model, groups[which], path, which)
    bad = [n for n, p in model.named_parameters() if not np.isfinite(backend.to_numpy(p.data)).all()]
    if bad:
        raise TrainingError(f"{path}: {len(bad)} weight tensor(s) hold NaN or infinity "
                            f"(e.g. {bad[0]}): the run diverged; its predictions would be "
                            f"meaningless")
    model.to(device).eval()
    prep = meta.get("preprocessing") or {"channels": spec.in_channels}
    return model, spec, meta["classes"], int(meta["model"].get("image_size", 224)), which, prep


def crop_transform(crops: int, size: int, prep: dict):
    kw = {k: prep[k] for k in ("mean", "std") if k in prep}
    return CROP_TRANSFORMS[crops](size, **kw)


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


def _check_size(spec, size, flag="--image-size"):
    try:
        spec.check_image_size(size, flag)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def run_eval(args) -> dict:
    device = device_for(args.device)
    if args.image_size is not None and args.image_size < 1:
        raise UsageError(f"--image-size {args.image_size}: must be >= 1")
    model, spec, classes, size, which, prep = load_model(args.checkpoint, device,
                                                         not args.raw_weights)
    size = args.image_size or size
    _check_size(spec, size)
    data = args.data
    if data is None:
        saved = ckpt.load_checkpoint(args.checkpoint)[1].get("config") or {}
        data = saved.get("data")
        if data is None:
            if not saved:
                raise UsageError(f"{args.checkpoint} does not say what it was trained on: "
                                 "pass --data")
            from data.builtin import make_builtin
            from trainer.config import TrainConfig
            data = make_builtin(spec.builtin_data, TrainConfig.from_dict(saved))
    split_root = os.path.join(data, "val") if os.path.isdir(os.path.join(data, "val")) else data
    dataset = ImageFolder(split_root, classes=None, mode="L" if spec.in_channels == 1 else "RGB")
    if list(dataset.classes) != list(classes):
        raise UsageError(f"{split_root}: its classes {dataset.classes[:5]}... differ from the "
                         f"checkpoint's {classes[:5]}...")
    batch = max(1, args.batch_size // args.crops)
    loader = DataLoader(dataset, batch, transform=crop_transform(args.crops, size, prep),
                        workers=args.workers or 0)
    top1 = top5 = n = 0
    bar = progress(loader, desc="eval", print_freq=max(1, len(loader) // 10))
    for x, t in bar:
        probs = predict_probs(model, x, device)
        top1 += topk_correct(probs, t, 1)
        top5 += topk_correct(probs, t, 5)
        n += len(t)
        bar.set(top1=100.0 * top1 / n)
    if n == 0:
        raise TrainingError(f"{split_root}: no readable images")
    result = {"images": n, "crops": args.crops, "weights": which,
              "top1_error": 100.0 - 100.0 * top1 / n, "top5_error": 100.0 - 100.0 * top5 / n}
    print(f"{n} images, {args.crops} crop(s), {which} weights: top-1 error "
          f"{result['top1_error']:.2f}%, top-5 error {result['top5_error']:.2f}%")
    if loader.skipped:
        log(f"{len(loader.skipped)} unreadable image(s) skipped")
    return result


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
    model, spec, classes, size, _, prep = load_model(args.checkpoint, device, not args.raw_weights)
    size = args.image_size or size
    _check_size(spec, size)
    transform = crop_transform(args.crops, size, prep)
    mode = "L" if spec.in_channels == 1 else "RGB"
    failures = 0
    for path in images:
        try:
            x = transform(load_image(path, mode), None)
        except UnreadableImageError as exc:
            print(f"error: {path}: cannot read image ({exc.reason})", file=sys.stderr)
            failures += 1
            continue
        except ValueError as exc:      # e.g. an image smaller than the crop
            print(f"error: {path}: {exc}", file=sys.stderr)
            failures += 1
            continue
        probs = predict_probs(model, x[None], device)[0]
        top = np.argsort(-probs)[:min(args.topk, len(classes))]
        print(path)
        for rank, k in enumerate(top, 1):
            print(f"  {rank}. {classes[k]:<24} {100 * probs[k]:6.2f}%")
    return 2 if failures else 0
