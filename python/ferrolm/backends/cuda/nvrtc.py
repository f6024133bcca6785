"""A small ctypes binding to NVRTC, CUDA's run-time compiler.

NVRTC compiles CUDA C++ to PTX or to a cubin for a given architecture without a GPU or a driver,
so CI uses it to prove that the kernels compile (``ferrolm.backends.cuda.check_kernels``). cupy's
own compile helpers ask the driver for the device's architecture first, which is why this module
calls NVRTC directly.

The library comes from the ``nvidia-cuda-nvrtc-cu12`` wheel (``nvidia/cuda_nvrtc/lib``) when it is
installed, else from the system's library path or a CUDA toolkit (``CUDA_PATH``, ``CUDA_HOME``,
``/usr/local/cuda``). ``cuda_bf16.h`` and ``cuda_fp16.h`` are not built into NVRTC: they come from
the ``nvidia-cuda-runtime-cu12`` wheel (``nvidia/cuda_runtime/include``) or the toolkit's include
folder (:func:`cuda_include_dir`).
"""

from __future__ import annotations

import ctypes
import glob
import os
import sys
import threading
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple, Union

from ...errors import DeviceError

__all__ = [
    "CompileResult",
    "PtxResult",
    "compile_cubin",
    "compile_ptx",
    "cuda_include_dir",
    "nvrtc_available",
    "nvrtc_path",
    "nvrtc_version",
    "supported_archs",
]


class CompileResult(NamedTuple):
    """A cubin and the program log (compiler diagnostics, and the ptxas report with ``-Xptxas=-v``)."""

    cubin: bytes
    log: str


class PtxResult(NamedTuple):
    """PTX text and the program log."""

    ptx: str
    log: str


_NVRTC_SUCCESS = 0
_NVRTC_ERROR_COMPILATION = 6

_lock = threading.Lock()
_lib: Optional[ctypes.CDLL] = None
_lib_path: Optional[str] = None
_load_error: Optional[str] = None


def _wheel_roots() -> List[Path]:
    """The folders of the ``nvidia`` namespace package (the CUDA component wheels)."""
    try:
        import nvidia  # type: ignore[import-not-found]
    except ImportError:
        return []
    return [Path(p) for p in getattr(nvidia, "__path__", [])]


def _toolkit_roots() -> List[Path]:
    roots = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    return [Path(r) for r in roots if r]


def _candidates() -> List[str]:
    """Where to look for NVRTC, best first: the wheel, a toolkit, then the loader's own search."""
    found: List[str] = []
    if sys.platform.startswith("win"):
        patterns = ["nvrtc64_12*.dll", "nvrtc64_13*.dll"]
        subdirs = ["cuda_nvrtc/bin", "cuda_nvrtc/lib", "cu13/bin", "cu13/bin/x64"]
        tk_subdirs = ["bin", "bin/x64"]
        by_name = ["nvrtc64_120_0.dll", "nvrtc64_130_0.dll"]
    else:
        # CUDA 12 wheels keep NVRTC in nvidia/cuda_nvrtc/lib; CUDA 13 ones in nvidia/cu13/lib
        patterns = ["libnvrtc.so.12", "libnvrtc.so.13"]
        subdirs = ["cuda_nvrtc/lib", "cu13/lib"]
        tk_subdirs = ["lib64", "lib", "targets/x86_64-linux/lib", "targets/sbsa-linux/lib"]
        by_name = ["libnvrtc.so.12", "libnvrtc.so.13"]
    for pat in patterns:  # CUDA 12 first: the version CI checks with
        for root in _wheel_roots():
            for sub in subdirs:
                found += sorted(glob.glob(str(root / sub / pat)))
        for root in _toolkit_roots():
            for sub in tk_subdirs:
                found += sorted(glob.glob(str(root / sub / pat)))
    # the dynamic loader's search path (LD_LIBRARY_PATH, ldconfig)
    return found + by_name


