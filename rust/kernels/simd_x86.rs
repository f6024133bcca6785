//! x86-64 vector types: AVX2+FMA (`V256`, 8 lanes) and AVX-512F (`V512`, 16 lanes).
//! Every method must only run inside a function with the matching target features
//! (the callers are `#[target_feature]` entry points selected by runtime detection).

use std::arch::x86_64::*;

use super::F32Vec;

/// 8 × f32 in a ymm register (needs avx2 + fma).
#[derive(Clone, Copy)]
pub(crate) struct V256(__m256);

/// Lane masks for partial AVX2 loads: a window of 8 starting at `8 - n` has `n` ones.
static MASK8: [i32; 16] = [-1, -1, -1, -1, -1, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0];

#[inline(always)]
unsafe fn mask8(n: usize) -> __m256i {
    debug_assert!(n <= 8);
    _mm256_loadu_si256(MASK8.as_ptr().add(8 - n) as *const __m256i)
}

/// Σ of the 4 lanes of an xmm.
#[inline(always)]
unsafe fn hsum128(v: __m128) -> f32 {
    let hi = _mm_movehl_ps(v, v);
    let s = _mm_add_ps(v, hi);
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

/// [Σ a, Σ b, Σ c, Σ d] of four ymm vectors (transpose-add tree).
#[inline(always)]
unsafe fn hsum4_256(a: __m256, b: __m256, c: __m256, d: __m256) -> __m128 {
    let ab = _mm256_hadd_ps(a, b); // a01 a23 b01 b23 | a45 a67 b45 b67
    let cd = _mm256_hadd_ps(c, d);
    let abcd = _mm256_hadd_ps(ab, cd); // a0123 b0123 c0123 d0123 | a4567 ...
    _mm_add_ps(
        _mm256_castps256_ps128(abcd),
        _mm256_extractf128_ps::<1>(abcd),
    )
}

impl F32Vec for V256 {
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        V256(_mm256_setzero_ps())
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        V256(_mm256_set1_ps(v))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        V256(_mm256_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> Self {
        // Masked-off lanes are not accessed (no fault, no read).
        V256(_mm256_maskload_ps(p, mask8(n)))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm256_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, n: usize) {
        _mm256_maskstore_ps(p, mask8(n), self.0)
    }
    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        V256(_mm256_fmadd_ps(a.0, b.0, self.0))
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        V256(_mm256_add_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        V256(_mm256_mul_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        let s = _mm_add_ps(
            _mm256_castps256_ps128(self.0),
            _mm256_extractf128_ps::<1>(self.0),
        );
        hsum128(s)
    }
    #[inline(always)]
    unsafe fn hsum4(a: Self, b: Self, c: Self, d: Self) -> [f32; 4] {
        let mut out = [0.0f32; 4];
        _mm_storeu_ps(out.as_mut_ptr(), hsum4_256(a.0, b.0, c.0, d.0));
        out
    }
    #[inline(always)]
    unsafe fn hsum4_mul_store(a: Self, b: Self, c: Self, d: Self, mul: f32, out: *mut f32, n: usize) {
        let v = _mm_mul_ps(hsum4_256(a.0, b.0, c.0, d.0), _mm_set1_ps(mul));
        // one masked store of the first n lanes, as V512 does (no round trip through the stack)
        let mask = _mm_cmpgt_epi32(_mm_set1_epi32(n.min(4) as i32), _mm_setr_epi32(0, 1, 2, 3));
        _mm_maskstore_ps(out, mask, v);
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> Self {
        let h = _mm_loadu_si128(p as *const __m128i); // 8 × bf16
        V256(_mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h))))
    }
    #[inline(always)]
    unsafe fn load_bf16_pairs(p: *const u16) -> (Self, Self) {
        let v = _mm256_loadu_si256(p as *const __m256i); // 16 × bf16, two per 32-bit lane
        let even = _mm256_slli_epi32::<16>(v);
        let odd = _mm256_and_si256(v, _mm256_set1_epi32(0xffff_0000u32 as i32));
        (V256(_mm256_castsi256_ps(even)), V256(_mm256_castsi256_ps(odd)))
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> Self {
        let b = _mm_loadl_epi64(p as *const __m128i); // 8 × i8
        V256(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)))
    }
}

/// 16 × f32 in a zmm register (needs avx512f).
#[derive(Clone, Copy)]
pub(crate) struct V512(pub(crate) __m512);

#[inline(always)]
fn mask16(n: usize) -> __mmask16 {
    debug_assert!(n <= 16);
    ((1u32 << n) - 1) as __mmask16
}

