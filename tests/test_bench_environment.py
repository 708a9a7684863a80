"""The convolution bench measures in the user's default environment: run as a command with
OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE set, its measuring process must not see them (unless
--keep-openblas-env), and its JSON must say what was removed and which BLAS ran."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from bench.environment import OPENBLAS_OVERRIDES, user_env

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576"}


def _bench(tmp_path, *extra) -> dict:
    """A tiny CPU run (one 7x7 layer, batch 1, our im2col only: no PyTorch needed) started
    as a user would start it, with the overrides in its environment; its JSON report."""
    out = tmp_path / "conv.json"
    env = {**os.environ, **OVERRIDES,
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.conv_throughput", "--device", "cpu", "--batch", "1",
         "--only", "inception_5a.conv_5x5_reduce", "--impls", "im2col", "--directions", "fwd",
         "--repeat", "1", "--warmup", "0", "--json", str(out), *extra],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["results"] and all(r["ms"] for r in report["results"])
    return report, proc.stdout


def _openblas(report) -> dict | None:
    return next((lib for lib in report["blas"] if lib.get("internal_api") == "openblas"), None)


def _has_avx512() -> bool:
    try:
        return " avx512f " in Path("/proc/cpuinfo").read_text().replace("\n", " ")
    except OSError:
        return False


def test_user_env_drops_only_the_overrides():
    env = user_env({**OVERRIDES, "PATH": "/bin", "OPENBLAS_NUM_THREADS": "1"})
    assert env == {"PATH": "/bin", "OPENBLAS_NUM_THREADS": "1"}
    assert set(OPENBLAS_OVERRIDES) == set(OVERRIDES)


def test_conv_bench_measures_without_the_openblas_overrides(tmp_path):
    report, printed = _bench(tmp_path)
    env = report["openblas_env"]
    assert env["removed"] == sorted(OVERRIDES) and env["kept"] == {}
    # What the measuring process itself read from its environment.
    assert env["measured_process"] == {k: None for k in OVERRIDES}
    assert report["blas"] and all(lib.get("internal_api") for lib in report["blas"])
    assert "removed (user default): OPENBLAS_CORETYPE, OPENBLAS_L2_SIZE" in printed
    assert "BLAS: " in printed
    assert "--worker" not in report["command"]
    lib = _openblas(report)
    if lib and lib.get("architecture") and _has_avx512():
        # OpenBLAS chose for the CPU itself, not the AVX2 kernels the override forces.
        assert lib["architecture"].lower() != "haswell"


def test_conv_bench_keeps_them_when_asked(tmp_path):
    report, printed = _bench(tmp_path, "--keep-openblas-env")
    env = report["openblas_env"]
    assert env["removed"] == [] and env["kept"] == OVERRIDES
    assert env["measured_process"] == OVERRIDES
    assert "kept: OPENBLAS_CORETYPE=Haswell" in printed
    lib = _openblas(report)
    if lib and lib.get("architecture") and platform.machine() in ("x86_64", "AMD64"):
        # OpenBLAS obeyed the override it was loaded with: the record shows what ran.
        assert lib["architecture"].lower() == "haswell"