def _preload_builtins(lib_file: str) -> None:
    """Load ``libnvrtc-builtins`` from NVRTC's own folder, so NVRTC finds it even when that folder
    is not on the loader's path (NVRTC opens it by name on the first compile)."""
    folder = os.path.dirname(lib_file)
    if not folder:
        return
    major = os.path.basename(lib_file).rsplit(".so.", 1)[-1].split(".")[0]
    for builtins in sorted(glob.glob(os.path.join(folder, f"libnvrtc-builtins.so.{major}*"))):
        if ".alt." in os.path.basename(builtins):
            continue
        try:
            ctypes.CDLL(builtins, mode=getattr(ctypes, "RTLD_GLOBAL", 0))
        except OSError:
            pass
        return


def _declare(lib: ctypes.CDLL) -> None:
    c_int_p = ctypes.POINTER(ctypes.c_int)
    c_size_p = ctypes.POINTER(ctypes.c_size_t)
    prog_p = ctypes.POINTER(ctypes.c_void_p)
    sigs = {
        "nvrtcGetErrorString": (ctypes.c_char_p, [ctypes.c_int]),
        "nvrtcVersion": (ctypes.c_int, [c_int_p, c_int_p]),
        "nvrtcGetNumSupportedArchs": (ctypes.c_int, [c_int_p]),
        "nvrtcGetSupportedArchs": (ctypes.c_int, [c_int_p]),
        "nvrtcCreateProgram": (
            ctypes.c_int,
            [prog_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int,
             ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_char_p)],
        ),
        "nvrtcDestroyProgram": (ctypes.c_int, [prog_p]),
        "nvrtcCompileProgram": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]),
        "nvrtcGetProgramLogSize": (ctypes.c_int, [ctypes.c_void_p, c_size_p]),
        "nvrtcGetProgramLog": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
        "nvrtcGetPTXSize": (ctypes.c_int, [ctypes.c_void_p, c_size_p]),
        "nvrtcGetPTX": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
        "nvrtcGetCUBINSize": (ctypes.c_int, [ctypes.c_void_p, c_size_p]),
        "nvrtcGetCUBIN": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_char_p]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


def _load() -> ctypes.CDLL:
    global _lib, _lib_path, _load_error
    with _lock:
        if _lib is not None:
            return _lib
        errors = []
        for cand in _candidates():
            try:
                if os.path.isabs(cand):
                    _preload_builtins(cand)
                lib = ctypes.CDLL(cand)
                _declare(lib)
            except (OSError, AttributeError) as e:
                errors.append(f"{cand}: {e}")
                continue
            _lib, _lib_path = lib, cand
            return lib
        _load_error = "; ".join(errors[-3:])
    raise DeviceError(
        "NVRTC (libnvrtc.so.12) was not found: install the nvidia-cuda-nvrtc-cu12 wheel "
        "(pip install 'nvidia-cuda-nvrtc-cu12>=12,<13') or a CUDA 12 toolkit"
        + (f" ({_load_error})" if _load_error else "")
    )


def nvrtc_available() -> bool:
    """True when NVRTC can be loaded."""
    try:
        _load()
    except DeviceError:
        return False
    return True


def nvrtc_path() -> str:
    """The NVRTC library that was loaded (a path, or the bare name the loader resolved)."""
    _load()
    assert _lib_path is not None
    return _lib_path


def _error_string(lib: ctypes.CDLL, code: int) -> str:
    s = lib.nvrtcGetErrorString(code)
    return s.decode() if s else f"NVRTC error {code}"


def _check(lib: ctypes.CDLL, code: int, what: str) -> None:
    if code != _NVRTC_SUCCESS:
        raise DeviceError(f"NVRTC {what} failed: {_error_string(lib, code)}")


