"""A multi-process batch loader: ``DataLoader``.

``DataLoader`` turns a dataset into batches ``(images float32 (N, C, S, S), labels int64 (N,))``
of NumPy arrays.  Decoding and augmentation run in worker processes that fill a bounded number
of batches ahead of the consumer, so a GPU step does not wait for JPEG decoding.  ``workers=0``
does everything in-process.

Workers start with ``fork`` while CUDA is not in use in this process (milliseconds, and the
dataset's file list is shared for free), and with ``forkserver`` once CuPy has been imported:
a child forked from a process that initialised CUDA inherits a CUDA context it cannot use, and
can deadlock on its first CUDA call or on locks held by the parent's CUDA threads.

Determinism: sample ``i`` in epoch ``e`` is augmented with
``np.random.default_rng([seed, e, i])``, and batches are yielded in order, so the batches do
not depend on the number of workers or on which worker handled what.  The shuffle order of
epoch ``e`` comes from ``default_rng([seed, e])``; call ``set_epoch(e)`` before each epoch.

Sharding (data-parallel training): with ``shard=(rank, size)`` the loader cuts each epoch's
order into *global* batches of ``size * batch_size`` samples and yields slice ``rank`` of each,
so ``size`` processes together see, step by step, exactly the batches one process at batch
``size * batch_size`` sees. Every process then yields the same number of batches, an empty one
``(float32 (0,), int64 (0,))`` where its slice is empty or unreadable, so that processes that
meet at each step stay in step.

Unreadable images: a file that cannot be opened or decoded is left out of its batch (the batch
is one sample smaller, never refilled from the next one: refilling would make every later batch
depend on which files failed).  A batch whose samples all fail is not yielded at all.  Each bad
file is reported once on stderr, its path is added to ``loader.skipped``, and it is not read
again in later epochs. ``loader.unreadable_classes()`` names the classes none of whose files
could be read.

Workers watch their parent: if it dies (even by SIGKILL), they delete the batches they wrote
to shared memory and exit, instead of living on as orphans.
"""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import queue
import shutil
import signal
import sys
import tempfile
import time
import traceback

import numpy as np

from data.folder import UnreadableImageError
from data.transforms import to_array

__all__ = ["DataLoader", "default_workers"]


def default_workers(device: str) -> int:
    """Workers for a run on `device`: none on the CPU (they would compete with the compute),
    every core but one with a GPU (decoding and augmenting a 224x224 JPEG costs about 2 ms
    per core, so a few workers would starve the GPU)."""
    return 0 if device == "cpu" else max(1, (os.cpu_count() or 2) - 1)


def _load_samples(dataset, transform, seed: int, epoch: int, indices):
    """Load and transform samples -> (list of float32 arrays, labels, bad [(index, path, why)])."""
    images, labels, bad = [], [], []
    for i in indices:
        try:
            img, label = dataset[i]
        except UnreadableImageError as exc:
            bad.append((int(i), exc.path, exc.reason))
            continue
        rng = np.random.default_rng([seed, epoch, int(i)])
        x = transform(img, rng) if transform is not None else to_array(img)
        images.append(np.ascontiguousarray(x, dtype=np.float32))
        labels.append(label)
    return images, np.asarray(labels, dtype=np.int64), bad


def _load_batch(dataset, transform, seed: int, epoch: int, indices):
    """-> (images (N, ...) float32 or None when every sample failed, labels (N,), bad)."""
    images, labels, bad = _load_samples(dataset, transform, seed, epoch, indices)
    return (np.stack(images) if images else None), labels, bad


# Handing a batch from a worker to the parent.  Pickling a large array through a pipe costs
# several copies and system calls in the parent, which is the one process that must keep the
# GPU busy.  Instead a worker writes the batch into a file on a memory file system (/dev/shm)
# and sends only its name; the parent maps the file and deletes its name at once, so the batch
# reaches the consumer without being copied in the parent, and the memory is freed when the
# array is.  Where there is no such file system, or it is full (containers often give
# /dev/shm only 64 MB), the batch goes through the pipe instead.

