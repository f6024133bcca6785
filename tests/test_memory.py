"""ferrolm.estimate_memory: hand-computed figures for the fixtures and the notes' 1B example,
equality with the loaded models' weight bytes, `ferrolm memory`, and bad arguments. (The
estimate against measured peak RSS is checked in test_bench_cli.py, one fresh process per
configuration.)"""

from __future__ import annotations

import json

import pytest

import ferrolm
from ferrolm.cli import main
from ferrolm.memory import (GGUF_METADATA_BYTES_PER_TOKEN, GGUF_READER_BYTES, RUNTIME_BYTES, Architecture,
                            estimate_memory, rule_of_thumb_bytes)
from conftest import FIXTURES, MODELS, MODEL_NAMES, load_fixture


def test_notes_1b_example():
    # 4/2/2/1 bytes per parameter; full fine-tuning +20 bytes: about 24 GB per 1B parameters in FP32
    assert estimate_memory(10**9, "fp32").total_bytes == 4 * 10**9
    assert estimate_memory(10**9, "bf16").total_bytes == 2 * 10**9
    assert estimate_memory(10**9, "int8").total_bytes == 10**9
    est = estimate_memory(10**9, "fp32", training=True)
    assert est.total_bytes == 24 * 10**9 and est.training_bytes == 20 * 10**9 and not est.exact
    rule = est.rule_of_thumb()
    assert rule["fp32"] == 24e9 and rule["fp16"] == 22e9 and rule["int8"] == 21e9
    assert rule_of_thumb_bytes(10**9, "int4") == 0.625e9  # 0.5 + an f16 scale and minimum per 32 values
    text = est.format()
    assert "24.000" in text and "0.5 + scales" in text


