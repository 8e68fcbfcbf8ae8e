"""Minimal safetensors reader/writer on numpy memory maps.

Why our own: the reference readers go through a framework (numpy has no bfloat16, torch is not a
runtime dependency). Here a tensor is a zero-copy ``np.memmap`` view, so loading touches one tensor
at a time, bfloat16 comes from ``ml_dtypes``, and truncated or corrupt files are caught before any
tensor is read.

Format: 8-byte little-endian header length N, N bytes of JSON header
(``{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}``), then the data.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import ml_dtypes
import numpy as np

from disrouter_jax import storage

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024


class SafetensorsError(ValueError):
    pass


class SafetensorsFile:
    """Lazily reads tensors of one ``.safetensors`` file; validates the header up front."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        size = self.path.stat().st_size
        with open(self.path, "rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise SafetensorsError(f"{self.path}: truncated (no header length)")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > min(_MAX_HEADER, size - 8):
                raise SafetensorsError(
                    f"{self.path}: corrupt header length {header_len} for a file of {size} bytes"
                )
            try:
                header = json.loads(f.read(header_len))
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise SafetensorsError(f"{self.path}: corrupt JSON header ({err})") from err
        self.metadata = header.pop("__metadata__", {}) or {}
        self._data_start = 8 + header_len
        data_size = size - self._data_start
        self._entries = {}
        for name, entry in header.items():
            try:
                dtype = _DTYPES[entry["dtype"]]
                shape = tuple(int(d) for d in entry["shape"])
                begin, end = (int(o) for o in entry["data_offsets"])
            except (KeyError, TypeError, ValueError) as err:
                raise SafetensorsError(f"{self.path}: bad header entry for {name!r}: {entry}") from err
            expected = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
            if end - begin != expected:
                raise SafetensorsError(
                    f"{self.path}: tensor {name!r} has {end - begin} bytes, "
                    f"expected {expected} for {entry['dtype']}{list(shape)}"
                )
            if end > data_size:
                raise SafetensorsError(
                    f"{self.path}: truncated: tensor {name!r} ends at byte {end} of the data "
                    f"section, which has only {data_size} bytes"
                )
            self._entries[name] = (dtype, shape, begin)

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def get(self, name: str) -> np.ndarray:
        """A read-only memory-mapped view of one tensor."""
        dtype, shape, begin = self._entries[name]
        if not shape or 0 in shape:
            return np.zeros(shape, dtype)
        return np.memmap(
            self.path, dtype=dtype, mode="r", offset=self._data_start + begin, shape=shape
        )


def save_file(tensors: dict[str, np.ndarray], path: str | Path, metadata: dict | None = None):
    """Writes tensors atomically (temp file + rename), so a crash never leaves half a file."""
    path = Path(path)
    header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
    offset = 0
    arrays = []
    for name, array in tensors.items():
        array = np.ascontiguousarray(array)
        if array.dtype not in _NAMES:
            raise SafetensorsError(f"{path}: tensor {name!r} has unsupported dtype {array.dtype}")
        header[name] = {
            "dtype": _NAMES[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
        arrays.append(array)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
    with storage.atomic_file(path) as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for array in arrays:
            f.write(array.tobytes())
