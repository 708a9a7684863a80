"""The kernel lab's harness: NumPy reference, validation with poisoned outputs, timing.

    python -m kernels.lab                     # GPU: validate, then time, every version on GoogLeNet
    python -m kernels.lab --emu               # CPU: validate every version on tiny shapes (emulated)
    python -m kernels.lab --only inception_4e --directions fwd --all-configs

Reference (float64, no Python loop over pixels): for a k x k kernel the convolution is a sum of
k*k shifted 1x1 convolutions, one ``tensordot`` over channels per tap (r, s):

    fwd        y[:, :, h, v]  += w[:, :, r, s] . xpad[:, :, h+r, v+s]         (sum over c)
    bwd_data   gxpad[:, :, h+r, v+s] += w[:, :, r, s]^T . gy[:, :, h, v]      (sum over k)
    bwd_weight gw[:, :, r, s] = sum_{n,h,v} gy[n, :, h, v] (x) xpad[n, :, h+r, v+s]

with xpad the input zero-padded by P = k // 2 on each side.

Validation draws fresh random float32 inputs, fills the output with NaN, runs the kernel, and
reports rel = ||out - ref|| / ||ref||. Passing needs no NaN left and rel below a tolerance that
grows with the reduction length L as float32 rounding does: max(1e-5, 4 * 2^-24 * sqrt(L)).
Timing is the median of CUDA-event times after warm-up.
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
from dataclasses import dataclass

import numpy as np

from . import conv_cuda
from .conv_cuda import DIRECTIONS, Problem

EPS32 = 2.0 ** -24


# ----------------------------------------------------------------------------- reference


def _pad(a, p):
    return np.pad(a, ((0, 0), (0, 0), (p, p), (p, p))) if p else a


def ref_forward(x, w, b=None, relu=False, dtype=np.float64):
    """y (N, K, H, W) = conv(x (N, C, H, W), w (K, C, k, k)) + b, stride 1, pad k // 2."""
    x = np.asarray(x, dtype)
    w = np.asarray(w, dtype)
    n, c, h, wd = x.shape
    k, _, ks, _ = w.shape
    p = ks // 2
    xp = _pad(x, p)
    y = np.zeros((k, n, h, wd), dtype)
    for r in range(ks):
        for s in range(ks):
            # (K, C) . (N, C, H, W) over C -> (K, N, H, W)
            y += np.tensordot(w[:, :, r, s], xp[:, :, r:r + h, s:s + wd], axes=([1], [1]))
    y = y.transpose(1, 0, 2, 3)
    if b is not None:
        y = y + np.asarray(b, dtype).reshape(1, k, 1, 1)
    if relu:
        y = np.maximum(y, 0)
    return np.ascontiguousarray(y)


def ref_backward_data(gy, w, dtype=np.float64):
    """gx (N, C, H, W) from gy (N, K, H, W) and w (K, C, k, k) (stride 1, pad k // 2)."""
    gy = np.asarray(gy, dtype)
    w = np.asarray(w, dtype)
    n, k, h, wd = gy.shape
    _, c, ks, _ = w.shape
    p = ks // 2
    gxp = np.zeros((c, n, h + 2 * p, wd + 2 * p), dtype)
    for r in range(ks):
        for s in range(ks):
            # (K, C) . (N, K, H, W) over K -> (C, N, H, W)
            gxp[:, :, r:r + h, s:s + wd] += np.tensordot(w[:, :, r, s], gy, axes=([0], [1]))
    return np.ascontiguousarray(gxp[:, :, p:p + h, p:p + wd].transpose(1, 0, 2, 3))


