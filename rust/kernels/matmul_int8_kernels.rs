//! W8A8 kernels of `matmul_int8`: x is quantized per row and group to int8 on the fly
//! (symmetric, `sx = max|x| / 127`, round half to even), then every group's dot product is
//! an exact integer sum, scaled by `sx · sw` and accumulated in f32:
//! y[i, j] = Σ_g sx[i, g] · sw[j, g] · Σ_{p ∈ g} xq[i, p] · wq[j, p].
//!
//! - GEMV (few rows of x; memory-bound): one row of w at a time against the quantized x rows
//!   (in L1), in 32-byte chunks. AVX2: `maddubs(|x|, sign(w, x))` + `madd(·, 1)` (the sign
//!   trick; |x|, |w| ≤ 127 so the i16 pair sums cannot saturate). AVX-512 VNNI (on 256-bit
//!   vectors; the GEMV is memory-bound): `dpbusd(w ⊕ 0x80, x)` = Σ (w + 128)·x, with the
//!   accumulator started at −128·Σx of the group.
//! - GEMM (prefill): for each tile of NR rows of w and block of k, the weights are packed
//!   "k-interleaved" (each 32-bit lane holds consecutive k values of one row of w, one lane
//!   per row), so that one vector op multiplies a broadcast pair/quad of x by NR/2 … NR rows
//!   of w at once; integer accumulators are scaled into f32 accumulators at every group end.
//!   AVX2: i16 pairs with `madd_epi16` (MR = 3 rows of x × NR = 16 rows of w). AVX-512 VNNI:
//!   u8 quads (w ⊕ 0x80) with `dpbusd` on zmm (MR = 4 × NR = 48).
//! - NEON and portable: the GEMV kernel for every row (`vmull_s8` + `vpadalq_s16` on NEON).
//!
//! The SIMD kernels need `group % 32 == 0` and `group ≤ MAX_SIMD_GROUP` (the dispatcher
//! sends other groups to the portable kernel, which handles any group).
//!
//! 16-bit x (the W8A16 scheme, and INT4 weights of `matmul_int4`: `q · d + m`, q in [0, 15], f16
//! d and m per group of 32) share the x buffers, the reduction and the GEMMs: x is quantized to
//! 16 bits per group of 32 ([`quantize_rows_a16`]); the AVX2 GEMV ([`gemv_a16_avx2`], generic
//! over the weights' widening to i16: [`I4W`], [`I8W16`]) keeps each group's integer lanes apart
//! for 8 groups, reduces them at once and scales them with 8 scales loaded at once (int4: f16
//! widened by F16C, centered q − 8 with the offset m + 8·d on the f32 Σx). On AVX-512 VNNI the
//! x16 is also split into its high and low signed bytes ([`split_a16`]): the W8A16 GEMV
//! ([`gemv_w8a16_vnni`]) multiplies the int8 weights with both bytes by `dpbusd`, with no
//! widening of the weights, 16 groups at a time on 512-bit vectors, and scales each 8 group
//! sums as the AVX2 one does (the same bits); int4 decode has its
//! own GEMV there (`matmul_int4_gemv`). The GEMMs run on int4 panels unpacked to int8 rows
//! (q − 8, the same f16 scales): the VNNI GEMM over the high and the low bytes of x16, or the
//! AVX2 GEMM on x16; NEON and the portable kernel handle every kind ([`Kind`]).

use std::cell::Cell;

use crate::kernels::quant::f16_to_f32;

use super::{i4_offset, I4_CENTER};

/// Largest group the SIMD kernels take (keeps every i32 lane sum < 2³¹).
pub(crate) const MAX_SIMD_GROUP: usize = 16384;

/// Quantized x, quantized weights and the region of y to compute.
#[derive(Clone, Copy)]
pub(crate) struct Q8 {
    /// xq: [m, kp] (zero past k)
    pub xq: *const i8,
    /// |xq|: [m, kp] (AVX2 GEMV only)
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub xa: *const u8,
    /// xq widened: [m, kp] (AVX2 GEMM only)
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub x16: *const i16,
    /// x scales: [m, ng] (NaN where the group held a non-finite value)
    pub xs: *const f32,
    /// Σ xq per group: [m, ng] (VNNI only)
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub xc: *const i32,
    /// Row stride of the quantized x: k rounded up to a multiple of 32.
    pub kp: usize,
    /// wq: [n, k] int8 values, or [n, ng·16] packed int4 nibbles (see `Q8::wrow`)
    pub wq: *const i8,
    /// Bytes from one row of wq to the next: k (int8) or ng·16 (int4).
    pub wrow: usize,
    /// w scales: [n, ng] as f16 bits (int8 and int4)
    pub ws: *const u16,
    /// int4 only: w minimums [n, ng] as f16 bits (y += m · Σx per group)
    pub wm: *const u16,
    /// int4 only: Σx per row and group of the f32 x: [m, ng]; unused for int8
    pub xf: *const f32,
    pub k: usize,
    pub n: usize,
    pub group: usize,
    pub ng: usize,
    /// y: [m, n]
    pub y: *mut f32,
    pub rows: (usize, usize),
    pub cols: (usize, usize),
    /// 16-bit x on VNNI only: its low bytes ([m, kp]; `xq` then holds the high bytes, see
    /// [`split_a16`], and `xs` the 16-bit x's scales). The GEMMs (int4 and W8A16 prefill) also
    /// read the low bytes' Σ per group here (and the high bytes' in `xc`); the W8A16 GEMV reads
    /// the 16-bit x's own `xc` (Σx16)
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub xq_lo: *const i8,
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub xc_lo: *const i32,
    /// int4 decode on AVX-512 VNNI only: the rows of x prepared for its GEMV
    /// (`matmul_int4_gemv::prepare_x`)
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub i4x: *const u32,
    /// The VNNI GEMM only: `wq` / `ws` hold INT8 weights in tiles of 16 rows
    /// (`matmul_int8_tiles`: q [tiles][ng][8 quads][16 rows][4], ws [tiles][ng][16]), and the
    /// bytes of x follow the tiles' quad order within each group (`Need::quads`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub tiled: bool,
}

// SAFETY: a Q8 only carries pointers into buffers that `matmul_int8` borrows or owns for the
// whole call (the pool's `run` returns before they are freed); threads write disjoint parts
// of y and only read the rest.
unsafe impl Send for Q8 {}
unsafe impl Sync for Q8 {}

// ---------------------------------------------------------------------------------
// Quantizing x.

/// Which derived forms of xq a kernel reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Need {
    pub abs: bool,
    pub wide: bool,
    /// int4 weights: x quantized to 16 bits (into `x16`, with its scales and Σ per group)
    /// instead of 8, plus Σx per group in f32 (the offset's term); see [`quantize_rows_a16`]
    pub a16: bool,
    /// The 16-bit x also split into signed bytes (`hi`, `lo`, `ch`, `cl`; see
    /// [`split_a16`]): for the VNNI kernels, which multiply bytes.
    pub split: bool,
    /// The split bytes of each group of 32 in the quad order of INT8 weights in tiles
    /// ([`quad_order`]; the VNNI GEMM reading tiles) instead of in order.
    pub quads: bool,
}

/// Per-thread buffers of quantized x (reused across calls; pool workers are persistent).
#[derive(Default)]
pub(crate) struct XBuf {
    pub q: Vec<i8>,
    pub a: Vec<u8>,
    pub x16: Vec<i16>,
    /// x prepared for the int4 GEMV (decode on AVX-512 VNNI)
    pub p: Vec<u32>,
    pub s: Vec<f32>,
    pub c: Vec<i32>,
    pub f: Vec<f32>,
    /// x16 split into bytes (`Need::split`): x16 = 256·hi + lo, [m, kp] each
    pub hi: Vec<i8>,
    pub lo: Vec<i8>,
    /// Σ hi and Σ lo per group: [m, ng] each
    pub ch: Vec<i32>,
    pub cl: Vec<i32>,
}

impl XBuf {
    /// Pointers for the quantizers to write this buffer's forms (those `need` asks for).
    pub(crate) fn out(&mut self, need: Need) -> XOut {
        XOut {
            q: self.q.as_mut_ptr(),
            a: self.a.as_mut_ptr(),
            x16: self.x16.as_mut_ptr(),
            s: self.s.as_mut_ptr(),
            c: self.c.as_mut_ptr(),
            f: self.f.as_mut_ptr(),
            hi: self.hi.as_mut_ptr(),
            lo: self.lo.as_mut_ptr(),
            ch: self.ch.as_mut_ptr(),
            cl: self.cl.as_mut_ptr(),
            need,
        }
    }
}

thread_local! {
    static XBUF: Cell<XBuf> = Cell::new(XBuf::default());
}

/// Takes this thread's x buffers, sized for `m` rows (contents stale).
pub(crate) fn take_xbuf(m: usize, kp: usize, ng: usize, need: Need) -> XBuf {
    let mut b = XBUF.with(|c| c.take());
    if !need.a16 && b.q.len() < m * kp {
        b.q = vec![0; m * kp];
    }
    if need.abs && b.a.len() < m * kp {
        b.a = vec![0; m * kp];
    }
    if (need.wide || need.a16) && b.x16.len() < m * kp {
        b.x16 = vec![0; m * kp];
    }
    if b.s.len() < m * ng {
        b.s = vec![0.0; m * ng];
        b.c = vec![0; m * ng];
    }
    if need.a16 && b.f.len() < m * ng {
        b.f = vec![0.0; m * ng];
    }
    if need.split && b.hi.len() < m * kp {
        b.hi = vec![0; m * kp];
        b.lo = vec![0; m * kp];
    }
    if need.split && b.ch.len() < m * ng {
        b.ch = vec![0; m * ng];
        b.cl = vec![0; m * ng];
    }
    b
}

/// Buffers above this many bytes (a long prompt's x) are freed rather than kept.
const KEEP_XBUF_BYTES: usize = 8 << 20;

/// Returns the buffers for the next call on this thread.
pub(crate) fn put_xbuf(b: XBuf) {
    let bytes = b.q.len() + b.a.len() + 2 * b.x16.len() + 4 * b.p.len() + 8 * b.s.len() + 4 * b.f.len()
        + b.hi.len() + b.lo.len() + 8 * b.ch.len();
    if bytes <= KEEP_XBUF_BYTES {
        XBUF.with(|c| c.set(b));
    }
}

/// Pointers to one call's quantized x (rows `0..m`).
#[derive(Clone, Copy)]
pub(crate) struct XOut {
    pub q: *mut i8,
    pub a: *mut u8,
    pub x16: *mut i16,
    pub s: *mut f32,
    pub c: *mut i32,
    pub f: *mut f32,
    pub hi: *mut i8,
    pub lo: *mut i8,
    pub ch: *mut i32,
    pub cl: *mut i32,
    pub need: Need,
}

// SAFETY: points into an `XBuf` that outlives the pool call; threads write disjoint rows.
unsafe impl Send for XOut {}
unsafe impl Sync for XOut {}

/// Groups whose max |x| is below this quantize to zero (keeps 127 / max|x| finite).
const MIN_AMAX: f32 = 1e-30;

