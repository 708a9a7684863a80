"""One prepared command for a GPU machine: prove and measure the CUDA half within a deadline.

    PYTHONPATH=. python -m bench.gpu_check OUTDIR            # everything, about 8 minutes at most
    bash bench/gpu_check.sh OUTDIR                           # the same
    python -m bench.gpu_check OUTDIR --only env,ceilings     # some steps
    python -m bench.gpu_check OUTDIR --dry-run               # plan only; GPU steps skipped

Run from the repository root on a machine with NumPy, CuPy and PyTorch (no internet needed).
Each step is a child process with its own time cap; a global deadline (``--budget`` seconds,
default 480) shortens the later steps' caps and skips a step that would start with too little
time left, so the command always finishes and always writes what it has:

    OUTDIR/gpu_check.json   every step: command, status, seconds, cap, figures, output tail
    OUTDIR/summary.md       one table and the headline figures, for a person
    OUTDIR/<step>.log       each step's full output (and <step>.json for the ones that measure)

Steps, in order (the first needs no GPU; the others are skipped with the reason when CuPy
cannot launch a kernel, or with ``--dry-run``):

    env          versions, ``nvidia-smi``, the device's facts, the git commit
    ceilings     cuBLAS SGEMM TFLOP/s (TF32 off) and device-to-device copy GB/s
    compile      every kernel instance through NVRTC, one process per source (fills CuPy's
                 disk cache, so the steps after it do not compile)
    tests        pytest: the GPU tests of the kernels (every config at the batch-128 split counts)
    layer_tests  pytest: every layer on CuPy
    lab          ``kernels.lab`` validating and timing every version and config on inception_4a
    conv_bench   ``bench.conv_throughput``: 59 convolutions x 3 directions against cuDNN FP32
                 (TF32 off) and CuPy im2col + cuBLAS
    parity       GoogLeNet's first training steps on the CPU and on the GPU: losses compared
    train_bench  ``bench.train_throughput --device cuda`` at batch 128 against PyTorch eager FP32
    train        300 steps of ``models.googlenet train --device cuda`` on the built-in data
    sanitizer    ``compute-sanitizer`` memcheck and racecheck of the fast kernels, small shapes

Exit status: 0 when no step that ran failed (skipped steps do not count), 1 otherwise, 2 for a
bad command line. The autotuner's choices go to OUTDIR/autotune.json (a fresh search).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.environment import user_env

ROOT = Path(__file__).resolve().parents[1]
MIN_STEP_S = 15      # a step is skipped when less than this is left before the deadline
TAIL = 3000          # characters of each step's output kept in the JSON


@dataclass
class Step:
    name: str
    cap: float               # seconds
    gpu: bool                # needs a usable GPU
    what: str
    command: list = field(default_factory=list)   # filled by plan()


def _py(*args) -> list:
    return [sys.executable, *args]


def plan(out: Path) -> list[Step]:
    """The steps with their commands and caps, in order."""
    tests = ["-m", "pytest", "-q", "--maxfail=20", "-p", "no:cacheprovider", "-o", "addopts="]
    sanitizer = shutil.which("compute-sanitizer") or (
        "/usr/local/cuda/bin/compute-sanitizer"
        if Path("/usr/local/cuda/bin/compute-sanitizer").exists() else None)
    steps = [
        Step("env", 30, False, "versions, nvidia-smi, device facts",
             _py("-m", "bench.gpu_check", "--step", "env", str(out))),
        Step("ceilings", 40, True, "cuBLAS SGEMM (TF32 off) and copy bandwidth",
             _py("-m", "bench.gpu_check", "--step", "ceilings", str(out))),
        Step("compile", 90, True, "NVRTC: every kernel instance into CuPy's cache",
             _py("-m", "bench.gpu_check", "--step", "compile", str(out))),
        Step("tests", 120, True, "GPU tests of the kernels",
             _py(*tests, "tests/test_kernels.py", "-k", "gpu")),
        Step("layer_tests", 60, True, "every layer on CuPy",
             _py(*tests, "tests/test_layers.py", "-k", "cupy")),
        Step("lab", 45, True, "every version and config on inception_4a",
             _py("-m", "kernels.lab", "--only", "inception_4a", "--all-configs", "--repeat", "5")),
        Step("conv_bench", 150, True, "59 convolutions x 3 directions vs cuDNN FP32 and cuBLAS",
             _py("-m", "bench.conv_throughput", "--device", "cuda", "--batch", "128",
                 "--impls", "cupy-im2col,custom-v4,custom-best,torch-cudnn-fp32,torch-cudnn-tf32",
                 "--repeat", "10", "--warmup", "2", "--json", str(out / "conv_throughput.json"),
                 "--plot", str(out / "conv_throughput.png"))),
        Step("parity", 45, True, "first training steps: CPU and GPU losses",
             _py("-m", "bench.gpu_check", "--step", "parity", str(out))),
        Step("train_bench", 90, True, "train img/s at batch 128 vs PyTorch eager FP32",
             _py("-m", "bench.train_throughput", "--device", "cuda", "--batch-sizes", "128",
                 "--steps", "10", "--warmup", "3", "--json", str(out / "train_throughput.json"))),
        Step("train", 90, True, "300 steps of train --device cuda, built-in data",
             _py("-m", "models.googlenet", "train", "--device", "cuda", "--epochs", "4",
                 "-b", "16", "--builtin-dir", str(out / "builtin"), "--output-dir",
                 str(out / "train"), "--overwrite", "--print-freq", "25")),
        Step("sanitizer", 60, True, "compute-sanitizer memcheck + racecheck, small shapes",
             _py("-m", "bench.gpu_check", "--step", "sanitizer", str(out))
             if sanitizer else []),
    ]
    if not sanitizer:
        steps[-1].what += " (compute-sanitizer not found)"
    return steps


# ----------------------------------------------------------------------------- running


def _run(step: Step, cap: float, out: Path, env: dict) -> dict:
    """Run one step's command with a wall-clock cap; its output goes to OUTDIR/<step>.log."""
    log = out / f"{step.name}.log"
    t0 = time.perf_counter()
    with open(log, "w") as f:
        f.write(f"$ {' '.join(step.command)}\n")
        f.flush()
        proc = subprocess.Popen(step.command, cwd=ROOT, env=env, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=cap)
            status = "passed" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)   # the step and every process it started
            proc.wait()
            rc, status = None, "timed out"
    text = log.read_text(errors="replace")
    result = {"status": status, "rc": rc, "seconds": round(time.perf_counter() - t0, 1),
              "cap_s": round(cap, 1), "tail": text[-TAIL:]}
    figures = out / f"{step.name}.json"
    if figures.exists():
        try:
            result["figures"] = json.loads(figures.read_text())
        except ValueError:
            result["figures"] = None
    return result


