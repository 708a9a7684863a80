"""What the training loop needs to run as one of several processes: ``Distributed``.

``Distributed.start(distributed)`` looks at how the process was launched. Under ``mpirun -n N``
(or with ``--distributed``) it joins the MPI job; otherwise it is a single process and every
method below does what a plain run did before (nothing, or the local value). The loop asks it:

* who speaks: ``is_root`` (rank 0 alone logs and writes metrics, curves and checkpoints),
  ``log``, ``output`` (where progress goes);
* how to split the data: ``shard`` for the loaders;
* how to combine: ``sum(values)`` of per-step and validation counts, ``wrap(optimizer)``
  (gradients averaged in buckets, see ``engine.distributed``), ``broadcast_model`` and
  ``broadcast_run`` (the parameters and the optimizer's state from rank 0, at the start and
  after a resume), ``root_only(fn)`` (rank 0 computes, everyone gets the result);
* what to do on failure: ``fail(code)`` ends the whole job (MPI abort), since the other
  processes would otherwise wait forever for this one in their next collective.

Results do not depend on N: with ``--batch-size b`` (per process) the global batch is N b, the
data order is one global permutation per epoch cut into global batches, dropout masks and
augmentation are drawn per sample, so N processes at batch b train exactly as one process at
batch N b (up to the rounding of sums taken in another order).
"""
from __future__ import annotations

import os
import sys

import numpy as np

from trainer.config import UsageError
from trainer.logs import log as _log

_active = None    # the job this process belongs to, for fail() from the command line


