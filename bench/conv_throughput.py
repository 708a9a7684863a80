"""Throughput of every convolution implementation on every GoogLeNet convolution.

    python -m bench.conv_throughput                         # GPU if usable, else CPU
    python -m bench.conv_throughput --device cpu --batch 2 --only inception_3a
    python -m bench.conv_throughput --json bench/results/h100.json --plot bench/results/h100.png
    python -m bench.conv_throughput --device cpu --keep-openblas-env   # OpenBLAS overrides kept

For each of GoogLeNet's 59 convolutions (``kernels.shapes``) and each direction (forward,
backward to the input, backward to the weights) it times every implementation available here:

  CPU   project-im2col  the project's own ``layers.conv2d`` (im2col + GEMM, NumPy); when
                        ``layers`` cannot be imported, numpy-im2col, the compact im2col + GEMM below
        torch-cpu       torch.nn.functional.conv2d and torch.nn.grad.conv2d_input / conv2d_weight
  GPU   cupy-im2col     the compact im2col + GEMM below on CuPy (GEMMs by cuBLAS)
        custom-vN       each version of the custom kernels (kernels.conv_cuda), heuristic tile
        custom-best     the custom kernels as layers call them: fastest version, autotuned tile
        torch-cudnn-fp32, torch-cudnn-tf32
                        PyTorch / cuDNN with TF32 off and on (cudnn.benchmark on, so cuDNN also
                        picks its fastest algorithm); TF32 rounds inputs to 10-bit mantissas, so it
                        is a different precision class, listed for context

The custom kernels cover the stride-1 "same" 1x1/3x3/5x5 convolutions (all but conv1).

Method: inputs are random normal float32 (never zeros); each measurement is the median of
``--repeat`` runs after ``--warmup`` runs, timed with CUDA events on the GPU and
``time.perf_counter`` on the CPU. The first call of each (implementation, layer, direction) is
timed apart ("first call", which includes kernel compilation or cuDNN's algorithm search).
Throughput counts 2 * MACs floating-point operations; %peak divides by the device's FP32 peak
(SMs x clock x FP32 lanes per SM x 2, about 67 TFLOP/s on an H100 SXM). "vs ref" is the
reference's time over this implementation's time (above 1: faster than the reference), the
reference being torch-cudnn-fp32 on the GPU and torch-cpu on the CPU when present. Totals add
times and FLOPs over the layers that every implementation of the table ran in that direction.

Environment: on the CPU the measurements run in the user's default environment. When
``OPENBLAS_CORETYPE`` or ``OPENBLAS_L2_SIZE`` is set (they override OpenBLAS's choice of
kernels and blocking for the CPU, and OpenBLAS reads them once, when NumPy loads it), the bench
measures in a child process started without them (``--worker``; its progress still shows, the
table and files come from the parent); ``--keep-openblas-env`` measures in this process with
them kept. The JSON's ``openblas_env`` says which were removed or kept and what the measuring
process saw; ``blas`` (and the table's "BLAS" line) the BLAS it loaded, as threadpoolctl reports
it: library, version, the kernels ("architecture") OpenBLAS chose, threads. The GPU path measures
in this process (its GEMMs are cuBLAS's) and records the same.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Make `python bench/conv_throughput.py` work as well as `python -m bench.conv_throughput`.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from bench.environment import (OPENBLAS_OVERRIDES, blas_info, blas_text,  # noqa: E402
                               overrides_seen, user_env, write_report)
from kernels.shapes import ConvShape, googlenet_conv_shapes  # noqa: E402

DIRECTIONS = ("fwd", "bwd_data", "bwd_weight")
FP32_LANES_PER_SM = {(7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128,
                     (9, 0): 128, (10, 0): 128, (12, 0): 128}


# ----------------------------------------------------------------------------- im2col + GEMM


def im2col(xp, x, k: int, stride: int, pad: int):
    """x (N, C, H, W) -> cols (N, C*k*k, OH*OW), cols[n, (c,r,s), (oh,ow)] = xpad[n, c, oh*S+r, ow*S+s]."""
    n, c, h, w = x.shape
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    if k == 1 and stride == 1 and pad == 0:
        return x.reshape(n, c, h * w)
    xpad = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if pad else x
    cols = xp.empty((n, c, k, k, oh, ow), dtype=x.dtype)
    for r in range(k):
        for s in range(k):
            cols[:, :, r, s] = xpad[:, :, r:r + stride * oh:stride, s:s + stride * ow:stride]
    return cols.reshape(n, c * k * k, oh * ow)


def col2im(xp, cols, x_shape, k: int, stride: int, pad: int):
    """Adjoint of im2col: scatter-add cols (N, C*k*k, OH*OW) back into (N, C, H, W)."""
    n, c, h, w = x_shape
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    if k == 1 and stride == 1 and pad == 0:
        return cols.reshape(n, c, h, w)
    cols = cols.reshape(n, c, k, k, oh, ow)
    gx = xp.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=cols.dtype)
    for r in range(k):
        for s in range(k):
            gx[:, :, r:r + stride * oh:stride, s:s + stride * ow:stride] += cols[:, :, r, s]
    return gx[:, :, pad:pad + h, pad:pad + w]


def im2col_conv(xp, direction, shape: ConvShape, arrays):
    """A closure computing one direction with im2col + batched GEMM on array module xp."""
    k, st, pd = shape.k, shape.stride, shape.pad
    x, w, gy = arrays["x"], arrays["w"], arrays["gy"]
    w2 = w.reshape(w.shape[0], -1)                       # (K, C*k*k)
    n = x.shape[0]
    gy3 = gy.reshape(n, gy.shape[1], -1)                 # (N, K, OH*OW)
    if direction == "fwd":
        return lambda: xp.matmul(w2, im2col(xp, x, k, st, pd))
    if direction == "bwd_data":
        return lambda: col2im(xp, xp.matmul(w2.T, gy3), x.shape, k, st, pd)
    return lambda: xp.tensordot(gy3, im2col(xp, x, k, st, pd), axes=([0, 2], [0, 2]))


# ----------------------------------------------------------------------------- implementations


@dataclass
class Impl:
    """One implementation: ``prepare(direction, shape, arrays) -> fn`` builds the timed call."""

    name: str
    device: str            # "cpu" or "cuda"
    timer: str             # "cpu", "cupy" or "torch"
    prepare: object
    covers: object = None  # (shape, direction) -> bool; None: everything
    note: str = ""


def _project_impl():
    """The project's layers.conv2d (im2col path), or None and the reason."""
    try:
        from layers.conv import Conv2dFunction  # noqa: PLC0415
    except Exception as exc:  # noqa: BLE001
        return None, f"layers.conv2d is not importable ({type(exc).__name__}: {exc})"

    def prepare(direction, shape, a):
        try:
            f = Conv2dFunction(shape.stride, shape.pad, impl="im2col")
        except TypeError:
            f = Conv2dFunction(shape.stride, shape.pad)
        f.needs_grad = (direction == "bwd_data", direction == "bwd_weight")
        if direction == "fwd":
            return lambda: f.forward(a["x"], a["w"])
        f.forward(a["x"], a["w"])  # keeps x and w for backward; not timed
        return lambda: f.backward(a["gy"])

    return Impl("project-im2col", "cpu", "cpu", prepare,
                note="layers.conv2d (Conv2dFunction, im2col + NumPy GEMM)"), ""


