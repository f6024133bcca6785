"""The CPU emulator of the CUDA execution model: ferrolm's ``.cu`` kernels built as host C++ and run
with one fiber per CUDA thread, so ``__syncthreads`` and warp shuffles behave as on a GPU.

``EmulatedModule(code, include_dirs)`` compiles the kernels' translation unit together with the
emulator's runtime (``ferrolm/cuda/emu``) into a shared library with g++, cached on disk, and
``get_function(name)`` returns a kernel with cupy's call shape::

    kernel(grid, block, args, shared_mem=0)

Device memory is host memory: pointer arguments are C-contiguous numpy arrays (or ``None`` for a
null pointer), scalars are numpy scalars of the parameter's exact type. Launches are synchronous;
faults (barrier divergence, traps, failed device asserts) raise :class:`~ferrolm.errors.DeviceError`.

Environment: ``FERROLM_CACHE_DIR`` (the cache folder's parent; default ``~/.cache/ferrolm``),
``FERROLM_EMU_THREADS`` (OS threads running blocks; default: the usable cores),
``FERROLM_EMU_STACK_KB`` (stack per CUDA thread; default 64), ``CXX`` (the compiler; default g++).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ...errors import DeviceError

__all__ = ["EmulatedModule", "EmulatedKernel", "emulator_cache_dir"]

# Flags of every emulator build. -fno-strict-aliasing: CUDA code reinterprets buffers freely
# (float4 loads of float rows, bf16 pairs as 32-bit words). -Bsymbolic binds the library's own
# __assert_fail, so a device assert() becomes a DeviceError instead of aborting Python.
COMPILE_FLAGS: Tuple[str, ...] = ("-std=c++17", "-O2", "-fPIC", "-pthread", "-fno-strict-aliasing")
LINK_FLAGS: Tuple[str, ...] = ("-shared", "-Wl,-Bsymbolic")

# Limits of the GPUs ferrolm targets (sm_80/sm_90), checked at launch as a GPU would.
MAX_THREADS_PER_BLOCK = 1024
MAX_BLOCK_DIM = (1024, 1024, 64)
MAX_GRID_DIM = (2**31 - 1, 65535, 65535)
MAX_SHARED_BYTES = 227 * 1024

_EMU_DIR = Path(__file__).resolve().parents[2] / "cuda" / "emu"
_ERROR_BYTES = 4096
_lock = threading.Lock()
_compiler_ids: Dict[str, str] = {}
_runtime_objects: Dict[str, Path] = {}


def emulator_cache_dir() -> Path:
    """Where built kernel libraries are kept: ``$FERROLM_CACHE_DIR/emu`` or ``~/.cache/ferrolm/emu``."""
    root = os.environ.get("FERROLM_CACHE_DIR")
    base = Path(root) if root else Path.home() / ".cache" / "ferrolm"
    return base / "emu"


def _compiler() -> str:
    cxx = os.environ.get("CXX", "g++")
    path = shutil.which(cxx)
    if path is None:
        raise DeviceError(
            f"the CUDA emulator needs a C++17 compiler (g++) to build the kernels, and {cxx!r} was not found "
            "on PATH; install g++ or set CXX"
        )
    return path


def _compiler_id(cxx: str) -> str:
    """The compiler's version banner: part of every cache key."""
    if cxx not in _compiler_ids:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True)
        _compiler_ids[cxx] = out.stdout.strip()
    return _compiler_ids[cxx]


def _run(cmd: List[str], what: str, stdin: Optional[str] = None) -> str:
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True)
    if proc.returncode != 0:
        log = (proc.stderr or proc.stdout).strip()
        if len(log) > 20000:
            log = log[:20000] + "\n... (truncated)"
        raise DeviceError(f"{what} failed:\n{log}")
    return proc.stdout