def nvrtc_version() -> Tuple[int, int]:
    """NVRTC's (major, minor) version."""
    lib = _load()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib, lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def supported_archs() -> List[int]:
    """The compute capabilities NVRTC can build a cubin for, e.g. [..., 80, 86, 89, 90, ...]."""
    lib = _load()
    n = ctypes.c_int()
    _check(lib, lib.nvrtcGetNumSupportedArchs(ctypes.byref(n)), "nvrtcGetNumSupportedArchs")
    archs = (ctypes.c_int * n.value)()
    _check(lib, lib.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs")
    return list(archs)


def cuda_include_dir(major: Optional[int] = None) -> Optional[Path]:
    """The folder holding ``cuda_bf16.h``/``cuda_fp16.h``: the ``nvidia-cuda-runtime-cu12`` wheel's
    ``nvidia/cuda_runtime/include`` (CUDA 13's wheels: ``nvidia/cu13/include``), else a CUDA
    toolkit's ``include``; None when none exists. ``major`` (12, 13) asks for the headers of that
    CUDA version among the wheels (the NVRTC that compiles them should be of the same version)."""
    wheel_subdirs = {12: ["cuda_runtime/include"], 13: ["cu13/include"]}
    majors = [major] if major is not None else [12, 13]
    for m in majors:
        for root in _wheel_roots():
            for sub in wheel_subdirs.get(m, []):
                inc = root / sub
                if (inc / "cuda_bf16.h").is_file():
                    return inc
    for root in _toolkit_roots():
        for inc in (root / "include", root / "targets" / "x86_64-linux" / "include"):
            if (inc / "cuda_bf16.h").is_file():
                return inc
    return None


def _arch_number(arch: Union[str, int]) -> int:
    """80, "80", "sm_80", "compute_80" -> 80."""
    s = str(arch).strip().lower()
    for prefix in ("sm_", "compute_"):
        if s.startswith(prefix):
            s = s[len(prefix):]
    if not s.isdigit():
        raise DeviceError(f"not a CUDA architecture: {arch!r} (expected e.g. 'sm_80')")
    return int(s)


def _compile(source: str, name: str, options: Sequence[str]) -> Tuple[ctypes.CDLL, ctypes.c_void_p, str]:
    """Create and compile a program; returns it (to be destroyed by the caller) and its log.
    A failed compilation raises DeviceError carrying the log."""
    lib = _load()
    prog = ctypes.c_void_p()
    _check(lib, lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0, None, None),
           "nvrtcCreateProgram")
    try:
        opts = [o.encode() for o in options]
        argv = (ctypes.c_char_p * max(len(opts), 1))(*opts)
        rc = lib.nvrtcCompileProgram(prog, len(opts), argv)
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        buf = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        log = buf.value.decode(errors="replace")
        if rc != _NVRTC_SUCCESS:
            detail = _error_string(lib, rc)
            raise DeviceError(f"CUDA compile of {name} failed ({detail}):\n{log.strip()}")
    except BaseException:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
        raise
    return lib, prog, log


def compile_cubin(source: str, name: str, arch: Union[str, int], options: Sequence[str] = ()) -> CompileResult:
    """Compile CUDA C++ ``source`` (``name`` is the file name used in diagnostics) to a cubin for
    ``arch`` (``"sm_80"``, ``"sm_90"``, ...); ``options`` are NVRTC options without the arch flag.
    Raises DeviceError when NVRTC is missing or the source does not compile (the message holds the
    compiler log, with ``file(line)`` positions)."""
    cc = _arch_number(arch)
    lib, prog, log = _compile(source, name, [*options, f"-arch=sm_{cc}"])
    try:
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "nvrtcGetCUBINSize")
        buf = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetCUBIN(prog, buf), "nvrtcGetCUBIN")
        return CompileResult(buf.raw, log)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def compile_ptx(source: str, name: str, arch: Union[str, int], options: Sequence[str] = ()) -> PtxResult:
    """Compile ``source`` to PTX for the virtual architecture ``compute_<arch>``; as
    :func:`compile_cubin` otherwise."""
    cc = _arch_number(arch)
    lib, prog, log = _compile(source, name, [*options, f"-arch=compute_{cc}"])
    try:
        size = ctypes.c_size_t()
        _check(lib, lib.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
        buf = ctypes.create_string_buffer(size.value)
        _check(lib, lib.nvrtcGetPTX(prog, buf), "nvrtcGetPTX")
        return PtxResult(buf.value.decode(), log)
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))
