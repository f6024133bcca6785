//! The f32 vector type of the reduced-precision matmuls (`matmul_bf16`, `matmul_int8`):
//! the usual f32 lane ops plus widening loads of bf16 and int8 weights.
//!
//! Its own trait rather than `simd::F32Vec` because the widening loads need the raw
//! register types, which `simd_x86`/`simd_neon` keep private. Every method is `unsafe`:
//! it must run inside a function with the matching `#[target_feature]`s, and pointers
//! must be valid for the lanes accessed.

/// A vector of `L` f32 lanes (see the module docs).
pub(crate) trait Vf: Copy {
    const L: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(v: f32) -> Self;
    /// Loads `L` f32 from `p` (unaligned).
    unsafe fn load(p: *const f32) -> Self;
    /// Stores `L` f32 to `p` (unaligned).
    unsafe fn store(self, p: *mut f32);
    /// self + a·b (fused where the ISA has FMA).
    unsafe fn fma(self, a: Self, b: Self) -> Self;
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    /// Σ lanes.
    unsafe fn hsum(self) -> f32;
    /// [Σ a, Σ b, Σ c, Σ d].
    #[inline(always)]
    unsafe fn hsum4(a: Self, b: Self, c: Self, d: Self) -> [f32; 4] {
        [a.hsum(), b.hsum(), c.hsum(), d.hsum()]
    }
    /// Loads `L` bf16 values from `p` as f32 (exact: a 16-bit shift).
    unsafe fn load_bf16(p: *const u16) -> Self;
    /// Loads `L` int8 values from `p` as f32 (exact).
    unsafe fn load_i8(p: *const i8) -> Self;

    /// Loads `n ≤ L` f32 from `p`, zero-filling the rest; reads nothing past `p + n`.
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> Self {
        let mut buf = [0f32; 16];
        debug_assert!(n <= Self::L && Self::L <= 16);
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
        Self::load(buf.as_ptr())
    }
    /// [`load_bf16`](Self::load_bf16) of `n ≤ L` values, zero-filling the rest.
    #[inline(always)]
    unsafe fn load_bf16_partial(p: *const u16, n: usize) -> Self {
        let mut buf = [0u16; 16];
        debug_assert!(n <= Self::L && Self::L <= 16);
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
        Self::load_bf16(buf.as_ptr())
    }
    /// [`load_i8`](Self::load_i8) of `n ≤ L` values, zero-filling the rest.
    #[inline(always)]
    unsafe fn load_i8_partial(p: *const i8, n: usize) -> Self {
        let mut buf = [0i8; 16];
        debug_assert!(n <= Self::L && Self::L <= 16);
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
        Self::load_i8(buf.as_ptr())
    }
}

/// The portable "vector": 8 independent lanes the compiler may map to baseline SIMD.
#[derive(Clone, Copy)]
pub(crate) struct P8([f32; 8]);

