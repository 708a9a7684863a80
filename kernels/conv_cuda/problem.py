"""One convolution problem, and whether the custom kernels support it. Pure Python."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .tables import INT32_MAX, KSIZES

@dataclass(frozen=True)
class Problem:
    """One convolution: x (n, c, h, w), weights (k, c, ksize, ksize), stride 1, pad ksize // 2."""

    n: int
    c: int
    h: int
    w: int
    k: int
    ksize: int

    @property
    def hw(self) -> int:
        return self.h * self.w

    @property
    def pixels(self) -> int:
        """N*H*W: the GEMM dimension that runs over output pixels."""
        return self.n * self.h * self.w

    @property
    def crs(self) -> int:
        """C*k*k: the reduction length of the forward GEMM."""
        return self.c * self.ksize * self.ksize

    @property
    def macs(self) -> int:
        """Multiply-adds of one direction (the same count for all three)."""
        return self.pixels * self.k * self.crs

    def as_tuple(self) -> tuple:
        return (self.n, self.c, self.h, self.w, self.k, self.ksize)

    def shapes(self) -> dict:
        """Array shapes by buffer name."""
        x = (self.n, self.c, self.h, self.w)
        y = (self.n, self.k, self.h, self.w)
        w = (self.k, self.c, self.ksize, self.ksize)
        return {"x": x, "gx": x, "y": y, "gy": y, "w": w, "gw": w, "b": (self.k,), "gb": (self.k,)}

    @classmethod
    def from_shapes(cls, x_shape, w_shape) -> "Problem":
        n, c, h, w = (int(s) for s in x_shape)
        k, _, kh, _ = (int(s) for s in w_shape)
        return cls(n, c, h, w, k, kh)


def _pair(v, name):
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def supports(x_shape, w_shape, stride=1, pad=None, dtype="float32") -> bool:
    """True when the custom kernels can run this convolution.

    That is: x (N, C, H, W) and w (K, C, k, k) with matching C, k in {1, 3, 5}, stride 1 (or
    (1, 1)), pad == k // 2 (None means k // 2), float32, and sizes that 32-bit indexing covers.
    """
    try:
        if len(x_shape) != 4 or len(w_shape) != 4:
            return False
        n, c, h, w = (int(s) for s in x_shape)
        k, c2, kh, kw = (int(s) for s in w_shape)
        if c != c2 or kh != kw or kh not in KSIZES:
            return False
        if min(n, c, h, w, k) < 1:
            return False
        if _pair(stride, "stride") != (1, 1):
            return False
        if pad is not None and _pair(pad, "pad") != (kh // 2, kh // 2):
            return False
        if np.dtype(dtype) != np.float32:
            return False
    except (TypeError, ValueError):
        return False
    # Pixel and per-image offsets are 32-bit ints inside the kernels.
    return n * h * w * max(c, k) <= INT32_MAX and k * c * kh * kw <= INT32_MAX
