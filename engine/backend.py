"""Where arrays live: NumPy on the CPU, CuPy on an NVIDIA GPU.

Every op is written once against an *array module* ``xp`` (``numpy`` or ``cupy``)
picked from its inputs, the way Chainer does it. Only this file knows that CuPy
exists; everything else asks :func:`get_array_module`.
"""
from __future__ import annotations

import contextlib
import functools
import importlib

import numpy as np

_cupy = None          # the cupy module once imported successfully
_cupy_error = None    # why CuPy is unusable, when it is

INSTALL_HINT = (
    "device='cuda' needs CuPy and an NVIDIA GPU. Install the CuPy wheel that matches your "
    "CUDA driver: `pip install cupy-cuda12x` (CUDA 12.x) or `pip install cupy-cuda13x` "
    "(CUDA 13.x), or `pip install -e .[cuda]`; `nvidia-smi` shows the CUDA version."
)


def _load_cupy():
    """Import CuPy and check that a device answers; remember the failure otherwise."""
    global _cupy, _cupy_error
    if _cupy is not None or _cupy_error is not None:
        return _cupy
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install
        _cupy_error = f"CuPy is not importable ({exc.__class__.__name__}: {exc})"
        return None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        _cupy_error = f"CuPy is installed but no CUDA device answers ({exc})"
        return None
    if count < 1:
        _cupy_error = "CuPy is installed but it sees no CUDA device"
        return None
    _cupy = cupy
    return cupy


def cuda_available() -> bool:
    """True when CuPy imports and at least one CUDA device is present."""
    return _load_cupy() is not None


def require_cuda():
    """Return the cupy module, or raise a RuntimeError that says what to install."""
    cp = _load_cupy()
    if cp is None:
        raise RuntimeError(f"{INSTALL_HINT} ({_cupy_error})")
    return cp


def is_cupy_array(a) -> bool:
    # Checking the class name avoids importing CuPy just to learn an array is NumPy (and a
    # NumPy array, the usual case, is answered before the name is even looked up).
    kind = type(a)
    return kind is not np.ndarray and kind.__module__.startswith("cupy")


def get_array_module(*arrays):
    """``cupy`` if any argument is a CuPy array, else ``numpy``."""
    for a in arrays:
        if is_cupy_array(a):
            return require_cuda()
    return np


def device_of(a) -> str:
    return "cuda" if is_cupy_array(a) else "cpu"


def normalize_device(device) -> str:
    """Accept 'cpu', 'cuda', 'cuda:0', 'gpu' and 'auto'; return 'cpu' or 'cuda'."""
    if device is None:
        return "cpu"
    name = str(device).lower()
    if name == "auto":
        return "cuda" if cuda_available() else "cpu"
    if name in ("cpu",):
        return "cpu"
    if name in ("cuda", "gpu") or name.startswith("cuda:"):
        require_cuda()
        return "cuda"
    raise ValueError(f"unknown device {device!r}: expected 'cpu', 'cuda' or 'auto'")


def to_device(a, device: str):
    """Copy an array to ``device`` ('cpu' or 'cuda'); a no-op when it is already there."""
    device = normalize_device(device)
    if device == "cpu":
        return a.get() if is_cupy_array(a) else np.asarray(a)
    cp = require_cuda()
    return a if is_cupy_array(a) else cp.asarray(a)


def to_numpy(a) -> np.ndarray:
    return a.get() if is_cupy_array(a) else np.asarray(a)


# ---------------------------------------------------------------- gradient sums
# Autograd adds and copies gradients between ops: a tensor used four times (an Inception
# module's input) receives four gradients to sum. On NumPy arrays these whole-array passes
# are shared among the CPU kernels' threads (kernels.cpu.arrays: the same sums, bitwise),
# instead of leaving the other cores idle while the main thread makes them.
def _cpu_arrays(a):
    if is_cupy_array(a) or not isinstance(a, np.ndarray):
        return None
    return cpu_kernels("arrays")


