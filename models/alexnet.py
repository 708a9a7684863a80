"""AlexNet (Krizhevsky, Sutskever and Hinton 2012) as Caffe's ``bvlc_alexnet`` reproduces it:
the two GPU towers as grouped convolutions (``group: 2``), LRN after conv1 and conv2.

Input (N, 3, 227, 227). Every convolution and fc6/fc7 is followed by a ReLU.

    layer  operation                                       output      params      multiply-adds
    conv1  11x11/4, 96                                     96x55x55       34,944     105,415,200
    norm1  LRN 5, alpha 1e-4, beta 0.75 (Caffe: alpha/5)
    pool1  max 3x3/2                                       96x27x27
    conv2  5x5 pad 2, 256, 2 groups                        256x27x27     307,456     223,948,800
    norm2  LRN
    pool2  max 3x3/2                                       256x13x13
    conv3  3x3 pad 1, 384 (reads both towers)              384x13x13     885,120     149,520,384
    conv4  3x3 pad 1, 384, 2 groups                        384x13x13     663,936     112,140,288
    conv5  3x3 pad 1, 256, 2 groups                        256x13x13     442,624      74,760,192
    pool5  max 3x3/2                                       256x6x6
    fc6    9216 -> 4096, dropout 0.5                       4096       37,752,832      37,748,736
    fc7    4096 -> 4096, dropout 0.5                       4096       16,781,312      16,777,216
    fc8    4096 -> 1000                                    1000        4,097,000       4,096,000
    total                                                             60,965,224     724,406,816

60,965,224 parameters is bvlc_alexnet's count; the multiply-adds are those of the
convolutions and fully connected layers (0.72 G). Caffe rounds pooled sizes up (they are
exact at 227). Initialisation is bvlc_alexnet's: Gaussian weights (std 0.01, fc6 and fc7
0.005), biases 0 for conv1, conv3 and fc8 and 0.1 elsewhere, biases trained at twice the
learning rate without weight decay.

Other square sizes from 67 up work when the model is built for them (``image_size=``):
fc6 then reads pool5's 256 x s x s values, so its parameter count changes with the size.
"""
from __future__ import annotations

import numpy as np

import layers as L
from engine import Module
from engine.backend import manual_seed, random_generator
from layers import caffe
from models.spec import NetworkSpec

INPUT_SIZE, MIN_INPUT = 227, 67
INITS = ("gaussian", "msra")

# name: (in, out, kernel, stride, pad, groups, bias fill)
CONVS = {
    "conv1": (3, 96, 11, 4, 0, 1, 0.0),
    "conv2": (96, 256, 5, 1, 2, 2, 0.1),
    "conv3": (256, 384, 3, 1, 1, 1, 0.0),
    "conv4": (384, 384, 3, 1, 1, 2, 0.1),
    "conv5": (384, 256, 3, 1, 1, 2, 0.1),
}


def gaussian(rng, shape, std, dtype):
    """Caffe's "gaussian" filler, N(0, std^2), drawn directly in the model's dtype."""
    w = rng.standard_normal(shape, dtype=np.dtype(dtype).type)
    w *= std
    return w


def pool5_side(image_size: int) -> int:
    """pool5's side for a square input: conv1 11x11/4, then three 3x3/2 pools (ceil)."""
    side = (image_size - 11) // 4 + 1
    for _ in range(3):
        side = caffe.pooled_size(side, 3, 2, 0)
    return side


