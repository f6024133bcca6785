//! FP32 matmul: y[m, n] = x[m, k] · w[n, k]ᵀ, with w in nn.Linear layout (row-major [out, in]).
//!
//! The f32 face of the one matmul (`matmul.rs`): f32 weights are the [`F32W`] source, loaded
//! as they are, through the same GEMV and packed GEMM as every other format.

use crate::kernels::matmul::{self, matmul_source};
use crate::kernels::matmul_sources::F32W;
use crate::kernels::simd::{self, SimdLevel};
use crate::kernels::RowPath;
use crate::threadpool::ThreadPool;

/// y: [m, n] = x: [m, k] · w: [n, k]ᵀ
pub fn matmul_f32(
    pool: &ThreadPool,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    matmul_f32_with(simd::detected(), pool, x, w, y, m, k, n)
}

/// The path [`matmul_f32`] takes for `m` rows of x: the GEMM from `pack_rows` rows on.
pub fn f32_path_for(m: usize) -> RowPath {
    matmul::path_for(m)
}

/// [`matmul_f32`] on a given path, whatever m (see [`RowPath`]).
#[allow(clippy::too_many_arguments)]
pub fn matmul_f32_path(
    pool: &ThreadPool,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    path: RowPath,
) {
    matmul_f32_level_path(simd::detected(), pool, x, w, y, m, k, n, Some(path))
}

/// [`matmul_f32`] on a forced SIMD path. Panics if `level` is not available on this CPU
/// or a slice length doesn't match its shape.
#[allow(clippy::too_many_arguments)]
pub fn matmul_f32_with(
    level: SimdLevel,
    pool: &ThreadPool,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    matmul_f32_level_path(level, pool, x, w, y, m, k, n, None)
}