def _numpy_impl():
    def prepare(direction, shape, a):
        return im2col_conv(np, direction, shape, a)
    return Impl("numpy-im2col", "cpu", "cpu", prepare, note="bench's compact im2col + NumPy GEMM")


def _torch_impls(device: str):
    """PyTorch peers for the device, or [] and the reason."""
    try:
        import torch  # noqa: PLC0415
        import torch.nn.functional as F  # noqa: PLC0415
        from torch.nn.grad import conv2d_input, conv2d_weight  # noqa: PLC0415
    except Exception as exc:  # noqa: BLE001
        return [], f"PyTorch is not importable ({type(exc).__name__}: {exc})"

    def make(tdev, tf32):
        def prepare(direction, shape, a):
            if tdev == "cuda":
                torch.backends.cudnn.benchmark = True
                torch.backends.cudnn.allow_tf32 = tf32
                torch.backends.cuda.matmul.allow_tf32 = tf32
            x = torch.from_numpy(a["x_host"]).to(tdev)
            w = torch.from_numpy(a["w_host"]).to(tdev)
            gy = torch.from_numpy(a["gy_host"]).to(tdev)
            st, pd = shape.stride, shape.pad

            def run():
                with torch.no_grad():
                    if direction == "fwd":
                        return F.conv2d(x, w, None, st, pd)
                    if direction == "bwd_data":
                        return conv2d_input(x.shape, w, gy, st, pd)
                    return conv2d_weight(x, w.shape, gy, st, pd)

            if tdev == "cuda":
                def run_tf32_pinned():
                    # Other impls may flip the global flags between our runs: set them each call.
                    torch.backends.cudnn.allow_tf32 = tf32
                    torch.backends.cuda.matmul.allow_tf32 = tf32
                    return run()
                return run_tf32_pinned
            return run
        return prepare

    if device == "cpu":
        return [Impl("torch-cpu", "cpu", "cpu", make("cpu", False),
                     note=f"torch {torch.__version__} CPU, {torch.get_num_threads()} threads")], ""
    if not torch.cuda.is_available():
        return [], f"torch {torch.__version__} has no CUDA device"
    return [
        Impl("torch-cudnn-fp32", "cuda", "torch", make("cuda", False), note="cuDNN, TF32 off"),
        Impl("torch-cudnn-tf32", "cuda", "torch", make("cuda", True), note="cuDNN, TF32 on"),
    ], ""


