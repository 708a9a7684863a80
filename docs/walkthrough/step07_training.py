# Step 7. A short training run on the built-in data, its curves, and what the first layer sees.
#
# Run from the repository root:   python docs/walkthrough/step07_training.py     (~6 s on 2 cores)
#
# Training is a loop of four lines, the same for any model built on the engine:
#
#     outputs = model(images)                      # forward: builds the graph
#     loss = cross-entropy(outputs, labels)        # one number: how wrong the model is
#     optimizer.zero_grad(); loss.backward()       # every parameter's .grad = d loss / d param
#     optimizer.step()                             # param -= lr * (momentum-smoothed) grad
#
# What this step can and cannot show on a CPU in a few seconds. The full GoogLeNet runs this
# same loop (step 8 profiles one of its training steps), but it needs thousands of steps
# before its loss moves: ImageNet training took the authors a week of GPUs, and even the
# project's built-in run (`python -m models.googlenet train`, timed in the top-level README)
# takes minutes. So the curves here come from a *reduced* GoogLeNet built from the same
# parts: the same stem (7x7/2 convolution, ceil-mode max pool, LRN, 1x1 then 3x3
# convolution, LRN, max pool), two of the same Inception modules with narrower branches
# instead of nine, the same global average pool, dropout and linear classifier, Caffe's
# initialisation. 0.1 M parameters instead of 7 M, on 32x32 images of the project's
# synthetic dataset (discs, stars, triangles and stripes over noisy backgrounds,
# random colours). It learns visibly in about a hundred steps; do not read more into the
# numbers than "the loop, the loss and the gradients work together".
import csv
import math
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

matplotlib.use("Agg")                    # files only, no window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import layers as L  # noqa: E402
from engine import SGD, Module, manual_seed, no_grad  # noqa: E402
from layers import caffe  # noqa: E402
from data import DataLoader, ImageFolder  # noqa: E402
from data.builtin import make_synthetic_imagefolder  # noqa: E402
from data.transforms import IMAGENET_MEAN, IMAGENET_STD, ToArray  # noqa: E402
from models.googlenet import (GlobalAvgPool, Inception, conv_relu,  # noqa: E402
                              fully_connected, training_loss)

CLASSES, SIDE, BATCH, EPOCHS, LR = 4, 32, 32, 12, 0.01

# ---------------------------------------------------------------------------------------
# The data: 64 training and 20 validation images per class, drawn once (deterministically,
# from seed 0) and written as PNG files in the usual ImageFolder layout; a second run
# reuses them. The DataLoader decodes them into float32 batches (N, 3, 32, 32), normalised
# per channel, in a new random order each epoch.
t_start = time.perf_counter()
root = make_synthetic_imagefolder(str(OUT / "synthetic"), num_classes=CLASSES, train_per_class=64,
                                  val_per_class=20, image_size=SIDE, seed=0)
train_set = ImageFolder(root, "train")
val_set = ImageFolder(root, "val", classes=train_set.classes)
train_loader = DataLoader(train_set, BATCH, shuffle=True, transform=ToArray(), seed=0,
                          drop_last=True)
val_loader = DataLoader(val_set, 80, transform=ToArray())
print(f"data: {len(train_set)} training and {len(val_set)} validation images, classes "
      f"{train_set.classes} (chance accuracy {1 / CLASSES:.0%})")


def train_step(model, optimizer, images, labels):
    """One step of the loop above; returns (main loss, number of correct top-1 guesses)."""
    outputs = model(images)
    loss, main = training_loss(outputs, labels)   # adds 0.3 x the aux losses when there are any
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    logits = outputs[0] if isinstance(outputs, tuple) else outputs
    return main.item(), int((logits.data.argmax(axis=1) == labels).sum())


def evaluate(model, loader):
    model.eval()                                  # dropout off, aux heads off
    total_loss = correct = count = 0
    with no_grad():
        for images, labels in loader:
            logits = model(images)
            total_loss += L.softmax_cross_entropy(logits, labels).item() * len(labels)
            correct += int((logits.data.argmax(axis=1) == labels).sum())
            count += len(labels)
    model.train()
    return total_loss / count, correct / count


