"""Images per second of a full GoogLeNet training step and of inference, against PyTorch.

    python -m bench.train_throughput                       # CPU, batch 8 and 32, PyTorch beside
    python -m bench.train_throughput --batch-sizes 8 --steps 5 --rounds 2
    python -m bench.train_throughput --profile             # + per-layer forward/backward times
    python -m bench.train_throughput --json bench/results/train_throughput_cpu.json
    python -m bench.train_throughput --device cuda         # CuPy, and PyTorch on the GPU

What is timed, for each batch size, on random normal 224x224 float32 images with fixed
labels (no data loading):

* train: ``forward (aux heads on) -> loss (main + 0.3 x aux) -> zero_grad -> backward ->
  SGD step`` (momentum 0.9, weight decay 2e-4, biases at 2x the learning rate without decay);
* infer: ``eval()`` mode, no graph (``no_grad``), the main path's logits only.

Each framework runs in its own subprocess (``--worker``), so one's threads, caches and memory
never touch the other's, and peak memory is the process's own: ``ru_maxrss`` (peak resident
set) read after the inference steps (run first) and again after the training steps. "base" is
the resident set once the model, optimizer and input are built, before the first step; the
step's own working memory is peak - base. Times are medians over ``--steps`` steps after
``--warmup`` warm-up steps (which include Numba's cache loading or compilation, oneDNN's
kernel generation, and the first steps' page faults while the heap grows to what a step
needs: 5 by default, after which a long run's steady state holds); with ``--rounds R`` the two frameworks alternate R times (ours, torch,
torch, ours, ...) so that slow phases of a shared machine hit both, and the medians are taken
over every round's steps. "ratio" is ours / torch in img/s (above 1: ours is faster) and
torch / ours in memory (above 1: ours uses less); "rounds" gives each round's own ratio (the
spread), and "CPU time" the ratio of CPU seconds per step, which a busy machine disturbs far
less than wall time when each framework runs on one thread (``--threads 1``). "cores" is the worker's CPU time over wall
time while training: below the thread count, the machine was busy or threads waited.
"fastest" compares each framework's fastest training step; a note names a framework whose
median step took more than ``STALLED`` times its fastest (held up for much of the run, by
another process or by waiting on the system), whose median then understates it. With
``--device cuda`` the GPU memory each framework's allocator holds at the end (CuPy's pool,
PyTorch's reserved bytes) is reported too; host RSS then says little.

The PyTorch peer (``TorchGoogLeNet`` below) is the same network written with torch.nn
modules, the same layer table and semantics (ceil-mode pools, LRN with alpha / n, aux heads,
dropout 0.4 / 0.7), with our model's weights copied in. It runs PyTorch's defaults (oneDNN
convolutions on the CPU, all cores; cuDNN on the GPU, with ``cudnn.benchmark``). ``--threads``
sets both frameworks' thread counts; ``--openblas-coretype`` sets ``OPENBLAS_CORETYPE`` for
ours only (OpenBLAS reads it when NumPy loads it; PyTorch does not use OpenBLAS for these
layers).

The measured processes run in the user's default environment: ``OPENBLAS_CORETYPE`` and
``OPENBLAS_L2_SIZE``, which override OpenBLAS's choice of kernels and blocking for its
detected CPU, are removed from their environment (``--keep-openblas-env`` keeps them). Each
worker records the BLAS it loaded as threadpoolctl reports it (library, version, the kernel
"architecture" OpenBLAS chose, threads) and NumPy's SGEMM rate in that same environment; the
JSON and the printed table carry both.

FLOP counts: a training step costs 2 x (3 x forward MACs - first conv's MACs) per image
(forward, gradient to the weights, gradient to the inputs, which the first convolution does not
need): about 9.3 GFLOP; inference 2 x main-path MACs, about 3.2 GFLOP. "%sgemm" divides the
achieved FLOP rate by NumPy's float32 GEMM rate on 2048 x 2048 matrices, measured by each of
our workers in its own environment before it builds the model (NumPy's default BLAS threads
and kernels; the median over the workers is reported).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from bench.environment import (OPENBLAS_OVERRIDES, blas_info, blas_text,  # noqa: E402
                               overrides_seen, user_env, write_report)

LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 2e-4
FRAMEWORKS = ("ours", "torch")


# ----------------------------------------------------------------------------- PyTorch peer
def torch_googlenet(num_classes: int):
    """GoogLeNet in torch.nn, module names matching our state-dict keys (built lazily so
    that importing this file does not import torch)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from models.googlenet import INCEPTION

    class ConvReLU(nn.Module):
        def __init__(self, cin, cout, k, stride=1, pad=0):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, stride, pad)

        def forward(self, x):
            return torch.relu(self.conv(x))

    class Inception(nn.Module):
        def __init__(self, cin, c1, c3r, c3, c5r, c5, pp):
            super().__init__()
            self.conv_1x1 = ConvReLU(cin, c1, 1)
            self.conv_3x3_reduce = ConvReLU(cin, c3r, 1)
            self.conv_3x3 = ConvReLU(c3r, c3, 3, 1, 1)
            self.conv_5x5_reduce = ConvReLU(cin, c5r, 1)
            self.conv_5x5 = ConvReLU(c5r, c5, 5, 1, 2)
            self.pool = nn.MaxPool2d(3, 1, 1, ceil_mode=True)
            self.pool_proj = ConvReLU(cin, pp, 1)
            self.out_channels = c1 + c3 + c5 + pp

        def forward(self, x):
            return torch.cat([self.conv_1x1(x), self.conv_3x3(self.conv_3x3_reduce(x)),
                              self.conv_5x5(self.conv_5x5_reduce(x)),
                              self.pool_proj(self.pool(x))], 1)

    class AuxHead(nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.conv = ConvReLU(cin, 128, 1)
            self.fc = nn.Linear(2048, 1024)
            self.drop = nn.Dropout(0.7)
            self.classifier = nn.Linear(1024, num_classes)

        def forward(self, x):
            stride = x.shape[2] // 4        # 5x5/3 at 224, adapted like ours at other sizes
            x = F.avg_pool2d(x, x.shape[2] - 3 * stride, stride, ceil_mode=True)
            x = self.conv(x).flatten(1)
            return self.classifier(self.drop(torch.relu(self.fc(x))))

    class TorchGoogLeNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = ConvReLU(3, 64, 7, 2, 3)
            self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.norm1 = nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)
            self.conv2_reduce = ConvReLU(64, 64, 1)
            self.conv2 = ConvReLU(64, 192, 3, 1, 1)
            self.norm2 = nn.LocalResponseNorm(5, 1e-4, 0.75, 1.0)
            self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.blocks = nn.ModuleDict()
            cin = 192
            for name, widths in INCEPTION.items():
                self.blocks[name] = Inception(cin, *widths)
                cin = self.blocks[name].out_channels
            self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
            self.aux1, self.aux2 = AuxHead(512), AuxHead(528)
            self.drop = nn.Dropout(0.4)
            self.classifier = nn.Linear(1024, num_classes)

        def forward(self, x):
            x = self.pool2(self.norm2(self.conv2(self.conv2_reduce(
                self.norm1(self.pool1(self.conv1(x)))))))
            aux = []
            for name, block in self.blocks.items():
                if name in ("inception_4a", "inception_5a"):
                    x = self.pool(x)
                x = block(x)
                if self.training and name == "inception_4a":
                    aux.append(self.aux1(x))
                if self.training and name == "inception_4d":
                    aux.append(self.aux2(x))
            x = self.classifier(self.drop(torch.flatten(x.mean((2, 3), keepdim=True), 1)))
            return (x, *aux) if self.training else x

        def load_ours(self, state):
            """Copy our state dict in: conv1.weight -> conv1.conv.weight, inception_3a.conv_1x1.bias
            -> blocks.inception_3a.conv_1x1.conv.bias, aux1.fc.weight -> aux1.fc.weight."""
            own = dict(self.named_parameters())
            for key, value in state.items():
                parts = key.split(".")
                if parts[0].startswith("inception"):
                    parts = ["blocks"] + parts
                if parts[-2] not in ("fc", "classifier"):      # a convolution: ConvReLU.conv
                    parts.insert(-1, "conv")
                name = ".".join(parts)
                with torch.no_grad():
                    own.pop(name).copy_(torch.from_numpy(np.asarray(value)))
            if own:
                raise KeyError(f"torch peer: parameters not loaded: {sorted(own)}")

    return TorchGoogLeNet()


