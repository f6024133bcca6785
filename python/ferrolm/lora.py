"""LoRA adapters in Hugging Face PEFT format: adapter_config.json + adapter_model.safetensors.

A LoRA pair for a weight W [out, in] is A [r, in] and B [out, r]; the adapted weight is
W' = W + scale · B·A with scale = lora_alpha / r (lora_alpha / sqrt(r) with use_rslora). PEFT
stores A and B in that layout for nn.Linear and for GPT-2's Conv1D alike (fan_in_fan_out only
says that the base weight is stored [in, out]), under keys such as
`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.

Pickle-based adapter files (adapter_model.bin) are refused: loading them can run code.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

from ._numpy import np

from . import safetensors_io
from .errors import CheckpointError, ConfigError, InvalidArgumentError, ModelNotFoundError, TensorError
from .fields import MISSING, get_bool, get_int, get_mapping, get_number, get_str, get_str_list

_PREFIX = "base_model.model."
#: The largest LoRA rank accepted (far above any practical adapter; A and B must match it).
MAX_RANK = 1 << 16


@dataclass(frozen=True)
class LoraPair:
    """One adapted weight: W' = W + scale · B·A."""

    weight: str  # the base weight's checkpoint name, e.g. "model.layers.0.self_attn.q_proj.weight"
    a: np.ndarray  # [r, in] float32
    b: np.ndarray  # [out, r] float32

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


@dataclass(frozen=True)
class LoraAdapter:
    """A PEFT LoRA adapter read from disk (not yet applied to any model)."""

    path: Path
    r: int
    lora_alpha: float
    use_rslora: bool
    target_modules: Tuple[str, ...]
    pairs: Tuple[LoraPair, ...] = field(repr=False)

    @property
    def scale(self) -> float:
        return self.lora_alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    @property
    def num_params(self) -> int:
        """Trainable parameters: Σ r·(in + out) over the adapted weights."""
        return sum(p.a.size + p.b.size for p in self.pairs)


def _read_safetensors(path: Path) -> Dict[str, np.ndarray]:
    """Every tensor of a small safetensors file as float32 (BF16/F16/F64 widened); a tensor of
    another dtype raises TensorError."""
    out = {}
    for name, (dtype, values) in safetensors_io.read_floats(path).items():
        if values is None:
            raise TensorError(f"{path}: tensor {name} has unsupported dtype {dtype} (expected a float type)")
        out[name] = values
    return out


def adapter_config(folder: Path) -> dict:
    """The JSON object of a PEFT adapter folder's adapter_config.json."""
    path = folder / "adapter_config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise ModelNotFoundError(f"{folder} has no readable adapter_config.json: {e}") from None
    except (ValueError, RecursionError) as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    return cfg


def _weights_file(folder: Path) -> Path:
    st = folder / "adapter_model.safetensors"
    if st.is_file():
        return st
    if (folder / "adapter_model.bin").exists() or any(folder.glob("*.bin")) or any(folder.glob("*.pt")):
        raise CheckpointError(
            f"{folder} holds only a pickle-based adapter (adapter_model.bin); ferrolm reads safetensors only, "
            "since unpickling can run arbitrary code. Save the adapter with safe_serialization=True."
        )
    raise ModelNotFoundError(f"{folder} has no adapter_model.safetensors")


