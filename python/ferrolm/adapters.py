"""Adapters of a loaded model: LoRA, merged or unmerged, swappable without reloading.

- Merged (the default): W' = W + scale·B·A is computed in FP32 from the *original* weights
  (the checkpoint's, or the FP32 model's own) and converted to the model's precision, so an INT8
  or BF16 model carries the adapted weights at no extra decode cost. Only the matrices the
  adapter touches are rebuilt; every other weight is shared with the base model.
- Unmerged: the base weights stay as they are and each adapted layer adds scale·(x·Aᵀ)·Bᵀ at run
  time (FP32). Several unmerged adapters can stay loaded and be picked per `generate()` call.

The base model is never modified: `set_adapter(None)` returns to it exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Union

from ._numpy import np

from .errors import InvalidArgumentError
from .loading import Checkpoint, TensorReader
from .lora import LoraAdapter, check_name, read_lora

if TYPE_CHECKING:
    from . import _core


@dataclass
class LoadedAdapter:
    name: str
    adapter: LoraAdapter
    merged: bool
    scale: float
    core: Optional["_core.Model"] = None  # unmerged: built at load; merged: while active


class Adapters:
    """The adapters of one Model (see the module docstring)."""

    def __init__(self, base: "_core.Model", checkpoint: Optional[Checkpoint], precision: str) -> None:
        # what merging needs, passed in (no reference back to the Model: a dropped Model is
        # freed at once, not when the cyclic collector gets to it)
        self._base = base
        self._checkpoint = checkpoint
        self._precision = precision
        self._loaded: Dict[str, LoadedAdapter] = {}
        self.active: Optional[str] = None

    @property
    def names(self) -> Dict[str, str]:
        return {n: ("merged" if a.merged else "unmerged") for n, a in self._loaded.items()}

    def load_lora(self, path: Union[str, os.PathLike], name: Optional[str], merged: bool, scale: float) -> str:
        adapter = read_lora(path)
        name = check_name(Path(path).name if name is None else name, self._loaded, "adapter")
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not np.isfinite(scale):
            raise InvalidArgumentError(f"scale must be a finite number, got {scale!r}")
        base = self._base
        for pair in adapter.pairs:
            rows, k = base.adaptable_shape(pair.weight)  # unknown names raise InvalidArgumentError
            if pair.b.shape[0] != rows or pair.a.shape[1] != k:
                raise InvalidArgumentError(
                    f"{adapter.path}: {pair.weight} is [{rows}x{k}] in the model but the adapter's "
                    f"B·A is [{pair.b.shape[0]}x{pair.a.shape[1]}]"
                )
        entry = LoadedAdapter(name, adapter, bool(merged), adapter.scale * float(scale))
        if not entry.merged:
            deltas = [(p.weight, p.rank, p.a.tobytes(), p.b.tobytes(), entry.scale) for p in adapter.pairs]
            entry.core = base.variant([], deltas)
        self._loaded[name] = entry
        return name

    def remove(self, name: str) -> None:
        self._get(name)
        if self.active == name:
            self.set(None)
        del self._loaded[name]

    def _get(self, name: str) -> LoadedAdapter:
        if name not in self._loaded:
            known = ", ".join(sorted(self._loaded)) or "none"
            raise InvalidArgumentError(f"no adapter named {name!r} is loaded (loaded: {known})")
        return self._loaded[name]

    def set(self, name: Optional[str]) -> "_core.Model":
        """Makes `name` (or the base model, for None) the default; returns its core model."""
        if name is None:
            if self.active is not None and self._loaded[self.active].merged:
                self._loaded[self.active].core = None  # free the merged copies
            self.active = None
            return self._base
        entry = self._get(name)
        if entry.merged and entry.core is None:
            entry.core = self._merge(entry)
        if self.active is not None and self.active != name and self._loaded[self.active].merged:
            self._loaded[self.active].core = None
        self.active = name
        return entry.core

    def live_cores(self) -> List["_core.Model"]:
        """The base and every variant that sessions may still use."""
        return [self._base] + [a.core for a in self._loaded.values() if a.core is not None]

    def is_live(self, core: "_core.Model") -> bool:
        """Whether sessions of `core` may still be used (the base or a loaded variant)."""
        return core is self._base or any(a.core is core for a in self._loaded.values())

    def core_for(self, name: Optional[str]) -> "_core.Model":
        """The core model to run for a per-call adapter choice (unmerged adapters, the active one,
        or None for the base)."""
        if name is None:
            return self._base
        entry = self._get(name)
        if entry.core is None:
            raise InvalidArgumentError(
                f"adapter {name!r} is merged and not active: call set_adapter({name!r}) first, or load it with merged=False "
                "to choose it per call"
            )
        return entry.core

    # -- merging ---------------------------------------------------------------------------------
    def _merge(self, entry: LoadedAdapter) -> "_core.Model":
        merged = []
        ckpt = self._checkpoint
        reader = TensorReader(ckpt) if ckpt is not None and self._precision != "fp32" else None
        try:
            for p in entry.adapter.pairs:  # W + scale·B·A is computed in the core, in FP32
                w = self.original_weight(p.weight, reader)
                merged.append((p.weight, w.tobytes(), p.rank, p.a.tobytes(), p.b.tobytes(), entry.scale))
        finally:
            if reader is not None:
                reader.close()
        return self._base.variant(merged, [])

    def original_weight(self, name: str, reader: Optional[TensorReader] = None) -> np.ndarray:
        """The unadapted weight `name` as float32 [out, in]: the FP32 model's own, else read again
        from the checkpoint through `reader` (for a GGUF file, its dequantized values: exactly
        what an INT4 load of its Q4_0/Q4_1 blocks holds), else the model's own values widened
        (BF16) or dequantized (INT8 / INT4 — a checkpoint written by ferrolm has no FP32
        original)."""
        base = self._base
        rows, k = base.adaptable_shape(name)
        precision = self._precision
        conv1d = base.checkpoint_layout(name) == "conv1d"
        if precision == "fp32":
            return _oriented(np.frombuffer(base.export_tensor(name), dtype=np.float32), conv1d, rows, k)
        if reader is not None:
            original = reader.read(name)
            if original is not None:
                return _oriented(original, conv1d, rows, k)
        # the model's own values, widened (BF16) or dequantized (INT8 / INT4), [rows, in]
        return np.frombuffer(base.weight_values(name), dtype=np.float32).reshape(rows, k)


def _oriented(w: np.ndarray, conv1d: bool, rows: int, k: int) -> np.ndarray:
    """[rows, in] from a float checkpoint/export array ([in, rows] for a GPT-2 Conv1D weight, as
    the core's tensor table lays it out)."""
    if conv1d:
        return np.ascontiguousarray(w.reshape(k, rows).T)
    return w.reshape(rows, k)