def _cuda_impls():
    from kernels import conv_cuda  # noqa: PLC0415
    import cupy as cp  # noqa: PLC0415

    impls = [Impl("cupy-im2col", "cuda", "cupy",
                  lambda d, s, a: im2col_conv(cp, d, s, a), note="im2col + cuBLAS GEMM on CuPy")]

    def covers(shape, direction):
        return shape.same_stride1()

    def version_impl(version_of):
        def prepare(direction, shape, a):
            version = version_of(direction)
            prob = shape.problem(a["x"].shape[0])
            cfg = conv_cuda.default_config(direction, version, prob, conv_cuda.device_sm_count())
            bufs = {"fwd": {"x": a["x"], "w": a["w"]}, "bwd_data": {"gy": a["gy"], "w": a["w"]},
                    "bwd_weight": {"x": a["x"], "gy": a["gy"]}}[direction]
            pl = conv_cuda.plan(direction, version, cfg, prob, sm_count=conv_cuda.device_sm_count())
            return lambda: conv_cuda.execute(pl, bufs)
        return prepare

    all_versions = sorted({v for d in DIRECTIONS for v in conv_cuda.versions(d)})
    for v in all_versions:
        def cov(shape, direction, v=v):
            return covers(shape, direction) and v in conv_cuda.versions(direction)
        impls.append(Impl(f"custom-{v}", "cuda", "cupy", version_impl(lambda d, v=v: v), cov,
                          note="kernels.conv_cuda version " + v + " (heuristic tile)"))

    def best(direction, shape, a):
        if direction == "fwd":
            return lambda: conv_cuda.conv_forward(a["x"], a["w"])
        if direction == "bwd_data":
            return lambda: conv_cuda.conv_backward_data(a["gy"], a["w"])
        return lambda: conv_cuda.conv_backward_weight(a["x"], a["gy"], shape.k)

    impls.append(Impl("custom-best", "cuda", "cupy", best, covers,
                      note="conv_cuda public API, version=None (fastest version, autotuned tile)"))
    return impls


