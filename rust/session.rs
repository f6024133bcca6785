//! A Session is one conversation with a shared, immutable Model: it owns the KV cache, the token
//! history, the last logits and the RNG. Prefill and decode are the same call: `forward`.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::kv_cache::KvCache;
use crate::memory;
use crate::model::forward::{forward_input, Input, Scratch};
use crate::model::Model;
use crate::sampling::{Sampler, SamplingParams};

pub struct Session {
    model: Arc<Model>,
    cache: KvCache,
    scratch: Scratch,
    /// Positions fed as embeddings (a soft prompt) before any token: cache positions
    /// 0..prefix. They are not tokens: penalties never see them.
    prefix: usize,
    /// Every token fed so far; tokens[i] sits at cache position prefix + i.
    tokens: Vec<u32>,
    /// logits: [vocab] of the last token fed.
    logits: Vec<f32>,
    has_logits: bool,
    sampler: Sampler,
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
        let cache = KvCache::new(c.num_layers, n_ctx, c.kv_dim()).map_err(|e| match e {
            Error::Memory(m) => Error::Memory(format!("{m}; ask for a shorter context_length (at most {} fits)", model.max_context_in_memory())),
            e => e,
        })?;
        let vocab = c.vocab_size;
        let logits = memory::zeroed(vocab, "the logits")?;
        let sampler = Sampler::new(vocab)?;
        Ok(Self { model, cache, scratch: Scratch::default(), prefix: 0, tokens: Vec::new(), logits, has_logits: false, sampler })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn context_length(&self) -> usize {
        self.cache.max_seq
    }

    /// Number of positions in the cache (soft-prompt embeddings and tokens).
    pub fn position(&self) -> usize {
        self.prefix + self.tokens.len()
    }

    /// Positions fed as embeddings (a soft prompt).
    pub fn prefix_len(&self) -> usize {
        self.prefix
    }

    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// Forgets the conversation (the cache is overwritten by index, not cleared).
    pub fn reset(&mut self) {
        self.prefix = 0;
        self.tokens.clear();
        self.has_logits = false;
    }

    pub fn seed(&mut self, seed: u64) {
        self.sampler.seed(seed);
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
        let all = self.run(Input::Tokens(tokens), tokens.len(), all_logits)?;
        self.tokens.extend_from_slice(tokens);
        Ok(all)
    }

    /// Feeds input embeddings `embeds: [n, hidden]` (a soft prompt) at the start of an empty
    /// session; they take cache positions 0..n and are not tokens. Nothing changes on error.
    pub fn forward_embeddings(&mut self, embeds: &[f32], all_logits: bool) -> Result<Option<Vec<f32>>> {
        let d = self.model.config.hidden_size;
        if embeds.is_empty() || embeds.len() % d != 0 {
            return Err(Error::InvalidArgument(format!("embeddings must be [n, {d}] with n >= 1, got {} values", embeds.len())));
        }
        if self.position() != 0 {
            return Err(Error::InvalidArgument("embeddings (a soft prompt) can only start a session: reset it first".into()));
        }
        if let Some(v) = embeds.iter().find(|v| !v.is_finite()) {
            return Err(Error::InvalidArgument(format!("embeddings must be finite, got {v}")));
        }
        let n = embeds.len() / d;
        let all = self.run(Input::Embeds(embeds), n, all_logits)?;
        self.prefix = n;
        Ok(all)
    }

    fn run(&mut self, input: Input<'_>, n: usize, all_logits: bool) -> Result<Option<Vec<f32>>> {
        let needed = self.position() + n;
        if needed > self.cache.max_seq {
            return Err(Error::ContextOverflow { needed, context_length: self.cache.max_seq });
        }
        let vocab = self.model.config.vocab_size;
        let mut all = if all_logits { Some(memory::zeroed(memory::checked_bytes(n, vocab, "the logits")?, "the logits of every token")?) } else { None };
        let pos0 = self.position();
        forward_input(&self.model, &mut self.cache, &mut self.scratch, input, pos0, &mut self.logits, all.as_deref_mut())?;
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
            return Err(no_logits());
        }
        self.sampler.sample(&self.logits, params, &self.tokens, gen_start, suppress)
    }
}

fn no_logits() -> Error {
    Error::InvalidArgument("no logits yet: feed tokens first".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::export::tests::{build, checkpoint_names, GPT2, LLAMA};
    use crate::model::Precision;

    #[test]
    fn embeddings_of_tokens_give_the_tokens_logits_and_positions_continue() {
        for config in [LLAMA, GPT2] {
            let model = Arc::new(build(config, Precision::F32, &checkpoint_names(config)));
            let d = model.config.hidden_size;
            let (soft, prompt) = ([3u32, 7, 1], [4u32, 9]);
            let mut embeds = vec![0f32; soft.len() * d];
            for (i, &t) in soft.iter().enumerate() {
                model.embed.row_into(t as usize, &mut embeds[i * d..(i + 1) * d]);
            }
            let mut a = Session::new(model.clone(), Some(16)).unwrap();
            let all = a.forward_embeddings(&embeds, true).unwrap().unwrap();
            let la = a.forward(&prompt, true).unwrap().unwrap();
            assert_eq!((a.position(), a.prefix_len(), a.tokens()), (5, 3, &prompt[..]));
            let mut b = Session::new(model.clone(), Some(16)).unwrap();
            let lb_soft = b.forward(&soft, true).unwrap().unwrap();
            let lb = b.forward(&prompt, true).unwrap().unwrap();
            assert_eq!(all, lb_soft);
            assert_eq!(la, lb);
            // only at the start, finite, whole rows, inside the context
            assert!(matches!(a.forward_embeddings(&embeds, false), Err(Error::InvalidArgument(_))));
            a.reset();
            assert!(matches!(a.forward_embeddings(&embeds[1..], false), Err(Error::InvalidArgument(_))));
            let mut bad = embeds.clone();
            bad[0] = f32::NAN;
            assert!(matches!(a.forward_embeddings(&bad, false), Err(Error::InvalidArgument(_))));
            let long = vec![0.1f32; 17 * d];
            assert!(matches!(a.forward_embeddings(&long, false), Err(Error::ContextOverflow { .. })));
            assert_eq!(a.position(), 0);
        }
    }
}
