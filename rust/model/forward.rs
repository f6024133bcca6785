//! The forward pass shared by both architectures (pre-norm decoder blocks).

use super::{Arch, Model, Norm};
use crate::kernels::activations::{add_assign, gelu_tanh, silu_mul};
use crate::kernels::attention::{attention, score_rows_needed, AttnShape};
use crate::kernels::rope::RopeAngles;
use crate::kernels::RowPath;
use crate::kernels::norms::{layer_norm, rms_norm};
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::threadpool::ThreadPool;
use crate::memory::{self, Pages};

/// Tokens processed per prefill step; bounds scratch memory for long prompts.
pub const PREFILL_CHUNK: usize = 256;

/// Activation buffers, sized for `rows` tokens at once; reused across calls.
#[derive(Default)]
pub struct Scratch {
    rows: usize,
    /// x: [rows, d] — the residual stream
    pub x: Pages<f32>,
    /// xn: [rows, d] — normalized x
    pub xn: Pages<f32>,
    /// qkv: [rows, q_dim + 2·kv_dim]
    pub qkv: Pages<f32>,
    /// q: [rows, q_dim]
    pub q: Pages<f32>,
    /// att: [rows, q_dim]
    pub att: Pages<f32>,
    /// up: [rows, up_out] (gate and up for LLaMA)
    pub up: Pages<f32>,
    /// act: [rows, ffn]
    pub act: Pages<f32>,
    /// scores: [max(n_threads · SCORE_ROWS, n_heads), context] (attention::score_rows_needed)
    pub scores: Pages<f32>,
    /// RoPE cos/sin of the chunk's positions
    pub rope: RopeAngles,
    /// RoPE cos/sin of each row's position (a batched step: one position per sequence)
    pub rope_rows: Vec<RopeAngles>,
    /// logits: [rows, vocab] of a batched step
    pub batch_logits: Vec<f32>,
}

impl Scratch {
    /// Sizes the buffers for `rows` tokens at once and a cache of `context` positions
    /// (allocated fallibly: sizes come from the config).
    fn ensure(&mut self, model: &Model, rows: usize, context: usize) -> Result<()> {
        let c = &model.config;
        let what = "the activation buffers";
        let scores = memory::checked_bytes(score_rows_needed(model.pool.n_threads(), c.num_heads), context, what)?;
        if self.rows >= rows && self.scores.len() >= scores {
            return Ok(());
        }
        let rows = rows.max(self.rows);
        let up_out = model.layers.first().map_or(0, |l| l.up.out_features);
        let buf = |width: usize| memory::checked_bytes(rows, width, what).and_then(|n| Pages::zeroed(n, what));
        *self = Scratch {
            rows,
            x: buf(c.hidden_size)?,
            xn: buf(c.hidden_size)?,
            qkv: buf(c.q_dim() + 2 * c.kv_dim())?,
            q: buf(c.q_dim())?,
            att: buf(c.q_dim())?,
            up: buf(up_out)?,
            act: buf(c.intermediate_size)?,
            scores: Pages::zeroed(scores.max(self.scores.len()), what)?,
            rope: std::mem::take(&mut self.rope),
            rope_rows: std::mem::take(&mut self.rope_rows),
            batch_logits: std::mem::take(&mut self.batch_logits),
        };
        Ok(())
    }

    /// Gives the buffers back (a prompt's, sized for its chunks: the decode steps after it
    /// need one row); the next call sizes them again.
    fn release(&mut self) {
        *self = Scratch {
            rope: std::mem::take(&mut self.rope),
            rope_rows: std::mem::take(&mut self.rope_rows),
            batch_logits: std::mem::take(&mut self.batch_logits),
            ..Scratch::default()
        };
    }
}

fn apply_norm(pool: &ThreadPool, norm: &Norm, x: &[f32], out: &mut [f32], d: usize) {
    pool.rows_mut(out, d, |r, out| {
        for (xr, or) in x[r.start * d..r.end * d].chunks_exact(d).zip(out.chunks_exact_mut(d)) {
            match &norm.bias {
                None => rms_norm(xr, &norm.weight, norm.eps, or),
                Some(b) => layer_norm(xr, &norm.weight, b, norm.eps, or),
            }
        }
    });
}

