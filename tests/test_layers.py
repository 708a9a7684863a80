"""Every layer: forward against naive loops, gradients against finite differences,
input hygiene (no mutation, non-contiguous inputs), and clear errors on bad input.
Runs on NumPy and, where a GPU is present, CuPy (the ``xp`` fixture)."""
import numpy as np
import pytest
from hypothesis import assume, example, given
from hypothesis import strategies as st

import layers as L
import reference as ref
from conftest import to_np
from engine import Tensor, gradcheck, manual_seed, no_grad

RTOL32 = 2e-5


def leaf(xp, a, dtype=np.float64):
    return Tensor(xp.asarray(np.asarray(a, dtype=dtype)), requires_grad=True)


def distinct(rng, shape, spread=1.0):
    """Values far from ties (max pooling) and from zero (ReLU): a shuffled grid."""
    n = int(np.prod(shape))
    vals = (np.arange(n) - n / 2 + 0.5) * (spread / n) * 4
    return rng.permutation(vals).reshape(shape)


# ------------------------------------------------------------------ convolution
conv_cases = st.tuples(
    st.integers(1, 2), st.integers(1, 3), st.integers(1, 3),  # n, c, o
    st.integers(3, 7), st.integers(3, 7),                     # h, w
    st.sampled_from([1, 2, 3, 5]), st.integers(1, 3), st.integers(0, 2))  # k, stride, pad


