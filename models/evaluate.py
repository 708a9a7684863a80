"""``eval`` and ``predict``: testing a trained checkpoint.

Multi-crop testing averages the softmax over crops: 1 (centre), 10 (corners +
centre, mirrored) or the paper's 144 (4 scales x 3 squares x 6 crops x 2 mirrors).
"""
from __future__ import annotations

import os
import sys

import numpy as np

import layers as L
from engine import backend, no_grad
from models import checkpoint as ckpt
from models.data import DataLoader, ImageFolder, UnreadableImageError, load_image
from models.googlenet import GoogLeNet
from models.progress import ProgressBar
from models.train import CHECKPOINT_KIND, TrainingError, topk_correct
from models.transforms import Crops144, TenCrop, eval_transform

CROP_TRANSFORMS = {1: eval_transform, 10: TenCrop, 144: Crops144}


def load_model(path: str, device: str, prefer_average: bool = True):
    """The model stored in a training checkpoint, in eval mode, and its class names.

    Uses the Polyak-averaged weights when the checkpoint has them (and
    ``prefer_average``), else the raw weights.
    """
    arrays, meta = ckpt.load_checkpoint(path)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise TrainingError(f"{path} is not a GoogLeNet checkpoint of this project")
    spec = meta["model"]
    model = GoogLeNet(num_classes=spec["num_classes"], aux_logits=spec["aux_logits"],
                      dtype=spec["dtype"])
    groups = ckpt.unpack_namespaces(arrays)
    which = "ema" if prefer_average and "ema" in groups else "model"
    model.load_state_dict(groups[which])
    model.to(device).eval()
    return model, meta["classes"], spec["image_size"], which


def predict_probs(model, batch: np.ndarray, device: str, chunk: int = 64) -> np.ndarray:
    """Softmax probabilities for images (N, 3, S, S) or crops (N, n_crops, 3, S, S),
    averaged over the crops: (N, classes)."""
    crops = batch.shape[1] if batch.ndim == 5 else 1
    flat = batch.reshape((-1,) + batch.shape[-3:]).astype(model.dtype)
    out = []
    with no_grad():
        for i in range(0, len(flat), chunk):
            logits = model(backend.to_device(flat[i:i + chunk], device))
            out.append(L.softmax(logits).numpy())
    probs = np.concatenate(out).reshape(len(batch), crops, -1)
    return probs.mean(axis=1)


def run_eval(args) -> dict:
    device = backend.normalize_device(args.device)
    model, classes, size, which = load_model(args.checkpoint, device, not args.raw_weights)
    size = args.image_size or size
    data = args.data
    if data is None:
        train_args = ckpt.load_checkpoint(args.checkpoint)[1]["args"]
        data = train_args.get("data") or train_args.get("synthetic_dir")
    split_root = os.path.join(data, "val") if os.path.isdir(os.path.join(data, "val")) else data
    dataset = ImageFolder(split_root, classes=None)
    if list(dataset.classes) != list(classes):
        raise TrainingError(f"{split_root}: its classes {dataset.classes[:5]}... differ from the "
                            f"checkpoint's {classes[:5]}...")
    transform = CROP_TRANSFORMS[args.crops](size)
    batch = max(1, args.batch_size // args.crops) if args.crops > 1 else args.batch_size
    loader = DataLoader(dataset, batch, transform=transform, workers=args.workers)
    top1 = top5 = n = 0
    bar = ProgressBar(len(loader), print_freq=max(1, len(loader) // 10))
    for i, (x, t) in enumerate(loader, 1):
        probs = predict_probs(model, x, device)
        top1 += topk_correct(probs, t, 1)
        top5 += topk_correct(probs, t, 5)
        n += len(t)
        bar.update(i, images=len(t), top1=100.0 * top1 / n)
    bar.close()
    if n == 0:
        raise TrainingError(f"{split_root}: no readable images")
    result = {"images": n, "crops": args.crops, "weights": which,
              "top1_error": 100.0 - 100.0 * top1 / n, "top5_error": 100.0 - 100.0 * top5 / n}
    print(f"{n} images, {args.crops} crop(s), {which} weights: top-1 error "
          f"{result['top1_error']:.2f}%, top-5 error {result['top5_error']:.2f}%")
    if loader.skipped:
        print(f"{len(loader.skipped)} unreadable image(s) skipped", file=sys.stderr)
    return result


def run_predict(args) -> int:
    device = backend.normalize_device(args.device)
    model, classes, size, _ = load_model(args.checkpoint, device, not args.raw_weights)
    transform = CROP_TRANSFORMS[args.crops](args.image_size or size)
    rng = np.random.default_rng(0)
    failures = 0
    for path in args.images:
        try:
            x = transform(load_image(path), rng)
        except (UnreadableImageError, FileNotFoundError, OSError) as exc:
            print(f"{path}: cannot read image ({exc})", file=sys.stderr)
            failures += 1
            continue
        probs = predict_probs(model, x[None], device)[0]
        top = np.argsort(-probs)[:min(args.topk, len(classes))]
        print(path)
        for rank, k in enumerate(top, 1):
            print(f"  {rank}. {classes[k]:<24} {100 * probs[k]:6.2f}%")
    return 1 if failures else 0
