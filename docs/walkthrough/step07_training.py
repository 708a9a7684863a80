# Step 7. A short training run on the built-in data, its curves, and what the first layer sees.
#
# Run from the repository root:   python docs/walkthrough/step07_training.py     (~30 s on 2 cores)
#
# Training is a loop of four lines, the same for any model built on the engine:
#
#     outputs = model(images)                      # forward: builds the graph
#     loss = cross-entropy(outputs, labels)        # one number: how wrong the model is
#     optimizer.zero_grad(); loss.backward()       # every parameter's .grad = d loss / d param
#     optimizer.step()                             # param -= lr * (momentum-smoothed) grad
#
# What this step can and cannot show on a CPU in half a minute. The full GoogLeNet runs the
# loop below too (we take two steps with it first), but it needs thousands of steps before
# its loss moves: ImageNet training took the authors a week of GPUs. (With Caffe's xavier
# initialisation and 0.2 biases, the part of each activation that depends on the image
# shrinks about 1.6x per layer, so the logits barely depend on the input at first; the
# command line's built-in run uses Caffe's "msra" filler instead and needs ~6 minutes
# to reach 50% on ten classes: `python -m models.googlenet train`.) So the curves come
# from a *reduced* GoogLeNet built from the same parts: the same stem (7x7/2 convolution,
# ceil-mode max pool, LRN, 1x1 then 3x3 convolution, LRN, max pool), two of the same
# Inception modules with narrower branches instead of nine, the same global average pool,
# dropout and linear classifier, Caffe's initialisation. 0.1 M parameters instead of 7 M,
# on 64x64 images from the project's synthetic dataset (models/synthetic.py: discs, squares,
# triangles and stripes over cluttered backgrounds, random colours). It learns visibly in
# a few hundred steps; do not read more into the numbers than "the loop works".
import csv
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("WALKTHROUGH_OUT") or ROOT / "docs" / "walkthrough" / "out")
OUT.mkdir(parents=True, exist_ok=True)

import numpy as np  # noqa: E402
from PIL import Image, ImageDraw, ImageFont  # noqa: E402

import layers as L  # noqa: E402
from engine import SGD, Module, manual_seed, no_grad  # noqa: E402
from data import DataLoader, ImageFolder  # noqa: E402
from models.googlenet import (GlobalAvgPool, GoogLeNet, Inception, conv_relu,  # noqa: E402
                              fully_connected, training_loss)
from trainer.logs import append_metrics_csv, plot_curves  # noqa: E402
from data.builtin import make_synthetic_imagefolder  # noqa: E402
from data.transforms import IMAGENET_MEAN, IMAGENET_STD, ToArray  # noqa: E402
from layers import caffe  # noqa: E402

CLASSES, SIDE, BATCH, EPOCHS, LR = 4, 64, 16, 24, 0.005

# ---------------------------------------------------------------------------------------
# The data: 64 training and 20 validation images per class, drawn once (deterministically,
# from seed 0) and written as PNG files in the usual ImageFolder layout; a second run
# reuses them. The DataLoader decodes them into float32 batches (N, 3, 64, 64), normalised
# per channel, in a new random order each epoch.
t_start = time.perf_counter()
root = make_synthetic_imagefolder(str(OUT / "synthetic"), num_classes=CLASSES, train_per_class=64,
                                  val_per_class=20, image_size=SIDE, seed=0)
train_set = ImageFolder(root, "train")
val_set = ImageFolder(root, "val", classes=train_set.classes)
train_loader = DataLoader(train_set, BATCH, shuffle=True, transform=ToArray(), seed=0,
                          drop_last=True)
