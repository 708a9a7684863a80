"""Choosing (version, config) for one call: the autotuner, with every candidate validated first.

A tile config may only win if it computes the right answer. For a problem first seen on a
device, each candidate of the best version runs once on fresh random inputs at a small batch
(same channels, image size, kernel size, float4 variant and flags; batch min(N, 2)) with a
NaN-poisoned output and a synchronisation after each launch, and is compared with the float64
NumPy reference (``kernels.lab``). Candidates that leave outputs unwritten or exceed the
tolerance are rejected (and listed in the cache entry); the others are then timed on the real
inputs, after one synchronised run at full size. A candidate the device refuses
(``LaunchRejected``) is skipped; a fault or any other error propagates, naming the kernel,
config and shape: a sticky fault has already broken the CUDA context, and hiding it would only
move the failure somewhere unrelated.

The device work goes through a *runner* (:class:`CudaRunner` here; the tests use the CPU
emulation and fakes), so all of this logic runs without a GPU.
"""
from __future__ import annotations

import statistics

import numpy as np

from .. import autotune
from .launcher import KernelError, LaunchRejected, classify, describe
from .planning import plan
from .problem import Problem
from .tables import BEST_VERSION, configs


class CudaRunner:
    """How the autotuner talks to the GPU: copies, synchronised runs, CUDA-event timing."""

    def to_device(self, host: dict) -> dict:
        cp = _cupy()
        return {k: cp.asarray(v) for k, v in host.items()}

    def to_host(self, a) -> np.ndarray:
        return _cupy().asnumpy(a)

    def run(self, pl, buffers: dict, *, check: bool, poison: bool = False):
        from .launcher import execute  # noqa: PLC0415
        return execute(pl, buffers, check=check, poison=poison)

    def time(self, fn, warmup: int = 2, repeat: int = 7) -> float:
        """Median milliseconds of ``fn()`` on the current stream, CUDA events."""
        cp = _cupy()
        for _ in range(warmup):
            fn()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        times = []
        for _ in range(repeat):
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(cp.cuda.get_elapsed_time(start, end))
        return statistics.median(times)


def _cupy():
    from .device import cupy  # noqa: PLC0415
    return cupy()


def variant_tag(aligned: bool, sm_count: int) -> str:
    """The call's properties that change the launched code, for the cache key: alignment picks
    the float4 or the scalar instance, the SM count sets the split-K counts. (Bias and fused
    ReLU are runtime arguments of the same instance; candidates are validated with them.)"""
    return f"aligned{int(aligned)}.sm{int(sm_count)}"


def check_problem(problem: Problem) -> Problem:
    """The problem candidates are validated on: the same, at batch min(N, 2)."""
    return Problem(min(problem.n, 2), problem.c, problem.h, problem.w, problem.k, problem.ksize)


def tuned_choice(direction: str, problem: Problem, buffers: dict, *, has_bias: bool = False,
                 relu: bool = False, aligned: bool = True, sm_count: int, device_tag: str,
                 toolchain_tag: str = "", runner=None, path=None) -> tuple:
    """(version, config) for ``direction`` on ``problem``: cached, or validated, timed and cached.

    ``buffers`` are the call's real inputs (timing runs on them); ``device_tag`` and
    ``toolchain_tag`` enter the cache key with the problem, the flags and the sources' hash.
    """
    from .. import lab  # noqa: PLC0415  (lab imports this package)

    runner = runner or CudaRunner()
    version = BEST_VERSION[direction]
    candidates = [(version, tuple(cfg)) for cfg in configs(direction, version)]
    key = autotune.make_key(direction, problem.as_tuple(), device_tag,
                            variant=variant_tag(aligned, sm_count),
                            toolchain=toolchain_tag)
    small = check_problem(problem)
    state = {}

    def reference():
        if not state:
            host = lab.make_inputs(direction, small, seed=0, bias=has_bias)
            state["inputs"] = runner.to_device(host)
            state["ref"] = lab.reference(direction, small, host, relu)
            state["tol"] = lab.tolerance(direction, small)
        return state["inputs"], state["ref"], state["tol"]

    def validate(cand):
        inputs, ref, tol = reference()
        pl = plan(direction, cand[0], cand[1], small, has_bias=has_bias, relu=relu,
                  aligned=aligned, sm_count=sm_count)
        out = runner.to_host(runner.run(pl, inputs, check=True, poison=True))
        unwritten = int(np.isnan(out).sum())
        rel = lab.rel_error(out, ref)
        ok = unwritten == 0 and rel < tol
        return ok, f"rel error {rel:.2e} (tolerance {tol:.1e}), {unwritten} outputs unwritten"

    def measure(cand):
        pl = plan(direction, cand[0], cand[1], problem, has_bias=has_bias, relu=relu,
                  aligned=aligned, sm_count=sm_count)
        runner.run(pl, buffers, check=True)   # a fault at full size is blamed on its kernel
        try:
            return runner.time(lambda: runner.run(pl, buffers, check=False))
        except KernelError:
            raise
        except Exception as exc:  # noqa: BLE001  (a fault surfacing at an event's synchronisation)
            raise classify(exc)(f"{describe(pl)}: failed while timing: {exc}") from exc

    return autotune.best(key, candidates, measure, validate=validate, skip=(LaunchRejected,),
                         path=path)
