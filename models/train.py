"""Training GoogLeNet: the loop behind ``python -m models.googlenet train``.

One epoch: for each batch, forward (main + aux logits), loss = main + 0.3 (aux1 +
aux2), backward, SGD step, Polyak average update. After each epoch: validation
(on the averaged weights when averaging is on), a metrics row in
``metrics.csv``, the curves in ``curves.png``, and an atomic checkpoint
``last.npz`` (plus ``best.npz`` for the best validation top-1).

Everything random is seeded and saved: the data order and augmentation come
from (seed, epoch, sample index), dropout masks from the engine's generator,
whose state the checkpoint stores. ``--resume last.npz`` therefore continues
exactly as if the run had never stopped.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass

import numpy as np

import layers as L
from engine import SGD, backend, no_grad
from models import checkpoint as ckpt
from models.data import DataLoader, ImageFolder
from models.googlenet import GoogLeNet, training_loss
from models.plot import append_metrics_csv, plot_curves
from models.progress import AverageMeter, ProgressBar
from models.transforms import eval_transform, train_transform

CHECKPOINT_KIND = "googlenet-train"


class TrainingError(RuntimeError):
    """A run that cannot go on (NaN loss, incompatible checkpoint); the message says why."""


# ------------------------------------------------------------ Polyak averaging
class PolyakAverage:
    """Exponential moving average of the parameters, used for evaluation.

    ``avg = d * avg + (1 - d) * w`` after every step, with the decay warmed up as
    ``d_t = min(decay, (1 + t) / (10 + t))`` so that early averages are not
    dominated by the random initialisation.
    """

    def __init__(self, model, decay: float):
        self.decay = float(decay)
        self.updates = 0
        self.shadow = {n: p.data.copy() for n, p in model.named_parameters()}

    def update(self, model) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for name, p in model.named_parameters():
            s = self.shadow[name]
            s *= d
            s += (1 - d) * p.data

    def swap(self, model) -> None:
        """Exchange the model's weights with the averages (call twice to undo)."""
        for name, p in model.named_parameters():
            p.data, self.shadow[name] = self.shadow[name], p.data


# ------------------------------------------------------------------ metrics
def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())


def evaluate(model, loader, device: str, desc: str = "val") -> dict:
    """Loss, top-1 and top-5 accuracy (percent) of ``model`` in eval mode over ``loader``."""
    was_training = model.training
    model.eval()
    loss_sum, top1, top5, n = 0.0, 0, 0, 0
    bar = ProgressBar(len(loader), print_freq=max(1, len(loader)))
    with no_grad():
        for i, (x, t) in enumerate(loader, 1):
            logits = model(backend.to_device(x.astype(model.dtype), device))
            loss_sum += L.softmax_cross_entropy(logits, backend.to_device(t, device)).item() * len(t)
            out = logits.numpy()
            top1 += topk_correct(out, t, 1)
            top5 += topk_correct(out, t, 5)
            n += len(t)
            bar.update(i, images=len(t), loss=loss_sum / n, top1=100.0 * top1 / n, split=desc)
    bar.close()
    model.train(was_training)
    if n == 0:
        raise TrainingError(f"{desc}: no readable images to evaluate")
    return {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "images": n}


# ------------------------------------------------------------------ the run
@dataclass
class RunState:
    epoch: int = 0          # epochs completed
    step: int = 0           # optimizer steps taken
    best_top1: float = -1.0