/// What a forward pass reads: token ids (looked up in the embedding table) or input embeddings
/// directly (`[n, d]` row-major; soft prompts).
#[derive(Clone, Copy)]
pub enum Input<'a> {
    Tokens(&'a [u32]),
    Embeds(&'a [f32]),
}

impl Input<'_> {
    pub fn len(&self, d: usize) -> usize {
        match self {
            Input::Tokens(t) => t.len(),
            Input::Embeds(e) => e.len() / d.max(1),
        }
    }

    fn chunk(&self, d: usize, start: usize, end: usize) -> Self {
        match *self {
            Input::Tokens(t) => Input::Tokens(&t[start..end]),
            Input::Embeds(e) => Input::Embeds(&e[start * d..end * d]),
        }
    }
}

/// Where the chunks of a prefill break and which matmul path each runs on. A prompt of
/// `total` rows is cut into chunks of [`PREFILL_CHUNK`] rows from its first row, and each
/// chunk runs on the path the kernels pick for its size ([`Model::path_for`]). A call may
/// feed any part of such a prompt (rows `start..`): its rows run exactly as they do when the
/// whole prompt is fed at once (the kernels compute each row alone on a given path), which is
/// what makes a reused prefix plus a new suffix identical to a cold run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Index of this call's first row within the prompt.
    pub start: usize,
    /// Rows of the whole prompt.
    pub total: usize,
}

impl Layout {
    /// A call that is a whole prompt of `n` rows.
    pub fn whole(n: usize) -> Self {
        Layout { start: 0, total: n }
    }

    /// The path of the chunk holding prompt row `i` (< total).
    pub fn path_at(&self, model: &Model, i: usize) -> RowPath {
        let c0 = i / PREFILL_CHUNK * PREFILL_CHUNK;
        model.path_for((self.total - c0).min(PREFILL_CHUNK))
    }
}

/// Runs `tokens` (already validated) at positions `pos0..`, filling the KV cache.
/// Writes logits of the last token into `logits: [vocab]`, or of every token into
/// `all_logits: [tokens.len(), vocab]` when given.
pub fn forward(model: &Model, cache: &mut KvCache, scratch: &mut Scratch, tokens: &[u32], pos0: usize, logits: &mut [f32], all_logits: Option<&mut [f32]>) -> Result<()> {
    forward_input(model, cache, scratch, Input::Tokens(tokens), pos0, logits, all_logits, Layout::whole(tokens.len()))
}

/// [`forward`] for token ids or embeddings (`input` validated, at least one row), as rows
/// `layout.start..` of a prompt of `layout.total` rows (`start + n ≤ total`). Fails only
/// when the activation buffers cannot be allocated, before anything is computed.
#[allow(clippy::too_many_arguments)]
pub fn forward_input(
    model: &Model,
    cache: &mut KvCache,
    scratch: &mut Scratch,
    input: Input<'_>,
    pos0: usize,
    logits: &mut [f32],
    mut all_logits: Option<&mut [f32]>,
    layout: Layout,
) -> Result<()> {
    let vocab = model.config.vocab_size;
    let d = model.config.hidden_size;
    let n = input.len(d);
    debug_assert!(layout.start + n <= layout.total);
    scratch.ensure(model, n.min(PREFILL_CHUNK), cache.max_seq)?;
    let mut done = 0;
    while done < n {
        // the chunk ends where the prompt's chunk holding row `start + done` ends
        let row = layout.start + done;
        let end = (done + PREFILL_CHUNK - row % PREFILL_CHUNK).min(n);
        let path = layout.path_at(model, row);
        let chunk = input.chunk(d, done, end);
        let pos = pos0 + done;
        forward_chunk(model, cache, scratch, chunk, pos, path);
        let t = end - done;
        let head = model.lm_head();
        match all_logits.as_deref_mut() {
            Some(out) => {
                apply_norm(&model.pool, &model.final_norm, &scratch.x[..t * d], &mut scratch.xn[..t * d], d);
                head.forward_path(&model.pool, &scratch.xn[..t * d], &mut out[done * vocab..(done + t) * vocab], t, path);
            }
            None if done + t == n => {
                let last = &scratch.x[(t - 1) * d..t * d];
                apply_norm(&model.pool, &model.final_norm, last, &mut scratch.xn[..d], d);
                head.forward_path(&model.pool, &scratch.xn[..d], logits, 1, model.path_for(1));
            }
            None => {}
        }
        done += t;
    }
    if let Some(out) = all_logits {
        logits.copy_from_slice(&out[(n - 1) * vocab..]);
    }
    if n > 1 {
        // a prompt's buffers go back to the system before its decode steps fill the KV cache
        scratch.release();
    }
    Ok(())
}

/// One sequence of a batched decode step: its KV cache, the token it feeds at position
/// `pos`, and where its logits go (`[vocab]`).
pub struct BatchRow<'a> {
    pub cache: &'a mut KvCache,
    pub token: u32,
    pub pos: usize,
    pub logits: &'a mut [f32],
}

