"""The input surfaces: for each, a hypothesis strategy of JSON-able cases and a `prepare` that
turns a case into files on disk plus one call into ferrolm's public API.

A case's call may return, raise a `ferrolm.FerrolmError` (a clean refusal), or raise
`Violation` when ferrolm accepted something its contract says it must refuse or returned a
result that breaks an invariant. Anything else it raises is a finding (see engine.py).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
from hypothesis import strategies as st

from . import templates
from .files import (
    ARRAY, BOOL, F32, F64, STRING, Gguf, SafeTensors, apply_json_ops, apply_text_ops, dump_json, json_paths,
    mutate_gguf, mutate_safetensors,
)  # fmt: skip
from .values import INTERESTING_INTS, decode, floats, ints, json_values, near, texts, weighted_choice

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
MODELS = FIXTURES / "models"
ADAPTERS = FIXTURES / "adapters"
GGUF_FIXTURE = FIXTURES / "gguf" / "tiny-llama.gguf"
MODEL_NAMES = ("tiny-llama", "tiny-gpt2", "tiny-qwen2")
SECRET_ENV = "FERROLM_FUZZ_SECRET"


class Violation(Exception):
    """A contract broken without an exception: invalid input accepted, a wrong result, a
    sandbox escape."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


# -- per-process context ----------------------------------------------------------------------