def run_all(out: Path, budget: float, only: set | None, dry_run: bool) -> dict:
    deadline = time.monotonic() + budget
    env = user_env()                                   # measure as users run
    env.update({"PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
                "PYTHONUNBUFFERED": "1", "CI": "1", "CUPY_TF32": "0",
                "GOOGLENET_AUTOTUNE_CACHE": str(out / "autotune.json"),
                "GOOGLENET_DATA_DIR": str(out / "builtin")})
    report = {"command": " ".join([sys.executable, "-m", "bench.gpu_check", *sys.argv[1:]]),
              "outdir": str(out),
              "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
              "budget_s": budget, "dry_run": dry_run, "steps": {}}
    gpu_reason = "--dry-run" if dry_run else None
    for step in plan(out):
        if only and step.name not in only:
            continue
        left = deadline - time.monotonic()
        if step.gpu and gpu_reason:
            res = {"status": "skipped", "reason": f"no usable GPU: {gpu_reason}"}
        elif not step.command:
            res = {"status": "skipped", "reason": step.what}
        elif left < MIN_STEP_S:
            res = {"status": "skipped", "reason": f"global deadline: {left:.0f} s left"}
        else:
            res = _run(step, min(step.cap, left), out, env)
        res.update({"what": step.what, "command": " ".join(step.command)})
        report["steps"][step.name] = res
        if step.name == "env" and not dry_run:
            gpu_reason = (res.get("figures") or {}).get("gpu_unusable", "the env step failed")
        _write(out, report)   # after every step: an interrupted run still leaves its results
        print(f"gpu_check: {step.name:12} {res['status']:9} "
              f"{res.get('seconds', 0):6.1f} s  {res.get('reason', '')}", flush=True)
    return report