/// One decode step of several sequences at once: each row's token (validated, `pos` inside
/// its cache) runs through one pass over the weights — every matmul multiplies all rows
/// together on the GEMV path, which computes each row exactly as it does alone — while
/// attention reads each sequence's own cache. Each row's logits are bit-identical to a
/// [`forward`] of that token alone: the matmuls run on the GEMV path, that of a lone
/// decode step, which reads each row of w once for all rows of x.
pub fn forward_batch(model: &Model, scratch: &mut Scratch, rows: &mut [BatchRow<'_>]) -> Result<()> {
    let b = rows.len();
    if b == 0 {
        return Ok(());
    }
    let c = &model.config;
    let (d, q_dim, kv_dim, ffn, vocab) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size, c.vocab_size);
    let qkv_dim = q_dim + 2 * kv_dim;
    let context = rows.iter().map(|r| r.cache.max_seq).max().unwrap_or(1);
    scratch.ensure(model, b, context)?;
    let logits_len = memory::checked_bytes(b, vocab, "the logits of a batch")?;
    if scratch.batch_logits.len() < logits_len {
        scratch.batch_logits = memory::zeroed(logits_len, "the logits of a batch")?;
    }
    let s = scratch;
    let pool = &model.pool;
    // each row exactly as alone: a lone decode step runs on the GEMV path
    let path = RowPath::Gemv;
    // x: [b, d] = embeddings (+ learned positions)
    for (i, r) in rows.iter().enumerate() {
        let row = &mut s.x[i * d..(i + 1) * d];
        model.embed.row_into(r.token as usize, row);
        if let Some(wpe) = &model.pos_embed {
            for (xv, pv) in row.iter_mut().zip(&wpe[r.pos * d..(r.pos + 1) * d]) {
                *xv += pv;
            }
        }
    }
    if let Some(rope) = &model.rope {
        s.rope_rows.resize_with(b, RopeAngles::default);
        for (r, angles) in rows.iter().zip(s.rope_rows.iter_mut()) {
            rope.angles(r.pos, 1, angles);
        }
    }
    let shape = AttnShape { n_heads: c.num_heads, n_kv_heads: c.num_kv_heads, head_dim: c.head_dim };
    for (li, layer) in model.layers.iter().enumerate() {
        apply_norm(pool, &layer.attn_norm, &s.x[..b * d], &mut s.xn[..b * d], d);
        layer.qkv.forward_path(pool, &s.xn[..b * d], &mut s.qkv[..b * qkv_dim], b, path);
        for (i, r) in rows.iter_mut().enumerate() {
            let row = &mut s.qkv[i * qkv_dim..(i + 1) * qkv_dim];
            let (q, kv) = row.split_at_mut(q_dim);
            let (k, v) = kv.split_at_mut(kv_dim);
            if let Some(rope) = &model.rope {
                rope.apply(&s.rope_rows[i], q, r.pos);
                rope.apply(&s.rope_rows[i], k, r.pos);
            }
            s.q[i * q_dim..(i + 1) * q_dim].copy_from_slice(q);
            r.cache.write(li, r.pos, k, v);
            let cache = &*r.cache;
            attention(pool, &shape, &s.q[i * q_dim..(i + 1) * q_dim], cache.layer(li), &mut s.att[i * q_dim..(i + 1) * q_dim], &mut s.scores, 1, r.pos);
        }
        layer.o.forward_path(pool, &s.att[..b * q_dim], &mut s.xn[..b * d], b, path);
        add_assign(&mut s.x[..b * d], &s.xn[..b * d]);

        apply_norm(pool, &layer.mlp_norm, &s.x[..b * d], &mut s.xn[..b * d], d);
        let up_out = layer.up.out_features;
        layer.up.forward_path(pool, &s.xn[..b * d], &mut s.up[..b * up_out], b, path);
        let act: &[f32] = match c.arch {
            Arch::Llama => {
                for i in 0..b {
                    let row = &s.up[i * up_out..(i + 1) * up_out];
                    silu_mul(&row[..ffn], &row[ffn..], &mut s.act[i * ffn..(i + 1) * ffn]);
                }
                &s.act[..b * ffn]
            }
            Arch::Gpt2 => {
                for i in 0..b {
                    gelu_tanh(&mut s.up[i * ffn..(i + 1) * ffn]);
                }
                &s.up[..b * ffn]
            }
        };
        layer.down.forward_path(pool, act, &mut s.xn[..b * d], b, path);
        add_assign(&mut s.x[..b * d], &s.xn[..b * d]);
    }
    apply_norm(pool, &model.final_norm, &s.x[..b * d], &mut s.xn[..b * d], d);
    model.lm_head().forward_path(pool, &s.xn[..b * d], &mut s.batch_logits[..b * vocab], b, path);
    for (i, r) in rows.iter_mut().enumerate() {
        r.logits.copy_from_slice(&s.batch_logits[i * vocab..(i + 1) * vocab]);
    }
    Ok(())
}

