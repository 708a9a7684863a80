# Step 4. The other three layers GoogLeNet needs: max pooling in ceil mode, LRN, depth concat.
#
# Run from the repository root:   python docs/walkthrough/step04_pool_lrn_concat.py
#
# Each of these is small, but each has one detail that must match Caffe's bvlc_googlenet
# exactly, or the shapes or the numbers of the network drift away from the paper's.
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("WALKTHROUGH_OUT") or ROOT / "docs" / "walkthrough" / "out")
OUT.mkdir(parents=True, exist_ok=True)

import numpy as np  # noqa: E402

import layers as L  # noqa: E402
from engine import Tensor, gradcheck  # noqa: E402
from layers import caffe  # noqa: E402

rng = np.random.default_rng(0)

# ---------------------------------------------------------------------------------------
# 1. Max pooling, ceil mode. A 3x3 window moves with stride 2 and keeps the largest value.
#    How many positions fit in a row of 112? (112 - 3) / 2 + 1 = 55.5. The usual rule rounds
#    down (floor) and drops the last column; Caffe rounds up (ceil) and lets the last window
#    hang one pixel past the edge, where it simply sees nothing. GoogLeNet's Table 1 sizes
#    (112 -> 56 -> 28 -> 14 -> 7) are ceil-mode sizes; floor mode would give 55 -> 27 -> 13 -> 6
#    and every later layer would be the wrong size.
print("3x3/2 max pooling output sizes   ceil (Caffe)   floor")
size_ceil = size_floor = 112
sizes = []
for _ in range(4):
    new_ceil = caffe.pooled_size(size_ceil, 3, 2, 0, ceil_mode=True)
    new_floor = caffe.pooled_size(size_floor, 3, 2, 0, ceil_mode=False)
    print(f"  {size_ceil:>3} / {size_floor:<3} ->{new_ceil:>25}{new_floor:>9}")
    size_ceil, size_floor = new_ceil, new_floor
    sizes.append((new_ceil, new_floor))
assert sizes == [(56, 55), (28, 27), (14, 13), (7, 6)]


