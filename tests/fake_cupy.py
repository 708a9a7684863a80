"""A stand-in for the few CuPy calls kernels.conv_cuda makes, for CPU tests of the GPU path.

Arrays are NumPy arrays; "kernels" run through the CPU emulation (kernels.emu) or whatever a
test installs; devices are numbered and have their own facts. The runtime deliberately lacks
``cudaDevAttrComputeCapabilityMajor/Minor``, as CuPy 14 does.
"""
from __future__ import annotations

import ctypes
import time
import types

import numpy as np

DEVICES = {0: {"name": "Fake H200", "sms": 132, "cc": "90", "clock_khz": 1_980_000},
           1: {"name": "Fake A100", "sms": 108, "cc": "80", "clock_khz": 1_410_000}}


def make(devices=DEVICES):
    """A fresh fake ``cupy`` module with ``devices`` (id -> name, sms, cc, clock_khz)."""
    state = {"current": 0, "modules": [], "syncs": 0, "sync_error": None}

    class Device:
        def __init__(self, i=None):
            self.id = state["current"] if i is None else int(i)

        @property
        def compute_capability(self):
            return devices[self.id]["cc"]

        def __enter__(self):
            self._prev = state["current"]
            state["current"] = self.id
            return self

        def __exit__(self, *exc):
            state["current"] = self._prev

        def synchronize(self):
            pass

    def get_device_properties(i):
        return {"name": devices[i]["name"].encode(), "totalGlobalMem": 141 * 2**30}

    def device_get_attribute(attr, i):
        return {"sms": devices[i]["sms"], "clock": devices[i]["clock_khz"]}[attr]

    runtime = types.SimpleNamespace(
        getDeviceCount=lambda: len(devices), getDeviceProperties=get_device_properties,
        deviceGetAttribute=device_get_attribute, cudaDevAttrMultiProcessorCount="sms",
        cudaDevAttrClockRate="clock", runtimeGetVersion=lambda: 12090,
        driverGetVersion=lambda: 13000)

    class Stream:
        def synchronize(self):
            state["syncs"] += 1
            if state["sync_error"] is not None:
                raise state["sync_error"]

    class RawModule:
        def __init__(self, code, options, name_expressions):
            self.code, self.names, self.device = code, name_expressions, state["current"]
            self.compiled = 0
            state["modules"].append(self)

        def compile(self):
            self.compiled += 1

        def get_function(self, name):
            assert name in self.names, name
            return emu_function(name)

    class Event:
        def record(self):
            self.t = time.perf_counter()

        def synchronize(self):
            pass

    cuda = types.SimpleNamespace(Device=Device, runtime=runtime, Event=Event,
                                 get_elapsed_time=lambda a, b: 1e3 * (b.t - a.t),
                                 get_current_stream=lambda: Stream(),
                                 nvrtc=types.SimpleNamespace(getVersion=lambda: (12, 9)))
    mod = types.SimpleNamespace(
        __version__="14.2.0-fake", cuda=cuda, RawModule=RawModule, ndarray=np.ndarray,
        float32=np.float32, nan=np.nan, int32=np.int32, full=np.full, empty=np.empty,
        asarray=np.asarray, asnumpy=np.asarray, ascontiguousarray=np.ascontiguousarray,
        arange=np.arange, state=state)
    return mod


def emu_function(name: str):
    """A launcher-compatible callable ``fn(grid, block, args)`` running ``name`` in kernels.emu."""
    from kernels import emu
    from kernels.conv_cuda.planning import all_calls

    call = next(c for calls in all_calls().values() for c in calls if c.name == name)

    def run(grid, block, args):
        fn, _ = emu.function(call)
        cargs = [ctypes.c_void_p(a.ctypes.data) if isinstance(a, np.ndarray) else ctypes.c_int(int(a))
                 for a in args]
        fn(*[ctypes.c_uint(int(v)) for v in (*grid, *block)], *cargs)

    return run
