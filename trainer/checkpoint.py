"""Checkpoints: one ``.npz`` file of named arrays plus JSON metadata, written atomically.

The file is a plain NumPy ``.npz`` (a zip of ``.npy`` files), so it can be inspected with
``np.load`` alone.  It never holds pickled objects and is always read with
``allow_pickle=False``: loading a checkpoint cannot run code.

Layout inside the zip:
  * one entry per array, keyed by the caller's names.  Callers namespace them with a slash,
    e.g. ``model/conv1.weight``, ``ema/conv1.weight``, ``optim/momentum/conv1.weight``
    (``pack_namespaces`` / ``unpack_namespaces`` convert to and from nested dicts);
  * ``__meta__``: a uint8 array holding UTF-8 JSON:
    ``{"format": "googlenet-numpy-checkpoint", "version": 1, "keys": [...], "meta": {...}}``.
    ``keys`` lists every array so a file missing one is detected; ``meta`` is the caller's
    dict (epoch, step, learning rate, RNG states, metrics...).

Writing goes to a temporary file in the target's directory, is flushed and fsync'ed, then
renamed over the target with ``os.replace``: a crash at any point leaves either the old
checkpoint or the new one, never a half-written file under the target name.

RNG states: ``pack_rng_state`` / ``unpack_rng_state`` turn a ``np.random.Generator`` into a
JSON-able dict and back (the PCG64 state is a pair of 128-bit integers, which JSON keeps exactly
since Python's json module writes integers of any size); ``pack_python_random_state`` does the
same for the ``random`` module.
"""

from __future__ import annotations

import json
import os
import random

import numpy as np

from engine.io import atomic_write

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "CheckpointError", "save_checkpoint",
           "load_checkpoint", "pack_namespaces", "unpack_namespaces", "pack_rng_state",
           "unpack_rng_state", "pack_python_random_state", "unpack_python_random_state"]

CHECKPOINT_FORMAT = "googlenet-numpy-checkpoint"
CHECKPOINT_VERSION = 1
META_KEY = "__meta__"


class CheckpointError(ValueError):
    """The file exists but is corrupt, truncated, or not a checkpoint of this project."""


def _json_default(obj):
    # NumPy scalars and small arrays turn up in metadata (a loss, an accuracy): store them as
    # plain numbers/lists instead of failing.
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"metadata value of type {type(obj).__name__} is not JSON-serialisable")


def save_checkpoint(path: str, arrays: dict, meta: dict | None = None) -> str:
    """Write `arrays` (name -> ndarray) and `meta` (JSON-able dict) atomically to `path`.

    The file name is used exactly as given (no '.npz' is appended).  Returns the path.
    Raises TypeError/ValueError before touching the disk for bad names, object arrays or
    metadata that JSON cannot hold.
    """
    path = os.fspath(path)
    clean = {}
    for key, value in arrays.items():
        if not isinstance(key, str) or not key or key == META_KEY:
            raise ValueError(f"bad array name {key!r}")
        a = np.asarray(value)
        if a.dtype.hasobject:
            raise TypeError(f"array {key!r} has dtype object, which cannot be stored without "
                            "pickle")
        clean[key] = a
    header = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
              "keys": sorted(clean), "meta": dict(meta or {})}
    blob = json.dumps(header, default=_json_default, sort_keys=True).encode("utf-8")
    clean[META_KEY] = np.frombuffer(blob, dtype=np.uint8)

    with atomic_write(path) as f:
        np.savez(f, **clean)
    return path