def ref_backward_weight(x, gy, ksize, dtype=np.float64):
    """gw (K, C, k, k) from x (N, C, H, W) and gy (N, K, H, W) (stride 1, pad k // 2)."""
    x = np.asarray(x, dtype)
    gy = np.asarray(gy, dtype)
    n, c, h, wd = x.shape
    k = gy.shape[1]
    p = ksize // 2
    xp = _pad(x, p)
    gw = np.zeros((k, c, ksize, ksize), dtype)
    for r in range(ksize):
        for s in range(ksize):
            gw[:, :, r, s] = np.tensordot(gy, xp[:, :, r:r + h, s:s + wd], axes=([0, 2, 3], [0, 2, 3]))
    return gw


def ref_backward_bias(gy, dtype=np.float64):
    return np.asarray(gy, dtype).sum(axis=(0, 2, 3))


# ----------------------------------------------------------------------------- inputs


def make_inputs(direction: str, problem: Problem, seed: int = 0, bias: bool = True) -> dict:
    """Random float32 inputs (standard normal, never zeros) for one direction, by buffer name."""
    rng = np.random.default_rng(seed)
    s = problem.shapes()

    def draw(name):
        return rng.standard_normal(s[name], dtype=np.float32)

    if direction == "fwd":
        out = {"x": draw("x"), "w": draw("w")}
        if bias:
            out["b"] = draw("b")
        return out
    if direction == "bwd_data":
        return {"gy": draw("gy"), "w": draw("w")}
    if direction == "bwd_weight":
        return {"x": draw("x"), "gy": draw("gy")}
    raise ValueError(f"unknown direction {direction!r}")


def reference(direction: str, problem: Problem, inputs: dict, relu: bool = False) -> np.ndarray:
    if direction == "fwd":
        return ref_forward(inputs["x"], inputs["w"], inputs.get("b"), relu)
    if direction == "bwd_data":
        return ref_backward_data(inputs["gy"], inputs["w"])
    return ref_backward_weight(inputs["x"], inputs["gy"], problem.ksize)


def reduction_length(direction: str, problem: Problem) -> int:
    """Terms summed per output element: C*k*k (fwd), K*k*k (bwd_data), N*H*W (bwd_weight)."""
    if direction == "fwd":
        return problem.crs
    if direction == "bwd_data":
        return problem.k * problem.ksize ** 2
    return problem.pixels


def tolerance(direction: str, problem: Problem) -> float:
    return max(1e-5, 4 * EPS32 * math.sqrt(reduction_length(direction, problem)))


def rel_error(out, ref) -> float:
    """||out - ref|| / ||ref|| in float64; inf when out has a NaN or inf."""
    out = np.asarray(out, np.float64)
    if not np.all(np.isfinite(out)):
        return math.inf
    denom = np.linalg.norm(ref)
    return float(np.linalg.norm(out - ref) / (denom if denom > 0 else 1.0))


# ----------------------------------------------------------------------------- validate / time


@dataclass
class Check:
    direction: str
    version: str
    config: tuple
    problem: Problem
    rel: float
    tol: float
    unwritten: int  # output elements still NaN

    @property
    def ok(self) -> bool:
        return self.unwritten == 0 and self.rel < self.tol


def _as_problem(shape) -> Problem:
    if isinstance(shape, Problem):
        return shape
    return Problem(*(int(v) for v in shape))


