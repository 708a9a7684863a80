# Step 6. GoogLeNet assembled: its summary against the paper's Table 1, and the aux heads.
#
# Run from the repository root:   python docs/walkthrough/step06_googlenet.py
#
# models/googlenet.py stacks what steps 2-5 built, following Table 1 of the paper:
#
#   stem:  conv1 7x7/2 -> max pool 3x3/2 -> LRN -> conv2_reduce 1x1 -> conv2 3x3 -> LRN -> max pool
#   body:  inception 3a, 3b -> max pool -> 4a, 4b, 4c, 4d, 4e -> max pool -> 5a, 5b
#   head:  average pool over the 7x7 map -> dropout 40% -> linear 1024 -> 1000 classes
#
# The stem shrinks the 224x224 image fast (to 28x28 before the first Inception module), where
# big maps make convolutions expensive; the body works on 28, 14 and then 7 pixels while the
# channel count grows from 192 to 1024. The head has no big fully connected layers: averaging
# each of the 1024 final maps to one number replaced AlexNet's 4096-wide layers, which is
# most of why GoogLeNet has 7 M parameters where AlexNet had 60 M.
#
# Below we run one 224x224 image through the network under engine.Profiler, which records
# every op's output shape and multiply-adds under the name of the module that ran it, and
# print the network layer by layer next to the paper's numbers.
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OUT = Path(os.environ.get("WALKTHROUGH_OUT") or ROOT / "docs" / "walkthrough" / "out")
OUT.mkdir(parents=True, exist_ok=True)

import numpy as np  # noqa: E402

from engine import Profiler, manual_seed, no_grad  # noqa: E402
from layers import caffe, softmax_cross_entropy  # noqa: E402
from models.googlenet import AUX_LOSS_WEIGHT, GoogLeNet, training_loss  # noqa: E402

# The paper's Table 1, as restated in shared/googlenet.md: output (C x H x W) and MACs.
# (The paper lists pool1 + LRN and conv2 + LRN as single rows; here the LRNs are rows of
# their own.)
PAPER = {
    "conv1": ("64x112x112", 118e6), "pool1": ("64x56x56", 0), "conv2_reduce": ("64x56x56", 12.8e6),
    "conv2": ("192x56x56", 347e6), "pool2": ("192x28x28", 0),
    "inception_3a": ("256x28x28", 128e6), "inception_3b": ("480x28x28", 304e6),
    "pool3": ("480x14x14", 0), "inception_4a": ("512x14x14", 73.6e6),
    "inception_4b": ("512x14x14", 87.9e6), "inception_4c": ("512x14x14", 99.9e6),
    "inception_4d": ("528x14x14", 118.5e6), "inception_4e": ("832x14x14", 170e6),
    "pool4": ("832x7x7", 0), "inception_5a": ("832x7x7", 51.1e6),
    "inception_5b": ("1024x7x7", 70.7e6), "pool5": ("1024x1x1", 0), "classifier": ("1000", 1.0e6),
}

manual_seed(0)
net = GoogLeNet(num_classes=1000, seed=0)
net.eval()                                   # inference: no aux heads, no dropout
image = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
with no_grad(), Profiler(net) as prof:
    logits = net(image)

shapes, macs = {}, {}
for r in prof.records:                       # records are in execution order
    top = r.scope.split(".")[0]
    if not top or r.phase != "forward":
        continue                             # "" is the flatten between pool5 and the classifier
    shapes[top] = "x".join(str(s) for s in r.out_shapes[0][1:])   # the module's last op's output
    macs[top] = macs.get(top, 0) + r.macs
params = {}
for name, p in net.named_parameters():
    params[name.split(".")[0]] = params.get(name.split(".")[0], 0) + p.size

