//! The prefill GEMM of BF16 and INT8 weights on CPUs with AVX512-BF16: `vdpbf16ps` multiplies
//! 32 bf16 pairs per 512-bit instruction into 16 f32 accumulators, twice the multiply-adds of
//! an f32 FMA, with x rounded to bf16 (round to nearest even) as it is packed.
//!
//! The layout is the f32 GEMM's (`matmul_kernels.rs`): k blocks of x (MC rows) and of w (NC
//! rows) are packed into tile-interleaved buffers — here of bf16, 32 values per step of k — and
//! an MR × NR register tile of accumulators runs over them, each accumulator a vector along k
//! reduced across lanes at the end of the block. The weights are one more packing source
//! ([`Weights`]): bf16 copied as they are, int8 groups dequantized (q · scale, rounded to bf16)
//! as they are packed, once per block of up to MC rows of x. Only the GEMM uses it: the decode
//! GEMVs are memory-bound and keep their exact forms (`matmul_bf16`, `matmul_int8`).

use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

use crate::kernels::matmul_amx as amx;
use crate::kernels::matmul_parts::{run_parts, Split};
use crate::threadpool::ThreadPool;

/// Values of k per packed step (one 512-bit vector of bf16).
const L: usize = 32;
/// k block (an MR × KC x tile stays in L1).
const KC: usize = 1024;
/// Rows of x per packed block.
const MC: usize = 192;
/// Rows of w per packed block (NC × KC bf16 stay in L2 while the x tiles pass).
const NC: usize = 96;
/// Register tile: MR rows of x × NR rows of w (24 accumulators of the 32 vector registers).
const MR: usize = 4;
const NR: usize = 6;

/// Whether this CPU runs the kernel (AVX-512 F/BW/VL and BF16; F16C for the int8 and int4 scales).
pub(crate) fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bf16")
            && is_x86_feature_detected!("f16c")
    })
}

/// The weights w: [n, k] as the GEMM reads them.
#[derive(Clone, Copy)]
pub(crate) enum Weights {
    /// bf16 bits, packed as they are.
    Bf16(*const u16),
    /// int8 values with one f16 scale per `group` values of a row (`group` a multiple of 32;
    /// scales `[n, ceil(k / group)]`), packed as bf16(q · scale).
    Int8 { q: *const i8, scales: *const u16, group: usize },
    /// int4 groups of 32 as [`crate::kernels::quant::QuantizedI4`] holds them (`row_bytes` of
    /// nibbles per row; f16 scales d and minimums m `[n, ceil(k / 32)]`), packed as
    /// bf16(q · d + m).
    Int4 { q: *const u8, scales: *const u16, mins: *const u16, row_bytes: usize },
}

/// One thread's share: rows `rows` × columns `cols` of y: [m, n] = x: [m, k] · w: [n, k]ᵀ.
#[derive(Clone, Copy)]
pub(crate) struct Region {
    pub x: *const f32,
    pub w: Weights,
    pub y: *mut f32,
    pub k: usize,
    pub n: usize,
    pub rows: (usize, usize),
    pub cols: (usize, usize),
}

// SAFETY: a Region only carries pointers into slices that `matmul_bf16` borrows for the whole
// call (the pool's `run` returns before it does); threads write disjoint parts of y.
unsafe impl Send for Region {}
unsafe impl Sync for Region {}

thread_local! {
    /// This thread's packing buffer (pool workers are persistent).
    static PACK: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
}