@given(conv_cases, st.integers(0, 2**31 - 1))
def test_conv_forward_matches_loops(xp, case, seed):
    n, c, o, h, w, k, s, p = case
    if k > h + 2 * p or k > w + 2 * p:
        return
    rng = np.random.default_rng(seed)
    x, wt, b = rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c, k, k)), rng.standard_normal(o)
    for dtype, tol in ((np.float64, 1e-12), (np.float32, RTOL32)):
        y = L.conv2d(xp.asarray(x.astype(dtype)), xp.asarray(wt.astype(dtype)),
                     xp.asarray(b.astype(dtype)), s, p)
        assert y.dtype == dtype
        np.testing.assert_allclose(to_np(y), ref.conv2d(x, wt, b, s, p), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("k,s,p,relu,bias", [(1, 1, 0, False, True), (1, 1, 0, True, True),
                                             (3, 1, 1, True, True), (5, 1, 2, False, False),
                                             (7, 2, 3, True, True), (3, 2, 0, False, True),
                                             (2, 3, 1, False, True)])
def test_conv_gradients(xp, k, s, p, relu, bias):
    rng = np.random.default_rng(k * 10 + s)
    x = leaf(xp, rng.standard_normal((2, 3, 7, 6)))
    w = leaf(xp, rng.standard_normal((4, 3, k, k)))
    b = leaf(xp, rng.standard_normal(4) + (0.5 if relu else 0))
    inputs = [x, w, b] if bias else [x, w]
    gradcheck(lambda *a: L.conv2d(*a, stride=s, pad=p, relu=relu), inputs, directions=6)
    if not bias:
        tiny = [leaf(xp, rng.standard_normal((1, 2, 3, 3))), leaf(xp, rng.standard_normal((2, 2, 2, 2)))]
        res = gradcheck(lambda *a: L.conv2d(*a, pad=1), tiny, mode="elementwise")
        assert res.checks == 18 + 16


def test_conv_pointwise_takes_no_im2col(monkeypatch, xp):
    """The 1x1 stride-1 case is a plain GEMM: im2col must not be called, forward or backward."""
    import layers.conv as conv_mod

    def boom(*a, **k):
        raise AssertionError("im2col used for a 1x1 convolution")
    monkeypatch.setattr(conv_mod, "im2col", boom)
    monkeypatch.setattr(conv_mod, "col2im", boom)
    rng = np.random.default_rng(0)
    x, w = leaf(xp, rng.standard_normal((2, 5, 4, 3))), leaf(xp, rng.standard_normal((3, 5, 1, 1)))
    y = L.conv2d(x, w)
    np.testing.assert_allclose(to_np(y), ref.conv2d(to_np(x), to_np(w)), rtol=1e-12, atol=1e-12)
    gradcheck(lambda x, w: L.conv2d(x, w), [x, w])


def test_conv_skips_unneeded_input_gradient(xp):
    rng = np.random.default_rng(1)
    x = Tensor(xp.asarray(rng.standard_normal((1, 2, 5, 5))))          # an image: no grad
    w = leaf(xp, rng.standard_normal((3, 2, 3, 3)))
    L.conv2d(x, w, pad=1).sum().backward()
    assert x.grad is None and w.grad is not None


def test_im2col_col2im_are_adjoint(xp):
    """<im2col(x), c> == <x, col2im(c)>: col2im is exactly im2col's transpose."""
    rng = np.random.default_rng(2)
    for k, s, p in [(3, 1, 1), (5, 2, 2), (2, 3, 0), (7, 2, 3)]:
        x = rng.standard_normal((2, 3, 9, 8))
        col = to_np(L.im2col(xp.asarray(x), k, k, s, p))
        c = rng.standard_normal(col.shape)
        back = to_np(L.col2im(xp.asarray(c), x.shape, k, k, s, p))
        assert np.isclose((col * c).sum(), (x * back).sum(), rtol=1e-10)


# ---------------------------------------------------------------------- pooling
pool_cases = st.tuples(st.integers(1, 2), st.integers(1, 3), st.integers(3, 12), st.integers(3, 12),
                       st.integers(1, 4), st.integers(1, 3), st.integers(0, 2), st.booleans())


def _valid_pool(h, w, k, s, p, ceil):
    if p >= k or k > h + 2 * p or k > w + 2 * p or s > k:
        return False
    return True


@given(pool_cases, st.integers(0, 2**31 - 1))
def test_max_pool_forward_matches_caffe_loops(xp, case, seed):
    n, c, h, w, k, s, p, ceil = case
    assume(_valid_pool(h, w, k, s, p, ceil))   # an early return would count as a pass
    x = distinct(np.random.default_rng(seed), (n, c, h, w))
    y = L.max_pool2d(xp.asarray(x), k, s, p, ceil)
    expected, _ = ref.max_pool2d(x, k, s, p, ceil)
    np.testing.assert_array_equal(to_np(y), expected)
    y32 = L.max_pool2d(xp.asarray(x.astype(np.float32)), k, s, p, ceil)
    np.testing.assert_array_equal(to_np(y32), expected.astype(np.float32))


@given(pool_cases, st.integers(0, 2**31 - 1))
@example(case=(1, 2, 7, 7, 3, 2, 1, True), seed=1)      # padded borders: the divisor counts
@example(case=(2, 1, 9, 8, 3, 2, 1, False), seed=2)     # the padding inside [-pad, size + pad)
@example(case=(1, 1, 14, 14, 5, 3, 2, True), seed=3)
def test_avg_pool_forward_matches_caffe_loops(xp, case, seed):
    n, c, h, w, k, s, p, ceil = case
    assume(_valid_pool(h, w, k, s, p, ceil))
    x = np.random.default_rng(seed).standard_normal((n, c, h, w))
    y = L.avg_pool2d(xp.asarray(x), k, s, p, ceil)
    np.testing.assert_allclose(to_np(y), ref.avg_pool2d(x, k, s, p, ceil), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("k,s,p,ceil", [(3, 2, 1, True), (3, 1, 1, True), (3, 2, 1, False),
                                        (4, 3, 2, True)])
def test_avg_pool_divides_by_caffes_count_at_padded_borders(xp, k, s, p, ceil):
    """Ones in, and each output must be (real pixels in window) / (Caffe's divisor)."""
    x = np.ones((1, 1, 7, 6))
    y = to_np(L.avg_pool2d(xp.asarray(x), k, s, p, ceil))
    np.testing.assert_allclose(y, ref.avg_pool2d(x, k, s, p, ceil), rtol=1e-12)
    assert y[0, 0, 0, 0] < 1.0      # the top-left window covers padding, counted in the divisor


def test_max_pool_backward_routes_to_the_caffe_argmax(xp):
    rng = np.random.default_rng(3)
    x = distinct(rng, (2, 3, 9, 9))
    gy = rng.standard_normal((2, 3, 5, 5))
    t = Tensor(xp.asarray(x), requires_grad=True)
    L.max_pool2d(t, 3, 2, 1).backward(xp.asarray(gy))
    _, arg = ref.max_pool2d(x, 3, 2, 1)
    expected = np.zeros_like(x)
    for ni in range(2):
        for ci in range(3):
            for p in range(5):
                for q in range(5):
                    hh, ww = divmod(arg[ni, ci, p, q], 9)
                    expected[ni, ci, hh, ww] += gy[ni, ci, p, q]
    np.testing.assert_allclose(to_np(t.grad), expected, rtol=1e-12)


@pytest.mark.parametrize("k,s,p,ceil", [(3, 2, 0, True), (3, 2, 1, True), (3, 1, 1, True),
                                        (2, 2, 0, False), (5, 3, 0, True), (7, 1, 0, True),
                                        (3, 2, 1, False), (4, 3, 2, True)])
def test_pool_gradients(xp, k, s, p, ceil):
    rng = np.random.default_rng(k + s + p)
    x = leaf(xp, distinct(rng, (2, 2, 8, 7)))
    gradcheck(lambda x: L.max_pool2d(x, k, s, p, ceil), [x], eps=1e-7)
    gradcheck(lambda x: L.avg_pool2d(x, k, s, p, ceil), [x])


def test_googlenet_pool_sizes():
    """Ceil mode takes 112 -> 56 -> 28 -> 14 -> 7 with 3x3/2 windows; the aux pool 14 -> 4."""
    sizes, h = [], 112
    for _ in range(4):
        h = L.max_pool2d(np.zeros((1, 1, h, h)), 3, 2).shape[2]
        sizes.append(h)
    assert sizes == [56, 28, 14, 7]
    assert L.max_pool2d(np.zeros((1, 1, 112, 112)), 3, 2, ceil_mode=False).shape[2] == 55
    assert L.avg_pool2d(np.zeros((1, 1, 14, 14)), 5, 3).shape[2] == 4
    assert L.avg_pool2d(np.zeros((1, 1, 7, 7)), 7, 1).shape[2] == 1


# -------------------------------------------------------------------------- LRN
@given(st.integers(1, 9), st.sampled_from([1, 3, 5, 7, 11]), st.integers(0, 2**31 - 1))
def test_lrn_forward_matches_loops(xp, c, size, seed):
    x = np.random.default_rng(seed).standard_normal((2, c, 3, 2)) * 3
    for alpha, beta, k in [(1e-4, 0.75, 1.0), (0.5, 0.6, 2.0)]:
        y = L.lrn(xp.asarray(x), size, alpha, beta, k)
        np.testing.assert_allclose(to_np(y), ref.lrn(x, size, alpha, beta, k), rtol=1e-12)


@pytest.mark.parametrize("c,size", [(6, 5), (3, 5), (1, 3), (8, 1), (4, 9)])
def test_lrn_gradients(xp, c, size):
    # A large alpha makes the normalisation term matter in the check.
    x = leaf(xp, np.random.default_rng(c).standard_normal((2, c, 3, 3)))
    gradcheck(lambda x: L.lrn(x, size, 0.7, 0.75, 1.5), [x])


def test_lrn_uses_caffe_alpha_over_n():
    x = np.ones((1, 5, 1, 1))
    y = L.lrn(x, 5, alpha=1.0, beta=1.0, k=1.0)
    # centre channel sees all 5 ones: scale = 1 + 1/5 * 5 = 2 (Chainer's form would give 6)
    assert np.isclose(to_np(y)[0, 2, 0, 0], 0.5)


def test_lrn_rejects_even_size():
    with pytest.raises(ValueError, match="lrn: size must be a positive odd"):
        L.lrn(np.ones((1, 4, 2, 2)), 4)


# --------------------------------------------------------- small layers and loss
def test_linear_forward_and_gradients(xp):
    rng = np.random.default_rng(4)
    x, w, b = rng.standard_normal((3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    np.testing.assert_allclose(to_np(L.linear(xp.asarray(x), xp.asarray(w), xp.asarray(b))),
                               ref.linear(x, w, b), rtol=1e-12)
    gradcheck(L.linear, [leaf(xp, x), leaf(xp, w), leaf(xp, b)])


def test_relu_and_concat_gradients(xp):
    rng = np.random.default_rng(5)
    a = leaf(xp, distinct(rng, (2, 3, 2, 2)))
    b = leaf(xp, rng.standard_normal((2, 1, 2, 2)))
    c = leaf(xp, rng.standard_normal((2, 4, 2, 2)))
    y = L.concat([L.relu(a), b, c])
    assert y.shape == (2, 8, 2, 2)
    np.testing.assert_array_equal(to_np(y)[:, :3], np.maximum(to_np(a), 0))
    gradcheck(lambda a, b, c: L.concat([L.relu(a), b, c * 2.0]), [a, b, c])


def test_concat_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="concat: input 1 has shape"):
        L.concat([np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 4, 3))])


@given(st.integers(1, 6), st.integers(2, 7), st.integers(0, 2**31 - 1))
def test_softmax_cross_entropy_matches_loops(n, k, seed):
    rng = np.random.default_rng(seed)
    z, t = rng.standard_normal((n, k)) * 5, rng.integers(0, k, n)
    loss = L.softmax_cross_entropy(z, t)
    assert loss.shape == ()
    assert np.isclose(loss.item(), ref.softmax_cross_entropy(z, t), rtol=1e-12)


def test_loss_and_softmax_gradients(xp):
    rng = np.random.default_rng(6)
    z = leaf(xp, rng.standard_normal((4, 5)))
    t = xp.asarray(np.array([0, 4, 2, 2]))
    gradcheck(lambda z: L.softmax_cross_entropy(z, t), [z])
    gradcheck(lambda z: L.softmax(z), [z])
    gradcheck(lambda z: L.log_softmax(z), [z])


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1000.0, 0.0], [-1000.0, 1000.0]], dtype=np.float32)
    loss = L.softmax_cross_entropy(z, np.array([0, 1]))
    assert np.isfinite(loss.item()) and loss.item() < 1e-6
    probs = to_np(L.softmax(z))
    assert np.all(np.isfinite(probs)) and np.allclose(probs.sum(1), 1)