impl Vf for P8 {
    const L: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        P8([0.0; 8])
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        P8([v; 8])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        P8(std::ptr::read_unaligned(p as *const [f32; 8]))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; 8], self.0)
    }
    #[inline(always)]
    unsafe fn fma(self, a: Self, b: Self) -> Self {
        let mut r = self.0;
        for ((r, a), b) in r.iter_mut().zip(a.0).zip(b.0) {
            *r += a * b;
        }
        P8(r)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        let mut r = self.0;
        for (r, o) in r.iter_mut().zip(o.0) {
            *r += o;
        }
        P8(r)
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        let mut r = self.0;
        for (r, o) in r.iter_mut().zip(o.0) {
            *r *= o;
        }
        P8(r)
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        let v = self.0;
        ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> Self {
        let b = std::ptr::read_unaligned(p as *const [u16; 8]);
        P8(b.map(|v| f32::from_bits(u32::from(v) << 16)))
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> Self {
        let b = std::ptr::read_unaligned(p as *const [i8; 8]);
        P8(b.map(f32::from))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use x86::{Y256, Z512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::Vf;

    /// 8 × f32 in a ymm register (needs avx2 + fma).
    #[derive(Clone, Copy)]
    pub(crate) struct Y256(pub(crate) __m256);

    /// 16 × f32 in a zmm register (needs avx512f; the entry points also enable avx512vl).
    #[derive(Clone, Copy)]
    pub(crate) struct Z512(pub(crate) __m512);

    #[inline(always)]
    unsafe fn hsum128(v: __m128) -> f32 {
        let hi = _mm_movehl_ps(v, v);
        let s = _mm_add_ps(v, hi);
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    impl Vf for Y256 {
        const L: usize = 8;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Y256(_mm256_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Y256(_mm256_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Y256(_mm256_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm256_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            Y256(_mm256_fmadd_ps(a.0, b.0, self.0))
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Y256(_mm256_add_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            Y256(_mm256_mul_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn hsum(self) -> f32 {
            hsum128(_mm_add_ps(
                _mm256_castps256_ps128(self.0),
                _mm256_extractf128_ps::<1>(self.0),
            ))
        }
        #[inline(always)]
        unsafe fn hsum4(a: Self, b: Self, c: Self, d: Self) -> [f32; 4] {
            let ab = _mm256_hadd_ps(a.0, b.0);
            let cd = _mm256_hadd_ps(c.0, d.0);
            let abcd = _mm256_hadd_ps(ab, cd);
            let s = _mm_add_ps(
                _mm256_castps256_ps128(abcd),
                _mm256_extractf128_ps::<1>(abcd),
            );
            let mut out = [0f32; 4];
            _mm_storeu_ps(out.as_mut_ptr(), s);
            out
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const u16) -> Self {
            let h = _mm_loadu_si128(p as *const __m128i);
            Y256(_mm256_castsi256_ps(_mm256_slli_epi32::<16>(
                _mm256_cvtepu16_epi32(h),
            )))
        }
        #[inline(always)]
        unsafe fn load_i8(p: *const i8) -> Self {
            let b = _mm_loadl_epi64(p as *const __m128i);
            Y256(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)))
        }
    }

    /// Σ lanes of a zmm using 512-bit ops only (keeps all 32 registers usable).
    #[inline(always)]
    unsafe fn hsum512(v: __m512) -> f32 {
        let s = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0b01_00_11_10>(v, v));
        let s = _mm512_add_ps(s, _mm512_shuffle_f32x4::<0b10_11_00_01>(s, s));
        let s = _mm512_add_ps(s, _mm512_permute_ps::<0b01_00_11_10>(s));
        let s = _mm512_add_ps(s, _mm512_permute_ps::<0b10_11_00_01>(s));
        _mm512_cvtss_f32(s)
    }

    impl Vf for Z512 {
        const L: usize = 16;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Z512(_mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Z512(_mm512_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Z512(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            Z512(_mm512_fmadd_ps(a.0, b.0, self.0))
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Z512(_mm512_add_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            Z512(_mm512_mul_ps(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn hsum(self) -> f32 {
            hsum512(self.0)
        }
        #[inline(always)]
        unsafe fn hsum4(a: Self, b: Self, c: Self, d: Self) -> [f32; 4] {
            let (a, b, c, d) = (a.0, b.0, c.0, d.0);
            let ab = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(a, b),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(a, b),
            );
            let cd = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b01_00_01_00>(c, d),
                _mm512_shuffle_f32x4::<0b11_10_11_10>(c, d),
            );
            let s = _mm512_add_ps(
                _mm512_shuffle_f32x4::<0b10_00_10_00>(ab, cd),
                _mm512_shuffle_f32x4::<0b11_01_11_01>(ab, cd),
            );
            let s = _mm512_add_ps(s, _mm512_permute_ps::<0b01_00_11_10>(s));
            let s = _mm512_add_ps(s, _mm512_permute_ps::<0b10_11_00_01>(s));
            let idx = _mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
            let mut out = [0f32; 4];
            _mm512_mask_storeu_ps(out.as_mut_ptr(), 0x000f, _mm512_permutexvar_ps(idx, s));
            out
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const u16) -> Self {
            let h = _mm256_loadu_si256(p as *const __m256i);
            Z512(_mm512_castsi512_ps(_mm512_slli_epi32::<16>(
                _mm512_cvtepu16_epi32(h),
            )))
        }
        #[inline(always)]
        unsafe fn load_i8(p: *const i8) -> Self {
            let b = _mm_loadu_si128(p as *const __m128i);
            Z512(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b)))
        }
    }
}

#[cfg(target_arch = "aarch64")]
pub(crate) use neon::Q128;

#[cfg(target_arch = "aarch64")]
mod neon {
    use std::arch::aarch64::*;

    use super::Vf;

    /// 4 × f32 in a q register.
    #[derive(Clone, Copy)]
    pub(crate) struct Q128(pub(crate) float32x4_t);

    impl Vf for Q128 {
        const L: usize = 4;
        #[inline(always)]
        unsafe fn zero() -> Self {
            Q128(vdupq_n_f32(0.0))
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Q128(vdupq_n_f32(v))
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Q128(vld1q_f32(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            vst1q_f32(p, self.0)
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            Q128(vfmaq_f32(self.0, a.0, b.0))
        }
        #[inline(always)]
        unsafe fn add(self, o: Self) -> Self {
            Q128(vaddq_f32(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn mul(self, o: Self) -> Self {
            Q128(vmulq_f32(self.0, o.0))
        }
        #[inline(always)]
        unsafe fn hsum(self) -> f32 {
            vaddvq_f32(self.0)
        }
        #[inline(always)]
        unsafe fn hsum4(a: Self, b: Self, c: Self, d: Self) -> [f32; 4] {
            let ab = vpaddq_f32(a.0, b.0);
            let cd = vpaddq_f32(c.0, d.0);
            let mut out = [0f32; 4];
            vst1q_f32(out.as_mut_ptr(), vpaddq_f32(ab, cd));
            out
        }
        #[inline(always)]
        unsafe fn load_bf16(p: *const u16) -> Self {
            Q128(vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p))))
        }
        #[inline(always)]
        unsafe fn load_i8(p: *const i8) -> Self {
            // 4 bytes only: never read past p + 4.
            let w = std::ptr::read_unaligned(p as *const i32);
            let b = vreinterpret_s8_s32(vdup_n_s32(w));
            let h = vmovl_s8(b); // i16 × 8 (lanes 4..8 duplicate 0..4)
            Q128(vcvtq_f32_s32(vmovl_s16(vget_low_s16(h))))
        }
    }
}
