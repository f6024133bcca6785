//! INT8 weights in tiles of 16 rows: the layout of the W8A16 decode GEMV on CPUs with
//! AVX-512 VNNI, whose prefill GEMMs (AMX, `vdpbf16ps`, VNNI) all read tiles as they are.
//!
//! # Why
//! Row by row ([`QuantizedI8`]), the decode GEMV multiplies a group's 32 weights with 32
//! values of x in one vector and must then sum the vector's lanes: per 16 groups, a
//! reduction of 8 vectors, and a scale per group. At 1 thread it ran at 33-43 GB/s with the
//! weights in cache, little more than the 20-26 GB/s it streamed at, so compute and memory
//! overlapped poorly. In tiles, one `dpbusd` multiplies 16 rows' 4 weights with one broadcast
//! quad of x: each 32-bit lane is one row, so a group's sums arrive in lanes with no
//! reduction, and one vector of 16 scales serves them. On the 2-vCPU AMD EPYC (Zen 4), a
//! standalone C copy of both kernels, 1 thread: in cache (1536 × 576) 33 → 69 GB/s; streamed
//! over llama-135m's matrices in huge pages, 20 → 26 GB/s (1.27-1.35× over 6 rounds). Whole
//! INT8 decodes, the two layouts alternated in one process: llama-135m 1.21× at 1 thread and
//! 1.17× at 2, gpt2-124m 1.12× and 1.08×, llama-1.1b 1.09× and 1.03× (docs/architecture.md
//! has the runs). How far ahead the GEMV asks for its weights depends on the CPU
//! (`simd::tiles_gemv_ahead`): on the Zen 4 EPYC not at all (its hardware prefetcher does
//! better alone with the one sequential stream: 1.13× against requests 4 KiB ahead into L1,
//! llama-135m), on an Intel Xeon 2 KiB ahead into L1 (1.03× at 1 thread, 1.09× at 2, against
//! none).
//!
//! # Layout
//! `q`: [tiles][ng][8 quads][16 rows][4 bytes]; quad l of group g holds the row's values
//! `32g + {2l, 2l + 1, 16 + 2l, 17 + 2l}`: the four values that lane l of the row-by-row
//! kernels' 16-bit steps sums (`madd_epi16` / `dpwssd` on the group widened to two vectors of
//! 16 i16). `scales`: [tiles][ng][16] f16. Rows past `rows` (the last tile) are zero.
//!
//! # Same bits as row by row
//! The GEMV computes each row's result exactly as the row-major W8A16 kernels do (tested):
//! the same exact integer group sums, scaled by the same f32 products and accumulated into
//! 8 lanes in the same order (group g into lane g % 8; the last `ng % 8` groups lane by lane,
//! each lane's partial sum scaled as it is, which is why the quads follow the lanes), and the
//! lanes summed in `hsum256`'s order. The prefill GEMM reads tiles as it reads rows
//! (bf16(q · scale), `matmul_bf16_dot`): the `vdpbf16ps` GEMM takes a tile's pairs of 16 rows
//! as they are; the AMX GEMM takes them as its B operand, with x as A (`matmul_amx`), which
//! sums the same products in the same order; the VNNI GEMM (no AVX512-BF16, or
//! `FERROLM_BF16_PREFILL=f32`) packs its panels from the tiles' groups as they are, x's bytes
//! in their quad order, for the same integer group sums. So a model's outputs do not depend on
//! the layout, and tests and golden streams hold for both.

use crate::arena::Buf;
use crate::error::{Error, Result};
use crate::kernels::quant::{f16_to_f32, QuantizedI8};
use crate::kernels::simd::SimdLevel;
use crate::kernels::RowPath;
use crate::threadpool::ThreadPool;

/// Rows of a tile: the lanes of a 512-bit vector of i32.
pub const TILE_ROWS: usize = 16;
/// The group size tiles hold (the W8A16 scheme's).
pub const TILE_GROUP: usize = 32;
/// Bytes of one group of a tile: 8 quads × 16 rows × 4 bytes.
pub(crate) const GROUP_BYTES: usize = 8 * TILE_ROWS * 4;

/// Position within a group of byte `b` (0-3) of quad `l` (0-7).
#[inline(always)]
fn natural(l: usize, b: usize) -> usize {
    [2 * l, 2 * l + 1, 16 + 2 * l, 17 + 2 * l][b]
}

