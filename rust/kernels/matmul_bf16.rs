//! BF16-weight matmul: y[m, n] = x[m, k] · w[n, k]ᵀ with w as bf16 bits (nn.Linear
//! layout), x and y in f32, accumulation in f32.
//!
//! The bf16 face of the one matmul (`matmul.rs`): bf16 weights are the [`Bf16W`] source,
//! widened to f32 exactly (a 16-bit shift) as they are loaded, so the result is the f32 matmul
//! of the widened weights up to summation order.
//! - few rows (decode GEMV; memory-bound): each row of w streams once, 32 weights per load on
//!   AVX-512 (16 on AVX2; see `WSource::GEMV_512`), widened in-lane into their even and odd
//!   values (`F32Vec::load_bf16_pairs`) against x laid out to match (`pair_x`, once per call);
//!   x stays in f32. Half the bytes of f32 weights, so about twice the tokens/s at the same
//!   bandwidth;
//! - many rows (prefill GEMM; compute-bound): on CPUs with AVX512-BF16, x is rounded to bf16
//!   (to nearest even) as it is packed and `vdpbf16ps` multiplies 32 bf16 pairs per
//!   instruction (`matmul_bf16_dot.rs`), twice the multiply-adds of an f32 FMA (or AMX tiles
//!   do, `matmul_amx.rs`); elsewhere, on Intel CPUs without AMX (no faster there; see
//!   `simd::bf16_dot_pays_on`), or with `FERROLM_BF16_PREFILL=f32`, blocks of w are widened
//!   into the packed f32 buffer (once per block of up to 192 rows of x) and the f32 GEMM's
//!   register tiles run over them, x unrounded. [`rounds_x`] says which a call takes.
//!
//! Measured (2-core AMD EPYC VM, family 1Ah, `BENCH_ONLY=gemm cargo test --release --lib
//! bench_matmul_bf16 -- --ignored --nocapture`, best of 5, two interleaved runs each; the
//! shared VM is noisy): GEMM m = 128, 1 thread, f32 x → bf16 x: 576→1536 146-186 → 293-331
//! GFLOP/s, 2048→2048 160-167 → 312, 2048→5632 157-172 → 275-291, 5632→2048 157-162 → 282-283;
//! 2 threads 288-308 → 532-646. What rounding x costs in quality (default model, the quality
//! set, against FP32): pooled mean KL 1.48e-4 → 2.98e-4, top-1 agreement 0.9944 → 0.9914,
//! perplexity +0.036% → +0.026% (docs/quality.md). GEMV with 2 threads 31-48 GB/s of bf16
//! weights for k ≤ 2048, i.e. the read bandwidth of the same runs (31-52 GB/s); 21-26 GB/s at
//! k = 5632, where x (22 KiB of f32) no longer stays in L1 while w streams past.

use crate::kernels::matmul::{self, matmul_source};
#[cfg(target_arch = "x86_64")]
use crate::kernels::matmul_bf16_dot as dot;
use crate::kernels::matmul_sources::Bf16W;
use crate::kernels::simd::{self, SimdLevel};
use crate::kernels::RowPath;
use crate::threadpool::ThreadPool;

/// y: [m, n] = x: [m, k] · w: [n, k]ᵀ, w as bf16 bits.
pub fn matmul_bf16(
    pool: &ThreadPool,
    x: &[f32],
    w: &[u16],
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    matmul_bf16_with(simd::detected(), pool, x, w, y, m, k, n)
}

/// The path [`matmul_bf16`] takes for `m` rows of x: the GEMM from `pack_rows` rows on.
pub fn bf16_path_for(m: usize) -> RowPath {
    matmul::path_for(m)
}

/// The environment variable that chooses what the prefill GEMM multiplies: `bf16` (x rounded,
/// INT8/INT4 weights dequantized to bf16; `vdpbf16ps` or AMX, `matmul_bf16_dot`), `f32` (x
/// exact: f32 for BF16 weights, 16-bit for INT8 and INT4), or `auto` (the default): bf16 where
/// it is the faster GEMM ([`rounding_pays`]), else exact.
pub const PREFILL_X_ENV: &str = "FERROLM_BF16_PREFILL";

