//! Causal multi-head attention with grouped-query heads over a preallocated KV cache.

use crate::kernels::activations::softmax;
use crate::kernels::simd::{axpy_with, detected, score_rows_with, weigh_rows_with, RowElem, SimdLevel, MAX_QUERIES, ROWS_AHEAD};
use crate::kv_cache::KvLayer;
use crate::threadpool::{chunk, SyncPtr, ThreadPool};

pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// Rows of attention scores each thread needs per position of context: a prompt's task on
/// AVX-512 scores up to this many rows (query heads of a group × rows of the prompt) together
/// ([`attention_prompt_tiles`]); elsewhere [`MAX_QUERIES`] rows are.
pub const SCORE_ROWS: usize = 48;

/// Rows of a prompt per task of [`attention_prompt_tiles`], per head.
const TASK_ROWS: usize = 16;

/// Rows of attention scores per position of context that `scores` must hold for `threads`
/// threads and `n_heads` query heads: each thread's [`SCORE_ROWS`], and a row per head for a
/// split decode step ([`attention`]).
pub fn score_rows_needed(threads: usize, n_heads: usize) -> usize {
    (threads * SCORE_ROWS).max(n_heads)
}

/// Positions of context from which a decode step whose KV-head tasks do not divide evenly
/// among the threads runs in three evenly split passes instead (see `attention_step_split`).
/// SmolLM2-135M's shape, 2 threads, AVX-512, µs per step over 30 layers, one pass → split
/// (`BENCH_KV=30,9,3,64,N cargo test --release --lib bench_attention_kv_cache -- --ignored
/// --nocapture`, two runs): at 2,000 positions FP32 3075 → 2583 and 3567 → 2904, BF16 2022 →
/// 1886 and 2347 → 2279; at 1,000 FP32 1825 → 1513 and 1135 → 1075, BF16 665 → 689 and
/// 659 → 663; at 512 FP32 438 → 466 and 595 → 552, BF16 214 → 272 and 234 → 471. Below about
/// a thousand positions the two extra pool calls per layer cost what the balance gains. With
/// the one-pass step's heads shared evenly among the threads (5 and 4; before, a task per
/// group: 6 and 3), medians of 6 runs, one pass against split: 1,000 positions FP32 1520 vs
/// 1568, BF16 1006 vs 1072; 2,000 positions FP32 3529 vs 3029, BF16 2463 vs 2320 — the
/// split reads each group's keys and values once, the even shares read the cut group twice.
pub const SPLIT_FROM: usize = 1024;

/// For each of `t_len` new tokens at positions `pos0..pos0+t_len` and each head, attends over
/// cache positions `0..=pos`:
///   q: [t_len, n_heads·head_dim], kv: this layer's k/v: [max_seq, n_kv_heads·head_dim] (f32 or
///   bf16, widened as read), out: [t_len, n_heads·head_dim], scores: [n_threads, ≥ pos0+t_len]
///   scratch ([`SCORE_ROWS`] times that lets that many rows of a prompt run together).
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    shape: &AttnShape,
    q: &[f32],
    kv: KvLayer<'_>,
    out: &mut [f32],
    scores: &mut [f32],
    t_len: usize,
    pos0: usize,
) {
    let level = detected();
    match kv {
        KvLayer::F32 { k, v } => attention_rows(level, pool, shape, q, k, v, out, scores, t_len, pos0, SPLIT_FROM, true),
        KvLayer::Bf16 { k, v } => attention_rows(level, pool, shape, q, k, v, out, scores, t_len, pos0, SPLIT_FROM, true),
    }
}

/// Bytes of keys and values a thread asks for at the start of a decode step, at most
/// ([`request_kv`]): a few times a core's L2 (AMD EPYC Zen 4: 1 MiB, its L3 taking what L2
/// evicts; Intel Xeon: 2 MiB), so that a long context does not ask for lines that would be
/// evicted again before the step reads them. The measured steps asked for 0.7-2.8 MiB; the
/// bound itself was not measured against others.
const KV_REQUEST_BYTES: usize = 4 << 20;

/// Asks, into L2, for the values `cols` of rows `rows` of a cache laid out [position, kv_dim],
/// row by row, until `budget` bytes are asked for. A decode step's keys and values come from
/// memory (the weights streamed since the layer's last step evicted them), and its row
/// kernels read one head's slice of each row at a time, a few rows ahead ([`ROWS_AHEAD`]):
/// a short strided stream with a few misses in flight. Asked for at once, in address order,
/// the rows the thread is about to read arrive with many misses in flight. On the 2-core AMD
/// EPYC (Zen 4), decode about 900 positions in (docs/architecture.md): INT8 1.09x (llama-135m)
/// and 1.12x (gpt2-124m) at 1 thread, 1.06x and 1.07x at 2; BF16 1.07x, FP32 1.04x; within
/// noise at 128 positions. A split step ([`attention_step_split`]) asks for nothing: asking
/// there measured 0.98x.
fn request_kv<E: RowElem>(cache: &[E], kv_dim: usize, rows: std::ops::Range<usize>, cols: std::ops::Range<usize>, budget: &mut usize) {
    let size = std::mem::size_of::<E>();
    let bytes = cols.len() * size;
    for p in rows {
        if *budget < bytes {
            return;
        }
        *budget -= bytes;
        crate::kernels::simd::prefetch_l2(cache[p * kv_dim + cols.start..].as_ptr() as *const u8, bytes);
    }
}

