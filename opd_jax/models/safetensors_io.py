"""Read safetensors headers and zero-copy tensor views (memory-mapped), without loading data.

The format is an 8-byte little-endian header length, a JSON header mapping each tensor name
to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the data that
follows the header), then the raw little-endian bytes.
"""

from __future__ import annotations

import dataclasses
import json
import math
import struct

import ml_dtypes
import numpy as np

FLOAT_DTYPES = {"F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
                "BF16": np.dtype(ml_dtypes.bfloat16), "F64": np.dtype(np.float64)}


class SafetensorsFormatError(ValueError):
    """A file is not a well-formed safetensors file."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
    path: str
    name: str
    dtype: str  # the safetensors dtype code, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in the file
    end: int


def read_header(path: str) -> dict[str, TensorInfo]:
    """Every tensor's ``TensorInfo`` in one file."""
    with open(path, "rb") as f:
        raw_len = f.read(8)
        if len(raw_len) != 8:
            raise SafetensorsFormatError(f"{path}: too short to be a safetensors file")
        (n,) = struct.unpack("<Q", raw_len)
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SafetensorsFormatError(f"{path}: unreadable safetensors header: {e}") from e
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        begin, end = entry["data_offsets"]
        shape = tuple(int(d) for d in entry["shape"])
        info = TensorInfo(path, name, entry["dtype"], shape, 8 + n + begin, 8 + n + end)
        dtype = FLOAT_DTYPES.get(info.dtype)
        if dtype is not None and end - begin != math.prod(shape) * dtype.itemsize:
            raise SafetensorsFormatError(f"{path}: tensor {name!r} byte range does not match "
                                         f"{info.dtype}{list(shape)}")
        out[name] = info
    return out


def tensor_view(info: TensorInfo, maps: dict[str, np.memmap]) -> np.ndarray:
    """A read-only, memory-mapped view of one floating tensor (no bytes read until used).

    ``maps`` caches one mapping per file for the caller's lifetime (not globally: a file
    rewritten in place must be mapped afresh).
    """
    if info.path not in maps:
        maps[info.path] = np.memmap(info.path, dtype=np.uint8, mode="r")
    dtype = FLOAT_DTYPES[info.dtype]
    return maps[info.path][info.begin:info.end].view(dtype).reshape(info.shape)