def test_dropout_is_inverted_and_reproducible(xp):
    x = xp.ones((200, 50), dtype=xp.float32)
    manual_seed(7)
    a = to_np(L.dropout(x, 0.4, training=True))
    manual_seed(7)
    b = to_np(L.dropout(x, 0.4, training=True))
    np.testing.assert_array_equal(a, b)
    kept = a != 0
    assert abs(kept.mean() - 0.6) < 0.02
    np.testing.assert_allclose(a[kept], 1 / 0.6, rtol=1e-6)
    assert L.dropout(Tensor(x), 0.4, training=False).data is x
    t = leaf(xp, np.ones((3, 4)))
    manual_seed(3)
    y = L.dropout(t, 0.5)
    y.backward(xp.ones((3, 4)))
    np.testing.assert_array_equal(to_np(t.grad), to_np(y))


def test_dropout_gradient(xp):
    x = leaf(xp, np.random.default_rng(8).standard_normal((4, 6)))

    def f(x):
        manual_seed(11)  # the same mask in every evaluation
        return L.dropout(x, 0.3)
    gradcheck(f, [x])


# -------------------------------------------------------- an Inception module
def inception(x, p):
    """One Inception module from the functional layers: four branches, then concat."""
    b1 = L.conv2d(x, p["1x1"], p["b1"], relu=True)
    b2 = L.conv2d(L.conv2d(x, p["3r"], p["b3r"], relu=True), p["3x3"], p["b3"], pad=1, relu=True)
    b3 = L.conv2d(L.conv2d(x, p["5r"], p["b5r"], relu=True), p["5x5"], p["b5"], pad=2, relu=True)
    b4 = L.conv2d(L.max_pool2d(x, 3, 1, 1), p["pp"], p["bpp"], relu=True)
    return L.concat([b1, b2, b3, b4])


