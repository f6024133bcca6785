//! The prefill GEMM of BF16, INT8 and INT4 weights on CPUs with AVX512-BF16: `vdpbf16ps`
//! multiplies 32 bf16 pairs per 512-bit instruction into 16 f32 accumulators, twice the
//! multiply-adds of an f32 FMA, with x rounded to bf16 (round to nearest even) as it is packed.
//!
//! Blocking as in the f32 GEMM (`matmul_kernels.rs`): k blocks of x (MC rows) and of w (NC
//! rows) are packed, then an MR × NR register tile runs over them. The tile's accumulators lie
//! along n: each holds 16 outputs of one row of x, and one step of k multiplies a pair of x
//! values (k = 2p, 2p + 1) broadcast to every lane by the pairs (2p, 2p + 1) of 16 rows of w.
//! So x is packed as pairs, MR rows side by side per step (`[tile][pair][MR]`), and w as pairs
//! of NR rows side by side (`[tile][pair][NR]`: 16 × 16 blocks transposed as they are packed),
//! and a tile ends in plain stores: no reduction across lanes. The weights are one more
//! packing source ([`Weights`]): bf16 copied as they are, int8 and int4 groups dequantized (to
//! bf16) as they are packed, once per block of up to MC rows of x. Only the GEMM uses it: the
//! decode GEMVs are memory-bound and keep their exact forms (`matmul_bf16`, `matmul_int8`).

use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

use crate::kernels::matmul_amx as amx;
use crate::kernels::matmul_parts::{run_parts, Split};
use crate::kernels::matmul_int8_tiles as tiles;
use crate::kernels::simd;
use crate::threadpool::ThreadPool;

/// Values of k per packed chunk (one 512-bit vector of bf16: 16 pairs).
const L: usize = 32;
/// k block (an MR × KC x tile stays in L1).
const KC: usize = 1024;
/// Rows of x per packed block.
const MC: usize = 192;
/// Rows of w per packed block (NC × KC bf16 stay in L2 while the x tiles pass).
const NC: usize = 96;
/// Register tile: MR rows of x × NR rows of w, NR / 16 vectors per row of x (24 accumulators
/// of the 32 vector registers). A C copy of the kernel on the Zen 4 EPYC, operands in cache:
/// 8 × 48 at 226–230 GFLOP/s, 6 × 64 234, 12 × 32 244 (but 132 rows for 128; in the library
/// no faster than 8 × 48), against a peak of 228–233 for `vdpbf16ps` alone. The GEMM with the
/// earlier 4 × 6 tile along k ran at 160–190 there.
const MR: usize = 8;
const NR: usize = 48;
/// Vectors of 16 outputs per row of a tile.
const NV: usize = NR / 16;

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
    /// int8 groups of 32 in tiles of 16 rows ([`crate::kernels::matmul_int8_tiles`]), packed
    /// as bf16(q · scale) like `Int8`.
    Int8Tiles { q: *const i8, scales: *const u16 },
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

/// Packs `rows` rows × `kc` columns of w into `dst[tile][step][row in tile][32]`, T rows per
/// tile; rows past `rows` are zero.
#[inline(always)]
unsafe fn pack<const T: usize>(rows: usize, kc: usize, dst: *mut u16, w: &impl Rows) {
    let mut d = dst;
    for r0 in (0..rows).step_by(T) {
        for p in (0..kc).step_by(L) {
            for r in r0..r0 + T {
                let v = if r < rows { w.load(r, p, (kc - p).min(L)) } else { _mm512_setzero_si512() };
                _mm512_storeu_si512(d as *mut __m512i, v);
                d = d.add(L);
            }
        }
    }
}