# (Dropout does nothing in eval mode, so it records no op and has no row.)
print(f"{'layer':<14}{'output':>12}{'paper':>12}{'MACs':>10}{'paper':>9}{'params':>12}")
for name in shapes:
    paper_shape, paper_macs = PAPER.get(name, ("", None))
    flag = "" if not paper_shape or paper_shape == shapes[name] else "  <- differs"
    paper_text = f"{paper_macs / 1e6:.1f}M" if paper_macs else ("-" if paper_shape else "")
    ours = f"{macs[name] / 1e6:.1f}M" if macs[name] else "-"
    print(f"{name:<14}{shapes[name]:>12}{paper_shape:>12}{ours:>10}{paper_text:>9}"
          f"{params.get(name, 0):>12,}{flag}")
    assert not flag, f"{name}: output {shapes[name]} but the paper says {paper_shape}"

main_params = sum(v for k, v in params.items() if not k.startswith("aux"))
all_params = sum(params.values())
total_macs = sum(macs.values())
print(f"\ntotal multiply-adds per image: {total_macs / 1e9:.3f} G   (paper: about 1.58 G; "
      f"its text rounds to 1.5 G)")
print(f"parameters without the aux heads: {main_params / 1e6:.2f} M   (paper: 7.0 M)")
print(f"parameters with the aux heads:    {all_params / 1e6:.2f} M   (paper: 13.4 M)")
print(f"logits: {logits.shape}")
assert abs(total_macs / 1.58e9 - 1) < 0.01
assert abs(main_params / 7.0e6 - 1) < 0.01 and abs(all_params / 13.4e6 - 1) < 0.01

# Where are the parameters? Not where the compute is: the 7x7 maps of inception_5a/5b hold
# few pixels but many channels (many weights, few MACs), the 56x56 maps of conv2 the reverse.
big = sorted(((k, v) for k, v in params.items() if not k.startswith("aux")), key=lambda kv: -kv[1])
print("most parameters:  " + ", ".join(f"{k} {v / 1e6:.2f} M" for k, v in big[:4]))
busy = sorted(macs.items(), key=lambda kv: -kv[1])
print("most multiply-adds: " + ", ".join(f"{k} {v / 1e6:.0f} M" for k, v in busy[:4]))

# ---------------------------------------------------------------------------------------
# The auxiliary heads. A 22-layer network trained from scratch in 2014 (no batch norm yet)
# had trouble passing a useful gradient all the way down to its first layers. The paper adds
# two small classifiers on intermediate outputs, after inception_4a (aux1) and inception_4d
# (aux2): average pool 5x5/3 (14x14 -> 4x4), 1x1 conv to 128 channels, linear 2048 -> 1024,
# dropout 70%, linear 1024 -> classes. During training their losses are added to the main
# one with weight 0.3, so the middle of the network also gets a direct, short-path signal:
#
#     loss = main + 0.3 * (aux1 + aux2)
#
# At inference they are simply not run. They cost 6.4 M parameters (almost all in their two
# linear layers: 2048 x 1024 and 1024 x 1000 each) and almost no compute.
print()
net.train()                                   # training mode: forward returns three outputs
labels = np.array([3, 7])
with no_grad(), Profiler(net) as prof:
    outputs = net(np.concatenate([image, image[:, :, ::-1]]))   # 2 images
aux_macs = {}
for r in prof.records:
    if r.scope.startswith("aux"):
        aux_macs[r.scope.split(".")[0]] = aux_macs.get(r.scope.split(".")[0], 0) + r.macs / 2
for name in ("aux1", "aux2"):
    print(f"{name}: {params[name] / 1e6:.2f} M parameters, {aux_macs[name] / 1e6:.1f} M "
          f"multiply-adds per image, training only")
total, main = training_loss(outputs, labels)
print(f"train mode: forward returns {len(outputs)} outputs of shapes "
      f"{[tuple(o.shape) for o in outputs]}")
parts = [softmax_cross_entropy(o, labels).item() for o in outputs]
print(f"losses: main {parts[0]:.4f}, aux1 {parts[1]:.4f}, aux2 {parts[2]:.4f}; "
      f"total {total.item():.4f} = main + {AUX_LOSS_WEIGHT} x (aux1 + aux2) = "
      f"{parts[0] + AUX_LOSS_WEIGHT * (parts[1] + parts[2]):.4f}")
print("(untrained, every loss is in the region of ln(1000) = 6.91, the loss of a uniform guess)")
