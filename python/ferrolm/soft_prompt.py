"""Soft prompts (prompt tuning) in Hugging Face PEFT format: adapter_config.json
(peft_type PROMPT_TUNING, num_virtual_tokens, token_dim) + adapter_model.safetensors with
`prompt_embeddings` [num_virtual_tokens, hidden]. The virtual-token embeddings are fed before the
prompt's token embeddings and take positions 0..n-1, the prompt's tokens n.. (as PEFT runs
them); they are not tokens, so penalties and the returned token lists never include them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Union

from ._numpy import np

from .errors import ConfigError, ModelNotFoundError, TensorError
from .fields import get_int, get_str
from .lora import _read_safetensors, _weights_file, adapter_config


@dataclass(frozen=True)
class SoftPrompt:
    path: Path
    embeddings: np.ndarray = field(repr=False)  # [num_virtual_tokens, hidden] float32

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.embeddings.shape[0])


def read_soft_prompt(path: Union[str, os.PathLike]) -> SoftPrompt:
    folder = Path(path)
    if not folder.is_dir():
        raise ModelNotFoundError(f"soft prompt folder {folder} does not exist")
    cfg = adapter_config(folder)
    where = str(folder / "adapter_config.json")
    kind = get_str(cfg, "peft_type", "", where)
    if kind != "PROMPT_TUNING":
        raise ConfigError(f"{folder} is not a prompt-tuning adapter (peft_type {kind!r})")
    n = get_int(cfg, "num_virtual_tokens", None, where, low=1)
    submodules = get_int(cfg, "num_transformer_submodules", 1, where, low=1, high=8)
    token_dim = get_int(cfg, "token_dim", None, where, low=1)
    tensors = _read_safetensors(_weights_file(folder))
    if set(tensors) != {"prompt_embeddings"}:
        raise TensorError(f"{folder}: expected one tensor 'prompt_embeddings', found {sorted(tensors)}")
    emb = tensors["prompt_embeddings"]
    if emb.ndim != 2 or emb.shape[0] == 0 or (n is not None and n * submodules != emb.shape[0]):
        raise TensorError(f"{folder}: prompt_embeddings {list(emb.shape)} does not hold num_virtual_tokens={n!r} rows")
    if token_dim is not None and emb.shape[1] != token_dim:
        raise TensorError(f"{folder}: prompt_embeddings {list(emb.shape)} does not have token_dim={token_dim} columns")
    if not np.isfinite(emb).all():
        raise TensorError(f"{folder}: prompt_embeddings holds non-finite values")
    return SoftPrompt(folder, np.ascontiguousarray(emb, dtype=np.float32))