def _digest(*parts: Union[str, bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        data = p.encode() if isinstance(p, str) else p
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
    return h.hexdigest()[:24]


def _publish(tmp: Path, final: Path) -> None:
    """Moves a finished build into place atomically (a concurrent builder of the same key wins or
    loses the rename harmlessly: both files are the same build)."""
    os.replace(tmp, final)


def _runtime_object(cxx: str, cache: Path) -> Path:
    """The emulator's runtime (every ``emu/*.cpp``) as one relocatable object, built once per
    compiler and runtime source."""
    sources = sorted(_EMU_DIR.glob("*.cpp"))
    shim = [p.read_bytes() for p in sorted(_EMU_DIR.glob("*.[ch]*"))]
    key = _digest(_compiler_id(cxx), " ".join(COMPILE_FLAGS), *shim)
    if key in _runtime_objects and _runtime_objects[key].exists():
        return _runtime_objects[key]
    final = cache / f"runtime-{key}.o"
    if not final.exists():
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            objs = []
            for src in sources:
                obj = Path(tmp) / (src.stem + ".o")
                _run([cxx, *COMPILE_FLAGS, "-c", str(src), "-o", str(obj)], "building the CUDA emulator's runtime")
                objs.append(str(obj))
            out = Path(tmp) / "runtime.o"
            _run([cxx, "-r", "-nostdlib", *objs, "-o", str(out)], "linking the CUDA emulator's runtime")
            _publish(out, final)
    _runtime_objects[key] = final
    return final


class EmulatedModule:
    """The kernels of one translation unit, built for the CPU emulator.

    ``code`` is the CUDA source (the backend passes every kernel file concatenated, each preceded by
    ``#line 1 "<file>.cu"``); ``include_dirs`` are searched for its headers (``-I``), followed by
    ``ferrolm/cuda`` so that ``#include "emu/cuda_emu.h"`` resolves anywhere. Compile errors raise
    :class:`DeviceError` with the compiler's diagnostics.
    """

    def __init__(self, code: str, include_dirs: Sequence[Union[str, os.PathLike]] = (), name: str = "ferrolm_kernels"):
        self.name = name
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "kernels"  # the name is part of file names
        cxx = _compiler()
        cache = emulator_cache_dir()
        cache.mkdir(parents=True, exist_ok=True)
        includes = [f"-I{Path(d).resolve()}" for d in include_dirs] + [f"-I{_EMU_DIR.parent}"]
        with _lock:
            runtime = _runtime_object(cxx, cache)
            # The key covers everything the compiler reads: the preprocessed source (headers included,
            # with line markers, which end up in error messages), the runtime, compiler and flags.
            pre = _run([cxx, *COMPILE_FLAGS, *includes, "-E", "-x", "c++", "-"], f"preprocessing {name}", stdin=code)
            key = _digest(pre, runtime.name, _compiler_id(cxx), " ".join(COMPILE_FLAGS + LINK_FLAGS))
            path = cache / f"{stem}-{key}.so"
            self.compiled = not path.exists()
            if self.compiled:
                self._build(cxx, code, includes, runtime, cache, path, stem)
        self.path = path
        self._lib = ctypes.CDLL(str(path))
        self._bind()

    def _build(self, cxx: str, code: str, includes: List[str], runtime: Path, cache: Path, path: Path, stem: str) -> None:
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            src = Path(tmp) / f"{stem}.cpp"
            src.write_text(code, encoding="utf-8")
            out = Path(tmp) / path.name
            cmd = [cxx, *COMPILE_FLAGS, *LINK_FLAGS, *includes, str(src), str(runtime), "-o", str(out)]
            _run(cmd, f"compiling CUDA kernels ({self.name}) for the emulator")
            _publish(out, path)

    def _bind(self) -> None:
        lib = self._lib
        lib.fl_emu_kernel_count.restype = ctypes.c_int
        lib.fl_emu_kernel_name.restype = ctypes.c_char_p
        lib.fl_emu_kernel_name.argtypes = [ctypes.c_int]
        lib.fl_emu_kernel_signature.restype = ctypes.c_char_p
        lib.fl_emu_kernel_signature.argtypes = [ctypes.c_int]
        lib.fl_emu_launch.restype = ctypes.c_int
        lib.fl_emu_launch.argtypes = [
            ctypes.c_int, ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint), ctypes.c_size_t,
            ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t,
        ]
        self._kernels: Dict[str, Tuple[int, Tuple[str, ...]]] = {}
        for i in range(lib.fl_emu_kernel_count()):
            sig = lib.fl_emu_kernel_signature(i).decode()
            self._kernels[lib.fl_emu_kernel_name(i).decode()] = (i, tuple(sig.split()) if sig else ())

    @property
    def kernel_names(self) -> List[str]:
        """The kernels registered with ``FL_EXPORT``, in definition order."""
        return list(self._kernels)

    def get_function(self, name: str) -> "EmulatedKernel":
        if name not in self._kernels:
            known = ", ".join(self._kernels) or "none"
            raise DeviceError(f"no kernel named {name!r} in {self.name} (FL_EXPORT'ed kernels: {known})")
        index, params = self._kernels[name]
        return EmulatedKernel(self, name, index, params)


def _dims(value, what: str, kernel: str) -> Tuple[int, int, int]:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, (tuple, list)) or not 1 <= len(value) <= 3:
        raise DeviceError(f"kernel {kernel!r}: {what} must be a tuple of 1 to 3 ints, got {value!r}")
    dims = []
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise DeviceError(f"kernel {kernel!r}: {what} {tuple(value)!r} must hold positive ints")
        dims.append(int(v))
    while len(dims) < 3:
        dims.append(1)
    return dims[0], dims[1], dims[2]


_SCALAR_KINDS = {"i": "i", "u": "u", "f": "f", "b": "b"}
_KIND_NAMES = {"i": "signed integer", "u": "unsigned integer", "f": "floating-point", "b": "bool", "s": "struct"}
_NUMPY_NAMES = {("i", 4): "np.int32", ("i", 8): "np.int64", ("u", 4): "np.uint32", ("u", 8): "np.uint64",
                ("f", 4): "np.float32", ("f", 8): "np.float64", ("i", 2): "np.int16", ("u", 2): "np.uint16",
                ("i", 1): "np.int8", ("u", 1): "np.uint8", ("b", 1): "np.bool_"}


