"""ferrolm: compact LLM inference for Python, with a Rust core.

    import ferrolm
    model = ferrolm.load("path/to/hf-model-folder")
    print(model.generate("The capital of France is", max_new_tokens=20).text)
"""

from __future__ import annotations

from . import _core
from .config import GenerationConfig
from .errors import (
    CheckpointError,
    ConfigError,
    ContextLengthError,
    DeviceError,
    FerrolmError,
    InvalidArgumentError,
    InvalidTokenError,
    MemoryLimitError,
    MissingDependencyError,
    MissingTensorError,
    ModelNotFoundError,
    TensorError,
    TokenizerError,
)
from .generation import GenerationResult, TextStream, Timings, TokenLogprob, TokenScores, TopLogprob
from .prefix_cache import PrefixCacheInfo
from .lora import LoraAdapter, lora_stats, read_lora
from .memory import MemoryEstimate, estimate_memory
from .model import Model, Session, load
from . import metrics, quality
from .quality import QualityReport, compare, perplexity, quality_report

__version__ = _core.__version__


def __getattr__(name: str):
    # asyncio (about 3 MiB resident) is imported only by programs that use it
    if name == "AsyncTextStream":
        from .aio import AsyncTextStream

        return AsyncTextStream
    raise AttributeError(f"module 'ferrolm' has no attribute {name!r}")

__all__ = [
    "load",
    "perplexity",
    "compare",
    "quality_report",
    "QualityReport",
    "estimate_memory",
    "MemoryEstimate",
    "metrics",
    "lora_stats",
    "read_lora",
    "LoraAdapter",
    "Model",
    "GenerationConfig",
    "GenerationResult",
    "TextStream",
    "AsyncTextStream",
    "Timings",
    "TokenLogprob",
    "TopLogprob",
    "TokenScores",
    "Session",
    "PrefixCacheInfo",
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
    "__version__",
]
