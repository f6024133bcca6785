//! The inner kernels of `matmul_f32`, written once generic over the vector type and
//! instantiated per ISA inside `#[target_feature]` entry points.
//!
//! y[i, j] = Σ_p x[i, p] · w[j, p]: both operands are contiguous along k, so every
//! kernel is a "dot-product" kernel: vector FMAs along k into accumulators that are
//! reduced horizontally at the end of a k block.
//! - few rows (decode GEMV, m ≤ 2; memory-bound): `rows_x_col` runs the row(s) of x
//!   against one row of w at a time, so w streams through memory exactly once, as a
//!   single sequential stream (measured clearly faster than interleaving several rows
//!   of w, which splits the hardware prefetcher's attention);
//! - many rows (prefill GEMM): `packed` copies a k block of x (MC rows) and of w (NC rows)
//!   into tile-interleaved buffers, then an MR × NR register tile runs over them with one
//!   contiguous stream per operand (no cache-set aliasing for power-of-two k, no tails).

use std::cell::Cell;

use crate::kernels::simd::{F32Vec, Portable};

/// k block of the packed GEMM (an MR × KC x tile stays in L1).
const KC: usize = 1024;
/// Rows of x per packed block (MC × KC floats stay in L2).
const MC: usize = 192;
/// Rows of w per packed block (NC × KC floats stay in L2 while the x tiles pass).
const NC: usize = 64;

/// Operands of one thread's share: the whole matrices and the region to compute.
#[derive(Clone, Copy)]
pub(super) struct Region {
    pub x: *const f32, // x: [m, k]
    pub w: *const f32, // w: [n, k]
    pub y: *mut f32,   // y: [m, n]
    pub k: usize,
    pub n: usize,
    pub rows: (usize, usize), // i range (of m)
    pub cols: (usize, usize), // j range (of n)
    /// The packed GEMM (true) or the few-rows GEMV (false), for every row of the region:
    /// the caller's [`RowPath`](crate::kernels::RowPath), never the region's height.
    pub packed: bool,
}

// SAFETY: a Region only carries pointers into slices that `matmul_f32_with` borrows for
// the whole call (the pool's `run` returns before it does); threads write disjoint parts.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

/// Per-ISA kernel parameters.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shape {
    /// Register tile of the packed GEMM: MR rows of x × NR rows of w.
    pub mr: usize,
    pub nr: usize,
    /// Problems with at least this many rows use the packed GEMM.
    pub pack_rows: usize,
}

#[inline(always)]
unsafe fn put(p: *mut f32, v: f32, accumulate: bool) {
    if accumulate {
        *p += v;
    } else {
        *p = v;
    }
}

// ---------------------------------------------------------------------------------
// Few rows (m ≤ 2): rows of x against one row of w at a time; w streams once, in order.

/// y[i, 0] = Σ_p x[i, p] · w[p] for i < R, with U independent accumulators per row.
///
/// # Safety
/// x rows `0..R` (stride `ldx`) and `w` must hold `k` readable values; y rows `0..R`
/// (stride `ldy`) one writable value.
#[inline(always)]
unsafe fn rows_x_col<V: F32Vec, const R: usize, const U: usize>(
    x: *const f32,
    ldx: usize,
    w: *const f32,
    k: usize,
    y: *mut f32,
    ldy: usize,
) {
    let l = V::LANES;
    let mut acc = [[V::zero(); U]; R];
    let mut p = 0;
    while p + U * l <= k {
        for u in 0..U {
            let wv = V::load(w.add(p + u * l));
            for (i, acc) in acc.iter_mut().enumerate() {
                acc[u] = acc[u].mul_add(V::load(x.add(i * ldx + p + u * l)), wv);
            }
        }
        p += U * l;
    }
    while p < k {
        let r = (k - p).min(l);
        let wv = if r == l {
            V::load(w.add(p))
        } else {
            V::load_partial(w.add(p), r)
        };
        for (i, acc) in acc.iter_mut().enumerate() {
            let xp = x.add(i * ldx + p);
            let xv = if r == l {
                V::load(xp)
            } else {
                V::load_partial(xp, r)
            };
            acc[0] = acc[0].mul_add(xv, wv);
        }
        p += r;
    }
    for (i, acc) in acc.iter().enumerate() {
        let mut s = acc[0];
        for a in &acc[1..] {
            s = s.add(*a);
        }
        *y.add(i * ldy) = s.hsum();
    }
}