/// Mask of the first `n ≤ 16` lanes.
#[inline(always)]
fn mask16(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// Packs `rows` rows × `kc` columns into `dst[tile][step][row in tile][32]`, T rows per tile:
/// `load(r, p, cnt)` gives row r's 32 values from column p (`cnt` of them real, the rest zero);
/// rows past `rows` are zero.
#[inline(always)]
unsafe fn pack<const T: usize>(rows: usize, kc: usize, dst: *mut u16, load: impl Fn(usize, usize, usize) -> __m512i) {
    let mut d = dst;
    for r0 in (0..rows).step_by(T) {
        for p in (0..kc).step_by(L) {
            for r in r0..r0 + T {
                let v = if r < rows { load(r, p, (kc - p).min(L)) } else { _mm512_setzero_si512() };
                _mm512_storeu_si512(d as *mut __m512i, v);
                d = d.add(L);
            }
        }
    }
}

/// The `cnt ≤ 32` f32 values at `src` as 32 bf16 (round to nearest even; past `cnt` zero), in
/// order: 16-bit lane p holds value p, so 32-bit lane p holds the pair (2p, 2p + 1).
#[inline(always)]
pub(crate) unsafe fn x_bf16(src: *const f32, cnt: usize) -> __m512i {
    let (lo, hi) = if cnt == L {
        (_mm512_loadu_ps(src), _mm512_loadu_ps(src.add(16)))
    } else {
        (
            _mm512_maskz_loadu_ps(mask16(cnt.min(16)), src),
            _mm512_maskz_loadu_ps(mask16(cnt.saturating_sub(16)), src.add(16)),
        )
    };
    // the second operand fills the low half
    std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
}

/// Rows `i0..i0 + rows` × columns `k0..k0 + kc` of the f32 x (row stride `k`), packed MR rows
/// per tile as bf16 rounded to nearest even.
#[inline(always)]
unsafe fn pack_x(x: *const f32, k: usize, i0: usize, rows: usize, k0: usize, kc: usize, dst: *mut u16) {
    pack::<MR>(rows, kc, dst, |r, p, cnt| x_bf16(x.add((i0 + r) * k + k0 + p), cnt))
}

/// Rows `j0..j0 + rows` × columns `k0..k0 + kc` of w (row stride `k`; `k0` a multiple of L),
/// packed T rows per tile as bf16: `dst[tile][step][row in tile][32]`, rows past `rows` and
/// columns past `kc` zero.
#[inline(always)]
pub(crate) unsafe fn pack_w<const T: usize>(w: Weights, k: usize, j0: usize, rows: usize, k0: usize, kc: usize, dst: *mut u16) {
    // an f16 scale or minimum widened by F16C (exact)
    let f16 = |h: u16| _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))));
    match w {
        Weights::Bf16(w) => pack::<T>(rows, kc, dst, |r, p, cnt| {
            let src = w.add((j0 + r) * k + k0 + p) as *const i16;
            if cnt == L {
                _mm512_loadu_si512(src as *const __m512i)
            } else {
                _mm512_maskz_loadu_epi16(((1u64 << cnt) - 1) as __mmask32, src)
            }
        }),
        Weights::Int8 { q, scales, group } => {
            let ng = k.div_ceil(group);
            // col / group without a division where group is a power of two (32 in practice)
            let shift = if group.is_power_of_two() { group.trailing_zeros() } else { u32::MAX };
            let group_of = |col: usize| if shift != u32::MAX { col >> shift } else { col / group };
            pack::<T>(rows, kc, dst, |r, p, cnt| {
                let (row, col) = (j0 + r, k0 + p);
                let src = q.add(row * k + col);
                let v = if cnt == L {
                    _mm256_loadu_si256(src as *const __m256i)
                } else {
                    _mm256_maskz_loadu_epi8(((1u64 << cnt) - 1) as __mmask32, src)
                };
                // the 32 values lie in one group (group % L == 0, col % L == 0)
                let s = _mm512_set1_ps(f16(*scales.add(row * ng + group_of(col))));
                let lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(v))), s);
                let hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(v))), s);
                std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
            })
        }
        Weights::Int4 { q, scales, mins, row_bytes } => {
            let ng = k.div_ceil(L);
            pack::<T>(rows, kc, dst, |r, p, cnt| {
                // one group per step (L = 32): byte t holds value t (low nibble) and t + 16
                let (row, gi) = (j0 + r, (k0 + p) / L);
                let v = _mm_loadu_si128(q.add(row * row_bytes + gi * 16) as *const __m128i);
                let nib = _mm_set1_epi8(0x0f);
                let (lo, hi) = (_mm_and_si128(v, nib), _mm_and_si128(_mm_srli_epi16::<4>(v), nib));
                let d = _mm512_set1_ps(f16(*scales.add(row * ng + gi)));
                let m = _mm512_set1_ps(f16(*mins.add(row * ng + gi)));
                let lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), d, m);
                let hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)), d, m);
                let b = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
                // a short last group: its padding (q = 0, the value m) zeroed like x's
                if cnt == L {
                    b
                } else {
                    _mm512_maskz_mov_epi16(((1u64 << cnt) - 1) as __mmask32, b)
                }
            })
        }
    }
}

