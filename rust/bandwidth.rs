//! Memory read bandwidth, measured the way the decode ceiling needs it: every thread of a pool
//! sums its share of one large buffer.

use std::time::Instant;

use crate::kernels::simd;
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

#[cfg(test)]
mod tests {
    use super::*;

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
