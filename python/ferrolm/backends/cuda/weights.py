"""Weights on the device: every buffer the core lists (`device_buffers`), uploaded tensor by
tensor, once per storage id, so an adapter variant uploads only the matrices it changes."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import numpy as np

from ...errors import DeviceError

if TYPE_CHECKING:
    from ... import _core
    from .runtime import Runtime

#: The matmul precisions the CUDA kernels compute.
DEVICE_PRECISIONS = ("fp32", "bf16", "int8")
_NUMPY = {"F32": np.float32, "BF16": np.uint16, "I8": np.int8}


class BufferStore:
    """Device copies of core buffers by storage id, with the core models that use each."""

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime
        self._by_id: Dict[int, Any] = {}
        self._users: Dict[int, set] = {}
        self._lock = threading.Lock()

    def get(self, core: "_core.Model", name: str, dtype: str, shape: List[int], bid: int) -> Any:
        with self._lock:
            dev = self._by_id.get(bid)
            if dev is None:
                np_dtype = _NUMPY.get(dtype)
                if np_dtype is None:
                    raise DeviceError(f"{name}: {dtype} buffers have no device layout")
                host = np.frombuffer(core.device_buffer(name), dtype=np_dtype)
                dev = self._by_id[bid] = self.runtime.upload(host)
                del host
            self._users.setdefault(bid, set()).add(id(core))
            return dev

    def release(self, core: "_core.Model") -> None:
        """Frees the buffers no other model uses."""
        with self._lock:
            for bid in [b for b, users in self._users.items() if id(core) in users]:
                users = self._users[bid]
                users.discard(id(core))
                if not users:
                    del self._users[bid]
                    del self._by_id[bid]

    @property
    def bytes(self) -> int:
        return sum(int(a.nbytes) for a in self._by_id.values())


@dataclass
class DeviceLinear:
    """A matmul `w: [n, k]` on the device (`scales` for INT8), its bias and unmerged adapters
    (row0, rows, rank, scale, a: [rank, k], b: [rows, rank])."""

    precision: str
    n: int
    k: int
    group: int
    weight: Any
    scales: Any = None
    bias: Any = None
    lora: List[Tuple[int, int, int, float, Any, Any]] = field(default_factory=list)


@dataclass
class DeviceNorm:
    eps: float
    weight: Any
    bias: Any = None


def upload_model(core: "_core.Model", store: BufferStore) -> Dict[str, Any]:
    """Every module of `core` with its buffers on the device, by module name."""
    buffers = {name: (dtype, shape, bid) for name, dtype, shape, bid in core.device_buffers()}

    def buf(name: str) -> Optional[Any]:
        if name not in buffers:
            return None
        dtype, shape, bid = buffers[name]
        return store.get(core, name, dtype, shape, bid)

    modules: Dict[str, Any] = {}
    for name, m in core.device_modules():
        kind = m["kind"]
        if kind == "linear":
            if m["precision"] not in DEVICE_PRECISIONS:
                raise DeviceError(f"{name}: {m['precision']} weights have no CUDA kernels (device='cuda' runs {', '.join(DEVICE_PRECISIONS)})")
            if m["group"] and m["group"] % 32:
                raise DeviceError(f"{name}: INT8 groups of {m['group']} have no CUDA kernels (groups must be a multiple of 32)")
            lora = [
                (row0, rows, rank, float(scale), buf(f"{name}.lora.{j}.a"), buf(f"{name}.lora.{j}.b"))
                for j, (row0, rows, rank, scale) in enumerate(m["lora"])
            ]
            modules[name] = DeviceLinear(
                m["precision"], m["out_features"], m["in_features"], m["group"] or 0,
                buf(f"{name}.weight"), buf(f"{name}.scales"), buf(f"{name}.bias"), lora,
            )
        elif kind == "norm":
            modules[name] = DeviceNorm(float(m["eps"]), buf(f"{name}.weight"), buf(f"{name}.bias"))
        else:
            modules[name] = buf(f"{name}.weight")
    return modules
