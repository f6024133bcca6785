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
_NUMPY = {"F32": np.float32, "BF16": np.uint16, "F16": np.uint16, "I8": np.int8}
#: Rows dequantized at a time (bounds the host memory of a weight-only upload).
_DEQUANT_ROWS = 1024


def runs_w8a16(group: int, k: int) -> bool:
    """Whether the core multiplies an INT8 matrix of `k` inputs in groups of `group` as W8A16
    (x quantized to 16 bits per group of 32; the device's `quantize_a16` and `*_w8a16`
    kernels): groups of 32 over whole groups. Any other INT8 matrix runs weight-only on the
    CPU — the FP32 matmul of its dequantized values q·s — and so on the device: uploaded
    dequantized (4 bytes per weight) and multiplied by the FP32 kernels."""
    return group == 32 and k % 32 == 0


def dequantize_i8(q: np.ndarray, s: np.ndarray, group: int) -> np.ndarray:
    """w: [n, k] f32 = q: [n, k] int8 · s: [n, ceil(k / group)] per row and group (each weight
    one f32 product, as the core's weight-only widening)."""
    n, k = q.shape
    ng = s.shape[1]
    w = np.empty((n, k), np.float32)
    for r0 in range(0, n, _DEQUANT_ROWS):
        rows = slice(r0, min(n, r0 + _DEQUANT_ROWS))
        padded = np.zeros((rows.stop - r0, ng * group), np.float32)
        padded[:, :k] = q[rows]
        padded.reshape(-1, ng, group)[...] *= s[rows, :, None]
        w[rows] = padded[:, :k]
    return w


class BufferStore:
    """Device copies of core buffers by storage id, with the core models that use each."""

    def __init__(self, runtime: "Runtime") -> None:
        self.runtime = runtime
        self._by_id: Dict[Any, Any] = {}  # by storage id (or dequantized copies by their ids)
        self._users: Dict[Any, set] = {}
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

    def get_dequantized(self, core: "_core.Model", name: str, n: int, k: int, group: int, q_bid: int, s_bid: int) -> Any:
        """The FP32 values of the INT8 matrix `name` ([n, k], groups of `group`), kept under its
        weight and scale storage ids."""
        key = ("dequantized", q_bid, s_bid)
        with self._lock:
            dev = self._by_id.get(key)
            if dev is None:
                q = np.frombuffer(core.device_buffer(f"{name}.weight"), dtype=np.int8).reshape(n, k)
                s = np.frombuffer(core.device_buffer(f"{name}.scales"), dtype=np.float16).astype(np.float32).reshape(n, -1)
                w = dequantize_i8(q, s, group)
                del q, s
                dev = self._by_id[key] = self.runtime.upload(w.reshape(-1))
                del w
            self._users.setdefault(key, set()).add(id(core))
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
    """A matmul `w: [n, k]` on the device (`scales` for INT8, which is W8A16: see
    `runs_w8a16`), its bias and unmerged adapters (row0, rows, rank, scale, a: [rank, k],
    b: [rows, rank])."""

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

    listed = core.device_modules()
    # the embedding table is also the lm_head unless the model has its own
    gather_only = {"embed"} if any(name == "lm_head" for name, _ in listed) else set()
    modules: Dict[str, Any] = {}
    for name, m in listed:
        kind = m["kind"]
        if kind == "linear":
            if m["precision"] not in DEVICE_PRECISIONS:
                raise DeviceError(f"{name}: {m['precision']} weights have no CUDA kernels (device='cuda' runs {', '.join(DEVICE_PRECISIONS)})")
            lora = [
                (row0, rows, rank, float(scale), buf(f"{name}.lora.{j}.a"), buf(f"{name}.lora.{j}.b"))
                for j, (row0, rows, rank, scale) in enumerate(m["lora"])
            ]
            n, k, group = m["out_features"], m["in_features"], m["group"] or 0
            if m["precision"] == "int8" and not runs_w8a16(group, k) and name not in gather_only:
                dense = store.get_dequantized(core, name, n, k, group, buffers[f"{name}.weight"][2], buffers[f"{name}.scales"][2])
                modules[name] = DeviceLinear("fp32", n, k, 0, dense, None, buf(f"{name}.bias"), lora)
                continue
            modules[name] = DeviceLinear(
                m["precision"], n, k, group,
                buf(f"{name}.weight"), buf(f"{name}.scales"), buf(f"{name}.bias"), lora,
            )
        elif kind == "norm":
            modules[name] = DeviceNorm(float(m["eps"]), buf(f"{name}.weight"), buf(f"{name}.bias"))
        else:
            modules[name] = buf(f"{name}.weight")
    return modules
