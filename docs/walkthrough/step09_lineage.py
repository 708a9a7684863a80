# Step 9. The lineage on one engine: LeNet-5 -> AlexNet -> GoogLeNet -> ResNet-34.
#
# Run from the repository root:   python docs/walkthrough/step09_lineage.py
#
# GoogLeNet did not come from nowhere. Each network below is built in models/ from the same
# layers and the same engine, and each added one idea the next ones kept:
#
#   LeNet-5 (1998)    convolution + subsampling + a small classifier, trained end to end by
#                     backpropagation; 60 thousand parameters, a third of a million
#                     multiply-adds for a 32x32 digit.
#   AlexNet (2012)    the same recipe made wide and deep enough for ImageNet, on two GPUs (its
#                     grouped convolutions), with ReLU, dropout and LRN; 61 M parameters, most
#                     of them (58 M) in the three fully connected layers.
#   NiN (2013)        1x1 convolutions as a small network at every pixel, and global average
#                     pooling instead of big fully connected layers (models/nin.py).
#   GoogLeNet (2014)  Inception modules: 1x1 reductions before the 3x3 and 5x5 convolutions,
#                     average pooling at the end: 22 layers, 12x fewer parameters than AlexNet.
#   ResNet-34 (2015)  34 layers made trainable by shortcuts (y = F(x) + x) and batch norm;
#                     no fully connected layer but the classifier.
#
# Below we measure each network's parameters and multiply-adds at its own input size with
# engine.Profiler (one forward pass each), check them against the published figures, and
# draw them beside the published error rates. Then LeNet-5 trains for two epochs on real
# scanned digits (scikit-learn's, when installed) to show that the oldest network of the
# line learns on this engine too.
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("WALKTHROUGH_OUT") or ROOT / "docs" / "walkthrough" / "out")
OUT.mkdir(parents=True, exist_ok=True)

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import layers as L  # noqa: E402
from engine import SGD, Profiler, no_grad  # noqa: E402
from models.alexnet import AlexNet  # noqa: E402
from models.googlenet import GoogLeNet  # noqa: E402
from models.lenet5 import LeNet5  # noqa: E402
from models.resnet import ResNet34  # noqa: E402

# name: (constructor, input shape, published parameters, published multiply-adds,
#        published error (%), what that error is)
LINEAGE = {
    "LeNet-5\n1998": (lambda: LeNet5(seed=0), (1, 1, 32, 32), 60_850, 332_824, 0.95,
                      "MNIST test, top-1 (LeCun et al. 1998)"),
    "AlexNet\n2012": (lambda: AlexNet(seed=0), (1, 3, 227, 227), 60_965_224, 724_406_816, 18.2,
                      "ImageNet val, top-5, 1 CNN, 10 crops (Krizhevsky et al., Table 2)"),
    "GoogLeNet\n2014": (lambda: GoogLeNet(aux_logits=False, seed=0), (1, 3, 224, 224),
                        6_998_552, 1_582_671_872, 9.15,
                        "ImageNet val, top-5, 1 model, 10 crops (Szegedy et al., Table 5)"),
    "ResNet-34\n2015": (lambda: ResNet34(seed=0), (1, 3, 224, 224), 21_797_672, 3_663_761_408,
                        7.46, "ImageNet val, top-5, option B, 10 crops (He et al., Table 3)"),
}

print(f"{'network':<12}{'parameters':>14}{'multiply-adds':>16}{'fc share':>10}   published error")
measured = {}
t0 = time.perf_counter()
for name, (make, shape, params, macs, error, what) in LINEAGE.items():
    net = make()
    net.eval()
    with no_grad(), Profiler(net) as prof:
        net(np.zeros(shape, np.float32))
    count = net.num_parameters()
    total = sum(r.macs for r in prof.records if r.phase == "forward")
    # How many parameters sit in fully connected layers.
    fc = sum(m.num_parameters() for _, m in net.named_modules() if isinstance(m, L.Linear))
    measured[name] = (count, total, fc / count)
    label = name.replace("\n", " ")
    print(f"{label:<12}{count:>14,}{total:>16,}{fc / count:>10.0%}   {error}% ({what})")
    assert count == params, f"{label}: {count} parameters, published {params}"
    assert total == macs, f"{label}: {total} multiply-adds, expected {macs}"
    del net
