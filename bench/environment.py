"""What every bench shares about the environment it measures in, and how it writes reports.

Benchmarks measure what a user gets. Some machines set ``OPENBLAS_CORETYPE`` (which forces
OpenBLAS's kernels, e.g. ``Haswell``: AVX2 on an AVX-512 CPU) and ``OPENBLAS_L2_SIZE``
(its blocking) to steer old OpenBLAS builds; users' shells do not. OpenBLAS reads both once,
when it is loaded (on ``import numpy``), so a bench removes them from the environment of the
process it starts to measure (``user_env``) rather than from its own, and records what the
measuring process saw (``overrides_seen``) and the BLAS it loaded (``blas_info``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

# Set on some machines to steer old OpenBLAS builds; users' processes do not have them.
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def user_env(base: dict | None = None) -> dict:
    """``base`` (default: this process's environment) without the OpenBLAS overrides: what a
    user's shell gives a measured process."""
    return {k: v for k, v in (os.environ if base is None else base).items()
            if k not in OPENBLAS_OVERRIDES}


def overrides_seen() -> dict:
    """{name: value or None} of the OpenBLAS overrides in this process's environment."""
    return {k: os.environ.get(k) for k in OPENBLAS_OVERRIDES}


def blas_info() -> list[dict]:
    """The BLAS libraries this process loaded, as threadpoolctl sees them: library, version,
    the kernel core type OpenBLAS chose ("architecture") and its thread count."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"internal_api": "unknown (threadpoolctl not installed)"}]
    keys = ("user_api", "internal_api", "prefix", "version", "architecture", "num_threads",
            "threading_layer")
    return [{k: lib[k] for k in keys if k in lib} for lib in threadpool_info()
            if lib.get("user_api") == "blas"]


def blas_text(lib: dict) -> str:
    """'openblas 0.3.31 (SkylakeX kernels, 2 threads)' from a ``blas_info`` record."""
    extra = [f"{lib['architecture']} kernels"] if lib.get("architecture") else []
    if lib.get("num_threads") is not None:
        extra.append(f"{lib['num_threads']} threads")
    if lib.get("threading_layer"):
        extra.append(f"{lib['threading_layer']} layer")
    return (f"{lib.get('internal_api', '?')} {lib.get('version') or ''}".strip()
            + (f" ({', '.join(extra)})" if extra else ""))


def write_report(path, report: dict) -> None:
    """``report`` as indented JSON at ``path`` (folders created); says where."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    print(f"wrote {path}")