def cuda_usable() -> str | None:
    """None when CuPy can run kernels here, else why not (the kernels' one probe)."""
    from kernels.conv_cuda.device import unusable_reason  # noqa: PLC0415
    return unusable_reason()


# ----------------------------------------------------------------------------- device facts


def device_facts(device: str) -> dict:
    if device == "cpu":
        name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        return {"name": name, "cores": os.cpu_count(), "peak_tflops": None}
    from kernels.conv_cuda import device  # noqa: PLC0415

    # Device().compute_capability ('90'): CuPy does not export the cudaDevAttrComputeCapability*
    # constants, so reading them would fail before anything is measured.
    fact = device.info()
    cc = fact.compute_capability
    lanes = FP32_LANES_PER_SM.get(cc, 128)
    clock = fact.clock_mhz
    peak = fact.sm_count * clock * 1e6 * lanes * 2 / 1e12 if clock else None
    return {"name": fact.name, "sm_count": fact.sm_count, "clock_mhz": clock,
            "compute_capability": f"{cc[0]}.{cc[1]}", "fp32_lanes_per_sm": lanes,
            "peak_tflops": round(peak, 2) if peak else None}


def software_versions() -> dict:
    out = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        import cupy as cp  # noqa: PLC0415
        out["cupy"] = cp.__version__
        try:
            out["cuda_runtime"] = cp.cuda.runtime.runtimeGetVersion()
            out["cuda_driver"] = cp.cuda.runtime.driverGetVersion()
        except Exception:  # noqa: BLE001
            pass
    except Exception:  # noqa: BLE001
        out["cupy"] = None
    try:
        import torch  # noqa: PLC0415
        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version() if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001
        out["torch"] = None
    return out


# ----------------------------------------------------------------------------- timing


def _timer(kind: str):
    """(sync, measure(fn) -> ms) for one timer kind."""
    if kind == "cpu":
        def measure(fn):
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        return (lambda: None), measure
    if kind == "cupy":
        import cupy as cp  # noqa: PLC0415
        start, end = cp.cuda.Event(), cp.cuda.Event()

        def measure(fn):
            start.record()
            fn()
            end.record()
            end.synchronize()
            return cp.cuda.get_elapsed_time(start, end)
        return (lambda: cp.cuda.Device().synchronize()), measure
    import torch  # noqa: PLC0415
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

    def measure(fn):
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    return torch.cuda.synchronize, measure


@dataclass
class Row:
    layer: str
    direction: str
    impl: str
    ms: float
    first_call_ms: float
    flops: int
    min_bytes: int
    error: str = ""
    extra: dict = field(default_factory=dict)


def _arrays_for(impl: Impl, host: dict, cache: dict):
    """Device copies of the host inputs for an implementation (shared per device kind)."""
    if impl.timer == "torch":
        return {"x_host": host["x"], "w_host": host["w"], "gy_host": host["gy"]}
    if impl.device == "cpu":
        return {**host, "x_host": host["x"], "w_host": host["w"], "gy_host": host["gy"]}
    if "cupy" not in cache:
        import cupy as cp  # noqa: PLC0415
        cache["cupy"] = {k: cp.asarray(v) for k, v in host.items()}
    return cache["cupy"]


def run(args, out=None, err=None) -> dict:
    """Measure everything selected by ``args``; print the table; return the JSON-ready report.

    On the CPU the measurement runs in a child process started without the OpenBLAS overrides
    (``user_env``) when this process has any, unless ``--keep-openblas-env``: OpenBLAS read
    them when this process loaded it, so only a fresh process measures the user's default."""
    out = sys.stdout if out is None else out
    present = {k: os.environ[k] for k in OPENBLAS_OVERRIDES if k in os.environ}
    removed = sorted(present) if args.device == "cpu" and not args.keep_openblas_env else []
    measured = measure_in_user_env(args) if removed else measure(args, err)
    report = {"command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name, "-m",
                                                           "bench.conv_throughput", *args.argv]),
              **measured}
    report["openblas_env"] = {"removed": removed,
                              "kept": {k: v for k, v in present.items() if k not in removed},
                              **measured["openblas_env"]}
    _print_table(report, out)
    return report