# The definition in loops, ceil mode included: windows start at 0, s, 2s, ... and are
# clipped to the image; a window never starts outside it (pad = 0 here).
def max_pool_loops(x, k, s):
    n_img, c_in, h, w = x.shape
    oh, ow = -(-(h - k) // s) + 1, -(-(w - k) // s) + 1     # ceil division
    y = np.empty((n_img, c_in, oh, ow))
    for p in range(oh):
        for q in range(ow):
            y[:, :, p, q] = x[:, :, p * s:p * s + k, q * s:q * s + k].max(axis=(2, 3))
    return y


x = rng.permutation(36).reshape(1, 1, 6, 6).astype(np.float64)  # distinct values: no ties
y = L.max_pool2d(Tensor(x), 3, 2)
floor = caffe.pooled_size(6, 3, 2, 0, ceil_mode=False)
print(f"\n6x6 input, 3x3/2 windows: ceil mode gives {y.shape[2]}x{y.shape[3]} "
      f"(floor would give {floor}x{floor}); "
      f"the last row and column of windows cover only 2 pixels")
print("input:\n", x[0, 0].astype(int))
print("output (layers.max_pool2d):\n", y.data[0, 0].astype(int))
assert y.shape[2:] == (3, 3) and floor == 2
assert np.array_equal(y.data, max_pool_loops(x, 3, 2))
print("same as the loops: True")

# Backward: only the winner of each window moved the output, so the whole gradient goes to
# it (the first maximum on ties, as in Caffe). Sending a gradient of 1 from every output
# counts, for each input pixel, how many windows it won: overlapping windows can share one.
xt = Tensor(x, requires_grad=True)
L.max_pool2d(xt, 3, 2).backward(np.ones((1, 1, 3, 3)))
print("gradient of sum(y) with respect to x (windows each pixel won):\n", xt.grad[0, 0].astype(int))
assert xt.grad.sum() == 9                  # nine windows, each sends its 1 to one winner

# ---------------------------------------------------------------------------------------
# 2. Local response normalisation across channels (AlexNet's LRN, placed after pool1 and
#    conv2). Each value is divided by a power of the energy of its n = 5 neighbouring
#    channels at the same pixel:
#
#        y[c] = x[c] / (k + alpha / n * sum_{c' = c-2 .. c+2} x[c']^2) ** beta
#
#    with k = 1, alpha = 1e-4, beta = 0.75 (channels past the ends count as zero). Caffe
#    divides alpha by n; Chainer's LRN does not. Getting that wrong changes every activation
#    after pool1 by a few percent: invisible in a plot, fatal for a comparison with a
#    reference implementation.
def lrn_loops(x, n=caffe.LRN_SIZE, alpha=caffe.LRN_ALPHA, beta=caffe.LRN_BETA, k=caffe.LRN_K):
    c_in = x.shape[1]
    y = np.empty_like(x)
    for c in range(c_in):
        lo, hi = max(0, c - n // 2), min(c_in, c + n // 2 + 1)
        energy = (x[:, lo:hi] ** 2).sum(axis=1)
        y[:, c] = x[:, c] / (k + alpha / n * energy) ** beta
    return y


# Activations after conv1 are in the tens; make one channel much louder than the rest to see
# it damp its neighbours, and only them.
x = np.full((1, 8, 1, 1), 10.0)
x[0, 3] = 300.0
y = L.lrn(Tensor(x)).data
print("\nLRN: channel 3 is loud (300), the others are 10")
print("  y / x per channel:", np.round(y[0, :, 0, 0] / x[0, :, 0, 0], 3))
print("  channels 1-5 share a window with channel 3 and are scaled down more")
ratio = y[0, :, 0, 0] / x[0, :, 0, 0]
assert ratio[1:6].max() < ratio[[0, 6, 7]].min()
assert np.allclose(y, lrn_loops(x))
x = rng.standard_normal((2, 7, 3, 3)) * 30
assert np.allclose(L.lrn(Tensor(x)).data, lrn_loops(x))
res = gradcheck(lambda t: L.lrn(t), [Tensor(x, requires_grad=True)], mode="directional")
print(f"  matches the loops; {res}")

# ---------------------------------------------------------------------------------------
# 3. Depth concatenation. An Inception module runs four branches on the same input and
#    stacks their outputs along the channel axis: (N, 64, H, W), (N, 128, H, W), (N, 32, H, W)
#    and (N, 32, H, W) give (N, 256, H, W). Forward is np.concatenate; backward hands each
#    branch its own slice of the incoming gradient. The input x itself feeds all four
#    branches, so its gradient is the *sum* of four contributions: step 1's "several
#    consumers" case, handled by the engine, not by the layer.
x = Tensor(rng.standard_normal((2, 6, 5, 5)), requires_grad=True)
w1 = Tensor(rng.standard_normal((3, 6, 1, 1)), requires_grad=True)
w3 = Tensor(rng.standard_normal((4, 6, 3, 3)), requires_grad=True)


def tiny_inception(x_, w1_, w3_):
    return L.concat([L.conv2d(x_, w1_, relu=True),             # 1x1 branch:   3 channels
                     L.conv2d(x_, w3_, pad=1, relu=True),      # 3x3 branch:   4 channels
                     L.max_pool2d(x_, 3, 1, 1),                # pool branch:  6 channels
                     L.lrn(x_)])                               # (an LRN, why not): 6 channels


out = tiny_inception(x, w1, w3)
print(f"\nconcat of four branches on x {x.shape}: output {out.shape} (3 + 4 + 6 + 6 channels)")
res = gradcheck(tiny_inception, [x, w1, w3], mode="directional")
print(f"gradient through the concat and all four branches: {res}")
