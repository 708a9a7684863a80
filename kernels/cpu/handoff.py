"""Handing work to the pool's threads and waiting for it, in microseconds: spin, then sleep.

A layer call gives each helper thread one function and waits for all of them to finish
(:mod:`kernels.cpu.parallel`); a GoogLeNet training step makes about 80 such hand-offs at
batch 8 and 210 at batch 32.
With ``concurrent.futures`` each one cost about 85 microseconds on a 2-core machine (an
empty call), most of it two sleeps and wake-ups: the helper asleep on the executor's queue
until the call, the caller asleep on the future until the helper is done. On a virtual
machine a wake-up alone takes tens of microseconds.

Here each side first *spins* for a short while (``SPIN_SECONDS``) on a counter in a NumPy
array, in a Numba function that runs without the GIL, and only then sleeps on a
:class:`threading.Condition`:

* helper i waits for ``posted[i]`` to move past the last call it ran; the caller sets its
  function and then moves ``posted[i]`` on;
* the caller waits for ``finished[i]`` to reach ``posted[i]``; the helper stores it from
  inside the Numba function that then waits for the next call, so that it already holds no
  GIL when the caller sees it (the caller would otherwise sleep again, on the GIL).

The counters are read with an atomic acquire load and written with a release store
(:func:`_load_acquire`, :func:`_store_release`: LLVM instructions Numba does not offer
itself), so a spinning loop really re-reads memory and sees the function stored before the
counter. An empty hand-off then costs about 30 microseconds instead of 85. Whole training
steps, two threads, paired against the executor in one process: GoogLeNet at batch 8
1.004x-1.028x over five runs of 30-60 pairs (their medians 1.004, 1.009, 1.011, 1.012,
1.028), at batch 32 1.017x (16 pairs); LeNet-5 at batch 64 1.026x (60 pairs), NiN and
ResNet-34 1.00x. What the hand-off still costs is mostly the GIL: the helper, seeing its
call at once, wants the GIL while the caller still runs Python, and sleeps on it (a median
73 microseconds from the post to the helper's first line).

A spinning thread holds its core. With another process busy on one of the two cores, the
steps ran at 0.956x the sleeping executor's speed (12 pairs): the waiting thread's spin
took CPU time the working one needed. So a wait that ended asleep after more than the whole
budget cuts the next budget to a tenth (:meth:`Team._next_spins`), and
``GOOGLENET_SPIN_US=0`` gives plain sleeping. Yielding the core inside the spin
(``sched_yield`` every 64 or 1024 spins) made that case even (1.000x) but cost the quiet
one its gain (0.985-0.999x), so the spin does not yield. OpenMP runtimes spin too (Intel's
200 ms by default, against 0.5 ms here).
"""
from __future__ import annotations

import os
import platform
import threading
import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic


def _spin_seconds() -> float:
    text = os.environ.get("GOOGLENET_SPIN_US", "500")
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise ValueError(f"GOOGLENET_SPIN_US must be a number of microseconds >= 0, not {text!r}")
    return value * 1e-6


SPIN_SECONDS = _spin_seconds()
_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _item_pointer(context, builder, aryty, ary_value, index):
    ary = context.make_array(aryty)(context, builder, ary_value)
    return cgutils.get_item_pointer(context, builder, aryty, ary, [index])


@intrinsic
def _load_acquire(typingctx, counters, i):
    """counters[i] (int64), an atomic load with acquire ordering."""
    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature.args[0], args[0], args[1])
        return builder.load_atomic(ptr, ordering="acquire", align=8)
    return types.int64(counters, i), codegen


@intrinsic
def _store_release(typingctx, counters, i, value):
    """counters[i] = value (int64), an atomic store with release ordering."""
    def codegen(context, builder, signature, args):
        ptr = _item_pointer(context, builder, signature.args[0], args[0], args[1])
        builder.store_atomic(args[2], ptr, ordering="release", align=8)
        return context.get_dummy_value()
    return types.void(counters, i, value), codegen


@intrinsic
def _pause(typingctx):
    """x86's PAUSE (a spin-wait hint: the core slows the loop and saves power); nothing
    elsewhere."""
    def codegen(context, builder, signature, args):
        if _X86:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()
    return types.void(), codegen


