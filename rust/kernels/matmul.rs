//! The one f32-accumulating matmul: y[m, n] = x[m, k] · w[n, k]ᵀ, x and y in f32, w in
//! nn.Linear layout in any format a [`WSource`] widens to f32 (`matmul_sources.rs`: f32,
//! bf16, int8 weight-only). `matmul_f32` and `matmul_bf16` are its public faces.
//!
//! Two paths (kernels in `matmul_kernels.rs`), chosen for the whole call ([`RowPath`]):
//! - few rows (decode GEMV; memory-bound): threads split the rows of w; each streams its rows
//!   once, in order, against the row(s) of x held in L1;
//! - many rows (prefill GEMM; compute-bound): k blocks of x and w are packed into
//!   tile-interleaved f32 buffers (w widened as it is packed) and an MR × NR register tile
//!   (MR·NR vector accumulators) runs over them; w blocks stay in L2 while every x tile
//!   passes. Threads split n, or m when n is too narrow (`matmul_parts.rs`).
//!
//! The ISA is picked at runtime (`simd::detected()`), or forced by the `*_with` entry points.

use crate::kernels::matmul_parts::{run_parts, Split};
use crate::kernels::matmul_sources::WSource;
use crate::kernels::simd::{self, SimdLevel};
use crate::kernels::RowPath;
use crate::threadpool::ThreadPool;

#[path = "matmul_kernels.rs"]
mod kern;

use kern::Region;

/// Kernel parameters of a level (tile shape, packed-path threshold).
fn shape(level: SimdLevel) -> kern::Shape {
    match level {
        SimdLevel::Avx512 => kern::AVX512,
        SimdLevel::Avx2 => kern::AVX2,
        SimdLevel::Neon => kern::NEON,
        SimdLevel::Scalar => kern::PORTABLE,
    }
}

/// The path the matmul takes for `m` rows of x on the detected level: the GEMM from the
/// level's `pack_rows` rows on.
pub(crate) fn path_for(m: usize) -> RowPath {
    if m >= shape(simd::detected()).pack_rows {
        RowPath::Gemm
    } else {
        RowPath::Gemv
    }
}

/// y: [m, n] = x: [m, k] · wᵀ with w: [n, k] read through `src`, on `level`, on `path` (None:
/// by m, see [`path_for`]). Panics if `level` is not available on this CPU or x / y don't
/// match their shapes.
///
/// # Safety
/// `src` must describe `[n, k]` weights that stay readable for the whole call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn matmul_source<S: WSource>(
    level: SimdLevel,
    pool: &ThreadPool,
    x: &[f32],
    src: S,
    y: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    path: Option<RowPath>,
) {
    if !operands_to_compute(level, x, y, m, k, n) {
        return;
    }
    let sh = shape(level);
    let packed = match path {
        Some(p) => p == RowPath::Gemm,
        None => m >= sh.pack_rows,
    };
    let whole = Region {
        x: x.as_ptr(),
        w: src,
        y: y.as_mut_ptr(),
        k,
        n,
        rows: (0, m),
        cols: (0, n),
        packed,
    };
    let split = if packed {
        Split::Tiles {
            mr: sh.mr,
            nr: sh.nr,
        }
    } else {
        Split::Columns
    };
    // SAFETY: x and y have the asserted lengths and `src` describes [n, k] (the caller);
    // `run_parts` hands out disjoint rectangles inside [0, m) × [0, n); `level` is available.
    let whole = &whole; // captured whole: its raw-pointer fields are not Sync on their own
    run_parts(pool, m, n, k, split, |rows, cols| unsafe {
        run_region(
            level,
            &Region {
                rows,
                cols,
                ..*whole
            },
        )
    });
}

/// The guard every f32-accumulating matmul passes before its kernels (with the caller's check
/// of the weights, the only one they have): panics if x or y does not match its shape or
/// `level` is not available on this CPU; false when there is nothing to compute (m or n zero,
/// or k zero, y then zeroed).
pub(crate) fn operands_to_compute(level: SimdLevel, x: &[f32], y: &mut [f32], m: usize, k: usize, n: usize) -> bool {
    assert_eq!(Some(x.len()), m.checked_mul(k), "x must be [m, k]");
    assert_eq!(Some(y.len()), m.checked_mul(n), "y must be [m, n]");
    simd::check_level(level);
    !crate::kernels::empty_product(y, m, n, k)
}