/// The driver: `path` None picks by m (the GEMM from `pack_rows` rows on).
#[allow(clippy::too_many_arguments)]
pub fn matmul_f32_level_path(
    level: SimdLevel,
    pool: &ThreadPool,
    x: &[f32],
    w: &[f32],
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    path: Option<RowPath>,
) {
    assert_eq!(Some(w.len()), n.checked_mul(k), "w must be [n, k]");
    let src = F32W { w: w.as_ptr(), k };
    // SAFETY: w holds [n, k] values (asserted) and is borrowed for the call.
    unsafe { matmul_source(level, pool, x, src, y, m, k, n, path) }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::test_rng::{best_time, Rng};
    use crate::threadpool::chunk;

    /// y: [m, n] = x: [m, k] · w: [n, k]ᵀ accumulated in f64.
    fn reference(x: &[f32], w: &[f32], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut y = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|p| x[i * k + p] as f64 * w[j * k + p] as f64)
                    .sum();
            }
        }
        y
    }

    /// Checks every element against the reference with a tolerance ∝ sqrt(k)·scale.
    fn check(level: SimdLevel, pool: &ThreadPool, rng: &mut Rng, m: usize, k: usize, n: usize) {
        let x = rng.vec(m * k); // x: [m, k]
        let w = rng.vec(n * k); // w: [n, k]
        let want = reference(&x, &w, m, k, n);
        let mut y = vec![f32::NAN; m * n]; // y: [m, n]
        matmul_f32_with(level, pool, &x, &w, &mut y, m, k, n);
        let scale = x.iter().chain(&w).fold(0f32, |a, v| a.max(v.abs())).powi(2) as f64;
        let tol = 2e-6 * (k as f64).sqrt().max(1.0) * scale.max(1e-30) + 1e-7;
        for (idx, (&g, &r)) in y.iter().zip(&want).enumerate() {
            assert!(
                (g as f64 - r).abs() <= tol,
                "{level:?} threads={} m={m} k={k} n={n} at ({}, {}): {g} vs {r} (tol {tol})",
                pool.n_threads(),
                idx / n,
                idx % n
            );
        }
    }

    const KS: &[usize] = &[1, 3, 7, 17, 33, 100, 257, 1000];
    const NS: &[usize] = &[1, 5, 13, 64, 67];
    const MS: &[usize] = &[1, 2, 3, 5, 9, 17, 64];

    #[test]
    fn matches_reference_on_every_level_and_thread_count() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for threads in 1..=4 {
            let pool = ThreadPool::new(threads).unwrap();
            for level in SimdLevel::available() {
                for &m in MS {
                    for &k in KS {
                        for &n in NS {
                            check(level, &pool, &mut rng, m, k, n);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn blocked_shapes_match_reference() {
        // k > KC (several k blocks, accumulation into y), n > NC (several n blocks),
        // and sizes big enough to take the threaded path.
        let mut rng = Rng(99);
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            for level in SimdLevel::available() {
                for &(m, k, n) in &[
                    (1, 2049, 203),
                    (7, 1100, 200),
                    (13, 515, 97),
                    (40, 64, 3),
                    (2, 1537, 9),
                ] {
                    check(level, &pool, &mut rng, m, k, n);
                }
            }
        }
    }

    #[test]
    fn zero_sized_shapes() {
        let pool = ThreadPool::new(2).unwrap();
        for level in SimdLevel::available() {
            let mut y = vec![5.0f32; 6];
            matmul_f32_with(level, &pool, &[], &[], &mut y, 2, 0, 3);
            assert!(y.iter().all(|&v| v == 0.0));
            matmul_f32_with(level, &pool, &[], &[1.0; 4], &mut [], 0, 4, 1);
            matmul_f32_with(level, &pool, &[1.0; 4], &[], &mut [], 1, 4, 0);
        }
    }

    #[test]
    fn dispatching_entry_point_matches_reference() {
        let mut rng = Rng(5);
        let pool = ThreadPool::new(2).unwrap();
        let (m, k, n) = (3, 300, 70);
        let x = rng.vec(m * k);
        let w = rng.vec(n * k);
        let mut y = vec![0.0; m * n];
        matmul_f32(&pool, &x, &w, &mut y, m, k, n);
        for (g, r) in y.iter().zip(reference(&x, &w, m, k, n)) {
            assert!((*g as f64 - r).abs() < 1e-4);
        }
    }

    #[test]
    fn writes_only_inside_y() {
        // Sub-slices of larger buffers: neighbours of x, w and y must be untouched/unread.
        let mut rng = Rng(11);
        let pool = ThreadPool::new(2).unwrap();
        for level in SimdLevel::available() {
            let (m, k, n) = (5, 37, 11);
            let xb = rng.vec(m * k + 2);
            let wb = rng.vec(n * k + 2);
            let mut yb = vec![7.0f32; m * n + 2];
            matmul_f32_with(
                level,
                &pool,
                &xb[1..=m * k],
                &wb[1..=n * k],
                &mut yb[1..=m * n],
                m,
                k,
                n,
            );
            assert_eq!((yb[0], yb[m * n + 1]), (7.0, 7.0));
            let want = reference(&xb[1..=m * k], &wb[1..=n * k], m, k, n);
            for (g, r) in yb[1..=m * n].iter().zip(want) {
                assert!((*g as f64 - r).abs() < 1e-4);
            }
        }
    }

    #[test]
    #[should_panic(expected = "w must be [n, k]")]
    fn rejects_bad_lengths() {
        let pool = ThreadPool::new(1).unwrap();
        matmul_f32(&pool, &[0.0; 4], &[0.0; 5], &mut [0.0; 2], 2, 2, 1);
    }

    /// Throughput check (run by hand; `FERROLM_SIMD=avx2` etc. benches a slower path):
    /// `cargo test --release --lib matmul_f32 -- --ignored --nocapture`
    ///
    /// GEMV "hot" reuses one weight (cache-resident when it fits); "cold" rotates over
    /// enough copies to exceed the caches, like decode, where every weight comes from DRAM.
    #[test]
    #[ignore]
    fn bench_matmul() {
        let level = simd::detected();
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        println!("level: {level:?}");
        let mut rng = Rng(1);
        for threads in [1, 2] {
            let pool = ThreadPool::new(threads).unwrap();
            if only.is_empty() || only == "gemv" {
                // Reference ceiling: every thread sums its share of a 256 MiB buffer.
                let buf = vec![1.0f32; 64 << 20];
                let s = best_time(5, 1, |_| {
                    pool.run(|t, nt| {
                        std::hint::black_box(simd::sum(&buf[chunk(buf.len(), t, nt)]));
                    })
                });
                println!(
                    "read bandwidth threads={threads}: {:.1} GB/s",
                    (buf.len() * 4) as f64 / s / 1e9
                );
            }
            let gemv: &[(usize, usize)] = &[
                (576, 576),
                (1536, 576),
                (576, 1536),
                (49152, 576),
                (2048, 2048),
                (5632, 2048),
            ];
            for &(n, k) in gemv.iter().filter(|_| only.is_empty() || only == "gemv") {
                let bytes = n * k * 4;
                let copies = ((384 << 20) / bytes + 1).min(64);
                let ws: Vec<Vec<f32>> = (0..copies).map(|_| rng.vec(n * k)).collect();
                let x = rng.vec(k);
                let mut y = vec![0.0; n];
                let iters = ((1usize << 30) / bytes).clamp(4, 4000);
                let hot = best_time(5, iters, |_| matmul_f32(&pool, &x, &ws[0], &mut y, 1, k, n));
                let iters = iters.max(copies);
                let cold = best_time(5, iters, |it| {
                    matmul_f32(&pool, &x, &ws[it % copies], &mut y, 1, k, n)
                });
                let gbs = |s: f64| bytes as f64 / s / 1e9;
                println!(
                    "GEMV threads={threads} n={n:>5} k={k:<5} hot {:6.1} GB/s  cold {:6.1} GB/s \
                     ({:.1} µs cold)",
                    gbs(hot),
                    gbs(cold),
                    cold * 1e6
                );
            }
            let gemm: &[(usize, usize, usize)] = &[(128, 576, 1536), (128, 2048, 2048)];
            let small: &[(usize, usize, usize)] = &[
                (2, 2048, 2048),
                (3, 2048, 2048),
                (4, 2048, 2048),
                (8, 2048, 2048),
                (16, 2048, 2048),
            ];
            let shapes = match only.as_str() {
                "" | "gemm" => gemm,
                "small" => small,
                _ => &[],
            };
            for &(m, k, n) in shapes {
                let x = rng.vec(m * k);
                let w = rng.vec(n * k);
                let mut y = vec![0.0; m * n];
                let flops = 2.0 * (m * n * k) as f64;
                let iters = ((4e9 / flops) as usize).clamp(3, 2000);
                let s = best_time(5, iters, |_| matmul_f32(&pool, &x, &w, &mut y, m, k, n));
                println!(
                    "GEMM threads={threads} m={m} {k}->{n}: {:6.1} GFLOP/s ({:.2} ms)",
                    flops / s / 1e9,
                    s * 1e3
                );
            }
        }
    }
}
