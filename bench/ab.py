"""This checkout's training steps against another revision's, in alternating processes.

    python -m bench.ab HEAD~2                       # batch 8, 10 pairs of processes
    python -m bench.ab e1723ce --batch-sizes 8,32 --pairs 20 --json ab.json

A change worth a few percent is smaller than the host's drift over the minutes a bench
takes, so it is measured as a ratio of neighbours: the other revision is checked out into
a temporary git worktree, and the two trees' processes run one after the other, in the
order ABBA ..., each timing ``--steps`` GoogLeNet training steps after ``--warmup`` (the
first compiles the other tree's kernels into its own cache). Each pair gives one ratio,
the other revision's median step time over this checkout's (above 1: this checkout is
faster); the report gives the median ratio and its quartiles over the pairs, with each
tree's step times. The measured processes run without ``OPENBLAS_CORETYPE`` and
``OPENBLAS_L2_SIZE`` (:mod:`bench.environment`), as a user's would, and report the BLAS
they loaded and the library of the kernels' products.

Uncommitted changes are part of "this checkout"; the other side is the revision as
committed. The worker uses only the network's public API (``models.googlenet.GoogLeNet``,
``training_loss``, ``engine.SGD``), so any revision that has those can be measured.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(_ROOT))

from bench.environment import blas_info, blas_text, user_env, write_report  # noqa: E402
from bench.train_throughput import LR, MOMENTUM, WEIGHT_DECAY  # noqa: E402


class AbError(Exception):
    """A one-line reason the comparison cannot run."""


# ----------------------------------------------------------------------------- worker
def _worker(root: str, batch: int, steps: int, warmup: int, image_size: int) -> dict:
    """Median seconds per training step of the tree at ``root`` (imported from there)."""
    sys.path.insert(0, root)
    import numpy as np

    from engine import SGD
    from models.googlenet import GoogLeNet, training_loss
    model = GoogLeNet(num_classes=1000, seed=0)
    opt = SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, image_size, image_size), dtype=np.float32)
    labels = rng.integers(0, 1000, batch)

    def step():
        loss, _ = training_loss(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    import models
    return {"median_s": statistics.median(times), "times_s": times,
            "models_from": str(Path(models.__file__).resolve().parents[1]),
            "blas": blas_info(), "kernel_products": _kernel_products()}


def _kernel_products() -> str:
    """The library of the tree's CPU kernels' products ("mkl" or "numpy"; "numpy" for a
    revision from before the choice existed)."""
    try:
        from kernels.cpu import gemm
    except ImportError:
        return "numpy"
    return gemm.library()


# ----------------------------------------------------------------------------- parent
def _git(*args, cwd=_ROOT) -> str:
    try:
        proc = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError:
        raise AbError("git is not installed") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise AbError(f"git {args[0]}: {why}")
    return proc.stdout.strip()


def _measure(root: Path, batch: int, args) -> dict:
    cmd = [sys.executable, "-m", "bench.ab", "--worker", str(root), "--batch-sizes",
           str(batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
           "--image-size", str(args.image_size)]
    proc = subprocess.run(cmd, cwd=_ROOT, env=user_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        raise AbError(f"the worker for {root} at batch {batch} failed: "
                      f"{(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    _check_origin(root, out)
    return out


def _check_origin(root: Path, out: dict) -> None:
    """A worker must have measured the tree it was given (a tree without the network, or
    an installed copy found first, would have it measure another)."""
    if Path(out["models_from"]) != Path(root).resolve():
        raise AbError(f"the worker for {root} imported the network from {out['models_from']}")


def _quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def run(args) -> dict:
    """Measure ``args.rev`` against this checkout; returns the report."""
    here = _git("rev-parse", "HEAD")         # also: is this a git checkout at all
    try:
        sha = _git("rev-parse", "--verify", "--quiet", f"{args.rev}^{{commit}}")
    except AbError:
        raise AbError(f"{args.rev!r} is not a commit of this repository") from None
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    tmp = Path(tempfile.mkdtemp(prefix="googlenet-ab-"))
    other = tmp / "tree"
    _git("worktree", "add", "--detach", "--quiet", str(other), sha)
    try:
        results = []
        for batch in args.batches:
            pairs = []
            for i in range(args.pairs):
                order = ("other", "this") if i % 2 == 0 else ("this", "other")
                got = {}
                for side in order:
                    got[side] = _measure(other if side == "other" else _ROOT, batch, args)
                    print(f"  batch {batch} pair {i + 1}/{args.pairs}: {side} "
                          f"{got[side]['median_s'] * 1e3:.1f} ms", file=sys.stderr)
                pairs.append({"other_s": got["other"]["median_s"],
                              "this_s": got["this"]["median_s"],
                              "ratio": got["other"]["median_s"] / got["this"]["median_s"]})
                blas = {side: {"blas": got[side]["blas"],
                               "kernel_products": got[side]["kernel_products"]}
                        for side in got}
            q1, q2, q3 = _quartiles([p["ratio"] for p in pairs])
            results.append({"batch": batch, "pairs": pairs, "blas": blas, "ratio_median": q2,
                            "ratio_quartiles": [q1, q3],
                            "other_median_s": statistics.median(p["other_s"] for p in pairs),
                            "this_median_s": statistics.median(p["this_s"] for p in pairs)})
    finally:
        _git("worktree", "remove", "--force", str(other))
        shutil.rmtree(tmp, ignore_errors=True)
    return {"date": _dt.datetime.now().isoformat(timespec="seconds"),
            "command": "python -m bench.ab " + " ".join(sys.argv[1:]),
            "machine": platform.processor() or platform.machine(),
            "other": {"rev": args.rev, "commit": sha},
            "this": {"commit": here, "uncommitted_changes": dirty},
            "settings": {"steps": args.steps, "warmup": args.warmup,
                         "image_size": args.image_size, "pairs": args.pairs},
            "results": results}


def format_report(report: dict) -> str:
    other, this = report["other"], report["this"]
    lines = [f"this checkout ({this['commit'][:10]}"
             f"{' + uncommitted changes' if this['uncommitted_changes'] else ''}) against "
             f"{other['rev']} ({other['commit'][:10]}), training steps, "
             f"{report['settings']['pairs']} pairs of processes:"]
    for r in report["results"]:
        q1, q3 = r["ratio_quartiles"]
        lines.append(f"  batch {r['batch']}: {r['ratio_median']:.3f}x (quartiles {q1:.3f}-"
                     f"{q3:.3f}); steps {r['this_median_s'] * 1e3:.1f} ms against "
                     f"{r['other_median_s'] * 1e3:.1f} ms")
        for side, got in r["blas"].items():
            lines.append(f"    BLAS ({side}): " + "; ".join(blas_text(b) for b in got["blas"])
                         + f"; the kernels' products on {got['kernel_products']}")
    lines.append("ratio: the other revision's step time / this checkout's "
                 "(above 1: this checkout is faster)")
    return "\n".join(lines)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench.ab",
        description="GoogLeNet training steps of this checkout against another git "
                    "revision's, in alternating processes (ratio of neighbours, so that "
                    "the host's drift cancels).")
    ap.add_argument("rev", nargs="?", help="the revision to compare with (e.g. HEAD~1, a "
                    "commit or a branch); checked out into a temporary git worktree")
    ap.add_argument("--batch-sizes", default="8", help="comma-separated (default 8)")
    ap.add_argument("--pairs", type=_positive, default=10,
                    help="pairs of processes per batch size, ABBA order (default 10)")
    ap.add_argument("--steps", type=_positive, default=12,
                    help="timed steps per process; its median is its figure (default 12)")
    ap.add_argument("--warmup", type=_positive, default=3,
                    help="untimed steps first (default 3; the first compiles the kernels)")
    ap.add_argument("--image-size", type=_positive, default=224, help="input side (default 224)")
    ap.add_argument("--json", metavar="PATH", help="also write the report here")
    ap.add_argument("--worker", metavar="ROOT", help=argparse.SUPPRESS)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.batches = [int(b) for b in args.batch_sizes.split(",")]
        if min(args.batches) < 1:
            raise ValueError
    except ValueError:
        print(f"error: --batch-sizes must be positive integers separated by commas, got "
              f"{args.batch_sizes!r}", file=sys.stderr)
        return 2
    if args.worker:
        print(json.dumps(_worker(args.worker, args.batches[0], args.steps, args.warmup,
                                 args.image_size)))
        return 0
    if not args.rev:
        print("error: name the revision to compare with, e.g. python -m bench.ab HEAD~1",
              file=sys.stderr)
        return 2
    try:
        report = run(args)
    except AbError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(format_report(report))
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
