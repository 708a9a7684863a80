# Step 2. One convolution three ways: plain loops, im2col, one matrix product.
#
# Run from the repository root:   python docs/walkthrough/step02_convolution.py
#
# 57 of GoogLeNet's 58 layers with weights are convolutions (the 58th is the classifier), and
# they do all but 1 million of its 1.58 billion multiply-adds per image. A convolution slides a small stack of filters
# over the image; at every position each filter takes a weighted sum of the pixels under it:
#
#     y[n, o, p, q] = b[o] + sum over c, i, j of  w[o, c, i, j] * xpad[n, c, p*s + i, q*s + j]
#
#     x (N, C, H, W) images, w (O, C, kh, kw) filters, b (O,) biases, s the stride,
#     xpad = x with `pad` zeros added on every side, y (N, O, OH, OW) with
#     OH = (H + 2 pad - kh) // s + 1 (same for OW).
#
# We write it three ways and check that they agree:
#   1. seven nested loops, the definition line by line (slow, obviously right);
#   2. im2col: copy every window into a column of a matrix, so the inner sums become
#      dot products of a filter with a column;
#   3. all those dot products at once: one matrix product (GEMM), the form every fast
#      library uses, and the one layers/conv.py implements.
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("WALKTHROUGH_OUT") or ROOT / "docs" / "walkthrough" / "out")
OUT.mkdir(parents=True, exist_ok=True)

import numpy as np  # noqa: E402

import layers as L  # noqa: E402
from engine import Tensor  # noqa: E402

rng = np.random.default_rng(0)
N, C, H, W = 2, 3, 7, 7          # two small 3-channel images
O, K, STRIDE, PAD = 4, 3, 2, 1   # four 3x3 filters, stride 2, padding 1
x = rng.standard_normal((N, C, H, W))
w = rng.standard_normal((O, C, K, K))
b = rng.standard_normal(O)
OH = (H + 2 * PAD - K) // STRIDE + 1
OW = (W + 2 * PAD - K) // STRIDE + 1


# ---------------------------------------------------------------------------------------
# 1. Plain loops. Padding first: reading outside the image gives zeros.
def conv2d_loops(x, w, b, stride, pad):
    n_img, c_in, h, wd = x.shape
    c_out, _, kh, kw = w.shape
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    xpad = np.zeros((n_img, c_in, h + 2 * pad, wd + 2 * pad))
    xpad[:, :, pad:pad + h, pad:pad + wd] = x
    y = np.zeros((n_img, c_out, oh, ow))
    for n in range(n_img):
        for o in range(c_out):
            for p in range(oh):
                for q in range(ow):
                    total = b[o]
                    for c in range(c_in):
                        for i in range(kh):
                            for j in range(kw):
                                total += w[o, c, i, j] * xpad[n, c, p * stride + i, q * stride + j]
                    y[n, o, p, q] = total
    return y


t0 = time.perf_counter()
y_loops = conv2d_loops(x, w, b, STRIDE, PAD)
t_loops = time.perf_counter() - t0
macs = N * O * OH * OW * C * K * K
print(f"x {x.shape}, w {w.shape}, stride {STRIDE}, pad {PAD} -> y {y_loops.shape}")
print(f"1. loops:  {macs} multiply-adds in {t_loops * 1e3:.1f} ms "
      f"({macs / t_loops / 1e6:.2f} M multiply-adds per second, measured)")


# ---------------------------------------------------------------------------------------
# 2. im2col. Look at the two innermost sums: for output pixel (n, p, q) they take the window
#    xpad[n, :, p*s : p*s+kh, q*s : q*s+kw] (C*kh*kw numbers) and dot it with filter w[o]
#    (also C*kh*kw numbers). So copy each window, flattened, into one column of a matrix
#    `col` of shape (C*kh*kw, N*OH*OW), one column per output pixel; flatten the filters into
#    the rows of W2 = w.reshape(O, C*kh*kw). Then y at pixel (n, p, q) is W2 @ that column.
def im2col_loops(x, kh, kw, stride, pad):
    n_img, c_in, h, wd = x.shape
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    xpad = np.zeros((n_img, c_in, h + 2 * pad, wd + 2 * pad))
    xpad[:, :, pad:pad + h, pad:pad + wd] = x
    col = np.empty((c_in * kh * kw, n_img * oh * ow))
    for n in range(n_img):
        for p in range(oh):
            for q in range(ow):
                window = xpad[n, :, p * stride:p * stride + kh, q * stride:q * stride + kw]
                col[:, (n * oh + p) * ow + q] = window.reshape(-1)   # rows ordered (c, i, j)
    return col


col = im2col_loops(x, K, K, STRIDE, PAD)
# layers.im2col builds the same matrix without a loop over pixels: it loops over the kh*kw
# kernel taps instead, and each tap copies one strided slice of the padded input (a view of
# every output pixel's (i, j) neighbour at once): 9 slice copies instead of 32 windows here,
# and still 9, instead of 50176 windows, for conv2 of GoogLeNet (56x56) at batch 16.
col_fast = L.im2col(x, K, K, STRIDE, PAD)
print(f"2. im2col: col {col.shape} (C*kh*kw, N*OH*OW); layers.im2col gives the same matrix: "
      f"{np.array_equal(col, col_fast)}")
