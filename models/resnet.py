"""ResNet-34 and ResNet-18 (He, Zhang, Ren and Sun 2016, "Deep residual learning for image
recognition", Table 1), with batch norm after every convolution and option-B shortcuts:
identity where the shape is kept, a 1x1 stride-2 projection (plus batch norm) where a
stage halves the map and widens the channels.

Input (N, 3, 224, 224). A basic block is conv 3x3 - BN - ReLU - conv 3x3 - BN, added to
its shortcut, then ReLU. Convolutions have no bias (batch norm's beta is the bias).

    stage    operation                           output      ResNet-34 blocks (18)
    conv1    7x7/2 pad 3, 64; BN; ReLU           64x112x112
    pool1    max 3x3/2 pad 1                     64x56x56
    layer1   basic blocks, 64                    64x56x56     3 (2)
    layer2   basic blocks, 128, first stride 2   128x28x28    4 (2)
    layer3   basic blocks, 256, first stride 2   256x14x14    6 (2)
    layer4   basic blocks, 512, first stride 2   512x7x7      3 (2)
    pool     global average                      512
    fc       512 -> 1000                         1000

    ResNet-34: 21,797,672 parameters (21.8 M), 3,663 M multiply-adds at 224x224 (3.6 G in
               the paper, which counts convolutions and fc only, as here)
    ResNet-18: 11,689,512 parameters (11.7 M), 1,814 M multiply-adds (1.8 G in the paper)

Batch norm keeps PyTorch's conventions (momentum 0.1, eps 1e-5, the unbiased batch
variance in the running variance; see ``layers.batchnorm``). Convolution weights use the
msra filler (He et al. 2015, N(0, 2 / fan-in)); batch norm starts at gamma 1, beta 0; the
classifier starts at zero (the paper does not say; a first loss of ln(classes)). Max pooling rounds down here
(112 -> 56 with pad 1), as the paper's 56x56 requires. Any square input from 32 up works;
the global average pooling adapts.
"""
from __future__ import annotations

import numpy as np

import layers as L
from engine import Module, Sequential
from engine.backend import manual_seed, random_generator
from layers import caffe
from models.spec import NetworkSpec

INPUT_SIZE, MIN_INPUT = 224, 32
BLOCKS = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3)}
WIDTHS = (64, 128, 256, 512)


