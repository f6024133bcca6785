//! A Session is one conversation with a shared, immutable Model: it owns the KV cache, the token
//! history, the last logits and the RNG. Prefill and decode are the same call: `forward`.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::model::forward::{forward, Scratch};
use crate::model::Model;
use crate::rng::Rng;
use crate::sampling::{self, SamplingParams};

pub struct Session {
    model: Arc<Model>,
    cache: KvCache,
    scratch: Scratch,
    /// Every token fed so far; tokens[i] sits at cache position i.
    tokens: Vec<u32>,
    /// logits: [vocab] of the last token fed.
    logits: Vec<f32>,
    has_logits: bool,
    /// work: [vocab] — the logits processors' copy, reused for every sample
    work: Vec<f32>,
    rng: Rng,
}

impl Session {
    /// A session whose KV cache holds `context_length` positions (default and maximum: the
    /// model's max_position_embeddings).
    pub fn new(model: Arc<Model>, context_length: Option<usize>) -> Result<Self> {
        let max = model.config.max_position_embeddings;
        let n_ctx = context_length.unwrap_or(max);
        if n_ctx == 0 || n_ctx > max {
            return Err(Error::InvalidArgument(format!("context_length must be between 1 and {max}, got {n_ctx}")));
        }
        let c = &model.config;
        let cache = KvCache::new(c.num_layers, n_ctx, c.kv_dim());
        let vocab = c.vocab_size;
        Ok(Self { model, cache, scratch: Scratch::default(), tokens: Vec::new(), logits: vec![0.0; vocab], has_logits: false, work: vec![0.0; vocab], rng: Rng::new(0) })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn context_length(&self) -> usize {
        self.cache.max_seq
    }

    /// Number of tokens in the cache.
    pub fn position(&self) -> usize {
        self.tokens.len()
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forgets the conversation (the cache is overwritten by index, not cleared).
    pub fn reset(&mut self) {
        self.tokens.clear();
        self.has_logits = false;
    }

    pub fn seed(&mut self, seed: u64) {
        self.rng = Rng::new(seed);
    }

    /// Appends `tokens` to the sequence. Validates everything first: on error nothing changes.
    /// Returns logits of every fed token, [tokens.len(), vocab] row-major, when `all_logits`.
    pub fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Option<Vec<f32>>> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("no tokens to process".into()));
        }
        for &t in tokens {
            self.model.check_token(t)?;
        }
        let needed = self.tokens.len() + tokens.len();
        if needed > self.cache.max_seq {
            return Err(Error::ContextOverflow { needed, context_length: self.cache.max_seq });
        }
        let vocab = self.model.config.vocab_size;
        let mut all = if all_logits { Some(vec![0.0f32; tokens.len() * vocab]) } else { None };
        let pos0 = self.tokens.len();
        forward(&self.model, &mut self.cache, &mut self.scratch, tokens, pos0, &mut self.logits, all.as_deref_mut());
        self.tokens.extend_from_slice(tokens);
        self.has_logits = true;
        Ok(all)
    }

    /// logits: [vocab] of the last token fed.
    pub fn logits(&self) -> Result<&[f32]> {
        if !self.has_logits {
            return Err(no_logits());
        }
        Ok(&self.logits)
    }

    /// Picks the next token from the last logits (which stay untouched). `gen_start`: index in
    /// the history where generated tokens begin (for frequency/presence penalties).
    pub fn sample(&mut self, params: &SamplingParams, gen_start: usize, suppress: &[u32]) -> Result<u32> {
        params.validate(self.model.config.vocab_size)?;
        if !self.has_logits {
            return Err(no_logits()); // (not `self.logits()`: `self.work` is borrowed mutably)
        }
        self.work.copy_from_slice(&self.logits);
        let generated = &self.tokens[gen_start.min(self.tokens.len())..];
        sampling::sample(&mut self.work, params, &self.tokens, generated, suppress, &mut self.rng)
    }
}

fn no_logits() -> Error {
    Error::InvalidArgument("no logits yet: feed tokens first".into())
}
