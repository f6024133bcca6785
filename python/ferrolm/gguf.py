"""Reading GGUF files (llama.cpp's checkpoint format) of the LLaMA architecture.

    g = read_gguf("model.gguf")           # metadata, config, tokenizer; no tensor data read yet
    precision, why = g.nearest_precision() # "int4" for a Q4_0/Q4_1 file, and the reason
    builder = _core.ModelBuilder(json.dumps(g.config), precision)
    g.add_tensors(builder, precision=precision)  # one tensor at a time
    core = builder.build(threads)

The container (header, metadata, tensor headers) is read by `_Reader`, straight from the
memory-mapped file: `gguf.GGUFReader` keeps a numpy view per metadata element, 3.8 KB per
vocabulary token (158 MiB for a 49,152-token vocabulary), where `_Reader` keeps the decoded values.

`GgufModel.config` is a Hugging Face config.json dict (what rust/model/config.rs reads) and the
tensors are added under Hugging Face names, so the core needs nothing GGUF-specific. Which GGUF
tensor is which Hugging Face one, and which tensors a file must hold, comes from the core's LLaMA
tensor table (`_core.tensor_table("llama")`, rust/model/llama.rs); metadata keys are the `gguf`
package's own (`gguf.Keys`). Q8_0, Q4_0 and Q4_1 matrices go to the core as their raw blocks
(kept exactly where the load precision holds them: Q8_0 as INT8, Q4_0/Q4_1 as INT4; see
`NEAREST_PRECISION`); other quantized tensors (Q5_0, Q5_1, Q2_K..Q6_K) and F16/BF16 are
dequantized to float32 with the `gguf` package (`pip install gguf`); the file is memory-mapped
and only read.

llama.cpp's converter reorders the rows of q_proj/k_proj (HF's rotate-half RoPE layout to its
interleaved one); `add_tensors` undoes that, so the weights are exactly those transformers gets
from the same file (`from_pretrained(..., gguf_file=...)`). The tokenizer is rebuilt from the
`tokenizer.ggml.*` metadata the way transformers does it; only byte-level BPE vocabularies
(`tokenizer.ggml.model == "gpt2"`) are supported.
"""

from __future__ import annotations

import importlib.util
import json
import math
import mmap
import os
import struct
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from ._numpy import np

from . import _core
from .errors import CheckpointError, ConfigError, MissingTensorError, ModelNotFoundError, TensorError
from .tokenizer import Tokenizer
from .tokenizer import shared as shared_tokenizer

__all__ = ["GgufModel", "read_gguf", "SUPPORTED_TENSOR_TYPES", "NEAREST_PRECISION", "is_gguf_file"]

ProgressFn = Callable[[int, int, str], None]

GGUF_MAGIC = b"GGUF"

# GGML types add_tensors can turn into float32 (through gguf.quants.dequantize).
SUPPORTED_TENSOR_TYPES = (
    "F32", "F16", "BF16",
    "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
    "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
)  # fmt: skip

# The ferrolm precision nearest to each GGML type: the narrowest that holds its values well.
# Exact: F32 (fp32; F16 too: bf16 would drop 3 mantissa bits), BF16 (bf16), Q8_0 (int8: its
# values and scales are copied), Q4_0 and Q4_1 (int4: nibbles and scales copied). Close: Q4_K
# (int4 requantized in groups of 32 — its 32-value sub-blocks are 16 evenly spaced levels, which
# a group's own min/max grid holds to within the f16 rounding of scale and minimum), Q2_K and
# Q3_K (int4: 4 or 8 levels on a 16-level grid); Q5_0, Q5_1, Q5_K, Q6_K have 32 or 64 levels,
# which 4 bits cannot hold: int8 (requantized in groups of 32, error below 1/2 of 1/127 of a
# group's largest value).
NEAREST_PRECISION = {
    "F32": "fp32", "F16": "fp32", "BF16": "bf16", "Q8_0": "int8",
    "Q5_0": "int8", "Q5_1": "int8", "Q5_K": "int8", "Q6_K": "int8",
    "Q4_0": "int4", "Q4_1": "int4", "Q4_K": "int4", "Q3_K": "int4", "Q2_K": "int4",
}  # fmt: skip

# GGML types whose blocks the core reads itself (`ModelBuilder.add_blocks`).
_RAW_BLOCK_TYPES = ("Q8_0", "Q4_0", "Q4_1")
# GGML types whose values the core reads itself (`ModelBuilder.add_tensor`); the others are
# dequantized by the gguf package.
_DIRECT_TYPES = ("F32", "F16", "BF16")

_BITS = {"int4": 4, "int8": 8, "bf16": 16, "fp32": 32}
# The types each precision holds exactly (the others of NEAREST_PRECISION closely).
EXACT_TYPES = {"fp32": ("F32", "F16"), "bf16": ("BF16",), "int8": ("Q8_0",), "int4": ("Q4_0", "Q4_1")}

# Metadata arrays longer than this stay out of `GgufModel.metadata` (the vocabulary, merges...).
_MAX_METADATA_ARRAY = 64

# The one architecture read here; its tensors are the rows of the core's table of the same name.
_ARCH = "llama"

# Pre-tokenizer split regexes by `tokenizer.ggml.pre`, as transformers' GGUF loader
# (integrations/gguf/gguf_tokenizer_mapping.py) has them. Any other value (e.g. "gpt-2",
# "smollm", "default") keeps the GPT-2 ByteLevel regex, as transformers does.
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_GPT4O_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
_QWEN35_SPLIT = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
_PRE_TOKENIZER_SPLITS = {
    **dict.fromkeys(
        ["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
         "jina-v5-nano", "dbrx", "smaug-bpe"],
        _LLAMA3_SPLIT,
    ),
    "tekken": _TEKKEN_SPLIT,
    **dict.fromkeys(["qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez"], _QWEN2_SPLIT),
    "qwen35": _QWEN35_SPLIT,
    **dict.fromkeys(["gpt-4o", "llama4", "kanana2", "talkie", "minimax-m2"], _GPT4O_SPLIT),
}  # fmt: skip


