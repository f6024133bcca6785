//! Weight sources of the one f32-accumulating matmul (`matmul.rs`): each format says how a
//! row block of its weights is loaded and widened to f32 lanes, and the GEMV and the packed
//! GEMM are written once over [`WSource`]:
//! - [`F32W`]: f32 weights, loaded as they are (`matmul_f32`);
//! - [`Bf16W`]: bf16 bits, widened by a 16-bit shift (`matmul_bf16`);
//! - [`I8W`]: int8 with per-(row, group) f16 scales, widened and scaled (the weight-only
//!   scheme of `matmul_int8`, the fallback for groups its integer kernels don't take).
//!
//! Every widening is exact, so each format computes the f32 matmul of its widened weights;
//! only the summation order depends on the path (GEMV or GEMM) and the vector width.

use crate::kernels::quant::f16_to_f32;
use crate::kernels::simd::{self, F32Vec, MAX_LANES};

/// Weights `[n, k]` in some format, readable as f32.
pub(crate) trait WSource: Copy + Send + Sync {
    /// Whether the AVX-512 GEMV reads this format with 512-bit vectors (else 256-bit).
    /// f32 and bf16: 512-bit. On the 2-core AMD EPYC (family 1Ah) the bf16 GEMV streamed 10-25 %
    /// more GB/s with 512-bit vectors at 1 thread (`bench_matmul_bf16`, 2048×5632: 19-23 against
    /// 15-18 GB/s) and llama-1.1b BF16 decoded 1.04-1.34× faster (6 interleaved pairs), the
    /// small shapes alike within noise; an earlier measurement had favoured 256-bit. int8
    /// weight-only: 256-bit.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    const GEMV_512: bool;

    /// w[j, p..p + cnt] as f32, lanes `cnt..L` zero (`1 ≤ cnt ≤ L`; `p` a multiple of L).
    ///
    /// # Safety
    /// V's ISA must be enabled; `j < n`, `p + cnt ≤ k`.
    unsafe fn load<V: F32Vec>(&self, j: usize, p: usize, cnt: usize) -> V;

    /// [Σ_p x_r[p] · w[j, p] for r < R] over the whole row, x_r = `x + r·ldx`. A row's sum
    /// must not depend on R or on the other rows (`RowPath::Gemv`).
    ///
    /// # Safety
    /// V's ISA must be enabled; `j < n`; the x rows must hold k readable values.
    unsafe fn dot<V: F32Vec, const R: usize>(
        &self,
        j: usize,
        x: *const f32,
        ldx: usize,
    ) -> [f32; R];
}

/// An element type read as f32 lanes exactly: f32 itself, or bf16 bits (`u16`).
pub(crate) trait Widen: Copy + 'static {
    /// See [`WSource::GEMV_512`].
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    const GEMV_512: bool;
    /// `L` elements from `p` as f32.
    ///
    /// # Safety
    /// V's ISA must be enabled; `p` valid for `L` elements.
    unsafe fn widen<V: F32Vec>(p: *const Self) -> V;
    /// `n ≤ L` elements from `p` as f32, the other lanes zero; reads nothing past `p + n`.
    ///
    /// # Safety
    /// V's ISA must be enabled; `p` valid for `n` elements.
    unsafe fn widen_partial<V: F32Vec>(p: *const Self, n: usize) -> V;
}

impl Widen for f32 {
    const GEMV_512: bool = true;
    #[inline(always)]
    unsafe fn widen<V: F32Vec>(p: *const f32) -> V {
        V::load(p)
    }
    #[inline(always)]
    unsafe fn widen_partial<V: F32Vec>(p: *const f32, n: usize) -> V {
        V::load_partial(p, n)
    }
}

impl Widen for u16 {
    const GEMV_512: bool = true;
    #[inline(always)]
    unsafe fn widen<V: F32Vec>(p: *const u16) -> V {
        V::load_bf16(p)
    }
    #[inline(always)]
    unsafe fn widen_partial<V: F32Vec>(p: *const u16, n: usize) -> V {
        V::load_bf16_partial(p, n)
    }
}

/// Weights stored one element per value, row-major: w: [n, k].
#[derive(Clone, Copy)]
pub(crate) struct Dense<E> {
    pub w: *const E,
    pub k: usize,
}

/// f32 weights, w: [n, k].
pub(crate) type F32W = Dense<f32>;
/// bf16 weights (bits), w: [n, k].
pub(crate) type Bf16W = Dense<u16>;

// SAFETY: the pointer is into a slice borrowed for the whole matmul call; only read.
unsafe impl<E> Send for Dense<E> {}
unsafe impl<E> Sync for Dense<E> {}

impl<E: Widen> WSource for Dense<E> {
    const GEMV_512: bool = E::GEMV_512;

    #[inline(always)]
    unsafe fn load<V: F32Vec>(&self, j: usize, p: usize, cnt: usize) -> V {
        let src = self.w.add(j * self.k + p);
        if cnt == V::LANES {
            E::widen(src)
        } else {
            E::widen_partial(src, cnt)
        }
    }

    #[inline(always)]
    unsafe fn dot<V: F32Vec, const R: usize>(
        &self,
        j: usize,
        x: *const f32,
        ldx: usize,
    ) -> [f32; R] {
        // 4 independent accumulators per row of x, however many rows: a row's sum does not
        // depend on the rows beside it.
        dot_dense::<V, E, R, 4>(self.w.add(j * self.k), self.k, x, ldx)
    }
}

