"""INT8 prefill and decode side by side with CTranslate2 on the same random-weight LLaMA shape.

    pip install ctranslate2
    python benches/ctranslate2_prefill.py --shape llama-135m --threads 1,2 --runs 5 [--pairs N] [--json OUT]

The shape's checkpoint (`ferrolm.bench.random_checkpoint`) is converted to CTranslate2's format
with INT8 weights from the very same FP32 arrays (no transformers or torch needed: the spec is
filled from numpy, as CTranslate2's own LLaMA converter fills it). Each engine and thread count
runs in a fresh process: one warm-up, then `--runs` timed runs of a 128-token prompt of fixed
ids, median reported.
- prefill: ferrolm's time to the first token of `generate(ids, max_new_tokens=1)` against
  CTranslate2's `generate_batch([ids], max_length=1)` (its prefill plus one sampling step);
- decode: 128 new tokens after that prompt (EOS ignored), tokens per second of the decode part.
ferrolm runs INT8 (W8A16), CTranslate2 `compute_type="int8"` (its int8 GEMM, 8-bit activations).
Where ferrolm's prefill GEMM runs on AMX tiles, both engines run again without them (ferrolm with
`FERROLM_AMX=off`, CTranslate2 with its MKL restricted to AVX-512 VNNI), and `--pairs` alternates
those two as well: the comparison for CPUs without AMX.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

PROMPT = 128
NEW = 128
# ferrolm without AMX tiles; CTranslate2's MKL restricted to AVX-512 with VNNI (no AMX, no BF16):
# MKL dispatches its int8 GEMM to AMX-INT8 where the CPU has it
AMX_OFF = {"FERROLM_AMX": "off"}
MKL_NO_AMX = {"MKL_ENABLE_INSTRUCTIONS": "AVX512_E1"}


def _prompt(vocab: int) -> list:
    """The prompt's token ids (never one of the 3 special tokens)."""
    return [(i * 7919 + 13) % (vocab - 3) + 3 for i in range(PROMPT)]


