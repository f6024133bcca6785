//! GPT-2 weights by Hugging Face checkpoint name (GPT2LMHeadModel, with or without the
//! "transformer." prefix). Conv1D weights are stored [in, out] and transposed on arrival
//! to [out, in].

use super::tensors::MatrixLayout;
use super::{Layer, Linear, Model, ModelConfig, Norm, TensorStore};
use crate::error::Result;
use std::sync::Arc;

use crate::threadpool::ThreadPool;

/// Matmul weights (converted to the load precision): the Conv1D projections (`[in, out]`),
/// the token embeddings and a saved lm_head (`[out, in]`). The learned positions stay FP32.
pub fn matrix_layout(name: &str) -> Option<MatrixLayout> {
    let name = name.strip_prefix("transformer.").unwrap_or(name);
    if name == "wte.weight" || name == "lm_head.weight" {
        Some(MatrixLayout::OutIn)
    } else if name.starts_with("h.") && [".c_attn.weight", ".c_proj.weight", ".c_fc.weight"].iter().any(|s| name.ends_with(s)) {
        Some(MatrixLayout::InOut)
    } else {
        None
    }
}

fn layer_norm(store: &mut TensorStore, prefix: &str, d: usize, eps: f32) -> Result<Norm> {
    Ok(Norm { weight: store.take(&format!("{prefix}.weight"), &[d])?, bias: Some(store.take(&format!("{prefix}.bias"), &[d])?), eps })
}

/// A Conv1D `{prefix}.weight` [inp, out] + `{prefix}.bias` [out] as a Linear [out, inp].
fn conv1d(store: &mut TensorStore, prefix: &str, inp: usize, out: usize) -> Result<Linear> {
    let w = store.take_matrix(&format!("{prefix}.weight"), out, inp)?;
    let b = store.take(&format!("{prefix}.bias"), &[out])?;
    Linear::new(w, out, inp, Some(b))
}

pub fn build(config: ModelConfig, store: &mut TensorStore, pool: Arc<ThreadPool>) -> Result<Model> {
    let c = &config;
    let (d, ffn, vocab) = (c.hidden_size, c.intermediate_size, c.vocab_size);
    let prefix = if store.contains("transformer.wte.weight") { "transformer." } else { "" };
    // wte: [vocab, d]
    let embed = Linear::new(store.take_matrix(&format!("{prefix}wte.weight"), vocab, d)?, vocab, d, None)?;
    // wpe: [n_positions, d]
    let pos_embed = Some(store.take(&format!("{prefix}wpe.weight"), &[c.max_position_embeddings, d])?);
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let p = format!("{prefix}h.{i}");
        layers.push(Layer {
            attn_norm: layer_norm(store, &format!("{p}.ln_1"), d, c.norm_eps)?,
            // c_attn: [d, 3d] → qkv: [3d, d]
            qkv: conv1d(store, &format!("{p}.attn.c_attn"), d, 3 * d)?,
            o: conv1d(store, &format!("{p}.attn.c_proj"), d, d)?,
            mlp_norm: layer_norm(store, &format!("{p}.ln_2"), d, c.norm_eps)?,
            up: conv1d(store, &format!("{p}.mlp.c_fc"), d, ffn)?,
            down: conv1d(store, &format!("{p}.mlp.c_proj"), ffn, d)?,
        });
        super::release_freed_memory();
    }
    let final_norm = layer_norm(store, &format!("{prefix}ln_f"), d, c.norm_eps)?;
    store.take_matrix_opt("lm_head.weight", vocab, d)?; // the tied copy, if saved
    Ok(Model { config, embed, pos_embed, layers, final_norm, lm_head: None, rope: None, pool })
}
