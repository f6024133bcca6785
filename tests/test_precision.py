"""Loading in BF16 and INT8: the converted weights are what the formats promise, the models stay
close to the FP32 reference, and bad precision arguments are refused."""

import json

import numpy as np
import pytest

import ferrolm
from conftest import MODELS, copy_model, load_fixture, reference, read_safetensors, write_safetensors
from ferrolm.quality import log_softmax

# Measured on the tiny fixtures (random weights, so nearly flat distributions: a harsh case):
# BF16 max |Δlogit| / scale ≤ 1.2e-2, KL ≤ 1.0e-4; INT8 (W8A8, groups of 32) ≤ 6.2e-2, ≤ 1.8e-3.
BOUNDS = {"bf16": (3e-2, 5e-4), "int8": (0.15, 1e-2)}


def kl(p_logits, q_logits):
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_lower_precisions_stay_close_to_the_reference(model_name, precision):
    ref, _ = reference(model_name)
    want = ref["prompt_logits_f64"]
    model = load_fixture(model_name, precision=precision)
    assert model.precision == precision and model._core.precision == precision
    got = model.logits(list(ref["prompt_ids"]))
    err, div = np.abs(got - want).max() / np.abs(want).max(), kl(want, got)
    max_err, max_kl = BOUNDS[precision]
    assert 0 < err < max_err and 0 < div < max_kl, (err, div)


def test_weights_shrink_with_the_precision(model_name):
    sizes = {p: load_fixture(model_name, precision=p).matmul_bytes_per_token for p in ("fp32", "bf16", "int8")}
    assert sizes["bf16"] * 2 == sizes["fp32"]
    # int8: one byte per weight plus one f16 scale per group of 32 (6.25 %)
    assert sizes["int8"] == sizes["fp32"] // 4 * 17 // 16