/// The values of `b` as a `Vec` of their own (moved, or copied out of an arena).
fn owned<T: Copy>(b: Buf<T>) -> Vec<T> {
    match b {
        Buf::Owned(v) => v,
        placed => placed.to_vec(),
    }
}

/// INT8 weights `[rows, cols]` with one f16 scale per row and group of 32, in tiles of 16
/// rows (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub struct QuantizedI8Tiles {
    pub rows: usize,
    pub cols: usize,
    /// q: [tiles][ng][8][16][4]
    pub q: Buf<i8>,
    /// scales: [tiles][ng][16], IEEE half bits
    pub scales: Buf<u16>,
}

impl QuantizedI8Tiles {
    /// The tiles of `w` (a copy), or None when its groups are not 32 or its rows not whole groups.
    pub fn from_rows(w: &QuantizedI8) -> Option<Self> {
        Self::from_rows_owned(w.clone()).ok()
    }

    /// [`from_rows`](Self::from_rows) in place: a tile takes the bytes of its 16 rows (k
    /// values of 16 rows are ng groups of 16 × 32), so the values and scales are permuted tile
    /// by tile with one tile of scratch, and only the last tile's padding rows are added. `w`
    /// back when it cannot be tiled.
    pub fn from_rows_owned(w: QuantizedI8) -> std::result::Result<Self, QuantizedI8> {
        if w.group != TILE_GROUP || !w.cols.is_multiple_of(TILE_GROUP) || w.cols == 0 || w.q.len() != w.rows * w.cols {
            return Err(w);
        }
        let (k, ng, tiles) = (w.cols, w.cols / TILE_GROUP, w.rows.div_ceil(TILE_ROWS));
        if w.scales.len() != w.rows * ng {
            return Err(w);
        }
        let (rows, mut q, mut scales) = (w.rows, owned(w.q), owned(w.scales));
        q.resize(tiles * TILE_ROWS * k, 0);
        scales.resize(tiles * TILE_ROWS * ng, 0);
        let (mut qt, mut st) = (vec![0i8; TILE_ROWS * k], vec![0u16; TILE_ROWS * ng]);
        for (qb, sb) in q.chunks_exact_mut(TILE_ROWS * k).zip(scales.chunks_exact_mut(TILE_ROWS * ng)) {
            qt.copy_from_slice(qb);
            st.copy_from_slice(sb);
            for r in 0..TILE_ROWS {
                for g in 0..ng {
                    for l in 0..8 {
                        for b in 0..4 {
                            qb[g * GROUP_BYTES + 64 * l + 4 * r + b] = qt[r * k + TILE_GROUP * g + natural(l, b)];
                        }
                    }
                    sb[g * TILE_ROWS + r] = st[r * ng + g];
                }
            }
        }
        Ok(Self { rows, cols: k, q: q.into(), scales: scales.into() })
    }

    /// Groups of 32 per row.
    pub fn groups_per_row(&self) -> usize {
        self.cols / TILE_GROUP
    }

    /// Value k of row j, and the scale of its group.
    #[inline]
    fn at(&self, j: usize, k: usize) -> (i8, u16) {
        let ng = self.groups_per_row();
        let (t, r, g, p) = (j / TILE_ROWS, j % TILE_ROWS, k / TILE_GROUP, k % TILE_GROUP);
        // p = natural(l, b): l = (p % 16) / 2, b = p % 2 + 2 · (p ≥ 16)
        let (l, b) = ((p % 16) / 2, p % 2 + 2 * (p / 16));
        let q = self.q[(t * ng + g) * GROUP_BYTES + 64 * l + 4 * r + b];
        (q, self.scales[(t * ng + g) * TILE_ROWS + r])
    }

    /// The int8 values of rows `rows`, row by row as [`QuantizedI8`] holds them: [rows, cols].
    pub fn values_of_rows(&self, rows: std::ops::Range<usize>) -> Vec<i8> {
        rows.flat_map(|j| (0..self.cols).map(move |k| self.at(j, k).0)).collect()
    }

    /// The f16 scales of rows `rows`, row by row as [`QuantizedI8`] holds them: [rows, ng].
    pub fn scales_of_rows(&self, rows: std::ops::Range<usize>) -> Vec<u16> {
        let ng = self.groups_per_row();
        rows.flat_map(|j| (0..ng).map(move |g| self.at(j, g * TILE_GROUP).1)).collect()
    }

