"""Reading checkpoints: a Hugging Face folder (config.json, safetensors, tokenizer.json,
generation_config.json). Files are only read, never written."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from . import _core
from .errors import CheckpointError, ConfigError, InvalidArgumentError, ModelNotFoundError
from .chat import ChatTemplate, special_tokens_from_config, template_from_config
from .tokenizer import Tokenizer

PRECISIONS = ("fp32",)
DEVICES = ("cpu",)


@dataclass
class Checkpoint:
    """What a model folder holds, before the weights are read."""

    path: Path
    config: Dict[str, Any]
    weight_files: List[Path]
    tokenizer: Optional[Tokenizer]
    generation_config: Dict[str, Any] = field(default_factory=dict)
    chat_template: Optional[ChatTemplate] = None
    special_tokens: Dict[str, str] = field(default_factory=dict)
    format: str = "hf"


def _read_json(path: Path, what: str, error=CheckpointError) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{what} {path} is not valid JSON: {e}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read {what} {path}: {e}") from None


def _weight_files(folder: Path) -> List[Path]:
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        data = _read_json(index, "weight index")
        weight_map = data.get("weight_map") if isinstance(data, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index} has no 'weight_map'")
        files = []
        for name in dict.fromkeys(weight_map.values()):
            if not isinstance(name, str) or os.path.isabs(name) or ".." in Path(name).parts:
                raise CheckpointError(f"{index} names an invalid shard {name!r}")
            shard = folder / name
            if not shard.is_file():
                raise ModelNotFoundError(f"shard {name} listed in {index.name} is missing from {folder}")
            files.append(shard)
        return files
    others = sorted(folder.glob("*.safetensors"))
    if others:
        return others
    if any(folder.glob("*.bin")) or any(folder.glob("*.pt")) or any(folder.glob("*.pth")):
        raise CheckpointError(
            f"{folder} holds only pickle-based weights (.bin/.pt); ferrolm reads safetensors only, "
            "since unpickling can run arbitrary code. Convert the checkpoint to safetensors first."
        )
    raise ModelNotFoundError(f"no model.safetensors (or sharded index) in {folder}")


def read_checkpoint(path: os.PathLike | str) -> Checkpoint:
    folder = Path(path)
    if not folder.exists():
        raise ModelNotFoundError(f"model path {folder} does not exist")
    if folder.is_file():
        if folder.suffix == ".gguf":
            raise CheckpointError(f"{folder}: GGUF files are not supported yet; use a Hugging Face folder")
        raise CheckpointError(f"{folder} is a file; expected a Hugging Face model folder with config.json")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise ModelNotFoundError(f"{folder} has no config.json")
    config = _read_json(config_path, "config", ConfigError)
    if not isinstance(config, dict):
        raise ConfigError(f"{config_path} must hold a JSON object")
    weights = _weight_files(folder)
    tok_path = folder / "tokenizer.json"
    tokenizer = Tokenizer.from_file(tok_path) if tok_path.is_file() else None
    gen = _optional_json_object(folder / "generation_config.json", "generation config")
    tok_config = _optional_json_object(folder / "tokenizer_config.json", "tokenizer config")
    jinja_path = folder / "chat_template.jinja"
    jinja_text = jinja_path.read_text(encoding="utf-8") if jinja_path.is_file() else None
    special = special_tokens_from_config(tok_config)
    source = template_from_config(tok_config, jinja_text)
    template = ChatTemplate(source, special) if source else None
    return Checkpoint(folder, config, weights, tokenizer, gen, template, special)


def _optional_json_object(path: Path, what: str) -> Dict[str, Any]:
    if not path.is_file():
        return {}
    data = _read_json(path, what)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data


def check_load_args(precision: str, device: str, threads: Optional[int]) -> int:
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device not in DEVICES:
        raise InvalidArgumentError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    if threads is None:
        return _core.default_threads()
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 1024:
        raise InvalidArgumentError(f"threads must be an integer in [1, 1024] or None, got {threads!r}")
    return threads


def build_core_model(ckpt: Checkpoint, threads: int) -> "_core.Model":
    builder = _core.ModelBuilder(json.dumps(ckpt.config))
    for f in ckpt.weight_files:
        builder.add_safetensors(str(f))
    return builder.build(threads)


def eos_token_ids(ckpt: Checkpoint) -> Tuple[int, ...]:
    """EOS ids from generation_config.json, else config.json, else the tokenizer's usual names."""
    for source in (ckpt.generation_config, ckpt.config):
        eos = source.get("eos_token_id")
        if isinstance(eos, int) and not isinstance(eos, bool):
            return (eos,)
        if isinstance(eos, list) and all(isinstance(i, int) for i in eos):
            return tuple(eos)
    if ckpt.tokenizer is not None:
        for name in ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>"):
            tid = ckpt.tokenizer.token_to_id(name)
            if tid is not None:
                return (tid,)
    return ()