@functools.cache
def cpu_kernels(name: str = ""):
    """``kernels.cpu`` (or its module ``name``), imported at the first call, so that Numba is
    loaded only once a CPU kernel is wanted. After that a cached lookup: an import statement
    inside a function runs importlib's Python code at every call, several hundred times a
    training step, each call slower there than alone (the kernels' data has pushed the
    interpreter's out of the caches)."""
    return importlib.import_module("kernels.cpu" + (f".{name}" if name else ""))


def add(a, b):
    """a + b as a new array."""
    kernels = _cpu_arrays(a)
    return a + b if kernels is None else kernels.add(a, b)


def add_into(a, b) -> None:
    """a += b."""
    kernels = _cpu_arrays(a)
    if kernels is None:
        a += b
    else:
        kernels.add_into(a, b)


def copy(a):
    """A copy of a that owns its memory."""
    kernels = _cpu_arrays(a)
    return a.copy() if kernels is None else kernels.copy(a)


# ---------------------------------------------------------------- randomness
# One seeded generator per backend, so dropout masks and initialisations are
# reproducible under ``manual_seed`` whatever the device.
_generators: dict = {}
_seed = 0


def manual_seed(seed: int) -> None:
    """Reseed the engine's random generators (NumPy, and CuPy when used)."""
    global _seed
    _seed = int(seed)
    _generators.clear()


def random_generator(xp=np):
    """The engine's generator for ``xp``: ``numpy.random.Generator`` or CuPy's."""
    key = xp.__name__
    if key not in _generators:
        if xp is np:
            _generators[key] = np.random.default_rng(_seed)
        else:
            _generators[key] = xp.random.default_rng(_seed)
    return _generators[key]


def get_rng_state() -> dict:
    """The NumPy generator's state (JSON-able), for checkpoints."""
    return {"seed": _seed, "numpy": random_generator(np).bit_generator.state}


def set_rng_state(state: dict) -> None:
    manual_seed(state["seed"])
    random_generator(np).bit_generator.state = state["numpy"]


# ---------------------------------------------------------------- per-sample randomness
# Inside ``per_sample_random(keys)``, random draws for a batch are made sample by sample: row
# k of the n-th draw comes from ``default_rng([*keys[k], n])``. A sample's dropout mask then
# depends on the sample (the trainer keys it by seed, epoch and dataset index), not on the
# batch it lands in or on the process that computes it, which is what makes data-parallel
# training give the same result on any number of processes.
_sample_keys = None
_sample_draws = 0


@contextlib.contextmanager
def per_sample_random(keys):
    """Within the block, ``uniform`` draws row k from a generator seeded by ``keys[k]``
    (a sequence of non-negative ints) and the draw's number (1, 2, ...) in the block."""
    global _sample_keys, _sample_draws
    previous = _sample_keys, _sample_draws
    _sample_keys, _sample_draws = [list(map(int, k)) for k in keys], 0
    try:
        yield
    finally:
        _sample_keys, _sample_draws = previous


def uniform(shape, dtype, xp=np):
    """Numbers uniform in [0, 1) of ``shape`` and ``dtype`` on ``xp``'s device: from the
    engine's generator, or sample by sample inside ``per_sample_random``."""
    global _sample_draws
    if _sample_keys is None:
        return random_generator(xp).random(shape, dtype=dtype)
    if not shape or shape[0] != len(_sample_keys):
        raise ValueError(f"per_sample_random: a draw of shape {tuple(shape)} does not have one "
                         f"row per key ({len(_sample_keys)} keys)")
    _sample_draws += 1    # from 1: a trailing 0 would seed like the key without it
    rows = [np.random.default_rng(key + [_sample_draws]).random(shape[1:], dtype=dtype)
            for key in _sample_keys]
    out = np.stack(rows) if rows else np.empty(shape, dtype)
    return out if xp is np else xp.asarray(out)
