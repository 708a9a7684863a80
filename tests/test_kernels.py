"""Tests of the convolution kernel lab (kernels/) and its benchmark (bench/conv_throughput.py).

CPU (run everywhere): GoogLeNet's shape table and MAC totals; the float64 reference against
naive loops and against the adjoint identities; supports() and the config rules; the launch
plans' grid arithmetic (hypothesis); the autotune cache (round trip, merge, atomic write);
the bench CLI. Where g++ exists, the real .cu kernels also run through the CPU emulation
(kernels.emu) on small odd shapes, and on a small case for every kernel instance and split count
GoogLeNet launches at batch 128; the every-config x every-shape emulated matrix is opt-in.

GPU (skipped with the reason when CuPy or a device is missing): every version and direction
against the reference on every GoogLeNet shape (batch 2) and on hypothesis-drawn odd shapes,
every batch-128 launch signature at the device's SM count, with NaN-poisoned outputs; the
public API, autotuning, errors and determinism. (tests/test_kernels_device.py runs the CuPy
launcher and autotuner on the CPU against a stand-in CuPy.)
"""
from __future__ import annotations

import functools
import json
import math
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernels import autotune, conv_cuda, lab, shapes
from kernels.conv_cuda import DIRECTIONS, Problem

try:  # tests/reference.py: naive loop implementations shared by the test suite
    from tests import reference as naive
except ImportError:
    import reference as naive


GPU_REASON = conv_cuda.unusable_reason()
requires_gpu = pytest.mark.skipif(GPU_REASON is not None, reason=f"needs a CUDA GPU: {GPU_REASON}")


def _emu_available() -> bool:
    from kernels import emu
    return emu.available()


requires_emu = pytest.mark.skipif(not _emu_available(), reason="needs g++ (C++20) for kernels.emu")

ALL_VERSIONS = [(d, v) for d in DIRECTIONS for v in conv_cuda.versions(d)]


# ============================================================================ shapes

def test_googlenet_has_59_convolutions_39_of_them_1x1():
    convs = shapes.googlenet_conv_shapes()
    assert len(convs) == 59
    assert sum(s.k == 1 for s in convs) == 39
    assert [s.name for s in convs if s.aux] == ["aux1.conv", "aux2.conv"]
    assert sum(not s.same_stride1() for s in convs) == 1  # conv1, 7x7 stride 2


def test_main_path_is_about_1_58_gmacs():
    # googlenet.md: "about 1.58 G multiply-adds per image in the main path". We count the 57
    # main-path convolutions only (the classifier's 1.0 M is excluded; with it: 1.5827 G).
    total = shapes.total_macs()
    assert abs(total - 1.58e9) / 1.58e9 < 0.01
    assert shapes.total_macs(include_classifier=True) - total == 1_024_000


@pytest.mark.parametrize("module, table_macs", [
    ("conv1", 118e6), ("conv2_reduce", 12.8e6), ("conv2", 347e6), ("inception_3a", 128e6),
    ("inception_3b", 304e6), ("inception_4a", 73.6e6), ("inception_4b", 87.9e6),
    ("inception_4c", 99.9e6), ("inception_4d", 118.5e6), ("inception_4e", 170e6),
    ("inception_5a", 51.1e6), ("inception_5b", 70.7e6),
])
def test_module_macs_match_the_table(module, table_macs):
    got = sum(s.macs() for s in shapes.googlenet_conv_shapes()
              if s.name == module or s.name.startswith(module + "."))
    assert abs(got - table_macs) / table_macs < 0.01


def test_shape_geometry():
    by_name = {s.name: s for s in shapes.googlenet_conv_shapes()}
    assert (by_name["conv1"].h_out, by_name["conv1"].w_out) == (112, 112)
    s = by_name["inception_4e.conv_3x3"]
    assert (s.c_in, s.h, s.c_out, s.k, s.pad) == (160, 14, 320, 3, 1)
    assert s.problem(128) == Problem(128, 160, 14, 14, 320, 3)
    assert s.min_bytes(128) == 4 * (128 * 160 * 196 + 128 * 320 * 196 + 320 * 160 * 9)
    assert by_name["aux2.conv"].macs() == 528 * 128 * 16


# ============================================================================ reference

@settings(max_examples=12)
@given(n=st.integers(1, 2), c=st.integers(1, 3), k=st.integers(1, 3), h=st.integers(1, 5),
       w=st.integers(1, 5), ks=st.sampled_from([1, 3, 5]), seed=st.integers(0, 99))
