"""Where the CUDA backend's kernels run: a GPU through cupy, or the CPU emulator.

Both runtimes offer the same small surface — device buffers, host<->device copies, kernel
launches by name with cupy's argument conventions, streams and captured decode steps — so the
backend code above (model.py, session.py) is the same for both. The emulator's "device memory"
is host memory (numpy arrays); its kernels are the same `.cu` sources compiled as C++.
"""

from __future__ import annotations

import os
import threading
import time
from contextlib import nullcontext
from typing import Any, Callable, ContextManager, List, Optional, Sequence, Tuple

import numpy as np

from ...errors import DeviceError
from .sources import kernel_dir, kernel_source, module_options

#: FERROLM_CUDA_EMULATE=1 runs device="cuda" on the CPU emulator (no cupy, no GPU needed).
EMULATE_ENV = "FERROLM_CUDA_EMULATE"
#: FERROLM_CUDA_GRAPHS=0 launches each decode step kernel by kernel instead of replaying a
#: captured graph.
GRAPHS_ENV = "FERROLM_CUDA_GRAPHS"

Launch = Tuple[Any, Tuple[int, ...], Tuple[int, ...], Tuple[Any, ...], int]


def emulating() -> bool:
    return os.environ.get(EMULATE_ENV, "") not in ("", "0")


def graphs_enabled() -> bool:
    return os.environ.get(GRAPHS_ENV, "1") not in ("0", "")


_RUNTIME: Optional["Runtime"] = None


def get_runtime() -> "Runtime":
    """The process's runtime (kernels compile once per process, on first use)."""
    global _RUNTIME
    want_emulator = emulating()
    if _RUNTIME is None or isinstance(_RUNTIME, EmulatorRuntime) != want_emulator:
        _RUNTIME = EmulatorRuntime() if want_emulator else CupyRuntime()
    return _RUNTIME


class Runtime:
    """The surface the backend uses (see the module docstring)."""

    name: str
    compile_seconds: float
    #: kernel launches made (or recorded into a captured step) so far
    launches: int = 0

    def empty(self, n: int, dtype: Any) -> Any:
        raise NotImplementedError

    def zeros(self, n: int, dtype: Any) -> Any:
        raise NotImplementedError

    def upload(self, host: np.ndarray) -> Any:
        raise NotImplementedError

    def write(self, dev: Any, host: np.ndarray, stream: Any = None) -> None:
        """Copies `host` into the start of the device buffer `dev` (ordered on `stream`)."""
        raise NotImplementedError

    def download(self, dev: Any, stream: Any = None) -> np.ndarray:
        """A host copy of `dev` (waits for the work queued on `stream`)."""
        raise NotImplementedError

    def launch(self, name: str, grid: Sequence[int], block: Sequence[int], args: Sequence[Any], shared_mem: int = 0) -> None:
        raise NotImplementedError

    def new_stream(self) -> Any:
        return None

    def on(self, stream: Any) -> ContextManager[Any]:
        """Makes `stream` the one launches go to, inside the block."""
        return nullcontext()

    def capture(self, stream: Any, step: Callable[[], None]) -> Callable[[], None]:
        """Captures the launches `step()` makes on `stream`; returns a function replaying them
        (positions and token ids are read from device buffers, so a replay is the next step)."""
        raise NotImplementedError

    def free_bytes(self) -> int:
        raise NotImplementedError

    def copy_bandwidth(self, nbytes: int, repeats: int = 5) -> float:
        """Device-to-device copy bandwidth in bytes/s (bytes read + written), best of `repeats`."""
        raise NotImplementedError

    def device_name(self) -> str:
        raise NotImplementedError


def _scalars_ok(args: Sequence[Any]) -> None:
    for i, a in enumerate(args):
        if isinstance(a, (bool, int, float)):
            raise DeviceError(f"kernel argument {i} is a Python {type(a).__name__}: pass np.int32 / np.float32")


