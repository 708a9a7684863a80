"""The training loop: ``train(config) -> metrics`` for any network of ``models/``.

One epoch: for each batch, forward, loss = main + aux_weight * (each auxiliary loss), backward,
SGD step, Polyak average update. After each epoch: validation (on the averaged weights when
averaging is on), a row in ``metrics.csv`` (the main loss and each auxiliary loss apart),
the curves in ``curves.png``, and atomic checkpoints: ``best.npz`` when validation top-1
improved, then ``last.npz``.

Everything random is seeded and saved: the data order, augmentation and dropout masks come from
(seed, epoch, sample index), initialisation from the seed. ``resume`` therefore continues
exactly as if the run had never stopped, with the settings the run was started with.

Several processes (``mpirun -n N``, see ``trainer.distributed``): each takes its slice of every
global batch of N x ``batch_size`` samples; gradients are averaged before each step, step
counts and validation counts summed, and rank 0 alone logs and writes files. Since every
random draw is keyed by the sample, N processes train exactly as one process at the global
batch would.

Crash safety: checkpoints are written atomically; the CSV row of an epoch is written before
its checkpoints, and a resumed run drops rows after the checkpoint's epoch, so a kill at any
moment neither loses nor duplicates an epoch. A non-finite loss stops the run (exit code 1)
without writing anything, so the checkpoints on disk are always the last good ones.

Python use::

    from trainer import TrainConfig, train
    metrics = train(TrainConfig(network="googlenet", epochs=2, output_dir="runs/try"))
"""
from __future__ import annotations

import dataclasses
import math
import os
import time
from dataclasses import dataclass

import numpy as np

import layers as L
from data import DataLoader, ImageFolder, default_workers
from data.builtin import make_builtin
from data.preprocessing import Prepared, Preprocessing
from data.transforms import eval_transform, train_transform
from engine import SGD, Adam, PolyakAverage, backend, no_grad
from engine.io import atomic_copy, atomic_write, remove_stale_temporaries
from models.spec import get_spec
from trainer import checkpoint as ckpt
from trainer.config import (ADDED_SETTINGS, RESUMABLE_CHANGES, TrainConfig, UsageError,
                            device_for, resolve)
from trainer.distributed import Distributed
from trainer.logs import (AverageMeter, append_metrics_csv, log, plot_curves, progress,
                          truncate_metrics_csv)


class TrainingError(RuntimeError):
    """A run that cannot go on (non-finite loss, no readable images); the message says why."""


def topk_correct(logits: np.ndarray, labels: np.ndarray, k: int) -> int:
    """How many rows of logits (N, classes) have their label among their k largest entries."""
    k = min(k, logits.shape[1])
    top = np.argpartition(-logits, k - 1, axis=1)[:, :k]
    return int((top == labels[:, None]).any(axis=1).sum())


def preprocessing(spec, cfg: TrainConfig) -> dict:
    """How images become network inputs (stored in checkpoints): ours for the network's
    channels, each image centred when ``cfg.center_images``; a run started from ``--weights``
    keeps the preprocessing those weights were trained with."""
    saved = ckpt.read_meta(cfg.weights).get("preprocessing") if cfg.weights else None
    if saved:
        return saved
    prep = Preprocessing.ours(spec.in_channels)
    return dataclasses.replace(prep, center=bool(cfg.center_images)).to_meta()


