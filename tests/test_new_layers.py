"""The layers of GoogLeNet's lineage: batch norm, grouped convolution, LeNet-5's connection
table, trainable subsampling and scaled tanh, global average pooling and the residual join.

Each against naive loops written here from the definitions, against float64 finite
differences, and for clear errors on bad input; batch norm also against PyTorch when it is
installed. Runs on NumPy (with and without the CPU kernels) and on CuPy (the ``xp`` fixture).
"""
import numpy as np
import pytest

import layers as L
from conftest import to_np
from engine import Module, Tensor, gradcheck

RTOL32 = 2e-5


def leaf(xp, a, dtype=np.float64):
    return Tensor(xp.asarray(np.asarray(a, dtype=dtype)), requires_grad=True)


def away_from_zero(rng, shape, margin=0.05):
    """Standard normal values with none within ``margin`` of 0 (ReLU-like kinks)."""
    v = rng.standard_normal(shape)
    return np.where(np.abs(v) < margin, np.sign(v + 1e-12) * margin * 2, v)


# ------------------------------------------------------------------------- batch norm
def bn_loops(x, gamma, beta, mean=None, var=None, eps=1e-5):
    """y per channel from its own statistics (training) or given ones (eval), as loops."""
    n, c = x.shape[:2]
    y = np.empty_like(x, dtype=np.float64)
    stats = []
    for ci in range(c):
        vals = [float(v) for v in np.asarray(x[:, ci]).ravel()]
        m = sum(vals) / len(vals) if mean is None else float(mean[ci])
        v = sum((a - m) ** 2 for a in vals) / len(vals) if var is None else float(var[ci])
        stats.append((m, v, sum((a - m) ** 2 for a in vals) / (len(vals) - 1)))
        y[:, ci] = (np.asarray(x[:, ci], np.float64) - m) / np.sqrt(v + eps) * gamma[ci] + beta[ci]
    return y, stats


@pytest.mark.parametrize("shape", [(3, 4, 5, 2), (6, 3)])
def test_batch_norm_training_statistics_and_running_update(xp, shape):
    rng = np.random.default_rng(0)
    c = shape[1]
    x = rng.standard_normal(shape) * 3 + 1.5
    gamma, beta = rng.uniform(0.5, 2, c), rng.standard_normal(c)
    rm0, rv0 = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    expected, stats = bn_loops(x, gamma, beta)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, 1e-5)):
        rm, rv = xp.asarray(rm0.astype(dtype)), xp.asarray(rv0.astype(dtype))
        y = L.batch_norm(xp.asarray(x.astype(dtype)), xp.asarray(gamma.astype(dtype)),
                         xp.asarray(beta.astype(dtype)), rm, rv, training=True, momentum=0.3)
        assert y.dtype == dtype
        np.testing.assert_allclose(to_np(y), expected, rtol=tol, atol=tol)
        # PyTorch's convention: the running variance takes the unbiased batch variance.
        np.testing.assert_allclose(to_np(rm), 0.7 * rm0 + 0.3 * np.array([s[0] for s in stats]),
                                   rtol=tol)
        np.testing.assert_allclose(to_np(rv), 0.7 * rv0 + 0.3 * np.array([s[2] for s in stats]),
                                   rtol=tol)


def test_batch_norm_eval_uses_running_statistics(xp):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 4, 4))
    gamma, beta = rng.uniform(0.5, 2, 3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    expected, _ = bn_loops(x, gamma, beta, rm, rv)
    rm_x, rv_x = xp.asarray(rm.copy()), xp.asarray(rv.copy())
    y = L.batch_norm(xp.asarray(x), xp.asarray(gamma), xp.asarray(beta), rm_x, rv_x,
                     training=False)
    np.testing.assert_allclose(to_np(y), expected, rtol=1e-12)
    np.testing.assert_array_equal(to_np(rm_x), rm)        # eval never moves the statistics
    np.testing.assert_array_equal(to_np(rv_x), rv)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(3, 2, 3, 2), (5, 3)])