/// [Σ_p x_r[p] · w[p] for r < R] over `len` values, with U accumulators per row, each
/// reduced as ((acc₀ + acc₁) + acc₂) + acc₃ then across lanes.
///
/// # Safety
/// V's ISA must be enabled; `w` and the R rows of x (stride `ldx`) hold `len` values.
#[inline(always)]
unsafe fn dot_dense<V: F32Vec, E: Widen, const R: usize, const U: usize>(
    w: *const E,
    len: usize,
    x: *const f32,
    ldx: usize,
) -> [f32; R] {
    let l = V::LANES;
    let mut acc = [[V::zero(); U]; R];
    let mut p = 0;
    while p + U * l <= len {
        simd::prefetch((w.add(p) as *const u8).wrapping_add(simd::STREAM_AHEAD), U * l * std::mem::size_of::<E>());
        for u in 0..U {
            let wv = E::widen::<V>(w.add(p + u * l));
            for (r, acc) in acc.iter_mut().enumerate() {
                acc[u] = acc[u].mul_add(V::load(x.add(r * ldx + p + u * l)), wv);
            }
        }
        p += U * l;
    }
    while p < len {
        let c = (len - p).min(l);
        let wv = if c == l {
            E::widen::<V>(w.add(p))
        } else {
            E::widen_partial::<V>(w.add(p), c)
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            let xp = x.add(r * ldx + p);
            let xv = if c == l {
                V::load(xp)
            } else {
                V::load_partial(xp, c)
            };
            acc[0] = acc[0].mul_add(xv, wv);
        }
        p += c;
    }
    let mut out = [0f32; R];
    for (o, acc) in out.iter_mut().zip(&acc) {
        let mut s = acc[0];
        for a in &acc[1..] {
            s = s.add(*a);
        }
        *o = s.hsum();
    }
    out
}

/// int8 weights with per-(row, group) f16 scales (see `quant::QuantizedI8`).
#[derive(Clone, Copy)]
pub(crate) struct I8W {
    pub q: *const i8,  // q: [n, k]
    pub s: *const u16, // s: [n, ng], f16 bits
    pub k: usize,
    pub group: usize,
    pub ng: usize,
}

// SAFETY: the pointers are into slices borrowed for the whole matmul call; only read.
unsafe impl Send for I8W {}
unsafe impl Sync for I8W {}

impl WSource for I8W {
    const GEMV_512: bool = false;

    #[inline(always)]
    unsafe fn load<V: F32Vec>(&self, j: usize, p: usize, cnt: usize) -> V {
        let q = self.q.add(j * self.k);
        let s = self.s.add(j * self.ng);
        if self.group.is_multiple_of(V::LANES) {
            // One group covers the whole vector: the dequantized value q·s exactly.
            let v = if cnt == V::LANES {
                V::load_i8(q.add(p))
            } else {
                V::load_i8_partial(q.add(p), cnt)
            };
            v.mul(V::splat(f16_to_f32(*s.add(p / self.group))))
        } else {
            let mut buf = [0f32; MAX_LANES];
            for (t, b) in buf.iter_mut().enumerate().take(cnt) {
                *b = f32::from(*q.add(p + t)) * f16_to_f32(*s.add((p + t) / self.group));
            }
            V::load(buf.as_ptr())
        }
    }

    #[inline(always)]
    unsafe fn dot<V: F32Vec, const R: usize>(
        &self,
        j: usize,
        x: *const f32,
        ldx: usize,
    ) -> [f32; R] {
        let l = V::LANES;
        let (group, k) = (self.group, self.k);
        let q = self.q.add(j * k);
        let s = self.s.add(j * self.ng);
        let mut tot = [V::zero(); R];
        let mut g0 = 0;
        while g0 < k {
            let g1 = (g0 + group).min(k);
            simd::prefetch((q.add(g0) as *const u8).wrapping_add(simd::STREAM_AHEAD), g1 - g0);
            // Σ q·x over the group in two chains per row, then one FMA with the scale.
            let mut acc = [[V::zero(); 2]; R];
            let mut p = g0;
            while p + 2 * l <= g1 {
                for u in 0..2 {
                    let wv = V::load_i8(q.add(p + u * l));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        acc[u] = acc[u].mul_add(V::load(x.add(r * ldx + p + u * l)), wv);
                    }
                }
                p += 2 * l;
            }
            while p < g1 {
                let c = (g1 - p).min(l);
                let wv = if c == l {
                    V::load_i8(q.add(p))
                } else {
                    V::load_i8_partial(q.add(p), c)
                };
                for (r, acc) in acc.iter_mut().enumerate() {
                    let xp = x.add(r * ldx + p);
                    let xv = if c == l {
                        V::load(xp)
                    } else {
                        V::load_partial(xp, c)
                    };
                    acc[0] = acc[0].mul_add(xv, wv);
                }
                p += c;
            }
            let sv = V::splat(f16_to_f32(*s.add(g0 / group)));
            for (t, acc) in tot.iter_mut().zip(&acc) {
                *t = t.mul_add(acc[0].add(acc[1]), sv);
            }
            g0 = g1;
        }
        let mut out = [0f32; R];
        for (o, t) in out.iter_mut().zip(&tot) {
            *o = t.hsum();
        }
        out
    }
}
