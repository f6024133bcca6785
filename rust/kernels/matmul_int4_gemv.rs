//! The AVX-512 VNNI int4 GEMV (decode): rows of packed int4 weights against a few rows of
//! 16-bit x, without widening the weights byte by byte.
//!
//! A group of 32 int4 values is 16 bytes, byte t holding value t in its low nibble and value
//! t + 16 in its high one (GGUF's order). Read as 8 little-endian 16-bit words, word t holds
//! values 2t, 2t + 16, 2t + 1 and 2t + 17 in its four nibbles, so four masks and shifts of the
//! words give four vectors of i16 lanes with one int4 value each:
//!
//! ```text
//! V0 = w & 0xF  -> q[2t]        V1 = (w >> 4) & 0xF  -> q[2t + 16]
//! V2 = (w >> 8) & 0xF -> q[2t + 1]   V3 = w >> 12   -> q[2t + 17]
//! ```
//!
//! `vpdpwssd` multiplies them with x16 laid out to match ([`prepare_x`]) and add
//! lane pairs into i32: a 128-bit lane holds exactly one group (8 words), so after the four
//! multiplies each group's exact integer sum Σ q·x16 is spread over the four i32 of its lane.
//! The accumulator starts at −8·Σx16 in the lane's first i32, making it the centered sum
//! Σ (q − 8)·x16 of `matmul_int4`. The lanes are then converted and multiplied by the group's
//! scale d·sx spread to the lane (no horizontal reduction per group), and the offset term
//! (m + 8·d)·Σx is added for 8 groups at once.
//!
//! A 512-bit vector holds 4 groups; one row of x meets 4 rows of weights per pass
//! ([`cols_per_pass`]), so that x is loaded once for them; the last ng % 8 groups of a row are
//! read with masked loads, zero past ng. (The same scheme on AVX2, 2 groups per 256-bit vector
//! with `madd_epi16`, measured slower than the widening GEMV of `matmul_int8_kernels`, which
//! AVX2 keeps: 48.6 vs 31.4 µs for 960×576, 199 vs 165 µs for 2048×2048, 1 thread.)

use std::arch::x86_64::*;

use crate::kernels::matmul_int8::I4_CENTER;
use crate::kernels::simd;
use crate::kernels::matmul_int8::q8::{hsum256, Q8};

/// Groups per unit: the scales and offsets are loaded 8 at a time (one 128-bit f16 load).
const UNIT_GROUPS: usize = 8;
/// u32 words of one unit of prepared x: 256 x16 (128 words), the 32 accumulator starts, the
/// 32 spread scales sx, the 8 Σx.
pub(crate) const UNIT_WORDS: usize = 200;
const C_AT: usize = 128;
const S_AT: usize = 160;
const F_AT: usize = 192;

/// Units of 8 groups in a row of `ng` groups.
pub(crate) fn units(ng: usize) -> usize {
    ng.div_ceil(UNIT_GROUPS)
}