class EmulatedKernel:
    """One kernel of an :class:`EmulatedModule`; call it like a ``cupy.RawKernel``."""

    def __init__(self, module: EmulatedModule, name: str, index: int, params: Tuple[str, ...]):
        self.module = module
        self.name = name
        self._index = index
        self.params = params  # signature tokens, see emu_registry.h

    def __repr__(self) -> str:
        return f"<EmulatedKernel {self.name}({', '.join(self.params)})>"

    def __call__(self, grid, block, args, shared_mem: int = 0, stream=None) -> None:
        """Runs the kernel over ``grid`` × ``block`` threads and returns when it has finished.
        ``stream`` is accepted for cupy compatibility and ignored (launches are synchronous)."""
        g = _dims(grid, "grid", self.name)
        b = _dims(block, "block", self.name)
        for i, axis in enumerate("xyz"):
            if g[i] > MAX_GRID_DIM[i]:
                raise DeviceError(f"kernel {self.name!r}: grid.{axis} = {g[i]} exceeds {MAX_GRID_DIM[i]}")
            if b[i] > MAX_BLOCK_DIM[i]:
                raise DeviceError(f"kernel {self.name!r}: block.{axis} = {b[i]} exceeds {MAX_BLOCK_DIM[i]}")
        if b[0] * b[1] * b[2] > MAX_THREADS_PER_BLOCK:
            raise DeviceError(
                f"kernel {self.name!r}: block {b} has {b[0] * b[1] * b[2]} threads, more than {MAX_THREADS_PER_BLOCK}"
            )
        if isinstance(shared_mem, bool) or not isinstance(shared_mem, (int, np.integer)) or not 0 <= shared_mem <= MAX_SHARED_BYTES:
            raise DeviceError(
                f"kernel {self.name!r}: shared_mem must be an int from 0 to {MAX_SHARED_BYTES} bytes, got {shared_mem!r}"
            )
        values = self._pack(args)
        addresses = (ctypes.c_void_p * max(len(values), 1))(*[ctypes.addressof(v) for v in values])
        err = ctypes.create_string_buffer(_ERROR_BYTES)
        lib = self.module._lib
        rc = lib.fl_emu_launch(
            self._index, (ctypes.c_uint * 3)(*g), (ctypes.c_uint * 3)(*b), int(shared_mem), addresses,
            _threads(), _stack_bytes(), err, _ERROR_BYTES,
        )
        if rc != 0:
            raise DeviceError(err.value.decode(errors="replace"))

    def _pack(self, args) -> list:
        """Checks ``args`` against the kernel's parameters and returns one ctypes object per value."""
        if not isinstance(args, (tuple, list)):
            raise DeviceError(f"kernel {self.name!r}: args must be a tuple, got {type(args).__name__}")
        if len(args) != len(self.params):
            raise DeviceError(f"kernel {self.name!r} takes {len(self.params)} arguments, got {len(args)}")
        return [self._pack_one(i, tok, a) for i, (tok, a) in enumerate(zip(self.params, args))]

    def _bad(self, i: int, msg: str) -> DeviceError:
        return DeviceError(f"kernel {self.name!r}, parameter {i}: {msg}")

    def _pack_one(self, i: int, token: str, value):
        kind, size = token[0], int(token[1:])
        if kind == "p":
            if value is None:
                return ctypes.c_void_p(None)
            if not isinstance(value, np.ndarray):
                raise self._bad(i, f"expects a pointer (a numpy array or None), got {type(value).__name__}")
            if not value.flags.c_contiguous:
                raise self._bad(i, "the array must be C-contiguous")
            ptr = value.ctypes.data
            if ptr % size:
                raise self._bad(i, f"the array's data is not aligned to the {size} bytes the pointee needs")
            return ctypes.c_void_p(ptr)
        if isinstance(value, np.ndarray):
            raise self._bad(i, f"expects a {size}-byte {_KIND_NAMES[kind]} scalar, got an array")
        if kind == "s":
            raw = value.tobytes() if isinstance(value, np.generic) else value
            if not isinstance(raw, (bytes, bytearray)) or len(raw) != size:
                raise self._bad(i, f"expects a {size}-byte struct (bytes or a numpy void scalar)")
            return ctypes.create_string_buffer(bytes(raw), size)
        want = _NUMPY_NAMES.get((kind, size), f"a {size}-byte {_KIND_NAMES[kind]}")
        if not isinstance(value, np.generic):
            raise self._bad(
                i, f"expects {want}, got Python {type(value).__name__} (cupy would pass it unchecked as "
                "long long or double): pass a numpy scalar of the parameter's type"
            )
        if value.dtype.kind != _SCALAR_KINDS[kind] or value.dtype.itemsize != size:
            raise self._bad(i, f"expects {want}, got np.{value.dtype.name}")
        return ctypes.create_string_buffer(value.tobytes(), size)


def _threads() -> int:
    env = os.environ.get("FERROLM_EMU_THREADS")
    if env:
        return max(1, int(env))
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def _stack_bytes() -> int:
    return max(16, int(os.environ.get("FERROLM_EMU_STACK_KB", "64"))) * 1024
