"""Saving quantized checkpoints (`Model.save`, `ferrolm quantize`): they reload without
converting (identical logits), hold what the format says, and never overwrite or modify
anything a user has on disk."""

import json

import numpy as np
import pytest

import ferrolm
from ferrolm.cli import main as cli
from conftest import FIXTURES, MODELS, copy_model, load_fixture, reference, read_safetensors
from quant_reference import quantize_int8

GGUF = FIXTURES / "gguf" / "tiny-llama.gguf"


def header(path):
    blob = path.read_bytes()
    n = int.from_bytes(blob[:8], "little")
    return json.loads(blob[8 : 8 + n])


@pytest.mark.parametrize("precision", ["fp32", "bf16", "int8"])
def test_saved_model_reloads_identically(model_name, precision, tmp_path):
    model = load_fixture(model_name, precision=precision)
    out = model.save(tmp_path / "saved")
    back = ferrolm.load(out, kv_cache="fp32")  # as the fixture
    assert back.precision == precision
    ids = list(reference(model_name)[0]["prompt_ids"])
    np.testing.assert_array_equal(back.logits(ids), model.logits(ids))
    assert back.tokenizer is not None and back.tokenizer.encode("hello world") == model.tokenizer.encode("hello world")
    assert back.eos_token_ids == model.eos_token_ids
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary left behind