assert np.array_equal(col, col_fast) and col.shape == (C * K * K, N * OH * OW)
print(f"   the price: col holds {col.size} numbers for an input of {x.size} "
      f"({col.size / x.size:.1f}x); a 3x3 stride-1 convolution copies each pixel 9 times.")

# The column matrix as a picture. One 2-channel 4x4 image whose pixels are numbered 0..31,
# a 3x3 kernel, stride 1, padding 1: col has 2*3*3 = 18 rows and 4*4 = 16 columns. Each
# column is one output pixel's window, flattened channel by channel; the numbers show where
# every input pixel went. Count the copies: an interior pixel sits in 9 windows, so it
# appears 9 times; a corner pixel in 4 (the other taps of its windows read padding, 0).
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

demo = np.arange(32, dtype=np.float64).reshape(1, 2, 4, 4) + 1      # 1..32; 0 is padding
demo_col = L.im2col(demo, 3, 3, 1, 1)                                # (18, 16)
copies = np.array([(demo_col == v).sum() for v in range(1, 33)]).reshape(2, 4, 4)
assert copies[0, 1, 1] == 9 and copies[0, 0, 0] == 4 and copies.sum() == (demo_col > 0).sum()
pick = 5                                                             # output pixel (1, 1)
fig, (ax_x, ax_c) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1, 1.9]})
padded = np.pad(demo[0], ((0, 0), (1, 1), (1, 1)))
ax_x.imshow(np.concatenate([padded[0], np.full((6, 1), np.nan), padded[1]], axis=1),
            cmap="Blues", vmin=-8, vmax=40)
for (r, c), v in np.ndenumerate(np.concatenate([padded[0], np.zeros((6, 1)), padded[1]], 1)):
    if c != 6:
        ax_x.text(c, r, f"{v:.0f}", ha="center", va="center", fontsize=9,
                  color="grey" if v == 0 else "black")
for offset in (0, 7):                               # the window of output pixel (1, 1)
    ax_x.add_patch(Rectangle((offset + 1 - 0.5, 1 - 0.5), 3, 3, fill=False, ec="red", lw=2.5))
ax_x.set_title("padded input: channel 0 | channel 1\n(red: the 3x3 window of output pixel (1, 1))")
ax_x.axis("off")
ax_c.imshow(demo_col, cmap="Blues", vmin=-8, vmax=40, aspect="auto")
for (r, c), v in np.ndenumerate(demo_col):
    ax_c.text(c, r, f"{v:.0f}", ha="center", va="center", fontsize=7,
              color="grey" if v == 0 else "black")
ax_c.add_patch(Rectangle((pick - 0.5, -0.5), 1, 18, fill=False, ec="red", lw=2.5))
ax_c.set_xticks(range(16), [f"{p},{q}" for p in range(4) for q in range(4)], fontsize=7)
ax_c.set_yticks(range(18), [f"c{c} {i},{j}" for c in range(2) for i in range(3)
                            for j in range(3)], fontsize=7)
ax_c.set_xlabel("column = output pixel (p, q)")
ax_c.set_ylabel("row = (channel, tap i, tap j)")
ax_c.set_title("col = im2col(x): 18 x 16, one column per output pixel "
               "(red: pixel (1, 1)'s window, flattened)")
fig.tight_layout()
fig.savefig(OUT / "step02_im2col.png", dpi=80)
plt.close(fig)
print(f"   picture of a column matrix: {OUT / 'step02_im2col.png'} (interior pixels copied "
      f"{copies[0, 1, 1]} times, corners {copies[0, 0, 0]})")

# ---------------------------------------------------------------------------------------
# 3. One GEMM. Every output pixel's column times every filter's row is exactly a matrix
#    product: (O, C*kh*kw) @ (C*kh*kw, N*OH*OW) = (O, N*OH*OW). The columns are ordered
#    (n, p, q), so a reshape to (O, N, OH, OW) and a transpose give y's (N, O, OH, OW).
W2 = w.reshape(O, -1)
y_gemm = (W2 @ col_fast).reshape(O, N, OH, OW).transpose(1, 0, 2, 3) + b.reshape(1, O, 1, 1)
print(f"3. GEMM:   ({O}, {W2.shape[1]}) @ {col_fast.shape} -> max |y_gemm - y_loops| = "
      f"{np.abs(y_gemm - y_loops).max():.2e}")

# The layer the network uses (layers/conv.py) computes exactly this, as a Function with a
# backward (step 3). It accepts arrays or Tensors and returns a Tensor. On the CPU it goes
# a few images at a time, so that each column matrix stays small enough to be still in the
# cache when the GEMM reads it, with the im2col and the bias-and-ReLU pass compiled by Numba
# (kernels/cpu/); on a GPU it can skip the column matrix altogether (step 8).
y_layer = L.conv2d(Tensor(x), Tensor(w), Tensor(b), stride=STRIDE, pad=PAD).data
print(f"   layers.conv2d:  max |y_layer - y_loops| = {np.abs(y_layer - y_loops).max():.2e}")
assert np.allclose(y_gemm, y_loops, atol=1e-12) and np.allclose(y_layer, y_loops, atol=1e-12)

