//! INT4-weight matmul: y[m, n] = x[m, k] · wᵀ with w a [`QuantizedI4`] `[n, k]`
//! (`q · d + m` per group of 32, q in [0, 15]), x and y in f32.
//!
//! # Scheme: W4A16 on the kernels of `matmul_int8`
//!
//! x is quantized per row and group of 32 to 16 bits (`sx = max|x| / 32639`, round half to
//! even; 32639 = 127·256 + 127 so that a value splits into two signed bytes), and the weights
//! enter the integer sums *centered*, as `q − 8`:
//! `y[i, j] = Σ_g (sx[i, g] · d[j, g]) · Σ_{p ∈ g} x16[i, p] · (q[j, p] − 8) + (m + 8·d)[j, g] · Σ_{p ∈ g} x[i, p]`:
//! exact i32 sums of the 4-bit values with the 16-bit x, scaled in f32, plus the group's
//! offset times its f32 sum of x (so the offset adds no x-quantization error at all).
//!
//! Why 16-bit x (measurements in docs/architecture.md, "INT4"): with INT8's 8-bit x the default
//! model lost +0.52 % perplexity against FP32 of the same Q4_1 file and answered "What is the
//! capital of France?" with "L'Étoile, …" (FP32: "…Paris."); with 16 bits it loses +0.001 % and
//! gives FP32's replies. Keeping x in f32 (weight-only) would be exact but widens every weight to
//! f32: INT8's weight-only GEMV runs at half the speed of its W8A8 one. Centering mattered for
//! the 8-bit x (uncentered q·d doubled the error the x quantization adds: +2.6 %).
//!
//! Kernels: on AVX-512 VNNI the decode GEMV (`matmul_int4_gemv.rs`) masks the nibbles out of
//! 16-bit words straight into `vpdpwssd` lanes, one group per 128-bit lane, and scales the lanes
//! per group; on AVX2 (`matmul_int8_kernels.rs`) it widens a group's 16 bytes of nibbles to two
//! vectors of 16 i16, multiplies them with x16 (`madd_epi16`), computing Σ q·x16 and subtracting
//! 8·Σx16 per group in integers, and reduces 8 groups' lanes at once, scaled with 8 f16 scales
//! (F16C). NEON and the portable kernel unpack q − 8. Prefill (m ≥ 8) unpacks panels of 96 rows
//! to int8 q − 8 and runs INT8's packed GEMMs (VNNI: over the high, then the low bytes of
//! x16 per group; AVX2: the i16-pair GEMM on x16), then adds the offsets' term as one small f32 matmul
//! (`[m, k/32] · [n, k/32]ᵀ`). On CPUs with AVX512-BF16 prefill runs BF16's `vdpbf16ps` GEMM
//! instead (`matmul_bf16_dot.rs`, or AMX tiles; unless `FERROLM_BF16_PREFILL=f32`, or the CPU
//! is Intel's without AMX, see `matmul_bf16::rounds_x`): each group dequantized to
//! bf16(q·d + m) as it is packed, x rounded to bf16. A 128-token prefill of the default model
//! ran 1.8× faster at 1 thread (457-502 → 838-898 tok/s) and 2.2× at 2; against FP32 of the same
//! file (the quality set) pooled mean KL 3.3e-4 instead of 9e-7, perplexity +0.02 %, top-1 0.990
//! (docs/quality.md). The decode GEMV keeps the exact W4A16 sums.

#[cfg(target_arch = "x86_64")]
use crate::kernels::matmul_bf16_dot as dot;
use crate::kernels::matmul_int8::{int8_path_for, int8_rounds_x, w8a8, QWeights};
use crate::kernels::RowPath;
use crate::kernels::quant::{QuantizedI4, I4_GROUP, I4_GROUP_BYTES};
use crate::kernels::simd::{self, SimdLevel};
use crate::threadpool::ThreadPool;

/// y: [m, n] = x: [m, k] · wᵀ, k = `w.cols`, n = `w.rows`.
pub fn matmul_int4(pool: &ThreadPool, x: &[f32], w: &QuantizedI4, y: &mut [f32], m: usize) {
    matmul_int4_with(simd::detected(), pool, x, w, y, m)
}

