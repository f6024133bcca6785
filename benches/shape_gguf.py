"""GGUF files of the random-weight benchmark shapes (ferrolm.bench.random_checkpoint), for
llama.cpp: the same weights as the safetensors folder ferrolm loads, written as an F32 GGUF file
(LLaMA: q/k rows permuted as llama.cpp's converter does; GPT-2: Conv1D weights transposed to
[out, in]), then quantized by llama.cpp's own quantizer. The files have no tokenizer
(`tokenizer.ggml.model = "none"`): the benchmarks feed token ids.

    python benches/shape_gguf.py llama-135m q8_0      # prints the path of the file (cached)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ferrolm.bench import random_checkpoint
from ferrolm.safetensors_io import read_floats

FTYPES = {"f32": "LLAMA_FTYPE_ALL_F32", "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0", "bf16": "LLAMA_FTYPE_MOSTLY_BF16"}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf's permutation of q/k rows (rotary halves interleaved)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama(cfg: dict, t: dict, writer) -> None:
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    writer.add_context_length(cfg.get("max_position_embeddings", 2048))
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv)
    writer.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
    writer.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-5))
    writer.add_rope_dimension_count(cfg["hidden_size"] // heads)
    names = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    yield "token_embd.weight", t["model.embed_tokens.weight"]
    for i in range(cfg["num_hidden_layers"]):
        for hf, gg in names.items():
            w = t[f"model.layers.{i}.{hf}.weight"]
            if hf == "self_attn.q_proj":
                w = _permute(w, heads)
            elif hf == "self_attn.k_proj":
                w = _permute(w, kv)
            yield f"blk.{i}.{gg}.weight", w
    yield "output_norm.weight", t["model.norm.weight"]
    if "lm_head.weight" in t:
        yield "output.weight", t["lm_head.weight"]


def _gpt2(cfg: dict, t: dict, writer) -> None:
    d = cfg["n_embd"]
    writer.add_context_length(cfg.get("n_positions", 1024))
    writer.add_embedding_length(d)
    writer.add_feed_forward_length(cfg.get("n_inner") or 4 * d)
    writer.add_block_count(cfg["n_layer"])
    writer.add_head_count(cfg["n_head"])
    writer.add_layer_norm_eps(cfg.get("layer_norm_epsilon", 1e-5))
    pre = "transformer." if "transformer.wte.weight" in t else ""
    yield "token_embd.weight", t[pre + "wte.weight"]
    yield "position_embd.weight", t[pre + "wpe.weight"]
    names = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
             "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
    for i in range(cfg["n_layer"]):
        for hf, gg in names.items():
            w = t[f"{pre}h.{i}.{hf}.weight"]
            yield f"blk.{i}.{gg}.weight", w.T if w.ndim == 2 else w  # Conv1D: [in, out] -> [out, in]
            yield f"blk.{i}.{gg}.bias", t[f"{pre}h.{i}.{hf}.bias"]
    yield "output_norm.weight", t[pre + "ln_f.weight"]
    yield "output_norm.bias", t[pre + "ln_f.bias"]


def write_f32(shape: str, out: Path) -> None:
    import gguf

    folder = random_checkpoint(shape)
    cfg = json.loads((folder / "config.json").read_text())
    tensors = {k: v for k, (_, v) in read_floats(folder / "model.safetensors").items()}
    arch = {"llama": "llama", "gpt2": "gpt2"}[cfg["model_type"]]
    writer = gguf.GGUFWriter(str(out), arch)
    writer.add_name(shape)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_tokenizer_model("none")
    for name, w in list((_llama if arch == "llama" else _gpt2)(cfg, tensors, writer)):
        writer.add_tensor(name, np.ascontiguousarray(w, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def shape_gguf(shape: str, ftype: str, threads: int = 2) -> Path:
    """The GGUF file of `shape` in `ftype` ("f32", "q8_0", "bf16"), made once beside the shape's
    safetensors folder."""
    import llama_cpp

    folder = random_checkpoint(shape)
    f32 = folder / f"{shape}-f32.gguf"
    if not f32.exists():
        tmp = f32.with_suffix(".tmp")
        write_f32(shape, tmp)
        tmp.rename(f32)
    if ftype == "f32":
        return f32
    out = folder / f"{shape}-{ftype}.gguf"
    if not out.exists():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = getattr(llama_cpp, FTYPES[ftype])
        params.nthread = threads
        tmp = out.with_suffix(".tmp")
        if llama_cpp.llama_model_quantize(str(f32).encode(), str(tmp).encode(), params) != 0:
            raise RuntimeError(f"llama.cpp could not quantize {f32} to {ftype}")
        tmp.rename(out)
    return out


if __name__ == "__main__":
    print(shape_gguf(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "f32"))
