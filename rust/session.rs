//! A Session is one conversation with a shared, immutable Model: it owns the KV cache, the token
//! history, the last logits and the RNG. Prefill and decode are the same call: `forward`.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::kv_cache::{KvCache, KvDtype};
use crate::memory;
use crate::kernels::RowPath;
use crate::model::forward::{forward_batch, forward_input, BatchRow, Input, Layout, Scratch};
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
    /// paths[i]: the matmul path tokens[i] ran on. With the tokens, it says which cached
    /// positions a cold run of a prompt would compute identically (`reusable_prefix`).
    paths: Vec<RowPath>,
    /// Cache positions written since the last reset / truncate (their memory is committed).
    touched: usize,
    /// logits: [vocab] of the last token fed.
    logits: Vec<f32>,
    has_logits: bool,
    sampler: Sampler,
}

impl Session {
    /// A session whose KV cache holds `context_length` positions (default and maximum: the
    /// model's max_position_embeddings), stored as `kv_dtype`.
    pub fn new(model: Arc<Model>, context_length: Option<usize>, kv_dtype: KvDtype) -> Result<Self> {
        let max = model.config.max_position_embeddings;
        let n_ctx = context_length.unwrap_or(max);
        if n_ctx == 0 || n_ctx > max {
            return Err(Error::InvalidArgument(format!("context_length must be between 1 and {max}, got {n_ctx}")));
        }
        let c = &model.config;
        let cache = KvCache::new(c.num_layers, n_ctx, c.kv_dim(), kv_dtype).map_err(|e| match e {
            Error::Memory(m) => Error::Memory(format!("{m}; ask for a shorter context_length (at most {} fits)", model.max_context_in_memory(kv_dtype))),
            e => e,
        })?;
        let vocab = c.vocab_size;
        let logits = memory::zeroed(vocab, "the logits")?;
        let sampler = Sampler::new(vocab)?;
        Ok(Self { model, cache, scratch: Scratch::default(), prefix: 0, tokens: Vec::new(), paths: Vec::new(), touched: 0, logits, has_logits: false, sampler })
    }

    pub fn model(&self) -> &Arc<Model> {
        &self.model
    }

    pub fn context_length(&self) -> usize {
        self.cache.max_seq
    }