@njit(cache=True, nogil=True)
def spin_while(counters, i, value, spins):
    """Spin up to ``spins`` times while counters[i] == value; True if it changed."""
    for _ in range(spins):
        if _load_acquire(counters, i) != value:
            return True
        _pause()
    return False


@njit(cache=True, nogil=True)
def store_then_spin(finished, i, value, posted, seen, spins):
    """finished[i] = value, then :func:`spin_while` posted[i] == seen, all without the GIL."""
    _store_release(finished, i, value)
    return spin_while(posted, i, seen, spins)


def _spins_for(seconds: float) -> int:
    """How many spin iterations take about ``seconds`` on this CPU (measured once)."""
    if seconds <= 0:
        return 0
    probe = np.zeros(1, dtype=np.int64)
    spin_while(probe, 0, 0, 10)                    # compiled (or loaded) first
    n = 20000
    t0 = time.perf_counter()
    spin_while(probe, 0, 0, n)
    per = max((time.perf_counter() - t0) / n, 1e-9)
    return max(1, int(seconds / per))


class Team:
    """Helper threads that each run one function per call: :meth:`start` gives helper i
    ``fns[i]`` (starting helpers as needed, up to ``MAX_HELPERS``), :meth:`join` waits
    for them and returns the first exception raised (or None). One caller at a time
    (:mod:`kernels.cpu.parallel` holds a lock around each call)."""

    MAX_HELPERS = 1024

    def __init__(self, name: str = "googlenet-cpu"):
        self.name = name
        self.spins = self.caller_spins = _spins_for(SPIN_SECONDS)
        self.posted = np.zeros(self.MAX_HELPERS, dtype=np.int64)
        self.finished = np.zeros(self.MAX_HELPERS, dtype=np.int64)
        self.fns: list = []
        self.errors: list = []
        self.started = 0                  # helpers given a function by the last start()
        self.cond = threading.Condition()
        self.caller_waiting = False

    def _serve(self, i: int) -> None:
        seen, posted, spins = 0, False, self.spins
        while True:
            if not posted:
                t0 = time.perf_counter()
                with self.cond:
                    while self.posted[i] == seen:
                        self.cond.wait()
                spins = self._next_spins(time.perf_counter() - t0)
            seen = int(self.posted[i])
            fn, self.fns[i] = self.fns[i], None
            try:
                fn()
            except BaseException as e:    # handed to the caller by join()
                self.errors[i] = e
            posted = store_then_spin(self.finished, i, seen, self.posted, seen, spins)
            if self.caller_waiting:
                with self.cond:
                    self.cond.notify_all()

    def _next_spins(self, slept: float) -> int:
        """The spin budget after a wait that ended asleep for ``slept`` seconds: the whole
        budget if spinning a little longer would have caught it, else a tenth (a core
        shared with other processes: long waits, whose spinning only takes the core from
        them)."""
        return self.spins if slept < SPIN_SECONDS else self.spins // 10

    def start(self, fns) -> None:
        if len(fns) > self.MAX_HELPERS:
            raise ValueError(f"at most {self.MAX_HELPERS} helper threads, not {len(fns)}")
        while len(self.fns) < len(fns):
            self.fns.append(None)
            self.errors.append(None)
            threading.Thread(target=self._serve, args=(len(self.fns) - 1,),
                             name=f"{self.name}_{len(self.fns) - 1}", daemon=True).start()
        for i, fn in enumerate(fns):
            self.fns[i] = fn
            self.posted[i] += 1
        self.started = len(fns)
        with self.cond:
            self.cond.notify_all()

    def join(self):
        for i in range(self.started):
            target = self.posted[i]
            if self.finished[i] == target or spin_while(self.finished, i, target - 1,
                                                        self.caller_spins):
                continue
            t0 = time.perf_counter()
            with self.cond:
                self.caller_waiting = True
                while self.finished[i] != target:
                    # a helper that finished between the check and the wait notifies only
                    # if it saw caller_waiting set: a short timeout covers the rest
                    self.cond.wait(0.001)
                self.caller_waiting = False
            self.caller_spins = self._next_spins(time.perf_counter() - t0)
        self.started = 0
        errors = [e for e in self.errors if e is not None]
        self.errors = [None] * len(self.errors)
        return errors[0] if errors else None