def measure_in_user_env(args) -> dict:
    """``measure(args)`` in a child process whose environment lacks the OpenBLAS overrides
    (its progress goes to our stderr; its report comes back as the last line of its stdout)."""
    cmd = [sys.executable, "-m", "bench.conv_throughput", *args.argv, "--device", "cpu",
           "--worker"]
    env = user_env()
    env["PYTHONPATH"] = str(_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, cwd=_ROOT, env=env, stdout=subprocess.PIPE, text=True)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"the measuring process failed (exit status {proc.returncode}); "
                         "its error is above")
    return json.loads(lines[-1])


def measure(args, err=None) -> dict:
    """Time every selected (layer, direction, implementation) in this process; the report
    without the command line, with the BLAS this process loaded and the overrides it saw."""
    err = sys.stderr if err is None else err
    device = args.device
    notes = []
    impls: list[Impl] = []
    if device == "cpu":
        proj, why = _project_impl()
        if proj is not None:
            impls.append(proj)
        else:
            notes.append(f"{why}; using the bench's own numpy-im2col instead")
            impls.append(_numpy_impl())
        tim, why = _torch_impls("cpu")
        impls += tim
        if why:
            notes.append(why)
    else:
        impls += _cuda_impls()
        tim, why = _torch_impls("cuda")
        impls += tim
        if why:
            notes.append(why)
    if args.impls:
        wanted = [s for s in args.impls.split(",") if s]
        impls = [i for i in impls if any(s in i.name for s in wanted)]
    directions = [d for d in args.directions.split(",") if d]
    shapes = [s for s in googlenet_conv_shapes() if not args.only or args.only in s.name]

    facts = device_facts(device)
    ref_name = next((n for n in ("torch-cudnn-fp32", "torch-cpu") if any(i.name == n for i in impls)),
                    impls[0].name if impls else None)
    rng = np.random.default_rng(args.seed)
    rows: list[Row] = []
    total_jobs = sum(1 for s in shapes for d in directions for i in impls
                     if i.covers is None or i.covers(s, d))
    job = 0
    t_start = time.perf_counter()
    for shape in shapes:
        b = args.batch
        host = {
            "x": rng.standard_normal((b, shape.c_in, shape.h, shape.w), dtype=np.float32),
            "w": rng.standard_normal((shape.c_out, shape.c_in, shape.k, shape.k), dtype=np.float32),
            "gy": rng.standard_normal((b, shape.c_out, shape.h_out, shape.w_out), dtype=np.float32),
        }
        dev_cache: dict = {}
        for direction in directions:
            for impl in impls:
                if impl.covers is not None and not impl.covers(shape, direction):
                    continue
                job += 1
                print(f"[{job}/{total_jobs} {time.perf_counter() - t_start:6.1f}s] "
                      f"{shape.name} {direction} {impl.name}", file=err, flush=True)
                row = Row(shape.name, direction, impl.name, math.nan, math.nan,
                          shape.flops(b), shape.min_bytes(b, direction))
                try:
                    sync, measure = _timer(impl.timer)
                    fn = impl.prepare(direction, shape, _arrays_for(impl, host, dev_cache))
                    sync()
                    t0 = time.perf_counter()
                    fn()
                    sync()
                    row.first_call_ms = (time.perf_counter() - t0) * 1e3
                    for _ in range(args.warmup):
                        fn()
                    sync()
                    row.ms = statistics.median(measure(fn) for _ in range(max(1, args.repeat)))
                except Exception as exc:  # noqa: BLE001  (one failure must not end the run)
                    row.error = f"{type(exc).__name__}: {exc}"[:300]
                rows.append(row)
        dev_cache.clear()
        if device == "cuda":
            try:
                import cupy as cp  # noqa: PLC0415
                cp.get_default_memory_pool().free_all_blocks()
            except Exception:  # noqa: BLE001
                pass

    report = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": device,
        "device_facts": facts,
        "versions": software_versions(),
        "blas": blas_info(),
        "openblas_env": {"measured_process": overrides_seen()},
        "batch": args.batch,
        "repeat": args.repeat,
        "warmup": args.warmup,
        "directions": directions,
        "reference_impl": ref_name,
        "implementations": {i.name: i.note for i in impls},
        "notes": notes,
        "results": [],
        "totals": {},
    }
    ref_ms = {(r.layer, r.direction): r.ms for r in rows if r.impl == ref_name and not r.error}
    peak = facts.get("peak_tflops")
    for r in rows:
        ok = not r.error and r.ms > 0
        rate = r.flops / (r.ms * 1e-3) / 1e12 if ok else None
        ref = ref_ms.get((r.layer, r.direction))
        report["results"].append({
            "layer": r.layer, "direction": r.direction, "impl": r.impl,
            "ms": r.ms if ok else None, "first_call_ms": r.first_call_ms if ok else None,
            "flops": r.flops, "min_bytes": r.min_bytes,
            "tflops": rate, "pct_peak": (100 * rate / peak) if (rate and peak) else None,
            "vs_ref": (ref / r.ms) if (ok and ref) else None, "error": r.error or None,
        })
    report["totals"] = _totals(rows, impls, directions, ref_name, peak)
    return _finite(report)