/// Rows `i0..i0 + rows` × columns `0..k` of the f32 x (row stride `k`) as bf16 rounded to
/// nearest even, `tiles` tiles of T rows in [`pack`]'s layout (`dst[tile][step][row][32]`, the
/// A operand of the AMX tiles), rows past `rows` and columns past k zero.
#[inline(always)]
pub(crate) unsafe fn pack_x_rows<const T: usize>(x: *const f32, k: usize, i0: usize, rows: usize, tiles: usize, dst: *mut u16) {
    /// x's rows `i0..i0 + rows`, then zero rows.
    struct XRows {
        x: *const f32,
        k: usize,
        i0: usize,
        rows: usize,
    }
    impl Rows for XRows {
        #[inline(always)]
        unsafe fn load(&self, r: usize, p: usize, cnt: usize) -> __m512i {
            if r < self.rows {
                x_bf16(self.x.add((self.i0 + r) * self.k + p), cnt)
            } else {
                _mm512_setzero_si512()
            }
        }
    }
    pack::<T>(tiles * T, k, dst, &XRows { x, k, i0, rows })
}

/// The `cnt ≤ 32` f32 values at `src` as 32 bf16 (round to nearest even; past `cnt` zero), in
/// order: 16-bit lane p holds value p, so 32-bit lane p holds the pair (2p, 2p + 1).
#[inline(always)]
unsafe fn x_bf16(src: *const f32, cnt: usize) -> __m512i {
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

/// Rows `i0..i0 + rows` × columns `k0..k0 + kc` of the f32 x (row stride `k`) as bf16 rounded
/// to nearest even, packed as pairs, R ≤ 16 rows per tile, `tiles` tiles:
/// `dst[tile][pair][R]`, 32-bit lane r of a pair holding row r's values (2p, 2p + 1); each tile
/// `kc.div_ceil(L) · 16` pairs long, rows past `rows` and columns past `kc` zero. The broadcast
/// tile's x (R = MR) and the AMX kernel's B tiles (R = 16, all of k).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn pack_x_pairs<const R: usize>(x: *const f32, k: usize, i0: usize, rows: usize, tiles: usize, k0: usize, kc: usize, dst: *mut u16) {
    let pairs = kc.div_ceil(L) * 16;
    for t0 in (0..tiles * R).step_by(R) {
        let tile = dst.add(t0 * pairs * 2);
        for p in (0..kc).step_by(L) {
            let cnt = (kc - p).min(L);
            let mut b = [_mm512_setzero_si512(); 16];
            for (r, b) in b.iter_mut().enumerate().take(R.min(rows.saturating_sub(t0))) {
                *b = x_bf16(x.add((i0 + t0 + r) * k + k0 + p), cnt);
            }
            amx::transpose16(&mut b);
            // pair p / 2 + q: the R rows' lanes (the first R of the 16)
            for (q, v) in b.iter().enumerate() {
                let d = tile.add((p / 2 + q) * R * 2);
                if R == 16 {
                    _mm512_storeu_si512(d as *mut __m512i, *v);
                } else {
                    _mm512_mask_storeu_epi32(d as *mut i32, mask16(R), *v);
                }
            }
        }
    }
}

/// Rows of w as the packing reads them: `load(r, p, cnt)` is row `j0 + r` from column `k0 + p`
/// (`p` a multiple of L) as 32 bf16, `cnt ≤ 32` of them real and the rest zero. A trait with
/// inlined methods rather than closures, so that the loads compile inside the caller's target
/// features.
trait Rows {
    unsafe fn load(&self, r: usize, p: usize, cnt: usize) -> __m512i;
    /// Rows `r0..r0 + 16` from column `k0 + p` (32 of them) already as the 16 pairs of
    /// [`pack_w_pairs`] (`out[q]`, 32-bit lane c: row r0 + c's values 2q, 2q + 1; rows from
    /// `valid` on zero), where the source can give them without a transpose; false otherwise.
    #[inline(always)]
    unsafe fn pairs16(&self, _r0: usize, _p: usize, _valid: usize, _out: &mut [__m512i; 16]) -> bool {
        false
    }
}

