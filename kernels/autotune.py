"""Pick the fastest valid tile configuration per (direction, shape, flags, device, toolchain,
sources) and remember it on disk.

The first time a convolution is seen, :func:`best` validates every candidate (version, config)
and times the valid ones; ``kernels.conv_cuda.select`` supplies the checks (against the float64
reference at a small batch) and the timing (CUDA events on the real inputs). Choices persist in
a JSON file so later processes skip the search:

    default  ~/.cache/googlenet_engine/autotune.json
    override GOOGLENET_AUTOTUNE_CACHE=/path/to/file.json
    disable  GOOGLENET_AUTOTUNE=0 (conv_cuda then uses a size-based heuristic)

File format: ``{"format": 2, "entries": {key: {"version", "config", "ms", "timings",
"rejected"}}}``; the key (:func:`make_key`) names everything that can change the choice, so
editing a kernel or the plan code, or changing CuPy, the driver or the device, invalidates old
choices. Writes are atomic (temporary file in the same directory, then
``os.replace``) and merge with what is on disk, so concurrent processes do not corrupt the file;
a corrupt or unreadable file is treated as empty.

Plain Python, tested on the CPU.
"""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from engine.io import atomic_write

FORMAT = 2
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


def sources_tag() -> str:
    """Short hash of the kernel sources, headers and launch-plan code (``conv_cuda.sources``)."""
    from .conv_cuda.sources import sources_tag as tag  # noqa: PLC0415
    return tag()


def make_key(direction: str, problem: tuple, device: str, *, variant: str = "",
             toolchain: str = "", tag: str | None = None) -> str:
    """Everything that can change the choice, joined by '|':

    'fwd|n128.c192.h28.w28.k64.ks1|aligned1.sm132|NVIDIA H200 sm_90|cupy 14.2.0 ...|<hash>'

    direction and problem; the call's variant (16-byte alignment, which picks the float4 or the
    scalar instance, and the SM count, which sets split-K); the device; the CuPy, CUDA runtime /
    driver and NVRTC versions; the hash of kernel sources and plan code.
    """
    n, c, h, w, k, ks = (int(v) for v in problem)
    tag = sources_tag() if tag is None else tag
    return "|".join((direction, f"n{n}.c{c}.h{h}.w{w}.k{k}.ks{ks}", variant, device, toolchain, tag))


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


def best(key: str, candidates, measure, *, validate=None, skip: tuple = (),
         path: Path | None = None):
    """The fastest *valid* candidate for ``key``: cached, or checked, measured and cached.

    ``candidates`` are (version, config) pairs. ``validate(candidate) -> (ok, detail)`` runs
    first (when given): a candidate that is not ok can never win, however fast, and is listed
    under "rejected" in the cache entry. ``measure(candidate) -> milliseconds`` then times the
    valid ones. An exception that is an instance of ``skip`` (a launch the device refuses)
    drops the candidate; any other exception propagates unchanged, since a CUDA fault leaves
    the context broken and must be reported where it happened, not hidden. Raises RuntimeError
    when no candidate is left. Returns (version, config tuple).
    """
    candidates = [(str(v), tuple(int(c) for c in cfg)) for v, cfg in candidates]
    if not candidates:
        raise ValueError(f"autotune: no candidates for {key}")
    hit = lookup(key, path)
    if hit is not None:
        choice = (hit.get("version"), tuple(hit.get("config", ())))
        if choice in candidates:
            return choice
    timings: dict = {}
    rejected: dict = {}
    for cand in candidates:
        try:
            if validate is not None:
                ok, detail = validate(cand)
                if not ok:
                    rejected[cand] = f"invalid: {detail}"
                    continue
            timings[cand] = float(measure(cand))
        except skip as exc:
            rejected[cand] = f"{type(exc).__name__}: {exc}"
    name = lambda c: f"{c[0]}:{'x'.join(map(str, c[1]))}"  # noqa: E731
    if not timings:
        raise RuntimeError(f"autotune: no candidate passed for {key}: "
                           + "; ".join(f"{name(c)} {why}" for c, why in rejected.items()))
    choice = min(timings, key=timings.get)
    entry = {
        "version": choice[0],
        "config": list(choice[1]),
        "ms": timings[choice],
        "timings": {name(c): round(t, 5) for c, t in timings.items()},
        "rejected": {name(c): why for c, why in rejected.items()},
    }
    record(key, entry, path)
    return choice
