"""Shared fixtures: the tiny reference models of tests/fixtures/ and helpers to write models."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

import ferrolm
from ferrolm.safetensors_io import save_arrays

FIXTURES = Path(__file__).parent / "fixtures"
MODELS = FIXTURES / "models"
EXPECTED = FIXTURES / "expected"
MODEL_NAMES = ["tiny-llama", "tiny-gpt2", "tiny-qwen2"]


def pytest_configure(config):
    if os.environ.get("FERROLM_REQUIRE_INSTALLED") and "site-packages" not in ferrolm.__file__:
        raise pytest.UsageError(f"ferrolm was imported from {ferrolm.__file__}, not from the installed wheel")


_cache: Dict[tuple, ferrolm.Model] = {}


def load_fixture(name: str, threads: int = 2, precision: str = "fp32") -> ferrolm.Model:
    """A fixture model, shared by the tests. Its KV cache is FP32 in every precision, so that a
    precision's tests measure its weights' arithmetic against FP32's (the BF16 cache, the default
    beside BF16/INT8/INT4 weights, has its own tests: test_kv_cache.py)."""
    key = (name, threads, precision)
    if key not in _cache:
        _cache[key] = ferrolm.load(MODELS / name, precision=precision, threads=threads, kv_cache="fp32")
    return _cache[key]


def nibbles(packed: np.ndarray) -> np.ndarray:
    """4-bit values of packed groups [..., 16] as float32 [..., 32]: GGUF's Q4_0/Q4_1 order
    (and ferrolm INT4's), values 0-15 in the low nibbles, 16-31 in the high ones."""
    return np.concatenate([packed & 15, packed >> 4], axis=-1).astype(np.float32)


def reference(name: str):
    return np.load(EXPECTED / f"{name}.npz"), json.loads((EXPECTED / f"{name}.json").read_text())


def gpu_available() -> bool:
    """cupy is installed and sees an NVIDIA GPU."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.fixture(params=["emulator", pytest.param("gpu", marks=pytest.mark.gpu)], scope="module")
def cuda_mode(request):
    """device="cuda" on the CPU emulator, and (gpu marker) on a real GPU through cupy."""
    mp = pytest.MonkeyPatch()
    if request.param == "gpu":
        if not gpu_available():
            pytest.skip("no cupy or no NVIDIA GPU here")
        mp.delenv("FERROLM_CUDA_EMULATE", raising=False)
    else:
        mp.setenv("FERROLM_CUDA_EMULATE", "1")
    yield request.param
    mp.undo()


def decode_logits(session, ids, n_prompt: int) -> np.ndarray:
    """Prefills ids[:n_prompt] into a session (fresh, or holding a soft prompt's embeddings),
    then feeds the rest one token at a time: the logits after the prompt and after each step,
    [len(ids) - n_prompt + 1, vocab]. With n_prompt = 1 every row runs a decode step's path."""
    start = session.position
    session.forward(list(ids[:n_prompt]))
    rows = [np.frombuffer(session.logits(), np.float32)]
    for tok in ids[n_prompt:]:
        session.forward([tok])
        rows.append(np.frombuffer(session.logits(), np.float32))
    assert session.position == start + len(ids)
    return np.stack(rows)


@pytest.fixture(params=MODEL_NAMES)
def model_name(request) -> str:
    return request.param


def copy_model(name: str, dest: Path) -> Path:
    """A writable copy of a fixture model folder."""
    out = dest / name
    shutil.copytree(MODELS / name, out)
    return out


def write_safetensors(path: Path, tensors: Dict[str, np.ndarray]) -> None:
    save_arrays(path, tensors)


def random_llama(folder: Path, *, hidden=128, layers=2, heads=4, kv_heads=2, ffn=256, vocab=256, ctx=256, seed=0) -> Path:
    """A random-weight LLaMA folder (no tokenizer)."""
    rng = np.random.default_rng(seed)
    hd = hidden // heads
    cfg = dict(model_type="llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn,
               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
               max_position_embeddings=ctx, rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True)

    def w(*shape):
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    t = {"model.embed_tokens.weight": w(vocab, hidden), "model.norm.weight": np.ones(hidden, np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}"
        t.update({
            f"{p}.input_layernorm.weight": np.ones(hidden, np.float32),
            f"{p}.post_attention_layernorm.weight": np.ones(hidden, np.float32),
            f"{p}.self_attn.q_proj.weight": w(heads * hd, hidden),
            f"{p}.self_attn.k_proj.weight": w(kv_heads * hd, hidden),
            f"{p}.self_attn.v_proj.weight": w(kv_heads * hd, hidden),
            f"{p}.self_attn.o_proj.weight": w(hidden, heads * hd),
            f"{p}.mlp.gate_proj.weight": w(ffn, hidden),
            f"{p}.mlp.up_proj.weight": w(ffn, hidden),
            f"{p}.mlp.down_proj.weight": w(hidden, ffn),
        })
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    write_safetensors(folder / "model.safetensors", t)
    return folder


def read_safetensors(blob: bytes) -> Dict[str, np.ndarray]:
    """Reads the tensors of a safetensors file's bytes (BF16 as uint16 bit patterns)."""
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + n])
    header.pop("__metadata__", None)
    data = blob[8 + n :]
    out = {}
    for name, h in header.items():
        dt = {"F32": "<f4", "F16": "<f2", "BF16": "<u2", "I8": "i1", "U8": "u1", "F64": "<f8"}[h["dtype"]]
        a, b = h["data_offsets"]
        out[name] = np.frombuffer(data[a:b], dtype=dt).reshape(h["shape"]).copy()
    return out
