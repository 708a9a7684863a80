"""Checkpoint files: round trip, atomic replacement, clear errors, RNG state packing."""

import json
import os
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import trainer.checkpoint as ckpt
from trainer.checkpoint import (CheckpointError, load_checkpoint, pack_namespaces,
                               pack_python_random_state, pack_rng_state, save_checkpoint,
                               unpack_namespaces, unpack_python_random_state, unpack_rng_state)


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def _state(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "model/conv1.weight": rng.standard_normal((4, 3, 7, 7)).astype(np.float32),
        "model/conv1.bias": np.full(4, 0.2, np.float32),
        "ema/conv1.weight": rng.standard_normal((4, 3, 7, 7)).astype(np.float32),
        "optim/step": np.array(12, np.int64),
        "optim/momentum/conv1.weight": np.zeros((4, 3, 7, 7), np.float64),
    }


def test_round_trip(tmp_path):
    path = str(tmp_path / "ck.npz")
    arrays = _state()
    meta = {"epoch": 3, "lr": 0.0096, "loss": np.float32(1.25), "classes": ["a", "b"],
            "nested": {"top5": np.float64(88.5)}}
    assert save_checkpoint(path, arrays, meta) == path
    got, got_meta = load_checkpoint(path)
    assert got.keys() == arrays.keys()
    for k in arrays:
        assert got[k].dtype == arrays[k].dtype and got[k].shape == arrays[k].shape
        np.testing.assert_array_equal(got[k], arrays[k])
    assert got_meta == {"epoch": 3, "lr": 0.0096, "loss": 1.25, "classes": ["a", "b"],
                        "nested": {"top5": 88.5}}
    # No temporary files left next to it.
    assert os.listdir(tmp_path) == ["ck.npz"]


def test_plain_numpy_can_read_it(tmp_path):
    path = str(tmp_path / "ck.npz")
    save_checkpoint(path, _state(), {"epoch": 1})
    with np.load(path, allow_pickle=False) as z:
        assert "model/conv1.weight" in z.files
        header = json.loads(z["__meta__"].tobytes())
    assert header["format"] == ckpt.CHECKPOINT_FORMAT and header["meta"] == {"epoch": 1}


def test_name_used_as_given(tmp_path):
    path = str(tmp_path / "last.ckpt")
    save_checkpoint(path, {"a": np.ones(2)}, {})
    assert os.path.exists(path) and not os.path.exists(path + ".npz")
    assert load_checkpoint(path)[0]["a"].tolist() == [1.0, 1.0]


@settings(deadline=None, max_examples=25)
@given(shapes=st.lists(st.lists(st.integers(0, 4), max_size=4), min_size=1, max_size=4),
       dtype=st.sampled_from([np.float32, np.float64, np.float16, np.int64, np.int32, np.uint8,
                              np.bool_]))
def test_round_trip_any_shape_dtype(tmp_path_factory, shapes, dtype):
    path = str(tmp_path_factory.mktemp("h") / "ck.npz")
    rng = np.random.default_rng(0)
    arrays = {f"g/{i}": (rng.standard_normal(s) * 10).astype(dtype) for i, s in enumerate(shapes)}
    save_checkpoint(path, arrays, {})
    got, _ = load_checkpoint(path)
    for k, a in arrays.items():
        assert got[k].dtype == a.dtype and got[k].shape == a.shape
        np.testing.assert_array_equal(got[k], a)


def test_failure_mid_write_keeps_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "ck.npz")
    save_checkpoint(path, _state(0), {"epoch": 1})
    before = _read(path)

    def broken_savez(f, **arrays):
        f.write(b"PK\x03\x04 half a zip")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt.np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _state(1), {"epoch": 2})
    monkeypatch.undo()
    assert _read(path) == before
    assert os.listdir(tmp_path) == ["ck.npz"]
    assert load_checkpoint(path)[1] == {"epoch": 1}


def test_interrupt_before_rename_keeps_old_file(tmp_path, monkeypatch):
    path = str(tmp_path / "ck.npz")
    save_checkpoint(path, _state(0), {"epoch": 1})

    def interrupted(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt.os, "fsync", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _state(1), {"epoch": 2})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ck.npz"]
    assert load_checkpoint(path)[1] == {"epoch": 1}


def test_bad_input_rejected_before_writing(tmp_path):
    path = str(tmp_path / "ck.npz")
    with pytest.raises(TypeError, match="object"):
        save_checkpoint(path, {"x": np.array([{}, 1], dtype=object)}, {})
    with pytest.raises(ValueError, match="bad array name"):
        save_checkpoint(path, {"__meta__": np.ones(1)}, {})
    with pytest.raises(TypeError, match="JSON"):
        save_checkpoint(path, {"x": np.ones(1)}, {"f": object()})
    assert os.listdir(tmp_path) == []


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(str(tmp_path / "nope.npz"))


