"""The Numba CPU kernels (kernels/cpu) against the plain NumPy path of the same layers.

Every layer that dispatches to a kernel runs twice on the same inputs, once with
``layers.dispatch.use("auto")`` (the kernels) and once with ``use("plain")`` (the NumPy code
that tests/test_layers.py checks against naive loops), on hypothesis-drawn shapes in float32 and float64, forward and
backward, with strided inputs and gradients like the ones a concatenation hands back. The
max-pool winners must be identical, ties included; everything else agrees to rounding.
Also: the pool's run order and determinism, workspaces, the dispatch switch, and GoogLeNet end
to end.
"""
import functools
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import kernels.cpu as cpu
import layers as L
from engine import Tensor
from kernels.cpu import parallel, workspace
from layers import dispatch
from layers.pooling import MaxPool2dFunction

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not cpu.available(), reason="Numba is not importable")


@pytest.fixture(autouse=True)
def kernels_on():
    """Every test here runs with the kernels on, whatever GOOGLENET_KERNELS says."""
    with dispatch.use("auto"):
        yield


def kernels(flag: bool):
    """The kernels (True) or the plain path (False) for the block."""
    return dispatch.use("auto" if flag else "plain")

TOL = {np.float32: 2e-5, np.float64: 1e-12}
FEW = settings(max_examples=15, deadline=None)


def run_both(fn, inputs, gy_seed=1, gy_view=False):
    """[output, grads...] of ``fn(*inputs)`` with the kernels on and off (NumPy arrays)."""
    results = []
    for flag in (True, False):
        with kernels(flag):
            ts = [Tensor(a.copy() if a.flags.c_contiguous else a, requires_grad=True)
                  for a in inputs]
            y = fn(*ts)
            gy = np.random.default_rng(gy_seed).standard_normal(y.shape).astype(y.dtype)
            if gy_view:  # a strided view, as a concatenation's backward hands out
                wide = np.zeros((y.shape[0], y.shape[1] + 3) + y.shape[2:], y.dtype)
                wide[:, 2:2 + y.shape[1]] = gy
                gy = wide[:, 2:2 + y.shape[1]]
            y.backward(gy)
            results.append([y.data] + [t.grad for t in ts])
    return results


def assert_close(a, b, dtype):
    tol = TOL[dtype]
    for u, v in zip(a, b):
        assert u.dtype == v.dtype and u.shape == v.shape
        scale = max(float(np.abs(v).max()), 1.0)
        np.testing.assert_allclose(u, v, rtol=tol, atol=tol * scale)


# ------------------------------------------------------------------ convolution
conv_cases = st.tuples(
    st.integers(1, 5), st.integers(1, 6), st.integers(1, 7),   # n, c, o
    st.integers(1, 12), st.integers(1, 12),                     # h, w
    st.sampled_from([1, 2, 3, 5, 7]), st.integers(1, 3), st.integers(0, 3),  # k, stride, pad
    st.booleans(), st.booleans())                               # relu, bias


@FEW
@given(conv_cases, st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31 - 1))
def test_conv_kernels_match_numpy(case, dtype, seed):
    n, c, o, h, w, k, s, p, relu, bias = case
    if k > h + 2 * p or k > w + 2 * p:
        return
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = rng.standard_normal((o, c, k, k)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    inputs = [x, wt, b] if bias else [x, wt]
    ours, ref = run_both(lambda *a: L.conv2d(*a, stride=s, pad=p, relu=relu), inputs,
                         gy_view=bool(seed % 2))
    assert_close(ours, ref, dtype)


@pytest.mark.parametrize("shape,k,s,p", [((9, 16, 7, 7), 1, 1, 0),     # 1x1, chunks of images
                                         ((3, 8, 4, 4), 1, 1, 0),      # aux: one image a chunk
                                         ((9, 8, 4, 4), 1, 1, 0),      # gathered chunks, n0 > 0
                                         ((9, 8, 2, 2), 1, 1, 0),      # inception 5a/5b at 64
                                         ((5, 4, 14, 14), 3, 1, 1),
                                         ((2, 3, 23, 23), 7, 2, 3)])   # conv1's geometry
def test_conv_kernels_on_googlenet_like_shapes(shape, k, s, p):
    rng = np.random.default_rng(0)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal(shape).astype(dtype)
        wt = (rng.standard_normal((6, shape[1], k, k)) * 0.3).astype(dtype)
        b = rng.standard_normal(6).astype(dtype)
        ours, ref = run_both(lambda *a: L.conv2d(*a, stride=s, pad=p, relu=True), [x, wt, b])
        assert_close(ours, ref, dtype)


@pytest.mark.parametrize("band", [8, 40])
def test_conv_in_bands_of_output_rows_matches_numpy(monkeypatch, band):
    """Large maps run band by band (conv1: forward, and gW, gb without an input gradient);
    here bands of ``band`` columns on small maps, two threads, against the plain path."""
    import kernels.cpu.conv as K
    monkeypatch.setattr(K, "BAND_COLUMNS", band)
    monkeypatch.setattr(parallel, "THREADS", max(2, parallel.threads()))
    banded = []
    real = K.im2col_rows
    monkeypatch.setattr(K, "im2col_rows", lambda *a: banded.append(a[3:6]) or real(*a))
    rng = np.random.default_rng(7)
    for shape, k, s, p in [((5, 3, 23, 23), 7, 2, 3), ((3, 4, 11, 9), 5, 1, 2)]:
        for dtype in (np.float32, np.float64):
            x = rng.standard_normal(shape).astype(dtype)
            if dtype == np.float64:
                x = np.asfortranarray(x)                 # strided planes work too
            wt = (rng.standard_normal((6, shape[1], k, k)) * 0.3).astype(dtype)
            b = rng.standard_normal(6).astype(dtype)
            results = []
            for flag in (True, False):
                with kernels(flag):
                    ts = [Tensor(x), Tensor(wt, requires_grad=True), Tensor(b, requires_grad=True)]
                    y = L.conv2d(*ts, stride=s, pad=p, relu=True)
                    y.backward(np.random.default_rng(1).standard_normal(y.shape).astype(dtype))
                    results.append([y.data, ts[1].grad, ts[2].grad])
            assert_close(*results, dtype)
            assert ts[0].grad is None
    assert banded and all(0 < (y1 - y0) * ow <= max(ow, band) for ow, y0, y1 in banded)


def test_conv_non_contiguous_input_and_no_input_gradient():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 9, 10)).transpose(0, 1, 3, 2)      # strided view
    w = rng.standard_normal((5, 4, 3, 3))
    ours, ref = run_both(lambda x, w: L.conv2d(x, w, pad=1, relu=True), [x, w])
    assert_close(ours, ref, np.float64)
    with kernels(True):
        img = Tensor(x.copy())
        wt = Tensor(w, requires_grad=True)
        L.conv2d(img, wt, pad=1).sum().backward()
        assert img.grad is None and wt.grad is not None


def test_conv_impl_plain_forces_the_numpy_path(monkeypatch):
    import kernels.cpu.conv as K

    def boom(*a, **k):
        raise AssertionError("a Numba kernel ran")
    monkeypatch.setattr(K, "columns", boom)
    x = np.ones((1, 2, 5, 5))
    L.conv2d(x, np.ones((3, 2, 3, 3)), pad=1, impl="plain")
    with pytest.raises(AssertionError, match="a Numba kernel ran"):
        L.conv2d(x, np.ones((3, 2, 3, 3)), pad=1)


# Winograd F(2x2, 3x3), F(4x4, 3x3) and F(4x4, 5x5), forward and input gradient (and
# the F(4x4, .) weight gradients), against the plain path in float64. Their float32 errors on
# GoogLeNet's shapes are about 5e-7, up to 4e-6 and up to 6e-6 of the output's scale; 5e-5
# is the stated bound.
WINOGRAD_TOL = {np.float32: 5e-5, np.float64: 1e-12}


@FEW
@given(st.sampled_from([(2, 3), (4, 3), (4, 5)]), st.integers(1, 3), st.integers(1, 9),
       st.integers(1, 9), st.integers(1, 13), st.integers(1, 13), st.booleans(), st.booleans(),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31 - 1))
def test_winograd_matches_the_direct_convolution(monkeypatch, mr, n, c, o, h, w, relu, bias,
                                                  dtype, seed):
    """F(m x m, r x r) on every map size from 1x1 (tiles mostly outside the map) to 13x13,
    odd and even (F(2x2, 3x3): forward and input gradient; the F(4x4, .) weight
    gradients too)."""
    from kernels.cpu import winograd
    m, r = mr
    monkeypatch.setattr(winograd, "choose", lambda *a: m)     # on every shape drawn
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(dtype)
    wt = (rng.standard_normal((o, c, r, r)) * 3 / r).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    gy = rng.standard_normal((n, o, h, w)).astype(dtype)
    results = []
    for flag, cast in ((True, dtype), (False, np.float64)):
        with kernels(flag):
            xt = Tensor(x.astype(cast), requires_grad=True)
            w_t = Tensor(wt.astype(cast), requires_grad=True)
            y = L.conv2d(xt, w_t, Tensor(b.astype(cast)) if bias else None, 1, r // 2,
                         relu=relu)
            y.backward(gy.astype(cast))
            results.append((y.data, xt.grad, w_t.grad))
    for ours, theirs in zip(*results):
        scale = max(float(np.abs(theirs).max()), 1.0)
        assert ours.dtype == dtype
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=WINOGRAD_TOL[dtype] * scale)


@pytest.mark.parametrize("band_bytes, block, h, w, images", [
    (1, 8, 30, 17, 1), (40_000, 16, 30, 17, 1), (3 << 20, 64, 30, 17, 1),
    (3 << 20, 16, 14, 14, 2), (3 << 20, 64, 7, 15, 4)])