/// Σ lanes of a zmm using 512-bit ops only.
///
/// Without AVX512VL, any 128/256-bit op on part of a zmm is VEX-encoded and confines
/// that register to zmm0-15; for the GEMM's 24 accumulators that means spills. So the
/// AVX-512 reductions never touch sub-registers of their inputs.
#[inline(always)]
unsafe fn hsum512(v: __m512) -> f32 {
    let s = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0b01_00_11_10>(v, v)); // + other 256-bit half
    let s = _mm512_add_ps(s, _mm512_shuffle_f32x4::<0b10_11_00_01>(s, s)); // + neighbour quarter
    let s = _mm512_add_ps(s, _mm512_permute_ps::<0b01_00_11_10>(s));
    let s = _mm512_add_ps(s, _mm512_permute_ps::<0b10_11_00_01>(s));
    _mm512_cvtss_f32(s)
}

/// [Σ a, Σ b, Σ c, Σ d] of four zmm vectors in the first four lanes (512-bit ops only, see
/// [`hsum512`]).
#[inline(always)]
unsafe fn hsum4_512_lanes(a: __m512, b: __m512, c: __m512, d: __m512) -> __m512 {
    // 128-bit quarters: ab = [a0+a2, a1+a3, b0+b2, b1+b3], likewise cd.
    let ab = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
    );
    let cd = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b01_00_01_00>(c, d),
        _mm512_shuffle_f32x4::<0b11_10_11_10>(c, d),
    );
    // Quarter q holds 4 partial sums of vector q (a, b, c, d).
    let s = _mm512_add_ps(
        _mm512_shuffle_f32x4::<0b10_00_10_00>(ab, cd),
        _mm512_shuffle_f32x4::<0b11_01_11_01>(ab, cd),
    );
    // Sum within each quarter; every element of quarter q then holds Σ of vector q.
    let s = _mm512_add_ps(s, _mm512_permute_ps::<0b01_00_11_10>(s));
    let s = _mm512_add_ps(s, _mm512_permute_ps::<0b10_11_00_01>(s));
    let idx = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    _mm512_permutexvar_ps(idx, s)
}

/// [Σ a, Σ b, Σ c, Σ d] of four zmm vectors.
#[inline(always)]
unsafe fn hsum4_512(a: __m512, b: __m512, c: __m512, d: __m512) -> [f32; 4] {
    let mut out = [0.0f32; 4];
    _mm512_mask_storeu_ps(out.as_mut_ptr(), 0x000f, hsum4_512_lanes(a, b, c, d));
    out
}

impl F32Vec for V512 {
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        V512(_mm512_setzero_ps())
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        V512(_mm512_set1_ps(v))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        V512(_mm512_loadu_ps(p))
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> Self {
        // Masked-off lanes are fault-suppressed and read as zero.
        V512(_mm512_maskz_loadu_ps(mask16(n), p))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        _mm512_storeu_ps(p, self.0)
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, n: usize) {
        _mm512_mask_storeu_ps(p, mask16(n), self.0)
    }
    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        V512(_mm512_fmadd_ps(a.0, b.0, self.0))
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        V512(_mm512_add_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        V512(_mm512_mul_ps(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        hsum512(self.0)
    }
    #[inline(always)]
    unsafe fn hsum4(a: Self, b: Self, c: Self, d: Self) -> [f32; 4] {
        hsum4_512(a.0, b.0, c.0, d.0)
    }
    #[inline(always)]
    unsafe fn hsum4_mul_store(a: Self, b: Self, c: Self, d: Self, mul: f32, out: *mut f32, n: usize) {
        let v = _mm512_mul_ps(hsum4_512_lanes(a.0, b.0, c.0, d.0), _mm512_set1_ps(mul));
        _mm512_mask_storeu_ps(out, ((1u32 << n.min(4)) - 1) as __mmask16, v);
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> Self {
        let h = _mm256_loadu_si256(p as *const __m256i); // 16 × bf16
        V512(_mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h))))
    }
    #[inline(always)]
    unsafe fn load_bf16_pairs(p: *const u16) -> (Self, Self) {
        let v = _mm512_loadu_si512(p as *const _); // 32 × bf16, two per 32-bit lane
        let even = _mm512_slli_epi32::<16>(v);
        let odd = _mm512_and_si512(v, _mm512_set1_epi32(0xffff_0000u32 as i32));
        (V512(_mm512_castsi512_ps(even)), V512(_mm512_castsi512_ps(odd)))
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> Self {
        let b = _mm_loadu_si128(p as *const __m128i); // 16 × i8
        V512(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)))
    }
}
