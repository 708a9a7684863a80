"""Writing files so that a crash never leaves half of one behind."""
from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
import time


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path, mode: str = "wb", **open_kwargs):
    """``with atomic_write(path, "w") as f: ...`` writes ``path`` all or nothing.

    The data goes to a temporary file in the same directory, is flushed and
    fsynced, and then renamed over ``path`` in one ``os.replace``: a reader (or a
    crash, or Ctrl-C) sees either the old file or the new one, never a mix. On
    any exception the temporary file is removed and the old file is untouched.
    The file gets the permissions a plain ``open`` would give it (0666 less the
    umask, so usually 0644), not the 0600 of a temporary file. A process killed
    mid-write leaves a ``.<name>.*.tmp`` file behind; ``remove_stale_temporaries``
    deletes such leftovers.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    with _removed_on_error(tmp):
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    _sync_directory(directory)


@contextlib.contextmanager
def _removed_on_error(tmp):
    """Delete the temporary file ``tmp`` if the block fails (the target stays untouched)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _sync_directory(directory) -> None:
    """Make a rename in ``directory`` durable (not possible on every platform)."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_copy(src, dst) -> None:
    """Make ``dst`` hold what ``src`` holds, all or nothing, as ``atomic_write`` does: by a hard
    link (no data written; the two names share the file until either is replaced) where the
    filesystem has them, else by copying. Writers here always replace a file, never change it
    in place, so the shared file is never seen to change under the other name."""
    src, dst = os.fspath(src), os.fspath(dst)
    directory = os.path.dirname(os.path.abspath(dst))
    tmp = os.path.join(directory, f".{os.path.basename(dst)}.{os.getpid()}.link.tmp")
    try:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        os.link(src, tmp)
    except OSError:     # no hard links here (some network and FAT filesystems): copy
        with open(src, "rb") as fin, atomic_write(dst) as fout:
            shutil.copyfileobj(fin, fout, 1 << 22)
        return
    with _removed_on_error(tmp):
        os.replace(tmp, dst)
    _sync_directory(directory)


def remove_stale_temporaries(directory, min_age_s: float = 0.0) -> list:
    """Delete the temporary files that ``atomic_write`` calls killed mid-write left in
    `directory` (older than `min_age_s` seconds); return their paths."""
    removed = []
    for tmp in glob.glob(os.path.join(os.fspath(directory), ".*.tmp")):
        with contextlib.suppress(OSError):
            if time.time() - os.path.getmtime(tmp) >= min_age_s:
                os.unlink(tmp)
                removed.append(tmp)
    return removed
