"""The CUDA kernels' source: one translation unit made of the packaged ``ferrolm/cuda/*.cu`` files,
and the NVRTC options it is compiled with.

The backend (through ``cupy.RawModule``), the emulator and the compile check
(``python -m ferrolm.backends.cuda.check_kernels``) all build the same translation unit here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple, Union

__all__ = [
    "CUPY_ADDED_OPTIONS",
    "exported_kernels",
    "kernel_dir",
    "kernel_files",
    "kernel_source",
    "module_options",
    "TRANSLATION_UNIT",
]

PathLike = Union[str, Path]

# The name NVRTC is given for the concatenated source. Diagnostics name the real files instead,
# thanks to the `#line 1 "<file>"` in front of each one.
TRANSLATION_UNIT = "ferrolm_kernels.cu"

# What cupy (13, 14) appends to a RawModule's options when it compiles through NVRTC without
# jitify (cupy/cuda/compiler.py): flush denormals, and the default execution space. It also adds
# `-arch=sm_<cc>` of the current device (or `compute_<cc>` when NVRTC is older than the device),
# `--std=c++14` when the options name no standard, and -I its own headers (unused by ferrolm).
CUPY_ADDED_OPTIONS: Tuple[str, ...] = ("-ftz=true", "--device-as-default-execution-space")


def kernel_dir() -> Path:
    """The packaged kernel folder, ``ferrolm/cuda``."""
    return Path(__file__).resolve().parents[2] / "cuda"


def kernel_files(directory: Optional[PathLike] = None) -> List[Path]:
    """The kernel files of ``directory`` (default: :func:`kernel_dir`), ``*.cu`` in name order."""
    folder = Path(directory) if directory is not None else kernel_dir()
    return sorted(folder.glob("*.cu"), key=lambda p: p.name)


def kernel_source(directory: Optional[PathLike] = None) -> str:
    """The single translation unit: every ``*.cu`` of ``directory`` (default: the packaged kernels)
    in name order, each preceded by ``#line 1 "<file name>"`` so diagnostics name the real file.
    Headers (``common.cuh``) are found through ``-I`` the kernel folder (:func:`module_options`)."""
    parts = []
    for f in kernel_files(directory):
        text = f.read_text(encoding="utf-8")
        if not text.endswith("\n"):
            text += "\n"
        parts.append(f'#line 1 "{f.name}"\n{text}')
    return "".join(parts)


def module_options(directory: Optional[PathLike] = None, include_dir: Optional[PathLike] = "auto") -> Tuple[str, ...]:
    """The options ferrolm gives ``cupy.RawModule`` (cupy adds :data:`CUPY_ADDED_OPTIONS` and the
    arch flag): C++17, ``-I`` the kernel folder and ``-I`` the folder of ``cuda_bf16.h``
    (``include_dir``; by default :func:`ferrolm.backends.cuda.nvrtc.cuda_include_dir`, left out
    when that finds none)."""
    folder = Path(directory) if directory is not None else kernel_dir()
    opts = ["-std=c++17", f"-I{folder.resolve()}"]
    if include_dir == "auto":
        from .nvrtc import cuda_include_dir

        include_dir = cuda_include_dir()
    if include_dir is not None:
        opts.append(f"-I{Path(include_dir).resolve()}")
    return tuple(opts)


_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_KERNEL = re.compile(
    r'\bextern\s+"C"\s+__global__\s+'
    r"(?:(?:__launch_bounds__\s*\([^)]*\)|\w+)\s+)*?"
    r"(?!__launch_bounds__\b)(\w+)\s*\("
)


def exported_kernels(source: str) -> List[str]:
    """The names of the ``extern "C" __global__`` functions declared in ``source``, in order."""
    names: List[str] = []
    for m in _KERNEL.finditer(_COMMENTS.sub(" ", source)):
        if m.group(1) not in names:
            names.append(m.group(1))
    return names
