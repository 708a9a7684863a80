# Exercise 4b. The same convolution, v1 -> v2, on the CPU with Numba (no GPU, no g++ needed).
#
# Run from the repository root:   python docs/walkthrough/exercises/ex4b_tiled_conv_numba.py
# It prints PASS, or what is wrong, and then times both versions.
#
# Problem as in exercise 4: stride-1 "same" convolution, float32, x (N, C, H, W),
# w (K, C, KS, KS), P = KS // 2, y (N, K, H, W):
#
#     y[n,k,h,v] = sum_{c,r,s} w[k,c,r,s] * xpad[n, c, h+r, v+s]     xpad = x padded by P
#
# Numba compiles a Python function over arrays into machine code the first time it is
# called (@njit), so plain loops run at C speed. The padding is done for you (`pad`).
#
# v1 (conv_v1): the definition, one output at a time: loops n, k, h, v, and inside them
#     the sum over c, r, s into a scalar. Every output re-reads its whole C x KS x KS window.
# v2 (conv_v2): the CPU's version of v2's tiles. For one image and one output row h, work
#     on a block of TK output channels at once and keep their whole rows in a small
#     accumulator acc (TK, W), which fits in the L1 cache: for each (c, r, s) the input
#     row xpad[n, c, h+r, s : s+W] is read once and used for all TK channels,
#
#         acc[kk, :] += w[k0+kk, c, r, s] * xpad[n, c, h+r, s:s+W]      kk < TK
#
#     and the innermost loop runs along v over contiguous memory, which the compiler turns
#     into SIMD instructions. Then copy acc into y[n, k0:k0+TK, h, :]. Mind the last
#     block when K is not a multiple of TK.
#
# The check compares both with the kernel lab's float64 reference (kernels/lab.py) on
# awkward shapes; then it times both on one GoogLeNet-sized layer, per image, after a
# warm-up call (the first call compiles: that is seconds, not the kernel's speed).
# Worked solution: solutions/ex4b_tiled_conv_numba.py.
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Report  # noqa: E402

import numpy as np  # noqa: E402
from numba import njit  # noqa: E402

from kernels import lab  # noqa: E402

TK = 16   # output channels per block in v2


def pad(x, p):
    """x (N, C, H, W) -> (N, C, H + 2p, W + 2p), zeros around (float32, contiguous)."""
    return np.ascontiguousarray(np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))), dtype=np.float32)


# BEGIN YOUR CODE: v1
@njit
def conv_v1(xpad, w, y):
    """Fill y (N, K, H, W) from xpad (N, C, H+2P, W+2P) and w (K, C, KS, KS), one output at a time."""
    raise NotImplementedError("TODO: write conv_v1")
# END YOUR CODE: v1


# BEGIN YOUR CODE: v2
@njit
def conv_v2(xpad, w, y):
    """Fill y like conv_v1, TK output channels x one output row at a time."""
    raise NotImplementedError("TODO: write conv_v2")
# END YOUR CODE: v2


def run(fn, x, w):
    n, _, h, wd = x.shape
    y = np.full((n, w.shape[0], h, wd), np.nan, dtype=np.float32)   # unwritten stays NaN
    fn(pad(x, w.shape[2] // 2), w, y)
    return y


def check():
    report = Report("exercise 4b, convolution v1 and v2 in Numba")
    rng = np.random.default_rng(0)
    shapes = ((1, 3, 5, 5, 4, 3), (2, 5, 3, 4, 19, 3), (1, 4, 4, 4, 3, 1), (1, 3, 6, 6, 33, 5))
    for name, fn in (("v1", conv_v1), ("v2", conv_v2)):
        for shape in shapes:
            n, c, h, w, k, ks = shape
            x = rng.standard_normal((n, c, h, w), dtype=np.float32)
            wt = rng.standard_normal((k, c, ks, ks), dtype=np.float32)
            y = report.attempt(f"{name} on {shape}", lambda: run(fn, x, wt))
            if y is None:
                break
            rel = lab.rel_error(y, lab.ref_forward(x, wt))
            tol = max(1e-5, 4 * lab.EPS32 * np.sqrt(c * ks * ks))
            report.check(rel < tol, f"{name} on (N,C,H,W,K,KS) = {shape}: relative error "
                         f"{rel:.2e} (tolerance {tol:.1e}; inf means NaN left: unwritten)",
                         "in v2, the last channel block has K % TK channels")
    if report.problems:
        report.finish()
    # Timing (a measurement, not a promise): inception_4a's 3x3 branch, 96 -> 208 channels
    # on 14x14, one image. Each version is called once untimed first, so Numba's compile
    # is outside the timed region; then the median of 5 calls.
    x = rng.standard_normal((1, 96, 14, 14), dtype=np.float32)
    wt = rng.standard_normal((208, 96, 3, 3), dtype=np.float32)
    macs = 208 * 96 * 9 * 14 * 14
    print(f"timing on inception_4a 3x3 (96 -> 208, 14x14), one image, "
          f"{macs / 1e6:.1f} M multiply-adds; median of 5 after a warm-up call:")
    xpad, y = pad(x, 1), np.empty((1, 208, 14, 14), np.float32)
    for name, fn in (("v1", conv_v1), ("v2", conv_v2)):
        fn(xpad, wt, y)                        # warm-up, untimed (compiled during the checks)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            fn(xpad, wt, y)
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1e3
        print(f"  {name}: {ms:7.2f} ms per image ({2 * macs / ms / 1e6:.1f} GFLOP/s), "
              f"spread {min(times) * 1e3:.2f}-{max(times) * 1e3:.2f} ms (measured)")
    report.finish()


if __name__ == "__main__":
    check()