/// bf16 weights, copied as they are.
struct Bf16Rows {
    w: *const u16,
    k: usize,
    j0: usize,
    k0: usize,
}

impl Rows for Bf16Rows {
    #[inline(always)]
    unsafe fn load(&self, r: usize, p: usize, cnt: usize) -> __m512i {
        let src = self.w.add((self.j0 + r) * self.k + self.k0 + p) as *const i16;
        if cnt == L {
            _mm512_loadu_si512(src as *const __m512i)
        } else {
            _mm512_maskz_loadu_epi16(((1u64 << cnt) - 1) as __mmask32, src)
        }
    }
}

/// int8 groups (`group % L == 0`): bf16(q · scale).
struct Int8Rows {
    q: *const i8,
    scales: *const u16,
    group: usize,
    /// log2(group) where group is a power of two (32 in practice), else u32::MAX
    shift: u32,
    ng: usize,
    k: usize,
    j0: usize,
    k0: usize,
}

impl Rows for Int8Rows {
    #[inline(always)]
    unsafe fn load(&self, r: usize, p: usize, cnt: usize) -> __m512i {
        let (row, col) = (self.j0 + r, self.k0 + p);
        let src = self.q.add(row * self.k + col);
        let v = if cnt == L {
            _mm256_loadu_si256(src as *const __m256i)
        } else {
            _mm256_maskz_loadu_epi8(((1u64 << cnt) - 1) as __mmask32, src)
        };
        // the 32 values lie in one group (group % L == 0, col % L == 0)
        let gi = if self.shift != u32::MAX { col >> self.shift } else { col / self.group };
        bf16_of_int8(v, simd::f16_to_f32_f16c(*self.scales.add(row * self.ng + gi)))
    }
}

/// 32 int8 values (one group's, in order) as bf16(q · scale), rounded to nearest even.
#[inline(always)]
unsafe fn bf16_of_int8(v: __m256i, scale: f32) -> __m512i {
    let s = _mm512_set1_ps(scale);
    let lo = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(v))), s);
    let hi = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm256_extracti128_si256::<1>(v))), s);
    std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo))
}

/// int8 groups of 32 in tiles of 16 rows: bf16(q · scale), the values gathered from the
/// tile's quads and put back in row order.
struct Int8TileRows {
    q: *const i8,
    scales: *const u16,
    ng: usize,
    j0: usize,
    k0: usize,
}

impl Rows for Int8TileRows {
    #[inline(always)]
    unsafe fn load(&self, r: usize, p: usize, _cnt: usize) -> __m512i {
        // one whole group per step (L = 32, k a multiple of 32)
        let (row, gi) = (self.j0 + r, (self.k0 + p) / L);
        let (t, rr) = (row / tiles::TILE_ROWS, row % tiles::TILE_ROWS);
        let at = (t * self.ng + gi) * tiles::TILE_ROWS;
        // quad l (values 2l, 2l + 1, 16 + 2l, 17 + 2l) of this row sits at 64·l
        let quads = _mm256_i32gather_epi32::<1>(self.q.add(at * 32 + 4 * rr) as *const i32, _mm256_setr_epi32(0, 64, 128, 192, 256, 320, 384, 448));
        // as 16-bit pairs: pair 2l holds values (2l, 2l + 1), pair 2l + 1 values (16 + 2l, 17 + 2l)
        let v = _mm256_permutexvar_epi16(_mm256_setr_epi16(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15), quads);
        bf16_of_int8(v, simd::f16_to_f32_f16c(*self.scales.add(at + rr)))
    }