def read_lora(path: Union[str, os.PathLike]) -> LoraAdapter:
    """Reads and checks a PEFT LoRA adapter folder (it is not matched to a model here)."""
    folder = Path(path)
    if not folder.is_dir():
        raise ModelNotFoundError(f"LoRA adapter folder {folder} does not exist")
    cfg = adapter_config(folder)
    where = str(folder / "adapter_config.json")
    kind = get_str(cfg, "peft_type", "LORA", where)
    if kind != "LORA":
        raise ConfigError(f"{folder} is a {kind} adapter, not LoRA")
    r = get_int(cfg, "r", MISSING, where, low=1, high=MAX_RANK)
    alpha = get_number(cfg, "lora_alpha", r, where)
    use_rslora = get_bool(cfg, "use_rslora", False, where)
    get_bool(cfg, "fan_in_fan_out", False, where)  # the layout of A and B is the same either way
    bias = get_str(cfg, "bias", "none", where)
    if bias != "none":
        raise ConfigError(f"{folder}: LoRA bias={bias!r} is not supported (only 'none')")
    if get_bool(cfg, "use_dora", False, where):
        raise ConfigError(f"{folder}: use_dora is not supported")
    for key in ("rank_pattern", "alpha_pattern"):
        if get_mapping(cfg, key, where):
            raise ConfigError(f"{folder}: {key} is not supported")
    targets = get_str_list(cfg, "target_modules", where)
    tensors = _read_safetensors(_weights_file(folder))
    pairs: Dict[str, Dict[str, np.ndarray]] = {}
    for key, arr in tensors.items():
        name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in name and name.endswith(".weight"):
                module = name[: name.index(marker)]
                pairs.setdefault(module, {})[part] = arr
                break
        else:
            raise TensorError(f"{folder}: unexpected adapter tensor {key!r} (only lora_A / lora_B weights are supported)")
    out: List[LoraPair] = []
    for module, ab in sorted(pairs.items()):
        if set(ab) != {"lora_A", "lora_B"}:
            raise TensorError(f"{folder}: module {module} has {sorted(ab)} but needs lora_A and lora_B")
        a, b = ab["lora_A"], ab["lora_B"]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != r or b.shape[1] != r:
            raise TensorError(
                f"{folder}: module {module}: lora_A {list(a.shape)} and lora_B {list(b.shape)} do not have rank r={r}"
            )
        out.append(LoraPair(f"{module}.weight", a, b))
    if not out:
        raise TensorError(f"{folder}: the adapter holds no LoRA weights")
    return LoraAdapter(folder, r, alpha, use_rslora, targets, tuple(out))


def check_name(name: object, taken: object, what: str) -> str:
    """A new adapter's name: a non-empty string not yet in `taken`."""
    if not isinstance(name, str) or not name:
        raise InvalidArgumentError(f"{what} name must be a non-empty string, got {name!r}")
    if name in taken:  # type: ignore[operator]
        raise InvalidArgumentError(f"a {what} named {name!r} is already loaded (remove it first)")
    return name


@dataclass(frozen=True)
class LoraStats:
    """Trainable (LoRA) parameters against the weights they adapt and the whole model."""

    adapted_weights: int
    rank: int
    lora_params: int
    adapted_params: int
    model_params: Optional[int]

    @property
    def reduction(self) -> float:
        """Fraction of the adapted weights' parameters that LoRA does not train (0.86 = 86% fewer)."""
        return 1.0 - self.lora_params / self.adapted_params if self.adapted_params else 0.0

    def format(self) -> str:
        lines = [
            f"adapted weights      {self.adapted_weights} (rank {self.rank})",
            f"trainable (LoRA)     {self.lora_params:,}",
            f"adapted (full)       {self.adapted_params:,}  -> {100 * self.reduction:.1f}% fewer trained",
        ]
        if self.model_params:
            lines.append(f"of the whole model   {100 * self.lora_params / self.model_params:.3f}% ({self.model_params:,} params)")
        return "\n".join(lines)


def lora_stats(adapter: Union[LoraAdapter, str, os.PathLike, None] = None, *, shapes: Iterable[Tuple[int, int]] = (),
               r: Optional[int] = None, model_params: Optional[int] = None) -> LoraStats:
    """Parameter counts of an adapter (a folder or a read adapter), or of LoRA at rank `r` on
    weights of the given [out, in] `shapes` (the notes' example: shapes=[(512, 64)], r=8 trains
    4,608 parameters instead of 32,768: 86% fewer)."""
    if adapter is not None:
        ad = adapter if isinstance(adapter, LoraAdapter) else read_lora(adapter)
        lora = ad.num_params
        full = sum(p.b.shape[0] * p.a.shape[1] for p in ad.pairs)
        return LoraStats(len(ad.pairs), ad.r, lora, full, model_params)
    shapes = [tuple(int(d) for d in s) for s in shapes]
    if not shapes or r is None or not isinstance(r, int) or r <= 0 or any(len(s) != 2 or min(s) <= 0 for s in shapes):
        raise InvalidArgumentError("lora_stats needs an adapter, or weight shapes [(out, in), ...] and a rank r >= 1")
    lora = sum(r * (o + i) for o, i in shapes)
    full = sum(o * i for o, i in shapes)
    return LoraStats(len(shapes), r, lora, full, model_params)
