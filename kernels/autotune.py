"""Pick the fastest tile configuration per (direction, shape, device) and remember it on disk.

The first time a convolution shape is seen, :func:`best` times every candidate (version, config)
on the real inputs with CUDA events (a few warm-up runs, then the median of several) and keeps
the fastest. Choices persist in a JSON file so later processes skip the search:

    default  ~/.cache/googlenet_engine/autotune.json
    override GOOGLENET_AUTOTUNE_CACHE=/path/to/file.json
    disable  GOOGLENET_AUTOTUNE=0 (conv_cuda then uses a size-based heuristic)

File format: ``{"format": 1, "entries": {key: {"version", "config", "ms", "timings"}}}``; the
key names direction, problem, device and a hash of the kernel sources, so editing a kernel
invalidates its old choices. Writes are atomic (temporary file in the same directory, then
``os.replace``) and merge with what is on disk, so concurrent processes do not corrupt the file;
a corrupt or unreadable file is treated as empty.

Everything except :func:`time_cuda` is plain Python and tested on the CPU.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import statistics
import threading
from pathlib import Path

from engine.io import atomic_write

FORMAT = 1
_lock = threading.Lock()
_memory: dict[str, dict] = {}   # in-process layer over the file, by cache path
_loaded: set[str] = set()


def enabled() -> bool:
    """False when GOOGLENET_AUTOTUNE is set to 0/false/off."""
    return os.environ.get("GOOGLENET_AUTOTUNE", "1").strip().lower() not in ("0", "false", "off", "no")


def cache_path() -> Path:
    env = os.environ.get("GOOGLENET_AUTOTUNE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "googlenet_engine" / "autotune.json"


@functools.cache
def sources_tag() -> str:
    """Short hash of every kernel source: a changed kernel gets fresh tuning."""
    h = hashlib.sha256()
    for path in sorted((Path(__file__).with_name("cuda")).glob("*.cu")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def make_key(direction: str, problem: tuple, device: str, tag: str | None = None) -> str:
    """'fwd|n128.c192.h28.w28.k64.k1|NVIDIA H100 80GB HBM3|<sources hash>'."""
    n, c, h, w, k, ks = (int(v) for v in problem)
    tag = sources_tag() if tag is None else tag
    return f"{direction}|n{n}.c{c}.h{h}.w{w}.k{k}.ks{ks}|{device}|{tag}"


def load(path: Path | None = None) -> dict:
    """Entries stored in the cache file ({} when missing, unreadable or of another format)."""
    path = cache_path() if path is None else Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {}
    entries = data.get("entries")
    return entries if isinstance(entries, dict) else {}


def save(entries: dict, path: Path | None = None) -> Path:
    """Merge ``entries`` into the cache file atomically; return its path.

    The new content goes to a temporary file in the target directory (same file system), is
    flushed and fsynced, and then replaces the old file in one ``os.replace``: a reader sees the
    old file or the new one, never half of one. On any failure the temporary file is removed.
    """
    path = cache_path() if path is None else Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    merged = load(path)
    merged.update(entries)
    with atomic_write(path, "w") as f:
        json.dump({"format": FORMAT, "entries": merged}, f, indent=1, sort_keys=True)
    return path


def lookup(key: str, path: Path | None = None) -> dict | None:
    """The stored entry for ``key`` (the file is read once per process and path)."""
    path = cache_path() if path is None else Path(path)
    p = str(path)
    with _lock:
        if p not in _loaded:
            _memory.setdefault(p, {}).update(load(path))
            _loaded.add(p)
        return _memory.get(p, {}).get(key)


def record(key: str, entry: dict, path: Path | None = None) -> None:
    """Remember ``entry`` for ``key`` in memory and on disk (disk errors only warn)."""
    path = cache_path() if path is None else Path(path)
    with _lock:
        _memory.setdefault(str(path), {})[key] = entry
    try:
        save({key: entry}, path)
    except OSError as exc:  # a read-only home must not break training
        import warnings  # noqa: PLC0415
        warnings.warn(f"autotune: could not write {path}: {exc}", RuntimeWarning, stacklevel=2)


def forget_memory() -> None:
    """Drop the in-process layer (tests; or after editing the file by hand)."""
    with _lock:
        _memory.clear()
        _loaded.clear()


def best(key: str, candidates, measure, path: Path | None = None):
    """The fastest candidate for ``key``: cached, or measured now and then cached.

    ``candidates`` are (version, config) pairs; ``measure(candidate) -> milliseconds``. A
    candidate whose measurement raises (for example, too many resources on this device) is
    skipped. Returns (version, config tuple).
    """
    candidates = [(str(v), tuple(int(c) for c in cfg)) for v, cfg in candidates]
    if not candidates:
        raise ValueError(f"autotune: no candidates for {key}")
    hit = lookup(key, path)
    if hit is not None:
        choice = (hit.get("version"), tuple(hit.get("config", ())))
        if choice in candidates:
            return choice
    timings = {}
    errors = {}
    for cand in candidates:
        try:
            timings[cand] = float(measure(cand))
        except Exception as exc:  # noqa: BLE001  (report below if nothing works)
            errors[cand] = f"{type(exc).__name__}: {exc}"
    if not timings:
        raise RuntimeError(f"autotune: every candidate failed for {key}: {errors}")
    choice = min(timings, key=timings.get)
    entry = {
        "version": choice[0],
        "config": list(choice[1]),
        "ms": timings[choice],
        "timings": {f"{v}:{'x'.join(map(str, c))}": round(t, 5) for (v, c), t in timings.items()},
    }
    record(key, entry, path)
    return choice


def time_cuda(fn, warmup: int = 2, repeat: int = 7) -> float:
    """Median milliseconds of ``fn()`` on the current CUDA stream, timed with CUDA events."""
    import cupy as cp  # noqa: PLC0415

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