class Distributed:
    """A single process (``comm is None``) or one rank of an MPI job."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank = comm.rank if comm else 0
        self.size = comm.size if comm else 1
        self.is_root = self.rank == 0
        self.output = None if self.is_root else open(os.devnull, "w")

    @classmethod
    def start(cls, distributed: bool = False) -> "Distributed":
        """Join the MPI job this process was launched in, if any (or if ``distributed``)."""
        global _active
        from engine import distributed as dist
        if _active is not None:
            return _active
        if not (distributed or dist.launched_by_mpi()):
            return cls()
        try:
            comm = dist.Communicator()
        except RuntimeError as exc:
            raise UsageError(f"--distributed: {exc}") from None
        _active = cls(comm)
        _active._install_excepthook()
        _active._share_cores()
        return _active

    @property
    def active(self) -> bool:
        return self.comm is not None

    def describe_batch(self, batch_size: int) -> str:
        if not self.active:
            return f"batch {batch_size}"
        return (f"batch {batch_size} per process x {self.size} processes = global batch "
                f"{batch_size * self.size}")

    # --- speaking
    def log(self, msg: str) -> None:
        if self.is_root:
            _log(msg)

    # --- devices and data
    def use_device(self, device: str) -> None:
        """One GPU per process (by rank on its machine), and NCCL between them."""
        if self.active and device == "cuda":
            self.comm.use_gpu()

    @property
    def shard(self):
        return (self.rank, self.size) if self.active else None

    def node_first(self, fn):
        """``fn()`` on the first process of each machine, then on the others (e.g. generate a
        dataset once per machine, not by several processes into the same folder)."""
        if not self.active:
            return fn()
        if self.comm.local_rank == 0:
            result = fn()
            self.comm.node_barrier()
            return result
        self.comm.node_barrier()
        return fn()

    def root_only(self, fn):
        """``fn()`` on rank 0; every process gets its (picklable) result."""
        if not self.active:
            return fn()
        return self.comm.bcast_object(fn() if self.is_root else None)

    def barrier(self) -> None:
        if self.active:
            self.comm.barrier()

    # --- combining
    def sum(self, values) -> np.ndarray:
        """The sum over processes of ``values`` (float64), identical on every process."""
        a = np.asarray(values, dtype=np.float64).copy()
        if self.active:
            self.comm.allreduce(a)
        return a

    def gather(self, items: list) -> list:
        """Every process's items (picklable), concatenated in rank order."""
        if not self.active:
            return items
        return [x for part in self.comm.mpi.allgather(items) for x in part]

    def wrap(self, optimizer):
        """The optimizer, averaging gradients over processes when there are several."""
        if not self.active:
            return optimizer
        from engine.distributed import DistributedOptimizer
        return DistributedOptimizer(optimizer, self.comm)

    def broadcast_model(self, model) -> None:
        if self.active:
            from engine.distributed import broadcast_parameters
            broadcast_parameters(model.parameters(), self.comm)

    def broadcast_run(self, model, opt, ema) -> None:
        """Rank 0's parameters, optimiser state and averaged weights to every process (after
        rank 0 alone read a checkpoint: other machines need not see the file)."""
        if not self.active:
            return
        self.broadcast_model(model)
        inner = getattr(opt, "optimizer", opt)
        hyper = self.comm.bcast_object(inner.state_dict()["hyper"])
        for k, v in hyper.items():
            setattr(inner, k, v)
        for name in inner.buffer_names:
            buffers = inner.buffers[name]
            present = self.comm.bcast_object([b is not None for b in buffers])
            for i, (p, has) in enumerate(zip(inner.params, present)):
                if has:
                    if buffers[i] is None:
                        buffers[i] = p.data.copy()
                    self.comm.bcast(buffers[i])
                else:
                    buffers[i] = None
        if ema is not None:
            for name in sorted(ema.shadow):
                self.comm.bcast(ema.shadow[name])
            ema.updates = self.comm.bcast_object(ema.updates)

    def check_resumed_world(self, saved: dict, saved_world: int, config, path: str) -> dict:
        """The saved settings to resume with N processes a run saved by ``saved_world``.

        Results depend on the global batch, not on N: a different N is accepted when the
        given ``--batch-size`` keeps the saved global batch, and refused otherwise with a
        message saying what would."""
        if saved_world == self.size:
            return saved
        global_batch = int(saved["batch_size"]) * saved_world
        if config.batch_size is not None and config.batch_size * self.size == global_batch:
            return dict(saved, batch_size=config.batch_size)
        fit = (f"--batch-size {global_batch // self.size}" if global_batch % self.size == 0
               else f"a process count dividing {global_batch}")
        raise UsageError(
            f"--resume {path}: the run was trained by {saved_world} process(es) at batch "
            f"{saved['batch_size']} (global batch {global_batch}); this launch has "
            f"{self.size}. Relaunch with {saved_world} processes, or keep the global batch "
            f"with {fit}")

    # --- failure
    def fail(self, code: int) -> None:
        """End every process of the job (non-zero ``code``): this one cannot go on."""
        if self.active and code:
            print(f"rank {self.rank} of {self.size}: stopping the job (exit code {code})",
                  file=sys.stderr, flush=True)
            self.comm.abort(code)

    def _install_excepthook(self) -> None:
        previous = sys.excepthook

        def hook(kind, value, tb):
            previous(kind, value, tb)
            self.fail(130 if issubclass(kind, KeyboardInterrupt) else 1)
        sys.excepthook = hook

    def _share_cores(self) -> None:
        """Processes on one machine share its cores: each one's CPU thread pool gets its share
        (unless GOOGLENET_CPU_THREADS says), and BLAS no more threads than the pool, instead
        of every process starting one thread per core: threads that outnumber the cores wait
        for each other at every barrier."""
        from kernels.cpu import parallel
        if not os.environ.get("GOOGLENET_CPU_THREADS"):
            parallel.THREADS = max(1, parallel.THREADS // self.comm.local_size)
        if os.environ.get("OMP_NUM_THREADS") or os.environ.get("OPENBLAS_NUM_THREADS"):
            return                       # the user chose
        limit_blas_threads(parallel.THREADS)

def limit_blas_threads(threads: int) -> None:
    """At most ``threads`` BLAS threads in this process (threadpoolctl, or OpenBLAS's own
    call where threadpoolctl is not installed)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        from kernels.cpu import parallel
        api = parallel._blas_api()
        if api.set is not None:
            api.set(threads)
        return
    threadpool_limits(threads)


def fail_job(code: int) -> None:
    """From the command line's error handling: end the MPI job if this process is in one."""
    if _active is not None:
        _active.fail(code)
