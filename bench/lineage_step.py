"""One CPU training step of each lineage network, against PyTorch, in the same run.

    python -m bench.lineage_step                    # all four, default sizes
    python -m bench.lineage_step --nets lenet5 nin --steps 5 --rounds 3
    python -m bench.lineage_step --json bench/results/lineage_step_cpu.json

A step is ``forward -> softmax cross-entropy -> zero_grad -> backward -> SGD step`` (momentum
0.9, weight decay 1e-4) on random float32 images with fixed labels, in training mode (batch
norm on batch statistics; dropout off in both, so the two do the same arithmetic). Sizes:

    lenet5     batch 64, 1x32x32        nin        batch 32, 3x32x32
    alexnet    batch 16, 3x227x227      resnet34   batch 8, 3x224x224

The PyTorch peer of each network is the independent functional version the tests check ours
against (``tests/torch_lineage.py``; LeNet-5's C3 as one masked dense convolution), with our
model's weights copied in; PyTorch runs its defaults (oneDNN convolutions, all cores), or
``--threads N`` threads, as ours then does too. Both frameworks run in one worker process, in
alternating rounds (ours, torch, torch, ours, ...), so that the slow phases of a shared
machine hit both; each figure is the median step time over every round, with the spread
(min - max). "ratio" is torch's time / ours (above 1: ours is faster). The worker runs without
the ``OPENBLAS_CORETYPE`` and ``OPENBLAS_L2_SIZE`` overrides of the calling environment, as a
user's process would.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
for p in (_ROOT, _ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

NETS = {  # name: (batch, input shape)
    "lenet5": (64, (1, 32, 32)),
    "nin": (32, (3, 32, 32)),
    "alexnet": (16, (3, 227, 227)),
    "resnet34": (8, (3, 224, 224)),
}
LR, MOMENTUM, WD = 0.01, 0.9, 1e-4


def build_pair(name: str):
    """(our model, torch forward(P, x), P: torch parameters and buffers under our names)."""
    import torch

    import torch_lineage as T
    from models.alexnet import AlexNet
    from models.lenet5 import LeNet5
    from models.nin import NiN
    from models.resnet import BLOCKS, ResNet34
    ours = {"lenet5": lambda: LeNet5(seed=0), "nin": lambda: NiN(dropout=0.0, seed=0),
            "alexnet": lambda: AlexNet(dropout=0.0, seed=0),
            "resnet34": lambda: ResNet34(seed=0)}[name]()
    forward = {"lenet5": lambda P, x: T.lenet5(P, x, c3="masked"), "nin": T.nin, "alexnet": T.alexnet,
               "resnet34": lambda P, x: T.resnet(P, x, BLOCKS[34], training=True)}[name]
    P = {k: torch.tensor(np.array(v), requires_grad="running" not in k)
         for k, v in ours.state_dict().items()}
    return ours, forward, P


def worker(args) -> dict:
    import torch
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    import layers as L
    from engine import SGD
    results = {}
    for name in args.nets:
        batch, shape = NETS[name]
        model, tforward, P = build_pair(name)
        model.train()
        rng = np.random.default_rng(0)
        x = rng.standard_normal((batch,) + shape).astype(np.float32)
        labels = rng.integers(0, model.num_classes, batch)
        opt = SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
        tparams = [v for v in P.values() if v.requires_grad]
        topt = torch.optim.SGD(tparams, lr=LR, momentum=MOMENTUM, weight_decay=WD)
        tx, tlabels = torch.tensor(x), torch.tensor(labels)

        def ours_step():
            loss = L.softmax_cross_entropy(model(x), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()

        def torch_step():
            loss = torch.nn.functional.cross_entropy(tforward(P, tx), tlabels)
            topt.zero_grad()
            loss.backward()
            topt.step()

        times = {"ours": [], "torch": []}
        for fn in (ours_step, torch_step):       # warm-up: Numba caches, oneDNN kernels
            for _ in range(args.warmup):
                fn()
        for r in range(args.rounds):
            order = ("ours", "torch") if r % 2 == 0 else ("torch", "ours")
            for who in order:
                fn = ours_step if who == "ours" else torch_step
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    fn()
                    times[who].append(time.perf_counter() - t0)
        row = {"batch": batch, "input": list(shape)}
        for who, ts in times.items():
            row[who] = {"median_s": statistics.median(ts), "min_s": min(ts), "max_s": max(ts),
                        "steps": len(ts)}
        row["ratio"] = row["torch"]["median_s"] / row["ours"]["median_s"]
        results[name] = row
        print(f"{name}: done", file=sys.stderr)
        del model, opt, P, topt
    return {"nets": results, "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "numpy": np.__version__}


def run(args) -> dict:
    from bench.environment import user_env
    env = user_env()
    cmd = [sys.executable, "-m", "bench.lineage_step", "--worker", "--nets", *args.nets,
           "--steps", str(args.steps), "--rounds", str(args.rounds), "--warmup", str(args.warmup)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
        for name in ("GOOGLENET_CPU_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
            env[name] = str(args.threads)
    proc = subprocess.run(cmd, cwd=_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the worker failed:\n{proc.stderr[-4000:]}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    report["cpus"] = os.cpu_count()
    report["load_average"] = os.getloadavg()
    return report


def format_table(report: dict) -> str:
    lines = [f"{'network':<10}{'batch':>6}{'ours s/step':>26}{'PyTorch s/step':>26}{'ratio':>8}"]
    for name, r in report["nets"].items():
        cell = {w: f"{r[w]['median_s']:.3f} ({r[w]['min_s']:.3f}-{r[w]['max_s']:.3f})"
                for w in ("ours", "torch")}
        lines.append(f"{name:<10}{r['batch']:>6}{cell['ours']:>26}{cell['torch']:>26}"
                     f"{r['ratio']:>7.2f}x")
    lines.append(f"medians (min-max) over {report['nets'][next(iter(report['nets']))]['ours']['steps']}"
                 f" steps each; ratio = PyTorch time / ours (above 1: ours faster); PyTorch "
                 f"{report['torch']} on {report['torch_threads']} threads; load average "
                 f"{', '.join(f'{v:.1f}' for v in report['load_average'])} on {report['cpus']} CPUs")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    p.add_argument("--steps", type=int, default=3, help="timed steps per round (default: 3)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (default: 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps first (default: 1)")
    p.add_argument("--threads", type=int, help="threads for both frameworks (default: each "
                                                "framework's own choice)")
    p.add_argument("--json", help="also write the report here")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0
    report = run(args)
    print(format_table(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