def validate(direction: str, version: str, shape, config=None, *, backend: str = "cuda",
             seed: int = 0, relu: bool = True, bias: bool = True, sm_count: int | None = None) -> Check:
    """Run one kernel version on random inputs with a NaN-poisoned output; compare to float64.

    ``shape`` is a Problem or (N, C, H, W, K, k). ``backend`` is "cuda" (CuPy, synchronising
    after every launch) or "emu" (kernels.emu on the CPU). The forward check uses a bias and
    ReLU by default, so the fused epilogue is covered too.
    """
    problem = _as_problem(shape)
    if config is None:
        config = conv_cuda.default_config(direction, version, problem)
    inputs = make_inputs(direction, problem, seed, bias=bias)
    relu = relu and direction == "fwd"
    if backend == "emu":
        from . import emu  # noqa: PLC0415
        pl = conv_cuda.plan(direction, version, config, problem, has_bias="b" in inputs,
                            relu=relu, sm_count=sm_count or 8)
        out = emu.execute(pl, inputs, poison=True)
    elif backend == "cuda":
        import cupy as cp  # noqa: PLC0415
        dev = {k: cp.asarray(v) for k, v in inputs.items()}
        pl = conv_cuda.plan(direction, version, config, problem, has_bias="b" in inputs, relu=relu,
                            aligned=all(a.data.ptr % 16 == 0 for a in dev.values()),
                            sm_count=sm_count or conv_cuda.device_sm_count())
        out = cp.asnumpy(conv_cuda.execute(pl, dev, poison=True, check=True))
    else:
        raise ValueError(f"unknown backend {backend!r} (expected 'cuda' or 'emu')")
    ref = reference(direction, problem, inputs, relu)
    return Check(direction, version, tuple(config), problem, rel_error(out, ref),
                 tolerance(direction, problem), int(np.isnan(out).sum()))


def time(direction: str, version: str, shape, config=None, *, warmup: int = 3, repeat: int = 20,
         seed: int = 0) -> float:
    """Median milliseconds of one kernel version (all its launches) on the GPU, CUDA events."""
    import cupy as cp  # noqa: PLC0415

    problem = _as_problem(shape)
    if config is None:
        config = conv_cuda.default_config(direction, version, problem, conv_cuda.device_sm_count())
    dev = {k: cp.asarray(v) for k, v in make_inputs(direction, problem, seed).items()}
    pl = conv_cuda.plan(direction, version, config, problem, has_bias="b" in dev,
                        relu=direction == "fwd", sm_count=conv_cuda.device_sm_count())
    out = conv_cuda.execute(pl, dev)
    start, end = cp.cuda.Event(), cp.cuda.Event()
    for _ in range(warmup):
        conv_cuda.execute(pl, dev, out=out)
    times = []
    for _ in range(repeat):
        start.record()
        conv_cuda.execute(pl, dev, out=out)
        end.record()
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end))
    return statistics.median(times)


# ----------------------------------------------------------------------------- CLI

EMU_SHAPES = (  # tiny, with channel counts off the tiles, batch 1, 1x1 spatial, split-K
    Problem(2, 5, 3, 7, 6, 3), Problem(1, 8, 4, 4, 12, 1), Problem(2, 4, 6, 6, 9, 5),
    Problem(1, 3, 1, 1, 2, 3), Problem(2, 20, 9, 9, 70, 3), Problem(3, 36, 8, 8, 40, 1),
)


def _gpu_status() -> str | None:
    """None when a CUDA device is usable through CuPy, else the reason why not."""
    return conv_cuda.unusable_reason()


def _select(args):
    from .shapes import googlenet_conv_shapes  # noqa: PLC0415

    shapes = [s for s in googlenet_conv_shapes() if s.same_stride1()]
    if args.only:
        shapes = [s for s in shapes if args.only in s.name]
    directions = [d for d in args.directions.split(",") if d]
    for d in directions:
        if d not in DIRECTIONS:
            raise SystemExit(f"unknown direction {d!r}; expected some of {','.join(DIRECTIONS)}")
    return shapes, directions


