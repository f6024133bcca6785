"""Sizes are checked before anything is allocated from them, every config field is typed, and
safetensors files go through the core's one reader and writer. A bad value is a ferrolm error
naming the field (or what needs how much memory) — never an abort, a bare TypeError or a silent
coercion."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

import ferrolm
from ferrolm import _core, safetensors_io
from conftest import MODELS, copy_model, random_llama, read_safetensors


def with_config(tmp_path, name, **changes):
    folder = copy_model(name, tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.update(changes)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("name,key,value", [
    ("tiny-llama", "num_hidden_layers", 2**31),
    ("tiny-llama", "max_position_embeddings", 2**63),
    ("tiny-llama", "max_position_embeddings", 2**31),
    ("tiny-llama", "vocab_size", 2**40),
    ("tiny-llama", "hidden_size", 1e30),
    ("tiny-llama", "intermediate_size", -1),
    ("tiny-llama", "num_attention_heads", 1.5),
    ("tiny-llama", "num_key_value_heads", True),
    ("tiny-llama", "head_dim", 2**20),
    ("tiny-llama", "hidden_act", 7),
    ("tiny-llama", "rms_norm_eps", "1e-5"),
    ("tiny-llama", "tie_word_embeddings", "false"),
    ("tiny-gpt2", "n_layer", 2**31),
    ("tiny-gpt2", "n_positions", 2**40),
    ("tiny-gpt2", "n_inner", 2**30),
    ("tiny-gpt2", "activation_function", ["gelu_new"]),
])
def test_config_sizes_and_types_are_checked_before_allocating(tmp_path, name, key, value):
    folder = with_config(tmp_path, name, **{key: value})
    with pytest.raises(ferrolm.ConfigError, match=key):
        ferrolm.load(folder)


def test_rope_settings_must_be_objects(tmp_path):
    for key, value in (("rope_scaling", "linear"), ("rope_parameters", 5), ("rope_scaling", {"type": 2})):
        folder = with_config(tmp_path / key / type(value).__name__, "tiny-llama", **{key: value})
        with pytest.raises(ferrolm.ConfigError, match="rope|type"):
            ferrolm.load(folder)


def big_context_llama(tmp_path):
    """A small LLaMA that declares a context whose FP32 KV cache (2 · 8 layers · 2**24 positions ·
    256 kv values · 4 bytes = 256 GiB) no machine running the tests has."""
    return random_llama(tmp_path / "big-ctx", hidden=256, layers=8, heads=4, kv_heads=4, ffn=64, vocab=64, ctx=2**24)


def test_a_context_that_cannot_fit_is_a_clear_error_or_cut_with_a_warning(tmp_path):
    folder = big_context_llama(tmp_path)
    per_position = 2 * 8 * 256 * 4
    fits = _core.memory_limit() // per_position
    assert fits < 2**24
    with pytest.raises(ferrolm.MemoryLimitError, match=r"context_length=16777216 needs a 256\.0 GiB KV cache") as e:
        ferrolm.load(folder, context_length=2**24)
    assert isinstance(e.value, MemoryError) and f"at most {fits} fits" in str(e.value)
    with pytest.warns(UserWarning, match=f"using context_length={fits}"):
        model = ferrolm.load(folder, context_length=None)
    assert model.context_length == fits == model._core.max_context_in_memory()
    # the core refuses the same request itself
    with pytest.raises(ferrolm.MemoryLimitError, match="KV cache"):
        model._core.new_session(2**24)
    # a BF16 cache takes 2 bytes per value: twice the positions fit, and the messages say so
    fits_bf16 = _core.memory_limit() // (per_position // 2)
    assert fits_bf16 >= 2 * fits
    with pytest.raises(ferrolm.MemoryLimitError, match=r"needs a 128\.0 GiB KV cache .* 2 bytes, kv_cache='bf16'"):
        ferrolm.load(folder, context_length=2**24, kv_cache="bf16")
    with pytest.warns(UserWarning, match=f"using context_length={fits_bf16}"):
        assert ferrolm.load(folder, kv_cache="bf16").context_length == fits_bf16 == model._core.max_context_in_memory("bf16")
    small = ferrolm.load(folder, context_length=64)
    assert small.generate([1, 2, 3], max_new_tokens=3).tokens
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a context that fits: no warning
        assert ferrolm.load(MODELS / "tiny-llama").context_length == 128


def test_generation_config_and_eos_ids_are_typed(tmp_path):
    folder = copy_model("tiny-llama", tmp_path)
    gen = json.loads((folder / "generation_config.json").read_text())
    for value, field in ((-0.5, "temperature"), ("high", "temperature")):
        (folder / "generation_config.json").write_text(json.dumps({**gen, "do_sample": True, field: value}))
        with pytest.raises(ferrolm.ConfigError, match=f"generation_config.json.*{field}"):
            ferrolm.load(folder)
    for eos in ("2", [1, "2"], True, -3):
        (folder / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": eos}))
        with pytest.raises(ferrolm.ConfigError, match="eos_token_id"):
            ferrolm.load(folder)
    (folder / "generation_config.json").write_text(json.dumps({**gen, "eos_token_id": 2**31}))
    with pytest.raises(ferrolm.ConfigError, match="outside the vocabulary"):
        ferrolm.load(folder)


def lora_folder(tmp_path, **changes):
    src = MODELS.parent / "adapters" / "tiny-llama-lora-attn"
    folder = tmp_path / "ad"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    return folder


@pytest.mark.parametrize("key,value", [
    ("target_modules", -7),
    ("target_modules", [1, 2]),
    ("use_rslora", "q_proj"),
    ("use_rslora", 1.0),
    ("fan_in_fan_out", "yes"),
    ("r", True),
    ("r", 2**40),
    ("r", 0),
    ("r", 4.0),
    ("lora_alpha", "16"),
    ("lora_alpha", float("nan")),
    ("bias", 0),
    ("peft_type", 5),
    ("use_dora", "false"),
    ("bias", None),
    ("lora_alpha", None),
    ("lora_alpha", 10**400),
    ("use_rslora", None),
    ("target_modules", False),
    ("rank_pattern", 0),
    ("alpha_pattern", ""),
    ("rank_pattern", "q_proj"),
])
def test_adapter_config_fields_are_typed(tmp_path, key, value):
    folder = lora_folder(tmp_path, **{key: value})
    with pytest.raises(ferrolm.ConfigError, match=key):
        ferrolm.read_lora(folder)


def test_well_typed_adapter_config_still_loads(tmp_path):
    ad = ferrolm.read_lora(lora_folder(tmp_path, target_modules="q_proj", rank_pattern=None, use_rslora=False))
    assert ad.target_modules == ("q_proj",) and ad.use_rslora is False


def test_merged_must_be_a_bool():
    model = ferrolm.load(MODELS / "tiny-llama")
    with pytest.raises(ferrolm.InvalidArgumentError, match="merged"):
        model.load_lora(MODELS.parent / "adapters" / "tiny-llama-lora-attn", merged="no")


def test_soft_prompt_fields_are_typed(tmp_path):
    src = MODELS.parent / "adapters" / "tiny-llama-prompt-tuning"
    for key, value in (("num_virtual_tokens", "4"), ("num_virtual_tokens", 0), ("token_dim", 3.5),
                       ("num_transformer_submodules", "1"), ("num_transformer_submodules", None), ("peft_type", None)):
        folder = tmp_path / f"{key}-{value}"
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
        cfg = {**json.loads((src / "adapter_config.json").read_text()), key: value}
        (folder / "adapter_config.json").write_text(json.dumps(cfg))
        with pytest.raises(ferrolm.ConfigError, match=key):
            ferrolm.load(MODELS / "tiny-llama").load_soft_prompt(folder)
    folder = tmp_path / "dim"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
    cfg = json.loads((src / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**cfg, "token_dim": cfg["token_dim"] + 1}))
    with pytest.raises(ferrolm.TensorError, match="token_dim"):
        ferrolm.load(MODELS / "tiny-llama").load_soft_prompt(folder)


def test_safetensors_written_by_the_core_read_back_by_an_independent_reader(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"a.weight": rng.standard_normal((3, 5)).astype(np.float32),
              "b": rng.standard_normal(7).astype(np.float16),
              "q": rng.integers(-127, 128, (2, 4), dtype=np.int8),
              "d": rng.standard_normal((2, 2)).astype(np.float64)}
    path = tmp_path / "t.safetensors"
    safetensors_io.save_arrays(path, arrays, metadata={"format": "pt"})
    back = read_safetensors(path.read_bytes())
    assert set(back) == set(arrays)
    for k in arrays:
        np.testing.assert_array_equal(back[k], arrays[k])
    f = safetensors_io.open_file(path)
    assert f.metadata == {"format": "pt"}
    assert safetensors_io.header(path)["a.weight"] == ("F32", [3, 5])
    np.testing.assert_array_equal(safetensors_io.read_f32(f, "b", [7]), arrays["b"].astype(np.float32))
    assert safetensors_io.read_f32(f, "q", [2, 4]) is None
    # BF16 given as its bit patterns is widened exactly
    bits = np.array([0x3F80, 0xC040], np.uint16)
    safetensors_io.write(path, [("h", "BF16", (2,))], lambda n: bits.tobytes())
    np.testing.assert_array_equal(safetensors_io.read_floats(path)["h"][1], [1.0, -3.0])


def test_failed_writes_leave_nothing_and_raise_the_original_error(tmp_path):
    path = tmp_path / "t.safetensors"
    path.write_bytes(b"keep me")

    class DiskFull(Exception):
        pass

    def boom(name):
        raise DiskFull(name)

    with pytest.raises(DiskFull):
        safetensors_io.write(path, [("x", "F32", (2,)), ("y", "F32", (1,))], boom)
    with pytest.raises(ferrolm.InvalidArgumentError, match="got 3 bytes"):
        safetensors_io.write(path, [("x", "F32", (2,))], lambda n: b"abc")
    with pytest.raises(ferrolm.TensorError, match="dtype 'U7'"):
        safetensors_io.write(path, [("x", "U7", (2,))], lambda n: b"")
    with pytest.raises(ferrolm.InvalidArgumentError, match="twice"):
        safetensors_io.write(path, [("x", "F32", (1,)), ("x", "F32", (1,))], lambda n: bytes(4))
    assert path.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.safetensors"]


@pytest.mark.parametrize("damage", ["huge header", "offsets past the end", "bad dtype", "shape mismatch", "not json"])
def test_damaged_safetensors_headers_are_checkpoint_errors(tmp_path, damage):
    folder = copy_model("tiny-llama", tmp_path)
    st = folder / "model.safetensors"
    blob = st.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    if damage == "huge header":
        blob = (2**62).to_bytes(8, "little") + blob[8:]
    elif damage == "not json":
        blob = blob[:8] + b"{" * n + blob[8 + n:]
    else:
        if damage == "offsets past the end":
            header[name]["data_offsets"][1] += 2**40
        elif damage == "bad dtype":
            header[name]["dtype"] = "Q99"
        else:
            header[name]["shape"] = [2**40, 2**40]
        text = json.dumps(header).encode()
        text += b" " * (-len(text) % 8)
        blob = len(text).to_bytes(8, "little") + text + blob[8 + n:]
    st.write_bytes(blob)
    with pytest.raises(ferrolm.CheckpointError, match="safetensors"):
        ferrolm.load(folder)


@pytest.mark.parametrize("source,error,match", [
    ("{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}", ferrolm.CheckpointError, "steps"),
    ("{% set s = 'a' * 900000 %}{% for c in s %}{% for d in s %}.{% endfor %}{% endfor %}", ferrolm.CheckpointError, "steps"),
    ("{{ 'a' * 10**9 }}", ferrolm.CheckpointError, "too long"),
    ("{{ 'a'|center(3000000000) }}", ferrolm.CheckpointError, "too large"),
    ("{{ '%0999999999d'|format(1) }}", ferrolm.CheckpointError, "too large"),
    ("{{ '%0999999999d' % 1 }}", ferrolm.CheckpointError, "too large"),
    ("{{ messages|map('indent', 10**9)|join }}", ferrolm.CheckpointError, "too large"),
    ("{{ [1] * 10**7 }}", ferrolm.CheckpointError, "too long"),
    ("{{ 10 ** 100000 }}", ferrolm.CheckpointError, "too large"),
    ("{{ 1 / 0 }}", ferrolm.CheckpointError, "ZeroDivisionError"),
    ("{{ 1 + 'a' }}", ferrolm.CheckpointError, "TypeError"),
    ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", ferrolm.CheckpointError, "RecursionError"),
    ("{{ messages.__class__.__mro__ }}", ferrolm.CheckpointError, "__class__"),
    ("{{ raise_exception('no system messages') }}", ferrolm.InvalidArgumentError, "no system messages"),
    ("{{ messages[0].content|truncate(-1) }}", ferrolm.CheckpointError, "AssertionError"),
])
def test_hostile_chat_templates_fail_cleanly(source, error, match):
    from ferrolm.chat import ChatTemplate

    with pytest.raises(error, match=match):
        ChatTemplate(source).render([{"role": "user", "content": "hi"}])


def test_step_budget_leaves_ordinary_templates_and_the_trace_function_alone():
    import sys

    from ferrolm.chat import ChatTemplate

    seen = []
    tracer = lambda frame, event, arg: seen.append(event) and None  # noqa: E731
    sys.settrace(tracer)
    try:
        out = ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}").render(
            [{"role": "user", "content": "a" * 5000}] * 200)
        restored = sys.gettrace()
    finally:
        sys.settrace(None)
    assert restored is tracer
    assert out.count("<user>") == 200 and len(out) == 200 * (6 + 5000)


def test_logit_bias_may_ban_but_not_force_and_eos_ids_are_token_ids():
    model = ferrolm.load(MODELS / "tiny-llama")
    with pytest.raises(ferrolm.InvalidArgumentError, match="logit_bias"):
        model.generate([1, 2, 3], max_new_tokens=3, logit_bias={5: float("inf")}, temperature=1.0)
    banned = model.generate([1, 2, 3], max_new_tokens=8, logit_bias={5: float("-inf")}, temperature=1.0, seed=1)
    assert 5 not in banned.tokens
    with pytest.raises(ferrolm.InvalidTokenError, match="eos_token_id"):
        model.generate([1, 2, 3], max_new_tokens=3, eos_token_id=2**40)
    with pytest.raises(ferrolm.InvalidArgumentError, match="logit_bias"):
        _core.SamplingParams(logit_bias=[(5, float("inf"))])


def test_a_shard_name_the_file_system_refuses_is_a_checkpoint_error(tmp_path):
    folder = copy_model("tiny-qwen2", tmp_path)
    index = folder / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["lm_head.weight"] = "a" * 300
    index.write_text(json.dumps(data))
    with pytest.raises(ferrolm.CheckpointError, match="cannot be opened"):
        ferrolm.load(folder)