fn forward_chunk(model: &Model, cache: &mut KvCache, s: &mut Scratch, input: Input<'_>, pos0: usize, path: RowPath) {
    let c = &model.config;
    let t = input.len(c.hidden_size);
    let (d, q_dim, kv_dim, ffn) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
    let qkv_dim = q_dim + 2 * kv_dim;
    debug_assert!(s.rows >= t, "forward_input sizes the scratch first");
    let pool = &model.pool;

    // x: [t, d] = embeddings (+ learned positions)
    for i in 0..t {
        let row = &mut s.x[i * d..(i + 1) * d];
        match input {
            Input::Tokens(tokens) => model.embed.row_into(tokens[i] as usize, row),
            Input::Embeds(e) => row.copy_from_slice(&e[i * d..(i + 1) * d]),
        }
        if let Some(wpe) = &model.pos_embed {
            for (xv, pv) in row.iter_mut().zip(&wpe[(pos0 + i) * d..(pos0 + i + 1) * d]) {
                *xv += pv;
            }
        }
    }
    let shape = AttnShape { n_heads: c.num_heads, n_kv_heads: c.num_kv_heads, head_dim: c.head_dim };
    if let Some(rope) = &model.rope {
        rope.angles(pos0, t, &mut s.rope);
    }
    for (li, layer) in model.layers.iter().enumerate() {
        // attention block
        apply_norm(pool, &layer.attn_norm, &s.x[..t * d], &mut s.xn[..t * d], d);
        layer.qkv.forward_path(pool, &s.xn[..t * d], &mut s.qkv[..t * qkv_dim], t, path);
        for i in 0..t {
            let row = &mut s.qkv[i * qkv_dim..(i + 1) * qkv_dim];
            let (q, kv) = row.split_at_mut(q_dim);
            let (k, v) = kv.split_at_mut(kv_dim);
            if let Some(rope) = &model.rope {
                rope.apply(&s.rope, q, pos0 + i);
                rope.apply(&s.rope, k, pos0 + i);
            }
            s.q[i * q_dim..(i + 1) * q_dim].copy_from_slice(q);
            cache.write(li, pos0 + i, k, v);
        }
        attention(pool, &shape, &s.q[..t * q_dim], cache.layer(li), &mut s.att[..t * q_dim], &mut s.scores, t, pos0);
        layer.o.forward_path(pool, &s.att[..t * q_dim], &mut s.xn[..t * d], t, path);
        add_rows(pool, &mut s.x[..t * d], &s.xn[..t * d], d);

        // MLP block
        apply_norm(pool, &layer.mlp_norm, &s.x[..t * d], &mut s.xn[..t * d], d);
        let up_out = layer.up.out_features;
        layer.up.forward_path(pool, &s.xn[..t * d], &mut s.up[..t * up_out], t, path);
        // act: [t, ffn] — SwiGLU into `act` for LLaMA; GELU in place in `up` for GPT-2
        let act: &[f32] = match c.arch {
            Arch::Llama => {
                let up = &s.up[..t * up_out];
                pool.rows_mut(&mut s.act[..t * ffn], ffn, |r, act| {
                    for (i, out) in r.zip(act.chunks_exact_mut(ffn)) {
                        let row = &up[i * up_out..(i + 1) * up_out];
                        silu_mul(&row[..ffn], &row[ffn..], out);
                    }
                });
                &s.act[..t * ffn]
            }
            Arch::Gpt2 => {
                pool.rows_mut(&mut s.up[..t * ffn], ffn, |_, up| gelu_tanh(up));
                &s.up[..t * ffn]
            }
        };
        layer.down.forward_path(pool, act, &mut s.xn[..t * d], t, path);
        add_rows(pool, &mut s.x[..t * d], &s.xn[..t * d], d);
    }
}

/// x += y over rows of `d` values, the rows split among the pool's threads for a prompt.
fn add_rows(pool: &ThreadPool, x: &mut [f32], y: &[f32], d: usize) {
    pool.rows_mut(x, d, |r, x| add_assign(x, &y[r.start * d..r.end * d]));
}
