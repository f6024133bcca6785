"""Adapters against Hugging Face PEFT's own outputs (tests/fixtures/make_peft_fixtures.py):
merged and unmerged LoRA logits and greedy tokens, switching A → B → None, soft-prompt logits and
greedy tokens, the same adapters in BF16/INT8, and the broken adapters."""

import json
from pathlib import Path

import numpy as np
import pytest

import ferrolm
from conftest import EXPECTED, FIXTURES, MODELS
from ferrolm.quality import log_softmax

ROOT = FIXTURES.parent.parent
LORAS = ["tiny-llama-lora-attn", "tiny-llama-lora-mlp", "tiny-gpt2-lora", "tiny-qwen2-lora"]


def expected(name):
    return np.load(EXPECTED / f"peft-{name}.npz"), json.loads((EXPECTED / f"peft-{name}.json").read_text())


def fp32_tolerance(ref):
    return 1e-4 * np.abs(ref).max()


@pytest.mark.parametrize("name", LORAS)
def test_lora_matches_peft_merged_and_unmerged(name):
    ref, meta = expected(name)
    ids = [int(t) for t in ref["prompt_ids"]]
    model = ferrolm.load(MODELS / meta["base_model"])
    model.load_lora(ROOT / meta["adapter_dir"], name="m")
    model.load_lora(ROOT / meta["adapter_dir"], name="u", merged=False)
    want = ref["logits_f64"]
    np.testing.assert_allclose(model.logits(ids, adapter="u"), want, atol=fp32_tolerance(want), rtol=0)
    model.set_adapter("m")
    np.testing.assert_allclose(model.logits(ids), want, atol=fp32_tolerance(want), rtol=0)
    n = len(ref["greedy_tokens"])
    assert model.generate(ids, max_new_tokens=n, ignore_eos=True).tokens == list(ref["greedy_tokens"])
    assert model.generate(ids, max_new_tokens=n, ignore_eos=True, adapter="u").tokens == list(ref["greedy_tokens"])


def test_switching_between_peft_adapters_reproduces_each_reference():
    (ra, ma), (rb, mb) = expected("tiny-llama-lora-attn"), expected("tiny-llama-lora-mlp")
    ids = [int(t) for t in ra["prompt_ids"]]
    model = ferrolm.load(MODELS / "tiny-llama")
    base = model.logits(ids)
    model.load_lora(ROOT / ma["adapter_dir"], name="a")
    model.load_lora(ROOT / mb["adapter_dir"], name="b")
    for step in ["a", "b", None, "a", None, "b"]:
        model.set_adapter(step)
        got = model.logits(ids)
        if step is None:
            np.testing.assert_array_equal(got, base)
        else:
            want = (ra if step == "a" else rb)["logits_f64"]
            np.testing.assert_allclose(got, want, atol=fp32_tolerance(want), rtol=0)
    assert mb["lora"]["use_rslora"] and model.adapters == {"a": "merged", "b": "merged"}


@pytest.mark.parametrize("precision,max_kl", [("bf16", 2e-3), ("int8", 2e-2)])
def test_lower_precisions_with_an_adapter_stay_close_to_peft(precision, max_kl):
    """The precision's quality bound on the adapted model: its next-token distributions stay as
    close to PEFT's FP32 ones as the plain model's are to FP32 (KL bounds of test_precision.py)."""
    for name in ["tiny-llama-lora-attn", "tiny-gpt2-lora"]:
        ref, meta = expected(name)
        ids = [int(t) for t in ref["prompt_ids"]]
        model = ferrolm.load(MODELS / meta["base_model"], precision=precision)
        model.load_lora(ROOT / meta["adapter_dir"])
        model.set_adapter(Path(meta["adapter_dir"]).name)
        p, q = log_softmax(ref["logits_f64"]), log_softmax(model.logits(ids))
        kl = float((np.exp(p) * (p - q)).sum(-1).mean())
        assert 0 < kl < max_kl, (name, kl)


def test_soft_prompt_matches_peft():
    ref, meta = expected("tiny-llama-prompt-tuning")
    ids = [int(t) for t in ref["prompt_ids"]]
    n_virtual = meta["virtual_tokens"]
    model = ferrolm.load(MODELS / meta["base_model"])
    model.load_soft_prompt(ROOT / meta["adapter_dir"], name="pt")
    want = ref["logits_f64"][n_virtual:]  # PEFT's rows include the virtual positions
    got = model.logits(ids, soft_prompt="pt")
    np.testing.assert_allclose(got, want, atol=fp32_tolerance(want), rtol=0)
    n = len(ref["greedy_tokens"])
    assert model.generate(ids, max_new_tokens=n, ignore_eos=True, soft_prompt="pt").tokens == list(ref["greedy_tokens"])
    # per call: without it, the base model's greedy tokens
    assert model.generate(ids, max_new_tokens=n, ignore_eos=True).tokens == meta["base_greedy_tokens"]


def test_broken_peft_adapters_raise_and_change_nothing():
    bad = json.loads((EXPECTED / "peft-bad.json").read_text())
    errors = {
        "unknown-module": ferrolm.errors.InvalidArgumentError,
        "rank-mismatch": ferrolm.errors.TensorError,
        "wrong-in-features": ferrolm.errors.InvalidArgumentError,
        "r-zero": ferrolm.errors.ConfigError,
        "pickle-only": ferrolm.errors.CheckpointError,
        "prompt-tuning-wrong-dim": ferrolm.errors.InvalidArgumentError,
    }
    model = ferrolm.load(MODELS / "tiny-llama")
    ids = [int(t) for t in expected("tiny-llama-lora-attn")[0]["prompt_ids"]]
    base = model.logits(ids)
    seen = set()
    for case in bad["cases"]:
        name = Path(case["dir"]).name
        load = model.load_soft_prompt if name.startswith("prompt-tuning") else model.load_lora
        with pytest.raises(errors[name]):
            load(ROOT / case["dir"])
        seen.add(name)
    assert seen == set(errors)
    assert model.adapters == {} and model.soft_prompts == {}
    np.testing.assert_array_equal(model.logits(ids), base)