    /// A tile's group holds its 16 rows' quads (values 2l, 2l + 1, 16 + 2l, 17 + 2l of each row
    /// in one 32-bit lane): each byte is widened, scaled by its row's scale and rounded to bf16
    /// as [`Int8Rows`] does, and bytes 0-1 of quad l make pair l, bytes 2-3 pair 8 + l.
    #[inline(always)]
    unsafe fn pairs16(&self, r0: usize, p: usize, valid: usize, out: &mut [__m512i; 16]) -> bool {
        let row = self.j0 + r0;
        if row % tiles::TILE_ROWS != 0 {
            return false;
        }
        let at = (row / tiles::TILE_ROWS * self.ng + (self.k0 + p) / L) * tiles::TILE_ROWS;
        let s = _mm512_cvtph_ps(_mm256_loadu_si256(self.scales.add(at) as *const __m256i));
        // both 16-bit halves of the first `valid` 32-bit lanes
        let keep = ((1u64 << (2 * valid.min(16))) - 1) as __mmask32;
        // the top byte of every lane times the lane's scale
        let f = |v: __m512i| _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_srai_epi32::<24>(v)), s);
        // 16-bit lane 2c takes lane c of the low half, lane 2c + 1 lane c of the high half
        let interleave = _mm512_set_epi16(
            31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
            23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0,
        );
        // 32-bit lane c: bf16 of a's value in the low half, of b's in the high half
        let pair = |a: __m512i, b: __m512i| {
            let both = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(f(b), f(a)));
            _mm512_maskz_permutexvar_epi16(keep, interleave, both)
        };
        for l in 0..8 {
            let v = _mm512_loadu_si512(self.q.add(at * L + 64 * l) as *const _);
            out[l] = pair(_mm512_slli_epi32::<24>(v), _mm512_slli_epi32::<16>(v));
            out[8 + l] = pair(_mm512_slli_epi32::<8>(v), v);
        }
        true
    }
}

/// int4 groups of 32: bf16(q · d + m).
struct Int4Rows {
    q: *const u8,
    scales: *const u16,
    mins: *const u16,
    row_bytes: usize,
    ng: usize,
    j0: usize,
    k0: usize,
}

impl Rows for Int4Rows {
    #[inline(always)]
    unsafe fn load(&self, r: usize, p: usize, cnt: usize) -> __m512i {
        // one group per step (L = 32): byte t holds value t (low nibble) and t + 16
        let (row, gi) = (self.j0 + r, (self.k0 + p) / L);
        let v = _mm_loadu_si128(self.q.add(row * self.row_bytes + gi * 16) as *const __m128i);
        let nib = _mm_set1_epi8(0x0f);
        let (lo, hi) = (_mm_and_si128(v, nib), _mm_and_si128(_mm_srli_epi16::<4>(v), nib));
        let d = _mm512_set1_ps(simd::f16_to_f32_f16c(*self.scales.add(row * self.ng + gi)));
        let m = _mm512_set1_ps(simd::f16_to_f32_f16c(*self.mins.add(row * self.ng + gi)));
        let lo = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(lo)), d, m);
        let hi = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(hi)), d, m);
        let b = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi, lo));
        // a short last group: its padding (q = 0, the value m) zeroed like x's
        if cnt == L {
            b
        } else {
            _mm512_maskz_mov_epi16(((1u64 << cnt) - 1) as __mmask32, b)
        }
    }
}

impl Weights {
    /// `f(rows)` with w's rows from row `j0` and column `k0` as a [`Rows`] loader.
    #[inline(always)]
    unsafe fn with_rows(self, k: usize, j0: usize, k0: usize, f: impl WithRows) {
        match self {
            Weights::Bf16(w) => f.run(Bf16Rows { w, k, j0, k0 }),
            Weights::Int8 { q, scales, group } => {
                let shift = if group.is_power_of_two() { group.trailing_zeros() } else { u32::MAX };
                f.run(Int8Rows { q, scales, group, shift, ng: k.div_ceil(group), k, j0, k0 })
            }
            Weights::Int4 { q, scales, mins, row_bytes } => f.run(Int4Rows { q, scales, mins, row_bytes, ng: k.div_ceil(L), j0, k0 }),
            Weights::Int8Tiles { q, scales } => f.run(Int8TileRows { q, scales, ng: k / L, j0, k0 }),
        }
    }
}

