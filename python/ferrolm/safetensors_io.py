"""Safetensors files for the Python layer: a thin wrapper over the core's one reader and writer
(`_core.SafetensorsFile`, `_core.write_safetensors`, both on the safetensors crate), so headers
are validated in one place and writes stream tensor by tensor with the GIL released."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

from ._numpy import np

from . import _core
from .errors import InvalidArgumentError, TensorError

PathLike = Union[str, os.PathLike]

#: numpy dtype of each dtype ferrolm writes (BF16 as its uint16 bit patterns).
_NUMPY = {"F32": "<f4", "F16": "<f2", "F64": "<f8", "I8": "i1", "U8": "u1", "BF16": "<u2"}
#: The float dtypes, which read as float32 values.
FLOAT_DTYPES = ("F32", "F16", "BF16", "F64")


def _names() -> Dict[Any, str]:
    """The safetensors name of each numpy dtype ferrolm writes (but BF16, kept as uint16 bits)."""
    return {np.dtype(v): k for k, v in _NUMPY.items() if k != "BF16"}


def open_file(path: PathLike) -> "_core.SafetensorsFile":
    """The file mapped and its header validated (CheckpointError when it is not a valid file)."""
    return _core.SafetensorsFile(os.fspath(path))


def header(path: PathLike) -> Dict[str, Tuple[str, List[int]]]:
    """{tensor name: (dtype, shape)} from the header alone, in file order."""
    return {name: (dtype, shape) for name, dtype, shape in open_file(path).tensors()}


def read_f32(f: "_core.SafetensorsFile", name: str, shape: Iterable[int]) -> Optional[np.ndarray]:
    """Float tensor `name` of an open file as float32 [shape]; None for an int8 tensor."""
    data = f.read_f32(name)
    if data is None:
        return None
    try:
        return np.frombuffer(data, dtype=np.float32).reshape(tuple(shape))
    except ValueError as e:  # e.g. an empty tensor declared [0, 2**64 - 1]: more dimensions than numpy holds
        raise TensorError(f"tensor {name} of shape {list(shape)} cannot be held as an array: {e}") from None


def read_floats(path: PathLike) -> Dict[str, Tuple[str, np.ndarray]]:
    """Every tensor of a (small) file as (dtype as stored, float32 values) — adapters and soft
    prompts. A tensor of a non-float dtype raises TensorError."""
    f = open_file(path)
    return {name: (dtype, read_f32(f, name, shape)) for name, dtype, shape in f.tensors()}


def write(path: PathLike, entries: Iterable[Tuple[str, str, Iterable[int]]], make: Callable[[str], bytes],
          metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes `path` with one tensor per (name, dtype, shape), asking `make(name)` for its raw
    little-endian bytes only when it is written. The file appears complete or not at all."""
    _core.write_safetensors(os.fspath(path), [(n, d, [int(x) for x in s]) for n, d, s in entries], make, metadata)


def save_arrays(path: PathLike, tensors: Dict[str, np.ndarray], metadata: Optional[Dict[str, str]] = None) -> None:
    """Writes a dict of numpy arrays (float32/float16/float64/int8/uint8; BF16 needs `write` with its
    uint16 bit patterns)."""
    names = _names()
    entries = []
    dtypes: Dict[str, str] = {}
    for name, arr in tensors.items():
        dtype = names.get(np.dtype(arr.dtype).newbyteorder("<"))
        if dtype is None:
            raise InvalidArgumentError(f"tensor {name}: dtype {arr.dtype} cannot be saved (float32/16/64 or int8)")
        entries.append((name, dtype, arr.shape))
        dtypes[name] = dtype

    def make(name: str) -> bytes:
        return np.asarray(tensors[name]).astype(np.dtype(_NUMPY[dtypes[name]]), copy=False).tobytes()

    write(path, entries, make, metadata)


__all__ = ["FLOAT_DTYPES", "open_file", "header", "read_f32", "read_floats", "write", "save_arrays"]