# ---------------------------------------------------------------------------------------
# The reduced GoogLeNet. Widths per Inception module as in Table 1's columns:
# (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
class SmallGoogLeNet(Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = conv_relu(3, 32, 7, stride=2, pad=3)          # 32 -> 16
        self.pool1 = L.MaxPool2d(3, 2)                              # 16 -> 8 (ceil mode)
        self.norm1 = L.LRN()
        self.conv2_reduce = conv_relu(32, 32, 1)
        self.conv2 = conv_relu(32, 64, 3, pad=1)
        self.norm2 = L.LRN()
        self.pool2 = L.MaxPool2d(3, 2)                              # 8 -> 4
        self.inception_a = Inception(64, 32, 32, 48, 8, 16, 16)     # -> 112 channels
        self.inception_b = Inception(112, 48, 48, 64, 12, 24, 24)   # -> 160 channels
        self.pool5 = GlobalAvgPool()
        self.drop = L.Dropout(0.4)
        self.classifier = fully_connected(160, num_classes, caffe.CLASSIFIER_BIAS_FILL, "float32")

    def forward(self, x):
        for name, layer in self._modules.items():
            x = layer(x.flatten() if name == "classifier" else x)
        return x


manual_seed(0)
model = SmallGoogLeNet(CLASSES)
optimizer = SGD(model.parameters(), lr=LR, momentum=0.9)
filters_before = model.conv1.weight.data.copy()
val_images, val_labels = next(iter(val_loader))
picked = [int(np.flatnonzero(val_labels == cls)[0]) for cls in range(CLASSES)]
with no_grad():
    model.eval()
    maps_before = model.conv1(val_images[picked]).data       # (4, 32, 16, 16)
    model.train()
print(f"\nreduced GoogLeNet: {model.num_parameters():,} parameters; {EPOCHS} epochs of "
      f"{len(train_loader)} steps, batch {BATCH}, SGD lr {LR} momentum 0.9")

rows = []
val_loss, val_acc = evaluate(model, val_loader)
rows.append({"epoch": 0, "train_loss": "", "val_loss": val_loss, "train_top1": "",
             "val_top1": val_acc})
print(f"{'epoch':>5}{'train loss':>12}{'val loss':>10}{'train acc':>11}{'val acc':>9}")
print(f"{0:>5}{'':>12}{val_loss:>10.3f}{'':>11}{val_acc:>9.0%}")
t_train = time.perf_counter()
for epoch in range(1, EPOCHS + 1):
    train_loader.set_epoch(epoch)
    losses, correct, seen = [], 0, 0
    for images, labels in train_loader:
        loss, hits = train_step(model, optimizer, images, labels)
        losses.append(loss)
        correct, seen = correct + hits, seen + len(labels)
    val_loss, val_acc = evaluate(model, val_loader)
    rows.append({"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
                 "train_top1": correct / seen, "val_top1": val_acc})
    if epoch % 3 == 0 or epoch == 1:
        r = rows[-1]
        print(f"{epoch:>5}{r['train_loss']:>12.3f}{val_loss:>10.3f}{r['train_top1']:>11.0%}"
              f"{val_acc:>9.0%}")
steps = EPOCHS * len(train_loader)
print(f"trained {steps} steps in {time.perf_counter() - t_train:.1f} s (a measurement)")
csv_path = OUT / "step07_metrics.csv"
with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)

# What we claim about this run, checked. A uniform guess over four classes has loss
# ln 4 = 1.386; the untrained network scores somewhat more (its outputs are not exactly
# uniform, and a lopsided guess that is wrong costs more than a uniform one). Training must
# bring the loss down, below ln 4, and the validation accuracy well above chance: with 80 validation
# images, 40% correct is more than three standard deviations above the 25% of guessing.
chance_loss = math.log(CLASSES)
first, last = rows[1], rows[-1]
print(f"\nuntrained validation loss {rows[0]['val_loss']:.3f} (uniform guess: ln {CLASSES} = "
      f"{chance_loss:.3f}); train loss {first['train_loss']:.3f} (epoch 1) -> "
      f"{last['train_loss']:.3f} (epoch {EPOCHS}); validation accuracy "
      f"{rows[0]['val_top1']:.0%} -> {last['val_top1']:.0%} (chance {1 / CLASSES:.0%})")
assert chance_loss - 0.05 < rows[0]["val_loss"] < chance_loss + 0.5, rows[0]
assert last["train_loss"] < min(first["train_loss"] - 0.3, chance_loss), (first, last)
assert last["val_top1"] >= 0.40, last

