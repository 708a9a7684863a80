"""The CUDA side of kernels.conv_cuda, tested on the CPU against a stand-in CuPy.

What a first run on a GPU would otherwise find: the device probe and per-device caches, the
launcher's error classes and messages (a fault names kernel, config and shape), the real
launcher running plans through the CPU emulation, the autotuner refusing a fast wrong
candidate and surfacing a fault, the sources' hash, and the benchmark's device facts read the
way CuPy 14 allows.
"""
from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from kernels import autotune, conv_cuda, emu, lab
from kernels.conv_cuda import Problem, device, launcher, select, sources

try:
    from tests import fake_cupy
except ImportError:
    import fake_cupy

requires_emu = pytest.mark.skipif(not emu.available(), reason="needs g++ (C++20) for kernels.emu")


@pytest.fixture
def fake_cuda(monkeypatch, tmp_path):
    """device.cupy() returns a fake CuPy with two devices; kernels run in the emulation."""
    fake = fake_cupy.make()
    monkeypatch.setattr(device, "cupy", lambda: fake)
    monkeypatch.setenv("GOOGLENET_AUTOTUNE_CACHE", str(tmp_path / "autotune.json"))
    device.forget()
    autotune.forget_memory()
    yield fake
    device.forget()
    autotune.forget_memory()


# ============================================================================ probe, facts, modules

def test_probe_gives_one_line_reasons(monkeypatch):
    def no_cupy():
        raise ModuleNotFoundError("No module named 'cupy'")
    monkeypatch.setattr(device, "cupy", no_cupy)
    assert device.unusable_reason() == "CuPy is not importable (ModuleNotFoundError: No module named 'cupy')"

    fake = fake_cupy.make(devices={})
    monkeypatch.setattr(device, "cupy", lambda: fake)
    assert device.unusable_reason() == "CuPy sees no CUDA device"

    fake = fake_cupy.make()

    def broken(*a, **k):
        raise RuntimeError("cudaErrorNoDevice: no CUDA-capable device is detected\nmore text")
    fake.arange = broken
    monkeypatch.setattr(device, "cupy", lambda: fake)
    why = device.unusable_reason()
    assert why.startswith("no CUDA device answers (RuntimeError: cudaErrorNoDevice") and "\n" not in why

    monkeypatch.setattr(device, "cupy", lambda: fake_cupy.make())
    assert device.unusable_reason() is None


def test_device_facts_are_cached_per_device(fake_cuda):
    h200, a100 = device.info(0), device.info(1)
    assert (h200.sm_count, h200.compute_capability, h200.arch) == (132, (9, 0), "sm_90")
    assert (a100.sm_count, a100.compute_capability) == (108, (8, 0))
    assert h200.clock_mhz == 1980.0 and h200.as_dict()["compute_capability"] == "9.0"
    assert conv_cuda.device_sm_count() == 132
    with fake_cuda.cuda.Device(1):
        assert conv_cuda.device_sm_count() == 108 and conv_cuda.device_name() == "Fake A100"
    assert conv_cuda.device_sm_count() == 132 and conv_cuda.device_name() == "Fake H200"


def test_compute_capability_strings():
    assert device.parse_compute_capability("90") == (9, 0)
    assert device.parse_compute_capability("86") == (8, 6)
    assert device.parse_compute_capability("100") == (10, 0)
    with pytest.raises(ValueError, match="compute capability"):
        device.parse_compute_capability("9.0")


def test_compiled_modules_are_per_device_and_hold_every_instance(fake_cuda):
    m0 = device.module("conv_fwd_v4.cu")
    with fake_cuda.cuda.Device(1):
        m1 = device.module("conv_fwd_v4.cu")
    assert m0 is not m1 and (m0.device, m1.device) == (0, 1)
    assert device.module("conv_fwd_v4.cu") is m0 and m0.compiled == 1
    assert device.module("conv_fwd_v4.cu", 1) is m1
    assert list(m0.names) == conv_cuda.all_instances()["conv_fwd_v4.cu"]
    # NVRTC gets self-contained text: the shared micro-kernel inlined, no local include left.
    assert '#include "' not in m0.code and "void tile_fma(" in m0.code
    assert len(fake_cuda.state["modules"]) == 2


