//! f32-accumulating matmul kernels over weights stored in a narrower format that is widened
//! to f32 on the fly: bf16 (`matmul_bf16`) and int8 with per-group scales (the weight-only
//! scheme of `matmul_int8`). Written once, generic over the vector type ([`Vf`]) and the
//! weight source ([`WSource`]), and instantiated per ISA in `#[target_feature]` entry points.
//!
//! y[i, j] = Σ_p x[i, p] · w[j, p]; the same structure as `matmul_f32_kernels.rs`:
//! - few rows (decode GEMV; memory-bound): the row(s) of x (in L1) against one row of w at a
//!   time, so w streams through memory once, in order; the widening is a shift (bf16) or a
//!   sign-extend + convert (int8) per vector, with the int8 group scale applied once per group;
//! - many rows (prefill GEMM; compute-bound): a k block of x (MC rows) and of w (NC rows) is
//!   packed into tile-interleaved f32 buffers (the w block widened to f32 while packing, so
//!   the conversion is paid once per x row block), then an MR × NR register tile of FMAs
//!   runs over them.

use std::cell::Cell;

#[cfg(target_arch = "aarch64")]
use super::vec::Q128;
use super::vec::{Vf, P8};
#[cfg(target_arch = "x86_64")]
use super::vec::{Y256, Z512};

/// k block of the packed GEMM (an MR × KC x tile stays in L1).
const KC: usize = 1024;
/// Rows of x per packed block (MC × KC floats stay in L2).
const MC: usize = 192;
/// Rows of w per packed block (NC × KC floats stay in L2 while the x tiles pass).
const NC: usize = 64;

/// Weights `[n, k]` in some format, readable as f32.
pub(crate) trait WSource: Copy + Send + Sync {
    /// w[j, p..p + cnt] as f32, lanes `cnt..L` zero (`1 ≤ cnt ≤ L`; `p` a multiple of L).
    ///
    /// # Safety
    /// V's ISA must be enabled; `j < n`, `p + cnt ≤ k`.
    unsafe fn load<V: Vf>(&self, j: usize, p: usize, cnt: usize) -> V;

    /// [Σ_{p0 ≤ p < p1} x_r[p] · w[j, p] for r < R], x_r = `x + r·ldx`.
    ///
    /// # Safety
    /// V's ISA must be enabled; `j < n`, `p0 < p1 ≤ k`, `p0` a multiple of the int8 group;
    /// the x rows must hold k readable values.
    unsafe fn dot<V: Vf, const R: usize>(
        &self,
        j: usize,
        p0: usize,
        p1: usize,
        x: *const f32,
        ldx: usize,
    ) -> [f32; R];
}

/// bf16 weights: w: [n, k] as bf16 bits.
#[derive(Clone, Copy)]
pub(crate) struct Bf16W {
    pub w: *const u16,
    pub k: usize,
}

// SAFETY: the pointer is into a slice borrowed for the whole matmul call; only read.
unsafe impl Send for Bf16W {}
unsafe impl Sync for Bf16W {}

impl WSource for Bf16W {
    #[inline(always)]
    unsafe fn load<V: Vf>(&self, j: usize, p: usize, cnt: usize) -> V {
        let src = self.w.add(j * self.k + p);
        if cnt == V::L {
            V::load_bf16(src)
        } else {
            V::load_bf16_partial(src, cnt)
        }
    }

    #[inline(always)]
    unsafe fn dot<V: Vf, const R: usize>(
        &self,
        j: usize,
        p0: usize,
        p1: usize,
        x: *const f32,
        ldx: usize,
    ) -> [f32; R] {
        let (w, x, len) = (self.w.add(j * self.k + p0), x.add(p0), p1 - p0);
        // 4 independent accumulators per row of x, however many rows: a row's sum does not
        // depend on the rows beside it (RowPath::Gemv).
        dot_bf16::<V, R, 4>(w, len, x, ldx)
    }
}

