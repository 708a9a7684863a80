"""The command line: ``python -m models.googlenet {train,eval,predict,summary}``."""
from __future__ import annotations

import argparse
import os
import sys

from models.checkpoint import CheckpointError
from models.data import SplitError

# Without --data the run trains on the built-in synthetic dataset, sized so the
# whole run takes a few minutes on a 2-core CPU.
BUILTIN = {"epochs": 20, "image_size": 64, "lr": 0.01, "crop_scale": 0.5, "batch_size": 16,
           "init": "msra"}
FULL = {"epochs": 90, "image_size": 224, "lr": 0.01, "crop_scale": 0.08, "batch_size": 32,
        "init": "xavier"}


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Show a default only where it is a real value (None means "see the text")."""

    def _get_help_string(self, action):
        if action.default in (None, False) or action.help is None:
            return action.help
        return super()._get_help_string(action)


def _add_device(p):
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run: 'auto' picks CUDA when CuPy and a GPU are usable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.googlenet",
        description="GoogLeNet (Inception v1) on a from-scratch NumPy/CuPy engine.",
        formatter_class=_Help)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    t = sub.add_parser(
        "train", formatter_class=_Help,
        help="train on an image folder (or the built-in dataset)",
        description="Train GoogLeNet with the paper's recipe: SGD with momentum, the rate "
                    "multiplied by --lr-gamma every --lr-step-size epochs, aux losses weighted "
                    "by --aux-weight, Polyak averaging for evaluation, and the paper's "
                    "augmentation. Without --data it trains on a built-in synthetic dataset "
                    "(generated once under --synthetic-dir) with settings sized for a CPU: "
                    "12 epochs at 64x64, lr 0.02, crops of at least 35% of the area. With "
                    "--data the defaults are the paper's: 224x224, lr 0.01, crops from 8%%.")
    t.add_argument("--data", help="ImageFolder root with train/<class>/* and val/<class>/*; "
                                  "class index = position of the sorted folder name")
    _add_device(t)
    t.add_argument("--epochs", type=int, help="epochs to train (default: 90, or 20 on the built-in data)")
    t.add_argument("--batch-size", type=int, help="images per step (default: 32, or 16 on the built-in data)")
    t.add_argument("--lr", type=float, help="base learning rate (default: 0.01)")
    t.add_argument("--init", choices=["xavier", "msra"],
                   help="weight initialisation: 'xavier' is bvlc_googlenet's (biases 0.2); "
                        "'msra' (variance 2/fan_in, zero biases and classifiers) leaves the "
                        "initial plateau in far fewer steps (default: xavier, or msra on the "
                        "built-in data, where xavier stays at chance for the whole short run)")
    t.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    t.add_argument("--wd", type=float, default=2e-4, help="weight decay (biases get none)")
    t.add_argument("--lr-step-size", type=int, default=8, help="epochs between rate drops")
    t.add_argument("--lr-gamma", type=float, default=0.96, help="rate multiplier at each drop")
    t.add_argument("--aux-weight", type=float, default=0.3,
                   help="weight of each auxiliary loss; 0 builds the model without aux heads")
    t.add_argument("--ema-decay", type=float, default=0.999,
                   help="Polyak averaging decay for the evaluation weights; 0 turns it off")
    t.add_argument("--image-size", type=int, help="training crop side (default: 224, or 64 on the built-in data); >= 64")
    t.add_argument("--crop-scale", type=float,
                   help="smallest random crop, as a fraction of the image area (default: 0.08 "
                        "as in the paper, or 0.5 on the built-in data)")
    t.add_argument("--workers", type=int,
                   help="data loading processes; 0 loads in-process (default: 0 on the CPU, where "
                        "workers would compete with the compute, 4 with a GPU)")
    t.add_argument("--seed", type=int, default=0,
                   help="seeds initialisation, data order, augmentation and dropout")
    t.add_argument("--resume", metavar="CHECKPOINT", help="continue from a last.npz/best.npz")
    t.add_argument("--output-dir", default=os.path.join("runs", "googlenet"),
                   help="where metrics.csv, curves.png and checkpoints go")
    t.add_argument("--print-freq", type=int, default=10, help="steps between log lines when not on a terminal")
    t.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="float64 is for checking, float32 for training")
    g = t.add_argument_group("built-in dataset")
    g.add_argument("--synthetic-dir", default=os.path.join("data", "synthetic"),
                   help="where the generated images are written (reused when complete)")
    g.add_argument("--synthetic-classes", type=int, default=10, help="classes, up to 12")
    g.add_argument("--synthetic-train", type=int, default=120, help="training images per class")
    g.add_argument("--synthetic-val", type=int, default=30, help="validation images per class")
    g.add_argument("--synthetic-size", type=int, default=72, help="side of the generated images")

    e = sub.add_parser("eval", formatter_class=_Help,
                       help="top-1/top-5 error of a checkpoint",
                       description="Top-1 and top-5 error on PATH/val (or PATH itself if it has "
                                   "no val folder), on the Polyak-averaged weights when the "
                                   "checkpoint has them.")
    e.add_argument("--checkpoint", required=True, help="a last.npz or best.npz written by train")
    e.add_argument("--data", help="ImageFolder root (default: the data the checkpoint trained on)")
    e.add_argument("--crops", type=int, default=1, choices=[1, 10, 144],
                   help="1: centre crop; 10: corners+centre, mirrored; 144: the paper's scheme")
    e.add_argument("--image-size", type=int, help="crop side (default: the training size)")
    e.add_argument("--batch-size", type=int, default=64, help="images (x crops) per forward pass")
    e.add_argument("--workers", type=int, help="as for train")
    e.add_argument("--raw-weights", action="store_true", help="use the raw, not the averaged, weights")
    _add_device(e)

    p = sub.add_parser("predict", formatter_class=_Help,
                       help="top-5 classes of some images")
    p.add_argument("--checkpoint", required=True, help="a last.npz or best.npz written by train")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (any format Pillow reads)")
    p.add_argument("--topk", type=int, default=5, help="how many classes to list")
    p.add_argument("--crops", type=int, default=1, choices=[1, 10, 144],
                   help="average the softmax over this many crops (see eval --help)")
    p.add_argument("--image-size", type=int, help="crop side (default: the training size)")
    p.add_argument("--raw-weights", action="store_true", help="use the raw, not the averaged, weights")
    _add_device(p)

    s = sub.add_parser("summary", formatter_class=_Help,
                       help="layer table: output shapes, parameters, multiply-adds")
    s.add_argument("--image-size", type=int, default=224, help="input side (>= 64)")
    s.add_argument("--num-classes", type=int, default=1000, help="classifier outputs")
    s.add_argument("--no-aux", action="store_true", help="leave out the auxiliary heads")
    return parser


def _fill_defaults(args) -> None:
    """Defaults that depend on whether the run uses the built-in data."""
    base = BUILTIN if args.data is None else FULL
    for key, value in base.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.image_size < 64:
        raise SystemExit(f"error: --image-size must be >= 64 (GoogLeNet's smallest input), got {args.image_size}")
    for name in ("epochs", "batch_size", "lr_step_size"):
        if getattr(args, name) < 1:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be >= 1")
    if args.data is not None and not os.path.isdir(args.data):
        raise SystemExit(f"error: --data {args.data}: no such directory")


def _default_workers(args) -> None:
    if getattr(args, "workers", 0) is None:
        from engine.backend import normalize_device
        args.workers = 0 if normalize_device(args.device) == "cpu" else min(4, os.cpu_count() or 1)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _default_workers(args)
        if args.command == "train":
            _fill_defaults(args)
            from models.train import train
            train(args)
        elif args.command == "eval":
            from models.evaluate import run_eval
            run_eval(args)
        elif args.command == "predict":
            from models.evaluate import run_predict
            return run_predict(args)
        elif args.command == "summary":
            from models.summary import format_summary, summarize
            print(format_summary(*summarize(args.image_size, args.num_classes, not args.no_aux)))
    except KeyboardInterrupt:
        print("\ninterrupted; the last checkpoint (if any) is in the output directory: "
              "continue with --resume", file=sys.stderr)
        return 130
    except (SplitError, CheckpointError, FileNotFoundError, RuntimeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1 if exc.__class__.__name__ == "TrainingError" else 2
    return 0