def _write(out: Path, report: dict) -> None:
    (out / "gpu_check.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "summary.md").write_text(summary(report))


def summary(report: dict) -> str:
    """A person's view: one row per step, then the headline figures that were measured."""
    lines = [f"# GPU check, {report['date']}", "", f"`{report['command']}`", "",
             "| step | status | seconds | cap | what / why skipped |", "|---|---|---|---|---|"]
    for name, r in report["steps"].items():
        lines.append(f"| {name} | {r['status']} | {r.get('seconds', '')} | {r.get('cap_s', '')} "
                     f"| {r.get('reason') or r.get('what', '')} |")
    steps = report["steps"]
    env = (steps.get("env") or {}).get("figures") or {}
    if env.get("device"):
        d = env["device"]
        lines += ["", f"Device: {d.get('name')} (sm {d.get('compute_capability')}, "
                      f"{d.get('sm_count')} SMs); CuPy {env.get('cupy')}, torch {env.get('torch')}"]
    ceil = (steps.get("ceilings") or {}).get("figures") or {}
    if ceil:
        lines.append(f"Ceilings: SGEMM {ceil.get('sgemm_tflops')} TFLOP/s (FP32), "
                     f"copy {ceil.get('copy_gbs')} GB/s")
    par = (steps.get("parity") or {}).get("figures") or {}
    if par:
        lines.append(f"Loss parity CPU vs GPU: max rel diff {par.get('max_rel_diff')} over "
                     f"{len(par.get('cpu', []))} steps ({'ok' if par.get('ok') else 'NOT OK'})")
    conv = Path(report.get("outdir", "")) / "conv_throughput.json"
    if conv.exists():
        lines += conv_lines(conv)
    return "\n".join(lines) + "\n"


def conv_lines(path: Path) -> list[str]:
    """bench.conv_throughput's totals: TFLOP/s per direction and implementation, and the
    time of forward + both backwards against cuDNN FP32 (above 1: faster)."""
    try:
        totals = json.loads(path.read_text()).get("totals", {})
    except (OSError, ValueError):
        return [f"conv_throughput: {path} unreadable"]
    lines, all_ms = [], {}
    for d, entry in totals.items():
        impls = entry.get("impls", {})
        lines.append(f"conv {d} ({len(entry.get('layers', []))} layers), TFLOP/s: " + ", ".join(
            f"{name} {v['tflops']:.1f}" for name, v in impls.items() if v.get("tflops")))
        for name, v in impls.items():
            all_ms.setdefault(name, []).append(v.get("ms") or 0.0)
    ref = "torch-cudnn-fp32"
    if ref in all_ms and len(all_ms[ref]) == len(totals):
        ref_ms = sum(all_ms[ref])
        lines.append("fwd + bwd_data + bwd_weight vs cuDNN FP32 (time ratio, above 1 faster): "
                     + ", ".join(f"{n} {ref_ms / sum(ms):.2f}" for n, ms in all_ms.items()
                                 if len(ms) == len(totals) and sum(ms) > 0))
    return lines


# ----------------------------------------------------------------------------- inline steps


def step_env(out: Path) -> dict:
    """Versions and device facts; ``gpu_unusable`` is None when CuPy can launch kernels."""
    from kernels.conv_cuda import device  # noqa: PLC0415

    facts = {"python": platform.python_version(), "platform": platform.platform(),
             "cpus": os.cpu_count()}
    for mod in ("numpy", "cupy", "torch"):
        try:
            facts[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001
            facts[mod] = f"not importable ({type(exc).__name__})"
    try:
        facts["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, text=True,
                                             capture_output=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        facts["git_commit"] = None
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            facts["nvidia_smi"] = subprocess.run([smi], text=True, capture_output=True,
                                                 timeout=15).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            facts["nvidia_smi"] = f"failed: {exc}"
    facts["gpu_unusable"] = device.unusable_reason()
    if facts["gpu_unusable"] is None:
        facts["device"] = device.info().as_dict()
        facts.update(device.toolchain())
        try:
            import torch  # noqa: PLC0415
            facts["cudnn"] = torch.backends.cudnn.version()
        except Exception:  # noqa: BLE001
            pass
    return facts


def _median_ms(fn, repeat: int = 10) -> float:
    """Median CUDA-event milliseconds of ``fn()`` after one warm-up (the autotuner's timer)."""
    from kernels.conv_cuda.select import CudaRunner  # noqa: PLC0415
    return CudaRunner().time(fn, warmup=1, repeat=repeat)


def step_ceilings(out: Path) -> dict:
    """cuBLAS SGEMM at 8192^3 (FP32: CUPY_TF32 is 0) and a 1 GiB device-to-device copy."""
    import cupy as cp  # noqa: PLC0415

    n = 8192
    a = cp.random.standard_normal((n, n), dtype=cp.float32)
    b = cp.random.standard_normal((n, n), dtype=cp.float32)
    c = cp.empty((n, n), cp.float32)
    ms = _median_ms(lambda: cp.matmul(a, b, out=c))
    src = cp.ones(2**28, cp.float32)          # 1 GiB
    dst = cp.empty_like(src)
    ms_copy = _median_ms(lambda: dst.__setitem__(Ellipsis, src))
    return {"sgemm_n": n, "sgemm_ms": round(ms, 3),
            "sgemm_tflops": round(2 * n**3 / (ms * 1e-3) / 1e12, 2),
            "cupy_tf32": os.environ.get("CUPY_TF32", ""),
            "copy_bytes": 2 * src.nbytes, "copy_ms": round(ms_copy, 3),
            "copy_gbs": round(2 * src.nbytes / (ms_copy * 1e-3) / 1e9, 1)}


def _compile_one(source: str) -> tuple:
    from kernels.conv_cuda import device  # noqa: PLC0415
    t0 = time.perf_counter()
    device.module(source)
    return source, round(time.perf_counter() - t0, 2)


def step_compile(out: Path) -> dict:
    """Compile every source's module (all instances) on the device, in parallel processes."""
    from concurrent.futures import ProcessPoolExecutor  # noqa: PLC0415
    import multiprocessing as mp  # noqa: PLC0415

    from kernels.conv_cuda import all_instances  # noqa: PLC0415

    sources = list(all_instances())
    ctx = mp.get_context("spawn")   # children initialise CUDA themselves
    with ProcessPoolExecutor(max_workers=min(len(sources), os.cpu_count() or 1), mp_context=ctx) as ex:
        seconds = dict(ex.map(_compile_one, sources))
    return {"seconds_by_source": seconds,
            "instances": sum(len(v) for v in all_instances().values())}


def step_sanitizer(out: Path) -> dict:
    """compute-sanitizer memcheck and racecheck on the lab's validation of the fast kernels
    at batch 1 on a 7x7 and a 14x14 layer (no timing)."""
    tool = shutil.which("compute-sanitizer") or "/usr/local/cuda/bin/compute-sanitizer"
    lab = [sys.executable, "-m", "kernels.lab", "--no-time", "--check-batch", "1",
           "--versions", "v2,v4", "--all-configs"]
    runs = {"memcheck": lab + ["--only", "inception_5a.conv_3x3"],
            "racecheck": lab + ["--only", "inception_5a.conv_5x5_reduce", "--directions",
                                "fwd,bwd_weight"]}
    res = {}
    for name, cmd in runs.items():
        full = [tool, "--tool", name, "--error-exitcode", "99", *cmd]
        p = subprocess.run(full, cwd=ROOT, text=True, capture_output=True)
        text = p.stdout + p.stderr
        print(text[-20000:])
        summary_line = [ln for ln in text.splitlines() if "ERROR SUMMARY" in ln or
                        "RACECHECK SUMMARY" in ln]
        res[name] = {"rc": p.returncode, "summary": summary_line[-1:] or None}
    res["ok"] = all(r["rc"] == 0 for r in res.values() if isinstance(r, dict))
    if not res["ok"]:
        raise SystemExit(f"compute-sanitizer reported errors: {res}")
    return res


def step_parity(out: Path, steps: int = 3, batch: int = 8, size: int = 64) -> dict:
    """The same GoogLeNet (seed 0, dropout off so both runs are deterministic) trained for a few
    SGD steps on the CPU and on the GPU from one batch: the losses must agree to float32
    accuracy (max relative difference 1e-3 after the accumulated rounding of 57 layers)."""
    import numpy as np  # noqa: PLC0415

    from engine import SGD  # noqa: PLC0415
    from models.googlenet import GoogLeNet, training_loss  # noqa: PLC0415

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, size, size), dtype=np.float32)
    labels = rng.integers(0, 10, batch)
    losses = {}
    for dev in ("cpu", "cuda"):
        model = GoogLeNet(num_classes=10, dropout=0.0, aux_dropout=0.0, seed=0, init="msra")
        xp = np
        if dev == "cuda":
            from engine.backend import require_cuda  # noqa: PLC0415
            xp = require_cuda()
            model.to("cuda")
        opt = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
        xd, ld = xp.asarray(x), xp.asarray(labels)
        vals = []
        for _ in range(steps):
            loss, _ = training_loss(model(xd), ld)
            opt.zero_grad()
            loss.backward()
            opt.step()
            vals.append(float(loss.data))
        losses[dev] = vals
    rel = [abs(a - b) / max(abs(a), 1e-12) for a, b in zip(losses["cpu"], losses["cuda"])]
    res = {"cpu": losses["cpu"], "cuda": losses["cuda"], "max_rel_diff": max(rel),
           "ok": max(rel) < 1e-3}
    if not res["ok"]:
        raise SystemExit(f"CPU and GPU losses differ: {res}")
    return res


STEPS = {"env": step_env, "ceilings": step_ceilings, "compile": step_compile,
         "sanitizer": step_sanitizer, "parity": step_parity}


# ----------------------------------------------------------------------------- CLI


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=(
        "Prove and measure the CUDA half on a GPU in one command with a global deadline; "
        "writes OUTDIR/gpu_check.json, OUTDIR/summary.md and one log per step."))
    ap.add_argument("outdir", help="where the results go (created if missing)")
    ap.add_argument("--budget", type=float, default=480.0,
                    help="global deadline in seconds for all steps (default 480)")
    ap.add_argument("--only", default="", help="comma-separated step names to run")
    ap.add_argument("--dry-run", action="store_true",
                    help="run the steps that need no GPU; record the others as skipped")
    ap.add_argument("--step", choices=sorted(STEPS), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    out = Path(args.outdir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        ap.error(f"cannot create OUTDIR {out}: {exc}")
    if args.step:   # child mode: one inline step, figures to OUTDIR/<step>.json
        figures = STEPS[args.step](out)
        (out / f"{args.step}.json").write_text(json.dumps(figures, indent=1, default=str) + "\n")
        return 0
    names = {s.name for s in plan(out)}
    only = {s for s in args.only.split(",") if s}
    if only - names:
        ap.error(f"unknown step(s) {sorted(only - names)}; steps: {', '.join(s.name for s in plan(out))}")
    if args.budget <= 0:
        ap.error(f"--budget must be positive, got {args.budget}")
    report = run_all(out, args.budget, only or None, args.dry_run)
    failed = [n for n, r in report["steps"].items() if r["status"] in ("failed", "timed out")]
    print(f"gpu_check: wrote {out / 'gpu_check.json'} and {out / 'summary.md'}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
