//! The kernels of the one f32-accumulating matmul (`matmul.rs`), written once, generic over
//! the vector type ([`F32Vec`]) and the weight source ([`WSource`]: f32, bf16, int8
//! weight-only), and instantiated per ISA inside `#[target_feature]` entry points.
//!
//! y[i, j] = Σ_p x[i, p] · w[j, p]: both operands are contiguous along k, so every kernel is a
//! "dot-product" kernel: vector FMAs along k into accumulators reduced across lanes at the end.
//! - few rows (decode GEMV; memory-bound): the row(s) of x (in L1) against one row of w at a
//!   time, so w streams through memory once, in order, widened as it is loaded
//!   ([`WSource::dot`]);
//! - many rows (prefill GEMM; compute-bound): a k block of x (MC rows) and of w (NC rows) is
//!   packed into tile-interleaved f32 buffers (w widened while packing, so the conversion is
//!   paid once per x row block), then an MR × NR register tile of FMAs runs over them with one
//!   contiguous stream per operand (no cache-set aliasing for power-of-two k, no tails).

use std::cell::Cell;

use crate::kernels::matmul_sources::{pair_x, WSource, F32W};
use crate::kernels::simd::{F32Vec, Portable};

/// k block of the packed GEMM (an MR × KC x tile stays in L1).
const KC: usize = 1024;
/// Rows of x per packed block (MC × KC floats stay in L2).
const MC: usize = 192;
/// Rows of w per packed block (NC × KC floats stay in L2 while the x tiles pass).
const NC: usize = 64;

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

/// The few-rows path over a region: every column (row of w) against all rows of x, two at a
/// time, while that row of w sits in L1 (w streams from memory once for any m). A row paired
/// with another is summed exactly as a lone row, so each row of y is the same whatever the
/// other rows are ([`RowPath::Gemv`](crate::kernels::RowPath)).
///
/// Measured: streaming the rows of w in order, one at a time, is what reaches the DRAM
/// bandwidth. Interleaving two rows of w (x read once per pair) or splitting k into blocks
/// that keep a large x in L1 (each row of w then read in strided segments) both defeat the
/// hardware prefetcher and halve the bandwidth. For very long rows (k ≳ 4096 f32 of x) x
/// falls out of L1 as w streams past, which costs some bandwidth with one thread.
///
/// # Safety
/// As [`region`].
#[inline(always)]
unsafe fn few_rows<V: F32Vec, S: WSource>(g: &Region<S>) {
    let (k, n) = (g.k, g.n);
    let (r0, r1) = g.rows;
    // x's rows as `dot` reads them: as they are, or laid out in pairs (this thread's copy,
    // k values a row, made once for all the columns of the region)
    let paired = if S::PAIRED_X {
        let mut buf = take_scratch((r1 - r0) * k);
        for r in r0..r1 {
            pair_x::<V>(g.x.add(r * k), k, buf.as_mut_ptr().add((r - r0) * k));
        }
        Some(buf)
    } else {
        None
    };
    let x = paired.as_ref().map_or(g.x.add(r0 * k), |b| b.as_ptr());
    for j in g.cols.0..g.cols.1 {
        let mut i = r0;
        while i + 1 < r1 {
            let [a, b] = g.w.dot::<V, 2>(j, x.add((i - r0) * k), k);
            *g.y.add(i * n + j) = a;
            *g.y.add((i + 1) * n + j) = b;
            i += 2;
        }
        if i < r1 {
            let [a] = g.w.dot::<V, 1>(j, x.add((i - r0) * k), k);
            *g.y.add(i * n + j) = a;
        }
    }
    if let Some(buf) = paired {
        put_scratch(buf);
    }
}

// ---------------------------------------------------------------------------------
// Many rows: packed, register-blocked GEMM.