class EmulatorRuntime(Runtime):
    """The CPU emulator: numpy buffers, kernels compiled as C++ with the execution-model shim,
    launches run synchronously. Captured steps are recorded launch lists replayed in order —
    the same contract as a CUDA graph (arguments fixed at capture)."""

    name = "emulator"

    def __init__(self) -> None:
        from .emulator import EmulatedModule

        t0 = time.perf_counter()
        self.module = EmulatedModule(kernel_source(), [str(kernel_dir())])
        self.compile_seconds = time.perf_counter() - t0
        self._functions: dict = {}
        self._capture = threading.local()  # .launches: the list a capture in this thread records

    def empty(self, n: int, dtype: Any) -> np.ndarray:
        return np.empty(n, dtype=dtype)

    def zeros(self, n: int, dtype: Any) -> np.ndarray:
        return np.zeros(n, dtype=dtype)

    def upload(self, host: np.ndarray) -> np.ndarray:
        return np.array(host, copy=True, order="C")

    def write(self, dev: np.ndarray, host: np.ndarray, stream: Any = None) -> None:
        flat = np.ascontiguousarray(host).reshape(-1)
        dev[: flat.size] = flat

    def download(self, dev: np.ndarray, stream: Any = None) -> np.ndarray:
        return np.array(dev, copy=True)

    def _function(self, name: str) -> Any:
        f = self._functions.get(name)
        if f is None:
            f = self._functions[name] = self.module.get_function(name)
        return f

    def launch(self, name: str, grid: Sequence[int], block: Sequence[int], args: Sequence[Any], shared_mem: int = 0) -> None:
        _scalars_ok(args)
        self.launches += 1
        launch = (self._function(name), tuple(grid), tuple(block), tuple(args), shared_mem)
        recording = getattr(self._capture, "launches", None)
        if recording is not None:
            recording.append(launch)
            return
        f, g, b, a, s = launch
        f(g, b, a, shared_mem=s)

    def capture(self, stream: Any, step: Callable[[], None]) -> Callable[[], None]:
        recorded: List[Launch] = []
        self._capture.launches = recorded
        try:
            step()
        finally:
            self._capture.launches = None

        def replay() -> None:
            for f, g, b, a, s in recorded:
                f(g, b, a, shared_mem=s)

        return replay

    def free_bytes(self) -> int:
        from ... import _core

        return _core.memory_limit()

    def copy_bandwidth(self, nbytes: int, repeats: int = 5) -> float:
        a, b = np.ones(nbytes, np.uint8), np.empty(nbytes, np.uint8)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            np.copyto(b, a)
            best = min(best, time.perf_counter() - t0)
        return 2 * nbytes / best

    def device_name(self) -> str:
        return "CPU emulator of the CUDA execution model"


class CupyRuntime(Runtime):
    """An NVIDIA GPU through cupy: the kernels compile through NVRTC at first use
    (cupy caches the binaries on disk); launches are asynchronous on the given stream."""

    name = "cupy"

    def __init__(self) -> None:
        try:
            import cupy
        except ImportError as e:
            raise DeviceError(
                "device='cuda' needs cupy: pip install 'ferrolm[cuda12]' (or [cuda13]); "
                f"or set {EMULATE_ENV}=1 to run the CUDA kernels on the CPU emulator ({e})"
            ) from None
        try:
            n = cupy.cuda.runtime.getDeviceCount()
        except Exception as e:  # cupy raises CUDARuntimeError without a driver
            raise DeviceError(f"device='cuda' needs an NVIDIA GPU and driver: {e}") from None
        if n < 1:
            raise DeviceError("device='cuda' needs an NVIDIA GPU: none is visible")
        self.cp = cupy
        t0 = time.perf_counter()
        try:
            self.module = cupy.RawModule(code=kernel_source(), options=module_options())
            self.module.compile()
        except Exception as e:
            raise DeviceError(f"the CUDA kernels failed to compile: {e}") from None
        self.compile_seconds = time.perf_counter() - t0
        self._functions: dict = {}

    def empty(self, n: int, dtype: Any) -> Any:
        return self.cp.empty(n, dtype=dtype)

    def zeros(self, n: int, dtype: Any) -> Any:
        return self.cp.zeros(n, dtype=dtype)

    def upload(self, host: np.ndarray) -> Any:
        return self.cp.asarray(np.ascontiguousarray(host))

    def write(self, dev: Any, host: np.ndarray, stream: Any = None) -> None:
        flat = np.ascontiguousarray(host).reshape(-1)
        dev[: flat.size].set(flat, stream=stream)

    def download(self, dev: Any, stream: Any = None) -> np.ndarray:
        return dev.get(stream=stream)

    def launch(self, name: str, grid: Sequence[int], block: Sequence[int], args: Sequence[Any], shared_mem: int = 0) -> None:
        _scalars_ok(args)
        self.launches += 1
        f = self._functions.get(name)
        if f is None:
            f = self._functions[name] = self.module.get_function(name)
        # a null pointer is passed as a 64-bit zero (cupy has no None argument)
        f(tuple(grid), tuple(block), tuple(np.uint64(0) if a is None else a for a in args), shared_mem=shared_mem)

    def new_stream(self) -> Any:
        return self.cp.cuda.Stream(non_blocking=True)

    def on(self, stream: Any) -> ContextManager[Any]:
        return stream if stream is not None else nullcontext()

    def capture(self, stream: Any, step: Callable[[], None]) -> Callable[[], None]:
        with stream:
            stream.begin_capture()
            try:
                step()
            finally:
                graph = stream.end_capture()
        return lambda: graph.launch(stream)

    def free_bytes(self) -> int:
        free, _total = self.cp.cuda.runtime.memGetInfo()
        return int(free)

    def copy_bandwidth(self, nbytes: int, repeats: int = 5) -> float:
        cp = self.cp
        a, b = cp.ones(nbytes, cp.uint8), cp.empty(nbytes, cp.uint8)
        start, end = cp.cuda.Event(), cp.cuda.Event()
        b[...] = a  # warm-up
        best = float("inf")
        for _ in range(repeats):
            start.record()
            b[...] = a
            end.record()
            end.synchronize()
            best = min(best, cp.cuda.get_elapsed_time(start, end) / 1e3)
        del a, b
        return 2 * nbytes / best

    def device_name(self) -> str:
        props = self.cp.cuda.runtime.getDeviceProperties(self.cp.cuda.Device().id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