/// One row of quantized x (`x16`: its kp values, zero past k; `xs`, `xc`, `xf`: its sx, Σx16
/// and f32 Σx per group) in the layout the kernels read, `units(ng)` units of
/// [`UNIT_WORDS`]. Within a unit, group g (0-7) sits in half h = g / 4, lane l = g % 4 of the
/// 512-bit vectors:
/// - x16 as four vectors of 32 i16 per half, lane l, word t: `x16[32g + 2t]`, `[32g + 2t + 16]`,
///   `[32g + 2t + 1]`, `[32g + 2t + 17]` (the values of V0…V3 in the module docs);
/// - the accumulator start: `−8 · xc[g]` in the lane's first i32, 0 in the other three;
/// - `xs[g]` in the lane's four f32;
/// - `xf[g]`.
///
/// Groups past ng are zero throughout. One permutation per group puts its x16 in the four
/// vectors' order (a scalar gather of the pairs took ~1 µs per 1,000 values, serial work on
/// the calling thread before every int4 GEMV of a decode step).
///
/// # Safety
/// The CPU must support AVX-512 F and BW.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn prepare_x(x16: &[i16], xs: &[f32], xc: &[i32], xf: &[f32], out: &mut [u32]) {
    let ng = xs.len();
    assert!(x16.len() >= ng * 32 && xc.len() == ng && xf.len() == ng);
    assert_eq!(out.len(), units(ng) * UNIT_WORDS);
    out.fill(0);
    // the x16 index of each of the four vectors' 8 words of a lane, vector after vector:
    // 2t, 2t + 16, 2t + 1, 2t + 17 (t = 0..8)
    const ORDER: [i16; 32] = {
        let mut o = [0i16; 32];
        let mut i = 0;
        while i < 32 {
            let (v, t) = (i / 8, (i % 8) as i16);
            o[i] = [0, 16, 1, 17][v] + 2 * t;
            i += 1;
        }
        o
    };
    // SAFETY: ORDER holds 32 i16; the loads read group gi's 32 values (x16 holds ng·32); the
    // stores write inside unit gi / 8 (out holds units(ng) units), asserted above.
    unsafe {
        let order = _mm512_loadu_si512(ORDER.as_ptr() as *const _);
        for (gi, ((&s, &c), &f)) in xs.iter().zip(xc).zip(xf).enumerate() {
            let p = _mm512_permutexvar_epi16(order, _mm512_loadu_si512(x16.as_ptr().add(32 * gi) as *const _));
            let unit = out.as_mut_ptr().add(gi / UNIT_GROUPS * UNIT_WORDS);
            let (h, l) = (gi % UNIT_GROUPS / 4, gi % 4);
            // vector v, lane l of half h: 4 words at (h·128 + v·32 + l·8) / 2
            let lane = unit.add(h * 64 + l * 4);
            _mm_storeu_si128(lane as *mut __m128i, _mm512_castsi512_si128(p));
            _mm_storeu_si128(lane.add(16) as *mut __m128i, _mm512_extracti32x4_epi32::<1>(p));
            _mm_storeu_si128(lane.add(32) as *mut __m128i, _mm512_extracti32x4_epi32::<2>(p));
            _mm_storeu_si128(lane.add(48) as *mut __m128i, _mm512_extracti32x4_epi32::<3>(p));
            *unit.add(C_AT + h * 16 + l * 4) = (-I4_CENTER * c) as u32;
            for e in 0..4 {
                *unit.add(S_AT + h * 16 + l * 4 + e) = s.to_bits();
            }
            *unit.add(F_AT + gi % UNIT_GROUPS) = f.to_bits();
        }
    }
}

/// Masks of the i32 lanes (4 per group) of the first `left` groups of a unit, per half.
#[inline(always)]
fn tail_masks(left: usize) -> [u16; 2] {
    let lanes = |groups: usize| ((1u32 << (4 * groups.min(4))) - 1) as u16;
    [lanes(left), lanes(left.saturating_sub(4))]
}

/// Rows of weights per pass over a row of x: 4 while their nibbles span at most
/// 4 KiB (k ≤ 2048: x is loaded once for 4 rows, which streams as one), else 1 (4 distant
/// streams measured up to 2× slower at k = 5632).
fn cols_per_pass(ng: usize) -> usize {
    if ng <= 64 {
        4
    } else {
        1
    }
}


/// One unit of int4 weights as the kernels read it: the nibbles (two 512-bit halves), 8 f16
/// scales and 8 f16 minimums.
struct UnitW {
    w: [__m512i; 2],
    d: __m128i,
    m: __m128i,
}

/// Unit `u` of row `j`'s weights: loaded as they are, or for the last, partial unit (groups
/// `u·8..ng`) with masked loads, zero past ng.
#[inline(always)]
unsafe fn load_unit_vnni(g: &Q8, j: usize, u: usize) -> UnitW {
    let gi = u * UNIT_GROUPS;
    let p = (g.wq as *const u8).add(j * g.wrow + gi * 16);
    let (wd, wm) = (g.ws.add(j * g.ng + gi), g.wm.add(j * g.ng + gi));
    let left = g.ng - gi;
    // every unit asks for the 128 bytes STREAM_AHEAD ahead of it, the last, partial one too: the
    // requests then tile the weights without gaps (rows are contiguous; with k = 576 a row's
    // last 32 bytes were otherwise never asked for)
    simd::prefetch(p.wrapping_add(simd::STREAM_AHEAD), 128);
    simd::prefetch_l2(p.wrapping_add(simd::STREAM_AHEAD_L2), 128);
    if left >= UNIT_GROUPS {
        UnitW {
            w: [_mm512_loadu_si512(p as *const __m512i), _mm512_loadu_si512(p.add(64) as *const __m512i)],
            d: _mm_loadu_si128(wd as *const __m128i),
            m: _mm_loadu_si128(wm as *const __m128i),
        }
    } else {
        let [k0, k1] = tail_masks(left);
        let k16 = ((1u32 << left) - 1) as u8;
        UnitW {
            w: [_mm512_maskz_loadu_epi32(k0, p as *const i32), _mm512_maskz_loadu_epi32(k1, p.add(64) as *const i32)],
            d: _mm_maskz_loadu_epi16(k16, wd as *const i16),
            m: _mm_maskz_loadu_epi16(k16, wm as *const i16),
        }
    }
}