impl Weights {
    /// The bytes of w's rows `rows` (values, and for int8/int4 the scales and minimums): up to
    /// three contiguous (start, length) ranges, for prefetching.
    pub(crate) fn block_spans(&self, k: usize, rows: std::ops::Range<usize>) -> [(*const u8, usize); 3] {
        let (j, r) = (rows.start, rows.len());
        // wrapping: nothing is dereferenced here
        match *self {
            Weights::Bf16(w) => [(w.wrapping_add(j * k) as *const u8, 2 * k * r), (w as *const u8, 0), (w as *const u8, 0)],
            Weights::Int8 { q, scales, group } => {
                let ng = k.div_ceil(group);
                [(q.wrapping_add(j * k) as *const u8, k * r), (scales.wrapping_add(j * ng) as *const u8, 2 * ng * r), (q as *const u8, 0)]
            }
            Weights::Int4 { q, scales, mins, row_bytes } => {
                let ng = k.div_ceil(L);
                [
                    (q.wrapping_add(j * row_bytes), row_bytes * r),
                    (scales.wrapping_add(j * ng) as *const u8, 2 * ng * r),
                    (mins.wrapping_add(j * ng) as *const u8, 2 * ng * r),
                ]
            }
        }
    }
}

/// The lane sums of a, b, c, d.
#[inline(always)]
unsafe fn hsum4(a: __m512, b: __m512, c: __m512, d: __m512) -> [f32; 4] {
    // per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3], likewise c, d
    let ab = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
    let cd = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
    // per 128-bit lane: [a, b, c, d] (that lane's share)
    let abcd = _mm512_add_ps(
        _mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),
        _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(ab), _mm512_castps_pd(cd))),
    );
    let h = _mm256_add_ps(_mm512_castps512_ps256(abcd), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(abcd))));
    let q = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
    std::mem::transmute::<__m128, [f32; 4]>(q)
}

/// y[MR, NR] (+)= x-tile · w-tileᵀ over `steps` packed steps; stores the `mr × nr` corner.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile(xp: *const u16, wp: *const u16, steps: usize, y: *mut f32, ldy: usize, mr: usize, nr: usize, accumulate: bool) {
    let mut acc = [[_mm512_setzero_ps(); NR]; MR];
    let (mut xp, mut wp) = (xp, wp);
    for _ in 0..steps {
        let xv: [__m512bh; MR] = std::array::from_fn(|i| std::mem::transmute(_mm512_loadu_si512(xp.add(i * L) as *const __m512i)));
        for j in 0..NR {
            let wv: __m512bh = std::mem::transmute(_mm512_loadu_si512(wp.add(j * L) as *const __m512i));
            for i in 0..MR {
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv[i], wv);
            }
        }
        xp = xp.add(MR * L);
        wp = wp.add(NR * L);
    }
    // every accumulator reduced (a fixed amount of work, so that they stay in registers),
    // then the mr × nr corner stored
    let mut sums = [[0f32; NR]; MR];
    for (acc, sums) in acc.iter().zip(sums.iter_mut()) {
        sums[..4].copy_from_slice(&hsum4(acc[0], acc[1], acc[2], acc[3]));
        sums[4] = _mm512_reduce_add_ps(acc[4]);
        sums[5] = _mm512_reduce_add_ps(acc[5]);
    }
    for (i, sums) in sums.iter().enumerate().take(mr) {
        for (j, &v) in sums.iter().enumerate().take(nr) {
            let p = y.add(i * ldy + j);
            if accumulate {
                *p += v;
            } else {
                *p = v;
            }
        }
    }
}