def _gguf():
    """The whole `gguf` package (numpy included): only to dequantize the tensor types the core
    does not read itself."""
    try:
        import gguf  # noqa: F401
        import gguf.quants  # noqa: F401
    except ImportError:
        raise CheckpointError("reading GGUF files needs the 'gguf' package: pip install gguf") from None
    return gguf


def _constants():
    """`gguf.constants` (Keys, GGUFValueType, GGMLQuantizationType, GGML_QUANT_SIZES,
    TokenType), without running the package's `__init__`, which imports numpy and its reader
    and writer (about 20 MiB resident that loading a Q4/Q8/F32 file never uses). The module is
    registered under its own name, so a later `import gguf` uses this same module."""
    if "gguf" in sys.modules:  # imported already (or marked missing)
        return _gguf().constants
    mod = sys.modules.get("gguf.constants")
    if mod is not None:
        return mod
    spec = importlib.util.find_spec("gguf")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / "constants.py"
        if path.is_file():
            cspec = importlib.util.spec_from_file_location("gguf.constants", path)
            if cspec is not None and cspec.loader is not None:
                mod = importlib.util.module_from_spec(cspec)
                sys.modules["gguf.constants"] = mod
                try:
                    cspec.loader.exec_module(mod)
                except BaseException:
                    del sys.modules["gguf.constants"]
                    raise
                return mod
    return _gguf().constants


TableRow = Dict[str, Optional[str]]


def _table_rows() -> List[TableRow]:
    """The rows of the core's LLaMA tensor table (name, role, part, layout, when, gguf)."""
    return _core.tensor_table(_ARCH)


def _layer_of(template: str, name: str) -> Optional[int]:
    """The layer index when `name` is `template` with "{i}" replaced by a decimal number."""
    before, mark, after = template.partition("{i}")
    if not mark or len(name) <= len(before) + len(after) or not (name.startswith(before) and name.endswith(after)):
        return None
    digits = name[len(before):len(name) - len(after)]
    return int(digits) if digits.isascii() and digits.isdigit() else None


def table_row(rows: List[TableRow], gguf_name: str) -> Tuple[Optional[TableRow], Optional[int]]:
    """The table row of GGUF tensor `gguf_name` and its layer (None for a global tensor), or
    (None, None) when the architecture has no such tensor."""
    for row in rows:
        template = row["gguf"]
        if template == gguf_name:
            return row, None
        layer = _layer_of(template, gguf_name) if template else None
        if layer is not None:
            return row, layer
    return None, None


def hf_name(row: TableRow, layer: Optional[int]) -> str:
    """The Hugging Face name of a table row (in layer `layer` for a layer tensor)."""
    return row["name"].replace("{i}", str(layer)) if layer is not None else row["name"]


def _required(row: TableRow, cfg: Dict[str, Any]) -> bool:
    """Whether a file of config `cfg` must hold the tensor of `row` (its "when" column)."""
    when = row["when"]
    if when == "always":
        return True
    if when in ("qkv_bias", "o_bias"):  # GGUF files set attention_bias: q, k, v and o together
        return bool(cfg["attention_bias"])
    if when == "mlp_bias":
        return bool(cfg["mlp_bias"])
    if when == "untied":
        return not cfg["tie_word_embeddings"]
    raise CheckpointError(f"the core's tensor table has an unknown condition {when!r}")


def is_gguf_file(path: os.PathLike | str) -> bool:
    """True when `path` is a file that starts with the GGUF magic (or is named *.gguf)."""
    p = Path(path)
    if not p.is_file():
        return False
    if p.suffix.lower() == ".gguf":
        return True
    try:
        with open(p, "rb") as f:
            return f.read(4) == GGUF_MAGIC
    except OSError:
        return False


# -- metadata --------------------------------------------------------------------------------------


def _field_value(f, path: Path) -> Any:
    """A metadata field as a Python value (str, int, float, bool or list)."""
    try:
        return f.contents()
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: metadata key {f.name!r} holds invalid UTF-8: {e}") from None


def _field_value_at(f, index: int, path: Path) -> Any:
    try:
        return f.contents(index)
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: metadata key {f.name!r} holds invalid UTF-8: {e}") from None


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's byte -> printable character table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


@dataclass
class _TensorInfo:
    gguf_name: str
    hf_name: str
    type_name: str
    shape: Tuple[int, ...]  # numpy / HF order: [out, in]
    index: int  # in reader.tensors
    heads: int = 0  # > 0: undo llama.cpp's RoPE row permutation with this many heads


