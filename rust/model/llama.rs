//! LLaMA-family checkpoints (LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM): RMSNorm,
//! RoPE, SwiGLU, grouped-query attention, optional biases. Their tensors are listed once, in
//! [`TABLE`]; loading, export, adapters and the GGUF reader all read it.

use super::config::Arch;
use super::names::Layout::{Linear, Plain};
use super::names::Part::{Bias, Weight};
use super::names::Role::*;
use super::names::When::{Always, MlpBias, OBias, QkvBias, Untied};
use super::names::{row, Table};
use super::{load, Model, ModelConfig, TensorStore};
use crate::error::Result;
use crate::kernels::rope::Rope;
use std::sync::Arc;

use crate::threadpool::ThreadPool;

/// Every LLaMA checkpoint tensor: Hugging Face name, role, part, layout, when present, GGUF name.
pub static TABLE: Table = Table {
    arch: Arch::Llama,
    optional_prefix: None,
    embeddings: &[
        // embed_tokens: [vocab, d]
        row("model.embed_tokens.weight", Embed, Weight, Linear, Always, Some("token_embd.weight")),
    ],
    layer: &[
        row("model.layers.{i}.input_layernorm.weight", AttnNorm, Weight, Plain, Always, Some("blk.{i}.attn_norm.weight")),
        // qkv: [q_dim + 2·kv_dim, d] = [q_proj; k_proj; v_proj]
        row("model.layers.{i}.self_attn.q_proj.weight", Q, Weight, Linear, Always, Some("blk.{i}.attn_q.weight")),
        row("model.layers.{i}.self_attn.q_proj.bias", Q, Bias, Plain, QkvBias, Some("blk.{i}.attn_q.bias")),
        row("model.layers.{i}.self_attn.k_proj.weight", K, Weight, Linear, Always, Some("blk.{i}.attn_k.weight")),
        row("model.layers.{i}.self_attn.k_proj.bias", K, Bias, Plain, QkvBias, Some("blk.{i}.attn_k.bias")),
        row("model.layers.{i}.self_attn.v_proj.weight", V, Weight, Linear, Always, Some("blk.{i}.attn_v.weight")),
        row("model.layers.{i}.self_attn.v_proj.bias", V, Bias, Plain, QkvBias, Some("blk.{i}.attn_v.bias")),
        // o_proj: [d, q_dim]
        row("model.layers.{i}.self_attn.o_proj.weight", O, Weight, Linear, Always, Some("blk.{i}.attn_output.weight")),
        row("model.layers.{i}.self_attn.o_proj.bias", O, Bias, Plain, OBias, Some("blk.{i}.attn_output.bias")),
        row("model.layers.{i}.post_attention_layernorm.weight", MlpNorm, Weight, Plain, Always, Some("blk.{i}.ffn_norm.weight")),
        // up: [2·ffn, d] = [gate_proj; up_proj]
        row("model.layers.{i}.mlp.gate_proj.weight", Gate, Weight, Linear, Always, Some("blk.{i}.ffn_gate.weight")),
        row("model.layers.{i}.mlp.gate_proj.bias", Gate, Bias, Plain, MlpBias, Some("blk.{i}.ffn_gate.bias")),
        row("model.layers.{i}.mlp.up_proj.weight", Up, Weight, Linear, Always, Some("blk.{i}.ffn_up.weight")),
        row("model.layers.{i}.mlp.up_proj.bias", Up, Bias, Plain, MlpBias, Some("blk.{i}.ffn_up.bias")),
        // down_proj: [d, ffn]
        row("model.layers.{i}.mlp.down_proj.weight", Down, Weight, Linear, Always, Some("blk.{i}.ffn_down.weight")),
        row("model.layers.{i}.mlp.down_proj.bias", Down, Bias, Plain, MlpBias, Some("blk.{i}.ffn_down.bias")),
    ],
    output: &[
        row("model.norm.weight", FinalNorm, Weight, Plain, Always, Some("output_norm.weight")),
        // lm_head: [vocab, d]; a tied checkpoint may store the copy anyway (the same matrix)
        row("lm_head.weight", Head, Weight, Linear, Untied, Some("output.weight")),
    ],
};

pub fn build(config: ModelConfig, store: &mut TensorStore, pool: Arc<ThreadPool>) -> Result<Model> {
    let w = load::take_weights(&config, store)?;
    let rope = Rope::new(config.head_dim, config.rope_theta);
    Ok(w.into_model(config, Some(rope), pool))
}
