"""LeNet-5, AlexNet, NiN and ResNet-34/18: parameter and multiply-add counts against the
published ones, input checks, and logits, loss and every parameter gradient against the
independent PyTorch versions in ``torch_lineage.py`` (float64, relative error < 1e-9;
batch norm in training and in eval mode)."""
import numpy as np
import pytest

import layers as L
from engine import Profiler, no_grad
from models.alexnet import AlexNet
from models.lenet5 import C3_TABLE, LeNet5
from models.nin import NiN
from models.resnet import ResNet, ResNet18, ResNet34


def counts(model, shape):
    """(parameters, {top-level layer: multiply-adds}) measured by running one input."""
    model.eval()
    with no_grad(), Profiler(model) as prof:
        model(np.zeros(shape, model.dtype))
    return model.num_parameters(), {k: v["macs"] for k, v in prof.by_scope().items()}


# -------------------------------------------------------------------- published counts
def test_lenet5_counts_match_the_paper():
    model = LeNet5(seed=0)
    params, macs = counts(model, (1, 1, 32, 32))
    per_layer = {name: sum(p.size for n, p in model.named_parameters() if n.startswith(name + "."))
                 for name in ("c1", "s2", "c3", "s4", "c5", "f6")}
    # Section II.B: trainable parameters of each layer.
    assert per_layer == {"c1": 156, "s2": 12, "c3": 1516, "s4": 32, "c5": 48120, "f6": 10164}
    # Its connection counts are multiply-adds plus one bias connection per output unit.
    units = {"c1": 6 * 28 * 28, "s2": 6 * 14 * 14, "c3": 16 * 10 * 10, "s4": 16 * 5 * 5,
             "c5": 120, "f6": 84}
    connections = {"c1": 122304, "s2": 5880, "c3": 151600, "s4": 2000, "c5": 48120, "f6": 10164}
    for name, n in connections.items():
        assert macs[name] + units[name] == n, name
    assert params == 60850 and macs["output"] == 840          # the linear output: 84 x 10 + 10
    assert sum(len(t) for t in C3_TABLE) == 60


def test_alexnet_counts_match_bvlc_alexnet():
    params, macs = counts(AlexNet(seed=0), (1, 3, 227, 227))
    assert params == 60_965_224
    # conv k*k*in/groups*out*side^2, fc in*out, written out from the layer table
    expected = {"conv1": 11 * 11 * 3 * 96 * 55 ** 2, "conv2": 5 * 5 * 48 * 256 * 27 ** 2,
                "conv3": 3 * 3 * 256 * 384 * 13 ** 2, "conv4": 3 * 3 * 192 * 384 * 13 ** 2,
                "conv5": 3 * 3 * 192 * 256 * 13 ** 2, "fc6": 9216 * 4096, "fc7": 4096 * 4096,
                "fc8": 4096 * 1000}
    assert {k: macs[k] for k in expected} == expected
    assert sum(macs.values()) == 724_406_816                  # 0.72 G, as usually quoted


def test_nin_counts():
    params, macs = counts(NiN(seed=0), (1, 3, 32, 32))
    assert params == 966_986                                  # the CIFAR-10 release's ~0.97 M
    assert sum(macs.values()) == (32 * 32 * (75 * 192 + 192 * 160 + 160 * 96)
                                  + 16 * 16 * (96 * 25 * 192 + 2 * 192 * 192)
                                  + 8 * 8 * (192 * 9 * 192 + 192 * 192 + 192 * 10))


@pytest.mark.parametrize("cls,params,gmacs", [(ResNet34, 21_797_672, 3.6), (ResNet18, 11_689_512, 1.8)])
def test_resnet_counts_match_the_paper(cls, params, gmacs):
    p, macs = counts(cls(seed=0), (1, 3, 224, 224))
    assert p == params                       # 21.8 M and 11.7 M
    total = sum(macs.values()) / 1e9
    assert abs(total - gmacs) / gmacs < 0.025, total    # Table 1 gives 3.6 G and 1.8 G FLOPs


def test_resnet_structure_option_b():
    sd = ResNet34(num_classes=10, seed=0).state_dict()
    shortcuts = sorted({k.rsplit(".", 2)[0] for k in sd if "shortcut_conv" in k})
    assert shortcuts == ["layer2.0", "layer3.0", "layer4.0"]        # projections only there
    assert sd["layer3.0.shortcut_conv.weight"].shape == (256, 128, 1, 1)
    assert not any(k.endswith("conv1.bias") or k.endswith("conv2.bias") for k in sd)
    assert sum(k.endswith("running_var") for k in sd) == 36         # 33 convs + 3 shortcuts


def test_input_checks():
    with pytest.raises(ValueError, match=r"LeNet5: expected input \(N, 1, 32, 32\), got \(2, 1, 28, 28\)"):
        LeNet5()(np.zeros((2, 1, 28, 28), np.float32))
    with pytest.raises(TypeError, match="LeNet5: input dtype float64 != model dtype float32"):
        LeNet5()(np.zeros((2, 1, 32, 32)))
    with pytest.raises(ValueError, match=r"built for image_size=67\), got \(1, 3, 64, 64\)"):
        AlexNet(num_classes=4, image_size=67)(np.zeros((1, 3, 64, 64), np.float32))
    with pytest.raises(ValueError, match="image_size must be >= 67"):
        AlexNet(image_size=64)
    with pytest.raises(ValueError, match=r"NiN: expected input \(N, 3, S, S\) with S >= 16"):
        NiN()(np.zeros((1, 3, 8, 8), np.float32))
    with pytest.raises(ValueError, match=r"ResNet-34: expected input .* got \(1, 1, 64, 64\)"):
        ResNet34(num_classes=3)(np.zeros((1, 1, 64, 64), np.float32))
    with pytest.raises(ValueError, match=r"depth must be one of \[18, 34\], got 50"):
        ResNet(depth=50)


