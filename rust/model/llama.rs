//! LLaMA-family weights by Hugging Face checkpoint name (LlamaForCausalLM, MistralForCausalLM,
//! Qwen2ForCausalLM): RMSNorm, RoPE, SwiGLU, grouped-query attention, optional biases.

use super::tensors::MatrixLayout;
use super::{Layer, Linear, Model, ModelConfig, Norm, TensorStore};
use crate::error::Result;
use crate::kernels::rope::Rope;
use std::sync::Arc;

use crate::threadpool::ThreadPool;

/// Matmul weights (converted to the load precision): every projection, the embeddings and
/// the lm_head, all `[out, in]`.
pub fn matrix_layout(name: &str) -> Option<MatrixLayout> {
    let matrix = name == "lm_head.weight" || name == "model.embed_tokens.weight" || name.ends_with("_proj.weight");
    matrix.then_some(MatrixLayout::OutIn)
}

fn norm(store: &mut TensorStore, name: &str, d: usize, eps: f32) -> Result<Norm> {
    Ok(Norm { weight: store.take(name, &[d])?, bias: None, eps })
}

/// Reads `{prefix}.weight` [out, in] and, when `bias`, `{prefix}.bias` [out].
fn proj(store: &mut TensorStore, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<Linear> {
    let w = store.take_matrix(&format!("{prefix}.weight"), out, inp)?;
    let b = if bias { Some(store.take(&format!("{prefix}.bias"), &[out])?) } else { None };
    Linear::new(w, out, inp, b)
}

pub fn build(config: ModelConfig, store: &mut TensorStore, pool: Arc<ThreadPool>) -> Result<Model> {
    let c = &config;
    let (d, ffn, vocab) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
    // embed_tokens: [vocab, d]
    let embed = Linear::new(store.take_matrix("model.embed_tokens.weight", vocab, d)?, vocab, d, None)?;
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}.self_attn");
        let m = format!("model.layers.{i}.mlp");
        // qkv: [q_dim + 2·kv_dim, d]
        let qkv = Linear::concat(vec![
            proj(store, &format!("{p}.q_proj"), q_dim, d, c.qkv_bias)?,
            proj(store, &format!("{p}.k_proj"), kv_dim, d, c.qkv_bias)?,
            proj(store, &format!("{p}.v_proj"), kv_dim, d, c.qkv_bias)?,
        ])?;
        // up: [2·ffn, d] = [gate_proj; up_proj]
        let up = Linear::concat(vec![
            proj(store, &format!("{m}.gate_proj"), ffn, d, c.mlp_bias)?,
            proj(store, &format!("{m}.up_proj"), ffn, d, c.mlp_bias)?,
        ])?;
        layers.push(Layer {
            attn_norm: norm(store, &format!("model.layers.{i}.input_layernorm.weight"), d, c.norm_eps)?,
            qkv,
            o: proj(store, &format!("{p}.o_proj"), d, q_dim, c.o_bias)?,
            mlp_norm: norm(store, &format!("model.layers.{i}.post_attention_layernorm.weight"), d, c.norm_eps)?,
            up,
            down: proj(store, &format!("{m}.down_proj"), d, ffn, c.mlp_bias)?,
        });
        super::release_freed_memory();
    }
    let final_norm = norm(store, "model.norm.weight", d, c.norm_eps)?;
    let lm_head = if c.tie_word_embeddings {
        // Some checkpoints store the tied copy anyway; it is the same matrix.
        store.take_matrix_opt("lm_head.weight", vocab, d)?;
        None
    } else {
        Some(Linear::new(store.take_matrix("lm_head.weight", vocab, d)?, vocab, d, None)?)
    };
    let rope = Some(Rope::new(c.head_dim, c.rope_theta));
    Ok(Model { config, embed, pos_embed: None, layers, final_norm, lm_head, rope, pool })
}