def test_batch_norm_gradients(xp, training, shape):
    rng = np.random.default_rng(2)
    c = shape[1]
    x = leaf(xp, rng.standard_normal(shape))
    gamma, beta = leaf(xp, rng.uniform(0.5, 2, c)), leaf(xp, rng.standard_normal(c))
    rm, rv = xp.asarray(rng.standard_normal(c)), xp.asarray(rng.uniform(0.5, 2, c))
    if training:
        fn = lambda x, g, b: L.batch_norm(x, g, b, training=True)           # noqa: E731
    else:
        fn = lambda x, g, b: L.batch_norm(x, g, b, rm, rv, training=False)  # noqa: E731
    gradcheck(fn, [x, gamma, beta], mode="elementwise")


def test_batch_norm_module_modes_and_state(xp):
    rng = np.random.default_rng(3)
    bn = L.BatchNorm2d(3, dtype="float64")
    if xp is not np:
        bn.to("cuda")
    x = xp.asarray(rng.standard_normal((4, 3, 2, 2)) * 2 + 5)
    bn(x)
    sd = bn.state_dict()
    assert list(sd) == ["weight", "bias", "running_mean", "running_var"]
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]   # stats are not trained
    mean = to_np(x).mean(axis=(0, 2, 3))
    np.testing.assert_allclose(to_np(sd["running_mean"]), 0.1 * mean, rtol=1e-12)
    bn.eval()
    y = bn(x)
    np.testing.assert_allclose(to_np(y), bn_loops(to_np(x), np.ones(3), np.zeros(3),
                                                  to_np(bn.running_mean),
                                                  to_np(bn.running_var))[0], rtol=1e-12)
    other = L.BatchNorm2d(3, dtype="float64")
    other.load_state_dict({k: to_np(v) for k, v in sd.items()})
    np.testing.assert_array_equal(other.running_var, to_np(bn.running_var))


def test_buffers_in_a_tree_of_modules():
    class Net(Module):
        def __init__(self):
            super().__init__()
            self.conv = L.Conv2d(2, 3, 1)
            self.bn = L.BatchNorm2d(3)
    net = Net()
    assert list(net.state_dict())[-2:] == ["bn.running_mean", "bn.running_var"]
    with pytest.raises(KeyError, match="missing keys: bn.running_mean, bn.running_var"):
        net.load_state_dict({k: v for k, v in net.state_dict().items() if "running" not in k})
    with pytest.raises(ValueError, match=r"bn.running_var: checkpoint \(4,\) vs model \(3,\)"):
        net.load_state_dict({**net.state_dict(), "bn.running_var": np.ones(4)})


def test_batch_norm_matches_pytorch_in_both_modes():
    torch = pytest.importorskip("torch")
    import torch.nn.functional as F
    rng = np.random.default_rng(4)
    x = rng.standard_normal((4, 3, 5, 5)) * 2 + 1
    gamma, beta, gy = rng.uniform(0.5, 2, 3), rng.standard_normal(3), rng.standard_normal(x.shape)
    for training in (True, False):
        rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
        ours = [leaf(np, a) for a in (x, gamma, beta)]
        rm_o, rv_o = rm.copy(), rv.copy()
        y = L.batch_norm(*ours, rm_o, rv_o, training=training, momentum=0.2)
        y.backward(gy)
        theirs = [torch.tensor(a, requires_grad=True) for a in (x, gamma, beta)]
        rm_t, rv_t = torch.tensor(rm), torch.tensor(rv)
        yt = F.batch_norm(theirs[0], rm_t, rv_t, theirs[1], theirs[2], training=training,
                          momentum=0.2, eps=1e-5)
        yt.backward(torch.tensor(gy))
        np.testing.assert_allclose(y.numpy(), yt.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(rm_o, rm_t.numpy(), rtol=1e-12)
        np.testing.assert_allclose(rv_o, rv_t.numpy(), rtol=1e-12)
        for a, b in zip(ours, theirs):
            np.testing.assert_allclose(a.grad, b.grad.numpy(), rtol=1e-9, atol=1e-12)


def test_batch_norm_errors():
    x, g = np.zeros((2, 3, 4, 4)), np.ones(3)
    with pytest.raises(ValueError, match=r"\(N, C\) or \(N, C, H, W\), got shape \(2, 3, 4\)"):
        L.batch_norm(np.zeros((2, 3, 4)), g, g)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3,\) for x \(2, 3, 4, 4\), got \(4,\)"):
        L.batch_norm(x, np.ones(4), g)
    with pytest.raises(TypeError, match="x has dtype int64"):
        L.batch_norm(x.astype(np.int64), g, g)
    with pytest.raises(ValueError, match=r"more than one value per channel.*\(1, 3\)"):
        L.batch_norm(np.zeros((1, 3)), g, g)
    with pytest.raises(ValueError, match="eval mode needs running_mean"):
        L.batch_norm(x, g, g, training=False)
    with pytest.raises(ValueError, match="momentum"):
        L.batch_norm(x, g, g, momentum=1.5)
    with pytest.raises(TypeError, match="dtypes differ"):
        L.batch_norm(x, g, g, np.zeros(3, np.float32), np.ones(3, np.float32))


