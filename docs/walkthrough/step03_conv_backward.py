# Step 3. The convolution's backward, and a finite-difference check of it.
#
# Run from the repository root:   python docs/walkthrough/step03_conv_backward.py
#
# Step 2 wrote the forward pass as one matrix product:
#
#     col = im2col(x)            (C*kh*kw, N*OH*OW)   every window, one per column
#     Y   = W2 @ col + b         (O, N*OH*OW)         W2 = w.reshape(O, C*kh*kw)
#
# Backward receives gY = dL/dY (same shape as Y) and must return dL/dx, dL/dw, dL/db. For a
# matrix product Y = A @ B the rules are gA = gY @ B.T and gB = A.T @ gY (each entry of A
# meets each column of B once, so its gradient sums gY times that column). Therefore
#
#     gW2  = gY @ col.T                     (O, C*kh*kw)       -> reshape to w's shape
#     gcol = W2.T @ gY                      (C*kh*kw, N*OH*OW)
#     gb   = gY summed over every pixel     (O,)
#     gx   = col2im(gcol)                   (N, C, H, W)
#
# col2im is im2col run backwards. im2col *copied* each input pixel into every column whose
# window covers it (9 columns for a 3x3 stride-1 kernel); the adjoint of a copy is a sum, so
# col2im *adds* each column entry back onto the pixel it came from. Forget the "adds" and
# the gradient is wrong wherever windows overlap, which is almost everywhere. We will make
# exactly that mistake below and watch the finite-difference check catch it.
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
from engine import Function, Tensor, gradcheck  # noqa: E402
from layers.im2col import conv_out_size, tap_slice  # noqa: E402

rng = np.random.default_rng(0)
N, C, H, W, O, K, S, P = 2, 3, 6, 6, 4, 3, 1, 1
x = rng.standard_normal((N, C, H, W))
w = rng.standard_normal((O, C, K, K))
b = rng.standard_normal(O)
OH, OW = conv_out_size(H, K, S, P), conv_out_size(W, K, S, P)
gy = rng.standard_normal((N, O, OH, OW))      # pretend this arrived from the layer above

# ---------------------------------------------------------------------------------------
# The formulas above, by hand, with the project's im2col and col2im.
W2 = w.reshape(O, -1)
col = L.im2col(x, K, K, S, P)
gY = gy.transpose(1, 0, 2, 3).reshape(O, -1)  # y's (N, O, OH, OW) -> Y's (O, N*OH*OW)
gw_hand = (gY @ col.T).reshape(w.shape)
gx_hand = L.col2im(W2.T @ gY, x.shape, K, K, S, P)
gb_hand = gy.sum(axis=(0, 2, 3))

# The same from the engine: build the graph, then backward with gy as the upstream gradient.
xt, wt, bt = (Tensor(a, requires_grad=True) for a in (x, w, b))
L.conv2d(xt, wt, bt, stride=S, pad=P).backward(gy)
print("engine backward vs the formulas by hand (max abs difference):")
for name, mine, engine in (("gx", gx_hand, xt.grad), ("gw", gw_hand, wt.grad),
                           ("gb", gb_hand, bt.grad)):
    print(f"  {name} {str(mine.shape):16} {np.abs(mine - engine).max():.2e}")
    assert np.allclose(mine, engine, atol=1e-12)


# An independent check of gx, straight from the loop definition of step 2: output pixel
# (n, o, p, q) read xpad[n, c, p*s+i, q*s+j] with weight w[o, c, i, j], so it sends
# gy[n, o, p, q] * w[o, c, i, j] back to that input pixel. Loop over outputs and scatter:
def conv2d_backward_x_loops(gy, w, x_shape, stride, pad):
    n_img, c_in, h, wd = x_shape
    c_out, _, kh, kw = w.shape
    gxpad = np.zeros((n_img, c_in, h + 2 * pad, wd + 2 * pad))
    for n in range(n_img):
        for o in range(c_out):
            for p in range(gy.shape[2]):
                for q in range(gy.shape[3]):
                    gxpad[n, :, p * stride:p * stride + kh, q * stride:q * stride + kw] += (
                        gy[n, o, p, q] * w[o])
    return gxpad[:, :, pad:pad + h, pad:pad + wd]   # gradients landing on padding are dropped


print(f"  gx by scatter loops vs engine: "
      f"{np.abs(conv2d_backward_x_loops(gy, w, x.shape, S, P) - xt.grad).max():.2e}")

