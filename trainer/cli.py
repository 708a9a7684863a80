"""The command line shared by every network: ``python -m models.<net> {train,eval,predict,summary}``.

Argument parsing lives here and only here: ``train``'s flags are generated from the fields of
``TrainConfig`` (their help and, for recipe fields, the network's recipe values), so ``--help``
shows the defaults the code uses. The flags build a config; ``trainer.loop.train`` runs it.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

from trainer.config import RECIPE, TrainConfig, UsageError, recipe_for

EXIT_CODES = ("exit codes: 0 success; 2 a usage or input error (a bad flag or value, a missing "
              "or unreadable file, a checkpoint that does not fit); 1 a training failure (the "
              "loss diverged, no readable images); 130 interrupted")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


def _default_text(spec, f) -> str:
    if f.name == "output_dir":
        return f" (default: {os.path.join('runs', spec.name)})"
    paper, builtin = recipe_for(spec, False).get(f.name), recipe_for(spec, True).get(f.name)
    if f.default is not RECIPE or builtin is None:
        if f.default is None or f.default is False:
            return ""
        return f" (default: {f.default})"
    if f.name.startswith("builtin_") or paper == builtin:
        return f" (default: {builtin})"
    return f" (default: {paper}; on the built-in data: {builtin})"


def _add_train_flags(p, spec) -> None:
    groups = {}
    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        if meta.get("group") == "hidden":
            continue
        if (f.name in ("builtin_classes", "builtin_train", "builtin_val", "builtin_size")
                and spec.builtin_data != "shapes"):     # only the generated shapes have these
            continue
        group = groups.get(meta["group"])
        if group is None:
            group = groups[meta["group"]] = p.add_argument_group(meta["group"])
        names = [meta["short"]] if meta.get("short") else []
        names.append(meta.get("flag") or "--" + f.name.replace("_", "-"))
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS,
                  "help": (meta["help"] + _default_text(spec, f)).replace("%", "%%")}
        if f.type in ("bool",) or isinstance(f.default, bool):
            kwargs["action"] = "store_true"
        elif f.type == "bool | None":
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kind = {"int | None": int, "float | None": float, "int": int, "float": float}
            kwargs["type"] = kind.get(f.type, str)
            if meta.get("choices"):
                kwargs["choices"] = meta["choices"]
            if f.name == "init":
                kwargs["choices"] = list(spec.inits)
            if meta.get("metavar"):
                kwargs["metavar"] = meta["metavar"]
        group.add_argument(*names, **kwargs)


def _add_device(p):
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where to run: 'auto' picks CUDA when CuPy and a GPU are usable "
                        "(default: auto)")


def build_parser(spec) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m models.{spec.name}", formatter_class=_Formatter,
        description=f"{spec.title} on a from-scratch NumPy/CuPy engine.", epilog=EXIT_CODES)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    builtin = recipe_for(spec, True)
    t = sub.add_parser(
        "train", formatter_class=_Formatter, epilog=EXIT_CODES,
        help="train on an image folder (or the built-in dataset)",
        description=(
            f"Train {spec.title}. With --data the defaults are the paper's recipe. Without "
            f"--data it trains on the built-in {spec.builtin_data} dataset (generated once) with "
            f"a recipe sized for a CPU: {builtin['epochs']} epochs at {builtin['image_size']}x"
            f"{builtin['image_size']}, batch {builtin['batch_size']}, lr {builtin['lr']}. "
            "Each epoch appends to metrics.csv, redraws curves.png and writes last.npz (and "
            "best.npz) atomically; --resume continues a run with its saved settings."))
    _add_train_flags(t, spec)

    e = sub.add_parser("eval", formatter_class=_Formatter, epilog=EXIT_CODES,
                       help="top-1/top-5 error of a checkpoint or an ensemble",
                       description="Top-1 and top-5 error on PATH/val (or PATH itself if it has "
                                   "no val folder), on the Polyak-averaged weights when the "
                                   "checkpoint has them. Several checkpoints make an ensemble: "
                                   "the softmax is averaged over models and crops. --table "
                                   "prints the paper's Table 3: 1..M models x 1, 10, 144 crops.")
    e.add_argument("--checkpoint", required=True, nargs="+", action="extend", metavar="FILE",
                   help="last.npz/best.npz written by train, or weights files (export, "
                        "import-caffe); several make an ensemble")
    e.add_argument("--table", action="store_true",
                   help="the breakdown over 1..M models x 1, 10 and 144 crops, with top-1 and "
                        "top-5 error and the relative cost (models x crops)")
    e.add_argument("--data", help="ImageFolder root (default: the data the checkpoint trained on)")
    e.add_argument("--split", default="val",
                   help="the folder under the data root to test on, e.g. 'test' for a held-out "
                        "split (default: val)")
    e.add_argument("--crops", type=int, default=1, choices=[1, 10, 144],
                   help="1: centre crop; 10: corners+centre, mirrored; 144: the paper's scheme "
                        "(default: 1)")
    e.add_argument("--image-size", type=int, help="crop side (default: the training size)")
    e.add_argument("-b", "--batch-size", type=int, default=64,
                   help="images x crops per forward pass (default: 64)")
    e.add_argument("-j", "--workers", type=int, default=0,
                   help="data loading processes (default: 0)")
    e.add_argument("--raw-weights", action="store_true",
                   help="use the raw, not the averaged, weights")
    _add_device(e)

    p = sub.add_parser("predict", formatter_class=_Formatter, epilog=EXIT_CODES,
                       help="top-k classes of some images")
    p.add_argument("--checkpoint", required=True, action="append", metavar="FILE",
                   help="a checkpoint or weights file; repeat the flag for an ensemble "
                        "(--checkpoint a.npz --checkpoint b.npz), whose softmax is averaged")
    p.add_argument("images", nargs="+", metavar="IMAGE",
                   help="image files (any format Pillow reads) or folders of them")
    p.add_argument("--topk", type=int, default=5, help="how many classes to list (default: 5)")
    p.add_argument("--crops", type=int, default=1, choices=[1, 10, 144],
                   help="average the softmax over this many crops (see eval --help) (default: 1)")
    p.add_argument("--image-size", type=int, help="crop side (default: the training size)")
    p.add_argument("--raw-weights", action="store_true",
                   help="use the raw, not the averaged, weights")
    _add_device(p)

    x = sub.add_parser("export", formatter_class=_Formatter, epilog=EXIT_CODES,
                       help="write the weights as ONNX or as a weights-only .npz",
                       description="--format onnx: an ONNX graph (opset "
                                   "17, dynamic batch, logits out) built from the network's "
                                   "operations, with the class names and preprocessing as "
                                   "metadata. --format npz: the weights, class names, "
                                   "preprocessing and model description, for eval, predict, "
                                   "export and train --weights. The Polyak-averaged weights "
                                   "unless --raw-weights.")
    x.add_argument("--checkpoint", required=True, metavar="FILE",
                   help="a checkpoint written by train, or a weights file")
    x.add_argument("--format", required=True, choices=["onnx", "npz"], help="what to write")
    x.add_argument("output", metavar="OUT", help="the file to write (.onnx or .npz)")
    x.add_argument("--image-size", type=int,
                   help="ONNX input side (default: the training size)")
    x.add_argument("--raw-weights", action="store_true",
                   help="export the raw, not the averaged, weights")
    x.add_argument("--no-aux", action="store_true",
                   help="npz: leave out the auxiliary heads' weights (ONNX never has them)")

    c = sub.add_parser("import-caffe", formatter_class=_Formatter, epilog=EXIT_CODES,
                       help="convert Caffe weights (deploy.prototxt + .caffemodel)",
                       description="Read a Caffe model (the prototxt for the layer settings, "
                                   "the binary .caffemodel for the weights), map Caffe's layer "
                                   "names to ours, check every setting and shape, and write a "
                                   "weights file carrying Caffe's preprocessing (BGR, 0-255, "
                                   "mean 104/117/123).")
    c.add_argument("prototxt", help="the network definition, e.g. deploy.prototxt")
    c.add_argument("caffemodel", help="the trained weights, e.g. bvlc_googlenet.caffemodel")
    c.add_argument("-o", "--output", required=True, help="the weights file to write (.npz)")
    c.add_argument("--classes", metavar="FILE",
                   help="class names, one a line (e.g. synset_words.txt; default: 0, 1, ...)")

    s = sub.add_parser("summary", formatter_class=_Formatter,
                       help="layer table: output shapes, parameters, multiply-adds")
    s.add_argument("--image-size", type=int, default=spec.recipe.get("image_size", 224),
                   help=f"input side (default: {spec.recipe.get('image_size', 224)})")
    classes = spec.published.get("num_classes", 1000)
    s.add_argument("--num-classes", type=int, default=classes,
                   help=f"classifier outputs (default: {classes})")
    if spec.aux_heads:
        s.add_argument("--no-aux", action="store_true", help="leave out the auxiliary heads")
    return parser


def config_from_args(args) -> TrainConfig:
    """The TrainConfig the parsed ``train`` flags ask for (unset fields keep their defaults)."""
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return TrainConfig(**{k: v for k, v in vars(args).items() if k in names})


def _check_cheap(args) -> None:
    for name in ("batch_size", "workers", "image_size", "topk"):
        value = getattr(args, name, None)
        if value is not None and value < (0 if name == "workers" else 1):
            raise UsageError(f"--{name.replace('_', '-')} {value}: must be >= "
                             f"{0 if name == 'workers' else 1}")


def run(spec, args) -> int:
    if args.command == "train":
        from trainer.loop import train
        train(config_from_args(args), spec)
    elif args.command == "eval":
        _check_cheap(args)
        from trainer.evaluate import run_eval
        run_eval(args)
    elif args.command == "predict":
        _check_cheap(args)
        from trainer.evaluate import run_predict
        return run_predict(args)
    elif args.command == "export":
        _check_cheap(args)
        from trainer.export import run_export
        run_export(args, spec)
    elif args.command == "import-caffe":
        from trainer.caffe_import import run_import
        run_import(args, spec)
    elif args.command == "summary":
        from trainer.summary import format_summary, summarize
        try:
            spec.check_image_size(args.image_size)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        if args.num_classes < 1:
            raise UsageError(f"--num-classes {args.num_classes}: must be >= 1")
        rows, totals = summarize(spec, args.image_size, args.num_classes,
                                 not getattr(args, "no_aux", False))
        print(format_summary(spec, rows, totals, args.image_size))
    return 0


def main(spec=None, argv=None) -> int:
    """Run the command line for ``spec`` (GoogLeNet's when None); return the exit code.

    In an MPI job a failing process ends the whole job (the others would wait for it)."""
    code = _main(spec, argv)
    if code:
        from trainer.distributed import fail_job
        fail_job(code)
    return code


def _main(spec=None, argv=None) -> int:
    if spec is None:
        from models.googlenet import SPEC as spec
    args = build_parser(spec).parse_args(argv)
    from data import SplitError
    from trainer.checkpoint import CheckpointError
    from trainer.loop import TrainingError
    try:
        return run(spec, args)
    except KeyboardInterrupt:
        print("\ninterrupted; the last checkpoint (if any) is in the output directory: "
              "continue with --resume", file=sys.stderr)
        return 130
    except TrainingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (UsageError, SplitError, CheckpointError, FileNotFoundError, IsADirectoryError,
            NotADirectoryError, PermissionError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory: try a smaller --batch-size or --image-size", file=sys.stderr)
        return 1
    except OSError as exc:     # disk full, I/O errors
        print(f"error: {exc.strerror or exc}{': ' + exc.filename if exc.filename else ''}",
              file=sys.stderr)
        return 1
    except Exception as exc:   # a bug: still one line, with a way to get the traceback
        if os.environ.get("GOOGLENET_DEBUG"):
            raise
        print(f"error: unexpected {type(exc).__name__}: {exc} (set GOOGLENET_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        return 1