# Why bother? Because a matrix product is the most optimised routine on any computer: the
# BLAS library behind NumPy blocks it for the caches and the vector units. Same sums, very
# different speed. Time both on a GoogLeNet-sized layer: inception_3a's 3x3 branch, 96 -> 128
# channels at 28x28, one image (86.7 M multiply-adds). The loops would take minutes in
# Python, so time them on a corner of the problem and scale up (an estimate: the loops'
# rate does not depend on the size). The layer is called once untimed first: its first
# call compiles the Numba helpers of kernels/cpu (or loads them from Numba's cache) and
# allocates its workspace, which is seconds, not the convolution's speed. All the times
# are measurements on this machine, per image; they vary from run to run.
import statistics  # noqa: E402

xb = rng.standard_normal((1, 96, 28, 28)).astype(np.float32)
wb = rng.standard_normal((128, 96, 3, 3)).astype(np.float32)
bb = np.zeros(128, np.float32)
big_macs = 128 * 96 * 9 * 28 * 28
assert big_macs == 86_704_128
t0 = time.perf_counter()
conv2d_loops(xb[:, :4, :6, :6], wb[:2, :4], bb[:2], 1, 1)       # 2 filters, 4 channels, 6x6
loop_rate = (2 * 4 * 9 * 36) / (time.perf_counter() - t0)
t0 = time.perf_counter()
L.conv2d(xb, wb, bb, stride=1, pad=1)                             # warm-up, untimed
first_call = time.perf_counter() - t0
times = []
for _ in range(5):
    t0 = time.perf_counter()
    y_big = L.conv2d(xb, wb, bb, stride=1, pad=1)
    times.append(time.perf_counter() - t0)
gemm_s = statistics.median(times)
print(f"\ninception_3a 3x3 ({big_macs / 1e6:.1f} M multiply-adds, one image): loops would take "
      f"about {big_macs / loop_rate:.0f} s (estimated); im2col + GEMM takes {gemm_s * 1e3:.1f} ms "
      f"(median of 5 after a warm-up call that took {first_call * 1e3:.0f} ms), about "
      f"{big_macs / loop_rate / gemm_s:,.0f}x faster (measured on this machine)")

# ---------------------------------------------------------------------------------------
# Why a 1x1 convolution needs no im2col. With kh = kw = 1, stride 1 and no padding, each
# "window" is a single pixel's C channel values, so the column matrix of image n is just
# x[n] viewed as (C, H*W): the numbers are already where GEMM wants them, and NumPy's
# reshape of a contiguous array is a view, not a copy. So the layer multiplies
# y[n] = W2 @ x[n].reshape(C, H*W) and never builds `col` at all (see is_pointwise in
# layers/conv.py). That matters: most of GoogLeNet's convolutions are 1x1
# (every Inception module has four of its six), and for them im2col would be a pure copy
# of the whole input.
x1 = rng.standard_normal((2, 192, 28, 28)).astype(np.float32)
w1 = rng.standard_normal((64, 192, 1, 1)).astype(np.float32)
view = x1[0].reshape(192, 28 * 28)
print(f"\n1x1 convolution: x[0].reshape(C, H*W) is a view of x (no copy): "
      f"{np.shares_memory(view, x1)}")
col1 = L.im2col(x1, 1, 1, 1, 0)
per_image = np.stack([x1[n].reshape(192, -1) for n in range(2)], axis=1).reshape(192, -1)
print(f"  im2col with a 1x1 kernel only reorders x: {np.array_equal(col1, per_image)}")
assert np.array_equal(col1, per_image)
y1 = np.matmul(w1.reshape(64, 192), x1.reshape(2, 192, 28 * 28)).reshape(2, 64, 28, 28)
gemm_diff = np.abs(y1 - L.conv2d(x1, w1).data).max()
print(f"  batched GEMM on the view vs layers.conv2d: max diff {gemm_diff:.2e}")
assert gemm_diff < 1e-3

from models.googlenet import GoogLeNet  # noqa: E402

net = GoogLeNet(num_classes=1000, seed=0)
convs = [(name, m) for name, m in net.named_modules() if isinstance(m, L.Conv2d)]
pointwise = [name for name, m in convs if m.ksize == 1 and m.stride == 1 and m.pad == 0]
main_convs = [name for name, _ in convs if not name.startswith("aux")]
print(f"  GoogLeNet (with its two aux heads) has {len(convs)} convolutions; {len(pointwise)} "
      f"of them are 1x1 stride 1 and skip im2col. Without the aux heads: {len(main_convs)} "
      f"convolutions and the classifier, the 58 layers with weights.")
assert (len(convs), len(pointwise), len(main_convs)) == (59, 39, 57)
