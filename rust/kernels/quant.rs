//! Reduced-precision weight formats (pure functions; the matmuls live in `matmul.rs`,
//! `matmul_int8.rs` and `matmul_int4.rs`).
//!
//! - **BF16**: the upper 16 bits of an IEEE f32. [`f32_to_bf16`] rounds to nearest, ties to
//!   even; NaN stays NaN (made quiet), ±inf and signed zeros are kept, subnormals round like
//!   any other value. [`bf16_to_f32`] is exact (a 16-bit shift).
//! - **INT8** ([`QuantizedI8`]): symmetric, per output row, with groups of [`GROUP`]
//!   consecutive input elements sharing one f16 scale, `scale = f16(max|w| / (127 + j))` with
//!   the j in -16..=0 that gives the group the least squared error (`SCALE_SEARCH`),
//!   `q = round(w / scale)` in [-127, 127] (a zero group has scale 0 and all-zero q).
//!   The dequantized weight is `q as f32 * scale`; `|w - q·scale| ≤ scale / 2`.

use crate::error::{Error, Result};
use crate::arena::Buf;

/// f32 → bf16 bits, rounding to nearest with ties to even. NaN maps to a quiet NaN with
/// the same sign; values beyond the largest finite bf16 round to ±inf (as RNE does).
#[inline]
pub fn f32_to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    if x.is_nan() {
        // Keep sign and the top payload bits; set the quiet bit so a signalling NaN whose
        // payload lives only in the low 16 bits cannot turn into an infinity.
        return ((bits >> 16) as u16) | 0x0040;
    }
    // Adding 0x7fff (+1 when the kept lsb is odd) carries into the kept half exactly when
    // the dropped half is above one half ulp, or exactly one half and the kept lsb is odd.
    let lsb = (bits >> 16) & 1;
    (bits.wrapping_add(0x7fff + lsb) >> 16) as u16
}

/// bf16 bits → f32 (exact).
#[inline]
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits(u32::from(b) << 16)
}

/// `dst[i] = f32_to_bf16(src[i])`. Panics if the lengths differ.
pub fn f32_to_bf16_slice(src: &[f32], dst: &mut [u16]) {
    assert_eq!(src.len(), dst.len(), "f32_to_bf16_slice: length mismatch");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = f32_to_bf16(s);
    }
}

/// `dst[i] = bf16_to_f32(src[i])`. Panics if the lengths differ.
pub fn bf16_to_f32_slice(src: &[u16], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "bf16_to_f32_slice: length mismatch");
    for (d, &s) in dst.iter_mut().zip(src) {
        *d = bf16_to_f32(s);
    }
}

/// A whole f32 tensor as bf16 bits.
pub fn f32_to_bf16_vec(src: &[f32]) -> Vec<u16> {
    src.iter().map(|&v| f32_to_bf16(v)).collect()
}

/// Input elements per INT8 scale group: 32.
///
/// Chosen by measurement among 32 / 64 / 128. Kernel cost first (2-core AMD EPYC Zen 4, W8A8 matmul, 2 threads,
/// best of runs of `BENCH_GROUPS=32,64,128 cargo test --release --lib bench_matmul_int8 --
/// --ignored --nocapture` and `int8_error_report`):
///
/// | group | bytes/weight | GEMV 2048×2048 (AVX-512) | GEMM m=128 2048² VNNI | err vs f32 w | err, x outliers |
/// |-------|--------------|--------------------------|-----------------------|--------------|-----------------|
/// | 32    | 1.125        | 145 µs                   | 600 GFLOP/s           | 7.2e-3       | 1.0e-2          |
/// | 64    | 1.0625       | 141 µs                   | 640 GFLOP/s           | 7.8e-3       | 1.3e-2          |
/// | 128   | 1.031        | 144 µs                   | 720 GFLOP/s           | 8.3e-3       | 1.75e-2         |
///
/// Decode streams at the same GB/s for all three, so its time follows the bytes per weight
/// (the scales cost 12.5 / 6.25 / 3.1 %). Prefill pays a per-group rescale (about 1/8 of
/// the integer work at 32 with VNNI). The error (relative RMS of y; weight-only error alone
/// is 5.1 / 5.5 / 5.8e-3) grows with the group, steeply when a group of x holds an outlier
/// (common in LLM activations).
///
/// Then quality on the real model, which decides: perplexity of SmolLM2-135M-Instruct on
/// the fixed evaluation text (FP32: 13.2416), W8A8 as shipped / weight-only for comparison:
///
/// | group | W8A8 perplexity | vs FP32 | weight-only perplexity | vs FP32 |
/// |-------|-----------------|---------|------------------------|---------|
/// | 32    | 13.3139         | +0.55 % | 13.2228                | -0.14 % |
/// | 64    | 13.4172         | +1.33 % | 13.3505                | +0.82 % |
/// | 128   | 13.5074         | +2.01 % | 13.3613                | +0.90 % |
///
/// Only 32 keeps W8A8 within 1 % of FP32, for 6 % more decode bytes than 64; it is also
/// the block size of GGUF's Q8_0, whose tensors then load without requantizing.
pub const GROUP: usize = 32;

/// Quantizes `w: [rows, cols]` into `q` and `scales` (see [`QuantizedI8`]).
fn quantize_rows(w: &[f32], rows: usize, cols: usize, group: usize, q: &mut [i8], scales: &mut [u16]) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is available (checked above).
        return unsafe { quantize_rows_avx2(w, rows, cols, group, q, scales) };
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.1") {
        // SAFETY: SSE4.1 is available (checked above).
        return unsafe { quantize_rows_sse41(w, rows, cols, group, q, scales) };
    }
    quantize_rows_generic(w, rows, cols, group, q, scales)
}

/// The same code with SSE4.1 enabled, so `round` compiles to `roundss` instead of a libm call
/// (same results: round half away from zero).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "sse4.1")]
unsafe fn quantize_rows_sse41(w: &[f32], rows: usize, cols: usize, group: usize, q: &mut [i8], scales: &mut [u16]) {
    quantize_rows_generic(w, rows, cols, group, q, scales)
}

/// The same code on 256-bit registers (the scale search's error sums vectorize 8 wide).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn quantize_rows_avx2(w: &[f32], rows: usize, cols: usize, group: usize, q: &mut [i8], scales: &mut [u16]) {
    quantize_rows_generic(w, rows, cols, group, q, scales)
}