def test_int8_layout_on_disk(tmp_path):
    model = load_fixture("tiny-llama", precision="int8")
    out = model.save(tmp_path / "q")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["quantization_config"] == {"quant_method": "ferrolm", "precision": "int8", "group_size": 32, "scheme": "w8a16"}
    h = header(out / "model.safetensors")
    name = "model.layers.0.self_attn.q_proj.weight"
    rows, cols = h[name]["shape"]
    assert h[name]["dtype"] == "I8" and h[name + "_scale"] == {**h[name + "_scale"], "dtype": "F16", "shape": [rows, -(-cols // 32)]}
    assert h["model.norm.weight"]["dtype"] == "F32"
    tensors = read_safetensors((out / "model.safetensors").read_bytes())
    q, s = tensors[name].astype(np.float32), tensors[name + "_scale"]
    assert q.min() >= -127 and q.max() <= 127
    # exactly the documented quantization of the originals (kernels/quant.rs; tests/quant_reference.py)
    orig = read_safetensors((MODELS / "tiny-llama" / "model.safetensors").read_bytes())[name]
    want_q, want_s, _ = quantize_int8(orig)
    np.testing.assert_array_equal(s, want_s)
    np.testing.assert_array_equal(q, want_q)
    # each group's scale is max|w| / (127 + j) in f16, j in [-16, 0] (the f16 rounding moves
    # max|w| / scale by at most 127 · 2^-11 from 127 + j); the error is at most the plain scale's
    g = orig.reshape(rows, -1, 32)
    s = s.astype(np.float32)
    j = np.abs(g).max(axis=-1) / s - 127
    assert np.allclose(j, np.round(j), atol=0.07) and (np.round(j) >= -16).all() and (np.round(j) <= 0).all()
    deq = (q.reshape(rows, -1, 32) * s[:, :, None])
    plain = np.abs(g).max(axis=-1, keepdims=True) / np.float32(127)
    plain = plain.astype(np.float16).astype(np.float32)
    plain_err = ((np.clip(np.round(g / plain), -127, 127) * plain - g) ** 2).sum(-1)
    assert (((deq - g) ** 2).sum(-1) <= plain_err * (1 + 1e-4)).all()
    assert ((deq - g) ** 2).sum() < 0.95 * plain_err.sum()


def test_bf16_is_a_plain_bf16_checkpoint(tmp_path):
    out = load_fixture("tiny-gpt2", precision="bf16").save(tmp_path / "b")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["torch_dtype"] == "bfloat16" and "quantization_config" not in cfg
    h = header(out / "model.safetensors")
    # Conv1D weights go back to GPT-2's [in, out] layout; norms and positions stay F32
    assert h["transformer.h.0.attn.c_attn.weight"]["dtype"] == "BF16"
    orig = header(MODELS / "tiny-gpt2" / "model.safetensors")
    key = next(k for k in orig if k.endswith("h.0.attn.c_attn.weight"))
    assert h["transformer.h.0.attn.c_attn.weight"]["shape"] == orig[key]["shape"]
    assert h["transformer.wpe.weight"]["dtype"] == "F32"


def test_int8_checkpoint_refuses_other_precisions(tmp_path):
    out = load_fixture("tiny-llama", precision="int8").save(tmp_path / "q")
    with pytest.raises(ferrolm.errors.InvalidArgumentError, match="precision='int8'"):
        ferrolm.load(out, precision="bf16")
    # missing scales: a clear error, not a crash
    blob = (out / "model.safetensors").read_bytes()
    n = int.from_bytes(blob[:8], "little")
    h = json.loads(blob[8 : 8 + n])
    h["model.layers.0.mlp.up_proj.weight_bogus"] = h.pop("model.layers.0.mlp.up_proj.weight_scale")
    hb = json.dumps(h).encode()
    hb += b" " * (-len(hb) % 8)
    (out / "model.safetensors").write_bytes(len(hb).to_bytes(8, "little") + hb + blob[8 + n :])
    with pytest.raises(ferrolm.errors.TensorError, match="weight_scale"):
        ferrolm.load(out)


def test_gguf_q8_0_becomes_int8_without_requantizing(tmp_path):
    pytest.importorskip("gguf")
    import gguf

    model = ferrolm.load(GGUF, precision="int8")
    name = "model.layers.0.mlp.up_proj.weight"  # stored as Q8_0 in the fixture
    q = np.frombuffer(model._core.export_tensor(name), dtype=np.int8)
    scales = np.frombuffer(model._core.export_tensor(name + "_scale"), dtype=np.float16)
    reader = gguf.GGUFReader(GGUF)
    t = next(t for t in reader.tensors if t.name == "blk.0.ffn_up.weight")
    assert t.tensor_type.name == "Q8_0"
    blocks = np.asarray(t.data, dtype=np.uint8).reshape(-1, 34)
    np.testing.assert_array_equal(q, blocks[:, 2:].view(np.int8).ravel())
    np.testing.assert_array_equal(scales.view(np.uint16), blocks[:, :2].copy().view(np.uint16).ravel())  # bit for bit


def test_gguf_saves_as_a_hugging_face_folder(tmp_path):
    pytest.importorskip("gguf")
    model = ferrolm.load(GGUF, precision="bf16")
    out = model.save(tmp_path / "from-gguf")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= {p.name for p in out.iterdir()}
    back = ferrolm.load(out)
    ids = [1, 5, 9, 20, 3]
    np.testing.assert_array_equal(back.logits(ids), model.logits(ids))
    assert back.eos_token_ids == model.eos_token_ids


def snapshot(folder):
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_never_overwrites_without_force(tmp_path, capsys):
    src = copy_model("tiny-llama", tmp_path)
    before = snapshot(src)
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    # an existing folder is refused, with or without --force when it is not a model folder
    assert cli(["quantize", str(src), str(taken), "--precision", "int8"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli(["quantize", str(src), str(taken), "--precision", "int8", "--force"]) == 2
    assert "not a model folder" in capsys.readouterr().err
    assert (taken / "notes.txt").read_text() == "mine"
    # never in place, nor inside the source
    assert cli(["quantize", str(src), str(src), "--precision", "int8", "--force"]) == 2
    assert cli(["quantize", str(src), str(src / "sub"), "--precision", "int8"]) == 2
    assert snapshot(src) == before
    # a new folder, then --force over that model folder
    out = tmp_path / "out"
    assert cli(["quantize", str(src), str(out), "--precision", "int8", "--no-progress"]) == 0
    assert "wrote" in capsys.readouterr().out
    assert cli(["quantize", str(src), str(out), "--precision", "bf16", "--force", "--no-progress"]) == 0
    assert ferrolm.load(out).precision == "bf16"
    assert snapshot(src) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "taken", "tiny-llama"]


def test_save_reports_progress(tmp_path):
    calls = []
    model = load_fixture("tiny-qwen2", precision="int8")
    model.save(tmp_path / "p", progress=lambda done, total, name: calls.append((done, total)))
    n = len(model._core.export_entries())
    assert calls == [(i + 1, n) for i in range(n)]


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    model = load_fixture("tiny-llama", precision="int8")

    def boom(done, total, name):
        if done == 3:
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        model.save(tmp_path / "x", progress=boom)
    assert list(tmp_path.iterdir()) == []