def test_sources_are_inlined_once_and_hashed_with_the_plan_code(tmp_path):
    kdir, pdir = tmp_path / "cuda", tmp_path / "pkg"
    shutil.copytree(conv_cuda.KERNEL_DIR, kdir)
    pdir.mkdir()
    for name in sources.PLAN_FILES:
        shutil.copy(sources.PACKAGE_DIR / name, pdir / name)
    text = sources.source_text("conv_bwd_weight_v2.cu", kdir)
    assert text.count("void tile_fma(") == 1 and '#include "' not in text
    base = sources.sources_tag(kdir, pdir)
    assert base == sources.sources_tag(kdir, pdir)
    edits = [kdir / "tile_fma.cuh", kdir / "conv_fwd_v4.cu", pdir / "planning.py", pdir / "tables.py"]
    seen = {base}
    for path in edits:
        before = path.read_text()
        path.write_text(before + "\n// edited\n")
        tag = sources.sources_tag(kdir, pdir)
        assert tag not in seen, f"editing {path.name} did not change the tag"
        seen.add(tag)
        path.write_text(before)
    assert sources.sources_tag(kdir, pdir) == base
    (kdir / "missing.cu").write_text('#include "nope.cuh"\n')
    with pytest.raises(FileNotFoundError, match="nope.cuh"):
        sources.source_text("missing.cu", kdir)


# ============================================================================ launcher errors

P = Problem(2, 12, 6, 6, 10, 3)
CFG = (64, 64, 8, 4, 4)


def _fwd_plan():
    return conv_cuda.plan("fwd", "v4", CFG, P, has_bias=True, relu=True, sm_count=132)


def _inputs(direction="fwd", problem=P):
    return lab.make_inputs(direction, problem, 0)


@pytest.mark.parametrize("message, cls, when", [
    ("CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered", conv_cuda.KernelFault, "launch"),
    ("cudaErrorMisalignedAddress: misaligned address", conv_cuda.KernelFault, "sync"),
    ("CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES: too many resources requested for launch",
     conv_cuda.LaunchRejected, "launch"),
    ("CUDA_ERROR_INVALID_HANDLE: invalid resource handle", conv_cuda.KernelError, "launch"),
])
def test_launch_errors_name_kernel_config_and_shape(fake_cuda, monkeypatch, message, cls, when):
    def failing(source, name):
        def fn(grid, block, args):
            raise RuntimeError(message)
        return fn

    if when == "launch":
        monkeypatch.setattr(device, "function", failing)
    else:
        monkeypatch.setattr(device, "function", lambda s, n: (lambda g, b, a: None))
        fake_cuda.state["sync_error"] = RuntimeError(message)
    pl = _fwd_plan()
    with pytest.raises(cls) as err:
        launcher.execute(pl, _inputs(), check=True)
    text = str(err.value)
    assert type(err.value) is cls
    assert "conv_fwd_v4<64, 64, 8, 4, 4, 3, true>" in text and "64x64x8/4x4" in text
    assert "(2, 12, 6, 6, 10, 3)" in text and message.split(":")[0] in text
    assert ("while running" in text) == (when == "sync")


def test_unsynchronised_launches_do_not_wait(fake_cuda, monkeypatch):
    monkeypatch.setattr(device, "function", lambda s, n: (lambda g, b, a: None))
    monkeypatch.delenv("GOOGLENET_CUDA_SYNC", raising=False)
    launcher.execute(_fwd_plan(), _inputs())
    assert fake_cuda.state["syncs"] == 0
    monkeypatch.setenv("GOOGLENET_CUDA_SYNC", "1")
    launcher.execute(_fwd_plan(), _inputs())
    assert fake_cuda.state["syncs"] == 1


