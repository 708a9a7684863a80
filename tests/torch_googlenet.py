"""An independent GoogLeNet in PyTorch, written from shared/googlenet.md with
torch.nn.functional only. It takes a dict of NumPy weights under the contract's
names and shares no code with models/ or layers/."""
import torch
import torch.nn.functional as F

TABLE = [  # name, in, 1x1, 3x3r, 3x3, 5x5r, 5x5, pool proj
    ("inception_3a", 192, 64, 96, 128, 16, 32, 32),
    ("inception_3b", 256, 128, 128, 192, 32, 96, 64),
    ("inception_4a", 480, 192, 96, 208, 16, 48, 64),
    ("inception_4b", 512, 160, 112, 224, 24, 64, 64),
    ("inception_4c", 512, 128, 128, 256, 24, 64, 64),
    ("inception_4d", 512, 112, 144, 288, 32, 64, 64),
    ("inception_4e", 528, 256, 160, 320, 32, 128, 128),
    ("inception_5a", 832, 256, 160, 320, 32, 128, 128),
    ("inception_5b", 832, 384, 192, 384, 48, 128, 128),
]


def forward(P, x, train=True):
    """P: name -> torch tensor. Returns (logits, aux1, aux2) when train else logits."""
    def conv(name, h, stride=1, pad=0):
        return F.relu(F.conv2d(h, P[name + ".weight"], P[name + ".bias"], stride, pad))

    def lrn(h):
        return F.local_response_norm(h, size=5, alpha=1e-4, beta=0.75, k=1.0)

    def pool(h):
        return F.max_pool2d(h, 3, 2, ceil_mode=True)

    def aux(name, h):
        h = F.avg_pool2d(h, 5, 3, ceil_mode=True)
        h = conv(name + ".conv", h).flatten(1)
        h = F.relu(F.linear(h, P[name + ".fc.weight"], P[name + ".fc.bias"]))
        return F.linear(h, P[name + ".classifier.weight"], P[name + ".classifier.bias"])

    h = lrn(pool(conv("conv1", x, 2, 3)))
    h = pool(lrn(conv("conv2", conv("conv2_reduce", h), 1, 1)))
    outs = []
    for name, *_ in TABLE:
        if name in ("inception_4a", "inception_5a"):
            h = pool(h)
        b1 = conv(name + ".conv_1x1", h)
        b2 = conv(name + ".conv_3x3", conv(name + ".conv_3x3_reduce", h), 1, 1)
        b3 = conv(name + ".conv_5x5", conv(name + ".conv_5x5_reduce", h), 1, 2)
        b4 = conv(name + ".pool_proj", F.max_pool2d(h, 3, 1, 1, ceil_mode=True))
        h = torch.cat([b1, b2, b3, b4], 1)
        if train and name == "inception_4a":
            outs.append(aux("aux1", h))
        if train and name == "inception_4d":
            outs.append(aux("aux2", h))
    h = F.avg_pool2d(h, 7, 1).flatten(1)
    logits = F.linear(h, P["classifier.weight"], P["classifier.bias"])
    return (logits, *outs) if train else logits


def loss(outs, labels):
    main = F.cross_entropy(outs[0], labels)
    return main + 0.3 * (F.cross_entropy(outs[1], labels) + F.cross_entropy(outs[2], labels))
