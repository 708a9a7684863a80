"""All cores on one layer call: a pool of threads over runs of images, single-threaded BLAS
inside.

A layer's work splits into *chunks* of whole images; the chunks are dealt into contiguous
*runs* (two per thread; one for small batches, :func:`runs`), and the calling thread and the
pool's threads take runs as they come free. Each run
processes its chunks in order and may return a partial result (a convolution's weight
gradient), which :func:`run` hands back in run order, so reductions add in a fixed order:
results do not depend on which thread ran what.

Why not multi-threaded BLAS plus ``numba.prange`` inside each kernel: every GEMM and every
parallel loop then ends in a barrier between threads, a few hundred per training step. On a
quiet machine that costs little, but when another process takes a core, each barrier waits
for a descheduled thread, and the step ran 8x slower in our measurements (see
``docs/performance_cpu.md``). Whole images per thread need one join per layer call, and a
thread that falls behind leaves its remaining runs to the other. Single-threaded OpenBLAS
also runs these GEMM shapes at nearly its peak per core.

The pool owns the cores: on its first use, OpenBLAS is set to one thread for the whole
process, through its C API found with ctypes (:func:`release_cores` gives BLAS its threads
back). Setting it only around the pool's work is not enough: the small GEMMs left on the main
thread (the linear layers) then wake BLAS's threads, which spin and fight the pool's. When
the BLAS library cannot be controlled (not OpenBLAS, not Linux), GEMM-bearing work runs on
the calling thread with BLAS's own threads instead.

Inside :func:`pipeline` (an Inception module's forward, a whole backward pass), calls
that split the batch into the same images per thread are queued instead of run, and each
thread then runs its share of all of them in order, one join for the block instead of one
per call: a thread's images go from one layer to the next with nothing to wait for, since
every one of these calls works on each image alone. Anything else called inside first runs
what is queued (:func:`sync`).

``GOOGLENET_CPU_THREADS`` sets the number of threads (default: the CPUs this process may use).
The first :func:`run` also keeps freed memory in the process (:mod:`kernels.cpu.memory`).
The Numba kernels the threads call are compiled with ``nogil=True``.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import itertools
import os
import threading

from . import handoff, memory


def _default_threads() -> int:
    env = os.environ.get("GOOGLENET_CPU_THREADS")
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


THREADS = _default_threads()
_team: handoff.Team | None = None
_team_lock = threading.Lock()      # creating the team
_call_lock = threading.Lock()      # one call on the team at a time


def threads() -> int:
    return THREADS


def _helpers() -> handoff.Team:
    global _team
    with _team_lock:
        if _team is None:
            _team = handoff.Team()
        return _team


def _with_helpers(fns, mine) -> None:
    """fns[i]() on helper i and mine() on this thread at once; returns when all are done,
    raising the first exception (this thread's first). While another thread's call holds
    the helpers, everything runs here instead, one after the other."""
    if not _call_lock.acquire(blocking=False):
        mine()
        for fn in fns:
            fn()
        return
    try:
        team = _helpers()
        team.start(fns)
        try:
            mine()
        finally:
            error = team.join()
    finally:
        _call_lock.release()
    if error is not None:
        raise error


def _forget_pool_after_fork() -> None:
    global _team, _team_lock, _call_lock
    # a forked child has none of the threads
    _team, _team_lock, _call_lock = None, threading.Lock(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool_after_fork)


# ------------------------------------------------------------------ OpenBLAS threads
class _Blas:
    """OpenBLAS's get/set_num_threads, found in the loaded library (or None)."""

    def __init__(self):
        self.get = self.set = None
        for path in _loaded_libraries():
            if "openblas" not in os.path.basename(path).lower():
                continue
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            for suffix in ("64_", "_64_", ""):
                for prefix in ("scipy_openblas", "openblas"):
                    get = getattr(lib, f"{prefix}_get_num_threads{suffix}", None)
                    set_ = getattr(lib, f"{prefix}_set_num_threads{suffix}", None)
                    if get is not None and set_ is not None:
                        get.restype, get.argtypes = ctypes.c_int, []
                        set_.restype, set_.argtypes = None, [ctypes.c_int]
                        self.get, self.set = get, set_
                        return


def _loaded_libraries():
    import numpy  # noqa: F401  (BLAS is loaded with NumPy's core)
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if ".so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


_blas: _Blas | None = None


def _blas_api() -> _Blas:
    global _blas
    if _blas is None:
        _blas = _Blas()
    return _blas


def blas_controllable() -> bool:
    return _blas_api().set is not None


_blas_threads_before: int | None = None


def claim_cores() -> None:
    """Hold OpenBLAS at one thread from now on (done by the first :func:`run`)."""
    global _blas_threads_before
    api = _blas_api()
    if api.set is not None and _blas_threads_before is None and THREADS > 1:
        _blas_threads_before = api.get()
        api.set(1)


def release_cores() -> None:
    """Give OpenBLAS back the thread count it had before :func:`claim_cores`."""
    global _blas_threads_before
    if _blas_threads_before is not None:
        _blas_api().set(_blas_threads_before)
        _blas_threads_before = None


# ------------------------------------------------------------------ chunks and runs
def chunks(n: int, per_chunk: int) -> list[tuple[int, int]]:
    """[(n0, g), ...]: ``n`` images in chunks of ``per_chunk`` (the last may be smaller)."""
    return [(n0, min(per_chunk, n - n0)) for n0 in range(0, n, per_chunk)]


# A layer call on at most this many images per thread runs one run per thread, two per
# thread above (:func:`runs`).
ONE_RUN_PER_THREAD_UP_TO = 4


def runs(n: int) -> int:
    """How many runs a layer call on n images is dealt into: one per thread for batches of
    at most ONE_RUN_PER_THREAD_UP_TO images per thread (fewer, larger GEMMs and partial
    weight gradients; batch 8 on two threads: whole training steps 1.014x), else two per
    thread, so that a thread slowed down by another process leaves part of its share to the
    others (batch 32 with one per thread: 0.97x)."""
    return THREADS if n <= ONE_RUN_PER_THREAD_UP_TO * THREADS else 2 * THREADS


# ------------------------------------------------------------------ pipelines
_queue: list | None = None     # (body, runs) of the calls queued by pipeline(), in order
_spans: list | None = None     # each thread's (first image, end) in the queued calls
_owner: int | None = None      # the thread whose pipeline() it is
_then: list = []               # (fn, shared): what to call once the queue has run (after_queue)


@contextlib.contextmanager
def pipeline():
    """Queue the calls made inside that give each thread one run of the same images (``run``
    with ``images=True``); at the end, each thread runs its run of every queued call in
    order, and the block returns after one join. Batch 8 on two threads, an Inception
    module's six calls at a time: whole training steps 1.016-1.023x (paired, three runs).

    Only calls whose bodies read and write nothing but their own images may be queued;
    every other call (and :func:`sync`) first runs the queue. Nested blocks are one block."""
    global _queue, _spans, _owner
    if _queue is not None or THREADS == 1:
        yield
        return
    _queue, _spans, _owner = [], None, threading.get_ident()
    try:
        yield
    finally:
        queued, _queue, _spans, _owner = _queue, None, None, None
        _run_queued(queued)


@contextlib.contextmanager
def paused():
    """Run what is queued, then run calls at once inside (code that reads what its own
    calls produce, e.g. a grouped convolution joining its groups' results)."""
    global _queue, _spans
    if _queue is None or threading.get_ident() != _owner:
        yield
        return
    sync()
    saved, _queue = _queue, None
    try:
        yield
    finally:
        _queue, _spans = saved, None


def after_queue(fn, shared: bool = False) -> None:
    """Call ``fn()`` on this thread once what is queued now has run (a queued call's
    caller finishing its work). ``shared=True``: ``fn(t)`` for every share t of
    :func:`over_threads` instead (a convolution's partial weight gradients summed, rows
    shared out), all such calls of a queue in one :func:`over_threads`, before the others:
    one hand-off to the pool after the queue instead of two or three per convolution (batch
    8 on two threads: the time from a queue's last body to its end, 15 -> 10-12 ms a
    training step)."""
    _then.append((fn, shared))


def sync() -> None:
    """Run what :func:`pipeline` has queued so far (before the caller reads its results)."""
    global _queue, _spans
    if _queue:
        queued, _queue, _spans = _queue, [], None
        _run_queued(queued)


def _thread_spans(runs: list) -> list:
    """(first image, end) of each run; items are image indices or (n0, g) chunks."""
    spans = []
    for run_ in runs:
        first, last = run_[0], run_[-1]
        spans.append((first[0], last[0] + last[1]) if isinstance(first, tuple)
                     else (first, last + 1))
    return spans


def _enqueue(body, runs: list, k: int, blas: bool):
    """Queue the call if it has one run per thread (batches of up to ONE_RUN_PER_THREAD_UP_TO
    images per thread; larger ones keep two runs per thread, taken as the threads come
    free); a call that gives a thread other images than the queued ones do runs the queue
    first. Returns the call's results-to-be (:class:`_Pending`), or None if not queued."""
    global _spans
    if k != THREADS or (blas and not blas_controllable()):
        return None
    spans = _thread_spans(runs)
    if _spans is not None and spans != _spans:
        sync()
    _spans = spans
    results = _Pending([None] * k)
    _queue.append((body, runs, results))
    return results


class _Pending(list):
    """The results of a queued call, filled in when the queue runs."""


def is_queued(results) -> bool:
    """Whether ``results`` (from :func:`run`) belong to a call still in the queue."""
    return isinstance(results, _Pending) and any(
        entry[2] is results for entry in (_queue or ()))


def _run_queued(queued: list) -> None:
    """Thread t runs run t of every queued call, in order, keeping what it returns in
    the list the call returned; then what :func:`after_queue` was given, in order."""
    then = _then[:]
    _then.clear()
    if not queued:
        return
    claim_cores()
    errors = []

    def share(t):
        try:
            for body, runs, results in queued:
                results[t] = body(runs[t])
        except BaseException as e:       # the other threads finish theirs
            errors.append(e)

    _with_helpers([functools.partial(share, t) for t in range(1, THREADS)],
                  functools.partial(share, 0))
    if errors:
        raise errors[0]
    shared = [fn for fn, is_shared in then if is_shared]
    if shared:
        over_threads(lambda t: [fn(t) for fn in shared])
    for fn, is_shared in then:
        if not is_shared:
            fn()


def run(body, items: list, blas: bool = False, groups: int | None = None,
        images: bool = False, independent: bool = False) -> list:
    """Call ``body(run_of_items)`` for contiguous runs of ``items`` on the pool; return the
    results in run order.

    ``groups`` runs (default: 2 per thread, at most one per item), so that a thread that is
    slowed down leaves its share to the others. The calling thread works too: it and
    THREADS - 1 pool threads take the next run from a shared counter until none is left.
    ``blas=True`` says the body calls BLAS: when BLAS's threads cannot be held at one,
    everything then runs on the calling thread.

    Inside :func:`pipeline`: ``images=True`` (items are images or (first, count) chunks of
    them, and each run's body touches only its own images) lets the call be queued; it then
    returns a list that holds the runs' results once the queue has run (:func:`is_queued`
    says whether it has not yet); ``independent=True`` (the body reads nothing a queued call
    writes, e.g. a transform of the weights) runs it at once; any other call first runs the
    queue.
    """
    if not items:
        return []
    memory.keep_freed_memory()
    k = min(len(items), groups or 2 * THREADS)
    runs = [items[len(items) * i // k:len(items) * (i + 1) // k] for i in range(k)]
    if _queue is not None and not independent and threading.get_ident() == _owner:
        results = _enqueue(body, runs, k, blas) if images else None
        if results is not None:
            return results
        sync()
    if THREADS == 1 or k == 1 or (blas and not blas_controllable()):
        return [body(r) for r in runs]
    claim_cores()
    results = [None] * k
    next_run = itertools.count()     # next() on a count is atomic under the GIL

    def work():
        while (i := next(next_run)) < k:
            results[i] = body(runs[i])

    _with_helpers([work] * (min(THREADS, k) - 1), work)
    return results


def over_threads(fn) -> None:
    """``fn(t)`` for t = 0 .. threads() - 1 on the pool, one share per thread, e.g. the rows
    ``share(n, t)`` of an array (the calling thread takes one; ``fn`` may call BLAS)."""
    run(lambda ts: [fn(t) for t in ts], list(range(THREADS)), blas=True, groups=THREADS)


def share(n: int, t: int) -> tuple[int, int]:
    """(lo, hi): share t of range(n) among the threads() shares of :func:`over_threads`."""
    return n * t // THREADS, n * (t + 1) // THREADS


def over_images(n: int, fn, queue: bool = False) -> None:
    """``fn(images)`` for contiguous slices of ``range(n)`` on the pool (kernels without BLAS);
    ``queue=True``: ``fn`` touches only those images' data, so that :func:`pipeline` may
    queue the call."""
    run(lambda run_: fn(slice(run_[0], run_[-1] + 1)), list(range(n)), groups=runs(n),
        images=queue)
