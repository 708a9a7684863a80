"""The CUDA side's one probe and its per-device caches: facts, toolchain, compiled modules.

* :func:`unusable_reason` is the single "can CuPy run a kernel here?" test that the lab, the
  benchmarks, the GPU check and the tests share: it imports CuPy, counts devices and runs one
  real kernel, and returns None or a one-line reason.
* :func:`info` gives the facts of one device (name, SMs, compute capability, clock), read once
  per process *per device id*: a process that switches devices never plans with another
  device's SM count. Compute capability comes from ``Device().compute_capability`` (CuPy does
  not export every ``cudaDevAttr*`` constant).
* :func:`function` compiles one kernel source with NVRTC into a module holding every template
  instance plans can launch (one compile per source, cached on disk by CuPy) and keeps it per
  (device, source): a module is loaded into one device's context and cannot run on another.

CuPy is imported lazily; everything here is tested on the CPU against a stand-in module.
"""
from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass

from .planning import all_instances
from .sources import COMPILE_OPTIONS, source_text

_lock = threading.Lock()
_infos: dict[int, "DeviceInfo"] = {}
_modules: dict[tuple[int, str], object] = {}
_toolchain: dict | None = None


def cupy():
    """The CuPy module (imported lazily: the package imports without it)."""
    import cupy as cp  # noqa: PLC0415
    return cp


def unusable_reason() -> str | None:
    """None when CuPy can launch a kernel on the current device, else why not (one line)."""
    try:
        cp = cupy()
    except Exception as exc:  # noqa: BLE001  (any import failure means: no GPU path)
        return f"CuPy is not importable ({type(exc).__name__}: {_first_line(exc)})"
    try:
        if cp.cuda.runtime.getDeviceCount() < 1:
            return "CuPy sees no CUDA device"
        int(cp.arange(4, dtype=cp.int32).sum())   # a real launch and a copy back
    except Exception as exc:  # noqa: BLE001
        return f"no CUDA device answers ({type(exc).__name__}: {_first_line(exc)})"
    return None


def _first_line(exc) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""


@dataclass(frozen=True)
class DeviceInfo:
    """Facts of one CUDA device."""

    id: int
    name: str
    sm_count: int
    compute_capability: tuple   # (major, minor)
    clock_mhz: float | None     # None where the driver no longer reports it
    total_memory_gib: float

    @property
    def arch(self) -> str:
        """'sm_90' for compute capability 9.0."""
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["compute_capability"] = "%d.%d" % self.compute_capability
        return d


def current_device_id() -> int:
    return int(cupy().cuda.Device().id)


def parse_compute_capability(cc) -> tuple:
    """CuPy's ``Device.compute_capability`` string ('90', '86', '100') -> (major, minor)."""
    s = str(cc).strip()
    if not s.isdigit() or len(s) < 2:
        raise ValueError(f"unexpected compute capability {cc!r}")
    return int(s[:-1]), int(s[-1])


def info(device_id: int | None = None) -> DeviceInfo:
    """Facts of device ``device_id`` (default: the current one), cached per device id."""
    cp = cupy()
    dev_id = int(cp.cuda.Device().id) if device_id is None else int(device_id)
    with _lock:
        hit = _infos.get(dev_id)
    if hit is not None:
        return hit
    rt = cp.cuda.runtime
    props = rt.getDeviceProperties(dev_id)
    name = props["name"]
    name = name.decode() if isinstance(name, bytes) else str(name)
    sms = int(rt.deviceGetAttribute(rt.cudaDevAttrMultiProcessorCount, dev_id))
    try:
        clock = int(rt.deviceGetAttribute(rt.cudaDevAttrClockRate, dev_id)) / 1e3
    except Exception:  # noqa: BLE001  (newer drivers may drop the attribute)
        clock = None
    cc = parse_compute_capability(cp.cuda.Device(dev_id).compute_capability)
    mem = float(props.get("totalGlobalMem", 0)) / 2**30
    fact = DeviceInfo(dev_id, name, sms, cc, clock, round(mem, 1))
    with _lock:
        _infos[dev_id] = fact
    return fact


def toolchain() -> dict:
    """Versions that change what the compiled kernels do: CuPy, CUDA runtime and driver, NVRTC."""
    global _toolchain
    if _toolchain is not None:
        return dict(_toolchain)
    cp = cupy()
    out = {"cupy": cp.__version__}
    for key, fn in (("cuda_runtime", lambda: cp.cuda.runtime.runtimeGetVersion()),
                    ("cuda_driver", lambda: cp.cuda.runtime.driverGetVersion()),
                    ("nvrtc", lambda: "%d.%d" % cp.cuda.nvrtc.getVersion())):
        try:
            out[key] = fn()
        except Exception:  # noqa: BLE001
            out[key] = None
    _toolchain = out
    return dict(out)


def module(source: str, device_id: int | None = None):
    """The NVRTC-compiled ``kernels/cuda/<source>`` with every launchable instance, for one device."""
    cp = cupy()
    dev_id = int(cp.cuda.Device().id) if device_id is None else int(device_id)
    key = (dev_id, source)
    with _lock:
        hit = _modules.get(key)
    if hit is not None:
        return hit
    names = tuple(all_instances()[source])
    with cp.cuda.Device(dev_id):
        mod = cp.RawModule(code=source_text(source), options=COMPILE_OPTIONS,
                           name_expressions=names)
        mod.compile()   # now, on this device, not at the first launch
    with _lock:
        _modules.setdefault(key, mod)
        return _modules[key]


def function(source: str, name: str, device_id: int | None = None):
    """The compiled template instance ``name`` of ``source`` on one device."""
    return module(source, device_id).get_function(name)


def forget() -> None:
    """Drop every per-device cache (tests; or after changing the current device's state)."""
    global _toolchain
    with _lock:
        _infos.clear()
        _modules.clear()
        _toolchain = None


def sync_each_launch() -> bool:
    """GOOGLENET_CUDA_SYNC=1: synchronise after every launch (faults blamed on their kernel)."""
    return os.environ.get("GOOGLENET_CUDA_SYNC", "0") not in ("", "0")
