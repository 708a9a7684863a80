"""Run the CUDA kernels' launch plans on the CPU, for checking index maths without a GPU.

``kernels/cuda/host_emu.cuh`` makes a kernel source compile as host C++: every CUDA thread of a
block becomes an OS thread, ``__syncthreads()`` a ``std::barrier``, ``__shared__`` a static array,
and blocks run one after another. This module generates a small C++ wrapper per kernel instance,
builds it with g++ into a shared library (one per kernel source, holding every template
instance plans can launch; cached on disk, keyed by the sources' text), and runs a
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
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from .conv_cuda import KERNEL_DIR, Call, Plan
from .conv_cuda.planning import all_calls

HEADER = KERNEL_DIR / "host_emu.cuh"
CXX_FLAGS = ("-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-w")
# GOOGLENET_EMU_SANITIZE=thread|address builds the kernels with a sanitizer (kernels.sanitize
# runs them so, in a child process that preloads the sanitizer's runtime).
SANITIZE_FLAGS = {
    "thread": ("-fsanitize=thread", "-g"),
    "address": ("-fsanitize=address,undefined", "-fno-sanitize-recover=all",
                "-fno-omit-frame-pointer", "-g"),
}


def compiler() -> str | None:
    """The C++ compiler used (env CXX, else g++), or None when there is none."""
    cxx = os.environ.get("CXX", "g++")
    return shutil.which(cxx)


def available() -> bool:
    return compiler() is not None


def sanitizer() -> str | None:
    """The sanitizer the emulation is built with (GOOGLENET_EMU_SANITIZE), or None."""
    name = os.environ.get("GOOGLENET_EMU_SANITIZE", "").strip().lower()
    if not name:
        return None
    if name not in SANITIZE_FLAGS:
        raise ValueError(f"GOOGLENET_EMU_SANITIZE={name!r}: expected one of {sorted(SANITIZE_FLAGS)}")
    return name


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


def _dependencies(source: str) -> str:
    """The text of everything the wrapper compiles: the headers and the kernel source."""
    parts = [HEADER.read_text(), (KERNEL_DIR / source).read_text()]   # an absolute source stays itself
    parts += [p.read_text() for p in sorted(KERNEL_DIR.glob("*.cuh"))]
    return "\0".join(parts)


_loaded: dict[tuple, tuple] = {}   # (sanitizer mode, source, instance) -> (function, signature, lib)


def _library(source: str, mode: str | None, names: tuple | None = None, calls=None) -> None:
    """Build (or reuse) one shared library holding the instances ``names`` of ``source``
    (default: every instance plans can launch) and register its functions. ``calls`` gives
    the instances of a source that is not one of the lab's (a path; its calls' argument kinds
    are the signatures). One g++ run per library, cached on disk by content."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("kernels.emu needs a C++20 compiler (g++); none was found")
    if calls is None:
        calls = [c for c in all_calls()[source] if names is None or c.name in names]
    flags = CXX_FLAGS + (SANITIZE_FLAGS[mode] if mode else ())
    code = _wrapper_source(source, calls)
    digest = hashlib.sha256("\0".join(
        [code, _dependencies(source), " ".join(flags), cxx]).encode()).hexdigest()[:20]
    out_dir = cache_dir()
    out_dir.mkdir(parents=True, exist_ok=True)
    lib_path = out_dir / f"{Path(source).stem}_{mode or 'plain'}_{digest}.so"
    if not lib_path.exists():
        with tempfile.TemporaryDirectory() as tmp:
            cpp = Path(tmp) / "wrap.cpp"
            cpp.write_text(code)
            tmp_lib = Path(tmp) / "lib.so"
            res = subprocess.run([cxx, *flags, str(cpp), "-o", str(tmp_lib)],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                raise RuntimeError(f"emulation build of {source} failed:\n{res.stderr[-4000:]}")
            # Another process may build the same library at the same time: replace atomically.
            staged = out_dir / f".{lib_path.name}.{os.getpid()}"
            shutil.copyfile(tmp_lib, staged)
            os.replace(staged, lib_path)
    lib = ctypes.CDLL(str(lib_path))
    for i, call in enumerate(calls):
        fn = getattr(lib, f"emu_{i}")
        fn.restype = None
        fn.argtypes = [ctypes.c_uint] * 6 + [
            ctypes.c_void_p if t == "float*" else ctypes.c_int for t in _signature(call)]
        _loaded[(mode, source, call.name)] = (fn, _signature(call), lib)


def _template_of(call: Call) -> Call:
    """A canonical call for a kernel name: the wrapper depends only on name and argument kinds."""
    kinds = tuple("p" if isinstance(a, str) else 0 for a in call.args)
    return Call(call.source, call.name, (1, 1, 1), (1, 1, 1), kinds)


def build(plans=None) -> None:
    """Build ahead of use: the instances that ``plans`` launch, one library per source, or
    (``plans=None``) every instance of every source. Sanitized builds are slow (tens of
    seconds per full source), so the sanitizer runs build only what their cases launch."""
    mode = sanitizer()
    if plans is None:
        for source in all_calls():
            _library(source, mode)
        return
    wanted: dict[str, set] = {}
    for pl in plans:
        for call in pl.calls:
            if (mode, call.source, call.name) not in _loaded:
                wanted.setdefault(call.source, set()).add(call.name)
    for source, names in sorted(wanted.items()):
        _library(source, mode, tuple(sorted(names)))


def function(call: Call):
    """(ctypes function, signature) running ``call``'s instance, built on first use: for the
    lab's sources a library with all their instances, for another source (a path: the
    walk-through's exercises) one with the instances of this call."""
    mode = sanitizer()
    key = (mode, call.source, call.name)
    if key not in _loaded:
        if call.source in all_calls():
            _library(call.source, mode)
        else:
            _library(call.source, mode, calls=[_template_of(call)])
    fn, sig, _ = _loaded[key]
    return fn, sig


def execute(pl: Plan, buffers: dict, *, poison: bool = True) -> np.ndarray:
    """Run ``pl`` on NumPy float32 arrays ``buffers`` (by name); return the output array."""
    bufs = {}
    for name, a in buffers.items():
        bufs[name] = np.ascontiguousarray(a, dtype=np.float32)
    fill = np.nan if poison else 0.0
    for name, shape in pl.temps:
        bufs[name] = np.full(shape, fill, dtype=np.float32)
    bufs[pl.output] = np.full(pl.output_shape, fill, dtype=np.float32)

    for call in pl.calls:
        fn, sig = function(call)
        if sig != _signature(call):
            raise RuntimeError(f"emu: {call.name} called with {_signature(call)}, built as {sig}")
        args = []
        for a in call.args:
            if isinstance(a, str):
                args.append(ctypes.c_void_p(bufs[a].ctypes.data))
            else:
                args.append(ctypes.c_int(int(a)))
        fn(*[ctypes.c_uint(int(v)) for v in (*call.grid, *call.block)], *args)
    return bufs[pl.output]