def evaluate(model, loader, device: str, desc: str = "val", dist: Distributed | None = None) -> dict:
    """Loss, top-1 and top-5 accuracy (percent) of ``model`` in eval mode over ``loader``
    (over every process's shard of it when ``dist`` has several: the counts are summed)."""
    was_training = model.training
    model.eval()
    loss_sum, top1, top5, n = 0.0, 0, 0, 0
    if dist is not None and dist.active:
        desc += " (rank 0's shard)"          # the bar shows what this process sees
    bar = progress(loader, desc=desc, print_freq=max(1, len(loader)),
                   file=dist.output if dist else None)
    with no_grad():
        for x, t, *_ in bar:
            if len(t) == 0:         # this process's slice of the batch is empty
                continue
            logits = model(backend.to_device(x.astype(model.dtype), device))
            loss_sum += L.softmax_cross_entropy(logits, backend.to_device(t, device)).item() * len(t)
            out = logits.numpy()
            top1 += topk_correct(out, t, 1)
            top5 += topk_correct(out, t, 5)
            n += len(t)
            bar.set(loss=loss_sum / n, top1=100.0 * top1 / n)
    model.train(was_training)
    if dist is not None and dist.active:
        loss_sum, top1, top5, n = dist.sum([loss_sum, top1, top5, n]).tolist()
        top1, top5, n = int(top1), int(top5), int(n)     # integers below 2**53 add exactly
    if n == 0:
        raise TrainingError(f"{desc}: no readable images to evaluate")
    return {"loss": loss_sum / n, "top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "images": n}


def make_optimizer(cfg: TrainConfig, params):
    """The run's optimiser: SGD with momentum (the paper's) or Adam."""
    if cfg.optimizer == "adam":
        return Adam(params, lr=cfg.lr, weight_decay=cfg.wd)
    return SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.wd)


