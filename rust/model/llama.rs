//! LLaMA-family weights by Hugging Face checkpoint name (LlamaForCausalLM, MistralForCausalLM,
//! Qwen2ForCausalLM): RMSNorm, RoPE, SwiGLU, grouped-query attention, optional biases.

use super::{concat_rows, Layer, Linear, Model, ModelConfig, Norm, TensorStore};
use crate::error::Result;
use crate::kernels::rope::RopeTable;
use crate::threadpool::ThreadPool;

fn norm(store: &mut TensorStore, name: &str, d: usize, eps: f32) -> Result<Norm> {
    Ok(Norm { weight: store.take(name, &[d])?, bias: None, eps })
}

/// Reads `{prefix}.weight` [out, in] and, when `bias`, `{prefix}.bias` [out].
fn proj(store: &mut TensorStore, prefix: &str, out: usize, inp: usize, bias: bool) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
    let w = store.take(&format!("{prefix}.weight"), &[out, inp])?;
    let b = if bias { Some(store.take(&format!("{prefix}.bias"), &[out])?) } else { None };
    Ok((w, b))
}

pub fn build(config: ModelConfig, store: &mut TensorStore, pool: ThreadPool) -> Result<Model> {
    let c = &config;
    let (d, ffn, vocab) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let (q_dim, kv_dim) = (c.q_dim(), c.kv_dim());
    let embed = Linear::f32(store.take("model.embed_tokens.weight", &[vocab, d])?, vocab, d, None)?;
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("model.layers.{i}");
        let (wq, bq) = proj(store, &format!("{p}.self_attn.q_proj"), q_dim, d, c.qkv_bias)?;
        let (wk, bk) = proj(store, &format!("{p}.self_attn.k_proj"), kv_dim, d, c.qkv_bias)?;
        let (wv, bv) = proj(store, &format!("{p}.self_attn.v_proj"), kv_dim, d, c.qkv_bias)?;
        let (wo, bo) = proj(store, &format!("{p}.self_attn.o_proj"), d, q_dim, c.o_bias)?;
        let (wg, bg) = proj(store, &format!("{p}.mlp.gate_proj"), ffn, d, c.mlp_bias)?;
        let (wu, bu) = proj(store, &format!("{p}.mlp.up_proj"), ffn, d, c.mlp_bias)?;
        let (wd, bd) = proj(store, &format!("{p}.mlp.down_proj"), d, ffn, c.mlp_bias)?;
        let qkv_bias = match (bq, bk, bv) {
            (Some(bq), Some(bk), Some(bv)) => Some(concat_rows(vec![bq, bk, bv])),
            _ => None,
        };
        let gate_up_bias = match (bg, bu) {
            (Some(bg), Some(bu)) => Some(concat_rows(vec![bg, bu])),
            _ => None,
        };
        layers.push(Layer {
            attn_norm: norm(store, &format!("{p}.input_layernorm.weight"), d, c.norm_eps)?,
            // qkv: [q_dim + 2·kv_dim, d]
            qkv: Linear::f32(concat_rows(vec![wq, wk, wv]), q_dim + 2 * kv_dim, d, qkv_bias)?,
            o: Linear::f32(wo, d, q_dim, bo)?,
            mlp_norm: norm(store, &format!("{p}.post_attention_layernorm.weight"), d, c.norm_eps)?,
            // up: [2·ffn, d] = [gate_proj; up_proj]
            up: Linear::f32(concat_rows(vec![wg, wu]), 2 * ffn, d, gate_up_bias)?,
            down: Linear::f32(wd, d, ffn, bd)?,
        });
    }
    let final_norm = norm(store, "model.norm.weight", d, c.norm_eps)?;
    let lm_head = if c.tie_word_embeddings {
        // Some checkpoints store the tied copy anyway; it is the same matrix.
        store.take_opt("lm_head.weight", &[vocab, d])?;
        None
    } else {
        Some(Linear::f32(store.take("lm_head.weight", &[vocab, d])?, vocab, d, None)?)
    };
    let rope = Some(RopeTable::new(c.head_dim, c.rope_theta, c.max_position_embeddings));
    Ok(Model { config, embed, pos_embed: None, layers, final_norm, lm_head, rope, pool })
}
