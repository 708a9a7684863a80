# Exercise 4. A tiled convolution kernel, v1 -> v2, checked on the CPU through the emulation.
#
# Run from the repository root:   python docs/walkthrough/exercises/ex4_tiled_conv.py
# It prints PASS, or what is wrong. Needs g++ (C++20); without it, do exercise 4b (Numba).
#
# Write the two kernels in ex4_tiled_conv.cu (the task and the maths are in its header):
# v1 one thread per output, v2 shared-memory tiles ("implicit GEMM"). Step 8 reads the
# project's own kernel lab (kernels/cuda/), which goes on to v3 and v4.
#
# No GPU is needed: kernels/emu.py compiles the .cu file as ordinary C++ with a header that
# maps CUDA's built-ins onto threads (each CUDA thread an OS thread, __syncthreads() a
# barrier, blocks one after another) and runs the exact launch the GPU would get. Like the
# lab's harness, the check fills the output with NaN first, so an element your kernel never
# writes cannot pass, and compares with the lab's float64 reference (kernels/lab.py:
# ref_forward, rel_error) under the lab's tolerance rule for float32 sums:
# relative error below max(1e-5, 4 * 2^-24 * sqrt(C*KS*KS)). The shapes are tiny and
# chosen to be awkward: channel counts that are not multiples of the tile, a 1x1 map, a
# pixel count that leaves a partial tile. The emulation says nothing about speed.
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _harness import Report  # noqa: E402

import numpy as np  # noqa: E402

from kernels import emu, lab  # noqa: E402

SOURCE = HERE / "ex4_tiled_conv.cu"
TILE = 8                      # as #defined in the .cu file
V1_BLOCK = 128
SHAPES = ((1, 3, 5, 5, 4, 3), (2, 5, 3, 4, 9, 3), (1, 4, 4, 4, 3, 1), (1, 2, 1, 1, 5, 3),
          (1, 3, 6, 6, 2, 5))   # N, C, H, W, K, KS


@dataclass(frozen=True)
class Launch:
    """One kernel launch, in the form kernels.emu.execute reads."""
    source: str
    name: str
    grid: tuple
    block: tuple
    args: tuple


@dataclass(frozen=True)
class LaunchPlan:
    calls: tuple
    output: str
    output_shape: tuple
    temps: tuple = ()


def plan(version, n, c, h, w, k, ks):
    args = ("x", "w", "y", n, c, h, w, k, ks)
    if version == "v1":
        grid, block = (-(-(n * k * h * w) // V1_BLOCK), 1, 1), (V1_BLOCK, 1, 1)
    else:
        grid, block = (-(-(n * h * w) // TILE), -(-k // TILE), 1), (TILE, TILE, 1)
    call = Launch(str(SOURCE), f"tiled_conv_{version}", grid, block, args)
    return LaunchPlan((call,), "y", (n, k, h, w))


def check():
    report = Report("exercise 4, tiled convolution kernels (CPU emulation)")
    if not emu.available():
        print("no C++ compiler (g++) found: the emulation cannot run here; do exercise 4b "
              "(ex4b_tiled_conv_numba.py) instead.\nSKIPPED")
        return
    rng = np.random.default_rng(0)
    for version in ("v1", "v2"):
        for shape in SHAPES:
            n, c, h, w, k, ks = shape
            x = rng.standard_normal((n, c, h, w), dtype=np.float32)
            wt = rng.standard_normal((k, c, ks, ks), dtype=np.float32)
            y = report.attempt(f"{version} on {shape}",
                               lambda: emu.execute(plan(version, *shape), {"x": x, "w": wt}))
            if y is None:
                break
            unwritten = int(np.isnan(y).sum())
            if not report.check(unwritten == 0, f"{version} on (N,C,H,W,K,KS) = {shape}: "
                                f"{unwritten} of {y.size} outputs never written",
                                "every output needs exactly one thread that stores it"):
                continue
            rel = lab.rel_error(y, lab.ref_forward(x, wt))
            tol = max(1e-5, 4 * lab.EPS32 * np.sqrt(c * ks * ks))
            report.check(rel < tol, f"{version} on (N,C,H,W,K,KS) = {shape}: relative error "
                         f"{rel:.2e} (tolerance {tol:.1e})",
                         "check the index of x (n, c, h+r-P, v+s-P) and of w (k, c, r, s), "
                         "and the zero padding")
    report.finish()


if __name__ == "__main__":
    check()
