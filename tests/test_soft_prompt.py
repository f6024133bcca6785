"""Soft prompts (PEFT prompt tuning): virtual-token embeddings before the prompt. Checked here
against the model fed the tokens whose embeddings the soft prompt holds; the PEFT reference is
checked in test_peft.py."""

import json

import numpy as np
import pytest

import ferrolm
from ferrolm.safetensors_io import save_arrays
from conftest import MODELS, read_safetensors, reference

IDS = [int(t) for t in reference("tiny-llama")[0]["prompt_ids"]][:8]
VIRTUAL = [5, 17, 3, 40]


def embedding_rows(model_name, ids):
    weights = {}
    for f in sorted((MODELS / model_name).glob("*.safetensors")):
        weights.update(read_safetensors(f.read_bytes()))
    table = next(v for k, v in weights.items() if k.endswith(("embed_tokens.weight", "wte.weight")))
    return table[ids]


def write_soft_prompt(folder, embeddings, n=None):
    folder.mkdir(parents=True)
    cfg = {"peft_type": "PROMPT_TUNING", "task_type": "CAUSAL_LM", "num_virtual_tokens": n or len(embeddings),
           "token_dim": int(embeddings.shape[1]), "num_transformer_submodules": 1}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    save_arrays(folder / "adapter_model.safetensors", {"prompt_embeddings": np.asarray(embeddings, np.float32)})
    return folder


@pytest.mark.parametrize("model_name", ["tiny-llama", "tiny-gpt2"])
def test_soft_prompt_equals_the_tokens_it_embeds(tmp_path, model_name):
    model = ferrolm.load(MODELS / model_name)
    sp = write_soft_prompt(tmp_path / "sp", embedding_rows(model_name, VIRTUAL))
    assert model.load_soft_prompt(sp, name="qa") == "qa"
    assert model.soft_prompts == {"qa": len(VIRTUAL)}
    want = model.logits(VIRTUAL + IDS)[len(VIRTUAL):]
    np.testing.assert_array_equal(model.logits(IDS, soft_prompt="qa"), want)
    # generation: positions continue after the virtual tokens; the result holds only new tokens
    got = model.generate(IDS, max_new_tokens=8, ignore_eos=True, soft_prompt="qa").tokens
    assert got == model.generate(VIRTUAL + IDS, max_new_tokens=8, ignore_eos=True).tokens
    # swappable per call: without it, the plain prompt as if no soft prompt were loaded
    np.testing.assert_array_equal(model.logits(IDS), ferrolm.load(MODELS / model_name).logits(IDS))


def test_repetition_penalty_ignores_virtual_tokens(tmp_path):
    """Penalties see the prompt and generated tokens, not the soft prompt (as PEFT's generate)."""
    model = ferrolm.load(MODELS / "tiny-llama")
    model.load_soft_prompt(write_soft_prompt(tmp_path / "sp", embedding_rows("tiny-llama", VIRTUAL)), name="qa")
    opts = dict(max_new_tokens=6, ignore_eos=True, repetition_penalty=1.8)
    got = model.generate(IDS, soft_prompt="qa", **opts).tokens
    # the same computation by hand: feed the embeddings, then the prompt, greedy with the penalty
    s = model.new_session()
    s.forward_embeddings(embedding_rows("tiny-llama", VIRTUAL).tobytes())
    s.forward(IDS)
    params = ferrolm._core.SamplingParams(repetition_penalty=1.8)
    manual = []
    for _ in range(6):
        t = s.sample(params, len(IDS))
        manual.append(t)
        s.forward([t])
    assert got == manual
    assert s.prefix_len == len(VIRTUAL) and s.position == len(VIRTUAL) + len(IDS) + 6


def test_bad_soft_prompts_are_refused(tmp_path):
    model = ferrolm.load(MODELS / "tiny-llama")
    hidden = model._core.hidden_size
    with pytest.raises(ferrolm.errors.InvalidArgumentError, match="hidden size"):
        model.load_soft_prompt(write_soft_prompt(tmp_path / "wide", np.zeros((3, hidden + 1))))
    with pytest.raises(ferrolm.errors.TensorError, match="num_virtual_tokens"):
        model.load_soft_prompt(write_soft_prompt(tmp_path / "count", np.zeros((3, hidden)), n=5))
    with pytest.raises(ferrolm.errors.TensorError, match="non-finite"):
        model.load_soft_prompt(write_soft_prompt(tmp_path / "nan", np.full((2, hidden), np.nan)))
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    with pytest.raises(ferrolm.errors.ConfigError, match="prompt-tuning"):
        model.load_soft_prompt(lora)
    with pytest.raises(ferrolm.errors.ModelNotFoundError):
        model.load_soft_prompt(tmp_path / "missing")
    with pytest.raises(ferrolm.errors.InvalidArgumentError, match="no soft prompt"):
        model.generate(IDS, max_new_tokens=2, soft_prompt="nope")
    assert model.soft_prompts == {}