/// The GEMM over a region: k blocks → MC row blocks (packed x) → NC column blocks (packed w)
/// → MR × NR register tiles.
///
/// # Safety
/// The region lies inside y; x holds `m·k` values and w `[n, k]` (int8: with its scales, and
/// `group % 32 == 0`); `k ≥ 1`; the CPU has the features of [`available`].
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
unsafe fn region(g: &Region) {
    let (r0, r1) = g.rows;
    let (c0, c1) = g.cols;
    if r0 >= r1 || c0 >= c1 {
        return;
    }
    let (k, n) = (g.k, g.n);
    // near-equal k blocks ≤ KC, whole steps
    let kc_max = k.div_ceil(k.div_ceil(KC)).div_ceil(L) * L;
    let mc_max = MC.div_ceil(MR) * MR;
    let nc_max = NC.div_ceil(NR) * NR;
    let (xlen, wlen) = (mc_max * kc_max, nc_max * kc_max);
    let mut buf = PACK.with(|c| c.take());
    if buf.len() < xlen + wlen {
        buf = vec![0; xlen + wlen];
    }
    let (xbuf, wbuf) = buf.split_at_mut(xlen);
    let mut k0 = 0;
    while k0 < k {
        let kc = kc_max.min(k - k0);
        let steps = kc.div_ceil(L);
        let mut ib = r0;
        while ib < r1 {
            let mc = mc_max.min(r1 - ib);
            pack_x(g.x, k, ib, mc, k0, kc, xbuf.as_mut_ptr());
            let mut jb = c0;
            while jb < c1 {
                let nc = nc_max.min(c1 - jb);
                pack_w::<NR>(g.w, k, jb, nc, k0, kc, wbuf.as_mut_ptr());
                for it in 0..mc.div_ceil(MR) {
                    let xp = xbuf.as_ptr().add(it * steps * MR * L);
                    let mr = MR.min(mc - it * MR);
                    for jt in 0..nc.div_ceil(NR) {
                        let wp = wbuf.as_ptr().add(jt * steps * NR * L);
                        let nr = NR.min(nc - jt * NR);
                        let y = g.y.add((ib + it * MR) * n + jb + jt * NR);
                        tile(xp, wp, steps, y, n, mr, nr, k0 > 0);
                    }
                }
                jb += nc;
            }
            ib += mc;
        }
        k0 += kc;
    }
    PACK.with(|c| c.set(buf));
}

/// y: [m, n] = x: [m, k] · wᵀ with x rounded to bf16: on AMX tiles where
/// [`crate::kernels::matmul_amx::enabled`], else with `vdpbf16ps` ([`matmul_vdp`]).
///
/// # Safety
/// x holds `m·k` values, y `m·n`, w is `[n, k]` weights (int8: with `[n, ceil(k / group)]`
/// scales and `group % 32 == 0`; int4: rows of `ceil(k / 32)` whole groups with their scales
/// and minimums) readable for the whole call; `k ≥ 1`; [`available`] holds.
pub(crate) unsafe fn matmul(pool: &ThreadPool, x: &[f32], w: Weights, y: &mut [f32], m: usize, k: usize, n: usize) {
    if amx::enabled() {
        amx::matmul(pool, x, w, y, m, k, n)
    } else {
        matmul_vdp(pool, x, w, y, m, k, n)
    }
}

/// [`matmul`] with `vdpbf16ps`, each thread a part of whole register tiles.
///
/// # Safety
/// As [`matmul`]'s.
pub(crate) unsafe fn matmul_vdp(pool: &ThreadPool, x: &[f32], w: Weights, y: &mut [f32], m: usize, k: usize, n: usize) {
    debug_assert!(available() && x.len() == m * k && y.len() == m * n && k >= 1);
    let whole = Region { x: x.as_ptr(), w, y: y.as_mut_ptr(), k, n, rows: (0, m), cols: (0, n) };
    let whole = &whole; // captured whole: its raw-pointer fields are not Sync on their own
    // SAFETY: the caller's contract; run_parts hands out disjoint rectangles of y.
    run_parts(pool, m, n, k, Split::Tiles { mr: MR, nr: NR }, |rows, cols| unsafe { region(&Region { rows, cols, ..*whole }) });
}
