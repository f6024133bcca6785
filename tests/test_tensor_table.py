"""The core's tensor-name tables (rust/model/names.rs, llama.rs, gpt2.rs) as the Python layer sees
them: rows, GPT-2's optional prefix, checkpoint layouts, and the readers that rely on them."""

from __future__ import annotations

import json

import numpy as np
import pytest

import ferrolm
from ferrolm import _core
from ferrolm.errors import InvalidArgumentError, MissingTensorError
from ferrolm import safetensors_io
from ferrolm.loading import TensorReader, read_checkpoint

from conftest import MODELS, copy_model, load_fixture, read_safetensors, write_safetensors

KEYS = {"name", "role", "part", "layout", "when", "gguf"}
ROLES = {"embed", "pos_embed", "head", "final_norm", "attn_norm", "mlp_norm", "q", "k", "v", "qkv", "o", "gate", "up", "down"}


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_rows_are_complete(arch):
    rows = _core.tensor_table(arch)
    assert rows and all(set(r) == KEYS for r in rows)
    assert len({r["name"] for r in rows}) == len(rows)
    for r in rows:
        assert r["role"] in ROLES and r["part"] in ("weight", "bias")
        assert r["layout"] in ("linear", "conv1d", "plain") and r["when"] in ("always", "qkv_bias", "o_bias", "mlp_bias", "untied")
        assert r["name"].endswith("." + r["part"])
        assert r["part"] == "weight" or r["layout"] == "plain"
    # load order: embeddings, a layer, the output
    assert rows[0]["role"] == "embed" and rows[-1]["role"] == "head" and rows[-1]["when"] == "untied"


def test_llama_rows():
    rows = {r["name"]: r for r in _core.tensor_table("llama")}
    assert rows["model.layers.{i}.self_attn.k_proj.weight"] == {
        "name": "model.layers.{i}.self_attn.k_proj.weight", "role": "k", "part": "weight", "layout": "linear",
        "when": "always", "gguf": "blk.{i}.attn_k.weight",
    }  # fmt: skip
    assert rows["model.layers.{i}.self_attn.q_proj.bias"]["when"] == "qkv_bias"
    assert rows["model.layers.{i}.self_attn.o_proj.bias"]["when"] == "o_bias"
    assert rows["model.layers.{i}.mlp.down_proj.bias"]["when"] == "mlp_bias"
    assert rows["model.norm.weight"]["gguf"] == "output_norm.weight"
    assert rows["lm_head.weight"]["gguf"] == "output.weight"
    assert [r["role"] for r in _core.tensor_table("llama") if r["part"] == "weight" and "{i}" in r["name"]] == [
        "attn_norm", "q", "k", "v", "o", "mlp_norm", "gate", "up", "down"
    ]  # fmt: skip


def test_gpt2_rows():
    rows = {r["name"]: r for r in _core.tensor_table("gpt2")}
    conv1d = {n for n, r in rows.items() if r["layout"] == "conv1d"}
    assert conv1d == {f"transformer.h.{{i}}.{m}.weight" for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert rows["transformer.wpe.weight"]["layout"] == "plain" and rows["transformer.wte.weight"]["layout"] == "linear"
    assert all(r["gguf"] is None for r in rows.values())


def test_unknown_architecture():
    with pytest.raises(InvalidArgumentError, match="unknown architecture 'bert'"):
        _core.tensor_table("bert")


def test_the_gguf_names_are_the_gguf_packages_own():
    gguf = pytest.importorskip("gguf")
    known = {gguf.TENSOR_NAMES[t].replace("{bid}", "{i}") for t in gguf.MODEL_TENSORS[gguf.MODEL_ARCH.LLAMA]}
    rows = _core.tensor_table("llama")
    for r in rows:
        base, part = r["gguf"].rsplit(".", 1)
        assert base in known and part == r["part"], r
    assert len({r["gguf"] for r in rows}) == len(rows)


def test_checkpoint_names():
    assert _core.checkpoint_names("transformer.h.1.mlp.c_fc.weight") == ["transformer.h.1.mlp.c_fc.weight", "h.1.mlp.c_fc.weight"]
    assert _core.checkpoint_names("transformer.ln_f.bias") == ["transformer.ln_f.bias", "ln_f.bias"]
    for name in ("lm_head.weight", "h.1.mlp.c_fc.weight", "model.layers.0.self_attn.q_proj.weight", "transformer.other.weight"):
        assert _core.checkpoint_names(name) == [name]


def test_checkpoint_layouts():
    gpt2 = load_fixture("tiny-gpt2")._core
    for name in ("transformer.h.0.attn.c_attn.weight", "h.1.mlp.c_proj.weight"):
        assert gpt2.checkpoint_layout(name) == "conv1d"
    assert gpt2.checkpoint_layout("transformer.wte.weight") == "linear"
    assert gpt2.checkpoint_layout("wpe.weight") == "plain"
    llama = load_fixture("tiny-llama")._core
    assert llama.checkpoint_layout("model.layers.1.mlp.gate_proj.weight") == "linear"
    assert llama.checkpoint_layout("model.layers.1.mlp.gate_proj.bias") == "plain"
    for core, name in ((llama, "transformer.h.0.attn.c_attn.weight"), (gpt2, "model.norm.weight"), (llama, "model.layers.x.mlp.up_proj.weight")):
        with pytest.raises(InvalidArgumentError, match="checkpoint tensor"):
            core.checkpoint_layout(name)


def test_reader_finds_gpt2_tensors_saved_without_the_prefix(tmp_path):
    full = copy_model("tiny-gpt2", tmp_path / "full")
    short = copy_model("tiny-gpt2", tmp_path / "short")
    tensors = read_safetensors((full / "model.safetensors").read_bytes())
    assert all(n.startswith("transformer.") for n in tensors if n != "lm_head.weight")
    write_safetensors(short / "model.safetensors", {n.removeprefix("transformer."): t for n, t in tensors.items()})
    with TensorReader(read_checkpoint(full)) as a, TensorReader(read_checkpoint(short)) as b:
        for name in ("transformer.h.0.attn.c_attn.weight", "transformer.wpe.weight", "transformer.ln_f.bias"):
            want = a.read(name)
            assert want.shape == tensors[name].shape
            np.testing.assert_array_equal(b.read(name), want)
        with pytest.raises(MissingTensorError):
            b.read("transformer.h.9.attn.c_attn.weight")
    # and the short names load to the same model
    ids = [1, 2, 3, 4]
    np.testing.assert_array_equal(ferrolm.load(short, threads=2).logits(ids), ferrolm.load(full, threads=2).logits(ids))


def test_table_names_match_the_fixture_checkpoints():
    """Every tensor of the fixture folders is a row of its architecture's table."""
    for name, arch in (("tiny-llama", "llama"), ("tiny-qwen2", "llama"), ("tiny-gpt2", "gpt2")):
        folder = MODELS / name
        cfg = json.loads((folder / "config.json").read_text())
        stored = set()
        for f in read_checkpoint(folder).weight_files:
            stored |= set(safetensors_io.header(f))
        layers = cfg.get("num_hidden_layers", cfg.get("n_layer"))
        expanded = set()
        for r in _core.tensor_table(arch):
            expanded |= {r["name"].replace("{i}", str(i)) for i in range(layers)} if "{i}" in r["name"] else {r["name"]}
        assert stored <= expanded, stored - expanded