/// [`attention`] on SIMD level `level` over k_cache/v_cache: [max_seq, n_kv_heads·head_dim]
/// of one element type.
///
/// A decode step's (one row's) task is query heads that share a KV head (up to
/// [`MAX_QUERIES`] of them, within one thread's share of the heads, below): their queries read
/// each key and value row of the group once. A prompt's task is one head and up to [`MAX_QUERIES`]
/// consecutive rows, which attend over nearly the same keys: their scores read each key row
/// once ([`score_rows_with`], keys in tiles reduced across lanes together; a row's scores past
/// its own position are computed and not used), a softmax per row over its own positions, then
/// their outputs read each value row once over the positions all of them see
/// ([`weigh_rows_with`]) and each row adds its last few positions alone (`axpy`), continuing the
/// same sum. The row kernels compute each query's scores and each output alike whatever the
/// other queries of the call, so a (row, head)'s result depends only on its query and the
/// cache — not on the heads or rows beside it, the thread count or the chunk — and a prompt and
/// its decode steps attend alike (tested). A prompt's threads take tasks in turn (task i on
/// thread i mod n), which spreads the causally longer late rows. A decode step gives each
/// thread an even share of the query heads (SmolLM2's 9 heads on 2 threads: 5 and 4; a task
/// per group of 3 had given one thread 6), each share in tasks of one group's heads — a group
/// that two shares cut is read by both. A decode step over at least `split_from` positions
/// whose groups would not divide evenly among the threads runs [`attention_step_split`]
/// instead when `scores` holds a row per head: there a group's keys and values are read
/// once in all. With `tiles` on AVX-512, a prompt runs [`attention_prompt_tiles`] instead:
/// more rows per pass, the same bits.
#[allow(clippy::too_many_arguments)]
fn attention_rows<E: RowElem>(
    level: SimdLevel,
    pool: &ThreadPool,
    shape: &AttnShape,
    q: &[f32],
    k_cache: &[E],
    v_cache: &[E],
    out: &mut [f32],
    scores: &mut [f32],
    t_len: usize,
    pos0: usize,
    split_from: usize,
    tiles: bool,
) {
    let (nh, hd) = (shape.n_heads, shape.head_dim);
    let kv_dim = shape.n_kv_heads * hd;
    let group = nh / shape.n_kv_heads;
    let n_ctx_max = pos0 + t_len;
    let row = nh * hd;
    assert_eq!(q.len(), t_len * row);
    assert_eq!(out.len(), t_len * row);
    assert!(k_cache.len() >= n_ctx_max * kv_dim && v_cache.len() >= n_ctx_max * kv_dim);
    assert!(scores.len() >= pool.n_threads() * n_ctx_max);
    let scale = 1.0 / (hd as f32).sqrt();
    let stride = scores.len() / pool.n_threads();
    // queries per task: as many as the scratch holds
    let cap = MAX_QUERIES.min(stride / n_ctx_max.max(1)).max(1);
    // A task is `nq` queries, `ld` apart in q and out, against KV head g; query j sees positions
    // 0..n_lo + j·step. A decode step's task is up to `cap` heads of one group (step 0, hd apart:
    // the heads of a group read the same keys and values), a prompt's one head and up to `cap`
    // consecutive rows (step 1, a row apart).
    let decode = t_len == 1;
    let chunks = group.div_ceil(cap);
    let per = group.div_ceil(chunks);
    let blocks = t_len.div_ceil(cap);
    // a decode step's keys and values come from memory once; a prompt's were just read by its
    // other rows and heads
    let ahead = if decode { ROWS_AHEAD } else { 0 };
    let nt = pool.n_threads();
    // the tasks of a decode step when each takes a whole group (or an even share of one)
    let group_tasks = shape.n_kv_heads * chunks;
    if decode && nt > 1 && group_tasks % nt != 0 && n_ctx_max >= split_from && scores.len() >= nh * n_ctx_max {
        let groups = Groups { size: group, chunks, per };
        return attention_step_split(level, pool, shape, q, k_cache, v_cache, out, scores, n_ctx_max, groups, scale);
    }
    #[cfg(target_arch = "x86_64")]
    if tiles && !decode && level == SimdLevel::Avx512 && hd <= crate::kernels::attention_tiles::MAX_HEAD_DIM && stride >= n_ctx_max {
        return attention_prompt_tiles(pool, shape, q, k_cache, v_cache, out, scores, t_len, pos0, scale);
    }
    let out_p = SyncPtr(out.as_mut_ptr());
    let sc_p = SyncPtr(scores.as_mut_ptr());
    pool.run(|tid, nt| {
        let (out_p, sc_p) = (out_p, sc_p);
        // SAFETY: thread `tid` owns scores[tid·stride..][..stride] and the rows of out it is given.
        let sc = unsafe { std::slice::from_raw_parts_mut(sc_p.0.add(tid * stride), stride) };
        // `nq` queries, `ld` apart in q and out from offset `at`, against KV head g; query j
        // sees positions 0..n_lo + j·step
        let mut task = |g: usize, at: usize, nq: usize, ld: usize, n_lo: usize, step: usize| {
            // the last query sees positions 0..n_hi
            let n_hi = n_lo + (nq - 1) * step;
            let (keys, values) = (&k_cache[g * hd..], &v_cache[g * hd..]);
            let s = &mut sc[..nq * n_hi];
            // s[j·n_hi + p] = scale · q_j · k[p, g]; keys of kv head g sit every kv_dim values from g·hd
            score_rows_with(level, &q[at..], nq, ld, hd, keys, kv_dim, n_hi, scale, s, n_hi, ahead);
            for (j, sr) in s.chunks_exact_mut(n_hi).enumerate() {
                softmax(&mut sr[..n_lo + j * step]);
            }
            // SAFETY: this task alone writes these nq rows of hd values of out.
            let o = unsafe { std::slice::from_raw_parts_mut(out_p.0.add(at), (nq - 1) * ld + hd) };
            weigh_rows_with(level, s, nq, n_hi, n_lo, values, kv_dim, hd, o, ld, ahead);
            // a prompt's later rows add their last few positions alone, continuing the same sum
            for j in 1..nq {
                let oj = &mut o[j * ld..j * ld + hd];
                for p in n_lo..n_lo + j * step {
                    axpy_with(level, oj, s[j * n_hi + p], &values[p * kv_dim..p * kv_dim + hd]);
                }
            }
        };
        if decode {
            // this thread's share of the query heads, in pieces of up to `cap` heads of a group
            let heads = chunk(nh, tid, nt);
            if !heads.is_empty() {
                // the keys, then the values, of the KV heads this thread's query heads read
                let cols = heads.start / group * hd..((heads.end - 1) / group + 1) * hd;
                let mut budget = KV_REQUEST_BYTES;
                request_kv(k_cache, kv_dim, 0..n_ctx_max, cols.clone(), &mut budget);
                request_kv(v_cache, kv_dim, 0..n_ctx_max, cols, &mut budget);
            }
            let mut h = heads.start;
            while h < heads.end {
                let g = h / group;
                let nq = (heads.end.min((g + 1) * group) - h).min(cap);
                task(g, h * hd, nq, hd, pos0 + 1, 0);
                h += nq;
            }
        } else {
            for b in (tid..blocks * nh).step_by(nt) {
                let (h, b) = (b / blocks, b % blocks);
                let t0 = b * cap;
                task(h / group, t0 * row + h * hd, cap.min(t_len - t0), row, pos0 + t0 + 1, 1);
            }
        }
    });
}