#[inline(always)]
fn quantize_rows_generic(w: &[f32], rows: usize, cols: usize, group: usize, q: &mut [i8], scales: &mut [u16]) {
    let ng = cols.div_ceil(group);
    for i in 0..rows {
        let wr = &w[i * cols..(i + 1) * cols];
        let qr = &mut q[i * cols..(i + 1) * cols];
        for (g, (wg, qg)) in wr.chunks(group).zip(qr.chunks_mut(group)).enumerate() {
            let amax = wg.iter().fold(0f32, |a, v| a.max(v.abs()));
            let (scale, half) = best_scale(wg, amax);
            scales[i * ng + g] = half;
            if scale == 0.0 || !scale.is_finite() {
                continue; // q stays 0
            }
            for (qv, &wv) in qg.iter_mut().zip(wg) {
                *qv = (wv / scale).round().clamp(-127.0, 127.0) as i8;
            }
        }
    }
}

/// The scales the INT8 quantizer tries for a group: `max|w| / (127 + j)`, j in this range, tried
/// from 0 (the plain `max|w| / 127`) down. A larger scale leaves the top levels unused but can
/// land more of the group's values near a level. (Smaller scales, which clip the largest
/// values, won under 1 % of the groups of the default model and none of normal-distributed
/// weights; each of -16..0 wins 1-15 %.)
const SCALE_SEARCH: std::ops::RangeInclusive<i32> = -16..=0;

/// Rows·cols from which [`QuantizedI8::quantize_with_group`] splits the rows over threads.
const PARALLEL_QUANTIZE: usize = 1 << 20;

/// The scale of [`SCALE_SEARCH`] with the least squared error `Σ (q·s − w)²` over the group
/// (the first on ties, so never worse than `max|w| / 127` in f16), as f32 and as its f16 bits.
/// Each candidate is rounded to f16 before it is tried, so the error measured is the error
/// stored. A scale past f16's largest finite value (65504: weights beyond ≈ 8.3e6) saturates
/// there, clipping the group; 0 for an all-zero group, or one whose scale underflows f16.
#[inline(always)]
fn best_scale(wg: &[f32], amax: f32) -> (f32, u16) {
    let to_half = |s: f32| f32_to_f16(s.min(F16_MAX));
    if amax == 0.0 || !amax.is_finite() {
        let h = f32_to_f16(amax / 127.0);
        return (f16_to_f32(h), h);
    }
    let (mut best_err, mut best) = (f32::INFINITY, to_half(amax / 127.0));
    for j in SCALE_SEARCH.rev() {
        let h = to_half(amax / (127 + j) as f32);
        let s = f16_to_f32(h);
        if s == 0.0 {
            continue;
        }
        let err = squared_error(wg, s);
        if err < best_err {
            (best_err, best) = (err, h);
        }
    }
    (f16_to_f32(best), best)
}

/// The largest finite IEEE half.
const F16_MAX: f32 = 65504.0;

/// `Σ (clamp(round(w / s)) · s − w)²` (round half to even: it vectorizes; ties are measure zero
/// for the search). Eight partial sums, so the loop runs on SIMD registers.
#[inline(always)]
fn squared_error(wg: &[f32], s: f32) -> f32 {
    let inv = 1.0 / s;
    let err = |w: f32| {
        let d = (w * inv).round_ties_even().clamp(-127.0, 127.0) * s - w;
        d * d
    };
    let mut acc = [0f32; 8];
    let mut chunks = wg.chunks_exact(8);
    for c in &mut chunks {
        for (a, &w) in acc.iter_mut().zip(c) {
            *a += err(w);
        }
    }
    acc.iter().sum::<f32>() + chunks.remainder().iter().map(|&w| err(w)).sum::<f32>()
}

/// INT8 weights `[rows, cols]` (nn.Linear layout: rows = out, cols = in) with one f16
/// scale per row and group of `group` consecutive columns (the last group of a row may
/// be shorter). Weight `(i, p)` is `q[i·cols + p] as f32 · f16(scales[i·G + p / group])`,
/// G = `cols.div_ceil(group)`. Values lie in [-127, 127] (symmetric; -128 is rejected).
///
/// The scales are IEEE halves, as in GGUF's Q8_0 (whose blocks then load bit for bit): a
/// group of 32 takes 34 bytes instead of 36 with f32 scales, and decode, which streams the
/// weights, reads 5.6 % fewer bytes. The quantizer rounds each candidate scale to f16 before
/// measuring its error (see `best_scale`), so the rounding is part of the search.
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedI8 {
    pub rows: usize,
    pub cols: usize,
    pub group: usize,
    /// q: [rows, cols]
    pub q: Buf<i8>,
    /// scales: [rows, ceil(cols / group)], IEEE half bits
    pub scales: Buf<u16>,
}

impl QuantizedI8 {
    /// Quantizes `w: [rows, cols]` with groups of [`GROUP`]. Panics if `w.len() != rows·cols`.
    /// Weights must be finite (a non-finite value poisons its group).
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> QuantizedI8 {
        Self::quantize_with_group(w, rows, cols, GROUP)
    }

    /// [`quantize`](Self::quantize) with an explicit group size (≥ 1). The SIMD matmul
    /// paths need `group % 32 == 0`; other group sizes run on the portable path.
    pub fn quantize_with_group(w: &[f32], rows: usize, cols: usize, group: usize) -> QuantizedI8 {
        assert!(group >= 1, "quantize: group must be >= 1");
        assert_eq!(
            Some(w.len()),
            rows.checked_mul(cols),
            "quantize: w must be [rows, cols]"
        );
        let ng = cols.div_ceil(group);
        let mut q = vec![0i8; w.len()];
        let mut scales = vec![0u16; rows * ng];
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(rows.max(1));
        if threads > 1 && w.len() >= PARALLEL_QUANTIZE {
            // a one-off at load: the rows split over the CPUs (each row's result is the same)
            let per = rows.div_ceil(threads);
            std::thread::scope(|scope| {
                for ((wc, qc), sc) in w.chunks(per * cols).zip(q.chunks_mut(per * cols)).zip(scales.chunks_mut(per * ng)) {
                    scope.spawn(move || quantize_rows(wc, wc.len() / cols, cols, group, qc, sc));
                }
            });
        } else {
            quantize_rows(w, rows, cols, group, &mut q, &mut scales);
        }
        QuantizedI8 {
            rows,
            cols,
            group,
            q: q.into(),
            scales: scales.into(),
        }
    }

