"""LeNet-5 (LeCun, Bottou, Bengio and Haffner 1998, "Gradient-based learning applied to
document recognition", section II.B and appendix A), built from the project's layers.

Input (N, 1, 32, 32): a 28x28 digit centred in a 32x32 field. Every layer is followed by
the squashing function f(a) = 1.7159 tanh(2a/3) (appendix A), except the output.

    layer   operation                                   output     params  multiply-adds
    C1      conv 5x5, 6 maps                            6x28x28       156        117,600
    S2      2x2 sum * coef + bias (trainable)           6x14x14        12          4,704
    C3      conv 5x5, 16 maps, Table I connections      16x10x10    1,516        150,000
    S4      2x2 sum * coef + bias (trainable)           16x5x5         32          1,600
    C5      conv 5x5, 120 maps (full connections)       120x1x1    48,120         48,000
    F6      fully connected                             84         10,164         10,080
    output  fully connected (replaces the RBF units)    10            850            840
    total                                                          60,850        332,824

The paper's connection counts (its Table-free text) are these multiply-adds plus one bias
connection per output unit: C1 122,304, S2 5,880, C3 151,600, S4 2,000; its parameter
counts are C1 156, S2 12, C3 1,516, S4 32, C5 48,120, F6 10,164.

Differences from the paper, said plainly: the output layer is a linear layer trained with
softmax cross-entropy, not the paper's Euclidean RBF units with fixed 7x12 bitmap centres
and its MAP criterion (840 weights, no biases; here 840 weights + 10 biases). Weights are
initialised as the paper says (uniform in +-2.4 / fan-in; ``init="lecun_normal"`` for the
variance-preserving alternative), biases at 0 and the subsampling coefficients at 1/4 (so S2
and S4 start as plain averages).
"""
from __future__ import annotations

import numpy as np

import layers as L
from engine import Module
from engine.backend import manual_seed, random_generator
from models.spec import NetworkSpec

INPUT_SIZE = 32
INITS = ("lecun", "lecun_normal")

# Table I of the paper: the S2 maps each C3 map reads. Maps 0-5 read 3 contiguous maps,
# 6-11 four contiguous ones, 12-14 four non-contiguous ones, and map 15 all six.
C3_TABLE = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)