/// A prompt's attention on AVX-512 (see [`attention_rows`]) with the kernels of
/// [`attention_tiles`](crate::kernels::attention_tiles), which give each score and output the
/// bits of the row kernels: a task is up to [`TASK_ROWS`] rows of the prompt for the query
/// heads of one group that the thread's scores hold (all of SmolLM2's 3 with [`SCORE_ROWS`]).
/// Its rows are scored together against keys transposed once per chunk, a softmax runs per
/// row, and the weighted sums go [`WEIGH_ROWS`](crate::kernels::attention_tiles::WEIGH_ROWS)
/// rows at a time (4 rows of the prompt × 3 heads), each value row loaded once for them all.
/// Tasks go group by group, so a group's keys and values stay in cache across its tasks.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
fn attention_prompt_tiles<E: RowElem>(
    pool: &ThreadPool,
    shape: &AttnShape,
    q: &[f32],
    k_cache: &[E],
    v_cache: &[E],
    out: &mut [f32],
    scores: &mut [f32],
    t_len: usize,
    pos0: usize,
    scale: f32,
) {
    use crate::kernels::attention_tiles::{score_many, weigh_many, WEIGH_ROWS};
    let (nh, hd) = (shape.n_heads, shape.head_dim);
    let kv_dim = shape.n_kv_heads * hd;
    let group = nh / shape.n_kv_heads;
    let row = nh * hd;
    let n_ctx_max = pos0 + t_len;
    let stride = scores.len() / pool.n_threads();
    let rows_cap = stride / n_ctx_max;
    // heads per task: as many of a group as the scores hold at TASK_ROWS rows each, in even chunks
    let chunks = group.div_ceil((rows_cap / TASK_ROWS).clamp(1, group.min(WEIGH_ROWS)));
    let per = group.div_ceil(chunks);
    let rb = (rows_cap / per).min(TASK_ROWS);
    debug_assert!(rb >= 1);
    let blocks = t_len.div_ceil(rb);
    let tasks = shape.n_kv_heads * chunks * blocks;
    let out_p = SyncPtr(out.as_mut_ptr());
    let sc_p = SyncPtr(scores.as_mut_ptr());
    pool.run(|tid, nt| {
        let (out_p, sc_p) = (out_p, sc_p);
        // SAFETY: thread `tid` owns scores[tid·stride..][..stride] and the rows of out it is given.
        let sc = unsafe { std::slice::from_raw_parts_mut(sc_p.0.add(tid * stride), stride) };
        let mut q_at = Vec::with_capacity(per * rb);
        let (mut w_at, mut n_at, mut out_at) = (Vec::new(), Vec::new(), Vec::new());
        for task in (tid..tasks).step_by(nt) {
            let (g, b, c) = (task / (blocks * chunks), task / chunks % blocks, task % chunks);
            let (h0, heads) = (g * group + c * per, per.min(group - c * per));
            let t0 = b * rb;
            let rows = rb.min(t_len - t0);
            // row j sees positions 0..n_lo + j; every row is scored against 0..n_hi
            let n_lo = pos0 + t0 + 1;
            let n_hi = n_lo + rows - 1;
            // score row j·heads + hh: prompt row t0 + j, head h0 + hh
            let at = |j: usize, hh: usize| (t0 + j) * row + (h0 + hh) * hd;
            q_at.clear();
            q_at.extend((0..rows).flat_map(|j| (0..heads).map(move |hh| at(j, hh))));
            let s = &mut sc[..rows * heads * n_hi];
            score_many(q, &q_at, hd, &k_cache[g * hd..], kv_dim, n_hi, scale, s, n_hi);
            for (r, sr) in s.chunks_exact_mut(n_hi).enumerate() {
                softmax(&mut sr[..n_lo + r / heads]);
            }
            // the weighted sums of `sub` rows of the prompt × the heads at a time
            let sub = (WEIGH_ROWS / heads).max(1);
            for j0 in (0..rows).step_by(sub) {
                let js = j0..rows.min(j0 + sub);
                w_at.clear();
                n_at.clear();
                out_at.clear();
                let base = at(j0, 0);
                for j in js.clone() {
                    for hh in 0..heads {
                        w_at.push((j * heads + hh) * n_hi);
                        n_at.push(n_lo + j);
                        out_at.push(at(j, hh) - base);
                    }
                }
                // SAFETY: this task alone writes these rows of hd values of out (the heads
                // h0..h0 + heads of prompt rows js), all within this span.
                let o = unsafe { std::slice::from_raw_parts_mut(out_p.0.add(base), at(js.end - 1, heads - 1) + hd - base) };
                weigh_many(s, &w_at, &n_at, &v_cache[g * hd..], kv_dim, hd, o, &out_at);
            }
        }
    });
}