/// Quantizes one group of x into `qg`; returns (scale, Σ q).
///
/// `sx = max|x| / 127`, `xq = round_half_even(x · (127 / max|x|))` clamped to ±127; a group
/// with max|x| < 1e-30 is all zero (scale 0); a group holding NaN or ±inf gets scale NaN
/// (and q = 0), so that the output row turns NaN instead of silently dropping the value.
#[inline(always)]
fn quantize_group(xg: &[f32], qg: &mut [i8]) -> (f32, i32) {
    quantize_group_to(xg, qg, 127.0, |t| t as i8)
}

/// [`quantize_group`] to ±`qmax` in any integer type: (scale, Σq).
#[inline(always)]
fn quantize_group_to<T: Copy + Default>(xg: &[f32], qg: &mut [T], qmax: f32, narrow: impl Fn(i32) -> T) -> (f32, i32) {
    // max |x| on the bit patterns (an integer max vectorizes, a float one does not): for
    // non-negative floats the order of the bits is the order of the values, and NaN / ±inf
    // are exactly the patterns ≥ 0x7f80_0000.
    let abits = xg.iter().fold(0u32, |a, v| a.max(v.to_bits() & 0x7fff_ffff));
    if abits >= 0x7f80_0000 {
        qg.fill(T::default());
        return (f32::NAN, 0);
    }
    let amax = f32::from_bits(abits);
    if amax < MIN_AMAX {
        qg.fill(T::default());
        return (0.0, 0);
    }
    let inv = qmax / amax;
    let mut sum = 0i32;
    for (d, &v) in qg.iter_mut().zip(xg) {
        let r = (v * inv).round_ties_even().clamp(-qmax, qmax);
        // SAFETY: x is finite (abits < inf) and so is inv, so r is a whole number in ±qmax
        // (`as i32`'s saturation and NaN checks would keep this loop scalar)
        let t: i32 = unsafe { r.to_int_unchecked() };
        *d = narrow(t);
        sum += t;
    }
    (amax / qmax, sum)
}

/// Zero-pads row `i` of xq past k and writes the derived forms `out.need` asks for.
///
/// # Safety
/// `out` must hold row i (kp values).
#[inline(always)]
unsafe fn finish_row(k: usize, kp: usize, i: usize, out: XOut) {
    let q = std::slice::from_raw_parts_mut(out.q.add(i * kp), kp);
    q[k..].fill(0);
    if out.need.abs {
        let a = std::slice::from_raw_parts_mut(out.a.add(i * kp), kp);
        for (a, &v) in a.iter_mut().zip(q.iter()) {
            *a = v.unsigned_abs();
        }
    }
    if out.need.wide {
        let w = std::slice::from_raw_parts_mut(out.x16.add(i * kp), kp);
        for (w, &v) in w.iter_mut().zip(q.iter()) {
            *w = i16::from(v);
        }
    }
}

/// Quantizes rows `rows` of x: [m, k] into `out` (row strides kp and ng); see
/// [`quantize_group`].
///
/// # Safety
/// `x` must hold the rows' k values; `out` must hold the rows (kp / ng values each).
#[inline(always)]
unsafe fn quantize_rows_impl(
    x: *const f32,
    k: usize,
    kp: usize,
    group: usize,
    ng: usize,
    rows: std::ops::Range<usize>,
    out: XOut,
) {
    for i in rows {
        let xr = std::slice::from_raw_parts(x.add(i * k), k);
        let q = std::slice::from_raw_parts_mut(out.q.add(i * kp), k);
        for (gi, (xg, qg)) in xr.chunks(group).zip(q.chunks_mut(group)).enumerate() {
            let (sc, sum) = quantize_group(xg, qg);
            *out.s.add(i * ng + gi) = sc;
            *out.c.add(i * ng + gi) = sum;
        }
        finish_row(k, kp, i, out);
    }
}

/// Largest 16-bit x value: x is quantized to [-32639, 32639] (symmetric, like the 8-bit x;
/// 32639 = 127·256 + 127, so that every value splits into two signed bytes for the VNNI GEMM,
/// see [`split_a16`]).
const A16_MAX: f32 = 32639.0;

/// Quantizes rows `rows` of x: [m, k] to 16 bits per group of 32 for int4 weights:
/// `sx = max|x| / 32639`, `x16 = round_half_even(x · (32639 / max|x|))` (a group with
/// max|x| < 1e-30 is zero, one holding NaN/±inf gets scale NaN, as the 8-bit quantizer does),
/// Σx16 per group (`c`), the f32 Σx per group (`f`), and x16 zero-padded past k up to kp.
///
/// # Safety
/// `x` must hold the rows' k values; `out` must hold the rows (x16: kp, s/c/f: ng values each).
#[inline(always)]
unsafe fn quantize_rows_a16_impl(x: *const f32, k: usize, kp: usize, ng: usize, rows: std::ops::Range<usize>, out: XOut) {
    for i in rows {
        let xr = std::slice::from_raw_parts(x.add(i * k), k);
        let h = std::slice::from_raw_parts_mut(out.x16.add(i * kp), kp);
        h[k..].fill(0);
        for (gi, (xg, hg)) in xr.chunks(32).zip(h.chunks_mut(32)).enumerate() {
            // a whole group as arrays of 32, so that every loop has a constant trip count and
            // vectorizes; the last group of a row may be shorter
            let (scale, sum) = match (<&[f32; 32]>::try_from(xg), <&mut [i16; 32]>::try_from(&mut *hg)) {
                (Ok(xg), Ok(hg)) => quantize_group_to(xg, hg, A16_MAX, |t| t as i16),
                _ => quantize_group_to(xg, hg, A16_MAX, |t| t as i16),
            };
            *out.s.add(i * ng + gi) = scale;
            *out.c.add(i * ng + gi) = sum;
            *out.f.add(i * ng + gi) = group_sum(xg);
        }
    }
}

/// Σ of a group (≤ 32 values) over 8 running lanes added pairwise: a fixed order that
/// vectorizes (a sequential sum is 32 dependent adds, the quantizer's critical path).
#[inline(always)]
fn group_sum(xg: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let mut rows = xg.chunks_exact(8);
    for r in &mut rows {
        for j in 0..8 {
            acc[j] += r[j];
        }
    }
    for (a, &v) in acc.iter_mut().zip(rows.remainder()) {
        *a += v;
    }
    ((acc[0] + acc[4]) + (acc[2] + acc[6])) + ((acc[1] + acc[5]) + (acc[3] + acc[7]))
}

/// [`quantize_rows_a16_impl`] with AVX2 enabled (the rounding becomes `vroundps`; same results).
///
/// # Safety
/// As [`quantize_rows_a16_impl`]; the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_rows_a16_avx2(x: *const f32, k: usize, kp: usize, ng: usize, rows: std::ops::Range<usize>, out: XOut) {
    quantize_rows_a16_impl(x, k, kp, ng, rows.clone(), out);
    if out.need.split {
        split_a16(out.x16, kp, ng, rows, out);
    }
}

/// The 16-bit x of rows `rows` split into two signed bytes, x16 = 256·hi + lo with
/// hi = (x16 + 128) >> 8 in [-127, 127] and lo in [-128, 127] (|x16| ≤ 32639), each with its Σ
/// per group: what the VNNI kernels (u8·i8 products) multiply to take a 16-bit x exactly.
/// `out.hi` / `out.lo`: [m, kp]; `out.ch` / `out.cl`: [m, ng]. AVX2, a group at a time, on i16
/// lanes packed to bytes; the group sums through `madd` with ones.
///
/// # Safety
/// `x16` holds the rows (kp values each, quantized by [`quantize_rows_a16`]); the outputs hold
/// them too; `kp = 32·ng`; the CPU must support AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(crate) unsafe fn split_a16(x16: *const i16, kp: usize, ng: usize, rows: std::ops::Range<usize>, out: XOut) {
    use std::arch::x86_64::*;
    debug_assert_eq!(kp, 32 * ng);
    let ones = _mm256_set1_epi16(1);
    for i in rows {
        for gi in 0..ng {
            let p = i * kp + 32 * gi;
            let v0 = _mm256_loadu_si256(x16.add(p) as *const __m256i);
            let v1 = _mm256_loadu_si256(x16.add(p + 16) as *const __m256i);
            let (v0, v1) = if out.need.quads { quad_order(v0, v1) } else { (v0, v1) };
            let ([t0, t1, b0, b1], h, l) = split_bytes(v0, v1);
            _mm256_storeu_si256(out.hi.add(p) as *mut __m256i, h);
            _mm256_storeu_si256(out.lo.add(p) as *mut __m256i, l);
            *out.ch.add(i * ng + gi) = x86::hsum_epi32(_mm256_madd_epi16(_mm256_add_epi16(t0, t1), ones));
            *out.cl.add(i * ng + gi) = x86::hsum_epi32(_mm256_madd_epi16(_mm256_add_epi16(b0, b1), ones));
        }
    }
}

/// 32 values of 16-bit x (`v0`: the first 16, `v1`: the next) in the quad order of INT8 weights
/// in tiles (`matmul_int8_tiles`): quad l (values 4l..4l+4 of the result) holds the values
/// `2l, 2l + 1, 16 + 2l, 17 + 2l` of the group.
///
/// # Safety
/// AVX2 available (the caller's target features).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn quad_order(v0: std::arch::x86_64::__m256i, v1: std::arch::x86_64::__m256i) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    // per 128-bit half: 32-bit pairs (2l, 2l + 1) of v0 and (16 + 2l, 17 + 2l) of v1 side by side
    let (a, b) = (_mm256_unpacklo_epi32(v0, v1), _mm256_unpackhi_epi32(v0, v1));
    (_mm256_permute2x128_si256::<0x20>(a, b), _mm256_permute2x128_si256::<0x31>(a, b))
}

/// 32 values of 16-bit x (`v0`: the first 16, `v1`: the next) split as [`split_a16`] does:
/// x16 = 256·hi + lo with hi = (x16 + 128) >> 8. Returns hi and lo as i16 vectors
/// `[hi0, hi1, lo0, lo1]`, then the 32 high bytes and the 32 low bytes in order.
///
/// # Safety
/// AVX2 available (the caller's target features).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn split_bytes(v0: std::arch::x86_64::__m256i, v1: std::arch::x86_64::__m256i) -> ([std::arch::x86_64::__m256i; 4], std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    let round = _mm256_set1_epi16(128);
    let t0 = _mm256_srai_epi16::<8>(_mm256_add_epi16(v0, round));
    let t1 = _mm256_srai_epi16::<8>(_mm256_add_epi16(v1, round));
    let b0 = _mm256_sub_epi16(v0, _mm256_slli_epi16::<8>(t0));
    let b1 = _mm256_sub_epi16(v1, _mm256_slli_epi16::<8>(t1));
    // packs works per 128-bit half: [t0 lo, t1 lo, t0 hi, t1 hi] → 64-bit order 0, 2, 1, 3
    let h = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi16(t0, t1));
    let l = _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi16(b0, b1));
    ([t0, t1, b0, b1], h, l)
}

/// # Safety
/// As [`quantize_rows_a16_impl`].
pub(crate) unsafe fn quantize_rows_a16(x: *const f32, k: usize, kp: usize, ng: usize, rows: std::ops::Range<usize>, out: XOut) {
    quantize_rows_a16_impl(x, k, kp, ng, rows, out)
}