# ---------------------------------------------------------------------------------------
# Finite differences: the independent referee. For a scalar L(x) and a small h,
#
#     dL/dx_j  ~  (L(x + h e_j) - L(x - h e_j)) / (2h)          (error ~ h^2)
#
# needs nothing but the forward pass, so it cannot share a bug with the backward. The
# engine's gradcheck reduces the layer's output to L = sum(r * y) with a fixed random r,
# compares element by element on small inputs (here 216 + 108 + 4 = 328 numbers, 2 forward
# passes each), and along random directions on big ones (2 passes per direction, whatever
# the size). It wants float64: in float32 the rounding error of L(x + h) - L(x - h) would
# swamp the difference for any h small enough to make the h^2 term negligible.
xt, wt, bt = (Tensor(a.copy(), requires_grad=True) for a in (x, w, b))
result = gradcheck(lambda x_, w_, b_: L.conv2d(x_, w_, b_, stride=S, pad=P), [xt, wt, bt],
                   mode="elementwise")
print(f"\n3x3 stride 1 pad 1: {result}")

# Stride 2 with a fused ReLU on a bigger input: check along 8 random directions.
x2 = Tensor(rng.standard_normal((2, 8, 11, 11)), requires_grad=True)
w2 = Tensor(rng.standard_normal((6, 8, 5, 5)), requires_grad=True)
b2 = Tensor(rng.standard_normal(6), requires_grad=True)
result = gradcheck(lambda x_, w_, b_: L.conv2d(x_, w_, b_, stride=2, pad=2, relu=True),
                   [x2, w2, b2], mode="directional")
print(f"5x5 stride 2 pad 2 +ReLU: {result}")


# ---------------------------------------------------------------------------------------
# Now a convolution Function of our own, written from the formulas at the top of this
# file, so we can break it on purpose. A Function subclass implements forward(*arrays) and
# backward(*grads) over plain arrays and keeps on `self` what backward will need. (This one
# keeps the column matrix for simplicity; the project's layer keeps only x and w and
# rebuilds the columns in backward, because col is kh*kw times the size of x.)
class TextbookConv2d(Function):
    def __init__(self, stride, pad, col2im_impl):
        self.stride, self.pad, self.col2im = stride, pad, col2im_impl

    def forward(self, x, w, b):
        o, _, kh, kw = w.shape
        n, _, h, wd = x.shape
        oh = conv_out_size(h, kh, self.stride, self.pad)
        ow = conv_out_size(wd, kw, self.stride, self.pad)
        self.col = L.im2col(x, kh, kw, self.stride, self.pad)
        self.w, self.x_shape = w, x.shape
        y = w.reshape(o, -1) @ self.col + b.reshape(o, 1)
        return y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3).copy()

    def backward(self, gy):
        o, _, kh, kw = self.w.shape
        g2 = gy.transpose(1, 0, 2, 3).reshape(o, -1)
        gw = (g2 @ self.col.T).reshape(self.w.shape)
        gx = self.col2im(self.w.reshape(o, -1).T @ g2, self.x_shape, kh, kw, self.stride, self.pad)
        return gx, gw, g2.sum(axis=1)


# The broken col2im *assigns* each tap's slice instead of adding it, so an input pixel keeps
# only the contribution of the last window that covered it.
def col2im_overwrites(col, x_shape, kh, kw, stride, pad):
    n_img, c_in, h, wd = x_shape
    oh, ow = conv_out_size(h, kh, stride, pad), conv_out_size(wd, kw, stride, pad)
    col = col.reshape(c_in, kh, kw, n_img, oh, ow)
    gpad = np.zeros((n_img, c_in, h + 2 * pad, wd + 2 * pad))
    for i in range(kh):
        for j in range(kw):
            # BUG: "=" where layers.col2im has "+="
            gpad[tap_slice(i, j, stride, oh, ow)] = col[:, i, j].transpose(1, 0, 2, 3)
    return gpad[:, :, pad:pad + h, pad:pad + wd]


for name, impl in (("layers.col2im (adds)", L.col2im),
                   ("col2im that overwrites", col2im_overwrites)):
    xt, wt, bt = (Tensor(a.copy(), requires_grad=True) for a in (x, w, b))
    res = gradcheck(lambda x_, w_, b_: TextbookConv2d(S, P, impl)(x_, w_, b_), [xt, wt, bt],
                    mode="elementwise", raise_on_failure=False)
    wrong = {}
    for where, numeric, analytic in res.details:
        if abs(numeric - analytic) > 1e-6 + 1e-4 * abs(numeric):
            grad = ("gx", "gw", "gb")[int(where.split()[1])]
            wrong[grad] = wrong.get(grad, 0) + 1
    print(f"\nour own Function with {name}:\n  {res}")
    print(f"  derivatives that disagree with finite differences: {wrong or 'none'}")
    assert res.ok == (impl is L.col2im)