/// What [`PREFILL_X_ENV`]'s value asks: `bf16` rounding (Some(true)), `f32` exact x
/// (Some(false)), `None`, empty or `auto` the CPU's choice (None); anything else is an error
/// that names the variable.
pub fn prefill_rounds_x(value: Option<&str>) -> Result<Option<bool>, String> {
    match value.map(str::trim) {
        None | Some("") | Some("auto") => Ok(None),
        Some("bf16") => Ok(Some(true)),
        Some("f32") => Ok(Some(false)),
        Some(v) => Err(format!("{PREFILL_X_ENV}={v:?}: expected \"auto\", \"bf16\" or \"f32\"")),
    }
}

/// [`prefill_rounds_x`] of this process's environment, `auto` decided by [`rounding_pays`], read
/// once (an invalid value counts as the default; the Python layer reports it).
fn env_rounds_x() -> bool {
    static ROUNDS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ROUNDS.get_or_init(|| prefill_rounds_x(std::env::var(PREFILL_X_ENV).ok().as_deref()).ok().flatten().unwrap_or_else(rounding_pays))
}

/// Whether rounding x to bf16 makes the prefill GEMM faster on this CPU: where AMX runs it
/// (`matmul_amx`), and on CPUs whose `vdpbf16ps` outruns the exact GEMMs
/// ([`simd::bf16_dot_pays`]: not Intel's).
fn rounding_pays() -> bool {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::matmul_amx::enabled() {
        return true;
    }
    simd::bf16_dot_pays()
}

/// Whether `level` can run the `vdpbf16ps` GEMM (`matmul_bf16_dot`): AVX-512 on a CPU with
/// AVX512-BF16, whatever [`PREFILL_X_ENV`] says.
pub(crate) fn dot_gemm_runs(level: SimdLevel) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        level == SimdLevel::Avx512 && dot::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = level;
        false
    }
}

/// Whether a call on `level` with `m` rows of x on `path` (None: by m) runs the `vdpbf16ps`
/// GEMM, which rounds x to bf16: the GEMM path where [`dot_gemm_runs`], unless
/// [`PREFILL_X_ENV`] says `f32`.
pub fn rounds_x(level: SimdLevel, m: usize, path: Option<RowPath>) -> bool {
    dot_gemm_runs(level) && path.unwrap_or(bf16_path_for(m)) == RowPath::Gemm && env_rounds_x()
}

/// The kernel of the BF16, INT8 and INT4 prefill GEMM on `level`: "amx-bf16" (AMX tiles,
/// `matmul_amx`) or "avx512-bf16" (`vdpbf16ps`, `matmul_bf16_dot`), which both round x to
/// bf16, or "f32" (x exact: f32 for BF16 weights, 16-bit for INT8 and INT4).
pub fn prefill_gemm(level: SimdLevel) -> &'static str {
    if !rounds_x(level, usize::MAX, Some(RowPath::Gemm)) {
        return "f32";
    }
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::matmul_amx::enabled() {
        return "amx-bf16";
    }
    "avx512-bf16"
}

/// [`matmul_bf16`] on a given path, whatever m (see [`RowPath`]).
#[allow(clippy::too_many_arguments)]
pub fn matmul_bf16_path(
    pool: &ThreadPool,
    x: &[f32],
    w: &[u16],
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    path: RowPath,
) {
    bf16_level_path(simd::detected(), pool, x, w, y, m, k, n, Some(path))
}

/// [`matmul_bf16`] on a forced SIMD path. Panics if `level` is not available on this CPU
/// or a slice length doesn't match its shape.
#[allow(clippy::too_many_arguments)]
pub fn matmul_bf16_with(
    level: SimdLevel,
    pool: &ThreadPool,
    x: &[f32],
    w: &[u16],
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
) {
    bf16_level_path(level, pool, x, w, y, m, k, n, None)
}