def _shm_root():
    root = "/dev/shm"
    return root if os.path.isdir(root) and os.access(root, os.W_OK) else None


def _pack_images(images, shm_dir, task_id):
    """Worker side: ('file', path, shape) when the batch went to shm_dir, else ('array', x)."""
    shape = (len(images),) + images[0].shape
    if any(x.shape != images[0].shape for x in images):
        raise ValueError("the transform returned arrays of different shapes in one batch: "
                         f"{sorted({x.shape for x in images})}")
    if shm_dir is not None:
        path = os.path.join(shm_dir, f"batch-{os.getpid()}-{task_id}.f32")
        try:
            with open(path, "wb") as f:
                for x in images:  # sample by sample: no stacked copy in the worker either
                    f.write(memoryview(x).cast("B"))
            return ("file", path, shape)
        except OSError:
            try:
                os.unlink(path)
            except OSError:
                pass
    return ("array", np.stack(images))


def _unpack_images(packed):
    """Parent side: the batch as an ndarray (backed by the mapped file when one was used)."""
    if packed[0] == "array":
        return packed[1]
    _, path, shape = packed
    try:
        with open(path, "r+b") as f:
            nbytes = int(np.prod(shape)) * 4
            mapped = mmap.mmap(f.fileno(), nbytes) if nbytes else bytearray()
    finally:
        os.unlink(path)
    return np.frombuffer(mapped, dtype=np.float32).reshape(shape)


def _discard(packed):
    """Free a batch that will never be used (shutting down early)."""
    if packed and packed[0] == "file":
        try:
            os.unlink(packed[1])
        except OSError:
            pass


def _worker_loop(dataset, transform, seed, task_q, result_q, shm_dir, parent_pid):
    # Ctrl-C reaches the whole process group; the parent alone decides how to shut down, and
    # a worker dying half-way through a put could leave the parent waiting.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The parent reads every result it asked for before it sends the stop signal, so anything
    # still unsent at exit is unwanted; without this a worker could hang on exit pushing it
    # into a pipe nobody reads.
    result_q.cancel_join_thread()
    while True:
        try:
            task = task_q.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent_pid:      # orphaned: the parent was killed
                if shm_dir is not None:
                    shutil.rmtree(shm_dir, ignore_errors=True)
                os._exit(0)
            continue
        if task is None:
            break
        task_id, epoch, indices = task
        try:
            images, labels, bad = _load_samples(dataset, transform, seed, epoch, indices)
            packed = _pack_images(images, shm_dir, task_id) if images else None
            result_q.put((task_id, True, (packed, labels, bad)))
        except Exception:
            result_q.put((task_id, False, traceback.format_exc()))


def default_start_method() -> str:
    """'fork' while CUDA cannot be in use here, else 'forkserver' (or 'spawn' where neither
    exists). The forkserver process is started clean, before any CUDA context exists in it."""
    methods = mp.get_all_start_methods()
    cuda_possible = "cupy" in sys.modules
    if "fork" in methods and not cuda_possible:
        return "fork"
    return "forkserver" if "forkserver" in methods else "spawn"


def _mp_context(start_method=None):
    return mp.get_context(start_method or default_start_method())