def conv_bn(cin, cout, k, stride, dtype):
    """A bias-free convolution (pad k // 2) and the batch norm that follows it."""
    return (L.Conv2d(cin, cout, k, stride, k // 2, bias=False, dtype=dtype),
            L.BatchNorm2d(cout, dtype=dtype))


class BasicBlock(Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)), shortcut = x or a projection
    bn(conv 1x1/stride(x)) when ``stride > 1`` or the width changes (option B)."""

    def __init__(self, cin, cout, stride=1, dtype="float32"):
        super().__init__()
        self.conv1, self.bn1 = conv_bn(cin, cout, 3, stride, dtype)
        self.conv2, self.bn2 = conv_bn(cout, cout, 3, 1, dtype)
        self.projection = stride != 1 or cin != cout
        if self.projection:
            self.shortcut_conv, self.shortcut_bn = conv_bn(cin, cout, 1, stride, dtype)

    def forward(self, x):
        out = self.bn2(self.conv2(L.relu(self.bn1(self.conv1(x)))))
        shortcut = self.shortcut_bn(self.shortcut_conv(x)) if self.projection else x
        return L.add_relu(out, shortcut)


class ResNet(Module):
    """``ResNet(depth=34, num_classes=1000, dtype="float32", seed=None)``, depth 18 or 34;
    ``forward(x)`` with x (N, 3, S, S), S >= 32, returns the logits (N, num_classes)."""

    depth = 34

    def __init__(self, num_classes: int = 1000, dtype="float32", seed: int | None = None,
                 depth: int | None = None):
        super().__init__()
        depth = self.depth if depth is None else depth
        if depth not in BLOCKS:
            raise ValueError(f"ResNet: depth must be one of {sorted(BLOCKS)}, got {depth}")
        if seed is not None:
            manual_seed(seed)
        self.depth, self.num_classes, self.dtype = depth, num_classes, np.dtype(dtype)
        self.conv1, self.bn1 = conv_bn(3, 64, 7, 2, dtype)
        self.pool1 = L.MaxPool2d(3, 2, 1, ceil_mode=False)
        cin = 64
        for stage, (count, width) in enumerate(zip(BLOCKS[depth], WIDTHS), start=1):
            blocks = [BasicBlock(cin if i == 0 else width, width,
                                 2 if i == 0 and stage > 1 else 1, dtype) for i in range(count)]
            setattr(self, f"layer{stage}", Sequential(*blocks))
            cin = width
        self.pool = L.GlobalAvgPool2d()
        self.fc = L.Linear(512, num_classes, dtype=dtype)
        rng = random_generator(np)
        for name, p in self.named_parameters():
            if p.ndim == 4:
                p.data = caffe.msra_gaussian(p.shape, rng, dtype)
        # A zero classifier: the first loss is exactly ln(classes), whatever the scale of the
        # pooled features (which grows with the number of residual blocks added up).
        self.fc.weight.data[...] = 0

    def forward(self, x):
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != x.shape[3] or x.shape[2] < MIN_INPUT:
            raise ValueError(f"ResNet-{self.depth}: expected input (N, 3, S, S) with "
                             f"S >= {MIN_INPUT}, got {tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise TypeError(f"ResNet-{self.depth}: input dtype {x.dtype} != model dtype "
                            f"{self.dtype}")
        x = self.pool1(L.relu(self.bn1(self.conv1(x))))
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
        return self.fc(self.pool(x))


class ResNet34(ResNet):
    """ResNet-34: blocks (3, 4, 6, 3)."""
    depth = 34


class ResNet18(ResNet):
    """ResNet-18: blocks (2, 2, 2, 2), the same code."""
    depth = 18


def build(num_classes: int, *, aux_logits: bool = False, dtype="float32", seed=None,
          init: str = "msra", image_size: int | None = None, depth: int = 34) -> ResNet:
    """The network for the trainer (any input side from 32 up)."""
    return ResNet(num_classes=num_classes, dtype=dtype, seed=seed, depth=depth)


# The paper's recipe (section 3.4) for --data runs: batch 256, lr 0.1 divided by 10 when the
# error plateaus (every 30 epochs here, as the usual reproduction does), weight decay 1e-4,
# momentum 0.9, scale augmentation, no dropout; batch norm instead of weight averaging.
RECIPE = {"epochs": 90, "batch_size": 256, "lr": 0.1, "warmup_epochs": 0.0, "lr_step_size": 30,
          "lr_gamma": 0.1, "momentum": 0.9, "wd": 1e-4, "init": "msra", "aux_weight": 0.0,
          "ema_decay": 0.0, "image_size": INPUT_SIZE, "crop_scale": 0.08}

# Without --data: the built-in shapes at 64x64 (60 training images a class), sized for a CPU;
# the rate is the paper's scaled to the batch (0.1 x 16 / 256), after a one-epoch warm-up.
BUILTIN = {"epochs": 8, "batch_size": 16, "lr": 0.005, "warmup_epochs": 1.0, "lr_step_size": 6,
           "image_size": 64, "crop_scale": 0.5, "builtin_train": 60}

PUBLISHED = {
    34: {"params": 21_797_672, "macs": 3_663_761_408,
         "note": "He et al. 2016, Table 1: 3.6 G multiply-adds; 21.8 M parameters with option-B "
                 "shortcuts"},
    18: {"params": 11_689_512, "macs": 1_814_073_344,
         "note": "He et al. 2016, Table 1: 1.8 G multiply-adds; 11.7 M parameters"},
}


def make_spec(depth: int) -> NetworkSpec:
    from functools import partial
    return NetworkSpec(
        name=f"resnet{depth}", title=f"ResNet-{depth}", build=partial(build, depth=depth),
        in_channels=3, min_image_size=MIN_INPUT, max_image_size=512, inits=("msra",),
        recipe=RECIPE, builtin=BUILTIN, builtin_data="shapes", published=PUBLISHED[depth])


SPEC = make_spec(34)