def test_truncated_file(tmp_path):
    path = str(tmp_path / "ck.npz")
    save_checkpoint(path, _state(), {"epoch": 1})
    data = _read(path)
    for cut in (len(data) // 2, len(data) - 10, 10):
        _write(path, data[:cut])
        with pytest.raises(CheckpointError, match="corrupt or truncated"):
            load_checkpoint(path)


def test_corrupt_payload(tmp_path):
    path = str(tmp_path / "ck.npz")
    save_checkpoint(path, _state(), {"epoch": 1})
    data = bytearray(_read(path))
    mid = len(data) // 3  # inside the first large array's bytes
    data[mid:mid + 8] = bytes(b ^ 0xFF for b in data[mid:mid + 8])
    _write(path, bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(path)


def test_not_our_file(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(os.urandom(200))
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(str(junk))
    plain = str(tmp_path / "plain.npz")
    np.savez(plain, w=np.ones(3))
    with pytest.raises(CheckpointError, match="not a checkpoint of this project"):
        load_checkpoint(plain)
    npy = str(tmp_path / "a.npy")
    np.save(npy, np.ones(3))
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(npy)
    other = str(tmp_path / "other.npz")
    blob = json.dumps({"format": "something-else", "version": 1}).encode()
    np.savez(other, __meta__=np.frombuffer(blob, np.uint8))
    with pytest.raises(CheckpointError, match="something-else"):
        load_checkpoint(other)


def test_newer_version_and_missing_arrays(tmp_path):
    path = str(tmp_path / "v.npz")
    blob = json.dumps({"format": ckpt.CHECKPOINT_FORMAT, "version": 99, "keys": [],
                       "meta": {}}).encode()
    np.savez(path, __meta__=np.frombuffer(blob, np.uint8))
    with pytest.raises(CheckpointError, match="version 99"):
        load_checkpoint(path)
    blob = json.dumps({"format": ckpt.CHECKPOINT_FORMAT, "version": 1, "keys": ["a", "b"],
                       "meta": {}}).encode()
    np.savez(path, __meta__=np.frombuffer(blob, np.uint8), a=np.ones(1))
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(path)


def test_namespaces():
    flat = pack_namespaces({"model": {"conv1.weight": 1, "inception_3a.conv_1x1.bias": 2},
                            "optim": {"momentum/conv1.weight": 3}})
    assert flat == {"model/conv1.weight": 1, "model/inception_3a.conv_1x1.bias": 2,
                    "optim/momentum/conv1.weight": 3}
    assert unpack_namespaces(flat) == {"model": {"conv1.weight": 1,
                                                 "inception_3a.conv_1x1.bias": 2},
                                       "optim": {"momentum/conv1.weight": 3}}
    with pytest.raises(ValueError):
        pack_namespaces({"a/b": {}})


@pytest.mark.parametrize("bitgen", [np.random.PCG64, np.random.MT19937, np.random.Philox,
                                    np.random.SFC64])
def test_numpy_rng_state_round_trip(tmp_path, bitgen):
    rng = np.random.Generator(bitgen(123))
    rng.standard_normal(7)
    rng.integers(0, 10, 3)  # leaves a buffered 32-bit half in some generators
    packed = pack_rng_state(rng)
    path = str(tmp_path / "ck.npz")
    save_checkpoint(path, {}, {"rng": packed})
    restored = unpack_rng_state(load_checkpoint(path)[1]["rng"])
    np.testing.assert_array_equal(restored.standard_normal(5), rng.standard_normal(5))
    np.testing.assert_array_equal(restored.integers(0, 2**62, 5), rng.integers(0, 2**62, 5))


def test_python_random_state_round_trip(tmp_path):
    r = random.Random(5)
    r.random()
    r.gauss(0, 1)  # sets gauss_next
    path = str(tmp_path / "ck.npz")
    save_checkpoint(path, {}, {"py": pack_python_random_state(r.getstate())})
    r2 = random.Random()
    r2.setstate(unpack_python_random_state(load_checkpoint(path)[1]["py"]))
    assert [r2.gauss(0, 1) for _ in range(3)] == [r.gauss(0, 1) for _ in range(3)]
    assert pack_python_random_state()["version"] == random.getstate()[0]


def test_unknown_bit_generator():
    with pytest.raises(ValueError, match="unknown bit generator"):
        unpack_rng_state({"bit_generator": "os", "state": {}})