class AlexNet(Module):
    """``AlexNet(num_classes=1000, dropout=0.5, dtype="float32", seed=None, image_size=227,
    init="gaussian")``; ``forward(x)`` with x (N, 3, S, S), S = ``image_size``, returns the
    logits.

    ``init="gaussian"`` is bvlc_alexnet's (see above). ``init="msra"`` draws every hidden
    weight from Caffe's msra filler (N(0, 2 / fan-in)) with zero biases and a zero fc8 (a
    first loss of ln(classes)): from std 0.01 the signal shrinks about 10x per layer, and a
    short run does not leave chance level.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5, dtype="float32",
                 seed: int | None = None, image_size: int = INPUT_SIZE, init: str = "gaussian"):
        super().__init__()
        if image_size < MIN_INPUT:
            raise ValueError(f"AlexNet: image_size must be >= {MIN_INPUT}, got {image_size}")
        if init not in INITS:
            raise ValueError(f"AlexNet: init must be one of {INITS}, got {init!r}")
        if seed is not None:
            manual_seed(seed)
        self.num_classes, self.dtype, self.image_size = num_classes, np.dtype(dtype), image_size
        rng = random_generator(np)
        for name, (cin, cout, k, s, pad, groups, bias) in CONVS.items():
            conv = L.Conv2d(cin, cout, k, s, pad, relu=True, bias_fill=bias, groups=groups,
                            bias_lr_mult=caffe.BIAS_LR_MULT,
                            bias_decay_mult=caffe.BIAS_DECAY_MULT, dtype=dtype)
            conv.weight.data = gaussian(rng, conv.weight.shape, 0.01, dtype)
            setattr(self, name, conv)
            if name in ("conv1", "conv2"):
                setattr(self, "norm" + name[-1], L.LRN(5, 1e-4, 0.75, 1.0))
                setattr(self, "pool" + name[-1], L.MaxPool2d(3, 2))
        self.pool5 = L.MaxPool2d(3, 2)
        side = pool5_side(image_size)
        fcs = {"fc6": (256 * side * side, 4096, 0.005, 0.1), "fc7": (4096, 4096, 0.005, 0.1),
               "fc8": (4096, num_classes, 0.01, 0.0)}
        for name, (fin, fout, std, bias) in fcs.items():
            fc = L.Linear(fin, fout, bias_fill=bias, bias_lr_mult=caffe.BIAS_LR_MULT,
                          bias_decay_mult=caffe.BIAS_DECAY_MULT, dtype=dtype)
            fc.weight.data = gaussian(rng, fc.weight.shape, std, dtype)
            setattr(self, name, fc)
            if name != "fc8":
                setattr(self, "drop" + name[-1], L.Dropout(dropout))
        if init == "msra":
            for name, p in self.named_parameters():
                if name == "fc8.weight" or name.endswith("bias"):
                    p.data[...] = 0
                else:
                    p.data = caffe.msra_gaussian(p.shape, rng, dtype)
        self.init = init

    def forward(self, x):
        s = self.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, s, s):
            raise ValueError(f"AlexNet: expected input (N, 3, {s}, {s}) (built for "
                             f"image_size={s}), got {tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise TypeError(f"AlexNet: input dtype {x.dtype} != model dtype {self.dtype}")
        x = self.pool1(self.norm1(self.conv1(x)))
        x = self.pool2(self.norm2(self.conv2(x)))
        x = self.pool5(self.conv5(self.conv4(self.conv3(x)))).flatten()   # C-major, as Caffe
        x = self.drop6(L.relu(self.fc6(x)))
        x = self.drop7(L.relu(self.fc7(x)))
        return self.fc8(x)


def build(num_classes: int, *, aux_logits: bool = False, dtype="float32", seed=None,
          init: str = "gaussian", image_size: int | None = None) -> AlexNet:
    """The network for the trainer, its fc6 sized for ``image_size`` (227 by default)."""
    return AlexNet(num_classes=num_classes, dtype=dtype, seed=seed,
                   image_size=image_size or INPUT_SIZE, init=init)


# bvlc_alexnet's solver for --data runs: batch 256, lr 0.01 divided by 10 every 100,000
# iterations (about 20 epochs of ImageNet), 450,000 iterations (about 90 epochs), momentum 0.9,
# weight decay 5e-4; the paper's augmentation was random 224 crops (227 in Caffe) and flips.
RECIPE = {"epochs": 90, "batch_size": 256, "lr": 0.01, "warmup_epochs": 0.0, "lr_step_size": 20,
          "lr_gamma": 0.1, "momentum": 0.9, "wd": 5e-4, "init": "gaussian", "aux_weight": 0.0,
          "ema_decay": 0.0, "image_size": INPUT_SIZE, "crop_scale": 0.08}

# Without --data: the built-in shapes at the smallest input AlexNet takes (67x67: pool5 is
# then 1x1 and fc6 has 256 inputs), sized for a CPU, from the msra initialisation. The rate
# warms up over two epochs: fc8 reads 4096 features, and at full rate its first steps
# overshoot.
BUILTIN = {"epochs": 15, "batch_size": 32, "lr": 0.002, "warmup_epochs": 2.0, "lr_step_size": 10,
           "image_size": MIN_INPUT, "crop_scale": 0.5, "init": "msra"}

SPEC = NetworkSpec(
    name="alexnet", title="AlexNet (bvlc_alexnet)", build=build, in_channels=3,
    min_image_size=MIN_INPUT, max_image_size=512, inits=INITS, recipe=RECIPE,
    builtin=BUILTIN, builtin_data="shapes",
    published={"params": 60_965_224, "macs": 724_406_816,
               "note": "Caffe's bvlc_alexnet: 60,965,224 parameters at 227x227 and 1000 classes "
                       "(about 0.72 G multiply-adds); Krizhevsky et al. 2012 speak of 60 million"})


if __name__ == "__main__":
    from trainer.cli import main
    raise SystemExit(main(SPEC))
