"""Which code runs an op: its plain array code, a CPU kernel, or a CUDA kernel.

Every op has a *plain* path, written once over ``xp`` (NumPy or CuPy, the module of its
input): the reference that the tests check against naive loops and that the walk-through
reads. Some ops also have kernels, which take over where they exist:

    op          "cpu": NumPy arrays (kernels.cpu, Numba)   "cuda": CuPy arrays (kernels.conv_cuda)
    conv2d      every geometry                             stride-1 "same" 1x1/3x3/5x5, float32
    max_pool2d  every geometry                             -
    avg_pool2d  every geometry                             -
    lrn         every geometry                             -

An op subclasses :class:`KernelFunction`: it defines ``setup`` (checks the inputs, works out
what every path needs), ``forward_plain``/``backward_plain``, and where it has kernels
``forward_cpu``/``backward_cpu`` or ``forward_cuda``/``backward_cuda`` (with ``cpu_supports`` and
``cuda_supports`` saying which calls those kernels take). ``forward`` picks the path once, with
:func:`choose`; ``backward`` follows the same path.

The choice, in one place (:func:`choose`): the kernel for the input's kind of array when the
op has one and it can run (Numba importable; the CUDA kernels support the shape), else plain.
One switch forces the plain path everywhere: ``with layers.dispatch.use("plain"): ...``
(the tests' "numpy-plain" runs compare the two this way) or ``GOOGLENET_KERNELS=plain`` in
the environment, read at import. One call may ask for a path itself, e.g.
``conv2d(x, w, impl="cuda")``, which is an error when that kernel cannot run it.

``with pipelined(): ...`` around ops that each work image by image (an Inception module:
convolutions, pooling, concatenation) lets their CPU kernels run back to back on each
thread's images with one join for the block (:func:`kernels.cpu.parallel.pipeline`); an op
on another path first runs what is queued. A backward pass runs the same way as a whole
(:class:`KernelSchedule`, installed in the engine at import): ops on the CPU kernels queue
their per-image work, and anything else that reads a gradient (a plain op's backward, a
gradient hook) first runs the queue and queues nothing itself.
"""
from __future__ import annotations

import contextlib
import os
import sys

from engine import profile as _profile
from engine.backend import cpu_kernels, is_cupy_array
from engine.tensor import BackwardSchedule, Function, set_backward_schedule

MODES = ("auto", "plain", "cpu", "cuda")
# Earlier names of conv2d's impl argument, still accepted: "im2col" is its plain path and
# "custom" its CUDA kernels.
ALIASES = {"im2col": "plain", "custom": "cuda"}


def _check_mode(where: str, mode: str) -> str:
    mode = ALIASES.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"{where}: impl must be one of {MODES}, got {mode!r}")
    return mode


_mode = _check_mode("GOOGLENET_KERNELS", os.environ.get("GOOGLENET_KERNELS", "auto").strip())


def mode() -> str:
    """The global choice: "auto" (kernels where they exist) or "plain"."""
    return _mode


@contextlib.contextmanager
def use(new_mode: str):
    """``with use("plain"): ...`` runs every op in the block on its plain path;
    ``use("auto")`` restores the kernels (whatever the environment said)."""
    global _mode
    if new_mode not in ("auto", "plain"):
        raise ValueError(f"dispatch.use: mode must be 'auto' or 'plain', got {new_mode!r}")
    previous, _mode = _mode, new_mode
    try:
        yield
    finally:
        _mode = previous


def cpu_kernels_available() -> bool:
    return cpu_kernels().available()


@contextlib.contextmanager
def pipelined():
    """Queue the CPU kernels' per-image work of the ops called inside and run it at the end,
    each thread its own images through all of them (one join instead of one per op). For
    blocks made of ops with CPU kernels; an op on its plain or CUDA path first runs the
    queue. Off while a :class:`engine.profile.Profiler` times each op."""
    if _mode == "plain" or _profile.active() is not None or not cpu_kernels_available():
        yield
        return
    with cpu_kernels("parallel").pipeline():
        yield


def _cpu_pool():
    """kernels.cpu.parallel if the CPU kernels have been loaded (else nothing can be queued)."""
    return sys.modules.get("kernels.cpu.parallel")


def _sync_cpu_kernels() -> None:
    """Run what :func:`pipelined` has queued (an op about to read its results elsewhere)."""
    if _cpu_pool() is not None:
        _cpu_pool().sync()


def choose(fn: "KernelFunction", xs) -> str:
    """"plain", "cpu" or "cuda": the path ``fn`` takes for inputs ``xs`` (arrays)."""
    want = _mode if fn.impl is None else _check_mode(fn.op, fn.impl)
    if want == "plain":
        return "plain"
    kind = "cuda" if is_cupy_array(xs[0]) else "cpu"
    runs = hasattr(fn, f"forward_{kind}") and (
        fn.cuda_supports(*xs) if kind == "cuda"
        else cpu_kernels_available() and fn.cpu_supports(*xs))
    if want == "auto":
        return kind if runs else "plain"
    if want != kind or not runs:
        arrays = ", ".join(f"{tuple(x.shape)} {x.dtype}" for x in xs if x is not None)
        raise ValueError(f"{fn.op}: impl={want!r} asked for, but no {want} kernel runs this call "
                         f"({'CuPy' if kind == 'cuda' else 'NumPy'} inputs {arrays}"
                         f"{', ' + fn.settings() if fn.settings() else ''})")
    return kind


class KernelFunction(Function):
    """A Function with a plain path and optional CPU/CUDA kernels (see the module docstring).

    ``impl``: None follows the global switch; "plain", "cpu" or "cuda" asks for that path."""

    op = "op"
    impl: str | None = None

    def setup(self, *xs) -> None:
        """Check the inputs and keep what every path needs (shapes, geometry)."""

    def settings(self) -> str:
        """The op's non-array settings, for error messages ("stride 1, pad 0")."""
        return ""

    def cpu_supports(self, *xs) -> bool:
        """Whether ``forward_cpu`` takes these inputs (all, unless an op says otherwise)."""
        return True

    def cuda_supports(self, *xs) -> bool:
        """Whether ``forward_cuda`` takes these inputs."""
        return False

    def forward(self, *xs):
        self.setup(*xs)
        self.path = choose(self, xs)
        if self.path != "cpu":
            _sync_cpu_kernels()
        return getattr(self, f"forward_{self.path}")(*xs)

    def backward(self, *gys):
        return getattr(self, f"backward_{self.path}")(*gys)


class KernelSchedule(BackwardSchedule):
    """The backward pass as one :func:`pipelined` block: a function's backward may run
    without the queue being run first when it is a kernel op on its CPU path (its kernels
    queue what works image by image and run the queue before any other read) or is made of
    such ops (``deferrable_backward``, e.g. the stacked 1x1 convolutions)."""

    def scope(self):
        return pipelined()

    def deferrable(self, f) -> bool:
        if isinstance(f, KernelFunction):
            return getattr(f, "path", None) == "cpu"
        return getattr(f, "deferrable_backward", False)

    def outside(self):
        return _cpu_pool().paused() if _cpu_pool() is not None else contextlib.nullcontext()


set_backward_schedule(KernelSchedule())