def load_checkpoint(path: str):
    """Read a checkpoint written by ``save_checkpoint`` -> (arrays dict, meta dict).

    Raises FileNotFoundError when the file is missing and CheckpointError (a ValueError) when
    it is truncated, corrupt, from a newer version of this format, or not one of ours.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"PK\x03\x04":
        raise CheckpointError(f"{path} is not a checkpoint of this project (not an .npz/zip "
                              f"file; it starts with {magic!r})")
    try:
        # Our own file object: np.load does not close a path it opened when the zip is bad.
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            names = list(npz.files)
            if META_KEY not in names:
                raise CheckpointError(f"{path} is an .npz file but not a checkpoint of this "
                                      f"project (no {META_KEY} entry)")
            # Read everything now: a damaged member only shows itself (CRC error, short read)
            # when it is read, and the caller should hear about it here.
            arrays = {k: npz[k] for k in names}
    except CheckpointError:
        raise
    except Exception as exc:  # zipfile.BadZipFile, zlib.error, ValueError, EOFError, OSError...
        raise CheckpointError(f"cannot read checkpoint {path}: the file is corrupt or "
                              f"truncated ({type(exc).__name__}: {exc})") from exc

    raw = arrays.pop(META_KEY)
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint metadata is not valid JSON") from exc
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project (format "
                              f"{header.get('format') if isinstance(header, dict) else None!r},"
                              f" expected {CHECKPOINT_FORMAT!r})")
    version = header.get("version")
    if not isinstance(version, int) or version > CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {version!r}; this code reads "
                              f"versions up to {CHECKPOINT_VERSION}")
    missing = sorted(set(header.get("keys", [])) - set(arrays))
    if missing:
        raise CheckpointError(f"{path} is incomplete: arrays missing: {missing[:5]}"
                              + (" ..." if len(missing) > 5 else ""))
    return arrays, header.get("meta", {})


def read_meta(path: str) -> dict:
    """Only the metadata of a checkpoint (its arrays are not read)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as npz:
            raw = npz[META_KEY]
        header = json.loads(raw.tobytes().decode("utf-8"))
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: not a checkpoint of this project "
                              f"or damaged ({type(exc).__name__}: {exc})") from exc
    if not isinstance(header, dict) or header.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this project")
    return header.get("meta", {})


def pack_namespaces(groups: dict) -> dict:
    """{'model': {'conv1.weight': a}, 'ema': {...}} -> {'model/conv1.weight': a, ...}."""
    out = {}
    for ns, arrays in groups.items():
        if "/" in ns:
            raise ValueError(f"namespace {ns!r} must not contain '/'")
        for key, value in arrays.items():
            out[f"{ns}/{key}"] = value
    return out


def unpack_namespaces(arrays: dict) -> dict:
    """Inverse of ``pack_namespaces``: split each key at its first '/'.

    Keys without a '/' land in the '' namespace.
    """
    out: dict = {}
    for key, value in arrays.items():
        ns, _, rest = key.partition("/")
        if not rest:
            ns, rest = "", key
        out.setdefault(ns, {})[rest] = value
    return out


def _to_jsonable(obj):
    if isinstance(obj, np.ndarray):
        return {"__ndarray__": obj.tolist(), "dtype": obj.dtype.str}
    if isinstance(obj, dict):
        return {k: _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _from_jsonable(obj):
    if isinstance(obj, dict):
        if "__ndarray__" in obj:
            return np.array(obj["__ndarray__"], dtype=np.dtype(obj["dtype"]))
        return {k: _from_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_jsonable(v) for v in obj]
    return obj


def pack_rng_state(rng: np.random.Generator) -> dict:
    """A JSON-able copy of a Generator's bit-generator state (PCG64, MT19937, Philox, ...)."""
    return _to_jsonable(rng.bit_generator.state)


def unpack_rng_state(state: dict) -> np.random.Generator:
    """A new Generator continuing exactly where the packed one was."""
    state = _from_jsonable(state)
    name = state.get("bit_generator")
    bitgen_cls = getattr(np.random, name, None) if isinstance(name, str) else None
    if bitgen_cls is None or not isinstance(bitgen_cls, type) or \
            not issubclass(bitgen_cls, np.random.BitGenerator):
        raise ValueError(f"unknown bit generator {name!r} in RNG state")
    bitgen = bitgen_cls()
    bitgen.state = state
    return np.random.Generator(bitgen)


def pack_python_random_state(state=None) -> dict:
    """JSON-able form of ``random.getstate()`` (or of the given state tuple)."""
    version, internal, gauss_next = random.getstate() if state is None else state
    return {"version": version, "internal": list(internal), "gauss_next": gauss_next}


def unpack_python_random_state(packed: dict) -> tuple:
    """The tuple to pass to ``random.setstate`` (or ``random.Random().setstate``)."""
    return (packed["version"], tuple(packed["internal"]), packed["gauss_next"])


# ---------------------------------------------------------------------------------------------
# A training run in a checkpoint
# ---------------------------------------------------------------------------------------------
RUN_KIND = "train-run"          # meta["kind"] of a checkpoint written by trainer.loop


def model_meta(spec, model, image_size: int, init: str) -> dict:
    """What it takes to rebuild the network: stored as meta['model']."""
    return {"network": spec.name, "num_classes": model.num_classes,
            "aux_logits": bool(getattr(model, "aux_logits", False)), "dtype": str(model.dtype),
            "image_size": int(image_size), "init": init}


def build_model(meta_model: dict, path: str = "checkpoint"):
    """(spec, model) from meta['model'], with a clear error for malformed metadata."""
    from models.spec import get_spec
    try:
        spec = get_spec(meta_model.get("network", "googlenet"))
        model = spec.build(int(meta_model["num_classes"]), aux_logits=bool(meta_model["aux_logits"]),
                           dtype=meta_model["dtype"], seed=None,
                           init=meta_model.get("init") or spec.inits[0],
                           image_size=int(meta_model.get("image_size", 224)))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: its model description is malformed or unknown "
                              f"({type(exc).__name__}: {exc})") from None
    return spec, model


