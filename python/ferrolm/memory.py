"""How much memory a model needs: `estimate_memory` and `ferrolm memory`.

Two figures side by side:

* the **rule of thumb**: bytes per parameter — 4 (FP32), 2 (FP16, BF16), 1 (INT8), 0.5 plus
  scales (INT4) — so 1B parameters take about 4 GB in FP32; full fine-tuning adds about 20 bytes
  per parameter (gradients, Adam's two moments, activations), about 24 GB per 1B parameters in
  FP32;
* the **estimate for this model** in ferrolm, part by part:
  - weights: every matmul weight (linear layers, embeddings, an untied lm_head) in the chosen
    precision — INT8 adds one f16 scale per group of 32 values — and norms, biases and GPT-2's
    learned positions in FP32 (exactly `Model._core.weight_bytes` once loaded);
  - KV cache: 2 · layers · kv_heads · head_dim · context · bytes per value · batch, 4 bytes for
    an FP32 cache, 2 for BF16 (`ferrolm.load`'s `kv_cache`; its default, "auto", is FP32 for FP32
    weights and BF16 for the others);
  - working buffers: the activations of one prefill chunk (at most 256 tokens), the attention
    scores (4 rows per thread, or a row per head if that is more) and two logits rows, per
    sequence;
  - runtime: the Python process itself with ferrolm and its imports (tokenizers; jinja2 for a
    chat template; numpy only once arrays are asked for);
  - loading: what loading holds beyond the weights for a while (conversion blocks of 4 MiB, a
    GPT-2 Conv1D weight transposed in FP32, a GGUF file's parsed metadata), freed before the
    first generation.

The peak is weights + runtime + max(loading, KV cache + buffers) (+ fine-tuning, when asked):
loading ends before a session allocates its cache. The runtime and loading figures are
measurements (Linux x86-64, CPython 3.11, the default model and the benchmark shapes; see
docs/benchmarks.md), the others are computed from the config.

    ferrolm memory MODEL|CONFIG [--precision P] [--context N] [--batch B] [--kv-cache auto|fp32|bf16] [--training]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .errors import ConfigError, FerrolmError, InvalidArgumentError

MiB = 1 << 20

#: Bytes per parameter of the rule of thumb. INT4: half a byte plus an f16 scale and an f16
#: minimum per 32 values (ferrolm's INT4, GGUF's Q4_1).
RULE_OF_THUMB = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4": 0.5 + 4 / 32}
#: Extra bytes per parameter for full fine-tuning (gradients, Adam states, activations).
TRAINING_BYTES_PER_PARAM = 20
#: Precisions ferrolm stores weights in (the exact estimate exists for these).
PRECISIONS = ("fp32", "bf16", "int8", "int4")
NOT_AVAILABLE = {"fp16": "FP16"}
#: Bytes per cached key/value by KV-cache dtype (the core's `KvDtype`; tests check they agree).
KV_CACHE_BYTES = {"fp32": 4, "bf16": 2}
#: Rows of attention scores per thread and position of context (kernels/attention.rs, SCORE_ROWS).
SCORE_ROWS = 48
#: INT4 groups: 32 values in 16 bytes, an f16 scale and an f16 minimum.
INT4_GROUP = 32
INT4_GROUP_BYTES = 16 + 2 + 2

#: Peak resident memory of a Python process that has imported ferrolm (with tokenizers) and
#: run a model, without the model's own buffers: measured 24.8 MiB on Linux x86-64, CPython 3.11
#: (tests/fixtures models, whose weights are < 1 MiB). ferrolm imports numpy only when arrays are
#: asked for (`Model.logits`, quality, LoRA and soft-prompt files); a program that imports it
#: adds about 18 MiB.
RUNTIME_BYTES = 25 * MiB
#: Of RUNTIME_BYTES, what running a model adds to the process once ferrolm and the tokenizers
#: library are imported (thread stacks, the kernels' first buffers): measured 2.2–2.4 MiB on the
#: same runs. What importing takes varies with the environment (the same wheels measured 34.8
#: MiB in one virtualenv and 38.6 MiB in another, on another file system), so `ferrolm bench`
#: measures it in the benchmark process (after importing tokenizers, which every load uses) and
#: estimates runtime = that baseline + RUN_BYTES.
RUN_BYTES = 2 * MiB
#: Loading a safetensors checkpoint converts 4 MiB blocks of rows at a time: a block of mapped
#: file pages and its converted copy (less for tensors smaller than a block).
CONVERSION_BYTES = 8 * MiB
#: Loading a GGUF file parses its metadata (vocabulary, merges, token types) and builds the
#: tokenizer before the weights arrive, and the tokenizer stays: a fixed part and a part per
#: token of the vocabulary, fitted to measured peaks above weights + runtime (ferrolm's own GGUF
#: reader, no numpy): 2.1 MiB for tests/fixtures/gguf/tiny-llama.gguf (384 tokens), 38.4 / 36.2
#: MiB for the default model (49,152 tokens) in INT4 / INT8.
GGUF_READER_BYTES = 2 * MiB
GGUF_METADATA_BYTES_PER_TOKEN = 750
#: Prefill runs in chunks of at most this many tokens (rust/model/forward.rs PREFILL_CHUNK).
PREFILL_CHUNK = 256
INT8_GROUP = 32


@dataclass(frozen=True)
class Architecture:
    """What the estimate needs from a config (the core's config rules: rust/model/config.rs)."""

    arch: str  # "llama" | "gpt2"
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    max_position_embeddings: int
    tie_word_embeddings: bool
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Architecture":
        """From a Hugging Face config.json object; the core checks it first (ConfigError)."""
        from . import _core

        if not isinstance(config, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(config).__name__}")
        _core.check_config(json.dumps(config))  # the core's validation of every field
        t = config.get("model_type")
        if t == "gpt2":
            d, heads = config["n_embd"], config["n_head"]
            return cls("gpt2", config["vocab_size"], d, config["n_layer"], heads, heads, d // heads,
                       config.get("n_inner") or 4 * d, config["n_positions"], True, True, True, True)
        d, heads = config["hidden_size"], config["num_attention_heads"]
        attention_bias = bool(config.get("attention_bias", False))
        return cls("llama", config["vocab_size"], d, config["num_hidden_layers"], heads,
                   config.get("num_key_value_heads") or heads, config.get("head_dim") or d // heads,
                   config["intermediate_size"], config["max_position_embeddings"],
                   bool(config.get("tie_word_embeddings", False)), t == "qwen2" or attention_bias,
                   attention_bias, bool(config.get("mlp_bias", False)))

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def matrices(self) -> List[Tuple[int, int]]:
        """(rows, cols) of every matmul weight as the core stores it (tied lm_head once)."""
        d, f, v = self.hidden_size, self.intermediate_size, self.vocab_size
        if self.arch == "gpt2":
            layer = [(3 * d, d), (d, d), (f, d), (d, f)]
        else:
            layer = [(self.q_dim + 2 * self.kv_dim, d), (d, self.q_dim), (2 * f, d), (d, f)]
        out = [(v, d)] + layer * self.num_layers
        if not self.tie_word_embeddings:
            out.append((v, d))
        return out

    def fp32_values(self) -> int:
        """Values kept in FP32: norms, biases, GPT-2's learned positions."""
        d, f = self.hidden_size, self.intermediate_size
        if self.arch == "gpt2":
            per_layer = 4 * d + (3 * d + d + f + d)  # two LayerNorms (weight, bias) + four biases
            return self.num_layers * per_layer + 2 * d + self.max_position_embeddings * d
        per_layer = 2 * d
        per_layer += (self.q_dim + 2 * self.kv_dim) if self.qkv_bias else 0
        per_layer += d if self.o_bias else 0
        per_layer += (2 * f + d) if self.mlp_bias else 0
        return self.num_layers * per_layer + d

    def num_params(self) -> int:
        return sum(r * c for r, c in self.matrices()) + self.fp32_values()

    def weight_bytes(self, precision: str, group: int = INT8_GROUP,
                     matrices: Optional[Sequence[Tuple[int, int, str]]] = None) -> int:
        """Bytes of the weights as the core stores them in `precision`; `matrices`: (rows, cols,
        precision) of each matmul weight when they differ (an INT4 load of a GGUF file keeps its
        Q8_0/Q5/Q6 matrices in INT8), else every matrix of the config in `precision`."""
        if matrices is None:
            matrices = [(r, c, precision) for r, c in self.matrices()]
        return sum(matrix_bytes(r, c, p, group) for r, c, p in matrices) + 4 * self.fp32_values()

    def kv_cache_bytes(self, context: int, batch: int = 1, kv_cache: str = "fp32") -> int:
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * context * KV_CACHE_BYTES[kv_cache] * batch

    def buffer_bytes(self, context: int, batch: int = 1, threads: int = 1, prefill_tokens: Optional[int] = None) -> int:
        """Activation buffers of one prefill chunk, attention scores and logits, per sequence."""
        rows = min(prefill_tokens or context, context, PREFILL_CHUNK)
        d, f = self.hidden_size, self.intermediate_size
        up_out = f if self.arch == "gpt2" else 2 * f
        per_row = 2 * d + (self.q_dim + 2 * self.kv_dim) + 2 * self.q_dim + up_out + f
        # attention scores: up to 48 rows (heads × rows of a prompt) per thread, or a row per
        # head for a split decode step (kernels/attention.rs, score_rows_needed)
        score_rows = max(threads * SCORE_ROWS, self.num_heads)
        return batch * 4 * (rows * per_row + score_rows * context + 2 * self.vocab_size)

    def largest_conv1d_bytes(self) -> int:
        """GPT-2 transposes each Conv1D weight in FP32 while loading: the largest one's bytes."""
        if self.arch != "gpt2":
            return 0
        d, f = self.hidden_size, self.intermediate_size
        return 4 * max(3 * d * d, d * f)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a model needs in ferrolm, by part; `total_bytes` is the expected peak resident memory."""

    model: str
    params: int
    precision: str
    context: int
    batch: int
    training: bool
    weights_bytes: int
    kv_cache_bytes: int
    buffers_bytes: int
    runtime_bytes: int
    loading_bytes: int
    training_bytes: int
    exact: bool
    """False when only a parameter count was given: the weights follow the rule of thumb and the
    parts that need the architecture are 0."""
    notes: Tuple[str, ...] = ()
    kv_cache: str = "fp32"
    """How the KV cache stores keys and values: "fp32" or "bf16"."""

    @property
    def total_bytes(self) -> int:
        """weights + runtime + max(loading, KV cache + buffers) + fine-tuning."""
        return (self.weights_bytes + self.runtime_bytes + max(self.loading_bytes, self.kv_cache_bytes + self.buffers_bytes)
                + self.training_bytes)

    def rule_of_thumb(self) -> Dict[str, float]:
        """{precision: bytes} by the rule of thumb for this parameter count (+ fine-tuning)."""
        extra = TRAINING_BYTES_PER_PARAM * self.params if self.training else 0
        return {p: b * self.params + extra for p, b in RULE_OF_THUMB.items()}

    def as_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d["notes"] = list(self.notes)
        d["total_bytes"] = self.total_bytes
        d["rule_of_thumb_bytes"] = self.rule_of_thumb()
        return d

    def rows(self) -> List[Tuple[str, int, str]]:
        """(part, bytes, how) of the breakdown."""
        rows = [("weights", self.weights_bytes, self.notes[0] if self.notes else "")]
        if self.exact:
            rows += [
                ("KV cache", self.kv_cache_bytes, f"{self.kv_cache.upper()} keys and values, {self.context} positions × "
                 f"batch {self.batch}"),
                ("working buffers", self.buffers_bytes, "activations of one prefill chunk, attention scores, logits"),
                ("runtime", self.runtime_bytes, "Python with ferrolm and tokenizers (measured)"),
                ("loading (transient)", self.loading_bytes, self.notes[1] if len(self.notes) > 1 else ""),
            ]
        if self.training:
            rows.append(("fine-tuning", self.training_bytes, f"{TRAINING_BYTES_PER_PARAM} bytes/parameter: gradients, Adam states, activations"))
        return rows

    def format(self) -> str:
        """The breakdown and the rule of thumb as a text table."""
        head = f"{self.model}: {self.params:,} parameters, {self.precision}"
        if self.exact:
            head += f", context {self.context}, batch {self.batch}, {self.kv_cache} KV cache"
        if self.training:
            head += ", full fine-tuning"
        rows = self.rows()
        width = max(len(r[0]) for r in rows + [("total (peak)", 0, "")]) + 2
        lines = [head, "", f"  {'part':<{width}}{'MiB':>11}{'GB':>9}  how"]
        for name, b, how in rows:
            lines.append(f"  {name:<{width}}{b / MiB:>11,.1f}{b / 1e9:>9.3f}  {how}")
        total = "weights + runtime + max(loading, KV cache + buffers)" if self.exact else "weights"
        if self.training:
            total += " + fine-tuning"
        lines.append(f"  {'total (peak)':<{width}}{self.total_bytes / MiB:>11,.1f}{self.total_bytes / 1e9:>9.3f}  = {total}")
        extra = TRAINING_BYTES_PER_PARAM if self.training else 0
        lines += ["", f"  rule of thumb for {self.params / 1e9:.3g}B parameters: bytes per parameter"
                  + (f" + {extra} for full fine-tuning" if extra else "")]
        for p, b in self.rule_of_thumb().items():
            label = "0.5 + scales" if p == "int4" else f"{RULE_OF_THUMB[p]:g}"
            if extra:
                label += f" + {extra}"
            lines.append(f"  {p.upper():<{width}}{label:>18}{b / 1e9:>9.2f} GB")
        return "\n".join(lines)

    def markdown(self) -> str:
        lines = ["| part | MiB | how |", "|---|---|---|"]
        lines += [f"| {n} | {b / MiB:,.1f} | {h} |" for n, b, h in self.rows()]
        lines.append(f"| **total (peak)** | **{self.total_bytes / MiB:,.1f}** | |")
        return "\n".join(lines)


def matrix_bytes(rows: int, cols: int, precision: str, group: int = INT8_GROUP) -> int:
    """Bytes of one [rows, cols] matmul weight stored in `precision` (scales included)."""
    if precision == "int4":
        return rows * math.ceil(cols / INT4_GROUP) * INT4_GROUP_BYTES
    if precision == "int8":
        return rows * cols + rows * math.ceil(cols / group) * 2
    return rows * cols * {"fp32": 4, "bf16": 2}[precision]


def rule_of_thumb_bytes(params: int, precision: str, training: bool = False) -> float:
    """params × bytes per parameter (+ 20 per parameter for full fine-tuning)."""
    if precision not in RULE_OF_THUMB:
        raise InvalidArgumentError(f"precision must be one of {', '.join(RULE_OF_THUMB)}, got {precision!r}")
    return params * (RULE_OF_THUMB[precision] + (TRAINING_BYTES_PER_PARAM if training else 0))


def check_precision(precision: str) -> str:
    """A precision ferrolm can load; INT4 and FP16 are refused with the reason."""
    if precision in NOT_AVAILABLE:
        raise InvalidArgumentError(
            f"{NOT_AVAILABLE[precision]} weights are not available in this version of ferrolm (choose "
            f"{', '.join(PRECISIONS)}); its rule of thumb, {RULE_OF_THUMB[precision]:g} bytes per parameter, is in "
            "every memory estimate's table")
    if precision not in PRECISIONS:
        raise InvalidArgumentError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def _positive(name: str, value: Any, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class ModelFacts:
    """What an estimate needs to know of a model before loading it (see `model_facts`)."""

    name: str
    config: Dict[str, Any]
    format: str  # "safetensors" | "gguf" | "config"
    saved_precision: Optional[str] = None
    int8_group: int = INT8_GROUP
    has_tokenizer: bool = False
    #: the precision a load without one uses, and why (`Checkpoint.default_precision`)
    default_precision: Tuple[str, str] = ("fp32", "")
    #: GGUF files: (Hugging Face name, rows, cols, GGML type) of every matmul weight as stored
    gguf_matrices: Tuple[Tuple[str, int, int, str], ...] = ()


def model_facts(source: Any) -> ModelFacts:
    """The config, file format and saved precision of a model folder, GGUF file, config.json
    file, named benchmark shape or config dict (a GGUF file's metadata is parsed once here;
    pass the result to `estimate_memory` to estimate several precisions)."""
    if isinstance(source, ModelFacts):
        return source
    if isinstance(source, dict):
        return ModelFacts("config", source, "config")
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidArgumentError(f"expected a model path, a config (dict or config.json), a benchmark shape name or a "
                                   f"parameter count, got {type(source).__name__}")
    from .bench import REAL_MODELS, SHAPES, model_source

    if isinstance(source, str) and source in SHAPES:
        return ModelFacts(source, SHAPES[source], "safetensors")
    path = model_source(source) if isinstance(source, str) and source in REAL_MODELS else Path(source)
    if path.is_file() and path.suffix.lower() == ".json":
        from .loading import _read_json

        return ModelFacts(path.name, _read_json(path, "config", ConfigError), "config")
    from .loading import read_checkpoint

    ckpt = read_checkpoint(path)  # ModelNotFoundError for a missing path
    default = ckpt.default_precision()
    matrices: Tuple[Tuple[str, int, int, str], ...] = ()
    if ckpt.gguf is not None:
        matrices = tuple((n, int(s[0]), int(s[1]), t) for n, s, t in ckpt.gguf.matrices())
        ckpt.gguf.close()
    return ModelFacts(ckpt.path.name or str(ckpt.path), ckpt.config, "gguf" if ckpt.format == "gguf" else "safetensors",
                      ckpt.saved_precision, ckpt.int8_group(), ckpt.tokenizer is not None, default, matrices)


def auto_kv_cache(kv_cache: str, precision: str) -> str:
    """`kv_cache`, with "auto" resolved for `precision` on the CPU as ferrolm.load resolves it."""
    from .loading import resolve_kv_cache

    return resolve_kv_cache(kv_cache, precision)


def estimate_memory(model_path_or_config: Any, precision: Optional[str] = None, context: Optional[int] = None,
                    batch: int = 1, training: bool = False, *, threads: Optional[int] = None,
                    prefill_tokens: Optional[int] = None, runtime_bytes: Optional[int] = None,
                    kv_cache: str = "auto") -> MemoryEstimate:
    """The memory a model needs in ferrolm, by part (see the module's documentation).

    model_path_or_config: a Hugging Face folder, a GGUF file, a config.json file or dict, the
    name of a benchmark shape ("llama-1.1b", ...), a `ModelFacts`, or a parameter count (int:
    rule of thumb only).
    precision: "fp32" | "bf16" | "int8" | "int4" (default: the checkpoint's own, as ferrolm.load).
    context: KV-cache positions (default: the model's maximum). batch: sequences at once, each
    with its cache and buffers. training: add full fine-tuning's 20 bytes per parameter.
    threads: kernel threads (attention scores per thread; default: every CPU).
    prefill_tokens: the longest prompt expected (default: the context; buffers cover at most 256).
    runtime_bytes: override the measured Python runtime figure (RUNTIME_BYTES).
    kv_cache: "fp32" (4 bytes per cached value), "bf16" (2) or "auto" (the default, as ferrolm.load's:
    FP32 for FP32 weights, BF16 otherwise).
    """
    from . import _core

    batch = _positive("batch", batch)
    context = _positive("context", context, allow_none=True)
    threads = _positive("threads", threads, allow_none=True) or _core.default_threads()
    prefill_tokens = _positive("prefill_tokens", prefill_tokens, allow_none=True)
    if not isinstance(training, bool):
        raise InvalidArgumentError(f"training must be True or False, got {training!r}")
    if runtime_bytes is not None and (not isinstance(runtime_bytes, int) or runtime_bytes < 0):
        raise InvalidArgumentError(f"runtime_bytes must be a non-negative integer, got {runtime_bytes!r}")
    if precision is not None:
        check_precision(precision)
    if not isinstance(kv_cache, str) or kv_cache not in ("auto", *KV_CACHE_BYTES):
        raise InvalidArgumentError(f"kv_cache must be one of auto, {', '.join(KV_CACHE_BYTES)}, got {kv_cache!r}")

    if isinstance(model_path_or_config, int) and not isinstance(model_path_or_config, bool):
        params = _positive("the parameter count", model_path_or_config)
        precision = precision or "fp32"
        kv_cache = auto_kv_cache(kv_cache, precision)
        return MemoryEstimate(
            model=f"a model of {params / 1e9:.3g}B parameters", params=params, precision=precision, context=context or 0, batch=batch,
            training=training, weights_bytes=int(rule_of_thumb_bytes(params, precision)), kv_cache_bytes=0,
            buffers_bytes=0, runtime_bytes=0, loading_bytes=0,
            training_bytes=TRAINING_BYTES_PER_PARAM * params if training else 0, exact=False,
            notes=(f"rule of thumb: {RULE_OF_THUMB[precision]:g} bytes per parameter",), kv_cache=kv_cache)

    facts = model_facts(model_path_or_config)
    name, config, fmt, saved, group = facts.name, facts.config, facts.format, facts.saved_precision, facts.int8_group
    arch = Architecture.from_config(config)
    if saved is not None and precision not in (None, saved):
        raise InvalidArgumentError(f"{name} is a ferrolm {saved.upper()} checkpoint; it loads only as {saved}")
    if precision is None:
        if fmt == "config":
            dtype = config.get("torch_dtype", config.get("dtype"))
            precision = "bf16" if dtype == "bfloat16" else "fp32"
        else:
            precision = facts.default_precision[0]
    kv_cache = auto_kv_cache(kv_cache, precision)
    if context is None:
        context = arch.max_position_embeddings
    elif context > arch.max_position_embeddings:
        raise InvalidArgumentError(f"context must be at most the model's {arch.max_position_embeddings} positions, got {context}")

    per_matrix = None
    if facts.gguf_matrices:
        per_matrix = _gguf_matrix_precisions(facts.gguf_matrices, precision)
    weights = arch.weight_bytes(precision, group, per_matrix)
    if fmt == "gguf":
        loading = GGUF_READER_BYTES + GGUF_METADATA_BYTES_PER_TOKEN * arch.vocab_size
        loading_note = (f"the file's metadata and tokenizer while loading ({GGUF_READER_BYTES // MiB} MiB + {GGUF_METADATA_BYTES_PER_TOKEN} B per "
                        "vocabulary token, measured)")
    else:
        largest = 4 * max(r * c for r, c in arch.matrices())
        loading = min(CONVERSION_BYTES, 2 * largest) + arch.largest_conv1d_bytes()
        loading_note = "4 MiB conversion blocks" + (" and the largest Conv1D weight transposed in FP32" if arch.arch == "gpt2" else "")
    scales = {"int8": f" + one f16 scale per {group} values", "int4": " + an f16 scale and minimum per 32 values"}.get(precision, "")
    kept = sorted({p for _, _, p in per_matrix or ()} - {precision})
    if kept:
        scales += f" ({', '.join(k.upper() for k in kept)} where the file's type needs it)"
    weights_note = f"matmul weights in {precision.upper()}{scales}; norms{', biases' if arch.qkv_bias or arch.arch == 'gpt2' else ''} in FP32"
    return MemoryEstimate(
        model=name, params=arch.num_params(), precision=precision, context=context, batch=batch, training=training,
        weights_bytes=weights, kv_cache_bytes=arch.kv_cache_bytes(context, batch, kv_cache),
        buffers_bytes=arch.buffer_bytes(context, batch, threads, prefill_tokens),
        runtime_bytes=RUNTIME_BYTES if runtime_bytes is None else runtime_bytes, loading_bytes=loading,
        training_bytes=TRAINING_BYTES_PER_PARAM * arch.num_params() if training else 0, exact=True,
        notes=(weights_note, loading_note), kv_cache=kv_cache)


def _gguf_matrix_precisions(matrices: Sequence[Tuple[str, int, int, str]], precision: str) -> List[Tuple[int, int, str]]:
    """(rows, cols, stored precision) of a GGUF file's matrices under a load in `precision`: each
    its own (`GgufModel.tensor_precision`), except that matrices the core fuses (q/k/v, gate/up
    of a layer) are INT8 together when INT4 and INT8 parts meet (`Linear::concat`)."""
    from .gguf import GgufModel

    out = {n: [r, c, GgufModel.tensor_precision(t, precision)] for n, r, c, t in matrices}
    groups: Dict[str, List[str]] = {}
    for n in out:
        for part in ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj"):
            if n.endswith(f".{part}.weight"):
                fused = "qkv" if part in ("q_proj", "k_proj", "v_proj") else "gate_up"
                groups.setdefault(n.rsplit(".", 3)[0] + "." + fused, []).append(n)
    for names in groups.values():
        if {out[n][2] for n in names} == {"int4", "int8"}:
            for n in names:
                out[n][2] = "int8"
    return [tuple(v) for v in out.values()]  # type: ignore[misc]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ferrolm memory",
        description="Memory a model needs: weights per precision (INT8 scales included), KV cache, working buffers, "
        "runtime and loading, next to the rule of thumb (4/2/2/1/0.5 bytes per parameter; +20 for full fine-tuning).")
    p.add_argument("model", nargs="?", help="a model folder, GGUF file, config.json, benchmark shape name (e.g. "
                   "llama-1.1b) or a parameter count (e.g. 1e9); default: the default model")
    p.add_argument("--precision", default=None, help="fp32, bf16, int8 or int4 (default: the checkpoint's own)")
    p.add_argument("--context", type=int, default=None, help="KV-cache positions (default: the model's maximum)")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--kv-cache", default="auto", choices=["auto", *KV_CACHE_BYTES],
                   help="how the KV cache stores keys and values: fp32 (4 bytes per value), bf16 (2) or auto "
                        "(default, as ferrolm.load: fp32 for fp32 weights, bf16 otherwise)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--training", action="store_true", help="add full fine-tuning (20 bytes per parameter)")
    p.add_argument("--json", action="store_true")
    return p


def _parse_source(text: Optional[str]) -> Any:
    if text is None:
        from .loading import default_model_path

        return default_model_path()
    if not Path(text).exists():
        try:
            value = float(text)
        except ValueError:
            return text
        if value >= 1 and value == int(value):
            return int(value)
    return text


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        est = estimate_memory(_parse_source(args.model), args.precision, args.context, args.batch, args.training,
                              threads=args.threads, kv_cache=args.kv_cache)
    except (FerrolmError, OSError) as e:
        print(f"ferrolm: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(est.as_dict(), indent=2) if args.json else est.format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