/// [`quantize_rows_impl`] with AVX2 for whole groups of a multiple of 32 (same results).
///
/// # Safety
/// As [`quantize_rows_impl`]; the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn quantize_rows_avx2(
    x: *const f32,
    k: usize,
    kp: usize,
    group: usize,
    ng: usize,
    rows: std::ops::Range<usize>,
    out: XOut,
) {
    use std::arch::x86_64::*;
    if !group.is_multiple_of(32) {
        return quantize_rows_impl(x, k, kp, group, ng, rows, out);
    }
    for i in rows {
        let xr = x.add(i * k);
        let q = out.q.add(i * kp);
        for gi in 0..ng {
            let p0 = gi * group;
            let len = group.min(k - p0);
            let (sc, sum) = if len == group {
                x86::quantize_group32(xr.add(p0), q.add(p0), len)
            } else {
                let xg = std::slice::from_raw_parts(xr.add(p0), len);
                quantize_group(xg, std::slice::from_raw_parts_mut(q.add(p0), len))
            };
            *out.s.add(i * ng + gi) = sc;
            *out.c.add(i * ng + gi) = sum;
        }
        std::slice::from_raw_parts_mut(q.add(k), kp - k).fill(0);
        // kp is a multiple of 32.
        for c in (0..kp).step_by(32) {
            let v = _mm256_loadu_si256(q.add(c) as *const __m256i);
            if out.need.abs {
                _mm256_storeu_si256(out.a.add(i * kp + c) as *mut __m256i, _mm256_abs_epi8(v));
            }
            if out.need.wide {
                let d = out.x16.add(i * kp + c);
                _mm256_storeu_si256(
                    d as *mut __m256i,
                    _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v)),
                );
                _mm256_storeu_si256(
                    d.add(16) as *mut __m256i,
                    _mm256_cvtepi8_epi16(_mm256_extracti128_si256::<1>(v)),
                );
            }
        }
    }
}

/// # Safety
/// As [`quantize_rows_impl`]; the CPU must support NEON.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn quantize_rows_neon(
    x: *const f32,
    k: usize,
    kp: usize,
    group: usize,
    ng: usize,
    rows: std::ops::Range<usize>,
    out: XOut,
) {
    quantize_rows_impl(x, k, kp, group, ng, rows, out)
}

/// # Safety
/// As [`quantize_rows_impl`].
pub(crate) unsafe fn quantize_rows_portable(
    x: *const f32,
    k: usize,
    kp: usize,
    group: usize,
    ng: usize,
    rows: std::ops::Range<usize>,
    out: XOut,
) {
    quantize_rows_impl(x, k, kp, group, ng, rows, out)
}

// ---------------------------------------------------------------------------------
// Portable: any group, one (row of x, row of w) pair at a time.

/// Which weights and x a non-x86 kernel multiplies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// int8 weights, 8-bit x (W8A8)
    A8,
    /// int8 weights in groups of 32, 16-bit x (W8A16)
    I8A16,
    /// packed int4 weights, 16-bit x (W4A16, centered)
    I4,
}

/// y[i, j] for one pair, exact integer group sums (I4: packed int4 weights centered as q − 8,
/// plus the offset's term; I4 / I8A16: against the 16-bit x).
///
/// # Safety
/// `i`, `j` inside the operands of `g`.
#[inline(always)]
unsafe fn dot_portable(kind: Kind, g: &Q8, i: usize, j: usize) -> f32 {
    let (k, group, ng) = (g.k, g.group, g.ng);
    let xs = std::slice::from_raw_parts(g.xs.add(i * ng), ng);
    let mut acc = 0f32;
    if kind != Kind::A8 {
        let x = std::slice::from_raw_parts(g.x16.add(i * g.kp), k);
        let mut unpacked = [0i8; 32];
        for (gi, xg) in x.chunks(32).enumerate() {
            let wg: &[i8] = if kind == Kind::I4 {
                let qg = std::slice::from_raw_parts((g.wq as *const u8).add(j * g.wrow + gi * 16), 16);
                crate::kernels::quant::unpack_nibbles(qg, &mut unpacked, I4_CENTER as i8);
                &unpacked
            } else {
                std::slice::from_raw_parts(g.wq.add(j * g.wrow + gi * 32), xg.len())
            };
            let sum: i32 = xg.iter().zip(wg).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
            if kind == Kind::I4 {
                let d = f16_to_f32(*g.ws.add(j * ng + gi));
                acc += sum as f32 * (d * xs[gi]);
                acc += i4_offset(*g.ws.add(j * ng + gi), *g.wm.add(j * ng + gi)) * *g.xf.add(i * ng + gi);
            } else {
                acc += sum as f32 * (f16_to_f32(*g.ws.add(j * ng + gi)) * xs[gi]);
            }
        }
        return acc;
    }
    let x = std::slice::from_raw_parts(g.xq.add(i * g.kp), k);
    for (gi, xg) in x.chunks(group).enumerate() {
        let wg = std::slice::from_raw_parts(g.wq.add(j * g.wrow + gi * group), xg.len());
        // i32 sums over ≤ 32768 products (< 2³¹), combined in i64.
        let mut sum = 0i64;
        for (xc, wc) in xg.chunks(32768).zip(wg.chunks(32768)) {
            let s: i32 = xc
                .iter()
                .zip(wc)
                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                .sum();
            sum += i64::from(s);
        }
        acc += sum as f32 * (f16_to_f32(*g.ws.add(j * ng + gi)) * xs[gi]);
    }
    acc
}

/// # Safety
/// The region must lie inside the operands of `g`.
pub(crate) unsafe fn region_portable(kind: Kind, g: &Q8) {
    for j in g.cols.0..g.cols.1 {
        for i in g.rows.0..g.rows.1 {
            *g.y.add(i * g.n + j) = dot_portable(kind, g, i, j);
        }
    }
}

// ---------------------------------------------------------------------------------
// NEON: the GEMV kernel for every row (16-byte chunks; group % 32 == 0).

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::{f16_to_f32, i4_offset, Kind, Q8, I4_CENTER};

    /// # Safety
    /// `i`, `j` inside the operands; NEON enabled; `g.group % 16 == 0`.
    #[inline(always)]
    unsafe fn dot(g: &Q8, i: usize, j: usize) -> f32 {
        let (k, group, ng) = (g.k, g.group, g.ng);
        let x = g.xq.add(i * g.kp);
        let w = g.wq.add(j * g.wrow);
        let xs = g.xs.add(i * ng);
        let mut f = vdupq_n_f32(0.0);
        let mut p0 = 0;
        let mut gi = 0;
        while p0 < k {
            let p1 = (p0 + group).min(k);
            let mut acc = vdupq_n_s32(0);
            let mut p = p0;
            while p < p1 {
                let wv = if p + 16 <= k {
                    vld1q_s8(w.add(p))
                } else {
                    let mut b = [0i8; 16];
                    std::ptr::copy_nonoverlapping(w.add(p), b.as_mut_ptr(), k - p);
                    vld1q_s8(b.as_ptr())
                };
                let xv = vld1q_s8(x.add(p)); // x is zero-padded to kp (a multiple of 32)
                acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(wv), vget_low_s8(xv)));
                acc = vpadalq_s16(acc, vmull_high_s8(wv, xv));
                p += 16;
            }
            let d = vdupq_n_f32(f16_to_f32(*g.ws.add(j * ng + gi)) * *xs.add(gi));
            f = vfmaq_f32(f, vcvtq_f32_s32(acc), d);
            p0 = p1;
            gi += 1;
        }
        vaddvq_f32(f)
    }

    /// Against the 16-bit x: int4 (I4: 16 bytes of nibbles per group, centered to q − 8,
    /// plus the offset's term) or int8 in groups of 32 (I8A16), widened to i16 and multiplied
    /// with `vmlal_s16`.
    ///
    /// # Safety
    /// `i`, `j` inside the operands (those weights, 16-bit x); NEON enabled.
    #[inline(always)]
    unsafe fn dot_a16(kind: Kind, g: &Q8, i: usize, j: usize) -> f32 {
        let ng = g.ng;
        let x = g.x16.add(i * g.kp);
        let w = (g.wq as *const u8).add(j * g.wrow);
        let mut f = vdupq_n_f32(0.0);
        let mut extra = 0f32;
        for gi in 0..ng {
            let (lo, hi) = if kind == Kind::I4 {
                let b = vld1q_u8(w.add(gi * 16));
                let c = vdupq_n_s8(I4_CENTER as i8);
                (
                    vsubq_s8(vreinterpretq_s8_u8(vandq_u8(b, vdupq_n_u8(0x0f))), c),
                    vsubq_s8(vreinterpretq_s8_u8(vshrq_n_u8::<4>(b)), c),
                )
            } else {
                // whole groups of 32 (k is a multiple of 32 for int8 under W8A16)
                (vld1q_s8(w.add(gi * 32) as *const i8), vld1q_s8(w.add(gi * 32 + 16) as *const i8))
            };
            let xp = x.add(gi * 32); // x is zero-padded to kp (a multiple of 32)
            let mut acc = vdupq_n_s32(0);
            for (h, wv) in [lo, hi].into_iter().enumerate() {
                let (w0, w1) = (vmovl_s8(vget_low_s8(wv)), vmovl_high_s8(wv));
                let (x0, x1) = (vld1q_s16(xp.add(16 * h)), vld1q_s16(xp.add(16 * h + 8)));
                acc = vmlal_s16(acc, vget_low_s16(w0), vget_low_s16(x0));
                acc = vmlal_high_s16(acc, w0, x0);
                acc = vmlal_s16(acc, vget_low_s16(w1), vget_low_s16(x1));
                acc = vmlal_high_s16(acc, w1, x1);
            }
            let d = f16_to_f32(*g.ws.add(j * ng + gi));
            f = vfmaq_f32(f, vcvtq_f32_s32(acc), vdupq_n_f32(d * *g.xs.add(i * ng + gi)));
            if kind == Kind::I4 {
                extra += i4_offset(*g.ws.add(j * ng + gi), *g.wm.add(j * ng + gi)) * *g.xf.add(i * ng + gi);
            }
        }
        vaddvq_f32(f) + extra
    }

    /// # Safety
    /// The region must lie inside the operands of `g`; NEON enabled; `g.group % 16 == 0`.
    #[target_feature(enable = "neon")]
    pub(crate) unsafe fn region(kind: Kind, g: &Q8) {
        for j in g.cols.0..g.cols.1 {
            for i in g.rows.0..g.rows.1 {
                *g.y.add(i * g.n + j) = if kind == Kind::A8 { dot(g, i, j) } else { dot_a16(kind, g, i, j) };
            }
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) use neon::region as region_neon;

// ---------------------------------------------------------------------------------
// x86-64.

/// Register tile of the x86 GEMM kernels (rows of x × rows of w).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Tile {
    pub mr: usize,
    pub nr: usize,
}

