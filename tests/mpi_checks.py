"""Checks run inside an MPI job by tests/test_distributed.py: ``mpirun -n 2 python
tests/mpi_checks.py NAME``. Each prints ``ok NAME`` on rank 0 when it passes; a failed assert
raises, and the excepthook installed by ``trainer.distributed`` then ends the whole job."""
from __future__ import annotations

import sys

import numpy as np


def collectives():
    """allreduce, iallreduce and bcast over NumPy against a sum computed in this process from
    every rank's inputs (each rank can recreate the others' from their seeds)."""
    from engine.distributed import Communicator
    comm = Communicator()
    inputs = [np.random.default_rng(r).standard_normal((3, 1001)) for r in range(comm.size)]
    expected = np.sum(inputs, axis=0)           # the reference: a plain NumPy sum
    a = inputs[comm.rank].copy()
    assert comm.allreduce(a) is a
    np.testing.assert_allclose(a, expected, rtol=1e-14, atol=1e-14)
    b = inputs[comm.rank].astype(np.float32)
    comm.iallreduce(b).wait()
    np.testing.assert_allclose(b, expected.astype(np.float32), rtol=1e-5, atol=1e-5)
    ints = np.arange(5, dtype=np.int64) * (comm.rank + 1)
    comm.allreduce(ints)
    np.testing.assert_array_equal(ints, np.arange(5) * sum(range(1, comm.size + 1)))
    c = inputs[comm.rank].copy()
    comm.bcast(c, root=comm.size - 1)
    np.testing.assert_array_equal(c, inputs[comm.size - 1])
    assert comm.bcast_object({"rank": comm.rank})["rank"] == 0
    comm.barrier()
    return comm


def optimizer():
    """DistributedOptimizer (several buckets, started from backward's hooks) on each rank's
    half of a batch against plain SGD on the whole batch in one process."""
    import layers as L
    from engine import SGD, Tensor, manual_seed
    from engine.distributed import Communicator, DistributedOptimizer, broadcast_parameters
    comm = Communicator()
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((8 * comm.size, 20)), rng.integers(0, 5, 8 * comm.size)

    def net(seed):
        manual_seed(seed)
        return [L.Linear(20, 30, dtype="float64"), L.Linear(30, 30, dtype="float64"),
                L.Linear(30, 5, dtype="float64")]

    def loss(layers, xs, ts):
        h = Tensor(xs)
        for k, layer in enumerate(layers):
            h = layer(h)
            if k < len(layers) - 1:
                h = L.relu(h)
        return L.softmax_cross_entropy(h, ts)

    reference = net(1)
    ref_opt = SGD([p for m in reference for p in m.parameters()], lr=0.1, momentum=0.9)
    mine = net(1 + comm.rank)                   # different on each rank until the broadcast
    params = [p for m in mine for p in m.parameters()]
    broadcast_parameters(params, comm)
    opt = DistributedOptimizer(SGD(params, lr=0.1, momentum=0.9), comm, bucket_mb=0.004)
    assert len(opt.buckets) >= 3, len(opt.buckets)
    opt.weight_decay, opt.momentum = 0.0, 0.9   # hyper-parameters reach the wrapped optimiser
    assert not {"weight_decay", "momentum"} & set(vars(opt)), vars(opt)
    lo = comm.rank * 8
    for _ in range(3):
        ref_opt.zero_grad()
        loss(reference, x, t).backward()
        ref_opt.step()
        opt.zero_grad()
        loss(mine, x[lo:lo + 8], t[lo:lo + 8]).backward()
        assert opt._next == len(opt.buckets), "buckets were not all started during backward"
        opt.step()
    for p, q in zip(params, ref_opt.params):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-12, atol=1e-13)
    return comm


def nccl():
    """The same sums and broadcasts over NCCL, on one GPU per process (CuPy arrays)."""
    from engine.backend import require_cuda
    from engine.distributed import Communicator
    cp = require_cuda()
    comm = Communicator()
    comm.use_gpu()
    inputs = [np.random.default_rng(r).standard_normal((3, 1001)) for r in range(comm.size)]
    a = cp.asarray(inputs[comm.rank])
    comm.allreduce(a)
    np.testing.assert_allclose(cp.asnumpy(a), np.sum(inputs, axis=0), rtol=1e-14, atol=1e-14)
    b = cp.asarray(inputs[comm.rank], dtype=cp.float32)
    comm.iallreduce(b).wait()
    np.testing.assert_allclose(cp.asnumpy(b), np.sum(inputs, axis=0), rtol=1e-5, atol=1e-5)
    c = cp.asarray(inputs[comm.rank])
    comm.bcast(c, root=comm.size - 1)
    np.testing.assert_array_equal(cp.asnumpy(c), inputs[comm.size - 1])
    return comm


def raises():
    """Rank 1 fails while rank 0 waits for it in a collective: the job must end."""
    from trainer.distributed import Distributed
    dist = Distributed.start(True)
    if dist.rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    dist.barrier()      # never completes: rank 1's excepthook aborts the job
    return dist.comm


if __name__ == "__main__":
    from trainer.distributed import Distributed
    Distributed.start(True)        # a failed assert on any rank ends the job, not a hang
    name = sys.argv[1]
    comm = {"collectives": collectives, "optimizer": optimizer, "nccl": nccl,
            "raises": raises}[name]()
    if comm.rank == 0:
        print(f"ok {name}", flush=True)