/// [y[i + r, j + c] for r < R, c < C] on AVX-512 VNNI, 4 groups per 512-bit vector: each
/// half-unit of x is loaded once for the C rows of weights. Every (r, c) has its own
/// accumulators and the same operations, whatever R and C.
///
/// # Safety
/// `x` points at R prepared rows ([`prepare_x`]) of `g`; rows j..j+C inside the weights;
/// AVX-512 F/VL/BW/VNNI, AVX2, FMA and F16C available.
#[inline(always)]
#[allow(clippy::needless_range_loop)] // r and c index the accumulators and the operands
unsafe fn dot_vnni<const R: usize, const C: usize>(g: &Q8, x: &[*const u32; R], j: usize) -> [[f32; C]; R] {
    let nibble = _mm512_set1_epi16(0x000f);
    let eight = _mm256_set1_ps(I4_CENTER as f32);
    let spread = [
        _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
        _mm512_setr_epi32(4, 4, 4, 4, 5, 5, 5, 5, 6, 6, 6, 6, 7, 7, 7, 7),
    ];
    // per (r, c): a vector per half of a unit (each lane's share of its group's scaled sum),
    // and the offsets' 8 lanes
    let mut f = [[[_mm512_setzero_ps(); 2]; C]; R];
    let mut fo = [[_mm256_setzero_ps(); C]; R];
    for u in 0..units(g.ng) {
        let wu: [UnitW; C] = std::array::from_fn(|c| load_unit_vnni(g, j + c, u));
        let d8: [__m256; C] = std::array::from_fn(|c| _mm256_cvtph_ps(wu[c].d));
        // the last unit's second half is skipped when it holds no group (ng % 8 in 1..=4:
        // SmolLM2's k = 576 has 18 groups, so 5 halves of work instead of 6)
        let halves = if g.ng - u * UNIT_GROUPS <= 4 { 1 } else { 2 };
        // (a macro, not a closure: a closure does not inherit the target features)
        macro_rules! half {
            ($h:expr) => {{
            let h: usize = $h;
            let dz: [__m512; C] = std::array::from_fn(|c| _mm512_permutexvar_ps(spread[h], _mm512_castps256_ps512(d8[c])));
            let v: [[__m512i; 4]; C] = std::array::from_fn(|c| {
                let w = wu[c].w[h];
                [
                    _mm512_and_si512(w, nibble),
                    _mm512_and_si512(_mm512_srli_epi16::<4>(w), nibble),
                    _mm512_and_si512(_mm512_srli_epi16::<8>(w), nibble),
                    _mm512_srli_epi16::<12>(w),
                ]
            });
            for r in 0..R {
                let xu = x[r].add(u * UNIT_WORDS);
                let xv = xu.add(64 * h) as *const __m512i;
                let xs = [_mm512_loadu_si512(xv), _mm512_loadu_si512(xv.add(1)), _mm512_loadu_si512(xv.add(2)), _mm512_loadu_si512(xv.add(3))];
                let a0 = _mm512_loadu_si512(xu.add(C_AT + 16 * h) as *const __m512i);
                let sx = _mm512_loadu_ps(xu.add(S_AT + 16 * h) as *const f32);
                for c in 0..C {
                    let mut a = _mm512_dpwssd_epi32(a0, v[c][0], xs[0]);
                    a = _mm512_dpwssd_epi32(a, v[c][1], xs[1]);
                    a = _mm512_dpwssd_epi32(a, v[c][2], xs[2]);
                    a = _mm512_dpwssd_epi32(a, v[c][3], xs[3]);
                    f[r][c][h] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(a), _mm512_mul_ps(dz[c], sx), f[r][c][h]);
                }
            }
            }};
        }
        half!(0);
        if halves == 2 {
            half!(1);
        }
        for c in 0..C {
            let o8 = _mm256_fmadd_ps(eight, d8[c], _mm256_cvtph_ps(wu[c].m));
            for r in 0..R {
                fo[r][c] = _mm256_fmadd_ps(o8, _mm256_loadu_ps(x[r].add(u * UNIT_WORDS + F_AT) as *const f32), fo[r][c]);
            }
        }
    }
    let mut out = [[0f32; C]; R];
    for r in 0..R {
        for c in 0..C {
            out[r][c] = _mm512_reduce_add_ps(_mm512_add_ps(f[r][c][0], f[r][c][1])) + hsum256(fo[r][c]);
        }
    }
    out
}