def test_winograd_bands_and_channel_blocks_give_the_direct_convolution(monkeypatch, band_bytes,
                                                                       block, h, w, images):
    """F(4x4, 3x3) band by band (``winograd.forward_f4``): one tile row per band, bands of
    several rows with a shorter last one, whole images, and two or four small images side
    by side (5 images: a shorter last group); output channels in blocks with a shorter
    last one; forward and input gradient (the forward of the gradient) against the plain
    path in float64, on maps whose last tiles lie partly outside them."""
    from kernels.cpu import winograd
    monkeypatch.setattr(winograd, "BAND_BYTES", band_bytes)
    monkeypatch.setattr(winograd, "BLOCK_CHANNELS", block)
    monkeypatch.setattr(winograd, "choose", lambda *a: 4)
    rng = np.random.default_rng(band_bytes + block)
    n, c, o = 5, 20, 36
    assert winograd.band_rows(c, o, h, w)[1] == images
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    gy = rng.standard_normal((n, o, h, w)).astype(np.float32)
    rows = winograd.band_rows(c, o, h, w)[0]
    assert {1: rows == 1, 40_000: 1 < rows < 8, 3 << 20: rows == -(-h // 4)}[band_bytes]
    results = []
    for flag, cast in ((True, np.float32), (False, np.float64)):
        with kernels(flag):
            xt = Tensor(x.astype(cast), requires_grad=True)
            y = L.conv2d(xt, Tensor(wt.astype(cast)), Tensor(b.astype(cast)), 1, 1, relu=True)
            y.backward(gy.astype(cast))
            results.append((y.data, xt.grad))
    for ours, theirs in zip(*results):
        scale = float(np.abs(theirs).max())
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=WINOGRAD_TOL[np.float32] * scale)


def test_winograd_is_chosen_only_where_it_measured_faster(monkeypatch):
    from kernels.cpu import conv as K
    from kernels.cpu import winograd
    size = K.winograd_size
    assert size((8, 64, 56, 56), (192, 64, 3, 3), 1, 1) == 4                 # conv2
    assert size((8, 64, 56, 56), (192, 64, 3, 3), 1, 1, "input") == 4
    assert size((8, 64, 56, 56), (192, 64, 3, 3), 1, 1, "weights") == 4
    assert size((8, 16, 28, 28), (32, 16, 3, 3), 1, 1) == 4                  # few channels
    assert size((8, 128, 14, 14), (256, 128, 3, 3), 1, 1) == 4               # 14x14
    assert size((8, 128, 14, 14), (256, 128, 3, 3), 1, 1, "input") == 2
    assert size((8, 128, 14, 14), (256, 128, 3, 3), 1, 1, "weights") == 4
    assert size((8, 32, 14, 14), (64, 32, 3, 3), 1, 1) == 0
    assert size((8, 160, 7, 7), (320, 160, 3, 3), 1, 1) == 0                 # small maps
    assert size((8, 128, 28, 28), (192, 128, 3, 3), 2, 1) == 0               # stride 2
    assert size((8, 32, 28, 28), (96, 32, 5, 5), 1, 2) == 4                  # 5x5, 28x28
    assert size((8, 32, 28, 28), (96, 32, 5, 5), 1, 2, "input") == 4
    assert size((8, 32, 28, 28), (96, 32, 5, 5), 1, 2, "weights") == 4
    assert size((8, 32, 14, 14), (128, 32, 5, 5), 1, 2) == 0                 # 5x5, 14x14
    assert size((8, 32, 28, 28), (96, 32, 5, 5), 1, 1) == 0                  # not "same"
    calls = []
    real = winograd.TRANSFORMS[16]                      # F(2x2, 3x3)'s input transform
    monkeypatch.setitem(winograd.TRANSFORMS, 16,         # records whose input it transforms
                        (lambda *a, f=real[0]: calls.append(("f2", a[0].shape[1])) or f(*a),
                         real[1]))
    monkeypatch.setattr(winograd, "forward_f4", lambda *a, f=winograd.forward_f4:  # F(4x4)
                        calls.append(("f4", a[0].shape[1])) or f(*a))
    # (maps, SMALL_MAPS_F4, the forward's F(m x m), the input gradient's)
    for side, small_f4, forward, backward in ((16, True, "f4", "f4"), (14, True, "f4", "f2"),
                                              (16, False, "f4", "f4"), (14, False, "f2", "f2")):
        monkeypatch.setattr(winograd, "SMALL_MAPS_F4", small_f4)
        if side == 14:
            assert size((8, 128, 14, 14), (256, 128, 3, 3), 1, 1) == int(forward[1])
            assert size((8, 128, 14, 14), (256, 128, 3, 3), 1, 1, "input") == 2
        calls.clear()
        x = np.random.default_rng(0).standard_normal((2, 64, side, side)).astype(np.float32)
        wt = np.random.default_rng(1).standard_normal((80, 64, 3, 3)).astype(np.float32)
        ours, ref = run_both(lambda *a: L.conv2d(*a, pad=1, relu=True), [x, wt])
        assert (forward, 64) in calls                  # the forward took it (x: 64 channels)
        assert (backward, 80) in calls                 # the input gradient (gY: 80)
        assert_close(ours[2:], ref[2:], np.float32)    # the weight gradient
        assert_close(ours[:2], ref[:2], np.float32)


def test_chunks_fill_whole_rounds_of_runs(monkeypatch):
    """Every run of chunks gets as many images where n allows it: 32 images of 14x14 in 8
    chunks of 4 (not 6, 6, 6, 6, 6, 2, dealt as runs of 6 and 12 images); up to 4 images per
    thread, one run per thread (8 images of 14x14: 2 chunks of 4), else two."""
    from kernels.cpu import conv as K
    from kernels.cpu import parallel
    monkeypatch.setattr(parallel, "THREADS", 2)
    assert [parallel.runs(n) for n in (1, 8, 9, 32)] == [2, 2, 4, 4]
    for n, p, g in ((32, 196, 4), (64, 196, 4), (8, 784, 2), (32, 49, 8), (32, 3136, 1),
                    (30, 784, 2), (5, 49, 3), (8, 196, 4), (8, 49, 4)):
        assert K.images_per_chunk(n, p, False) == g
    for n in (8, 16, 32, 64, 96):
        for p in (3136, 784, 196, 49, 16):
            g = K.images_per_chunk(n, p, False)
            assert g * p <= max(K.COLUMNS_PER_GEMM, p) * 2
            assert -(-n // g) % parallel.runs(n) == 0


def test_im2col_and_col2im_kernels_match_numpy():
    """The chunk kernels against layers.im2col / col2im for one chunk of images."""
    from kernels.cpu import conv as K
    from layers.im2col import col2im, conv_out_size, im2col
    rng = np.random.default_rng(2)
    for n, c, h, w, k, s, p in [(3, 2, 9, 8, 3, 1, 1), (2, 3, 11, 7, 5, 2, 2), (2, 1, 6, 6, 2, 3, 0)]:
        x = rng.standard_normal((n, c, h, w))
        oh, ow = conv_out_size(h, k, s, p), conv_out_size(w, k, s, p)
        n0, g = 1, n - 1
        col = np.empty((c * k * k, g * oh * ow))
        K.im2col(x, n0, k, k, s, p, oh, ow, col)
        np.testing.assert_array_equal(col, im2col(x[n0:], k, k, s, p))
        gcol = rng.standard_normal(col.shape)
        gx = np.full(x.shape, np.nan)
        K.col2im(gcol, n0, k, k, s, p, oh, ow, gx)
        np.testing.assert_allclose(gx[n0:], col2im(gcol, (g, c, h, w), k, k, s, p), rtol=1e-13)
        assert np.isnan(gx[:n0]).all()          # only the chunk's images are written


@pytest.mark.parametrize("n,c,h,w,k,s,p", [(3, 5, 4, 4, 3, 1, 1), (2, 3, 2, 2, 5, 1, 2),
                                           (3, 2, 8, 8, 3, 1, 1), (2, 3, 7, 5, 3, 2, 1),
                                           (2, 2, 6, 6, 2, 3, 0)])
def test_small_map_kernels_match_im2col_and_col2im_exactly(n, c, h, w, k, s, p):
    """im2col_small / col2im_small against im2col / col2im on the same chunk: the same
    columns, and the same sums in the same order (bitwise equal)."""
    from kernels.cpu import conv as K
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    oh, ow = K._out_size(h, k, s, p), K._out_size(w, k, s, p)
    n0, g = 1, n - 1
    taps = K.small_map_taps(h, w, k, k, s, p)
    col, small = (np.full((c * k * k, g * oh * ow), np.nan, np.float32) for _ in range(2))
    K.im2col(x, n0, k, k, s, p, oh, ow, col)
    K.im2col_small(x, n0, p, w + 2 * p, taps, small)
    np.testing.assert_array_equal(small, col)
    gcol = rng.standard_normal(col.shape).astype(np.float32)
    gx, gx_small = (np.full(x.shape, np.nan, np.float32) for _ in range(2))
    K.col2im(gcol, n0, k, k, s, p, oh, ow, gx)
    K.col2im_small(gcol, n0, p, w + 2 * p, taps, gx_small)
    np.testing.assert_array_equal(gx_small, gx)
    assert np.isnan(gx_small[:n0]).all()


# ---------------------------------------------------------------------- pooling
pool_cases = st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 13), st.integers(1, 13),
                       st.integers(1, 5), st.integers(1, 3), st.integers(0, 2), st.booleans())


@FEW
@given(pool_cases, st.sampled_from([np.float32, np.float64]), st.booleans(),
       st.integers(0, 2**31 - 1))
def test_max_pool_kernels_match_numpy(case, dtype, ties, seed):
    n, c, h, w, k, s, p, ceil = case
    if p >= k or k > h + 2 * p or k > w + 2 * p or s > k:
        return
    rng = np.random.default_rng(seed)
    if ties:   # few distinct values: many windows hold several maxima
        x = rng.integers(-2, 3, (n, c, h, w)).astype(dtype)
    else:
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
    ours, ref = run_both(lambda x: L.max_pool2d(x, k, s, p, ceil), [x], gy_view=ties)
    np.testing.assert_array_equal(ours[0], ref[0])
    assert_close(ours[1:], ref[1:], dtype)
    winners = []
    for flag in (True, False):
        with kernels(flag):
            f = MaxPool2dFunction(k, s, p, ceil)
            f.forward(x)
            winners.append(f.winner)
    np.testing.assert_array_equal(winners[0], winners[1])


@FEW
@given(pool_cases, st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31 - 1))
def test_avg_pool_kernels_match_numpy(case, dtype, seed):
    n, c, h, w, k, s, p, ceil = case
    if p >= k or k > h + 2 * p or k > w + 2 * p or s > k:
        return
    x = np.random.default_rng(seed).standard_normal((n, c, h, w)).astype(dtype)
    ours, ref = run_both(lambda x: L.avg_pool2d(x, k, s, p, ceil), [x], gy_view=bool(seed % 2))
    assert_close(ours, ref, dtype)


@pytest.mark.parametrize("as_product", [True, False])
@pytest.mark.parametrize("shape,k,s,p", [((2, 9, 14, 14), 5, 3, 0), ((3, 4, 7, 7), 7, 1, 0),
                                         ((2, 3, 9, 11), 3, 2, 1), ((1, 2, 5, 5), 3, 3, 2)])