def lr_at(args, epoch: int) -> float:
    """The paper's schedule: the rate drops by ``lr_gamma`` every ``lr_step_size`` epochs."""
    return args.lr * args.lr_gamma ** (epoch // args.lr_step_size)


def _arrays_and_meta(model, opt, ema, state, args, classes):
    groups = {"model": {n: backend.to_numpy(p.data) for n, p in model.named_parameters()},
              "optim": opt.state_dict()["velocity"]}
    if ema is not None:
        groups["ema"] = {n: backend.to_numpy(a) for n, a in ema.shadow.items()}
    meta = {
        "kind": CHECKPOINT_KIND, "epoch": state.epoch, "step": state.step,
        "best_top1": state.best_top1, "classes": classes, "args": vars(args),
        "optim": opt.state_dict()["hyper"], "ema_updates": ema.updates if ema else 0,
        "rng": backend.get_rng_state(),
        "model": {"num_classes": model.num_classes, "aux_logits": model.aux_logits,
                  "dtype": str(model.dtype), "image_size": args.image_size},
    }
    return ckpt.pack_namespaces(groups), meta


def save_run(path, model, opt, ema, state, args, classes) -> None:
    arrays, meta = _arrays_and_meta(model, opt, ema, state, args, classes)
    ckpt.save_checkpoint(path, arrays, meta)


def restore_run(path, model, opt, ema, classes) -> RunState:
    arrays, meta = ckpt.load_checkpoint(path)
    if meta.get("kind") != CHECKPOINT_KIND:
        raise TrainingError(f"{path} is not a training checkpoint of this project")
    if meta["classes"] != classes:
        raise TrainingError(f"{path} was trained on classes {meta['classes'][:5]}..., which do "
                            f"not match this dataset's {classes[:5]}...")
    groups = ckpt.unpack_namespaces(arrays)
    model.load_state_dict(groups["model"])
    opt.load_state_dict({"hyper": meta["optim"], "velocity": groups.get("optim", {})})
    if ema is not None:
        if "ema" in groups:
            for name, a in groups["ema"].items():
                ema.shadow[name] = backend.to_device(a, model.device).astype(model.dtype)
            ema.updates = int(meta.get("ema_updates", 0))
        else:
            ema.shadow = {n: p.data.copy() for n, p in model.named_parameters()}
    backend.set_rng_state(meta["rng"])
    return RunState(epoch=int(meta["epoch"]), step=int(meta["step"]),
                    best_top1=float(meta["best_top1"]))


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def prepare_data(args):
    """Datasets and loaders for ``args`` (the built-in dataset when ``args.data`` is None)."""
    root = args.data
    if root is None:
        from models.synthetic import make_synthetic_imagefolder
        root = make_synthetic_imagefolder(args.synthetic_dir, num_classes=args.synthetic_classes,
                                          train_per_class=args.synthetic_train,
                                          val_per_class=args.synthetic_val,
                                          image_size=args.synthetic_size, seed=0)
        _log(f"built-in dataset: {root} ({args.synthetic_classes} classes, "
             f"{args.synthetic_train}+{args.synthetic_val} images per class)")
    train_set = ImageFolder(root, "train")
    val_set = ImageFolder(root, "val", classes=train_set.classes)
    train_loader = DataLoader(train_set, args.batch_size, shuffle=True,
                              transform=train_transform(args.image_size, scale=(args.crop_scale, 1.0)),
                              workers=args.workers,
                              seed=args.seed, drop_last=len(train_set) > args.batch_size)
    val_loader = DataLoader(val_set, args.batch_size, transform=eval_transform(args.image_size),
                            workers=args.workers, seed=args.seed)
    return root, train_set, train_loader, val_loader


def train(args) -> dict:
    """Run training as configured by the parsed command line ``args``; return the last metrics."""
    device = backend.normalize_device(args.device)
    backend.manual_seed(args.seed)
    root, train_set, train_loader, val_loader = prepare_data(args)
    classes = list(train_set.classes)
    model = GoogLeNet(num_classes=len(classes), aux_logits=args.aux_weight > 0,
                      dtype=args.dtype, seed=args.seed, init=args.init).to(device)
    opt = SGD(model.parameters(), lr=args.lr, momentum=args.momentum, weight_decay=args.wd)
    ema = PolyakAverage(model, args.ema_decay) if args.ema_decay > 0 else None
    state = RunState()
    os.makedirs(args.output_dir, exist_ok=True)
    last_path = os.path.join(args.output_dir, "last.npz")
    csv_path = os.path.join(args.output_dir, "metrics.csv")
    if args.resume:
        state = restore_run(args.resume, model, opt, ema, classes)
        _log(f"resumed from {args.resume} after epoch {state.epoch} (step {state.step})")
    elif os.path.exists(csv_path):
        os.replace(csv_path, csv_path + ".old")   # a fresh run starts a fresh log
    _log(f"training GoogLeNet on {device}: {len(train_set)} images, {len(classes)} classes, "
         f"{args.image_size}x{args.image_size}, batch {args.batch_size}, epochs {args.epochs}, "
         f"lr {args.lr:g}, {args.init} init, "
         f"{model.num_parameters() / 1e6:.2f} M parameters; output in {args.output_dir}")

    metrics = {}
    for epoch in range(state.epoch, args.epochs):
        opt.lr = lr_at(args, epoch)
        train_loader.set_epoch(epoch)
        model.train()
        loss_m, top1_m = AverageMeter(), AverageMeter()
        bar = ProgressBar(len(train_loader), epoch=epoch + 1, epochs=args.epochs,
                          print_freq=args.print_freq)
        t0 = time.perf_counter()
        images = 0
        for i, (x, t) in enumerate(train_loader, 1):
            xd = backend.to_device(x.astype(model.dtype), device)
            td = backend.to_device(t, device)
            outputs = model(xd)
            loss, _ = training_loss(outputs, td, args.aux_weight)
            value = loss.item()
            if not math.isfinite(value):
                bar.close()
                raise TrainingError(
                    f"loss became {value} at epoch {epoch + 1}, step {i}: stopping. The last good "
                    f"checkpoint is {last_path if os.path.exists(last_path) else '(none yet)'}; "
                    f"try a lower --lr (now {opt.lr:g})")
            opt.zero_grad()
            loss.backward()
            opt.step()
            if ema is not None:
                ema.update(model)
            state.step += 1
            logits = (outputs[0] if isinstance(outputs, tuple) else outputs).numpy()
            loss_m.update(value, len(t))
            top1_m.update(100.0 * topk_correct(logits, t, 1) / len(t), len(t))
            images += len(t)
            bar.update(i, images=len(t), loss=loss_m.avg, top1=top1_m.avg, lr=opt.lr)
        bar.close()
        train_seconds = time.perf_counter() - t0
        if images == 0:
            raise TrainingError("no readable training images in this epoch")

        if ema is not None:
            ema.swap(model)
        val = evaluate(model, val_loader, device)
        state.epoch = epoch + 1
        is_best = val["top1"] > state.best_top1
        state.best_top1 = max(state.best_top1, val["top1"])
        if ema is not None:
            ema.swap(model)
        metrics = {"epoch": epoch + 1, "step": state.step, "lr": opt.lr,
                   "train_loss": loss_m.avg, "train_top1": top1_m.avg,
                   "val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                   "img_per_s": images / train_seconds, "wall_s": train_seconds}
        append_metrics_csv(csv_path, metrics)
        plot_curves(csv_path, os.path.join(args.output_dir, "curves.png"))
        save_run(last_path, model, opt, ema, state, args, classes)
        if is_best:
            save_run(os.path.join(args.output_dir, "best.npz"), model, opt, ema, state, args, classes)
        _log(f"epoch {epoch + 1}/{args.epochs}: train loss {loss_m.avg:.3f} top1 {top1_m.avg:.1f}% | "
             f"val loss {val['loss']:.3f} top1 {val['top1']:.1f}% top5 {val['top5']:.1f}%"
             f"{' (averaged weights)' if ema else ''} | {images / train_seconds:.1f} img/s")
    skipped = train_loader.skipped + val_loader.skipped
    if skipped:
        _log(f"{len(skipped)} unreadable image(s) were skipped: {', '.join(skipped[:5])}"
             + (" ..." if len(skipped) > 5 else ""))
    return metrics
