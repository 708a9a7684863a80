"""Run a launch plan on CuPy arrays, and turn CUDA failures into errors that name their kernel.

Three kinds of failure, told apart because callers must treat them differently:

* :class:`LaunchRejected`: the device refused the launch (too many registers or too much shared
  memory for this device). Nothing ran; the context is intact; another config may work.
* :class:`KernelFault`: the kernel ran and faulted (illegal or misaligned address, illegal
  instruction, ...). Such faults are *sticky*: the CUDA context is unusable afterwards and every
  later call fails too. Never skip one: report it and stop.
* :class:`KernelError`: anything else (compilation, an unknown driver error).

Every error names the kernel instance, grid and block; :func:`execute` adds the direction,
version, tile config and problem shape. Launches are asynchronous, so a fault surfaces at the
next synchronisation: with ``check=True`` (or ``GOOGLENET_CUDA_SYNC=1``) each launch is
followed by one, so the fault is blamed on the kernel that caused it.
"""
from __future__ import annotations

import numpy as np

from . import device
from .planning import Call, Plan
from .tables import INT32_MAX, config_name


class KernelError(RuntimeError):
    """A custom CUDA kernel failed to compile, launch or run."""


class LaunchRejected(KernelError):
    """The device refused the launch for lack of resources; nothing ran."""


class KernelFault(KernelError):
    """The kernel faulted while running; the CUDA context is no longer usable."""


# Normalised (lower case, no '_') fragments of CUDA driver / runtime error names.
_STICKY = ("illegaladdress", "misalignedaddress", "launchfailed", "launchfailure",
           "illegalinstruction", "hardwarestackerror", "invalidpc", "invalidaddressspace",
           "assert", "launchtimeout", "eccuncorrectable")
_REJECTED = ("launchoutofresources", "outofresources", "toomanyresources")


def classify(exc: BaseException) -> type:
    """Which :class:`KernelError` subclass a CuPy / CUDA exception stands for."""
    text = f"{type(exc).__name__} {exc}".lower().replace("_", "")
    if any(k in text for k in _REJECTED):
        return LaunchRejected
    if any(k in text for k in _STICKY):
        return KernelFault
    return KernelError


def launch(call: Call, buffers: dict, check: bool | None = None) -> None:
    """Launch one planned kernel on CuPy arrays ``buffers`` (by name); see the module docstring."""
    gx, gy, gz = call.grid
    where = f"{call.name} (grid {call.grid}, block {call.block})"
    if not (1 <= gx <= INT32_MAX and 1 <= gy <= 65535 and 1 <= gz <= 65535):
        raise ValueError(f"{where}: the grid is outside the CUDA limits")
    if call.block[0] * call.block[1] * call.block[2] > 1024:
        raise ValueError(f"{where}: the block has more than 1024 threads")
    args = tuple(buffers[a] if isinstance(a, str) else np.int32(a) for a in call.args)
    try:
        fn = device.function(call.source, call.name)
    except Exception as exc:  # noqa: BLE001  (NVRTC or module load)
        raise KernelError(f"compiling {call.source} for {call.name} failed: {exc}") from exc
    try:
        fn(call.grid, call.block, args)
    except Exception as exc:  # noqa: BLE001
        raise classify(exc)(f"launch of {where} failed: {exc}") from exc
    if check if check is not None else device.sync_each_launch():
        try:
            device.cupy().cuda.get_current_stream().synchronize()
        except Exception as exc:  # noqa: BLE001
            raise classify(exc)(f"{where} failed while running: {exc}") from exc


def describe(pl: Plan) -> str:
    """'fwd v4 config 128x128x8/8x8 on (N,C,H,W,K,k)=(128, 480, 14, 14, 192, 1)'."""
    return (f"{pl.direction} {pl.version} config {config_name(pl.config)} on "
            f"(N,C,H,W,K,k)={pl.problem.as_tuple()}")


def execute(pl: Plan, buffers: dict, *, poison: bool = False, check: bool | None = None,
            out=None):
    """Run a plan on CuPy arrays ``buffers`` (by name); allocate output and temps; return output.

    ``poison`` fills the output (and temps) with NaN first, so an element no thread writes shows.
    A :class:`KernelError` is re-raised (same class) with the plan's direction, version, config
    and problem in front of the kernel's own message.
    """
    cp = device.cupy()
    bufs = dict(buffers)

    def alloc(shape):
        return cp.full(shape, cp.nan, dtype=cp.float32) if poison else cp.empty(shape, cp.float32)

    for name, shape in pl.temps:
        bufs[name] = alloc(shape)
    if out is None:
        out = alloc(pl.output_shape)
    elif poison:
        out.fill(cp.nan)
    bufs[pl.output] = out
    for call in pl.calls:
        try:
            launch(call, bufs, check)
        except KernelError as exc:
            raise type(exc)(f"{describe(pl)}: {exc}") from exc
    return out
