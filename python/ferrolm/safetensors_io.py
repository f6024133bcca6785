"""A small safetensors writer (numpy arrays or raw little-endian bytes), streaming tensor by tensor."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, Tuple, Union

import numpy as np

_DTYPES = {np.dtype("<f4"): "F32", np.dtype("<f2"): "F16", np.dtype("<f8"): "F64", np.dtype("i1"): "I8"}
_SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1}
#: numpy dtypes of the float safetensors dtypes (BF16 read as its uint16 bit patterns).
FLOAT_DTYPES = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "F64": "<f8"}


def float32_values(raw: np.ndarray, dtype: str) -> np.ndarray:
    """float32 values of `raw` (read with FLOAT_DTYPES[dtype]); BF16 widened exactly."""
    if dtype == "BF16":
        raw = (raw.astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(raw, dtype=np.float32)


def write_safetensors(
    path: Union[str, os.PathLike],
    shapes: Dict[str, Tuple[Tuple[int, ...], str]],
    make: Callable[[str], Union[np.ndarray, bytes]],
    metadata: Dict[str, str] | None = None,
) -> None:
    """Writes `path` with one tensor per entry of `shapes` (name -> (shape, dtype name)), asking
    `make(name)` for each array (or its raw little-endian bytes) only when it is written, so at
    most one is in memory at once. The file is written beside `path` and renamed into place
    when complete."""
    header: Dict[str, object] = {}
    offset = 0
    for name, (shape, dtype) in shapes.items():
        size = int(np.prod(shape, dtype=np.int64)) * _SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = dict(metadata)
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            f.write(len(blob).to_bytes(8, "little"))
            f.write(blob)
            for name, (shape, dtype) in shapes.items():
                data = make(name)
                if isinstance(data, bytes):
                    want = header[name]["data_offsets"][1] - header[name]["data_offsets"][0]  # type: ignore[index]
                    if len(data) != want:
                        raise ValueError(f"tensor {name}: got {len(data)} bytes, declared {want}")
                    f.write(data)
                    del data
                    continue
                arr = np.ascontiguousarray(data)
                if tuple(arr.shape) != tuple(shape):
                    raise ValueError(f"tensor {name}: got shape {arr.shape}, declared {shape}")
                if dtype == "BF16":
                    if arr.dtype != np.uint16:
                        raise ValueError(f"tensor {name}: BF16 data must be given as uint16 bit patterns")
                    arr = arr.astype("<u2", copy=False)
                elif _DTYPES.get(arr.dtype.newbyteorder("<")) != dtype:
                    raise ValueError(f"tensor {name}: dtype {arr.dtype} does not match declared {dtype}")
                f.write(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())
                del arr
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def save_arrays(path: Union[str, os.PathLike], tensors: Dict[str, np.ndarray]) -> None:
    """Writes a dict of float arrays (F32/F16/F64) as a safetensors file."""
    shapes = {n: (tuple(a.shape), _DTYPES[np.dtype(a.dtype).newbyteorder("<")]) for n, a in tensors.items()}
    write_safetensors(path, shapes, tensors.__getitem__)