# -------------------------------------------------------------- grouped convolution
def grouped_conv_loops(x, w, b, groups, stride, pad):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    og = o // groups
    oh, ow = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    y = np.zeros((n, o, oh, ow))
    for ni in range(n):
        for oi in range(o):
            first = (oi // og) * cg           # the group's first input channel
            for p in range(oh):
                for q in range(ow):
                    acc = float(b[oi])
                    for ci in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                hh, ww = p * stride + i - pad, q * stride + j - pad
                                if 0 <= hh < h and 0 <= ww < wd:
                                    acc += w[oi, ci, i, j] * x[ni, first + ci, hh, ww]
                    y[ni, oi, p, q] = acc
    return y


@pytest.mark.parametrize("groups,c,o,k,s,p,relu", [(2, 4, 6, 3, 1, 1, False), (3, 6, 3, 1, 1, 0, True),
                                                   (2, 2, 4, 5, 2, 2, True), (4, 8, 4, 3, 2, 0, False)])
def test_grouped_conv_forward_and_gradients(xp, groups, c, o, k, s, p, relu):
    rng = np.random.default_rng(groups * 10 + k)
    x, w, b = (rng.standard_normal((2, c, 7, 6)), rng.standard_normal((o, c // groups, k, k)),
               rng.standard_normal(o))
    expected = grouped_conv_loops(x, w, b, groups, s, p)
    if relu:
        expected = np.maximum(expected, 0)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, RTOL32)):
        y = L.conv2d(*(xp.asarray(a.astype(dtype)) for a in (x, w, b)), stride=s, pad=p,
                     relu=relu, groups=groups)
        assert y.dtype == dtype and y.shape == expected.shape
        np.testing.assert_allclose(to_np(y), expected, rtol=tol, atol=tol * 10)
    inputs = [leaf(xp, x), leaf(xp, w), leaf(xp, b + 0.3)]
    gradcheck(lambda *a: L.conv2d(*a, stride=s, pad=p, relu=relu, groups=groups), inputs,
              directions=6)


def test_grouped_conv_without_bias_and_module(xp):
    rng = np.random.default_rng(5)
    conv = L.Conv2d(4, 6, 3, pad=1, bias=False, groups=2, dtype="float64")
    assert conv.weight.shape == (6, 2, 3, 3) and conv.num_parameters() == 108
    if xp is not np:
        conv.to("cuda")
    x = rng.standard_normal((1, 4, 5, 5))
    y = conv(xp.asarray(x))
    expected = grouped_conv_loops(x, to_np(conv.weight), np.zeros(6), 2, 1, 1)
    np.testing.assert_allclose(to_np(y), expected, rtol=1e-12, atol=1e-12)
    xl = leaf(xp, x)
    gradcheck(lambda x, w: L.conv2d(x, w, pad=1, groups=2), [xl, conv.weight])


def test_grouped_conv_errors():
    x = np.zeros((1, 4, 5, 5))
    with pytest.raises(ValueError, match="groups=3 must divide the input channels 4"):
        L.conv2d(x, np.zeros((6, 1, 3, 3)), groups=3)
    with pytest.raises(ValueError, match=r"groups=2, w must have 2 input channels .* got w \(6, 4, 3, 3\)"):
        L.conv2d(x, np.zeros((6, 4, 3, 3)), groups=2)
    with pytest.raises(ValueError, match="groups=4 must divide in_channels 6"):
        L.Conv2d(6, 8, 3, groups=4)


# ------------------------------------------------------------- connection table (C3)
TABLE = [(0, 1, 2), (1, 3), (0, 1, 2, 3), (2,), (0, 3)]


def table_conv_loops(x, w, b, table):
    n, c, h, wd = x.shape
    k = w.shape[1]
    oh, ow = h - k + 1, wd - k + 1
    y = np.zeros((n, len(table), oh, ow))
    kernel = 0
    for o, inputs in enumerate(table):
        y[:, o] += b[o]
        for ci in sorted(inputs):
            for p in range(oh):
                for q in range(ow):
                    y[:, o, p, q] += (x[:, ci, p:p + k, q:q + k] * w[kernel]).sum(axis=(1, 2))
            kernel += 1
    return y


def test_table_conv_forward_gradients_and_macs(xp):
    rng = np.random.default_rng(6)
    kernels = sum(len(t) for t in TABLE)
    x, w, b = rng.standard_normal((2, 4, 6, 7)), rng.standard_normal((kernels, 3, 3)), rng.standard_normal(5)
    y = L.table_conv2d(*(xp.asarray(a) for a in (x, w, b)), TABLE)
    np.testing.assert_allclose(to_np(y), table_conv_loops(x, w, b, TABLE), rtol=1e-12, atol=1e-12)
    y32 = L.table_conv2d(*(xp.asarray(a.astype(np.float32)) for a in (x, w, b)), TABLE)
    np.testing.assert_allclose(to_np(y32), to_np(y), rtol=RTOL32, atol=1e-4)
    gradcheck(lambda *a: L.table_conv2d(*a, TABLE), [leaf(xp, x), leaf(xp, w), leaf(xp, b)],
              directions=6)
    f = L.TableConv2dFunction(TABLE)
    assert f.macs([x, w, b], [np.zeros((2, 5, 4, 5))]) == 2 * 4 * 5 * kernels * 9


def test_table_conv_module_and_errors():
    m = L.TableConv2d(4, TABLE, 3)
    assert m.weight.shape == (12, 3, 3) and m.num_parameters() == 12 * 9 + 5
    with pytest.raises(ValueError, match=r"output map 1 lists inputs \[1, 4\]; need distinct indices in \[0, 4\)"):
        L.TableConv2d(4, [(0,), (1, 4)], 3)
    with pytest.raises(ValueError, match=r"12 connections into 5 maps; got w \(10, 3, 3\)"):
        L.table_conv2d(np.zeros((1, 4, 5, 5)), np.zeros((10, 3, 3)), np.zeros(5), TABLE)


# ------------------------------------------------------------- trainable subsampling
def test_subsample_forward_gradients_errors(xp):
    rng = np.random.default_rng(7)
    x, coef, bias = rng.standard_normal((2, 3, 6, 4)), rng.standard_normal(3), rng.standard_normal(3)
    expected = np.zeros((2, 3, 3, 2))
    for n in range(2):
        for c in range(3):
            for i in range(3):
                for j in range(2):
                    window = [x[n, c, 2 * i + a, 2 * j + d] for a in range(2) for d in range(2)]
                    expected[n, c, i, j] = coef[c] * sum(window) + bias[c]
    y = L.subsample(*(xp.asarray(a) for a in (x, coef, bias)))
    np.testing.assert_allclose(to_np(y), expected, rtol=1e-12, atol=1e-12)
    gradcheck(lambda *a: L.subsample(*a), [leaf(xp, a) for a in (x, coef, bias)],
              mode="elementwise")
    gradcheck(lambda *a: L.subsample(*a, ksize=3), [leaf(xp, x[:, :, :6, :3].copy()), leaf(xp, coef),
                                                    leaf(xp, bias)])
    m = L.Subsample2d(3, dtype="float64")
    assert m.num_parameters() == 6
    with pytest.raises(ValueError, match=r"map 5x4 must be a multiple of the 2x2 window"):
        L.subsample(np.zeros((1, 3, 5, 4)), coef, bias)
    with pytest.raises(ValueError, match=r"coef must have shape \(3,\), got \(2,\)"):
        L.subsample(np.zeros((1, 3, 4, 4)), coef[:2], bias)


# ----------------------------------------------------------------------------- tanh
def test_tanh_and_lecuns_scaled_tanh(xp):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 4)) * 2
    np.testing.assert_allclose(to_np(L.tanh(xp.asarray(x))), np.tanh(x), rtol=1e-14)
    y = to_np(L.scaled_tanh(xp.asarray(x)))
    np.testing.assert_allclose(y, 1.7159 * np.tanh(2 * x / 3), rtol=1e-14)
    one = to_np(L.scaled_tanh(xp.asarray(np.array([1.0, -1.0]))))
    np.testing.assert_allclose(one, [1.0, -1.0], atol=2e-5)      # f(+-1) = +-1, the paper's choice
    assert L.scaled_tanh(xp.asarray(x.astype(np.float32))).dtype == np.float32
    gradcheck(L.tanh, [leaf(xp, x)], mode="elementwise")
    gradcheck(L.scaled_tanh, [leaf(xp, x)], mode="elementwise")
    with pytest.raises(TypeError, match="tanh: x has dtype int64"):
        L.tanh(np.zeros(3, np.int64))