    /// Builds from raw parts (e.g. a checkpoint), checking every length: `q` must hold
    /// `rows·cols` values in [-127, 127], `scales` `rows·ceil(cols/group)` finite values,
    /// and `group >= 1`. Errors are [`Error::Tensor`].
    pub fn from_parts(
        rows: usize,
        cols: usize,
        group: usize,
        q: impl Into<Buf<i8>>,
        scales: impl Into<Buf<u16>>,
    ) -> Result<QuantizedI8> {
        let (q, scales) = (q.into(), scales.into());
        if group == 0 {
            return Err(Error::Tensor("int8 group size must be >= 1".into()));
        }
        let n = rows
            .checked_mul(cols)
            .ok_or_else(|| Error::Tensor(format!("int8 shape {rows}x{cols} overflows")))?;
        if q.len() != n {
            return Err(Error::Tensor(format!(
                "int8 weight has {} values, expected {rows}x{cols}",
                q.len()
            )));
        }
        let ng = cols.div_ceil(group);
        if Some(scales.len()) != rows.checked_mul(ng) {
            return Err(Error::Tensor(format!(
                "int8 scales have {} values, expected {rows}x{ng} (group {group})",
                scales.len()
            )));
        }
        if q.contains(&i8::MIN) {
            return Err(Error::Tensor(
                "int8 weights must lie in [-127, 127] (symmetric quantization)".into(),
            ));
        }
        if let Some(&s) = scales.iter().find(|&&s| !f16_to_f32(s).is_finite()) {
            return Err(Error::Tensor(format!("int8 scale {} is not finite", f16_to_f32(s))));
        }
        Ok(QuantizedI8 {
            rows,
            cols,
            group,
            q,
            scales,
        })
    }

    /// Scale groups per row, `ceil(cols / group)`.
    #[inline]
    pub fn groups_per_row(&self) -> usize {
        self.cols.div_ceil(self.group)
    }

    /// Dequantizes row `i` into `out: [cols]`. Panics if `i >= rows` or `out.len() != cols`.
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        assert!(
            i < self.rows,
            "dequantize_row: row {i} out of range ({} rows)",
            self.rows
        );
        assert_eq!(
            out.len(),
            self.cols,
            "dequantize_row: out must hold cols values"
        );
        let ng = self.groups_per_row();
        let qr = &self.q[i * self.cols..(i + 1) * self.cols];
        let sr = &self.scales[i * ng..(i + 1) * ng];
        for ((og, qg), &h) in out
            .chunks_mut(self.group)
            .zip(qr.chunks(self.group))
            .zip(sr)
        {
            let s = f16_to_f32(h);
            for (o, &qv) in og.iter_mut().zip(qg) {
                *o = f32::from(qv) * s;
            }
        }
    }

    /// The whole dequantized matrix `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize_rows(self.rows, self.cols, |i, row| self.dequantize_row(i, row))
    }

    /// Bytes read by one full matmul (int8 values + f16 scales).
    pub fn bytes(&self) -> usize {
        self.q.len() + self.scales.len() * 2
    }
}

/// IEEE half → f32, exact (subnormals, ±inf and NaN included).
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // subnormal half: frac · 2^-24
            let v = frac as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// f32 → IEEE half bits, rounding to nearest with ties to even (overflow to ±inf, NaN kept
/// quiet, subnormals rounded like any other value).
pub fn f32_to_f16(x: f32) -> u16 {
    let bits = x.to_bits();
    let sign = ((bits >> 16) & 0x8000) as u16;
    let exp = ((bits >> 23) & 0xff) as i32;
    let man = bits & 0x007f_ffff;
    if exp == 0xff {
        return sign | 0x7c00 | if man != 0 { 0x0200 | (man >> 13) as u16 } else { 0 };
    }
    let e = exp - 127 + 15;
    if e >= 0x1f {
        return sign | 0x7c00;
    }
    // the value's bits below the kept 10 (or fewer, for a subnormal half), rounded to even
    let (m, shift) = if e <= 0 {
        if e < -10 {
            return sign; // below half the smallest subnormal: ±0
        }
        (man | 0x0080_0000, (14 - e) as u32)
    } else {
        (man, 13u32)
    };
    let kept = m >> shift;
    let rest = m & ((1 << shift) - 1);
    let half = 1 << (shift - 1);
    let round = u32::from(rest > half || (rest == half && kept & 1 == 1));
    let out = if e <= 0 { kept + round } else { ((e as u32) << 10 | kept) + round };
    sign | out as u16 // a carry out of the mantissa bumps the exponent, as it should
}

/// Input elements per INT4 group: 32, the block of GGUF's Q4_0 / Q4_1 (and the sub-block of
/// Q4_K), so those tensors load by copying their nibbles and scales.
pub const I4_GROUP: usize = 32;
/// Packed bytes per INT4 group (32 nibbles).
pub const I4_GROUP_BYTES: usize = I4_GROUP / 2;

/// INT4 weights `[rows, cols]` (nn.Linear layout), asymmetric, in groups of [`I4_GROUP`]
/// consecutive inputs: weight `(i, p)` is `q · d + m` with `q` in [0, 15] and one scale `d`
/// and one minimum `m` per row and group, both IEEE half (f16) — exactly GGUF's Q4_1 block,
/// 0.625 bytes per weight.
///
/// One format holds both GGUF 4-bit kinds exactly: Q4_1 blocks are copied (nibbles, d, m);
/// Q4_0 blocks (`(q − 8)·d`) get `m = −8·d` (exact in f16: a power-of-two multiple), and
/// `q·d + (−8·d)` is `(q − 8)·d` exactly in f32. The kernels widen d and m to f32 (F16C on
/// x86, 8 groups per instruction), which costs nothing next to the bytes saved.
///
/// `q` keeps GGUF's nibble layout: each group is 16 bytes, byte `t` holding value `t` in its
/// low nibble and value `t + 16` in its high nibble; a row is `ceil(cols / 32)` groups (a
/// short last group is padded with q = 0, which the kernels multiply by zero-padded x).
#[derive(Debug, Clone, PartialEq)]
pub struct QuantizedI4 {
    pub rows: usize,
    pub cols: usize,
    /// q: [rows, ceil(cols / 32) · 16] packed nibbles
    pub q: Buf<u8>,
    /// d: [rows, ceil(cols / 32)] f16 bits
    pub scales: Buf<u16>,
    /// m: [rows, ceil(cols / 32)] f16 bits
    pub mins: Buf<u16>,
}