/// The driver: `path` None picks by m.
#[allow(clippy::too_many_arguments)]
fn bf16_level_path(
    level: SimdLevel,
    pool: &ThreadPool,
    x: &[f32],
    w: &[u16],
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    path: Option<RowPath>,
) {
    assert_eq!(Some(w.len()), n.checked_mul(k), "w must be [n, k]");
    #[cfg(target_arch = "x86_64")]
    if rounds_x(level, m, path) {
        if !matmul::operands_to_compute(level, x, y, m, k, n) {
            return;
        }
        // SAFETY: x, w and y have the asserted lengths (k ≥ 1: not an empty product);
        // rounds_x checked the CPU's features.
        unsafe { dot::matmul(pool, x, dot::Weights::Bf16(w.as_ptr()), y, m, k, n) };
        return;
    }
    let src = Bf16W { w: w.as_ptr(), k };
    // SAFETY: w holds [n, k] values (asserted) and is borrowed for the call.
    unsafe { matmul_source(level, pool, x, src, y, m, k, n, path) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::matmul_f32::matmul_f32;
    use crate::kernels::quant::{bf16_to_f32, f32_to_bf16, f32_to_bf16_vec};
    use crate::kernels::test_rng::{best_time, Rng};
    use crate::threadpool::chunk;

    /// Random bf16 weights in [-1, 1).
    fn bf16s(rng: &mut Rng, n: usize) -> Vec<u16> {
        f32_to_bf16_vec(&rng.vec(n))
    }

    /// y: [m, n] = x: [m, k] · w: [n, k]ᵀ (bf16 widened), accumulated in f64.
    fn reference(x: &[f32], w: &[u16], m: usize, k: usize, n: usize) -> Vec<f64> {
        let mut y = vec![0.0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|p| x[i * k + p] as f64 * bf16_to_f32(w[j * k + p]) as f64)
                    .sum();
            }
        }
        y
    }

    /// x as the call on `level` with m rows multiplies it: rounded to bf16 where [`rounds_x`].
    fn x_as_used(level: SimdLevel, m: usize, x: &[f32]) -> Vec<f32> {
        if rounds_x(level, m, None) {
            x.iter().map(|&v| bf16_to_f32(f32_to_bf16(v))).collect()
        } else {
            x.to_vec()
        }
    }

    fn check(level: SimdLevel, pool: &ThreadPool, rng: &mut Rng, m: usize, k: usize, n: usize) {
        let x = rng.vec(m * k);
        let w = bf16s(rng, n * k);
        let want = reference(&x_as_used(level, m, &x), &w, m, k, n);
        let mut y = vec![f32::NAN; m * n];
        matmul_bf16_with(level, pool, &x, &w, &mut y, m, k, n);
        // |x|, |w| < 1: f32 accumulation error ≲ k·2⁻²⁴ worst case, ~sqrt(k)·2⁻²⁴ typical.
        let tol = 2e-6 * (k as f64).sqrt().max(1.0) + 1e-7;
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

    const KS: &[usize] = &[1, 7, 31, 33, 65, 100, 257, 1000];
    const NS: &[usize] = &[1, 3, 17, 64];
    const MS: &[usize] = &[1, 2, 3, 5, 17, 64];

    #[test]
    fn matches_reference_on_every_level_and_thread_count() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for threads in 1..=3 {
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
        // k > KC (several k blocks), n > NC, m > MC, and the threaded paths.
        let mut rng = Rng(99);
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            for level in SimdLevel::available() {
                for &(m, k, n) in &[
                    (1, 2049, 203),
                    (2, 1537, 90),
                    (7, 1100, 200),
                    (13, 515, 97),
                    (40, 64, 3),
                    (200, 40, 70),
                    (9, 2100, 203),
                ] {
                    check(level, &pool, &mut rng, m, k, n);
                }
            }
        }
    }

    #[test]
    fn matches_f32_matmul_of_widened_weights() {
        let mut rng = Rng(3);
        let pool = ThreadPool::new(2).unwrap();
        for &(m, k, n) in &[(1, 300, 70), (2, 64, 64), (9, 129, 33)] {
            let x = rng.vec(m * k);
            let w = bf16s(&mut rng, n * k);
            let wf: Vec<f32> = w.iter().map(|&b| bf16_to_f32(b)).collect();
            let (mut y, mut yf) = (vec![0.0; m * n], vec![0.0; m * n]);
            matmul_bf16(&pool, &x, &w, &mut y, m, k, n);
            matmul_f32(&pool, &x_as_used(simd::detected(), m, &x), &wf, &mut yf, m, k, n);
            for (a, b) in y.iter().zip(&yf) {
                assert!((a - b).abs() < 1e-4, "{a} vs {b}");
            }
        }
    }

    #[test]
    fn non_finite_inputs_propagate() {
        let pool = ThreadPool::new(1).unwrap();
        for level in SimdLevel::available() {
            let k = 37;
            let mut w = vec![f32_to_bf16(1.0); 2 * k];
            w[5] = f32_to_bf16(f32::INFINITY);
            w[k + 36] = f32_to_bf16(f32::NAN);
            let x = vec![1.0f32; k];
            let mut y = vec![0.0; 2];
            matmul_bf16_with(level, &pool, &x, &w, &mut y, 1, k, 2);
            assert_eq!(y[0], f32::INFINITY, "{level:?}");
            assert!(y[1].is_nan(), "{level:?}");
        }
    }

    #[test]
    fn non_finite_inputs_propagate_through_the_gemm() {
        let pool = ThreadPool::new(1).unwrap();
        for level in SimdLevel::available() {
            let (m, k) = (5, 70);
            let mut w = vec![f32_to_bf16(0.5); 3 * k];
            w[5] = f32_to_bf16(f32::INFINITY);
            w[k + 66] = f32_to_bf16(f32::NAN);
            let mut x = vec![1.0f32; m * k];
            x[4 * k + 3] = f32::NAN;
            let mut y = vec![0.0; m * 3];
            matmul_bf16_with(level, &pool, &x, &w, &mut y, m, k, 3);
            for i in 0..m {
                let row = &y[i * 3..(i + 1) * 3];
                if i == 4 {
                    assert!(row.iter().all(|v| v.is_nan()), "{level:?} row {i}: {row:?}");
                } else {
                    assert_eq!(row[0], f32::INFINITY, "{level:?} row {i}");
                    assert!(row[1].is_nan(), "{level:?} row {i}");
                    assert_eq!(row[2], 0.5 * k as f32, "{level:?} row {i}");
                }
            }
        }
    }

    #[test]
    fn the_gemm_rounds_x_where_the_cpu_has_bf16_dot_products() {
        let mut rng = Rng(21);
        let pool = ThreadPool::new(2).unwrap();
        let (m, k, n) = (6, 300, 40);
        let x = rng.vec(m * k);
        let w = bf16s(&mut rng, n * k);
        let mut y = vec![0.0; m * n];
        matmul_bf16(&pool, &x, &w, &mut y, m, k, n);
        let exact = reference(&x, &w, m, k, n);
        let rounded: Vec<f32> = x.iter().map(|&v| bf16_to_f32(f32_to_bf16(v))).collect();
        let want = reference(&rounded, &w, m, k, n);
        let tol = 2e-6 * (k as f64).sqrt();
        let near = |r: &[f64]| y.iter().zip(r).all(|(&g, &r)| (g as f64 - r).abs() <= tol);
        if rounds_x(simd::detected(), m, None) {
            assert!(near(&want), "the vdpbf16ps GEMM must equal the product of bf16-rounded x");
            assert!(!near(&exact), "rounding x changes these sums beyond the f32 tolerance");
        } else {
            assert!(near(&exact), "without AVX512-BF16 the GEMM keeps x in f32");
        }
        // the GEMV never rounds x
        let mut y1 = vec![0.0; n];
        matmul_bf16(&pool, &x[..k], &w, &mut y1, 1, k, n);
        assert!(y1.iter().zip(&exact).all(|(&g, &r)| (g as f64 - r).abs() <= tol));
    }

    #[test]
    fn prefill_setting_parses() {
        assert_eq!(prefill_rounds_x(None), Ok(None));
        assert_eq!(prefill_rounds_x(Some("")), Ok(None));
        assert_eq!(prefill_rounds_x(Some(" auto")), Ok(None));
        assert_eq!(prefill_rounds_x(Some("bf16")), Ok(Some(true)));
        assert_eq!(prefill_rounds_x(Some(" f32 ")), Ok(Some(false)));
        let e = prefill_rounds_x(Some("fp16")).unwrap_err();
        assert!(e.contains(PREFILL_X_ENV) && e.contains("fp16"), "{e}");
    }

    #[test]
    fn zero_sized_shapes() {
        let pool = ThreadPool::new(2).unwrap();
        for level in SimdLevel::available() {
            let mut y = vec![5.0f32; 6];
            matmul_bf16_with(level, &pool, &[], &[], &mut y, 2, 0, 3);
            assert!(y.iter().all(|&v| v == 0.0));
            matmul_bf16_with(level, &pool, &[], &[0; 4], &mut [], 0, 4, 1);
            matmul_bf16_with(level, &pool, &[1.0; 4], &[], &mut [], 1, 4, 0);
        }
    }

    #[test]
    fn writes_only_inside_y() {
        let mut rng = Rng(11);
        let pool = ThreadPool::new(2).unwrap();
        for level in SimdLevel::available() {
            for &(m, k, n) in &[(1, 37, 11), (5, 37, 11)] {
                let xb = rng.vec(m * k + 2);
                let wb = bf16s(&mut rng, n * k + 2);
                let mut yb = vec![7.0f32; m * n + 2];
                matmul_bf16_with(
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
                let want = reference(&x_as_used(level, m, &xb[1..=m * k]), &wb[1..=n * k], m, k, n);
                for (g, r) in yb[1..=m * n].iter().zip(want) {
                    assert!((*g as f64 - r).abs() < 1e-4);
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "w must be [n, k]")]
    fn rejects_bad_lengths() {
        let pool = ThreadPool::new(1).unwrap();
        matmul_bf16(&pool, &[0.0; 4], &[0; 5], &mut [0.0; 2], 2, 2, 1);
    }

    #[test]
    fn unavailable_level_panics() {
        for level in [SimdLevel::Avx2, SimdLevel::Avx512, SimdLevel::Neon] {
            if !level.is_available() {
                let r = std::panic::catch_unwind(|| {
                    let pool = ThreadPool::new(1).unwrap();
                    matmul_bf16_with(level, &pool, &[1.0], &[0], &mut [0.0], 1, 1, 1)
                });
                assert!(r.is_err(), "{level:?} should be refused");
            }
        }
    }


    /// Throughput check (run by hand):
    /// `cargo test --release --lib matmul_bf16 -- --ignored --nocapture`
    ///
    /// Benches the AVX2 path (forced) and the detected best path. GEMV "cold" rotates over
    /// enough weight copies to exceed the caches, like decode; GB/s counts weight bytes.
    #[test]
    #[ignore]
    fn bench_matmul_bf16() {
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        let mut levels = vec![simd::detected()];
        if SimdLevel::Avx2.is_available() && simd::detected() != SimdLevel::Avx2 {
            levels.insert(0, SimdLevel::Avx2);
        }
        let mut rng = Rng(1);
        for threads in [1, 2] {
            let pool = ThreadPool::new(threads).unwrap();
            if only.is_empty() || only == "gemv" {
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
                (576, 1536),
                (1536, 576),
                (49152, 576),
                (2048, 2048),
                (5632, 2048),
                (2048, 5632),
            ];
            for &(n, k) in gemv.iter().filter(|_| only.is_empty() || only == "gemv") {
                let bytes = n * k * 2;
                let copies = ((384 << 20) / bytes + 1).min(64);
                let ws: Vec<Vec<u16>> = (0..copies).map(|_| bf16s(&mut rng, n * k)).collect();
                let x = rng.vec(k);
                let mut y = vec![0.0; n];
                for &level in &levels {
                    let iters = ((1usize << 30) / bytes).clamp(4, 4000).max(copies);
                    let cold = best_time(5, iters, |it| {
                        matmul_bf16_with(level, &pool, &x, &ws[it % copies], &mut y, 1, k, n)
                    });
                    println!(
                        "GEMV {:<6} threads={threads} n={n:>5} k={k:<5} cold {:6.1} GB/s ({:7.1} µs)",
                        level.name(),
                        bytes as f64 / cold / 1e9,
                        cold * 1e6
                    );
                }
            }
            let gemm: &[(usize, usize, usize)] = &[(128, 576, 1536), (128, 2048, 2048), (128, 2048, 5632), (128, 5632, 2048)];
            for &(m, k, n) in gemm.iter().filter(|_| only.is_empty() || only == "gemm") {
                let x = rng.vec(m * k);
                let w = bf16s(&mut rng, n * k);
                let mut y = vec![0.0; m * n];
                let flops = 2.0 * (m * n * k) as f64;
                for &level in &levels {
                    let iters = ((4e9 / flops) as usize).clamp(3, 2000);
                    let s = best_time(5, iters, |_| {
                        matmul_bf16_with(level, &pool, &x, &w, &mut y, m, k, n)
                    });
                    println!(
                        "GEMM {:<6} threads={threads} m={m} {k}->{n}: {:6.1} GFLOP/s ({:.2} ms)",
                        level.name(),
                        flops / s / 1e9,
                        s * 1e3
                    );
                }
            }
        }
    }
}