val_loader = DataLoader(val_set, 64, transform=ToArray())
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
# First, the real network, to show it is the same loop: two steps of the full GoogLeNet
# (with its aux heads) on this data.
manual_seed(0)
full = GoogLeNet(num_classes=CLASSES, seed=0)
full_opt = SGD(full.parameters(), lr=LR, momentum=0.9)
images, labels = next(iter(train_loader))
for step in range(2):
    t0 = time.perf_counter()
    loss, _ = train_step(full, full_opt, images, labels)
    print(f"full GoogLeNet, step {step + 1}: loss {loss:.3f}  ({time.perf_counter() - t0:.2f} s "
          f"for {BATCH} images of {SIDE}x{SIDE}, {full.num_parameters() / 1e6:.1f} M parameters)")
del full, full_opt


# ---------------------------------------------------------------------------------------
# The reduced GoogLeNet. Widths per Inception module as in Table 1's columns:
# (#1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj).
class SmallGoogLeNet(Module):
    def __init__(self, num_classes):
        super().__init__()
        self.conv1 = conv_relu(3, 32, 7, stride=2, pad=3)          # 64 -> 32
        self.pool1 = L.MaxPool2d(3, 2)                              # 32 -> 16 (ceil mode)
        self.norm1 = L.LRN()
        self.conv2_reduce = conv_relu(32, 32, 1)
        self.conv2 = conv_relu(32, 64, 3, pad=1)
        self.norm2 = L.LRN()
        self.pool2 = L.MaxPool2d(3, 2)                              # 16 -> 8
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
print(f"\nreduced GoogLeNet: {model.num_parameters():,} parameters; {EPOCHS} epochs of "
      f"{len(train_loader)} steps, batch {BATCH}, SGD lr {LR} momentum 0.9")

csv_path = OUT / "step07_metrics.csv"
csv_path.unlink(missing_ok=True)
val_loss, val_acc = evaluate(model, val_loader)
append_metrics_csv(str(csv_path), {"epoch": 0, "train_loss": None, "val_loss": val_loss,
                                   "train_top1": None, "val_top1": val_acc})
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
    row = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_loss": val_loss,
           "train_top1": correct / seen, "val_top1": val_acc}
    append_metrics_csv(str(csv_path), row)
    if epoch % 3 == 0 or epoch == 1:
        print(f"{epoch:>5}{row['train_loss']:>12.3f}{val_loss:>10.3f}{row['train_top1']:>11.0%}"
              f"{val_acc:>9.0%}")
seconds = time.perf_counter() - t_train
print(f"trained {EPOCHS * len(train_loader)} steps in {seconds:.1f} s")

# The curves: models/plot.py draws every *loss* column in one panel and every accuracy
# column in the other, from the CSV the loop appended to (the training command writes the
# same kind of file). Epoch 0 is the untrained model on the validation set. Things to look
# for: the loss starts near ln(4) = 1.39, a uniform guess over four classes; it falls in
# jumps rather than smoothly, because each epoch is only 16 small, noisy steps; and with
# just 256 training images the validation curve soon lags the training one and may turn
# up at the end, the first sign of a model memorising its data.
plot_curves(str(csv_path), str(OUT / "step07_curves.png"),
            title=f"reduced GoogLeNet on the synthetic shapes ({CLASSES} classes, 64x64)")


# ---------------------------------------------------------------------------------------
# What the first layer looks at. conv1 has 32 filters of 3 x 7 x 7: each is a tiny RGB image,
# drawn here with grey = 0, brighter = positive, darker = negative (each filter scaled by
# its own largest weight). At initialisation they are uniform noise (Caffe's xavier fill);
# a few hundred steps move them only a little, so look for faint structure, not for the
# crisp edge and colour detectors that conv1 of a GoogLeNet trained on ImageNet shows.
def font(size):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:
        return ImageFont.load_default()