/// What runs on a [`Rows`] loader, generic over its type.
trait WithRows {
    unsafe fn run<R: Rows>(self, rows: R);
}

/// Rows `j0..j0 + rows` × columns `k0..k0 + kc` of w (row stride `k`; `k0` a multiple of L),
/// packed T rows per tile as bf16: `dst[tile][step][row in tile][32]`, rows past `rows` and
/// columns past `kc` zero (the layout of the AMX tiles, `matmul_amx`).
#[inline(always)]
pub(crate) unsafe fn pack_w<const T: usize>(w: Weights, k: usize, j0: usize, rows: usize, k0: usize, kc: usize, dst: *mut u16) {
    struct Pack<const T: usize>(usize, usize, *mut u16);
    impl<const T: usize> WithRows for Pack<T> {
        #[inline(always)]
        unsafe fn run<R: Rows>(self, w: R) {
            pack::<T>(self.0, self.1, self.2, &w)
        }
    }
    w.with_rows(k, j0, k0, Pack::<T>(rows, kc, dst))
}

/// Rows `j0..j0 + rows` × columns `k0..k0 + kc` of w (as [`pack_w`]) packed as pairs, 16 rows
/// per tile: `dst[tile][step][pair q][16]`, 32-bit lane c of pair q holding row c's values
/// (2q, 2q + 1) of the step, rows past `rows` and columns past `kc` zero: the B operand of the
/// AMX tiles, the layout [`pack_x_pairs`] gives x. Tiled INT8 weights give their pairs as they
/// are ([`Rows::pairs16`]); other sources are transposed.
#[inline(always)]
pub(crate) unsafe fn pack_w_pairs16(w: Weights, k: usize, j0: usize, rows: usize, k0: usize, kc: usize, dst: *mut u16) {
    struct Pairs16(usize, usize, *mut u16);
    impl WithRows for Pairs16 {
        #[inline(always)]
        unsafe fn run<R: Rows>(self, w: R) {
            let (rows, kc, dst) = (self.0, self.1, self.2);
            let steps = kc.div_ceil(L);
            for r0 in (0..rows).step_by(16) {
                let valid = (rows - r0).min(16);
                let tile = dst.add(r0 / 16 * steps * 16 * L);
                for p in (0..kc).step_by(L) {
                    let cnt = (kc - p).min(L);
                    let mut b = [_mm512_setzero_si512(); 16];
                    if cnt != L || !w.pairs16(r0, p, valid, &mut b) {
                        for (r, b) in b.iter_mut().enumerate().take(valid) {
                            *b = w.load(r0 + r, p, cnt);
                        }
                        amx::transpose16(&mut b);
                    }
                    for (q, v) in b.iter().enumerate() {
                        _mm512_storeu_si512(tile.add((p / L * 16 + q) * L) as *mut __m512i, *v);
                    }
                }
            }
        }
    }
    w.with_rows(k, j0, k0, Pairs16(rows, kc, dst))
}

/// Rows `j0..j0 + rows` × columns `k0..k0 + kc` of w (as [`pack_w`]) packed as pairs for the
/// broadcast tile: `dst[tile][pair][NR]`, 32-bit lane c of a pair holding row c's values
/// (2p, 2p + 1); each tile `kc.div_ceil(L) · 16` pairs long, rows past `rows` and columns past
/// `kc` zero.
#[inline(always)]
unsafe fn pack_w_pairs(w: Weights, k: usize, j0: usize, rows: usize, k0: usize, kc: usize, dst: *mut u16) {
    struct Pairs(usize, usize, *mut u16);
    impl WithRows for Pairs {
        #[inline(always)]
        unsafe fn run<R: Rows>(self, w: R) {
            let (rows, kc, dst) = (self.0, self.1, self.2);
            let pairs = kc.div_ceil(L) * 16;
            for t0 in (0..rows).step_by(NR) {
                let tile = dst.add(t0 * pairs * 2);
                for v in 0..NV {
                    let r0 = t0 + 16 * v;
                    for p in (0..kc).step_by(L) {
                        let cnt = (kc - p).min(L);
                        let mut b = [_mm512_setzero_si512(); 16];
                        let valid = rows.saturating_sub(r0);
                        if valid == 0 || cnt != L || !w.pairs16(r0, p, valid, &mut b) {
                            for (r, b) in b.iter_mut().enumerate().take(valid) {
                                *b = w.load(r0 + r, p, cnt);
                            }
                            amx::transpose16(&mut b);
                        }
                        // pair p / 2 + q of the 16 rows: their 32-bit lanes side by side
                        for (q, v16) in b.iter().enumerate() {
                            _mm512_storeu_si512(tile.add(((p / 2 + q) * NR + 16 * v) * 2) as *mut __m512i, *v16);
                        }
                    }
                }
            }
        }
    }
    w.with_rows(k, j0, k0, Pairs(rows, kc, dst))
}

