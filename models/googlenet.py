"""GoogLeNet (Inception v1), built from the project's layers.

Szegedy et al., "Going deeper with convolutions" (CVPR 2015), Table 1, with the details the
paper leaves open taken from Caffe's ``bvlc_googlenet`` reproduction; ``docs/googlenet.md``
restates the whole specification (layer table, Inception module, auxiliary heads,
initialisation, training and testing recipe). In short, at 224x224:

    conv1 7x7/2 -> pool1 3x3/2 -> LRN -> conv2_reduce 1x1 -> conv2 3x3 -> LRN -> pool2 3x3/2
    -> inception 3a, 3b -> pool3 -> 4a (aux1), 4b, 4c, 4d (aux2), 4e -> pool4 -> 5a, 5b
    -> pool5 7x7 avg -> dropout 40% -> linear 1024 -> classes

6,998,552 parameters and 1.583 G multiply-adds per image on the main path (13,378,280
parameters with the auxiliary heads); ``python -m models.googlenet summary`` prints the table.
Parameter names: ``conv1.weight``, ``inception_3a.conv_3x3_reduce.bias``, ``aux1.fc.weight``...

Supported inputs: square images, side >= 64, NCHW. At 224x224 every layer is
exactly the paper's. Two pools have windows fixed for 224 in Caffe, and adapt
at other sizes so that the parameter shapes never change:

* pool5 averages over the whole final map (7x7/1 at 224);
* the auxiliary heads' pool uses stride ``s = side // 4`` and window
  ``side - 3 s`` over inception_4a/4d's maps, giving 4x4 outputs
  (5x5/3 on 14x14 at 224, as in Caffe).

Run ``python -m models.googlenet --help`` for the command line.
"""
from __future__ import annotations

import numpy as np

import layers as L
from engine import Module
from engine.backend import manual_seed, random_generator
from layers import caffe
from layers.dispatch import pipelined
from models.spec import NetworkSpec, classification_loss

MIN_INPUT = 64

# name: (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj), the paper's Table 1
INCEPTION = {
    "inception_3a": (64, 96, 128, 16, 32, 32),
    "inception_3b": (128, 128, 192, 32, 96, 64),
    "inception_4a": (192, 96, 208, 16, 48, 64),
    "inception_4b": (160, 112, 224, 24, 64, 64),
    "inception_4c": (128, 128, 256, 24, 64, 64),
    "inception_4d": (112, 144, 288, 32, 64, 64),
    "inception_4e": (256, 160, 320, 32, 128, 128),
    "inception_5a": (256, 160, 320, 32, 128, 128),
    "inception_5b": (384, 192, 384, 48, 128, 128),
}
AUX_AFTER = {"inception_4a": "aux1", "inception_4d": "aux2"}


def conv_relu(cin, cout, k, stride=1, pad=0, dtype="float32") -> L.Conv2d:
    """A convolution + ReLU with Caffe's GoogLeNet settings: xavier weights,
    bias 0.2 trained at 2x the learning rate with no weight decay."""
    return L.Conv2d(cin, cout, k, stride, pad, relu=True, bias_fill=caffe.BIAS_FILL,
                    bias_lr_mult=caffe.BIAS_LR_MULT, bias_decay_mult=caffe.BIAS_DECAY_MULT,
                    dtype=dtype)


def fully_connected(fin, fout, bias_fill, dtype) -> L.Linear:
    return L.Linear(fin, fout, bias_fill=bias_fill, bias_lr_mult=caffe.BIAS_LR_MULT,
                    bias_decay_mult=caffe.BIAS_DECAY_MULT, dtype=dtype)