print(f"(built and measured in {time.perf_counter() - t0:.1f} s)")

# What the table says: AlexNet's fully connected layers hold 96% of its parameters;
# GoogLeNet and ResNet-34 put their work into convolutions instead.
assert measured["AlexNet\n2012"][2] > 0.9 and measured["GoogLeNet\n2014"][2] < 0.2
assert measured["ResNet-34\n2015"][2] < 0.05
# GoogLeNet: fewer parameters than AlexNet by a factor 8.7, twice the multiply-adds.
ratio = measured["AlexNet\n2012"][0] / measured["GoogLeNet\n2014"][0]
assert 8 < ratio < 9.5, ratio

# ---------------------------------------------------------------- LeNet-5 on real digits
digits_note = "scikit-learn is not installed: LeNet-5's training run skipped"
try:
    from data.digits import load_sklearn_digits, split_indices, to_lenet_image
    images, labels = load_sklearn_digits()
except Exception as exc:      # the optional extra is missing
    images = None
    print(f"\n{digits_note} ({exc})")
if images is not None:
    x = np.stack([np.asarray(to_lenet_image(a), np.float32) for a in images])[:, None] / 127.5 - 1
    splits = split_indices(labels)
    train, test = np.array(splits["train"]), np.array(splits["test"])
    net = LeNet5(seed=0, init="lecun_normal")
    opt = SGD(net.parameters(), lr=0.02, momentum=0.9, weight_decay=5e-4)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for epoch in range(2):
        net.train()
        for batch in np.array_split(rng.permutation(train), len(train) // 16):
            loss = L.softmax_cross_entropy(net(x[batch]), labels[batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
    net.eval()
    with no_grad():
        accuracy = float((net(x[test]).numpy().argmax(1) == labels[test]).mean())
    seconds = time.perf_counter() - t0
    digits_note = (f"LeNet-5 here: {100 * accuracy:.1f}% on {len(test)} held-out scanned digits "
                   f"after 2 epochs ({seconds:.1f} s)")
    print(f"\n{digits_note}")
    assert accuracy > 0.9, accuracy

# ---------------------------------------------------------------------- the picture
names = list(LINEAGE)
fig, axes = plt.subplots(1, 3, figsize=(13, 4.2))
colors = ["#8c8c8c", "#d95f02", "#1b9e77", "#7570b3"]
panels = [("parameters", [measured[n][0] for n in names], True),
          ("multiply-adds per image", [measured[n][1] for n in names], True),
          ("published error (%)", [LINEAGE[n][4] for n in names], False)]
for ax, (title, values, log) in zip(axes, panels):
    bars = ax.bar(names, values, color=colors)
    if log:
        ax.set_yscale("log")
    ax.set_title(title)
    for bar, v in zip(bars, values):
        text = f"{v / 1e6:.2f} M" if v >= 1e5 else (f"{v:,}" if log else f"{v}%")
        if v >= 1e9:
            text = f"{v / 1e9:.2f} G"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom",
                    fontsize=8)
    ax.tick_params(axis="x", labelsize=8)
axes[2].set_ylim(0, 22)
axes[2].text(0.98, 0.97, "LeNet-5: MNIST top-1\nothers: ImageNet top-5, 10 crops",
             transform=axes[2].transAxes, va="top", ha="right", fontsize=8)
fig.suptitle("From LeNet-5 to ResNet-34, counted on this engine. " + digits_note, fontsize=9)
fig.tight_layout()
path = OUT / "step09_lineage.png"
fig.savefig(path, dpi=110)
print(f"\nwrote {path}")
