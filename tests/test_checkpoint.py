"""safetensors and seed weight files: exact bytes, round trips and damaged files."""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from graphgpt.tensor_files import load_safetensors, load_seed_weights, save_safetensors, save_seed_weights
from graphgpt.errors import UserError


def sample_tensors() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    return {
        "wte": rng.standard_normal((5, 3)).astype(np.float32),
        "step": np.array(7, dtype=np.int32),
        "moments": rng.standard_normal(4),
        "mask": np.array([True, False]),
        "empty": np.zeros((0, 2), np.float32),
        "strided": np.arange(12, dtype=np.int64).reshape(3, 4)[:, ::2],
    }


def read_header(path) -> tuple[int, dict]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8:8 + n])


# --- safetensors ------------------------------------------------------------------------------

def test_safetensors_round_trip(tmp_path):
    tensors = sample_tensors()
    path = tmp_path / "w.safetensors"
    save_safetensors(path, tensors, metadata={"step": "7", "format": "np"})
    loaded = load_safetensors(path)
    assert list(loaded) == list(tensors)
    for name, value in tensors.items():
        assert loaded[name].dtype == value.dtype and loaded[name].shape == value.shape
        assert np.array_equal(loaded[name], value)
    loaded["wte"][0, 0] = 1.0  # arrays are writable copies


def test_safetensors_layout(tmp_path):
    path = tmp_path / "w.safetensors"
    a = np.array([1.0, 2.0], np.float32)
    b = np.array([[3]], np.int32)
    save_safetensors(path, {"a": a, "b": b}, metadata={"k": "v"})
    n, header = read_header(path)
    assert n % 8 == 0
    assert list(header) == ["__metadata__", "a", "b"]
    assert header["__metadata__"] == {"k": "v"}
    assert header["a"] == {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    assert header["b"] == {"dtype": "I32", "shape": [1, 1], "data_offsets": [8, 12]}
    assert path.read_bytes()[8 + n:] == a.astype("<f4").tobytes() + b.astype("<i4").tobytes()


def test_safetensors_is_deterministic_and_little_endian(tmp_path):
    first, second = tmp_path / "1.safetensors", tmp_path / "2.safetensors"
    tensors = sample_tensors()
    save_safetensors(first, tensors, metadata={"b": "2", "a": "1"})
    big_endian = {name: v.astype(v.dtype.newbyteorder(">")) for name, v in tensors.items()}
    save_safetensors(second, big_endian, metadata={"a": "1", "b": "2"})
    assert first.read_bytes() == second.read_bytes()


def test_safetensors_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(ValueError):
        save_safetensors(tmp_path / "x.safetensors", {"c": np.zeros(2, np.complex64)})


def test_safetensors_cross_check_with_library(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    tensors = {name: np.ascontiguousarray(v) for name, v in sample_tensors().items()}
    ours = tmp_path / "ours.safetensors"
    save_safetensors(ours, tensors, metadata={"k": "v"})
    theirs = safetensors_numpy.load_file(str(ours))
    for name, value in tensors.items():
        assert np.array_equal(theirs[name], value)
    reference = tmp_path / "theirs.safetensors"
    safetensors_numpy.save_file(tensors, str(reference), metadata={"k": "v"})
    for name, value in load_safetensors(reference).items():
        assert value.dtype == tensors[name].dtype and np.array_equal(value, tensors[name])


def damaged_files(good: bytes):
    n = struct.unpack("<Q", good[:8])[0]
    header = json.loads(good[8:8 + n])

    def with_header(change) -> bytes:
        h = json.loads(json.dumps(header))
        change(h)
        text = json.dumps(h).encode()
        return struct.pack("<Q", len(text)) + text + good[8 + n:]

    yield b"abc"
    yield good[:-3]
    yield struct.pack("<Q", 10**9) + good[8:]
    yield struct.pack("<Q", n) + b"{not json" + good[17:]
    yield struct.pack("<Q", 2) + b"[]" + good[8 + n:]
    yield with_header(lambda h: h["a"].update(dtype="F8"))
    yield with_header(lambda h: h["a"].update(dtype=["F32"]))
    yield with_header(lambda h: h["a"].update(shape=[3]))
    yield with_header(lambda h: h["a"].update(shape=[-2]))
    yield with_header(lambda h: h["a"].update(data_offsets=[4, 0]))
    yield with_header(lambda h: h.update(a=5))


def test_safetensors_damaged_files_raise(tmp_path):
    path = tmp_path / "w.safetensors"
    save_safetensors(path, {"a": np.arange(2, dtype=np.float32), "b": np.ones(3, np.int64)})
    for i, data in enumerate(damaged_files(path.read_bytes())):
        bad = tmp_path / f"bad{i}.safetensors"
        bad.write_bytes(data)
        with pytest.raises(UserError, match=f"bad{i}"):
            load_safetensors(bad)


def test_missing_weights_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_safetensors(tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match="directory"):
        load_seed_weights(tmp_path)


# --- seed format ------------------------------------------------------------------------------

def test_seed_weights_exact_bytes(tmp_path):
    path = tmp_path / "trained_weights.bin"
    matrix = np.array([[1, 2, 3], [4, 5, 6]], np.float64)  # stored as float32
    save_seed_weights(path, [matrix, np.array([0.5], np.float32)])
    expected = (struct.pack("<i", 2)
                + struct.pack("<iiii", 2, 2, 3, 6) + struct.pack("<6f", 1, 2, 3, 4, 5, 6)
                + struct.pack("<iii", 1, 1, 1) + struct.pack("<f", 0.5))
    assert path.read_bytes() == expected


def test_seed_weights_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    tensors = [rng.standard_normal(s).astype(np.float32) for s in [(4, 3), (7,), (2, 3, 2), ()]]
    path = tmp_path / "trained_weights.bin"
    save_seed_weights(path, tensors)
    loaded = load_seed_weights(path)
    assert len(loaded) == len(tensors)
    for got, want in zip(loaded, tensors):
        assert got.dtype == np.float32 and got.shape == want.shape and np.array_equal(got, want)


def test_seed_weights_damaged_files_raise(tmp_path):
    path = tmp_path / "trained_weights.bin"
    save_seed_weights(path, [np.ones((2, 2), np.float32), np.ones(3, np.float32)])
    good = path.read_bytes()
    damaged = [
        good[:2],                                    # no complete count
        good[:-1],                                   # data cut short
        good[:20],                                   # second tensor missing
        good + b"\0\0\0\0",                          # trailing bytes
        struct.pack("<i", -1),                       # negative count
        good[:4] + struct.pack("<i", 10**8) + good[8:],   # ndim far past the end
        good[:16] + struct.pack("<i", 5) + good[20:],     # numel disagrees with shape
        good[:8] + struct.pack("<i", -2) + good[12:],     # negative dimension
    ]
    for i, data in enumerate(damaged):
        bad = tmp_path / f"bad{i}.bin"
        bad.write_bytes(data)
        with pytest.raises(UserError, match=f"bad{i}"):
            load_seed_weights(bad)


def test_files_written_whole_are_as_readable_as_any_other(tmp_path):
    """A file written under a temporary name gets the mode the umask gives a new file, not the
    owner-only mode of the temporary it was written as."""
    import os
    from graphgpt.fsutil import atomic_write_text
    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "report.txt", "x")
        open(tmp_path / "plain.txt", "w").close()
    finally:
        os.umask(old)
    assert (tmp_path / "report.txt").stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o644