class Context:
    """What a worker process keeps between cases: loaded models, a scratch folder, the canary."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self._models: Dict[str, Any] = {}
        self.canary = scratch / "CANARY"
        self.secret = os.environ.get(SECRET_ENV, "")
        self._n = 0

    def fresh(self) -> Path:
        """A new empty folder for one case (the previous case's is removed)."""
        for old in self.scratch.glob("case-*"):
            shutil.rmtree(old, ignore_errors=True)
        self._n += 1
        case = self.scratch / f"case-{os.getpid()}-{self._n}"
        case.mkdir(parents=True)
        return case

    def unique(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def model(self, key: str) -> Any:
        """A fixture model, loaded once per process: "tiny-llama", "tiny-gpt2@int8", "gguf", ..."""
        import ferrolm

        if key not in self._models:
            name, _, precision = key.partition("@")
            path = GGUF_FIXTURE if name == "gguf" else MODELS / name
            self._models[key] = ferrolm.load(path, precision=precision or None, threads=1, progress=False)
        return self._models[key]

    def drop_model(self, key: str) -> None:
        self._models.pop(key, None)


def link_folder(src: Path, dest: Path, skip: tuple = ()) -> None:
    """Symlinks every file of `src` into `dest` except those named in `skip`."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.name not in skip:
            os.symlink(f, dest / f.name)


@dataclass(frozen=True)
class Surface:
    name: str
    doc: str
    strategy: Callable[[], st.SearchStrategy]
    prepare: Callable[[Dict[str, Any], Context], Callable[[], Any]]


def _cached(fn: Callable[..., st.SearchStrategy]) -> Callable[..., st.SearchStrategy]:
    """Memoizes a strategy builder used in flatmap (building strategies per draw is slow)."""
    memo: Dict[Any, st.SearchStrategy] = {}

    def wrapper(*args: Any) -> st.SearchStrategy:
        key = json.dumps(args, sort_keys=True, default=str)
        if key not in memo:
            memo[key] = fn(*args)
        return memo[key]

    return wrapper


def _one_of(*weighted: Any) -> st.SearchStrategy:
    """A weighted choice between strategies: (strategy, weight) pairs. (st.one_of drops repeated
    strategy objects, so repeating one does not weight it.)"""
    return weighted_choice([s for s, _ in weighted], [w for _, w in weighted])


# -- shared checks ------------------------------------------------------------------------------


def _ids(m: Any, ids: List[int]) -> List[int]:
    return [i % m.vocab_size for i in ids]


def check_result(m: Any, r: Any, max_new: int, prompt_len: int, stop: tuple = (), min_new: int = 0) -> None:
    """Invariants of a GenerationResult."""
    import ferrolm

    if not isinstance(r, ferrolm.GenerationResult):
        raise Violation("invariant", f"generate returned {type(r).__name__}, not a GenerationResult")
    if r.finish_reason not in ("eos", "stop", "length"):
        raise Violation("invariant", f"finish_reason {r.finish_reason!r}")
    if not all(isinstance(t, int) and 0 <= t < m.vocab_size for t in r.tokens):
        raise Violation("invariant", f"generated token ids outside the vocabulary: {r.tokens}")
    if len(r.tokens) > max_new:
        raise Violation("invariant", f"{len(r.tokens)} tokens generated with max_new_tokens={max_new}")
    if r.finish_reason == "eos" and len(r.tokens) <= min_new:
        raise Violation("invariant", f"ended by EOS after {len(r.tokens)} tokens with min_new_tokens={min_new}")
    # every token but the last generated one is fed to the model, so must fit the context
    if prompt_len + max(0, len(r.tokens) - 1) > m.context_length:
        raise Violation("invariant", f"{prompt_len} prompt + {len(r.tokens)} new tokens overrun the context of {m.context_length}")
    if not isinstance(r.text, str) or any(s in r.text for s in stop):
        raise Violation("invariant", f"text {r.text!r} holds a stop string of {stop}")


def exercise(m: Any) -> None:
    """A model that loaded must generate from ids, text and chat without anything but a
    FerrolmError."""
    ids = _ids(m, [1, 2, 3])
    check_result(m, m.generate(ids, max_new_tokens=2, seed=0), 2, 3)
    logits = m.logits(ids[:2])
    if logits.shape != (2, m.vocab_size):
        raise Violation("invariant", f"logits of shape {logits.shape} for 2 tokens and vocab {m.vocab_size}")
    if m.tokenizer is not None:
        m.generate("Hello there", max_new_tokens=2, seed=0)
    if m.chat_template is not None:
        m.chat([{"role": "user", "content": "hi"}], max_new_tokens=2, seed=0)


def _accepted(reason: Optional[str], m: Any, what: str) -> None:
    """Raises Violation when `reason` says the input was invalid (after the model has been
    exercised, so that a crash in use is reported rather than hidden)."""
    import ferrolm

    if reason is None:
        exercise(m)
        return
    try:
        exercise(m)
    except ferrolm.FerrolmError:
        pass
    raise Violation("accepted-invalid", f"{what}: {reason} was accepted")


# -- hostile-ish typed specs (the oracle for silently accepted values) ------------------------


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    """A number (not a bool) that is finite as a float (a huge int is not)."""
    try:
        return _is_num(v) and math.isfinite(v)
    except OverflowError:
        return False


def _pos_int(v: Any) -> bool:
    return _is_int(v) and v > 0


def _opt(pred: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: v is None or pred(v)


_MISSING = object()

_LLAMA_SPEC: Dict[str, Callable[[Any], bool]] = {
    "vocab_size": _pos_int, "hidden_size": _pos_int, "intermediate_size": _pos_int, "num_hidden_layers": _pos_int,
    "num_attention_heads": _pos_int, "max_position_embeddings": _pos_int,
    "num_key_value_heads": _opt(_pos_int), "head_dim": _opt(_pos_int),
    "rope_theta": _opt(lambda v: _finite(v) and v > 0),
    "rms_norm_eps": _opt(lambda v: _finite(v) and v > 0),
    "tie_word_embeddings": _opt(lambda v: isinstance(v, bool)), "attention_bias": _opt(lambda v: isinstance(v, bool)),
    "mlp_bias": _opt(lambda v: isinstance(v, bool)), "hidden_act": _opt(lambda v: isinstance(v, str)),
    "model_type": lambda v: isinstance(v, str),
}  # fmt: skip
_SLIDING_SPEC = {"use_sliding_window": _opt(lambda v: isinstance(v, bool)), "sliding_window": _opt(lambda v: _is_int(v) and v >= 0)}
_GPT2_SPEC: Dict[str, Callable[[Any], bool]] = {
    "vocab_size": _pos_int, "n_embd": _pos_int, "n_head": _pos_int, "n_layer": _pos_int, "n_positions": _pos_int,
    "n_inner": _opt(_pos_int), "layer_norm_epsilon": _opt(lambda v: _finite(v) and v > 0),
    "activation_function": _opt(lambda v: isinstance(v, str)), "tie_word_embeddings": _opt(lambda v: isinstance(v, bool)),
    "scale_attn_weights": _opt(lambda v: isinstance(v, bool)), "scale_attn_by_inverse_layer_idx": _opt(lambda v: isinstance(v, bool)),
    "reorder_and_upcast_attn": _opt(lambda v: isinstance(v, bool)), "model_type": lambda v: isinstance(v, str),
}  # fmt: skip


def invalid_model_config(cfg: Any) -> Optional[str]:
    """Why config.json `cfg` is invalid by the types of the fields ferrolm reads, or None."""
    if not isinstance(cfg, dict):
        return None  # refused anyway; not a type question
    mt = cfg.get("model_type")
    spec = _GPT2_SPEC if mt == "gpt2" else dict(_LLAMA_SPEC, **(_SLIDING_SPEC if mt in ("mistral", "qwen2") else {}))
    for key, ok in spec.items():
        v = cfg.get(key, _MISSING)
        if v is _MISSING:
            continue  # a missing required key is refused by name; defaults cover the others
        if not ok(v):
            return f"{key}={_show(v)}"
    return None


def _show(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, float) else repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


# -- surface: config.json and the other JSON files of a model folder --------------------------

_LLAMA_SIZES = ["num_hidden_layers", "num_attention_heads", "num_key_value_heads", "hidden_size", "intermediate_size", "vocab_size",
                "max_position_embeddings", "head_dim"]  # fmt: skip
_GPT2_SIZES = ["n_layer", "n_head", "n_embd", "n_inner", "vocab_size", "n_positions"]
_SIZE_KEYS = _LLAMA_SIZES + _GPT2_SIZES
_HUGE = [2**31, 2**31 - 1, 2**32, 2**32 + 2, 2**40, 2**48, 2**62, 2**63 - 1, 2**63, 2**64 - 1, 10**12, 2**20, 2**24, 100_000_000]
_COMMON_KEYS = ["quantization_config", "torch_dtype", "dtype", "model_type", "tie_word_embeddings", "eos_token_id", "architectures"]
_EXTRA_KEYS = {
    ("llama", "config.json"): _LLAMA_SIZES + _COMMON_KEYS + ["rope_scaling", "rope_theta", "rope_parameters", "hidden_act", "rms_norm_eps",
                                                             "attention_bias", "mlp_bias", "sliding_window", "use_sliding_window"],
    ("gpt2", "config.json"): _GPT2_SIZES + _COMMON_KEYS + ["activation_function", "layer_norm_epsilon", "scale_attn_weights",
                                                           "reorder_and_upcast_attn", "scale_attn_by_inverse_layer_idx"],
    "generation_config.json": ["do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "max_new_tokens", "eos_token_id"],
    "tokenizer_config.json": ["chat_template", "eos_token", "bos_token", "unk_token", "pad_token"],
    "model.safetensors.index.json": ["weight_map", "metadata"],
}  # fmt: skip


def _extra_keys(model: str, file: str) -> List[str]:
    if file == "config.json":
        return _EXTRA_KEYS["gpt2" if model == "tiny-gpt2" else "llama", file]
    return _EXTRA_KEYS[file]


def _load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


_DOCS: Dict[tuple, Any] = {}


def _doc(model: str, file: str) -> Any:
    if (model, file) not in _DOCS:
        _DOCS[model, file] = _load_json(MODELS / model / file)
    return _DOCS[model, file]


def _get(doc: Any, path: List[Any]) -> Any:
    for k in path:
        if isinstance(doc, dict) and k in doc:
            doc = doc[k]
        elif isinstance(doc, list) and isinstance(k, int) and 0 <= k < len(doc):
            doc = doc[k]
        else:
            return _MISSING
    return doc


def json_op_strategy(doc: Any, extra_keys: List[str], special: Optional[st.SearchStrategy] = None, depth: int = 3) -> st.SearchStrategy:
    """Ops on a JSON document: set a path (existing or a known key) to a hostile value, delete
    it, append to a list, or (rarely) replace the root."""
    paths = json_paths(doc, max_depth=depth) + [[k] for k in extra_keys if not (isinstance(doc, dict) and k in doc)]
    path = st.sampled_from(paths)

    @_cached
    def set_op(p: List[Any]) -> st.SearchStrategy:
        orig = _get(doc, p)
        choices = [(json_values(), 3), (ints(), 2), (floats(), 1), (texts(), 1)]
        if orig is not _MISSING:
            choices.append((near(orig), 3))
        if p and p[-1] in _SIZE_KEYS:
            choices.append((st.sampled_from(_HUGE), 4))
        if special is not None:
            choices.append((special, 3))
        return _one_of(*choices).map(lambda v: {"op": "set", "path": p, "value": v})

    return _one_of(
        (path.flatmap(set_op), 8),
        (path.map(lambda p: {"op": "del", "path": p}), 2),
        (st.builds(lambda p, v: {"op": "append", "path": p, "value": v}, path, json_values()), 1),
        (json_values().map(lambda v: {"op": "root", "value": v}), 1),
    )


def text_op_strategy() -> st.SearchStrategy:
    return st.one_of(
        st.builds(lambda at: {"op": "truncate", "at": at}, st.integers(0, 20000)),
        st.builds(lambda at, ins, d: {"op": "splice", "at": at, "insert": ins, "delete": d}, st.integers(0, 20000),
                  st.sampled_from(["ff", "00", "c0af", "7b", "5d", "22", "2c", "4e614e", "31653939393939", "edb080", "5c7544383030"]),
                  st.integers(0, 4)),
        st.builds(lambda d, oc: {"op": "nest", "depth": d, "open": oc[0], "close": oc[1]}, st.sampled_from([10, 200, 1000, 100_000]),
                  st.sampled_from([("[", "]"), ('{"a":', "}")])),
        st.just({"op": "bom"}),
    )


def _config_strategy() -> st.SearchStrategy:
    @_cached
    def for_model(model: str) -> st.SearchStrategy:
        files = [("config.json", 10), ("generation_config.json", 1), ("tokenizer_config.json", 1)]
        if (MODELS / model / "model.safetensors.index.json").exists():
            files.append(("model.safetensors.index.json", 1))

        @_cached
        def for_file(file: str) -> st.SearchStrategy:
            doc = _doc(model, file)
            ops = json_op_strategy(doc, _extra_keys(model, file))
            if file == "config.json":
                # one size alone set huge: the case where nothing else refuses the file first
                sizes = _GPT2_SIZES if model == "tiny-gpt2" else _LLAMA_SIZES
                huge = st.builds(lambda k, v: {"op": "set", "path": [k], "value": v}, st.sampled_from(sizes), st.sampled_from(_HUGE))
                ops = _one_of((ops, 4), (huge, 1))
            return st.fixed_dictionaries({
                "model": st.just(model),
                "file": st.just(file),
                "ops": st.lists(ops, min_size=1, max_size=4),
                "text_ops": _one_of((st.just([]), 12), (st.lists(text_op_strategy(), min_size=1, max_size=2), 1)),
                "precision": st.sampled_from([None, None, "fp32", "bf16", "int8"]),
            })

        return _one_of(*((st.just(f), w) for f, w in files)).flatmap(for_file)

    return st.sampled_from(MODEL_NAMES).flatmap(for_model)


def _config_prepare(case: Dict[str, Any], ctx: Context) -> Callable[[], Any]:
    import ferrolm

    folder = ctx.fresh() / case["model"]
    link_folder(MODELS / case["model"], folder, skip=(case["file"],))
    doc = apply_json_ops(_doc(case["model"], case["file"]), case["ops"])
    (folder / case["file"]).write_bytes(apply_text_ops(dump_json(doc), case["text_ops"]))
    reason = invalid_model_config(doc) if case["file"] == "config.json" and not case["text_ops"] else None

    def call() -> None:
        m = ferrolm.load(folder, precision=case["precision"], threads=1, progress=False)
        _accepted(reason, m, "config.json")

    return call


# -- surface: safetensors files of a model -----------------------------------------------------

_ST_HEADERS: Dict[tuple, Dict[str, Any]] = {}


def _st_fixture(folder: Path, file: str) -> SafeTensors:
    return SafeTensors.parse((folder / file).read_bytes())


def _st_header(folder: Path, file: str) -> Dict[str, Any]:
    key = (str(folder), file)
    if key not in _ST_HEADERS:
        st_ = _st_fixture(folder, file)
        _ST_HEADERS[key] = {"header": st_.header, "data_len": len(st_.data), "header_len": len(st_.serialize()) - len(st_.data) - 8}
    return _ST_HEADERS[key]


_DTYPES = ["F32", "F16", "BF16", "F64", "I8", "U8", "I16", "I32", "I64", "U16", "U32", "U64", "BOOL", "F8_E4M3", "F8_E5M2",
           "F4", "f32", "float32", "", "X", "C64"]  # fmt: skip


def _shapes_like(shape: List[int]) -> List[Any]:
    """Shapes near `shape`: reordered, scaled, empty, huge, overflowing, negative, mistyped."""
    n = math.prod(shape) if shape else 1
    out: List[Any] = [list(reversed(shape)), [n], shape + [1], [1] + shape, [], [0], shape[:-1], [d * 2 for d in shape],
                      [2**31, 2**31], [2**32, 2**32], [2**32, 2**32, 2**32], [2**64 - 1], [2**63], [-1] + shape[1:], [n, 0],
                      [float(d) for d in shape], [str(d) for d in shape], [[d] for d in shape], None, n, [True] * len(shape),
                      [2**64] + shape[1:], [0] * len(shape), shape + [2**40]]  # fmt: skip
    return out


def _offsets_like(off: List[int], data_len: int) -> List[Any]:
    a, b = off
    return [[b, a], [a, b + 1], [a, b - 1], [a + 1, b + 1], [a, data_len + 1], [data_len, data_len + (b - a)], [0, 2**64 - 1],
            [2**63, 2**63 + (b - a)], [-1, b], [a], [a, b, b], [str(a), str(b)], [float(a), float(b)], None, [a, a],
            [2**64, 2**64 + 4], [a - (b - a), a]]  # fmt: skip


def safetensors_op_strategy(header: Dict[str, Any], data_len: int, header_len: int, file_len: int, names_pool: List[str]) -> tuple:
    """(semantic ops, raw ops) strategies for one safetensors file."""
    names = [n for n in header if n != "__metadata__"]
    t = st.integers(0, len(names) - 1)

    @_cached
    def set_for(i: int) -> st.SearchStrategy:
        h = header[names[i]]
        return st.one_of(
            st.builds(lambda v: {"op": "set", "t": i, "field": "dtype", "value": v}, st.one_of(st.sampled_from(_DTYPES), json_values())),
            st.builds(lambda v: {"op": "set", "t": i, "field": "shape", "value": v}, st.one_of(st.sampled_from(_shapes_like(list(h["shape"]))), json_values())),
            st.builds(lambda v: {"op": "set", "t": i, "field": "data_offsets", "value": v},
                      st.one_of(st.sampled_from(_offsets_like(list(h["data_offsets"]), data_len)), json_values())),
            st.builds(lambda f, v: {"op": "set", "t": i, "field": f, "value": v}, st.sampled_from(["extra", "DTYPE", "offsets"]), json_values()),
        )

    @_cached
    def reshape_for(i: int) -> st.SearchStrategy:
        shape = list(header[names[i]]["shape"])
        n = math.prod(shape)
        opts = [list(reversed(shape)), [n], shape + [1], [1] + shape, [1, n], [n, 1]]
        return st.sampled_from(opts).map(lambda s: {"op": "reshape", "t": i, "shape": s})

    semantic = _one_of(
        (st.builds(lambda i, d: {"op": "convert", "t": i, "dtype": d}, t, st.sampled_from(["F16", "BF16", "F64", "F32", "I8"])), 3),
        (st.builds(lambda i, f, e: {"op": "values", "t": i, "fill": f, "every": e}, t,
                   st.sampled_from(["nan", "inf", "-inf", "huge", "tiny", "zero", "big"]), st.integers(1, 64)), 3),
        (t.flatmap(reshape_for), 2),
        (t.flatmap(set_for), 6),
        (st.builds(lambda i, f: {"op": "del_field", "t": i, "field": f}, t, st.sampled_from(["dtype", "shape", "data_offsets"])), 1),
        (st.builds(lambda i, to: {"op": "rename", "t": i, "to": to}, t, st.one_of(st.sampled_from(names_pool), st.text(max_size=12))), 2),
        (st.builds(lambda i: {"op": "drop", "t": i}, t), 2),
        (st.builds(lambda nm, e: {"op": "add", "name": nm, "entry": e}, st.one_of(st.sampled_from(names_pool), st.text(max_size=10)),
                   st.one_of(json_values(), st.fixed_dictionaries({"dtype": st.sampled_from(_DTYPES), "shape": st.sampled_from(_shapes_like([4, 4])),
                                                                   "data_offsets": st.sampled_from(_offsets_like([0, 64], data_len))}))), 1),
        (st.builds(lambda v: {"op": "metadata", "value": v}, json_values()), 1),
        (st.builds(lambda nm, sh, dt: {"op": "add_empty", "name": nm, "shape": sh, "dtype": dt},
                   st.sampled_from(["model.layers.9.self_attn.x_proj.weight", "transformer.h.9.mlp.c_fc.weight", "model.layers.9.mlp.up_proj.weight",
                                    "extra.weight", "lm_head.weight"]),
                   st.sampled_from([[0], [0, 64], [64, 0], [0, 2**63], [0, 2**63], [2**63, 0], [0, 2**62], [0, 2**64 - 1], [0, 2**32, 2**32], [0, 0]]),
                   st.sampled_from(["F32", "BF16", "I8", "F16"])), 2),
        (st.just({"op": "nopad"}), 1),
    )
    raw = _one_of(
        (st.builds(lambda v: {"op": "header_len", "value": v}, st.sampled_from(
            [0, 1, 7, 8, header_len - 1, header_len + 1, header_len + 8, header_len - 8, 2**31, 2**32, 2**63, 2**64 - 1, file_len,
             file_len - 8, file_len - 7, 100_000_001, 99_999_999])), 2),
        (st.builds(lambda r, o, v: {"op": "byte", "region": r, "off": o, "value": v}, st.sampled_from(["len", "header", "data"]),
                   st.integers(0, 2**20), st.integers(0, 255)), 3),
        (st.builds(lambda r, o: {"op": "truncate", "region": r, "off": o}, st.sampled_from(["len", "header", "data"]), st.integers(0, 2**20)), 2),
        (st.builds(lambda h: {"op": "append", "hex": h}, st.sampled_from(["00", "ff" * 9, "7b7d", "00" * 4096])), 1),
        (st.builds(lambda o, ins: {"op": "splice_header", "region": "header", "off": o, "insert": ins}, st.integers(0, 2**16),
                   st.sampled_from(["ff", "00", "c3", "22", "7b", "5b", "2c22223a7b7d", "5c", "edb080", "2020"])), 2),
    )
    return semantic, raw


def _ops_pair(semantic: st.SearchStrategy, raw: st.SearchStrategy, max_sem: int = 3) -> st.SearchStrategy:
    """At least one op: semantic only, raw only, or both (consistent re-encodings first)."""
    order = {"convert": 0, "values": 0, "reshape": 0}
    sem = st.lists(semantic, min_size=1, max_size=max_sem).map(lambda ops: sorted(ops, key=lambda o: order.get(o["op"], 1)))
    rw = st.lists(raw, min_size=1, max_size=2)
    return _one_of(
        (st.tuples(sem, st.just([])), 3),
        (st.tuples(st.just([]), rw), 2),
        (st.tuples(sem, rw), 1),
    )


_ALL_NAMES: Dict[str, List[str]] = {}


def _names_pool(model: str) -> List[str]:
    if model not in _ALL_NAMES:
        names: List[str] = []
        for f in sorted((MODELS / model).glob("*.safetensors")):
            names += [n for n in _st_fixture(MODELS / model, f.name).header if n != "__metadata__"]
        _ALL_NAMES[model] = names + ["lm_head.weight", "model.layers.99.mlp.up_proj.weight", "transformer.h.0.attn.bias",
                                     "model.layers.9.self_attn.x_proj.weight", "transformer.h.9.mlp.c_fc.weight",
                                     "model.layers.0.self_attn.q_proj.weight_scale", "", "__metadata__"]
    return _ALL_NAMES[model]


def _safetensors_strategy() -> st.SearchStrategy:
    @_cached
    def for_file(model: str, file: str) -> st.SearchStrategy:
        info = _st_header(MODELS / model, file)
        file_len = (MODELS / model / file).stat().st_size
        sem, raw = safetensors_op_strategy(info["header"], info["data_len"], info["header_len"], file_len, _names_pool(model))
        return st.fixed_dictionaries({
            "model": st.just(model),
            "file": st.just(file),
            "ops": _ops_pair(sem, raw).map(list),
            "precision": st.sampled_from([None, None, "fp32", "bf16", "int8"]),
        })

    files = [(m, f.name) for m in MODEL_NAMES for f in sorted((MODELS / m).glob("*.safetensors"))]
    return st.sampled_from(files).flatmap(lambda mf: for_file(*mf))


def _safetensors_prepare(case: Dict[str, Any], ctx: Context) -> Callable[[], Any]:
    import ferrolm

    folder = ctx.fresh() / case["model"]
    link_folder(MODELS / case["model"], folder, skip=(case["file"],))
    sem, raw = case["ops"]
    (folder / case["file"]).write_bytes(mutate_safetensors((MODELS / case["model"] / case["file"]).read_bytes(), sem, raw))

    def call() -> None:
        exercise(ferrolm.load(folder, precision=case["precision"], threads=1, progress=False))

    return call


# -- surface: GGUF files -------------------------------------------------------------------------

_GGUF: Dict[str, Any] = {}


def _gguf_fixture() -> Dict[str, Any]:
    if not _GGUF:
        blob = GGUF_FIXTURE.read_bytes()
        g = Gguf.parse(blob)
        g.serialize()
        _GGUF.update(blob=blob, doc=g, fields=[k for k, (_, width) in g.fields.items() if width], header_end=g.fields["data"][0])
    return _GGUF


_GGUF_EXTRA_KEYS = ["llama.expert_count", "llama.rope.scaling.type", "llama.rope.scaling.factor", "general.alignment",
                    "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id", "tokenizer.ggml.unknown_token_id",
                    "tokenizer.ggml.padding_token_id", "tokenizer.ggml.add_eos_token", "llama.attention.value_length",
                    "general.architecture", "tokenizer.ggml.pre", "tokenizer.chat_template"]  # fmt: skip
_GGML_TYPES = [0, 1, 2, 3, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31,
               34, 35, 36, 39, 40, 41, 100, 2**31, 2**32 - 1]  # fmt: skip


@_cached
def _gguf_value(t: int) -> st.SearchStrategy:
    """A value for GGUF value type code `t` (out-of-range values are wrapped on writing)."""
    if t in (F32, F64):
        return floats()
    if t == BOOL:
        return st.sampled_from([True, False, 2, 255])
    if t == STRING:
        return st.one_of(texts(), st.sampled_from([{"$bytes": "ff"}, {"$bytes": "c3"}, {"$bytes": "00"}, {"$bytes": "eda080"}]))
    if t == ARRAY:
        return st.integers(0, 12).flatmap(lambda at: st.lists(_gguf_value(at) if at != ARRAY else st.just({"atype": 4, "items": []}), max_size=4)
                                          .map(lambda items: {"atype": at, "items": items}))
    if t > 12:
        return ints()
    return ints()


def _gguf_strategy() -> st.SearchStrategy:
    fx = _gguf_fixture()
    g: Gguf = fx["doc"]
    keys = [kv[0] for kv in g.kvs]
    types = {kv[0]: kv[1] for kv in g.kvs}
    arrays = [k for k in keys if types[k] == ARRAY]
    n_t = len(g.tensors)
    tensor_names = [t[0] for t in g.tensors] + ["blk.99.attn_q.weight", "blk.x.attn_q.weight", "blk.0.attn_q.bias", "blk.0.ffn_gate.bias",
                                                "rope_freqs.weight", "output.weight", "", "blk.0.attn_norm.bias", "blk.2.attn_k.weight"]

    @_cached
    def same_type(key: str) -> st.SearchStrategy:
        return _gguf_value(types[key]).map(lambda v: {"op": "set_kv", "key": key, "type": types[key], "value": v})

    @_cached
    def any_type(key: str) -> st.SearchStrategy:
        return st.sampled_from(list(range(13)) + [13, 99, 2**31]).flatmap(
            lambda t: _gguf_value(t).map(lambda v: {"op": "set_kv", "key": key, "type": t, "value": v}))

    @_cached
    def tensor_op(i: int) -> st.SearchStrategy:
        name, dims, ttype, off = g.tensors[i]
        dims_opts = [list(reversed(dims)), [d * 2 for d in dims], [0] + dims[1:], [2**32] + dims[1:], [2**63, 2], [], dims[:1],
                     dims + [1], dims + [2], [2**64 - 1] * len(dims), [dims[0] + 1] + dims[1:], [1] * 5]  # fmt: skip
        off_opts = [off + 1, off + 32, off - 32, 0, 2**40, 2**64 - 1, 2**63, off + 10**6, 31]
        return st.one_of(
            st.sampled_from(dims_opts).map(lambda d: {"op": "tensor", "t": i, "dims": d}),
            st.sampled_from(_GGML_TYPES).map(lambda ty: {"op": "tensor", "t": i, "type": ty}),
            st.sampled_from(off_opts).map(lambda o: {"op": "tensor", "t": i, "offset": o}),
            st.one_of(st.sampled_from(tensor_names), st.text(max_size=12)).map(lambda nm: {"op": "tensor", "t": i, "name": nm}),
        )

    sem = _one_of(
        (st.sampled_from(keys).flatmap(same_type), 6),
        (st.sampled_from(keys + _GGUF_EXTRA_KEYS).flatmap(any_type), 3),
        (st.sampled_from(keys).map(lambda k: {"op": "del_kv", "key": k}), 2),
        (st.builds(lambda k, n: {"op": "array", "key": k, "mode": "truncate", "n": n}, st.sampled_from(arrays), st.integers(0, 400)), 1),
        (st.builds(lambda k, n, v: {"op": "array", "key": k, "mode": "set", "n": n, "value": v}, st.sampled_from(arrays), st.integers(0, 400),
                   st.one_of(texts(), ints(), st.sampled_from([{"$bytes": "ff"}, "a b c", "a", " ", "<|endoftext|>"]))), 2),
        (st.builds(lambda k, v: {"op": "array", "key": k, "mode": "append", "value": v}, st.sampled_from(arrays), st.one_of(texts(), ints())), 1),
        (st.builds(lambda k, v: {"op": "array", "key": k, "mode": "atype", "value": v}, st.sampled_from(arrays), st.sampled_from(list(range(13)) + [99])), 1),
        (st.integers(0, n_t - 1).flatmap(tensor_op), 6),
        (st.integers(0, n_t - 1).map(lambda i: {"op": "drop_tensor", "t": i}), 1),
        (st.integers(0, n_t - 1).map(lambda i: {"op": "dup_tensor", "t": i}), 1),
        (st.sampled_from([0, 1, 2, 4, 2**31, 2**32 - 1]).map(lambda v: {"op": "version", "value": v}), 1),
        (st.sampled_from([0, 1, 2, 3, 7, 8, 16, 64, 4096, 2**31, 2**32 - 1]).map(lambda v: {"op": "alignment", "value": v}), 1),
        (st.builds(lambda o, v: {"op": "data", "off": o, "value": v}, st.integers(0, 2**20), st.integers(0, 255)), 1),
    )
    raw = _one_of(
        (st.builds(lambda n, v: {"op": "field", "name": n, "value": v}, st.sampled_from(fx["fields"]), st.one_of(st.sampled_from(INTERESTING_INTS), st.integers(0, 2**64 - 1))), 6),
        (st.builds(lambda o, v: {"op": "byte", "off": o, "value": v}, st.integers(0, fx["header_end"] - 1), st.integers(0, 255)), 2),
        (st.builds(lambda o: {"op": "truncate", "off": o}, st.one_of(st.integers(0, fx["header_end"]), st.integers(0, len(fx["blob"])))), 2),
        (st.builds(lambda h: {"op": "append", "hex": h}, st.sampled_from(["00", "ff" * 9, "00" * 64])), 1),
    )
    return st.fixed_dictionaries({"ops": _ops_pair(sem, raw).map(list), "precision": st.sampled_from([None, None, "fp32", "bf16", "int8"])})


def _gguf_prepare(case: Dict[str, Any], ctx: Context) -> Callable[[], Any]:
    import ferrolm

    path = ctx.fresh() / "model.gguf"
    sem, raw = case["ops"]
    path.write_bytes(mutate_gguf(_gguf_fixture()["blob"], sem, raw))

    def call() -> None:
        exercise(ferrolm.load(path, precision=case["precision"], threads=1, progress=False))

    return call


# -- surface: PEFT LoRA adapters -----------------------------------------------------------------

LORA_ADAPTERS = {
    "tiny-llama-lora-attn": ["tiny-llama", "tiny-llama@int8", "tiny-llama@bf16", "gguf"],
    "tiny-llama-lora-mlp": ["tiny-llama", "tiny-llama@int8", "gguf@int8"],
    "tiny-gpt2-lora": ["tiny-gpt2", "tiny-gpt2@int8", "tiny-gpt2@bf16"],
    "tiny-qwen2-lora": ["tiny-qwen2", "tiny-qwen2@bf16"],
}
_LORA_SPECIAL = {
    "target_modules": [-7, 7.5, True, False, 0, None, "q_proj", "", [], [1, 2], [["q_proj"]], {"q_proj": 1}, ["q_proj", None], "all-linear"],
    "use_rslora": ["q_proj", 1.0, 0, 1, "false", "true", [], {}, None, 0.0, "", 2],
    "r": [0, -1, -4, 2**31, 2**63, 2**64, 4.0, 8.0, True, False, "4", None, 1e308, [4], 3, 5, 64],
    "lora_alpha": [math.nan, math.inf, -math.inf, "16", True, None, 1e308, -16, 0, 0.0, [16], 2**1100],
    "bias": ["all", "lora_only", None, 0, False, "", "None", ["none"]],
    "peft_type": ["LORA ", "lora", "PROMPT_TUNING", "LOHA", None, 5, "", ["LORA"]],
    "use_dora": [True, "yes", 1, 0, "", [], None, 0.0],
    "rank_pattern": [{"q_proj": 2}, [], "", 0, None, {"": 0}, [["q_proj", 2]]],
    "alpha_pattern": [{"q_proj": 2}, [], "", 0, None, 1.5],
}  # fmt: skip
_LORA_KEYS = list(_LORA_SPECIAL) + ["fan_in_fan_out", "modules_to_save", "layers_to_transform", "lora_dropout", "task_type",
                                    "init_lora_weights", "base_model_name_or_path", "layers_pattern", "exclude_modules"]  # fmt: skip


def invalid_lora_config(cfg: Any) -> Optional[str]:
    """Why an adapter_config.json is invalid by the types of the fields ferrolm reads, or None."""
    if not isinstance(cfg, dict):
        return None
    checks: Dict[str, Callable[[Any], bool]] = {
        "peft_type": lambda v: v == "LORA",
        "r": _pos_int,
        "lora_alpha": _finite,
        "use_rslora": _opt(lambda v: isinstance(v, bool)),
        "use_dora": _opt(lambda v: isinstance(v, bool)),
        "target_modules": _opt(lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v))),
        "rank_pattern": _opt(lambda v: isinstance(v, dict)),
        "alpha_pattern": _opt(lambda v: isinstance(v, dict)),
        "bias": lambda v: v == "none",
    }
    for key, ok in checks.items():
        v = cfg.get(key, _MISSING)
        if v is not _MISSING and not ok(v):
            return f"{key}={_show(v)}"
    return None


def _lora_tensor_names(adapter: str) -> List[str]:
    return [n for n in _st_fixture(ADAPTERS / adapter, "adapter_model.safetensors").header if n != "__metadata__"]


def _adapter_names_pool(adapter: str) -> List[str]:
    names = _lora_tensor_names(adapter)
    out = list(names)
    for n in names[:4]:
        out += [n.replace("base_model.model.", ""), n.replace("lora_A", "lora_C"), n.replace(".weight", ".bias"),
                n.replace("lora_A.weight", "lora_A.default.weight"), n.replace("layers.0", "layers.99"), n.replace("h.0", "h.99"),
                n.replace("q_proj", "x_proj").replace("c_attn", "c_xyz"), n + ".extra", n.replace("lora_B", "lora_embedding_B"),
                n.replace("self_attn.q_proj", "embed_tokens").replace("attn.c_attn", "wte")]
    return out + ["base_model.model.lm_head.lora_A.weight", "base_model.model.model.embed_tokens.lora_A.weight", "", "prompt_embeddings"]


def _lora_strategy() -> st.SearchStrategy:
    @_cached
    def for_adapter(adapter: str) -> st.SearchStrategy:
        doc = _load_json(ADAPTERS / adapter / "adapter_config.json")
        info = _st_header(ADAPTERS / adapter, "adapter_model.safetensors")
        file_len = (ADAPTERS / adapter / "adapter_model.safetensors").stat().st_size
        sem, raw = safetensors_op_strategy(info["header"], info["data_len"], info["header_len"], file_len, _adapter_names_pool(adapter))
        key = st.sampled_from(_LORA_KEYS)
        special = key.flatmap(lambda k: st.sampled_from(_LORA_SPECIAL.get(k, [None])).map(lambda v: {"op": "set", "path": [k], "value": v}))
        cfg_ops = _one_of((special, 5), (json_op_strategy(doc, _LORA_KEYS, depth=2), 4))
        return st.fixed_dictionaries({
            "adapter": st.just(adapter),
            "model": st.sampled_from(LORA_ADAPTERS[adapter]),
            "rank": _one_of((st.none(), 6), (st.sampled_from([1, 2, 3, 5, 8, 16, 64]), 1)),
            "config_ops": _one_of((st.lists(cfg_ops, min_size=1, max_size=3), 3), (st.just([]), 2)),
            "config_text_ops": _one_of((st.just([]), 12), (st.lists(text_op_strategy(), min_size=1, max_size=2), 1)),
            "tensor_ops": _one_of((_ops_pair(sem, raw, max_sem=2).map(list), 2), (st.just([[], []]), 3)),
            "merged": st.booleans(),
            "scale": _one_of((st.just(1.0), 6), (st.sampled_from([0.0, -1.0, 0.5, 2, math.nan, math.inf, 1e39, 1e308, "1", True, None]), 1)),
            "api": _one_of((st.just("load_lora"), 8), (st.just("read_lora"), 1), (st.just("lora_stats"), 1)),
        })

    return st.sampled_from(sorted(LORA_ADAPTERS)).flatmap(for_adapter)


def _rerank(blob: bytes, r: int) -> bytes:
    """The adapter with every A [r0, in] / B [out, r0] tiled or cut to rank r (a consistent file)."""
    st_ = SafeTensors.parse(blob)
    arrays = {}
    for name in st_.names():
        h = st_.header[name]
        a, b = h["data_offsets"]
        v = np.frombuffer(st_.data[a:b], "<f4").reshape(h["shape"])
        if ".lora_A." in name:
            v = np.resize(v, (r, v.shape[1]))
        elif ".lora_B." in name:
            v = np.resize(v.T, (r, v.shape[0])).T
        arrays[name] = np.ascontiguousarray(v, dtype="<f4")
    header: Dict[str, Any] = {}
    data = bytearray()
    for name, v in arrays.items():
        raw = v.tobytes()
        header[name] = {"dtype": "F32", "shape": list(v.shape), "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    return SafeTensors(header, bytes(data)).serialize()


def _write_adapter(src: Path, dest: Path, case: Dict[str, Any], extra_cfg: Optional[Dict[str, Any]] = None) -> Any:
    """Writes the mutated adapter folder; returns the mutated config (None if its text was mutated)."""
    dest.mkdir(parents=True)
    doc = _load_json(src / "adapter_config.json")
    blob = (src / "adapter_model.safetensors").read_bytes()
    if extra_cfg:
        doc.update(extra_cfg)
    doc = apply_json_ops(doc, case["config_ops"])
    (dest / "adapter_config.json").write_bytes(apply_text_ops(dump_json(doc), case["config_text_ops"]))
    return doc, blob


def _lora_prepare(case: Dict[str, Any], ctx: Context) -> Callable[[], Any]:
    import ferrolm

    src = ADAPTERS / case["adapter"]
    folder = ctx.fresh() / case["adapter"]
    extra = {"r": case["rank"]} if case["rank"] else None
    doc, blob = _write_adapter(src, folder, case, extra)
    if case["rank"]:
        blob = _rerank(blob, case["rank"])
    sem, raw = case["tensor_ops"]
    (folder / "adapter_model.safetensors").write_bytes(mutate_safetensors(blob, sem, raw) if (sem or raw) else blob)
    reason = None if case["config_text_ops"] else invalid_lora_config(doc)
    scale = decode(case["scale"])

    def call() -> None:
        if case["api"] == "read_lora":
            ferrolm.read_lora(folder)
            if reason:
                raise Violation("accepted-invalid", f"read_lora: adapter_config.json {reason} was accepted")
            return
        if case["api"] == "lora_stats":
            ferrolm.lora_stats(folder).format()
            if reason:
                raise Violation("accepted-invalid", f"lora_stats: adapter_config.json {reason} was accepted")
            return
        m = ctx.model(case["model"])
        name = ctx.unique("lora")
        try:
            m.load_lora(folder, name=name, merged=case["merged"], scale=scale)
            try:
                if case["merged"]:
                    m.set_adapter(name)
                    check_result(m, m.generate(_ids(m, [1, 2, 3]), max_new_tokens=2, seed=0), 2, 3)
                else:
                    check_result(m, m.generate(_ids(m, [1, 2, 3]), max_new_tokens=2, seed=0, adapter=name), 2, 3)
            except ferrolm.FerrolmError:
                if not reason:
                    raise
            if reason:
                raise Violation("accepted-invalid", f"load_lora: adapter_config.json {reason} was accepted")
        finally:
            try:
                m.set_adapter(None)
                for n in list(m.adapters):
                    m.remove_adapter(n)
            except BaseException:
                ctx.drop_model(case["model"])  # a fresh copy for the next case
                raise

    return call


# -- surface: prompt-tuning adapters (soft prompts) -------------------------------------------

_PT = ADAPTERS / "tiny-llama-prompt-tuning"
_PT_SPECIAL = {
    "num_virtual_tokens": [0, -1, 8.0, "8", True, False, 2**31, 2**64, 4, 16, None, [8], 9, 7],
    "num_transformer_submodules": [0, -1, 2, "1", 1.5, True, [1], {}, None, 2**40, math.nan],
    "peft_type": ["LORA", "prompt_tuning", None, 3, "PROMPT_TUNING ", ["PROMPT_TUNING"]],
    "token_dim": [0, -64, 128, "64", 64.0, None, 2**40],
}  # fmt: skip


def invalid_prompt_config(cfg: Any) -> Optional[str]:
    if not isinstance(cfg, dict):
        return None
    checks = {
        "peft_type": lambda v: v == "PROMPT_TUNING",
        "num_virtual_tokens": _opt(_pos_int),
        "num_transformer_submodules": _opt(_pos_int),
    }
    for key, ok in checks.items():
        v = cfg.get(key, _MISSING)
        if v is not _MISSING and not ok(v):
            return f"{key}={_show(v)}"
    return None


def _soft_prompt_strategy() -> st.SearchStrategy:
    doc = _load_json(_PT / "adapter_config.json")
    info = _st_header(_PT, "adapter_model.safetensors")
    file_len = (_PT / "adapter_model.safetensors").stat().st_size
    pool = ["prompt_embeddings", "embeddings", "prompt_embeddings.weight", "", "base_model.model.prompt_embeddings", "lora_A"]
    sem, raw = safetensors_op_strategy(info["header"], info["data_len"], info["header_len"], file_len, pool)
    key = st.sampled_from(list(_PT_SPECIAL) + ["num_layers", "num_attention_heads", "task_type", "prompt_tuning_init"])
    special = key.flatmap(lambda k: st.sampled_from(_PT_SPECIAL.get(k, [None, 0, "x"])).map(lambda v: {"op": "set", "path": [k], "value": v}))
    return st.fixed_dictionaries({
        "model": st.sampled_from(["tiny-llama", "tiny-llama", "tiny-gpt2", "tiny-qwen2", "gguf", "tiny-llama@int8"]),
        "rows": _one_of((st.none(), 4), (st.sampled_from([1, 2, 7, 64, 126, 127, 128, 129, 1000]), 1)),
        "sync_rows": st.booleans(),
        "config_ops": _one_of((st.lists(_one_of((special, 5), (json_op_strategy(doc, list(_PT_SPECIAL), depth=2), 3)), min_size=1, max_size=3), 3),
                              (st.just([]), 2)),
        "config_text_ops": _one_of((st.just([]), 12), (st.lists(text_op_strategy(), min_size=1, max_size=2), 1)),
        "tensor_ops": _one_of((_ops_pair(sem, raw, max_sem=2).map(list), 2), (st.just([[], []]), 3)),
        "prompt": st.one_of(st.lists(st.integers(0, 383), min_size=1, max_size=6), st.sampled_from(["Once upon", "a", " "]),
                            st.lists(st.integers(0, 383), min_size=120, max_size=130)),
        "api": st.sampled_from(["generate", "logits"]),
    })


def _soft_prompt_prepare(case: Dict[str, Any], ctx: Context) -> Callable[[], Any]:
    import ferrolm

    folder = ctx.fresh() / "soft-prompt"
    extra = {"num_virtual_tokens": case["rows"]} if case["rows"] and case["sync_rows"] else None
    doc, blob = _write_adapter(_PT, folder, case, extra)
    if case["rows"]:
        emb = np.random.default_rng(case["rows"]).standard_normal((case["rows"], 64)).astype("<f4")
        raw = emb.tobytes()
        blob = SafeTensors({"prompt_embeddings": {"dtype": "F32", "shape": [case["rows"], 64], "data_offsets": [0, len(raw)]}}, raw).serialize()
    sem, raw_ops = case["tensor_ops"]
    (folder / "adapter_model.safetensors").write_bytes(mutate_safetensors(blob, sem, raw_ops) if (sem or raw_ops) else blob)
    reason = None if case["config_text_ops"] else invalid_prompt_config(doc)

    def call() -> None:
        m = ctx.model(case["model"])
        name = m.load_soft_prompt(folder, name=ctx.unique("sp"))
        try:
            prompt = case["prompt"] if isinstance(case["prompt"], str) else _ids(m, case["prompt"])
            if case["api"] == "generate":
                r = m.generate(prompt, max_new_tokens=2, seed=0, soft_prompt=name)
                check_result(m, r, 2, len(r.prompt_tokens) + m.soft_prompts[name])
            else:
                ids = prompt if isinstance(prompt, list) else m.tokenize(prompt)
                out = m.logits(ids, soft_prompt=name)
                if out.shape != (len(ids), m.vocab_size):
                    raise Violation("invariant", f"logits of shape {out.shape} for {len(ids)} tokens")
        except ferrolm.FerrolmError:
            if not reason:
                raise
        if reason:
            raise Violation("accepted-invalid", f"load_soft_prompt: adapter_config.json {reason} was accepted")

    return call


# -- surface: tokenizer.json -------------------------------------------------------------------

_COMPONENTS = {
    "normalizer": [{"type": "Lowercase"}, {"type": "NFKC"}, {"type": "Replace", "pattern": {"Regex": "(?!"}, "content": "x"},
                   {"type": "Replace", "pattern": {"String": ""}, "content": "xx"}, {"type": "Sequence", "normalizers": [{"type": "Strip"}]},
                   {"type": "Precompiled", "precompiled_charsmap": "AAAA"}, {"type": "Prepend", "prepend": "\u2581" * 50},
                   {"type": "Replace", "pattern": {"Regex": "a{1000000}"}, "content": ""}, {"type": "BertNormalizer"}],
    "pre_tokenizer": [{"type": "Split", "pattern": {"Regex": "(?!"}, "behavior": "Isolated", "invert": False},
                      {"type": "Split", "pattern": {"Regex": ""}, "behavior": "Removed", "invert": True}, {"type": "Whitespace"},
                      {"type": "Metaspace", "replacement": "", "prepend_scheme": "always", "split": True},
                      {"type": "Digits", "individual_digits": True}, {"type": "Sequence", "pretokenizers": []},
                      {"type": "ByteLevel", "add_prefix_space": "yes"}, {"type": "Punctuation", "behavior": "Nope"}],
    "decoder": [{"type": "WordPiece", "prefix": "", "cleanup": True}, {"type": "Metaspace", "replacement": "\u2581"},
                {"type": "ByteFallback"}, {"type": "Fuse"}, {"type": "Strip", "content": " ", "start": 2**40, "stop": 0},
                {"type": "CTC"}, {"type": "Sequence", "decoders": [{"type": "Replace", "pattern": {"String": ""}, "content": "x"}]}],
    "post_processor": [{"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|nope|>", "type_id": 0}}], "pair": [],
                        "special_tokens": {}},
                       {"type": "TemplateProcessing", "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                        "pair": [], "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [2**31], "tokens": ["<|endoftext|>"]}}},
                       {"type": "BertProcessing", "sep": ["x", 2**40], "cls": ["y", -1]}, {"type": "ByteLevel", "trim_offsets": 3}],
    "truncation": [{"direction": "Right", "max_length": 0, "strategy": "LongestFirst", "stride": 5},
                   {"direction": "Left", "max_length": 2**64 - 1, "strategy": "OnlyFirst", "stride": 2**63}],
    "padding": [{"strategy": {"Fixed": 2**40}, "direction": "Right", "pad_to_multiple_of": 0, "pad_id": 2**33, "pad_type_id": 0, "pad_token": "x"},
                {"strategy": "BatchLongest", "direction": "Left", "pad_to_multiple_of": None, "pad_id": 0, "pad_type_id": 0, "pad_token": "[PAD]"}],
    "model": [{"type": "WordPiece", "unk_token": "zz", "continuing_subword_prefix": "##", "max_input_chars_per_word": 2**64, "vocab": {"a": 0}},
              {"type": "Unigram", "unk_id": 5, "vocab": [["a", math.nan], ["b", -1.0]], "byte_fallback": True},
              {"type": "WordLevel", "vocab": {"a": 2**40}, "unk_token": "b"}, {"type": "BPE", "vocab": {}, "merges": [["a", "b"]]}],
}  # fmt: skip


def _tokenizer_strategy() -> st.SearchStrategy:
    doc = _load_json(MODELS / "tiny-llama" / "tokenizer.json")
    paths = json_paths(doc, max_depth=4, max_items=16)
    component = st.sampled_from(sorted(_COMPONENTS)).flatmap(
        lambda k: st.sampled_from(_COMPONENTS[k]).map(lambda v: {"op": "set", "path": [k], "value": v}))
    model_fields = st.sampled_from(["dropout", "unk_token", "byte_fallback", "fuse_unk", "ignore_merges", "continuing_subword_prefix",
                                    "end_of_word_suffix", "type"]).flatmap(
        lambda k: st.one_of(json_values(), st.sampled_from([1.5, -0.5, "zzz", True, "WordPiece", "Unigram", None])).map(
            lambda v: {"op": "set", "path": ["model", k], "value": v}))
    vocab_ops = st.builds(lambda tok, v: {"op": "set", "path": ["model", "vocab", tok], "value": v},
                          st.one_of(st.sampled_from(["!", "a", "<|endoftext|>", "Ġ", ""]), st.text(max_size=4)),
                          st.one_of(st.sampled_from([0, 383, 384, 2**31, 2**32, -1, 10**6, None, "1", 1.5]), ints()))
    merge_ops = st.builds(lambda i, v: {"op": "set", "path": ["model", "merges", i], "value": v}, st.integers(0, 126),
                          st.one_of(st.sampled_from(["a", "a b c", "", " ", ["a"], ["a", "b", "c"], 5, None, ["Ġ", "zzz"]]), json_values()))
    added = st.builds(lambda f, v: {"op": "set", "path": ["added_tokens", 0, f], "value": v},
                      st.sampled_from(["id", "content", "special", "normalized", "lstrip", "single_word"]),
                      st.one_of(st.sampled_from([2**31, 384, -1, "", "a", True, None, 10**6]), json_values()))
    add_token = st.builds(lambda i, c: {"op": "append", "path": ["added_tokens"], "value": {"id": i, "content": c, "single_word": False, "lstrip": False,
                                                                                          "rstrip": False, "normalized": False, "special": True}},
                          st.sampled_from([0, 1, 383, 384, 385, 1000, 2**31, 2**32 - 1]), st.one_of(st.sampled_from(["", "a", "<x>", "!"]), st.text(max_size=5)))
    generic = st.builds(lambda p, v: {"op": "set", "path": p, "value": v}, st.sampled_from(paths), json_values())
    delete = st.sampled_from(paths).map(lambda p: {"op": "del", "path": p})
    op = _one_of((component, 5), (model_fields, 2), (vocab_ops, 3), (merge_ops, 2), (added, 2), (add_token, 2), (generic, 3), (delete, 2))
    return st.fixed_dictionaries({
        "ops": st.lists(op, min_size=1, max_size=3),
        "text_ops": _one_of((st.just([]), 10), (st.lists(text_op_strategy(), min_size=1, max_size=2), 1)),
        "text": st.one_of(st.text(max_size=20), st.sampled_from(["Hello world", "<|endoftext|>", "a" * 50, "\u2581x", "\x00", "日本語 ok"])),
        "ids": st.lists(st.integers(0, 383), max_size=6),
    })


def _tokenizer_prepare(case: Dict[str, Any], ctx: Context) -> Callable[[], Any]:
    import ferrolm

    folder = ctx.fresh() / "tiny-llama"
    link_folder(MODELS / "tiny-llama", folder, skip=("tokenizer.json",))
    doc = apply_json_ops(_load_json(MODELS / "tiny-llama" / "tokenizer.json"), case["ops"])
    (folder / "tokenizer.json").write_bytes(apply_text_ops(dump_json(doc), case["text_ops"]))

    def call() -> None:
        m = ferrolm.load(folder, threads=1, progress=False)
        m.tokenize(case["text"])
        m.detokenize(case["ids"])
        if case["text"]:
            try:
                r = m.generate(case["text"], max_new_tokens=3, seed=0, stop=["\n"])
            except (ferrolm.InvalidArgumentError, ferrolm.ContextLengthError):
                pass  # text that encodes to nothing or too much
            else:
                check_result(m, r, 3, len(r.prompt_tokens), ("\n",))
        check_result(m, m.generate(_ids(m, [1, 2]), max_new_tokens=3, seed=0), 3, 2)

    return call


# -- surface: chat templates ----------------------------------------------------------------

_ROLES = ["user", "assistant", "system", "tool", "", "USER", "ipython"]


def _messages() -> st.SearchStrategy:
    content = st.one_of(st.text(max_size=12), st.none(), st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "image"]), "text": st.text(max_size=6)}), max_size=2),
                        st.sampled_from(["", "{{ 7 * 7 }}", "<|im_end|>", "a" * 200]), json_values(max_leaves=3))
    message = st.fixed_dictionaries({"role": st.one_of(st.sampled_from(_ROLES), json_values(max_leaves=2)), "content": content},
                                    optional={"tool_calls": json_values(max_leaves=3), "name": st.text(max_size=5)})
    return _one_of(
        (st.lists(message, min_size=1, max_size=4), 8),
        (st.lists(st.one_of(message, json_values(max_leaves=2)), max_size=3), 1),
        (json_values(max_leaves=3), 1),
    )


def _chat_strategy() -> st.SearchStrategy:
    return st.fixed_dictionaries({
        "template": templates.templates(),
        "where": st.sampled_from(["tokenizer_config", "tokenizer_config", "jinja_file", "named_list"]),
        "special": st.fixed_dictionaries({}, optional={"bos_token": st.one_of(st.text(max_size=6), json_values(max_leaves=2)),
                                                       "eos_token": st.one_of(st.sampled_from(["<|endoftext|>", "</s>"]), json_values(max_leaves=2))}),
        "messages": _messages(),
        "add_generation_prompt": st.one_of(st.booleans(), st.sampled_from([None, 1, "yes"])),
        "kwargs": st.fixed_dictionaries({}, optional={"tools": json_values(max_leaves=3), "documents": json_values(max_leaves=3),
                                                      "extra_var": json_values(max_leaves=2)}),
        "generate": st.booleans(),
    })


def _chat_prepare(case: Dict[str, Any], ctx: Context) -> Callable[[], Any]:
    import ferrolm

    folder = ctx.fresh() / "tiny-llama"
    link_folder(MODELS / "tiny-llama", folder, skip=("tokenizer_config.json",))
    source = case["template"].replace("CANARY", str(ctx.canary))
    tok_cfg = _load_json(MODELS / "tiny-llama" / "tokenizer_config.json")
    tok_cfg.update({k: decode(v) for k, v in case["special"].items()})
    if case["where"] == "jinja_file":
        (folder / "chat_template.jinja").write_text(source, encoding="utf-8", errors="surrogatepass")
    elif case["where"] == "named_list":
        tok_cfg["chat_template"] = [{"name": "default", "template": source}, {"name": "tool_use", "template": "x"}]
    else:
        tok_cfg["chat_template"] = source
    (folder / "tokenizer_config.json").write_bytes(dump_json(tok_cfg))
    messages = decode(case["messages"])
    kwargs = {k: decode(v) for k, v in case["kwargs"].items()}
    if ctx.canary.exists():
        ctx.canary.unlink()

    def escaped(text: Any) -> None:
        if ctx.canary.exists():
            raise Violation("escape", "the chat template created a file outside the sandbox")
        if ctx.secret and isinstance(text, str) and ctx.secret in text:
            raise Violation("escape", "the chat template read the process environment")

    def call() -> None:
        m = ferrolm.load(folder, threads=1, progress=False)
        try:
            text = m.apply_chat_template(messages, add_generation_prompt=case["add_generation_prompt"], **kwargs)
        finally:
            escaped(None)
        escaped(text)
        if not isinstance(text, str):
            raise Violation("invariant", f"apply_chat_template returned {type(text).__name__}")
        if case["generate"]:
            try:
                r = m.chat(messages, max_new_tokens=2, seed=0)
            except (ferrolm.InvalidArgumentError, ferrolm.ContextLengthError):
                return  # an empty or too long rendering
            check_result(m, r, 2, len(r.prompt_tokens))
            escaped(r.text)

    return call


# -- surface: generation options -----------------------------------------------------------

_HOSTILE = [None, True, False, "1", "", [], {}, [1], math.nan, math.inf, -math.inf, 2**64, -1, 1e39, -(2**63), {"$object": None},
            {"$np": "float32", "v": math.nan}, {"$np": "int64", "v": 3}, {"$tuple": [1]}, {"$bytes": "00"}, 0.5]  # fmt: skip
_VOCAB = 384


def _knob(valid: st.SearchStrategy, edge: list) -> st.SearchStrategy:
    return _one_of((valid, 6), (st.sampled_from(edge), 2), (st.sampled_from(_HOSTILE), 1))


def _bad_id() -> st.SearchStrategy:
    return st.sampled_from([_VOCAB, _VOCAB + 1, -1, 2**31, 2**32, 2**63, 2**64, True, 1.5, "1", None, {"$np": "int64", "v": -5},
                            {"$np": "uint64", "v": 2**64 - 1}])  # fmt: skip


def _options() -> st.SearchStrategy:
    token = st.one_of(st.integers(0, _VOCAB - 1), st.integers(0, _VOCAB - 1), _bad_id())
    return st.fixed_dictionaries({}, optional={
        "max_new_tokens": _knob(st.integers(1, 6), [0, 127, 128, 129, 10**6, 2**31, 2**63, 2**64]),
        "min_new_tokens": _knob(st.integers(0, 6), [-1, 7, 128, 2**31, 2**63]),
        "do_sample": _knob(st.booleans(), [None, 0, 1]),
        "temperature": _knob(st.floats(0, 3), [0, 1e-30, 1e-46, 1e30, 1e39, 3.4e38, 1e-5, None, 5e-324]),
        "top_k": _knob(st.integers(0, 400), [1, 383, 384, 385, 2**31, 2**32, 2**63, 2**64 - 1, 2**64, 2**70]),
        "top_p": _knob(st.floats(1e-9, 1.0), [1e-45, 1e-46, 1.0, 5e-324, 0.0, 1.0000001]),
        "min_p": _knob(st.floats(0.0, 1.0), [1e-46, 1.0, 0.999999, 5e-324]),
        "repetition_penalty": _knob(st.floats(0.01, 5.0), [1e-46, 1e-30, 1e30, 1e39, 3.4e38, 5e-324]),
        "frequency_penalty": _knob(st.floats(-5.0, 5.0), [1e39, -1e39, 3.4e38, -3.4e38, 1e30]),
        "presence_penalty": _knob(st.floats(-5.0, 5.0), [1e39, -1e39, 3.4e38, -3.4e38, 1e30]),
        "logit_bias": _one_of(
            (st.lists(st.tuples(token, _knob(st.floats(-100, 100), [math.inf, -math.inf, math.nan, 1e39, -1e39, 3e38])).map(list), max_size=4)
             .map(lambda kv: {"$intkeys": kv}), 6),
            (st.sampled_from([{"$intkeys": [[t, -math.inf] for t in range(_VOCAB)]}, {"1": 2.0}, [[1, 2.0]], "x", 5]), 1),
            (st.sampled_from(_HOSTILE), 1)),
        "stop": _knob(st.one_of(st.lists(st.text(min_size=1, max_size=4), max_size=3), st.text(min_size=1, max_size=3)),
                      ["", [""], [1], ["\n"], "\n", ["a" * 1000], {"$tuple": ["a"]}, ["\ud800"]]),
        "seed": _knob(st.integers(0, 2**64 - 1), [-1, 2**64, 2**64 - 1, 2**63, 0]),
        "ignore_eos": _knob(st.booleans(), [0, 1, None]),
        "eos_token_id": _knob(st.one_of(st.integers(0, _VOCAB - 1), st.lists(st.integers(0, _VOCAB - 1), max_size=3)),
                              [_VOCAB, 2**31, 2**32, 2**40, 2**64 - 1, -1, [2**40], [_VOCAB, 0], [], {"$tuple": [2**33]}, [True]]),
        "max_tokens": st.sampled_from([1, None]),
        "typical_p": st.sampled_from([0.5]),
    })


def _prompt() -> st.SearchStrategy:
    good = st.lists(st.integers(0, _VOCAB - 1), min_size=1, max_size=8)
    return _one_of(
        (good, 5),
        (st.text(min_size=1, max_size=20), 3),
        (st.lists(st.one_of(st.integers(0, _VOCAB - 1), _bad_id()), min_size=0, max_size=5), 2),
        (st.builds(lambda dt, v: {"$np": dt, "v": v}, st.sampled_from(["int64", "int32", "uint8", "uint64", "float32", "int8", "int16"]),
                   st.lists(st.integers(0, 127), max_size=5)), 1),
        (good.map(lambda v: {"$tuple": v}), 1),
        (st.lists(st.integers(0, _VOCAB - 1), min_size=125, max_size=140), 1),
        (texts(), 1),
        (st.sampled_from(_HOSTILE + [[[1, 2]], ""]), 1),
    )


_GEN_MODELS = ["tiny-llama", "tiny-gpt2", "tiny-qwen2", "gguf", "tiny-llama@int8", "tiny-llama@bf16"]
_NAMES = [None, "attn", "pt", "nope", 1, "", {"$tuple": ["attn"]}]


def _generation_strategy() -> st.SearchStrategy:
    model = st.sampled_from(_GEN_MODELS)
    name = st.sampled_from(_NAMES + ["$absent"] * 4)
    generate = st.fixed_dictionaries({
        "action": st.just("generate"), "model": model, "prompt": _prompt(),
        "mode": st.sampled_from(["kwargs", "kwargs", "config", "both", "stream", "bad_config"]),
        "options": _options(), "config": _options(), "adapter": name, "soft_prompt": name,
    })
    chat = st.fixed_dictionaries({"action": st.just("chat"), "model": model, "messages": _messages(), "options": _options(),
                                  "stream": st.booleans()})
    logits = st.fixed_dictionaries({"action": st.just("logits"), "model": model, "ids": _prompt(), "adapter": name, "soft_prompt": name})
    tokens = st.fixed_dictionaries({"action": st.just("tokens"), "model": model, "text": st.one_of(texts(), st.sampled_from(_HOSTILE)),
                                    "ids": _prompt(), "flag": st.sampled_from([True, False, None, 1, "no"])})
    config = st.fixed_dictionaries({"action": st.just("config"), "fields": _options().map(lambda o: {k: v for k, v in o.items() if k not in ("max_tokens", "typical_p")}),
                                    "replace": _options()})
    load = st.fixed_dictionaries({
        "action": st.just("load"),
        "path": st.sampled_from(["model", "gguf", "missing", "empty_dir", "text_file", "bin_only", "garbage.gguf", "config_only", "gguf_dir"]),
        "as": st.sampled_from(["str", "str", "path", "bytes", "int", "none"]),
        "kwargs": st.fixed_dictionaries({}, optional={
            "precision": st.sampled_from([None, "fp32", "bf16", "int8", "FP32", "fp16", "int4", "", 1, True]),
            "device": st.sampled_from(["cpu", "cuda", "CPU", "", None, 0]),
            "threads": st.sampled_from([None, 1, 2, 0, -1, 1024, 1025, 2**31, 2**64, True, 1.5, "2"]),
            "context_length": st.sampled_from([None, 1, 2, 64, 127, 128, 129, 0, -1, 2**31, 2**64, True, 1.0, "8"]),
            "progress": st.sampled_from([None, False, 0, "yes"]),
        }),
    })
    return _one_of((generate, 12), (chat, 2), (logits, 2), (tokens, 1), (config, 2), (load, 1))


def _gen_model(ctx: Context, key: str) -> Any:
    m = ctx.model(key)
    if key == "tiny-llama" and "attn" not in m.adapters:
        m.load_lora(ADAPTERS / "tiny-llama-lora-attn", name="attn", merged=False)
        m.load_soft_prompt(_PT, name="pt")
    return m


def _call_kwargs(case: Dict[str, Any]) -> Dict[str, Any]:
    out = {}
    for k in ("adapter", "soft_prompt"):
        if case.get(k, "$absent") != "$absent":
            out[k] = decode(case[k])
    return out


def _generation_prepare(case: Dict[str, Any], ctx: Context) -> Callable[[], Any]:
    import ferrolm

    action = case["action"]
    if action == "load":
        return _load_call(case, ctx)
    if action == "config":
        fields, more = decode(case["fields"]), decode(case["replace"])
        return lambda: ferrolm.GenerationConfig(**fields).replace(**more)

    def call() -> None:
        m = _gen_model(ctx, case["model"])
        if action == "generate":
            prompt, options, cfg_fields = decode(case["prompt"]), decode(case["options"]), decode(case["config"])
            extra = _call_kwargs(case)
            mode = case["mode"]
            if mode == "kwargs":
                r = m.generate(prompt, **options, **extra)
                eff = m.generation_config.replace(**options)
            elif mode == "stream":
                s = m.generate(prompt, stream=True, **options, **extra)
                text = "".join(s)
                r = s.result
                if r is not None and text != r.text:
                    raise Violation("invariant", f"streamed text {text!r} differs from the result's {r.text!r}")
                eff = m.generation_config.replace(**options)
            elif mode == "bad_config":
                r = m.generate(prompt, options, **extra)  # a dict where a GenerationConfig belongs
                eff = m.generation_config
            else:
                cfg = ferrolm.GenerationConfig(**{k: v for k, v in cfg_fields.items() if k not in ("max_tokens", "typical_p")})
                r = m.generate(prompt, cfg, **(options if mode == "both" else {}), **extra)
                eff = cfg.replace(**options) if mode == "both" else cfg
            check_result(m, r, eff.max_new_tokens, len(r.prompt_tokens), tuple(eff.stop), eff.min_new_tokens if not eff.ignore_eos else 0)
        elif action == "chat":
            if case["stream"]:
                s = m.chat(decode(case["messages"]), stream=True, **decode(case["options"]))
                "".join(s)
            else:
                m.chat(decode(case["messages"]), **decode(case["options"]))
        elif action == "logits":
            ids = decode(case["ids"])
            out = m.logits(ids, **_call_kwargs(case))
            if out.shape != (len(ids), m.vocab_size):
                raise Violation("invariant", f"logits of shape {out.shape} for {len(ids)} token ids")
        elif action == "tokens":
            m.tokenize(decode(case["text"]), add_special_tokens=decode(case["flag"]))
            m.detokenize(decode(case["ids"]), skip_special_tokens=decode(case["flag"]))

    return call


def _load_call(case: Dict[str, Any], ctx: Context) -> Callable[[], Any]:
    import ferrolm

    root = ctx.fresh()
    kind = case["path"]
    path: Path = {"model": MODELS / "tiny-llama", "gguf": GGUF_FIXTURE, "missing": root / "missing"}.get(kind, root / kind)
    if kind == "empty_dir":
        path.mkdir()
    elif kind == "text_file":
        path.write_text("hello")
    elif kind == "bin_only":
        path.mkdir()
        (path / "config.json").write_text(json.dumps(_doc("tiny-llama", "config.json")))
        (path / "pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")
    elif kind == "garbage.gguf":
        path.write_bytes(b"GGUF" + b"\xff" * 60)
    elif kind == "config_only":
        path.mkdir()
        (path / "config.json").write_text(json.dumps(_doc("tiny-llama", "config.json")))
    elif kind == "gguf_dir":
        path.mkdir()
        os.symlink(GGUF_FIXTURE, path / "model.gguf")
    arg: Any = {"str": str(path), "path": path, "bytes": os.fsencode(str(path)), "int": 3, "none": None}[case["as"]]
    kwargs = {k: decode(v) for k, v in case["kwargs"].items()}

    def call() -> None:
        m = ferrolm.load(arg, **kwargs)
        ctx_len = kwargs.get("context_length")
        if ctx_len is not None and m.context_length != ctx_len:
            raise Violation("invariant", f"context_length={ctx_len!r} gave a model with context {m.context_length}")
        check_result(m, m.generate(_ids(m, [1, 2]), max_new_tokens=2, seed=0), 2, 2)

    return call


# -- the registry -------------------------------------------------------------------------------

SURFACES: Dict[str, Surface] = {
    s.name: s
    for s in [
        Surface("config", "config.json, generation_config.json, tokenizer_config.json and the shard index of the fixture models",
                _config_strategy, _config_prepare),
        Surface("safetensors", "safetensors headers (length, JSON, dtypes, shapes, offsets) and data of the fixture models",
                _safetensors_strategy, _safetensors_prepare),
        Surface("gguf", "GGUF header, metadata, tokenizer arrays, tensor infos and data of the GGUF fixture", _gguf_strategy, _gguf_prepare),
        Surface("lora", "PEFT LoRA adapters: adapter_config.json fields and adapter tensors, merged and unmerged", _lora_strategy, _lora_prepare),
        Surface("soft_prompt", "PEFT prompt-tuning adapters: config fields, embedding tensors, context fit", _soft_prompt_strategy,
                _soft_prompt_prepare),
        Surface("tokenizer", "tokenizer.json: components, vocabulary, merges, added tokens, raw text", _tokenizer_strategy, _tokenizer_prepare),
        Surface("chat", "chat templates (random Jinja, escapes, exhaustion) and messages", _chat_strategy, _chat_prepare),
        Surface("generation", "generate/chat/logits/tokenize options, GenerationConfig, prompts, load() arguments", _generation_strategy,
                _generation_prepare),
    ]
}


# -- the harness's own check (not part of a campaign) -------------------------------------------

_SELFTEST_KINDS = ["ok", "refuse", "leak", "violation", "abort", "segv", "hang", "oom"]


def _selftest_strategy() -> st.SearchStrategy:
    return st.fixed_dictionaries({"do": st.sampled_from(_SELFTEST_KINDS), "n": st.integers()})


def _selftest_prepare(case: Dict[str, Any], ctx: Context) -> Callable[[], Any]:
    import ferrolm

    def call() -> None:
        do = case["do"]
        if do == "refuse":
            raise ferrolm.InvalidArgumentError("refused")
        if do == "leak":
            json.loads(5)  # a TypeError raised outside the harness
        if do == "violation":
            raise Violation("accepted-invalid", "selftest: x=1 was accepted")
        if do == "abort":
            os.abort()
        if do == "segv":
            import ctypes

            ctypes.string_at(0)
        if do == "hang":
            import time

            time.sleep(3600)
        if do == "oom":
            bytearray(1 << 44)  # past any RLIMIT_AS the harness sets: a MemoryError, not a crash

    return call


#: Surfaces that exist to test the harness itself (tests/test_fuzz.py); never in a campaign by default.
SELFTEST = Surface("selftest", "the harness's own crash / hang / leak detection", _selftest_strategy, _selftest_prepare)
ALL_SURFACES: Dict[str, Surface] = {**SURFACES, SELFTEST.name: SELFTEST}
