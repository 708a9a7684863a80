"""GoogLeNet as a whole: the contract, the paper's totals, finite differences, and an
independent PyTorch implementation."""
import numpy as np
import pytest

import engine as E
import layers as L
from engine import Profiler, SGD, no_grad
from models.googlenet import GoogLeNet, INCEPTION, training_loss


@pytest.fixture(scope="module")
def net():
    return GoogLeNet(seed=0)


def test_parameter_names_and_layouts_follow_the_contract(net):
    sd = net.state_dict()
    assert sd["conv1.weight"].shape == (64, 3, 7, 7) and sd["conv1.bias"].shape == (64,)
    assert sd["conv2_reduce.weight"].shape == (64, 64, 1, 1)
    assert sd["conv2.weight"].shape == (192, 64, 3, 3)
    for name, (c1, c3r, c3, c5r, c5, pp) in INCEPTION.items():
        assert sd[f"{name}.conv_1x1.weight"].shape[0] == c1
        assert sd[f"{name}.conv_3x3_reduce.weight"].shape[0] == c3r
        assert sd[f"{name}.conv_3x3.weight"].shape[1:] == (c3r, 3, 3)
        assert sd[f"{name}.conv_5x5_reduce.weight"].shape[0] == c5r
        assert sd[f"{name}.conv_5x5.weight"].shape[1:] == (c5r, 5, 5)
        assert sd[f"{name}.pool_proj.weight"].shape[0] == pp
    for aux, cin in (("aux1", 512), ("aux2", 528)):
        assert sd[f"{aux}.conv.weight"].shape == (128, cin, 1, 1)
        assert sd[f"{aux}.fc.weight"].shape == (1024, 2048)
        assert sd[f"{aux}.classifier.weight"].shape == (1000, 1024)
    assert sd["classifier.weight"].shape == (1000, 1024)
    assert len(sd) == 2 * (3 + 9 * 6 + 2 * 3 + 1)
    assert all(v.dtype == np.float32 for v in sd.values())


def test_parameter_totals_match_the_paper(net):
    main = sum(v.size for k, v in net.state_dict().items() if not k.startswith("aux"))
    assert abs(main - 7.0e6) / 7.0e6 < 0.01          # 6,998,552
    assert abs(net.num_parameters() - 13.4e6) / 13.4e6 < 0.01
    assert GoogLeNet(aux_logits=False).num_parameters() == main


def test_multiply_adds_match_table_1(net):
    net.eval()
    x = np.zeros((1, 3, 224, 224), np.float32)
    with no_grad(), Profiler(net) as prof:
        net(x)
    macs = {k: v["macs"] for k, v in prof.by_scope().items()}
    table = {"conv1": 118e6, "conv2_reduce": 12.8e6, "conv2": 347e6, "inception_3a": 128e6,
             "inception_3b": 304e6, "inception_4a": 73.6e6, "inception_4b": 87.9e6,
             "inception_4c": 99.9e6, "inception_4d": 118.5e6, "inception_4e": 170e6,
             "inception_5a": 51.1e6, "inception_5b": 70.7e6, "classifier": 1.024e6}
    for name, expected in table.items():   # the table rounds to 3 significant figures
        assert abs(macs[name] - expected) / expected < 0.005, name
    assert abs(sum(macs.values()) - 1.58e9) / 1.58e9 < 0.005


def test_caffe_initialisation(net):
    sd = net.state_dict()
    w = sd["inception_4e.conv_3x3.weight"]
    bound = np.sqrt(3.0 / (160 * 9))
    assert np.abs(w).max() <= bound and np.abs(w).max() > 0.95 * bound
    assert abs(w.std() - bound / np.sqrt(3)) < 0.02 * bound    # uniform's std
    assert np.all(sd["conv1.bias"] == np.float32(0.2)) and np.all(sd["aux1.fc.bias"] == np.float32(0.2))
    for k in ("classifier.bias", "aux1.classifier.bias", "aux2.classifier.bias"):
        assert np.all(sd[k] == 0)
    params = dict(net.named_parameters())
    assert params["conv2.bias"].lr_mult == 2.0 and params["conv2.bias"].decay_mult == 0.0
    assert params["conv2.weight"].lr_mult == 1.0 and params["conv2.weight"].decay_mult == 1.0


def test_outputs_by_mode_and_input_checks():
    m = GoogLeNet(num_classes=7, seed=1)
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    out = m(x)
    assert isinstance(out, tuple) and [o.shape for o in out] == [(2, 7)] * 3
    m.eval()
    assert m(x).shape == (2, 7)
    assert GoogLeNet(num_classes=7, aux_logits=False)(x).shape == (2, 7)
    with pytest.raises(ValueError, match=r"S >= 64, got \(2, 3, 32, 32\)"):
        m(np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="expected input"):
        m(np.zeros((2, 1, 64, 64), np.float32))
    with pytest.raises(TypeError, match="float64 != model dtype float32"):
        m(np.zeros((2, 3, 64, 64)))