def test_reference_matches_naive_loops(n, c, k, h, w, ks, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w))
    wt = rng.standard_normal((k, c, ks, ks))
    b = rng.standard_normal(k)
    gy = rng.standard_normal((n, k, h, w))
    p = ks // 2
    y = naive.conv2d(x, wt, b, 1, p)
    np.testing.assert_allclose(lab.ref_forward(x, wt, b), y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lab.ref_forward(x, wt, b, relu=True), np.maximum(y, 0), atol=1e-12)
    # Naive backward loops: scatter each output gradient through the taps.
    gx = np.zeros_like(x)
    gw = np.zeros_like(wt)
    for ni in range(n):
        for ki in range(k):
            for hh in range(h):
                for vv in range(w):
                    for ci in range(c):
                        for r in range(ks):
                            for s in range(ks):
                                ih, iw = hh + r - p, vv + s - p
                                if 0 <= ih < h and 0 <= iw < w:
                                    gx[ni, ci, ih, iw] += gy[ni, ki, hh, vv] * wt[ki, ci, r, s]
                                    gw[ki, ci, r, s] += gy[ni, ki, hh, vv] * x[ni, ci, ih, iw]
    np.testing.assert_allclose(lab.ref_backward_data(gy, wt), gx, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lab.ref_backward_weight(x, gy, ks), gw, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lab.ref_backward_bias(gy), gy.sum(axis=(0, 2, 3)))