/// AVX2: 3 rows of x × 16 rows of w (6 i32 + 6 f32 accumulators of 16 ymm). Measured
/// against 4×16, 2×32, 3×24 and 6×16: all within noise (the `madd` + `add` pair per
/// 16 products is the limit), so the one that needs no spills.
pub(crate) const AVX2_TILE: Tile = Tile { mr: 3, nr: 16 };
/// AVX-512 VNNI: 4 rows of x × 48 rows of w (12 i32 + 12 f32 accumulators of 32 zmm);
/// measured better than 6×32, 8×32 and 4×64.
pub(crate) const VNNI_TILE: Tile = Tile { mr: 4, nr: 48 };

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{gemm_avx2, gemm_vnni, gemm_vnni_a16, gemv_a16_avx2, gemv_w8a16_vnni, gemv_avx2, gemv_vnni, hsum256, I4W, I8W16};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;
    use std::cell::Cell;

    use super::{f16_to_f32, i4_offset, AVX2_TILE, I4_CENTER, Q8, VNNI_TILE};
    use crate::kernels::simd;

    /// Per-thread packed-panel buffers of the GEMM (contents stale).
    #[derive(Default)]
    struct Panel {
        w: Vec<i32>,
        s: Vec<f32>,
    }

    thread_local! {
        static PANEL: Cell<Panel> = Cell::new(Panel::default());
    }

    fn take_panel(wlen: usize, slen: usize) -> Panel {
        let mut p = PANEL.with(|c| c.take());
        if p.w.len() < wlen {
            p.w = vec![0; wlen];
        }
        if p.s.len() < slen {
            p.s = vec![0.0; slen];
        }
        p
    }

    fn put_panel(p: Panel) {
        PANEL.with(|c| c.set(p));
    }

    /// GEMM k block: the largest multiple of the group ≤ `target` (at least one group).
    #[inline(always)]
    fn k_block(group: usize, target: usize, k: usize) -> usize {
        ((target / group).max(1) * group).min(k.div_ceil(group) * group)
    }

    /// k block of the GEMMs (multiples of the group): a packed AVX2 panel is 16 rows ×
    /// 512 k × 2 bytes = 16 KiB, a VNNI panel 48 × 1024 bytes (1024 measured ≥ 512, 2048).
    const KC_AVX2: usize = 512;
    const KC_VNNI: usize = 1024;

    /// 32 bytes of row `w` from `p`, zero-filled past `k`; reads nothing past `w + k`.
    #[inline(always)]
    unsafe fn load_w32(w: *const i8, p: usize, k: usize) -> __m256i {
        if p + 32 <= k {
            _mm256_loadu_si256(w.add(p) as *const __m256i)
        } else {
            let mut b = [0i8; 32];
            std::ptr::copy_nonoverlapping(w.add(p), b.as_mut_ptr(), k - p);
            _mm256_loadu_si256(b.as_ptr() as *const __m256i)
        }
    }

    /// The sum of the 8 i32 lanes of `v` (wrapping).
    #[inline(always)]
    pub(super) unsafe fn hsum_epi32(v: __m256i) -> i32 {
        let s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
        let s = _mm_add_epi32(s, _mm_shuffle_epi32::<0b01_00_11_10>(s));
        _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32::<0b10_11_00_01>(s)))
    }

    /// The sum of the 8 lanes of `v`.
    #[inline(always)]
    pub(crate) unsafe fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    /// [`super::quantize_group`] of `len` (a multiple of 32) values at `x` into `q`.
    ///
    /// # Safety
    /// `x` / `q` hold `len` values; AVX2 enabled.
    #[inline(always)]
    pub(super) unsafe fn quantize_group32(x: *const f32, q: *mut i8, len: usize) -> (f32, i32) {
        let mask = _mm256_set1_epi32(0x7fff_ffff);
        let mut m = _mm256_setzero_si256();
        for c in (0..len).step_by(8) {
            m = _mm256_max_epu32(
                m,
                _mm256_and_si256(_mm256_loadu_si256(x.add(c) as *const __m256i), mask),
            );
        }
        let m = _mm256_max_epu32(m, _mm256_permute2x128_si256::<1>(m, m));
        let m = _mm256_max_epu32(m, _mm256_shuffle_epi32::<0b01_00_11_10>(m));
        let m = _mm256_max_epu32(m, _mm256_shuffle_epi32::<0b10_11_00_01>(m));
        let abits = _mm256_extract_epi32::<0>(m) as u32;
        if abits >= 0x7f80_0000 {
            std::ptr::write_bytes(q, 0, len);
            return (f32::NAN, 0);
        }
        let amax = f32::from_bits(abits);
        if amax < super::MIN_AMAX {
            std::ptr::write_bytes(q, 0, len);
            return (0.0, 0);
        }
        let inv = _mm256_set1_ps(127.0 / amax);
        let (lo, hi) = (_mm256_set1_ps(-127.0), _mm256_set1_ps(127.0));
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        let mut sum = _mm256_setzero_si256();
        for c in (0..len).step_by(32) {
            let f = |o: usize| {
                let v = _mm256_mul_ps(_mm256_loadu_ps(x.add(c + o)), inv);
                let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(v);
                _mm256_cvtps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi))
            };
            let (a, b, cc, d) = (f(0), f(8), f(16), f(24));
            sum = _mm256_add_epi32(
                sum,
                _mm256_add_epi32(_mm256_add_epi32(a, b), _mm256_add_epi32(cc, d)),
            );
            // packs interleave 128-bit lanes; the permute restores the order.
            let v = _mm256_packs_epi16(_mm256_packs_epi32(a, b), _mm256_packs_epi32(cc, d));
            _mm256_storeu_si256(
                q.add(c) as *mut __m256i,
                _mm256_permutevar8x32_epi32(v, order),
            );
        }
        (amax / 127.0, hsum_epi32(sum))
    }

    /// The integer dot-product step of a GEMV kernel: acc += Σ x·w over 32 bytes.
    trait Step {
        /// Accumulator at the start of a group whose quantized x values sum to `xsum`.
        unsafe fn init(xsum: i32) -> __m256i;
        /// `xq` / `xa`: 32 quantized x values and their absolute values.
        unsafe fn step(acc: __m256i, w: __m256i, xq: *const i8, xa: *const u8) -> __m256i;
    }

    /// AVX2: maddubs(|x|, sign(w, x)), then madd with ones into i32.
    struct SignTrick;
    impl Step for SignTrick {
        #[inline(always)]
        unsafe fn init(_: i32) -> __m256i {
            _mm256_setzero_si256()
        }
        #[inline(always)]
        unsafe fn step(acc: __m256i, w: __m256i, xq: *const i8, xa: *const u8) -> __m256i {
            let xv = _mm256_loadu_si256(xq as *const __m256i);
            let av = _mm256_loadu_si256(xa as *const __m256i);
            let prod = _mm256_maddubs_epi16(av, _mm256_sign_epi8(w, xv));
            _mm256_add_epi32(acc, _mm256_madd_epi16(prod, _mm256_set1_epi16(1)))
        }
    }

    /// AVX-512 VNNI (256-bit): dpbusd(w ⊕ 0x80, x) = Σ (w + 128)·x; the accumulator starts
    /// at −128·Σx.
    struct Vnni;
    impl Step for Vnni {
        #[inline(always)]
        unsafe fn init(xsum: i32) -> __m256i {
            _mm256_setr_epi32(-128 * xsum, 0, 0, 0, 0, 0, 0, 0)
        }
        #[inline(always)]
        unsafe fn step(acc: __m256i, w: __m256i, xq: *const i8, _: *const u8) -> __m256i {
            let xv = _mm256_loadu_si256(xq as *const __m256i);
            let wu = _mm256_xor_si256(w, _mm256_set1_epi8(-128));
            _mm256_dpbusd_epi32(acc, wu, xv)
        }
    }

    /// Weights multiplied with 16-bit x (int4 on AVX2, and int8 under the W8A16 scheme): how
    /// a group of 32 is widened to i16 and scaled.
    pub(crate) trait A16Weights {
        /// Bytes of one group in a row.
        const GROUP_BYTES: usize;
        /// Whether the integer values are centered (int4: q − 8, with the offset m + 8·d).
        const CENTERED: bool;
        /// The group at `p` as two vectors of 16 i16 (values 0-15 and 16-31).
        unsafe fn widen(p: *const u8) -> (__m256i, __m256i);
        /// Scales of groups gi..gi+8 of row j (f16, widened with F16C).
        #[inline(always)]
        unsafe fn scales8(g: &Q8, j: usize, gi: usize) -> __m256 {
            _mm256_cvtph_ps(_mm_loadu_si128(g.ws.add(j * g.ng + gi) as *const __m128i))
        }
        /// Scale of group gi of row j (F16C).
        #[inline(always)]
        unsafe fn scale(g: &Q8, j: usize, gi: usize) -> f32 {
            simd::f16_to_f32_f16c(*g.ws.add(j * g.ng + gi))
        }
    }

    /// Packed int4: 16 bytes of nibbles (q in [0, 15], low nibbles first: GGUF's order), f16
    /// scales widened with F16C.
    pub(crate) struct I4W;
    impl A16Weights for I4W {
        const GROUP_BYTES: usize = 16;
        const CENTERED: bool = true;
        #[inline(always)]
        unsafe fn widen(p: *const u8) -> (__m256i, __m256i) {
            let b = _mm_loadu_si128(p as *const __m128i);
            let m = _mm_set1_epi8(0x0f);
            (
                _mm256_cvtepu8_epi16(_mm_and_si128(b, m)),
                _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16::<4>(b), m)),
            )
        }
    }

    /// int8 in groups of 32.
    pub(crate) struct I8W16;
    impl A16Weights for I8W16 {
        const GROUP_BYTES: usize = 32;
        const CENTERED: bool = false;
        #[inline(always)]
        unsafe fn widen(p: *const u8) -> (__m256i, __m256i) {
            (
                _mm256_cvtepi8_epi16(_mm_loadu_si128(p as *const __m128i)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(p.add(16) as *const __m128i)),
            )
        }
    }

    /// The integer step of the 16-bit-x GEMV: acc += Σ w·x over one group of 32 from the
    /// widened weights and 32 16-bit x (|w·x| ≤ 127·32639: pair sums fit i32).
    trait StepA16 {
        unsafe fn step(acc: __m256i, w: (__m256i, __m256i), x: *const i16) -> __m256i;
    }

    /// AVX2: madd_epi16, then add.
    struct Avx2A16;
    impl StepA16 for Avx2A16 {
        #[inline(always)]
        unsafe fn step(acc: __m256i, (lo, hi): (__m256i, __m256i), x: *const i16) -> __m256i {
            let a = _mm256_madd_epi16(lo, _mm256_loadu_si256(x as *const __m256i));
            let b = _mm256_madd_epi16(hi, _mm256_loadu_si256(x.add(16) as *const __m256i));
            _mm256_add_epi32(acc, _mm256_add_epi32(a, b))
        }
    }

    /// AVX-512 VNNI (256-bit): dpwssd (madd + add in one).
    struct VnniA16;
    impl StepA16 for VnniA16 {
        #[inline(always)]
        unsafe fn step(acc: __m256i, (lo, hi): (__m256i, __m256i), x: *const i16) -> __m256i {
            let acc = _mm256_dpwssd_epi32(acc, lo, _mm256_loadu_si256(x as *const __m256i));
            _mm256_dpwssd_epi32(acc, hi, _mm256_loadu_si256(x.add(16) as *const __m256i))
        }
    }

    /// Row pointers of R rows of quantized x (from row i).
    struct XRows<const R: usize> {
        q: [*const i8; R],
        a: [*const u8; R],
        s: [*const f32; R],
        c: [*const i32; R],
    }

    impl<const R: usize> XRows<R> {
        #[inline(always)]
        unsafe fn new(g: &Q8, i: usize) -> Self {
            XRows {
                q: std::array::from_fn(|r| g.xq.add((i + r) * g.kp)),
                // xa / xc are only read by the step that needs them (they may be empty).
                a: std::array::from_fn(|r| g.xa.wrapping_add((i + r) * g.kp)),
                s: std::array::from_fn(|r| g.xs.add((i + r) * g.ng)),
                c: std::array::from_fn(|r| g.xc.add((i + r) * g.ng)),
            }
        }
    }

    /// Integer dot products of group `gi` (C chunks of 32 from p0) with row `w`; every chunk
    /// lies inside the row (`p0 + 32·C ≤ k`).
    #[inline(always)]
    unsafe fn group_full<S: Step, const R: usize, const C: usize>(
        x: &XRows<R>,
        w: *const i8,
        p0: usize,
        c: usize,
        gi: usize,
    ) -> [__m256i; R] {
        let mut acc: [__m256i; R] = std::array::from_fn(|r| S::init(*x.c[r].add(gi)));
        let n = if C > 0 { C } else { c };
        for t in 0..n {
            let p = p0 + 32 * t;
            let wv = _mm256_loadu_si256(w.add(p) as *const __m256i);
            for (r, a) in acc.iter_mut().enumerate() {
                *a = S::step(*a, wv, x.q[r].add(p), x.a[r].wrapping_add(p));
            }
        }
        acc
    }

    /// [`group_full`] for a group that may run past k (w zero-filled past k).
    #[inline(always)]
    unsafe fn group_tail<S: Step, const R: usize>(
        x: &XRows<R>,
        w: *const i8,
        k: usize,
        p0: usize,
        p1: usize,
        gi: usize,
    ) -> [__m256i; R] {
        let mut acc: [__m256i; R] = std::array::from_fn(|r| S::init(*x.c[r].add(gi)));
        let mut p = p0;
        while p < p1 {
            // Past k, w reads as 0 and x is zero-padded up to kp.
            let wv = load_w32(w, p, k);
            for (r, a) in acc.iter_mut().enumerate() {
                *a = S::step(*a, wv, x.q[r].add(p), x.a[r].wrapping_add(p));
            }
            p += 32;
        }
        acc
    }

    /// f[r] += acc[r] · (sw · sx[r]).
    #[inline(always)]
    unsafe fn scale_add<const R: usize>(
        f: &mut [__m256; R],
        acc: [__m256i; R],
        x: &XRows<R>,
        sw: *const u16,
        gi: usize,
    ) {
        let swv = _mm256_set1_ps(f16_to_f32(*sw.add(gi)));
        for (r, (f, a)) in f.iter_mut().zip(acc).enumerate() {
            let d = _mm256_mul_ps(swv, _mm256_broadcast_ss(&*x.s[r].add(gi)));
            *f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), d, *f);
        }
    }

    /// [y[i + r, j] for r < R]: rows i.. of x against row j of w, group by group; C chunks
    /// of 32 per group (0: `group / 32` at run time).
    ///
    /// # Safety
    /// Rows and column inside the operands; the step's ISA enabled; `group % 32 == 0`.
    #[inline(always)]
    unsafe fn dot_rows_c<S: Step, const R: usize, const C: usize>(
        g: &Q8,
        i: usize,
        j: usize,
    ) -> [f32; R] {
        let (k, group, ng) = (g.k, g.group, g.ng);
        let c = group / 32;
        let w = g.wq.add(j * g.wrow);
        let ws = g.ws.add(j * ng);
        let x = XRows::<R>::new(g, i);
        // Two f32 accumulators per row (even / odd groups) hide the FMA latency.
        let mut f0 = [_mm256_setzero_ps(); R];
        let mut f1 = [_mm256_setzero_ps(); R];
        let full = k / group;
        let mut gi = 0;
        while gi + 2 <= full {
            simd::prefetch((w.add(gi * group) as *const u8).wrapping_add(simd::STREAM_AHEAD), 2 * group);
            let a = group_full::<S, R, C>(&x, w, gi * group, c, gi);
            let b = group_full::<S, R, C>(&x, w, (gi + 1) * group, c, gi + 1);
            scale_add(&mut f0, a, &x, ws, gi);
            scale_add(&mut f1, b, &x, ws, gi + 1);
            gi += 2;
        }
        while gi < ng {
            let p0 = gi * group;
            let a = group_tail::<S, R>(&x, w, k, p0, (p0 + group).min(k), gi);
            scale_add(&mut f0, a, &x, ws, gi);
            gi += 1;
        }
        let mut out = [0f32; R];
        for (o, (a, b)) in out.iter_mut().zip(f0.iter().zip(&f1)) {
            *o = hsum256(_mm256_add_ps(*a, *b));
        }
        out
    }

    /// The 8 vectors of partial lane sums of 8 groups reduced to one vector of their 8 sums
    /// (group t in lane t).
    #[inline(always)]
    unsafe fn reduce8(a: [__m256i; 8]) -> __m256i {
        let h01 = _mm256_hadd_epi32(a[0], a[1]);
        let h23 = _mm256_hadd_epi32(a[2], a[3]);
        let h45 = _mm256_hadd_epi32(a[4], a[5]);
        let h67 = _mm256_hadd_epi32(a[6], a[7]);
        // [g0..g3 of the low 128 bits | g0..g3 of the high 128 bits], likewise g4..g7
        let lo4 = _mm256_hadd_epi32(h01, h23);
        let hi4 = _mm256_hadd_epi32(h45, h67);
        _mm256_add_epi32(
            _mm256_permute2x128_si256::<0x20>(lo4, hi4),
            _mm256_permute2x128_si256::<0x31>(lo4, hi4),
        )
    }

    /// [y[i + r, j] for r < R] for weights `W` (`g.wq` rows of `g.wrow` bytes; int4 with f16
    /// scales `g.ws` and minimums `g.wm`, or int8 with f16 scales `g.ws`) against the 16-bit
    /// x (`g.x16`), 8 groups at a time: each group's integer dot product (one [`StepA16`] per
    /// row of x) stays a vector of partial lanes, [`reduce8`] turns 8 of them into one vector
    /// of group sums, and f += sums · (d · sx) with 8 scales loaded at once (int4: widened from
    /// f16, and centered: (sums − 8·Σx16) · (d · sx) + (m + 8·d) · Σx, see `matmul_int4`). The
    /// last `ng % 8` groups are scaled one by one.
    ///
    /// # Safety
    /// Rows and column inside the operands; the step's ISA, AVX2, FMA and F16C enabled.
    #[inline(always)]
    #[allow(clippy::needless_range_loop)] // t and r index the accumulators and offset the operands
    unsafe fn dot_rows_a16<S: StepA16, W: A16Weights, const R: usize>(g: &Q8, i: usize, j: usize) -> [f32; R] {
        let ng = g.ng;
        let w = (g.wq as *const u8).add(j * g.wrow);
        let wm = g.wm.wrapping_add(j * ng);
        let xh: [*const i16; R] = std::array::from_fn(|r| g.x16.add((i + r) * g.kp));
        let xs: [*const f32; R] = std::array::from_fn(|r| g.xs.add((i + r) * ng));
        let xf: [*const f32; R] = std::array::from_fn(|r| g.xf.add((i + r) * ng));
        let xc: [*const i32; R] = std::array::from_fn(|r| g.xc.add((i + r) * ng));
        let eight = _mm256_set1_ps(I4_CENTER as f32);
        let mut f = [_mm256_setzero_ps(); R];
        let mut gi = 0;
        while gi + 8 <= ng {
            let mut acc = [[_mm256_setzero_si256(); 8]; R];
            simd::prefetch(w.wrapping_add(gi * W::GROUP_BYTES + simd::STREAM_AHEAD), 8 * W::GROUP_BYTES);
            for t in 0..8 {
                let wv = W::widen(w.add((gi + t) * W::GROUP_BYTES));
                for r in 0..R {
                    acc[r][t] = S::step(acc[r][t], wv, xh[r].add((gi + t) * 32));
                }
            }
            let d = W::scales8(g, j, gi);
            for r in 0..R {
                let mut sums = reduce8(acc[r]);
                if W::CENTERED {
                    // Σ (q − 8)·x = Σ q·x − 8·Σx, exact in i32
                    let c8 = _mm256_slli_epi32::<3>(_mm256_loadu_si256(xc[r].add(gi) as *const __m256i));
                    sums = _mm256_sub_epi32(sums, c8);
                }
                f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_mul_ps(d, _mm256_loadu_ps(xs[r].add(gi))), f[r]);
            }
            if W::CENTERED {
                // the offset m + 8·d of the centered weights q − 8, times the f32 Σx
                let o = _mm256_fmadd_ps(eight, d, _mm256_cvtph_ps(_mm_loadu_si128(wm.add(gi) as *const __m128i)));
                for r in 0..R {
                    f[r] = _mm256_fmadd_ps(o, _mm256_loadu_ps(xf[r].add(gi)), f[r]);
                }
            }
            gi += 8;
        }
        // the last ng % 8 groups one by one: their lanes scaled as they are
        let mut e = [0f32; R];
        while gi < ng {
            let d = W::scale(g, j, gi);
            let wv = W::widen(w.add(gi * W::GROUP_BYTES));
            for r in 0..R {
                // centered: the group's lanes, minus 8·Σx in lane 0: Σ (q − 8)·x
                let c = if W::CENTERED { -I4_CENTER * *xc[r].add(gi) } else { 0 };
                let a = S::step(_mm256_setr_epi32(c, 0, 0, 0, 0, 0, 0, 0), wv, xh[r].add(gi * 32));
                f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), _mm256_set1_ps(d * *xs[r].add(gi)), f[r]);
                if W::CENTERED {
                    e[r] += i4_offset(*g.ws.add(j * ng + gi), *wm.add(gi)) * *xf[r].add(gi);
                }
            }
            gi += 1;
        }
        let mut out = [0f32; R];
        for (r, (o, f)) in out.iter_mut().zip(&f).enumerate() {
            *o = hsum256(*f) + e[r];
        }
        out
    }

    /// The 16-bit-x GEMV over a region: up to 4 rows of x at a time against every column, a
    /// last lone row i against column j by `lone(i, j)`.
    #[inline(always)]
    unsafe fn gemv_a16<S: StepA16, W: A16Weights>(g: &Q8, lone: impl Fn(usize, usize) -> f32) {
        let mut i = g.rows.0;
        while i < g.rows.1 {
            let r = (g.rows.1 - i).min(4);
            for j in g.cols.0..g.cols.1 {
                let mut out = [0f32; 4];
                match r {
                    4 => out = dot_rows_a16::<S, W, 4>(g, i, j),
                    3 => out[..3].copy_from_slice(&dot_rows_a16::<S, W, 3>(g, i, j)),
                    2 => out[..2].copy_from_slice(&dot_rows_a16::<S, W, 2>(g, i, j)),
                    _ => out[0] = lone(i, j),
                }
                for (t, v) in out.iter().enumerate().take(r) {
                    *g.y.add((i + t) * g.n + j) = *v;
                }
            }
            i += r;
        }
    }

    /// The 16-bit-x GEMV over a region (AVX2 + F16C).
    ///
    /// # Safety
    /// The region must lie inside the operands of `g` (weights W, 16-bit x with `xc` and
    /// `xf`); AVX2, FMA and F16C available.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(crate) unsafe fn gemv_a16_avx2<W: A16Weights>(g: &Q8) {
        gemv_a16::<Avx2A16, W>(g, |i, j| dot_rows_a16::<Avx2A16, W, 1>(g, i, j)[0])
    }

    /// One group of int8 weights made unsigned (`wu` = w ⊕ 0x80 = w + 128) against the high
    /// and low bytes of 32 16-bit x: lanes of 256·Σ wu·hi + Σ wu·lo = Σ (w + 128)·x16, the
    /// high bytes' dot product shifted by 8 and the low bytes' added onto it by the second
    /// `dpbusd` (every lane |·| < 2²⁵).
    #[inline(always)]
    unsafe fn step_bytes(wu: __m256i, hi: *const i8, lo: *const i8) -> __m256i {
        let h = _mm256_dpbusd_epi32(_mm256_setzero_si256(), wu, _mm256_loadu_si256(hi as *const __m256i));
        _mm256_dpbusd_epi32(_mm256_slli_epi32::<8>(h), wu, _mm256_loadu_si256(lo as *const __m256i))
    }

    /// [`step_bytes`] on 512-bit vectors: two adjacent groups at once (lanes 0-7 the first,
    /// 8-15 the second).
    #[inline(always)]
    unsafe fn step_bytes512(wu: __m512i, hi: *const i8, lo: *const i8) -> __m512i {
        let h = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wu, _mm512_loadu_si512(hi as *const _));
        _mm512_dpbusd_epi32(_mm512_slli_epi32::<8>(h), wu, _mm512_loadu_si512(lo as *const _))
    }

    /// The 8 vectors of [`step_bytes512`] over 16 groups (vector t: groups 2t and 2t + 1)
    /// reduced to the 16 group sums, as two vectors of 8 (group t in lane t of the first,
    /// group 8 + t in lane t of the second): in-lane unpacks and adds leave each 128-bit
    /// quarter's sum of every vector, two 128-bit shuffles add the quarters of a group, and
    /// one permute puts the groups in order. Exact in i32, like [`reduce8`].
    #[inline(always)]
    unsafe fn reduce16(a: [__m512i; 8]) -> (__m256i, __m256i) {
        // per 128-bit quarter: [a0, a1, a0, a1] partial pairs, then [a0, a1, a2, a3] sums
        let pair = |x: __m512i, y: __m512i| _mm512_add_epi32(_mm512_unpacklo_epi32(x, y), _mm512_unpackhi_epi32(x, y));
        let quad = |x: __m512i, y: __m512i| _mm512_add_epi32(_mm512_unpacklo_epi64(x, y), _mm512_unpackhi_epi64(x, y));
        let s0 = quad(pair(a[0], a[1]), pair(a[2], a[3]));
        let s1 = quad(pair(a[4], a[5]), pair(a[6], a[7]));
        // quarters 0+1 of s hold groups 0, 2, 4, 6 (of s0) / 8, 10, 12, 14 (of s1); 2+3 the odd ones
        let even = _mm512_shuffle_i32x4::<0x88>(s0, s1);
        let odd = _mm512_shuffle_i32x4::<0xdd>(s0, s1);
        // [g0 g2 g4 g6 | g1 g3 g5 g7 | g8 g10 g12 g14 | g9 g11 g13 g15]
        let z = _mm512_add_epi32(even, odd);
        let order = _mm512_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15);
        let sums = _mm512_permutexvar_epi32(order, z);
        (_mm512_castsi512_si256(sums), _mm512_extracti64x4_epi64::<1>(sums))
    }

    /// y[i, j] for int8 weights in groups of 32 against row i of the 16-bit x split into bytes
    /// (`g.xq`: high, `g.xq_lo`: low; `g.xc`: Σx16 per group), on AVX-512 VNNI: each group's
    /// lanes of Σ (w + 128)·x16 ([`step_bytes512`] on 16 groups at a time, [`step_bytes`] on
    /// 8; no widening of the weights), reduced to one vector of 8 group sums at a time
    /// ([`reduce16`], [`reduce8`]), less 128·Σx16: the exact Σ w·x16 of the groups, scaled by
    /// (d · sx) with 8 f16 scales loaded at once, as [`dot_rows_a16`] does. The last `ng % 8`
    /// groups take [`dot_rows_a16`]'s own tail step on x16, so that the result is that
    /// kernel's, bit for bit.
    #[inline(always)]
    unsafe fn dot_row_bytes(g: &Q8, i: usize, j: usize) -> f32 {
        let ng = g.ng;
        let w = (g.wq as *const u8).add(j * g.wrow);
        let (xh, xl, x16) = (g.xq.add(i * g.kp), g.xq_lo.add(i * g.kp), g.x16.add(i * g.kp));
        let (xs, xc) = (g.xs.add(i * ng), g.xc.add(i * ng));
        let flip = _mm256_set1_epi8(i8::MIN);
        let mut f = _mm256_setzero_ps();
        // 8 group sums of (w + 128)·x16 less 128·Σx16 (= Σ w·x16, exact in i32), scaled into
        // f: the same operations in the same order after the 16- and the 8-group steps
        let scale_add = |f: __m256, sums: __m256i, gi: usize| {
            let c = _mm256_slli_epi32::<7>(_mm256_loadu_si256(xc.add(gi) as *const __m256i));
            let d = I8W16::scales8(g, j, gi);
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(sums, c)), _mm256_mul_ps(d, _mm256_loadu_ps(xs.add(gi))), f)
        };
        let mut gi = 0;
        let flip512 = _mm512_set1_epi8(i8::MIN);
        while gi + 16 <= ng {
            simd::prefetch(w.wrapping_add(gi * 32 + simd::STREAM_AHEAD), 16 * 32);
            let acc: [__m512i; 8] = std::array::from_fn(|t| {
                let p = (gi + 2 * t) * 32;
                let wu = _mm512_xor_si512(_mm512_loadu_si512(w.add(p) as *const _), flip512);
                step_bytes512(wu, xh.add(p), xl.add(p))
            });
            let (lo, hi) = reduce16(acc);
            f = scale_add(f, lo, gi);
            f = scale_add(f, hi, gi + 8);
            gi += 16;
        }
        while gi + 8 <= ng {
            simd::prefetch(w.wrapping_add(gi * 32 + simd::STREAM_AHEAD), 8 * 32);
            let acc: [__m256i; 8] = std::array::from_fn(|t| {
                let p = (gi + t) * 32;
                let wu = _mm256_xor_si256(_mm256_loadu_si256(w.add(p) as *const __m256i), flip);
                step_bytes(wu, xh.add(p), xl.add(p))
            });
            f = scale_add(f, reduce8(acc), gi);
            gi += 8;
        }
        while gi < ng {
            let a = VnniA16::step(_mm256_setzero_si256(), I8W16::widen(w.add(gi * 32)), x16.add(gi * 32));
            f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(a), _mm256_set1_ps(I8W16::scale(g, j, gi) * *xs.add(gi)), f);
            gi += 1;
        }
        hsum256(f)
    }

    /// The W8A16 GEMV over a region on AVX-512 VNNI (256-bit vectors) + F16C: 2 to 4 rows of
    /// x at a time against every column as on AVX2 (the weights widened once for all the rows,
    /// `dpwssd`), a last lone row with x split into bytes ([`dot_row_bytes`]: no widening,
    /// which is what a lone row pays for). Both give the same bits.
    ///
    /// # Safety
    /// The region must lie inside the operands of `g` (int8 weights in groups of 32, k a
    /// multiple of 32; the 16-bit x with `xc` = Σx16 and its bytes `xq` / `xq_lo`); AVX-512
    /// F/VL/BW/VNNI, AVX2, FMA and F16C available.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma,f16c")]
    pub(crate) unsafe fn gemv_w8a16_vnni(g: &Q8) {
        gemv_a16::<VnniA16, I8W16>(g, |i, j| dot_row_bytes(g, i, j))
    }

    /// [`dot_rows_c`] with the chunk count fixed at compile time for the usual groups.
    #[inline(always)]
    unsafe fn dot_rows<S: Step, const R: usize>(g: &Q8, i: usize, j: usize) -> [f32; R] {
        match g.group {
            32 => dot_rows_c::<S, R, 1>(g, i, j),
            64 => dot_rows_c::<S, R, 2>(g, i, j),
            128 => dot_rows_c::<S, R, 4>(g, i, j),
            _ => dot_rows_c::<S, R, 0>(g, i, j),
        }
    }

    /// Each row of w against every row of x (4 at a time) while it sits in L1: w streams
    /// from memory once for any m. A row's sums do not depend on the rows beside it.
    /// (8 rows at a time on VNNI, with 32 vector registers, measured no faster than 2 × 4.)
    #[inline(always)]
    unsafe fn gemv<S: Step>(g: &Q8) {
        for j in g.cols.0..g.cols.1 {
            let mut i = g.rows.0;
            while i < g.rows.1 {
                let r = (g.rows.1 - i).min(4);
                match r {
                    4 => row_x_col::<S, 4>(g, i, j),
                    3 => row_x_col::<S, 3>(g, i, j),
                    2 => row_x_col::<S, 2>(g, i, j),
                    _ => row_x_col::<S, 1>(g, i, j),
                }
                i += r;
            }
        }
    }

    /// Rows i..i+R of x against column j.
    #[inline(always)]
    unsafe fn row_x_col<S: Step, const R: usize>(g: &Q8, i: usize, j: usize) {
        let v = dot_rows::<S, R>(g, i, j);
        for (r, v) in v.into_iter().enumerate() {
            *g.y.add((i + r) * g.n + j) = v;
        }
    }

    /// The GEMV over a region (AVX2).
    ///
    /// # Safety
    /// The region must lie inside the operands of `g` (with `xa`); AVX2 available;
    /// `group % 32 == 0`, `group ≤ MAX_SIMD_GROUP`.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn gemv_avx2(g: &Q8) {
        gemv::<SignTrick>(g)
    }

    /// The GEMV over a region (AVX-512 VNNI).
    ///
    /// # Safety
    /// As [`gemv_avx2`] (with `xc` instead of `xa`); AVX-512 F/VL/BW/VNNI available.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma")]
    pub(crate) unsafe fn gemv_vnni(g: &Q8) {
        gemv::<Vnni>(g)
    }

    // -----------------------------------------------------------------------------
    // GEMM, AVX2: i16 pairs.

    /// 8 × 8 transpose of 32-bit elements: `o[c][r] = r_in[r][c]`.
    #[inline(always)]
    unsafe fn transpose8(r: [__m256i; 8]) -> [__m256i; 8] {
        let t0 = _mm256_unpacklo_epi32(r[0], r[1]);
        let t1 = _mm256_unpackhi_epi32(r[0], r[1]);
        let t2 = _mm256_unpacklo_epi32(r[2], r[3]);
        let t3 = _mm256_unpackhi_epi32(r[2], r[3]);
        let t4 = _mm256_unpacklo_epi32(r[4], r[5]);
        let t5 = _mm256_unpackhi_epi32(r[4], r[5]);
        let t6 = _mm256_unpacklo_epi32(r[6], r[7]);
        let t7 = _mm256_unpackhi_epi32(r[6], r[7]);
        let u0 = _mm256_unpacklo_epi64(t0, t2);
        let u1 = _mm256_unpackhi_epi64(t0, t2);
        let u2 = _mm256_unpacklo_epi64(t1, t3);
        let u3 = _mm256_unpackhi_epi64(t1, t3);
        let u4 = _mm256_unpacklo_epi64(t4, t6);
        let u5 = _mm256_unpackhi_epi64(t4, t6);
        let u6 = _mm256_unpacklo_epi64(t5, t7);
        let u7 = _mm256_unpackhi_epi64(t5, t7);
        [
            _mm256_permute2x128_si256::<0x20>(u0, u4),
            _mm256_permute2x128_si256::<0x20>(u1, u5),
            _mm256_permute2x128_si256::<0x20>(u2, u6),
            _mm256_permute2x128_si256::<0x20>(u3, u7),
            _mm256_permute2x128_si256::<0x31>(u0, u4),
            _mm256_permute2x128_si256::<0x31>(u1, u5),
            _mm256_permute2x128_si256::<0x31>(u2, u6),
            _mm256_permute2x128_si256::<0x31>(u3, u7),
        ]
    }

    /// Packs rows j0..j0+nr (≤ NR) × columns kb..kb+kc of w as [step][NR rows][2 × i16]
    /// (step s holds k = kb+2s, kb+2s+1; zero past k and for rows ≥ nr), and the rows'
    /// scales of the block's groups as [group][NR] (zero for rows ≥ nr).
    ///
    /// # Safety
    /// Rows and columns inside w; `pw` / `ps` hold `ceil(kc/2)·NR` / `ceil(kc/group)·NR`;
    /// `NR % 8 == 0`.
    #[inline(always)]
    unsafe fn pack_avx2<const NR: usize>(
        g: &Q8,
        j0: usize,
        nr: usize,
        kb: usize,
        kc: usize,
        pw: *mut i32,
        ps: *mut f32,
    ) {
        let k = g.k;
        let steps = kc.div_ceil(2);
        let base = g.wq.add(j0 * k);
        let mut s = 0;
        // 8 steps (16 bytes of each row) at a time: widen to i16, then transpose the
        // 32-bit (pair) units of 8 rows.
        while s + 8 <= steps && kb + 2 * s + 16 <= k {
            let p = kb + 2 * s;
            for h in 0..NR / 8 {
                let r: [__m256i; 8] = std::array::from_fn(|t| {
                    let jj = 8 * h + t;
                    if jj < nr {
                        _mm256_cvtepi8_epi16(
                            _mm_loadu_si128(base.add(jj * k + p) as *const __m128i),
                        )
                    } else {
                        _mm256_setzero_si256()
                    }
                });
                for (c, o) in transpose8(r).into_iter().enumerate() {
                    _mm256_storeu_si256(pw.add((s + c) * NR + 8 * h) as *mut __m256i, o);
                }
            }
            s += 8;
        }
        while s < steps {
            let p = kb + 2 * s;
            let d = pw.add(s * NR);
            for jj in 0..NR {
                let (a, b) = if jj < nr {
                    let r = base.add(jj * k);
                    let a = if p < k { *r.add(p) } else { 0 };
                    let b = if p + 1 < k { *r.add(p + 1) } else { 0 };
                    (a, b)
                } else {
                    (0, 0)
                };
                *d.add(jj) = (i32::from(a) & 0xffff) | (i32::from(b) << 16);
            }
            s += 1;
        }
        for (t, gi) in (kb / g.group..(kb + kc).div_ceil(g.group)).enumerate() {
            for jj in 0..NR {
                *ps.add(t * NR + jj) = if jj < nr {
                    f16_to_f32(*g.ws.add((j0 + jj) * g.ng + gi))
                } else {
                    0.0
                };
            }
        }
    }

    /// y[i0.., j0..] (+)= one MR × 8·NV tile over the k block `kb..kb+kc`.
    ///
    /// # Safety
    /// Panel packed by [`pack_avx2`] (NR = 8·NV) for this block; `mr ≥ 1` rows from i0 and
    /// `nr` columns from j0 inside y.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_avx2<const MR: usize, const NV: usize>(
        g: &Q8,
        i0: usize,
        mr: usize,
        j0: usize,
        nr: usize,
        kb: usize,
        kc: usize,
        pw: *const i32,
        ps: *const f32,
        accumulate: bool,
    ) {
        let (kp, ng, group) = (g.kp, g.ng, g.group);
        // Rows past mr repeat the last valid row (computed, never stored).
        let xr: [*const i16; MR] =
            std::array::from_fn(|i| g.x16.add((i0 + i.min(mr - 1)) * kp + kb));
        let xsr: [*const f32; MR] =
            std::array::from_fn(|i| g.xs.add((i0 + i.min(mr - 1)) * ng + kb / group));
        let mut f = [[_mm256_setzero_ps(); NV]; MR];
        let mut wp = pw;
        let mut sp = ps;
        let mut p = 0;
        let mut gi = 0;
        while p < kc {
            let glen = group.min(kc - p);
            let mut a = [[_mm256_setzero_si256(); NV]; MR];
            for s in 0..glen.div_ceil(2) {
                let wv: [__m256i; NV] =
                    std::array::from_fn(|v| _mm256_loadu_si256(wp.add(8 * v) as *const __m256i));
                wp = wp.add(8 * NV);
                for i in 0..MR {
                    let xb = _mm256_set1_epi32(std::ptr::read_unaligned(
                        xr[i].add(p + 2 * s) as *const i32
                    ));
                    for v in 0..NV {
                        a[i][v] = _mm256_add_epi32(a[i][v], _mm256_madd_epi16(wv[v], xb));
                    }
                }
            }
            let sv: [__m256; NV] = std::array::from_fn(|v| _mm256_loadu_ps(sp.add(8 * v)));
            sp = sp.add(8 * NV);
            for i in 0..MR {
                let d = _mm256_broadcast_ss(&*xsr[i].add(gi));
                for v in 0..NV {
                    f[i][v] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(a[i][v]),
                        _mm256_mul_ps(sv[v], d),
                        f[i][v],
                    );
                }
            }
            p += glen;
            gi += 1;
        }
        let mut out = [0f32; 64];
        for (i, f) in f.iter().enumerate().take(mr) {
            for (v, f) in f.iter().enumerate() {
                _mm256_storeu_ps(out.as_mut_ptr().add(8 * v), *f);
            }
            let y = g.y.add((i0 + i) * g.n + j0);
            for (jj, &v) in out.iter().enumerate().take(nr) {
                if accumulate {
                    *y.add(jj) += v;
                } else {
                    *y.add(jj) = v;
                }
            }
        }
    }

    /// The GEMM over a region (AVX2): NR-row panels of w × k blocks × MR-row tiles of x.
    ///
    /// # Safety
    /// The region must lie inside the operands of `g` (with `x16`); AVX2 available;
    /// `group % 32 == 0`, `group ≤ MAX_SIMD_GROUP`.
    #[target_feature(enable = "avx2,fma")]
    pub(crate) unsafe fn gemm_avx2(g: &Q8) {
        const MR: usize = AVX2_TILE.mr;
        const NR: usize = AVX2_TILE.nr;
        const NV: usize = NR / 8;
        let (k, group) = (g.k, g.group);
        let kcb = k_block(group, KC_AVX2, k);
        let mut panel = take_panel(kcb.div_ceil(2) * NR, kcb.div_ceil(group) * NR);
        let (pw, ps) = (panel.w.as_mut_ptr(), panel.s.as_mut_ptr());
        let mut j0 = g.cols.0;
        while j0 < g.cols.1 {
            let nr = NR.min(g.cols.1 - j0);
            let mut kb = 0;
            while kb < k {
                let kc = kcb.min(k - kb);
                pack_avx2::<NR>(g, j0, nr, kb, kc, pw, ps);
                let mut i0 = g.rows.0;
                while i0 < g.rows.1 {
                    let mr = MR.min(g.rows.1 - i0);
                    tile_avx2::<MR, NV>(g, i0, mr, j0, nr, kb, kc, pw, ps, kb > 0);
                    i0 += MR;
                }
                kb += kc;
            }
            j0 += NR;
        }
        put_panel(panel);
    }

    // -----------------------------------------------------------------------------
    // GEMM, AVX-512 VNNI: u8 quads.

    /// 16 × 16 transpose of 32-bit elements, with the rows given in the order
    /// 0-3, 8-11, 4-7, 12-15 (see [`pack_vnni`]): `o[c][r] = row r, element c`.
    #[inline(always)]
    unsafe fn transpose16(r: [__m512i; 16]) -> [__m512i; 16] {
        let mut o = [_mm512_setzero_si512(); 16];
        // Round 1: columns 0-7 (x) / 8-15 (y) of rows j and j + 8.
        let x: [__m512i; 8] =
            std::array::from_fn(|j| _mm512_shuffle_i32x4::<0b01_00_01_00>(r[j], r[j + 8]));
        let y: [__m512i; 8] =
            std::array::from_fn(|j| _mm512_shuffle_i32x4::<0b11_10_11_10>(r[j], r[j + 8]));
        for (half, v) in [x, y].iter().enumerate() {
            // Round 2: columns 0-3 (lo) / 4-7 (hi) of the half; one 128-bit lane per row,
            // lanes holding rows (j, j + 8, j + 4, j + 12) of the input order.
            let lo: [__m512i; 4] =
                std::array::from_fn(|j| _mm512_shuffle_i32x4::<0b10_00_10_00>(v[j], v[j + 4]));
            let hi: [__m512i; 4] =
                std::array::from_fn(|j| _mm512_shuffle_i32x4::<0b11_01_11_01>(v[j], v[j + 4]));
            for (quarter, q) in [lo, hi].iter().enumerate() {
                // Rounds 3-4: 4 × 4 transposes inside every 128-bit lane.
                let a = _mm512_unpacklo_epi32(q[0], q[1]);
                let b = _mm512_unpackhi_epi32(q[0], q[1]);
                let c = _mm512_unpacklo_epi32(q[2], q[3]);
                let d = _mm512_unpackhi_epi32(q[2], q[3]);
                let c0 = 8 * half + 4 * quarter;
                o[c0] = _mm512_unpacklo_epi64(a, c);
                o[c0 + 1] = _mm512_unpackhi_epi64(a, c);
                o[c0 + 2] = _mm512_unpacklo_epi64(b, d);
                o[c0 + 3] = _mm512_unpackhi_epi64(b, d);
            }
        }
        o
    }

    /// Packs rows j0..j0+nr (≤ NR) × columns kb..kb+kc of w as [step][NR rows][4 × u8]
    /// (step s holds k = kb+4s..kb+4s+4, as w ⊕ 0x80; past k and for rows ≥ nr the bytes
    /// are 0x80, i.e. w = 0), and the scales as [group][NR] (zero for rows ≥ nr).
    ///
    /// # Safety
    /// Rows and columns inside w; `pw` / `ps` hold `ceil(kc/4)·NR` / `ceil(kc/group)·NR`;
    /// `NR % 16 == 0`.
    #[inline(always)]
    unsafe fn pack_vnni<const NR: usize>(
        g: &Q8,
        j0: usize,
        nr: usize,
        kb: usize,
        kc: usize,
        pw: *mut i32,
        ps: *mut f32,
    ) {
        let k = g.k;
        let steps = kc.div_ceil(4);
        let base = g.wq.add(j0 * k);
        let x80 = _mm512_set1_epi8(-128);
        // Row loaded into transpose input t: the order transpose16 expects.
        const ORDER: [usize; 16] = [0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 12, 13, 14, 15];
        let mut s = 0;
        // 16 steps (64 bytes of each row) at a time, 16 rows per transpose.
        while s + 16 <= steps && kb + 4 * s + 64 <= k {
            let p = kb + 4 * s;
            for h in 0..NR / 16 {
                if 16 * h >= nr {
                    for c in 0..16 {
                        _mm512_storeu_si512(pw.add((s + c) * NR + 16 * h) as *mut __m512i, x80);
                    }
                    continue;
                }
                let r: [__m512i; 16] = std::array::from_fn(|t| {
                    let jj = 16 * h + ORDER[t];
                    if jj < nr {
                        _mm512_loadu_si512(base.add(jj * k + p) as *const __m512i)
                    } else {
                        _mm512_setzero_si512()
                    }
                });
                for (c, o) in transpose16(r).into_iter().enumerate() {
                    _mm512_storeu_si512(
                        pw.add((s + c) * NR + 16 * h) as *mut __m512i,
                        _mm512_xor_si512(o, x80),
                    );
                }
            }
            s += 16;
        }
        while s < steps {
            let p = kb + 4 * s;
            let d = pw.add(s * NR);
            for jj in 0..NR {
                let mut b = [0u8; 4];
                if jj < nr {
                    for (t, b) in b.iter_mut().enumerate() {
                        if p + t < k {
                            *b = *base.add(jj * k + p + t) as u8;
                        }
                    }
                }
                *d.add(jj) = i32::from_le_bytes(b.map(|v| v ^ 0x80));
            }
            s += 1;
        }
        for (t, gi) in (kb / g.group..(kb + kc).div_ceil(g.group)).enumerate() {
            for jj in 0..NR {
                *ps.add(t * NR + jj) = if jj < nr {
                    f16_to_f32(*g.ws.add((j0 + jj) * g.ng + gi))
                } else {
                    0.0
                };
            }
        }
    }

    /// [`pack_vnni`] for INT8 weights in tiles (`g.tiled`): a tile's group already holds its 8
    /// steps × 16 rows × 4 bytes (quads in the tiles' order, which x's bytes follow), so the
    /// panel takes each group's 512 bytes of its NR / 16 tiles as they are, ⊕ 0x80, and widens
    /// their 16 scales; tiles past the matrix are 0x80 (w = 0) with zero scales. The same
    /// integers per group as the rows packed by [`pack_vnni`], so the same results bit for bit.
    ///
    /// # Safety
    /// As [`pack_vnni`], with `j0 % 16 == 0`, group 32 and `kb`, `kc` multiples of 32; `g.wq` /
    /// `g.ws` hold the tiles of a matrix of `g.n` rows.
    #[inline(always)]
    unsafe fn pack_vnni_tiles<const NR: usize>(
        g: &Q8,
        j0: usize,
        nr: usize,
        kb: usize,
        kc: usize,
        pw: *mut i32,
        ps: *mut f32,
    ) {
        use crate::kernels::matmul_int8_tiles::{GROUP_BYTES, TILE_ROWS};
        debug_assert!(g.group == 32 && j0.is_multiple_of(TILE_ROWS) && kb.is_multiple_of(32) && kc.is_multiple_of(32));
        let (ng, q) = (g.ng, g.wq as *const u8);
        let x80 = _mm512_set1_epi8(-128);
        for (t, gi) in (kb / 32..(kb + kc) / 32).enumerate() {
            for h in 0..NR / TILE_ROWS {
                let (d, sd) = (pw.add(8 * t * NR + TILE_ROWS * h), ps.add(t * NR + TILE_ROWS * h));
                if TILE_ROWS * h >= nr {
                    for l in 0..8 {
                        _mm512_storeu_si512(d.add(l * NR) as *mut __m512i, x80);
                    }
                    _mm512_storeu_ps(sd, _mm512_setzero_ps());
                    continue;
                }
                let at = (j0 / TILE_ROWS + h) * ng + gi;
                let src = q.add(at * GROUP_BYTES);
                for l in 0..8 {
                    let v = _mm512_loadu_si512(src.add(64 * l) as *const __m512i);
                    _mm512_storeu_si512(d.add(l * NR) as *mut __m512i, _mm512_xor_si512(v, x80));
                }
                _mm512_storeu_ps(sd, _mm512_cvtph_ps(_mm256_loadu_si256(g.ws.add(at * TILE_ROWS) as *const __m256i)));
            }
        }
    }

    /// `n` steps of a group: the bytes of x at `p` (4 per step and row) against the panel's
    /// steps from `w`, into the accumulators.
    ///
    /// # Safety
    /// `w` holds `n` steps of the panel, `x[i]` the rows' bytes `p..p + 4n`; AVX-512 VNNI (the
    /// caller's target features).
    #[inline(always)]
    unsafe fn vnni_steps<const MR: usize, const NV: usize>(a: &mut [[__m512i; NV]; MR], w: *const i32, x: &[*const i8; MR], p: usize, n: usize) {
        let mut w = w;
        for s in 0..n {
            let wv: [__m512i; NV] = std::array::from_fn(|v| _mm512_loadu_si512(w.add(16 * v) as *const __m512i));
            w = w.add(16 * NV);
            for i in 0..MR {
                let xb = _mm512_set1_epi32(std::ptr::read_unaligned(x[i].add(p + 4 * s) as *const i32));
                for v in 0..NV {
                    a[i][v] = _mm512_dpbusd_epi32(a[i][v], wv[v], xb);
                }
            }
        }
    }

    /// y[i0.., j0..] (+)= one MR × 16·NV tile over the k block `kb..kb+kc`. `A16`: x is the
    /// 16-bit x split into bytes (`xq` its high bytes, `xq_lo` its low ones, groups of 32): each
    /// group multiplies the high bytes, shifts the sums left by 8 and goes on with the low
    /// bytes, so that the accumulators end with the exact Σ w·x16, scaled once by `xs` (the
    /// 16-bit x's sx); else `xq` is 8-bit x scaled by `xs`.
    ///
    /// # Safety
    /// As [`tile_avx2`], with a panel packed by [`pack_vnni`] (NR = 16·NV).
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn tile_vnni<const MR: usize, const NV: usize, const A16: bool>(
        g: &Q8,
        i0: usize,
        mr: usize,
        j0: usize,
        nr: usize,
        kb: usize,
        kc: usize,
        pw: *const i32,
        ps: *const f32,
        accumulate: bool,
    ) {
        let (kp, ng, group) = (g.kp, g.ng, g.group);
        let row = |i: usize| i0 + i.min(mr - 1);
        let xr: [*const i8; MR] = std::array::from_fn(|i| g.xq.add(row(i) * kp + kb));
        let xl: [*const i8; MR] = std::array::from_fn(|i| if A16 { g.xq_lo.add(row(i) * kp + kb) } else { xr[i] });
        let g0 = kb / group;
        let xsr: [*const f32; MR] = std::array::from_fn(|i| g.xs.add(row(i) * ng + g0));
        let xcr: [*const i32; MR] = std::array::from_fn(|i| g.xc.add(row(i) * ng + g0));
        let xcl: [*const i32; MR] = std::array::from_fn(|i| if A16 { g.xc_lo.add(row(i) * ng + g0) } else { xcr[i] });
        let mut f = [[_mm512_setzero_ps(); NV]; MR];
        let mut wp = pw;
        let mut sp = ps;
        let mut p = 0;
        let mut gi = 0;
        while p < kc {
            let glen = group.min(kc - p);
            let n = glen.div_ceil(4);
            // Start at −128·Σx: the packed weights are w + 128.
            let mut a: [[__m512i; NV]; MR] =
                std::array::from_fn(|i| [_mm512_set1_epi32(-128 * *xcr[i].add(gi)); NV]);
            vnni_steps(&mut a, wp, &xr, p, n);
            if A16 {
                // Σ w·x16 = 256·Σ w·hi + Σ w·lo: exact in i32 for groups of 32
                for (ai, xc) in a.iter_mut().zip(&xcl) {
                    let c = _mm512_set1_epi32(-128 * *xc.add(gi));
                    for acc in ai.iter_mut() {
                        *acc = _mm512_add_epi32(_mm512_slli_epi32::<8>(*acc), c);
                    }
                }
                vnni_steps(&mut a, wp, &xl, p, n);
            }
            wp = wp.add(n * 16 * NV);
            let sv: [__m512; NV] = std::array::from_fn(|v| _mm512_loadu_ps(sp.add(16 * v)));
            sp = sp.add(16 * NV);
            for i in 0..MR {
                let d = _mm512_set1_ps(*xsr[i].add(gi));
                for v in 0..NV {
                    f[i][v] = _mm512_fmadd_ps(
                        _mm512_cvtepi32_ps(a[i][v]),
                        _mm512_mul_ps(sv[v], d),
                        f[i][v],
                    );
                }
            }
            p += glen;
            gi += 1;
        }
        let mut out = [0f32; 64];
        for (i, f) in f.iter().enumerate().take(mr) {
            for (v, f) in f.iter().enumerate() {
                _mm512_storeu_ps(out.as_mut_ptr().add(16 * v), *f);
            }
            let y = g.y.add((i0 + i) * g.n + j0);
            for (jj, &v) in out.iter().enumerate().take(nr) {
                if accumulate {
                    *y.add(jj) += v;
                } else {
                    *y.add(jj) = v;
                }
            }
        }
    }

    /// The GEMM over a region (AVX-512 VNNI): NR-row panels of w × k blocks × MR-row tiles.
    ///
    /// # Safety
    /// The region must lie inside the operands of `g` (with `xc`); AVX-512 F/VL/BW/VNNI
    /// available; `group % 32 == 0`, `group ≤ MAX_SIMD_GROUP`.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma")]
    pub(crate) unsafe fn gemm_vnni(g: &Q8) {
        gemm_vnni_x::<false>(g)
    }

    /// [`gemm_vnni`] over the 16-bit x split into bytes (`xq` / `xq_lo`, with `xc` / `xc_lo`,
    /// and `xs` its scales): each group's exact Σ w·x16 in one pass (see [`tile_vnni`]).
    ///
    /// # Safety
    /// As [`gemm_vnni`], with `g.group == 32` and the split x set.
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma")]
    pub(crate) unsafe fn gemm_vnni_a16(g: &Q8) {
        debug_assert!(g.group == 32 && !g.xq_lo.is_null());
        gemm_vnni_x::<true>(g)
    }

    #[inline(always)]
    unsafe fn gemm_vnni_x<const A16: bool>(g: &Q8) {
        const MR: usize = VNNI_TILE.mr;
        const NR: usize = VNNI_TILE.nr;
        const NV: usize = NR / 16;
        let (k, group) = (g.k, g.group);
        let kcb = k_block(group, KC_VNNI, k);
        let mut panel = take_panel(kcb.div_ceil(4) * NR, kcb.div_ceil(group) * NR);
        let (pw, ps) = (panel.w.as_mut_ptr(), panel.s.as_mut_ptr());
        let mut j0 = g.cols.0;
        while j0 < g.cols.1 {
            let nr = NR.min(g.cols.1 - j0);
            let mut kb = 0;
            while kb < k {
                let kc = kcb.min(k - kb);
                if g.tiled {
                    pack_vnni_tiles::<NR>(g, j0, nr, kb, kc, pw, ps);
                } else {
                    pack_vnni::<NR>(g, j0, nr, kb, kc, pw, ps);
                }
                let mut i0 = g.rows.0;
                while i0 < g.rows.1 {
                    let mr = MR.min(g.rows.1 - i0);
                    tile_vnni::<MR, NV, A16>(g, i0, mr, j0, nr, kb, kc, pw, ps, kb > 0);
                    i0 += MR;
                }
                kb += kc;
            }
            j0 += NR;
        }
        put_panel(panel);
    }
}
