"""Bad input raises a specific ferrolm exception, never a panic or a hang; nothing on disk changes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

import ferrolm
from ferrolm import _core
from conftest import MODELS, copy_model, load_fixture, random_llama, read_safetensors, write_safetensors


def snapshot(folder: Path):
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir())}


def test_loading_never_writes_into_the_folder(tmp_path):
    folder = copy_model("tiny-qwen2", tmp_path)
    before = snapshot(folder)
    model = ferrolm.load(folder)
    model.generate("The river", max_new_tokens=4)
    assert snapshot(folder) == before


def test_missing_paths_and_files(tmp_path):
    with pytest.raises(ferrolm.ModelNotFoundError, match="does not exist"):
        ferrolm.load(tmp_path / "nothing")
    with pytest.raises(FileNotFoundError):  # ModelNotFoundError is also a FileNotFoundError
        ferrolm.load(tmp_path / "nothing")
    with pytest.raises(ferrolm.ModelNotFoundError, match="config.json"):
        ferrolm.load(tmp_path)
    folder = copy_model("tiny-llama", tmp_path)
    (folder / "model.safetensors").unlink()
    with pytest.raises(ferrolm.ModelNotFoundError, match="model.safetensors"):
        ferrolm.load(folder)
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(ferrolm.CheckpointError, match="pickle"):
        ferrolm.load(folder)


def test_missing_shard(tmp_path):
    folder = copy_model("tiny-qwen2", tmp_path)
    next(folder.glob("model-00002-*.safetensors")).unlink()
    with pytest.raises(ferrolm.ModelNotFoundError, match="shard"):
        ferrolm.load(folder)


def test_corrupt_files(tmp_path):
    folder = copy_model("tiny-llama", tmp_path)
    st = folder / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    with pytest.raises(ferrolm.CheckpointError, match="safetensors"):
        ferrolm.load(folder)
    st.write_bytes(b"\xff" * 64)
    with pytest.raises(ferrolm.CheckpointError):
        ferrolm.load(folder)
    st.write_bytes(data)
    (folder / "config.json").write_text("{ not json")
    with pytest.raises(ferrolm.ConfigError, match="JSON"):
        ferrolm.load(folder)
    (folder / "config.json").write_text((MODELS / "tiny-llama" / "config.json").read_text())
    (folder / "tokenizer.json").write_text("garbage")
    with pytest.raises(ferrolm.CheckpointError, match="tokenizer"):
        ferrolm.load(folder)


def test_unknown_architecture_and_bad_config(tmp_path):
    folder = copy_model("tiny-llama", tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "model_type": "bert"}))
    with pytest.raises(ferrolm.ConfigError, match="unsupported architecture 'bert'"):
        ferrolm.load(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "num_key_value_heads": 3}))
    with pytest.raises(ferrolm.ConfigError, match="multiple"):
        ferrolm.load(folder)
    (folder / "config.json").write_text(json.dumps({**cfg, "hidden_size": 96}))
    with pytest.raises(ferrolm.TensorError, match="shape"):
        ferrolm.load(folder)


def test_missing_and_misshapen_tensors(tmp_path):
    folder = random_llama(tmp_path / "m")
    ferrolm.load(folder)  # the unmodified model loads
    st = folder / "model.safetensors"
    good = st.read_bytes()

    def rewrite(drop=None, reshape=None):
        t = read_safetensors(good)
        if drop:
            del t[drop]
        if reshape:
            t[reshape] = t[reshape][:-1]
        write_safetensors(st, t)

    rewrite(drop="model.layers.1.mlp.up_proj.weight")
    with pytest.raises(ferrolm.MissingTensorError, match="model.layers.1.mlp.up_proj.weight"):
        ferrolm.load(folder)
    rewrite(reshape="model.layers.0.self_attn.k_proj.weight")
    with pytest.raises(ferrolm.TensorError, match="k_proj"):
        ferrolm.load(folder)


def test_bad_load_arguments():
    with pytest.raises(ferrolm.InvalidArgumentError, match="precision"):
        ferrolm.load(MODELS / "tiny-llama", precision="fp8")
    with pytest.raises(ferrolm.InvalidArgumentError, match="device"):
        ferrolm.load(MODELS / "tiny-llama", device="tpu")
    for threads in (0, -1, 2.5, True):
        with pytest.raises(ferrolm.InvalidArgumentError, match="threads"):
            ferrolm.load(MODELS / "tiny-llama", threads=threads)
    for ctx in (0, 129, "x"):
        with pytest.raises(ferrolm.InvalidArgumentError, match="context_length"):
            ferrolm.load(MODELS / "tiny-llama", context_length=ctx)


@pytest.mark.parametrize("kwargs,match", [
    (dict(top_p=0.0), "top_p"), (dict(top_p=1.5), "top_p"), (dict(temperature=-0.1), "temperature"),
    (dict(temperature=float("nan")), "temperature"), (dict(top_k=-1), "top_k"), (dict(min_p=1.5), "min_p"),
    (dict(repetition_penalty=0.0), "repetition_penalty"), (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(min_new_tokens=500), "min_new_tokens"), (dict(stop=[""]), "stop"), (dict(stop=3), "stop"),
    (dict(seed=-1), "seed"), (dict(logit_bias={-1: 1.0}), "logit_bias"),
    (dict(frequency_penalty=float("inf")), "frequency_penalty"), (dict(bogus=1), "bogus"),
])
def test_out_of_range_knobs(kwargs, match):
    model = load_fixture("tiny-llama")
    with pytest.raises(ferrolm.InvalidArgumentError, match=match):
        model.generate("The river", **kwargs)
    with pytest.raises(ValueError):  # also a ValueError
        model.generate("The river", **kwargs)


def test_generation_config_validates_on_construction():
    with pytest.raises(ferrolm.InvalidArgumentError):
        ferrolm.GenerationConfig(top_p=2)
    with pytest.raises(ferrolm.InvalidArgumentError, match="config must be"):
        load_fixture("tiny-llama").generate("x", config={"top_p": 0.5})


def test_bad_prompts_and_token_ids():
    model = load_fixture("tiny-llama")
    with pytest.raises(ferrolm.InvalidArgumentError, match="empty"):
        model.generate("")
    with pytest.raises(ferrolm.InvalidArgumentError, match="empty"):
        model.generate([])
    with pytest.raises(ferrolm.InvalidArgumentError, match="prompt must be"):
        model.generate(3.5)
    with pytest.raises(ferrolm.InvalidTokenError, match="384"):
        model.generate([1, 384])
    with pytest.raises(ferrolm.InvalidTokenError):
        model.generate([-1])
    with pytest.raises(ferrolm.InvalidArgumentError):
        model.generate([1, "a"])
    with pytest.raises(ferrolm.InvalidTokenError):
        model.generate([1], logit_bias={999: 1.0})
    with pytest.raises(ferrolm.InvalidTokenError):
        model.logits([0, 10**12])
    with pytest.raises(ferrolm.ContextLengthError, match="context length"):
        model.generate(list(range(1, 130)))
    with pytest.raises(ferrolm.ContextLengthError):
        model.generate("a b c " * 200)


def test_session_refuses_to_run_past_the_context():
    model = load_fixture("tiny-gpt2")
    s = model._core.new_session(8)
    s.forward([1] * 8)
    with pytest.raises(ferrolm.ContextLengthError, match="exceeds the context length of 8"):
        s.forward([1])
    assert s.position == 8  # unchanged by the refused call
    with pytest.raises(ferrolm.InvalidTokenError):
        s.forward([1, 99999])
    s.reset()
    assert s.position == 0
    with pytest.raises(ferrolm.InvalidArgumentError, match="no logits"):
        s.logits()
    with pytest.raises(ferrolm.InvalidArgumentError):
        model._core.new_session(0)
    with pytest.raises(ferrolm.InvalidArgumentError):
        _core.SamplingParams(top_p=0)


def test_model_without_tokenizer_works_with_ids(tmp_path):
    folder = copy_model("tiny-llama", tmp_path)
    (folder / "tokenizer.json").unlink()
    model = ferrolm.load(folder)
    out = model.generate([1, 2, 3], max_new_tokens=5, ignore_eos=True)
    assert len(out.tokens) == 5 and out.text == ""
    with pytest.raises(ferrolm.TokenizerError, match="token ids"):
        model.generate("text")


def test_every_error_is_a_ferrolm_error():
    for name in ferrolm.errors.__all__:
        assert issubclass(getattr(ferrolm, name), ferrolm.FerrolmError)