def _run_emu(args, directions) -> int:
    from . import emu  # noqa: PLC0415

    if not emu.available():
        print("kernels.lab --emu needs g++ (C++20); none was found.", file=sys.stderr)
        return 2
    failures = 0
    print(f"{'direction':10} {'version':7} {'config':16} {'problem (N,C,H,W,K,k)':26} {'rel err':>9}  ok")
    for d in directions:
        for v in conv_cuda.versions(d):
            cfgs = conv_cuda.configs(d, v) if args.all_configs else conv_cuda.configs(d, v)[:1]
            for cfg in cfgs:
                for prob in EMU_SHAPES:
                    chk = validate(d, v, prob, cfg, backend="emu", seed=args.seed)
                    failures += not chk.ok
                    print(f"{d:10} {v:7} {conv_cuda.config_name(cfg):16} {str(prob.as_tuple()):26} "
                          f"{chk.rel:9.2e}  {'yes' if chk.ok else 'NO (%d unwritten)' % chk.unwritten}",
                          flush=True)
    print(f"\n{'all passed' if not failures else f'{failures} FAILED'} (CPU emulation)")
    return 1 if failures else 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m kernels.lab", description=(
        "Validate every kernel version against the float64 NumPy reference (NaN-poisoned outputs), "
        "then time it with CUDA events on GoogLeNet's stride-1 convolutions. Needs a CUDA GPU, "
        "except with --emu, which validates on tiny shapes through the CPU emulation."))
    ap.add_argument("--batch", type=int, default=128, help="batch size for timing (default 128)")
    ap.add_argument("--check-batch", type=int, default=2,
                    help="batch size for validation against NumPy (default 2; float64 on the CPU)")
    ap.add_argument("--directions", default=",".join(DIRECTIONS),
                    help="comma-separated subset of fwd,bwd_data,bwd_weight")
    ap.add_argument("--only", default="", help="only layers whose name contains this text")
    ap.add_argument("--versions", default="", help="comma-separated versions, e.g. v3,v4")
    ap.add_argument("--all-configs", action="store_true",
                    help="every tile config of every version, not just the heuristic's choice")
    ap.add_argument("--repeat", type=int, default=20, help="timed runs per kernel (median)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-time", action="store_true",
                    help="validate only (e.g. under compute-sanitizer, where timings mean nothing)")
    ap.add_argument("--emu", action="store_true",
                    help="validate on the CPU through kernels.emu (tiny shapes, no timing)")
    args = ap.parse_args(argv)

    shapes, directions = _select(args)
    if args.emu:
        return _run_emu(args, directions)
    why = _gpu_status()
    if why is not None:
        print(f"kernels.lab: no GPU to run on: {why}.\nNothing was validated or timed. "
              "On a CPU-only machine, `python -m kernels.lab --emu` validates the kernels "
              "through the CPU emulation.", file=sys.stderr)
        return 2

    wanted = [v for v in args.versions.split(",") if v]
    print(f"device: {conv_cuda.device_name()} ({conv_cuda.device_sm_count()} SMs); "
          f"check batch {args.check_batch}, timing batch {args.batch}", flush=True)
    header = (f"{'layer':32} {'dir':10} {'ver':4} {'config':16} {'rel err':>9} {'ok':3} "
              f"{'ms':>9} {'TFLOP/s':>8}")
    print(header)
    print("-" * len(header))
    failures = 0
    for shape in shapes:
        for d in directions:
            for v in conv_cuda.versions(d):
                if wanted and v not in wanted:
                    continue
                check_prob = shape.problem(args.check_batch)
                time_prob = shape.problem(args.batch)
                cfgs = (conv_cuda.configs(d, v) if args.all_configs
                        else [conv_cuda.default_config(d, v, time_prob, conv_cuda.device_sm_count())])
                for cfg in cfgs:
                    chk = validate(d, v, check_prob, cfg, seed=args.seed)
                    ms = math.nan
                    if not chk.ok:
                        failures += 1
                    elif not args.no_time:
                        ms = time(d, v, time_prob, cfg, warmup=args.warmup, repeat=args.repeat)
                    tflops = 2 * time_prob.macs / (ms * 1e-3) / 1e12
                    print(f"{shape.name:32} {d:10} {v:4} {conv_cuda.config_name(cfg):16} "
                          f"{chk.rel:9.2e} {'yes' if chk.ok else 'NO':3} {ms:9.3f} {tflops:8.2f}",
                          flush=True)
    print(f"\n{'all versions validated' if not failures else f'{failures} FAILED validation'}")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