impl Weights {
    /// The bytes of row `row`'s values in columns `k0..k0 + kc` (`k0` a multiple of L): one
    /// contiguous range, for prefetching (the scales are a sixteenth of it and left out).
    #[inline(always)]
    fn row_span(&self, k: usize, row: usize, k0: usize, kc: usize) -> (*const u8, usize) {
        // wrapping: nothing is dereferenced here
        match *self {
            Weights::Bf16(w) => (w.wrapping_add(row * k + k0) as *const u8, 2 * kc),
            Weights::Int8 { q, .. } => (q.wrapping_add(row * k + k0) as *const u8, kc),
            Weights::Int4 { q, row_bytes, .. } => (q.wrapping_add(row * row_bytes + k0 / 2), kc.div_ceil(2)),
            // the tile's groups hold 16 rows: asked for once, by its first row
            Weights::Int8Tiles { q, .. } if row % tiles::TILE_ROWS == 0 => {
                let at = (row / tiles::TILE_ROWS * (k / L) + k0 / L) * tiles::TILE_ROWS * L;
                (q.wrapping_add(at) as *const u8, kc.div_ceil(L) * tiles::TILE_ROWS * L)
            }
            Weights::Int8Tiles { q, .. } => (q as *const u8, 0),
        }
    }

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
            Weights::Int8Tiles { q, scales } => {
                // the tiles that hold the rows
                let ng = k / L;
                let (t0, t1) = (j / tiles::TILE_ROWS, (j + r).div_ceil(tiles::TILE_ROWS));
                let (at, len) = (t0 * ng * tiles::TILE_ROWS, (t1.max(t0) - t0) * ng * tiles::TILE_ROWS);
                [(q.wrapping_add(at * L) as *const u8, len * L), (scales.wrapping_add(at) as *const u8, 2 * len), (q as *const u8, 0)]
            }
        }
    }
}

