"""Every convolution of GoogLeNet, derived from the layer table of ``shared/googlenet.md``.

Input 3x224x224. Main path: conv1 (7x7/2, pad 3), conv2_reduce (1x1), conv2 (3x3, pad 1), then
nine inception modules, each with six convolutions (1x1; 3x3 reduce + 3x3; 5x5 reduce + 5x5;
pool projection 1x1). The two auxiliary heads (training only) each add one 1x1 convolution,
512 -> 128 (aux1, on inception_4a) and 528 -> 128 (aux2, on inception_4d), at 4x4 after their
5x5/3 average pool. 57 main-path convolutions + 2 auxiliary = 59, of which 39 are 1x1.

MACs are multiply-adds per image: ``C_in * k * k * C_out * H_out * W_out``.
"""
from __future__ import annotations

from dataclasses import dataclass

# (name, input channels, spatial size, #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj)
INCEPTIONS = (
    ("inception_3a", 192, 28, 64, 96, 128, 16, 32, 32),
    ("inception_3b", 256, 28, 128, 128, 192, 32, 96, 64),
    ("inception_4a", 480, 14, 192, 96, 208, 16, 48, 64),
    ("inception_4b", 512, 14, 160, 112, 224, 24, 64, 64),
    ("inception_4c", 512, 14, 128, 128, 256, 24, 64, 64),
    ("inception_4d", 512, 14, 112, 144, 288, 32, 64, 64),
    ("inception_4e", 528, 14, 256, 160, 320, 32, 128, 128),
    ("inception_5a", 832, 7, 256, 160, 320, 32, 128, 128),
    ("inception_5b", 832, 7, 384, 192, 384, 48, 128, 128),
)
CLASSIFIER_MACS = 1024 * 1000  # the final linear layer, 1.0 M (not a convolution)


@dataclass(frozen=True)
class ConvShape:
    """One convolution: input (c_in, h, w), c_out filters of k x k, stride, pad; ``aux`` heads."""

    name: str
    c_in: int
    h: int
    w: int
    c_out: int
    k: int
    stride: int
    pad: int
    aux: bool = False

    @property
    def h_out(self) -> int:
        return (self.h + 2 * self.pad - self.k) // self.stride + 1

    @property
    def w_out(self) -> int:
        return (self.w + 2 * self.pad - self.k) // self.stride + 1

    def macs(self, batch: int = 1) -> int:
        """Multiply-adds of the forward pass (each backward direction costs the same)."""
        return batch * self.c_in * self.k * self.k * self.c_out * self.h_out * self.w_out

    def flops(self, batch: int = 1) -> int:
        """2 * MACs: a multiply-add counts as two floating-point operations."""
        return 2 * self.macs(batch)

    def min_bytes(self, batch: int = 1, direction: str = "fwd") -> int:
        """Fewest float32 bytes one direction must move: each input read once, the output written once.

        fwd reads x, w and writes y; bwd_data reads gy, w and writes gx; bwd_weight reads x, gy
        and writes gw.
        """
        x = batch * self.c_in * self.h * self.w
        y = batch * self.c_out * self.h_out * self.w_out
        w = self.c_out * self.c_in * self.k * self.k
        return 4 * (x + y + w)

    def same_stride1(self) -> bool:
        """True for the stride-1 "same" convolutions the custom CUDA kernels cover."""
        return self.stride == 1 and self.k in (1, 3, 5) and self.pad == self.k // 2

    def problem(self, batch: int):
        """As a ``kernels.conv_cuda.Problem`` (only for same_stride1 shapes)."""
        from .conv_cuda import Problem  # noqa: PLC0415
        return Problem(batch, self.c_in, self.h, self.w, self.c_out, self.k)


def googlenet_conv_shapes(include_aux: bool = True) -> list[ConvShape]:
    """Every convolution of GoogLeNet in network order (aux heads after the module they follow)."""
    shapes = [
        ConvShape("conv1", 3, 224, 224, 64, 7, 2, 3),
        ConvShape("conv2_reduce", 64, 56, 56, 64, 1, 1, 0),
        ConvShape("conv2", 64, 56, 56, 192, 3, 1, 1),
    ]
    for name, cin, size, n1, r3, n3, r5, n5, pp in INCEPTIONS:
        shapes += [
            ConvShape(f"{name}.conv_1x1", cin, size, size, n1, 1, 1, 0),
            ConvShape(f"{name}.conv_3x3_reduce", cin, size, size, r3, 1, 1, 0),
            ConvShape(f"{name}.conv_3x3", r3, size, size, n3, 3, 1, 1),
            ConvShape(f"{name}.conv_5x5_reduce", cin, size, size, r5, 1, 1, 0),
            ConvShape(f"{name}.conv_5x5", r5, size, size, n5, 5, 1, 2),
            ConvShape(f"{name}.pool_proj", cin, size, size, pp, 1, 1, 0),
        ]
        if include_aux and name == "inception_4a":
            shapes.append(ConvShape("aux1.conv", 512, 4, 4, 128, 1, 1, 0, aux=True))
        if include_aux and name == "inception_4d":
            shapes.append(ConvShape("aux2.conv", 528, 4, 4, 128, 1, 1, 0, aux=True))
    return shapes


def total_macs(shapes=None, batch: int = 1, main_only: bool = True,
               include_classifier: bool = False) -> int:
    """Sum of MACs over ``shapes`` (default: all of GoogLeNet's convolutions) for ``batch`` images.

    ``main_only`` skips the auxiliary heads; ``include_classifier`` adds the final linear layer
    (1024 x 1000 = 1.0 M MACs per image). The paper's "1.5 G multiply-adds" is the main path:
    1.5816 G without the classifier, 1.5827 G with it (googlenet.md's table says about 1.58 G).
    """
    shapes = googlenet_conv_shapes() if shapes is None else shapes
    total = sum(s.macs(batch) for s in shapes if not (main_only and s.aux))
    if include_classifier:
        total += batch * CLASSIFIER_MACS
    return total
