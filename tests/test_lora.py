"""LoRA adapters (PEFT format): merged and unmerged, switching, every precision, bad adapters.
Adapters written here are checked against the direct FP32 computation W + scale·B·A; the PEFT
references (tests/fixtures/adapters) are checked in test_peft.py."""

import json

import numpy as np
import pytest

import ferrolm
from ferrolm.cli import main as cli
from ferrolm.lora import lora_stats, read_lora
from ferrolm.safetensors_io import save_arrays
from conftest import MODELS, copy_model, load_fixture, read_safetensors, reference
from quant_reference import quantize_int8

IDS = [int(t) for t in reference("tiny-llama")[0]["prompt_ids"]]


def write_adapter(folder, model_name, targets, r=4, alpha=8.0, seed=0, rslora=False, layers=(0, 1), scale=0.2):
    """A PEFT-style adapter with non-zero A and B for `targets` (module names) of every layer."""
    rng = np.random.default_rng(seed)
    base = ferrolm.load(MODELS / model_name)
    tensors = {}
    for layer in layers:
        for t in targets:
            weight = (f"model.layers.{layer}.{t}" if model_name != "tiny-gpt2" else f"transformer.h.{layer}.{t}") + ".weight"
            rows, k = base._core.adaptable_shape(weight)
            key = "base_model.model." + weight[: -len(".weight")]
            tensors[key + ".lora_A.weight"] = (rng.standard_normal((r, k)) * scale).astype(np.float32)
            tensors[key + ".lora_B.weight"] = (rng.standard_normal((rows, r)) * scale).astype(np.float32)
    folder.mkdir(parents=True)
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": alpha, "use_rslora": rslora, "bias": "none",
           "target_modules": sorted({t.split(".")[-1] for t in targets}), "fan_in_fan_out": model_name == "tiny-gpt2"}
    (folder / "adapter_config.json").write_text(json.dumps(cfg))
    save_arrays(folder / "adapter_model.safetensors", tensors)
    return folder


def merged_reference(tmp_path, model_name, adapter_dir):
    """An FP32 checkpoint with W + scale·B·A written in numpy (float64), loaded as is."""
    ad = read_lora(adapter_dir)
    folder = copy_model(model_name, tmp_path / "merged-ref")
    done = set()
    for shard in sorted(folder.glob("*.safetensors")):  # one file or several shards
        weights = read_safetensors(shard.read_bytes())
        for p in ad.pairs:
            key = p.weight if p.weight in weights else p.weight[len("transformer."):]
            if key not in weights:
                continue
            delta = ad.scale * (p.b.astype(np.float64) @ p.a.astype(np.float64))
            weights[key] = (weights[key].astype(np.float64) + (delta.T if model_name == "tiny-gpt2" else delta)).astype(np.float32)
            done.add(p.weight)
        save_arrays(shard, weights)
    assert done == {p.weight for p in ad.pairs}
    return ferrolm.load(folder)


def stored_weight(model, name):
    """The active weights' `name` as the model stores it: float32 [rows, in], BF16 bits, or
    (INT8 values, scales [rows, in/32]) — read back through the export path."""
    core = model._core
    rows, k = core.adaptable_shape(name)
    raw = core.export_tensor(name)
    if model.precision == "fp32":
        return np.frombuffer(raw, np.float32).reshape(rows, k)
    if model.precision == "bf16":
        return np.frombuffer(raw, "<u2").reshape(rows, k)
    return np.frombuffer(raw, np.int8).reshape(rows, k), np.frombuffer(core.export_tensor(name + "_scale"), np.float16).astype(np.float32).reshape(rows, -1)