def test_avg_pool_as_one_product_matches_numpy(monkeypatch, shape, k, s, p, as_product):
    """The matrix path (GoogLeNet's auxiliary heads and pool5) and the window-by-window
    kernels, each against the NumPy path, forward and backward (gy a strided view too)."""
    from kernels.cpu import pool as P
    monkeypatch.setattr(P, "MATRIX_ENTRIES", 1 << 12 if as_product else 0)
    x = np.random.default_rng(5).standard_normal(shape).astype(np.float32)
    for view in (False, True):
        ours, ref = run_both(lambda x: L.avg_pool2d(x, k, s, p), [x], gy_view=view)
        assert_close(ours, ref, np.float32)
    h, w = shape[2:]
    from layers import caffe
    oh, ow = (caffe.pooled_size(n, k, s, p, True) for n in (h, w))
    dh, dw = (caffe.avg_pool_divisors(n, o, k, s, p) for n, o in ((h, oh), (w, ow)))
    m = P.avg_pool_matrix(h, w, k, s, p, dh, dw, np.float64)
    # each row sums to the share of its window inside the map
    inside = [[(min(h, yy * s - p + k) - max(0, yy * s - p)) * (min(w, xx * s - p + k) - max(0, xx * s - p))
               / (dh[yy] * dw[xx]) for xx in range(ow)] for yy in range(oh)]
    np.testing.assert_allclose(m.sum(axis=1), np.ravel(inside), rtol=1e-12)


@pytest.mark.parametrize("shape,s,p", [((2, 3, 112, 112), 2, 0), ((2, 5, 14, 14), 1, 1),
                                       ((3, 4, 7, 7), 1, 1), ((2, 3, 14, 14), 2, 0)])
def test_max_pool_kernels_on_googlenet_shapes(shape, s, p):
    x = np.random.default_rng(3).standard_normal(shape).astype(np.float32)
    ours, ref = run_both(lambda x: L.max_pool2d(x, 3, s, p), [x])
    np.testing.assert_array_equal(ours[0], ref[0])
    assert_close(ours[1:], ref[1:], np.float32)


@pytest.mark.parametrize("shape,s,p", [((2, 5, 14, 14), 1, 1), ((3, 4, 7, 7), 1, 1),
                                       ((2, 3, 2, 3), 1, 1), ((1, 600, 9, 9), 1, 1),
                                       ((2, 3, 112, 112), 2, 0), ((1, 3, 6, 14), 2, 0),
                                       ((2, 5, 2, 2), 2, 0)])
@pytest.mark.parametrize("ties", [False, True])
def test_max_pool_flat_kernels_equal_the_plane_kernels(shape, s, p, ties):
    """The whole-plane kernels (3x3/1 pad 1, 3x3/2 on even sides) against the plane-by-plane
    kernel: the same maxima and winners, and for 3x3/1 the same gradient bit for bit (the
    gather adds in the scatter's order). (1, 600, 9, 9) spans several blocks."""
    from kernels.cpu import pool as P
    rng = np.random.default_rng(5)
    x = (rng.integers(-2, 3, shape) if ties else rng.standard_normal(shape)).astype(np.float32)
    oh, ow = -(-(shape[2] + 2 * p - 3) // s) + 1, -(-(shape[3] + 2 * p - 3) // s) + 1
    assert P._flat_kind(shape, 3, s, p, oh, ow) is not None
    y, win = (np.empty(shape[:2] + (oh, ow), t) for t in (np.float32, np.uint8))
    P.max_pool_forward(x, 3, s, p, y, win)
    y2, win2 = P.max_pool2d(x, 3, s, p, oh, ow)
    np.testing.assert_array_equal(y2, y)
    np.testing.assert_array_equal(win2, win)
    gy = rng.standard_normal(y.shape).astype(np.float32)
    gx = np.empty(shape, np.float32)
    P.max_pool_backward(gy, win, 3, s, p, gx)
    np.testing.assert_array_equal(P.max_pool2d_backward(gy, win2, 3, s, p, shape), gx)
    # a strided view of the input takes the same answers
    wide = np.zeros(shape[:3] + (shape[3] + 3,), np.float32)
    wide[..., 1:1 + shape[3]] = x
    y3, win3 = P.max_pool2d(wide[..., 1:1 + shape[3]], 3, s, p, oh, ow)
    np.testing.assert_array_equal(y3, y)
    np.testing.assert_array_equal(win3, win)


@pytest.mark.parametrize("s,p", [(1, 1), (2, 0)])
def test_max_pool_flat_kernels_pick_a_tap_inside_when_all_are_minus_inf(s, p):
    """Windows whose taps inside the input are all -inf: the output is -inf as on the plain
    path, the winner is a tap inside the plane (the documented difference: the plain path
    may name a padding tap, whose gradient is dropped), so no gradient is lost."""
    from kernels.cpu import pool as P
    x = np.full((2, 3, 6, 6), -np.inf, np.float32)
    x[1, 2] = np.random.default_rng(0).standard_normal((6, 6))
    oh = -(-(6 + 2 * p - 3) // s) + 1
    y, win = P.max_pool2d(x, 3, s, p, oh, oh)
    with kernels(False):
        np.testing.assert_array_equal(y, L.max_pool2d(x, 3, s, p).data)
    rows = np.arange(oh)[:, None] * s - p + win // 3
    cols = np.arange(oh)[None, :] * s - p + win % 3
    assert ((rows >= 0) & (rows < 6) & (cols >= 0) & (cols < 6)).all()
    gy = np.ones(y.shape, np.float32)
    gx = P.max_pool2d_backward(gy, win, 3, s, p, x.shape)
    np.testing.assert_array_equal(gx.sum(axis=(2, 3)), gy.sum(axis=(2, 3)))


# -------------------------------------------------------------------------- LRN
@FEW
@given(st.integers(1, 3), st.integers(1, 12), st.integers(1, 300), st.sampled_from([1, 3, 5, 7]),
       st.sampled_from([(1e-4, 0.75, 1.0), (0.7, 0.75, 1.5), (0.5, 0.6, 2.0)]),
       st.sampled_from([np.float32, np.float64]), st.integers(0, 2**31 - 1))
def test_lrn_kernels_match_numpy(n, c, hw, size, params, dtype, seed):
    alpha, beta, k = params
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((n, c, 1, hw)) * 3).astype(dtype)
    ours, ref = run_both(lambda x: L.lrn(x, size, alpha, beta, k), [x], gy_view=bool(seed % 2))
    assert_close(ours, ref, dtype)


def test_lrn_kernels_on_googlenet_shape():
    x = np.random.default_rng(4).standard_normal((2, 64, 56, 56)).astype(np.float32) * 10
    ours, ref = run_both(lambda x: L.lrn(x), [x])
    assert_close(ours, ref, np.float32)


# ------------------------------------------------------------- pool and buffers
def test_parallel_run_keeps_run_order_and_covers_every_item():
    items = list(range(23))
    out = parallel.run(lambda run: list(run), items)
    assert [i for run in out for i in run] == items
    assert len(out) == min(len(items), 2 * parallel.threads())
    assert parallel.chunks(7, 3) == [(0, 3), (3, 3), (6, 1)]


def test_parallel_run_reraises_a_runs_exception():
    def body(run):
        if 17 in run:
            raise ValueError("run with 17")
        return run
    with pytest.raises(ValueError, match="run with 17"):
        parallel.run(body, list(range(23)))
    assert sum(parallel.run(lambda run: len(run), list(range(9)))) == 9   # still usable


def test_parallel_run_called_inside_a_run_runs_there_without_deadlock():
    def body(run):
        return [sum(parallel.run(lambda inner: len(inner), list(range(5))))] * len(run)
    assert parallel.run(body, list(range(6))) == [[5] * len(r) for r in
                                                  parallel.run(lambda r: r, list(range(6)))]


@pytest.mark.parametrize("spin_seconds", [0.0, 500e-6])
def test_handoff_team_runs_each_function_on_its_helper_and_waits(monkeypatch, spin_seconds):
    """Spinning or sleeping, every call's functions have run (on other threads) when join
    returns, however long they take; a raised exception comes back from join; the team
    stays usable."""
    import threading
    import time

    from kernels.cpu import handoff
    monkeypatch.setattr(handoff, "SPIN_SECONDS", spin_seconds)
    team = handoff.Team(name="test-team")
    assert (team.spins > 0) == (spin_seconds > 0)
    me = threading.get_ident()
    for call in range(60):
        seen = []

        def job(i, delay=(call % 3) * 1e-3 * (call % 7 == 0)):
            time.sleep(delay)
            seen.append((i, threading.get_ident() != me))
        team.start([functools.partial(job, i) for i in range(1 + call % 3)])
        assert team.join() is None
        assert sorted(seen) == [(i, True) for i in range(1 + call % 3)]
    team.start([lambda: 1 / 0, lambda: None])
    assert isinstance(team.join(), ZeroDivisionError)
    out = []
    team.start([lambda: out.append(1)])
    assert team.join() is None and out == [1]


def test_handoff_spin_sees_another_threads_store():
    import threading

    from kernels.cpu import handoff
    flags = np.zeros(2, dtype=np.int64)
    assert not handoff.spin_while(flags, 1, 0, 1000)          # nothing changes: budget runs out
    threading.Timer(0.01, lambda: flags.__setitem__(1, 7)).start()
    assert handoff.spin_while(flags, 1, 0, handoff._spins_for(10.0))   # sees the other thread's store
    posted = np.array([7, 0], dtype=np.int64)
    assert not handoff.store_then_spin(flags, 0, 5, posted, 7, 100) and flags[0] == 5
    assert handoff.store_then_spin(flags, 0, 6, posted, 3, 100) and flags[0] == 6


def test_handoff_spin_setting_is_checked():
    code = "import kernels.cpu.handoff"
    env = dict(os.environ, GOOGLENET_SPIN_US="fast")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         cwd=ROOT)
    assert res.returncode != 0 and "GOOGLENET_SPIN_US must be a number of microseconds" in res.stderr