def test_outputs_and_batch_norm_state_follow_the_mode():
    m = ResNet18(num_classes=5, seed=1)
    rng = np.random.default_rng(0)
    m.fc.weight.data = rng.standard_normal(m.fc.weight.shape).astype(np.float32)  # not zero
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    before = m.bn1.running_mean.copy()
    m.train()
    assert m(x).shape == (2, 5)
    assert not np.array_equal(m.bn1.running_mean, before)     # training moved the statistics
    m.eval()
    after = m.bn1.running_mean.copy()
    y1, y2 = m(x[:1]).numpy(), m(x).numpy()[:1]
    assert np.ptp(y1) > 1e-3
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-6)   # eval: per-image, batch-free
    np.testing.assert_array_equal(m.bn1.running_mean, after)


# ---------------------------------------------------------------------- PyTorch peers
def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30)


def _randomise(model, rng):
    """Random biases, batch-norm affine and running statistics, so every term of every
    gradient is exercised and eval mode does not see the trivial 0/1 statistics."""
    state = {}
    for k, v in model.state_dict().items():
        v = np.asarray(v)
        if k.endswith("running_var"):
            v = rng.uniform(0.5, 1.5, v.shape)
        elif k.endswith(("bias", "running_mean")):
            v = v + rng.uniform(-0.1, 0.1, v.shape)
        elif k.endswith("weight") and v.ndim == 1:                # batch norm's gamma
            v = rng.uniform(0.5, 1.5, v.shape)
        elif k.endswith("weight") and not v.any():                # a zero-initialised layer
            v = rng.standard_normal(v.shape) * 0.05
        state[k] = v
    model.load_state_dict(state)


def _peer(name):
    """A function of the independent PyTorch versions (skips when PyTorch is absent)."""
    pytest.importorskip("torch")
    import torch_lineage
    return getattr(torch_lineage, name)


def _compare(model, torch_forward, x, labels, training=True, seed=0):
    """Run both in float64; assert logits, loss, every gradient and the running
    statistics agree to 1e-9 relative error."""
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    _randomise(model, np.random.default_rng(seed))
    model.train(training)
    P = {k: torch.tensor(np.array(v), requires_grad=not ("running" in k))
         for k, v in model.state_dict().items()}
    logits = model(x)
    loss = L.softmax_cross_entropy(logits, labels)
    loss.backward()
    t_logits = torch_forward(P, torch.tensor(x))
    t_loss = F.cross_entropy(t_logits, torch.tensor(labels))
    t_loss.backward()
    pairs = [("logits", logits.numpy(), t_logits.detach().numpy()),
             ("loss", loss.item(), t_loss.item())]
    pairs += [(n, p.grad, P[n].grad.numpy()) for n, p in model.named_parameters()]
    pairs += [(n, np.asarray(b), P[n].numpy()) for n, b in model.named_buffers()]
    assert len(pairs) == 2 + len(model.state_dict())
    for name, _, theirs in pairs[2:]:       # every gradient is exercised: none is all zero
        assert np.any(theirs != 0) or "running" in name, f"{name}: an all-zero gradient"
    for name, ours, theirs in pairs:
        assert _rel(ours, theirs) < 1e-9, f"{name}: relative error {_rel(ours, theirs):.2e}"
    return pairs


@pytest.mark.parametrize("c3", ["loop", "masked"])
def test_lenet5_matches_pytorch(c3):
    lenet5 = _peer("lenet5")
    x = np.random.default_rng(1).standard_normal((3, 1, 32, 32))
    _compare(LeNet5(num_classes=10, dtype="float64", seed=2), lambda P, x: lenet5(P, x, c3), x,
             np.array([3, 7, 0]))


def test_alexnet_matches_pytorch():
    alexnet = _peer("alexnet")
    model = AlexNet(num_classes=10, dropout=0.0, dtype="float64", seed=3, image_size=67)
    x = np.random.default_rng(2).standard_normal((2, 3, 67, 67))
    _compare(model, alexnet, x, np.array([1, 9]))


def test_nin_matches_pytorch():
    nin = _peer("nin")
    model = NiN(num_classes=10, dropout=0.0, dtype="float64", seed=4)
    x = np.random.default_rng(3).standard_normal((2, 3, 32, 32))
    _compare(model, nin, x, np.array([4, 2]))


@pytest.mark.parametrize("cls,training", [(ResNet34, True), (ResNet34, False), (ResNet18, True)])
def test_resnet_matches_pytorch(cls, training):
    resnet = _peer("resnet")
    from models.resnet import BLOCKS
    model = cls(num_classes=10, dtype="float64", seed=5)
    # Training mode at 64x64, so that layer4's batch statistics see 2x2x2 values: at 1x1
    # with 2 images each normalised value is +-1 whatever the input, and the gradient
    # through it is rounding noise. Eval mode has no such limit.
    side = 64 if training else 32
    x = np.random.default_rng(4).standard_normal((2, 3, side, side))
    pairs = _compare(model, lambda P, x: resnet(P, x, BLOCKS[cls.depth], training), x,
                     np.array([0, 6]), training=training)
    names = [n for n, *_ in pairs]
    assert "layer4.0.shortcut_bn.running_var" in names
