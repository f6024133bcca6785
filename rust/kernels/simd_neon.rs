//! aarch64 NEON vector type (`V128`, 4 lanes). Every method must only run inside a function
//! with NEON enabled (the callers are `#[target_feature]` entry points).

use std::arch::aarch64::*;

use super::F32Vec;

/// 4 × f32 in a q register.
#[derive(Clone, Copy)]
pub(crate) struct V128(float32x4_t);

impl F32Vec for V128 {
    const LANES: usize = 4;
    #[inline(always)]
    unsafe fn zero() -> Self {
        V128(vdupq_n_f32(0.0))
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        V128(vdupq_n_f32(v))
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        V128(vld1q_f32(p))
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> Self {
        let mut buf = [0.0f32; 4];
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n.min(4));
        V128(vld1q_f32(buf.as_ptr()))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        vst1q_f32(p, self.0)
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, n: usize) {
        let mut buf = [0.0f32; 4];
        vst1q_f32(buf.as_mut_ptr(), self.0);
        std::ptr::copy_nonoverlapping(buf.as_ptr(), p, n.min(4));
    }
    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        V128(vfmaq_f32(self.0, a.0, b.0))
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        V128(vaddq_f32(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        V128(vmulq_f32(self.0, o.0))
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        vaddvq_f32(self.0)
    }
    #[inline(always)]
    unsafe fn hsum4(a: Self, b: Self, c: Self, d: Self) -> [f32; 4] {
        let ab = vpaddq_f32(a.0, b.0); // a01 a23 b01 b23
        let cd = vpaddq_f32(c.0, d.0);
        let mut out = [0.0f32; 4];
        vst1q_f32(out.as_mut_ptr(), vpaddq_f32(ab, cd)); // Σa Σb Σc Σd
        out
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> Self {
        V128(vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(p))))
    }
    #[inline(always)]
    unsafe fn load_bf16_pairs(p: *const u16) -> (Self, Self) {
        let v = vreinterpretq_u32_u16(vld1q_u16(p)); // 8 × bf16, two per 32-bit lane
        let even = vshlq_n_u32::<16>(v);
        let odd = vandq_u32(v, vdupq_n_u32(0xffff_0000));
        (V128(vreinterpretq_f32_u32(even)), V128(vreinterpretq_f32_u32(odd)))
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> Self {
        // 4 bytes only: never read past p + 4.
        let w = std::ptr::read_unaligned(p as *const i32);
        let b = vreinterpret_s8_s32(vdup_n_s32(w));
        let h = vmovl_s8(b); // i16 × 8 (lanes 4..8 duplicate 0..4)
        V128(vcvtq_f32_s32(vmovl_s16(vget_low_s16(h))))
    }
}