@dataclass
class GgufModel:
    """What a GGUF file holds, before its tensors are read.

    config:          Hugging Face config.json dict for `_core.ModelBuilder`
    metadata:        the file's scalar / string metadata (and short arrays), keyed as in the file
    tensor_types:    {GGML type name: number of tensors}, e.g. {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    tokenizer:       a ferrolm Tokenizer rebuilt from tokenizer.ggml.* (None if the file has none)
    chat_template:   the Jinja chat template (tokenizer.chat_template) or None
    eos_token_ids:   tokenizer.ggml.eos_token_id, then eot/eom ids when the file gives other ones
    bos_token_id:    tokenizer.ggml.bos_token_id or None
    generation_config: a generation_config.json-like dict (bos/eos/pad ids) for GenerationConfig.from_hf
    special_tokens:  {"bos_token": "<|im_start|>", "eos_token": ..., "unk_token": ..., "pad_token": ...}
                     as strings, for the chat template (what transformers puts in tokenizer_config)
    """

    path: Path
    architecture: str
    config: Dict[str, Any]
    metadata: Dict[str, Any]
    tensor_types: Dict[str, int]
    tokenizer: Optional[Tokenizer]
    chat_template: Optional[str]
    eos_token_ids: Tuple[int, ...]
    bos_token_id: Optional[int]
    generation_config: Dict[str, Any] = field(default_factory=dict)
    special_tokens: Dict[str, str] = field(default_factory=dict)
    _reader: Any = field(default=None, repr=False)
    _tensors: List[_TensorInfo] = field(default_factory=list, repr=False)

    def __repr__(self) -> str:
        types = ", ".join(f"{k}: {v}" for k, v in self.tensor_types.items())
        return (
            f"GgufModel(path={str(self.path)!r}, architecture={self.architecture!r}, "
            f"layers={self.config.get('num_hidden_layers')}, hidden={self.config.get('hidden_size')}, "
            f"vocab={self.config.get('vocab_size')}, tensors={len(self._tensors)} ({types}))"
        )

    @property
    def tensor_names(self) -> List[str]:
        """Hugging Face names of the tensors add_tensors will add, in file order."""
        return [t.hf_name for t in self._tensors]

    def num_params(self) -> int:
        """Parameters stored in the file (from tensor shapes; no data is read)."""
        return sum(math.prod(t.shape) for t in self._tensors)

    def matrices(self) -> List[Tuple[str, Tuple[int, ...], str]]:
        """(Hugging Face name, [out, in], GGML type) of every matmul weight (the 2-D tensors)."""
        return [(t.hf_name, t.shape, t.type_name) for t in self._tensors if len(t.shape) == 2]

    def nearest_precision(self) -> Tuple[str, str]:
        """The precision to load this file in when none is asked for, and why: the nearest
        precision (`NEAREST_PRECISION`) of the GGML types that hold most of the matmul
        parameters (under INT4, 8-bit and 5/6-bit matrices stay INT8: `tensor_precision`)."""
        by_precision: Dict[str, Dict[str, int]] = {}
        for _, shape, tname in self.matrices():
            near = by_precision.setdefault(NEAREST_PRECISION.get(tname, "fp32"), {})
            near[tname] = near.get(tname, 0) + math.prod(shape)
        if not by_precision:
            return "fp32", "the file holds no matrices"
        total = sum(sum(t.values()) for t in by_precision.values())
        precision = max(by_precision, key=lambda p: sum(by_precision[p].values()))
        types = by_precision[precision]
        share = 100 * sum(types.values()) / total
        how = "exactly" if all(t in EXACT_TYPES[precision] for t in types) else "closely"
        why = f"{share:.0f}% of the matmul parameters are {'/'.join(sorted(types))}, which {precision} holds {how}"
        kept = sorted({self.tensor_precision(t, precision) for _, _, t in self.matrices()} - {precision})
        if kept:
            why += f" (the other matrices: {', '.join(k.upper() for k in kept)})"
        return precision, why

    @staticmethod
    def tensor_precision(type_name: str, precision: str) -> str:
        """The precision a matrix of GGML type `type_name` is stored in under a load in
        `precision`: the load's own, or the type's nearest precision when that is wider (an
        INT4 load keeps Q8_0/Q5/Q6 matrices in INT8)."""
        nearest = NEAREST_PRECISION.get(type_name, "fp32")
        if precision == "int4" and _BITS[nearest] == 8:
            return "int8"
        return precision

    def iter_tensors(self) -> Iterator[Tuple[str, np.ndarray]]:
        """(Hugging Face name, float32 array [out, in]) one at a time, in file order. Each array
        is a fresh copy; drop it before asking for the next to keep memory low."""
        self._check_open()
        for info in self._tensors:
            arr = self._load(info)
            if not arr.flags.owndata:
                arr = arr.copy()  # F32 tensors come back as views of the mapped file
            self._release(info)
            yield info.hf_name, arr

    def add_tensors(self, builder: Any, progress: Optional[ProgressFn] = None, precision: Optional[str] = None) -> None:
        """Adds every tensor to `builder` (a `_core.ModelBuilder` loading in `precision`)
        under its Hugging Face name: Q8_0, Q4_0 and Q4_1 matrices as their raw blocks
        (`add_blocks`: kept exactly when the builder's precision holds them), everything else
        dequantized to float32 (`add_tensor`; under INT4, Q5/Q6 matrices are made INT8, see
        `tensor_precision`). Calls `progress(done, total, hf_name)` after each tensor. Only one
        tensor's float32 copy is alive at a time."""
        self._check_open()
        total = len(self._tensors)
        for done, info in enumerate(self._tensors, 1):
            if info.type_name in _RAW_BLOCK_TYPES and len(info.shape) == 2:
                raw = self._raw_rows(info)
                self._release(info)
                builder.add_blocks(info.hf_name, info.type_name, list(info.shape), raw)
                del raw
            else:
                if info.type_name in _DIRECT_TYPES and len(info.shape) <= 2:
                    # values the core converts itself (F16/BF16 widen exactly to f32)
                    dtype, data = info.type_name, self._raw_rows(info)
                else:
                    arr = self._load(info)
                    dtype, data = "F32", arr.tobytes()
                    del arr
                self._release(info)
                # a matrix whose type needs more bits than the load's precision keeps its nearest one
                wider = precision is not None and len(info.shape) == 2 and self.tensor_precision(info.type_name, precision) != precision
                builder.add_tensor(info.hf_name, dtype, list(info.shape), data, self.tensor_precision(info.type_name, precision) if wider else None)
                del data
            if progress is not None:
                progress(done, total, info.hf_name)

    def close(self) -> None:
        """Unmaps the file (the metadata, config and tokenizer stay usable)."""
        self._reader = None

    # -- internals ---------------------------------------------------------------------------
    def _check_open(self) -> None:
        if self._reader is None:
            raise CheckpointError(f"{self.path}: this GgufModel was closed")

    def _release(self, info: _TensorInfo) -> None:
        _release_pages(self._reader, self._reader.tensors[info.index])

    def _raw_rows(self, info: _TensorInfo) -> bytes:
        """The bytes of a tensor (raw blocks, or F32/F16/BF16 values), rows in HF order (the
        elements of a 1-D one; a row permutation moves whole rows of blocks, so it is exact)."""
        data = self._reader.tensors[info.index].data
        if not info.heads:
            return bytes(data)
        n = len(data) // info.shape[0]
        return b"".join(data[r * n:(r + 1) * n] for r in _rope_row_order(info.shape[0], info.heads))

    def _load(self, info: _TensorInfo) -> np.ndarray:
        """The tensor as float32 [out, in] in HF row order (possibly a view of the mapped file)."""
        gguf = _gguf()
        t = self._reader.tensors[info.index]
        try:
            arr = gguf.quants.dequantize(t.rows(), t.tensor_type)
        except (NotImplementedError, ValueError, IndexError, TypeError) as e:
            raise TensorError(
                f"{self.path}: cannot dequantize tensor {info.gguf_name} of type {info.type_name}: {e}"
            ) from None
        if tuple(arr.shape) != info.shape:
            raise TensorError(
                f"{self.path}: tensor {info.gguf_name} ({info.type_name}) dequantized to shape "
                f"{list(arr.shape)}, expected {list(info.shape)}"
            )
        if info.heads:
            arr = _unpermute_rope_rows(arr, info.heads)
        return np.ascontiguousarray(arr, dtype=np.float32)


