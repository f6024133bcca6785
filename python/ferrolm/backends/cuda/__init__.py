"""The CUDA backend: ferrolm's kernels (`ferrolm/cuda/*.cu`) on an NVIDIA GPU through cupy, or
on the CPU emulator of the CUDA execution model with FERROLM_CUDA_EMULATE=1 (docs/cuda.md)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Dict, Tuple

from ...loading import check_kv_cache
from .model import DeviceModel
from .runtime import get_runtime
from .session import CudaSession
from .weights import BufferStore

if TYPE_CHECKING:
    from ... import _core


class CudaBackend:
    """Sessions on the device for a model and its adapter variants (uploaded on first use;
    variants share the buffers they do not change)."""

    name = "cuda"

    def __init__(self, core: "_core.Model") -> None:
        self.runtime = get_runtime()
        self.store = BufferStore(self.runtime)
        self._models: Dict[int, Tuple["_core.Model", DeviceModel]] = {}
        self._lock = threading.Lock()
        self.device_model(core)

    def device_model(self, core: "_core.Model") -> DeviceModel:
        with self._lock:
            entry = self._models.get(id(core))
            if entry is None or entry[0] is not core:
                entry = self._models[id(core)] = (core, DeviceModel(core, self.runtime, self.store))
            return entry[1]

    def new_session(self, core: "_core.Model", context_length: int, kv_cache: str = "fp32") -> CudaSession:
        check_kv_cache(kv_cache, self.name)
        return CudaSession(self.device_model(core), context_length)

    def max_context(self, core: "_core.Model", kv_cache: str = "fp32") -> int:
        """The longest context whose session fits in the device's free memory (the device's KV
        cache is FP32: any other `kv_cache` is refused)."""
        check_kv_cache(kv_cache, self.name)
        dm = self.device_model(core)
        free = self.runtime.free_bytes()
        lo, hi = 0, dm.shape.max_positions
        while lo < hi:  # the largest context whose state fits
            mid = (lo + hi + 1) // 2
            if dm.state_bytes(mid) <= free:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def keep_only(self, cores: "list[_core.Model]") -> None:
        """Frees the device copies of variants no longer in use (retired adapters)."""
        live = {id(c) for c in cores}
        with self._lock:
            for key in [k for k in self._models if k not in live]:
                core, _ = self._models.pop(key)
                self.store.release(core)