def test_pipeline_queues_per_image_calls_and_keeps_their_order(monkeypatch):
    """Inside parallel.pipeline(), image calls are queued and each thread runs its images
    through them in order; a call splitting the images otherwise, or one that is not an
    image call, runs the queue first; a queued body's exception comes out at the end."""
    monkeypatch.setattr(parallel, "THREADS", 2)
    n = 8
    a, b, c = np.zeros(n), np.zeros(n), np.zeros(n)
    log = []

    def fill(chunks):                          # a convolution-like call on (n0, g) chunks
        for n0, g in chunks:
            a[n0:n0 + g] = np.arange(n0, n0 + g) + 1
        log.append("a")

    with parallel.pipeline():
        parallel.run(fill, parallel.chunks(n, 4), groups=2, images=True)
        parallel.over_images(n, lambda s: b.__setitem__(s, 2 * a[s]), queue=True)
        assert log == [] and not b.any()          # queued, not run
        # chunks of 3 give the threads images 0-2 and 3-7: the queue runs first
        parallel.run(lambda chunks: [c.__setitem__(slice(n0, n0 + g), b[n0:n0 + g] + 1)
                                     for n0, g in chunks], parallel.chunks(n, 3), groups=2,
                     images=True)
        assert log == ["a", "a"] and (b == 2 * (np.arange(n) + 1)).all()
        total = parallel.run(lambda run: sum(run), list(range(n)), groups=2)  # not queued
        assert sum(total) == sum(range(n)) and (c == b + 1).all()
        with parallel.pipeline():              # nested: the same block
            parallel.over_images(n, lambda s: a.__setitem__(s, 0), queue=True)
        assert a.all()
    assert not a.any()

    def fail(s):
        if s.start == 0:
            raise ValueError("image 0")
    with pytest.raises(ValueError, match="image 0"):
        with parallel.pipeline():
            parallel.over_images(n, fail, queue=True)
            parallel.over_images(n, lambda s: b.__setitem__(s, -1), queue=True)
    assert (b[n // 2:] == -1).all()            # the other thread finished its images
    assert sum(parallel.run(lambda run: len(run), list(range(9)))) == 9   # still usable


def test_pipelined_ops_give_the_same_bits_and_plain_ops_see_their_results(monkeypatch):
    """layers.dispatch.pipelined(): a convolution, a pooling and a concatenation queued, then
    an op on its plain path reading their output, equal op by op to the bit."""
    monkeypatch.setattr(parallel, "THREADS", 2)
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 6, 12, 12)).astype(np.float32)
    w = rng.standard_normal((8, 6, 3, 3)).astype(np.float32)
    w1 = rng.standard_normal((4, 6, 1, 1)).astype(np.float32)

    def block():
        xt = Tensor(x)
        y = L.concat([L.conv2d(xt, w, pad=1, relu=True), L.conv2d(xt, w1),
                      L.max_pool2d(xt, 3, 1, 1)])
        return y, L.max_pool2d(y, 2, 2, impl="plain")

    expected = [t.numpy() for t in block()]
    with dispatch.pipelined():
        got = block()
    for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g.numpy())


def _no_pipelines(monkeypatch):
    """Every op as its own pool call: no pipelined Inception forward, no queued backward."""
    from models import googlenet
    import contextlib
    from engine import tensor
    monkeypatch.setattr(googlenet, "pipelined", contextlib.nullcontext)
    monkeypatch.setattr(tensor, "_schedule", tensor.BackwardSchedule())


def test_googlenet_pipelined_modules_give_the_same_bits(monkeypatch):
    """The pipelines (Inception forwards, the backward pass) change nothing: logits and
    gradients to the bit, batches that split evenly and unevenly between the threads."""
    from models import googlenet
    import engine as E
    monkeypatch.setattr(parallel, "THREADS", 2)
    for n in (1, 3, 4, 5):
        x = np.random.default_rng(n).standard_normal((n, 3, 64, 64)).astype(np.float32)
        runs = []
        for off in (False, True):
            if off:
                _no_pipelines(monkeypatch)
            m = googlenet.GoogLeNet(num_classes=5, seed=3)
            E.manual_seed(7)
            outs = m(x)
            loss, _ = googlenet.training_loss(outs, np.arange(n) % 5)
            loss.backward()
            runs.append([o.numpy() for o in outs] + [p.grad for p in m.parameters()])
        for a, b in zip(*runs):
            np.testing.assert_array_equal(a, b)


def test_queued_backward_is_settled_before_plain_ops_and_gradient_hooks(monkeypatch):
    """In a queued backward pass, a plain op's backward (here a product with another
    tensor, which reads the convolution's input gradient) and a gradient hook (which reads
    a weight's) see the finished values, the same as without queuing."""
    from engine import tensor
    monkeypatch.setattr(parallel, "THREADS", 2)
    rng = np.random.default_rng(12)
    x = rng.standard_normal((4, 3, 10, 10)).astype(np.float32)
    s = rng.standard_normal((4, 3, 10, 10)).astype(np.float32)
    w = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)

    def run(hook):
        st, wt = Tensor(s, requires_grad=True), Tensor(w, requires_grad=True)
        seen = []
        if hook:
            wt.grad_hook = lambda t: seen.append(t.grad.copy())
        y = L.max_pool2d(L.conv2d(Tensor(x) * st, wt, pad=1, relu=True), 3, 2)
        (y * y).sum().backward()
        return [st.grad, wt.grad] + seen

    queued = [run(False), run(True)]
    monkeypatch.setattr(tensor, "_schedule", tensor.BackwardSchedule())
    for got, expected in zip(queued, [run(False), run(True)]):
        for a, b in zip(got, expected, strict=True):
            np.testing.assert_array_equal(a, b)


def test_queued_call_results_and_after_queue(monkeypatch):
    monkeypatch.setattr(parallel, "THREADS", 2)
    done = []
    with parallel.pipeline():
        res = parallel.run(lambda run: sum(run), list(range(8)), groups=2, images=True)
        assert parallel.is_queued(res) and list(res) == [None, None]
        parallel.after_queue(lambda: done.append(list(res)))
        assert done == []
    assert done == [[0 + 1 + 2 + 3, 4 + 5 + 6 + 7]] and not parallel.is_queued(res)


def test_shared_after_queue_runs_every_share_once_after_the_queue(monkeypatch):
    monkeypatch.setattr(parallel, "THREADS", 2)
    done, order = [], []
    with parallel.pipeline():
        res = parallel.run(lambda run: sum(run), list(range(8)), groups=2, images=True)
        parallel.after_queue(lambda t: done.append((t, list(res))), shared=True)
        parallel.after_queue(lambda: order.append(len(done)))     # after the shared ones
        assert done == []
    assert sorted(done) == [(0, [6, 22]), (1, [6, 22])] and order == [2]
    assert [parallel.share(10, t) for t in range(2)] == [(0, 5), (5, 10)]


def test_results_are_deterministic():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 8, 14, 14)).astype(np.float32)
    w = rng.standard_normal((16, 8, 3, 3)).astype(np.float32)
    grads = []
    for _ in range(2):
        xt, wt = Tensor(x, requires_grad=True), Tensor(w, requires_grad=True)
        y = L.max_pool2d(L.lrn(L.conv2d(xt, wt, pad=1, relu=True)), 3, 2)
        y.backward(np.ones(y.shape, np.float32))
        grads.append((xt.grad, wt.grad))
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


def _gemm_cases(dtype):
    """(name, a, b, out) in every layout kernels.cpu.gemm hands to the BLAS, and some it
    hands to NumPy: transposes, row and column slices, stacks a fixed distance apart."""
    rng = np.random.default_rng(11)

    def r(*shape):
        return rng.standard_normal(shape).astype(dtype)

    def empty(*shape):
        return np.full(shape, np.nan, dtype)          # out is never read
    padded = r(4, 7 * 6 + 5)[:, :42].reshape(4, 7, 6)   # matrices 47 elements apart
    yield "plain", r(5, 7), r(7, 3), empty(5, 3)
    yield "a transposed", r(7, 5).T, r(7, 3), empty(5, 3)
    yield "b transposed", r(5, 7), r(3, 7).T, empty(5, 3)
    yield "row and column slices", r(9, 12)[2:7, 1:8], r(8, 11)[:7, 4:7], empty(5, 6)[:, 1:4]
    yield "one row", r(1, 7), r(7, 3), empty(1, 3)
    yield "one column", r(5, 7), r(7, 1), empty(5, 1)
    yield "inner size one", r(5, 1), r(1, 3), empty(5, 3)
    yield "stack", r(4, 5, 7), r(4, 7, 6), empty(4, 5, 6)
    yield "padded stack transposed", r(4, 5, 6), padded.transpose(0, 2, 1), empty(4, 5, 7)
    yield "stack into padded", r(4, 7, 5).transpose(0, 2, 1), r(4, 7, 6), \
        empty(4, 5 * 6 + 3)[:, :30].reshape(4, 5, 6)
    yield "strided both ways (NumPy)", r(10, 14)[::2, ::2], r(7, 3), empty(5, 3)
    yield "stack broadcast (NumPy)", r(5, 7), r(4, 7, 6), empty(4, 5, 6)


