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

    /// Whether [`dot`](Self::dot) reads each row of x in the pair layout of [`pair_x`] (bf16)
    /// rather than as it is (f32, int8).
    const PAIRED_X: bool = false;

    /// [Σ_p x_r[p] · w[j, p] for r < R] over the whole row, x_r = `x + r·ldx` (each row laid
    /// out by [`pair_x`] where [`PAIRED_X`](Self::PAIRED_X)). A row's sum must not depend on R
    /// or on the other rows (`RowPath::Gemv`).
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
    /// See [`WSource::PAIRED_X`].
    const PAIRED_X: bool;
    /// [`WSource::dot`] over one row of `len` weights at `w`.
    ///
    /// # Safety
    /// V's ISA must be enabled; `w` and the R rows of x (stride `ldx`, laid out as
    /// [`PAIRED_X`](Self::PAIRED_X) says) hold `len` values.
    unsafe fn dot<V: F32Vec, const R: usize>(w: *const Self, len: usize, x: *const f32, ldx: usize) -> [f32; R];
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
    const PAIRED_X: bool = false;
    #[inline(always)]
    unsafe fn dot<V: F32Vec, const R: usize>(w: *const f32, len: usize, x: *const f32, ldx: usize) -> [f32; R] {
        // 4 independent accumulators per row of x, however many rows: a row's sum does not
        // depend on the rows beside it.
        dot_dense::<V, R, 4>(w, len, x, ldx)
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
    const PAIRED_X: bool = true;
    #[inline(always)]
    unsafe fn dot<V: F32Vec, const R: usize>(w: *const u16, len: usize, x: *const f32, ldx: usize) -> [f32; R] {
        dot_bf16_pairs::<V, R>(w, len, x, ldx)
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
    const PAIRED_X: bool = E::PAIRED_X;

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
        E::dot::<V, R>(self.w.add(j * self.k), self.k, x, ldx)
    }
}

/// Writes `x[..len]` to `out` in the pair layout of the bf16 GEMV: every whole block of
/// 2·L values is split into its even-indexed values then its odd-indexed ones (out[b + i] =
/// x[b + 2i], out[b + L + i] = x[b + 2i + 1]), the order in which [`F32Vec::load_bf16_pairs`]
/// gives a block of bf16 weights; a last part shorter than 2·L is copied as it is.
///
/// # Safety
/// `x` and `out` hold `len` values and do not overlap.
#[inline(always)]
pub(crate) unsafe fn pair_x<V: F32Vec>(x: *const f32, len: usize, out: *mut f32) {
    let l = V::LANES;
    let whole = len - len % (2 * l);
    let mut b = 0;
    while b < whole {
        for i in 0..l {
            *out.add(b + i) = *x.add(b + 2 * i);
            *out.add(b + l + i) = *x.add(b + 2 * i + 1);
        }
        b += 2 * l;
    }
    std::ptr::copy_nonoverlapping(x.add(whole), out.add(whole), len - whole);
}