def convert(w, precision, slack=0.0):
    """float32 weights [rows, in] converted as kernels/quant.rs documents: BF16 rounds to nearest
    even; INT8 takes groups of 32 along a row with the searched scale of tests/quant_reference.py,
    q = round(w / scale) (half away from zero) in [-127, 127]. Also returns a mask of the values within `slack` (absolute,
    per value) or a hair of a rounding midpoint: a last-bit difference in a float32 sum upstream
    may round those the other way."""
    w = np.ascontiguousarray(w, dtype=np.float32)
    if precision == "bf16":
        bits = w.view(np.uint32)
        out = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
        mid = ((bits & 0xFFFF0000) | 0x8000).view(np.float32)
        near = np.abs(w.astype(np.float64) - mid) <= np.maximum(slack, 64 * np.spacing(np.abs(w)))
        return out, near
    rows, k = w.shape
    q, scale, margin = quantize_int8(w)
    g = w.reshape(rows, k // 32, 32)
    y = g / np.where(scale > 0, scale, 1)[..., None]
    band = 1e-3 + np.broadcast_to(slack, w.shape).reshape(g.shape) / np.where(scale > 0, scale, 1)[..., None]
    near = np.abs(np.abs(y) % 1 - 0.5) < band
    # a group whose best two scales are within a hair may pick the other one
    near |= (margin < 1e-5)[..., None]
    return (q, scale), near.reshape(rows, k)


def values(stored, precision):
    """The BF16 bits, or the INT8 values without their scales, of a stored or converted weight."""
    return stored if precision == "bf16" else stored[0]


def widened(stored, precision):
    """A stored BF16 or INT8 weight back in float32 (widened or dequantized)."""
    if precision == "bf16":
        return (stored.astype(np.uint32) << 16).view(np.float32)
    q, scales = stored
    return q.astype(np.float32) * np.repeat(scales, 32, axis=1)


def merged_twice_differs(plain_model, pair, scale, merged):
    """How many values would differ had the merge started from the converted weights (rounding
    twice) instead of the originals."""
    p = plain_model.precision
    base = widened(stored_weight(plain_model, pair.weight), p)
    twice = convert(merge_f32(base, scale, pair.b, pair.a)[0], p)[0]
    return int((values(twice, p) != values(convert(merged, p)[0], p)).sum())


def merge_f32(original, scale, b, a):
    """original + scale·B·A in float32 in the core's order (B·A first, then scale, then the sum),
    and the slack of B·A's own float32 rounding (its order of summation is the kernel's)."""
    ba = (b.astype(np.float64) @ a.astype(np.float64)).astype(np.float32)
    term = np.float32(scale) * ba
    return original.astype(np.float32) + term, 4 * np.spacing(np.abs(term)).astype(np.float64)


def assert_stored_as(model, name, original, pair, scale):
    """The model stores `name` as convert(original + scale·B·A): exactly, but for values at a
    rounding midpoint, which may land one step off."""
    merged, slack = merge_f32(original, scale, pair.b, pair.a)
    got = stored_weight(model, name)
    want, near = convert(merged, model.precision, slack)
    if model.precision == "bf16":
        diff = got != want
        assert (np.abs(got.astype(np.int64) - want) <= 1).all(), name
    else:
        tie = near.reshape(got[1].shape + (32,)).all(-1)  # groups whose scale choice is a near tie
        assert tie.mean() < 0.05, name
        np.testing.assert_allclose(got[1][~tie], want[1][~tie], rtol=3e-7, atol=0, err_msg=name)
        diff = got[0] != want[0]
        assert (np.abs(got[0].astype(np.int64) - want[0]) <= 1)[~np.repeat(tie, 32, axis=1)].all(), name
    assert not (diff & ~near).any(), f"{name}: {int((diff & ~near).sum())} values converted differently"
    if model.precision != "bf16":
        diff = diff & ~np.repeat(tie, 32, axis=1)
    assert diff.sum() <= max(2, diff.size // 1000), name
    return merged


@pytest.mark.parametrize("model_name,targets", [
    ("tiny-llama", ["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"]),
    ("tiny-gpt2", ["attn.c_attn", "mlp.c_fc"]),
    ("tiny-qwen2", ["self_attn.k_proj", "self_attn.o_proj"]),
])
def test_merged_and_unmerged_match_the_direct_computation(tmp_path, model_name, targets):
    ad = write_adapter(tmp_path / "ad", model_name, targets)
    ids = IDS[:12]
    want = merged_reference(tmp_path, model_name, ad).logits(ids)
    model = ferrolm.load(MODELS / model_name)
    base = model.logits(ids)
    assert np.abs(want - base).max() > 0.05 * np.abs(base).max()  # the adapter matters
    model.load_lora(ad, name="merged")
    model.load_lora(ad, name="live", merged=False)
    tol = 2e-5 * np.abs(want).max()
    np.testing.assert_allclose(model.logits(ids, adapter="live"), want, atol=tol, rtol=0)
    model.set_adapter("merged")
    np.testing.assert_allclose(model.logits(ids), want, atol=tol, rtol=0)
    model.set_adapter(None)
    np.testing.assert_array_equal(model.logits(ids), base)


def test_switching_reproduces_each_state_exactly(tmp_path):
    a = write_adapter(tmp_path / "a", "tiny-llama", ["self_attn.q_proj", "self_attn.k_proj"], seed=1)
    b = write_adapter(tmp_path / "b", "tiny-llama", ["mlp.gate_proj", "mlp.up_proj"], r=8, alpha=16, rslora=True, seed=2)
    model = ferrolm.load(MODELS / "tiny-llama")
    base = model.logits(IDS)
    model.load_lora(a, name="a")
    model.load_lora(b, name="b")
    model.set_adapter("a")
    la = model.logits(IDS)
    out_a = model.generate(IDS, max_new_tokens=8, ignore_eos=True).tokens
    model.set_adapter("b")
    lb = model.logits(IDS)
    model.set_adapter(None)
    np.testing.assert_array_equal(model.logits(IDS), base)
    model.set_adapter("a")
    np.testing.assert_array_equal(model.logits(IDS), la)
    assert model.generate(IDS, max_new_tokens=8, ignore_eos=True).tokens == out_a
    model.set_adapter("b")
    np.testing.assert_array_equal(model.logits(IDS), lb)
    assert model.active_adapter == "b" and model.adapters == {"a": "merged", "b": "merged"}
    assert read_lora(b).scale == pytest.approx(16 / np.sqrt(8))
    model.remove_adapter("b")
    assert model.active_adapter is None
    np.testing.assert_array_equal(model.logits(IDS), base)


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_lower_precisions_merge_before_converting(tmp_path, precision):
    """The adapted weights are the checkpoint's FP32 weights plus scale·B·A, converted like any
    weight — checked value by value against numpy — so the model stays as close to the FP32
    adapted model as the precision's plain load is to FP32."""
    ad = write_adapter(tmp_path / "ad", "tiny-llama", ["self_attn.q_proj", "mlp.up_proj"])
    originals = read_safetensors((MODELS / "tiny-llama" / "model.safetensors").read_bytes())
    fp32 = ferrolm.load(MODELS / "tiny-llama")
    fp32.load_lora(ad)
    fp32.set_adapter("ad")
    want = fp32.logits(IDS)
    model = ferrolm.load(MODELS / "tiny-llama", precision=precision, kv_cache="fp32")  # as the fixture
    model.load_lora(ad)
    model.set_adapter("ad")
    lora = read_lora(ad)
    assert len(lora.pairs) == 4
    plain_model = load_fixture("tiny-llama", precision=precision)
    wrong = 0
    for p in lora.pairs:
        merged = assert_stored_as(model, p.weight, originals[p.weight], p, lora.scale)
        wrong += merged_twice_differs(plain_model, p, lora.scale, merged)
    assert wrong > 100, wrong  # merging into the converted weights would be seen
    err = np.abs(model.logits(IDS) - want).max()
    plain = np.abs(plain_model.logits(IDS) - load_fixture("tiny-llama").logits(IDS)).max()
    # measured: 1.2x (BF16) and 2.0x (INT8) the plain model's error; the adapter itself moves the logits >30x that
    assert err < 3 * plain
    assert np.abs(plain_model.logits(IDS) - want).max() > 10 * plain
    model.set_adapter(None)
    np.testing.assert_array_equal(model.logits(IDS), plain_model.logits(IDS))


def test_bad_adapters_raise_and_change_nothing(tmp_path):
    model = ferrolm.load(MODELS / "tiny-llama")
    base = model.logits(IDS)
    good = write_adapter(tmp_path / "good", "tiny-llama", ["self_attn.q_proj"])
    cases = {}
    # unknown module
    d = tmp_path / "unknown"
    d.mkdir()
    (d / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    t = read_safetensors((good / "adapter_model.safetensors").read_bytes())
    save_arrays(d / "adapter_model.safetensors", {k.replace("q_proj", "foo_proj"): v for k, v in t.items()})
    cases[d] = ferrolm.errors.InvalidArgumentError
    # wrong shape (in_features)
    d = tmp_path / "shape"
    d.mkdir()
    (d / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    save_arrays(d / "adapter_model.safetensors", {k: (v[:, :-1] if "lora_A" in k else v) for k, v in t.items()})
    cases[d] = ferrolm.errors.InvalidArgumentError
    # rank 0, and a rank that does not match the tensors
    for r, name in ((0, "rank0"), (3, "rank3")):
        d = tmp_path / name
        d.mkdir()
        cfg = json.loads((good / "adapter_config.json").read_text())
        cfg["r"] = r
        (d / "adapter_config.json").write_text(json.dumps(cfg))
        (d / "adapter_model.safetensors").write_bytes((good / "adapter_model.safetensors").read_bytes())
        cases[d] = ferrolm.errors.ConfigError if r == 0 else ferrolm.errors.TensorError
    # pickle only
    d = tmp_path / "pickle"
    d.mkdir()
    (d / "adapter_config.json").write_text((good / "adapter_config.json").read_text())
    (d / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
    cases[d] = ferrolm.errors.CheckpointError
    cases[tmp_path / "missing"] = ferrolm.errors.ModelNotFoundError
    for folder, err in cases.items():
        with pytest.raises(err):
            model.load_lora(folder)
    assert model.adapters == {}
    model.load_lora(good, name="g")
    with pytest.raises(ferrolm.errors.InvalidArgumentError, match="already loaded"):
        model.load_lora(good, name="g")
    with pytest.raises(ferrolm.errors.InvalidArgumentError, match="no adapter named"):
        model.set_adapter("nope")
    with pytest.raises(ferrolm.errors.InvalidArgumentError, match="merged"):
        model.generate(IDS, max_new_tokens=2, adapter="g")  # merged adapters are not per-call
    np.testing.assert_array_equal(model.logits(IDS), base)


def test_lora_stats_counts_trainable_parameters(tmp_path):
    # the notes' example: a 512x64 weight at r=8 trains 86% fewer parameters
    s = lora_stats(shapes=[(512, 64)], r=8)
    assert (s.lora_params, s.adapted_params) == (8 * (512 + 64), 512 * 64)
    assert round(100 * s.reduction) == 86
    ad = write_adapter(tmp_path / "ad", "tiny-llama", ["self_attn.q_proj", "mlp.down_proj"])
    st = ferrolm.lora_stats(ad)
    adapter = read_lora(ad)
    assert st.lora_params == sum(p.a.size + p.b.size for p in adapter.pairs) == adapter.num_params
    assert st.adapted_weights == 4 and 0 < st.reduction < 1
    with pytest.raises(ferrolm.errors.InvalidArgumentError):
        lora_stats(shapes=[(512, 64)], r=0)


def test_cli_generate_with_lora_and_merge(tmp_path, capsys):
    ad = write_adapter(tmp_path / "ad", "tiny-llama", ["self_attn.q_proj", "mlp.up_proj"])
    ids = ",".join(map(str, IDS[:6]))
    assert cli(["generate", str(MODELS / "tiny-llama"), ids, "--ids", "--max-new-tokens", "5", "--ignore-eos", "--lora", str(ad)]) == 0
    with_lora = capsys.readouterr().out.strip().splitlines()[-1].split()  # the ids line
    model = ferrolm.load(MODELS / "tiny-llama")
    model.load_lora(ad)
    model.set_adapter("ad")
    assert [int(t) for t in with_lora] == model.generate(IDS[:6], max_new_tokens=5, ignore_eos=True).tokens
    out = tmp_path / "merged"
    assert cli(["merge-lora", str(MODELS / "tiny-llama"), str(ad), str(out)]) == 0
    np.testing.assert_array_equal(ferrolm.load(out).logits(IDS), model.logits(IDS))
    assert cli(["merge-lora", str(MODELS / "tiny-llama"), str(ad), str(out)]) == 2  # never overwrites
    assert cli(["lora-stats", str(ad)]) == 0
    assert "fewer" in capsys.readouterr().out


def test_saving_with_an_adapter(tmp_path):
    """A merged adapter is saved into the weights; an active unmerged one is refused (a checkpoint
    holds plain weights) and nothing is written."""
    ad = write_adapter(tmp_path / "ad", "tiny-llama", ["self_attn.v_proj"])
    model = ferrolm.load(MODELS / "tiny-llama")
    model.load_lora(ad, name="u", merged=False)
    model.set_adapter("u")
    with pytest.raises(ferrolm.errors.InvalidArgumentError, match="unmerged"):
        model.save(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    model.load_lora(ad, name="m")
    model.set_adapter("m")
    out = model.save(tmp_path / "out")
    np.testing.assert_allclose(ferrolm.load(out).logits(IDS), model.logits(IDS, adapter="u"), atol=1e-4, rtol=0)


def test_gguf_int8_merges_from_the_files_original_weights(tmp_path, monkeypatch):
    """An INT8 model of a GGUF file merges from the file's own weights, read once per merge: every
    merged matrix is exactly quantize(W + scale·B·A) with W as the file stores it (F32 tensors: the
    folder model's values; the Q8_0 tensor blk.0.ffn_up: gguf's own dequantization of it), not the
    INT8 model's dequantized weights; and the logits then stay as close to the FP32 merge as the
    plain INT8 model is to FP32."""
    gguf = pytest.importorskip("gguf")
    import ferrolm.gguf as gguf_mod

    gguf_path = MODELS.parent / "gguf" / "tiny-llama.gguf"
    ad = write_adapter(tmp_path / "ad", "tiny-llama", ["self_attn.q_proj", "self_attn.k_proj", "mlp.up_proj"])
    fp32 = ferrolm.load(gguf_path)
    fp32.load_lora(ad)
    fp32.set_adapter("ad")
    want = fp32.logits(IDS)
    calls = []
    real = gguf_mod.read_gguf
    monkeypatch.setattr(gguf_mod, "read_gguf", lambda p: calls.append(p) or real(p))
    model = ferrolm.load(gguf_path, precision="int8")
    calls.clear()
    model.load_lora(ad)
    model.set_adapter("ad")
    assert len(calls) == 1  # one reader for all six merged weights

    originals = read_safetensors((MODELS / "tiny-llama" / "model.safetensors").read_bytes())
    q8 = next(t for t in gguf.GGUFReader(gguf_path).tensors if t.name == "blk.0.ffn_up.weight")
    assert q8.tensor_type == gguf.GGMLQuantizationType.Q8_0
    originals["model.layers.0.mlp.up_proj.weight"] = gguf.quants.dequantize(q8.data, q8.tensor_type).astype(np.float32)
    lora = read_lora(ad)
    assert len(lora.pairs) == 6
    plain_model = ferrolm.load(gguf_path, precision="int8")
    from_dequantized = 0
    for p in lora.pairs:
        merged = assert_stored_as(model, p.weight, originals[p.weight], p, lora.scale)
        from_dequantized += merged_twice_differs(plain_model, p, lora.scale, merged)
    assert from_dequantized > 1000  # the wrong source would be seen (~20 % of the values)

    err = np.abs(model.logits(IDS) - want).max()
    plain = np.abs(plain_model.logits(IDS) - ferrolm.load(gguf_path).logits(IDS)).max()
    # measured 2.6x: the plain model keeps the Q8_0 tensor exactly, the merge requantizes it
    assert err < 3.5 * plain
    assert np.abs(plain_model.logits(IDS) - want).max() > 10 * plain  # the adapter's own effect