def _totals(rows, impls, directions, ref_name, peak) -> dict:
    """Per direction and implementation: summed ms and FLOPs over the layers all impls ran."""
    totals = {}
    for d in directions:
        by_impl = {}
        for i in impls:
            done = {r.layer: r for r in rows if r.direction == d and r.impl == i.name
                    and not r.error and r.ms > 0}
            if done:
                by_impl[i.name] = done
        if not by_impl:
            continue
        common = set.intersection(*(set(v) for v in by_impl.values()))
        entry = {"layers": sorted(common), "impls": {}}
        ref_total = None
        if ref_name in by_impl and common:
            ref_total = sum(by_impl[ref_name][layer].ms for layer in common)
        for name, done in by_impl.items():
            ms = sum(done[layer].ms for layer in common)
            flops = sum(done[layer].flops for layer in common)
            rate = flops / (ms * 1e-3) / 1e12 if ms > 0 else None
            entry["impls"][name] = {
                "ms": ms, "flops": flops, "tflops": rate,
                "pct_peak": (100 * rate / peak) if (rate and peak) else None,
                "vs_ref": (ref_total / ms) if (ref_total and ms) else None,
                "first_call_ms": sum(done[layer].first_call_ms for layer in common),
            }
        totals[d] = entry
    return totals