/// How a decode step's query heads meet their KV head: `size` heads per group, in `chunks`
/// calls of the row kernels of up to `per` heads each.
#[derive(Clone, Copy)]
struct Groups {
    size: usize,
    chunks: usize,
    per: usize,
}

impl Groups {
    /// (first head, heads) of chunk c of group g.
    fn heads(&self, g: usize, c: usize) -> (usize, usize) {
        (g * self.size + c * self.per, self.per.min(self.size - c * self.per))
    }
}

/// A decode step over `n` positions in three passes, each split evenly among the threads, for
/// when a task per KV head would not be (SmolLM2's 3 KV heads on 2 threads), and where reading
/// a group cut between two threads' shares of heads twice costs more than two extra pool
/// calls ([`SPLIT_FROM`]): the scores of every group over chunks of positions (a multiple of the
/// 4-key tile of [`score_rows_with`]), the softmax of each head's row, then the weighted sums of
/// every group over chunks of the head dimension (whole 16-lane blocks). Each score, softmax
/// and output element goes through the same operations in the same order as in the one-pass
/// step — a key's score depends only on its tile, an output element is its own chain of
/// multiply-adds over the positions — so the results are bit for bit the same (tested).
/// `scores` holds a row of `n` per head.
#[allow(clippy::too_many_arguments)]
fn attention_step_split<E: RowElem>(
    level: SimdLevel,
    pool: &ThreadPool,
    shape: &AttnShape,
    q: &[f32],
    k_cache: &[E],
    v_cache: &[E],
    out: &mut [f32],
    scores: &mut [f32],
    n: usize,
    groups: Groups,
    scale: f32,
) {
    let (nh, hd, nkv) = (shape.n_heads, shape.head_dim, shape.n_kv_heads);
    let kv_dim = nkv * hd;
    let nt = pool.n_threads();
    assert!(scores.len() >= nh * n && q.len() == nh * hd && out.len() == nh * hd);
    let sc_p = SyncPtr(scores.as_mut_ptr());
    // scores: group g against positions p0..p0 + len
    let pos_chunk = n.div_ceil(nt).next_multiple_of(4);
    let pos_parts = n.div_ceil(pos_chunk);
    pool.run(|tid, nt| {
        let sc_p = sc_p;
        for task in (tid..nkv * pos_parts).step_by(nt) {
            let (g, p0) = (task / pos_parts, task % pos_parts * pos_chunk);
            let len = pos_chunk.min(n - p0);
            for c in 0..groups.chunks {
                let (h0, nq) = groups.heads(g, c);
                // SAFETY: this task alone writes positions p0..p0 + len of the rows of heads
                // h0..h0 + nq (scores holds nh rows of n).
                let s = unsafe { std::slice::from_raw_parts_mut(sc_p.0.add(h0 * n + p0), (nq - 1) * n + len) };
                score_rows_with(level, &q[h0 * hd..], nq, hd, hd, &k_cache[p0 * kv_dim + g * hd..], kv_dim, len, scale, s, n, ROWS_AHEAD);
            }
        }
    });
    pool.run(|tid, nt| {
        let sc_p = sc_p;
        for h in (tid..nh).step_by(nt) {
            // SAFETY: this task alone owns head h's row.
            softmax(unsafe { std::slice::from_raw_parts_mut(sc_p.0.add(h * n), n) });
        }
    });
    // weighted sums: group g, output values d0..d0 + len of each of its heads
    let dim_chunk = hd.div_ceil(nt).next_multiple_of(16);
    let dim_parts = hd.div_ceil(dim_chunk);
    let out_p = SyncPtr(out.as_mut_ptr());
    let scores = &*scores;
    pool.run(|tid, nt| {
        let out_p = out_p;
        for task in (tid..nkv * dim_parts).step_by(nt) {
            let (g, d0) = (task / dim_parts, task % dim_parts * dim_chunk);
            let len = dim_chunk.min(hd - d0);
            for c in 0..groups.chunks {
                let (h0, nq) = groups.heads(g, c);
                // SAFETY: this task alone writes values d0..d0 + len of heads h0..h0 + nq.
                let o = unsafe { std::slice::from_raw_parts_mut(out_p.0.add(h0 * hd + d0), (nq - 1) * hd + len) };
                let w = &scores[h0 * n..(h0 + nq) * n];
                weigh_rows_with(level, w, nq, n, n, &v_cache[g * hd + d0..], kv_dim, len, o, hd, ROWS_AHEAD);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::{bf16_to_f32, f32_to_bf16};
    use crate::kernels::test_rng::Rng;
    use crate::kv_cache::{KvCache, KvDtype};

    /// f64 attention of one (t, h) over cached rows k, v: [n_ctx, kv_dim] (values as given).
    fn reference(q: &[f32], k: &[f32], v: &[f32], kv_dim: usize, off: usize, n_ctx: usize) -> Vec<f64> {
        let hd = q.len();
        let scores: Vec<f64> = (0..n_ctx)
            .map(|p| (0..hd).map(|i| q[i] as f64 * k[p * kv_dim + off + i] as f64).sum::<f64>() / (hd as f64).sqrt())
            .collect();
        let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let z: f64 = e.iter().sum();
        (0..hd).map(|i| (0..n_ctx).map(|p| e[p] / z * v[p * kv_dim + off + i] as f64).sum()).collect()
    }

    /// A BF16 cache attends exactly as an FP32 cache holding the rounded rows (bit for bit, on
    /// every SIMD level and thread count), within f32 rounding of an f64 reference, and visibly
    /// differs from an FP32 cache of the unrounded rows.
    #[test]
    fn a_bf16_cache_attends_as_f32_rows_of_its_rounded_values() {
        let mut rng = Rng(0x5eed);
        // (n_heads, n_kv_heads, head_dim, tokens, first position): odd head_dims and lengths
        for &(nh, nkv, hd, t_len, pos0) in &[(2, 1, 5, 3, 0), (4, 2, 17, 2, 9), (9, 3, 64, 1, 70), (3, 3, 33, 4, 12), (6, 2, 31, 5, 1), (2, 2, 80, 1, 300)] {
            let kv_dim = nkv * hd;
            let n = pos0 + t_len;
            let k: Vec<f32> = (0..n * kv_dim).map(|_| 3.0 * rng.next()).collect();
            let v: Vec<f32> = (0..n * kv_dim).map(|_| 4.0 * rng.next()).collect();
            let round = |x: &[f32]| x.iter().map(|&a| bf16_to_f32(f32_to_bf16(a))).collect::<Vec<f32>>();
            let (kr, vr) = (round(&k), round(&v));
            let q = rng.vec(t_len * nh * hd);
            let fill = |rows_k: &[f32], rows_v: &[f32], dtype| {
                let mut c = KvCache::new(1, n + 2, kv_dim, dtype).unwrap();
                for p in 0..n {
                    c.write(0, p, &rows_k[p * kv_dim..][..kv_dim], &rows_v[p * kv_dim..][..kv_dim]);
                }
                c
            };
            let bf16 = fill(&k, &v, KvDtype::Bf16);
            let f32_rounded = fill(&kr, &vr, KvDtype::F32);
            let f32_exact = fill(&k, &v, KvDtype::F32);
            let shape = AttnShape { n_heads: nh, n_kv_heads: nkv, head_dim: hd };
            let group = nh / nkv;
            for level in SimdLevel::available() {
                for threads in [1, 3] {
                    let pool = ThreadPool::new(threads).unwrap();
                    let run = |c: &KvCache| {
                        let mut out = vec![0f32; t_len * nh * hd];
                        let mut scores = vec![0f32; threads * n];
                        match c.layer(0) {
                            KvLayer::F32 { k, v } => attention_rows(level, &pool, &shape, &q, k, v, &mut out, &mut scores, t_len, pos0, SPLIT_FROM, true),
                            KvLayer::Bf16 { k, v } => attention_rows(level, &pool, &shape, &q, k, v, &mut out, &mut scores, t_len, pos0, SPLIT_FROM, true),
                        }
                        out
                    };
                    let got = run(&bf16);
                    assert_eq!(got, run(&f32_rounded), "{level:?} threads {threads} hd {hd}");
                    let mut worst = 0f64;
                    for t in 0..t_len {
                        for h in 0..nh {
                            let want = reference(&q[(t * nh + h) * hd..][..hd], &kr, &vr, kv_dim, h / group * hd, pos0 + t + 1);
                            for (i, w) in want.iter().enumerate() {
                                worst = worst.max((got[(t * nh + h) * hd + i] as f64 - w).abs());
                            }
                        }
                    }
                    assert!(worst <= 4e-6, "{level:?} hd {hd}: {worst:e} from the f64 reference");
                    let apart = got.iter().zip(run(&f32_exact)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
                    assert!(apart > 1e-4, "{level:?} hd {hd}: the bf16 cache should round ({apart:e})");
                }
            }
        }
    }

    /// One decode step's attention over every layer of a long cache, FP32 against BF16, on each
    /// SIMD level: `cargo test --release --lib bench_attention_kv_cache -- --ignored --nocapture`
    /// (BENCH_KV=layers,n_heads,n_kv_heads,head_dim,positions; default: SmolLM2-135M at 2000).
    #[test]
    #[ignore]
    fn bench_attention_kv_cache() {
        use crate::kernels::test_rng::best_time;
        let dims: Vec<usize> = std::env::var("BENCH_KV")
            .unwrap_or_else(|_| "30,9,3,64,2000".into())
            .split(',')
            .map(|v| v.parse().expect("BENCH_KV: layers,n_heads,n_kv_heads,head_dim,positions"))
            .collect();
        let [layers, nh, nkv, hd, n] = dims[..] else { panic!("BENCH_KV needs 5 numbers") };
        let kv_dim = nkv * hd;
        let shape = AttnShape { n_heads: nh, n_kv_heads: nkv, head_dim: hd };
        let mut rng = Rng(3);
        let q = rng.vec(nh * hd);
        let row = rng.vec(kv_dim);
        for dtype in KvDtype::ALL {
            // every layer's cache is its own memory, as in a session: the step streams all of them
            let mut cache = KvCache::new(layers, n, kv_dim, dtype).unwrap();
            for l in 0..layers {
                for p in 0..n {
                    cache.write(l, p, &row, &row);
                }
            }
            let gb = (cache.bytes() as f64) / 1e9;
            for level in SimdLevel::available() {
                // 2 threads: the one-pass step and the split one (when its tasks are uneven)
                for (threads, split_from) in [(1, usize::MAX), (2, usize::MAX), (2, 0)] {
                    let pool = ThreadPool::new(threads).unwrap();
                    let mut out = vec![0f32; nh * hd];
                    let mut scores = vec![0f32; score_rows_needed(threads, nh) * n];
                    let s = best_time(5, 3, |_| {
                        for l in 0..layers {
                            match cache.layer(l) {
                                KvLayer::F32 { k, v } => attention_rows(level, &pool, &shape, &q, k, v, &mut out, &mut scores, 1, n - 1, split_from, true),
                                KvLayer::Bf16 { k, v } => attention_rows(level, &pool, &shape, &q, k, v, &mut out, &mut scores, 1, n - 1, split_from, true),
                            }
                        }
                    });
                    println!(
                        "{} cache, {level:?}, {threads} thread(s){}: {:.0} µs per step over {layers} layers × {n} positions ({:.1} GB/s of cache)",
                        dtype.name(),
                        if split_from == 0 { ", split" } else { "" },
                        s * 1e6,
                        gb / s
                    );
                }
            }
        }
    }

    /// `request_kv` takes a row's slice off the budget for each row it asks for and stops at
    /// the first row the budget no longer covers.
    #[test]
    fn request_kv_stops_at_its_budget() {
        let cache = vec![0u16; 100 * 192];
        let mut budget = 1000;
        request_kv(&cache, 192, 0..100, 64..128, &mut budget); // 128 bytes a row: 7 rows
        assert_eq!(budget, 1000 - 7 * 128);
        let mut budget = KV_REQUEST_BYTES;
        request_kv(&cache, 192, 10..100, 0..192, &mut budget);
        assert_eq!(budget, KV_REQUEST_BYTES - 90 * 384);
        request_kv(&cache, 192, 0..0, 0..192, &mut budget);
        assert_eq!(budget, KV_REQUEST_BYTES - 90 * 384);
    }

    /// Where one decode step's attention spends its time (SmolLM2-135M's shape, 2000 positions,
    /// detected level, 1 thread): the q·k dot products, the softmax and the weighted sum of the
    /// value rows, each over FP32 and BF16 rows:
    /// `cargo test --release --lib bench_attention_parts -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_attention_parts() {
        use crate::kernels::test_rng::best_time;
        let (layers, nh, nkv, hd, n) = (30usize, 9usize, 3usize, 64usize, 2000usize);
        let kv_dim = nkv * hd;
        let mut rng = Rng(3);
        let q = rng.vec(SCORE_ROWS * hd);
        let caches: Vec<Vec<f32>> = (0..layers).map(|_| rng.vec(n * kv_dim)).collect();
        let caches16: Vec<Vec<u16>> = caches.iter().map(|c| c.iter().map(|&v| f32_to_bf16(v)).collect()).collect();
        let level = detected();
        let mut s = vec![0f32; SCORE_ROWS * n];
        let mut o = vec![0f32; SCORE_ROWS * hd];
        // a decode step: the 3 query heads of each KV head together
        let g = nh / nkv;
        let t = best_time(5, 3, |_| for c in &caches { for kv in 0..nkv { score_rows_with(level, &q, g, hd, hd, &c[kv * hd..], kv_dim, n, 0.125, &mut s, n, ROWS_AHEAD); } });
        println!("scores f32 {:.0} µs", t * 1e6);
        let t = best_time(5, 3, |_| for c in &caches16 { for kv in 0..nkv { score_rows_with(level, &q, g, hd, hd, &c[kv * hd..], kv_dim, n, 0.125, &mut s, n, ROWS_AHEAD); } });
        println!("scores bf16 {:.0} µs", t * 1e6);
        let t = best_time(5, 3, |_| for c in &caches { for kv in 0..nkv { weigh_rows_with(level, &s, g, n, n, &c[kv * hd..], kv_dim, hd, &mut o, hd, ROWS_AHEAD); } });
        println!("weighted sum f32 {:.0} µs", t * 1e6);
        let t = best_time(5, 3, |_| for c in &caches16 { for kv in 0..nkv { weigh_rows_with(level, &s, g, n, n, &c[kv * hd..], kv_dim, hd, &mut o, hd, ROWS_AHEAD); } });
        println!("weighted sum bf16 {:.0} µs", t * 1e6);
        let t = best_time(5, 3, |_| for _ in 0..layers * nh { softmax(&mut s[..n]); });
        println!("softmax {:.0} µs", t * 1e6);
    }

    /// A prompt's attention (SmolLM2-135M's heads, FP32 cache, detected level), µs per layer for
    /// prompts of 128 to 2048 tokens at 1 and 2 threads, with the row kernels and with the
    /// AVX-512 tiles (the same on other levels), alternated, best of 5 each:
    /// `cargo test --release --lib bench_attention_prefill -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_attention_prefill() {
        use crate::kernels::test_rng::best_time;
        let (nh, nkv, hd) = (9usize, 3usize, 64usize);
        let kv_dim = nkv * hd;
        let shape = AttnShape { n_heads: nh, n_kv_heads: nkv, head_dim: hd };
        let mut rng = Rng(4);
        for t_len in [128usize, 512, 2048] {
            let k = rng.vec(t_len * kv_dim);
            let v = rng.vec(t_len * kv_dim);
            let q = rng.vec(t_len * nh * hd);
            for threads in [1, 2] {
                let pool = ThreadPool::new(threads).unwrap();
                let mut out = vec![0f32; t_len * nh * hd];
                let mut scores = vec![0f32; threads * SCORE_ROWS * t_len];
                // the row kernels and the AVX-512 tiles (where present), alternated
                let (mut rows, mut tiles) = (f64::INFINITY, f64::INFINITY);
                for _ in 0..5 {
                    rows = rows.min(best_time(1, 1, |_| attention_rows(detected(), &pool, &shape, &q, &k, &v, &mut out, &mut scores, t_len, 0, SPLIT_FROM, false)));
                    tiles = tiles.min(best_time(1, 1, |_| attention_rows(detected(), &pool, &shape, &q, &k, &v, &mut out, &mut scores, t_len, 0, SPLIT_FROM, true)));
                }
                println!("prompt of {t_len} tokens, {threads} thread(s): {:.0} µs per layer with the row kernels, {:.0} with the tiles ({:.2}x)", rows * 1e6, tiles * 1e6, rows / tiles);
            }
        }
    }

    /// Long prompts after a cached prefix (several tiles of rows and keys, both ragged ends)
    /// against the f64 reference.
    #[test]
    fn long_prompts_match_the_reference() {
        let mut rng = Rng(0x10f);
        for &(nh, nkv, hd, t_len, pos0) in &[(9, 3, 64, 37, 300), (4, 2, 16, 70, 45)] {
            let kv_dim = nkv * hd;
            let n = pos0 + t_len;
            let (k, v) = (rng.vec(n * kv_dim), rng.vec(n * kv_dim));
            let q: Vec<f32> = rng.vec(t_len * nh * hd).iter().map(|x| 3.0 * x).collect();
            let shape = AttnShape { n_heads: nh, n_kv_heads: nkv, head_dim: hd };
            for level in SimdLevel::available() {
                let pool = ThreadPool::new(2).unwrap();
                let mut scores = vec![0f32; 2 * SCORE_ROWS * n];
                let mut out = vec![0f32; t_len * nh * hd];
                attention_rows(level, &pool, &shape, &q, &k, &v, &mut out, &mut scores, t_len, pos0, SPLIT_FROM, true);
                let mut worst = 0f64;
                for t in 0..t_len {
                    for h in 0..nh {
                        let want = reference(&q[(t * nh + h) * hd..][..hd], &k, &v, kv_dim, h / (nh / nkv) * hd, pos0 + t + 1);
                        for (i, w) in want.iter().enumerate() {
                            worst = worst.max((out[(t * nh + h) * hd + i] as f64 - w).abs());
                        }
                    }
                }
                assert!(worst <= 4e-6, "{level:?} nh {nh} t_len {t_len}: {worst:e} from the f64 reference");
            }
        }
    }

    /// A prompt's attention equals, bit for bit, the attention of its tokens one decode step at
    /// a time, whatever the thread count (and so however many heads share a task), with and
    /// without the AVX-512 tiles and whatever rows of scores a task holds, on every level: a
    /// head's result depends only on its query and the cache.
    #[test]
    fn prompt_and_steps_attend_alike_whatever_the_tasks() {
        let mut rng = Rng(0xa77);
        for &(nh, nkv, hd, t_len, pos0) in &[(9, 3, 64, 11, 0), (8, 1, 16, 6, 5), (4, 4, 33, 7, 2), (6, 2, 80, 9, 0), (8, 2, 5, 13, 3)] {
            let kv_dim = nkv * hd;
            let n = pos0 + t_len;
            let (k, v) = (rng.vec(n * kv_dim), rng.vec(n * kv_dim));
            let q = rng.vec(t_len * nh * hd);
            let shape = AttnShape { n_heads: nh, n_kv_heads: nkv, head_dim: hd };
            for level in SimdLevel::available() {
                let mut first: Option<Vec<f32>> = None;
                for threads in [1, 2, 3, 5] {
                    let pool = ThreadPool::new(threads).unwrap();
                    let mut scores = vec![0f32; score_rows_needed(threads, nh) * n];
                    let mut whole = vec![0f32; t_len * nh * hd];
                    attention_rows(level, &pool, &shape, &q, &k, &v, &mut whole, &mut scores, t_len, pos0, usize::MAX, true);
                    // the prompt without the AVX-512 tiles, and with scratch for 1 and 7 rows of
                    // scores per thread (a row, or a head and a few rows, per task)
                    for (tiles, rows) in [(false, SCORE_ROWS), (true, 1), (true, 7)] {
                        let mut sc = vec![0f32; threads * rows * n];
                        let mut again = vec![0f32; t_len * nh * hd];
                        attention_rows(level, &pool, &shape, &q, &k, &v, &mut again, &mut sc, t_len, pos0, usize::MAX, tiles);
                        assert_eq!(whole, again, "{level:?} threads {threads} nh {nh} nkv {nkv} hd {hd} (tiles {tiles}, {rows} rows)");
                    }
                    // decode steps in one pass (split_from usize::MAX), split in three passes
                    // wherever their tasks are uneven (0), and with scratch for one row of scores
                    // per thread (one head per task, never split)
                    let mut narrow = vec![0f32; threads * n];
                    for (split_from, wide, what) in [(usize::MAX, true, "one pass"), (0, true, "split"), (0, false, "narrow scratch")] {
                        let sc = if wide { &mut scores } else { &mut narrow };
                        let mut steps = vec![0f32; t_len * nh * hd];
                        for t in 0..t_len {
                            let row = t * nh * hd..(t + 1) * nh * hd;
                            attention_rows(level, &pool, &shape, &q[row.clone()], &k, &v, &mut steps[row], sc, 1, pos0 + t, split_from, true);
                        }
                        assert_eq!(whole, steps, "{level:?} threads {threads} nh {nh} nkv {nkv} hd {hd} ({what})");
                    }
                    match &first {
                        None => first = Some(whole),
                        Some(f) => assert_eq!(&whole, f, "{level:?} threads {threads}"),
                    }
                }
            }
        }
    }

    #[test]
    fn attends_causally_with_gqa() {
        // 2 query heads share 1 kv head; head_dim 2; positions 0..3
        let shape = AttnShape { n_heads: 2, n_kv_heads: 1, head_dim: 2 };
        let k = [1.0f32, 0.0, 0.0, 1.0, 1.0, 1.0];
        let v = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let q = [0.0f32, 0.0, 10.0, 0.0, /* t=1 */ 0.0, 0.0, 0.0, 0.0];
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            let mut out = [0.0f32; 8];
            let mut scores = vec![0.0f32; threads * 3];
            // tokens at positions 1 and 2 (position 0 is already cached)
            attention(&pool, &shape, &q, KvLayer::F32 { k: &k, v: &v }, &mut out, &mut scores, 2, 1);
            // t=0 (pos 1), head 0: q=0 → uniform over positions 0,1 → mean of v0, v1
            assert!((out[0] - 2.0).abs() < 1e-6 && (out[1] - 3.0).abs() < 1e-6);
            // head 1: q=(10,0) prefers key 0 (score 10/√2 vs 0)
            let w0 = 1.0 / (1.0 + (-10.0f32 / 2f32.sqrt()).exp());
            assert!((out[2] - (w0 * 1.0 + (1.0 - w0) * 3.0)).abs() < 1e-5);
            // t=1 (pos 2): uniform over 3 positions
            assert!((out[4] - 3.0).abs() < 1e-5 && (out[5] - 4.0).abs() < 1e-5);
        }
    }
}