    /// The same weights row by row.
    pub fn to_rows(&self) -> QuantizedI8 {
        let all = 0..self.rows;
        QuantizedI8 { rows: self.rows, cols: self.cols, group: TILE_GROUP, q: self.values_of_rows(all.clone()).into(), scales: self.scales_of_rows(all).into() }
    }

    /// Dequantizes row `i` into `out: [cols]`. Panics if `i >= rows` or `out.len() != cols`.
    pub fn dequantize_row(&self, i: usize, out: &mut [f32]) {
        assert!(i < self.rows, "dequantize_row: row {i} out of range ({} rows)", self.rows);
        assert_eq!(out.len(), self.cols, "dequantize_row: out must hold cols values");
        for (k, o) in out.iter_mut().enumerate() {
            let (q, s) = self.at(i, k);
            *o = q as f32 * f16_to_f32(s);
        }
    }

    /// Bytes of storage (values and scales, the last tile's padding rows included).
    pub fn bytes(&self) -> usize {
        self.q.len() + 2 * self.scales.len()
    }

    /// Checks the buffers against the shape (the kernels' only guard: the fields are pub).
    fn check(&self) -> Result<()> {
        let (ng, tiles) = (self.groups_per_row(), self.rows.div_ceil(TILE_ROWS));
        if !self.cols.is_multiple_of(TILE_GROUP)
            || self.q.len() != tiles * ng * GROUP_BYTES
            || self.scales.len() != tiles * ng * TILE_ROWS
        {
            return Err(Error::Tensor(format!("int8 tiles of {} and {} values do not hold {}x{} weights", self.q.len(), self.scales.len(), self.rows, self.cols)));
        }
        Ok(())
    }
}

/// Whether INT8 weights should be held in tiles on `level` on this CPU, as [`LAYOUT_ENV`] says
/// (read at each call; an invalid value keeps rows, and `ferrolm.load` refuses it before
/// loading). Tiles need AVX-512 with VNNI (their decode GEMV); every prefill GEMM there reads
/// them as they are: the AMX GEMM as its B operand (`matmul_amx`), the `vdpbf16ps` GEMM as
/// pairs of 16 rows, the VNNI GEMM (no AVX512-BF16, or `FERROLM_BF16_PREFILL=f32`) as its
/// packed panels. "auto" and "tiles" take them wherever they run: the prefill costs what it
/// does from rows while the decode GEMV is faster (docs/architecture.md).
pub fn tiles_wanted(level: SimdLevel) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        layout_allows_tiles(std::env::var(LAYOUT_ENV).ok().as_deref()).unwrap_or(false)
            && level == SimdLevel::Avx512
            && x86::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = level;
        false
    }
}

/// The environment variable that chooses how INT8 weights are held: "auto" (or unset, or
/// empty) and "tiles" tile them wherever the CPU runs tiles ([`tiles_wanted`]), "rows" never.
pub const LAYOUT_ENV: &str = "FERROLM_INT8_LAYOUT";

/// Whether [`LAYOUT_ENV`]'s value lets INT8 weights be tiled; anything but "auto", "rows",
/// "tiles" or nothing is an error naming the variable.
pub fn layout_allows_tiles(value: Option<&str>) -> std::result::Result<bool, String> {
    match value.map(str::trim) {
        None | Some("") | Some("auto") | Some("tiles") => Ok(true),
        Some("rows") => Ok(false),
        Some(v) => Err(format!("{LAYOUT_ENV}={v:?}: expected \"auto\", \"rows\" or \"tiles\"")),
    }
}

/// The layout a model loaded now holds its INT8 weights in ("tiles" or "rows"); an invalid
/// [`LAYOUT_ENV`] is an error.
pub fn int8_layout() -> Result<&'static str> {
    layout_allows_tiles(std::env::var(LAYOUT_ENV).ok().as_deref()).map_err(Error::InvalidArgument)?;
    Ok(if tiles_wanted(crate::kernels::simd::detected()) { "tiles" } else { "rows" })
}

