# Exercise 1. The convolution's backward pass, with a col2im of your own.
#
# Run from the repository root:   python docs/walkthrough/exercises/ex1_conv_backward.py
# It prints PASS, or what is wrong. (Steps 2 and 3 explain the forward and the formulas.)
#
# The forward below is written for you, as layers/conv.py does it: the column matrix of
# every window, then one matrix product,
#
#     col = im2col(x)        (C*kh*kw, N*OH*OW)   row (c, i, j), column (n, p, q):
#                            col[(c,i,j), (n,p,q)] = xpad[n, c, p*s + i, q*s + j]
#     Y   = W2 @ col + b     (O, N*OH*OW)         W2 = w.reshape(O, C*kh*kw)
#
# and it keeps only x and w for the backward (col is kh*kw times the size of x: rebuild it).
#
# Your tasks:
#
# 1. col2im(gcol, x_shape, kh, kw, stride, pad) -> gx (N, C, H, W), the adjoint of im2col.
#    im2col *copies* pixel xpad[n, c, p*s+i, q*s+j] into entry ((c,i,j), (n,p,q)); the
#    adjoint of a copy is a sum, so col2im *adds* every entry back onto that pixel:
#
#        gxpad[n, c, p*s + i, q*s + j] += gcol[(c,i,j), (n,p,q)]   for every i, j, p, q
#
#    then drops the padding: gx = gxpad[:, :, pad:pad+H, pad:pad+W]. Loop over the kh*kw
#    taps (i, j), not over pixels: for one tap, the pixels p*s+i (p = 0..OH-1) are the
#    slice i : i + s*(OH-1) + 1 : s. Do not call layers.col2im (that is what we check
#    against); layers.im2col is yours to use.
#
# 2. Conv2dExercise.backward(gy) -> (gx, gw, gb) from gy (N, O, OH, OW). With
#    gY = gy arranged as (O, N*OH*OW), columns ordered (n, p, q) like col's:
#
#        gW2 = gY @ col.T     -> reshape to w's (O, C, kh, kw)
#        gx  = col2im(W2.T @ gY)
#        gb  = gY summed over its columns
#
# The check: col2im against im2col by the dot-product test <im2col(x), c> = <x, col2im(c)>
# (that equation *defines* the adjoint), your gradients against layers.conv2d's, and against
# finite differences in float64 (engine.gradcheck), for stride 1 and 2, padding 0..2, 1x1
# to 5x5 kernels. Worked solution: solutions/ex1_conv_backward.py.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Report, against_library  # noqa: E402

import numpy as np  # noqa: E402

import layers as L  # noqa: E402
from engine import Function  # noqa: E402
from layers.im2col import conv_out_size, im2col  # noqa: E402


# BEGIN YOUR CODE: col2im
def col2im(gcol, x_shape, kh, kw, stride, pad):
    """(C*kh*kw, N*OH*OW) -> (N, C, H, W): add every column entry back onto its pixel."""
    raise NotImplementedError("TODO: write col2im")
# END YOUR CODE: col2im


class Conv2dExercise(Function):
    """y (N, O, OH, OW) = conv(x (N, C, H, W), w (O, C, kh, kw)) + b (O,)."""

    def __init__(self, stride=1, pad=0):
        self.stride, self.pad = stride, pad

    def forward(self, x, w, b):
        n, _, h, wd = x.shape
        o, _, kh, kw = w.shape
        oh, ow = conv_out_size(h, kh, self.stride, self.pad), conv_out_size(wd, kw, self.stride, self.pad)
        self.x, self.w = x, w
        y = w.reshape(o, -1) @ im2col(x, kh, kw, self.stride, self.pad) + b.reshape(o, 1)
        return np.ascontiguousarray(y.reshape(o, n, oh, ow).transpose(1, 0, 2, 3))

    # BEGIN YOUR CODE: backward
    def backward(self, gy):
        """(gx, gw, gb) from gy (N, O, OH, OW); rebuild col from self.x."""
        raise NotImplementedError("TODO: write Conv2dExercise.backward")
    # END YOUR CODE: backward


def check():
    report = Report("exercise 1, convolution backward")
    rng = np.random.default_rng(0)
    hint_col2im = ("add (+=) each tap's slice, never assign: windows overlap; crop the "
                   "padding at the end; col's rows are (c, i, j) and its columns (n, p, q)")
    for (n, c, h, w, k, s, p) in ((2, 3, 5, 6, 3, 1, 1), (1, 2, 7, 7, 3, 2, 0),
                                  (2, 2, 6, 5, 5, 2, 2), (1, 4, 4, 4, 1, 1, 0)):
        x = rng.standard_normal((n, c, h, w))
        oh, ow = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
        g = rng.standard_normal((c * k * k, n * oh * ow))
        gx = report.attempt("col2im", lambda: col2im(g, x.shape, k, k, s, p))
        if gx is None:
            break
        if not report.check(np.shape(gx) == x.shape, f"col2im k{k} s{s} p{p}: shape "
                            f"{np.shape(gx)}, expected {x.shape}", hint_col2im):
            continue
        lhs, rhs = float((im2col(x, k, k, s, p) * g).sum()), float((x * gx).sum())
        report.check(abs(lhs - rhs) <= 1e-9 * (abs(lhs) + 1), f"col2im k{k} s{s} p{p}: "
                     f"<im2col(x), c> = {lhs:.6f} but <x, col2im(c)> = {rhs:.6f}", hint_col2im)

    for (n, c, h, w, o, k, s, p) in ((2, 3, 5, 5, 4, 3, 1, 1), (1, 2, 7, 6, 3, 3, 2, 1),
                                     (1, 2, 5, 5, 2, 5, 1, 2)):
        x, wt = rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c, k, k))
        if not against_library(
                report, f"{k}x{k} stride {s} pad {p}",
                lambda a, b_, c_, s=s, p=p: Conv2dExercise(s, p)(a, b_, c_),
                lambda a, b_, c_, s=s, p=p: L.conv2d(a, b_, c_, stride=s, pad=p),
                (x, wt, rng.standard_normal(o)), ("x", "w", "b"), rng,
                "gx goes through col2im; gw = gY @ col.T; gb sums gY over (n, p, q)"):
            break
    report.finish()


if __name__ == "__main__":
    check()