/// [Σ_p x_r[p] · w[p] for r < R] over `len` values, with U accumulators per row.
#[inline(always)]
unsafe fn dot_bf16<V: Vf, const R: usize, const U: usize>(
    w: *const u16,
    len: usize,
    x: *const f32,
    ldx: usize,
) -> [f32; R] {
    let l = V::L;
    let mut acc = [[V::zero(); U]; R];
    let mut p = 0;
    while p + U * l <= len {
        for u in 0..U {
            let wv = V::load_bf16(w.add(p + u * l));
            for (r, acc) in acc.iter_mut().enumerate() {
                acc[u] = acc[u].fma(V::load(x.add(r * ldx + p + u * l)), wv);
            }
        }
        p += U * l;
    }
    while p < len {
        let c = (len - p).min(l);
        let wv = if c == l {
            V::load_bf16(w.add(p))
        } else {
            V::load_bf16_partial(w.add(p), c)
        };
        for (r, acc) in acc.iter_mut().enumerate() {
            let xp = x.add(r * ldx + p);
            let xv = if c == l {
                V::load(xp)
            } else {
                V::load_partial(xp, c)
            };
            acc[0] = acc[0].fma(xv, wv);
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

/// int8 weights with per-(row, group) f32 scales (see `quant::QuantizedI8`).
#[derive(Clone, Copy)]
pub(crate) struct I8W {
    pub q: *const i8,  // [n, k]
    pub s: *const f32, // [n, ng]
    pub k: usize,
    pub group: usize,
    pub ng: usize,
}

// SAFETY: the pointers are into slices borrowed for the whole matmul call; only read.
unsafe impl Send for I8W {}
unsafe impl Sync for I8W {}

impl WSource for I8W {
    #[inline(always)]
    unsafe fn load<V: Vf>(&self, j: usize, p: usize, cnt: usize) -> V {
        let q = self.q.add(j * self.k);
        let s = self.s.add(j * self.ng);
        if self.group.is_multiple_of(V::L) {
            // One group covers the whole vector: the dequantized value q·s exactly.
            let v = if cnt == V::L {
                V::load_i8(q.add(p))
            } else {
                V::load_i8_partial(q.add(p), cnt)
            };
            v.mul(V::splat(*s.add(p / self.group)))
        } else {
            let mut buf = [0f32; 16];
            for (t, b) in buf.iter_mut().enumerate().take(cnt) {
                *b = f32::from(*q.add(p + t)) * *s.add((p + t) / self.group);
            }
            V::load(buf.as_ptr())
        }
    }

    #[inline(always)]
    unsafe fn dot<V: Vf, const R: usize>(
        &self,
        j: usize,
        p0: usize,
        p1: usize,
        x: *const f32,
        ldx: usize,
    ) -> [f32; R] {
        let l = V::L;
        let group = self.group;
        let q = self.q.add(j * self.k);
        let s = self.s.add(j * self.ng);
        let mut tot = [V::zero(); R];
        let mut g0 = p0;
        while g0 < p1 {
            let g1 = (g0 + group).min(p1);
            // Σ q·x over the group in two chains per row, then one FMA with the scale.
            let mut acc = [[V::zero(); 2]; R];
            let mut p = g0;
            while p + 2 * l <= g1 {
                for u in 0..2 {
                    let wv = V::load_i8(q.add(p + u * l));
                    for (r, acc) in acc.iter_mut().enumerate() {
                        acc[u] = acc[u].fma(V::load(x.add(r * ldx + p + u * l)), wv);
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
                    acc[0] = acc[0].fma(xv, wv);
                }
                p += c;
            }
            let sv = V::splat(*s.add(g0 / group));
            for (t, acc) in tot.iter_mut().zip(&acc) {
                *t = t.fma(acc[0].add(acc[1]), sv);
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

/// Operands of one thread's share: the whole matrices and the region to compute.
#[derive(Clone, Copy)]
pub(crate) struct Region<S> {
    pub x: *const f32, // x: [m, k]
    pub w: S,          // w: [n, k]
    pub y: *mut f32,   // y: [m, n]
    pub k: usize,
    pub n: usize,
    pub rows: (usize, usize), // i range (of m)
    pub cols: (usize, usize), // j range (of n)
    /// The packed GEMM (true) or the few-rows GEMV (false), for every row of the region:
    /// the caller's [`RowPath`](crate::kernels::RowPath), never the region's height.
    pub packed: bool,
}

// SAFETY: a Region only carries pointers into slices that the public matmul borrows for the
// whole call (the pool's `run` returns before it does); threads write disjoint parts of y.
unsafe impl<S: WSource> Send for Region<S> {}
unsafe impl<S: WSource> Sync for Region<S> {}

/// Per-ISA kernel parameters.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    /// Register tile of the packed GEMM: MR rows of x × NR rows of w.
    pub mr: usize,
    pub nr: usize,
    /// Problems with at least this many rows use the packed GEMM.
    pub pack_rows: usize,
}

pub(crate) const AVX512: Shape = Shape {
    mr: 4,
    nr: 6,
    pack_rows: 3,
};
pub(crate) const AVX2: Shape = Shape {
    mr: 3,
    nr: 4,
    pack_rows: 3,
};
pub(crate) const NEON: Shape = Shape {
    mr: 6,
    nr: 4,
    pack_rows: 3,
};
pub(crate) const PORTABLE: Shape = Shape {
    mr: 2,
    nr: 4,
    pack_rows: 3,
};

// ---------------------------------------------------------------------------------
// Few rows: pairs of rows of x (or a single one) against one row of w at a time.

/// The few-rows path over a region: pairs of rows (or a single one) against every column,
/// one w row at a time.
///
/// Measured: streaming the rows of w in order, one at a time, is what reaches the DRAM
/// bandwidth. Interleaving two rows of w (x read once per pair) or splitting k into blocks
/// that keep a large x in L1 (each row of w then read in strided segments) both defeat the
/// hardware prefetcher and halve the bandwidth. For very long rows (k ≳ 4096 f32 of x) x
/// falls out of L1 as w streams past, which costs some bandwidth with one thread.
#[inline(always)]
unsafe fn few_rows<V: Vf, S: WSource>(g: &Region<S>) {
    let (k, n) = (g.k, g.n);
    // Each row of w against all rows of x while it sits in L1: w streams once for any m.
    for j in g.cols.0..g.cols.1 {
        let mut i = g.rows.0;
        while i + 1 < g.rows.1 {
            let [a, b] = g.w.dot::<V, 2>(j, 0, k, g.x.add(i * k), k);
            *g.y.add(i * n + j) = a;
            *g.y.add((i + 1) * n + j) = b;
            i += 2;
        }
        if i < g.rows.1 {
            let [a] = g.w.dot::<V, 1>(j, 0, k, g.x.add(i * k), k);
            *g.y.add(i * n + j) = a;
        }
    }
}

// ---------------------------------------------------------------------------------
// Many rows: packed, register-blocked GEMM (as in `matmul_f32_kernels.rs`).

/// Packs rows `0..rows` (stride `ld`) × columns `0..kc` of the f32 matrix `src` into
/// `dst[tile][step][row in tile][lane]`, T rows per tile, zero-padded.
///
/// # Safety
/// `src` rows must hold `kc` readable values; `dst` must hold
/// `ceil(rows / T) · T · ceil(kc / L) · L` values.
#[inline(always)]
unsafe fn pack_x<V: Vf, const T: usize>(
    src: *const f32,
    ld: usize,
    rows: usize,
    kc: usize,
    dst: *mut f32,
) {
    let l = V::L;
    let steps = kc.div_ceil(l);
    let mut d = dst;
    let mut r0 = 0;
    while r0 < rows {
        for s in 0..steps {
            let p = s * l;
            let cnt = (kc - p).min(l);
            for t in 0..T {
                let v = if r0 + t >= rows {
                    V::zero()
                } else if cnt == l {
                    V::load(src.add((r0 + t) * ld + p))
                } else {
                    V::load_partial(src.add((r0 + t) * ld + p), cnt)
                };
                v.store(d);
                d = d.add(l);
            }
        }
        r0 += T;
    }
}

/// Packs rows `j0..j0 + rows` × columns `k0..k0 + kc` of w into the same layout, widened.
///
/// # Safety
/// As [`pack_x`], with the rows and columns inside w; `k0` a multiple of L.
#[inline(always)]
unsafe fn pack_w<V: Vf, S: WSource, const T: usize>(
    w: &S,
    j0: usize,
    rows: usize,
    k0: usize,
    kc: usize,
    dst: *mut f32,
) {
    let l = V::L;
    let steps = kc.div_ceil(l);
    let mut d = dst;
    let mut r0 = 0;
    while r0 < rows {
        for s in 0..steps {
            let p = s * l;
            let cnt = (kc - p).min(l);
            for t in 0..T {
                let v = if r0 + t >= rows {
                    V::zero()
                } else {
                    w.load::<V>(j0 + r0 + t, k0 + p, cnt)
                };
                v.store(d);
                d = d.add(l);
            }
        }
        r0 += T;
    }
}

/// y[MR, NR] (+)= x-tile · w-tileᵀ over `steps` packed vectors; stores the `mr × nr` corner.
///
/// # Safety
/// `xp` / `wp` must hold `steps · MR · L` / `steps · NR · L` values; y rows `0..mr`
/// (stride `ldy`) must hold `nr` writable values.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn packed_tile<V: Vf, const MR: usize, const NR: usize>(
    xp: *const f32,
    wp: *const f32,
    steps: usize,
    y: *mut f32,
    ldy: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
) {
    let l = V::L;
    let mut acc = [[V::zero(); NR]; MR];
    let (mut xp, mut wp) = (xp, wp);
    for _ in 0..steps {
        let mut xv = [V::zero(); MR];
        for (i, xv) in xv.iter_mut().enumerate() {
            *xv = V::load(xp.add(i * l));
        }
        #[allow(clippy::needless_range_loop)]
        for j in 0..NR {
            let wv = V::load(wp.add(j * l));
            for i in 0..MR {
                acc[i][j] = acc[i][j].fma(xv[i], wv);
            }
        }
        xp = xp.add(MR * l);
        wp = wp.add(NR * l);
    }
    let mut sums = [[0f32; NR]; MR];
    for (acc, sums) in acc.iter().zip(sums.iter_mut()) {
        let mut j = 0;
        while j + 4 <= NR {
            let s = V::hsum4(acc[j], acc[j + 1], acc[j + 2], acc[j + 3]);
            sums[j..j + 4].copy_from_slice(&s);
            j += 4;
        }
        while j < NR {
            sums[j] = acc[j].hsum();
            j += 1;
        }
    }
    for (i, sums) in sums.iter().enumerate().take(mr) {
        for (j, &s) in sums.iter().enumerate().take(nr) {
            let p = y.add(i * ldy + j);
            if accumulate {
                *p += s;
            } else {
                *p = s;
            }
        }
    }
}

thread_local! {
    /// Reusable packing buffer of this thread (pool workers are persistent).
    static PACK_BUF: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Takes this thread's packing buffer, grown to at least `len` floats (contents stale).
fn take_scratch(len: usize) -> Vec<f32> {
    let buf = PACK_BUF.with(|c| c.take());
    if buf.len() >= len {
        buf
    } else {
        vec![0.0; len]
    }
}

fn put_scratch(buf: Vec<f32>) {
    PACK_BUF.with(|c| c.set(buf));
}

/// The packed GEMM over a region: k blocks → MC row blocks (packed x) → NC column blocks
/// (packed, widened w) → MR × NR register tiles.
#[inline(always)]
unsafe fn packed<V: Vf, S: WSource, const MR: usize, const NR: usize>(g: &Region<S>) {
    let l = V::L;
    let (r0, r1) = g.rows;
    let (c0, c1) = g.cols;
    let (k, n) = (g.k, g.n);
    let kc_max = k.div_ceil(k.div_ceil(KC)).div_ceil(l) * l;
    let mc_max = MC.div_ceil(MR) * MR;
    let nc_max = NC.div_ceil(NR) * NR;
    let (xlen, wlen) = (mc_max * kc_max, nc_max * kc_max);
    let mut buf = take_scratch(xlen + wlen);
    let (xbuf, wbuf) = buf.split_at_mut(xlen);
    let mut k0 = 0;
    while k0 < k {
        let kc = kc_max.min(k - k0);
        let steps = kc.div_ceil(l);
        let mut ib = r0;
        while ib < r1 {
            let mc = mc_max.min(r1 - ib);
            pack_x::<V, MR>(g.x.add(ib * k + k0), k, mc, kc, xbuf.as_mut_ptr());
            let mut jb = c0;
            while jb < c1 {
                let nc = nc_max.min(c1 - jb);
                pack_w::<V, S, NR>(&g.w, jb, nc, k0, kc, wbuf.as_mut_ptr());
                for it in 0..mc.div_ceil(MR) {
                    let xp = xbuf.as_ptr().add(it * steps * MR * l);
                    let mr = MR.min(mc - it * MR);
                    for jt in 0..nc.div_ceil(NR) {
                        let wp = wbuf.as_ptr().add(jt * steps * NR * l);
                        let nr = NR.min(nc - jt * NR);
                        let y = g.y.add((ib + it * MR) * n + jb + jt * NR);
                        packed_tile::<V, MR, NR>(xp, wp, steps, y, n, mr, nr, k0 > 0);
                    }
                }
                jb += nc;
            }
            ib += mc;
        }
        k0 += kc;
    }
    put_scratch(buf);
}

/// Computes the region `g.rows × g.cols` of y with the path that fits its height: the
/// GEMV with vector type VG, the packed GEMM with V.
///
/// # Safety
/// The region must lie inside y; x / w must hold `m·k` / `n·k` values; `k ≥ 1`.
#[inline(always)]
unsafe fn region<VG: Vf, V: Vf, S: WSource, const MR: usize, const NR: usize>(
    g: &Region<S>,
) {
    if g.rows.0 >= g.rows.1 || g.cols.0 >= g.cols.1 {
        return;
    }
    if g.packed {
        packed::<V, S, MR, NR>(g)
    } else {
        few_rows::<VG, S>(g)
    }
}

/// The GEMV's vector on the AVX-512 path: 256-bit. Measured (2-core Zen 4, cold bf16
/// weights) 10-40 % faster than 512-bit vectors, whose x loads split cache lines on every
/// access unless x happens to be 64-byte aligned; the GEMV is memory-bound either way.
#[cfg(target_arch = "x86_64")]
type GEMV512 = Y256;

/// # Safety
/// As [`region`]; the CPU must support AVX-512F/VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(crate) unsafe fn region_avx512<S: WSource>(g: &Region<S>) {
    region::<GEMV512, Z512, S, { AVX512.mr }, { AVX512.nr }>(g)
}

/// # Safety
/// As [`region`]; the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn region_avx2<S: WSource>(g: &Region<S>) {
    region::<Y256, Y256, S, { AVX2.mr }, { AVX2.nr }>(g)
}

/// # Safety
/// As [`region`]; the CPU must support NEON.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn region_neon<S: WSource>(g: &Region<S>) {
    region::<Q128, Q128, S, { NEON.mr }, { NEON.nr }>(g)
}

/// # Safety
/// As [`region`].
pub(crate) unsafe fn region_portable<S: WSource>(g: &Region<S>) {
    region::<P8, P8, S, { PORTABLE.mr }, { PORTABLE.nr }>(g)
}