/// y: [m, n] = x: [m, k] · wᵀ for tiled weights on `path`, with the numbers of
/// `matmul_int8_a16_path` on the same weights in rows: the tiled GEMV for the GEMV path; for
/// the GEMM path the bf16 GEMM reading tiles where x is rounded to bf16, else the VNNI GEMM
/// packing its panels from the tiles. Where this CPU cannot run those kernels (the weights
/// were tiled under another level), the rows are rebuilt for the call.
pub fn matmul_int8_tiles_path(pool: &ThreadPool, x: &[f32], w: &QuantizedI8Tiles, y: &mut [f32], m: usize, path: RowPath) {
    let (k, n) = (w.cols, w.rows);
    if let Err(e) = w.check() {
        panic!("{e}");
    }
    assert_eq!(Some(x.len()), m.checked_mul(k), "x must be [m, k]");
    assert_eq!(Some(y.len()), m.checked_mul(n), "y must be [m, n]");
    if crate::kernels::empty_product(y, m, n, k) {
        return;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let level = crate::kernels::simd::detected();
        if crate::kernels::matmul_int8::int8_rounds_x(level, m, Some(path), TILE_GROUP) && x86::available() {
            let src = crate::kernels::matmul_bf16_dot::Weights::Int8Tiles { q: w.q.as_ptr(), scales: w.scales.as_ptr() };
            // SAFETY: the buffers hold the shape (checked above) and are borrowed for the call;
            // k ≥ 1; int8_rounds_x checked the CPU's BF16 GEMM.
            return unsafe { crate::kernels::matmul_bf16_dot::matmul(pool, x, src, y, m, k, n) };
        }
        if level == SimdLevel::Avx512 && x86::available() {
            if path == RowPath::Gemv {
                // SAFETY: as above; x86::available checked the kernel's features.
                return unsafe { x86::gemv(pool, x, w, y, m) };
            }
            // the VNNI GEMM over the 16-bit x's two bytes, packing its panels from the tiles
            use crate::kernels::matmul_int8::{w8a8, QWeights};
            return w8a8(level, pool, x, QWeights::I8Tiles(w), y, m, RowPath::Gemm);
        }
    }
    crate::kernels::matmul_int8::matmul_int8_a16_path(pool, x, &w.to_rows(), y, m, path)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{QuantizedI8Tiles, GROUP_BYTES, TILE_GROUP, TILE_ROWS};
    use crate::kernels::matmul_int8::q8::{self, Need};
    use crate::kernels::simd;
    use crate::threadpool::{chunk, ThreadPool};

    /// Whether this CPU runs the tiled GEMV (AVX-512 F/BW/VL/VNNI, F16C, FMA, AVX2).
    pub(super) fn available() -> bool {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| {
            ["avx512f", "avx512bw", "avx512vl", "avx512vnni", "f16c", "fma", "avx2"].iter().all(|f| match *f {
                "avx512f" => is_x86_feature_detected!("avx512f"),
                "avx512bw" => is_x86_feature_detected!("avx512bw"),
                "avx512vl" => is_x86_feature_detected!("avx512vl"),
                "avx512vnni" => is_x86_feature_detected!("avx512vnni"),
                "f16c" => is_x86_feature_detected!("f16c"),
                "fma" => is_x86_feature_detected!("fma"),
                _ => is_x86_feature_detected!("avx2"),
            })
        })
    }

    /// u32 words of one prepared row of x: the high bytes' quads, the low bytes' quads (kp / 4
    /// each), then per group of the last ng % 8 its 8 lanes' Σx16.
    fn row_words(kp: usize, tail: usize) -> usize {
        kp / 2 + 8 * tail
    }

    /// One row of 16-bit x (`x16`: kp values) in the tiles' order: x16 = 256·hi + lo with
    /// hi = (x16 + 128) >> 8 in [-127, 127] and lo in [-128, 127] (as `split_a16`), the bytes
    /// of each group permuted as the quads of the weights, and the Σx16 of each lane of the
    /// last `tail` groups.
    ///
    /// # Safety
    /// `x16` holds `32·ng` values, `out` [`row_words`] words; AVX2 available.
    #[target_feature(enable = "avx2")]
    unsafe fn prepare_row(x16: *const i16, ng: usize, tail: usize, out: &mut [u32]) {
        let kp = 32 * ng;
        debug_assert!(out.len() >= row_words(kp, tail));
        let (hi, lo) = (out.as_mut_ptr() as *mut u8, out.as_mut_ptr().add(kp / 4) as *mut u8);
        for g in 0..ng {
            let v0 = _mm256_loadu_si256(x16.add(32 * g) as *const __m256i);
            let v1 = _mm256_loadu_si256(x16.add(32 * g + 16) as *const __m256i);
            let (p0, p1) = q8::quad_order(v0, v1);
            let (_, h, l) = q8::split_bytes(p0, p1);
            _mm256_storeu_si256(hi.add(32 * g) as *mut __m256i, h);
            _mm256_storeu_si256(lo.add(32 * g) as *mut __m256i, l);
        }
        let c = &mut out[kp / 2..];
        for (ti, g) in (ng - tail..ng).enumerate() {
            for l in 0..8 {
                let s: i32 = (0..4).map(|b| *x16.add(32 * g + super::natural(l, b)) as i32).sum();
                c[8 * ti + l] = s as u32;
            }
        }
    }

    /// The 16 rows of tile `t` against one prepared row of x: Σ_g (d · sx)·Σ w·x16 per row,
    /// in the order of the row-by-row kernels (module docs).
    ///
    /// # Safety
    /// `q` / `s` point at the tile's groups and scales (ng groups); `xp` at a prepared row;
    /// `xs` / `xc` at the row's ng scales and Σx16; the features of [`available`]. `ahead`:
    /// bytes ahead of each whole group to ask for into L1 (0: none; `simd::tiles_gemv_ahead`).
    #[inline(always)]
    unsafe fn tile_row(q: *const u8, s: *const u16, ng: usize, xp: *const u32, xs: *const f32, xc: *const i32, ahead: usize) -> __m512 {
        let tail = ng % 8;
        let kp = 32 * ng;
        let (xh, xl, tc) = (xp, xp.add(kp / 4), xp.add(kp / 2));
        let flip = _mm512_set1_epi8(i8::MIN);
        let mut f = [_mm512_setzero_ps(); 8];
        let bcast = |p: *const u32| _mm512_set1_epi32(*p as i32);
        // 8 groups a step, group g0 + t into f[t] (constant indices: f stays in registers)
        for g0 in (0..ng - tail).step_by(8) {
            for (t, f) in f.iter_mut().enumerate() {
                let g = g0 + t;
                let gq = q.add(g * GROUP_BYTES);
                if ahead != 0 {
                    simd::prefetch(gq.wrapping_add(ahead), GROUP_BYTES);
                }
                let (mut ha, mut hb, mut la, mut lb) = (_mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512(), _mm512_setzero_si512());
                for l in (0..8).step_by(2) {
                    let w0 = _mm512_xor_si512(_mm512_loadu_si512(gq.add(64 * l) as *const _), flip);
                    let w1 = _mm512_xor_si512(_mm512_loadu_si512(gq.add(64 * l + 64) as *const _), flip);
                    ha = _mm512_dpbusd_epi32(ha, w0, bcast(xh.add(8 * g + l)));
                    la = _mm512_dpbusd_epi32(la, w0, bcast(xl.add(8 * g + l)));
                    hb = _mm512_dpbusd_epi32(hb, w1, bcast(xh.add(8 * g + l + 1)));
                    lb = _mm512_dpbusd_epi32(lb, w1, bcast(xl.add(8 * g + l + 1)));
                }
                // Σ (w + 128)·x16 less 128·Σx16: the exact Σ w·x16 of each row's group
                let sums = _mm512_add_epi32(_mm512_slli_epi32::<8>(_mm512_add_epi32(ha, hb)), _mm512_add_epi32(la, lb));
                let sums = _mm512_sub_epi32(sums, _mm512_set1_epi32(*xc.add(g) << 7));
                let d = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256(s.add(g * TILE_ROWS) as *const __m256i)), _mm512_set1_ps(*xs.add(g)));
                *f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), d, *f);
            }
        }
        for (ti, g) in (ng - tail..ng).enumerate() {
            let gq = q.add(g * GROUP_BYTES);
            let d = _mm512_mul_ps(_mm512_cvtph_ps(_mm256_loadu_si256(s.add(g * TILE_ROWS) as *const __m256i)), _mm512_set1_ps(*xs.add(g)));
            for (l, f) in f.iter_mut().enumerate() {
                let w = _mm512_xor_si512(_mm512_loadu_si512(gq.add(64 * l) as *const _), flip);
                let h = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w, bcast(xh.add(8 * g + l)));
                let p = _mm512_dpbusd_epi32(_mm512_slli_epi32::<8>(h), w, bcast(xl.add(8 * g + l)));
                // lane l's Σ w·x16 over its four values, scaled as it is
                let p = _mm512_sub_epi32(p, _mm512_set1_epi32((*tc.add(8 * ti + l) as i32) << 7));
                *f = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), d, *f);
            }
        }
        // hsum256's order: ((f0 + f4) + (f2 + f6)) + ((f1 + f5) + (f3 + f7))
        let a = _mm512_add_ps(_mm512_add_ps(f[0], f[4]), _mm512_add_ps(f[2], f[6]));
        let b = _mm512_add_ps(_mm512_add_ps(f[1], f[5]), _mm512_add_ps(f[3], f[7]));
        _mm512_add_ps(a, b)
    }

    /// Tiles `tiles` against the m prepared rows of x, into y: [m, n].
    ///
    /// # Safety
    /// As [`tile_row`] for every tile and row; y holds [m, n]; rows of y past n are not written.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,f16c,fma,avx2")]
    unsafe fn tiles_region(w: &Shared, tiles: std::ops::Range<usize>) {
        let ng = w.ng;
        let ahead = simd::tiles_gemv_ahead();
        for t in tiles {
            let (q, s) = (w.q.add(t * ng * GROUP_BYTES), w.s.add(t * ng * TILE_ROWS));
            let rows = (w.n - t * TILE_ROWS).min(TILE_ROWS);
            for i in 0..w.m {
                let v = tile_row(q, s, ng, w.xp.add(i * w.stride), w.xs.add(i * ng), w.xc.add(i * ng), ahead);
                let y = w.y.add(i * w.n + t * TILE_ROWS);
                if rows == TILE_ROWS {
                    _mm512_storeu_ps(y, v);
                } else {
                    _mm512_mask_storeu_ps(y, ((1u32 << rows) - 1) as __mmask16, v);
                }
            }
        }
    }

    /// The operands of one call, shared by the pool's threads.
    struct Shared {
        q: *const u8,
        s: *const u16,
        xp: *const u32,
        xs: *const f32,
        xc: *const i32,
        y: *mut f32,
        m: usize,
        n: usize,
        ng: usize,
        stride: usize,
    }
    // SAFETY: pointers into buffers that outlive the pool call; threads write disjoint tiles of y.
    unsafe impl Sync for Shared {}

    thread_local! {
        static PREPARED: std::cell::Cell<Vec<u32>> = const { std::cell::Cell::new(Vec::new()) };
    }

    /// The tiled GEMV: x quantized to 16 bits per group of 32 (W8A16's quantizer), each row
    /// prepared ([`prepare_row`]), the pool's threads taking runs of tiles.
    ///
    /// # Safety
    /// `w` consistent with its shape, x: [m, k], y: [m, n]; [`available`] holds.
    pub(super) unsafe fn gemv(pool: &ThreadPool, x: &[f32], w: &QuantizedI8Tiles, y: &mut [f32], m: usize) {
        let (k, n) = (w.cols, w.rows);
        let ng = k / TILE_GROUP;
        let kp = k;
        let tail = ng % 8;
        let need = Need { abs: false, wide: false, a16: true, split: false, quads: false };
        let mut xb = q8::take_xbuf(m, kp, ng, need);
        let out = xb.out(need);
        q8::quantize_rows_a16_avx2(x.as_ptr(), k, kp, ng, 0..m, out);
        let stride = row_words(kp, tail);
        let mut prepared = PREPARED.with(|c| c.take());
        if prepared.len() < m * stride {
            prepared = vec![0; m * stride];
        }
        for (i, row) in prepared[..m * stride].chunks_exact_mut(stride).enumerate() {
            prepare_row(xb.x16[i * kp..(i + 1) * kp].as_ptr(), ng, tail, row);
        }
        let shared = Shared {
            q: w.q.as_ptr() as *const u8,
            s: w.scales.as_ptr(),
            xp: prepared.as_ptr(),
            xs: xb.s.as_ptr(),
            xc: xb.c.as_ptr(),
            y: y.as_mut_ptr(),
            m,
            n,
            ng,
            stride,
        };
        let tiles = n.div_ceil(TILE_ROWS);
        let shared = &shared;
        if pool.n_threads() > 1 && tiles > 1 {
            // SAFETY: disjoint runs of tiles per thread; the operands outlive the call.
            pool.run(|t, nt| unsafe { tiles_region(shared, chunk(tiles, t, nt)) });
        } else {
            tiles_region(shared, 0..tiles);
        }
        PREPARED.with(|c| c.set(prepared));
        q8::put_xbuf(xb);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::matmul_int8::matmul_int8_a16_path;
    use crate::kernels::test_rng::Rng;

    fn weights(rng: &mut Rng, n: usize, k: usize) -> QuantizedI8 {
        let w = rng.vec(n * k);
        QuantizedI8::quantize_with_group(&w, n, k, 32)
    }

    #[test]
    fn tiles_hold_the_rows() {
        let mut rng = Rng(7);
        for (n, k) in [(1, 32), (15, 64), (16, 96), (17, 288), (40, 576)] {
            let w = weights(&mut rng, n, k);
            let t = QuantizedI8Tiles::from_rows(&w).unwrap();
            assert_eq!(t.to_rows(), w, "{n}x{k}");
            let (mut a, mut b) = (vec![0f32; k], vec![0f32; k]);
            for j in 0..n {
                w.dequantize_row(j, &mut a);
                t.dequantize_row(j, &mut b);
                assert_eq!(a, b);
            }
            assert_eq!(t.bytes(), n.div_ceil(16) * 16 * (k + 2 * k / 32));
        }
        // groups other than 32, or partial groups, stay in rows
        let w = QuantizedI8::quantize_with_group(&vec![0.5; 2 * 64], 2, 64, 64);
        assert!(QuantizedI8Tiles::from_rows(&w).is_none());
        let w = QuantizedI8::quantize_with_group(&vec![0.5; 2 * 40], 2, 40, 32);
        assert!(QuantizedI8Tiles::from_rows(&w).is_none());
    }

    /// Every row of y bit for bit what the same weights in rows give, on both paths, for
    /// shapes with partial last tiles and every ng % 8, on 1 and 3 threads.
    #[test]
    fn tiles_compute_what_rows_compute() {
        let mut rng = Rng(11);
        for threads in [1, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            for (n, k) in [(1, 32), (5, 64), (16, 256), (17, 288), (33, 576), (50, 1024), (24, 544)] {
                let w = weights(&mut rng, n, k);
                let t = QuantizedI8Tiles::from_rows(&w).unwrap();
                for m in [1, 2, 3, 4, 5, 7, 8, 9, 40] {
                    let mut x = rng.vec(m * k);
                    // a few large channels, as in real activations
                    for v in x.iter_mut().step_by(37) {
                        *v *= 40.0;
                    }
                    for path in [RowPath::Gemv, RowPath::Gemm] {
                        let (mut a, mut b) = (vec![0f32; m * n], vec![1f32; m * n]);
                        matmul_int8_a16_path(&pool, &x, &w, &mut a, m, path);
                        matmul_int8_tiles_path(&pool, &x, &t, &mut b, m, path);
                        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                        assert_eq!(bits(&a), bits(&b), "{n}x{k}, m = {m}, {path:?}, {threads} threads");
                    }
                }
            }
        }
    }

    /// The VNNI GEMM (what the GEMM path runs without AVX512-BF16, or with
    /// `FERROLM_BF16_PREFILL=f32`) reading tiles: bit for bit what it computes from rows, for
    /// partial panels and tiles, k blocks past 1024 and partial register tiles of x.
    #[test]
    fn the_vnni_gemm_reads_tiles_as_rows() {
        use crate::kernels::matmul_int8::{w8a8, QWeights};
        if !x86_available() {
            return;
        }
        let mut rng = Rng(13);
        for threads in [1, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            for (n, k) in [(1, 32), (17, 288), (48, 64), (50, 1024), (97, 1088), (160, 2080)] {
                let w = weights(&mut rng, n, k);
                let t = QuantizedI8Tiles::from_rows(&w).unwrap();
                for m in [1, 3, 8, 13, 40] {
                    let mut x = rng.vec(m * k);
                    for v in x.iter_mut().step_by(29) {
                        *v *= 50.0;
                    }
                    let (mut a, mut b) = (vec![0f32; m * n], vec![1f32; m * n]);
                    w8a8(SimdLevel::Avx512, &pool, &x, QWeights::I8A16(&w), &mut a, m, RowPath::Gemm);
                    w8a8(SimdLevel::Avx512, &pool, &x, QWeights::I8Tiles(&t), &mut b, m, RowPath::Gemm);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&a), bits(&b), "{n}x{k}, m = {m}, {threads} threads");
                    // and the GEMM's numbers are W8A16's: within f32 rounding of the exact GEMV
                    let mut c = vec![0f32; m * n];
                    w8a8(SimdLevel::Avx512, &pool, &x, QWeights::I8A16(&w), &mut c, m, RowPath::Gemv);
                    for (u, v) in a.iter().zip(&c) {
                        assert!((u - v).abs() <= 1e-4 * (1.0 + v.abs()), "{n}x{k}, m = {m}: {u} vs {v}");
                    }
                }
            }
        }
    }

    fn x86_available() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            x86::available()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// Hand-run: the decode GEMV (m = 1) on rows and on tiles, 1 thread, GB/s, streamed (copies
    /// of the matrix past 128 MiB) and in cache, rounds alternated; then the prefill GEMM
    /// (m = 128) on each. `BENCH_GEMV=NxK,...`.
    /// `cargo test --release --lib bench_tiles_gemv -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn bench_tiles_gemv() {
        let shapes = std::env::var("BENCH_GEMV").unwrap_or_else(|_| "1536x576,576x1536,2304x768,49152x576".into());
        let pool = ThreadPool::new(1).unwrap();
        let mut rng = Rng(5);
        for shape in shapes.split(',') {
            let (n, k) = shape.split_once('x').map(|(a, b)| (a.parse().unwrap(), b.parse().unwrap())).unwrap();
            let w = weights(&mut rng, n, k);
            let copies = ((128usize << 20) / w.bytes()).max(1);
            let rows: Vec<QuantizedI8> = (0..copies).map(|_| w.clone()).collect();
            let tiles: Vec<QuantizedI8Tiles> = rows.iter().map(|w| QuantizedI8Tiles::from_rows(w).unwrap()).collect();
            let x = rng.vec(k);
            let mut y = vec![0f32; n];
            for round in 0..3 {
                let mut line = format!("{n}x{k} round {round}:");
                for (what, hot) in [("streamed", false), ("in cache", true)] {
                    let count = if hot { 1 } else { copies };
                    let reps = if hot { (64usize << 20) / w.bytes() + 1 } else { copies };
                    let t_rows = crate::kernels::test_rng::best_time(3, reps, |i| matmul_int8_a16_path(&pool, &x, &rows[i % count], &mut y, 1, RowPath::Gemv));
                    let t_tiles = crate::kernels::test_rng::best_time(3, reps, |i| matmul_int8_tiles_path(&pool, &x, &tiles[i % count], &mut y, 1, RowPath::Gemv));
                    let gb = |t: f64| w.bytes() as f64 / t / 1e9;
                    line += &format!(" {what} rows {:.1} tiles {:.1} GB/s;", gb(t_rows), gb(t_tiles));
                }
                println!("{line}");
            }
            // the prefill GEMM (m = 128) on each layout, the weights in cache
            let m = 128;
            let xm = rng.vec(m * k);
            let mut ym = vec![0f32; m * n];
            for round in 0..2 {
                let t_rows = crate::kernels::test_rng::best_time(5, 3, |_| matmul_int8_a16_path(&pool, &xm, &rows[0], &mut ym, m, RowPath::Gemm));
                let t_tiles = crate::kernels::test_rng::best_time(5, 3, |_| matmul_int8_tiles_path(&pool, &xm, &tiles[0], &mut ym, m, RowPath::Gemm));
                let gf = |t: f64| 2.0 * (m * n * k) as f64 / t / 1e9;
                println!("{n}x{k} round {round}: GEMM m = {m} ({}) rows {:.0} tiles {:.0} GFLOP/s ({:.2})", crate::kernels::matmul_bf16::prefill_gemm(crate::kernels::simd::detected()), gf(t_rows), gf(t_tiles), t_rows / t_tiles);
            }
        }
    }

    #[test]
    fn the_layout_setting_is_checked() {
        for (v, want) in [(None, true), (Some(""), true), (Some(" auto "), true), (Some("rows"), false), (Some("tiles"), true)] {
            assert_eq!(layout_allows_tiles(v), Ok(want));
        }
        let err = layout_allows_tiles(Some("tile")).unwrap_err();
        assert!(err.contains(LAYOUT_ENV) && err.contains("\"tile\""), "{err}");
    }

    #[test]
    fn bad_buffers_are_refused() {
        let w = weights(&mut Rng(3), 4, 64);
        let mut t = QuantizedI8Tiles::from_rows(&w).unwrap();
        t.scales = t.scales[1..].to_vec().into();
        assert!(t.check().is_err());
    }
}
