"""Run the CUDA kernels' launch plans on the CPU, for checking index maths without a GPU.

``kernels/cuda/host_emu.cuh`` makes a kernel source compile as host C++: every CUDA thread of a
block becomes an OS thread, ``__syncthreads()`` a ``std::barrier``, ``__shared__`` a static array,
and blocks run one after another. This module generates a small C++ wrapper per kernel instance,
builds it with g++ into a shared library (cached on disk, keyed by the sources' text), and runs a
:class:`kernels.conv_cuda.Plan` on NumPy arrays through ctypes, exactly as ``conv_cuda.execute``
runs it on the GPU: same grid, same block, same arguments, NaN-poisoned outputs.

It is slow (a thread per CUDA thread, blocks in sequence), so it is for tiny shapes only, but it
exercises the real kernel code, including the bounds checks, the float4 paths and split-K.
What it cannot show: races that depend on real parallel timing inside a warp, performance, and
anything the device compiler does differently from g++ (the lab on a GPU covers those).

Cache directory: ``GOOGLENET_EMU_CACHE``, default ``~/.cache/googlenet_engine/emu``.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .conv_cuda import KERNEL_DIR, Call, Plan

HEADER = KERNEL_DIR / "host_emu.cuh"
CXX_FLAGS = ("-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w")


def compiler() -> str | None:
    """The C++ compiler used (env CXX, else g++), or None when there is none."""
    cxx = os.environ.get("CXX", "g++")
    return shutil.which(cxx)


def available() -> bool:
    return compiler() is not None


def cache_dir() -> Path:
    env = os.environ.get("GOOGLENET_EMU_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "googlenet_engine" / "emu"


def _signature(call: Call) -> list[str]:
    return ["float*" if isinstance(a, str) else "int" for a in call.args]


def _wrapper_source(source: str, calls: list[Call]) -> str:
    lines = [f'#include "{HEADER.resolve()}"', f'#include "{(KERNEL_DIR / source).resolve()}"', ""]
    for i, call in enumerate(calls):
        params = ", ".join(f"{t} a{j}" for j, t in enumerate(_signature(call)))
        args = ", ".join(f"a{j}" for j in range(len(call.args)))
        lines += [
            f'extern "C" void emu_{i}(unsigned gx, unsigned gy, unsigned gz, '
            f"unsigned bx, unsigned by, unsigned bz, {params}) {{",
            f"    emu::launch(dim3(gx, gy, gz), dim3(bx, by, bz), [=] {{ {call.name}({args}); }});",
            "}",
            "",
        ]
    return "\n".join(lines)


@functools.cache
def _library(source: str, calls: tuple[Call, ...]):
    """Build (or reuse) the shared library wrapping ``calls`` of ``source``; return (CDLL, index)."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("kernels.emu needs a C++20 compiler (g++); none was found")
    code = _wrapper_source(source, list(calls))
    digest = hashlib.sha256("\0".join(
        [code, HEADER.read_text(), (KERNEL_DIR / source).read_text(), " ".join(CXX_FLAGS), cxx]
    ).encode()).hexdigest()[:20]
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    lib_path = out_dir / f"{Path(source).stem}_{digest}.so"
    if not lib_path.exists():
        with tempfile.TemporaryDirectory() as tmp:
            cpp = Path(tmp) / "wrap.cpp"
            cpp.write_text(code)
            tmp_lib = Path(tmp) / "lib.so"
            res = subprocess.run([cxx, *CXX_FLAGS, str(cpp), "-o", str(tmp_lib)],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"emulation build of {source} failed:\n{res.stderr[-4000:]}")
            # Another process may build the same library at the same time: replace atomically.
            staged = out_dir / f".{lib_path.name}.{os.getpid()}"
            shutil.copyfile(tmp_lib, staged)
            os.replace(staged, lib_path)
    lib = ctypes.CDLL(str(lib_path))
    index = {}
    for i, call in enumerate(calls):
        fn = getattr(lib, f"emu_{i}")
        fn.restype = None
        fn.argtypes = [ctypes.c_uint] * 6 + [
            ctypes.c_void_p if t == "float*" else ctypes.c_int for t in _signature(call)]
        index[call.name] = fn
    return lib, index


def _template_of(call: Call) -> Call:
    """A canonical call for a kernel name: the wrapper depends only on name and argument kinds."""
    kinds = tuple("p" if isinstance(a, str) else 0 for a in call.args)
    return Call(call.source, call.name, (1, 1, 1), (1, 1, 1), kinds)


def execute(pl: Plan, buffers: dict, *, poison: bool = True) -> np.ndarray:
    """Run ``pl`` on NumPy float32 arrays ``buffers`` (by name); return the output array."""
    bufs = {}
    for name, a in buffers.items():
        a = np.ascontiguousarray(a, dtype=np.float32)
        bufs[name] = a
    fill = np.nan if poison else 0.0
    for name, shape in pl.temps:
        bufs[name] = np.full(shape, fill, dtype=np.float32)
    bufs[pl.output] = np.full(pl.output_shape, fill, dtype=np.float32)

    by_source: dict[str, dict[str, Call]] = {}
    for call in pl.calls:
        by_source.setdefault(call.source, {})[call.name] = _template_of(call)
    for call in pl.calls:
        templates = tuple(sorted(by_source[call.source].values(), key=lambda c: c.name))
        _, index = _library(call.source, templates)
        fn = index[call.name]
        args = []
        for a in call.args:
            if isinstance(a, str):
                args.append(ctypes.c_void_p(bufs[a].ctypes.data))
            else:
                args.append(ctypes.c_int(int(a)))
        fn(*[ctypes.c_uint(int(v)) for v in (*call.grid, *call.block)], *args)
    return bufs[pl.output]