def test_bf16_rounds_to_nearest_even(tmp_path):
    """A BF16 model equals an FP32 model of the RNE-rounded weights (the products are the same)."""
    folder = copy_model("tiny-llama", tmp_path)
    weights = read_safetensors((folder / "model.safetensors").read_bytes())
    # matmul weights rounded to nearest even on the upper 16 bits (they are finite); norms stay FP32
    rounded = {k: (((v.view(np.uint32) + 0x7FFF + ((v.view(np.uint32) >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
               if k.endswith(("_proj.weight", "embed_tokens.weight", "lm_head.weight")) else v
               for k, v in weights.items()}
    write_safetensors(folder / "model.safetensors", rounded)
    # one-token prompts: the GEMV, which multiplies the f32 x (a longer prompt's GEMM may round
    # x to bf16 as well: test_bf16_prefill_setting)
    fp32, bf16 = ferrolm.load(folder, precision="fp32"), load_fixture("tiny-llama", precision="bf16")
    for i in list(reference("tiny-llama")[0]["prompt_ids"])[:6]:
        want = fp32.logits([int(i)])
        np.testing.assert_allclose(bf16.logits([int(i)]), want, rtol=0, atol=2e-5 * np.abs(want).max())


def test_bf16_checkpoint_loads_as_bf16_by_default(tmp_path):
    folder = copy_model("tiny-gpt2", tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg.pop("dtype", None)
    cfg["torch_dtype"] = "bfloat16"
    (folder / "config.json").write_text(json.dumps(cfg))
    assert ferrolm.load(folder).precision == "bf16"
    assert ferrolm.load(folder, precision="fp32").precision == "fp32"
    assert ferrolm.load(MODELS / "tiny-gpt2").precision == "fp32"


@pytest.mark.parametrize("bad", ["int2", "FP32", "", 8])
def test_unknown_precision_is_refused(bad):
    with pytest.raises(ferrolm.errors.InvalidArgumentError, match="precision"):
        ferrolm.load(MODELS / "tiny-llama", precision=bad)


def _run_with_env(code, **env):
    import os
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


@pytest.mark.parametrize("precision", ["bf16", "int8", "int4"])
def test_bf16_prefill_setting(precision):
    """FERROLM_BF16_PREFILL=f32 keeps x in f32 (BF16) or 16-bit (INT8, INT4) in the prefill GEMM;
    an invalid value is refused at load with the variable's name; the default ("auto") rounds x
    (and INT8/INT4's dequantized weights) to bf16 where the CPU has AVX512-BF16 and that GEMM is
    the faster one (AMX, or not an Intel CPU); =bf16 rounds wherever the CPU has AVX512-BF16."""
    code = ("import ferrolm; from ferrolm import _core\n"
            f"m = ferrolm.load({str(MODELS / 'tiny-llama')!r}, precision={precision!r})\n"
            "print(_core.bf16_prefill()); print(m.logits(list(range(1, 9)))[-1].tolist())")
    bad = _run_with_env(code, FERROLM_BF16_PREFILL="half")
    assert bad.returncode != 0 and "InvalidArgumentError" in bad.stderr and "FERROLM_BF16_PREFILL" in bad.stderr
    kept = _run_with_env(code, FERROLM_BF16_PREFILL="f32")
    assert kept.returncode == 0, kept.stderr
    default = _run_with_env(code)
    assert default.returncode == 0, default.stderr
    (mode_f32, logits_f32), (mode, logits) = kept.stdout.splitlines(), default.stdout.splitlines()
    assert mode_f32 == "f32" and mode == ferrolm._core.bf16_prefill() in ("bf16", "f32")
    a, b = np.array(json.loads(logits_f32)), np.array(json.loads(logits))
    if mode == "bf16":
        # the prompt's 8 rows run the GEMM: rounded x moves the logits, by about bf16's precision
        assert 0 < np.abs(a - b).max() < 0.05 * np.abs(a).max()
    else:
        assert np.array_equal(a, b)
    auto = _run_with_env(code, FERROLM_BF16_PREFILL="auto")
    assert auto.returncode == 0 and auto.stdout == default.stdout, auto.stderr
    forced = _run_with_env(code, FERROLM_BF16_PREFILL="bf16")
    assert forced.returncode == 0, forced.stderr
    mode_bf16, logits_bf16 = forced.stdout.splitlines()
    has_bf16 = ferrolm._core.simd_level() == "avx512" and "avx512_bf16" in _cpu_flags()
    assert mode_bf16 == ("bf16" if has_bf16 else "f32")
    if mode == "bf16":
        assert mode_bf16 == "bf16"
    if mode_bf16 == "f32":
        assert logits_bf16 == logits_f32


@pytest.mark.parametrize("prefill", ["default", "f32"])
@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt2"])
def test_int8_layout_setting(model, prefill):
    """INT8 weights in tiles (the default where the CPU has AVX-512 VNNI) give the same logits
    and the same greedy tokens, bit for bit, as in rows (FERROLM_INT8_LAYOUT=rows), and so does
    =tiles: prompt (GEMM) and decode (GEMV) alike, with the CPU's own prefill GEMM and with the
    VNNI GEMM (FERROLM_BF16_PREFILL=f32, what CPUs without AVX512-BF16 run). An invalid value is
    refused at load with the variable's name."""
    code = ("import ferrolm; from ferrolm import _core\n"
            f"m = ferrolm.load({str(MODELS / model)!r}, precision='int8')\n"
            "print(_core.int8_layout()); print(m.logits(list(range(1, 12)))[-1].tolist())\n"
            "print(m.generate([5, 6, 7], max_new_tokens=12, ignore_eos=True).tokens)")
    env = {} if prefill == "default" else {"FERROLM_BF16_PREFILL": prefill}
    bad = _run_with_env(code, FERROLM_INT8_LAYOUT="tile", **env)
    assert bad.returncode != 0 and "InvalidArgumentError" in bad.stderr and "FERROLM_INT8_LAYOUT" in bad.stderr
    rows = _run_with_env(code, FERROLM_INT8_LAYOUT="rows", **env)
    default = _run_with_env(code, **env)
    assert rows.returncode == 0 and default.returncode == 0, rows.stderr + default.stderr
    (layout_rows, *out_rows), (layout, *out) = rows.stdout.splitlines(), default.stdout.splitlines()
    assert layout_rows == "rows" and layout == ferrolm._core.int8_layout() in ("rows", "tiles")
    assert out == out_rows
    tiles = _run_with_env(code, FERROLM_INT8_LAYOUT="tiles", **env)
    assert tiles.returncode == 0, tiles.stderr
    layout_tiles, *out_tiles = tiles.stdout.splitlines()
    # tiles where the CPU can run them (AVX-512 VNNI), as the default; rows elsewhere
    assert layout_tiles == layout
    if ferrolm._core.simd_level() == "avx512" and "avx512_vnni" in _cpu_flags():
        assert layout == "tiles"
    assert out_tiles == out_rows


def _cpu_flags():
    """The CPU's feature flags as Linux names them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return []


def test_foreign_quantized_checkpoints_are_refused(tmp_path):
    folder = copy_model("tiny-llama", tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ferrolm.errors.ConfigError, match="gptq"):
        ferrolm.load(folder)


def test_int8_generation_is_deterministic_across_threads():
    ids = list(reference("tiny-llama")[0]["prompt_ids"])
    runs = [ferrolm.load(MODELS / "tiny-llama", precision="int8", threads=t).generate(ids, max_new_tokens=16, ignore_eos=True).tokens
            for t in (1, 2, 3)]
    assert runs[0] == runs[1] == runs[2]