def test_whole_network_gradcheck_float64():
    """Finite differences through all of GoogLeNet, aux heads and dropout included,
    on the input and a random sample of parameters."""
    m = GoogLeNet(num_classes=5, dtype="float64", seed=2)
    rng = np.random.default_rng(3)
    x = E.Tensor(rng.standard_normal((2, 3, 64, 64)), requires_grad=True)
    labels = np.array([1, 4])
    named = list(m.named_parameters())
    picks = sorted(rng.choice(len(named), 10, replace=False).tolist())
    picks += [i for i, (n, _) in enumerate(named) if n in ("aux1.fc.weight", "aux2.conv.bias",
                                                           "conv1.weight", "classifier.bias")]
    params = [named[i][1] for i in sorted(set(picks))]

    def loss(x, *_):
        E.manual_seed(5)  # the same dropout masks in every evaluation
        return training_loss(m(x), labels)[0]
    res = E.gradcheck(loss, [x] + params, directions=6, rtol=1e-4, atol=1e-8)
    assert res.ok


# ----------------------------------------------------------------- PyTorch peer
def _torch_setup(dtype):
    torch = pytest.importorskip("torch")
    from torch_googlenet import forward, loss
    m = GoogLeNet(num_classes=10, dropout=0.0, aux_dropout=0.0, dtype=dtype, seed=4)
    sd = m.state_dict()
    rng = np.random.default_rng(6)
    # Random biases too, so every term of every gradient is exercised.
    m.load_state_dict({k: v + (rng.uniform(-0.1, 0.1, v.shape) if k.endswith("bias") else 0)
                       for k, v in sd.items()})
    P = {k: torch.tensor(v.copy(), requires_grad=True) for k, v in m.state_dict().items()}
    return torch, forward, loss, m, P


def _run_both(dtype):
    torch, tforward, tloss, m, P = _torch_setup(dtype)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 224, 224))
    labels = np.array([3, 8])
    outs = m(x.astype(dtype))
    total, _ = training_loss(outs, labels)
    total.backward()
    touts = tforward(P, torch.tensor(x.astype(dtype)), train=True)
    tl = tloss(touts, torch.tensor(labels))
    tl.backward()
    ours = [o.numpy() for o in outs] + [np.array(total.item())] + [p.grad for _, p in m.named_parameters()]
    theirs = ([o.detach().numpy() for o in touts] + [np.array(tl.item())]
              + [P[n].grad.numpy() for n, _ in m.named_parameters()])
    names = ["logits", "aux1", "aux2", "loss"] + [n for n, _ in m.named_parameters()]
    return names, ours, theirs


def _rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b) / (np.linalg.norm(b) + 1e-30)


def test_matches_an_independent_pytorch_googlenet_float64():
    """Logits, aux logits, loss and every parameter gradient, to float64 rounding."""
    names, ours, theirs = _run_both("float64")
    for name, a, b in zip(names, ours, theirs):
        assert _rel(a, b) < 1e-9, f"{name}: relative error {_rel(a, b):.2e}"


def test_float32_tracks_pytorch_float64():
    """float32 against PyTorch in float64: outputs and loss to float32 rounding, gradients
    to 1e-2 per parameter (median 1e-3). Gradients cannot be closer in general: pool4's
    overlapping windows copy one maximum to neighbouring outputs, so 5b's 3x3/1 max pool
    meets exact ties, and float32 rounding may break a tie either way; both choices are
    valid subgradients. The float64 test above checks every gradient exactly."""
    names, _, torch64 = _run_both("float64")
    names, ours32, _ = _run_both("float32")
    errs = {name: _rel(a, ref) for name, a, ref in zip(names, ours32, torch64)}
    for name in ("logits", "aux1", "aux2", "loss"):
        assert errs[name] < 2e-6, f"{name}: relative error {errs[name]:.2e}"
    grads = {k: v for k, v in errs.items() if k not in ("logits", "aux1", "aux2", "loss")}
    worst = max(grads, key=grads.get)
    assert grads[worst] < 1e-2, f"{worst}: relative error {grads[worst]:.2e}"
    assert np.median(list(grads.values())) < 1e-3


def test_sgd_steps_match_pytorch():
    torch, tforward, tloss, m, P = _torch_setup("float64")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 224, 224))
    labels = np.array([0, 9])
    opt = SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=2e-4)
    biases = [P[n] for n, _ in m.named_parameters() if n.endswith("bias")]
    weights = [P[n] for n, _ in m.named_parameters() if not n.endswith("bias")]
    topt = torch.optim.SGD([{"params": weights}, {"params": biases, "lr": 0.02, "weight_decay": 0.0}],
                           lr=0.01, momentum=0.9, weight_decay=2e-4)
    ours, theirs = [], []
    for _ in range(3):
        loss, _ = training_loss(m(x), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        ours.append(loss.item())
        topt.zero_grad()
        tl = tloss(tforward(P, torch.tensor(x)), torch.tensor(labels))
        tl.backward()
        topt.step()
        theirs.append(tl.item())
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)
    assert ours[-1] != ours[0]


def test_msra_initialisation():
    m = GoogLeNet(num_classes=10, seed=3, init="msra")
    sd = m.state_dict()
    w = sd["inception_4e.conv_3x3.weight"]
    assert abs(w.std() - np.sqrt(2.0 / (160 * 9))) < 0.02 * np.sqrt(2.0 / (160 * 9))
    assert abs(w.mean()) < 0.05 * w.std()
    for k, v in sd.items():
        if k.endswith("bias") or ".classifier." in f".{k}":
            assert np.all(v == 0), k
    x = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    m.eval()
    np.testing.assert_array_equal(m(x).numpy(), 0)   # zero classifier: uniform first prediction
    with pytest.raises(ValueError, match="init must be"):
        GoogLeNet(init="uniform")
