"""numpy, imported the first time an attribute is used.

Loading a model and generating text need no numpy: the core takes bytes, and GGUF and
safetensors files are read through mmap. Importing numpy costs about 18 MiB of resident memory
and tens of milliseconds, which a process that never asks for arrays (the CLI, a server
generating text) should not pay. Modules write `from ._numpy import np` and use `np.*` as usual.
"""

from __future__ import annotations

import sys
from typing import Any, Tuple


class _LazyNumpy:
    def __getattr__(self, name: str) -> Any:
        import numpy

        value = getattr(numpy, name)
        setattr(self, name, value)  # later uses are plain attribute reads
        return value

    def __repr__(self) -> str:
        return "<numpy, imported on first use>"


np: Any = _LazyNumpy()


def loaded() -> Any:
    """The numpy module if this process has imported it, else None: a value can only be a numpy
    array or scalar when numpy is loaded, so type checks need not import it."""
    return sys.modules.get("numpy")


def sequence_types() -> Tuple[type, ...]:
    """list, tuple, and numpy.ndarray once numpy is loaded: what token-id arguments may be."""
    numpy = loaded()
    return (list, tuple) if numpy is None else (list, tuple, numpy.ndarray)


def integer_types() -> Tuple[type, ...]:
    """int, and numpy.integer once numpy is loaded."""
    numpy = loaded()
    return (int,) if numpy is None else (int, numpy.integer)
