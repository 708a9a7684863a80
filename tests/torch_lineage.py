"""Independent PyTorch versions of LeNet-5, AlexNet, NiN and ResNet, written from the papers
(and Caffe's bvlc_alexnet) with torch.nn.functional only. Each takes a dict of torch
tensors under the project's state-dict names and shares no code with models/ or layers/."""
import torch
import torch.nn.functional as F


# ------------------------------------------------------------------------------ LeNet-5
# LeCun et al. 1998, Table I: for each C3 map, the S2 maps it reads (X marks of each column).
LENET_C3 = [
    [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [4, 5, 0], [5, 0, 1],
    [0, 1, 2, 3], [1, 2, 3, 4], [2, 3, 4, 5], [3, 4, 5, 0], [4, 5, 0, 1], [5, 0, 1, 2],
    [0, 1, 3, 4], [1, 2, 4, 5], [0, 2, 3, 5], [0, 1, 2, 3, 4, 5],
]


def lenet5(P, x, c3="loop"):
    """``c3="loop"``: C3 as one small convolution per map, read straight off Table I;
    ``c3="masked"``: one dense convolution whose weight is zero off the table (fast)."""
    def squash(a):
        return 1.7159 * torch.tanh(a * (2.0 / 3.0))

    def sub(name, a):   # sum of each 2x2 window, times a coefficient, plus a bias, per map
        s = F.avg_pool2d(a, 2) * 4
        return s * P[name + ".coef"].view(1, -1, 1, 1) + P[name + ".bias"].view(1, -1, 1, 1)

    h = squash(sub("s2", squash(F.conv2d(x, P["c1.weight"], P["c1.bias"]))))
    if c3 == "loop":
        maps, k = [], 0
        for o, inputs in enumerate(LENET_C3):
            inputs = sorted(inputs)        # kernels are stored by map, then by input index
            w = P["c3.weight"][k:k + len(inputs)].unsqueeze(0)
            maps.append(F.conv2d(h[:, inputs], w) + P["c3.bias"][o])
            k += len(inputs)
        h = torch.cat(maps, 1)
    else:
        rows = [o for o, inputs in enumerate(LENET_C3) for _ in inputs]
        cols = [c for inputs in LENET_C3 for c in sorted(inputs)]
        dense = P["c3.weight"].new_zeros((16, 6, 5, 5)).index_put((torch.tensor(rows),
                                                                   torch.tensor(cols)),
                                                                  P["c3.weight"])
        h = F.conv2d(h, dense, P["c3.bias"])
    h = squash(sub("s4", squash(h)))
    h = squash(F.conv2d(h, P["c5.weight"], P["c5.bias"])).flatten(1)
    h = squash(F.linear(h, P["f6.weight"], P["f6.bias"]))
    return F.linear(h, P["output.weight"], P["output.bias"])


# ------------------------------------------------------------------------------ AlexNet
def alexnet(P, x):
    def conv(name, h, stride=1, pad=0, groups=1):
        return F.relu(F.conv2d(h, P[name + ".weight"], P[name + ".bias"], stride, pad,
                               groups=groups))

    def lrn(h):
        return F.local_response_norm(h, 5, alpha=1e-4, beta=0.75, k=1.0)

    def pool(h):
        return F.max_pool2d(h, 3, 2, ceil_mode=True)

    h = pool(lrn(conv("conv1", x, 4)))
    h = pool(lrn(conv("conv2", h, 1, 2, groups=2)))
    h = conv("conv5", conv("conv4", conv("conv3", h, 1, 1), 1, 1, 2), 1, 1, 2)
    h = pool(h).flatten(1)
    h = F.relu(F.linear(h, P["fc6.weight"], P["fc6.bias"]))
    h = F.relu(F.linear(h, P["fc7.weight"], P["fc7.bias"]))
    return F.linear(h, P["fc8.weight"], P["fc8.bias"])


# ---------------------------------------------------------------------------------- NiN
def nin(P, x):
    def conv(name, h, pad=0, relu=True):
        y = F.conv2d(h, P[name + ".weight"], P[name + ".bias"], 1, pad)
        return F.relu(y) if relu else y

    h = conv("cccp2", conv("cccp1", conv("conv1", x, 2)))
    h = F.max_pool2d(h, 3, 2, ceil_mode=True)
    h = conv("cccp4", conv("cccp3", conv("conv2", h, 2)))
    h = F.avg_pool2d(h, 3, 2, ceil_mode=True)
    h = conv("cccp6", conv("cccp5", conv("conv3", h, 1)), relu=False)
    return h.mean(dim=(2, 3))


# ------------------------------------------------------------------------------- ResNet
def resnet(P, x, blocks, training, momentum=0.1):
    """Option-B ResNet; batch norm in training mode updates P's running statistics."""
    def bn(name, h):
        return F.batch_norm(h, P[name + ".running_mean"], P[name + ".running_var"],
                            P[name + ".weight"], P[name + ".bias"], training, momentum, 1e-5)

    def conv(name, h, stride=1):
        w = P[name + ".weight"]
        return F.conv2d(h, w, None, stride, w.shape[-1] // 2)

    h = F.relu(bn("bn1", conv("conv1", x, 2)))
    h = F.max_pool2d(h, 3, 2, 1)
    cin = 64
    for stage, (count, width) in enumerate(zip(blocks, (64, 128, 256, 512)), start=1):
        for i in range(count):
            name = f"layer{stage}.{i}"
            stride = 2 if i == 0 and stage > 1 else 1
            out = F.relu(bn(name + ".bn1", conv(name + ".conv1", h, stride)))
            out = bn(name + ".bn2", conv(name + ".conv2", out))
            if stride != 1 or cin != width:
                short = bn(name + ".shortcut_bn", conv(name + ".shortcut_conv", h, stride))
            else:
                short = h
            h = F.relu(out + short)
            cin = width
    h = h.mean(dim=(2, 3))
    return F.linear(h, P["fc.weight"], P["fc.bias"])