/// y[MR, NR] (+)= x-tile · w-tileᵀ over `pairs` packed pairs of k: per pair, NV vectors of w
/// (16 rows each) against each row's pair of x broadcast; stores the `mr × nr` corner.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn tile(xp: *const u16, wp: *const u16, pairs: usize, y: *mut f32, ldy: usize, mr: usize, nr: usize, accumulate: bool) {
    let mut acc = [[_mm512_setzero_ps(); NV]; MR];
    let (mut xp, mut wp) = (xp as *const i32, wp);
    for _ in 0..pairs {
        let wv: [__m512bh; NV] = std::array::from_fn(|j| std::mem::transmute(_mm512_loadu_si512(wp.add(32 * j) as *const __m512i)));
        for i in 0..MR {
            let xv: __m512bh = std::mem::transmute(_mm512_set1_epi32(*xp.add(i)));
            for j in 0..NV {
                acc[i][j] = _mm512_dpbf16_ps(acc[i][j], xv, wv[j]);
            }
        }
        xp = xp.add(MR);
        wp = wp.add(2 * NR);
    }
    for (i, acc) in acc.iter().enumerate().take(mr) {
        for (j, &a) in acc.iter().enumerate() {
            let cols = nr.saturating_sub(16 * j).min(16);
            if cols == 0 {
                break;
            }
            let (p, mask) = (y.add(i * ldy + 16 * j), mask16(cols));
            let v = if accumulate { _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), a) } else { a };
            _mm512_mask_storeu_ps(p, mask, v);
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
        let pairs = kc.div_ceil(L) * 16;
        let mut ib = r0;
        while ib < r1 {
            let mc = mc_max.min(r1 - ib);
            pack_x_pairs::<MR>(g.x, k, ib, mc, mc.div_ceil(MR), k0, kc, xbuf.as_mut_ptr());
            let mut jb = c0;
            while jb < c1 {
                let nc = nc_max.min(c1 - jb);
                pack_w_pairs(g.w, k, jb, nc, k0, kc, wbuf.as_mut_ptr());
                // the next block's rows of w are fetched into L2 while these multiply, a share
                // after every row tile
                let (tiles, next) = (mc.div_ceil(MR), (jb + nc)..(jb + nc + nc_max).min(c1));
                let share = next.len().div_ceil(tiles);
                for it in 0..tiles {
                    for row in next.clone().skip(it * share).take(share) {
                        let (p, len) = g.w.row_span(k, row, k0, kc);
                        simd::prefetch_l2(p, len);
                    }
                    let xp = xbuf.as_ptr().add(it * pairs * MR * 2);
                    let mr = MR.min(mc - it * MR);
                    for jt in 0..nc.div_ceil(NR) {
                        let wp = wbuf.as_ptr().add(jt * pairs * NR * 2);
                        let nr = NR.min(nc - jt * NR);
                        let y = g.y.add((ib + it * MR) * n + jb + jt * NR);
                        tile(xp, wp, pairs, y, n, mr, nr, k0 > 0);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::f32_to_bf16;
    use crate::kernels::test_rng::Rng;

    /// [`pack_x_pairs`] against its documented layout, element by element: 8 and 16 rows per
    /// tile, k and its blocks cut anywhere, a last tile part rows, part zero, and a tile past
    /// the rows (all zero).
    #[test]
    fn x_pairs_follow_their_layout() {
        if !available() {
            eprintln!("no AVX512-BF16 here: skipped");
            return;
        }
        #[allow(clippy::too_many_arguments)]
        fn check<const R: usize>(rng: &mut Rng, m: usize, k: usize, i0: usize, rows: usize, tiles: usize, k0: usize, kc: usize) {
            let x = rng.vec(m * k);
            let pairs = kc.div_ceil(L) * 16;
            let mut got = vec![0xffffu16; tiles * R * pairs * 2];
            // SAFETY: rows i0..i0 + rows of x exist, got holds `tiles` tiles.
            unsafe { pack_x_pairs::<R>(x.as_ptr(), k, i0, rows, tiles, k0, kc, got.as_mut_ptr()) };
            for t in 0..tiles {
                for p in 0..pairs {
                    for r in 0..R {
                        for h in 0..2 {
                            let (row, col) = (t * R + r, 2 * p + h);
                            let want = if row < rows && col < kc { f32_to_bf16(x[(i0 + row) * k + k0 + col]) } else { 0 };
                            assert_eq!(got[((t * pairs + p) * R + r) * 2 + h], want, "R={R} k={k} kc={kc} tile {t} pair {p} row {r}");
                        }
                    }
                }
            }
        }
        let mut rng = Rng(17);
        check::<8>(&mut rng, 21, 100, 2, 19, 3, 32, 68);
        check::<8>(&mut rng, 8, 64, 0, 8, 1, 0, 64);
        check::<16>(&mut rng, 40, 77, 3, 21, 4, 0, 77);
        check::<16>(&mut rng, 16, 33, 0, 16, 1, 0, 33);
    }
}
