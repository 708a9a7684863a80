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
# print the network layer by layer next to the figures the paper prints.
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
from viz import build_graph, draw_network  # noqa: E402

# The paper's Table 1, figures as printed there: each row's output size, and its "params"
# and "ops" columns (ops = multiply-adds). The paper has one row for conv2 (its 1x1
# reduction and the 3x3 together) and folds each LRN into the row before; ours are rows of
# their own, so the printed conv2 figures stand beside the sum of our two rows.
PAPER_SHAPES = {
    "conv1": "64x112x112", "pool1": "64x56x56", "conv2_reduce": "64x56x56",
    "conv2": "192x56x56", "pool2": "192x28x28", "inception_3a": "256x28x28",
    "inception_3b": "480x28x28", "pool3": "480x14x14", "inception_4a": "512x14x14",
    "inception_4b": "512x14x14", "inception_4c": "512x14x14", "inception_4d": "528x14x14",
    "inception_4e": "832x14x14", "pool4": "832x7x7", "inception_5a": "832x7x7",
    "inception_5b": "1024x7x7", "pool5": "1024x1x1", "classifier": "1000",
}
PRINTED = {   # row: (params, ops) as Table 1 prints them
    "conv1": ("2.7K", 34e6), "conv2": ("112K", 360e6), "inception_3a": ("159K", 128e6),
    "inception_3b": ("380K", 304e6), "inception_4a": ("364K", 73e6),
    "inception_4b": ("437K", 88e6), "inception_4c": ("463K", 100e6),
    "inception_4d": ("580K", 119e6), "inception_4e": ("840K", 170e6),
    "inception_5a": ("1072K", 54e6), "inception_5b": ("1388K", 71e6),
    "classifier": ("1000K", 1e6),
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

# Ours is counted by the Profiler while one image runs through: per image, forward only,
# a multiply-add counted once. (Dropout does nothing in eval mode: no op, no row.)
print("one 224x224 image, forward. 'ours' is counted from the running model; 'Table 1' is "
      "the paper as printed.")
print(f"{'layer':<14}{'output':>12}{'MACs ours':>11}{'Table 1':>9}{'params ours':>13}"
      f"{'Table 1':>9}")
for name in shapes:
    assert shapes[name] == PAPER_SHAPES.get(name, shapes[name]), (name, shapes[name])
    ours = macs[name] + (macs["conv2_reduce"] if name == "conv2" else 0)
    ours_params = params.get(name, 0) + (params["conv2_reduce"] if name == "conv2" else 0)
    printed_params, printed_ops = PRINTED.get(name, ("", None))
    mac_text = f"{ours / 1e6:.1f}M" if ours else "-"
    ops_text = f"{printed_ops / 1e6:.0f}M" if printed_ops else ""
    mark = "*" if name == "conv2" else ""
    print(f"{name + mark:<14}{shapes[name]:>12}{mac_text:>11}{ops_text:>9}"
          f"{ours_params:>13,}{printed_params:>9}")
print("* Table 1's conv2 row covers conv2_reduce and conv2: ours is the sum of both rows.")

# Where the printed figures and ours part. Every ops entry but two agrees with ours to
# within its rounding (the paper prints whole millions); the exceptions:
#  - conv1: printed 2.7K params and 34M ops. A 7x7 convolution from 3 to 64 channels has
#    7*7*3*64 = 9,408 weights and does 9,408 * 112*112 = 118M multiply-adds per image. The
#    printed pair is self-consistent (2.7K * 112*112 = 34M), about 3.5 times below both;
#    the paper does not say how it counted.
#  - inception_5a: printed 54M; its own column widths at 7x7 give 51.1M (and 1,043K
#    weights, where it prints 1072K). We found no reading of the table that gives 54M.
# The paper's text says the network was designed for "1.5 billion multiply-adds" at
# inference: the printed ops column adds up to 1,502M, ours to 1,583M per image, and the
# difference is almost all conv1 (118M - 34M). The printed params column is a few percent
# below ours on most rows (it is not said whether biases count; they are under 1% here),
# 9% below on inception_4c (463K printed, 510K from its widths); it adds up to 6.8M.
for name, (_, printed_ops) in PRINTED.items():
    ours = macs[name] + (macs["conv2_reduce"] if name == "conv2" else 0)
    agrees = abs(ours - printed_ops) <= 0.6e6 + 0.005 * printed_ops
    assert agrees == (name not in ("conv1", "inception_5a")), (name, ours, printed_ops)
assert round(macs["conv1"] / 1e6) == 118 and round(macs["inception_5a"] / 1e5) == 511
assert sum(ops for _, ops in PRINTED.values()) == 1502e6
printed_params = sum(float(p[:-1]) * 1e3 for p, _ in PRINTED.values())
assert round(printed_params / 1e5) == 68

main_params = sum(v for k, v in params.items() if not k.startswith("aux"))
all_params = sum(params.values())
total_macs = sum(macs.values())
print(f"\ntotal multiply-adds per image: {total_macs / 1e9:.3f} G   (Table 1's ops column adds "
      f"up to 1.502 G; the text says 1.5 billion)")
print(f"parameters without the aux heads: {main_params / 1e6:.2f} M   (Table 1's params column "
      f"adds up to {printed_params / 1e6:.1f} M)")
print(f"parameters with the aux heads:    {all_params / 1e6:.2f} M   (the paper gives no figure)")
print(f"logits: {logits.shape}")
assert abs(total_macs / 1.583e9 - 1) < 0.001
assert round(main_params / 1e5) == 70 and round(all_params / 1e5) == 134

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
print("(untrained, every loss is within 1 of ln(1000) = 6.91, the loss of a uniform guess)")
assert all(abs(x - np.log(1000)) < 1.0 for x in parts), parts
assert round((params["aux1"] + params["aux2"]) / 1e5) == 64
assert abs(total.item() - (parts[0] + AUX_LOSS_WEIGHT * (parts[1] + parts[2]))) < 1e-4

# ---------------------------------------------------------------------------------------
# The whole network drawn from the model, in the style of the paper's Figure 3: the graph
# that training mode just built (the three outputs, the aux heads branching off after 4a
# and 4d), walked back from the outputs by viz.draw_network, one box per op, layered so
# that each Inception module's four branches sit side by side between its input and its
# concat. The three 1x1 convolutions that read a module's input run as one op (one GEMM
# with their weights stacked, layers.stacked_conv1x1): one box, which three branches leave.
# conv1, its ReLU and pool1 are one op too (layers.conv.ConvReluMaxPoolFunction: on the CPU
# kernels conv1's output is pooled band by band, never stored), so one box.
# Nothing in the picture is typed in by hand: change models/googlenet.py and the picture
# follows.
net.train()
outputs = net(image)
graph = build_graph(*outputs, names=net, params=False)
ops = [n.op for n in graph.nodes if n.kind == "function"]
convs = (ops.count("Conv2dFunction") + ops.count("ConvReluMaxPoolFunction")
         + 3 * ops.count("StackedConv1x1Function"))
print(f"\nthe training graph: {len(ops)} ops, {convs} convolutions ({ops.count('StackedConv1x1Function')}"
      f" x 3 of them stacked), {ops.count('ConcatFunction')} concats, {len(outputs)} outputs")
assert convs == 59 and ops.count("StackedConv1x1Function") == 9 and ops.count("ConcatFunction") == 9
draw_network(*outputs, png_path=str(OUT / "step06_googlenet.png"), names=net, dpi=90,
             title="GoogLeNet, drawn from the model (training mode, aux heads included)")
print(f"wrote {OUT / 'step06_googlenet.png'}")