/// The few-rows path over a region: every column (row of w) against all rows of x, two at
/// a time, while that row of w sits in L1 (w streams from memory once for any m). A row of
/// x paired with another is summed exactly as a lone row (4 accumulators each), so each row
/// of y is the same whatever the other rows are ([`RowPath::Gemv`](crate::kernels::RowPath)).
#[inline(always)]
unsafe fn few_rows<V: F32Vec>(g: &Region) {
    let (k, n) = (g.k, g.n);
    for j in g.cols.0..g.cols.1 {
        let w = g.w.add(j * k);
        let mut i = g.rows.0;
        while i + 1 < g.rows.1 {
            rows_x_col::<V, 2, 4>(g.x.add(i * k), k, w, k, g.y.add(i * n + j), n);
            i += 2;
        }
        if i < g.rows.1 {
            rows_x_col::<V, 1, 4>(g.x.add(i * k), k, w, k, g.y.add(i * n + j), n);
        }
    }
}

// ---------------------------------------------------------------------------------
// Many rows: packed, register-blocked GEMM.

/// Copies rows `0..rows` (stride `ld`) × columns `0..kc` of `src` into `dst` as
/// tile-interleaved vectors: dst[tile][step][row in tile][lane], T rows per tile.
/// Rows past `rows` and columns past `kc` are zero.
///
/// # Safety
/// `src` rows must hold `kc` readable values; `dst` must hold
/// `ceil(rows / T) · T · ceil(kc / L) · L` values.
#[inline(always)]
unsafe fn pack<V: F32Vec, const T: usize>(
    src: *const f32,
    ld: usize,
    rows: usize,
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

/// y[MR, NR] (+)= x-tile · w-tileᵀ over `steps` packed vectors; stores only the
/// `mr × nr` valid corner.
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
    let mut sums = [[0.0f32; NR]; MR];
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
            put(y.add(i * ldy + j), s, accumulate);
        }
    }
}

thread_local! {
    /// Reusable packing buffer of this thread (pool workers are persistent).
    static PACK_BUF: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Takes this thread's packing buffer, grown to at least `len` floats (contents stale).
/// (No closure-based API: the kernel code must stay inside the `#[target_feature]`
/// entry point it is inlined into.)
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

/// The packed GEMM over a region: k blocks → MC row blocks (packed x) → NC column
/// blocks (packed w) → MR × NR register tiles.
#[inline(always)]
unsafe fn packed<V: F32Vec, const MR: usize, const NR: usize>(g: &Region) {
    let l = V::LANES;
    let (r0, r1) = g.rows;
    let (c0, c1) = g.cols;
    let (k, n) = (g.k, g.n);
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
            pack::<V, MR>(g.x.add(ib * k + k0), k, mc, kc, xbuf.as_mut_ptr());
            let mut jb = c0;
            while jb < c1 {
                let nc = nc_max.min(c1 - jb);
                pack::<V, NR>(g.w.add(jb * k + k0), k, nc, kc, wbuf.as_mut_ptr());
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

/// Computes the region `g.rows × g.cols` of y with the path that fits its height.
///
/// # Safety
/// The region must lie inside y, x / w must hold `m·k` / `n·k` values, and `k >= 1`.
#[inline(always)]
unsafe fn region<V: F32Vec, const MR: usize, const NR: usize>(g: &Region) {
    if g.rows.0 >= g.rows.1 || g.cols.0 >= g.cols.1 {
        return;
    }
    if g.packed {
        packed::<V, MR, NR>(g)
    } else {
        few_rows::<V>(g)
    }
}

/// Kernel parameters of each ISA.
pub(super) const AVX512: Shape = Shape {
    mr: 4,
    nr: 6,
    pack_rows: 3,
};
pub(super) const AVX2: Shape = Shape {
    mr: 3,
    nr: 4,
    pack_rows: 3,
};
pub(super) const NEON: Shape = Shape {
    mr: 6,
    nr: 4,
    pack_rows: 3,
};
pub(super) const PORTABLE: Shape = Shape {
    mr: 2,
    nr: 4,
    pack_rows: 3,
};

/// # Safety
/// As [`region`]; the CPU must support AVX-512F/VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
pub(super) unsafe fn region_avx512(g: &Region) {
    region::<crate::kernels::simd::x86::V512, { AVX512.mr }, { AVX512.nr }>(g)
}

/// # Safety
/// As [`region`]; the CPU must support AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn region_avx2(g: &Region) {
    region::<crate::kernels::simd::x86::V256, { AVX2.mr }, { AVX2.nr }>(g)
}

/// # Safety
/// As [`region`]; the CPU must support NEON.
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
pub(super) unsafe fn region_neon(g: &Region) {
    region::<crate::kernels::simd::neon::V128, { NEON.mr }, { NEON.nr }>(g)
}

/// # Safety
/// As [`region`].
pub(super) unsafe fn region_portable(g: &Region) {
    region::<Portable, { PORTABLE.mr }, { PORTABLE.nr }>(g)
}