def test_reference_adjoint_identities():
    """<conv(x, w), gy> = <x, bwd_data(gy, w)> = <w, bwd_weight(x, gy)> at GoogLeNet-like sizes."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 24, 14, 14))
    w = rng.standard_normal((40, 24, 5, 5))
    gy = rng.standard_normal((2, 40, 14, 14))
    lhs = float((lab.ref_forward(x, w) * gy).sum())
    assert math.isclose(lhs, float((x * lab.ref_backward_data(gy, w)).sum()), rel_tol=1e-10)
    assert math.isclose(lhs, float((w * lab.ref_backward_weight(x, gy, 5)).sum()), rel_tol=1e-10)


def test_rel_error_and_tolerance():
    ref = np.ones(4)
    assert lab.rel_error(ref.astype(np.float32), ref) == 0
    assert lab.rel_error(np.array([1, 1, 1, np.nan]), ref) == math.inf
    assert lab.tolerance("fwd", Problem(2, 16, 4, 4, 8, 1)) == 1e-5
    big = Problem(128, 16, 56, 56, 8, 3)  # bwd_weight sums 401408 pixels
    assert lab.tolerance("bwd_weight", big) > 1e-5


# ============================================================================ supports / configs

@pytest.mark.parametrize("x_shape, w_shape, stride, pad, dtype, expected", [
    ((2, 64, 56, 56), (192, 64, 3, 3), 1, 1, "float32", True),
    ((2, 16, 28, 28), (32, 16, 5, 5), 1, 2, "float32", True),
    ((2, 192, 28, 28), (64, 192, 1, 1), 1, 0, "float32", True),
    ((1, 512, 4, 4), (128, 512, 1, 1), (1, 1), (0, 0), "float32", True),
    ((2, 3, 1, 1), (5, 3, 3, 3), 1, 1, "float32", True),       # 1x1 spatial, padding only
    ((2, 64, 56, 56), (192, 64, 3, 3), 1, None, "float32", True),
    ((2, 3, 224, 224), (64, 3, 7, 7), 2, 3, "float32", False),  # conv1
    ((2, 64, 56, 56), (192, 64, 3, 3), 2, 1, "float32", False),  # stride 2
    ((2, 64, 56, 56), (192, 64, 3, 3), 1, 0, "float32", False),  # "valid" padding
    ((2, 64, 56, 56), (192, 64, 3, 3), 1, 1, "float64", False),
    ((2, 64, 56, 56), (192, 64, 3, 3), 1, 1, "float16", False),
    ((2, 64, 56, 56), (192, 32, 3, 3), 1, 1, "float32", False),  # channel mismatch
    ((2, 64, 56, 56), (192, 64, 3, 1), 1, 1, "float32", False),  # not square
    ((2, 64, 56, 56), (192, 64, 2, 2), 1, 1, "float32", False),  # even kernel
    ((2, 64, 56, 56), (192, 64, 7, 7), 1, 3, "float32", False),  # 7x7 not covered
    ((64, 56, 56), (192, 64, 3, 3), 1, 1, "float32", False),     # rank 3
    ((0, 64, 56, 56), (192, 64, 3, 3), 1, 1, "float32", False),  # empty batch
    ((2, 64, 56, 56), (192, 64, 3, 3), (1, 2), 1, "float32", False),
    ((70000, 64, 256, 256), (64, 64, 3, 3), 1, 1, "float32", False),  # past 32-bit indexing
])
def test_supports_truth_table(x_shape, w_shape, stride, pad, dtype, expected):
    assert conv_cuda.supports(x_shape, w_shape, stride, pad, dtype) is expected


def test_every_listed_config_is_valid_and_bad_ones_are_rejected():
    for d, v in ALL_VERSIONS:
        for cfg in conv_cuda.configs(d, v):
            conv_cuda.check_config(d, v, cfg)
    bad = [("fwd", "v4", (128, 128, 8, 8, 6)),        # TN not a multiple of 4
           ("fwd", "v3", (256, 256, 8, 4, 4)),        # 4096 threads
           ("fwd", "v4", (128, 128, 64, 8, 8)),       # 2 x 64 x 264 x 4 B of shared memory
           ("fwd", "v3", (64, 128, 8, 16, 8)),        # 64 threads < BN: no fixed B column
           ("bwd_weight", "v2", (64, 64, 24, 8, 8)),  # 64 threads not a multiple of BK=24
           ("fwd", "v2", (64,)),                      # 4096 threads
           ("fwd", "v1", (256, 1)),                   # not a 1-tuple
           ("fwd", "v9", (16,))]                      # no such version
    for case in bad:
        with pytest.raises(ValueError):
            conv_cuda.check_config(*case)


def test_versions_and_unknown_direction():
    assert conv_cuda.versions("fwd") == ["v1", "v2", "v3", "v4"]
    assert conv_cuda.versions("bwd_weight")[0] == "v1"
    with pytest.raises(ValueError, match="direction"):
        conv_cuda.versions("sideways")


def test_importing_kernels_does_not_import_cupy():
    import subprocess
    import sys
    code = ("import sys, kernels, kernels.conv_cuda, kernels.autotune, kernels.shapes, kernels.lab, "
            "kernels.emu, kernels.sanitize, kernels.conv_cuda.device, kernels.conv_cuda.select, "
            "bench.gpu_check; print('cupy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)), check=True)
    assert out.stdout.strip() == "False"


# ============================================================================ plans

problems = st.builds(Problem, n=st.integers(1, 256), c=st.integers(1, 1100), h=st.integers(1, 60),
                     w=st.integers(1, 60), k=st.integers(1, 1100), ksize=st.sampled_from([1, 3, 5]))


@settings(max_examples=60)
@given(problem=problems, sm=st.sampled_from([8, 108, 132]), data=st.data())
def test_plans_cover_every_output_exactly(problem, sm, data):
    d, v = data.draw(st.sampled_from(ALL_VERSIONS))
    cfg = data.draw(st.sampled_from(conv_cuda.configs(d, v)))
    pl = conv_cuda.plan(d, v, cfg, problem, has_bias=True, relu=True, sm_count=sm)
    p = problem
    assert pl.output_shape == p.shapes()[pl.output]
    gemm = pl.calls[-1] if d != "bwd_weight" else pl.calls[0]
    for call in pl.calls:
        assert call.block[0] * call.block[1] * call.block[2] <= 1024
        assert call.grid[1] <= 65535 and call.grid[2] <= 65535
        assert all(isinstance(a, (str, int)) for a in call.args)
    if len(cfg) == 5:
        bm, bn, bk, tm, tn = cfg
        assert gemm.block == ((bm // tm) * (bn // tn), 1, 1)
        if d == "bwd_weight":
            rows, cols = p.k, p.crs
            splits, chunk = conv_cuda.split_count(p, cfg, sm)
            assert gemm.grid[2] == splits and chunk % bk == 0
            assert splits * chunk >= p.pixels > (splits - 1) * chunk  # no empty split
            assert (len(pl.calls) == 2) == (splits > 1)
        else:
            rows, cols = (p.k if d == "fwd" else p.c), p.pixels
        assert gemm.grid[0] * bn >= cols > (gemm.grid[0] - 1) * bn
        assert gemm.grid[1] * bm >= rows > (gemm.grid[1] - 1) * bm
    elif v == "v2":
        tile = cfg[0]
        rows = p.k if d == "fwd" else p.c
        assert gemm.grid[0] * tile >= p.pixels and gemm.grid[1] * tile >= rows
    else:
        count = {"fwd": p.n * p.k * p.hw, "bwd_data": p.n * p.c * p.hw, "bwd_weight": p.k * p.crs}[d]
        assert gemm.grid[0] * gemm.block[0] >= count > (gemm.grid[0] - 1) * gemm.block[0]


def test_bwd_data_plan_is_flip_then_forward_with_channels_swapped():
    p = Problem(2, 16, 14, 14, 48, 3)
    pl = conv_cuda.plan("bwd_data", "v4", (64, 64, 8, 4, 4), p)
    flip, gemm = pl.calls
    assert flip.name == "flip_transpose_weight<3>" and dict(pl.temps)["wt"] == (16, 48, 3, 3)
    assert gemm.name == "conv_fwd_v4<64, 64, 8, 4, 4, 3, true>"
    assert gemm.args == ("gy", "wt", "wt", "gx", 2, 48, 14, 14, 16, 0, 0)


def test_v4_float4_paths_only_when_aligned_and_divisible():
    cfg = (64, 64, 8, 4, 4)
    name = lambda p, **kw: conv_cuda.plan("fwd", "v4", cfg, p, **kw).calls[0].name  # noqa: E731
    assert name(Problem(2, 8, 14, 14, 16, 1)).endswith("true>")
    assert name(Problem(2, 8, 7, 7, 16, 1)).endswith("false>")    # H*W = 49
    assert name(Problem(2, 3, 14, 14, 16, 3)).endswith("false>")  # C*k*k = 27
    assert name(Problem(2, 8, 14, 14, 16, 1), aligned=False).endswith("false>")


def test_default_config_prefers_big_tiles_for_big_layers():
    big = Problem(128, 64, 56, 56, 192, 3)
    small = Problem(2, 16, 4, 4, 8, 1)
    assert conv_cuda.default_config("fwd", "v4", big) == conv_cuda.GEMM_TILES[0]
    cfg = conv_cuda.default_config("fwd", "v4", small)
    assert cfg[0] * cfg[1] <= 64 * 64
    assert conv_cuda.default_config("fwd", "v1", big) == (256,)


def test_all_instances_lists_every_source():
    inst = conv_cuda.all_instances()
    cu = sorted(p.name for p in conv_cuda.KERNEL_DIR.glob("*.cu"))
    assert sorted(inst) == cu
    assert "conv_fwd_v4<128, 128, 8, 8, 8, 1, true>" in inst["conv_fwd_v4.cu"]
    assert "splitk_reduce" in inst["conv_bwd_weight_v2.cu"]


# ============================================================================ autotune cache

@pytest.fixture
def cache_file(tmp_path, monkeypatch):
    path = tmp_path / "tune" / "autotune.json"
    monkeypatch.setenv("GOOGLENET_AUTOTUNE_CACHE", str(path))
    autotune.forget_memory()
    yield path
    autotune.forget_memory()


def test_autotune_cache_path_default_and_override(monkeypatch, tmp_path):
    monkeypatch.delenv("GOOGLENET_AUTOTUNE_CACHE", raising=False)
    assert autotune.cache_path().parts[-3:] == (".cache", "googlenet_engine", "autotune.json")
    monkeypatch.setenv("GOOGLENET_AUTOTUNE_CACHE", str(tmp_path / "x.json"))
    assert autotune.cache_path() == tmp_path / "x.json"


def test_autotune_enabled_switch(monkeypatch):
    monkeypatch.delenv("GOOGLENET_AUTOTUNE", raising=False)
    assert autotune.enabled()
    for off in ("0", "false", "OFF"):
        monkeypatch.setenv("GOOGLENET_AUTOTUNE", off)
        assert not autotune.enabled()


def test_autotune_key_names_everything_that_changes_the_choice():
    parts = dict(variant="aligned1.sm132", toolchain="cupy 14.2.0", tag="abc")
    key = autotune.make_key("fwd", (128, 192, 28, 28, 64, 1), "NVIDIA H200 sm_90", **parts)
    assert key == "fwd|n128.c192.h28.w28.k64.ks1|aligned1.sm132|NVIDIA H200 sm_90|cupy 14.2.0|abc"
    others = [autotune.make_key("bwd_data", (128, 192, 28, 28, 64, 1), "NVIDIA H200 sm_90", **parts),
              autotune.make_key("fwd", (64, 192, 28, 28, 64, 1), "NVIDIA H200 sm_90", **parts),
              autotune.make_key("fwd", (128, 192, 28, 28, 64, 1), "NVIDIA A100 sm_80", **parts)]
    for field, value in (("variant", "aligned0.sm132"), ("toolchain", "cupy 14.3.0"),
                         ("tag", "abd")):
        changed = dict(parts, **{field: value})
        others.append(autotune.make_key("fwd", (128, 192, 28, 28, 64, 1), "NVIDIA H200 sm_90", **changed))
    assert len({key, *others}) == len(others) + 1
    assert len(autotune.sources_tag()) == 12


def test_autotune_round_trip_and_merge(cache_file):
    autotune.save({"a": {"version": "v4", "config": [1, 2]}})
    autotune.save({"b": {"version": "v3", "config": [3]}})
    assert autotune.load() == {"a": {"version": "v4", "config": [1, 2]},
                               "b": {"version": "v3", "config": [3]}}
    data = json.loads(cache_file.read_text())
    assert data["format"] == autotune.FORMAT
    assert [p.name for p in cache_file.parent.iterdir()] == ["autotune.json"]  # no temp left


def test_autotune_write_is_atomic(cache_file, monkeypatch):
    autotune.save({"a": {"version": "v1", "config": [256]}})
    before = cache_file.read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(autotune.os, "replace", broken_replace)
    with pytest.raises(OSError):
        autotune.save({"b": {"version": "v2", "config": [16]}})
    assert cache_file.read_text() == before
    assert [p.name for p in cache_file.parent.iterdir()] == ["autotune.json"]


def test_autotune_ignores_corrupt_or_foreign_files(cache_file):
    cache_file.parent.mkdir(parents=True)
    cache_file.write_text("{not json")
    assert autotune.load() == {}
    cache_file.write_text(json.dumps({"format": 999, "entries": {"a": {}}}))
    assert autotune.load() == {}
    autotune.save({"a": {"version": "v1", "config": [256]}})  # replaces the bad file
    assert autotune.load()["a"]["version"] == "v1"


def test_autotune_best_measures_once_then_uses_the_cache(cache_file):
    calls = []
    times = {("v4", (128, 128, 8, 8, 8)): 3.0, ("v4", (64, 64, 8, 4, 4)): 1.0,
             ("v4", (32, 32, 8, 4, 4)): 2.0}

    def measure(cand):
        calls.append(cand)
        if cand[1] == (32, 32, 8, 4, 4):
            raise conv_cuda.LaunchRejected("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES")
        return times[cand]

    key = autotune.make_key("fwd", (2, 8, 4, 4, 8, 1), "test-device", tag="t")
    cands = list(times)
    skip = (conv_cuda.LaunchRejected,)
    assert autotune.best(key, cands, measure, skip=skip) == ("v4", (64, 64, 8, 4, 4))
    assert len(calls) == 3
    entry = autotune.load()[key]
    assert entry["config"] == [64, 64, 8, 4, 4] and entry["ms"] == 1.0
    assert "OUT_OF_RESOURCES" in entry["rejected"]["v4:32x32x8x4x4"]
    assert autotune.best(key, cands, measure, skip=skip) == ("v4", (64, 64, 8, 4, 4))
    assert len(calls) == 3  # answered from memory
    autotune.forget_memory()
    assert autotune.best(key, cands, measure, skip=skip) == ("v4", (64, 64, 8, 4, 4))
    assert len(calls) == 3  # answered from disk
    # A cached choice that is no longer a candidate is measured again.
    assert autotune.best(key, cands[:1], measure, skip=skip) == cands[0]
    assert len(calls) == 4


def test_autotune_every_candidate_rejected_is_an_error(cache_file):
    def measure(cand):
        raise conv_cuda.LaunchRejected("too many resources requested for launch")
    with pytest.raises(RuntimeError, match="no candidate passed.*too many resources"):
        autotune.best("k", [("v1", (256,))], measure, skip=(conv_cuda.LaunchRejected,))


def test_autotune_a_wrong_result_never_wins_however_fast(cache_file):
    fast_but_wrong = ("v4", (128, 128, 8, 8, 8))
    times = {fast_but_wrong: 0.1, ("v4", (64, 64, 8, 4, 4)): 1.0, ("v4", (32, 32, 8, 4, 4)): 2.0}
    measured = []

    def validate(cand):
        return cand != fast_but_wrong, "rel error 3.1e-01 (tolerance 1.0e-05)"

    def measure(cand):
        measured.append(cand)
        return times[cand]

    key = autotune.make_key("fwd", (2, 8, 4, 4, 8, 1), "test-device", tag="t")
    assert autotune.best(key, list(times), measure, validate=validate) == ("v4", (64, 64, 8, 4, 4))
    assert fast_but_wrong not in measured
    assert "rel error" in autotune.load()[key]["rejected"]["v4:128x128x8x8x8"]


def test_autotune_lets_a_fault_through_and_records_nothing(cache_file):
    def measure(cand):
        if cand[1] == (64, 64, 8, 4, 4):
            raise conv_cuda.KernelFault("fwd v4 config 64x64x8/4x4 on (N,C,H,W,K,k)=(2, 8, 4, 4, 8, 1): "
                                        "conv_fwd_v4<...> failed while running: CUDA_ERROR_ILLEGAL_ADDRESS")
        return 1.0

    cands = [("v4", (128, 128, 8, 8, 8)), ("v4", (64, 64, 8, 4, 4)), ("v4", (32, 32, 8, 4, 4))]
    with pytest.raises(conv_cuda.KernelFault, match="64x64x8/4x4.*ILLEGAL_ADDRESS"):
        autotune.best("k", cands, measure, skip=(conv_cuda.LaunchRejected,))
    with pytest.raises(ValueError):  # not only CUDA faults: any unexpected error surfaces
        autotune.best("k", cands, lambda c: float("x"), skip=(conv_cuda.LaunchRejected,))
    assert autotune.load() == {}


# ============================================================================ lab / bench CLI

@pytest.mark.skipif(GPU_REASON is None, reason="this machine has a GPU; the lab would run")
def test_lab_without_gpu_says_so_and_exits_2(capsys):
    assert lab.main([]) == 2
    assert "no GPU" in capsys.readouterr().err


def test_bench_help_explains_the_flags(capsys):
    from bench import conv_throughput as bench
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(["--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--device", "--batch", "--directions", "--json", "--plot", "--repeat", "--only"):
        assert flag in text


def test_bench_tiny_cpu_run_writes_json_and_png(tmp_path, capsys):
    from bench import conv_throughput as bench
    out_json, out_png = tmp_path / "r.json", tmp_path / "r.png"
    rc = bench.main(["--device", "cpu", "--batch", "1", "--only", "inception_5a.conv_5x5_reduce",
                     "--repeat", "1", "--warmup", "0", "--json", str(out_json), "--plot", str(out_png)])
    assert rc == 0
    report = json.loads(out_json.read_text())  # strict JSON: no NaN
    assert report["device"] == "cpu" and report["batch"] == 1
    assert "--only" in report["command"] and report["versions"]["numpy"] == np.__version__
    rows = report["results"]
    assert {r["direction"] for r in rows} == set(DIRECTIONS)
    assert all(r["error"] is None and r["ms"] > 0 for r in rows)
    assert rows[0]["flops"] == 2 * 1 * 832 * 32 * 49
    assert set(report["totals"]) == set(DIRECTIONS)
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "totals" in capsys.readouterr().out


def test_bench_numpy_im2col_matches_reference():
    from bench import conv_throughput as bench
    rng = np.random.default_rng(3)
    for s in (shapes.ConvShape("t", 5, 9, 9, 4, 3, 1, 1), shapes.ConvShape("t", 3, 11, 11, 4, 7, 2, 3),
              shapes.ConvShape("t", 6, 4, 4, 3, 1, 1, 0)):
        a = {"x": rng.standard_normal((2, s.c_in, s.h, s.w)).astype(np.float32),
             "w": rng.standard_normal((s.c_out, s.c_in, s.k, s.k)).astype(np.float32),
             "gy": rng.standard_normal((2, s.c_out, s.h_out, s.w_out)).astype(np.float32)}
        y = bench.im2col_conv(np, "fwd", s, a)().reshape(a["gy"].shape)
        np.testing.assert_allclose(y, naive.conv2d(a["x"], a["w"], None, s.stride, s.pad),
                                   rtol=1e-4, atol=1e-4)
        if s.stride == 1:
            gx = bench.im2col_conv(np, "bwd_data", s, a)()
            np.testing.assert_allclose(gx, lab.ref_backward_data(a["gy"], a["w"]), rtol=1e-4, atol=1e-4)
            gw = bench.im2col_conv(np, "bwd_weight", s, a)().reshape(a["w"].shape)
            np.testing.assert_allclose(gw, lab.ref_backward_weight(a["x"], a["gy"], s.k),
                                       rtol=1e-4, atol=1e-4)


# ============================================================================ CPU emulation

# Small shapes that still cross tile edges (channels off the tile sizes), with batch 1 and a
# 1x1 image (all taps but the centre in the padding), and one that triggers split-K.
EMU_CASES = [
    ("fwd", "v1", Problem(2, 5, 3, 7, 6, 3), None),
    ("fwd", "v2", Problem(1, 3, 1, 1, 2, 3), (8,)),
    ("fwd", "v3", Problem(2, 7, 5, 5, 9, 5), (32, 32, 8, 4, 4)),
    ("fwd", "v4", Problem(2, 12, 6, 6, 10, 1), (32, 32, 8, 4, 4)),   # float4 path
    ("fwd", "v4", Problem(1, 5, 3, 3, 7, 3), (32, 32, 8, 4, 4)),     # scalar path
    ("bwd_data", "v1", Problem(2, 4, 3, 5, 6, 5), None),
    ("bwd_data", "v4", Problem(2, 6, 4, 4, 9, 3), (32, 32, 8, 4, 4)),
    ("bwd_weight", "v1", Problem(1, 3, 4, 5, 7, 3), None),
    ("bwd_weight", "v2", Problem(2, 6, 12, 12, 7, 3), (32, 64, 16, 4, 4)),  # 2 splits
]


@requires_emu
@pytest.mark.parametrize("direction, version, problem, config", EMU_CASES,
                         ids=[f"{d}-{v}-{p.ksize}x{p.ksize}-{i}" for i, (d, v, p, _) in enumerate(EMU_CASES)])
def test_kernels_under_cpu_emulation(direction, version, problem, config):
    chk = lab.validate(direction, version, problem, config, backend="emu", sm_count=8)
    assert chk.unwritten == 0
    assert chk.rel < chk.tol, f"rel error {chk.rel:.2e}"


@requires_emu
def test_bias_gradient_kernel_under_cpu_emulation():
    from kernels import emu
    gy = np.random.default_rng(0).standard_normal((3, 5, 7, 9), dtype=np.float32)
    gb = emu.execute(conv_cuda.bias_plan(3, 5, 63), {"gy": gy})
    np.testing.assert_allclose(gb, gy.astype(np.float64).sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-5)


@requires_emu
@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("GOOGLENET_EMU_FULL"),
                    reason="about a minute on 2 cores: set GOOGLENET_EMU_FULL=1 "
                           "(or run python -m kernels.lab --emu --all-configs)")
@pytest.mark.parametrize("direction, version", ALL_VERSIONS)
def test_every_config_under_cpu_emulation(direction, version):
    for cfg in conv_cuda.configs(direction, version):
        for prob in lab.EMU_SHAPES:
            chk = lab.validate(direction, version, prob, cfg, backend="emu", sm_count=8)
            assert chk.ok, (cfg, prob, chk)


# ============================================================================ batch-128 coverage

@pytest.mark.parametrize("sm", [132, 108])
def test_validation_cases_cover_every_launch_googlenet_makes_at_batch_128(sm):
    """Every (kernel instance, split count) that the autotuner or the heuristic can launch for
    GoogLeNet at batch 128 has a small validation case with the same signature."""
    production = {conv_cuda.signature(pl) for pl in conv_cuda.production_plans(128, sm)}
    covered = {conv_cuda.signature(conv_cuda.plan(d, v, cfg, p, has_bias=True, relu=d == "fwd",
                                                  sm_count=sm))
               for d, v, cfg, p in conv_cuda.validation_cases(128, sm)}
    assert production == covered
    names = {n for sig in production for n in sig[2]}
    assert "conv_fwd_v4<128, 128, 8, 8, 8, 1, true>" in names      # the big float4 tile
    assert any(n.startswith("conv_fwd_v4") and n.endswith("false>") for n in names)  # 7x7 maps
    splits = {sig[3] for sig in production if sig[0] == "bwd_weight" and sig[1] == "v2"}
    assert 1 in splits and max(splits) == 64 and len(splits) > 10
    for d, v, cfg, p in conv_cuda.validation_cases(128, sm):
        assert p.pixels * max(p.c, p.k) <= 150_000   # small enough for the emulation


def _cases_by_group(sm):
    groups = {}
    for case in conv_cuda.validation_cases(128, sm):
        groups.setdefault(case[:2], []).append(case)
    return groups


@requires_emu
@pytest.mark.parametrize("direction, version", sorted(_cases_by_group(conv_cuda.DEFAULT_SM_COUNT)))
def test_every_batch_128_launch_under_cpu_emulation(direction, version):
    for d, v, cfg, p in _cases_by_group(conv_cuda.DEFAULT_SM_COUNT)[(direction, version)]:
        chk = lab.validate(d, v, p, cfg, backend="emu", sm_count=conv_cuda.DEFAULT_SM_COUNT)
        assert chk.ok, (cfg, p, chk)


# ============================================================================ GPU

@functools.lru_cache(maxsize=None)
def _gpu_case(direction: str, problem: Problem, seed: int):
    inputs = lab.make_inputs(direction, problem, seed)
    return inputs, lab.reference(direction, problem, inputs, relu=direction == "fwd")


def _gpu_check(direction, version, problem, config=None, seed=0):
    import cupy as cp
    inputs, ref = _gpu_case(direction, problem, seed)
    if config is None:
        config = conv_cuda.default_config(direction, version, problem, conv_cuda.device_sm_count())
    dev = {k: cp.asarray(v) for k, v in inputs.items()}
    pl = conv_cuda.plan(direction, version, config, problem, has_bias="b" in dev,
                        relu=direction == "fwd", sm_count=conv_cuda.device_sm_count())
    out = cp.asnumpy(conv_cuda.execute(pl, dev, poison=True, check=True))
    assert not np.isnan(out).any(), f"{int(np.isnan(out).sum())} outputs never written"
    rel = lab.rel_error(out, ref)
    assert rel < lab.tolerance(direction, problem), f"{direction} {version} {config} {problem}: {rel:.2e}"


GOOGLENET = [s for s in shapes.googlenet_conv_shapes() if s.same_stride1()]


@requires_gpu
@pytest.mark.parametrize("shape", GOOGLENET, ids=[s.name for s in GOOGLENET])
@pytest.mark.parametrize("direction, version", ALL_VERSIONS)
def test_gpu_every_version_on_googlenet_shapes(direction, version, shape):
    _gpu_check(direction, version, shape.problem(2))


odd_problems = st.builds(Problem, n=st.integers(1, 3), c=st.integers(1, 70), h=st.integers(1, 17),
                         w=st.integers(1, 17), k=st.integers(1, 70), ksize=st.sampled_from([1, 3, 5]))


@requires_gpu
@settings(max_examples=40)
@given(problem=odd_problems, data=st.data())
def test_gpu_every_version_and_config_on_odd_shapes(problem, data):
    d, v = data.draw(st.sampled_from(ALL_VERSIONS))
    cfg = data.draw(st.sampled_from(conv_cuda.configs(d, v)))
    _gpu_check(d, v, problem, cfg, seed=data.draw(st.integers(0, 3)))


@requires_gpu
def test_gpu_every_batch_128_launch_on_small_shapes():
    """The emulated matrix above, on the device: its SM count sets the split counts."""
    sm = conv_cuda.device_sm_count()
    failures = []
    for d, v, cfg, p in conv_cuda.validation_cases(128, sm):
        chk = lab.validate(d, v, p, cfg, sm_count=sm)
        if not chk.ok:
            failures.append((d, v, conv_cuda.config_name(cfg), p.as_tuple(), chk.rel, chk.unwritten))
    assert not failures, failures


@requires_gpu
@pytest.mark.parametrize("problem", [Problem(1, 1, 1, 1, 1, 1), Problem(1, 3, 1, 1, 5, 5),
                                     Problem(2, 130, 7, 7, 67, 3), Problem(1, 33, 2, 3, 129, 5)])
@pytest.mark.parametrize("direction, version", ALL_VERSIONS)
def test_gpu_all_configs_on_edge_shapes(direction, version, problem):
    for cfg in conv_cuda.configs(direction, version):
        _gpu_check(direction, version, problem, cfg)


@requires_gpu
def test_gpu_public_api_autotunes_and_matches_reference(tmp_path, monkeypatch):
    import cupy as cp
    monkeypatch.setenv("GOOGLENET_AUTOTUNE_CACHE", str(tmp_path / "a.json"))
    autotune.forget_memory()
    p = Problem(2, 24, 14, 14, 40, 3)
    inputs = lab.make_inputs("fwd", p, 1)
    x, w, b = (cp.asarray(inputs[k]) for k in ("x", "w", "b"))
    y = conv_cuda.conv_forward(x, w, b, relu=True)
    assert lab.rel_error(cp.asnumpy(y), lab.ref_forward(inputs["x"], inputs["w"], inputs["b"], True)) < 1e-5
    gy = cp.asarray(np.random.default_rng(2).standard_normal(y.shape, dtype=np.float32))
    gx = conv_cuda.conv_backward_data(gy, w)
    gw = conv_cuda.conv_backward_weight(x, gy, 3)
    gb = conv_cuda.conv_backward_bias(gy)
    assert lab.rel_error(cp.asnumpy(gx), lab.ref_backward_data(cp.asnumpy(gy), inputs["w"])) < 1e-5
    assert lab.rel_error(cp.asnumpy(gw), lab.ref_backward_weight(inputs["x"], cp.asnumpy(gy), 3)) < 1e-5
    assert lab.rel_error(cp.asnumpy(gb), cp.asnumpy(gy).astype(np.float64).sum(axis=(0, 2, 3))) < 1e-5
    entries = autotune.load(tmp_path / "a.json")
    assert {k.split("|")[0] for k in entries} == {"fwd", "bwd_data", "bwd_weight"}
    # Non-contiguous input is accepted (copied), and inputs are not modified.
    xt = cp.asfortranarray(x)
    x_before = x.copy()
    y2 = conv_cuda.conv_forward(xt, w, b, relu=True, version="v4")
    assert float(cp.abs(y2 - y).max()) < 1e-4 and bool((x == x_before).all())
    autotune.forget_memory()


@requires_gpu
def test_gpu_errors_name_the_op_and_shapes():
    import cupy as cp
    x = cp.zeros((2, 8, 5, 5), cp.float32)
    with pytest.raises(ValueError, match=r"conv_forward.*\(2, 8, 5, 5\)"):
        conv_cuda.conv_forward(x, cp.zeros((4, 8, 7, 7), cp.float32))
    with pytest.raises(ValueError, match="float32"):
        conv_cuda.conv_forward(x.astype(cp.float64), cp.zeros((4, 8, 3, 3), cp.float64))
    with pytest.raises(ValueError, match="conv_backward_weight"):
        conv_cuda.conv_backward_weight(x, cp.zeros((2, 4, 6, 6), cp.float32), 3)
    with pytest.raises(ValueError, match="cupy"):
        conv_cuda.conv_forward(np.zeros((2, 8, 5, 5), np.float32), np.zeros((4, 8, 3, 3), np.float32))


@requires_gpu
def test_gpu_backward_weight_is_deterministic():
    import cupy as cp
    p = Problem(8, 64, 14, 14, 96, 3)
    inputs = lab.make_inputs("bwd_weight", p, 0)
    x, gy = cp.asarray(inputs["x"]), cp.asarray(inputs["gy"])
    a = conv_cuda.conv_backward_weight(x, gy, 3, version="v2")
    b = conv_cuda.conv_backward_weight(x, gy, 3, version="v2")
    assert bool((a == b).all())