def _fmt(v, spec, missing="-"):
    return missing if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def _print_table(report, out):
    gpu = report["device"] == "cuda"
    unit, scale = ("TFLOP/s", 1.0) if gpu else ("GFLOP/s", 1e3)
    facts = report["device_facts"]
    print(f"\nconvolution throughput: device {report['device']} ({facts.get('name')}), batch "
          f"{report['batch']}, median of {report['repeat']} after {report['warmup']} warm-up runs",
          file=out)
    if gpu and facts.get("peak_tflops"):
        print(f"FP32 peak {facts['peak_tflops']} TFLOP/s ({facts['sm_count']} SMs x "
              f"{facts['clock_mhz']:.0f} MHz x {facts['fp32_lanes_per_sm']} lanes x 2)", file=out)
    print(f"environment: {_overrides_text(report['openblas_env'])}", file=out)
    print("BLAS: " + ("; ".join(blas_text(lib) for lib in report["blas"]) or "none found"),
          file=out)
    print(f"vs ref = {report['reference_impl']} time / this time (>1 is faster)", file=out)
    for n in report["notes"]:
        print(f"note: {n}", file=out)
    head = f"{'layer':32} {'dir':10} {'impl':18} {'ms':>10} {unit:>8} "
    head += f"{'%peak':>6} " if gpu else ""
    head += f"{'vs ref':>7} {'1st call ms':>11}"
    print("\n" + head, file=out)
    print("-" * len(head), file=out)
    for r in report["results"]:
        line = f"{r['layer']:32} {r['direction']:10} {r['impl']:18} "
        if r["error"]:
            print(line + f"ERROR {r['error'][:80]}", file=out)
            continue
        line += f"{_fmt(r['ms'], '10.3f')} {_fmt(r['tflops'] and r['tflops'] * scale, '8.2f')} "
        line += f"{_fmt(r['pct_peak'], '6.1f')} " if gpu else ""
        line += f"{_fmt(r['vs_ref'], '7.2f')} {_fmt(r['first_call_ms'], '11.1f')}"
        print(line, file=out)
    print("\ntotals (FLOP-weighted: summed FLOPs / summed time over the layers every "
          "implementation ran)", file=out)
    head = f"{'dir':10} {'impl':18} {'layers':>6} {'ms':>10} {unit:>8} "
    head += f"{'%peak':>6} " if gpu else ""
    head += f"{'vs ref':>7} {'1st calls ms':>12}"
    print(head, file=out)
    print("-" * len(head), file=out)
    for d, entry in report["totals"].items():
        for name, t in entry["impls"].items():
            line = f"{d:10} {name:18} {len(entry['layers']):6d} {t['ms']:10.3f} "
            line += f"{_fmt(t['tflops'] and t['tflops'] * scale, '8.2f')} "
            line += f"{_fmt(t['pct_peak'], '6.1f')} " if gpu else ""
            line += f"{_fmt(t['vs_ref'], '7.2f')} {t['first_call_ms']:12.1f}"
            print(line, file=out)


def _overrides_text(env: dict) -> str:
    """'OpenBLAS overrides removed (user default): OPENBLAS_CORETYPE' and the like."""
    parts = []
    if env["removed"]:
        parts.append("removed (user default): " + ", ".join(env["removed"]))
    if env["kept"]:
        parts.append("kept: " + ", ".join(f"{k}={v}" for k, v in env["kept"].items()))
    return "OpenBLAS overrides " + ("; ".join(parts) or "none set")


# ----------------------------------------------------------------------------- plot