class Inception(Module):
    """Four branches on one input, concatenated along channels in this order:
    1x1; 1x1 reduce -> 3x3; 1x1 reduce -> 5x5; 3x3/1 max pool -> 1x1 projection."""

    def __init__(self, cin, c1, c3r, c3, c5r, c5, pp, dtype="float32"):
        super().__init__()
        self.conv_1x1 = conv_relu(cin, c1, 1, dtype=dtype)
        self.conv_3x3_reduce = conv_relu(cin, c3r, 1, dtype=dtype)
        self.conv_3x3 = conv_relu(c3r, c3, 3, pad=1, dtype=dtype)
        self.conv_5x5_reduce = conv_relu(cin, c5r, 1, dtype=dtype)
        self.conv_5x5 = conv_relu(c5r, c5, 5, pad=2, dtype=dtype)
        self.pool = L.MaxPool2d(3, 1, 1)
        self.pool_proj = conv_relu(cin, pp, 1, dtype=dtype)
        self.out_channels = c1 + c3 + c5 + pp

    def forward(self, x):
        # The three 1x1 convolutions on x run as one (layers.stacked_conv1x1). Every op here
        # works image by image: on the CPU kernels each thread takes its images through the
        # whole module, with one join at the end (layers.dispatch.pipelined).
        with pipelined():
            b1, r3, r5 = L.stacked_conv1x1(x, [self.conv_1x1, self.conv_3x3_reduce,
                                               self.conv_5x5_reduce])
            return L.concat([b1, self.conv_3x3(r3), self.conv_5x5(r5),
                             self.pool_proj(self.pool(x))])


class AuxHead(Module):
    """Auxiliary classifier (training only): avg pool to 4x4, 1x1 conv 128 + ReLU,
    linear 2048 -> 1024 + ReLU, dropout 70%, linear 1024 -> classes."""

    def __init__(self, cin, num_classes, dropout=0.7, dtype="float32"):
        super().__init__()
        self.conv = conv_relu(cin, 128, 1, dtype=dtype)
        self.fc = fully_connected(128 * 4 * 4, 1024, caffe.BIAS_FILL, dtype)
        self.drop = L.Dropout(dropout)
        self.classifier = fully_connected(1024, num_classes, caffe.CLASSIFIER_BIAS_FILL, dtype)

    def forward(self, x):
        side = x.shape[2]
        stride = side // 4
        x = L.avg_pool2d(x, side - 3 * stride, stride)     # (N, C, 4, 4)
        x = self.conv(x).flatten()                          # (N, 2048), C-major
        x = self.drop(L.relu(self.fc(x)))
        return self.classifier(x)


class GlobalAvgPool(Module):
    """pool5: average over the whole map (the paper's 7x7/1 at 224x224)."""

    def forward(self, x):
        return L.avg_pool2d(x, x.shape[2], 1)


class GoogLeNet(Module):
    """``GoogLeNet(num_classes=1000, aux_logits=True, dropout=0.4, aux_dropout=0.7,
    dtype="float32", seed=None, init="xavier")``.

    ``forward(x)`` with x (N, 3, S, S): in ``train()`` mode with aux heads it
    returns ``(logits, aux1, aux2)``, each (N, num_classes); otherwise the logits.

    ``init="xavier"`` is bvlc_googlenet's: xavier weights, biases 0.2 (0 for the
    classifiers). ``init="msra"`` uses Caffe's msra filler for every hidden
    weight, zero biases and zero classifier weights (a first loss of exactly
    ln(classes)); from it the network leaves its initial plateau in far fewer
    steps, which short runs need.
    """

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True, dropout: float = 0.4,
                 aux_dropout: float = 0.7, dtype="float32", seed: int | None = None,
                 init: str = "xavier"):
        super().__init__()
        if seed is not None:
            manual_seed(seed)
        self.num_classes, self.aux_logits, self.dtype = num_classes, aux_logits, np.dtype(dtype)
        self.conv1 = conv_relu(3, 64, 7, stride=2, pad=3, dtype=dtype)
        self.pool1 = L.MaxPool2d(3, 2)
        self.norm1 = L.LRN()
        self.conv2_reduce = conv_relu(64, 64, 1, dtype=dtype)
        self.conv2 = conv_relu(64, 192, 3, pad=1, dtype=dtype)
        self.norm2 = L.LRN()
        self.pool2 = L.MaxPool2d(3, 2)
        cin = 192
        for name, widths in INCEPTION.items():
            if name in ("inception_4a", "inception_5a"):
                setattr(self, "pool3" if name == "inception_4a" else "pool4", L.MaxPool2d(3, 2))
            block = Inception(cin, *widths, dtype=dtype)
            setattr(self, name, block)
            cin = block.out_channels
            if name in AUX_AFTER and aux_logits:
                setattr(self, AUX_AFTER[name], AuxHead(cin, num_classes, aux_dropout, dtype))
        self.pool5 = GlobalAvgPool()
        self.drop = L.Dropout(dropout)
        self.classifier = fully_connected(1024, num_classes, caffe.CLASSIFIER_BIAS_FILL, dtype)
        if init == "msra":
            self._msra_init()
        elif init != "xavier":
            raise ValueError(f"GoogLeNet: init must be 'xavier' or 'msra', got {init!r}")
        self.init = init

    def _msra_init(self):
        rng = random_generator(np)
        for name, p in self.named_parameters():
            if name.endswith("bias") or name.split(".")[-2] == "classifier":
                p.data[...] = 0
            else:
                p.data = caffe.msra_gaussian(p.shape, rng, p.dtype)

    def main_path(self):
        """The main path's (name, module) pairs in order (the aux heads branch off it)."""
        return [(n, m) for n, m in self._modules.items() if not n.startswith("aux")]

    def forward(self, x):
        side = x.shape[-1]
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[2] != side or side < MIN_INPUT:
            raise ValueError(f"GoogLeNet: expected input (N, 3, S, S) with S >= {MIN_INPUT}, "
                             f"got {tuple(x.shape)}")
        if x.dtype != self.dtype:
            raise TypeError(f"GoogLeNet: input dtype {x.dtype} != model dtype {self.dtype}")
        aux = []
        for name, layer in self.main_path():
            if name == "pool1":
                continue                        # pooled by conv1
            if name == "drop":
                x = x.flatten()                 # (N, 1024, 1, 1) -> (N, 1024), C-major
            # conv1 and pool1 as one op (layers.conv.ConvReluMaxPoolFunction): on the CPU
            # kernels conv1's output is pooled band by band, never stored
            x = layer(x, pool=self.pool1) if name == "conv1" else layer(x)
            if self.training and self.aux_logits and name in AUX_AFTER:
                aux.append(getattr(self, AUX_AFTER[name])(x))
        return (x, *aux) if aux else x