# ---------------------------------------------------------- global average pooling
def test_global_avg_pool(xp):
    rng = np.random.default_rng(9)
    x = rng.standard_normal((2, 3, 4, 5))
    expected = np.array([[sum(x[n, c].ravel()) / 20 for c in range(3)] for n in range(2)])
    y = L.global_avg_pool2d(xp.asarray(x))
    assert y.shape == (2, 3)
    np.testing.assert_allclose(to_np(y), expected, rtol=1e-12)
    gradcheck(L.global_avg_pool2d, [leaf(xp, x)], mode="elementwise")
    with pytest.raises(ValueError, match=r"global_avg_pool2d: x must have 4 dimensions"):
        L.global_avg_pool2d(np.zeros((2, 3)))


# ------------------------------------------------------------------ residual join
def test_add_relu_and_residual_gradient_accumulation(xp):
    rng = np.random.default_rng(10)
    a, b = away_from_zero(rng, (2, 3, 4, 4)), away_from_zero(rng, (2, 3, 4, 4))
    s = a + b
    s = np.where(np.abs(s) < 0.05, 0.1, s)
    b = s - a
    np.testing.assert_allclose(to_np(L.add_relu(xp.asarray(a), xp.asarray(b))), np.maximum(s, 0))
    gradcheck(L.add_relu, [leaf(xp, a), leaf(xp, b)], mode="directional")
    # A residual block: x feeds both the convolution and the shortcut, so its gradient is
    # the sum of both paths' (the engine adds them).
    x, w = leaf(xp, rng.standard_normal((1, 3, 4, 4))), leaf(xp, rng.standard_normal((3, 3, 3, 3)) * 0.3)
    gradcheck(lambda x, w: L.add_relu(L.conv2d(x, w, pad=1), x), [x, w], directions=6)
    with pytest.raises(ValueError, match=r"add_relu: shapes differ, \(2, 3\) and \(2, 4\)"):
        L.add_relu(np.zeros((2, 3)), np.zeros((2, 4)))