def _vocabulary(vocab: int) -> list:
    """The token strings the converted model registers: 3 special tokens, then t3, t4, …"""
    return ["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(3, vocab)]


def convert(folder: Path, out: Path, quantization: str = "int8") -> Path:
    """The checkpoint in `folder` (LLaMA, safetensors) as a CTranslate2 model in `out`, its weights
    quantized as `quantization` says (CTranslate2's names: "int8", "float32", …)."""
    import numpy as np
    from ctranslate2.converters.converter import Converter
    from ctranslate2.converters import utils
    from ctranslate2.specs import common_spec, transformer_spec

    from ferrolm.safetensors_io import read_floats

    cfg = json.loads((folder / "config.json").read_text())
    if cfg.get("model_type") != "llama":
        raise SystemExit(f"{folder}: only LLaMA shapes are converted here")
    # writable copies: CTranslate2 quantizes in place (a tied lm_head gets its own)
    w = {k: np.array(v, dtype=np.float32) for k, (_, v) in read_floats(folder / "model.safetensors").items()}

    class _Loader(Converter):
        def _load(self):
            heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
            spec = transformer_spec.TransformerDecoderModelSpec.from_config(
                cfg["num_hidden_layers"], heads, activation=common_spec.Activation.SWISH, pre_norm=True, ffn_glu=True,
                rms_norm=True, rotary_dim=0, rotary_interleave=False, rotary_base=cfg.get("rope_theta", 10000.0),
                num_heads_kv=None if kv == heads else kv)
            d = spec.decoder
            d.scale_embeddings = False
            d.embeddings.weight = w["model.embed_tokens.weight"]
            d.layer_norm.gamma = w["model.norm.weight"]
            d.projection.weight = w.get("lm_head.weight", w["model.embed_tokens.weight"]).copy()
            for i, layer in enumerate(d.layer):
                p = f"model.layers.{i}."
                layer.self_attention.layer_norm.gamma = w[p + "input_layernorm.weight"]
                layer.ffn.layer_norm.gamma = w[p + "post_attention_layernorm.weight"]
                qkv = [common_spec.LinearSpec() for _ in range(3)]
                for s, name in zip(qkv, ("q_proj", "k_proj", "v_proj")):
                    s.weight = w[p + f"self_attn.{name}.weight"]
                utils.fuse_linear(layer.self_attention.linear[0], qkv)
                layer.self_attention.linear[1].weight = w[p + "self_attn.o_proj.weight"]
                layer.ffn.linear_0.weight = w[p + "mlp.gate_proj.weight"]
                layer.ffn.linear_0_noact.weight = w[p + "mlp.up_proj.weight"]
                layer.ffn.linear_1.weight = w[p + "mlp.down_proj.weight"]
            spec.register_vocabulary(_vocabulary(cfg["vocab_size"]))
            spec.config.layer_norm_epsilon = cfg["rms_norm_eps"]
            return spec

    return Path(_Loader().convert(str(out), quantization=quantization, force=True))


def _child_ferrolm(shape: str, threads: int, runs: int) -> dict:
    import ferrolm
    from ferrolm.bench import random_checkpoint

    model = ferrolm.load(random_checkpoint(shape), precision="int8", threads=threads, context_length=PROMPT + NEW + 1,
                         progress=False)
    model.configure_prefix_cache(reuse=False)
    ids = _prompt(model.vocab_size)
    model.generate(ids, max_new_tokens=2, ignore_eos=True)
    prefill, decode = [], []
    for _ in range(runs):
        prefill.append(model.generate(ids, max_new_tokens=1, ignore_eos=True).timings.time_to_first_token)
        decode.append(model.generate(ids, max_new_tokens=NEW, ignore_eos=True).timings.decode_tokens_per_s)
    return {"prefill_s": prefill, "decode_tok_s": decode, "kv_cache": model.kv_cache,
            "prefill_gemm": ferrolm._core.prefill_gemm()}


def _child_ct2(model_dir: str, threads: int, runs: int, vocab: int) -> dict:
    import ctranslate2

    gen = ctranslate2.Generator(model_dir, device="cpu", compute_type="int8", intra_threads=threads, inter_threads=1)
    tokens = _vocabulary(vocab)
    ids = [tokens[i] for i in _prompt(vocab)]
    gen.generate_batch([ids], max_length=2, include_prompt_in_result=False)
    prefill, decode = [], []
    for _ in range(runs):
        t = time.perf_counter()
        gen.generate_batch([ids], max_length=1, include_prompt_in_result=False)
        first = time.perf_counter() - t
        prefill.append(first)
        t = time.perf_counter()
        gen.generate_batch([ids], max_length=NEW, min_length=NEW, include_prompt_in_result=False, end_token=[])
        decode.append((NEW - 1) / (time.perf_counter() - t - first))
    return {"prefill_s": prefill, "decode_tok_s": decode}


def _run(args: list, env: Optional[dict] = None) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True,
                         env=None if env is None else {**os.environ, **env})
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="llama-135m")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--pairs", type=int, default=0,
                    help="then N alternated pairs of fresh processes (ferrolm, CTranslate2) per thread count, and "
                         "the median of their prefill ratios (steadier than one run on a shared machine)")
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)  # engine, target, threads
    ap.add_argument("--vocab", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        engine, target, threads = a.child
        fn = _child_ferrolm(target, int(threads), a.runs) if engine == "ferrolm" else _child_ct2(target, int(threads), a.runs, a.vocab)
        print(json.dumps(fn))
        return
    from ferrolm.bench import random_checkpoint

    folder = random_checkpoint(a.shape)
    vocab = json.loads((folder / "config.json").read_text())["vocab_size"]
    from ferrolm import _core

    rows = []
    amx = _core.prefill_gemm() == "amx-bf16"
    ct2 = ("ctranslate2 int8", None)
    # where the prompt GEMM runs on AMX tiles (and CTranslate2's MKL int8 GEMM on them too), both
    # engines again without AMX: what the many Xeons without it (AVX-512 VNNI, no AMX) run
    ferrolm_off, ct2_off = ("ferrolm int8, FERROLM_AMX=off", AMX_OFF), ("ctranslate2 int8, MKL without AMX", MKL_NO_AMX)
    engines = [("ferrolm int8", None), *([ferrolm_off] if amx else []), ct2, *([ct2_off] if amx else [])]
    with tempfile.TemporaryDirectory() as tmp:
        ct2_dir = convert(folder, Path(tmp) / "ct2")

        def child(engine: str, t: int, env: Optional[dict]) -> dict:
            name = engine.split()[0]
            return _run(["--child", name, a.shape if name == "ferrolm" else str(ct2_dir), str(t), "--runs", str(a.runs),
                         "--vocab", str(vocab)], env)

        for t in [int(x) for x in a.threads.split(",")]:
            for engine, env in engines:
                r = child(engine, t, env)
                rows.append({"engine": engine, "threads": t, "prefill_tok_s": PROMPT / statistics.median(r["prefill_s"]),
                             "decode_tok_s": statistics.median(r["decode_tok_s"]), "runs": r})
        pairs, pairs_off = {}, {}
        for t in [int(x) for x in a.threads.split(",")] if a.pairs else []:
            for into, (fe, fenv), (ce, cenv) in ((pairs, ("ferrolm int8", None), ct2),
                                                 *([(pairs_off, ferrolm_off, ct2_off)] if amx else [])):
                ratios = []
                for _ in range(a.pairs):
                    f, c = child(fe, t, fenv), child(ce, t, cenv)
                    ratios.append(statistics.median(c["prefill_s"]) / statistics.median(f["prefill_s"]))
                into[str(t)] = {"ratios": ratios, "median": statistics.median(ratios)}
                print(f"{t} thread(s): {fe} / {ce} prefill, median of {a.pairs} alternated pairs: "
                      f"{into[str(t)]['median']:.3f} ({', '.join(f'{r:.2f}' for r in ratios)})")
    import ctranslate2

    print(f"{a.shape}, prompt {PROMPT}, {NEW} new tokens; CTranslate2 {ctranslate2.__version__}; "
          f"load average at the end {', '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| engine | threads | prefill tok/s (pp128) | decode tok/s (tg128) |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['engine']} | {r['threads']} | {r['prefill_tok_s']:.1f} | {r['decode_tok_s']:.1f} |")
    if a.json:
        from ferrolm.bench import machine_info

        a.json.write_text(json.dumps({"shape": a.shape, "ctranslate2": ctranslate2.__version__,
                                      "bf16_prefill": _core.bf16_prefill(), "prefill_gemm": _core.prefill_gemm(),
                                      "machine": machine_info(), "rows": rows, "pairs": pairs, "pairs_amx_off": pairs_off,
                                      "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=1))


if __name__ == "__main__":
    main()
