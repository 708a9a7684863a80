# Exercise 2. Max pooling's backward, in Caffe's ceil mode.
#
# Run from the repository root:   python docs/walkthrough/exercises/ex2_maxpool_backward.py
# It prints PASS, or what is wrong. (Step 4 explains ceil mode.)
#
# Max pooling keeps the largest value of each k x k window (stride s, padding pad):
#
#     y[n, c, p, q] = max over i, j < k of  xpad[n, c, p*s + i, q*s + j]
#
# In ceil mode the output has OH = ceil((H + 2 pad - k) / s) + 1 rows, so the last window
# may hang past the padded input: a 6x6 input, 3x3/2 windows, gives 3x3 outputs (floor mode:
# 2x2), the last row and column of windows covering only 2 pixels. The forward below pads x
# with -inf on every side *and* with the extra rows/columns the hanging windows reach, so a
# window never wins on padding, and remembers for every output where its winner sits in
# that padded array: (self.win_row, self.win_col), both (N, C, OH, OW). On ties the first
# maximum wins, as in Caffe.
#
# Your task: MaxPool2dExercise.backward(gy) -> gx (N, C, H, W). Only the winner of a
# window moved its output, so
#
#     gxpad[n, c, win_row[n,c,p,q], win_col[n,c,p,q]] += gy[n, c, p, q]   for every p, q
#
# then crop the padding (and the ceil-mode overhang) back to H x W. Careful: windows
# overlap (3x3 with stride 2 or 1), so one pixel can win several windows and must receive
# the *sum* of their gradients. NumPy's fancy assignment a[idx] += v does not add repeated
# indices twice; np.add.at(a, idx, v) does.
#
# The check: your gradient against layers.max_pool2d's, and against finite differences in
# float64 on inputs whose values are all distinct and at least 0.1 apart (a tie or a
# near-tie has no derivative; a step h would change the winner). Shapes include the
# ceil-mode overhang, overlapping stride-1 windows with padding (the Inception pool
# branch) and a pixel that wins four windows. Worked solution: solutions/ex2_maxpool_backward.py.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Report, against_library  # noqa: E402

import numpy as np  # noqa: E402

import layers as L  # noqa: E402
from engine import Function, Tensor  # noqa: E402
from layers.caffe import pooled_size  # noqa: E402


class MaxPool2dExercise(Function):
    """y (N, C, OH, OW) = max over each k x k window of x (N, C, H, W), ceil mode."""

    def __init__(self, k, s, pad=0):
        self.k, self.s, self.pad = k, s, pad

    def forward(self, x):
        k, s, pad = self.k, self.s, self.pad
        n, c, h, w = x.shape
        oh, ow = pooled_size(h, k, s, pad), pooled_size(w, k, s, pad)
        rows, cols = (oh - 1) * s + k, (ow - 1) * s + k            # reach of the last window
        xpad = np.full((n, c, max(rows, h + 2 * pad), max(cols, w + 2 * pad)), -np.inf)
        xpad[:, :, pad:pad + h, pad:pad + w] = x
        self.x_shape, self.padded_shape = x.shape, xpad.shape
        y = np.full((n, c, oh, ow), -np.inf)
        self.win_row = np.zeros((n, c, oh, ow), dtype=np.int64)
        self.win_col = np.zeros((n, c, oh, ow), dtype=np.int64)
        for i in range(k):
            for j in range(k):
                cand = xpad[:, :, i:i + s * (oh - 1) + 1:s, j:j + s * (ow - 1) + 1:s]
                better = cand > y                      # strict: the first maximum wins ties
                y[better] = cand[better]
                rows = np.broadcast_to((np.arange(oh) * s + i)[:, None], y.shape)
                cols = np.broadcast_to((np.arange(ow) * s + j)[None, :], y.shape)
                self.win_row[better], self.win_col[better] = rows[better], cols[better]
        return y

    # BEGIN YOUR CODE: backward
    def backward(self, gy):
        """gx (N, C, H, W): each gy[n, c, p, q] added onto its window's winner."""
        raise NotImplementedError("TODO: write MaxPool2dExercise.backward")
    # END YOUR CODE: backward


def distinct(rng, shape):
    """Values all different and 0.1 or more apart: no ties, no near-ties."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * 0.1 - 1.0


def check():
    report = Report("exercise 2, ceil-mode max-pool backward")
    rng = np.random.default_rng(0)
    hint = ("scatter-add each gy onto (win_row, win_col) of the padded shape with np.add.at "
            "(overlapping windows can share a winner), then crop [pad:pad+H, pad:pad+W]")
    cases = [((1, 2, 6, 6), 3, 2, 0, "6x6, 3x3/2: ceil mode, windows hang over the edge"),
             ((2, 2, 7, 5), 3, 2, 0, "7x5, 3x3/2"),
             ((1, 2, 5, 5), 3, 1, 1, "5x5, 3x3/1 pad 1 (Inception's pool branch)"),
             ((1, 1, 4, 4), 2, 2, 0, "4x4, 2x2/2: windows do not overlap")]
    for shape, k, s, pad, tag in cases:
        if not against_library(report, tag,
                               lambda t, a=(k, s, pad): MaxPool2dExercise(*a)(t),
                               lambda t, a=(k, s, pad): L.max_pool2d(t, *a),
                               (distinct(rng, shape),), ("x",), rng, hint):
            break
    # One pixel, the largest, wins all four overlapping 3x3/2 windows that contain it.
    x = distinct(rng, (1, 1, 5, 5))
    x[0, 0, 2, 2] = 100.0
    t = Tensor(x, requires_grad=True)
    out = MaxPool2dExercise(3, 2)(t)
    report.attempt("backward (a pixel that wins 4 windows)", lambda: out.backward(np.ones(out.shape)))
    if t.grad is not None:
        report.check(t.grad[0, 0, 2, 2] == 4.0, f"the pixel that wins 4 windows gets gradient "
                     f"{t.grad[0, 0, 2, 2]:g}, expected 4 (1 from each window)", hint)
    report.finish()


if __name__ == "__main__":
    check()
