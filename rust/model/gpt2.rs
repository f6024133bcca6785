//! GPT-2 checkpoints (GPT2LMHeadModel, with or without the "transformer." prefix): LayerNorm,
//! learned positions, Conv1D weights stored `[in, out]` (transposed on arrival to `[out, in]`),
//! the lm_head tied to the embeddings. Its tensors are listed once, in [`TABLE`].

use super::config::Arch;
use super::names::Layout::{Conv1d, Linear, Plain};
use super::names::Part::{Bias, Weight};
use super::names::Role::*;
use super::names::When::{Always, Untied};
use super::names::{row, Table};
use super::{load, Model, ModelConfig, TensorStore};
use crate::error::Result;
use std::sync::Arc;

use crate::threadpool::ThreadPool;

/// Every GPT-2 checkpoint tensor: Hugging Face name, role, part, layout, when present (GPT-2
/// files have no GGUF names here).
pub static TABLE: Table = Table {
    arch: Arch::Gpt2,
    optional_prefix: Some("transformer."),
    embeddings: &[
        // wte: [vocab, d]
        row("transformer.wte.weight", Embed, Weight, Linear, Always, None),
        // wpe: [n_positions, d], added, not multiplied: plain FP32
        row("transformer.wpe.weight", PosEmbed, Weight, Plain, Always, None),
    ],
    layer: &[
        row("transformer.h.{i}.ln_1.weight", AttnNorm, Weight, Plain, Always, None),
        row("transformer.h.{i}.ln_1.bias", AttnNorm, Bias, Plain, Always, None),
        // c_attn: [d, 3d] → qkv: [3d, d]
        row("transformer.h.{i}.attn.c_attn.weight", Qkv, Weight, Conv1d, Always, None),
        row("transformer.h.{i}.attn.c_attn.bias", Qkv, Bias, Plain, Always, None),
        // c_proj: [d, d]
        row("transformer.h.{i}.attn.c_proj.weight", O, Weight, Conv1d, Always, None),
        row("transformer.h.{i}.attn.c_proj.bias", O, Bias, Plain, Always, None),
        row("transformer.h.{i}.ln_2.weight", MlpNorm, Weight, Plain, Always, None),
        row("transformer.h.{i}.ln_2.bias", MlpNorm, Bias, Plain, Always, None),
        // c_fc: [d, ffn] → up: [ffn, d]
        row("transformer.h.{i}.mlp.c_fc.weight", Up, Weight, Conv1d, Always, None),
        row("transformer.h.{i}.mlp.c_fc.bias", Up, Bias, Plain, Always, None),
        // c_proj: [ffn, d] → down: [d, ffn]
        row("transformer.h.{i}.mlp.c_proj.weight", Down, Weight, Conv1d, Always, None),
        row("transformer.h.{i}.mlp.c_proj.bias", Down, Bias, Plain, Always, None),
    ],
    output: &[
        row("transformer.ln_f.weight", FinalNorm, Weight, Plain, Always, None),
        row("transformer.ln_f.bias", FinalNorm, Bias, Plain, Always, None),
        // GPT-2 is always tied (config.rs): a saved copy of the lm_head is read and dropped
        row("lm_head.weight", Head, Weight, Linear, Untied, None),
    ],
};

pub fn build(config: ModelConfig, store: &mut TensorStore, pool: Arc<ThreadPool>) -> Result<Model> {
    let w = load::take_weights(&config, store)?;
    Ok(w.into_model(config, None, pool))
}
