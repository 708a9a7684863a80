"""Tests aimed at plausible bugs that the broader tests could let through.

Each test names the bug it is there to catch; each was checked to fail with that bug planted.
None needs PyTorch: the references are written here from the definitions.
"""
import numpy as np
import pytest
from PIL import Image

import layers as L
from engine import PolyakAverage, Tensor, gradcheck, manual_seed, no_grad
from engine.gradcheck import GradcheckError
from engine.tensor import Function
from layers import caffe


# ------------------------------------------------------------------ dropout
def test_dropout_draws_a_new_mask_on_every_call():
    """Bug: a mask drawn once (or from a re-seeded generator) and reused on every call."""
    manual_seed(0)
    x = np.ones((4, 256))
    a = L.dropout(x, 0.5).data != 0
    b = L.dropout(x, 0.5).data != 0
    assert (a != b).mean() > 0.3          # two independent p=0.5 masks differ in about half
    assert 0.4 < a.mean() < 0.6


def test_googlenet_dropout_rates_are_the_papers():
    """Bug: 0.4 and 0.7 swapped, or one of them a different rate (nothing else pins them)."""
    from models.googlenet import GoogLeNet
    m = GoogLeNet(num_classes=10, seed=0)
    assert m.drop.p == 0.4 and m.aux1.drop.p == 0.7 and m.aux2.drop.p == 0.7
    # And the rate is what the layer really drops: measure the zero fraction of a forward.
    manual_seed(1)
    y = m.drop(Tensor(np.ones((64, 1024), np.float32))).data
    assert abs((y == 0).mean() - 0.4) < 0.02
    np.testing.assert_allclose(y[y != 0], 1 / 0.6, rtol=1e-6)