/// [Σ_p x_r[p] · w[p] for r < R] over `len` bf16 weights, x_r in the layout of [`pair_x`]: a
/// block of 2·L weights is one load, widened in-lane into its even and its odd values
/// ([`F32Vec::load_bf16_pairs`]), each multiplied by its half of the block of x. Four
/// accumulators per row (two blocks a step: even, odd, even, odd), reduced as
/// ((acc₀ + acc₁) + acc₂) + acc₃ then across lanes; the last part shorter than 2·L (x in
/// its own order there) goes into acc₀ a vector at a time. Exact widening, so this is the f32
/// dot product of the widened weights in another summation order than [`dot_dense`]'s.
///
/// # Safety
/// V's ISA must be enabled; `w` and the R rows of x (stride `ldx`) hold `len` values.
#[inline(always)]
unsafe fn dot_bf16_pairs<V: F32Vec, const R: usize>(
    w: *const u16,
    len: usize,
    x: *const f32,
    ldx: usize,
) -> [f32; R] {
    let l = V::LANES;
    let mut acc = [[V::zero(); 4]; R];
    let mut p = 0;
    let ahead = simd::bf16_gemv_ahead();
    while p + 4 * l <= len {
        let wp = w.add(p) as *const u8;
        if ahead.l1 != 0 {
            simd::prefetch(wp.wrapping_add(ahead.l1), 4 * l * 2);
        }
        if ahead.l2 != 0 {
            simd::prefetch_l2(wp.wrapping_add(ahead.l2), 4 * l * 2);
        }
        let (e0, o0) = V::load_bf16_pairs(w.add(p));
        let (e1, o1) = V::load_bf16_pairs(w.add(p + 2 * l));
        for (r, acc) in acc.iter_mut().enumerate() {
            let xr = x.add(r * ldx + p);
            acc[0] = acc[0].mul_add(V::load(xr), e0);
            acc[1] = acc[1].mul_add(V::load(xr.add(l)), o0);
            acc[2] = acc[2].mul_add(V::load(xr.add(2 * l)), e1);
            acc[3] = acc[3].mul_add(V::load(xr.add(3 * l)), o1);
        }
        p += 4 * l;
    }
    if p + 2 * l <= len {
        let (e, o) = V::load_bf16_pairs(w.add(p));
        for (r, acc) in acc.iter_mut().enumerate() {
            let xr = x.add(r * ldx + p);
            acc[0] = acc[0].mul_add(V::load(xr), e);
            acc[1] = acc[1].mul_add(V::load(xr.add(l)), o);
        }
        p += 2 * l;
    }
    dot_tail::<V, u16, R, 4>(w, p, len, x, ldx, &mut acc);
    reduce(&acc)
}

/// [Σ_p x_r[p] · w[p] for r < R] over `len` f32 weights, with U accumulators per row, each
/// reduced as ((acc₀ + acc₁) + acc₂) + acc₃ then across lanes.
///
/// # Safety
/// V's ISA must be enabled; `w` and the R rows of x (stride `ldx`) hold `len` values.
#[inline(always)]
unsafe fn dot_dense<V: F32Vec, const R: usize, const U: usize>(
    w: *const f32,
    len: usize,
    x: *const f32,
    ldx: usize,
) -> [f32; R] {
    let l = V::LANES;
    let mut acc = [[V::zero(); U]; R];
    let mut p = 0;
    while p + U * l <= len {
        simd::prefetch((w.add(p) as *const u8).wrapping_add(simd::STREAM_AHEAD), U * l * 4);
        for u in 0..U {
            let wv = V::load(w.add(p + u * l));
            for (r, acc) in acc.iter_mut().enumerate() {
                acc[u] = acc[u].mul_add(V::load(x.add(r * ldx + p + u * l)), wv);
            }
        }
        p += U * l;
    }
    dot_tail::<V, f32, R, U>(w, p, len, x, ldx, &mut acc);
    reduce(&acc)
}

/// The last `len - p` weights of a row (fewer than a step of its dot kernel) into each row's
/// first accumulator, a vector at a time, x in its own order there.
///
/// # Safety
/// As the dot kernel that calls it.
#[inline(always)]
unsafe fn dot_tail<V: F32Vec, E: Widen, const R: usize, const U: usize>(
    w: *const E,
    mut p: usize,
    len: usize,
    x: *const f32,
    ldx: usize,
    acc: &mut [[V; U]; R],
) {
    let l = V::LANES;
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
}

/// Each row's accumulators summed as ((acc₀ + acc₁) + acc₂) + … then across lanes.
#[inline(always)]
unsafe fn reduce<V: F32Vec, const R: usize, const U: usize>(acc: &[[V; U]; R]) -> [f32; R] {
    let mut out = [0f32; R];
    for (o, acc) in out.iter_mut().zip(acc) {
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
