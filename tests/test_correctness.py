"""FP32 output against Hugging Face transformers (references made by tests/fixtures/make_fixtures.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import MODELS, decode_logits, load_fixture, reference

# FP32 logits: max-abs error <= 1e-4 relative to the logits' scale (max |logit|).
REL_TOL = 1e-4


def assert_logits_close(got: np.ndarray, want: np.ndarray) -> None:
    assert got.shape == want.shape
    scale = float(np.abs(want).max())
    err = float(np.abs(got.astype(np.float64) - want).max())
    assert err <= REL_TOL * scale, f"max abs error {err:.3g} > {REL_TOL} x scale {scale:.3g}"


def test_prompt_logits_match_reference(model_name):
    ref, _ = reference(model_name)
    model = load_fixture(model_name)
    got = model.logits(ref["prompt_ids"].tolist())
    assert got.dtype == np.float32
    assert_logits_close(got, ref["prompt_logits_f64"])
    assert_logits_close(got, ref["prompt_logits"])


def test_logits_at_every_position_and_single_token(model_name):
    ref, _ = reference(model_name)
    model = load_fixture(model_name)
    assert_logits_close(model.logits(ref["prefix_ids"].tolist()), ref["prefix_logits"])
    assert_logits_close(model.logits(ref["single_ids"].tolist()), ref["single_logits"])


def test_kv_cached_decode_matches_full_forward(model_name):
    """Prefill the prompt, then feed one token at a time: each step's logits must equal the
    reference logits of the whole prefix at that position."""
    ref, _ = reference(model_name)
    model = load_fixture(model_name)
    ids = ref["prefix_ids"].tolist()
    n_prompt = len(ref["prompt_ids"])
    assert_logits_close(decode_logits(model.new_session(), ids, n_prompt), ref["prefix_logits"][n_prompt - 1 :])


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_greedy_tokens_identical(model_name, threads):
    ref, meta = reference(model_name)
    model = load_fixture(model_name, threads=threads)
    out = model.generate(ref["prompt_ids"].tolist(), max_new_tokens=32, ignore_eos=True)
    assert out.tokens == ref["greedy_tokens"].tolist()
    assert out.finish_reason == "length"
    assert out.text == meta["greedy_text"]


def test_greedy_from_text_prompt(model_name):
    ref, meta = reference(model_name)
    model = load_fixture(model_name)
    assert model.tokenize(meta["prompt_text"]) == ref["prompt_ids"].tolist()
    out = model.generate(meta["prompt_text"], max_new_tokens=32, ignore_eos=True)
    assert out.prompt_tokens == ref["prompt_ids"].tolist()
    assert out.tokens == ref["greedy_tokens"].tolist()


def test_sharded_checkpoint_is_read_through_its_index():
    folder = MODELS / "tiny-qwen2"
    assert (folder / "model.safetensors.index.json").is_file()
    assert len(list(folder.glob("model-*.safetensors"))) > 1
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    model = load_fixture("tiny-qwen2")
    # every parameter comes from some shard: float32 bytes add up to the index's total
    assert model.num_params * 4 == index["metadata"]["total_size"]
    assert model.arch == "llama" and model._core.model_type == "qwen2"


def test_model_facts(model_name):
    model = load_fixture(model_name)
    assert model.vocab_size == 384
    assert model.context_length == 128
    assert model.threads == 2
    # the tiny models store every weight as float32 safetensors
    sizes = sum(f.stat().st_size for f in (MODELS / model_name).glob("*.safetensors"))
    assert abs(model.num_params * 4 - sizes) < 4096 + 0.01 * sizes
    assert 0 < model.matmul_bytes_per_token <= model.num_params * 4
    assert "params=" in repr(model)