class LeNet5(Module):
    """``LeNet5(num_classes=10, dtype="float32", seed=None, init="lecun")``; ``forward(x)``
    with x (N, 1, 32, 32) returns the logits (N, num_classes).

    ``init="lecun"`` is the paper's (appendix A): weights uniform in +-2.4 / F, F the unit's
    fan-in. Each layer then passes on about 1.4 / sqrt(F) of its input's scale, so the signal
    shrinks layer by layer and plain SGD first sits on a plateau for a few epochs (the paper's
    second-order method rescaled each weight's step). ``init="lecun_normal"`` draws
    N(0, 1 / F) instead (LeCun, Bottou, Orr and Mueller 1998, "Efficient BackProp",
    section 4.6), which with the scaled tanh keeps unit variance from layer to layer.
    """

    def __init__(self, num_classes: int = 10, dtype="float32", seed: int | None = None,
                 init: str = "lecun"):
        super().__init__()
        if seed is not None:
            manual_seed(seed)
        self.num_classes, self.dtype = num_classes, np.dtype(dtype)
        self.c1 = L.Conv2d(1, 6, 5, dtype=dtype)
        self.s2 = L.Subsample2d(6, 2, dtype=dtype)
        self.c3 = L.TableConv2d(6, C3_TABLE, 5, dtype=dtype)
        self.s4 = L.Subsample2d(16, 2, dtype=dtype)
        self.c5 = L.Conv2d(16, 120, 5, dtype=dtype)
        self.f6 = L.Linear(120, 84, dtype=dtype)
        self.output = L.Linear(84, num_classes, dtype=dtype)
        if init not in INITS:
            raise ValueError(f"LeNet5: init must be one of {INITS}, got {init!r}")
        self.init = init
        self._init_weights(init)

    def _init_weights(self, init):
        """Weights by fan-in F (C3: each map's own, |table[o]| x 25); biases 0; the
        subsampling coefficients keep 1/4."""
        rng = random_generator(np)
        for name, p in self.named_parameters():
            layer, kind = name.split(".")
            if kind == "bias":
                p.data[...] = 0
            elif kind == "weight":
                if layer == "c3":
                    rows = np.repeat(np.arange(len(C3_TABLE)), [len(t) for t in C3_TABLE])
                    fan = np.array([len(C3_TABLE[r]) * 25 for r in rows], float)[:, None, None]
                else:
                    fan = float(np.prod(p.shape[1:]))
                if init == "lecun":
                    w = rng.uniform(-1, 1, p.shape) * (2.4 / fan)
                else:
                    w = rng.standard_normal(p.shape) / np.sqrt(fan)
                p.data = w.astype(p.dtype)

    def forward(self, x):
        if x.ndim != 4 or tuple(x.shape[1:]) != (1, INPUT_SIZE, INPUT_SIZE):
            raise ValueError(f"LeNet5: expected input (N, 1, {INPUT_SIZE}, {INPUT_SIZE}), got "
                             f"{tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise TypeError(f"LeNet5: input dtype {x.dtype} != model dtype {self.dtype}")
        squash = L.scaled_tanh
        x = squash(self.s2(squash(self.c1(x))))
        x = squash(self.s4(squash(self.c3(x))))
        x = squash(self.c5(x)).flatten()          # (N, 120, 1, 1) -> (N, 120)
        return self.output(squash(self.f6(x)))


def build(num_classes: int, *, aux_logits: bool = False, dtype="float32", seed=None,
          init: str = "lecun", image_size: int | None = None) -> LeNet5:
    """The network for the trainer (32x32 inputs only)."""
    return LeNet5(num_classes=num_classes, dtype=dtype, seed=seed, init=init)


# For --data runs. The paper trained 20 passes with stochastic diagonal Levenberg-Marquardt
# (a per-weight step size from a running Hessian estimate), which this engine does not have;
# plain SGD with momentum and a step schedule stands in for it.
RECIPE = {"epochs": 20, "batch_size": 16, "lr": 0.02, "warmup_epochs": 0.0, "lr_step_size": 8,
          "lr_gamma": 0.3, "momentum": 0.9, "wd": 5e-4, "init": "lecun", "aux_weight": 0.0,
          "ema_decay": 0.0, "image_size": INPUT_SIZE, "crop_scale": 0.7}

# Without --data: scikit-learn's digits (data/digits.py), with small random crops (zooms and
# shifts of a pixel or two) as the only augmentation: no flips and no colour changes, which
# would turn digits into other digits or mean nothing on grayscale. The lecun_normal
# initialisation skips the paper's initial plateau (see LeNet5), so 8 epochs suffice.
BUILTIN = {"epochs": 8, "lr": 0.02, "lr_step_size": 4, "init": "lecun_normal", "augment": {"jitter": 0.0, "flip": 0.0, "lighting": 0.0,
                                     "ratio": (0.85, 1.0 / 0.85)}}

SPEC = NetworkSpec(
    name="lenet5", title="LeNet-5", build=build, in_channels=1, min_image_size=INPUT_SIZE,
    max_image_size=INPUT_SIZE, inits=INITS, recipe=RECIPE, builtin=BUILTIN,
    builtin_data="digits",
    published={"params": 60_850, "macs": 332_824, "num_classes": 10,
               "note": "LeCun et al. 1998, section II.B: C1 156, S2 12, C3 1,516, S4 32, "
                       "C5 48,120, F6 10,164 trainable parameters (the RBF output's 840 "
                       "weights are a linear layer's 840 + 10 biases here); connections "
                       "= multiply-adds + one bias per unit (C1 122,304, C3 151,600)"})


if __name__ == "__main__":
    from trainer.cli import main
    raise SystemExit(main(SPEC))