/// # Safety
/// `g` must describe valid operands (see `kern::region`) and `level` must be available.
unsafe fn run_region<S: WSource>(level: SimdLevel, g: &Region<S>) {
    match level {
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx512 => kern::region_avx512(g),
        #[cfg(target_arch = "x86_64")]
        SimdLevel::Avx2 => kern::region_avx2(g),
        #[cfg(target_arch = "aarch64")]
        SimdLevel::Neon => kern::region_neon(g),
        _ => kern::region_portable(g),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::matmul_sources::{Bf16W, F32W, I8W};
    use crate::kernels::quant::{bf16_to_f32, f32_to_bf16_slice, QuantizedI8};
    use crate::kernels::test_rng::Rng;

    /// A weight format under test.
    #[derive(Clone, Copy, Debug)]
    enum Fmt {
        F32,
        Bf16,
        /// int8 weight-only with this group: 32, 64 and 48 fill whole vectors from one group
        /// (one scale per vector); 7 and 130 mix groups within a vector.
        I8(usize),
    }

    const FMTS: [Fmt; 7] = [
        Fmt::F32,
        Fmt::Bf16,
        Fmt::I8(32),
        Fmt::I8(64),
        Fmt::I8(7),
        Fmt::I8(48),
        Fmt::I8(130),
    ];

    /// Weights `wv` ([n, k] values) stored in `fmt`, one element past the start of their
    /// buffer (so never aligned to a vector), and their values as the format holds them.
    enum Stored {
        F32(Vec<f32>),
        Bf16(Vec<u16>),
        I8(QuantizedI8, Vec<i8>),
    }

    impl Stored {
        fn new(fmt: Fmt, wv: &[f32], n: usize, k: usize) -> (Stored, Vec<f32>) {
            match fmt {
                Fmt::F32 => {
                    let mut b = vec![0.0; n * k + 1];
                    b[1..].copy_from_slice(wv);
                    (Stored::F32(b), wv.to_vec())
                }
                Fmt::Bf16 => {
                    let mut b = vec![0u16; n * k + 1];
                    f32_to_bf16_slice(wv, &mut b[1..]);
                    let widened = b[1..].iter().map(|&v| bf16_to_f32(v)).collect();
                    (Stored::Bf16(b), widened)
                }
                Fmt::I8(group) => {
                    let q = QuantizedI8::quantize_with_group(wv, n, k, group);
                    let mut b = vec![0i8; n * k + 1];
                    b[1..].copy_from_slice(&q.q);
                    let deq = q.dequantize();
                    (Stored::I8(q, b), deq)
                }
            }
        }

        /// The generic matmul over these weights.
        #[allow(clippy::too_many_arguments)]
        fn matmul(
            &self,
            level: SimdLevel,
            pool: &ThreadPool,
            x: &[f32],
            y: &mut [f32],
            m: usize,
            k: usize,
            n: usize,
            path: Option<RowPath>,
        ) {
            // SAFETY: each buffer holds [n, k] values from index 1 on (`new`), scales [n, ng].
            unsafe {
                match self {
                    Stored::F32(b) => matmul_source(
                        level,
                        pool,
                        x,
                        F32W {
                            w: b[1..].as_ptr(),
                            k,
                        },
                        y,
                        m,
                        k,
                        n,
                        path,
                    ),
                    Stored::Bf16(b) => matmul_source(
                        level,
                        pool,
                        x,
                        Bf16W {
                            w: b[1..].as_ptr(),
                            k,
                        },
                        y,
                        m,
                        k,
                        n,
                        path,
                    ),
                    Stored::I8(q, b) => {
                        let src = I8W {
                            q: b[1..].as_ptr(),
                            s: q.scales.as_ptr(),
                            k,
                            group: q.group,
                            ng: k.div_ceil(q.group),
                        };
                        matmul_source(level, pool, x, src, y, m, k, n, path)
                    }
                }
            }
        }
    }

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

    /// Every format, level, path (by m, forced GEMV, forced GEMM) and thread count on one
    /// shape, with x and y one element off their buffers' starts and guards around y. On a
    /// forced path the first and last rows must also equal, bit for bit, the same rows
    /// computed alone (`RowPath`).
    fn check_shape(rng: &mut Rng, pools: &[ThreadPool], m: usize, k: usize, n: usize) {
        let xb = rng.vec(m * k + 1);
        let x = &xb[1..]; // x: [m, k], unaligned
        let wv = rng.vec(n * k); // w: [n, k] in [-1, 1)
        for fmt in FMTS {
            let (stored, widened) = Stored::new(fmt, &wv, n, k);
            let want = reference(x, &widened, m, k, n);
            // |x|, |w| ≤ 1: f32 accumulation error ≲ sqrt(k)·2⁻²⁴ typical, k·2⁻²⁴ worst.
            let tol = 2e-6 * (k as f64).sqrt().max(1.0) + 1e-7;
            for pool in pools {
                for level in SimdLevel::available() {
                    for path in [None, Some(RowPath::Gemv), Some(RowPath::Gemm)] {
                        let ctx = format!(
                            "{fmt:?} {level:?} {path:?} threads={} m={m} k={k} n={n}",
                            pool.n_threads()
                        );
                        let mut yb = vec![f32::NAN; m * n + 2];
                        yb[0] = 7.0;
                        yb[m * n + 1] = 7.0;
                        stored.matmul(level, pool, x, &mut yb[1..=m * n], m, k, n, path);
                        assert_eq!((yb[0], yb[m * n + 1]), (7.0, 7.0), "{ctx}: wrote outside y");
                        let y = &yb[1..=m * n]; // y: [m, n]
                        for (idx, (&g, &r)) in y.iter().zip(&want).enumerate() {
                            assert!(
                                (g as f64 - r).abs() <= tol,
                                "{ctx} at ({}, {}): {g} vs {r} (tol {tol})",
                                idx / n,
                                idx % n
                            );
                        }
                        if path.is_some() {
                            for i in [0, m - 1] {
                                let mut row = vec![0.0; n]; // row: [1, n]
                                stored.matmul(
                                    level,
                                    pool,
                                    &x[i * k..(i + 1) * k],
                                    &mut row,
                                    1,
                                    k,
                                    n,
                                    path,
                                );
                                assert!(
                                    row == y[i * n..(i + 1) * n],
                                    "{ctx}: row {i} differs from its lone run"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    const DIMS: &[usize] = &[1, 3, 17, 33, 130];

    #[test]
    fn every_format_matches_reference_on_odd_shapes() {
        let mut rng = Rng(0x5eed_0f9e_0033);
        let pools: Vec<ThreadPool> = (1..=3).map(|t| ThreadPool::new(t).unwrap()).collect();
        for &m in DIMS {
            for &k in DIMS {
                for &n in DIMS {
                    check_shape(&mut rng, &pools, m, k, n);
                }
            }
        }
    }

    #[test]
    fn every_format_matches_reference_on_blocked_shapes() {
        // k over KC (several k blocks accumulated into y), n over NC, m over MC, a partial
        // last vector, and tall-narrow y (threads split the row tiles); k = 101 and 48: the
        // bf16 GEMV's blocks of 4 vectors, then one of 2, then a partial / a whole vector.
        let mut rng = Rng(0xb10c);
        let pools: Vec<ThreadPool> = [1, 2]
            .iter()
            .map(|&t| ThreadPool::new(t).unwrap())
            .collect();
        for &(m, k, n) in &[(2, 2049, 70), (5, 1100, 203), (200, 65, 7), (130, 1025, 3), (3, 101, 17), (2, 48, 9)] {
            check_shape(&mut rng, &pools, m, k, n);
        }
    }

    #[test]
    fn paths_follow_the_detected_level() {
        let rows = shape(simd::detected()).pack_rows;
        assert_eq!(path_for(rows - 1), RowPath::Gemv);
        assert_eq!(path_for(rows), RowPath::Gemm);
    }
}