AUX_LOSS_WEIGHT = 0.3      # training loss = main + 0.3 * (aux1 + aux2), as in the paper


def training_loss(outputs, labels, aux_weight: float = AUX_LOSS_WEIGHT):
    """Main loss + aux_weight * (aux1 + aux2); returns (total, main) tensors."""
    total, main, _ = classification_loss(outputs, labels, aux_weight)
    return total, main


def build(num_classes: int, *, aux_logits: bool = True, dtype="float32", seed=None,
          init: str = "xavier", image_size: int | None = None) -> GoogLeNet:
    """The network for the trainer; GoogLeNet adapts to any ``image_size`` by itself."""
    return GoogLeNet(num_classes=num_classes, aux_logits=aux_logits, dtype=dtype, seed=seed,
                     init=init)


# The paper's recipe (section 6) for --data runs: SGD with momentum 0.9, the rate lowered by 4%
# every 8 epochs, aux losses at 0.3, Polyak averaging, crops of 8-100% of the area. Caffe's
# quick_solver used lr 0.01 and weight decay 2e-4 at batch 32.
RECIPE = {"epochs": 90, "batch_size": 32, "lr": 0.01, "warmup_epochs": 0.0, "lr_step_size": 8,
          "lr_gamma": 0.96, "momentum": 0.9, "wd": 2e-4, "init": "xavier",
          "aux_weight": AUX_LOSS_WEIGHT, "ema_decay": 0.999, "image_size": 224,
          "crop_scale": 0.08}

# Without --data: the built-in shapes dataset, sized so that a 2-core CPU finishes in a few
# minutes. docs/googlenet.md ("The built-in run") explains each choice.
BUILTIN = {"epochs": 6, "batch_size": 32, "optimizer": "adam", "lr": 3e-4, "warmup_epochs": 0.2,
           "image_size": 64, "crop_scale": 0.65, "init": "msra", "center_images": True,
           "builtin_train": 330}

SPEC = NetworkSpec(
    name="googlenet", title="GoogLeNet (Inception v1)", build=build, in_channels=3,
    min_image_size=MIN_INPUT, max_image_size=512, aux_heads=2, inits=("xavier", "msra"),
    recipe=RECIPE, builtin=BUILTIN, builtin_data="shapes",
    published={"params": 6_998_552, "macs": 1_583_000_000,
               "note": "Szegedy et al. 2015, Table 1: about 1.5 G multiply-adds (1.58 G from the "
                       "shapes), 7.0 M parameters without the auxiliary heads (13.4 M with)"})


if __name__ == "__main__":
    from trainer.cli import main
    raise SystemExit(main(SPEC))