/// [`matmul_int4`] on a forced SIMD path. Panics if `level` is not available on this CPU, a
/// slice length doesn't match its shape, or `w` is inconsistent.
pub fn matmul_int4_with(level: SimdLevel, pool: &ThreadPool, x: &[f32], w: &QuantizedI4, y: &mut [f32], m: usize) {
    int4_on(level, pool, x, w, y, m, int8_path_for(m))
}

/// [`matmul_int4`] on a given path, whatever m (see [`RowPath`]): the path INT8 takes for m
/// rows is [`int8_path_for`], and INT4 runs INT8's kernels.
pub fn matmul_int4_path(pool: &ThreadPool, x: &[f32], w: &QuantizedI4, y: &mut [f32], m: usize, path: RowPath) {
    int4_on(simd::detected(), pool, x, w, y, m, path)
}

fn int4_on(level: SimdLevel, pool: &ThreadPool, x: &[f32], w: &QuantizedI4, y: &mut [f32], m: usize, path: RowPath) {
    let (k, n) = (w.cols, w.rows);
    // These asserts are the only guard for the unsafe kernels (w's fields are pub).
    let groups = n.checked_mul(w.groups_per_row());
    assert_eq!(groups.and_then(|g| g.checked_mul(I4_GROUP_BYTES)), Some(w.q.len()), "w.q must be [rows, ceil(cols/32)·16]");
    assert!(groups == Some(w.scales.len()) && groups == Some(w.mins.len()), "w.scales and w.mins must be [rows, ceil(cols/32)]");
    assert_eq!(Some(x.len()), m.checked_mul(k), "x must be [m, k]");
    assert_eq!(Some(y.len()), m.checked_mul(n), "y must be [m, n]");
    simd::check_level(level);
    if crate::kernels::empty_product(y, m, n, k) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if int8_rounds_x(level, m, Some(path), I4_GROUP) {
        let src = dot::Weights::Int4 { q: w.q.as_ptr(), scales: w.scales.as_ptr(), mins: w.mins.as_ptr(), row_bytes: w.row_bytes() };
        // SAFETY: w's lengths asserted above (whole groups per row), borrowed for the call;
        // k ≥ 1 (not an empty product); int8_rounds_x checked the CPU's features.
        return unsafe { dot::matmul(pool, x, src, y, m, k, n) };
    }
    w8a8(level, pool, x, QWeights::I4(w), y, m, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::{f16_to_f32, GgufBlock, GgufWeight, I4_GROUP};
    use crate::kernels::test_rng::{best_time, Rng};

    /// The W4A16 reference in f64: x quantized as specified (16 bits per group of 32, round
    /// half to even), exact integer sums of the centered weights q − 8 with it, scaled by
    /// (d·sx in f32), plus (m + 8·d)·Σx. Also returns a bound on the f32 rounding of any
    /// summation order: Σ|terms|.
    fn reference(x: &[f32], w: &QuantizedI4, m: usize) -> (Vec<f64>, Vec<f64>) {
        let (k, n, ng) = (w.cols, w.rows, w.groups_per_row());
        let mut y = vec![0f64; m * n];
        let mut mag = vec![0f64; m * n];
        let mut q = vec![0i8; k];
        for i in 0..m {
            let xr = &x[i * k..(i + 1) * k];
            for j in 0..n {
                w.unpack_row(j, &mut q);
                for (g, (xg, qg)) in xr.chunks(I4_GROUP).zip(q.chunks(I4_GROUP)).enumerate() {
                    let amax = xg.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let (xq, sx): (Vec<i64>, f32) = if amax < 1e-30 {
                        (vec![0; xg.len()], 0.0)
                    } else {
                        let inv = 32639.0 / amax;
                        (xg.iter().map(|&v| (v * inv).round_ties_even().clamp(-32639.0, 32639.0) as i64).collect(), amax / 32639.0)
                    };
                    // centered: Σ (q − 8)·xq, and the offset m + 8·d (in f32, as the kernels)
                    let isum: i64 = xq.iter().zip(qg).map(|(&a, &b)| a * (b as i64 - 8)).sum();
                    let iabs: i64 = xq.iter().zip(qg).map(|(&a, &b)| (a * (b as i64 - 8)).abs()).sum();
                    let d = (f16_to_f32(w.scales[j * ng + g]) * sx) as f64;
                    let mn = (f16_to_f32(w.mins[j * ng + g]) + 8.0 * f16_to_f32(w.scales[j * ng + g])) as f64;
                    let xs: f64 = xg.iter().map(|&v| v as f64).sum();
                    let xa: f64 = xg.iter().map(|&v| v.abs() as f64).sum();
                    y[i * n + j] += isum as f64 * d + mn * xs;
                    mag[i * n + j] += iabs as f64 * d.abs() + mn.abs() * xa;
                }
            }
        }
        (y, mag)
    }

    /// The bf16 GEMM's reference in f64 (AVX512-BF16 CPUs, m ≥ 8): Σ bf16(x)·bf16(q·d + m), the
    /// weight an f32 fma rounded once more to bf16; and Σ|terms|.
    fn reference_bf16(x: &[f32], w: &QuantizedI4, m: usize) -> (Vec<f64>, Vec<f64>) {
        use crate::kernels::quant::{bf16_to_f32, f32_to_bf16};
        let (k, n, ng) = (w.cols, w.rows, w.groups_per_row());
        let round = |v: f32| bf16_to_f32(f32_to_bf16(v)) as f64;
        let mut q = vec![0i8; k];
        let mut wb = vec![0f64; n * k];
        for j in 0..n {
            w.unpack_row(j, &mut q);
            for (p, &qv) in q.iter().enumerate() {
                let (d, mn) = (f16_to_f32(w.scales[j * ng + p / I4_GROUP]), f16_to_f32(w.mins[j * ng + p / I4_GROUP]));
                wb[j * k + p] = round((qv as f32).mul_add(d, mn));
            }
        }
        let xb: Vec<f64> = x.iter().map(|&v| round(v)).collect();
        let (mut y, mut mag) = (vec![0f64; m * n], vec![0f64; m * n]);
        for i in 0..m {
            for j in 0..n {
                for p in 0..k {
                    let t = xb[i * k + p] * wb[j * k + p];
                    y[i * n + j] += t;
                    mag[i * n + j] += t.abs();
                }
            }
        }
        (y, mag)
    }

    /// What `matmul_int4_with(level, …)` computes for m rows: the bf16 GEMM's product where it
    /// runs, else the W4A16 one.
    fn expected(level: SimdLevel, x: &[f32], w: &QuantizedI4, m: usize) -> (Vec<f64>, Vec<f64>) {
        if int8_rounds_x(level, m, None, I4_GROUP) {
            reference_bf16(x, w, m)
        } else {
            reference(x, w, m)
        }
    }

    fn check(level: SimdLevel, pool: &ThreadPool, rng: &mut Rng, m: usize, k: usize, n: usize) {
        check_on(level, None, pool, rng, m, k, n)
    }

    /// `check` through `matmul_int4_with`, or with `path` given through the 16-bit-x kernels of
    /// `w8a8` on that path whatever the CPU's prefill GEMM (the exact GEMM that AVX512-BF16
    /// CPUs run only with `FERROLM_BF16_PREFILL=f32` or, Intel's, without AMX).
    fn check_on(level: SimdLevel, path: Option<RowPath>, pool: &ThreadPool, rng: &mut Rng, m: usize, k: usize, n: usize) {
        let x = rng.vec(m * k);
        // weights with an offset, so the minimums matter
        let wf: Vec<f32> = rng.vec(n * k).iter().map(|v| v * 0.5 + 0.2).collect();
        let w = QuantizedI4::quantize(&wf, n, k);
        let mut y = vec![f32::NAN; m * n];
        let (want, mag) = match path {
            None => {
                matmul_int4_with(level, pool, &x, &w, &mut y, m);
                expected(level, &x, &w, m)
            }
            Some(path) => {
                w8a8(level, pool, &x, QWeights::I4(&w), &mut y, m, path);
                reference(&x, &w, m)
            }
        };
        for (idx, ((&g, &r), &a)) in y.iter().zip(&want).zip(&mag).enumerate() {
            let tol = 4e-7 * a * (k as f64).sqrt().max(1.0) + 1e-30;
            assert!(
                (g as f64 - r).abs() <= tol,
                "{level:?} threads={} m={m} k={k} n={n} at {idx}: {g} vs {r} (tol {tol})",
                pool.n_threads()
            );
        }
    }

    #[test]
    fn matches_reference_on_every_level_and_thread_count() {
        let mut rng = Rng(0x4444_1234_abcd_0001);
        for threads in 1..=3 {
            let pool = ThreadPool::new(threads).unwrap();
            for level in SimdLevel::available() {
                for &m in &[1, 2, 3, 5, 8, 9, 17, 64] {
                    // groups per row 1-4, 7 (a unit's both halves partial), 9, 32
                    for &k in &[1, 7, 31, 32, 33, 65, 100, 200, 257, 1000] {
                        for &n in &[1, 3, 17, 64, 97] {
                            check(level, &pool, &mut rng, m, k, n);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn blocked_shapes_match_reference() {
        // k beyond the GEMM k blocks, n beyond several unpacked panels (and the offsets' column
        // blocks), odd m.
        let mut rng = Rng(4321);
        for threads in [1, 2] {
            let pool = ThreadPool::new(threads).unwrap();
            for level in SimdLevel::available() {
                for &(m, k, n) in &[(1, 2049, 203), (3, 1537, 90), (13, 2080, 211), (33, 576, 193), (128, 96, 300), (9, 64, 2100), (2, 2500, 37)] {
                    check(level, &pool, &mut rng, m, k, n);
                }
            }
        }
    }

    #[test]
    fn the_exact_gemm_matches_reference() {
        let mut rng = Rng(4322);
        for threads in [1, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            for level in SimdLevel::available() {
                for &(m, k, n) in &[(8, 64, 48), (13, 2080, 211), (33, 576, 193), (128, 96, 300), (9, 1000, 97)] {
                    check_on(level, Some(RowPath::Gemm), &pool, &mut rng, m, k, n);
                }
            }
        }
    }

    #[test]
    fn close_to_the_f32_matmul_of_the_dequantized_weights() {
        let mut rng = Rng(5);
        let pool = ThreadPool::new(2).unwrap();
        let (m, k, n) = (9, 576, 40);
        let x = rng.vec(m * k);
        let w = QuantizedI4::quantize(&rng.vec(n * k), n, k);
        let deq = w.dequantize();
        let mut yf = vec![0f32; m * n];
        crate::kernels::matmul_f32::matmul_f32(&pool, &x, &deq, &mut yf, m, k, n);
        for level in SimdLevel::available() {
            for rows in [1, m] {
                let mut y = vec![0f32; rows * n];
                matmul_int4_with(level, &pool, &x[..rows * k], &w, &mut y, rows);
                let num: f64 = y.iter().zip(&yf).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
                let den: f64 = yf[..rows * n].iter().map(|b| (*b as f64).powi(2)).sum();
                // only the 16-bit x quantization differs (8-bit x, as INT8 has it, gives ≈ 5e-3);
                // the bf16 GEMM rounds x and the weights to bf16 (≈ 1e-3)
                let bound = if int8_rounds_x(level, rows, None, I4_GROUP) { 4e-3 } else { 1e-4 };
                assert!((num / den).sqrt() < bound, "{level:?} m={rows}: {}", (num / den).sqrt());
            }
        }
    }

    #[test]
    fn gguf_blocks_multiply_like_their_dequantized_values() {
        // Q4_0 (min −8·d) and Q4_1 blocks straight from their bytes, through every path
        let mut rng = Rng(8);
        let pool = ThreadPool::new(2).unwrap();
        let (m, k, n) = (9, 64, 5);
        let x = rng.vec(m * k);
        for kind in [GgufBlock::Q4_0, GgufBlock::Q4_1] {
            let bytes: Vec<u8> = (0..n * k / 32)
                .flat_map(|b| {
                    let mut blk = vec![0u8; kind.block_bytes()];
                    blk[..2].copy_from_slice(&(0x2000u16 + b as u16 * 37).to_le_bytes()); // d
                    if kind == GgufBlock::Q4_1 {
                        blk[2..4].copy_from_slice(&(0xa400u16 + b as u16 * 11).to_le_bytes()); // m < 0
                    }
                    let at = blk.len() - 16;
                    for (t, v) in blk[at..].iter_mut().enumerate() {
                        *v = ((t * 7 + b * 3) % 256) as u8;
                    }
                    blk
                })
                .collect();
            let GgufWeight::I4(w) = GgufWeight::from_blocks(kind, n, k, &bytes).unwrap() else { panic!("int4") };
            for level in SimdLevel::available() {
                for rows in [1, m] {
                    let mut y = vec![0f32; rows * n];
                    matmul_int4_with(level, &pool, &x[..rows * k], &w, &mut y, rows);
                    let (want, mag) = expected(level, &x[..rows * k], &w, rows);
                    for ((&g, &r), &a) in y.iter().zip(&want).zip(&mag) {
                        assert!((g as f64 - r).abs() <= 4e-7 * a * 8.0 + 1e-30, "{kind:?} {level:?}: {g} vs {r}");
                    }
                }
            }
        }
    }

    #[test]
    fn special_x_values() {
        // Row 0: NaN; row 1: inf in the short last group; row 2: all below 1e-30 (x quantized
        // to zero, but the minimum's term still sees the tiny sum); m = 4 GEMV, m = 9 GEMM.
        let pool = ThreadPool::new(1).unwrap();
        let (k, n) = (70, 5);
        let mut rng = Rng(1);
        let w = QuantizedI4::quantize(&rng.vec(n * k), n, k);
        for level in SimdLevel::available() {
            for m in [4, 9] {
                let mut x = rng.vec(m * k);
                x[3] = f32::NAN;
                x[k + 68] = f32::INFINITY;
                x[2 * k..3 * k].iter_mut().for_each(|v| *v *= 1e-31);
                let mut y = vec![0.0; m * n];
                matmul_int4_with(level, &pool, &x, &w, &mut y, m);
                assert!(y[..2 * n].iter().all(|v| !v.is_finite()), "{level:?} m={m}: {:?}", &y[..2 * n]);
                assert!(y[2 * n..3 * n].iter().all(|v| v.abs() < 1e-28), "{level:?} m={m}");
                assert!(y[3 * n..].iter().all(|v| v.is_finite()), "{level:?} m={m}");
            }
        }
    }

    #[test]
    fn zero_sized_shapes_and_bounds() {
        let pool = ThreadPool::new(2).unwrap();
        for level in SimdLevel::available() {
            let w = QuantizedI4::quantize(&[], 3, 0);
            let mut y = vec![5.0f32; 6];
            matmul_int4_with(level, &pool, &[], &w, &mut y, 2);
            assert!(y.iter().all(|&v| v == 0.0));
            let w = QuantizedI4::quantize(&[], 0, 4);
            matmul_int4_with(level, &pool, &[1.0; 4], &w, &mut [], 1);
            // writes only inside y
            let mut rng = Rng(3);
            for &(m, k, n) in &[(1, 37, 11), (9, 70, 50)] {
                let x = rng.vec(m * k);
                let w = QuantizedI4::quantize(&rng.vec(n * k), n, k);
                let mut yb = vec![7.0f32; m * n + 2];
                matmul_int4_with(level, &pool, &x, &w, &mut yb[1..=m * n], m);
                assert_eq!((yb[0], yb[m * n + 1]), (7.0, 7.0));
            }
        }
    }

    #[test]
    #[should_panic(expected = "w.scales and w.mins")]
    fn rejects_inconsistent_weights() {
        let pool = ThreadPool::new(1).unwrap();
        let mut w = QuantizedI4::quantize(&[0.0; 64], 2, 32);
        w.mins = w.mins[..w.mins.len() - 1].to_vec().into();
        matmul_int4(&pool, &[0.0; 32], &w, &mut [0.0; 2], 1);
    }

    /// Throughput (run by hand): `cargo test --release --lib bench_matmul_int4 -- --ignored --nocapture`
    /// GEMV on weights rotated through more memory than the caches hold (like decode), GB/s of
    /// weight bytes (nibbles + scales + minimums), next to INT8 on the same shapes, and the
    /// read bandwidth of the same run; then the prefill GEMM.
    #[test]
    #[ignore]
    fn bench_matmul_int4() {
        use crate::kernels::matmul_int8::matmul_int8;
        use crate::kernels::quant::QuantizedI8;
        let mut rng = Rng(1);
        for threads in [1, 2] {
            let pool = ThreadPool::new(threads).unwrap();
            let buf = vec![1.0f32; 64 << 20];
            let s = best_time(5, 1, |_| {
                pool.run(|t, nt| {
                    std::hint::black_box(simd::sum(&buf[crate::threadpool::chunk(buf.len(), t, nt)]));
                })
            });
            println!("read bandwidth threads={threads}: {:.1} GB/s", (buf.len() * 4) as f64 / s / 1e9);
            // n×k list: BENCH_GEMV=960x576,... (default: SmolLM2-135M's and TinyLlama-1.1B's fused shapes)
            let shapes: Vec<(usize, usize)> = std::env::var("BENCH_GEMV")
                .unwrap_or_else(|_| "960x576,576x576,3072x576,576x1536,49152x576,2560x2048,11264x2048,2048x5632".into())
                .split(',')
                .map(|s| {
                    let (n, k) = s.split_once('x').expect("BENCH_GEMV: NxK,...");
                    (n.parse().expect("N"), k.parse().expect("K"))
                })
                .collect();
            for &(n, k) in &shapes {
                let wf = rng.vec(n * k);
                let x = rng.vec(k);
                let mut y = vec![0.0; n];
                let p4 = QuantizedI4::quantize(&wf, n, k);
                let p8 = QuantizedI8::quantize(&wf, n, k);
                // BENCH_HOT=1: the same weights every call (cache-resident shapes: the kernels' own speed)
                let hot = std::env::var("BENCH_HOT").is_ok();
                let c4 = if hot { 1 } else { ((384 << 20) / p4.bytes() + 1).min(64) };
                let c8 = if hot { 1 } else { ((384 << 20) / p8.bytes() + 1).min(64) };
                let w4: Vec<QuantizedI4> = (0..c4).map(|_| p4.clone()).collect();
                let w8: Vec<QuantizedI8> = (0..c8).map(|_| p8.clone()).collect();
                let it4 = ((1usize << 30) / p4.bytes()).clamp(4, 4000).max(c4);
                let it8 = ((1usize << 30) / p8.bytes()).clamp(4, 4000).max(c8);
                let t4 = best_time(5, it4, |i| matmul_int4(&pool, &x, &w4[i % c4], &mut y, 1));
                let t8 = best_time(5, it8, |i| matmul_int8(&pool, &x, &w8[i % c8], &mut y, 1));
                println!(
                    "GEMV threads={threads} n={n:>5} k={k:<5} int4 {:6.1} µs {:5.1} GB/s | int8 {:6.1} µs {:5.1} GB/s | int8/int4 time {:.2}",
                    t4 * 1e6,
                    p4.bytes() as f64 / t4 / 1e9,
                    t8 * 1e6,
                    p8.bytes() as f64 / t8 / 1e9,
                    t8 / t4
                );
            }
            for &(m, k, n) in &[(128, 576, 1536), (128, 2048, 2048)] {
                let x = rng.vec(m * k);
                let wf = rng.vec(n * k);
                let (w4, w8) = (QuantizedI4::quantize(&wf, n, k), QuantizedI8::quantize(&wf, n, k));
                let mut y = vec![0.0; m * n];
                let flops = 2.0 * (m * n * k) as f64;
                let iters = ((4e9 / flops) as usize).clamp(3, 2000);
                let t4 = best_time(5, iters, |_| matmul_int4(&pool, &x, &w4, &mut y, m));
                let t8 = best_time(5, iters, |_| matmul_int8(&pool, &x, &w8, &mut y, m));
                println!("GEMM threads={threads} m={m} {k}->{n}: int4 {:6.1} GFLOP/s | int8 {:6.1} GFLOP/s", flops / t4 / 1e9, flops / t8 / 1e9);
            }
        }
    }
}
