"""Network in Network (Lin, Chen and Yan 2014), the CIFAR-10 model: three "mlpconv" layers,
each a convolution followed by two 1x1 convolutions (the paper's cross-channel parametric
pooling, "cccp"), and global average pooling instead of fully connected layers.

Input (N, 3, 32, 32). Every convolution but cccp6 is followed by a ReLU.

    layer  operation                            output     params     multiply-adds
    conv1  5x5 pad 2, 192                       192x32x32   14,592       14,745,600
    cccp1  1x1, 160                             160x32x32   30,880       31,457,280
    cccp2  1x1, 96                              96x32x32    15,456       15,728,640
    pool1  max 3x3/2, dropout 0.5               96x16x16
    conv2  5x5 pad 2, 192                       192x16x16  460,992      117,964,800
    cccp3  1x1, 192                             192x16x16   37,056        9,437,184
    cccp4  1x1, 192                             192x16x16   37,056        9,437,184
    pool2  average 3x3/2, dropout 0.5           192x8x8
    conv3  3x3 pad 1, 192                       192x8x8    331,968       21,233,664
    cccp5  1x1, 192                             192x8x8     37,056        2,359,296
    cccp6  1x1, 10 (one map per class)          10x8x8       1,930          122,880
    pool3  global average (8x8)                 10
    total                                                  966,986      222,486,528

These are the widths of the authors' CIFAR-10 release (conv 192 / cccp 160, 96; then
192s; about 0.97 M parameters); pooled sizes round up as in Caffe. cccp6's maps are the
class confidence maps: it has no ReLU, so that the averaged logits may be negative.
Weights use the msra filler (He et al. 2015), cccp6's scaled by 0.01 so that the first
loss is about ln(classes); biases 0. The ImageNet NiN is not built here.
Other input sizes from 16 up work unchanged (global average pooling adapts).
"""
from __future__ import annotations

import numpy as np

import layers as L
from engine import Module
from engine.backend import manual_seed, random_generator
from layers import caffe
from models.spec import NetworkSpec

INPUT_SIZE, MIN_INPUT = 32, 16

# Three mlpconv layers: (conv out, kernel, pad, 1x1 widths), then the pool after each.
MLPCONV = (
    ("conv1", 192, 5, 2, (("cccp1", 160), ("cccp2", 96))),
    ("conv2", 192, 5, 2, (("cccp3", 192), ("cccp4", 192))),
    ("conv3", 192, 3, 1, (("cccp5", 192), ("cccp6", None))),   # None: num_classes
)


class NiN(Module):
    """``NiN(num_classes=10, dropout=0.5, dtype="float32", seed=None)``; ``forward(x)`` with x
    (N, 3, S, S), S >= 16 (32 for CIFAR-10), returns the logits (N, num_classes)."""

    def __init__(self, num_classes: int = 10, dropout: float = 0.5, dtype="float32",
                 seed: int | None = None):
        super().__init__()
        if seed is not None:
            manual_seed(seed)
        self.num_classes, self.dtype = num_classes, np.dtype(dtype)
        rng = random_generator(np)
        cin = 3
        for i, (name, cout, k, pad, cccps) in enumerate(MLPCONV, start=1):
            layers = [(name, cout, k, pad)] + [(n, w or num_classes, 1, 0) for n, w in cccps]
            for lname, width, ks, p in layers:
                conv = L.Conv2d(cin, width, ks, pad=p, relu=lname != "cccp6", dtype=dtype)
                conv.weight.data = caffe.msra_gaussian(conv.weight.shape, rng, dtype)
                if lname == "cccp6":     # the class maps start near 0: a first loss of ln(K)
                    conv.weight.data *= 0.01
                setattr(self, lname, conv)
                cin = width
            if i == 1:
                self.pool1, self.drop1 = L.MaxPool2d(3, 2), L.Dropout(dropout)
            elif i == 2:
                self.pool2, self.drop2 = L.AvgPool2d(3, 2), L.Dropout(dropout)
        self.pool3 = L.GlobalAvgPool2d()

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3] or x.shape[2] < MIN_INPUT:
            raise ValueError(f"NiN: expected input (N, 3, S, S) with S >= {MIN_INPUT}, got "
                             f"{tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise TypeError(f"NiN: input dtype {x.dtype} != model dtype {self.dtype}")
        for module in self._modules.values():
            x = module(x)
        return x


def build(num_classes: int, *, aux_logits: bool = False, dtype="float32", seed=None,
          init: str = "msra", image_size: int | None = None) -> NiN:
    """The network for the trainer (any input side from 16 up)."""
    return NiN(num_classes=num_classes, dtype=dtype, seed=seed)


# For --data runs (CIFAR-10-sized images): SGD with momentum, the rate divided by 10 twice.
# Lin et al. trained with dropout on the outputs of the first two mlpconv layers, as here,
# and weight decay; the schedule is ours.
RECIPE = {"epochs": 120, "batch_size": 128, "lr": 0.05, "warmup_epochs": 1.0, "lr_step_size": 40,
          "lr_gamma": 0.1, "momentum": 0.9, "wd": 1e-4, "init": "msra", "aux_weight": 0.0,
          "ema_decay": 0.0, "image_size": INPUT_SIZE, "crop_scale": 0.5}

# Without --data: the built-in shapes at 32x32 (60 training images a class), sized for a CPU.
BUILTIN = {"epochs": 8, "batch_size": 16, "lr": 0.02, "lr_step_size": 6, "image_size": INPUT_SIZE,
           "crop_scale": 0.5, "builtin_size": 40, "builtin_train": 60}

SPEC = NetworkSpec(
    name="nin", title="Network in Network (CIFAR-10 model)", build=build, in_channels=3,
    min_image_size=MIN_INPUT, max_image_size=512, inits=("msra",), recipe=RECIPE,
    builtin=BUILTIN, builtin_data="shapes",
    published={"params": 966_986, "macs": 222_486_528, "num_classes": 10,
               "note": "Lin et al. 2014, the CIFAR-10 model of the authors' release: "
                       "about 0.97 M parameters; 0.22 G multiply-adds at 32x32"})


if __name__ == "__main__":
    from trainer.cli import main
    raise SystemExit(main(SPEC))
