//! INT8-weight matmul: y[m, n] = x[m, k] · wᵀ with w a [`QuantizedI8`] `[n, k]`
//! (k = `w.cols`, n = `w.rows`), x and y in f32.
//!
//! # Scheme: W8A16 for every m (decode and prefill alike)
//!
//! Each row of x is quantized on the fly, per group of 32, to 16 bits: `sx = max|x| / 32639`,
//! `x16 = round(x / sx)` (a group holding NaN/±inf makes its output row NaN). Then
//! `y[i, j] = Σ_g (sx[i, g] · sw[j, g]) · Σ_{p ∈ g} x16[i, p] · wq[j, p]`: exact i32 group
//! sums (|x16·wq| ≤ 32639·127, 32 of them fit an i32), scaled and accumulated in f32. Decode and
//! prefill compute the same integer sums; only the f32 summation order differs.
//!
//! Chosen by measurement over W8A8 (x quantized to 8 bits, `sx = max|x| / 127`; still
//! available as [`Int8Scheme::W8A8`] through [`matmul_int8_scheme`]) and weight-only
//! ([`Int8Scheme::WeightOnly`]: int8 widened to f32 and FMA'd with the f32 x; the fallback for
//! groups other than 32). On the default model (SmolLM2-135M-Instruct) and the quality set
//! (`python -m ferrolm.quality --set`: six kinds of text, 5,374 scored tokens), against FP32:
//!
//! | x                                      | pooled mean KL | perplexity | top-1 |
//! |----------------------------------------|----------------|------------|-------|
//! | 8 bits (W8A8)                          | 4.1e-3         | +0.56 %    | 0.962 |
//! | 16 bits for q/k/v/o and the lm_head    | 2.2e-3         | +0.33 %    | 0.974 |
//! | … and down_proj                        | 1.6e-3         | +0.32 %    | 0.979 |
//! | 16 bits everywhere (W8A16)             | 7.1e-4         | +0.22 %    | 0.986 |
//!
//! (weights quantized with the scale search of `quant.rs` in all four rows). The 8-bit x is
//! the larger error: per group of 32 its step is max|x|/127, and LLM activations put a few
//! large channels into many groups. Speed, 2-core AMD EPYC (Zen 4), default model, batch 1:
//! decode 135.7 vs 138.4 tok/s (W8A16 vs W8A8) at 1 thread and 215.6 vs 210.9 at 2 — the GEMV
//! streams the same weight bytes and the 16-bit x stays in L1. Prefill pays: the VNNI GEMM
//! multiplies u8·i8 quads, so the 16-bit x takes two (high and low bytes); 128-token prefill
//! ≈ 0.7× W8A8's (about 630 vs 910 tok/s at 1 thread on the shared machine, when the two bytes
//! ran as two passes of the GEMM).
//!
//! The earlier measurements of W8A8 against weight-only (GROUP = 64, 2 threads):
//!
//! | 2 threads                        | weight-only   | W8A8          |
//! |----------------------------------|---------------|---------------|
//! | GEMV 2048×2048, AVX2 / AVX-512   | 23.5 / 22.8 GB/s | 31.5 / 31.6 GB/s |
//! | GEMV 2048×5632 (k = 5632)        | 13.4 / 14.9 GB/s | 27.8 / 30.7 GB/s |
//! | GEMM m=128 2048→2048, AVX2       | 140 GFLOP/s   | 190-275 GFLOP/s |
//! | GEMM m=128 2048→2048, AVX-512    | 177 GFLOP/s   | 640 GFLOP/s (VNNI) |
//!
//! The weight-only GEMV spends 3-4 µops per 8 weights on widening and keeps x in f32 (4 bytes
//! per weight of L1 traffic), while the integer GEMVs spend 4 µops per 32 weights.
//!
//! # Paths (kernels in `matmul_int8_kernels.rs`)
//! - GEMV (m < 8; memory-bound): threads split the rows of w; each row of w streams once
//!   against up to 4 quantized rows of x held in L1. W8A16: int8 weights sign-extended to i16
//!   and `madd_epi16` (AVX2) / `dpwssd` (AVX-512 VNNI) with the 16-bit x. W8A8: AVX2
//!   `maddubs(|x|, sign(w, x))` + `madd(·, 1)`; AVX-512 VNNI `dpbusd(w ⊕ 0x80, x)` from −128·Σx.
//! - GEMM (m ≥ 8, AVX2 / AVX-512 VNNI): panels of 16 / 48 rows of w are transposed into
//!   k-interleaved i16 pairs / u8 quads (once per panel and k block), and a 3×16 (AVX2,
//!   `madd_epi16`) / 4×48 (VNNI, `dpbusd` on zmm) register tile multiplies them with
//!   broadcast x pairs / quads; integer sums are scaled into f32 accumulators at group ends.
//!   The 16-bit x runs the AVX2 GEMM on its i16 pairs, or the VNNI GEMM on its signed bytes:
//!   per group the high bytes, the sums shifted left by 8, then the low bytes, so each group's
//!   exact Σ w·x16 is scaled once, as in the GEMV (one pass of the GEMM per byte, each scaled,
//!   ran 1.16-1.25× slower on an Intel Xeon: `tile_vnni`). Threads split the panels (or the
//!   row tiles when n is narrow). Below m = 8 the GEMV, which reads w once per 4 rows,
//!   measured as fast (AVX2) or faster (VNNI, m ≤ 6).
//! - GEMM on CPUs with AVX512-BF16 ([`Int8Scheme::Bf16`], unless `FERROLM_BF16_PREFILL=f32`, or
//!   the CPU is Intel's without AMX, where the VNNI GEMM measured 1.6× faster; `matmul_bf16`):
//!   BF16's `vdpbf16ps` GEMM (`matmul_bf16_dot.rs`) with the int8 groups dequantized to bf16
//!   (q · scale, rounded to nearest even) as they are packed and x rounded to bf16, instead of
//!   the VNNI GEMM over both bytes of the 16-bit x (then two passes of it, one per byte).
//!   Measured (best of 5, 1 thread, m = 128):
//!   576→1536 207 → 318 GFLOP/s, 2048→2048 194 → 308; 2 threads 343-404 → 592-602; a 128-token
//!   prefill of llama-135m 1.6× faster (601-655 → 961-1040 tok/s, interleaved). Its cost in
//!   quality (default model, the quality set, against FP32): pooled mean KL 7.1e-4 → 9.0e-4,
//!   top-1 0.986 → 0.982, perplexity +0.22 % → +0.19 % (docs/quality.md). The decode GEMV keeps
//!   the exact W8A16 sums.
//! - On CPUs with AVX-512 VNNI, a loaded model holds its INT8 weights in tiles of 16 rows
//!   instead (`matmul_int8_tiles.rs`): a decode GEMV without per-group lane sums, the same bits
//!   as these row kernels; the GEMMs read the tiles as they are (the VNNI GEMM through
//!   [`QWeights::I8Tiles`], its panels copied from the tiles' groups).
//! - AVX-512 without VNNI runs the AVX2 kernels; NEON has a GEMV kernel (`vmull_s8` +
//!   `vpadalq_s16`) used for every m; the portable kernel handles every group size.
//!
//! The SIMD kernels need `group % 32 == 0` (and ≤ 16384; W8A16 exactly 32); other groups
//! (valid in a [`QuantizedI8`]) run on the portable kernel (W8A8) or weight-only (W8A16).

use std::sync::OnceLock;

use crate::kernels::matmul::matmul_source;
use crate::kernels::matmul_bf16::{dot_gemm_runs, rounds_x};
#[cfg(target_arch = "x86_64")]
use crate::kernels::matmul_bf16_dot as dot;
use crate::kernels::matmul_f32::matmul_f32;
use crate::kernels::matmul_parts::{run_parts, Split};
use crate::kernels::matmul_int8_tiles::{QuantizedI8Tiles, TILE_GROUP};
use crate::kernels::matmul_sources::I8W;
use crate::kernels::quant::{f16_to_f32, QuantizedI4, QuantizedI8, I4_GROUP};
use crate::kernels::simd::{self, SimdLevel};
use crate::kernels::RowPath;
use crate::threadpool::{chunk, ThreadPool};
#[cfg(target_arch = "x86_64")]
use crate::kernels::matmul_int4_gemv as i4g;

