//! Decoder-only transformer weights (LLaMA family and GPT-2) and the forward pass.

pub mod adapt;
pub mod config;
pub mod device;
pub mod export;
pub mod forward;
pub mod gpt2;
pub mod linear;
pub mod llama;
mod load;
pub mod names;
pub mod tensors;

use crate::error::{Error, Result};
use crate::kernels::rope::Rope;
use std::sync::Arc;

use crate::threadpool::ThreadPool;
pub use config::{Arch, ModelConfig};
pub use linear::{Linear, LoraDelta, Precision, WeightData};
pub use tensors::{DType, LoadPlan, TensorStore};

/// A normalization layer: RMSNorm when `bias` is None (LLaMA), LayerNorm otherwise (GPT-2).
#[derive(Debug, Clone)]
pub struct Norm {
    /// weight: [d]
    pub weight: Vec<f32>,
    /// bias: [d]
    pub bias: Option<Vec<f32>>,
    pub eps: f32,
}

/// One decoder block. Projections that read the same input are fused at load time
/// (fewer, larger matmuls per token): q/k/v into `qkv`, and LLaMA's gate/up into `up`.
#[derive(Debug, Clone)]
pub struct Layer {
    /// input_layernorm | ln_1
    pub attn_norm: Norm,
    /// [q_proj; k_proj; v_proj] | c_attn (transposed): [q_dim + 2·kv_dim, d]
    pub qkv: Linear,
    /// o_proj | attn.c_proj: [d, q_dim]
    pub o: Linear,
    /// post_attention_layernorm | ln_2
    pub mlp_norm: Norm,
    /// [gate_proj; up_proj]: [2·ffn, d] | mlp.c_fc: [ffn, d]
    pub up: Linear,
    /// down_proj | mlp.c_proj: [d, ffn]
    pub down: Linear,
}

/// Cloning a model shares its weights and thread pool (see [`adapt`]).
#[derive(Clone)]
pub struct Model {
    pub config: ModelConfig,
    /// embed_tokens | wte: [vocab, d]
    pub embed: Linear,
    /// wpe (GPT-2 learned positions): [n_positions, d]
    pub pos_embed: Option<Vec<f32>>,
    pub layers: Vec<Layer>,
    /// norm | ln_f
    pub final_norm: Norm,
    /// lm_head: [vocab, d]; None when tied to `embed`.
    pub lm_head: Option<Linear>,
    pub rope: Option<Rope>,
    pub pool: Arc<ThreadPool>,
}

impl Model {
    /// Builds a model from checkpoint tensors; every expected tensor must be present with the right
    /// shape. Tensors the model does not use (e.g. cached rotary buffers) are ignored.
    pub fn from_tensors(config: ModelConfig, store: &mut TensorStore, threads: usize) -> Result<Self> {
        if store.plan().arch != config.arch {
            return Err(Error::InvalidArgument("the tensor store was planned for another architecture".into()));
        }
        let pool = Arc::new(ThreadPool::new(threads)?);
        let mut model = match config.arch {
            Arch::Llama => llama::build(config, store, pool),
            Arch::Gpt2 => gpt2::build(config, store, pool),
        }?;
        model.arrange_weights();
        model.place_weights();
        Ok(model)
    }

    /// Puts every matmul weight that this model alone holds in the layout the running CPU's
    /// kernels read fastest ([`WeightData::arranged`]: INT8 in tiles on AVX-512 VNNI + BF16
    /// CPUs); the numbers stay the same.
    pub fn arrange_weights(&mut self) {
        for w in self.own_weights_mut() {
            let rows = std::mem::replace(w, WeightData::F32(Vec::new().into()));
            *w = rows.arranged();
        }
    }

    /// Gives the matmul weights huge pages: in the heap, where they lie, the resident 2 MiB
    /// pages they touch; and where those are fewer than nine in ten (the heap holds holes
    /// between them) the INT8 and INT4 weights move into one mapping of huge pages, in the
    /// order decode streams them (the layers' matrices, then the lm_head; [`crate::arena`]).
    ///
    /// Quantized at load, INT8 weights can lie between the freed conversion buffers: llama-135m
    /// INT8 had 74-78 of its 136 MiB in huge pages, and decoded 1.15× as fast at 1 thread and
    /// 1.17× at 2 from the arena. Weights already in huge pages gained nothing from moving
    /// (gpt2-124m INT4 0.95, INT8 1.07 and 0.97), and FP32 and BF16 ones pay for the copy in
    /// load time (a first write of fresh memory) for no speed.
    pub fn place_weights(&mut self) {
        let spans: Vec<(usize, usize)> = self.linears().flat_map(|l| l.weight.spans()).collect();
        let huge = crate::memory::collapse_spans_to_huge_pages(&spans);
        if huge < crate::memory::huge_page_bytes(&spans) / 10 * 9 {
            // a failure (no mapping could be made) leaves every buffer where it was
            let _ = self.move_quantized_weights();
        }
    }

    /// Moves the INT8 and INT4 matmul weights that lie in the heap (and are not shared) into
    /// one new arena, in decode order; returns its bytes.
    pub(crate) fn move_quantized_weights(&mut self) -> Result<usize> {
        let quantized = |w: &&mut WeightData| matches!(w.precision(), Precision::Int8 | Precision::Int4);
        let bufs: Vec<&mut dyn crate::arena::Movable> = self.own_weights_mut().filter(quantized).flat_map(|w| w.movables()).collect();
        crate::arena::place(bufs)
    }

