"""Saving a loaded model as a Hugging Face-style folder: model.safetensors in the model's own
precision, config.json, the tokenizer and generation files. `ferrolm quantize` uses it.

Layout of the weights (what `ferrolm.load` reads back without converting anything):
- FP32 / BF16: a plain Hugging Face checkpoint (F32 / BF16 tensors under the usual names;
  config.json's torch_dtype says which), readable by any safetensors loader.
- INT8: every matmul weight `X.weight` is stored `[out, in]` as I8 (symmetric, in [-127, 127])
  with `X.weight_scale` `[out, ceil(in / group)]` F16 beside it (folders saved with F32 scales
  still load, their scales rounded to the nearest f16); norms, biases and learned
  positions stay F32. config.json gains
  `"quantization_config": {"quant_method": "ferrolm", "precision": "int8", "group_size": G,
  "scheme": "w8a16"}` ("w8a32" when G is not 32: those groups multiply an f32 x).
- INT4: every INT4 matmul weight `X.weight` is stored as U8 `[out, ceil(in / 32) · 16]` (two
  4-bit values per byte, GGUF Q4_1's order within each group of 32) with `X.weight_scale` and
  `X.weight_min` F16 `[out, ceil(in / 32)]` (value = q · scale + min); matrices an INT4 load
  keeps in INT8 (a GGUF file's Q8_0 embedding) are stored as INT8 above. config.json gains
  `"quantization_config": {"quant_method": "ferrolm", "precision": "int4", "group_size": 32,
  "scheme": "w4a16"}`.

The folder is written under a temporary name beside the target and renamed into place once
complete, so a failed or interrupted save leaves nothing half-written. An existing target is
never touched unless `overwrite=True`, and even then only if it is a model folder (it holds
config.json) or empty.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Optional, Union

from .errors import InvalidArgumentError
from .progress import ProgressFn

if TYPE_CHECKING:
    from .model import Model

#: Files of a Hugging Face folder copied unchanged (the tokenizer and generation settings).
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
)

_TORCH_DTYPE = {"fp32": "float32", "bf16": "bfloat16"}


def check_target(out: Path, overwrite: bool, sources: tuple = ()) -> None:
    """Refuses a target that exists (unless `overwrite` and it is a model folder or empty) or
    that is, holds, or lies inside a file being read."""
    resolved = out.resolve()
    for src in sources:
        src = Path(src).resolve()
        if resolved == src or src.is_relative_to(resolved) or resolved.is_relative_to(src):
            raise InvalidArgumentError(f"refusing to write {out}: it overlaps the input {src} (never in place)")
    if not out.exists() and not out.is_symlink():
        return
    if not overwrite:
        raise InvalidArgumentError(f"{out} already exists; choose a new path (or pass overwrite / --force to replace a model folder)")
    if out.is_symlink() or not out.is_dir() or not ((out / "config.json").is_file() or not any(out.iterdir())):
        raise InvalidArgumentError(f"refusing to replace {out}: it is not a model folder (no config.json) nor empty")


def _config(model: "Model") -> Dict[str, Any]:
    config = {k: v for k, v in model.config.items() if k not in ("quantization_config", "torch_dtype", "dtype")}
    if model.precision == "int8":
        config["quantization_config"] = {
            "quant_method": "ferrolm",
            "precision": "int8",
            "group_size": model._core.group_size,
            # how the CPU kernels multiply them: 16-bit x per group of 32, f32 x with other groups
            "scheme": "w8a16" if model._core.group_size == 32 else "w8a32",
        }
    elif model.precision == "int4":
        config["quantization_config"] = {
            "quant_method": "ferrolm",
            "precision": "int4",
            "group_size": 32,
            "scheme": "w4a16",
        }
    else:
        config["torch_dtype"] = _TORCH_DTYPE[model.precision]
    return config


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _side_files(model: "Model", folder: Path) -> None:
    """The tokenizer, chat template and generation settings: copied from a Hugging Face folder,
    or written from what a GGUF file held."""
    src = Path(model.path)
    if src.is_dir():
        for name in SIDE_FILES:
            if (src / name).is_file():
                shutil.copyfile(src / name, folder / name)
        return
    ckpt = model._checkpoint
    special = dict(ckpt.special_tokens) if ckpt is not None else {}
    if model.tokenizer is not None:
        model.tokenizer.save(folder / "tokenizer.json")
    tok_config: Dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", **special}
    if model.chat_template is not None:
        tok_config["chat_template"] = model.chat_template.source
    _write_json(folder / "tokenizer_config.json", tok_config)
    gen = dict(ckpt.generation_config) if ckpt is not None else {}
    if model.eos_token_ids:
        eos = list(model.eos_token_ids)
        gen["eos_token_id"] = eos[0] if len(eos) == 1 else eos
    _write_json(folder / "generation_config.json", gen)


def save_model(model: "Model", out: Union[str, os.PathLike], *, overwrite: bool = False,
               progress: Optional[ProgressFn] = None) -> Path:
    """Writes `model` (weights in its precision, config, tokenizer) to the folder `out`."""
    out = Path(out)
    active = model.active_adapter
    if active is not None and model.adapters.get(active) == "unmerged":
        raise InvalidArgumentError(
            f"adapter {active!r} is active unmerged, and a checkpoint holds plain weights: load it with merged=True "
            "(or set_adapter(None)) before saving"
        )
    check_target(out, overwrite, (model.path,))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        model._core.save_safetensors(str(tmp / "model.safetensors"), {"format": "pt"}, progress)
        _write_json(tmp / "config.json", _config(model))
        _side_files(model, tmp)
        if out.exists():
            old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