/// GGUF block kinds that hold 32 values each and map exactly onto a ferrolm weight format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgufBlock {
    /// f16 d, 32 × i8: `q · d` (→ [`QuantizedI8`], group 32).
    Q8_0,
    /// f16 d, 16 bytes of nibbles: `(q − 8) · d` (→ [`QuantizedI4`]).
    Q4_0,
    /// f16 d, f16 m, 16 bytes of nibbles: `q · d + m` (→ [`QuantizedI4`]).
    Q4_1,
}

impl GgufBlock {
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "Q8_0" => Ok(GgufBlock::Q8_0),
            "Q4_0" => Ok(GgufBlock::Q4_0),
            "Q4_1" => Ok(GgufBlock::Q4_1),
            other => Err(Error::InvalidArgument(format!("GGUF block type '{other}' is not read as raw blocks (Q8_0, Q4_0, Q4_1 are)"))),
        }
    }

    /// Bytes per block of 32 values.
    pub fn block_bytes(self) -> usize {
        match self {
            GgufBlock::Q8_0 => 34,
            GgufBlock::Q4_0 => 18,
            GgufBlock::Q4_1 => 20,
        }
    }
}

/// A GGUF tensor of whole blocks, parsed into the weight format that holds it exactly.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufWeight {
    I8(QuantizedI8),
    I4(QuantizedI4),
}

impl GgufWeight {
    /// Parses `[rows, cols]` values stored as `kind` blocks (32 values along a row each).
    /// Errors ([`Error::Tensor`]) for a shape that is not whole blocks, a byte count that does
    /// not match it, or a Q4_0 scale so large that −8·d overflows f16 (|d| > 8188).
    pub fn from_blocks(kind: GgufBlock, rows: usize, cols: usize, bytes: &[u8]) -> Result<GgufWeight> {
        let ng = cols / 32;
        let needed = rows.checked_mul(ng).and_then(|n| n.checked_mul(kind.block_bytes()));
        if rows == 0 || cols == 0 || !cols.is_multiple_of(32) || needed != Some(bytes.len()) {
            return Err(Error::Tensor(format!(
                "a {kind:?} tensor of shape [{rows}, {cols}] needs whole blocks of 32 values and {} bytes, got {}",
                needed.map_or("too many".to_string(), |n| n.to_string()),
                bytes.len()
            )));
        }
        let half = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
        let what = "a GGUF block tensor";
        if kind == GgufBlock::Q8_0 {
            let mut scales = crate::memory::with_capacity(rows * ng, what)?;
            let mut q = crate::memory::with_capacity(rows * cols, what)?;
            for block in bytes.chunks_exact(kind.block_bytes()) {
                scales.push(half(block, 0));
                q.extend(block[2..].iter().map(|&b| b as i8));
            }
            return Ok(GgufWeight::I8(QuantizedI8 { rows, cols, group: 32, q: q.into(), scales: scales.into() }));
        }
        let mut scales = crate::memory::with_capacity(rows * ng, what)?;
        let mut q = crate::memory::with_capacity(rows * ng * I4_GROUP_BYTES, what)?;
        let mut mins = crate::memory::with_capacity(rows * ng, what)?;
        for block in bytes.chunks_exact(kind.block_bytes()) {
            let d = half(block, 0);
            let (m, nibbles) = match kind {
                GgufBlock::Q4_0 => {
                    let m = f32_to_f16(-8.0 * f16_to_f32(d));
                    if f16_to_f32(m) != -8.0 * f16_to_f32(d) && !f16_to_f32(d).is_nan() {
                        return Err(Error::Tensor(format!("Q4_0 block scale {} is too large for −8·d in f16", f16_to_f32(d))));
                    }
                    (m, &block[2..])
                }
                _ => (half(block, 2), &block[4..]),
            };
            scales.push(d);
            mins.push(m);
            q.extend_from_slice(nibbles);
        }
        Ok(GgufWeight::I4(QuantizedI4 { rows, cols, q: q.into(), scales: scales.into(), mins: mins.into() }))
    }

    /// The values as f32 `[rows, cols]` (what the gguf package's dequantize gives).
    pub fn dequantize(&self) -> Vec<f32> {
        match self {
            GgufWeight::I8(q) => q.dequantize(),
            GgufWeight::I4(q) => q.dequantize(),
        }
    }
}

impl QuantizedI4 {
    /// Groups per row, `ceil(cols / 32)`.
    #[inline]
    pub fn groups_per_row(&self) -> usize {
        self.cols.div_ceil(I4_GROUP)
    }

    /// Packed bytes per row.
    #[inline]
    pub fn row_bytes(&self) -> usize {
        self.groups_per_row() * I4_GROUP_BYTES
    }