def lr_at(cfg: TrainConfig, epoch: float) -> float:
    """Linear warm-up from lr/10 over ``warmup_epochs`` (epoch may be fractional), then the
    paper's schedule: the rate drops by ``lr_gamma`` every ``lr_step_size`` epochs."""
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (0.1 + 0.9 * epoch / cfg.warmup_epochs)
    return cfg.lr * cfg.lr_gamma ** (int(epoch) // cfg.lr_step_size)


# ------------------------------------------------------------------ settings of a resumed run
def merge_resumed(config: TrainConfig, saved: dict, path: str) -> TrainConfig:
    """The saved run's settings, with the changes ``config`` asks for.

    A field counts as asked for when it differs from the dataclass default. Only the fields in
    ``RESUMABLE_CHANGES`` may differ from the saved run; any other raises UsageError naming
    the flag, the saved value and the given one."""
    defaults = TrainConfig()
    merged = dict(saved)
    conflicts = []
    for f in dataclasses.fields(TrainConfig):
        given = getattr(config, f.name)
        if given == getattr(defaults, f.name):
            continue
        if f.name in RESUMABLE_CHANGES or f.name not in saved:
            merged[f.name] = given
        elif given != saved[f.name]:
            conflicts.append(f"--{f.name.replace('_', '-')} {given} (the run has {saved[f.name]})")
    if conflicts:
        raise UsageError(f"--resume {path}: a resumed run keeps its settings; these differ: "
                         + "; ".join(conflicts) + ". Start a new run to change them")
    merged["resume"] = config.resume
    if config.output_dir is None:        # the run continues where its checkpoint is
        merged["output_dir"] = os.path.dirname(os.path.abspath(path))
    return TrainConfig.from_dict(merged)


def _saved_config(path: str) -> dict:
    _, meta = ckpt.load_checkpoint(path)
    if meta.get("kind") != ckpt.RUN_KIND or not isinstance(meta.get("config"), dict):
        raise ckpt.CheckpointError(f"{path} is not a training checkpoint of this project "
                                   "(weights-only files start new runs, not resumed ones)")
    saved = {**ADDED_SETTINGS, **meta["config"]}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown, missing = sorted(set(saved) - names), sorted(names - set(saved))
    if unknown or missing:
        raise ckpt.CheckpointError(
            f"{path}: its saved settings are malformed ("
            + "; ".join(p for p in (f"unknown: {', '.join(unknown)}" if unknown else "",
                                    f"missing: {', '.join(missing)}" if missing else "") if p)
            + ")")
    return saved


# ------------------------------------------------------------------ output directory
def prepare_output_dir(cfg: TrainConfig) -> None:
    """Create and test the output directory now, not after an epoch of training; refuse to
    replace an existing run unless resuming or ``overwrite``."""
    out = cfg.output_dir
    try:
        os.makedirs(out, exist_ok=True)
        with atomic_write(os.path.join(out, ".write-test")) as f:
            f.write(b"ok")
        os.unlink(os.path.join(out, ".write-test"))
    except OSError as exc:
        raise UsageError(f"--output-dir {out}: cannot write there ({exc.strerror or exc})") from None
    last = os.path.join(out, "last.npz")
    resuming_here = cfg.resume and os.path.abspath(os.path.dirname(cfg.resume)) == os.path.abspath(out)
    if os.path.exists(last) and not cfg.resume and not cfg.overwrite:
        raise UsageError(f"--output-dir {out} already holds a run ({last}): continue it with "
                         f"--resume {last}, or pass --overwrite, or choose another --output-dir")
    removed = remove_stale_temporaries(out)
    if removed:
        log(f"removed {len(removed)} partial file(s) left by an interrupted write in {out}")
    if not cfg.resume or not resuming_here:
        for name in ("metrics.csv", "best.npz"):
            if os.path.exists(os.path.join(out, name)) and cfg.overwrite:
                os.unlink(os.path.join(out, name))


# ------------------------------------------------------------------ data
def prepare_data(cfg: TrainConfig, spec, workers: int, dist: Distributed | None = None):
    """(root, train set, train loader, val loader) for ``cfg``; with several processes the
    loaders yield this process's shard of each global batch, with sample indices."""
    dist = dist or Distributed()
    root = cfg.data
    if root is None:
        root = dist.node_first(lambda: make_builtin(spec.builtin_data, cfg))
    mode = "L" if spec.in_channels == 1 else "RGB"
    # The small built-in data are decoded once and kept, when loading runs in this process
    # (worker processes last one epoch, and their copies would go with them).
    cache = cfg.data is None and workers == 0
    train_set = ImageFolder(root, "train", mode=mode, cache=cache)
    val_set = ImageFolder(root, "val", classes=train_set.classes, mode=mode, cache=cache)
    prep = Preprocessing.from_meta(preprocessing(spec, cfg), spec.in_channels)
    train_loader = DataLoader(
        train_set, cfg.batch_size, shuffle=True, workers=workers, seed=cfg.seed,
        transform=Prepared(train_transform(cfg.image_size, scale=(cfg.crop_scale, 1.0),
                                           **prep.transform_args(),
                                           **spec.builtin.get("augment", {})
                                           if cfg.data is None else {}), prep),
        drop_last=len(train_set) > cfg.batch_size * dist.size, shard=dist.shard,
        return_indices=True)
    val_loader = DataLoader(val_set, cfg.batch_size, workers=workers, seed=cfg.seed,
                            transform=Prepared(eval_transform(cfg.image_size,
                                                              **prep.transform_args()), prep),
                            shard=dist.shard)
    return root, train_set, train_loader, val_loader


# ------------------------------------------------------------------ the run
@dataclass
class RunState:
    epoch: int = 0          # epochs completed
    step: int = 0           # optimizer steps taken
    best_top1: float = -1.0


def _save(path, model, opt, ema, state, cfg, spec, classes, world_size: int = 1) -> None:
    # state_dict: the parameters and the buffers (batch norm's running statistics).
    groups = {"model": {n: backend.to_numpy(a) for n, a in model.state_dict().items()},
              "optim": opt.state_dict()["buffers"]}
    if ema is not None:
        groups["ema"] = {n: backend.to_numpy(a) for n, a in ema.shadow.items()}
    meta = {"kind": ckpt.RUN_KIND, "epoch": state.epoch, "step": state.step,
            "best_top1": state.best_top1, "classes": classes, "config": cfg.to_dict(),
            "optim": opt.state_dict()["hyper"], "ema_updates": ema.updates if ema else 0,
            "rng": backend.get_rng_state(), "preprocessing": preprocessing(spec, cfg),
            "model": ckpt.model_meta(spec, model, cfg.image_size, cfg.init),
            "world_size": world_size}
    ckpt.save_checkpoint(path, ckpt.pack_namespaces(groups), meta)


def _restore(path, model, opt, ema, classes) -> RunState:
    arrays, meta = ckpt.load_checkpoint(path)
    if meta.get("classes") != classes:
        saved = meta.get("classes") or []
        raise UsageError(f"--resume {path}: the run was trained on classes {saved[:5]}..., "
                         f"which do not match this dataset's {classes[:5]}...")
    try:
        groups = ckpt.unpack_namespaces(arrays)
        ckpt.load_weights(model, groups["model"], path, "model")
        opt.load_state_dict({"hyper": meta["optim"], "buffers": groups.get("optim", {})})
        if ema is not None:
            if "ema" in groups:
                shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
                if {n: tuple(a.shape) for n, a in groups["ema"].items()} != shapes:
                    raise ckpt.CheckpointError(f"{path}: its averaged (ema) weights do not "
                                               f"fit the model")
                for name, a in groups["ema"].items():
                    ema.shadow[name] = backend.to_device(a, model.device).astype(model.dtype)
                ema.updates = int(meta.get("ema_updates", 0))
            else:
                ema.shadow = {n: p.data.copy() for n, p in model.named_parameters()}
        backend.set_rng_state(meta["rng"])
        return RunState(epoch=int(meta["epoch"]), step=int(meta["step"]),
                        best_top1=float(meta["best_top1"]))
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ckpt.CheckpointError):
            raise
        raise ckpt.CheckpointError(f"{path}: its run metadata is malformed "
                                   f"({type(exc).__name__}: {exc})") from None