    /// How the KV cache stores keys and values.
    pub fn kv_dtype(&self) -> KvDtype {
        self.cache.dtype()
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

    /// Forgets the conversation; the cache's memory goes back to the system (committed again
    /// as the next conversation fills it).
    pub fn reset(&mut self) {
        self.restart();
        self.release_past(0);
    }

    /// Forgets the conversation as [`Session::reset`] does, but keeps the cache's memory for
    /// the next one: the positions the next prompt writes reuse their committed pages instead
    /// of faulting fresh zeroed ones in (1,152 page faults of a 128-token prompt of
    /// gpt2-124m, 4 % of its prefill at 1 thread), and the pages past that prompt's end go
    /// back to the system when its first chunk runs, before the activation buffers are sized.
    /// So no more memory is ever committed than after a reset; the calls that start a new
    /// conversation at once (`generate`, `logits`) take this one.
    pub fn restart(&mut self) {
        self.prefix = 0;
        self.tokens.clear();
        self.paths.clear();
        self.has_logits = false;
    }

    /// Gives back the memory of cache positions `end..` where it is committed past them
    /// (`touched` counts every position written since the last release, so nothing is
    /// committed past it): for a reset or a truncate, and for a call writing positions up to
    /// `end` after a [`Session::restart`] kept more.
    fn release_past(&mut self, end: usize) {
        if self.touched > end {
            self.cache.release_from(end);
            self.touched = end;
        }
    }

    /// Keeps the first `n` tokens (and any soft-prompt prefix) and forgets the rest; the
    /// last logits are forgotten unless nothing is dropped. `n` past the end is an error.
    pub fn truncate(&mut self, n: usize) -> Result<()> {
        if n > self.tokens.len() {
            return Err(Error::InvalidArgument(format!("cannot keep {n} tokens of a session holding {}", self.tokens.len())));
        }
        if n < self.tokens.len() {
            self.tokens.truncate(n);
            self.paths.truncate(n);
            self.has_logits = false;
            self.release_past(self.position());
        }
        Ok(())
    }

    /// How many leading tokens of `prompt` this session holds exactly as a cold run of
    /// `prompt` (a fresh session fed the whole prompt at once) computes them: the same
    /// tokens, each run on the matmul path the cold run's chunk picks. At most
    /// `prompt.len() - 1` (the last token is always fed, for fresh logits); 0 for a session
    /// that starts with a soft prompt. After `truncate(r)`, feeding `prompt[r..]` with
    /// `forward_prompt(.., r, prompt.len())` gives bit-identical cache and logits.
    pub fn reusable_prefix(&self, prompt: &[u32]) -> usize {
        if self.prefix != 0 || prompt.is_empty() {
            return 0;
        }
        let cold = Layout::whole(prompt.len());
        let limit = (prompt.len() - 1).min(self.tokens.len());
        (0..limit).find(|&i| self.tokens[i] != prompt[i] || self.paths[i] != cold.path_at(&self.model, i)).unwrap_or(limit)
    }

    /// Cache positions whose memory is committed: those written since the last `reset` /
    /// `truncate`, or kept by a `restart` until the next call writes the cache.
    pub fn touched(&self) -> usize {
        self.touched
    }

    pub fn seed(&mut self, seed: u64) {
        self.sampler.seed(seed);
    }

    /// Appends `tokens` to the sequence. Validates everything first: on error nothing changes.
    /// Returns logits of every fed token, [tokens.len(), vocab] row-major, when `all_logits`.
    pub fn forward(&mut self, tokens: &[u32], all_logits: bool) -> Result<Option<Vec<f32>>> {
        self.forward_prompt(tokens, 0, tokens.len(), all_logits)
    }

    /// [`Session::forward`] of `tokens` as rows `start..start + tokens.len()` of a prompt of
    /// `total` tokens: chunked and run on the paths a single call with the whole prompt would
    /// use (see [`Layout`]), so a prompt fed in pieces (a reused prefix, then the rest; or
    /// chunk by chunk) gives exactly the cache and logits of one call.
    pub fn forward_prompt(&mut self, tokens: &[u32], start: usize, total: usize, all_logits: bool) -> Result<Option<Vec<f32>>> {
        if tokens.is_empty() {
            return Err(Error::InvalidArgument("no tokens to process".into()));
        }
        if start.checked_add(tokens.len()).is_none_or(|end| end > total) {
            return Err(Error::InvalidArgument(format!("tokens {start}..{} lie outside a prompt of {total}", start.saturating_add(tokens.len()))));
        }
        for &t in tokens {
            self.model.check_token(t)?;
        }
        let layout = Layout { start, total };
        let all = self.run(Input::Tokens(tokens), tokens.len(), all_logits, layout)?;
        self.tokens.extend_from_slice(tokens);
        let model = &self.model;
        self.paths.extend((start..start + tokens.len()).map(|i| layout.path_at(model, i)));
        Ok(all)
    }

    /// One decode step of several sessions of the same model at once: session i is fed
    /// `tokens[i]` (see [`forward_batch`]). Each session ends exactly as
    /// `forward(&[tokens[i]])` alone would leave it. Everything is checked first: on error
    /// no session changes.
    pub fn step_batch(sessions: &mut [&mut Session], tokens: &[u32]) -> Result<()> {
        if sessions.len() != tokens.len() {
            return Err(Error::InvalidArgument(format!("{} sessions but {} tokens", sessions.len(), tokens.len())));
        }
        let Some(first) = sessions.first() else {
            return Ok(());
        };
        let model = first.model.clone();
        for (s, &t) in sessions.iter().zip(tokens) {
            if !Arc::ptr_eq(&s.model, &model) {
                return Err(Error::InvalidArgument("a batch can only hold sessions of the same model (and adapter)".into()));
            }
            model.check_token(t)?;
            let needed = s.position() + 1;
            if needed > s.cache.max_seq {
                return Err(Error::ContextOverflow { needed, context_length: s.cache.max_seq });
            }
        }
        for s in sessions.iter_mut() {
            let end = s.position() + 1;
            s.release_past(end);
        }
        let mut scratch = std::mem::take(&mut sessions[0].scratch);
        let result = {
            let mut rows: Vec<BatchRow<'_>> = sessions
                .iter_mut()
                .zip(tokens)
                .map(|(s, &token)| {
                    let pos = s.prefix + s.tokens.len();
                    BatchRow { cache: &mut s.cache, token, pos, logits: &mut s.logits }
                })
                .collect();
            forward_batch(&model, &mut scratch, &mut rows)
        };
        sessions[0].scratch = scratch;
        result?;
        for (s, &t) in sessions.iter_mut().zip(tokens) {
            s.tokens.push(t);
            s.paths.push(RowPath::Gemv);
            s.touched = s.touched.max(s.position());
            s.has_logits = true;
        }
        Ok(())
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
        let all = self.run(Input::Embeds(embeds), n, all_logits, Layout::whole(n))?;
        self.prefix = n;
        Ok(all)
    }

    fn run(&mut self, input: Input<'_>, n: usize, all_logits: bool, layout: Layout) -> Result<Option<Vec<f32>>> {
        let needed = self.position() + n;
        if needed > self.cache.max_seq {
            return Err(Error::ContextOverflow { needed, context_length: self.cache.max_seq });
        }
        // the pages of the whole prompt stay (its later chunks write them), those past it go
        self.release_past((self.position() + layout.total).saturating_sub(layout.start).max(needed));
        let vocab = self.model.config.vocab_size;
        let mut all = if all_logits { Some(memory::zeroed(memory::checked_bytes(n, vocab, "the logits")?, "the logits of every token")?) } else { None };
        let pos0 = self.position();
        forward_input(&self.model, &mut self.cache, &mut self.scratch, input, pos0, &mut self.logits, all.as_deref_mut(), layout)?;
        self.has_logits = true;
        self.touched = self.touched.max(needed);
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
    use crate::model::export::tests::{build, build_threads, checkpoint_names, GPT2, LLAMA};
    use crate::model::forward::PREFILL_CHUNK;
    use crate::model::Precision;

    const PRECISIONS: [Precision; 4] = [Precision::F32, Precision::Bf16, Precision::Int8, Precision::Int4];

    /// The test configs with a longer context (prompts across several prefill chunks).
    fn long(config: &str) -> String {
        config.replace("\"max_position_embeddings\":32", "\"max_position_embeddings\":700").replace("\"n_positions\":32", "\"n_positions\":700")
    }

    fn tokens(n: usize, seed: u32) -> Vec<u32> {
        (0..n as u32).map(|i| (i.wrapping_mul(2654435761).wrapping_add(seed * 7919) >> 7) % 40).collect()
    }

    #[test]
    fn a_batched_step_gives_each_session_its_logits_alone() {
        for config in [LLAMA, GPT2] {
            let config = long(config);
            for (precision, kv) in PRECISIONS.into_iter().map(|p| (p, KvDtype::F32)).chain([(Precision::Int8, KvDtype::Bf16)]) {
                for threads in [1, 3] {
                    let model = Arc::new(build_threads(&config, precision, &checkpoint_names(&config), threads));
                    // prompts of different lengths (one across a chunk boundary), 4 steps
                    let prompts: Vec<Vec<u32>> = [1usize, 5, 9, 300, 2, 3, 4, 6, 7].iter().enumerate().map(|(i, &n)| tokens(n, i as u32)).collect();
                    let mut alone: Vec<Session> = prompts.iter().map(|_| Session::new(model.clone(), Some(400), kv).unwrap()).collect();
                    let mut batch: Vec<Session> = prompts.iter().map(|_| Session::new(model.clone(), Some(400), kv).unwrap()).collect();
                    for ((a, b), p) in alone.iter_mut().zip(batch.iter_mut()).zip(&prompts) {
                        a.forward(p, false).unwrap();
                        b.forward(p, false).unwrap();
                    }
                    for step in 0..4u32 {
                        let next: Vec<u32> = (0..prompts.len() as u32).map(|i| (i * 5 + step * 3) % 40).collect();
                        for (a, &t) in alone.iter_mut().zip(&next) {
                            a.forward(&[t], false).unwrap();
                        }
                        let mut refs: Vec<&mut Session> = batch.iter_mut().collect();
                        Session::step_batch(&mut refs, &next).unwrap();
                        for (i, (a, b)) in alone.iter().zip(&batch).enumerate() {
                            assert_eq!(a.logits().unwrap(), b.logits().unwrap(), "{precision:?} {kv:?} threads {threads} session {i} step {step}");
                            assert_eq!(a.tokens(), b.tokens());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn a_batch_is_checked_before_anything_runs() {
        let model = Arc::new(build(LLAMA, Precision::F32, &checkpoint_names(LLAMA)));
        let other = Arc::new(build(LLAMA, Precision::F32, &checkpoint_names(LLAMA)));
        let mut a = Session::new(model.clone(), Some(4), KvDtype::F32).unwrap();
        let mut b = Session::new(model.clone(), Some(4), KvDtype::F32).unwrap();
        let mut c = Session::new(other, Some(4), KvDtype::F32).unwrap();
        a.forward(&[1, 2, 3, 4], false).unwrap();
        b.forward(&[1], false).unwrap();
        let err = Session::step_batch(&mut [&mut b, &mut a], &[1, 2]);
        assert!(matches!(err, Err(Error::ContextOverflow { .. })), "{err:?}");
        assert!(matches!(Session::step_batch(&mut [&mut b], &[40]), Err(Error::InvalidToken { .. })));
        assert!(matches!(Session::step_batch(&mut [&mut b], &[1, 2]), Err(Error::InvalidArgument(_))));
        assert!(matches!(Session::step_batch(&mut [&mut b, &mut c], &[1, 2]), Err(Error::InvalidArgument(_))));
        assert_eq!((a.position(), b.position(), c.position()), (4, 1, 0));
        Session::step_batch(&mut [], &[]).unwrap();
    }

    #[test]
    fn a_reused_prefix_gives_the_cold_runs_cache_and_logits() {
        for config in [LLAMA, GPT2] {
            let config = long(config);
            for (precision, kv) in PRECISIONS.into_iter().map(|p| (p, KvDtype::F32)).chain([(Precision::Int4, KvDtype::Bf16)]) {
                let model = Arc::new(build_threads(&config, precision, &checkpoint_names(&config), 2));
                let first = tokens(2 * PREFILL_CHUNK + 40, 1);
                for (keep, total) in [(300usize, 301usize), (300, 306), (511, 520), (40, 300), (3, 9), (512, 513), (250, 259)] {
                    let mut prompt = first[..keep].to_vec();
                    prompt.extend(tokens(total - keep, 9));
                    let mut cold = Session::new(model.clone(), Some(700), kv).unwrap();
                    let want = cold.forward(&prompt, true).unwrap().unwrap();
                    // a session that ran `first` then generated a few tokens
                    let mut warm = Session::new(model.clone(), Some(700), kv).unwrap();
                    warm.forward(&first, false).unwrap();
                    warm.forward(&[5], false).unwrap();
                    let r = warm.reusable_prefix(&prompt);
                    assert!(r < prompt.len());
                    warm.truncate(r).unwrap();
                    // the rest in pieces, as a cancellable prefill feeds it
                    let vocab = model.config.vocab_size;
                    let mut got = Vec::new();
                    let mut i = r;
                    while i < prompt.len() {
                        let end = (i + 100).min(prompt.len());
                        got.extend(warm.forward_prompt(&prompt[i..end], i, prompt.len(), true).unwrap().unwrap());
                        i = end;
                    }
                    assert_eq!(got, want[r * vocab..], "{precision:?} {kv:?} keep {keep} total {total}: reused {r}");
                    assert_eq!(warm.logits().unwrap(), cold.logits().unwrap());
                    assert_eq!(warm.reusable_prefix(&prompt), prompt.len() - 1);
                }
                // the whole kept prompt of a cold run of the same prompt is reusable
                let p = tokens(600, 3);
                let mut s = Session::new(model.clone(), Some(700), KvDtype::F32).unwrap();
                s.forward(&p, false).unwrap();
                assert_eq!(s.reusable_prefix(&p), 599);
                // a short prompt runs on the GEMV path where the long one ran on the GEMM
                let short = if model.path_for(5) == model.path_for(PREFILL_CHUNK) { 4 } else { 0 };
                assert_eq!(s.reusable_prefix(&p[..5]), short, "{precision:?}");
            }
        }
    }

    #[test]
    fn released_cache_positions_read_as_new() {
        // a cache large enough to be mapped pages (700 positions · 32 values · 4 bytes per
        // layer's keys): a reset or a truncate gives the dropped positions' memory back, and
        // what follows computes as in a fresh session
        let model = Arc::new(build(&long(LLAMA), Precision::F32, &checkpoint_names(LLAMA)));
        let (a, b) = (tokens(600, 1), tokens(300, 2));
        let mut s = Session::new(model.clone(), Some(700), KvDtype::F32).unwrap();
        s.forward(&a, false).unwrap();
        s.reset();
        s.forward(&b, false).unwrap();
        assert_eq!(s.logits().unwrap(), last_logits_of_fresh(&model, &b).as_slice());
        // truncate to a shared prefix of 100, then the rest of a prompt that starts with it
        let c: Vec<u32> = b[..100].iter().chain(&a[..250]).copied().collect();
        s.truncate(100).unwrap();
        assert_eq!(s.touched(), 100);
        s.forward_prompt(&c[100..], 100, c.len(), false).unwrap();
        assert_eq!(s.logits().unwrap(), last_logits_of_fresh(&model, &c).as_slice());
    }

    /// The last logits of a fresh 700-position session fed `t` at once.
    fn last_logits_of_fresh(model: &Arc<Model>, t: &[u32]) -> Vec<f32> {
        let mut s = Session::new(model.clone(), Some(700), KvDtype::F32).unwrap();
        s.forward(t, false).unwrap();
        s.logits().unwrap().to_vec()
    }

    #[test]
    fn a_restart_keeps_the_memory_the_next_prompt_writes() {
        // as released_cache_positions_read_as_new, with the cache's pages kept: the next
        // prompt computes as in a fresh session, and only the pages past its end go back
        let model = Arc::new(build(&long(LLAMA), Precision::F32, &checkpoint_names(LLAMA)));
        let (a, b) = (tokens(600, 1), tokens(300, 2));
        let fresh = |t: &[u32]| {
            let mut s = Session::new(model.clone(), Some(700), KvDtype::F32).unwrap();
            s.forward(t, true).unwrap().unwrap()
        };
        let mut s = Session::new(model.clone(), Some(700), KvDtype::F32).unwrap();
        s.forward(&a, false).unwrap();
        s.restart();
        assert_eq!((s.position(), s.touched()), (0, 600));
        assert!(s.logits().is_err());
        // in two chunks: the first keeps the pages of the whole prompt
        let first = s.forward_prompt(&b[..100], 0, 300, true).unwrap().unwrap();
        assert_eq!(s.touched(), 300);
        let rest = s.forward_prompt(&b[100..], 100, 300, true).unwrap().unwrap();
        assert_eq!([first, rest].concat(), fresh(&b));
        // a longer prompt after a restart commits what it writes, as after a reset
        s.restart();
        s.forward(&a, false).unwrap();
        assert_eq!(s.touched(), 600);
        assert_eq!(s.logits().unwrap(), last_logits_of_fresh(&model, &a).as_slice());
        // a batched step after a restart and a one-token prompt
        s.restart();
        s.forward(&b[..1], false).unwrap();
        assert_eq!(s.touched(), 1);
        Session::step_batch(&mut [&mut s], &[b[1]]).unwrap();
        assert_eq!(s.touched(), 2);
        let mut t = Session::new(model.clone(), Some(700), KvDtype::F32).unwrap();
        t.forward(&b[..1], false).unwrap();
        Session::step_batch(&mut [&mut t], &[b[1]]).unwrap();
        assert_eq!(s.logits().unwrap(), t.logits().unwrap());
        // a soft prompt after a restart
        let d = model.config.hidden_size;
        s.restart();
        s.forward_embeddings(&vec![0.5; 3 * d], false).unwrap();
        assert_eq!((s.prefix_len(), s.touched()), (3, 3));
    }

    #[test]
    fn truncate_keeps_a_prefix() {
        let model = Arc::new(build(LLAMA, Precision::F32, &checkpoint_names(LLAMA)));
        let mut s = Session::new(model, Some(16), KvDtype::F32).unwrap();
        s.forward(&[1, 2, 3], false).unwrap();
        assert!(matches!(s.truncate(4), Err(Error::InvalidArgument(_))));
        s.truncate(3).unwrap();
        assert!(s.logits().is_ok());
        s.truncate(1).unwrap();
        assert_eq!(s.tokens(), &[1]);
        assert!(s.logits().is_err());
        // the dropped positions' memory is given back: only the kept one counts
        assert_eq!(s.touched(), 1);
        assert!(matches!(s.forward_prompt(&[1, 2], 3, 4, false), Err(Error::InvalidArgument(_))));
        s.forward(&[5, 6], false).unwrap();
        assert_eq!(s.touched(), 3);
        s.reset();
        assert_eq!((s.touched(), s.position()), (0, 0));
    }

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
            let mut a = Session::new(model.clone(), Some(16), KvDtype::F32).unwrap();
            let all = a.forward_embeddings(&embeds, true).unwrap().unwrap();
            let la = a.forward(&prompt, true).unwrap().unwrap();
            assert_eq!((a.position(), a.prefix_len(), a.tokens()), (5, 3, &prompt[..]));
            let mut b = Session::new(model.clone(), Some(16), KvDtype::F32).unwrap();
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

    /// A BF16 cache: half the bytes, logits close to an FP32 cache's (measured: within 0.2 % of
    /// the largest logit on these models) and not equal to them (the cache really rounds).
    #[test]
    fn a_bf16_cache_is_half_the_bytes_and_close_to_fp32() {
        for config in [LLAMA, GPT2] {
            let config = long(config);
            let model = Arc::new(build_threads(&config, Precision::F32, &checkpoint_names(&config), 2));
            let prompt = tokens(300, 4);
            let mut logits = Vec::new();
            for kv in KvDtype::ALL {
                let mut s = Session::new(model.clone(), Some(400), kv).unwrap();
                assert_eq!(s.kv_dtype(), kv);
                let c = &model.config;
                assert_eq!(s.cache.bytes(), 2 * c.num_layers * 400 * c.kv_dim() * kv.bytes());
                let mut all = s.forward(&prompt, true).unwrap().unwrap();
                for t in [3u32, 17, 29] {
                    all.extend(s.forward(&[t], true).unwrap().unwrap());
                }
                logits.push(all);
            }
            let scale = logits[0].iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = logits[0].iter().zip(&logits[1]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(diff > 0.0 && diff <= 5e-3 * scale, "max |Δ| {diff:e} at logit scale {scale}");
        }
    }
}