print(f"(gx has {x.size} entries; gw and gb do not go through col2im, so they stay right)")

# ---------------------------------------------------------------------------------------
# How small should the step h be? Two errors pull in opposite directions. Truncation: the
# central difference is exact for a quadratic, and off by about h^2/6 * f''' otherwise, so
# it shrinks as h^2. Rounding: L(x + h d) and L(x - h d) are each computed with a relative
# error of about eps (2.2e-16 in float64, 6e-8 in float32), and their difference is then
# divided by 2h, so it grows as eps/h. The total is smallest where the two meet, near
# h ~ eps^(1/3) (times a factor that depends on the function): around 1e-5 in float64,
# around 1e-2 in float32, where float32's best is still about 1e-6 of the derivative, some
# 10^4 to 10^5 times worse than float64's: too coarse to tell a right gradient from a
# slightly wrong one. That is why gradcheck works in float64 (and uses h = 1e-6). The
# run below prints where each minimum fell (a measurement) and asserts only the shape:
# a valley in float64 with both walls, and float32 far above it.
#
# A convolution is linear in x, so its central difference has no truncation error at all;
# to see both effects we differentiate a smooth non-linear layer instead: LRN with a large
# alpha, along one random direction d, against the backward's exact <grad, d>.
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

xs = rng.standard_normal((2, 6, 4, 4))
r_out = rng.standard_normal(xs.shape)
direction = rng.standard_normal(xs.shape)
direction /= np.linalg.norm(direction)
xt = Tensor(xs.copy(), requires_grad=True)
L.lrn(xt, alpha=2.0).backward(r_out)
exact = float((xt.grad * direction).sum())
steps = np.logspace(-13, -0.5, 26)
errors = {}
for dtype in (np.float64, np.float32):
    def loss_at(a, dtype=dtype):
        return float((L.lrn(Tensor(a.astype(dtype)), alpha=2.0).data.astype(np.float64)
                      * r_out).sum())
    errors[dtype] = np.array([abs((loss_at(xs + h * direction) - loss_at(xs - h * direction))
                                  / (2 * h) - exact) / abs(exact) for h in steps])
best = {dtype: steps[int(np.argmin(e))] for dtype, e in errors.items()}
print(f"\nrelative error of the central difference against the backward (LRN, alpha 2):")
for dtype, e in errors.items():
    print(f"  {np.dtype(dtype).name}: smallest {e.min():.1e} at h = {best[dtype]:.0e}; "
          f"{e[-1]:.1e} at h = {steps[-1]:.1g}; {e[0]:.1e} at h = {steps[0]:.0e}")
e64 = errors[np.float64]
assert 1e-8 <= best[np.float64] <= 1e-3 and e64.min() < 1e-8
assert e64[0] > 100 * e64.min() and e64[-1] > 100 * e64.min()     # both sides of the valley
assert errors[np.float32].min() > 100 * e64.min()                   # float32 cannot get close
fig, ax = plt.subplots(figsize=(7.5, 4.8))
for dtype, style in ((np.float64, "o-"), (np.float32, "s-")):
    ax.loglog(steps, np.maximum(errors[dtype], 1e-17), style, label=f"{np.dtype(dtype).name}")
guide = e64.min() * (steps / best[np.float64]) ** 2
ax.loglog(steps, guide, ":", color="grey", label="slope 2: truncation ~ h^2")
ax.loglog(steps, e64.min() * best[np.float64] / steps, "--", color="grey",
          label="slope -1: rounding ~ eps / h")
ax.axvline(1e-6, color="green", alpha=0.4, label="gradcheck's h = 1e-6")
ax.set_ylim(1e-13, 10)
ax.set_xlabel("step h")
ax.set_ylabel("|central difference - backward| / |backward|")
ax.set_title("finite differences: truncation against rounding (LRN, one direction)")
ax.grid(alpha=0.3, which="both")
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "step03_gradcheck_h.png", dpi=90)
plt.close(fig)
print(f"wrote {OUT / 'step03_gradcheck_h.png'}")