/// The int4 GEMV over the region `g.rows` × `g.cols` of y on AVX-512 VNNI: one row of x
/// against 4 rows of weights at a time (while they stream as one, [`cols_per_pass`]), or up to
/// 4 rows of x against each row of weights.
///
/// # Safety
/// The region lies inside the operands of `g` (int4 weights `wq`/`ws`/`wm`), `g.i4x` holds its
/// m rows prepared by [`prepare_x`] (`units(ng) · UNIT_WORDS` words each); AVX-512
/// F/VL/BW/VNNI, AVX2, FMA and F16C available.
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512vnni,avx2,fma,f16c")]
pub(crate) unsafe fn gemv_i4_vnni(g: &Q8) {
    let xp = g.i4x;
    let stride = units(g.ng) * UNIT_WORDS;
    let mut i = g.rows.0;
    while i < g.rows.1 {
        let r = (g.rows.1 - i).min(4);
        let mut j = g.cols.0;
        while j < g.cols.1 {
            macro_rules! block {
                ($r:literal, $c:literal) => {{
                    let x: [*const u32; $r] = std::array::from_fn(|t| xp.add((i + t) * stride));
                    let v = dot_vnni::<$r, $c>(g, &x, j);
                    for (t, row) in v.iter().enumerate() {
                        std::ptr::copy_nonoverlapping(row.as_ptr(), g.y.add((i + t) * g.n + j), $c);
                    }
                    j += $c;
                }};
            }
            match (r, (g.cols.1 - j).min(cols_per_pass(g.ng))) {
                (1, 4..) => block!(1, 4),
                (1, _) => block!(1, 1),
                (2, _) => block!(2, 1),
                (3, _) => block!(3, 1),
                _ => block!(4, 1),
            }
        }
        i += r;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::test_rng::Rng;

    /// The layout written out word by word (the module docs).
    fn prepare_x_reference(x16: &[i16], xs: &[f32], xc: &[i32], xf: &[f32], out: &mut [u32]) {
        out.fill(0);
        for (gi, (((&s, &c), &f), xg)) in xs.iter().zip(xc).zip(xf).zip(x16.chunks_exact(32)).enumerate() {
            let unit = &mut out[gi / UNIT_GROUPS * UNIT_WORDS..][..UNIT_WORDS];
            let (h, l) = (gi % UNIT_GROUPS / 4, gi % 4);
            // vector v, lane l of half h: words t = 0..8 hold x16[base_v + 2t] (module docs), two
            // words per u32 (the lower index in the low half)
            for (v, base) in [0, 16, 1, 17].into_iter().enumerate() {
                let lane = &mut unit[(h * 128 + v * 32 + l * 8) / 2..][..4];
                for (s, word) in lane.iter_mut().enumerate() {
                    let (a, b) = (xg[base + 4 * s], xg[base + 4 * s + 2]);
                    *word = u32::from(a as u16) | u32::from(b as u16) << 16;
                }
            }
            unit[C_AT + h * 16 + l * 4] = (-I4_CENTER * c) as u32;
            for e in 0..4 {
                unit[S_AT + h * 16 + l * 4 + e] = s.to_bits();
            }
            unit[F_AT + gi % UNIT_GROUPS] = f.to_bits();
        }
    }

    #[test]
    fn prepared_x_has_the_documented_layout() {
        if !(is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw")) {
            return; // the int4 GEMV needs AVX-512 VNNI; this CPU runs another path
        }
        let mut rng = Rng(11);
        for ng in [1usize, 3, 4, 7, 8, 9, 18, 48] {
            let x16: Vec<i16> = (0..ng * 32).map(|_| (rng.next() * 32639.0) as i16).collect();
            let xs: Vec<f32> = rng.vec(ng);
            let xc: Vec<i32> = (0..ng).map(|_| (rng.next() * 1e6) as i32).collect();
            let xf: Vec<f32> = rng.vec(ng);
            let mut want = vec![7u32; units(ng) * UNIT_WORDS];
            let mut got = vec![9u32; units(ng) * UNIT_WORDS];
            prepare_x_reference(&x16, &xs, &xc, &xf, &mut want);
            // SAFETY: AVX-512 F and BW checked above.
            unsafe { prepare_x(&x16, &xs, &xc, &xf, &mut got) };
            assert_eq!(got, want, "ng={ng}");
        }
    }
}
