# Exercise 3. Local response normalisation's backward, with Caffe's alpha / n.
#
# Run from the repository root:   python docs/walkthrough/exercises/ex3_lrn_backward.py
# It prints PASS, or what is wrong. (Step 4 shows the forward.)
#
# Across channels, with a window of n (odd) channels centred on c, zero past the ends:
#
#     S[c]  = k + (alpha / n) * sum_{c' in win(c)} x[c']^2         (Caffe divides alpha by n)
#     y[c]  = x[c] * S[c]^(-beta)
#
# The derivation. x[j] enters y[c] in two ways: directly when c = j, and through S[c]
# whenever j is in win(c), i.e. (the window is symmetric) whenever c is in win(j):
#
#     dy[c]/dx[j] = [c = j] S[c]^(-beta)
#                   - beta * x[c] * S[c]^(-beta - 1) * (alpha / n) * 2 x[j]   (c in win(j))
#
# Summing gy[c] * dy[c]/dx[j] over c, and writing x[c] S[c]^(-beta-1) = y[c] / S[c]:
#
#     gx[j] = gy[j] * S[j]^(-beta)  -  (2 alpha beta / n) * x[j] * sum_{c in win(j)} gy[c] y[c] / S[c]
#
# Your task: LRNExercise.backward(gy) -> gx (N, C, H, W), from self.x, self.scale (= S)
# and self.y that the forward kept. layers.lrn.window_sum(a, n) sums a over each channel's
# window (axis 1) and is yours to use.
#
# The check: your gradient against layers.lrn's and against finite differences in float64,
# with GoogLeNet's constants (n 5, alpha 1e-4, beta 0.75, k 1) on activations of size ~30
# and with bigger alpha and k, where a missing term or a missing "/ n" stands out.
# Worked solution: solutions/ex3_lrn_backward.py.
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import Report, against_library  # noqa: E402

import numpy as np  # noqa: E402

import layers as L  # noqa: E402
from engine import Function  # noqa: E402
from layers.lrn import window_sum  # noqa: E402


class LRNExercise(Function):
    """y = x * (k + alpha / n * window sum of x^2) ** -beta, over channels (axis 1)."""

    def __init__(self, n=5, alpha=1e-4, beta=0.75, k=1.0):
        self.n, self.alpha, self.beta, self.k = n, alpha, beta, k

    def forward(self, x):
        self.x = x
        self.scale = self.k + self.alpha / self.n * window_sum(x * x, self.n)
        self.y = x * self.scale ** -self.beta
        return self.y

    # BEGIN YOUR CODE: backward
    def backward(self, gy):
        """gx (N, C, H, W) by the formula above."""
        raise NotImplementedError("TODO: write LRNExercise.backward")
    # END YOUR CODE: backward


def check():
    report = Report("exercise 3, LRN backward")
    rng = np.random.default_rng(0)
    hint = ("gx = gy * S^-beta - (2 alpha beta / n) * x * window_sum(gy * y / S, n): "
            "both terms, alpha divided by n, the window sum taken of gy * y / S")
    for (shape, n, alpha, beta, k, scale) in (((2, 7, 3, 3), 5, 1e-4, 0.75, 1.0, 30.0),
                                              ((1, 6, 2, 3), 5, 0.5, 0.75, 2.0, 1.0),
                                              ((1, 4, 2, 2), 3, 1.0, 0.6, 1.5, 1.0)):
        tag = f"n {n}, alpha {alpha:g}, beta {beta:g}, k {k:g}"
        if not against_library(report, tag,
                               lambda t, a=(n, alpha, beta, k): LRNExercise(*a)(t),
                               lambda t, a=(n, alpha, beta, k): L.lrn(t, *a),
                               (rng.standard_normal(shape) * scale,), ("x",), rng, hint):
            break
    report.finish()


if __name__ == "__main__":
    check()