@pytest.mark.parametrize("library", ["numpy", "mkl"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_matches_a_float64_product_in_every_layout(monkeypatch, library, dtype):
    from kernels.cpu import gemm
    monkeypatch.setattr(gemm, "_choice", gemm._choice)
    try:
        gemm.use(library)
    except RuntimeError as e:
        pytest.skip(str(e))
    assert gemm.library() == library
    for name, a, b, out in _gemm_cases(dtype):
        want = np.matmul(a.astype(np.float64), b.astype(np.float64))
        got = gemm.matmul(a, b, out=out)
        assert got is out, name
        tol = 1e-5 if dtype == np.float32 else 1e-12
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol, err_msg=name)
        start = np.arange(out.size, dtype=dtype).reshape(out.shape) / out.size
        out[...] = start                                # accumulate: out += a @ b
        assert gemm.matmul(a, b, out, accumulate=True) is out, name
        np.testing.assert_allclose(out, start + want, rtol=tol, atol=tol, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gemm_hands_every_blas_layout_to_mkl_from_compiled_code(monkeypatch, dtype):
    """The compiled call (gemm._product) takes every layout BLAS can name, so that no
    product of a step silently drops to NumPy's, and declines the others."""
    from kernels.cpu import gemm
    monkeypatch.setattr(gemm, "_choice", gemm._choice)
    try:
        gemm.use("mkl")
    except RuntimeError as e:
        pytest.skip(str(e))
    for name, a, b, out in _gemm_cases(dtype):
        if not a.ndim == b.ndim == out.ndim:
            continue                                  # matmul gives these to NumPy itself
        done = gemm._product(*gemm._mkl.fns[out.dtype], a, b, out, gemm.LARGE_OUT)
        assert done == ("(NumPy)" not in name), name
        if done:
            want = np.matmul(a.astype(np.float64), b.astype(np.float64))
            tol = 1e-5 if dtype == np.float32 else 1e-12
            np.testing.assert_allclose(out, want, rtol=tol, atol=tol, err_msg=name)
    a = np.ones((4, 4), dtype)
    assert not gemm._product(*gemm._mkl.fns[a.dtype], a, a, a, gemm.LARGE_OUT)  # overlap
    assert not gemm._product(*gemm._mkl.fns[a.dtype], a, a, np.empty_like(a), 16)  # too large


def test_gemm_products_over_the_size_limit_and_overlapping_ones_are_still_right(monkeypatch):
    from kernels.cpu import gemm
    rng = np.random.default_rng(12)
    a = rng.standard_normal((6, 6)).astype(np.float32)
    b = rng.standard_normal((6, 6)).astype(np.float32)
    want = a.astype(np.float64) @ b
    monkeypatch.setattr(gemm, "LARGE_OUT", 16)
    np.testing.assert_allclose(gemm.matmul(a, b, np.empty((6, 6), np.float32)), want,
                               rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(gemm, "LARGE_OUT", 1 << 30)
    np.testing.assert_allclose(gemm.matmul(a, b, out=a), want, rtol=1e-5, atol=1e-5)


def test_gemm_choice_errors_name_the_setting(monkeypatch):
    from kernels.cpu import gemm
    monkeypatch.setattr(gemm, "_choice", "auto")
    monkeypatch.setattr(gemm, "_mkl", None)
    monkeypatch.setattr(gemm, "_candidates", lambda: iter(()))
    with pytest.raises(ValueError, match="GOOGLENET_BLAS must be one of auto, mkl, numpy"):
        gemm.use("openblas")
    with pytest.raises(RuntimeError, match="GOOGLENET_BLAS=mkl, but MKL could not be loaded"):
        gemm.use("mkl")
    assert gemm._choice == "auto" and gemm.library() == "numpy"
    monkeypatch.setattr(gemm, "_choice", "mkl")            # as GOOGLENET_BLAS=mkl sets it
    a = np.ones((2, 2), np.float32)
    for _ in range(2):                                      # not only on the first product
        with pytest.raises(RuntimeError, match="GOOGLENET_BLAS=mkl, but MKL could not be"):
            gemm.matmul(a, a, np.empty((2, 2), np.float32))
    env = dict(os.environ, GOOGLENET_BLAS="fast")
    run = subprocess.run([sys.executable, "-c", "import kernels.cpu.gemm"], env=env,
                         capture_output=True, text=True, cwd=str(ROOT))
    assert run.returncode != 0 and "GOOGLENET_BLAS must be one of" in run.stderr


_TARGET = """
import re, sys
import numpy as np
if sys.argv[1] == "numba-first":        # something else compiles with Numba first
    import numba
    numba.njit(lambda x: x + 1)(1)
import kernels.cpu
import llvmlite.binding as llvm
import numba
from numba.core import config
host = llvm.get_host_cpu_features().flatten().split(",")
print("avx512f" if "+avx512f" in host else "no-avx512f")
print(config.CPU_FEATURES or "default")
def body(x, y):                         # a loop like the kernels', compiled now, not cached
    for i in range(x.size):
        y[i] = np.sqrt(x[i]) * x[i]
f = numba.njit(error_model="numpy")(body)
x = np.ones(4096, np.float32)
f(x, np.empty_like(x))
print("zmm" if re.search(r"\\bzmm", next(iter(f.inspect_asm().values()))) else "no-zmm")
"""


def _numba_target(env_extra: dict, mode: str = "") -> list:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_CPU_FEATURES", "GOOGLENET_WIDE_VECTORS")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", _TARGET, mode or "plain"], env=env,
                         capture_output=True, text=True, cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_kernels_compile_for_512_bit_vectors_on_avx512_cpus():
    """On a CPU with AVX-512, importing the kernels sets Numba's target features so that
    LLVM may use 512-bit vectors (it prefers 256-bit ones on Intel's), and a loop compiled
    afterwards does use zmm registers; elsewhere Numba's default stays."""
    isa, features, asm = _numba_target({})
    if isa == "avx512f":
        assert features.endswith(",-prefer-256-bit") and "+avx512f" in features.split(",")
        assert asm == "zmm"
    else:
        assert features == "default"


def test_wide_vectors_leave_a_users_setting_and_an_earlier_compile_alone():
    assert _numba_target({"GOOGLENET_WIDE_VECTORS": "0"})[1] == "default"
    assert _numba_target({"NUMBA_CPU_FEATURES": "+sse2"})[1] == "+sse2"
    assert _numba_target({}, "numba-first")[1] == "default"


def test_workspace_is_reused_per_slot():
    a = workspace.get("test-slot", (3, 4), np.float32)
    b = workspace.get("test-slot", (2, 5), np.float32)
    assert np.shares_memory(a, b)
    c = workspace.get("test-slot", (100, 100), np.float32)   # grows
    assert c.shape == (100, 100) and workspace.nbytes() >= c.nbytes


def test_dispatch_picks_the_kernel_and_the_switch_forces_plain():
    x = np.random.default_rng(9).standard_normal((2, 3, 9, 9)).astype(np.float32)
    fns = [L.Conv2dFunction(1, 1), L.MaxPool2dFunction(3, 2), L.AvgPool2dFunction(3, 1, 1),
           L.LRNFunction()]
    args = [(x, np.ones((4, 3, 3, 3), np.float32)), (x,), (x,), (x,)]
    for f, a in zip(fns, args):
        f.forward(*a)
        assert f.path == "cpu", type(f).__name__
        with dispatch.use("plain"):
            assert dispatch.mode() == "plain"
            f.forward(*a)
            assert f.path == "plain", type(f).__name__
        assert dispatch.mode() == "auto"


def test_dispatch_per_call_impl_and_its_errors():
    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((3, 2, 3, 3), np.float32)
    for impl, path in (("plain", "plain"), ("im2col", "plain"), ("cpu", "cpu"), ("auto", "cpu")):
        f = L.Conv2dFunction(1, 1, impl=impl)
        f.forward(x, w)
        assert f.path == path
    with dispatch.use("plain"):          # an explicit request wins over the switch
        f = L.Conv2dFunction(1, 1, impl="cpu")
        f.forward(x, w)
        assert f.path == "cpu"
    with pytest.raises(ValueError, match=r"conv2d: impl='cuda' asked for.*NumPy inputs .*stride 1"):
        L.conv2d(x, w, pad=1, impl="cuda")
    with pytest.raises(ValueError, match="impl must be one of"):
        L.max_pool2d(x, 3, 2, impl="fast")
    with pytest.raises(ValueError, match="mode must be 'auto' or 'plain'"):
        with dispatch.use("cpu"):
            pass


# ------------------------------------------------------------------ whole model
def _googlenet_both(dtype):
    from models.googlenet import GoogLeNet, training_loss
    import engine as E
    x = np.random.default_rng(6).standard_normal((3, 3, 64, 64)).astype(dtype)
    labels = np.array([1, 4, 2])
    runs = []
    for flag in (True, False):
        with kernels(flag):
            m = GoogLeNet(num_classes=5, dtype=dtype, seed=3)
            E.manual_seed(7)      # the same dropout masks
            outs = m(x)
            loss, _ = training_loss(outs, labels)
            loss.backward()
            runs.append([o.numpy() for o in outs] + [p.grad for p in m.parameters()])
    rel = [np.linalg.norm((a - b).astype(np.float64)) / np.linalg.norm(b.astype(np.float64))
           for a, b in zip(*runs)]
    return rel[:3], rel[3:]


def test_googlenet_training_step_matches_numpy_path():
    """Logits and every gradient of GoogLeNet at 64x64, kernels on and off. In float64 they
    agree to rounding; in float32 a near-tie in a max pool may go either way (both are valid
    subgradients, as tests/test_googlenet.py explains), so gradients agree to 1e-2."""
    outs, grads = _googlenet_both("float64")
    assert max(outs) < 1e-12 and max(grads) < 1e-10
    outs, grads = _googlenet_both("float32")
    assert max(outs) < 1e-5 and max(grads) < 1e-2 and np.median(grads) < 1e-3


# -------------------------------------------------------------------- the bench
def test_bench_torch_peer_is_the_same_network():
    """bench.train_throughput's PyTorch GoogLeNet, with our weights, gives our logits."""
    torch = pytest.importorskip("torch")
    from bench.train_throughput import format_table, torch_googlenet
    from engine import no_grad
    from models.googlenet import GoogLeNet
    ours = GoogLeNet(num_classes=10, seed=0)
    peer = torch_googlenet(10)
    peer.load_ours(ours.state_dict())
    ours.eval()
    peer.eval()
    x = np.random.default_rng(8).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with no_grad():
        a = ours(x).numpy()
    with torch.no_grad():
        b = peer(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    ours.train()
    peer.train()
    assert len(peer(torch.from_numpy(x))) == 3     # logits and both aux heads
    assert "ratio" in format_table({"device": "cpu", "machine": {"cores": 2, "cpu": "x"},
                                    "settings": {"threads": 2, "openblas_coretype": "-",
                                                 "steps": 1, "rounds": 1, "warmup": 1},
                                    "results": []})


# --------------------------------------------------------------------------- SGD
@pytest.mark.parametrize("nesterov", [False, True])
def test_fused_sgd_matches_the_numpy_formula(nesterov):
    """engine.SGD on NumPy parameters (kernels.cpu.sgd) against the update written out with
    NumPy, three steps (the first creates the momentum buffer), two groups."""
    from engine import SGD
    from engine.module import Parameter
    rng = np.random.default_rng(11)
    shapes = [(7, 3, 3, 3), (7,), (5, 11)]
    params = [Parameter(rng.standard_normal(s).astype(np.float32)) for s in shapes]
    params[1].lr_mult, params[1].decay_mult = 2.0, 0.0
    ref = [p.data.copy() for p in params]
    vel = [None] * 3
    opt = SGD([{"params": params[:2]}, {"params": params[2:], "lr_mult": 0.5}], lr=0.1,
              momentum=0.9, weight_decay=0.01, nesterov=nesterov)
    lr_mult, wd_mult = [1.0, 2.0, 0.5], [1.0, 0.0, 1.0]
    for _ in range(3):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        for p, g in zip(params, grads):
            p.grad = g.copy()
        opt.step()
        for k, g in enumerate(grads):
            d = g + 0.01 * wd_mult[k] * ref[k]
            vel[k] = d.copy() if vel[k] is None else 0.9 * vel[k] + d
            ref[k] = ref[k] - 0.1 * lr_mult[k] * (d + 0.9 * vel[k] if nesterov else vel[k])
    for p, r, v, ov in zip(params, ref, vel, opt.velocity):
        np.testing.assert_allclose(p.data, r, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ov, v, rtol=1e-5, atol=1e-6)


def test_fused_adam_matches_the_numpy_path():
    """engine.Adam on float32 NumPy parameters (kernels.cpu.sgd.adam_update) against the
    same optimiser on the plain NumPy path (float64 copies), four steps, two groups."""
    from engine import Adam
    from engine.module import Parameter
    rng = np.random.default_rng(12)
    shapes = [(7, 3, 3, 3), (7,), (5, 11)]
    data = [rng.standard_normal(s) for s in shapes]
    fused = [Parameter(d.astype(np.float32)) for d in data]
    plain = [Parameter(d.copy()) for d in data]      # float64: not fusable, NumPy path
    for ps in (fused, plain):
        ps[1].lr_mult, ps[1].decay_mult = 2.0, 0.0
    opts = [Adam([{"params": ps[:2]}, {"params": ps[2:], "lr_mult": 0.5}], lr=0.01,
                 weight_decay=0.05) for ps in (fused, plain)]
    for _ in range(4):
        grads = [rng.standard_normal(s) for s in shapes]
        for p, q, g in zip(fused, plain, grads):
            p.grad, q.grad = g.astype(np.float32), g.copy()
        for o in opts:
            o.step()
    for p, q in zip(fused, plain):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-5, atol=1e-6)
    for name in ("m", "v"):
        for a, b in zip(opts[0].buffers[name], opts[1].buffers[name]):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7)


def test_fused_polyak_average_matches_its_definition():
    """engine.PolyakAverage on float32 NumPy weights (kernels.cpu.sgd.average) against
    avg = d avg + (1 - d) w written out in float64, with the warmed-up decay."""
    from engine import Module, Parameter, PolyakAverage
    rng = np.random.default_rng(13)

    class Two(Module):
        def __init__(self):
            super().__init__()
            self.a = Parameter(rng.standard_normal((6, 5)).astype(np.float32))
            self.b = Parameter(rng.standard_normal(7).astype(np.float32))
    model = Two()
    ref = {n: p.data.astype(np.float64) for n, p in model.named_parameters()}
    ema = PolyakAverage(model, 0.9)
    for t in range(1, 5):
        for n, p in model.named_parameters():
            p.data = (p.data + rng.standard_normal(p.shape)).astype(np.float32)
        ema.update(model)
        d = min(0.9, (1 + t) / (10 + t))
        for n, p in model.named_parameters():
            ref[n] = d * ref[n] + (1 - d) * p.data.astype(np.float64)
    for n in ref:
        assert ema.shadow[n].dtype == np.float32
        np.testing.assert_allclose(ema.shadow[n], ref[n], rtol=1e-5, atol=1e-6)


def test_max_pool_outside_a_graph_skips_the_winners_with_the_same_output():
    from engine import no_grad
    x = np.random.default_rng(12).standard_normal((2, 5, 13, 13)).astype(np.float32)
    for s, p in ((1, 1), (2, 0)):
        with no_grad():
            fast = L.max_pool2d(x, 3, s, p).data
        f = MaxPool2dFunction(3, s, p)
        full = f.forward(x)
        assert f.winner is not None
        np.testing.assert_array_equal(fast, full)


def test_bench_workers_run_in_the_users_default_environment():
    """The measured processes lose OPENBLAS_CORETYPE/_L2_SIZE unless --keep-openblas-env;
    the table names the BLAS each framework used."""
    from bench.train_throughput import build_parser, format_table, worker_env
    base = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576", "PATH": "/bin"}
    env = worker_env("ours", build_parser().parse_args([]), base)
    assert "OPENBLAS_CORETYPE" not in env and "OPENBLAS_L2_SIZE" not in env and env["PATH"]
    kept = worker_env("ours", build_parser().parse_args(["--keep-openblas-env"]), base)
    assert kept["OPENBLAS_CORETYPE"] == "Haswell" and kept["OPENBLAS_L2_SIZE"] == "1048576"
    forced = worker_env("ours", build_parser().parse_args(["--openblas-coretype", "Zen"]), base)
    assert forced["OPENBLAS_CORETYPE"] == "Zen" and "OPENBLAS_L2_SIZE" not in forced
    assert worker_env("torch", build_parser().parse_args(["--openblas-coretype", "Zen"]),
                      base).get("OPENBLAS_CORETYPE") is None
    table = format_table({
        "device": "cpu", "machine": {"cores": 2, "cpu": "x"}, "sgemm_gflops": 400.0,
        "sgemm_gflops_runs": [390.0, 410.0], "results": [],
        "settings": {"threads": 2, "openblas_coretype": "-", "steps": 1, "rounds": 1,
                     "warmup": 1, "openblas_env": "removed (user default)"},
        "blas": {"ours": {"blas": [{"internal_api": "openblas", "version": "0.3.31",
                                    "architecture": "SkylakeX", "num_threads": 2}]}}})
    assert "BLAS (ours): openblas 0.3.31 (SkylakeX kernels, 2 threads)" in table
    assert "removed (user default)" in table and "400 GFLOP/s" in table
    # --mode train: no inference figures, the table says so instead of failing
    side = {"train_img_s": 60.0, "infer_img_s": None, "train_peak_rss_mib": 900.0,
            "infer_peak_rss_mib": None, "base_rss_mib": 300.0}
    train_only = format_table({
        "device": "cpu", "machine": {"cores": 2, "cpu": "x"}, "results": [{
            "batch": 32, "ours": side, "torch": dict(side, train_img_s=40.0),
            "ratio": {"train": 1.5, "infer": None, "train_peak_rss": 1.0,
                      "train_step_memory": 1.0, "train_cpu": 1.4, "infer_cpu": None,
                      "train_per_round": [1.5, 1.5], "infer_per_round": [None, None]}}],
        "settings": {"threads": 2, "openblas_coretype": "-", "steps": 1, "rounds": 2,
                     "warmup": 1}})
    assert "train 1.40x; infer    -x" in train_only and "1.50x" in train_only
    # a framework whose steps spread wide is named, and the fastest steps compared
    stalled = format_table({
        "device": "cpu", "machine": {"cores": 2, "cpu": "x"}, "results": [{
            "batch": 32, "ours": dict(side, train_times_s=[1.2, 1.25, 1.3, 2.9]),
            "torch": dict(side, train_img_s=8.0, train_times_s=[2.7, 4.0, 4.4, 6.6]),
            "ratio": {"train": 3.2, "infer": None, "train_peak_rss": 1.0,
                      "train_step_memory": 1.0, "train_fastest": 2.7 / 1.2}}],
        "settings": {"threads": 2, "openblas_coretype": "-", "steps": 3, "rounds": 1,
                     "warmup": 1}})
    assert "fastest   train 2.25x" in stalled
    assert "torch's training steps ranged 2.70-6.60 s" in stalled
    assert "ours's training" not in stalled          # one slow step: the median holds
    one = worker_env("ours", build_parser().parse_args(["--threads", "1"]), base)
    assert one["GOOGLENET_CPU_THREADS"] == "1" and one["OPENBLAS_NUM_THREADS"] == "1"


def test_dispatch_falls_back_to_plain_where_a_kernel_declines():
    class Declining(L.MaxPool2dFunction):
        def cpu_supports(self, x):
            return x.shape[1] != 3
    x = np.random.default_rng(13).standard_normal((2, 3, 7, 7)).astype(np.float32)
    f = Declining(3, 2)
    f.forward(x)
    assert f.path == "plain"
    f.forward(x[:, :2])
    assert f.path == "cpu"
    with pytest.raises(ValueError, match="impl='cpu' asked for"):
        Declining(3, 2, impl="cpu").forward(x)


# ------------------------------------------------- main-thread work on the pool
@pytest.fixture
def two_threads(monkeypatch):
    """The pool's helpers in use even on a one-core machine, and a count of their calls."""
    from kernels.cpu import arrays
    monkeypatch.setattr(parallel, "THREADS", max(2, parallel.threads()))
    calls = []
    real = parallel.run
    monkeypatch.setattr(parallel, "run", lambda *a, **k: calls.append(1) or real(*a, **k))
    return arrays, calls


def test_pooled_adds_copies_and_concatenation_are_numpys_bitwise(two_threads):
    arrays, calls = two_threads
    rng = np.random.default_rng(3)
    a, b = (rng.standard_normal((5, 64, 15, 15)).astype(np.float32) for _ in range(2))
    wide = rng.standard_normal((5, 70, 15, 15)).astype(np.float32)
    view = wide[:, 3:67]                              # strided, as concat's backward gives
    np.testing.assert_array_equal(arrays.add(a, view), a + view)
    np.testing.assert_array_equal(arrays.copy(view), view)
    assert arrays.copy(view).flags.c_contiguous
    into = a.copy()
    arrays.add_into(into, b)
    np.testing.assert_array_equal(into, a + b)
    parts = [a, view, b[:, :7]]
    np.testing.assert_array_equal(arrays.concat(parts, 1), np.concatenate(parts, axis=1))
    partials = [rng.standard_normal((300, 250)).astype(np.float32) * 10.0 ** i
                for i in range(4)]                    # magnitudes apart: order shows
    expected = ((partials[0] + partials[1]) + partials[2]) + partials[3]
    into = np.empty_like(expected)
    for t in range(parallel.threads()):
        arrays.sum_rows(partials, into, t)                # each share its rows
    np.testing.assert_array_equal(into, expected)
    arrays.sum_into(partials)
    np.testing.assert_array_equal(partials[0], expected)
    assert len(calls) == 6                            # each one went to the pool
    small = np.ones((2, 3), np.float32)               # below MIN_SIZE: NumPy's own call
    np.testing.assert_array_equal(arrays.add(small, small), small + small)
    assert len(calls) == 6


def test_pooled_matmul_matches_numpy(two_threads):
    arrays, calls = two_threads
    rng = np.random.default_rng(4)
    w = rng.standard_normal((300, 700))
    x = rng.standard_normal((5, 700))
    np.testing.assert_allclose(arrays.matmul(w, x.T), w @ x.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(arrays.matmul(w.T, x[:, :300].T), w.T @ x[:, :300].T,
                               rtol=1e-12, atol=1e-12)
    wide = rng.standard_normal((9, 5003))              # more columns than rows: split by those
    np.testing.assert_allclose(arrays.matmul(w[:36, :9], wide), w[:36, :9] @ wide,
                               rtol=1e-12, atol=1e-12)
    assert len(calls) == 3
    # several products, split by rows and by columns, in one pool call
    by_rows, by_columns = arrays.matmuls([(w, x.T), (w[:36, :9], wide)])
    np.testing.assert_allclose(by_rows, w @ x.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(by_columns, w[:36, :9] @ wide, rtol=1e-12, atol=1e-12)
    assert len(calls) == 4


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_and_concat_cpu_paths_match_the_plain_path(two_threads, dtype):
    _, calls = two_threads
    rng = np.random.default_rng(6)
    x = rng.standard_normal((6, 2048)).astype(dtype)
    w = (rng.standard_normal((257, 2048)) * 0.02).astype(dtype)
    b = rng.standard_normal(257).astype(dtype)
    ours, ref = run_both(lambda x, w, b: L.linear(x, w, b), [x, w, b])
    assert_close(ours, ref, dtype)
    assert len(calls) == 2                # on the pool: forward, then gx and gw in one call
    xs = [rng.standard_normal((4, c, 20, 20)).astype(dtype) for c in (40, 64, 24)]
    ours, ref = run_both(lambda *ts: L.concat(list(ts)), xs, gy_view=True)
    for u, v in zip(ours, ref):
        np.testing.assert_array_equal(u, v)


def toom_cook_g(m, r, points):
    """G ((m+r-1), r) of F(m, r) from its finite interpolation points and infinity:
    G[k, j] = p_k^j / prod_{l != k} (p_k - p_l), the last row (0, ..., 0, 1)."""
    rows = [[p ** j / np.prod([p - q for q in points if q != p]) for j in range(r)]
            for p in points]
    return np.array(rows + [[0] * (r - 1) + [1]], dtype=np.float64)


WINOGRAD_G = {(2, 3): np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]]),
              (4, 3): np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6],
                                [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                                [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
              (4, 5): toom_cook_g(4, 5, [0, 1, -1, 2, -2, 0.5, -0.5])}


@pytest.mark.parametrize("mr", [(2, 3), (4, 3), (4, 5)])
def test_winograd_filter_transform_is_g_g_gt(mr):
    from kernels.cpu import winograd
    m, r = mr
    G = WINOGRAD_G[mr]
    a = m + r - 1
    w = np.random.default_rng(7).standard_normal((5, 3, r, r))
    flipped = w[:, :, ::-1, ::-1]                     # a non-contiguous view works too
    for filters in (w, flipped):
        u = winograd.filter_transform(filters, m)
        assert u.shape == (a * a, 5, 3)
        for o in range(5):
            for c in range(3):
                ref = G @ filters[o, c] @ G.T
                np.testing.assert_allclose(u[:, o, c].reshape(a, a), ref,
                                           rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("mr", [(2, 3), (4, 3), (4, 5)])
def test_winograd_transforms_compute_the_correlation_of_one_tile(mr):
    """Input transform, elementwise product and output transform of F(m x m, r x r) on one
    tile give the m x m correlation, from the definition."""
    from kernels.cpu import winograd
    m, r = mr
    a = m + r - 1
    rng = np.random.default_rng(3)
    d = rng.standard_normal((1, 1, m, m))        # one tile: its a x a is d padded by r // 2
    g = rng.standard_normal((1, 1, r, r))
    k = winograd.constants(np.float64, a * a)
    into, out_of = winograd.TRANSFORMS[a * a]
    v = np.empty((a * a, 1, 1))
    into(d.reshape(1, 1, m * m), 0, m, m, k, v)
    prod = winograd.filter_transform(g, m) * v
    y = np.empty((1, 1, m * m))
    out_of(prod, np.zeros(1), False, False, k, 0, m, m, y)
    padded = np.pad(d[0, 0], r // 2)
    ref = [[(padded[i:i + r, j:j + r] * g[0, 0]).sum() for j in range(m)] for i in range(m)]
    np.testing.assert_allclose(y.reshape(m, m), ref, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hw", [(1, 1), (2, 5), (4, 4), (7, 7), (13, 9), (14, 14), (15, 13),
                                (17, 17)])
def test_winograd_transforms_give_the_first_versions_bits(dtype, hw):
    """Each transform that loops over a whole plane's tiles (``winograd``) against its first
    version, tile row by tile row (``lab``): the same sums in the same order, so the same
    bits, on odd, non-square and one-pixel maps, with partial tiles at the edges, several
    images, an offset into the batch and strided inputs."""
    from kernels.cpu import lab, winograd
    h, w = hw
    rng = np.random.default_rng(h * 31 + w)
    full = rng.standard_normal((4, 5, h * w)).astype(dtype)
    x3 = full[:, ::2]                               # (4, 3, H*W), a strided view
    bias = rng.standard_normal(3).astype(dtype)
    for count, (into_v1, out_of_v1, grad_v1) in lab.TRANSFORMS_V1.items():
        into_v1 = into_v1 or winograd.TRANSFORMS[count][0]     # F(4x4, 5x5)'s: still the first
        k = winograd.constants(dtype, count)
        nt = 2 * winograd.tiles(h, w, 2 if count == 16 else 4)      # images 1 and 2
        into, out_of = winograd.TRANSFORMS[count]
        results = []
        for fn in (into_v1, into):
            v = np.full((count, 3, nt), np.nan, dtype)
            fn(x3, 1, h, w, k, v)
            results.append(v)
        np.testing.assert_array_equal(results[0], results[1])
        m = rng.standard_normal((count, 3, nt)).astype(dtype)
        for has_bias, relu in ((True, True), (False, False), (True, False)):
            ys = []
            for fn in (out_of_v1, out_of):
                y = np.full((4, 3, h * w), np.nan, dtype)
                fn(m, bias, has_bias, relu, k, 1, h, w, y)
                ys.append(y)
            np.testing.assert_array_equal(ys[0][1:3], ys[1][1:3])
            assert np.isnan(ys[1][0]).all() and np.isnan(ys[1][3]).all()   # only its images
        if grad_v1 is not None:
            zs = []
            for fn in (grad_v1, winograd.GRADIENT_TRANSFORMS[count]):
                z = np.full((count, 3, nt), np.nan, dtype)
                fn(x3, 1, h, w, k, z)
                zs.append(z)
            np.testing.assert_array_equal(zs[0], zs[1])


@pytest.mark.parametrize("r", [3, 5])
def test_winograd_weight_gradient_of_one_tile_is_the_correlations(r):
    """The gradient transform, the products summed over the tile and G^T . G of F(4x4, r x r)
    give the weight gradient of one 4x4 map from the definition:
    gW[i, j] = sum over p, q of gY[p, q] * padded x[p + i, q + j]."""
    from kernels.cpu import conv, winograd
    rng = np.random.default_rng(11)
    c, o = 3, 2
    x = rng.standard_normal((1, c, 16))
    gy = rng.standard_normal((1, o, 16))
    total = np.empty(((3 + r) ** 2, o, c))
    conv._winograd_weights_chunk(x, 0, gy, 4, 4, 1, total)
    gw = winograd.filter_gradient(total)
    padded = np.pad(x.reshape(c, 4, 4), ((0, 0), (r // 2, r // 2), (r // 2, r // 2)))
    e = gy.reshape(o, 4, 4)
    ref = np.array([[[[(e[oi] * padded[ci, i:i + 4, j:j + 4]).sum() for j in range(r)]
                      for i in range(r)] for ci in range(c)] for oi in range(o)])
    np.testing.assert_allclose(gw, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("o, c", [(7, 5), (96, 80)])
@pytest.mark.parametrize("r, m", [(3, 2), (3, 4), (5, 4)])
def test_winograd_turned_filter_transform_is_that_of_the_turned_filters(monkeypatch, r, m, o,
                                                                         c):
    """U' of the input gradient against G g' G^T of g' = w[o, c] turned around, at [c, o]
    (96 x 80 filters: turned and transformed in runs of columns on two threads)."""
    from kernels.cpu import arrays, winograd
    monkeypatch.setattr(parallel, "THREADS", max(2, parallel.threads()))
    G = WINOGRAD_G[m, r]
    runs = len(arrays.matmul_spans((m + r - 1) ** 2, r * r, c * o)[1])
    assert runs == 1 if o == 7 else runs > 1
    w = np.random.default_rng(8).standard_normal((o, c, r, r)).astype(np.float32)
    u = winograd.turned_filter_transform(w, m)
    assert u.shape == ((m + r - 1) ** 2, c, o)
    for o in range(w.shape[0]):
        for c in range(w.shape[1]):
            ref = G @ w[o, c, ::-1, ::-1].astype(np.float64) @ G.T
            np.testing.assert_allclose(u[:, c, o].reshape(ref.shape), ref, rtol=1e-5,
                                       atol=1e-5)


@pytest.mark.parametrize("count", [36, 64])
def test_winograd_filter_gradient_rows_sum_the_parts_then_transform(count):
    """Every share of filter_gradient_rows over three partial sums gives, bit for bit,
    filter_gradient of their sum added in order (the partials of a convolution's runs)."""
    from kernels.cpu import winograd
    rng = np.random.default_rng(12)
    parts = [rng.standard_normal((count, 40, 30)).astype(np.float32) * 10.0 ** i
             for i in range(3)]
    expected = winograd.filter_gradient((parts[0] + parts[1]) + parts[2])
    gw = np.empty_like(expected)
    for t in range(parallel.threads()):
        winograd.filter_gradient_rows(parts, gw, t)
    np.testing.assert_array_equal(gw, expected)


_FREED_RSS = """
import numpy as np
from kernels.cpu import memory
def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20
kept = memory.keep_freed_memory()
a = np.ones(50 * 2**20, dtype=np.float32)    # 200 MiB, above malloc's own 32 MiB limit
before = rss_mib()
del a
print(kept, before - rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.parametrize("keep", ["1", "0"])
def test_freed_large_arrays_stay_in_the_process_unless_switched_off(keep):
    import platform
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("glibc's malloc")
    env = dict(os.environ, GOOGLENET_KEEP_MEMORY=keep)
    out = subprocess.run([sys.executable, "-c", _FREED_RSS], env=env, capture_output=True,
                         text=True, check=True, cwd=str(ROOT)).stdout.split()
    kept, released_mib = out[0] == "True", float(out[1])
    assert kept == (keep == "1")
    if kept:
        assert released_mib < 20          # the 200 MiB stay for the next allocation
    else:
        assert released_mib > 150         # unmapped on free: malloc's default


def test_the_cpu_lab_checks_and_times_every_kernel(capsys):
    """``python -m kernels.cpu.lab`` asserts each version against the plain NumPy path
    before timing it; one image, one timed call."""
    from kernels.cpu import lab
    assert lab.main(["--batch", "1", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for row in ("conv1", "pool1", "norm2", "5b.3x3"):
        assert row in out
    with pytest.raises(SystemExit):
        lab.main(["--only", "nothing"])


@pytest.mark.parametrize("k, size, need_x", [(1, 28, True), (1, 7, True), (3, 7, True),
                                             (7, 20, False)])
def test_conv_backward_reads_gradient_pieces_as_the_joined_gradient(monkeypatch, k, size,
                                                                    need_x):
    """conv2d_backward given its output gradient as pieces along the channels (a strided
    channel slice among them, as a concatenation's gradient gives), bit for bit what it gives
    for the joined gradient: 1x1 on maps of one and of several images per chunk, a 3x3 by
    im2col, and a 7x7 stride-2 layer without an input gradient (bands of rows)."""
    import kernels.cpu.conv as K
    monkeypatch.setattr(parallel, "THREADS", max(2, parallel.threads()))
    monkeypatch.setattr(K, "BAND_COLUMNS", 16)
    rng = np.random.default_rng(21)
    stride, pad = (2, 3) if k == 7 else (1, k // 2)
    x = rng.standard_normal((4, 6, size, size)).astype(np.float32)
    w = rng.standard_normal((9, 6, k, k)).astype(np.float32)
    y = K.conv2d(x, w, rng.standard_normal(9).astype(np.float32), stride, pad, True)
    wide = rng.standard_normal((4, 12) + y.shape[2:]).astype(np.float32)
    pieces = [wide[:, 3:7], rng.standard_normal((4, 2) + y.shape[2:]).astype(np.float32),
              rng.standard_normal((4, 3) + y.shape[2:]).astype(np.float32)]
    assert not pieces[0].flags.c_contiguous
    joined = np.concatenate(pieces, axis=1)
    got = K.conv2d_backward(pieces, x, w, y, stride, pad, True, need_x, True, True)
    want = K.conv2d_backward(joined, x, w, y, stride, pad, True, need_x, True, True)
    for a, b in zip(got, want):
        if b is None:
            assert a is None
        else:
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("count, m, k, n", [
    (None, 8, 5, 32),        # one full tile
    (None, 13, 7, 49),       # rows past the last 8, a last vector with one column in use
    (None, 1, 1, 1),
    (None, 3, 64, 5),        # rows only, one masked vector
    (4, 17, 33, 70),         # a stack; every kind of tile
    (2, 16, 3, 16)])
def test_tiled_product_matches_a_float64_product(count, m, k, n):
    """kernels.cpu.tiled (the lab's register-tiled product) against NumPy's product in
    float64, for a contiguous a and for a whose rows are strided (a transposed copy's view,
    every other column of a wider array); nothing is written past out's columns."""
    from kernels.cpu import tiled
    rng = np.random.default_rng(m * 1000 + n)
    lead = () if count is None else (count,)
    a = rng.standard_normal(lead + (m, k), dtype=np.float32)
    b = rng.standard_normal(lead + (k, n), dtype=np.float32)
    ref = np.matmul(a.astype(np.float64), b.astype(np.float64))
    views = [a, np.swapaxes(np.ascontiguousarray(np.swapaxes(a, -1, -2)), -1, -2)]
    wide = np.zeros(lead + (m, 2 * k), dtype=np.float32)
    wide[..., ::2] = a
    views.append(wide[..., ::2])
    for view in views:
        padded = np.full(lead + (m, n + 16), 7.0, dtype=np.float32)   # out: rows of n + 16
        out = padded[..., :n]
        assert tiled.matmul(view, b, out) is out
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())
        assert np.all(padded[..., n:] == 7.0)


def test_tiled_product_says_what_it_cannot_take():
    from kernels.cpu import tiled
    a32, b32 = np.ones((4, 3), np.float32), np.ones((3, 5), np.float32)
    with pytest.raises(TypeError, match="float32"):
        tiled.matmul(a32.astype(np.float64), b32, np.empty((4, 5), np.float32))
    with pytest.raises(ValueError, match="do not match"):
        tiled.matmul(a32, b32, np.empty((4, 6), np.float32))
    with pytest.raises(ValueError, match="b's rows must be contiguous"):
        tiled.matmul(a32, np.ones((5, 3), np.float32).T, np.empty((4, 5), np.float32))
    square = np.ones((4, 4), np.float32)
    with pytest.raises(ValueError, match="overlap"):
        tiled.matmul(square, square, square)
    empty = np.full((4, 5), np.nan, np.float32)
    tiled.matmul(np.ones((4, 0), np.float32), np.ones((0, 5), np.float32), empty)
    assert np.all(empty == 0)


# ------------------------------------------------------------------ conv + ReLU + max pool
def _conv_pool(x, w, b, needs_x, fused, stride=2, pad=3):
    """(y, gx, gw, gb) of ConvReluMaxPoolFunction on its CPU kernel (``fused``) or as the
    two ops on theirs."""
    f = L.ConvReluMaxPoolFunction(stride, pad, 3, 2, 0, True)
    if not fused:
        f.cpu_supports = lambda *a: False
    xt = Tensor(x, requires_grad=needs_x)
    wt, bt = Tensor(w, requires_grad=True), Tensor(b, requires_grad=True)
    y = f(xt, wt, bt)
    path = f.path
    y.backward(np.random.default_rng(3).standard_normal(y.shape).astype(y.dtype))
    return path, (y.data, xt.grad, wt.grad, bt.grad)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("band_columns", [40, 64, 2048])
@pytest.mark.parametrize("side, kernel, stride, pad", [(40, 7, 2, 3), (26, 3, 1, 1), (90, 5, 1, 2)])
def test_conv_relu_max_pool_kernel_matches_the_two_ops(monkeypatch, dtype, band_columns, side,
                                                      kernel, stride, pad):
    """The fused kernel (each band of the convolution's output pooled in cache, the pooled
    gradient turned straight into the band's masked gradient) against the convolution and
    the pool on their own kernels: bands of 2, 4 and many rows with the rows carried between
    them, the last band short, ties (integer inputs) and windows whose maximum the ReLU
    zeroed (negative biases)."""
    from kernels.cpu import conv as K
    monkeypatch.setattr(K, "BAND_COLUMNS", band_columns)
    rng = np.random.default_rng(side + band_columns)
    exact = stride == 2          # both sides by im2col + GEMM (stride 1 apart: Winograd)
    if exact:                    # ties, which both must break alike
        x = rng.integers(-2, 3, (2, 3, side, side)).astype(dtype)
        w = rng.integers(-1, 2, (6, 3, kernel, kernel)).astype(dtype)
    else:
        x = rng.standard_normal((2, 3, side, side)).astype(dtype)
        w = rng.standard_normal((6, 3, kernel, kernel)).astype(dtype)
    b = np.array([-3, -1, 0, 0.5, 1, 4], dtype)
    out = (side + 2 * pad - kernel) // stride + 1
    # banded (more than two bands' worth of pixels), even sides, bands of 2 rows or more
    assert (K.pool_bands(x.shape, w.shape, stride, pad) is not None) == (
        out * out > 2 * band_columns and out % 2 == 0 and band_columns // out >= 2)
    if K.pool_bands(x.shape, w.shape, stride, pad) is None:
        pytest.skip("the kernel does not take this geometry")
    calls = []
    monkeypatch.setattr(K, "conv2d_max_pool", lambda *a, f=K.conv2d_max_pool:
                        calls.append(a[0].shape) or f(*a))
    path, fused = _conv_pool(x, w, b, False, True, stride, pad)
    assert path == "cpu" and calls
    path, apart = _conv_pool(x, w, b, False, False, stride, pad)
    assert path == "plain" and fused[1] is None and apart[1] is None
    if exact:
        np.testing.assert_array_equal(fused[0], apart[0])   # same maxima, same winners
    for u, v in zip(fused[:1] + fused[2:], apart[:1] + apart[2:]):
        assert u.dtype == v.dtype and u.shape == v.shape
        tol = TOL[dtype] if exact else WINOGRAD_TOL[dtype]
        np.testing.assert_allclose(u, v, rtol=tol, atol=tol * np.abs(v).max())
    with kernels(False):                                     # the plain path of both ops
        _, plain = _conv_pool(x, w, b, False, False, stride, pad)
    assert_close([fused[0]] + list(fused[2:]), [plain[0]] + list(plain[2:]), dtype)


def test_conv_relu_max_pool_with_an_input_gradient_runs_as_the_two_ops():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 140, 140)).astype(np.float32)
    w = rng.standard_normal((8, 3, 7, 7)).astype(np.float32) * 0.1
    b = np.zeros(8, np.float32)
    path, (y, gx, gw, gb) = _conv_pool(x, w, b, True, True)
    assert path == "plain" and gx.shape == x.shape
    with kernels(False):
        _, plain = _conv_pool(x, w, b, True, True)
    assert_close([y, gx, gw, gb], list(plain), np.float32)


def test_googlenet_pools_conv1_in_its_bands(monkeypatch):
    """GoogLeNet's conv1 + pool1 run as one op on the CPU kernels, and the network's loss
    and gradients are those of the two ops apart."""
    from kernels.cpu import conv as K
    from models.googlenet import GoogLeNet, training_loss
    net = GoogLeNet(num_classes=10, seed=0, dropout=0.0, aux_dropout=0.0)
    x = np.random.default_rng(6).standard_normal((2, 3, 136, 136)).astype(np.float32)
    assert K.pool_bands(x.shape, net.conv1.weight.shape, 2, 3) is not None
    calls = []
    monkeypatch.setattr(K, "conv2d_max_pool", lambda *a, f=K.conv2d_max_pool:
                        calls.append(a[0].shape) or f(*a))
    results = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(L.ConvReluMaxPoolFunction, "cpu_supports",
                                lambda self, *a: False)
        for p in net.parameters():
            p.grad = None
        loss, _ = training_loss(net(Tensor(x)), np.array([1, 7]))
        loss.backward()
        results.append([loss.data] + [p.grad for p in net.parameters()])
    assert calls == [x.shape]                                # conv1, once, fused
    for u, v in zip(*results):
        np.testing.assert_allclose(u, v, rtol=1e-4, atol=1e-5 * max(1.0, np.abs(v).max()))


def test_conv_relu_max_pool_without_a_bias_and_on_request():
    """No bias: the two ops (the kernel needs one); impl="plain" both ops' plain paths;
    impl="cpu" where the kernel cannot run: a one-line error naming the op."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, 3, 140, 140)).astype(np.float32)
    w = rng.standard_normal((8, 3, 7, 7)).astype(np.float32) * 0.1
    wt = Tensor(w, requires_grad=True)
    f = L.ConvReluMaxPoolFunction(2, 3)
    y = f(Tensor(x), wt)
    assert f.path == "plain" and y.shape == (2, 8, 35, 35)
    y.backward(np.ones(y.shape, np.float32))
    with kernels(False):
        want = L.max_pool2d(L.conv2d(Tensor(x), Tensor(w), None, 2, 3, relu=True), 3, 2)
    np.testing.assert_allclose(y.data, want.data, rtol=1e-5, atol=1e-5)
    assert wt.grad.shape == w.shape
    with pytest.raises(ValueError, match="conv2d_relu_max_pool: impl='cpu' asked for"):
        L.ConvReluMaxPoolFunction(2, 3, impl="cpu")(Tensor(x), wt)
    plain = L.ConvReluMaxPoolFunction(2, 3, impl="plain")
    plain(Tensor(x), wt, Tensor(np.zeros(8, np.float32)))
    assert plain.conv.path == "plain" and plain.pool.path == "plain"


def test_gemm_first_products_on_two_threads_at_once():
    """MKL is loaded, and the compiled call made ready, once, whichever of the pool's threads
    asks first: a fresh process whose first two products start together."""
    code = """
import threading, numpy as np
from kernels.cpu import gemm
a = np.ones((64, 147), np.float32); b = np.ones((147, 16), np.float32)
go, errors = threading.Barrier(4), []
def product():
    go.wait()
    try:
        out = gemm.matmul(a, b, np.empty((64, 16), np.float32))
        assert (out == 147).all()
    except BaseException as e:
        errors.append(repr(e))
threads = [threading.Thread(target=product) for _ in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
assert not errors, errors
print(gemm.library())
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(ROOT))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() in ("mkl", "numpy")