def _rope_row_order(rows: int, n_head: int) -> List[int]:
    """Source row of each HF row: the inverse of llama.cpp convert_hf_to_gguf's `permute`,
    w.reshape(n_head, 2, rows // n_head // 2, *rest).swapaxes(1, 2).reshape(w.shape), which
    interleaves the two halves of each head's rows: HF row (h, j, i) is file row (h, i, j)."""
    half = rows // n_head // 2
    return [h * 2 * half + i * 2 + j for h in range(n_head) for j in range(2) for i in range(half)]


def _unpermute_rope_rows(w: Any, n_head: int) -> Any:
    """`_rope_row_order` applied to the rows of an array."""
    return w[_rope_row_order(w.shape[0], n_head)]


def _release_pages(reader: Any, t: Any) -> None:
    """Drops the mapped file pages of a tensor already converted (best effort; read-only map)."""
    _release_range(reader, int(t.data_offset), int(t.data_offset) + int(t.n_bytes))


def _release_range(reader: Any, begin: int, stop: int) -> None:
    """Drops the mapped file pages wholly inside bytes [begin, stop) of the file (best effort)."""
    mm = getattr(reader, "mm", None)
    if mm is None or not hasattr(mm, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    page = mmap.PAGESIZE
    start = -(-begin // page) * page
    end = stop // page * page
    if end > start:
        try:
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)
        except (OSError, ValueError):
            pass


# -- reading ---------------------------------------------------------------------------------------


def _check_file(path: Path) -> None:
    if not path.exists():
        raise ModelNotFoundError(f"GGUF file {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path} is not a file; expected a .gguf file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"cannot read GGUF file {path}: {e}") from None
    if head != GGUF_MAGIC:
        raise CheckpointError(f"{path} is not a GGUF file (it does not start with the GGUF magic bytes)")


class _Field:
    """One metadata value, as the gguf package's ReaderField shows it to this module: `types`
    (the value type, then the element type of an array), `data` (one entry per element) and
    `contents()` (the Python value; strings decoded on demand, so a bad one raises
    UnicodeDecodeError only when read)."""

    __slots__ = ("name", "types", "_value")

    def __init__(self, name: str, types: list, value: Any) -> None:
        self.name, self.types, self._value = name, types, value

    @property
    def data(self) -> Sequence[Any]:
        return self._value if isinstance(self._value, list) else [0]

    def contents(self, index: Optional[int] = None) -> Any:
        v = self._value
        if index is not None:
            v = v[index]
            return v.decode("utf-8") if isinstance(v, bytes) else v
        if isinstance(v, bytes):
            return v.decode("utf-8")
        if isinstance(v, list):
            return [x.decode("utf-8") if isinstance(x, bytes) else x for x in v]
        return v


@dataclass
class _Tensor:
    """A tensor's header and its bytes in the mapped file."""

    name: str
    tensor_type: Any  # gguf.GGMLQuantizationType
    shape: Tuple[int, ...]  # dimensions as stored (innermost first)
    data: memoryview  # the tensor's bytes
    data_offset: int
    n_bytes: int

    def rows(self) -> Any:
        """The bytes as a numpy uint8 array [..., bytes per row] (what `gguf.quants.dequantize`
        reads for every type)."""
        outer = [int(d) for d in reversed(self.shape[1:])]
        return np.frombuffer(self.data, dtype=np.uint8).reshape(*outer, -1)


class _Reader:
    """The GGUF container (header, metadata, tensor headers) read straight from the memory-mapped
    file. It replaces `gguf.GGUFReader` here because that one keeps a numpy view per metadata
    element — about 3.8 KB per vocabulary token, 158 MiB of peak memory for the default model's
    49,152 tokens (more than the model's INT4 weights) — where this one keeps the decoded
    values (a Python string per token), and it needs no numpy (`mmap` and `struct`). The layout
    (GGUF v2/v3, little-endian) is the gguf package's: value types are `gguf.GGUFValueType`,
    tensor types `gguf.GGMLQuantizationType` with sizes from `gguf.GGML_QUANT_SIZES` (passed in
    as `gguf.constants`)."""

    _SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}

    def __init__(self, gguf: Any, path: Path) -> None:
        self.byte_order = "I"
        with open(path, "rb") as f:
            self.mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        buf = memoryview(self.mm)
        self._buf, self._gguf, self._offs = buf, gguf, 0
        if bytes(self._take(4)) != GGUF_MAGIC:
            raise ValueError("GGUF magic invalid")
        version = self._scalar("<I")
        if version & 0xFFFF == 0:
            self.byte_order = "S"
            return
        if version not in (2, 3):
            raise ValueError(f"file appears to be GGUF version {version}, which cannot be read")
        n_tensors, n_kv = self._scalar("<Q"), self._scalar("<Q")
        V = gguf.GGUFValueType
        self.fields: Dict[str, _Field] = {
            "GGUF.version": _Field("GGUF.version", [V.UINT32], version),
            "GGUF.tensor_count": _Field("GGUF.tensor_count", [V.UINT64], n_tensors),
            "GGUF.kv_count": _Field("GGUF.kv_count", [V.UINT64], n_kv),
        }
        for _ in range(n_kv):
            key = self._string().decode("utf-8")
            vtype = V(self._scalar("<I"))
            if vtype == V.ARRAY:
                etype = V(self._scalar("<I"))
                self.fields[key] = _Field(key, [vtype, etype], self._array(etype, self._scalar("<Q")))
            else:
                self.fields[key] = _Field(key, [vtype], self._value(vtype))
        headers = []
        for _ in range(n_tensors):
            name = self._string().decode("utf-8")
            n_dims = self._scalar("<I")
            if n_dims > 8:
                raise ValueError(f"tensor {name} has {n_dims} dimensions")
            dims = struct.unpack(f"<{n_dims}Q", self._take(8 * n_dims))
            qtype = gguf.GGMLQuantizationType(self._scalar("<I"))
            headers.append((name, dims, qtype, self._scalar("<Q")))
        align = self.fields.get("general.alignment")
        alignment = int(align.contents()) if align is not None else 32
        if alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"general.alignment {alignment} is not a power of two")
        start = -(-self._offs // alignment) * alignment
        self.data_start = start  # where the tensor data begins (the header ends before)
        self.tensors: List[_Tensor] = []
        seen = set()
        for name, dims, qtype, offset in headers:
            if name in seen:
                raise ValueError(f"tensor {name} appears twice")
            seen.add(name)
            block, size = gguf.GGML_QUANT_SIZES[qtype]
            numel = math.prod(dims)
            if any(d >= 1 << 40 for d in dims) or numel % block or (dims[0] if dims else 1) % block:
                raise ValueError(f"tensor {name} of type {qtype.name} has shape {list(dims)}")
            n_bytes = numel // block * size
            at = start + int(offset)
            if at + n_bytes > len(buf):
                raise _Truncated(name, at, n_bytes, len(buf))
            self.tensors.append(_Tensor(name, qtype, tuple(dims), buf[at:at + n_bytes], at, n_bytes))
        self._buf = None  # type: ignore[assignment]

    def _take(self, n: int) -> memoryview:
        end = self._offs + n
        if n < 0 or end > len(self._buf):
            raise ValueError(f"the metadata runs past the end of the file (at byte {self._offs})")
        out = self._buf[self._offs:end]
        self._offs = end
        return out

    def _scalar(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        return struct.unpack(fmt, self._take(size))[0]

    def _string(self) -> bytes:
        return bytes(self._take(self._scalar("<Q")))

    def _value(self, vtype: Any) -> Any:
        if int(vtype) == 8:  # STRING
            return self._string()
        fmt = self._SCALARS.get(int(vtype))
        if fmt is None:
            raise ValueError(f"unknown metadata value type {vtype}")
        return self._scalar(fmt)

    def _array(self, etype: Any, count: int) -> Any:
        if count > len(self._buf):
            raise ValueError(f"an array of {count} elements cannot fit in the file")
        if int(etype) == 8:  # strings: decoded values, not one view per element
            return [self._string() for _ in range(count)]
        if int(etype) == 9:
            raise ValueError("nested metadata arrays are not supported")
        fmt = self._SCALARS.get(int(etype))
        if fmt is None:
            raise ValueError(f"unknown metadata value type {etype}")
        return list(struct.unpack(f"<{count}{fmt[1:]}", self._take(struct.calcsize(fmt) * count)))


class _Truncated(Exception):
    def __init__(self, name: str, at: int, n: int, size: int) -> None:
        super().__init__(f"tensor {name} needs bytes {at}..{at + n} but the file has {size}")


def _open_reader(gguf, path: Path) -> _Reader:
    try:
        reader = _Reader(gguf, path)
    except _Truncated as e:
        raise CheckpointError(f"{path} is truncated: {e}") from None
    except (ValueError, IndexError, KeyError, TypeError, OverflowError, struct.error, UnicodeDecodeError, MemoryError) as e:
        msg = str(e) or type(e).__name__
        if "GGMLQuantizationType" in msg:
            raise TensorError(f"{path}: a tensor has a GGML type this gguf package does not know ({msg})") from None
        raise CheckpointError(f"{path} is not a valid GGUF file (truncated or corrupt?): {msg}") from None
    except OSError as e:
        raise CheckpointError(f"cannot read GGUF file {path}: {e}") from None
    if reader.byte_order != "I":
        raise CheckpointError(f"{path} is a GGUF file of the other byte order (big-endian); not supported")
    return reader


def read_gguf(path: os.PathLike | str) -> GgufModel:
    """Reads a GGUF file's metadata, config and tokenizer. Tensors are read by `add_tensors`."""
    path = Path(path)
    _check_file(path)
    gguf = _constants()
    K = gguf.Keys
    reader = _open_reader(gguf, path)

    fields = reader.fields
    values: Dict[str, Any] = {}  # every field but the tokenizer's big arrays (read by get_array)
    metadata: Dict[str, Any] = {}  # what GgufModel.metadata shows: no array longer than 64
    for key, f in fields.items():
        is_array = bool(f.types) and f.types[0] == gguf.GGUFValueType.ARRAY
        if is_array and key.startswith("tokenizer.ggml.") and len(f.data) > _MAX_METADATA_ARRAY:
            continue
        values[key] = _field_value(f, path)
        if not (is_array and len(f.data) > _MAX_METADATA_ARRAY):
            metadata[key] = values[key]

    def get_array(key: str) -> Optional[list]:
        f = fields.get(key)
        if f is None:
            return None
        if not f.types or f.types[0] != gguf.GGUFValueType.ARRAY:
            raise CheckpointError(f"{path}: metadata key {key!r} should be an array")
        return _field_value(f, path)

    arch = values.get(K.General.ARCHITECTURE)
    if not isinstance(arch, str):
        raise ConfigError(f"{path}: GGUF file has no {K.General.ARCHITECTURE}")
    if arch != _ARCH:
        raise ConfigError(f"{path}: GGUF architecture {arch!r} is not supported (supported: {_ARCH})")

    tensor_types: Dict[str, int] = {}
    by_name = {}
    for i, t in enumerate(reader.tensors):
        tname = t.tensor_type.name
        tensor_types[tname] = tensor_types.get(tname, 0) + 1
        by_name[t.name] = i

    tok_field = fields.get(K.Tokenizer.LIST)
    n_tokens = len(tok_field.data) if tok_field is not None and tok_field.types and tok_field.types[0] == gguf.GGUFValueType.ARRAY else None
    rows = _table_rows()
    config = _llama_config(path, values, by_name, rows, n_tokens or None)
    tensors = _plan_tensors(path, reader, by_name, rows, config)

    tok_model = values.get(K.Tokenizer.MODEL)
    tokenizer = None
    if tok_model is not None:
        st = path.stat()
        key = ("gguf", str(path.resolve()), st.st_size, st.st_mtime_ns)
        tokenizer = shared_tokenizer(key, lambda: _build_tokenizer(path, tok_model, values, get_array))

    def tok_id(key: str) -> Optional[int]:
        v = values.get(key)
        return int(v) if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None

    bos = tok_id(K.Tokenizer.BOS_ID)
    eos = tok_id(K.Tokenizer.EOS_ID)
    pad = tok_id(K.Tokenizer.PAD_ID)
    eos_ids: List[int] = []
    for key in (K.Tokenizer.EOS_ID, K.Tokenizer.EOT_ID, K.Tokenizer.EOM_ID):
        i = tok_id(key)
        if i is not None and i < config["vocab_size"] and i not in eos_ids:
            eos_ids.append(i)
    for key, v in (("bos_token_id", bos), ("eos_token_id", eos), ("pad_token_id", pad)):
        if v is not None:
            config[key] = v
    gen = {k: config[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in config}
    special: Dict[str, str] = {}
    unk = tok_id(K.Tokenizer.UNK_ID)
    for name, i in (("bos_token", bos), ("eos_token", eos), ("unk_token", unk), ("pad_token", pad)):
        if i is not None and tok_field is not None and i < (n_tokens or 0):
            special[name] = _field_value_at(tok_field, i, path)
    template = values.get(K.Tokenizer.CHAT_TEMPLATE)
    # the vocabulary and merges (about 100k Python objects for a 49k-token vocabulary) are in
    # the tokenizer now: freed here, before the weights arrive, so the memory goes back
    reader.fields = {}
    # and the file pages of the metadata they were read from (the header: several MiB of
    # vocabulary and merges) are no longer needed either
    _release_range(reader, 0, getattr(reader, "data_start", 0))

    return GgufModel(
        path=path,
        architecture=arch,
        config=config,
        metadata=metadata,
        tensor_types=tensor_types,
        tokenizer=tokenizer,
        chat_template=template if isinstance(template, str) else None,
        eos_token_ids=tuple(eos_ids),
        bos_token_id=bos,
        generation_config=gen,
        special_tokens=special,
        _reader=reader,
        _tensors=tensors,
    )


def _llama_config(path: Path, v: Dict[str, Any], by_name: Dict[str, int], rows: List[TableRow],
                  n_tokens: Optional[int]) -> Dict[str, Any]:
    K = _constants().Keys

    def key(template: str) -> str:  # gguf.Keys.LLM.* and friends are "{arch}.…" templates
        return template.format(arch=_ARCH)

    def num(template: str, kind=int, required=True):
        k = key(template)
        x = v.get(k)
        if x is None:
            if required:
                raise ConfigError(f"{path}: GGUF metadata lacks '{k}'")
            return None
        if isinstance(x, list):
            if x and all(e == x[0] for e in x):  # per-layer arrays with one value
                x = x[0]
            else:
                raise ConfigError(f"{path}: per-layer '{k}' values {x} are not supported")
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            raise ConfigError(f"{path}: '{k}' must be a finite number, got {x!r}")
        if kind is int:
            if float(x) != int(x) or x <= 0:
                raise ConfigError(f"{path}: '{k}' must be a positive integer, got {x!r}")
            return int(x)
        return float(x)

    hidden = num(K.LLM.EMBEDDING_LENGTH)
    heads = num(K.Attention.HEAD_COUNT)
    kv_heads = num(K.Attention.HEAD_COUNT_KV, required=False) or heads
    key_len = num(K.Attention.KEY_LENGTH, required=False)
    value_len = num(K.Attention.VALUE_LENGTH, required=False)
    head_dim = key_len or hidden // heads
    if value_len is not None and value_len != head_dim:
        raise ConfigError(f"{path}: key_length {head_dim} != value_length {value_len} is not supported")
    rope_dim = num(K.Rope.DIMENSION_COUNT, required=False)
    if rope_dim is not None and rope_dim != head_dim:
        raise ConfigError(f"{path}: partial rotary embeddings (rope.dimension_count {rope_dim} != head_dim {head_dim}) are not supported")
    if heads % kv_heads:
        raise ConfigError(f"{path}: head_count {heads} is not a multiple of head_count_kv {kv_heads}")
    experts = v.get(key(K.LLM.EXPERT_COUNT))
    if isinstance(experts, int) and experts > 0:
        raise ConfigError(f"{path}: mixture-of-experts LLaMA GGUF files ({experts} experts) are not supported")
    scaling = v.get(key(K.Rope.SCALING_TYPE))
    if scaling not in (None, "none") and not (scaling == "linear" and v.get(key(K.Rope.SCALING_FACTOR)) in (None, 1.0)):
        raise ConfigError(f"{path}: RoPE scaling {scaling!r} is not supported")

    # transformers: llama.vocab_size, else the number of tokens; else the embedding's rows (below).
    vocab = num(K.LLM.VOCAB_SIZE, required=False) or n_tokens
    # the lm_head is the row present "unless tied": a file without it ties it to the embeddings
    untied = any(r["when"] == "untied" and r["gguf"] in by_name for r in rows)
    cfg: Dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": num(K.LLM.FEED_FORWARD_LENGTH),
        "num_hidden_layers": num(K.LLM.BLOCK_COUNT),
        "num_attention_heads": heads,
        "num_key_value_heads": kv_heads,
        "max_position_embeddings": num(K.LLM.CONTEXT_LENGTH),
        "rope_theta": num(K.Rope.FREQ_BASE, float, required=False) or 10000.0,
        "rms_norm_eps": num(K.Attention.LAYERNORM_RMS_EPS, float),
        "hidden_act": "silu",
        "tie_word_embeddings": not untied,
        "attention_bias": False,
        "mlp_bias": False,
    }
    if key_len is not None:
        cfg["head_dim"] = head_dim
    # the core's bounds and consistency checks, before anything is sized from these numbers
    # (the vocabulary may still come from the embedding's rows: checked again at load)
    try:
        _core.check_config(json.dumps({**cfg, "vocab_size": cfg["vocab_size"] or 1}))
    except ConfigError as e:
        raise ConfigError(f"{path}: GGUF metadata: {e}") from None
    return cfg


def _plan_tensors(path: Path, reader: Any, by_name: Dict[str, int], rows: List[TableRow],
                  cfg: Dict[str, Any]) -> List[_TensorInfo]:
    """Maps every tensor to its HF name through the tensor table, checks types, shapes and
    completeness."""
    n_layers = cfg["num_hidden_layers"]
    heads, kv_heads = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    plan: List[_TensorInfo] = []
    biases = set()  # GGUF name templates of the biases the file holds
    for i, t in enumerate(reader.tensors):
        name = t.name
        if name == "rope_freqs.weight":
            _check_rope_freqs(path, t)
            continue
        row, layer = table_row(rows, name)
        if row is None:
            weight, layer = table_row(rows, name[: -len(".bias")] + ".weight") if name.endswith(".bias") else (None, None)
            if weight is not None:
                raise TensorError(f"{path}: tensor {name!r}: biases on {hf_name(weight, layer)} are not supported")
            raise TensorError(f"{path}: unexpected tensor {name!r} for the {_ARCH} architecture")
        if layer is not None and layer >= n_layers:
            raise TensorError(f"{path}: tensor {name} is for layer {layer}, but block_count is {n_layers}")
        if row["part"] == "bias":
            biases.add(row["gguf"])
        # llama.cpp permuted the rows of q and k (weights and biases) for its RoPE layout
        heads_for = {"q": heads, "k": kv_heads}.get(row["role"], 0)
        tname = t.tensor_type.name
        if tname not in SUPPORTED_TENSOR_TYPES:
            raise TensorError(
                f"{path}: tensor {name} has GGML type {tname}, which ferrolm cannot read "
                f"(supported: {', '.join(SUPPORTED_TENSOR_TYPES)})"
            )
        shape = tuple(int(d) for d in reversed(t.shape))
        if not shape or min(shape) < 1:
            raise TensorError(f"{path}: tensor {name} has shape {list(shape)}; every dimension must be positive")
        if heads_for:
            if shape[0] % (2 * heads_for):
                raise TensorError(f"{path}: tensor {name} has {shape[0]} rows, not a multiple of 2 x {heads_for} heads")
        plan.append(_TensorInfo(name, hf_name(row, layer), tname, shape, i, heads_for))

    embeddings = next(r["gguf"] for r in rows if r["role"] == "embed")
    if embeddings in by_name:
        n_rows = int(reader.tensors[by_name[embeddings]].shape[-1])
        if cfg["vocab_size"] is None:
            cfg["vocab_size"] = n_rows
    if cfg["vocab_size"] is None:
        vocab_key = _constants().Keys.LLM.VOCAB_SIZE.format(arch=_ARCH)
        raise ConfigError(f"{path}: cannot tell the vocabulary size (no {vocab_key}, no {embeddings})")

    # biases come in groups the config switches on together: attention (q, k, v, o) and MLP
    for flag, what, group in (("attention_bias", "attention", ("qkv_bias", "o_bias")), ("mlp_bias", "MLP", ("mlp_bias",))):
        expected = {r["gguf"] for r in rows if r["part"] == "bias" and r["when"] in group}
        found = expected & biases
        if found:
            if found != expected:
                raise TensorError(f"{path}: {what} biases on only {sorted(found)} are not supported")
            cfg[flag] = True

    layer_rows = [r for r in rows if "{i}" in r["name"]]
    needed = [r["gguf"] for r in rows if r not in layer_rows and _required(r, cfg)]
    needed += [r["gguf"].replace("{i}", str(layer)) for layer in range(n_layers) for r in layer_rows if _required(r, cfg)]
    missing = [n for n in needed if n not in by_name]
    if missing:
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise MissingTensorError(f"{path}: GGUF file lacks tensor(s) {', '.join(missing[:5])}{more}")
    return plan


def _check_rope_freqs(path: Path, t: Any) -> None:
    """llama.cpp stores Llama-3.1-style RoPE scaling as per-frequency factors; all ones is plain RoPE."""
    try:
        gguf = _gguf()
        f = np.asarray(gguf.quants.dequantize(t.rows(), t.tensor_type), dtype=np.float64)
    except Exception:
        f = None
    if f is None or not np.all(f == 1.0):
        raise ConfigError(f"{path}: the file has rope_freqs.weight (scaled RoPE, e.g. Llama 3.1), which is not supported")


# -- tokenizer -------------------------------------------------------------------------------------


def _build_tokenizer(path: Path, tok_model: str, values: Dict[str, Any], get_array) -> Tokenizer:
    if tok_model == "gpt2":
        return _byte_level_bpe(path, values, get_array)
    if tok_model == "llama":
        raise CheckpointError(
            f"{path}: SentencePiece GGUF tokenizers (tokenizer.ggml.model 'llama') are not supported yet; "
            "only byte-level BPE ('gpt2') vocabularies are"
        )
    raise CheckpointError(f"{path}: GGUF tokenizer model {tok_model!r} is not supported (supported: gpt2)")


def _byte_level_bpe(path: Path, values: Dict[str, Any], get_array) -> Tokenizer:
    """Byte-level BPE from tokens + merges, built like transformers' GGUF loader does it
    (GPT2Tokenizer: ByteLevel pre-tokenizer and decoder; control tokens special; user-defined
    tokens added; BOS/EOS added per tokenizer.ggml.add_bos_token / add_eos_token)."""
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
    from tokenizers import Tokenizer as HFTokenizer

    gguf = _constants()
    K = gguf.Keys.Tokenizer
    tokens = get_array(K.LIST)
    if not tokens or not all(isinstance(t, str) for t in tokens):
        raise CheckpointError(f"{path}: {K.LIST} is missing or not a list of strings")
    merges_raw = get_array(K.MERGES) or []
    token_types = get_array(K.TOKEN_TYPE) or []

    spelling = _bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab: Dict[str, int] = {}
    for i, tok in enumerate(tokens):
        if not set(tok) <= alphabet:
            tok = "".join(spelling[b] for b in tok.encode("utf-8"))
        vocab[tok] = i
    merges = []
    for m in merges_raw:
        pair = m.split(" ") if isinstance(m, str) else None
        if pair is None or len(pair) != 2:
            raise CheckpointError(f"{path}: malformed BPE merge {m!r} in {K.MERGES}")
        merges.append((pair[0], pair[1]))
    try:
        bpe = models.BPE(
            vocab=vocab, merges=merges, dropout=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False
        )
    except Exception as e:
        raise CheckpointError(f"{path}: cannot build the BPE tokenizer: {e}") from None
    tok = HFTokenizer(bpe)
    pre = values.get(K.PRE)
    if pre is not None and not isinstance(pre, str):
        raise CheckpointError(f"{path}: {K.PRE} must be a string, got {pre!r}")
    split = _PRE_TOKENIZER_SPLITS.get(pre)
    if split is None:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Split(Regex(split), behavior="isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
        )
    tok.decoder = decoders.ByteLevel()

    control = [
        AddedToken(t, normalized=False, special=True)
        for t, ty in zip(tokens, token_types)
        if ty == gguf.TokenType.CONTROL and set(t) <= alphabet
    ]
    if control:
        tok.add_special_tokens(control)
    user = [
        AddedToken(t, normalized=False, special=False)
        for t, ty in zip(tokens, token_types)
        if ty == gguf.TokenType.USER_DEFINED and t in vocab
    ]
    if user:
        tok.add_tokens(user)
    # transformers also registers the named special tokens (bos/eos/unk/pad) as special.
    added = {a.content for a in tok.get_added_tokens_decoder().values()}
    named: Dict[str, Optional[str]] = {}
    for name, key in (("bos", K.BOS_ID), ("eos", K.EOS_ID), ("unk", K.UNK_ID), ("pad", K.PAD_ID)):
        i = values.get(key)
        named[name] = tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else None
    extra = [
        AddedToken(t, normalized=False, special=True)
        for t in dict.fromkeys(x for x in named.values() if x is not None)
        if t not in added and t in vocab
    ]
    if extra:
        tok.add_special_tokens(extra)

    for flag in (K.ADD_BOS, K.ADD_EOS):
        if not isinstance(values.get(flag, False), bool):
            raise CheckpointError(f"{path}: {flag} must be a boolean, got {values.get(flag)!r}")
    add_bos = values.get(K.ADD_BOS, False) and named["bos"] is not None
    add_eos = values.get(K.ADD_EOS, False) and named["eos"] is not None
    bos, eos = named["bos"], named["eos"]
    single = f"{(bos + ':0 ') if add_bos else ''}$A:0{(' ' + eos + ':0') if add_eos else ''}"
    pair = f"{single}{(' ' + bos + ':1') if add_bos else ''} $B:1{(' ' + eos + ':1') if add_eos else ''}"
    special = []
    if add_bos:
        special.append((bos, tok.token_to_id(bos)))
    if add_eos and eos != bos:
        special.append((eos, tok.token_to_id(eos)))
    try:
        tok.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)
    except Exception as e:  # e.g. a BOS/EOS id naming a token that is not special
        raise CheckpointError(f"{path}: cannot build the tokenizer's BOS/EOS template: {e}") from None
    return Tokenizer(tok)