# ------------------------------------------------------------------ Polyak averaging
def test_polyak_average_follows_its_formula():
    """Bug: (1 - d) and d swapped, or the warm-up formula changed. Reference written here."""
    from engine import Module, Parameter

    class One(Module):
        def __init__(self):
            super().__init__()
            self.w = Parameter(np.array([0.0]))

    m = One()
    ema = PolyakAverage(m, decay=0.9)
    expected, values = 0.0, [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    for t, v in enumerate(values, 1):
        m.w.data[...] = v
        ema.update(m)
        d = min(0.9, (1 + t) / (10 + t))
        expected = d * expected + (1 - d) * v
        np.testing.assert_allclose(ema.shadow["w"], [expected], rtol=1e-12)
    # decays used: 2/11, 3/12, ..., then capped at 0.9 from t = 80 on
    assert ema.current_decay() == pytest.approx(min(0.9, 9 / 18))
    ema.swap(m)
    np.testing.assert_allclose(m.w.data, [expected])
    ema.swap(m)
    assert m.w.data[0] == 64.0


# ------------------------------------------------------------------ test-time crops
def _numbered_image(w, h):
    """An RGB image whose pixel (x, y) holds x in red and y in green: crops are readable."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, :, 0] = np.arange(w)[None, :]
    a[:, :, 1] = np.arange(h)[:, None]
    return Image.fromarray(a, "RGB")


def test_centre_crop_is_centred_on_the_right_axes():
    """Bug: the x and y offsets swapped (only visible on a non-square image)."""
    from data.transforms import center_crop
    img = _numbered_image(120, 60)
    c = np.asarray(center_crop(img, 40))
    assert c[0, 0, 0] == (120 - 40) // 2 and c[0, 0, 1] == (60 - 40) // 2
    assert c[-1, -1, 0] == (120 - 40) // 2 + 39 and c[-1, -1, 1] == (60 - 40) // 2 + 39


def test_ten_crop_corners_and_mirrors():
    """Bug: corners in the wrong order or mirrored crops not flipped."""
    from data.transforms import ten_crop
    mean, std = (0.0, 0.0, 0.0), (1 / 255, 1 / 255, 1 / 255)    # to_array gives raw pixels
    img = _numbered_image(80, 64)    # eval resize: shorter side 64 * 256 / 224 = 73
    crops = ten_crop(img, 64, mean, std)
    assert crops.shape == (10, 3, 64, 64)
    red, green = crops[:, 0], crops[:, 1]                 # x and y of the resized image
    assert red[0, 0, 0] < red[1, 0, 0] and green[0, 0, 0] < green[2, 0, 0]  # TL, TR, BL
    np.testing.assert_array_equal(crops[5:], crops[:5, :, :, ::-1])


def test_multicrop_probabilities_are_averaged_per_image():
    """Bug: crops reshaped as (crops, N) instead of (N, crops): with 10-crop batches of several
    images, each image would get other images' crops."""
    from trainer.evaluate import predict_probs

    class ByMean:
        """A 'model' whose logits depend only on the mean of its input image."""
        dtype = np.dtype(np.float64)

        def __call__(self, x):
            x = np.asarray(x)
            m = x.reshape(len(x), -1).mean(axis=1)
            return Tensor(np.stack([m, -m, 0 * m], axis=1))

    rng = np.random.default_rng(0)
    batch = rng.standard_normal((3, 10, 3, 4, 4))
    batch[1] += 2.0
    got = predict_probs(ByMean(), batch, "cpu", chunk=7)     # chunks cut across images too
    for i in range(3):
        m = batch[i].reshape(10, -1).mean(axis=1)
        logits = np.stack([m, -m, 0 * m], axis=1)
        p = np.exp(logits - logits.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        np.testing.assert_allclose(got[i], p.mean(axis=0), rtol=1e-12)


# ------------------------------------------------------------------ gradcheck itself
class OneWrongElement(Function):
    """y = x^2 with the gradient of a single element wrong: a checker using ``any`` where it
    needs ``all`` (or checking only a sample of elements) lets this through."""

    def forward(self, x):
        self.x = x
        return x * x

    def backward(self, gy):
        g = 2 * self.x * gy
        g.flat[3] *= 1.1
        return g


def test_gradcheck_catches_a_single_wrong_element():
    x = Tensor(np.linspace(-1, 1, 12).reshape(3, 4), requires_grad=True)
    with pytest.raises(GradcheckError):
        gradcheck(lambda t: OneWrongElement()(t), [x], mode="elementwise")
    with pytest.raises(GradcheckError):
        gradcheck(lambda t: OneWrongElement()(t), [x], mode="directional")


# ------------------------------------------------------------------ GoogLeNet's wiring
def _conv(x, m, stride=1, pad=0):
    return L.conv2d(x, m.weight, m.bias, stride, pad, relu=True)


def _inception(x, b):
    """Written from the paper: branches 1x1; 3x3 reduce -> 3x3; 5x5 reduce -> 5x5; 3x3/1 max
    pool -> 1x1 projection; concatenated in that order."""
    return L.concat([
        _conv(x, b.conv_1x1),
        _conv(_conv(x, b.conv_3x3_reduce), b.conv_3x3, pad=1),
        _conv(_conv(x, b.conv_5x5_reduce), b.conv_5x5, pad=2),
        _conv(L.max_pool2d(x, 3, 1, 1), b.pool_proj),
    ])


def test_googlenet_wiring_matches_the_layer_table_without_torch():
    """Bug: Inception branches concatenated in another order, an LRN before its pool instead of
    after (or after conv2_reduce), a pool missing: a functional forward written from the layer
    table (docs/googlenet.md) must give the model's logits exactly."""
    from models.googlenet import GoogLeNet
    m = GoogLeNet(num_classes=7, aux_logits=False, dtype="float64", seed=3, init="msra")
    rng = np.random.default_rng(1)
    for _, p in m.named_parameters():     # msra zeroes biases and classifiers: make them count
        p.data += rng.standard_normal(p.shape) * 0.01
    x = rng.standard_normal((2, 3, 96, 96))
    with no_grad():
        m.eval()
        expected = m(x).data
        h = _conv(x, m.conv1, 2, 3)
        h = L.lrn(L.max_pool2d(h, 3, 2), caffe.LRN_SIZE, caffe.LRN_ALPHA, caffe.LRN_BETA,
                  caffe.LRN_K)
        h = _conv(_conv(h, m.conv2_reduce), m.conv2, pad=1)
        h = L.max_pool2d(L.lrn(h, caffe.LRN_SIZE, caffe.LRN_ALPHA, caffe.LRN_BETA, caffe.LRN_K),
                         3, 2)
        for name in ("3a", "3b", "pool", "4a", "4b", "4c", "4d", "4e", "pool", "5a", "5b"):
            h = L.max_pool2d(h, 3, 2) if name == "pool" else _inception(h, getattr(m, "inception_" + name))
        h = L.avg_pool2d(h, h.shape[2], 1).flatten()
        logits = L.linear(h, m.classifier.weight, m.classifier.bias)
    np.testing.assert_allclose(logits.data, expected, rtol=1e-10, atol=1e-12)