#[path = "matmul_int8_kernels.rs"]
pub(crate) mod q8;

use q8::{Need, Q8};

/// The integer weights a W8A8-family kernel multiplies with the quantized x: INT8 with 8-bit
/// x (`matmul_int8`, W8A8), INT8 with 16-bit x (W8A16), or packed INT4 with minimums and
/// 16-bit x (`matmul_int4`).
#[derive(Clone, Copy)]
pub(crate) enum QWeights<'a> {
    I8(&'a QuantizedI8),
    I8A16(&'a QuantizedI8),
    I4(&'a QuantizedI4),
    /// INT8 in tiles of 16 rows with 16-bit x: the VNNI GEMM only (the tiles' decode GEMV is
    /// `matmul_int8_tiles`' own).
    I8Tiles(&'a QuantizedI8Tiles),
}

/// How the int8 weights meet the f32 activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Int8Scheme {
    /// Weight-only: int8 groups are widened to f32 on the fly and multiplied with the f32 x
    /// (the f32 matmul of the dequantized weights, up to summation order).
    WeightOnly,
    /// W8A8: each row of x is quantized per group to int8 on the fly (symmetric,
    /// `sx = max|x| / 127`, round half to even); group dot products are exact integer sums
    /// scaled by `sx · sw`, accumulated in f32.
    W8A8,
    /// W8A16: x quantized per group of 32 to 16 bits (`sx = max|x| / 32639`), exact i32 group
    /// sums with the int8 weights (`madd_epi16` / VNNI `dpwssd`; the kernels `matmul_int4`
    /// shares): 256× less x error than W8A8, at about half the cost of weight-only. The INT8
    /// matrices of an INT4 model (a GGUF file's Q8_0 embedding and lm_head) run it. Needs
    /// groups of 32 and whole groups per row (others run weight-only).
    W8A16,
    /// The bf16 prefill GEMM (`matmul_bf16_dot`, CPUs with AVX512-BF16 at the AVX-512 level):
    /// int8 groups dequantized to bf16 (q · scale, rounded to nearest even) as they are packed,
    /// x rounded to bf16, `vdpbf16ps` with f32 accumulation. What W8A16's GEMM path runs on
    /// those CPUs (see [`int8_rounds_x`]); elsewhere, or for groups that are not a multiple of
    /// 32, it is W8A16.
    Bf16,
}

/// The scheme [`matmul_int8`] uses for `m` rows of x on `level`: W8A16, whose GEMM path runs
/// the bf16 GEMM where [`int8_rounds_x`] (see the module docs for the measurements).
pub fn int8_scheme_for(level: SimdLevel, m: usize, group: usize) -> Int8Scheme {
    if int8_rounds_x(level, m, None, group) {
        Int8Scheme::Bf16
    } else {
        Int8Scheme::W8A16
    }
}

/// Whether a W8A16 call on `level` with `m` rows of x on `path` (None: by m) runs the bf16
/// GEMM ([`Int8Scheme::Bf16`]), which rounds x and the dequantized weights to bf16: as for
/// BF16 weights ([`crate::kernels::matmul_bf16::rounds_x`], `FERROLM_BF16_PREFILL`), for
/// groups that are a multiple of 32.
pub fn int8_rounds_x(level: SimdLevel, m: usize, path: Option<RowPath>, group: usize) -> bool {
    group.is_multiple_of(32) && rounds_x(level, m, Some(path.unwrap_or(int8_path_for(m))))
}

/// Whether [`Int8Scheme::Bf16`] runs as itself on `level` for `group` (else it is W8A16).
fn bf16_dot_runs(level: SimdLevel, group: usize) -> bool {
    group.is_multiple_of(32) && dot_gemm_runs(level)
}

/// W8A8 on x86: problems with at least this many rows of x use the packed GEMM.
const GEMM_ROWS: usize = 8;
/// x quantization runs on the pool when x has at least this many values.
const PARALLEL_QUANT: usize = 64 * 1024;

/// y: [m, n] = x: [m, k] · wᵀ, k = `w.cols`, n = `w.rows`.
pub fn matmul_int8(pool: &ThreadPool, x: &[f32], w: &QuantizedI8, y: &mut [f32], m: usize) {
    matmul_int8_with(simd::detected(), pool, x, w, y, m)
}

/// The path [`matmul_int8`] takes for `m` rows of x (W8A8): the GEMM from `GEMM_ROWS` on.
/// (Where no GEMM kernel exists — NEON, portable, odd groups — both paths run the same
/// row-by-row kernel.)
pub fn int8_path_for(m: usize) -> RowPath {
    if m >= GEMM_ROWS {
        RowPath::Gemm
    } else {
        RowPath::Gemv
    }
}

/// [`matmul_int8`] (W8A8) on a given path, whatever m (see [`RowPath`]).
pub fn matmul_int8_path(pool: &ThreadPool, x: &[f32], w: &QuantizedI8, y: &mut [f32], m: usize, path: RowPath) {
    let (k, n) = (w.cols, w.rows);
    assert!(w.group >= 1, "int8 weight group must be >= 1");
    assert_eq!(Some(w.q.len()), n.checked_mul(k), "w.q must be [rows, cols]");
    assert_eq!(Some(w.scales.len()), n.checked_mul(k.div_ceil(w.group)), "w.scales must be [rows, ceil(cols/group)]");
    assert_eq!(Some(x.len()), m.checked_mul(k), "x must be [m, k]");
    assert_eq!(Some(y.len()), m.checked_mul(n), "y must be [m, n]");
    if crate::kernels::empty_product(y, m, n, k) {
        return;
    }
    w8a8(simd::detected(), pool, x, QWeights::I8(w), y, m, path)
}

/// W8A16 (16-bit x; the INT8 matrices an INT4 model keeps) on a given path, whatever m; groups
/// other than 32 run weight-only.
pub fn matmul_int8_a16_path(pool: &ThreadPool, x: &[f32], w: &QuantizedI8, y: &mut [f32], m: usize, path: RowPath) {
    let k = w.cols;
    let level = simd::detected();
    if int8_rounds_x(level, m, Some(path), w.group) {
        return matmul_int8_scheme(level, Int8Scheme::Bf16, pool, x, w, y, m);
    }
    if w.group != 32 || !k.is_multiple_of(32) || m == 0 || w.rows == 0 || k == 0 {
        return matmul_int8_scheme(level, Int8Scheme::W8A16, pool, x, w, y, m);
    }
    assert_eq!(Some(w.q.len()), w.rows.checked_mul(k), "w.q must be [rows, cols]");
    assert_eq!(Some(w.scales.len()), w.rows.checked_mul(k / 32), "w.scales must be [rows, cols/32]");
    assert_eq!(Some(x.len()), m.checked_mul(k), "x must be [m, k]");
    assert_eq!(Some(y.len()), m.checked_mul(w.rows), "y must be [m, n]");
    w8a8(level, pool, x, QWeights::I8A16(w), y, m, path)
}

/// [`matmul_int8`] on a forced SIMD path. Panics if `level` is not available on this CPU,
/// a slice length doesn't match its shape, or `w` is inconsistent.
pub fn matmul_int8_with(
    level: SimdLevel,
    pool: &ThreadPool,
    x: &[f32],
    w: &QuantizedI8,
    y: &mut [f32],
    m: usize,
) {
    matmul_int8_scheme(level, int8_scheme_for(level, m, w.group), pool, x, w, y, m)
}

/// [`matmul_int8`] with a forced SIMD path and scheme (for tests and benchmarks).
pub fn matmul_int8_scheme(
    level: SimdLevel,
    scheme: Int8Scheme,
    pool: &ThreadPool,
    x: &[f32],
    w: &QuantizedI8,
    y: &mut [f32],
    m: usize,
) {
    let (k, n) = (w.cols, w.rows);
    // These asserts are the only guard for the unsafe kernels below (w's fields are pub).
    assert!(w.group >= 1, "int8 weight group must be >= 1");
    assert_eq!(
        Some(w.q.len()),
        n.checked_mul(k),
        "w.q must be [rows, cols]"
    );
    let ng = k.div_ceil(w.group);
    assert_eq!(
        Some(w.scales.len()),
        n.checked_mul(ng),
        "w.scales must be [rows, ceil(cols/group)]"
    );
    assert_eq!(Some(x.len()), m.checked_mul(k), "x must be [m, k]");
    assert_eq!(Some(y.len()), m.checked_mul(n), "y must be [m, n]");
    simd::check_level(level);
    if crate::kernels::empty_product(y, m, n, k) {
        return;
    }
    match scheme {
        Int8Scheme::WeightOnly => {
            let src = I8W {
                q: w.q.as_ptr(),
                s: w.scales.as_ptr(),
                k,
                group: w.group,
                ng,
            };
            // SAFETY: w's lengths asserted above, borrowed for the call.
            unsafe { matmul_source(level, pool, x, src, y, m, k, n, None) }
        }
        Int8Scheme::W8A8 => w8a8(level, pool, x, QWeights::I8(w), y, m, int8_path_for(m)),
        // 16-bit x in groups of 32; other groups (their i32 sums could overflow) weight-only
        Int8Scheme::W8A16 if w.group == 32 && k.is_multiple_of(32) => w8a8(level, pool, x, QWeights::I8A16(w), y, m, int8_path_for(m)),
        Int8Scheme::W8A16 => matmul_int8_scheme(level, Int8Scheme::WeightOnly, pool, x, w, y, m),
        #[cfg(target_arch = "x86_64")]
        Int8Scheme::Bf16 if bf16_dot_runs(level, w.group) => {
            let src = dot::Weights::Int8 { q: w.q.as_ptr(), scales: w.scales.as_ptr(), group: w.group };
            // SAFETY: w's lengths asserted above, borrowed for the call; k ≥ 1 (not an empty
            // product); bf16_dot_runs checked the group and the CPU's features.
            unsafe { dot::matmul(pool, x, src, y, m, k, n) }
        }
        Int8Scheme::Bf16 => matmul_int8_scheme(level, Int8Scheme::W8A16, pool, x, w, y, m),
    }
}

/// The W8A8 kernel family a level runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path {
    Portable,
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    Neon,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Avx2,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    Vnni,
}

/// Whether the CPU has AVX-512 VNNI (with BW/VL). Cached.
fn has_vnni() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vnni")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// int4 weights enter the integer sums centered, as q − I4_CENTER (see `matmul_int4`).
pub(crate) const I4_CENTER: i32 = 8;

/// The offset of a centered int4 group, `m + 8·d`, from its f16 scale and minimum.
#[inline(always)]
pub(crate) fn i4_offset(d: u16, m: u16) -> f32 {
    f16_to_f32(m) + I4_CENTER as f32 * f16_to_f32(d)
}

/// Whether the CPU has F16C (the x86 int4 kernels widen f16 scales with it). Cached.
fn has_f16c() -> bool {
    static V: OnceLock<bool> = OnceLock::new();
    *V.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

fn path_for(level: SimdLevel, group: usize) -> Path {
    if !group.is_multiple_of(32) || group > q8::MAX_SIMD_GROUP {
        return Path::Portable;
    }
    match level {
        SimdLevel::Avx512 if has_vnni() => Path::Vnni,
        // AVX-512 without VNNI still has AVX2.
        SimdLevel::Avx512 | SimdLevel::Avx2 => Path::Avx2,
        SimdLevel::Neon => Path::Neon,
        SimdLevel::Scalar => Path::Portable,
    }
}

/// The W8A8 product of `x` (quantized here, per row and group of the weights) with integer
/// weights `w`, on the GEMV or GEMM `rows` path. The caller has checked every length against
/// the shapes.
pub(crate) fn w8a8(level: SimdLevel, pool: &ThreadPool, x: &[f32], w: QWeights<'_>, y: &mut [f32], m: usize, rows: RowPath) {
    let (k, n, group, kind) = match w {
        QWeights::I8(w) => (w.cols, w.rows, w.group, q8::Kind::A8),
        QWeights::I8A16(w) => (w.cols, w.rows, w.group, q8::Kind::I8A16),
        QWeights::I4(w) => (w.cols, w.rows, I4_GROUP, q8::Kind::I4),
        QWeights::I8Tiles(w) => (w.cols, w.rows, TILE_GROUP, q8::Kind::I8A16),
    };
    let tiled = matches!(w, QWeights::I8Tiles(_));
    let a16 = kind != q8::Kind::A8;
    let ng = k.div_ceil(group);
    let kp = k.div_ceil(32) * 32;
    let mut path = path_for(level, group);
    if a16 && matches!(path, Path::Avx2 | Path::Vnni) && !has_f16c() {
        path = Path::Portable; // the x86 16-bit-x GEMV is compiled with F16C (int4 scales)
    }
    let gemm = rows == RowPath::Gemm && matches!(path, Path::Avx2 | Path::Vnni);
    assert!(!tiled || (gemm && path == Path::Vnni), "int8 tiles run this GEMM on AVX-512 VNNI only");
    let need = Need {
        abs: path == Path::Avx2 && !gemm && !a16,
        wide: path == Path::Avx2 && gemm && !a16,
        // 16-bit x, and the f32 Σx per group (int4's offset term: fused in the GEMV, a small
        // f32 matmul after the GEMM)
        a16,
        // 16-bit x as two signed bytes on VNNI: the int8 GEMM (prefill of int4 and W8A16: the
        // high, then the low bytes of each group), the W8A16 GEMV (both bytes at once)
        split: path == Path::Vnni && (a16 && gemm || kind == q8::Kind::I8A16),
        quads: tiled,
    };
    let mut xb = q8::take_xbuf(m, kp, ng, need);
    let out = xb.out(need);
    // SAFETY: x holds m·k values (asserted by the caller); the buffers hold m rows of kp / ng
    // values (take_xbuf); threads quantize disjoint rows.
    let quant = |rows: std::ops::Range<usize>| unsafe {
        if a16 {
            #[cfg(target_arch = "x86_64")]
            if matches!(path, Path::Avx2 | Path::Vnni) {
                return q8::quantize_rows_a16_avx2(x.as_ptr(), k, kp, ng, rows, out);
            }
            return q8::quantize_rows_a16(x.as_ptr(), k, kp, ng, rows, out);
        }
        match path {
            #[cfg(target_arch = "x86_64")]
            Path::Avx2 | Path::Vnni => {
                q8::quantize_rows_avx2(x.as_ptr(), k, kp, group, ng, rows, out)
            }
            #[cfg(target_arch = "aarch64")]
            Path::Neon => q8::quantize_rows_neon(x.as_ptr(), k, kp, group, ng, rows, out),
            _ => q8::quantize_rows_portable(x.as_ptr(), k, kp, group, ng, rows, out),
        }
    };
    let nt = pool.n_threads();
    if nt > 1 && m > 1 && m * k >= PARALLEL_QUANT {
        pool.run(|t, nt| quant(chunk(m, t, nt)));
    } else {
        quant(0..m);
    }
    let (wq, wrow, ws, wm) = match w {
        QWeights::I8(w) | QWeights::I8A16(w) => (w.q.as_ptr(), k, w.scales.as_ptr(), std::ptr::null()),
        QWeights::I4(w) => (w.q.as_ptr() as *const i8, w.row_bytes(), w.scales.as_ptr(), w.mins.as_ptr()),
        QWeights::I8Tiles(w) => (w.q.as_ptr(), k, w.scales.as_ptr(), std::ptr::null()),
    };
    let whole = Q8 {
        xq: xb.q.as_ptr(),
        xa: xb.a.as_ptr(),
        x16: xb.x16.as_ptr(),
        xs: xb.s.as_ptr(),
        xc: xb.c.as_ptr(),
        xf: xb.f.as_ptr(),
        kp,
        wq,
        wrow,
        ws,
        wm,
        k,
        n,
        group,
        ng,
        y: y.as_mut_ptr(),
        rows: (0, m),
        cols: (0, n),
        xq_lo: std::ptr::null(),
        xc_lo: std::ptr::null(),
        i4x: std::ptr::null(),
        tiled,
    };
    // int4 decode on AVX-512 VNNI: x in the layout of its GEMV (matmul_int4_gemv)
    #[cfg(target_arch = "x86_64")]
    let whole = if kind == q8::Kind::I4 && !gemm && path == Path::Vnni {
        let stride = i4g::units(ng) * i4g::UNIT_WORDS;
        if xb.p.len() < m * stride {
            xb.p = vec![0; m * stride];
        }
        for (i, out) in xb.p[..m * stride].chunks_exact_mut(stride).enumerate() {
            let at = i * ng..(i + 1) * ng;
            // SAFETY: the VNNI path runs on CPUs with AVX-512 F and BW (path_for).
            unsafe { i4g::prepare_x(&xb.x16[i * kp..(i + 1) * kp], &xb.s[at.clone()], &xb.c[at.clone()], &xb.f[at], out) };
        }
        Q8 { i4x: xb.p.as_ptr(), ..whole }
    } else {
        whole
    };
    // 16-bit x split into signed bytes on VNNI: the prefill's u8·i8 GEMM multiplies each group
    // with the high bytes, then (sums shifted by 8) the low ones, with the Σ of each; the W8A16
    // GEMV reads both at once, with the 16-bit x's Σx16; both scale by the 16-bit x's sx
    let whole = match (need.split, gemm) {
        (false, _) => whole,
        (true, true) => Q8 {
            xq: xb.hi.as_ptr(),
            xc: xb.ch.as_ptr(),
            xq_lo: xb.lo.as_ptr(),
            xc_lo: xb.cl.as_ptr(),
            ..whole
        },
        (true, false) => Q8 { xq: xb.hi.as_ptr(), xq_lo: xb.lo.as_ptr(), ..whole },
    };
    let split = match (gemm, path) {
        (false, _) => Split::Columns,
        (true, Path::Vnni) => Split::Tiles { mr: q8::VNNI_TILE.mr, nr: q8::VNNI_TILE.nr },
        (true, _) => Split::Tiles { mr: q8::AVX2_TILE.mr, nr: q8::AVX2_TILE.nr },
    };
    // SAFETY (for `run_q8` below): the operands have the asserted lengths, the quantized x
    // has the forms `need` asks for, `run_parts` gives each call a disjoint region of y, and
    // `path` only names kernels whose ISA is available (path_for, check_level).
    let whole = &whole; // captured whole: its raw-pointer fields are not Sync on their own
    run_parts(pool, m, n, k, split, |rows, cols| unsafe { run_q8(path, gemm, kind, &Q8 { rows, cols, ..*whole }) });
    if let (QWeights::I4(w), true) = (w, gemm) {
        // y += Σx · mᵀ: [m, ng] · [n, ng]ᵀ (the GEMV adds it per group itself), with the
        // offsets m + 8·d of the centered weights (see matmul_int4); in blocks of columns, so
        // that its buffers stay small whatever n
        const BLOCK: usize = 1024;
        let mut mins = Vec::with_capacity(BLOCK.min(n) * ng);
        let mut t = vec![0f32; m * BLOCK.min(n)];
        for j0 in (0..n).step_by(BLOCK) {
            let bn = BLOCK.min(n - j0);
            mins.clear();
            mins.extend(w.mins[j0 * ng..(j0 + bn) * ng].iter().zip(&w.scales[j0 * ng..]).map(|(&m, &d)| i4_offset(d, m)));
            matmul_f32(pool, &xb.f[..m * ng], &mins, &mut t[..m * bn], m, ng, bn);
            for (yr, tr) in y.chunks_exact_mut(n).zip(t.chunks_exact(bn)) {
                for (yv, tv) in yr[j0..j0 + bn].iter_mut().zip(tr) {
                    *yv += tv;
                }
            }
        }
    }
    q8::put_xbuf(xb);
}

/// # Safety
/// `g` must describe valid operands for `path` and `kind` (see the kernels) and its ISA must
/// be available.
unsafe fn run_q8(path: Path, gemm: bool, kind: q8::Kind, g: &Q8) {
    #[cfg(target_arch = "x86_64")]
    use q8::Kind::{I8A16, A8, I4};
    if g.rows.0 >= g.rows.1 || g.cols.0 >= g.cols.1 {
        return;
    }
    match (path, gemm, kind) {
        #[cfg(target_arch = "x86_64")]
        (Path::Vnni | Path::Avx2, true, I4) => gemm_i4(g),
        #[cfg(target_arch = "x86_64")]
        (Path::Vnni | Path::Avx2, true, I8A16) => gemm_a16(g),
        #[cfg(target_arch = "x86_64")]
        (Path::Vnni, true, A8) => q8::gemm_vnni(g),
        #[cfg(target_arch = "x86_64")]
        (Path::Vnni, false, A8) => q8::gemv_vnni(g),
        #[cfg(target_arch = "x86_64")]
        (Path::Vnni, false, I4) => i4g::gemv_i4_vnni(g),
        #[cfg(target_arch = "x86_64")]
        (Path::Vnni, false, I8A16) => q8::gemv_w8a16_vnni(g),
        #[cfg(target_arch = "x86_64")]
        (Path::Avx2, true, A8) => q8::gemm_avx2(g),
        #[cfg(target_arch = "x86_64")]
        (Path::Avx2, false, A8) => q8::gemv_avx2(g),
        #[cfg(target_arch = "x86_64")]
        (Path::Avx2, false, I4) => q8::gemv_a16_avx2::<q8::I4W>(g),
        #[cfg(target_arch = "x86_64")]
        (Path::Avx2, false, I8A16) => q8::gemv_a16_avx2::<q8::I8W16>(g),
        #[cfg(target_arch = "aarch64")]
        (Path::Neon, _, kind) => q8::region_neon(kind, g),
        (_, _, kind) => q8::region_portable(kind, g),
    }
}

/// Rows of packed int4 weights unpacked per GEMM panel (a multiple of both GEMMs' NR).
#[cfg(target_arch = "x86_64")]
const I4_PANEL: usize = 96;

#[cfg(target_arch = "x86_64")]
thread_local! {
    /// An unpacked panel: int8 rows.
    static I4_PANEL_BUF: std::cell::Cell<Vec<i8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The GEMM of packed int4 weights without their offsets' term: panels of `I4_PANEL` rows
/// are unpacked to int8 rows of q − 8 (in [-8, 7]) and multiplied by the AVX2 GEMM (i16
/// pairs) with the 16-bit x, or on VNNI CPUs by the VNNI GEMM run over the high and the low
/// bytes of x: the same exact integer group sums as the int4 GEMV. The f16 scales are read
/// as they are (the GEMMs widen them as they pack a panel).
///
/// # Safety
/// As [`run_q8`] with `g` describing int4 weights (rows of `g.wrow` packed bytes).
#[cfg(target_arch = "x86_64")]
unsafe fn gemm_i4(g: &Q8) {
    let (k, ng) = (g.k, g.ng);
    let mut rows = I4_PANEL_BUF.with(|c| c.take());
    if rows.len() < I4_PANEL * k {
        rows = vec![0; I4_PANEL * k];
    }
    let mut j0 = g.cols.0;
    while j0 < g.cols.1 {
        let nr = I4_PANEL.min(g.cols.1 - j0);
        let packed = std::slice::from_raw_parts((g.wq as *const u8).add(j0 * g.wrow), nr * g.wrow);
        for (out, row) in rows.chunks_exact_mut(k).zip(packed.chunks_exact(g.wrow)) {
            crate::kernels::quant::unpack_nibbles(row, out, I4_CENTER as i8);
        }
        let panel = Q8 {
            wq: rows.as_ptr(),
            wrow: k,
            ws: g.ws.add(j0 * ng),
            y: g.y.add(j0),
            cols: (0, nr),
            ..*g
        };
        gemm_a16(&panel);
        j0 += nr;
    }
    I4_PANEL_BUF.with(|c| c.set(rows));
}

/// The GEMM of int8 weights with the 16-bit x: the AVX2 GEMM on i16 pairs (x16), or on VNNI
/// CPUs (where `w8a8` split x into bytes) the VNNI GEMM over each group's high bytes, its sums
/// shifted by 8, then its low bytes: exact integer group sums either way, each scaled once.
///
/// # Safety
/// As [`run_q8`] with `g` describing int8 weights; `xq_lo` and `xc_lo` are set (VNNI) or null
/// (AVX2).
#[cfg(target_arch = "x86_64")]
unsafe fn gemm_a16(g: &Q8) {
    if g.xq_lo.is_null() {
        q8::gemm_avx2(g);
    } else {
        q8::gemm_vnni_a16(g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::matmul_f32::matmul_f32;
    use crate::kernels::quant::GROUP;
    use crate::kernels::test_rng::{best_time, Rng};

    const SCHEMES: [Int8Scheme; 4] = [Int8Scheme::WeightOnly, Int8Scheme::W8A8, Int8Scheme::W8A16, Int8Scheme::Bf16];

    /// Σ bf16(x)·bf16(q·scale) in f64: what [`Int8Scheme::Bf16`] computes where it runs.
    fn reference_bf16(x: &[f32], w: &QuantizedI8, m: usize) -> Vec<f64> {
        use crate::kernels::quant::{bf16_to_f32, f32_to_bf16};
        let (k, n) = (w.cols, w.rows);
        let ng = k.div_ceil(w.group);
        let round = |v: f32| bf16_to_f32(f32_to_bf16(v)) as f64;
        let wb: Vec<f64> = (0..n * k).map(|i| round(w.q[i] as f32 * f16_to_f32(w.scales[i / k * ng + i % k / w.group]))).collect();
        let xb: Vec<f64> = x.iter().map(|&v| round(v)).collect();
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k).map(|p| xb[i * k + p] * wb[j * k + p]).sum();
            }
        }
        y
    }

    /// Σ x·deq(w) in f64 (the weight-only reference).
    fn reference_deq(x: &[f32], w: &QuantizedI8, m: usize) -> Vec<f64> {
        let (k, n) = (w.cols, w.rows);
        let deq = w.dequantize();
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k)
                    .map(|p| x[i * k + p] as f64 * deq[j * k + p] as f64)
                    .sum();
            }
        }
        y
    }

    /// x row quantized as the W8A8 scheme specifies: (q, scales); `top` 127 (W8A8) or 32639
    /// (W8A16).
    fn quantize_x_row(x: &[f32], group: usize, top: f32) -> (Vec<i32>, Vec<f32>) {
        let mut q = Vec::with_capacity(x.len());
        let mut s = Vec::new();
        for g in x.chunks(group) {
            let amax = g.iter().fold(0f32, |a, v| a.max(v.abs()));
            if amax < 1e-30 {
                q.extend(g.iter().map(|_| 0));
                s.push(0.0);
                continue;
            }
            let inv = top / amax;
            q.extend(
                g.iter()
                    .map(|&v| (v * inv).round_ties_even().clamp(-top, top) as i32),
            );
            s.push(amax / top);
        }
        (q, s)
    }

    /// The W8A8 reference: exact integer group sums, scaled by (sw·sx in f32), summed in
    /// f64. Also returns Σ|xq·wq|·|sw·sx| per output (bounds the f32 rounding of any
    /// summation order).
    fn reference_w8a8(x: &[f32], w: &QuantizedI8, m: usize, top: f32) -> (Vec<f64>, Vec<f64>) {
        let (k, n, group) = (w.cols, w.rows, w.group);
        let ng = k.div_ceil(group);
        let mut y = vec![0f64; m * n];
        let mut mag = vec![0f64; m * n];
        for i in 0..m {
            let (xq, xs) = quantize_x_row(&x[i * k..(i + 1) * k], group, top);
            for j in 0..n {
                let wq = &w.q[j * k..(j + 1) * k];
                for (g, ((xg, wg), &sx)) in
                    xq.chunks(group).zip(wq.chunks(group)).zip(&xs).enumerate()
                {
                    let (mut isum, mut iabs) = (0i64, 0i64);
                    for (&a, &b) in xg.iter().zip(wg) {
                        let t = a as i64 * b as i64;
                        isum += t;
                        iabs += t.abs();
                    }
                    let d = (f16_to_f32(w.scales[j * ng + g]) * sx) as f64;
                    y[i * n + j] += isum as f64 * d;
                    mag[i * n + j] += iabs as f64 * d.abs();
                }
            }
        }
        (y, mag)
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        level: SimdLevel,
        scheme: Int8Scheme,
        pool: &ThreadPool,
        rng: &mut Rng,
        m: usize,
        k: usize,
        n: usize,
        group: usize,
    ) {
        let x = rng.vec(m * k);
        let w = QuantizedI8::quantize_with_group(&rng.vec(n * k), n, k, group);
        let mut y = vec![f32::NAN; m * n];
        matmul_int8_scheme(level, scheme, pool, &x, &w, &mut y, m);
        let ctx = || {
            format!(
                "{level:?} {scheme:?} threads={} m={m} k={k} n={n} group={group}",
                pool.n_threads()
            )
        };
        if scheme == Int8Scheme::Bf16 && bf16_dot_runs(level, group) {
            let want = reference_bf16(&x, &w, m);
            // |x| < 1, |deq(w)| ≤ 1: f32 accumulation error ≲ sqrt(k)·2⁻²⁴ typical.
            let tol = 2e-6 * (k as f64).sqrt().max(1.0) + 1e-7;
            for (idx, (&g, &r)) in y.iter().zip(&want).enumerate() {
                assert!((g as f64 - r).abs() <= tol, "{} at {idx}: {g} vs {r}", ctx());
            }
            return;
        }
        // W8A16 (and Bf16 where it does not run) needs whole groups of 32 (else weight-only)
        let w8a16 = matches!(scheme, Int8Scheme::W8A16 | Int8Scheme::Bf16) && group == 32 && k.is_multiple_of(32);
        match scheme {
            Int8Scheme::WeightOnly | Int8Scheme::W8A16 | Int8Scheme::Bf16 if !w8a16 => {
                let want = reference_deq(&x, &w, m);
                // |x|, |deq(w)| ≤ 1: f32 accumulation error ≲ sqrt(k)·2⁻²⁴ typical.
                let tol = 2e-6 * (k as f64).sqrt().max(1.0) + 1e-7;
                for (idx, (&g, &r)) in y.iter().zip(&want).enumerate() {
                    assert!(
                        (g as f64 - r).abs() <= tol,
                        "{} at {idx}: {g} vs {r}",
                        ctx()
                    );
                }
            }
            _ => {
                let top = if w8a16 { 32639.0 } else { 127.0 };
                let (want, mag) = reference_w8a8(&x, &w, m, top);
                for (idx, ((&g, &r), &a)) in y.iter().zip(&want).zip(&mag).enumerate() {
                    let tol = 4e-7 * a * (k as f64).sqrt().max(1.0) + 1e-30;
                    assert!(
                        (g as f64 - r).abs() <= tol,
                        "{} at {idx}: {g} vs {r} (tol {tol})",
                        ctx()
                    );
                }
            }
        }
    }

    const KS: &[usize] = &[1, 7, 31, 33, 64, 65, 100, 257, 1000, 1088];
    const NS: &[usize] = &[1, 3, 17, 64];
    const MS: &[usize] = &[1, 2, 3, 5, 17, 64];

    #[test]
    fn matches_reference_on_every_level_scheme_and_thread_count() {
        let mut rng = Rng(0x1234_5678_9abc_def1);
        for threads in 1..=3 {
            let pool = ThreadPool::new(threads).unwrap();
            for level in SimdLevel::available() {
                for scheme in SCHEMES {
                    for &m in MS {
                        for &k in KS {
                            for &n in NS {
                                check(level, scheme, &pool, &mut rng, m, k, n, GROUP);
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn other_group_sizes_match_reference() {
        // 32/128: the SIMD kernels; 48, 7, 1000: the portable fallback (any group).
        let mut rng = Rng(77);
        let pool = ThreadPool::new(2).unwrap();
        for level in SimdLevel::available() {
            for scheme in SCHEMES {
                for group in [32, 64, 128, 48, 7, 1000] {
                    for &(m, k, n) in &[(1, 300, 19), (1, 320, 19), (1, 1024, 5), (2, 65, 7), (5, 257, 33), (17, 100, 64)] {
                        check(level, scheme, &pool, &mut rng, m, k, n, group);
                    }
                }
            }
        }
    }

    #[test]
    fn blocked_shapes_match_reference() {
        // k beyond the GEMM k blocks, n beyond several panels with a partial one, m not a
        // multiple of the row tiles, and the threaded paths.
        let mut rng = Rng(99);
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            for level in SimdLevel::available() {
                for scheme in SCHEMES {
                    for &(m, k, n) in &[
                        (1, 2049, 203),
                        (2, 1537, 90),
                        (7, 2100, 100),
                        (13, 515, 97),
                        (40, 64, 3),
                        (130, 96, 50),
                    ] {
                        check(level, scheme, &pool, &mut rng, m, k, n, GROUP);
                    }
                }
            }
        }
    }

    #[test]
    fn dispatching_entry_point_matches() {
        let mut rng = Rng(5);
        let pool = ThreadPool::new(2).unwrap();
        for m in [1, 3, 8, 33] {
            let (k, n) = (300, 70);
            let x = rng.vec(m * k);
            let w = QuantizedI8::quantize(&rng.vec(n * k), n, k);
            let (mut a, mut b) = (vec![0.0; m * n], vec![0.0; m * n]);
            matmul_int8(&pool, &x, &w, &mut a, m);
            if int8_scheme_for(simd::detected(), m, w.group) == Int8Scheme::Bf16 {
                // the bf16 GEMM (AVX512-BF16 CPUs, m ≥ 8): x and the weights rounded to bf16
                assert!(int8_rounds_x(simd::detected(), m, None, w.group), "m={m}");
                for (p, q) in a.iter().zip(reference_bf16(&x, &w, m)) {
                    assert!((*p as f64 - q).abs() <= 1e-5 * (1.0 + q.abs()), "m={m}: {p} vs {q}");
                }
                continue;
            }
            matmul_int8_scheme(SimdLevel::Scalar, Int8Scheme::W8A16, &pool, &x, &w, &mut b, m);
            for (p, q) in a.iter().zip(&b) {
                assert!((p - q).abs() <= 1e-4 * (1.0 + q.abs()), "m={m}: {p} vs {q}");
            }
        }
    }

    #[test]
    fn w8a8_error_is_small() {
        // Against the f32 matmul of the dequantized weights: the only extra error of W8A8 is
        // the quantization of x (≤ half a step per element of each group).
        let mut rng = Rng(8);
        let pool = ThreadPool::new(2).unwrap();
        let (m, k, n) = (8, 512, 96);
        let x = rng.vec(m * k);
        let w = QuantizedI8::quantize(&rng.vec(n * k), n, k);
        let deq = w.dequantize();
        let (mut y, mut yf) = (vec![0.0; m * n], vec![0.0; m * n]);
        matmul_f32(&pool, &x, &deq, &mut yf, m, k, n);
        for level in SimdLevel::available() {
            matmul_int8_scheme(level, Int8Scheme::W8A8, &pool, &x, &w, &mut y, m);
            let num: f64 = y
                .iter()
                .zip(&yf)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            let den: f64 = yf.iter().map(|b| (*b as f64).powi(2)).sum();
            let rel = (num / den).sqrt();
            assert!(rel < 0.01, "{level:?}: relative RMS error {rel}");
        }
    }

    /// The VNNI GEMV takes the 16-bit x as bytes (`q8::split_a16`), the AVX2 one as x16: the
    /// same exact integer group sums, scaled and added in the same order, so the two give the
    /// same bits. x holds groups at full scale (±32639, whose bytes are the extremes) and
    /// weights at ±127; k with and without groups past the last 8 (the scalar tail).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn w8a16_gemv_same_bits_on_avx2_and_vnni() {
        if !(SimdLevel::Avx512.is_available() && has_vnni() && has_f16c()) {
            return;
        }
        let mut rng = Rng(31);
        let pool = ThreadPool::new(2).unwrap();
        // groups: 1, 8, 9, 16 + 2, 16 + 8, 2·16 + 2, 2·16 + 8 + 3, 11·16
        for &(k, n) in &[(32, 5), (256, 9), (288, 33), (576, 19), (768, 7), (1088, 17), (1376, 6), (5632, 3)] {
            let mut wf = rng.vec(n * k);
            for (p, v) in wf.iter_mut().enumerate() {
                if p % 37 == 0 {
                    *v = if p % 2 == 0 { 4.0 } else { -4.0 }; // ±127 in its group
                }
            }
            let w = QuantizedI8::quantize(&wf, n, k);
            for m in 1..GEMM_ROWS {
                let mut x = rng.vec(m * k);
                for (p, v) in x.iter_mut().enumerate() {
                    match p % 29 {
                        0 => *v = 3.0,   // +32639 (and -32639 below) in its group
                        1 => *v = -3.0,
                        _ => {}
                    }
                }
                let (mut a, mut b) = (vec![0.0; m * n], vec![0.0; m * n]);
                matmul_int8_scheme(SimdLevel::Avx2, Int8Scheme::W8A16, &pool, &x, &w, &mut a, m);
                matmul_int8_scheme(SimdLevel::Avx512, Int8Scheme::W8A16, &pool, &x, &w, &mut b, m);
                for (idx, (p, q)) in a.iter().zip(&b).enumerate() {
                    assert_eq!(p.to_bits(), q.to_bits(), "k={k} n={n} m={m} at {idx}: {p} vs {q}");
                }
            }
        }
    }

    /// `q8::split_a16` against its definition: hi = (x16 + 128) >> 8, lo = x16 − 256·hi, and
    /// their sums per group, over every 7th value the quantizer makes (±32639) and the values
    /// where hi or lo turns over.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn split_a16_matches_its_definition() {
        if !SimdLevel::Avx2.is_available() {
            return;
        }
        let vals: Vec<i16> = (-32639..=32639).step_by(7).chain([-32639, -32638, -129, -128, -127, 127, 128, 255, 256, 32639]).collect();
        let kp = vals.len().div_ceil(32) * 32;
        let mut x16 = vals.clone();
        x16.resize(2 * kp, 0);
        x16[kp..].copy_from_slice(&vals.iter().rev().copied().chain(std::iter::repeat(32639)).take(kp).collect::<Vec<_>>());
        let (m, ng) = (2, kp / 32);
        let (mut hi, mut lo) = (vec![0i8; m * kp], vec![0i8; m * kp]);
        let (mut ch, mut cl) = (vec![0i32; m * ng], vec![0i32; m * ng]);
        let out = q8::XOut {
            q: std::ptr::null_mut(),
            a: std::ptr::null_mut(),
            x16: std::ptr::null_mut(),
            s: std::ptr::null_mut(),
            c: std::ptr::null_mut(),
            f: std::ptr::null_mut(),
            hi: hi.as_mut_ptr(),
            lo: lo.as_mut_ptr(),
            ch: ch.as_mut_ptr(),
            cl: cl.as_mut_ptr(),
            need: Need { abs: false, wide: false, a16: true, split: true, quads: false },
        };
        // SAFETY: x16 and the outputs hold m rows of kp / ng values; AVX2 checked above.
        unsafe { q8::split_a16(x16.as_ptr(), kp, ng, 0..m, out) };
        for i in 0..m {
            for gi in 0..ng {
                let (mut sh, mut sl) = (0, 0);
                for p in i * kp + 32 * gi..i * kp + 32 * gi + 32 {
                    let v = i32::from(x16[p]);
                    let top = (v + 128) >> 8;
                    assert!((-127..=127).contains(&top) && (-128..=127).contains(&(v - 256 * top)), "{v}");
                    assert_eq!((i32::from(hi[p]), i32::from(lo[p])), (top, v - 256 * top), "x16 = {v}");
                    sh += top;
                    sl += v - 256 * top;
                }
                assert_eq!((ch[i * ng + gi], cl[i * ng + gi]), (sh, sl), "row {i} group {gi}");
            }
        }
    }

    #[test]
    fn special_x_values() {
        // Row 0: NaN in a whole group (the SIMD quantizer); row 1: inf in the short last
        // group (the scalar one); row 2: all below 1e-30 (W8A8 quantizes it to zero);
        // other rows finite. m = 4 takes the GEMV path, m = 9 the GEMM.
        let pool = ThreadPool::new(1).unwrap();
        let (k, n) = (70, 5);
        let mut rng = Rng(1);
        let w = QuantizedI8::quantize(&rng.vec(n * k), n, k);
        for level in SimdLevel::available() {
            for m in [4, 9] {
                let mut x = rng.vec(m * k);
                x[3] = f32::NAN;
                x[k + 68] = f32::INFINITY;
                x[2 * k..3 * k].iter_mut().for_each(|v| *v *= 1e-31);
                let mut y = vec![0.0; m * n];
                matmul_int8_scheme(level, Int8Scheme::W8A8, &pool, &x, &w, &mut y, m);
                let row = |r: usize| &y[r * n..(r + 1) * n];
                assert!(
                    row(0).iter().all(|v| v.is_nan()),
                    "{level:?} m={m}: {:?}",
                    row(0)
                );
                assert!(
                    row(1).iter().all(|v| v.is_nan()),
                    "{level:?} m={m}: {:?}",
                    row(1)
                );
                assert!(
                    row(2).iter().all(|&v| v == 0.0),
                    "{level:?} m={m}: {:?}",
                    row(2)
                );
                assert!(y[3 * n..].iter().all(|v| v.is_finite()), "{level:?} m={m}");
                for scheme in [Int8Scheme::WeightOnly, Int8Scheme::Bf16] {
                    matmul_int8_scheme(level, scheme, &pool, &x, &w, &mut y, m);
                    assert!(y[..2 * n].iter().all(|v| !v.is_finite()), "{level:?} {scheme:?} m={m}");
                    assert!(y[2 * n..].iter().all(|v| v.is_finite()), "{level:?} {scheme:?} m={m}");
                }
            }
        }
    }

    #[test]
    fn zero_sized_shapes() {
        let pool = ThreadPool::new(2).unwrap();
        for level in SimdLevel::available() {
            for scheme in SCHEMES {
                let w = QuantizedI8::quantize(&[], 3, 0);
                let mut y = vec![5.0f32; 6];
                matmul_int8_scheme(level, scheme, &pool, &[], &w, &mut y, 2);
                assert!(y.iter().all(|&v| v == 0.0));
                let w = QuantizedI8::quantize(&[1.0; 4], 1, 4);
                matmul_int8_scheme(level, scheme, &pool, &[], &w, &mut [], 0);
                let w = QuantizedI8::quantize(&[], 0, 4);
                matmul_int8_scheme(level, scheme, &pool, &[1.0; 4], &w, &mut [], 1);
            }
        }
    }

    #[test]
    fn writes_only_inside_y() {
        let mut rng = Rng(11);
        let pool = ThreadPool::new(2).unwrap();
        for level in SimdLevel::available() {
            for scheme in SCHEMES {
                for &(m, k, n) in &[(1, 37, 11), (5, 37, 11), (9, 70, 50)] {
                    let xb = rng.vec(m * k + 2);
                    let w = QuantizedI8::quantize(&rng.vec(n * k), n, k);
                    let mut yb = vec![7.0f32; m * n + 2];
                    matmul_int8_scheme(
                        level,
                        scheme,
                        &pool,
                        &xb[1..=m * k],
                        &w,
                        &mut yb[1..=m * n],
                        m,
                    );
                    assert_eq!((yb[0], yb[m * n + 1]), (7.0, 7.0), "{level:?} {scheme:?}");
                    let want = reference_deq(&xb[1..=m * k], &w, m);
                    for (g, r) in yb[1..=m * n].iter().zip(want) {
                        assert!(
                            (*g as f64 - r).abs() < 0.05,
                            "{level:?} {scheme:?}: {g} vs {r}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    #[should_panic(expected = "x must be [m, k]")]
    fn rejects_bad_x_length() {
        let pool = ThreadPool::new(1).unwrap();
        let w = QuantizedI8::quantize(&[0.0; 6], 2, 3);
        matmul_int8(&pool, &[0.0; 5], &w, &mut [0.0; 4], 2);
    }

    #[test]
    #[should_panic(expected = "w.scales must be")]
    fn rejects_inconsistent_weights() {
        let pool = ThreadPool::new(1).unwrap();
        let mut w = QuantizedI8::quantize(&[0.0; 6], 2, 3);
        w.scales = w.scales[..w.scales.len() - 1].to_vec().into();
        matmul_int8(&pool, &[0.0; 6], &w, &mut [0.0; 4], 2);
    }

    #[test]
    fn unavailable_level_panics() {
        for level in [SimdLevel::Avx2, SimdLevel::Avx512, SimdLevel::Neon] {
            if !level.is_available() {
                let r = std::panic::catch_unwind(|| {
                    let pool = ThreadPool::new(1).unwrap();
                    let w = QuantizedI8::quantize(&[1.0], 1, 1);
                    matmul_int8_with(level, &pool, &[1.0], &w, &mut [0.0], 1)
                });
                assert!(r.is_err(), "{level:?} should be refused");
            }
        }
    }

    fn env_list(name: &str, default: &str) -> Vec<String> {
        std::env::var(name)
            .unwrap_or_else(|_| default.to_string())
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Throughput check (run by hand):
    /// `cargo test --release --lib matmul_int8 -- --ignored --nocapture`
    ///
    /// Benches the AVX2 path (forced) and the detected best path. GEMV "cold" rotates over
    /// enough weight copies to exceed the caches, like decode; GB/s counts the weight bytes
    /// (int8 + f16 scales). Knobs: `BENCH_ONLY=gemv|gemm|small`, `BENCH_GROUPS=32,64,128`
    /// (default: GROUP), `BENCH_SCHEMES=w8a8,weight,w8a16,bf16` (default: the dispatched scheme),
    /// `BENCH_GEMV=2048x5632,...` (n×k).
    #[test]
    #[ignore]
    fn bench_matmul_int8() {
        let only = std::env::var("BENCH_ONLY").unwrap_or_default();
        let groups: Vec<usize> = env_list("BENCH_GROUPS", &GROUP.to_string())
            .iter()
            .map(|g| g.parse().expect("BENCH_GROUPS"))
            .collect();
        let schemes: Vec<Option<Int8Scheme>> = env_list("BENCH_SCHEMES", "auto")
            .iter()
            .map(|s| match s.as_str() {
                "w8a8" => Some(Int8Scheme::W8A8),
                "weight" => Some(Int8Scheme::WeightOnly),
                "w8a16" => Some(Int8Scheme::W8A16),
                "bf16" => Some(Int8Scheme::Bf16),
                _ => None,
            })
            .collect();
        let mut levels = vec![simd::detected()];
        if SimdLevel::Avx2.is_available() && simd::detected() != SimdLevel::Avx2 {
            levels.insert(0, SimdLevel::Avx2);
        }
        let name = |level: SimdLevel, sc: Option<Int8Scheme>, m: usize| match sc.unwrap_or(int8_scheme_for(level, m, GROUP)) {
            Int8Scheme::W8A8 => "w8a8",
            Int8Scheme::WeightOnly => "weight",
            Int8Scheme::W8A16 => "w8a16",
            Int8Scheme::Bf16 => "bf16",
        };
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
            let default_gemv = "576x1536,1536x576,49152x576,2048x2048,5632x2048,2048x5632";
            let gemv: Vec<(usize, usize)> = env_list("BENCH_GEMV", default_gemv)
                .iter()
                .map(|s| {
                    let (n, k) = s.split_once('x').expect("BENCH_GEMV: NxK,...");
                    (n.parse().expect("N"), k.parse().expect("K"))
                })
                .collect();
            for &group in &groups {
                for &(n, k) in gemv.iter().filter(|_| only.is_empty() || only == "gemv") {
                    let proto = QuantizedI8::quantize_with_group(&rng.vec(n * k), n, k, group);
                    let bytes = proto.bytes();
                    let copies = ((384 << 20) / bytes + 1).min(64);
                    let ws: Vec<QuantizedI8> = (0..copies)
                        .map(|c| {
                            let mut w = proto.clone();
                            w.q.iter_mut()
                                .step_by(97)
                                .for_each(|v| *v = (c % 100) as i8);
                            w
                        })
                        .collect();
                    let x = rng.vec(k);
                    let mut y = vec![0.0; n];
                    for &level in &levels {
                        for &sc in &schemes {
                            let scheme = sc.unwrap_or(int8_scheme_for(level, 1, group));
                            let iters = ((1usize << 30) / bytes).clamp(4, 4000).max(copies);
                            let cold = best_time(5, iters, |it| {
                                let w = &ws[it % copies];
                                matmul_int8_scheme(level, scheme, &pool, &x, w, &mut y, 1)
                            });
                            let hot = best_time(5, iters, |_| {
                                matmul_int8_scheme(level, scheme, &pool, &x, &ws[0], &mut y, 1)
                            });
                            println!(
                                "GEMV {:<6} {:<6} g={group:<3} threads={threads} n={n:>5} k={k:<5} \
                                 cold {:6.1} GB/s ({:7.1} µs)  hot {:6.1} GB/s",
                                level.name(),
                                name(level, sc, 1),
                                bytes as f64 / cold / 1e9,
                                cold * 1e6,
                                bytes as f64 / hot / 1e9
                            );
                        }
                    }
                }
                let gemm: &[(usize, usize, usize)] = &[(128, 576, 1536), (128, 2048, 2048)];
                let small: &[(usize, usize, usize)] = &[
                    (2, 2048, 2048),
                    (3, 2048, 2048),
                    (4, 2048, 2048),
                    (5, 2048, 2048),
                    (8, 2048, 2048),
                    (16, 2048, 2048),
                    (32, 2048, 2048),
                    (64, 2048, 2048),
                    (128, 2048, 2048),
                    (128, 576, 1536),
                ];
                let shapes = match only.as_str() {
                    "" | "gemm" => gemm,
                    "small" => small,
                    _ => &[],
                };
                for &(m, k, n) in shapes {
                    let x = rng.vec(m * k);
                    let w = QuantizedI8::quantize_with_group(&rng.vec(n * k), n, k, group);
                    let mut y = vec![0.0; m * n];
                    let flops = 2.0 * (m * n * k) as f64;
                    for &level in &levels {
                        for &sc in &schemes {
                            let scheme = sc.unwrap_or(int8_scheme_for(level, m, group));
                            let iters = ((4e9 / flops) as usize).clamp(3, 2000);
                            let s = best_time(5, iters, |_| {
                                matmul_int8_scheme(level, scheme, &pool, &x, &w, &mut y, m)
                            });
                            println!(
                                "GEMM {:<6} {:<6} g={group:<3} threads={threads} m={m} {k}->{n}: \
                                 {:6.1} GFLOP/s ({:.2} ms)",
                                level.name(),
                                name(level, sc, m),
                                flops / s / 1e9,
                                s * 1e3
                            );
                        }
                    }
                }
            }
        }
    }

    /// The batched decode step's GEMV (W8A16, `RowPath::Gemv`) on llama-135m's matrices, weights
    /// cold (a model's worth of copies rotated): µs per step of all 30 layers' matrices at
    /// m = 1, 2, 4, 8 rows of x, and the aggregate rows/s against m = 1. Run by hand:
    /// `cargo test --release --lib bench_batched_gemv -- --ignored --nocapture`
    /// (`BENCH_THREADS=1,2`, `BENCH_ROWS=1,2,4,8`).
    #[test]
    #[ignore]
    fn bench_batched_gemv() {
        let mut rng = Rng(7);
        // (n, k) of one layer: fused qkv, o, fused gate/up, down
        let shapes = [(960usize, 576usize), (576, 576), (3072, 576), (576, 1536)];
        let layers = 30;
        let ws: Vec<Vec<QuantizedI8>> = (0..layers)
            .map(|_| shapes.iter().map(|&(n, k)| QuantizedI8::quantize(&rng.vec(n * k), n, k)).collect())
            .collect();
        let rows: Vec<usize> = env_list("BENCH_ROWS", "1,2,4,8").iter().map(|s| s.parse().expect("BENCH_ROWS")).collect();
        for threads in env_list("BENCH_THREADS", "1,2").iter().map(|s| s.parse::<usize>().expect("BENCH_THREADS")) {
            let pool = ThreadPool::new(threads).unwrap();
            let mut base = 0.0;
            for &m in &rows {
                let xs: Vec<Vec<f32>> = shapes.iter().map(|&(_, k)| rng.vec(m * k)).collect();
                let mut ys: Vec<Vec<f32>> = shapes.iter().map(|&(n, _)| vec![0.0; m * n]).collect();
                let s = best_time(7, 3, |_| {
                    for layer in &ws {
                        for ((w, x), y) in layer.iter().zip(&xs).zip(ys.iter_mut()) {
                            matmul_int8_a16_path(&pool, x, w, y, m, RowPath::Gemv);
                        }
                    }
                });
                if m == 1 {
                    base = s;
                }
                println!(
                    "batched GEMV w8a16 threads={threads} m={m}: {:7.1} µs per step, {:5.2}× the rows/s of m=1",
                    s * 1e6,
                    if base > 0.0 { m as f64 * base / s } else { f64::NAN }
                );
            }
        }
    }

    /// Approximately normal values (Irwin-Hall of 4 uniforms), scaled.
    fn normalish(rng: &mut Rng, n: usize, sigma: f32) -> Vec<f32> {
        (0..n)
            .map(|_| (rng.next() + rng.next() + rng.next() + rng.next()) * 0.866 * sigma)
            .collect()
    }

    /// Relative RMS error ‖a − b‖ / ‖b‖.
    fn rel_rms(a: &[f32], b: &[f32]) -> f64 {
        let num: f64 = a.iter().zip(b).map(|(p, q)| ((p - q) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|q| (*q as f64).powi(2)).sum();
        (num / den).sqrt()
    }

    /// Numerical error of each scheme and group size (run by hand):
    /// `cargo test --release --lib int8_error_report -- --ignored --nocapture`
    ///
    /// Relative RMS error of y against the f32 matmul of the dequantized weights ("vs deq",
    /// the error the scheme adds on top of weight quantization) and of the original f32
    /// weights ("vs f32", the total). x is normal-ish, plain or with a few 20× outlier
    /// channels (as LLM activations have); w is normal-ish (σ 0.02).
    #[test]
    #[ignore]
    fn int8_error_report() {
        let pool = ThreadPool::new(2).unwrap();
        let mut rng = Rng(2024);
        let (m, k, n) = (16, 2048, 512);
        let w = normalish(&mut rng, n * k, 0.02);
        let mut yf = vec![0.0; m * n];
        for outliers in [false, true] {
            let mut x = normalish(&mut rng, m * k, 1.0);
            if outliers {
                for i in 0..m {
                    for c in [7, 300, 1234, 2000] {
                        x[i * k + c] *= 20.0;
                    }
                }
            }
            matmul_f32(&pool, &x, &w, &mut yf, m, k, n);
            for group in [32, 64, 128] {
                let qw = QuantizedI8::quantize_with_group(&w, n, k, group);
                let deq = qw.dequantize();
                let mut yd = vec![0.0; m * n];
                matmul_f32(&pool, &x, &deq, &mut yd, m, k, n);
                for scheme in SCHEMES {
                    let mut y = vec![0.0; m * n];
                    matmul_int8_scheme(simd::detected(), scheme, &pool, &x, &qw, &mut y, m);
                    println!(
                        "x outliers={outliers:<5} group={group:<3} {scheme:<10?}: vs deq {:.2e}  vs f32 {:.2e}",
                        rel_rms(&y, &yd),
                        rel_rms(&y, &yf)
                    );
                }
            }
        }
    }
}
