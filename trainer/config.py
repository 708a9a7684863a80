"""A training run's settings: ``TrainConfig``, and how its defaults are chosen.

``train(config)`` (``trainer.loop``) takes a ``TrainConfig``; the command line only builds one
from its flags, and its ``--help`` is generated from the fields below (their defaults and help
texts), so the two cannot disagree.

Fields whose default is ``RECIPE`` (None) take their value from the network's recipe
(``NetworkSpec.recipe``: the paper's settings) or, when no ``--data`` is given, from its
built-in recipe (``NetworkSpec.builtin``), which is sized for a CPU. ``resolve`` fills them in
and checks every value before anything expensive happens.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

RECIPE = None   # "take this from the network's recipe"

# Settings that may change when a run is resumed; all others are part of the run and must
# match the checkpoint (a different learning rate would silently make a different run).
# Settings added after checkpoints were first written: a saved run without one had it unset.
ADDED_SETTINGS = {"weights": None, "center_images": False, "distributed": False,
                  "optimizer": "sgd"}

RESUMABLE_CHANGES = ("epochs", "device", "workers", "print_freq", "data", "output_dir",
                     "builtin_dir", "resume", "overwrite", "distributed")


class UsageError(ValueError):
    """A flag, a value or an input path is wrong: the message names it (exit code 2)."""


def _f(default, help: str, flag: str | None = None, short: str | None = None,
       choices=None, metavar=None, group: str = "training"):
    return field(default=default, metadata={"help": help, "flag": flag, "short": short,
                                            "choices": choices, "metavar": metavar,
                                            "group": group})


@dataclass
class TrainConfig:
    """Everything a training run depends on. ``None`` fields come from the recipe."""
    network: str = _f("googlenet", "network module under models/", group="hidden")
    data: str | None = _f(None, "ImageFolder root with train/<class>/* and val/<class>/*; class "
                                "index = position of the sorted folder name. Without it the "
                                "network's built-in dataset is used", metavar="PATH")
    device: str = _f("auto", "where to run: 'auto' picks CUDA when CuPy and a GPU are usable",
                     choices=("auto", "cpu", "cuda"))
    epochs: int | None = _f(RECIPE, "epochs to train")
    batch_size: int | None = _f(RECIPE, "images per step", short="-b")
    lr: float | None = _f(RECIPE, "base learning rate")
    warmup_epochs: float | None = _f(RECIPE, "epochs over which the rate rises linearly from "
                                             "lr/10 to lr at the start of the run (0: none)")
    lr_step_size: int | None = _f(RECIPE, "epochs between learning-rate drops")
    lr_gamma: float | None = _f(RECIPE, "learning-rate multiplier at each drop")
    optimizer: str | None = _f(RECIPE, "'sgd' (with momentum, the paper's) or 'adam' "
                                        "(betas 0.9, 0.999; weight decay decoupled, as AdamW)",
                               choices=("sgd", "adam"))
    momentum: float | None = _f(RECIPE, "SGD momentum (sgd only)")
    wd: float | None = _f(RECIPE, "weight decay (L2); a network's module says which parameters "
                                   "it exempts (GoogLeNet: the biases, as in Caffe)")
    init: str | None = _f(RECIPE, "weight initialisation (the network's module documents each)")
    aux_weight: float | None = _f(RECIPE, "weight of each auxiliary classifier's loss in the "
                                          "training objective (networks with aux heads); 0 "
                                          "builds the model without them")
    ema_decay: float | None = _f(RECIPE, "Polyak averaging decay of the weights used for "
                                         "evaluation and checkpoints' 'ema' weights; 0 turns it off")
    image_size: int | None = _f(RECIPE, "training crop side in pixels")
    crop_scale: float | None = _f(RECIPE, "smallest random crop, as a fraction of the image area")
    center_images: bool | None = _f(RECIPE, "subtract each image's own mean colour after "
                                            "normalising (kept with the weights, so eval, "
                                            "predict and export do the same)")
    dtype: str = _f("float32", "float64 is for checking, float32 for training",
                    choices=("float32", "float64"))
    seed: int = _f(0, "seeds initialisation, data order, augmentation and dropout")
    workers: int | None = _f(None, "data loading processes; 0 loads in-process. By default 0 on "
                                   "the CPU, where workers would compete with the compute, and "
                                   "every core but one with a GPU", short="-j", group="run")
    output_dir: str | None = _f(None, "where metrics.csv, curves.png and the checkpoints go", group="run")
    resume: str | None = _f(None, "continue the run saved in this last.npz/best.npz, with its "
                                  "saved settings", metavar="CHECKPOINT", group="run")
    weights: str | None = _f(None, "start from the weights in this checkpoint or weights file "
                                   "(fine-tuning; the averaged weights when it has them); with "
                                   "another class list the classifiers are re-initialised. "
                                   "The run takes the file's preprocessing",
                             metavar="FILE", group="run")
    overwrite: bool = _f(False, "start a new run in an output directory that already holds "
                                "one (its checkpoints and log are replaced)", group="run")
    distributed: bool = _f(False, "join an MPI job (implied when launched by mpirun with "
                                  "several processes): --batch-size is then per process, and "
                                  "the results are those of one process at the global batch",
                           group="run")
    print_freq: int = _f(10, "steps between progress lines when the output is not a terminal",
                         group="run")
    builtin_dir: str | None = _f(None, "where the built-in dataset is generated; by "
                                       "default $GOOGLENET_DATA_DIR, else "
                                       "~/.cache/googlenet-engine",
                                 group="built-in data")
    builtin_classes: int | None = _f(RECIPE, "classes of the built-in shapes dataset (up to 12)",
                                     group="built-in data")
    builtin_train: int | None = _f(RECIPE, "training images per class of the built-in dataset",
                                   group="built-in data")
    builtin_val: int | None = _f(RECIPE, "validation images per class of the built-in dataset",
                                 group="built-in data")
    builtin_size: int | None = _f(RECIPE, "side of the generated images", group="built-in data")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UsageError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**values)


# The built-in shapes dataset's size, unless a network's built-in recipe says otherwise.
BUILTIN_DATA_DEFAULTS = {"builtin_classes": 10, "builtin_train": 120, "builtin_val": 30,
                         "builtin_size": 72}


# Recipe fields a network's recipe may leave out.
RECIPE_DEFAULTS = {"warmup_epochs": 0.0, "center_images": False, "optimizer": "sgd"}


def recipe_for(spec, builtin: bool) -> dict:
    """The defaults for the recipe fields: the paper's, with the built-in overrides."""
    values = dict(BUILTIN_DATA_DEFAULTS)
    values.update(RECIPE_DEFAULTS)
    values.update({k: v for k, v in spec.builtin.items() if k.startswith("builtin_")})
    values.update(spec.recipe)
    if builtin:
        values.update(spec.builtin)
    return values