def tile_grid(tiles, cols, scale, gap=4, background=(255, 255, 255)):
    """Lay out uint8 arrays (h, w) or (h, w, 3) of one size in a grid, upscaled by `scale`."""
    h, w = tiles[0].shape[:2]
    cell_w, cell_h = w * scale + gap, h * scale + gap
    rows = -(-len(tiles) // cols)
    sheet = Image.new("RGB", (cols * cell_w + gap, rows * cell_h + gap), background)
    for i, tile in enumerate(tiles):
        img = Image.fromarray(tile).convert("RGB").resize((w * scale, h * scale), Image.NEAREST)
        sheet.paste(img, (gap + (i % cols) * cell_w, gap + (i // cols) * cell_h))
    return sheet


def titled(panels, titles, size=16):
    """Panels side by side, each with a title above it."""
    f = font(size)
    top = size + 12
    width = sum(p.width for p in panels) + 20 * (len(panels) + 1)
    height = max(p.height for p in panels) + top + 10
    sheet = Image.new("RGB", (width, height), (255, 255, 255))
    draw, x = ImageDraw.Draw(sheet), 20
    for panel, title in zip(panels, titles):
        draw.text((x, 6), title, font=f, fill=(0, 0, 0))
        sheet.paste(panel, (x, top))
        x += panel.width + 20
    return sheet


def filter_tiles(weights):
    tiles = []
    for f in weights:                                    # (3, 7, 7)
        scaled = 0.5 + 0.5 * f / (np.abs(f).max() + 1e-12)
        tiles.append((scaled.transpose(1, 2, 0) * 255).astype(np.uint8))
    return tiles


steps = EPOCHS * len(train_loader)
after = model.conv1.weight.data
change = np.linalg.norm(after - filters_before) / np.linalg.norm(filters_before)
# The third panel shows what training added (after - before, same colouring): the
# random start hides it, but the change itself already has the smooth colour patches and
# light/dark edges that first layers learn.
titled([tile_grid(filter_tiles(filters_before), 8, 6), tile_grid(filter_tiles(after), 8, 6),
        tile_grid(filter_tiles(after - filters_before), 8, 6)],
       ["conv1 filters at initialisation", f"after {steps} steps (moved {change:.0%})",
        "the change: after - before"]).save(OUT / "step07_conv1_filters.png")


# Feature maps: what conv1 (after its ReLU) computes on two validation images. Each of the
# 32 maps is one filter's response at every position (32x32, half the input's side because
# of the stride 2), white where it responds most. Some maps pick out the shape's edges, some
# a colour region, some the background's clutter.
def to_image(chw):
    mean, std = np.array(IMAGENET_MEAN)[:, None, None], np.array(IMAGENET_STD)[:, None, None]
    return (np.clip(chw * std + mean, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8)


model.eval()
images, labels = next(iter(val_loader))
panels, titles = [], []
for cls in (0, CLASSES - 1):                            # the first and the last class
    i = int(np.flatnonzero(labels == cls)[0])
    with no_grad():
        maps = model.conv1(images[i:i + 1]).data[0]      # (32, 32, 32)
    tiles = [(255 * m / (m.max() + 1e-12)).astype(np.uint8) for m in maps]
    panels += [tile_grid([to_image(images[i])], 1, 3), tile_grid(tiles, 8, 2)]
    titles += [f"input ({train_set.classes[cls]})", "conv1 feature maps (after ReLU)"]
top = titled(panels[:2], titles[:2])
bottom = titled(panels[2:], titles[2:])
sheet = Image.new("RGB", (max(top.width, bottom.width), top.height + bottom.height), "white")
sheet.paste(top, (0, 0))
sheet.paste(bottom, (0, top.height))
sheet.save(OUT / "step07_feature_maps.png")

first, last = 1, EPOCHS
with open(csv_path, newline="") as f:
    rows = list(csv.DictReader(f))
print(f"\ntrain loss {float(rows[first]['train_loss']):.3f} (epoch {first}) -> "
      f"{float(rows[last]['train_loss']):.3f} (epoch {last}); validation accuracy "
      f"{float(rows[0]['val_top1']):.0%} untrained -> {float(rows[last]['val_top1']):.0%} "
      f"(chance {1 / CLASSES:.0%})")
written = ("step07_metrics.csv", "step07_curves.png", "step07_conv1_filters.png",
           "step07_feature_maps.png")
print("wrote " + ", ".join(str(OUT / name) for name in written))
print(f"total {time.perf_counter() - t_start:.1f} s")
