"""Worked solution of exercise 1 (the regions that replace the stub's TODOs).

col2im: one strided slice per kernel tap (i, j). Rows of gcol are ordered (c, i, j) and
columns (n, p, q), so ``gcol.reshape(C, kh, kw, N, OH, OW)[:, i, j]`` is tap (i, j)'s
contribution for every channel and every output pixel, laid out (C, N, OH, OW); transposed
to (N, C, OH, OW) it lands on the padded-input pixels ``(p*s + i, q*s + j)``, which is the
slice ``i : i + s*(OH-1) + 1 : s`` (and the same for j). Adding, not assigning, is the whole
point: with a 3x3 stride-1 kernel each pixel receives 9 contributions. Finally the padding
is cropped: gradients that land on padding belong to no input pixel.

backward: the rules of a matrix product Y = A @ B (gA = gY B^T, gB = A^T gY) with
A = W2 and B = col, then gx = col2im(gcol). col is rebuilt from x, which costs one more
im2col but keeps the memory of the forward at x and w.
"""
import numpy as np

from layers.im2col import conv_out_size, im2col


# BEGIN YOUR CODE: col2im
def col2im(gcol, x_shape, kh, kw, stride, pad):
    """(C*kh*kw, N*OH*OW) -> (N, C, H, W): add every column entry back onto its pixel."""
    n, c, h, w = x_shape
    oh, ow = conv_out_size(h, kh, stride, pad), conv_out_size(w, kw, stride, pad)
    taps = gcol.reshape(c, kh, kw, n, oh, ow)
    gxpad = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=gcol.dtype)
    for i in range(kh):
        for j in range(kw):
            gxpad[:, :, i:i + stride * (oh - 1) + 1:stride,
                  j:j + stride * (ow - 1) + 1:stride] += taps[:, i, j].transpose(1, 0, 2, 3)
    return gxpad[:, :, pad:pad + h, pad:pad + w]
# END YOUR CODE: col2im


class Conv2dExercise:
    # BEGIN YOUR CODE: backward
    def backward(self, gy):
        """(gx, gw, gb) from gy (N, O, OH, OW); rebuild col from self.x."""
        o, _, kh, kw = self.w.shape
        col = im2col(self.x, kh, kw, self.stride, self.pad)      # (C*kh*kw, N*OH*OW)
        g2 = gy.transpose(1, 0, 2, 3).reshape(o, -1)            # (O, N*OH*OW), columns (n, p, q)
        w2 = self.w.reshape(o, -1)
        gw = (g2 @ col.T).reshape(self.w.shape)
        gx = col2im(w2.T @ g2, self.x.shape, kh, kw, self.stride, self.pad)
        return gx, gw, g2.sum(axis=1)
    # END YOUR CODE: backward
