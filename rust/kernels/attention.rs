//! Causal multi-head attention with grouped-query heads over a preallocated KV cache.

use crate::kernels::activations::softmax;
use crate::kernels::simd::{axpy_rows, dot_rows};
use crate::threadpool::{chunk, SyncPtr, ThreadPool};

pub struct AttnShape {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
}

/// For each of `t_len` new tokens at positions `pos0..pos0+t_len` and each head, attends over
/// cache positions `0..=pos`:
///   q: [t_len, n_heads·head_dim], k_cache/v_cache: [max_seq, n_kv_heads·head_dim] (this layer),
///   out: [t_len, n_heads·head_dim], scores: [n_threads, ≥ pos0+t_len] scratch.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    pool: &ThreadPool,
    shape: &AttnShape,
    q: &[f32],
    k_cache: &[f32],
    v_cache: &[f32],
    out: &mut [f32],
    scores: &mut [f32],
    t_len: usize,
    pos0: usize,
) {
    let (nh, hd) = (shape.n_heads, shape.head_dim);
    let kv_dim = shape.n_kv_heads * hd;
    let group = nh / shape.n_kv_heads;
    let n_ctx_max = pos0 + t_len;
    assert_eq!(q.len(), t_len * nh * hd);
    assert_eq!(out.len(), t_len * nh * hd);
    assert!(k_cache.len() >= n_ctx_max * kv_dim && v_cache.len() >= n_ctx_max * kv_dim);
    assert!(scores.len() >= pool.n_threads() * n_ctx_max);
    let scale = 1.0 / (hd as f32).sqrt();
    let stride = scores.len() / pool.n_threads();
    let out_p = SyncPtr(out.as_mut_ptr());
    let sc_p = SyncPtr(scores.as_mut_ptr());
    pool.run(|tid, nt| {
        let (out_p, sc_p) = (out_p, sc_p);
        // SAFETY: thread `tid` owns scores[tid·stride..][..stride] and the (t, h) rows of out it is given.
        let sc = unsafe { std::slice::from_raw_parts_mut(sc_p.0.add(tid * stride), stride) };
        for task in chunk(t_len * nh, tid, nt) {
            let (t, h) = (task / nh, task % nh);
            let g = h / group;
            let n_ctx = pos0 + t + 1;
            let qh = &q[(t * nh + h) * hd..][..hd];
            let s = &mut sc[..n_ctx];
            // scores[p] = q · k[p, g]; keys of kv head g sit every kv_dim values from g·hd
            dot_rows(qh, &k_cache[g * hd..], kv_dim, s);
            for v in s.iter_mut() {
                *v *= scale;
            }
            softmax(s);
            let o = unsafe { std::slice::from_raw_parts_mut(out_p.0.add((t * nh + h) * hd), hd) };
            o.fill(0.0);
            axpy_rows(o, s, &v_cache[g * hd..], kv_dim);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

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
            attention(&pool, &shape, &q, &k, &v, &mut out, &mut scores, 2, 1);
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