def resolve(config: TrainConfig, spec) -> TrainConfig:
    """A copy of ``config`` with every recipe field filled in and every value checked.

    Raises UsageError naming the flag and the value when a value is out of range or a path
    is unusable, before any data is loaded or generated."""
    values = config.to_dict()
    values["network"] = spec.name
    recipe = recipe_for(spec, config.data is None)
    for key, value in values.items():
        if value is None and key in recipe:
            values[key] = recipe[key]
    if values["output_dir"] is None:
        values["output_dir"] = os.path.join("runs", spec.name)
    missing = [k for k, v in values.items() if v is None and k not in
               ("data", "workers", "resume", "builtin_dir", "weights")]
    if missing:
        raise UsageError(f"{spec.name}: no default for {', '.join(missing)} in its recipe")
    cfg = TrainConfig(**values)
    check(cfg, spec)
    return cfg


def device_for(name: str) -> str:
    """'cpu' or 'cuda' for --device NAME; UsageError when CUDA is asked for but unusable."""
    from engine import backend
    try:
        return backend.normalize_device(name)
    except (RuntimeError, ValueError) as exc:
        raise UsageError(f"--device {name}: {exc}") from None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check(cfg: TrainConfig, spec) -> None:
    """Range checks with one-line messages naming the flag."""
    def need(ok, name, what):
        if not ok:
            raise UsageError(f"{_flag(name)} {getattr(cfg, name)!r}: {what}")
    for name in ("epochs", "batch_size", "lr_step_size", "print_freq", "builtin_train",
                 "builtin_val", "builtin_classes"):
        need(getattr(cfg, name) >= 1, name, "must be >= 1")
    need(cfg.lr > 0, "lr", "must be > 0")
    need(cfg.warmup_epochs >= 0, "warmup_epochs", "must be >= 0")
    need(0 < cfg.lr_gamma <= 1, "lr_gamma", "must be in (0, 1]")
    need(0 <= cfg.momentum < 1, "momentum", "must be in [0, 1)")
    need(cfg.wd >= 0, "wd", "must be >= 0")
    need(cfg.aux_weight >= 0, "aux_weight", "must be >= 0")
    need(0 <= cfg.ema_decay < 1, "ema_decay", "must be in [0, 1) (0 turns averaging off)")
    need(0 < cfg.crop_scale <= 1, "crop_scale", "must be in (0, 1]")
    need(cfg.seed >= 0, "seed", "must be >= 0")
    need(cfg.workers is None or cfg.workers >= 0, "workers", "must be >= 0")
    need(cfg.init in spec.inits, "init", f"must be one of {', '.join(spec.inits)}")
    need(cfg.builtin_size >= 8, "builtin_size", "must be >= 8")
    try:
        spec.check_image_size(cfg.image_size)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if cfg.data is not None and not os.path.isdir(cfg.data):
        raise UsageError(f"--data {cfg.data}: no such directory")
    if cfg.resume is not None and not os.path.isfile(cfg.resume):
        raise UsageError(f"--resume {cfg.resume}: no such file")
    if cfg.weights is not None and not os.path.isfile(cfg.weights):
        raise UsageError(f"--weights {cfg.weights}: no such file")