@requires_emu
@pytest.mark.parametrize("direction, version, config, problem", [
    ("fwd", "v4", (64, 64, 8, 4, 4), Problem(2, 12, 6, 6, 10, 3)),
    ("bwd_data", "v4", (32, 32, 8, 4, 4), Problem(2, 6, 7, 7, 9, 5)),
    ("bwd_weight", "v2", (32, 64, 16, 4, 4), Problem(2, 3, 16, 16, 7, 3)),   # split-K + reduce
])
def test_the_cupy_launcher_runs_plans_correctly_through_the_emulation(
        fake_cuda, direction, version, config, problem):
    inputs = _inputs(direction, problem)
    pl = conv_cuda.plan(direction, version, config, problem, has_bias="b" in inputs,
                        relu=direction == "fwd", sm_count=132)
    out = launcher.execute(pl, inputs, poison=True, check=True)
    ref = lab.reference(direction, problem, inputs, relu=direction == "fwd")
    assert not np.isnan(out).any()
    assert lab.rel_error(out, ref) < lab.tolerance(direction, problem)


# ============================================================================ autotuner on the CPU

class EmuRunner(select.CudaRunner):
    """The autotuner's runner on the emulated device, with made-up timings and, optionally,
    one config whose results are corrupted (as a kernel with a race would be)."""

    def __init__(self, times, corrupt=None):
        self.times, self.corrupt, self.current, self.validated = times, corrupt, None, []

    def run(self, pl, buffers, *, check, poison=False):
        self.current = pl.config
        if poison:
            self.validated.append(pl.config)
        out = super().run(pl, buffers, check=check, poison=poison)
        if pl.config == self.corrupt:
            out.reshape(-1)[::7] += 0.5
        return out

    def time(self, fn, warmup=2, repeat=7):
        fn()
        return self.times[self.current]


@requires_emu
def test_a_fast_wrong_config_never_wins_the_autotune(fake_cuda):
    problem = Problem(3, 12, 6, 6, 10, 3)
    configs = conv_cuda.configs("fwd", "v4")
    times = {cfg: 1.0 + i for i, cfg in enumerate(configs)}
    wrong = configs[3]
    times[wrong] = 0.01
    runner = EmuRunner(times, corrupt=wrong)
    buffers = _inputs("fwd", problem)
    choice = select.tuned_choice("fwd", problem, buffers, has_bias=True, relu=True, sm_count=132,
                                 device_tag="Fake H200 sm_90", runner=runner)
    assert choice == ("v4", configs[0])
    assert sorted(runner.validated) == sorted(configs)   # every candidate was checked first
    (entry,) = autotune.load().values()
    assert list(entry["rejected"]) == ["v4:" + "x".join(map(str, wrong))]
    assert "rel error" in entry["rejected"]["v4:" + "x".join(map(str, wrong))]
    # Without validation the wrong one would have won: the times alone favour it.
    assert min(times, key=times.get) == wrong


@requires_emu
def test_a_fault_during_autotuning_surfaces_with_kernel_config_and_shape(fake_cuda, monkeypatch):
    bad = "conv_fwd_v4<64, 64, 8, 4, 4, 3, true>"
    real = device.function

    def function(source, name):
        if name == bad:
            def fault(grid, block, args):
                raise RuntimeError("CUDA_ERROR_ILLEGAL_ADDRESS: an illegal memory access was encountered")
            return fault
        return real(source, name)

    monkeypatch.setattr(device, "function", function)
    problem = Problem(2, 12, 6, 6, 10, 3)
    times = {cfg: 1.0 for cfg in conv_cuda.configs("fwd", "v4")}
    with pytest.raises(conv_cuda.KernelFault) as err:
        select.tuned_choice("fwd", problem, _inputs("fwd", problem), has_bias=True, relu=True,
                            sm_count=132, device_tag="Fake H200 sm_90", runner=EmuRunner(times))
    text = str(err.value)
    assert bad in text and "64x64x8/4x4" in text and "(2, 12, 6, 6, 10, 3)" in text
    assert autotune.load() == {}   # nothing cached from a run that faulted