def load_weights(model, weights: dict, path: str, which: str) -> None:
    """model.load_state_dict(weights), with errors (missing/unexpected keys, shapes) naming
    the file instead of raising from deep inside the module."""
    try:
        model.load_state_dict(weights)
    except (KeyError, ValueError) as exc:
        msg = exc.args[0] if exc.args else exc
        raise CheckpointError(f"{path}: its {which} weights do not fit the model: {msg}") from None


# ---------------------------------------------------------------------------------------------
# Weights files: one set of weights with what it takes to use them
# ---------------------------------------------------------------------------------------------
WEIGHTS_KIND = "weights"        # meta["kind"] of a weights-only file (export, import-caffe)


def save_weights_file(path: str, arrays: dict, model: dict, classes: list, preprocessing: dict,
                      **info) -> str:
    """Write a weights-only file: ``model/<name>`` arrays, and in ``meta`` the model
    description (``model_meta``), the class names, the preprocessing and ``info`` (where the
    weights came from). ``eval``, ``predict``, ``export`` and ``train --weights`` read it."""
    if len(classes) != model["num_classes"]:
        raise ValueError(f"{len(classes)} class names for a model of {model['num_classes']} "
                         f"classes")
    meta = {"kind": WEIGHTS_KIND, "model": model, "classes": list(classes),
            "preprocessing": preprocessing, **info}
    return save_checkpoint(path, pack_namespaces({"model": arrays}), meta)


def read_model_file(path: str, prefer_average: bool = True):
    """(weights dict, meta, which) from a training checkpoint or a weights file.

    ``which`` is "ema" (the Polyak-averaged weights, used when present and
    ``prefer_average``) or "model"; a weights file says in ``meta["weights"]`` which set it
    holds. Raises CheckpointError for a file without a model description."""
    arrays, meta = load_checkpoint(path)
    if not isinstance(meta.get("model"), dict) or not isinstance(meta.get("classes"), list):
        raise CheckpointError(f"{path} holds no model description: not a checkpoint or weights "
                              "file of this project")
    groups = unpack_namespaces(arrays)
    which = "ema" if prefer_average and "ema" in groups else "model"
    if which not in groups:
        raise CheckpointError(f"{path} holds no model weights")
    if meta.get("kind") == WEIGHTS_KIND:
        which = meta.get("weights", "model")
    weights = groups["ema" if which == "ema" and "ema" in groups else "model"]
    if weights is groups.get("ema") and "model" in groups:
        # The averages cover the parameters; the buffers (batch norm's running statistics)
        # come from the model's own state.
        weights = {**{k: v for k, v in groups["model"].items() if k not in weights}, **weights}
    return weights, meta, which