def _train_forward(model, spec, cfg, device, epoch, x, t, index, aux_heads: int, dist):
    """Forward pass and loss on this process's slice of a batch.

    Returns (the loss Tensor to differentiate, or None for an empty slice; [total, main,
    aux...] losses as means over the global batch; its top-1 hits; its size n). Dropout draws
    each sample's mask from (seed, epoch, dataset index), so it does not depend on the batch
    the sample is in or on the process computing it."""
    total, local = None, [0.0] * (4 + aux_heads)
    if len(t):
        with backend.per_sample_random([(cfg.seed, epoch, int(k)) for k in index]):
            outputs = model(backend.to_device(x.astype(model.dtype), device))
        total, main, aux_losses = spec.loss(outputs, backend.to_device(t, device),
                                            cfg.aux_weight)
        logits = (outputs[0] if isinstance(outputs, tuple) else outputs).numpy()
        local = [total.item(), main.item(), *[a.item() for a in aux_losses],
                 topk_correct(logits, t, 1), len(t)]
    if not dist.active:
        return total, local[:-2], local[-2], len(t)
    # Summed over the processes: each loss x its n, the hits, the sizes.
    n_local = len(t)
    sums = dist.sum([v * n_local for v in local[:-2]] + local[-2:])
    n = int(sums[-1])
    return total, (sums[:-2] / max(n, 1)).tolist(), int(sums[-2]), n