def test_inception_module_gradients(xp):
    rng = np.random.default_rng(9)
    c = 3
    shapes = {"1x1": (2, c, 1, 1), "3r": (2, c, 1, 1), "3x3": (3, 2, 3, 3), "5r": (1, c, 1, 1),
              "5x5": (2, 1, 5, 5), "pp": (2, c, 1, 1)}
    params = {}
    for name, shape in shapes.items():
        params[name] = leaf(xp, rng.standard_normal(shape))
        bias = {"1x1": "b1", "3r": "b3r", "3x3": "b3", "5r": "b5r", "5x5": "b5", "pp": "bpp"}[name]
        params[bias] = leaf(xp, rng.standard_normal(shape[0]) * 0.1 + 0.3)
    x = leaf(xp, distinct(rng, (2, c, 5, 5), spread=3.0))
    names = list(params)
    y = inception(x, params)
    assert y.shape == (2, 9, 5, 5)
    res = gradcheck(lambda x, *ps: inception(x, dict(zip(names, ps))), [x] + [params[n] for n in names],
                    directions=10)
    assert res.checks == 10


# ------------------------------------------------------------ input hygiene
def _all_ops(x4, w, z, t):
    return [
        lambda: L.conv2d(x4, w, pad=1), lambda: L.conv2d(x4, w[:, :, :1, :1]),
        lambda: L.max_pool2d(x4, 3, 2), lambda: L.avg_pool2d(x4, 3, 2, 1), lambda: L.lrn(x4),
        lambda: L.relu(x4), lambda: L.concat([x4, x4]), lambda: L.linear(z, z[:2]),
        lambda: L.softmax_cross_entropy(z, t), lambda: L.softmax(z), lambda: L.dropout(x4, 0.5),
    ]