    /// The matmul weights that this model alone holds (not shared with a variant), in decode
    /// order: the layers' matrices, then an untied lm_head, then the embedding.
    fn own_weights_mut(&mut self) -> impl Iterator<Item = &mut WeightData> {
        let mut weights: Vec<&mut Arc<WeightData>> = Vec::new();
        for l in self.layers.iter_mut() {
            weights.extend([&mut l.qkv.weight, &mut l.o.weight, &mut l.up.weight, &mut l.down.weight]);
        }
        weights.extend(self.lm_head.as_mut().map(|l| &mut l.weight));
        weights.push(&mut self.embed.weight);
        weights.into_iter().filter_map(Arc::get_mut)
    }

    /// Storage precision of the matmul weights (the lm_head's, which every layer shares).
    /// The load precision: the narrowest format of any matmul weight (an INT4 load keeps the
    /// tensors a GGUF file stores in 8 bits as INT8, so its embedding may be INT8).
    pub fn precision(&self) -> Precision {
        let bits = |p: Precision| match p {
            Precision::Int4 => 4,
            Precision::Int8 => 8,
            Precision::Bf16 => 16,
            Precision::F32 => 32,
        };
        self.linears().map(|l| l.weight.precision()).min_by_key(|&p| bits(p)).unwrap_or(Precision::F32)
    }

    /// Every matmul weight of the model (embedding, layers, an untied lm_head).
    pub fn linears(&self) -> impl Iterator<Item = &Linear> {
        std::iter::once(&self.embed)
            .chain(self.layers.iter().flat_map(|l| [&l.qkv, &l.o, &l.up, &l.down]))
            .chain(self.lm_head.as_ref())
    }

    /// INT8 group size, when the weights are INT8.
    /// The INT8 group size, when some matrix is INT8.
    pub fn int8_group(&self) -> Option<usize> {
        self.linears().find_map(|l| match &*l.weight {
            WeightData::Int8(q) => Some(q.group),
            WeightData::Int8Tiles(_) => Some(crate::kernels::matmul_int8_tiles::TILE_GROUP),
            _ => None,
        })
    }

    /// The matmul path the kernels pick for `m` rows (every matmul weight shares the
    /// lm_head's precision).
    pub fn path_for(&self, m: usize) -> crate::kernels::RowPath {
        self.lm_head().path_for(m)
    }

    pub fn lm_head(&self) -> &Linear {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Total parameter count (tied weights counted once).
    pub fn num_params(&self) -> usize {
        let norm = |n: &Norm| n.weight.len() + n.bias.as_ref().map_or(0, Vec::len);
        let layers: usize = self
            .layers
            .iter()
            .map(|l| norm(&l.attn_norm) + l.qkv.num_params() + l.o.num_params() + norm(&l.mlp_norm) + l.up.num_params() + l.down.num_params())
            .sum();
        self.embed.num_params()
            + self.pos_embed.as_ref().map_or(0, Vec::len)
            + layers
            + norm(&self.final_norm)
            + self.lm_head.as_ref().map_or(0, Linear::num_params)
    }

    /// Bytes of every stored weight (matmul weights in their precision, FP32 norms, biases and
    /// learned positions; a tied lm_head counted once).
    pub fn weight_bytes(&self) -> usize {
        let norm = |n: &Norm| 4 * (n.weight.len() + n.bias.as_ref().map_or(0, Vec::len));
        let lin = |l: &Linear| l.weight_bytes() + 4 * l.bias.as_ref().map_or(0, Vec::len);
        let layers: usize = self
            .layers
            .iter()
            .map(|l| norm(&l.attn_norm) + lin(&l.qkv) + lin(&l.o) + norm(&l.mlp_norm) + lin(&l.up) + lin(&l.down))
            .sum();
        lin(&self.embed) + 4 * self.pos_embed.as_ref().map_or(0, Vec::len) + layers + norm(&self.final_norm) + self.lm_head.as_ref().map_or(0, lin)
    }

    /// Bytes of matmul weights read per decoded token (all linear layers and the lm_head).
    pub fn matmul_bytes_per_token(&self) -> usize {
        let layers: usize = self.layers.iter().map(|l| l.qkv.weight_bytes() + l.o.weight_bytes() + l.up.weight_bytes() + l.down.weight_bytes()).sum();
        layers + self.lm_head().weight_bytes()
    }

    /// The longest context whose KV cache, stored as `kv_dtype`, fits in this machine's memory
    /// (at most max_position_embeddings).
    pub fn max_context_in_memory(&self, kv_dtype: crate::kv_cache::KvDtype) -> usize {
        let c = &self.config;
        let per_position = crate::kv_cache::KvCache::bytes_for(c.num_layers, 1, c.kv_dim(), kv_dtype).unwrap_or(usize::MAX).max(1);
        (crate::memory::memory_limit() / per_position).min(c.max_position_embeddings)
    }

    pub fn check_token(&self, token: u32) -> Result<()> {
        if (token as usize) < self.config.vocab_size {
            Ok(())
        } else {
            Err(Error::InvalidToken { token: token as i64, vocab_size: self.config.vocab_size })
        }
    }
}

