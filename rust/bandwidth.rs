//! Memory read bandwidth, measured the way the decode ceiling needs it: every thread of a pool
//! sums its share of one large buffer. And [`MatmulProbe`]: one precision's matmul kernel timed
//! on weights that come from memory, as in decode, for the kernel benchmarks.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::kernels::quant::{f32_to_bf16_vec, QuantizedI8, GROUP, QuantizedI4};
use crate::kernels::simd;
use crate::memory;
use crate::model::{Linear, Precision, WeightData};
use crate::rng::Rng;
use crate::threadpool::{chunk, ThreadPool};

/// Sums `buf` on every thread of `pool`; returns the total (so the reads cannot be optimized away).
pub fn threaded_sum(pool: &ThreadPool, buf: &[f32]) -> f32 {
    let parts: Vec<std::sync::Mutex<f32>> = (0..pool.n_threads()).map(|_| std::sync::Mutex::new(0.0)).collect();
    pool.run(|t, nt| {
        let r = chunk(buf.len(), t, nt);
        let s = simd::sum(&buf[r]);
        if let Ok(mut p) = parts[t].lock() {
            *p = s;
        }
    });
    parts.iter().map(|p| p.lock().map_or(0.0, |v| *v)).sum()
}

/// Best read bandwidth in bytes/s over `repeats` passes over a buffer of `bytes` bytes.
pub fn read_bandwidth(pool: &ThreadPool, bytes: usize, repeats: usize) -> f64 {
    let buf = vec![1.0f32; (bytes / 4).max(1)];
    threaded_sum(pool, &buf); // touch every page first
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let t0 = Instant::now();
        std::hint::black_box(threaded_sum(pool, std::hint::black_box(&buf)));
        best = best.min(t0.elapsed().as_secs_f64());
    }
    (buf.len() * 4) as f64 / best
}

/// Copies of one random weight `[rows, cols]` in one precision (INT8 in groups of 32), enough of
/// them together (`min_bytes`) to overflow the caches; each [`MatmulProbe::run`] multiplies
/// `tokens` rows of activations by the next copy, so every call streams its weight from memory
/// the way decode does (tokens = 1: the GEMV path; more: the GEMM path of prefill).
pub struct MatmulProbe {
    weights: Vec<Linear>,
    next: usize,
    tokens: usize,
    x: Vec<f32>,
    y: Vec<f32>,
}

impl MatmulProbe {
    /// At most this many copies, whatever `min_bytes` asks.
    pub const MAX_COPIES: usize = 64;

    pub fn new(precision: Precision, rows: usize, cols: usize, tokens: usize, min_bytes: usize) -> Result<Self> {
        if rows == 0 || cols == 0 || tokens == 0 {
            return Err(Error::InvalidArgument(format!("rows, cols and tokens must be at least 1, got {rows}, {cols}, {tokens}")));
        }
        if matches!(precision, Precision::Int8 | Precision::Int4) && cols % GROUP != 0 {
            return Err(Error::InvalidArgument(format!("cols must be a multiple of {GROUP} for {}, got {cols}", precision.name())));
        }
        let what = "the matmul probe's weights";
        let n = memory::checked_bytes(rows, cols, what)?;
        let mut rng = Rng::new(7);
        let mut values: Vec<f32> = memory::with_capacity(n, what)?;
        values.extend((0..n).map(|_| (rng.uniform() * 2.0 - 1.0) as f32));
        let weight = match precision {
            Precision::F32 => WeightData::F32(values.into()),
            Precision::Bf16 => WeightData::Bf16(f32_to_bf16_vec(&values).into()),
            Precision::Int8 => WeightData::Int8(QuantizedI8::quantize_with_group(&values, rows, cols, GROUP)),
            Precision::Int4 => WeightData::Int4(QuantizedI4::quantize(&values, rows, cols)),
        };
        // in the layout a loaded model holds it in (INT8 tiles on some CPUs)
        let first = Linear::new(weight.arranged(), rows, cols, None)?;
        let bytes = first.weight_bytes();
        let copies = (min_bytes / bytes.max(1) + 1).clamp(1, Self::MAX_COPIES);
        memory::check_fits(memory::checked_bytes(copies, bytes, what)?, what)?;
        let mut weights = vec![first];
        for _ in 1..copies {
            // a deep copy (cloning the Linear would share its weight): its own bytes and addresses
            weights.push(Linear::new((*weights[0].weight).clone(), rows, cols, None)?);
        }
        let x = (0..tokens * cols).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect();
        let y = memory::zeroed(memory::checked_bytes(tokens, rows, what)?, what)?;
        Ok(Self { weights, next: 0, tokens, x, y })
    }

    /// Bytes of one weight (what one call reads; INT8 scales included).
    pub fn weight_bytes(&self) -> usize {
        self.weights[0].weight_bytes()
    }

    pub fn copies(&self) -> usize {
        self.weights.len()
    }

    /// y = x · wᵀ with the next copy of the weight.
    pub fn run(&mut self, pool: &ThreadPool) {
        let w = &self.weights[self.next];
        self.next = (self.next + 1) % self.weights.len();
        w.forward(pool, std::hint::black_box(&self.x), &mut self.y, self.tokens);
        std::hint::black_box(&self.y);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_probe_rotates_over_copies_in_every_precision() {
        let pool = ThreadPool::new(2).unwrap();
        for (precision, bytes) in [(Precision::F32, 64 * 96 * 4), (Precision::Bf16, 64 * 96 * 2), (Precision::Int8, 64 * 96 + 64 * 3 * 2)] {
            let mut p = MatmulProbe::new(precision, 64, 96, 3, 4 * bytes).unwrap();
            assert_eq!(p.weight_bytes(), bytes);
            assert_eq!(p.copies(), 5);
            for _ in 0..7 {
                p.run(&pool);
            }
            assert_eq!(p.next, 2);
            assert!(p.y.iter().all(|v| v.is_finite()) && p.y.iter().any(|&v| v != 0.0));
        }
        assert!(MatmulProbe::new(Precision::Int8, 8, 40, 1, 0).is_err());
        assert!(MatmulProbe::new(Precision::F32, 0, 32, 1, 0).is_err());
        assert_eq!(MatmulProbe::new(Precision::F32, 8, 32, 1, usize::MAX).unwrap().copies(), MatmulProbe::MAX_COPIES);
    }

    #[test]
    fn sums_every_element_once() {
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            let buf: Vec<f32> = (0..1001).map(|i| (i % 7) as f32).collect();
            let want: f32 = buf.iter().sum();
            assert_eq!(threaded_sum(&pool, &buf), want);
        }
        assert!(read_bandwidth(&ThreadPool::new(1).unwrap(), 1 << 20, 2) > 0.0);
    }
}