# ----------------------------------------------------------------------------- workers
def _rss_mib() -> float:
    """Peak resident set of this process so far (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def _current_rss_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return _rss_mib()


def _measure(args, model, infer, train, sync, out: dict) -> None:
    """Time inference (in eval mode) and training steps as ``args.mode`` asks, recording
    the step times, CPU times, first-step time and peak RSS after each into ``out``."""
    if args.mode in ("both", "infer"):
        model.eval()
        out["infer_times"], out["infer_cpu"], out["infer_first"] = _time_steps(
            infer, sync, args.warmup, args.steps)
        out["infer_peak_rss_mib"] = _rss_mib()
        model.train()
    if args.mode in ("both", "train"):
        out["train_times"], out["train_cpu"], out["train_first"] = _time_steps(
            train, sync, args.warmup, args.steps)
        out["train_peak_rss_mib"] = _rss_mib()


def _time_steps(step, sync, warmup: int, steps: int):
    """(wall seconds per step, process CPU seconds per step, first warm-up step's seconds)."""
    first = None
    for i in range(warmup):
        t0 = time.perf_counter()
        step()
        sync()
        if i == 0:
            first = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        sync()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu, first


def _worker_ours(args) -> dict:
    import engine as E
    from engine import SGD, Profiler, no_grad
    from models.googlenet import GoogLeNet, training_loss

    from kernels.cpu import gemm as kernel_gemm
    products = kernel_gemm.library()   # loads MKL where it is there, so that blas_info lists it
    blas = blas_info()      # before the CPU pool holds OpenBLAS at one thread
    gemm = sgemm_gflops() if args.device == "cpu" else None
    model = GoogLeNet(num_classes=args.num_classes, seed=0)
    xp = np
    sync = _no_sync
    if args.device == "cuda":
        from engine.backend import require_cuda
        xp = require_cuda()
        model.to("cuda")
        sync = xp.cuda.get_current_stream().synchronize
    opt = SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    rng = np.random.default_rng(0)
    x = xp.asarray(rng.standard_normal((args.batch, 3, args.image_size, args.image_size),
                                       dtype=np.float32))
    labels = xp.asarray(rng.integers(0, args.num_classes, args.batch))
    base = _current_rss_mib()

    def infer():
        with no_grad():
            model(x)

    def train():
        loss, _ = training_loss(model(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    out = {"base_rss_mib": base, "blas": blas, "kernel_products": products,
           "sgemm_gflops": gemm,
           "openblas_env": overrides_seen()}
    _measure(args, model, infer, train, sync, out)
    if args.device == "cuda":
        out["gpu_mib"] = xp.get_default_memory_pool().total_bytes() / 2**20   # held by the pool
    if args.profile:
        E.manual_seed(0)
        with Profiler(model) as prof:
            train()
            sync()
        out["profile_table"] = prof.table()
        out["profile"] = prof.by_scope()
    return out


def _torch_libraries() -> list[dict]:
    """PyTorch's own CPU libraries (linked into it, so threadpoolctl does not list them)."""
    import re

    import torch
    info = torch.__config__.parallel_info()
    found = {"MKL": re.search(r"Math Kernel Library Version ([\w.]+)", info),
             "oneDNN": re.search(r"MKL-DNN (v[\w.]+)", info)}
    return [{"internal_api": name, "version": m.group(1), "num_threads": torch.get_num_threads()}
            for name, m in found.items() if m]


def _worker_torch(args) -> dict:
    import torch
    if args.threads:
        torch.set_num_threads(args.threads)
    from models.googlenet import GoogLeNet

    dev = torch.device(args.device)
    ours = GoogLeNet(num_classes=args.num_classes, seed=0)
    model = torch_googlenet(args.num_classes)
    model.load_ours(ours.state_dict())
    del ours
    model.to(dev)
    sync = torch.cuda.synchronize if args.device == "cuda" else _no_sync
    weights = [p for n, p in model.named_parameters() if not n.endswith("bias")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    opt = torch.optim.SGD([{"params": weights},
                           {"params": biases, "lr": 2 * LR, "weight_decay": 0.0}],
                          lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((args.batch, 3, args.image_size, args.image_size),
                                             dtype=np.float32)).to(dev)
    labels = torch.from_numpy(rng.integers(0, args.num_classes, args.batch)).to(dev)
    ce = torch.nn.functional.cross_entropy
    base = _current_rss_mib()

    def infer():
        with torch.no_grad():
            model(x)

    def train():
        logits, a1, a2 = model(x)
        loss = ce(logits, labels) + 0.3 * (ce(a1, labels) + ce(a2, labels))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    out = {"base_rss_mib": base, "threads": torch.get_num_threads(), "blas": _torch_libraries()}
    if args.device == "cuda":
        torch.backends.cudnn.benchmark = True
        # An FP32 comparison: PyTorch lets cuDNN convolutions round to TF32 by default (10-bit
        # mantissas), which ours never do, so TF32 is off for convolutions and matmuls alike.
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        out["tf32"] = False
    _measure(args, model, infer, train, sync, out)
    if args.device == "cuda":
        out["gpu_mib"] = torch.cuda.max_memory_reserved() / 2**20   # held by the allocator
    return out


def _no_sync():
    return None


def worker_env(framework: str, args, base: dict | None = None) -> dict:
    """The measured process's environment: ``base`` (default: ours) without the OpenBLAS
    overrides unless ``--keep-openblas-env``, plus the bench's own settings."""
    env = dict(os.environ if base is None else base) if args.keep_openblas_env else user_env(base)
    if args.threads:
        env["GOOGLENET_CPU_THREADS"] = str(args.threads)
        if framework == "ours":    # a one-thread pool leaves BLAS its own threads otherwise
            env["OPENBLAS_NUM_THREADS"] = str(args.threads)
    if args.openblas_coretype and framework == "ours":
        env["OPENBLAS_CORETYPE"] = args.openblas_coretype
    if args.cold_numba_cache and framework == "ours":
        import tempfile
        env["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-cold-")
    return env


def _run_worker(framework: str, batch: int, args) -> dict:
    cmd = [sys.executable, "-m", "bench.train_throughput", "--worker", framework,
           "--batch-sizes", str(batch), "--device", args.device, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--image-size", str(args.image_size),
           "--num-classes", str(args.num_classes), "--mode", args.mode]
    if args.profile and framework == "ours":
        cmd.append("--profile")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = worker_env(framework, args)
    proc = subprocess.run(cmd, cwd=_ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{framework} worker at batch {batch} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- parent
def sgemm_gflops(n: int = 2048, repeat: int = 5) -> float:
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    a @ b
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def step_flops(image_size: int, num_classes: int) -> tuple[float, float]:
    """(training step, inference) FLOPs per image, from the model's own MAC counts."""
    from engine import Profiler, no_grad
    from models.googlenet import GoogLeNet
    model = GoogLeNet(num_classes=num_classes, seed=0)
    x = np.zeros((1, 3, image_size, image_size), np.float32)
    with no_grad(), Profiler(model) as prof:
        model(x)
    train_macs = sum(v["macs"] for v in prof.by_scope().values())
    first = prof.by_scope()["conv1"]["macs"]
    model.eval()
    with no_grad(), Profiler(model) as prof:
        model(x)
    infer_macs = sum(v["macs"] for v in prof.by_scope().values())
    return 2.0 * (3 * train_macs - first), 2.0 * infer_macs


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _versions() -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    for name in ("numba", "torch", "cupy"):
        try:
            out[name] = __import__(name).__version__
        except Exception:  # noqa: BLE001 (absent or broken: just not reported)
            pass
    return out


def _torch_available() -> bool:
    try:
        import torch  # noqa: F401
        return True
    except Exception:  # noqa: BLE001
        return False


def _summarise(runs: list[dict], batch: int, key: str):
    times = [t for r in runs for t in r.get(f"{key}_times", [])]
    if not times:
        return None
    return batch / statistics.median(times)


def run(args) -> dict:
    if args.device == "cuda":
        from engine.backend import require_cuda
        require_cuda()
    frameworks = [f for f in args.frameworks.split(",") if f]
    if "torch" in frameworks and not _torch_available():
        print("note: torch is not installed; timing ours only")
        frameworks = [f for f in frameworks if f != "torch"]
    batches = [int(b) for b in args.batch_sizes.split(",") if b]
    train_flops, infer_flops = step_flops(args.image_size, args.num_classes)
    report = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "command": "python -m bench.train_throughput " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "machine": {"cpu": _cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
                    "loadavg_start": list(os.getloadavg())},
        "versions": _versions(),
        "device": args.device,
        "settings": {"steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
                     "image_size": args.image_size, "num_classes": args.num_classes,
                     "mode": args.mode, "threads": args.threads or "default",
                     "openblas_coretype": args.openblas_coretype or "default",
                     "openblas_env": ("kept: " + ", ".join(f"{k}={os.environ[k]}" for k in
                                                           OPENBLAS_OVERRIDES if k in os.environ))
                     if args.keep_openblas_env else "removed (user default)"},
        "train_gflop_per_image": train_flops / 1e9,
        "infer_gflop_per_image": infer_flops / 1e9,
        "results": [],
    }
    print(f"training step {train_flops / 1e9:.2f} GFLOP/image, inference "
          f"{infer_flops / 1e9:.2f} GFLOP/image")
    profiles, gemms = {}, []
    for batch in batches:
        runs = {f: [] for f in frameworks}
        for r in range(args.rounds):
            order = frameworks if r % 2 == 0 else frameworks[::-1]
            for f in order:
                t0 = time.perf_counter()
                res = _run_worker(f, batch, args)
                runs[f].append(res)
                if res.get("sgemm_gflops"):
                    gemms.append(res["sgemm_gflops"])
                for key in ("blas", "openblas_env", "kernel_products"):
                    if key in res:
                        report.setdefault("blas", {}).setdefault(f, {})[key] = res[key]
                print(f"  batch {batch} round {r + 1}: {f} done in {time.perf_counter() - t0:.0f} s",
                      file=sys.stderr)
                if "profile_table" in res and batch not in profiles:
                    profiles[batch] = res
        row = {"batch": batch}
        gemm = statistics.median(gemms) if gemms else None
        report["sgemm_gflops"] = gemm
        report["sgemm_gflops_runs"] = gemms
        for f in frameworks:
            rr = runs[f]
            row[f] = {
                "train_img_s": _summarise(rr, batch, "train"),
                "infer_img_s": _summarise(rr, batch, "infer"),
                "train_peak_rss_mib": max((r.get("train_peak_rss_mib", 0) for r in rr), default=None),
                "infer_peak_rss_mib": max((r.get("infer_peak_rss_mib", 0) for r in rr), default=None),
                "base_rss_mib": statistics.median(r["base_rss_mib"] for r in rr),
                "train_first_step_s": rr[0].get("train_first"),
                "infer_first_step_s": rr[0].get("infer_first"),
                "train_times_s": [t for r in rr for t in r.get("train_times", [])],
                "infer_times_s": [t for r in rr for t in r.get("infer_times", [])],
                "train_cpu_s": [t for r in rr for t in r.get("train_cpu", [])],
                "infer_cpu_s": [t for r in rr for t in r.get("infer_cpu", [])],
            }
            wall, cpu = sum(row[f]["train_times_s"]), sum(row[f]["train_cpu_s"])
            if wall:
                row[f]["train_cores_used"] = cpu / wall
            for k in ("gpu_mib", "threads"):
                if k in rr[0]:
                    row[f][k] = rr[0][k]
            if row[f]["train_img_s"] and gemm:
                row[f]["train_pct_sgemm"] = 100 * row[f]["train_img_s"] * train_flops / 1e9 / gemm
            if row[f]["infer_img_s"] and gemm:
                row[f]["infer_pct_sgemm"] = 100 * row[f]["infer_img_s"] * infer_flops / 1e9 / gemm
        if "ours" in row and "torch" in row:
            o, t = row["ours"], row["torch"]
            row["ratio"] = {
                "train": _div(o["train_img_s"], t["train_img_s"]),
                "infer": _div(o["infer_img_s"], t["infer_img_s"]),
                "train_peak_rss": _div(t["train_peak_rss_mib"], o["train_peak_rss_mib"]),
                "gpu_memory": _div(t.get("gpu_mib"), o.get("gpu_mib")),
                "train_step_memory": _div(t["train_peak_rss_mib"] - t["base_rss_mib"],
                                          o["train_peak_rss_mib"] - o["base_rss_mib"])
                if o["train_peak_rss_mib"] and t["train_peak_rss_mib"] else None,
            }
            # Per CPU-second: on one thread, a busy machine's descheduling does not count.
            for key in ("train", "infer"):
                oc, tc = o[f"{key}_cpu_s"], t[f"{key}_cpu_s"]
                row["ratio"][f"{key}_cpu"] = (statistics.median(tc) / statistics.median(oc)
                                              if oc and tc else None)
            # Each framework's fastest step: a framework held up by something else for part
            # of the run (its step times spread wide) still shows what it can do.
            ot, tt = o["train_times_s"], t["train_times_s"]
            row["ratio"]["train_fastest"] = min(tt) / min(ot) if ot and tt else None
            # One ratio per round (each round's own medians): the spread across rounds.
            for key in ("train", "infer"):
                row["ratio"][f"{key}_per_round"] = [
                    _div(_summarise([a], batch, key), _summarise([b], batch, key))
                    for a, b in zip(runs["ours"], runs["torch"])]
        report["results"].append(row)
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    for batch, res in profiles.items():
        report.setdefault("profile", {})[str(batch)] = res["profile"]
        print(f"\nPer-layer times of one training step, ours, batch {batch} (ms):")
        print(res["profile_table"])
    print()
    print(format_table(report))
    return report


# A framework whose median training step took this many times its fastest was held up for
# much of the run (another process, its allocator waiting on the system): the table says so.
STALLED = 1.25


def _div(a, b):
    return a / b if a and b else None


def format_table(report: dict) -> str:
    st = report["settings"]
    lines = [f"device {report['device']}, {report['machine']['cores']} cores ({report['machine']['cpu']}); "
             f"threads {st['threads']}, OPENBLAS_CORETYPE for ours {st['openblas_coretype']}; "
             f"medians of {st['steps']} steps x {st['rounds']} round(s) after {st['warmup']} warm-up",
             f"environment: OpenBLAS overrides {st.get('openblas_env', '-')}"]
    for f, info in report.get("blas", {}).items():
        libs = "; ".join(blas_text(lib) for lib in info.get("blas", [])) or "none found"
        products = (f"; the kernels' products on {info['kernel_products']}"
                    if info.get("kernel_products") else "")
        lines.append(f"BLAS ({f}): {libs}{products}")
    if report.get("sgemm_gflops"):
        lines.append(f"SGEMM (NumPy, 2048^2 float32, in our workers' environment): "
                     f"{report['sgemm_gflops']:.0f} GFLOP/s median of "
                     f"{', '.join(f'{g:.0f}' for g in report.get('sgemm_gflops_runs', []))}")
    lines.append(f"{'batch':>5} {'framework':<9} {'train img/s':>11} {'%sgemm':>7} {'cores':>5} "
                 f"{'infer img/s':>11} {'%sgemm':>7} {'peak RSS MiB':>12} {'base MiB':>9} "
                 f"{'step MiB':>9}")
    for row in report["results"]:
        for f in FRAMEWORKS:
            if f not in row:
                continue
            v = row[f]
            peak = v["train_peak_rss_mib"] or v["infer_peak_rss_mib"]
            lines.append(
                f"{row['batch']:>5} {f:<9} {_fmt(v['train_img_s'], 11, 2)} "
                f"{_fmt(v.get('train_pct_sgemm'), 6, 1)}% {_fmt(v.get('train_cores_used'), 5, 2)} "
                f"{_fmt(v['infer_img_s'], 11, 2)} "
                f"{_fmt(v.get('infer_pct_sgemm'), 6, 1)}% {_fmt(peak, 12, 0)} "
                f"{_fmt(v['base_rss_mib'], 9, 0)} {_fmt(peak - v['base_rss_mib'] if peak else None, 9, 0)}")
        if "ratio" in row:
            r = row["ratio"]
            lines.append(f"{row['batch']:>5} {'ratio':<9} {_fmt(r['train'], 10, 2)}x {'':>7} {'':>5} "
                         f"{_fmt(r['infer'], 10, 2)}x {'':>7} {_fmt(r['train_peak_rss'], 11, 2)}x "
                         f"{'':>9} {_fmt(r['train_step_memory'], 8, 2)}x")
            if len(r.get("train_per_round", [])) > 1:
                lines.append(f"{'':>5} {'rounds':<9} train " + " ".join(
                    _fmt(v, 4, 2) for v in r["train_per_round"]) + "; infer " + " ".join(
                    _fmt(v, 4, 2) for v in r["infer_per_round"]))
            if r.get("train_cpu"):
                lines.append(f"{'':>5} {'CPU time':<9} train {_fmt(r['train_cpu'], 4, 2)}x; "
                             f"infer {_fmt(r.get('infer_cpu'), 4, 2)}x "
                             "(torch / ours CPU seconds per step)")
            if r.get("train_fastest"):
                lines.append(f"{'':>5} {'fastest':<9} train {_fmt(r['train_fastest'], 4, 2)}x "
                             "(each framework's fastest step)")
            for f in FRAMEWORKS:
                times = row.get(f, {}).get("train_times_s") or []
                if times and statistics.median(times) > STALLED * min(times):
                    lines.append(f"{'':>5} note: {f}'s training steps ranged {min(times):.2f}-"
                                 f"{max(times):.2f} s, held up part of the time; its median "
                                 "understates it (see 'fastest')")
    for row in report["results"]:
        if "ours" in row and "torch" in row and row["ours"].get("gpu_mib"):
            lines.append(f"{row['batch']:>5} GPU memory held at the end (MiB): ours "
                         f"{row['ours']['gpu_mib']:.0f}, torch {row['torch'].get('gpu_mib', 0):.0f}")
    lines.append("ratio: ours/torch img/s; torch/ours memory (above 1: ours is faster / smaller). "
                 "cores: process CPU time / wall time while training (below the thread count: "
                 "the machine was busy or threads waited). CPU time: fair on a busy machine "
                 "with --threads 1; with more threads a waiting thread's spinning counts too")
    return "\n".join(lines)


def _fmt(v, width, digits):
    return f"{'-':>{width}}" if v is None else f"{v:>{width}.{digits}f}"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m bench.train_throughput",
        description="GoogLeNet training-step and inference throughput (img/s) and peak memory, "
                    "ours against PyTorch in the same run.",
        epilog="Each framework runs in its own subprocess; see the module docstring for the method.")
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                    help="cpu: NumPy + Numba kernels vs PyTorch CPU; cuda: CuPy vs PyTorch CUDA "
                         "(needs CuPy and a GPU)")
    ap.add_argument("--batch-sizes", default="8,32", help="comma-separated batch sizes (default 8,32)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per measurement (default 3)")
    ap.add_argument("--warmup", type=int, default=5,
                    help="untimed warm-up steps before them (default 5: the memory a step "
                         "needs has settled by then, as in a long run)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="run each framework this many times, alternating (default 1)")
    ap.add_argument("--mode", choices=("both", "train", "infer"), default="both",
                    help="time training steps, inference, or both (default)")
    ap.add_argument("--frameworks", default="ours,torch",
                    help="comma-separated subset of ours,torch (default both; torch is skipped "
                         "when not installed)")
    ap.add_argument("--image-size", type=int, default=224, help="input side (default 224)")
    ap.add_argument("--num-classes", type=int, default=1000, help="classes (default 1000)")
    ap.add_argument("--profile", action="store_true",
                    help="also print ours' per-layer forward/backward times of one training "
                         "step (engine.Profiler), per batch size")
    ap.add_argument("--threads", type=int, default=0,
                    help="threads for both frameworks (GOOGLENET_CPU_THREADS and "
                         "OPENBLAS_NUM_THREADS for ours, torch.set_num_threads for torch); "
                         "default: each one's default, all cores")
    ap.add_argument("--openblas-coretype", default="", metavar="NAME",
                    help="run ours with OPENBLAS_CORETYPE=NAME, forcing OpenBLAS's kernels "
                         "(e.g. Haswell: AVX2); default: unset, OpenBLAS's own choice for "
                         "the CPU")
    ap.add_argument("--keep-openblas-env", action="store_true",
                    help="keep OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in the measured processes' "
                         "environment; default: remove them, as users' processes do not have "
                         "them")
    ap.add_argument("--cold-numba-cache", action="store_true",
                    help="run ours with an empty Numba cache, so the first step includes "
                         "compiling every kernel (reported as the first-step time)")
    ap.add_argument("--json", metavar="PATH", help="write the full report as JSON")
    ap.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    ap.add_argument("--distributed", type=int, metavar="N",
                    help="measure data-parallel training on N MPI processes instead "
                         "(bench.train_distributed: img/s, scaling efficiency, communication "
                         "share); with the first of --batch-sizes per process")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.distributed:
        from bench import train_distributed
        return train_distributed.main(train_distributed.argv_from(args))
    if args.worker:
        args.batch = int(args.batch_sizes.split(",")[0])
        res = (_worker_ours if args.worker == "ours" else _worker_torch)(args)
        print(json.dumps(res))
        return 0
    try:
        report = run(args)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        write_report(args.json, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
