//! Logits processors and the seeded sampler.
//!
//! Order (matches Hugging Face transformers where it has the same knob):
//!   repetition penalty → frequency/presence penalties → logit bias → suppressed tokens →
//!   [sampling only] temperature → top-k → top-p → min-p → draw.
//! Greedy decoding (`do_sample == false`) applies the processors before the bracket and takes the
//! argmax, as transformers does.

use crate::error::{Error, Result};
use crate::kernels::activations::{softmax, vectorized};
use crate::rng::Rng;

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// false: greedy (argmax).
    pub do_sample: bool,
    /// > 0. Divides the logits when sampling.
    pub temperature: f32,
    /// Keep the k most likely tokens; 0 disables.
    pub top_k: usize,
    /// Nucleus: keep the smallest set of tokens whose probability reaches top_p; in (0, 1], 1 disables.
    pub top_p: f32,
    /// Drop tokens less likely than min_p × the top probability; in [0, 1], 0 disables.
    pub min_p: f32,
    /// HF semantics over every token of the sequence: positive logits divided, negative multiplied; > 0, 1 disables.
    pub repetition_penalty: f32,
    /// Subtracted once per occurrence of a token among the generated tokens.
    pub frequency_penalty: f32,
    /// Subtracted once from every token that occurs among the generated tokens.
    pub presence_penalty: f32,
    /// Added to the logit of each token id.
    pub logit_bias: Vec<(u32, f32)>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            do_sample: false,
            temperature: 1.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            logit_bias: Vec::new(),
        }
    }
}

fn bad(msg: String) -> Result<()> {
    Err(Error::InvalidArgument(msg))
}

impl SamplingParams {
    /// Greedy with no processor that can change the argmax (penalties, logit bias): the token
    /// is the argmax of the raw logits (suppressed tokens aside), so a device may compute it.
    pub fn is_plain_greedy(&self) -> bool {
        !self.do_sample && self.repetition_penalty == 1.0 && self.frequency_penalty == 0.0 && self.presence_penalty == 0.0 && self.logit_bias.is_empty()
    }

    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        let p = self;
        if !(p.temperature.is_finite() && p.temperature > 0.0) {
            return bad(format!("temperature must be a finite number > 0, got {}", p.temperature));
        }
        if !(p.top_p > 0.0 && p.top_p <= 1.0) {
            return bad(format!("top_p must be in (0, 1], got {}", p.top_p));
        }
        if !(0.0..=1.0).contains(&p.min_p) {
            return bad(format!("min_p must be in [0, 1], got {}", p.min_p));
        }
        if !(p.repetition_penalty.is_finite() && p.repetition_penalty > 0.0) {
            return bad(format!("repetition_penalty must be a finite number > 0, got {}", p.repetition_penalty));
        }
        if !p.frequency_penalty.is_finite() || !p.presence_penalty.is_finite() {
            return bad("frequency_penalty and presence_penalty must be finite".into());
        }
        for &(tok, b) in &p.logit_bias {
            if tok as usize >= vocab_size {
                return Err(Error::InvalidToken { token: tok as i64, vocab_size });
            }
            if b.is_nan() || b == f32::INFINITY {
                // -inf bans a token; +inf would make every probability NaN
                return bad(format!("logit_bias for token {tok} must be a finite number or -inf, got {b}"));
            }
        }
        Ok(())
    }
}