@requires_emu
def test_public_api_end_to_end_on_the_emulated_device(fake_cuda):
    """conv_forward / conv_backward_* as layers call them (version=None: validated autotuning),
    on the stand-in device, against the float64 reference; the cache holds one entry per
    direction, keyed with the device and the toolchain."""
    p = Problem(2, 12, 7, 7, 10, 3)
    inputs = lab.make_inputs("fwd", p, 1)
    x, w, b = inputs["x"], inputs["w"], inputs["b"]
    gy = np.random.default_rng(2).standard_normal((2, 10, 7, 7), dtype=np.float32)
    y = conv_cuda.conv_forward(x, w, b, relu=True)
    assert lab.rel_error(y, lab.ref_forward(x, w, b, relu=True)) < 1e-5
    assert lab.rel_error(conv_cuda.conv_backward_data(gy, w), lab.ref_backward_data(gy, w)) < 1e-5
    assert lab.rel_error(conv_cuda.conv_backward_weight(x, gy, 3),
                         lab.ref_backward_weight(x, gy, 3)) < 1e-5
    assert lab.rel_error(conv_cuda.conv_backward_bias(gy), lab.ref_backward_bias(gy)) < 1e-5
    entries = autotune.load()
    assert sorted(k.split("|")[0] for k in entries) == ["bwd_data", "bwd_weight", "fwd"]
    assert all("Fake H200 sm_90" in k and "cupy 14.2.0-fake" in k for k in entries)
    assert all(not e["rejected"] for e in entries.values())
    y2 = conv_cuda.conv_forward(x, w, b, relu=True, version="v3", config=(32, 32, 8, 4, 4))
    assert float(np.abs(y2 - y).max()) < 1e-4


def test_the_cache_key_carries_flags_device_and_toolchain(fake_cuda, monkeypatch):
    keys = []

    def fake_best(key, candidates, measure, **kw):
        keys.append(key)
        return candidates[0]

    monkeypatch.setattr(autotune, "best", fake_best)
    problem = Problem(2, 12, 6, 6, 10, 1)
    for aligned in (True, False):
        for sm in (132, 108):
            select.tuned_choice("fwd", problem, {}, has_bias=True, relu=True, aligned=aligned,
                                sm_count=sm, device_tag="Fake H200 sm_90", toolchain_tag="cupy 14")
    select.tuned_choice("fwd", problem, {}, has_bias=True, relu=True, sm_count=132,
                        device_tag="Fake H200 sm_90", toolchain_tag="cupy 15")
    assert len(set(keys)) == 5
    assert all(autotune.sources_tag() in k for k in keys)


# ============================================================================ benchmark device facts

def test_bench_reads_compute_capability_the_way_cupy_14_allows(fake_cuda, monkeypatch):
    from bench import conv_throughput as bench
    monkeypatch.setitem(sys.modules, "cupy", fake_cuda)
    assert not hasattr(fake_cuda.cuda.runtime, "cudaDevAttrComputeCapabilityMajor")
    facts = bench.device_facts("cuda")
    assert facts["compute_capability"] == "9.0" and facts["sm_count"] == 132
    assert facts["fp32_lanes_per_sm"] == 128
    assert facts["peak_tflops"] == pytest.approx(132 * 1.98e9 * 128 * 2 / 1e12, abs=0.01)
    with fake_cuda.cuda.Device(1):
        device.forget()
        assert bench.device_facts("cuda")["fp32_lanes_per_sm"] == 64   # sm_80