def test_tiny_llama_hand_computed():
    # vocab 384, d 64, ffn 160, 2 layers, 4 heads / 2 kv heads of 16, lm_head untied
    matrices = [(384, 64)] + [(64 + 2 * 32, 64), (64, 64), (2 * 160, 64), (64, 160)] * 2 + [(384, 64)]
    values = sum(r * c for r, c in matrices)
    norms = 2 * 2 * 64 + 64
    assert values == 135168
    scales = sum(r * -(-c // 32) * 2 for r, c in matrices)  # an f16 scale per group of 32
    want = {"fp32": 4 * values, "bf16": 2 * values, "int8": values + scales}
    for precision, matmul in want.items():
        est = estimate_memory(MODELS / "tiny-llama", precision, context=100, threads=2)
        assert est.params == values + norms == 135488
        assert est.weights_bytes == matmul + 4 * norms
        # the default ("auto") KV cache: FP32 beside FP32 weights, BF16 beside the others
        assert est.kv_cache_bytes == 2 * 2 * 2 * 16 * 100 * (4 if precision == "fp32" else 2)
        # 100 rows of x, xn, qkv, q, att, gate+up, act; 48 rows of scores for each of 2 threads;
        # two logits rows
        rows = 100 * (2 * 64 + 128 + 2 * 64 + 320 + 160)
        assert est.buffers_bytes == 4 * (rows + 2 * 48 * 100 + 2 * 384)
        assert est.runtime_bytes == RUNTIME_BYTES
        assert est.loading_bytes == 2 * 4 * 384 * 64  # a block of file pages and its copy, at most one tensor
        assert est.total_bytes == est.weights_bytes + RUNTIME_BYTES + max(est.loading_bytes, est.kv_cache_bytes + est.buffers_bytes)
    assert estimate_memory(MODELS / "tiny-llama", "int8").weights_bytes == 135168 + 2 * 135168 // 32 + 4 * 320  # int8 values, f16 scales, norms
    big = estimate_memory(MODELS / "tiny-llama", "fp32", context=128, batch=3, threads=1)
    assert big.kv_cache_bytes == 3 * 2 * 2 * 2 * 16 * 128 * 4


def test_gpt2_and_qwen2_hand_computed():
    gpt2 = estimate_memory(MODELS / "tiny-gpt2", "fp32", context=16, threads=1)
    d, f, v, n = 64, 256, 384, 128  # n_inner unset: 4 * d
    layer = 3 * d * d + d * d + f * d + d * f + (4 * d + 3 * d + d + f + d)
    assert gpt2.params == v * d + 2 * layer + 2 * d + n * d  # tied wte, learned positions
    assert gpt2.loading_bytes == 2 * 4 * v * d + 4 * d * f  # plus the largest Conv1D transposed in FP32
    qwen = estimate_memory(MODELS / "tiny-qwen2", "bf16", context=16, threads=1)
    d, f, v, kv = 64, 128, 384, 16  # 1 kv head of 16
    matrices = v * d + 2 * ((d + 2 * kv) * d + d * d + 2 * f * d + d * f)
    fp32 = 2 * (2 * d + d + 2 * kv) + d  # norms and q/k/v biases
    assert qwen.params == matrices + fp32
    assert qwen.weights_bytes == 2 * matrices + 4 * fp32


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_weights_equal_the_loaded_models(model_name, precision):
    model = load_fixture(model_name, precision=precision)
    est = estimate_memory(MODELS / model_name, precision)
    assert est.weights_bytes == model._core.weight_bytes
    assert est.params == model.num_params
    assert est.context == model.context_length


def test_gguf_and_named_shapes():
    path = FIXTURES / "gguf" / "tiny-llama.gguf"
    model = ferrolm.load(path, "int8", progress=False)
    est = estimate_memory(path, "int8")
    assert est.weights_bytes == model._core.weight_bytes
    assert est.loading_bytes == GGUF_READER_BYTES + GGUF_METADATA_BYTES_PER_TOKEN * model.vocab_size
    tiny = estimate_memory("llama-1.1b", "fp32", context=2048)
    assert tiny.params == 1_100_048_384  # TinyLlama-1.1B
    assert tiny.kv_cache_bytes == 2 * 22 * 4 * 64 * 2048 * 4
    assert estimate_memory("llama-135m", "int8").weights_bytes == 143_025_408
    cfg = json.loads((MODELS / "tiny-llama" / "config.json").read_text())
    assert estimate_memory(cfg, "bf16").weights_bytes == estimate_memory(MODELS / "tiny-llama", "bf16").weights_bytes
    assert estimate_memory(MODELS / "tiny-llama" / "config.json").precision == "fp32"


def test_saved_int8_checkpoint(tmp_path):
    saved = load_fixture("tiny-llama", precision="int8").save(tmp_path / "q")
    est = estimate_memory(saved)
    assert est.precision == "int8" and est.weights_bytes == 144896
    with pytest.raises(ferrolm.InvalidArgumentError, match="loads only as int8"):
        estimate_memory(saved, "fp32")


def test_bad_arguments(tmp_path):
    with pytest.raises(ferrolm.InvalidArgumentError, match="FP16 weights are not available"):
        estimate_memory(MODELS / "tiny-llama", "fp16")
    with pytest.raises(ferrolm.InvalidArgumentError, match="precision must be one of"):
        estimate_memory(MODELS / "tiny-llama", "fp8")
    with pytest.raises(ferrolm.InvalidArgumentError, match="at most the model's 128"):
        estimate_memory(MODELS / "tiny-llama", context=129)
    with pytest.raises(ferrolm.InvalidArgumentError, match="batch"):
        estimate_memory(MODELS / "tiny-llama", batch=0)
    with pytest.raises(ferrolm.ModelNotFoundError):
        estimate_memory(tmp_path / "missing")
    with pytest.raises(ferrolm.ConfigError):
        estimate_memory({"model_type": "llama", "vocab_size": 10})
    with pytest.raises(ferrolm.InvalidArgumentError):
        estimate_memory(3.5)


def test_cli(capsys):
    assert main(["memory", str(MODELS / "tiny-llama"), "--precision", "int8", "--context", "64", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    for part in ("weights", "KV cache", "working buffers", "runtime", "loading", "total (peak)", "INT4", "FP16"):
        assert part in out
    assert main(["memory", "1e9", "--training", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["total_bytes"] == 24 * 10**9 and d["rule_of_thumb_bytes"]["bf16"] == 22e9
    assert main(["memory", str(MODELS / "tiny-llama"), "--precision", "fp16"]) == 2
    assert "not available in this version" in capsys.readouterr().err
    assert main(["memory", str(MODELS / "tiny-llama"), "--precision", "int4", "--context", "64"]) == 0
    assert "an f16 scale and minimum per 32 values" in capsys.readouterr().out
    assert main(["memory", "/no/such/model"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_architecture_matches_every_fixture():
    for name in MODEL_NAMES:
        arch = Architecture.from_config(json.loads((MODELS / name / "config.json").read_text()))
        model = load_fixture(name)
        assert arch.num_params() == model.num_params
        assert (arch.num_layers, arch.num_kv_heads, arch.head_dim) == (model._core.num_layers, model._core.num_kv_heads,
                                                                       model._core.head_dim)