/// Applies every processor in place. `history`: all tokens of the sequence so far (prompt and
/// generated); `generated`: the generated ones; `suppress`: token ids forced to −inf
/// (e.g. EOS before min_new_tokens).
pub fn process_logits(logits: &mut [f32], p: &SamplingParams, history: &[u32], generated: &[u32], suppress: &[u32]) {
    let vocab = logits.len();
    keep_infinite_only(logits);
    if p.repetition_penalty != 1.0 {
        let mut seen = vec![false; vocab];
        for &t in history {
            let t = t as usize;
            if t < vocab && !seen[t] {
                seen[t] = true;
                let l = logits[t];
                logits[t] = if l < 0.0 { l * p.repetition_penalty } else { l / p.repetition_penalty };
            }
        }
    }
    if p.frequency_penalty != 0.0 || p.presence_penalty != 0.0 {
        let mut counts = std::collections::HashMap::<u32, u32>::new();
        for &t in generated {
            *counts.entry(t).or_insert(0) += 1;
        }
        for (&t, &n) in &counts {
            if (t as usize) < vocab {
                logits[t as usize] -= n as f32 * p.frequency_penalty + p.presence_penalty;
            }
        }
    }
    for &(t, b) in &p.logit_bias {
        if (t as usize) < vocab {
            logits[t as usize] += b;
        }
    }
    for &t in suppress {
        if (t as usize) < vocab {
            logits[t as usize] = f32::NEG_INFINITY;
        }
    }
    if !p.do_sample {
        return;
    }
    if p.temperature != 1.0 {
        for l in logits.iter_mut() {
            *l /= p.temperature;
        }
        keep_infinite_only(logits); // a small temperature can overflow a huge logit
    }
    if p.top_k > 0 && p.top_k < vocab {
        top_k(logits, p.top_k);
    }
    if p.top_p < 1.0 {
        top_p(logits, p.top_p);
    }
    if p.min_p > 0.0 {
        min_p(logits, p.min_p);
    }
}

/// When some logits are +inf (overflowed activations, or a huge logit over a small temperature),
/// those tokens take all the probability in equal shares — the limit of the softmax — without
/// the inf − inf = NaN that would follow: +inf becomes 0 and everything else −inf.
fn keep_infinite_only(logits: &mut [f32]) {
    if max_and_nan(logits).0 == f32::INFINITY {
        for l in logits.iter_mut() {
            *l = if *l == f32::INFINITY { 0.0 } else { f32::NEG_INFINITY };
        }
    }
}