def train(config: TrainConfig, spec=None) -> dict:
    """Run training as ``config`` says; return the last epoch's metrics.

    Raises UsageError (bad settings or inputs), CheckpointError (an unreadable or foreign
    checkpoint) or TrainingError (the run itself failed)."""
    spec = spec or get_spec(config.network)
    dist = Distributed.start(config.distributed)   # one process unless launched by MPI
    log = dist.log                                 # rank 0 alone speaks
    resume = config.resume
    if resume:
        # Rank 0 reads the checkpoint and tells the others: other machines need not have it.
        def read_saved():
            if not os.path.isfile(resume):
                raise UsageError(f"--resume {resume}: no such file")
            return _saved_config(resume), int(ckpt.read_meta(resume).get("world_size", 1))
        saved, saved_world = dist.root_only(read_saved)
        saved = dist.check_resumed_world(saved, saved_world, config, resume)
        config = merge_resumed(config, saved, resume)
    cfg = resolve(config if dist.is_root else dataclasses.replace(config, resume=None), spec)
    cfg = dataclasses.replace(cfg, resume=resume)   # rank 0 alone opens the file
    device = device_for(cfg.device)
    dist.use_device(device)
    workers = cfg.workers if cfg.workers is not None else default_workers(device)
    if dist.is_root:
        prepare_output_dir(cfg)
    dist.barrier()
    backend.manual_seed(cfg.seed)
    root, train_set, train_loader, val_loader = prepare_data(cfg, spec, workers, dist)
    classes = list(train_set.classes)
    aux = spec.aux_heads > 0 and cfg.aux_weight > 0
    model = spec.build(len(classes), aux_logits=aux, dtype=cfg.dtype, seed=cfg.seed,
                       init=cfg.init, image_size=cfg.image_size).to(device)
    if cfg.weights and not cfg.resume:
        from trainer.finetune import load_initial_weights
        load_initial_weights(model, cfg.weights, classes, spec, cfg.image_size)
    dist.broadcast_model(model)
    opt = dist.wrap(make_optimizer(cfg, model.parameters()))
    ema = PolyakAverage(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    state = RunState()
    out = cfg.output_dir
    last_path, best_path = os.path.join(out, "last.npz"), os.path.join(out, "best.npz")
    csv_path = os.path.join(out, "metrics.csv")
    if cfg.resume:
        state = dist.root_only(lambda: _restore(cfg.resume, model, opt, ema, classes))
        dist.broadcast_run(model, opt, ema)
        dropped = dist.root_only(lambda: truncate_metrics_csv(csv_path, state.epoch))
        log(f"resumed from {cfg.resume} after epoch {state.epoch} (step {state.step})"
            + (f"; dropped {dropped} log row(s) written after that checkpoint" if dropped else ""))
    elif dist.is_root and os.path.exists(csv_path):
        os.replace(csv_path, csv_path + ".old")   # a fresh run starts a fresh log
    source = cfg.data or f"the built-in {spec.builtin_data} dataset ({root})"
    log(f"training {spec.title} on {device}: {len(train_set)} images of {len(classes)} classes "
        f"from {source}; {cfg.image_size}x{cfg.image_size}, {dist.describe_batch(cfg.batch_size)}, "
        f"{cfg.epochs} epochs, {'Adam' if cfg.optimizer == 'adam' else 'SGD'} lr {cfg.lr:g}"
        + (f" (warm-up {cfg.warmup_epochs:g} epochs)" if cfg.warmup_epochs else "")
        + f", {cfg.init} init, {model.num_parameters() / 1e6:.2f} M parameters; output in {out}")

    chance = 100.0 / len(classes)
    metrics: dict = {}
    steps = max(1, len(train_loader))
    for epoch in range(state.epoch, cfg.epochs):
        train_loader.set_epoch(epoch)
        model.train()
        meters = {"loss": AverageMeter(), "total": AverageMeter(), "top1": AverageMeter()}
        aux_meters = [AverageMeter() for _ in range(spec.aux_heads if aux else 0)]
        t0, images = time.perf_counter(), 0
        bar = progress(train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}",
                       print_freq=cfg.print_freq, file=dist.output)
        for i, (x, t, index) in enumerate(bar):
            opt.lr = lr_at(cfg, epoch + i / steps)
            total, losses, hits, n = _train_forward(model, spec, cfg, device, epoch, x, t, index,
                                                    len(aux_meters), dist)
            if n == 0:      # every image of this global batch was unreadable
                continue
            value = losses[0]
            if not math.isfinite(value):
                raise TrainingError(
                    f"the loss became {value} at epoch {epoch + 1}, step {i + 1}: stopping. The "
                    f"last good checkpoint is "
                    f"{last_path if os.path.exists(last_path) else '(none yet)'}; "
                    f"try a lower --lr (now {opt.lr:g})")
            opt.zero_grad()
            if total is not None:
                # Each process's loss is a mean over its own samples and the optimizer
                # averages over processes; scaling by size x n_local / n makes that the mean
                # over the global batch (a factor of exactly 1 when the slices are equal).
                scale = dist.size * len(t) / n
                xp = backend.get_array_module(total.data)
                total.backward(None if scale == 1.0 else xp.full_like(total.data, scale))
            opt.step()
            if ema is not None:
                ema.update(model)
            state.step += 1
            meters["total"].update(value, n)
            meters["loss"].update(losses[1], n)
            for m, a in zip(aux_meters, losses[2:]):
                m.update(a, n)
            meters["top1"].update(100.0 * hits / n, n)
            images += n
            bar.set(loss=meters["loss"].avg, top1=meters["top1"].avg, lr=opt.lr)
        train_seconds = time.perf_counter() - t0
        if images == 0:
            raise TrainingError("no readable training images in this epoch")
        if epoch == state.epoch:
            for name in train_loader.unreadable_classes(dist.gather(train_loader.bad_indices)):
                log(f"warning: no image of class '{name}' could be read: the network never "
                    f"sees that class")

        if ema is not None:
            ema.swap(model)
        val = evaluate(model, val_loader, device, dist=dist)
        if ema is not None:
            ema.swap(model)
        if not math.isfinite(val["loss"]):
            raise TrainingError(
                f"the validation loss is {val['loss']} after epoch {epoch + 1}: the weights "
                f"diverged, so this epoch is not saved. The last good checkpoint is "
                f"{last_path if os.path.exists(last_path) else '(none yet)'}; try a lower --lr")
        state.epoch = epoch + 1
        is_best = val["top1"] > state.best_top1
        state.best_top1 = max(state.best_top1, val["top1"])
        metrics = {"epoch": epoch + 1, "step": state.step, "lr": opt.lr,
                   "train_loss": meters["loss"].avg, "train_top1": meters["top1"].avg}
        for k, m in enumerate(aux_meters, 1):
            metrics[f"train_aux{k}_loss"] = m.avg
        if aux_meters:
            metrics["train_total_loss"] = meters["total"].avg
        metrics.update({"val_loss": val["loss"], "val_top1": val["top1"], "val_top5": val["top5"],
                        "img_per_s": images / train_seconds, "wall_s": train_seconds})
        if dist.is_root:
            append_metrics_csv(csv_path, metrics)
            plot_curves(csv_path, os.path.join(out, "curves.png"),
                        title=f"{spec.title} on {os.path.basename(os.path.normpath(root))}",
                        chance=chance)
            if is_best:     # before last.npz: a kill in between re-runs this epoch on resume
                _save(best_path, model, opt, ema, state, cfg, spec, classes, dist.size)
                atomic_copy(best_path, last_path)   # the same bytes: linked, not written again
            else:
                _save(last_path, model, opt, ema, state, cfg, spec, classes, dist.size)
        aux_text = (" (aux " + ", ".join(f"{m.avg:.3f}" for m in aux_meters) + ")"
                    if aux_meters else "")
        log(f"epoch {epoch + 1}/{cfg.epochs}: train loss {meters['loss'].avg:.3f}{aux_text} "
            f"top1 {meters['top1'].avg:.1f}% | val loss {val['loss']:.3f} top1 {val['top1']:.1f}% "
            f"top5 {val['top5']:.1f}%{' (averaged weights)' if ema else ''} | "
            f"{images / train_seconds:.1f} img/s")
    skipped = dist.gather(train_loader.skipped + val_loader.skipped)
    if skipped:
        log(f"{len(skipped)} unreadable image(s) were skipped: {', '.join(skipped[:5])}"
            + (" ..." if len(skipped) > 5 else ""))
    return metrics
