"""Tensor file formats: safetensors, and the seed's `trained_weights.bin`.

Weights and optimizer state are stored in these formats, both in plain weight files and inside
training-state checkpoints (graphgpt.checkpoint). safetensors is written here directly (it is a JSON header and raw bytes), so saving needs no extra
package and the bytes are deterministic: same tensors in the same order, same file. The seed format
lets weights move between graphgpt and the C++/CUDA program it replaces.
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import numpy as np

from graphgpt import jsontext
from graphgpt.errors import UserError
from graphgpt.fsutil import atomic_write_bytes

_METADATA = "__metadata__"

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
    "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8,
    "BOOL": np.bool_,
}
_CODES = {np.dtype(t): code for code, t in _DTYPES.items()}
BF16 = "BF16"  # bfloat16, which NumPy lacks: read as its bits (a float32's upper half), then widened


def save_safetensors(path: str | os.PathLike, tensors: dict[str, np.ndarray],
                     metadata: dict[str, str] | None = None) -> None:
    """Write `tensors` in insertion order, with optional string metadata, atomically."""
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata))


def safetensors_bytes(tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors file of `tensors` in insertion order, with optional string metadata."""
    header: dict = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map strings to strings")
        header[_METADATA] = dict(sorted(metadata.items()))
    chunks = []
    offset = 0
    for name, value in tensors.items():
        if not isinstance(name, str) or name == _METADATA:
            raise ValueError(f"invalid safetensors tensor name {name!r}")
        array = np.asarray(value)
        code = _CODES.get(array.dtype.newbyteorder("="))
        if code is None:
            raise ValueError(f"tensor {name!r}: dtype {array.dtype} has no safetensors code")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
        header[name] = {"dtype": code, "shape": list(array.shape), "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    head += b" " * (-len(head) % 8)  # the format pads the header so the data starts 8-aligned
    return struct.pack("<Q", len(head)) + head + b"".join(chunks)


def load_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Tensors of a safetensors file, in header order, as writable native-endian arrays (bfloat16
    ones as float32, exactly)."""
    raw = _read(path)
    if len(raw) < 8:
        raise UserError(f"{path}: not a safetensors file ({len(raw)} bytes, shorter than its header size)")
    (head_len,) = struct.unpack_from("<Q", raw)
    if head_len > len(raw) - 8:
        raise UserError(f"{path}: safetensors header size {head_len} runs past the end of the "
                        f"{len(raw)}-byte file")
    try:
        header = jsontext.loads(raw[8:8 + head_len].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: safetensors header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise UserError(f"{path}: safetensors header is not a JSON object")
    data = memoryview(raw)[8 + head_len:]
    return {name: _tensor(path, name, entry, data)
            for name, entry in header.items() if name != _METADATA}


def _tensor(path, name: str, entry, data: memoryview) -> np.ndarray:
    def bad(why: str) -> UserError:
        return UserError(f"{path}: tensor {name!r} {why}")

    if not isinstance(entry, dict):
        raise bad("has no header entry object")
    code = entry.get("dtype")
    dtype = (np.uint16 if code == BF16 else _DTYPES.get(code)) if isinstance(code, str) else None
    if dtype is None:
        raise bad(f"has unsupported dtype {code!r}")
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise bad(f"has an invalid shape {shape!r}")
    if (not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets)
            or not offsets[0] <= offsets[1] <= len(data)):
        raise bad(f"has data offsets {offsets!r} outside the {len(data)} data bytes")
    begin, end = offsets
    count = math.prod(shape)
    if end - begin != count * np.dtype(dtype).itemsize:
        raise bad(f"has {end - begin} data bytes for shape {shape} of {code}")
    little = np.dtype(dtype).newbyteorder("<")
    tensor = np.frombuffer(data, dtype=little, count=count, offset=begin).reshape(shape).astype(dtype)
    return (tensor.astype(np.uint32) << 16).view(np.float32) if code == BF16 else tensor


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def save_seed_weights(path: str | os.PathLike, tensors: list[np.ndarray]) -> None:
    """The seed's format: int32 count, then per tensor int32 ndim, shape, numel and float32 data."""
    parts = [struct.pack("<i", len(tensors))]
    for array in tensors:
        array = np.asarray(array, dtype="<f4")
        parts.append(struct.pack(f"<i{array.ndim}ii", array.ndim, *array.shape, array.size))
        parts.append(array.tobytes(order="C"))
    atomic_write_bytes(path, b"".join(parts))


def load_seed_weights(path: str | os.PathLike) -> list[np.ndarray]:
    raw = _read(path)
    offset = 0

    def ints(n: int, what: str) -> tuple[int, ...]:
        nonlocal offset
        if n < 0 or offset + 4 * n > len(raw):
            raise UserError(f"{path}: seed weights file is truncated or garbled (reading {what} at "
                            f"byte {offset} of {len(raw)})")
        values = struct.unpack_from(f"<{n}i", raw, offset)
        offset += 4 * n
        return values

    (count,) = ints(1, "the tensor count")
    if count < 0:
        raise UserError(f"{path}: seed weights file has a negative tensor count {count}")
    tensors = []
    for i in range(count):
        (ndim,) = ints(1, f"tensor {i} ndim")
        shape = ints(ndim, f"tensor {i} shape")
        (numel,) = ints(1, f"tensor {i} numel")
        if any(d < 0 for d in shape) or numel != math.prod(shape):
            raise UserError(f"{path}: seed weights tensor {i} has shape {list(shape)} but numel {numel}")
        if offset + 4 * numel > len(raw):
            raise UserError(f"{path}: seed weights file is truncated (tensor {i} data needs "
                            f"{4 * numel} bytes at byte {offset} of {len(raw)})")
        data = np.frombuffer(raw, dtype="<f4", count=numel, offset=offset)
        tensors.append(data.reshape(shape).astype(np.float32))
        offset += 4 * numel
    if offset != len(raw):
        raise UserError(f"{path}: seed weights file has {len(raw) - offset} unexpected bytes after "
                        f"its {count} tensors")
    return tensors


def _read(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"weights file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"weights file {path} is a directory") from None
    except OSError as e:
        raise UserError(f"cannot read weights file {path}: {e.strerror or e}") from None