/// Keeps every logit ≥ the k-th largest (ties at the threshold are kept, as in transformers).
fn top_k(logits: &mut [f32], k: usize) {
    let mut vals: Vec<f32> = logits.to_vec();
    let (_, kth, _) = vals.select_nth_unstable_by(k - 1, |a, b| b.total_cmp(a));
    let threshold = *kth;
    for l in logits.iter_mut() {
        if *l < threshold {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// transformers' TopP: sort ascending, cumulative softmax, drop tokens whose cumulative
/// probability is ≤ 1 − top_p; the most likely token always stays.
fn top_p(logits: &mut [f32], top_p: f32) {
    let mut idx: Vec<usize> = (0..logits.len()).filter(|&i| logits[i] > f32::NEG_INFINITY).collect();
    if idx.len() <= 1 {
        return;
    }
    idx.sort_unstable_by(|&a, &b| logits[a].total_cmp(&logits[b]));
    let mut probs: Vec<f32> = idx.iter().map(|&i| logits[i]).collect();
    softmax(&mut probs);
    let mut cum = 0.0f32;
    let last = idx.len() - 1;
    for (j, &i) in idx.iter().enumerate() {
        cum += probs[j];
        if j < last && cum <= 1.0 - top_p {
            logits[i] = f32::NEG_INFINITY;
        }
    }
}

/// transformers' MinP: drop tokens whose probability is below min_p × the top probability.
fn min_p(logits: &mut [f32], min_p: f32) {
    let mut probs = logits.to_vec();
    softmax(&mut probs);
    let top = probs.iter().copied().fold(0.0f32, f32::max);
    let threshold = min_p * top;
    for (l, &pr) in logits.iter_mut().zip(&probs) {
        if pr < threshold {
            *l = f32::NEG_INFINITY;
        }
    }
}

/// Index of the largest logit (the first, on ties; NaN is never the largest).
pub fn argmax(logits: &[f32]) -> u32 {
    let (max, _) = max_and_nan(logits);
    (first_equal(logits, max) % logits.len().max(1)) as u32
}

vectorized! {
    /// The largest logit (NaN ignored; −inf for none) and whether any is NaN, in one pass over
    /// 16 running lanes that compile to vector max and integer max (of the magnitude bits: NaN's
    /// are above +inf's), once per ISA. A scalar fold through the best index so far took ~20 µs
    /// for a 50k vocabulary.
    pub fn max_and_nan(logits: &[f32]) -> (f32, bool) {
        const L: usize = 16;
        let mut max = [f32::NEG_INFINITY; L];
        let mut mag = [0u32; L];
        let mut chunks = logits.chunks_exact(L);
        for c in &mut chunks {
            for j in 0..L {
                let v = c[j];
                max[j] = if v > max[j] { v } else { max[j] };
                mag[j] = mag[j].max(v.to_bits() & 0x7fff_ffff);
            }
        }
        for (j, &v) in chunks.remainder().iter().enumerate() {
            max[j] = if v > max[j] { v } else { max[j] };
            mag[j] = mag[j].max(v.to_bits() & 0x7fff_ffff);
        }
        let m = max.iter().copied().fold(f32::NEG_INFINITY, |a, b| if b > a { b } else { a });
        (m, mag.iter().any(|&b| b > f32::INFINITY.to_bits()))
    }
}

vectorized! {
    /// Index of the first logit equal to `target` (`logits.len()` if none), 16 at a time.
    pub fn first_equal(logits: &[f32], target: f32) -> usize {
        const L: usize = 16;
        let mut chunks = logits.chunks_exact(L);
        for (i, c) in (&mut chunks).enumerate() {
            let mut hits = 0u32;
            for j in 0..L {
                hits |= ((c[j] == target) as u32) << j;
            }
            if hits != 0 {
                return i * L + hits.trailing_zeros() as usize;
            }
        }
        let rest = chunks.remainder();
        logits.len() - rest.len() + rest.iter().position(|&v| v == target).unwrap_or(rest.len())
    }
}

/// The greedy token of `logits` as `sample` sees them after `keep_infinite_only`: the first
/// +inf if there is one, otherwise the first largest logit. Errors for NaN and for
/// everything −inf (all suppressed), as `sample` does.
fn greedy(logits: &[f32]) -> Result<u32> {
    let (max, nan) = max_and_nan(logits);
    if max == f32::INFINITY {
        return Ok(first_equal(logits, f32::INFINITY) as u32);
    }
    check_scan(max, nan)?;
    Ok(first_equal(logits, max) as u32)
}

fn check_scan(max: f32, nan: bool) -> Result<()> {
    if nan {
        return Err(Error::InvalidArgument("the logits contain NaN".into()));
    }
    if max == f32::NEG_INFINITY {
        return Err(Error::InvalidArgument("every token was suppressed; nothing can be sampled".into()));
    }
    Ok(())
}

/// The sampler of one conversation: a seeded RNG and a work copy of the logits. The CPU session
/// owns one; device backends use one on the host (through `_core.Sampler`), so a token depends
/// only on (logits, parameters, history, seed), whatever computed the logits.
/// Log-probabilities of the model's own distribution (log-softmax of the raw logits, before
/// any processor): `token`'s, and the `top` most likely tokens' (id, log-probability), most
/// likely first (ties: lower id first). The sum runs in f64.
pub fn log_probs(logits: &[f32], token: u32, top: usize) -> Result<(f32, Vec<(u32, f32)>)> {
    let t = token as usize;
    if t >= logits.len() {
        return Err(Error::InvalidToken { token: token as i64, vocab_size: logits.len() });
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let lse = if max.is_finite() {
        max as f64 + logits.iter().map(|&v| ((v - max) as f64).exp()).sum::<f64>().ln()
    } else {
        max as f64
    };
    let lp = |v: f32| (v as f64 - lse) as f32;
    let top = top.min(logits.len());
    let mut best: Vec<u32> = Vec::with_capacity(top + 1);
    if top > 0 {
        // a sorted list of the best `top` ids, replaced from the back as better ones come
        let better = |a: u32, b: u32| logits[a as usize] > logits[b as usize] || (logits[a as usize] == logits[b as usize] && a < b);
        for id in 0..logits.len() as u32 {
            if best.len() == top && !better(id, best[top - 1]) {
                continue;
            }
            let at = best.partition_point(|&b| better(b, id));
            best.insert(at, id);
            best.truncate(top);
        }
    }
    Ok((lp(logits[t]), best.into_iter().map(|id| (id, lp(logits[id as usize]))).collect()))
}

pub struct Sampler {
    /// work: [vocab] — the logits processors' copy, reused for every sample
    work: Vec<f32>,
    rng: Rng,
}

impl Sampler {
    pub fn new(vocab_size: usize) -> Result<Self> {
        Ok(Self { work: crate::memory::zeroed(vocab_size, "the logits")?, rng: Rng::new(0) })
    }

    pub fn seed(&mut self, seed: u64) {
        self.rng = Rng::new(seed);
    }

    /// Picks the next token from `logits: [vocab]` (left untouched). `history`: every token fed
    /// so far; generated tokens begin at `gen_start` (for frequency/presence penalties).
    pub fn sample(&mut self, logits: &[f32], p: &SamplingParams, history: &[u32], gen_start: usize, suppress: &[u32]) -> Result<u32> {
        if logits.len() != self.work.len() {
            return Err(Error::InvalidArgument(format!("expected {} logits, got {}", self.work.len(), logits.len())));
        }
        p.validate(logits.len())?;
        if p.is_plain_greedy() && suppress.is_empty() {
            // no processor can change these logits but keep_infinite_only, which `greedy`
            // accounts for: read in place, no copy
            return greedy(logits);
        }
        self.work.copy_from_slice(logits);
        let generated = &history[gen_start.min(history.len())..];
        sample(&mut self.work, p, history, generated, suppress, &mut self.rng)
    }
}

/// Processes `logits` in place, then picks the next token: argmax when greedy, otherwise a draw
/// from the softmax of what is left.
pub fn sample(logits: &mut [f32], p: &SamplingParams, history: &[u32], generated: &[u32], suppress: &[u32], rng: &mut Rng) -> Result<u32> {
    process_logits(logits, p, history, generated, suppress);
    if !p.do_sample {
        return greedy(logits);
    }
    let (max, nan) = max_and_nan(logits);
    check_scan(max, nan)?;
    softmax(logits);
    let u = rng.uniform();
    let mut cum = 0.0f64;
    let mut last_nonzero = 0;
    for (i, &pr) in logits.iter().enumerate() {
        if pr > 0.0 {
            cum += pr as f64;
            last_nonzero = i;
            if u < cum {
                return Ok(i as u32);
            }
        }
    }
    Ok(last_nonzero as u32) // u landed in the rounding gap at the very top
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_probs_are_the_log_softmax_and_the_best_tokens() {
        let logits = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let lse = logits.iter().map(|&v| (v as f64).exp()).sum::<f64>().ln();
        let (lp, top) = log_probs(&logits, 2, 3).unwrap();
        assert!((lp as f64 - (-2.0 - lse)).abs() < 1e-6);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), vec![1, 3, 0]);
        assert!((top[0].1 as f64 - (3.0 - lse)).abs() < 1e-6);
        assert_eq!(log_probs(&logits, 0, 9).unwrap().1.len(), 5);
        assert!(log_probs(&logits, 0, 0).unwrap().1.is_empty());
        assert!(matches!(log_probs(&logits, 5, 1), Err(Error::InvalidToken { .. })));
        // a banned (-inf) token has log-probability -inf
        let (lp, _) = log_probs(&[0.0, f32::NEG_INFINITY], 1, 1).unwrap();
        assert_eq!(lp, f32::NEG_INFINITY);
    }

    #[test]
    fn infinite_logits_share_the_probability_and_suppression_still_holds() {
        let mut rng = Rng::new(3);
        let p = SamplingParams { do_sample: true, top_p: 0.5, ..Default::default() };
        for _ in 0..50 {
            let mut l = vec![0.0, f32::INFINITY, 2.0, f32::INFINITY];
            let t = sample(&mut l, &p, &[], &[], &[1], &mut rng).unwrap();
            assert_eq!(t, 3);
            let mut l = vec![f32::INFINITY, 1.0];
            assert!(matches!(sample(&mut l, &p, &[], &[], &[0], &mut rng), Err(Error::InvalidArgument(_))));
        }
        let mut l = vec![1.0, f32::INFINITY, f32::INFINITY];
        assert_eq!(sample(&mut l, &SamplingParams::default(), &[], &[], &[], &mut rng).unwrap(), 1);
    }

    fn sampled() -> SamplingParams {
        SamplingParams { do_sample: true, ..Default::default() }
    }

    #[test]
    fn repetition_penalty_divides_positive_and_multiplies_negative() {
        let mut l = vec![2.0, -2.0, 1.0];
        let p = SamplingParams { repetition_penalty: 2.0, ..Default::default() };
        process_logits(&mut l, &p, &[0, 1, 0], &[], &[]);
        assert_eq!(l, vec![1.0, -4.0, 1.0]);
    }

    #[test]
    fn penalties_bias_and_suppression() {
        let mut l = vec![0.0; 4];
        let p = SamplingParams { frequency_penalty: 0.5, presence_penalty: 1.0, logit_bias: vec![(3, 2.0)], ..Default::default() };
        process_logits(&mut l, &p, &[1, 1, 2], &[1, 1, 2], &[0]);
        assert_eq!(l, vec![f32::NEG_INFINITY, -2.0, -1.5, 2.0]);
    }

    #[test]
    fn top_k_top_p_min_p_filter() {
        let base = vec![1.0f32, 3.0, 2.0, 0.0, 3.0];
        let mut l = base.clone();
        process_logits(&mut l, &SamplingParams { top_k: 2, ..sampled() }, &[], &[], &[]);
        assert_eq!(l.iter().filter(|v| v.is_finite()).count(), 2); // the two 3.0s
        let mut l = base.clone();
        process_logits(&mut l, &SamplingParams { top_p: 0.01, ..sampled() }, &[], &[], &[]);
        assert_eq!(l.iter().filter(|v| v.is_finite()).count(), 1);
        let mut l = base.clone();
        process_logits(&mut l, &SamplingParams { min_p: 0.5, ..sampled() }, &[], &[], &[]);
        // exp(2−3) = 0.37 < 0.5: only the two top tokens stay
        assert_eq!(l.iter().filter(|v| v.is_finite()).count(), 2);
    }

    #[test]
    fn greedy_and_seeded_draws() {
        let logits = vec![0.5f32, 2.0, 1.9, -1.0];
        let mut rng = Rng::new(0);
        assert_eq!(sample(&mut logits.clone(), &SamplingParams::default(), &[], &[], &[], &mut rng).unwrap(), 1);
        let draw = |seed| {
            let mut rng = Rng::new(seed);
            (0..50).map(|_| sample(&mut logits.clone(), &sampled(), &[], &[], &[], &mut rng).unwrap()).collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
        // frequencies follow the softmax
        let mut rng = Rng::new(9);
        let mut counts = [0usize; 4];
        for _ in 0..20000 {
            counts[sample(&mut logits.clone(), &sampled(), &[], &[], &[], &mut rng).unwrap() as usize] += 1;
        }
        let mut probs = logits.clone();
        softmax(&mut probs);
        for i in 0..4 {
            assert!((counts[i] as f32 / 20000.0 - probs[i]).abs() < 0.015, "{counts:?}");
        }
    }

    /// The greedy token as first written: +inf takes all, then the checks, then a scalar
    /// argmax (the first largest).
    fn greedy_reference(logits: &[f32]) -> std::result::Result<u32, ()> {
        let mut l = logits.to_vec();
        if l.contains(&f32::INFINITY) {
            for v in l.iter_mut() {
                *v = if *v == f32::INFINITY { 0.0 } else { f32::NEG_INFINITY };
            }
        }
        if l.iter().all(|v| *v == f32::NEG_INFINITY) || l.iter().any(|v| v.is_nan()) {
            return Err(());
        }
        let mut best = 0;
        for (i, &v) in l.iter().enumerate() {
            if v > l[best] {
                best = i;
            }
        }
        Ok(best as u32)
    }

    #[test]
    fn greedy_takes_the_first_largest_with_or_without_processors() {
        let mut rng = Rng::new(5);
        let special = [f32::NEG_INFINITY, f32::INFINITY, f32::NAN, 0.0, -0.0, 3.0];
        let mut sampler = Sampler::new(1).unwrap();
        for case in 0..4000 {
            // lengths around the 16-lane blocks; few distinct values, so ties are common
            let n = 1 + case % 53;
            let logits: Vec<f32> = (0..n)
                .map(|_| {
                    if rng.uniform() < 0.04 * (case % 4) as f64 {
                        special[(rng.uniform() * special.len() as f64) as usize % special.len()]
                    } else {
                        ((rng.uniform() * 7.0) as i32 - 3) as f32
                    }
                })
                .collect();
            let want = greedy_reference(&logits);
            // the copy-free path of the sampler, and the path through every processor (a zero
            // bias changes no logit but takes the general path)
            if sampler.work.len() != n {
                sampler = Sampler::new(n).unwrap();
            }
            let fast = sampler.sample(&logits, &SamplingParams::default(), &[], 0, &[]);
            let p = SamplingParams { logit_bias: vec![(0, 0.0)], ..Default::default() };
            let general = sample(&mut logits.clone(), &p, &[], &[], &[], &mut rng);
            for got in [fast, general] {
                assert_eq!(got.map_err(|_| ()), want, "{logits:?}");
            }
            if logits.iter().all(|v| !v.is_nan()) {
                let best = argmax(&logits) as usize;
                assert_eq!(logits[best], logits.iter().copied().fold(f32::NEG_INFINITY, f32::max), "{logits:?}");
                assert!(logits[..best].iter().all(|&v| v < logits[best]), "{logits:?}");
            }
        }
    }

    #[test]
    fn everything_suppressed_is_an_error() {
        let mut rng = Rng::new(0);
        let r = sample(&mut vec![1.0, 2.0], &SamplingParams::default(), &[], &[], &[0, 1], &mut rng);
        assert!(matches!(r, Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn validation_rejects_out_of_range_knobs() {
        let bad = [
            SamplingParams { temperature: 0.0, ..Default::default() },
            SamplingParams { temperature: -1.0, ..Default::default() },
            SamplingParams { top_p: 0.0, ..Default::default() },
            SamplingParams { top_p: 1.5, ..Default::default() },
            SamplingParams { min_p: -0.1, ..Default::default() },
            SamplingParams { repetition_penalty: 0.0, ..Default::default() },
            SamplingParams { frequency_penalty: f32::NAN, ..Default::default() },
            SamplingParams { logit_bias: vec![(10, 1.0)], ..Default::default() },
        ];
        for p in bad {
            assert!(p.validate(10).is_err(), "{p:?}");
        }
        assert!(SamplingParams::default().validate(10).is_ok());
    }
}