/// Packs rows `j0..j0 + rows` × columns `k0..k0 + kc` of `src` (x as an f32 source, or w)
/// into `dst[tile][step][row in tile][lane]` as f32, T rows per tile, zero-padded (rows past
/// `rows`, columns past `kc`).
///
/// # Safety
/// The rows and columns must lie inside `src`, `k0` a multiple of L; `dst` must hold
/// `ceil(rows / T) · T · ceil(kc / L) · L` values.
#[inline(always)]
unsafe fn pack<V: F32Vec, S: WSource, const T: usize>(
    src: &S,
    j0: usize,
    rows: usize,
    k0: usize,
    kc: usize,
    dst: *mut f32,
) {
    let l = V::LANES;
    let steps = kc.div_ceil(l);
    let mut d = dst;
    let mut r0 = 0;
    while r0 < rows {
        for s in 0..steps {
            let p = s * l;
            let cnt = (kc - p).min(l);
            for t in 0..T {
                let v = if r0 + t < rows {
                    src.load::<V>(j0 + r0 + t, k0 + p, cnt)
                } else {
                    V::zero()
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
unsafe fn packed_tile<V: F32Vec, const MR: usize, const NR: usize>(
    xp: *const f32,
    wp: *const f32,
    steps: usize,
    y: *mut f32,
    ldy: usize,
    mr: usize,
    nr: usize,
    accumulate: bool,
) {
    let l = V::LANES;
    let mut acc = [[V::zero(); NR]; MR];
    let (mut xp, mut wp) = (xp, wp);
    for _ in 0..steps {
        let mut xv = [V::zero(); MR];
        for (i, xv) in xv.iter_mut().enumerate() {
            *xv = V::load(xp.add(i * l));
        }
        #[allow(clippy::needless_range_loop)] // (i, j) indexing reads best for the tile
        for j in 0..NR {
            let wv = V::load(wp.add(j * l));
            for i in 0..MR {
                acc[i][j] = acc[i][j].mul_add(xv[i], wv);
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
/// (No closure-based API: the kernel code must stay inside the `#[target_feature]` entry
/// point it is inlined into.)
fn take_scratch(len: usize) -> Vec<f32> {
    let buf = PACK_BUF.with(|c| c.take());
    if buf.len() >= len {
        buf
    } else {
        vec![0.0; len]
    }
}

/// Returns the buffer for the next call on this thread.
fn put_scratch(buf: Vec<f32>) {
    PACK_BUF.with(|c| c.set(buf));
}

/// The packed GEMM over a region: k blocks → MC row blocks (packed x) → NC column blocks
/// (packed, widened w) → MR × NR register tiles.
///
/// # Safety
/// As [`region`].
#[inline(always)]
unsafe fn packed<V: F32Vec, S: WSource, const MR: usize, const NR: usize>(g: &Region<S>) {
    let l = V::LANES;
    let (r0, r1) = g.rows;
    let (c0, c1) = g.cols;
    let (k, n) = (g.k, g.n);
    let x = F32W { w: g.x, k }; // x: [m, k], read as the f32 weights are
                                // Near-equal k blocks ≤ KC, whole vectors.
    let kc_max = k.div_ceil(k.div_ceil(KC)).div_ceil(l) * l;
    let mc_max = MC.div_ceil(MR) * MR;
    let nc_max = NC.div_ceil(NR) * NR;
    let (xlen, wlen) = (mc_max * kc_max, nc_max * kc_max);
    let mut buf = take_scratch(xlen + wlen);
    // xbuf: [mc/MR][steps][MR][L], wbuf: [nc/NR][steps][NR][L]
    let (xbuf, wbuf) = buf.split_at_mut(xlen);
    let mut k0 = 0;
    while k0 < k {
        let kc = kc_max.min(k - k0);
        let steps = kc.div_ceil(l);
        let mut ib = r0;
        while ib < r1 {
            let mc = mc_max.min(r1 - ib);
            pack::<V, F32W, MR>(&x, ib, mc, k0, kc, xbuf.as_mut_ptr());
            let mut jb = c0;
            while jb < c1 {
                let nc = nc_max.min(c1 - jb);
                pack::<V, S, NR>(&g.w, jb, nc, k0, kc, wbuf.as_mut_ptr());
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

/// Computes the region `g.rows × g.cols` of y on the region's path: the GEMV with vector
/// type VG, the packed GEMM with V.
///
/// # Safety
/// The region must lie inside y; x must hold `m·k` values and `g.w` describe `[n, k]`
/// weights; `k ≥ 1`; the ISA of VG and V must be enabled.
#[inline(always)]
unsafe fn region<VG: F32Vec, V: F32Vec, S: WSource, const MR: usize, const NR: usize>(
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

/// # Safety
/// As [`region`]; the CPU must support AVX-512F/VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(crate) unsafe fn region_avx512<S: WSource>(g: &Region<S>) {
    use crate::kernels::simd::x86::{V256, V512};
    if S::GEMV_512 {
        region::<V512, V512, S, { AVX512.mr }, { AVX512.nr }>(g)
    } else {
        region::<V256, V512, S, { AVX512.mr }, { AVX512.nr }>(g)
    }
}

/// # Safety
/// As [`region`]; the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(crate) unsafe fn region_avx2<S: WSource>(g: &Region<S>) {
    use crate::kernels::simd::x86::V256;
    region::<V256, V256, S, { AVX2.mr }, { AVX2.nr }>(g)
}

/// # Safety
/// As [`region`]; the CPU must support NEON.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
pub(crate) unsafe fn region_neon<S: WSource>(g: &Region<S>) {
    use crate::kernels::simd::neon::V128;
    region::<V128, V128, S, { NEON.mr }, { NEON.nr }>(g)
}

/// # Safety
/// As [`region`].
pub(crate) unsafe fn region_portable<S: WSource>(g: &Region<S>) {
    region::<Portable, Portable, S, { PORTABLE.mr }, { PORTABLE.nr }>(g)
}