def plot(report: dict, path: str) -> None:
    """Horizontal bars of FLOP-weighted total throughput, one group per direction (Pillow)."""
    from PIL import Image, ImageDraw, ImageFont  # noqa: PLC0415

    gpu = report["device"] == "cuda"
    unit, scale = ("TFLOP/s", 1.0) if gpu else ("GFLOP/s", 1e3)
    groups = [(d, [(n, (t["tflops"] or 0) * scale) for n, t in e["impls"].items()])
              for d, e in report["totals"].items()]
    bar_h, gap, left, right, top = 22, 18, 190, 110, 60
    n_bars = sum(len(b) for _, b in groups)
    height = top + n_bars * bar_h + len(groups) * (gap + 22) + 40
    width = 900
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    vmax = max([v for _, bars in groups for _, v in bars] + [1e-9])
    title = (f"Convolution throughput, GoogLeNet, batch {report['batch']}, "
             f"{report['device_facts'].get('name')} ({report['date']})")
    draw.text((10, 10), title, fill="black", font=font)
    draw.text((10, 28), f"FLOP-weighted totals over common layers, {unit}", fill="gray", font=font)
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
               "#8c8c8c", "#ccb974", "#64b5cd"]
    names = sorted({n for _, bars in groups for n, _ in bars})
    color = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    y = top
    span = width - left - right
    for direction, bars in groups:
        draw.text((10, y), direction, fill="black", font=font)
        y += 20
        for name, v in bars:
            draw.text((20, y + 5), name, fill="black", font=font)
            w = int(span * v / vmax)
            draw.rectangle([left, y + 2, left + max(w, 1), y + bar_h - 4], fill=color[name])
            draw.text((left + w + 6, y + 5), f"{v:.2f}", fill="black", font=font)
            y += bar_h
        y += gap
    peak = report["device_facts"].get("peak_tflops")
    if gpu and peak:
        draw.text((10, height - 25), f"FP32 peak {peak} TFLOP/s", fill="gray", font=font)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(
        prog="python -m bench.conv_throughput",
        description="Time every convolution implementation (NumPy/project im2col, PyTorch CPU, "
                    "CuPy im2col + cuBLAS, each custom CUDA kernel version, cuDNN with TF32 off "
                    "and on) on every GoogLeNet convolution, forward and both backward directions.",
        epilog="Columns: ms = median time; TFLOP/s (GPU) or GFLOP/s (CPU) = 2*MACs / time; "
               "%%peak = share of the GPU's FP32 peak; vs ref = reference time / this time; "
               "1st call = the untimed first call (compilation, algorithm search). "
               "Totals are FLOP-weighted over the layers every implementation ran.")
    ap.add_argument("--device", choices=("cpu", "cuda"), default=None,
                    help="where to run (default: cuda when CuPy can launch kernels, else cpu)")
    ap.add_argument("--batch", type=int, default=None, help="batch size (default 128 on GPU, 8 on CPU)")
    ap.add_argument("--directions", default=",".join(DIRECTIONS),
                    help="comma-separated subset of fwd,bwd_data,bwd_weight (default: all)")
    ap.add_argument("--only", default="",
                    help="only layers whose name contains this text, e.g. inception_3a or conv_5x5")
    ap.add_argument("--impls", default="",
                    help="only implementations whose name contains one of these comma-separated "
                         "texts, e.g. custom,cudnn-fp32")
    ap.add_argument("--repeat", type=int, default=None,
                    help="timed runs per measurement, median reported (default 20 GPU, 3 CPU)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed runs before timing (default 3 GPU, 1 CPU)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random inputs")
    ap.add_argument("--json", metavar="PATH", help="write the full report (results, totals, "
                    "device, versions, command line) as JSON")
    ap.add_argument("--plot", metavar="PATH", help="write a PNG bar chart of the totals")
    ap.add_argument("--keep-openblas-env", action="store_true",
                    help="on the CPU, measure with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE as "
                         "this environment sets them; default: in a process without them, as "
                         "users' processes are")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.argv = argv
    if args.device is None:
        args.device = "cuda" if cuda_usable() is None else "cpu"
    elif args.device == "cuda":
        why = cuda_usable()
        if why is not None:
            ap.error(f"--device cuda, but CUDA is not usable here: {why}")
    gpu = args.device == "cuda"
    if args.batch is None:
        args.batch = 128 if gpu else 8
    if args.repeat is None:
        args.repeat = 20 if gpu else 3
    if args.warmup is None:
        args.warmup = 3 if gpu else 1
    if args.batch < 1 or args.repeat < 1 or args.warmup < 0:
        ap.error("--batch and --repeat must be >= 1, --warmup >= 0")
    unknown = [d for d in args.directions.split(",") if d and d not in DIRECTIONS]
    if unknown:
        ap.error(f"unknown direction {unknown[0]!r}; expected some of {','.join(DIRECTIONS)}")
    if not any(not args.only or args.only in s.name for s in googlenet_conv_shapes()):
        ap.error(f"no GoogLeNet convolution matches --only {args.only!r}")
    return args


def _finite(obj):
    """NaN/inf -> None, recursively, so the JSON file is strict JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:      # the measuring child of measure_in_user_env: the report, one line
        print(json.dumps(measure(args), default=str))
        return 0
    report = run(args)
    if args.json:
        print()
        write_report(args.json, report)
    if args.plot:
        plot(report, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