    /// Quantizes `w: [rows, cols]` per row and group of 32 as llama.cpp's Q4_1 does:
    /// `m = f16(min)`, `d = f16((max − min) / 15)`, `q = round((w − m) / d)` in [0, 15] (a
    /// constant group has d = 0 and q = 0), so `|w − (q·d + m)| ≤ d / 2` up to the f16
    /// rounding of d and m. Panics if `w.len() != rows·cols`. Weights must be finite.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> QuantizedI4 {
        assert_eq!(Some(w.len()), rows.checked_mul(cols), "quantize: w must be [rows, cols]");
        let ng = cols.div_ceil(I4_GROUP);
        let mut q = vec![0u8; rows * ng * I4_GROUP_BYTES];
        let mut scales = vec![0u16; rows * ng];
        let mut mins = vec![0u16; rows * ng];
        if cols > 0 {
            for (i, wr) in w.chunks_exact(cols).enumerate() {
                for (g, wg) in wr.chunks(I4_GROUP).enumerate() {
                    let (lo, hi) = wg.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
                    let at = i * ng + g;
                    scales[at] = f32_to_f16((hi - lo) / 15.0);
                    mins[at] = f32_to_f16(lo);
                    let (d, m) = (f16_to_f32(scales[at]), f16_to_f32(mins[at]));
                    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
                    let qg = &mut q[at * I4_GROUP_BYTES..(at + 1) * I4_GROUP_BYTES];
                    for (t, &v) in wg.iter().enumerate() {
                        let v = ((v - m) * id).round().clamp(0.0, 15.0) as u8;
                        qg[t % 16] |= if t < 16 { v } else { v << 4 };
                    }
                }
            }
        }
        QuantizedI4 { rows, cols, q: q.into(), scales: scales.into(), mins: mins.into() }
    }

    /// Builds from raw parts (e.g. a checkpoint), checking every length and that scales and
    /// minimums are finite. Errors are [`Error::Tensor`].
    pub fn from_parts(rows: usize, cols: usize, q: impl Into<Buf<u8>>, scales: impl Into<Buf<u16>>, mins: impl Into<Buf<u16>>) -> Result<QuantizedI4> {
        let (q, scales, mins) = (q.into(), scales.into(), mins.into());
        let ng = cols.div_ceil(I4_GROUP);
        let groups = rows.checked_mul(ng).ok_or_else(|| Error::Tensor(format!("int4 shape {rows}x{cols} overflows")))?;
        if Some(q.len()) != groups.checked_mul(I4_GROUP_BYTES) {
            return Err(Error::Tensor(format!("int4 weight has {} bytes, expected {rows}x{} for {rows}x{cols} values", q.len(), ng * I4_GROUP_BYTES)));
        }
        for (what, v) in [("scales", &scales), ("minimums", &mins)] {
            if v.len() != groups {
                return Err(Error::Tensor(format!("int4 {what} have {} values, expected {rows}x{ng}", v.len())));
            }
            if let Some(&s) = v.iter().find(|&&s| s & 0x7c00 == 0x7c00) {
                return Err(Error::Tensor(format!("int4 {what} hold {}, which is not finite", f16_to_f32(s))));
            }
        }
        Ok(QuantizedI4 { rows, cols, q, scales, mins })
    }

    /// Value `t` (0..32) of packed group `qg` (16 bytes).
    #[inline(always)]
    pub fn nibble(qg: &[u8], t: usize) -> u8 {
        if t < 16 {
            qg[t] & 0x0f
        } else {
            qg[t - 16] >> 4
        }
    }

    /// The q values of row `i` unpacked into `out: [cols]` (each in [0, 15]).
    pub fn unpack_row(&self, i: usize, out: &mut [i8]) {
        assert!(i < self.rows && out.len() == self.cols, "unpack_row: row {i} of {} into {} values", self.rows, out.len());
        let rb = self.row_bytes();
        unpack_nibbles(&self.q[i * rb..(i + 1) * rb], out, 0);
    }

    /// Dequantizes row `i` into `out: [cols]` (`q·d + m` in f32, as GGUF dequantizes Q4_1).
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        assert!(i < self.rows && out.len() == self.cols, "dequantize_row: row {i} of {} into {} values", self.rows, out.len());
        let (ng, rb) = (self.groups_per_row(), self.row_bytes());
        let qr = &self.q[i * rb..(i + 1) * rb];
        for (g, (og, qg)) in out.chunks_mut(I4_GROUP).zip(qr.chunks_exact(I4_GROUP_BYTES)).enumerate() {
            let (d, m) = (f16_to_f32(self.scales[i * ng + g]), f16_to_f32(self.mins[i * ng + g]));
            for (t, o) in og.iter_mut().enumerate() {
                *o = f32::from(Self::nibble(qg, t)) * d + m;
            }
        }
    }

    /// The whole dequantized matrix `[rows, cols]`.
    pub fn dequantize(&self) -> Vec<f32> {
        dequantize_rows(self.rows, self.cols, |i, row| self.dequantize_row(i, row))
    }

    /// Bytes read by one full matmul (nibbles + f16 scales and minimums).
    pub fn bytes(&self) -> usize {
        self.q.len() + (self.scales.len() + self.mins.len()) * 2
    }
}

/// Packed int4 groups (16 bytes each, GGUF's order) unpacked into `out` as `q − sub` (q in
/// [0, 15]; `out` may end inside the last group).
pub fn unpack_nibbles(packed: &[u8], out: &mut [i8], sub: i8) {
    for (og, qg) in out.chunks_mut(I4_GROUP).zip(packed.chunks_exact(I4_GROUP_BYTES)) {
        if let (Ok(og), Ok(qg)) = (<&mut [i8; 32]>::try_from(&mut *og), <&[u8; 16]>::try_from(qg)) {
            // whole groups: two passes the compiler turns into vector ands and shifts
            let (lo, hi) = og.split_at_mut(16);
            for (o, &b) in lo.iter_mut().zip(qg) {
                *o = (b & 0x0f) as i8 - sub;
            }
            for (o, &b) in hi.iter_mut().zip(qg) {
                *o = (b >> 4) as i8 - sub;
            }
        } else {
            for (t, o) in og.iter_mut().enumerate() {
                *o = QuantizedI4::nibble(qg, t) as i8 - sub;
            }
        }
    }
}

