"""ferrolm's exceptions. Every error the library raises on purpose derives from FerrolmError;
the ones about bad values also derive from ValueError, missing files from FileNotFoundError."""

from __future__ import annotations


class FerrolmError(Exception):
    """Base class of every ferrolm error."""


class ConfigError(FerrolmError, ValueError):
    """config.json is malformed or describes an unsupported architecture or feature."""


class CheckpointError(FerrolmError):
    """A checkpoint file is missing, unreadable, corrupt or in an unsupported format."""


class ModelNotFoundError(CheckpointError, FileNotFoundError):
    """The model path does not exist or lacks a required file."""


class MissingTensorError(CheckpointError):
    """The checkpoint lacks a tensor the architecture needs."""


class TensorError(CheckpointError):
    """A checkpoint tensor has the wrong shape or an unsupported dtype."""


class TokenizerError(FerrolmError):
    """The tokenizer is missing (text given to a model without one) or cannot be loaded."""


class InvalidTokenError(FerrolmError, ValueError):
    """A token id lies outside the vocabulary."""


class ContextLengthError(FerrolmError, ValueError):
    """The sequence does not fit in the context length."""


class InvalidArgumentError(FerrolmError, ValueError):
    """An argument is out of range or of the wrong kind (sampling knobs, empty prompts, ...)."""


class MemoryLimitError(FerrolmError, MemoryError):
    """A requested buffer (a context's KV cache, a tensor, logits) cannot fit in this machine's
    memory; the message says what needs how much."""


class MissingDependencyError(FerrolmError, ImportError):
    """An optional package that a feature needs is not installed; the message says which extra
    (e.g. `pip install 'ferrolm[eval]'`) brings it."""


class DeviceError(FerrolmError):
    """Raised by the CUDA backend: cupy or a GPU is missing, the kernels fail to compile, or the
    CPU emulator of the CUDA execution model reports a fault (barrier divergence, a trap, an
    argument that does not match the kernel's parameter)."""


__all__ = [
    "FerrolmError",
    "ConfigError",
    "CheckpointError",
    "ModelNotFoundError",
    "MissingTensorError",
    "TensorError",
    "TokenizerError",
    "InvalidTokenError",
    "ContextLengthError",
    "InvalidArgumentError",
    "MemoryLimitError",
    "MissingDependencyError",
    "DeviceError",
]