class DataLoader:
    """Batches of (images float32 (N, C, S, S), labels int64 (N,)) from a dataset.

    Args:
      dataset: ``len(dataset)`` and ``dataset[i] -> (PIL image, label)``; may raise
        UnreadableImageError for a bad file.
      batch_size: samples per batch (the last one may be smaller unless drop_last).
      shuffle: new random order each epoch, from (seed, epoch).
      transform: ``transform(img, rng) -> float32 array``; None means ``to_array``.  A
        multi-crop transform returning (n_crops, 3, S, S) gives batches (N, n_crops, 3, S, S).
      workers: worker processes; 0 loads in the calling process.
      seed: base seed for shuffling and augmentation (non-negative int).
      drop_last: leave out the final partial batch.
      prefetch: batches in flight per worker (ready or being made) ahead of the consumer.
      timeout: seconds to wait for one batch from the workers before TimeoutError; 0 = none.
      start_method: multiprocessing start method; None = ``default_start_method()``.
      shard: ``(rank, size)``: yield this process's slice of each global batch (above).
      return_indices: yield ``(images, labels, indices)``, the dataset index of each sample
        (the key of its per-sample randomness).

    ``len(loader)`` is the number of batches an epoch yields when no file is unreadable.
    With workers, the transform and dataset must be picklable if the platform lacks 'fork'.
    Worker batches arrive as arrays mapped from /dev/shm files (no copy in this process; see
    ``_pack_images``), or pickled through the pipe where /dev/shm is missing or full.
    Workers live for one pass over the data (one ``for`` loop).
    """

    def __init__(self, dataset, batch_size: int, shuffle: bool = False, transform=None,
                 workers: int = 0, seed: int = 0, drop_last: bool = False, prefetch: int = 2,
                 timeout: float = 0.0, start_method: str | None = None, shard=None,
                 return_indices: bool = False):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if workers < 0 or prefetch < 1:
            raise ValueError("workers must be >= 0 and prefetch >= 1")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.transform = transform
        self.workers = int(workers)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.prefetch = int(prefetch)
        self.timeout = float(timeout)
        self.start_method = start_method
        rank, size = shard if shard is not None else (0, 1)
        if not 0 <= rank < size:
            raise ValueError(f"shard must be (rank, size) with 0 <= rank < size, got {shard}")
        self.shard = None if shard is None else (int(rank), int(size))
        self.return_indices = bool(return_indices)
        self.epoch = 0
        self.skipped: list[str] = []
        self._bad_indices: set[int] = set()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose shuffle order and augmentation the next iteration uses."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    @property
    def global_batch_size(self) -> int:
        """Samples per step over all shards (``batch_size`` when not sharded)."""
        return self.batch_size * (self.shard[1] if self.shard else 1)

    def __len__(self) -> int:
        n, b = len(self.dataset), self.global_batch_size
        return n // b if self.drop_last else -(-n // b)

    def _batches(self, epoch: int):
        n = len(self.dataset)
        order = (np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle
                 else np.arange(n))
        step = self.global_batch_size
        batches = [order[k:k + step] for k in range(0, n, step)]
        if self.drop_last and batches and len(batches[-1]) < step:
            batches.pop()
        if self.shard is not None:
            lo = self.shard[0] * self.batch_size
            batches = [b[lo:lo + self.batch_size] for b in batches]
        # Files already known to be bad are dropped up front; the result is the same batch the
        # worker would have produced, without reading the file again.
        return [[int(i) for i in b if int(i) not in self._bad_indices] for b in batches]

    def _note_bad(self, bad) -> None:
        for index, path, reason in bad:
            if index in self._bad_indices:
                continue
            self._bad_indices.add(index)
            self.skipped.append(path)
            print(f"warning: skipping unreadable image {path} ({reason})", file=sys.stderr,
                  flush=True)

    @property
    def bad_indices(self) -> list:
        """Dataset indices of the files found unreadable so far, sorted."""
        return sorted(self._bad_indices)

    def unreadable_classes(self, also=()) -> list:
        """Names of the classes none of whose files could be read so far (they are never
        trained on); empty when every class has at least one readable image. ``also``: more
        indices known to be unreadable (found by the loaders of other processes)."""
        targets = getattr(self.dataset, "targets", None)
        classes = getattr(self.dataset, "classes", None)
        known = self._bad_indices.union(int(i) for i in also)
        if targets is None or classes is None or not known:
            return []
        bad = np.zeros(len(targets), bool)
        bad[list(known)] = True
        return [c for k, c in enumerate(classes) if (targets == k).any() and bad[targets == k].all()]

    def __iter__(self):
        batches = self._batches(self.epoch)
        if self.workers == 0:
            return self._iter_inline(batches, self.epoch)
        return self._iter_workers(batches, self.epoch)

    def _output(self, images, labels, indices, bad):
        """What to yield for a loaded batch, or None to yield nothing."""
        if images is None:
            if self.shard is None:
                return None
            images = np.empty((0,), np.float32)
        if not self.return_indices:
            return images, labels
        failed = {i for i, _, _ in bad}
        return images, labels, np.array([i for i in indices if i not in failed], np.int64)

    def _iter_inline(self, batches, epoch):
        for indices in batches:
            images, labels, bad = (_load_batch(self.dataset, self.transform, self.seed, epoch,
                                               indices) if indices else (None, np.empty(0, np.int64), []))
            self._note_bad(bad)
            out = self._output(images, labels, indices, bad)
            if out is not None:
                yield out

    def _iter_workers(self, batches, epoch):
        if not batches:
            return
        ctx = _mp_context(self.start_method)
        task_q, result_q = ctx.Queue(), ctx.Queue()
        shm_root = _shm_root()
        shm_dir = tempfile.mkdtemp(prefix="loader-", dir=shm_root) if shm_root else None
        procs, ready = [], {}
        try:
            for _ in range(min(self.workers, len(batches))):
                p = ctx.Process(target=_worker_loop, daemon=True,
                                args=(self.dataset, self.transform, self.seed, task_q,
                                      result_q, shm_dir, os.getpid()))
                p.start()
                procs.append(p)
            max_in_flight = self.prefetch * len(procs)
            sent = 0
            for want in range(len(batches)):
                while sent < len(batches) and sent - want < max_in_flight:
                    task_q.put((sent, epoch, batches[sent]))
                    sent += 1
                while want not in ready:
                    task_id, ok, payload = self._get_result(result_q, procs)
                    if not ok:
                        raise RuntimeError(f"data loader worker failed on batch {task_id}:\n"
                                           f"{payload}")
                    ready[task_id] = payload
                packed, labels, bad = ready.pop(want)
                self._note_bad(bad)
                out = self._output(None if packed is None else _unpack_images(packed), labels,
                                   batches[want], bad)
                if out is not None:
                    yield out
        finally:
            for packed, _, _ in ready.values():
                _discard(packed)
            self._shutdown(procs, task_q, result_q)
            if shm_dir is not None:
                # Also removes batches a worker wrote but never got to announce.
                shutil.rmtree(shm_dir, ignore_errors=True)

    def _get_result(self, result_q, procs):
        """Next result, polling so that a worker killed from outside is noticed, not awaited."""
        waited = 0.0
        while True:
            try:
                return result_q.get(timeout=1.0)
            except queue.Empty:
                waited += 1.0
                dead = [p for p in procs if not p.is_alive()]
                if dead:
                    codes = ", ".join(str(p.exitcode) for p in dead)
                    raise RuntimeError(f"{len(dead)} data loader worker(s) exited unexpectedly "
                                       f"(exit codes {codes})") from None
                if self.timeout and waited >= self.timeout:
                    raise TimeoutError(f"no batch from the data loader workers in "
                                       f"{self.timeout:.0f} s") from None

    @staticmethod
    def _shutdown(procs, task_q, result_q, grace: float = 2.0):
        # Polite stop first (workers finish their current batch), then force.  Results still
        # arriving are drained meanwhile so that no worker blocks writing into a full pipe.
        for _ in procs:
            try:
                task_q.put_nowait(None)
            except Exception:
                pass
        deadline = time.monotonic() + grace
        while any(p.is_alive() for p in procs) and time.monotonic() < deadline:
            try:
                _, ok, payload = result_q.get(timeout=0.05)
            except Exception:
                continue
            if ok:
                _discard(payload[0])
        for p in procs:
            if p.is_alive():
                p.terminate()
                p.join(timeout=2.0)
            if p.is_alive():
                p.kill()
                p.join()
        for q in (task_q, result_q):
            q.cancel_join_thread()
            q.close()