def test_forward_never_mutates_inputs(xp):
    rng = np.random.default_rng(10)
    x4 = xp.asarray(rng.standard_normal((2, 3, 6, 6)).astype(np.float32))
    w = xp.asarray(rng.standard_normal((4, 3, 3, 3)).astype(np.float32))
    z = xp.asarray(rng.standard_normal((3, 5)).astype(np.float32))
    t = xp.asarray(np.array([0, 1, 4]))
    before = [to_np(a).copy() for a in (x4, w, z)]
    for op in _all_ops(x4, w, z, t):
        op()
    for a, b in zip((x4, w, z), before):
        np.testing.assert_array_equal(to_np(a), b)


def test_non_contiguous_inputs_work(xp):
    rng = np.random.default_rng(11)
    big = rng.standard_normal((3, 6, 8, 8))
    x_nc = xp.asarray(big)[::2, ::2, :, ::-1]           # strided and reversed
    x_c = xp.asarray(np.ascontiguousarray(big[::2, ::2, :, ::-1]))
    w_nc = xp.asarray(rng.standard_normal((4, 3, 3, 3)).transpose(0, 1, 3, 2))
    assert not x_nc.flags.c_contiguous
    pairs = [(lambda x: L.conv2d(x, w_nc, pad=1)), (lambda x: L.conv2d(x, w_nc[:, :, :1, :1])),
             (lambda x: L.max_pool2d(x, 3, 2)), (lambda x: L.avg_pool2d(x, 3, 2)),
             (lambda x: L.lrn(x, 3, 0.5)), (lambda x: L.relu(x))]
    for op in pairs:
        np.testing.assert_allclose(to_np(op(x_nc)), to_np(op(x_c)), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("call,exc,pattern", [
    (lambda: L.conv2d(np.ones((3, 8, 8)), np.ones((2, 3, 3, 3))), ValueError, r"conv2d: x must have 4 dimensions.*\(3, 8, 8\)"),
    (lambda: L.conv2d(np.ones((1, 4, 8, 8)), np.ones((2, 3, 3, 3))), ValueError, r"conv2d: x has 4 channels but w expects 3"),
    (lambda: L.conv2d(np.ones((1, 3, 2, 2)), np.ones((2, 3, 5, 5))), ValueError, r"conv2d: kernel 5x5 is larger than the padded input 2x2"),
    (lambda: L.conv2d(np.ones((1, 3, 8, 8), dtype=np.int32), np.ones((2, 3, 3, 3))), TypeError, r"conv2d: x has dtype int32"),
    (lambda: L.conv2d(np.ones((1, 3, 8, 8), np.float32), np.ones((2, 3, 3, 3))), TypeError, r"conv2d: dtypes differ"),
    (lambda: L.conv2d(np.ones((1, 3, 8, 8)), np.ones((2, 3, 3, 3)), np.ones(3)), ValueError, r"conv2d: b must have shape \(2,\)"),
    (lambda: L.max_pool2d(np.ones((1, 1, 2, 2)), 5, 1), ValueError, r"max_pool2d: window 5x5 is larger"),
    (lambda: L.max_pool2d(np.ones((1, 1, 8, 8), dtype=np.int64), 3, 2), TypeError, r"max_pool2d: x has dtype int64"),
    (lambda: L.avg_pool2d(np.ones((8, 8)), 3, 2), ValueError, r"avg_pool2d: x must have 4 dimensions"),
    (lambda: L.lrn(np.ones((2, 3)), 5), ValueError, r"lrn: x must have 4 dimensions"),
    (lambda: L.linear(np.ones((2, 5)), np.ones((3, 4))), ValueError, r"linear: x has 5 features but w expects 4"),
    (lambda: L.softmax_cross_entropy(np.ones((2, 3)), np.array([0, 3])), ValueError, r"labels must be in \[0, 3\)"),
    (lambda: L.softmax_cross_entropy(np.ones((2, 3)), np.array([0.0, 1.0])), TypeError, r"labels must be integers"),
    (lambda: L.softmax_cross_entropy(np.ones((2, 3)), np.array([0, 1, 2])), ValueError, r"labels must have shape \(2,\)"),
    (lambda: L.dropout(np.ones(3), 1.0), ValueError, r"dropout: p must be in \[0, 1\)"),
])
def test_bad_input_raises_clear_errors(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_float32_forward_tracks_float64(xp):
    """The float32 path computes the same function as float64, to float32 rounding."""
    rng = np.random.default_rng(12)
    x, w = rng.standard_normal((2, 4, 9, 9)), rng.standard_normal((6, 4, 3, 3))
    outs = []
    for dt in (np.float32, np.float64):
        with no_grad():
            y = L.lrn(L.max_pool2d(L.conv2d(xp.asarray(x.astype(dt)), xp.asarray(w.astype(dt)),
                                            pad=1, relu=True), 3, 2), 5, 1e-2)
        outs.append(to_np(y))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["auto", "plain"])
def test_stacked_1x1_convolutions_equal_the_separate_ones(mode):
    """layers.stacked_conv1x1: the same outputs and gradients as calling each Conv2d, also
    when one output is not used downstream; a mixed set falls back to separate calls."""
    from layers import dispatch
    rng = np.random.default_rng(11)
    convs = [L.Conv2d(10, o, 1, relu=True, bias_fill=0.1, dtype="float64") for o in (5, 4, 3)]
    xa = rng.standard_normal((3, 10, 6, 7))
    gys = [rng.standard_normal((3, o, 6, 7)) for o in (5, 4, 3)]

    def run(stacked):
        for c in convs:
            c.weight.grad = c.bias.grad = None
        x = Tensor(xa, requires_grad=True)
        outs = L.stacked_conv1x1(x, convs) if stacked else [c(x) for c in convs]
        loss = (outs[0] * Tensor(gys[0])).sum() + (outs[2] * Tensor(gys[2])).sum()  # 1 unused
        loss.backward()
        return [o.data for o in outs] + [x.grad] + [p.grad for c in convs
                                                     for p in (c.weight, c.bias)]

    with dispatch.use(mode):
        got, want = run(True), run(False)
    assert len(got) == len(want) == 10
    for a, b in zip(got[:6] + got[8:], want[:6] + want[8:]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # The unused output's convolution: no gradient when called alone, zeros when stacked
    # (its rows of the one weight gradient).
    assert want[6] is None and want[7] is None
    assert not got[6].any() and not got[7].any()
    mixed = convs[:2] + [L.Conv2d(10, 3, 1, relu=False, dtype="float64")]
    x = Tensor(xa)
    assert all(o.creator is None or type(o.creator).__name__ == "Conv2dFunction"
               for o in L.stacked_conv1x1(x, mixed))
