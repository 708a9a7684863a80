"""Worked solution of exercise 3 (the region that replaces the stub's TODO).

Straight from the formula: the direct term gy * S^-beta, minus the term through the
window sums. The inner sum runs over c in win(j) of gy[c] y[c] / S[c]: that is the same
centred window sum the forward used, applied to gy * y / S, because the windows are
symmetric (c in win(j) exactly when j in win(c)). Two mistakes the check is built to catch:
alpha not divided by n (Chainer's convention, not Caffe's), and dropping the second term
(right when alpha -> 0, so invisible with GoogLeNet's tiny alpha on small activations,
which is why the check also uses large ones).
"""
from layers.lrn import window_sum


class LRNExercise:
    # BEGIN YOUR CODE: backward
    def backward(self, gy):
        """gx (N, C, H, W) by the formula above."""
        inner = window_sum(gy * self.y / self.scale, self.n)
        return (gy * self.scale ** -self.beta
                - (2.0 * self.alpha * self.beta / self.n) * self.x * inner)
    # END YOUR CODE: backward