# The curves, with what guessing would score drawn in: ln 4 for the loss, 25% for the
# accuracy. Epoch 0 is the untrained model on the validation set. The training curves
# are averages over each epoch (the model changing as it goes), the validation ones are
# measured at the end of the epoch; with only 256 training images the two soon part.
epochs = [r["epoch"] for r in rows]
fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2))
for ax, key, chance, label in ((ax_loss, "loss", chance_loss, f"uniform guess (ln {CLASSES})"),
                               (ax_acc, "top1", 1 / CLASSES, f"chance ({1 / CLASSES:.0%})")):
    ax.plot(epochs[1:], [r[f"train_{key}"] for r in rows[1:]], "o-", label="train")
    ax.plot(epochs, [r[f"val_{key}"] for r in rows], "s-", label="validation")
    ax.axhline(chance, color="grey", linestyle="--", label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss" if key == "loss" else "top-1 accuracy")
    ax.grid(alpha=0.3)
    ax.legend()
ax_acc.set_ylim(0, 1)
fig.suptitle(f"reduced GoogLeNet on the synthetic shapes ({CLASSES} classes, {SIDE}x{SIDE}), "
             f"{steps} steps of batch {BATCH}")
fig.tight_layout()
fig.savefig(OUT / "step07_curves.png", dpi=90)
plt.close(fig)


# ---------------------------------------------------------------------------------------
# What the first layer looks at. conv1 has 32 filters of 3 x 7 x 7: each is a tiny RGB image,
# drawn here with grey = 0, brighter = positive, darker = negative (each filter scaled by
# its own largest weight). At initialisation they are uniform noise (Caffe's xavier fill);
# a hundred steps move them only a little, so the third panel shows the change itself,
# which already has the smooth colour patches and light/dark edges first layers learn.
def filter_sheet(weights):
    """(32, 3, 7, 7) -> one RGB image, 4 rows of 8 filters, 1-pixel white gaps."""
    tiles = [0.5 + 0.5 * f / (np.abs(f).max() + 1e-12) for f in weights]
    sheet = np.ones((4 * 8 + 3, 8 * 8 + 7, 3))
    for i, t in enumerate(tiles):
        r, c = divmod(i, 8)
        sheet[r * 8:r * 8 + 7, c * 8:c * 8 + 7] = t.transpose(1, 2, 0)
    return sheet


after = model.conv1.weight.data
change = np.linalg.norm(after - filters_before) / np.linalg.norm(filters_before)
fig, axes = plt.subplots(1, 3, figsize=(13, 2.8))
for ax, w, title in zip(axes, (filters_before, after, after - filters_before),
                        ("conv1 filters at initialisation",
                         f"after {steps} steps (moved {change:.0%})", "the change: after - before")):
    ax.imshow(filter_sheet(w), interpolation="nearest")
    ax.set_title(title)
    ax.axis("off")
fig.tight_layout()
fig.savefig(OUT / "step07_conv1_filters.png", dpi=90)
plt.close(fig)


# Feature maps: what conv1 (after its ReLU) computes on one validation image per class,
# before and after training: each small square is one filter's response at every position
# (16x16, half the input's side because of the stride 2), brighter where it responds more
# (each map scaled by its own maximum). Eight of the 32 maps are shown per image.
def to_image(chw):
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    return np.clip(chw * std + mean, 0, 1).transpose(1, 2, 0)


model.eval()
with no_grad():
    maps_after = model.conv1(val_images[picked]).data
shown = 8
fig, axes = plt.subplots(2 * CLASSES, shown + 1, figsize=(1.2 * (shown + 1), 1.25 * 2 * CLASSES))
for i, idx in enumerate(picked):
    for j, (maps, when) in enumerate(((maps_before, "before"), (maps_after, "after"))):
        row = axes[2 * i + j]
        row[0].imshow(to_image(val_images[idx]))
        row[0].set_title(f"{train_set.classes[i]}, {when}", fontsize=8)
        for k in range(shown):
            m = maps[i, k]
            row[k + 1].imshow(m / (m.max() + 1e-12), cmap="gray", vmin=0, vmax=1)
        for ax in row:
            ax.axis("off")
fig.suptitle("conv1 feature maps (after ReLU) before and after training")
fig.tight_layout()
fig.savefig(OUT / "step07_feature_maps.png", dpi=80)
plt.close(fig)
moved = float(np.abs(maps_after - maps_before).mean() / (np.abs(maps_before).mean() + 1e-12))
print(f"conv1 filters moved {change:.0%} (relative norm); its feature maps on the four "
      f"images changed by {moved:.0%} on average (measurements)")
written = ("step07_metrics.csv", "step07_curves.png", "step07_conv1_filters.png",
           "step07_feature_maps.png")
print("wrote " + ", ".join(str(OUT / name) for name in written))
print(f"total {time.perf_counter() - t_start:.1f} s (a measurement)")