/// A `[rows, cols]` matrix filled row by row by `row_into(i, row)` (the quantized formats'
/// `dequantize`).
fn dequantize_rows(rows: usize, cols: usize, mut row_into: impl FnMut(usize, &mut [f32])) -> Vec<f32> {
    let mut out = vec![0f32; rows * cols];
    if cols > 0 {
        for (i, row) in out.chunks_mut(cols).enumerate() {
            row_into(i, row);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_round_to_nearest_even() {
        let cases: &[(u32, u16)] = &[
            (0x3f80_0000, 0x3f80), // 1.0 exact
            (0x3f80_7fff, 0x3f80), // below half: down
            (0x3f80_8000, 0x3f80), // tie, even lsb: down
            (0x3f81_8000, 0x3f82), // tie, odd lsb: up
            (0x3f80_8001, 0x3f81), // above half: up
            (0x3f81_7fff, 0x3f81),
            (0xbf81_8000, 0xbf82), // negative tie, odd: away (magnitude up)
            (0xbf80_8000, 0xbf80),
            (0x0000_0000, 0x0000), // +0
            (0x8000_0000, 0x8000), // -0
            (0x7f80_0000, 0x7f80), // +inf
            (0xff80_0000, 0xff80), // -inf
            (0x7f7f_ffff, 0x7f80), // f32::MAX rounds to +inf
            (0xff7f_ffff, 0xff80),
            (0x7f7f_7fff, 0x7f7f), // largest value that stays finite
            (0x0000_0001, 0x0000), // smallest subnormal: down to +0
            (0x0000_8000, 0x0000), // subnormal tie, even: down
            (0x0001_8000, 0x0002), // subnormal tie, odd: up
            (0x0000_8001, 0x0001), // subnormal above half: up
            (0x007f_ffff, 0x0080), // largest subnormal rounds up to the smallest normal
            (0x8000_8001, 0x8001), // negative subnormal
        ];
        for &(f, b) in cases {
            let got = f32_to_bf16(f32::from_bits(f));
            assert_eq!(got, b, "f32 bits {f:#010x}: got {got:#06x}, want {b:#06x}");
        }
        // NaN stays NaN (quiet), whatever its payload, including low-bits-only payloads.
        for f in [
            0x7fc0_0000u32,
            0x7f80_0001,
            0xff80_0001,
            0x7fff_ffff,
            0x7f80_8000,
        ] {
            let b = f32_to_bf16(f32::from_bits(f));
            assert!(bf16_to_f32(b).is_nan(), "{f:#010x} -> {b:#06x}");
            assert_eq!(b & 0x0040, 0x0040, "quiet bit set");
            assert_eq!(b & 0x8000, ((f >> 16) as u16) & 0x8000, "sign kept");
        }
    }

    #[test]
    fn bf16_matches_f64_nearest_on_random_values() {
        // Reference: the nearest of the two bf16 neighbours, ties to the even one.
        let mut s = 0x1234_5678_u32;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let x = f32::from_bits(s);
            if !x.is_finite() {
                continue;
            }
            let lo = (s >> 16) as u16;
            let hi = lo.wrapping_add(1);
            let (dl, dh) = (
                (x as f64 - bf16_to_f32(lo) as f64).abs(),
                // The neighbour above the largest finite bf16 is inf; treat it as 2^128.
                if hi & 0x7fff == 0x7f80 {
                    (2f64.powi(128) * x.signum() as f64 - x as f64).abs()
                } else {
                    (bf16_to_f32(hi) as f64 - x as f64).abs()
                },
            );
            let want = if dl < dh || (dl == dh && lo & 1 == 0) {
                lo
            } else {
                hi
            };
            assert_eq!(f32_to_bf16(x), want, "x = {x:e} ({s:#010x})");
        }
    }

    #[test]
    fn bf16_round_trip_and_slices() {
        let v = [0.0f32, -1.5, 3.140625, 65280.0, -0.0, f32::INFINITY];
        let mut b = [0u16; 6];
        f32_to_bf16_slice(&v, &mut b);
        let mut back = [0f32; 6];
        bf16_to_f32_slice(&b, &mut back);
        assert_eq!(back.map(f32::to_bits), v.map(f32::to_bits)); // all exactly representable
        assert_eq!(f32_to_bf16_vec(&v), b.to_vec());
        for b in 0..=u16::MAX {
            let f = bf16_to_f32(b);
            if !f.is_nan() {
                assert_eq!(f32_to_bf16(f), b, "bf16 {b:#06x} survives the round trip");
            }
        }
    }

    #[test]
    #[should_panic(expected = "length mismatch")]
    fn bf16_slice_rejects_length_mismatch() {
        f32_to_bf16_slice(&[1.0, 2.0], &mut [0u16; 1]);
    }

    fn lcg_vec(seed: u64, n: usize) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 4.0
            })
            .collect()
    }

    #[test]
    fn int8_round_trip_error_is_at_most_half_a_step() {
        for &(rows, cols, group) in &[
            (3, 100, GROUP),
            (5, 33, 32),
            (2, 257, 64),
            (4, 1000, 128),
            (1, 1, 32),
            (7, 7, 3),
            (2, 64, 64),
        ] {
            let mut w = lcg_vec((rows * 1000 + cols) as u64, rows * cols);
            // A zero group, a group with one huge outlier and a constant group.
            for v in w.iter_mut().take(group.min(cols)) {
                *v = 0.0;
            }
            if cols > group {
                w[cols + 1] = 1e4;
            }
            let qw = QuantizedI8::quantize_with_group(&w, rows, cols, group);
            assert_eq!(qw.group, group);
            assert_eq!(qw.scales.len(), rows * cols.div_ceil(group));
            assert!(qw.q.iter().all(|&q| q != i8::MIN));
            let deq = qw.dequantize();
            let ng = cols.div_ceil(group);
            for i in 0..rows {
                let mut row = vec![0f32; cols];
                qw.dequantize_row(i, &mut row);
                assert_eq!(row, deq[i * cols..(i + 1) * cols]);
                for p in 0..cols {
                    let s = f16_to_f32(qw.scales[i * ng + p / group]);
                    let wv = w[i * cols + p];
                    let err = (wv - row[p]).abs();
                    assert!(
                        err <= s * 0.5 * (1.0 + 1e-6) + f32::MIN_POSITIVE,
                        "({i},{p}) w={wv} deq={} scale={s}",
                        row[p]
                    );
                    // The scale is max|w| / (127 + j) of the group rounded to f16, j in SCALE_SEARCH.
                    let g0 = (p / group) * group;
                    let gw = &w[i * cols + g0..i * cols + (g0 + group).min(cols)];
                    let gmax = gw.iter().fold(0f32, |a, v| a.max(v.abs()));
                    if gmax > 0.0 {
                        let j = (gmax / s - 127.0).round() as i32;
                        let want = f32_to_f16(gmax / (127 + j) as f32);
                        assert!(SCALE_SEARCH.contains(&j) && qw.scales[i * ng + p / group] == want, "scale {s}, max {gmax}");
                    }
                }
                // each group's squared error is at most that of the plain max|w| / 127 (in f16)
                for (g, wg) in w[i * cols..(i + 1) * cols].chunks(group).enumerate() {
                    let gmax = wg.iter().fold(0f32, |a, v| a.max(v.abs()));
                    let plain = squared_error(wg, f16_to_f32(f32_to_f16(gmax / 127.0)));
                    let got: f32 = wg.iter().zip(&row[g * group..]).map(|(&a, &b)| (a - b) * (a - b)).sum();
                    assert!(gmax == 0.0 || got <= plain * (1.0 + 1e-4), "group {g}: {got} > {plain}");
                }
            }
            // The all-zero first group has scale 0 and q 0.
            assert_eq!(qw.scales[0], 0);
            assert!(qw.q[..group.min(cols)].iter().all(|&q| q == 0));
        }
    }

    #[test]
    fn int8_scale_search_finds_an_exact_grid() {
        // max|w| / 127 puts 0.5 on 63.5 (error half a step, 4e-3); max|w| / 124 represents all
        // four, up to the f16 rounding of the scale (1/124 is not a half: 3e-5)
        let w = [1.0f32, -1.0, 0.5, -0.25];
        let qw = QuantizedI8::quantize_with_group(&w, 1, 4, 4);
        let deq = qw.dequantize();
        assert!(w.iter().zip(&deq).all(|(a, b)| (a - b).abs() <= 5e-5), "{deq:?}");
        assert_eq!(qw.q[0], -qw.q[1]);
        assert_eq!(i32::from(qw.q[0]), 2 * i32::from(qw.q[2]));
        assert_eq!(i32::from(qw.q[2]), -2 * i32::from(qw.q[3]));
        // a lone value: no worse than the plain scale in f16 (0.3 / 127 is not a half, so
        // another level of the search may land closer)
        let one = QuantizedI8::quantize_with_group(&[0.3f32], 1, 1, 1);
        let plain = (127.0 * f16_to_f32(f32_to_f16(0.3 / 127.0)) - 0.3f32).abs();
        assert!((one.dequantize()[0] - 0.3).abs() <= plain && plain < 0.3 / 2048.0, "{one:?}");
    }

    #[test]
    fn int8_scales_saturate_and_underflow_in_f16() {
        // beyond 127 · 65504 the scale saturates at f16's largest finite value and the group
        // clips; a group whose scale underflows f16 (max|w| ≈ 1e-9) quantizes to zeros
        let w = [1.0e7f32, -4.0e6, 2.0, 1.0e-9, -2.0e-9, 0.0];
        let qw = QuantizedI8::quantize_with_group(&w, 2, 3, 3);
        assert_eq!(qw.scales.to_vec(), vec![0x7bff, 0]);
        assert_eq!(qw.q.to_vec(), vec![127, -61, 0, 0, 0, 0]);
        assert!(qw.dequantize().iter().all(|v| v.is_finite()));
        // a subnormal f16 scale is still used (max|w| = 1e-4: scale ≈ 7.9e-7)
        let small = QuantizedI8::quantize_with_group(&[1.0e-4f32, -5.0e-5], 1, 2, 2);
        let deq = small.dequantize();
        assert!(small.scales[0] < 0x0400 && small.scales[0] > 0, "{small:?}");
        assert!((deq[0] - 1.0e-4).abs() < 1.0e-6 && (deq[1] + 5.0e-5).abs() < 1.0e-6, "{deq:?}");
    }

    #[test]
    fn int8_scale_search_halves_the_error_of_4bit_grid_values() {
        // values of a 4-bit grid (a GGUF Q4_1 file loaded as INT8): m + q·d, q in 0..16
        let mut rng = crate::kernels::test_rng::Rng(7);
        let (rows, cols) = (64, 256);
        let w: Vec<f32> = (0..rows * cols / 32)
            .flat_map(|_| {
                let (d, m) = (0.01 + 0.02 * rng.next().abs(), -0.1 * rng.next().abs() - 0.05);
                (0..32).map(|_| m + d * ((rng.next() + 1.0) * 8.0).floor().min(15.0)).collect::<Vec<_>>()
            })
            .collect();
        let qw = QuantizedI8::quantize(&w, rows, cols);
        let got: f32 = w.iter().zip(qw.dequantize()).map(|(a, b)| (a - b) * (a - b)).sum();
        let plain: f32 = w.chunks(32).map(|g| squared_error(g, g.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0)).sum();
        assert!(got < 0.7 * plain, "{got} vs plain {plain}");
    }

    #[test]
    fn from_parts_validates() {
        const ONE: u16 = 0x3c00; // 1.0 in f16
        let ok = QuantizedI8::from_parts(2, 3, 2, vec![1, 2, 3, 4, 5, 6], vec![ONE; 4]);
        let ok = ok.expect("valid parts");
        assert_eq!(ok.groups_per_row(), 2);
        let mut row = [0f32; 3];
        ok.dequantize_row(1, &mut row);
        assert_eq!(row, [4.0, 5.0, 6.0]);
        assert_eq!(ok.bytes(), 6 + 8);
        let bad = [
            QuantizedI8::from_parts(2, 3, 2, vec![0; 5], vec![ONE; 4]),
            QuantizedI8::from_parts(2, 3, 2, vec![0; 6], vec![ONE; 3]),
            QuantizedI8::from_parts(2, 3, 0, vec![0; 6], vec![]),
            QuantizedI8::from_parts(2, 3, 2, vec![0, 0, -128, 0, 0, 0], vec![ONE; 4]),
            QuantizedI8::from_parts(2, 3, 2, vec![0; 6], vec![ONE, 0x7e00, ONE, ONE]),
            QuantizedI8::from_parts(2, 3, 2, vec![0; 6], vec![ONE, ONE, 0x7c00, ONE]),
            QuantizedI8::from_parts(usize::MAX, 3, 2, vec![], vec![]),
        ];
        for r in bad {
            assert!(matches!(r, Err(Error::Tensor(_))), "{r:?}");
        }
        // Empty shapes are valid.
        assert!(QuantizedI8::from_parts(0, 5, 32, vec![], vec![]).is_ok());
        assert!(QuantizedI8::from_parts(3, 0, 32, vec![], vec![]).is_ok());
    }

    #[test]
    fn f16_round_trip_and_round_to_nearest_even() {
        // every finite half survives f16 → f32 → f16; NaN stays NaN
        for h in 0..=u16::MAX {
            let f = f16_to_f32(h);
            if f.is_nan() {
                assert!(f16_to_f32(f32_to_f16(f)).is_nan());
            } else {
                assert_eq!(f32_to_f16(f), h, "{h:#06x} = {f:e}");
            }
        }
        // random f32s: the nearest half (ties to even), checked against both neighbours in f64
        let mut s = 0x9e37_79b9_u32;
        for _ in 0..200_000 {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            let x = f32::from_bits((s & 0x8fff_ffff) | (0x3000_0000 * ((s >> 28) & 1)));
            if !x.is_finite() || x.abs() >= 65520.0 {
                continue;
            }
            let h = f32_to_f16(x);
            let v = f16_to_f32(h) as f64;
            for n in [h.wrapping_add(1), h.wrapping_sub(1)] {
                let w = f16_to_f32(n) as f64;
                if w.is_finite() && (n & 0x7fff) <= 0x7bff && (n ^ h) & 0x8000 == 0 {
                    let (dv, dw) = ((v - x as f64).abs(), (w - x as f64).abs());
                    assert!(dv < dw || (dv == dw && h & 1 == 0), "{x:e}: {h:#06x} vs neighbour {n:#06x}");
                }
            }
        }
        assert_eq!(f32_to_f16(65520.0), 0x7c00); // rounds up to inf
        assert_eq!(f32_to_f16(-1e-9), 0x8000);
    }

    #[test]
    fn int4_round_trip_error_is_at_most_half_a_step() {
        for &(rows, cols) in &[(3, 100), (5, 33), (1, 1), (2, 64), (4, 31)] {
            let mut w = lcg_vec((rows * 77 + cols) as u64, rows * cols);
            for v in w.iter_mut().take(cols.min(32)) {
                *v = 0.25; // a constant group: d = 0, exact
            }
            let q = QuantizedI4::quantize(&w, rows, cols);
            assert_eq!((q.q.len(), q.scales.len()), (rows * q.row_bytes(), rows * q.groups_per_row()));
            let deq = q.dequantize();
            let ng = q.groups_per_row();
            for i in 0..rows {
                let mut row = vec![0f32; cols];
                q.dequantize_row(i, &mut row);
                assert_eq!(row, deq[i * cols..(i + 1) * cols]);
                let mut qs = vec![0i8; cols];
                q.unpack_row(i, &mut qs);
                for p in 0..cols {
                    let (d, m) = (f16_to_f32(q.scales[i * ng + p / 32]), f16_to_f32(q.mins[i * ng + p / 32]));
                    assert!((0..16).contains(&qs[p]));
                    assert_eq!(row[p], f32::from(qs[p] as u8) * d + m);
                    // half a step, plus the f16 rounding of the minimum
                    let err = (w[i * cols + p] - row[p]).abs();
                    assert!(err <= d * 0.5 + m.abs() * 1e-3 + 1e-6, "({i},{p}) w={} deq={} d={d}", w[i * cols + p], row[p]);
                }
            }
            assert!(deq[..cols.min(32)].iter().all(|&v| (v - 0.25).abs() < 1e-3));
        }
    }

    fn blocks(kind: GgufBlock, n: usize, seed: usize) -> Vec<u8> {
        (0..n)
            .flat_map(|b| {
                let mut blk = vec![0u8; kind.block_bytes()];
                for (t, v) in blk.iter_mut().enumerate() {
                    *v = ((t * 13 + b * 7 + seed) % 256) as u8;
                }
                blk[..2].copy_from_slice(&(0x1c00u16 + (b as u16 % 64) * 5).to_le_bytes()); // d > 0, modest
                if kind == GgufBlock::Q4_1 {
                    blk[2..4].copy_from_slice(&(0xa000u16 + (b as u16 % 64) * 3).to_le_bytes()); // m < 0
                }
                blk
            })
            .collect()
    }

    #[test]
    fn gguf_4bit_blocks_are_copied_exactly() {
        let (rows, cols) = (3, 96);
        for kind in [GgufBlock::Q4_0, GgufBlock::Q4_1] {
            let raw = blocks(kind, rows * cols / 32, 1);
            let GgufWeight::I4(w) = GgufWeight::from_blocks(kind, rows, cols, &raw).unwrap() else { panic!("int4") };
            for (b, blk) in raw.chunks_exact(kind.block_bytes()).enumerate() {
                let d = u16::from_le_bytes([blk[0], blk[1]]);
                assert_eq!(w.scales[b], d);
                let nib = &blk[blk.len() - 16..];
                assert_eq!(&w.q[b * 16..(b + 1) * 16], nib, "nibbles copied as they are");
                let (df, mf) = (f16_to_f32(d), f16_to_f32(w.mins[b]));
                match kind {
                    GgufBlock::Q4_1 => assert_eq!(w.mins[b], u16::from_le_bytes([blk[2], blk[3]])),
                    _ => assert_eq!(mf, -8.0 * df),
                }
                // GGUF's dequantization: Q4_0 (q − 8)·d, Q4_1 q·d + m; element t < 16 low nibble
                let mut row = vec![0f32; cols];
                w.dequantize_row(b / 3, &mut row);
                for t in 0..32 {
                    let q = if t < 16 { nib[t] & 15 } else { nib[t - 16] >> 4 };
                    let want = match kind {
                        GgufBlock::Q4_0 => (f32::from(q) - 8.0) * df,
                        _ => f32::from(q) * df + mf,
                    };
                    assert_eq!(row[(b % 3) * 32 + t], want, "{kind:?} block {b} value {t}");
                }
            }
        }
        // shapes that are not whole blocks, wrong byte counts, a Q4_0 scale too large for −8·d
        let raw = blocks(GgufBlock::Q4_1, 6, 0);
        assert!(GgufWeight::from_blocks(GgufBlock::Q4_1, 2, 96, &raw[1..]).is_err());
        assert!(GgufWeight::from_blocks(GgufBlock::Q4_1, 3, 65, &raw).is_err());
        assert!(GgufWeight::from_blocks(GgufBlock::Q4_1, 0, 32, &[]).is_err());
        let mut big = blocks(GgufBlock::Q4_0, 1, 0);
        big[..2].copy_from_slice(&0x7000u16.to_le_bytes()); // 8192
        assert!(matches!(GgufWeight::from_blocks(GgufBlock::Q4_0, 1, 32, &big), Err(Error::Tensor(_))));
        assert!(GgufBlock::parse("Q5_K").is_err());
    }

    #[test]
    fn int4_from_parts_validates() {
        assert!(QuantizedI4::from_parts(2, 40, vec![0; 64], vec![0; 4], vec![0; 4]).is_ok());
        let bad = [
            QuantizedI4::from_parts(2, 40, vec![0; 63], vec![0; 4], vec![0; 4]),
            QuantizedI4::from_parts(2, 40, vec![0; 64], vec![0; 3], vec![0; 4]),
            QuantizedI4::from_parts(2, 40, vec![0; 64], vec![0; 4], vec![0; 5]),
            QuantizedI4::from_parts(2, 40, vec![0; 64], vec![0, 0x7c00, 0, 0], vec![0; 4]),
            QuantizedI4::from_parts(2, 40, vec![0; 64], vec![0; 4], vec![0xfe00, 0, 0, 0]),
            QuantizedI4::from_parts(usize::MAX, 64, vec![], vec![], vec![]),
        ];
        for r in bad {
            assert!(matches!(r, Err(Error::Tensor(_))), "{r:?}");
        }
    }
}
