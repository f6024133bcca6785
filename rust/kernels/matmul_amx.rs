//! The prefill GEMM on CPUs with AMX-BF16 tiles (Intel Xeon from Sapphire Rapids on): one
//! `tdpbf16ps` multiplies a 16 × 32 bf16 tile by a 32 × 16 one into a 16 × 16 f32 tile, 8,192
//! multiply-adds per instruction against `vdpbf16ps`'s 32.
//!
//! The operands and their rounding are those of the `vdpbf16ps` GEMM (`matmul_bf16_dot.rs`):
//! x rounded to bf16 (nearest even), the weights packed by the same [`dot::pack_w`] (bf16 as
//! they are, int8/int4 groups dequantized to bf16), sums in f32. Only the order of the
//! additions differs.
//!
//! - The tiles: A = 16 rows of w × 32 values of k (the packed rows as they are, 64 bytes
//!   each); B = 16 pairs of k × 16 rows of x (each x row's bf16 pairs, transposed as x is
//!   packed); C = 16 rows of w × 16 rows of x, so y's 16 × 16 block is C transposed, which
//!   happens once per block, when it is stored. INT8 weights in tiles of 16 rows
//!   (`matmul_int8_tiles`) hold each group as quads of 16 rows side by side, which give B's
//!   pairs with no transpose (`Rows::pairs16`): there the operands swap, x's rows are A (bf16
//!   rows, no transpose either), w's pairs B, and C = 16 rows of x × 16 of w is stored as it
//!   is. The products and their order over k are the same, so are the sums (tested against
//!   rows bit for bit). The `m = 128` GEMM over one copy of a weight (`bench_tiles_gemv`, 1
//!   thread, 2 rounds), tiles against rows, on a 2-vCPU Intel Xeon: 0.85-0.97 with w's pairs
//!   gathered into A's rows, 0.94-1.06 with the operands swapped, 0.98-1.15 once `pairs16`
//!   built its bf16 pairs with one `vcvtne2ps2bf16` and a 16-bit permute (instead of two
//!   narrowing conversions and widenings).
//! - The register block: 2 × 2 C tiles (32 rows of x × 32 rows of w) in tmm0–3, the two A
//!   tiles in tmm4–5 and the two B tiles in tmm6–7; every tile is loaded once per step of k
//!   and feeds two multiplies. C sums the whole of k, so a row's result never depends on how
//!   k, the rows of x or the threads were cut.
//! - The loops: x is packed for a block of rows (as many as keep it within [`X_BYTES`]), then
//!   for each 32 rows of w those rows are packed over the whole of k and the kernel runs over
//!   every pair of x tiles of the block.
//!
//! The kernel is inline assembly (the tile instructions have no stable intrinsics). Linux
//! hands out the tile registers on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`), once per
//! process; each thread loads the tile configuration when it starts a part and releases the
//! tiles when it ends it. `FERROLM_AMX=off` keeps the `vdpbf16ps` GEMM.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

use crate::kernels::matmul_bf16_dot::{self as dot, Region, Weights};
use crate::kernels::matmul_parts::{run_parts, Split};
use crate::threadpool::ThreadPool;

/// Rows (and 64-byte columns) of every tile.
const T: usize = 16;
/// Values of k per step (one tile row of bf16).
const L: usize = 32;
/// u16 per packed tile: T rows × L values.
const TILE: usize = T * L;
/// Rows of x or w per register block (two tiles).
const B: usize = 2 * T;
/// The packed x of a block of rows stays within this many bytes (in L2 while w passes).
const X_BYTES: usize = 1 << 20;

/// The environment variable that turns the tiles off (`off` / `0`: the `vdpbf16ps` GEMM) or
/// leaves them on where the CPU has them (`on` / `1`, unset or empty).
pub const AMX_ENV: &str = "FERROLM_AMX";

/// Whether [`AMX_ENV`]'s value allows the tiles; anything else is an error naming it.
pub fn amx_allowed(value: Option<&str>) -> Result<bool, String> {
    match value.map(str::trim) {
        None | Some("") | Some("on") | Some("1") => Ok(true),
        Some("off") | Some("0") => Ok(false),
        Some(v) => Err(format!("{AMX_ENV}={v:?}: expected \"on\" or \"off\"")),
    }
}

/// Whether the CPU has AMX-TILE and AMX-BF16 (CPUID leaf 7: EDX bits 24 and 22).
fn cpu_has_tiles() -> bool {
    // leaf 7 is read only where the maximum leaf reaches it
    if __get_cpuid_max(0).0 < 7 {
        return false;
    }
    let l7 = __cpuid_count(7, 0);
    (l7.edx >> 24) & 1 == 1 && (l7.edx >> 22) & 1 == 1
}

/// Asks the kernel for the tile registers (their state is too large to save by default).
#[cfg(target_os = "linux")]
fn os_grants_tiles() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call; on kernels without the request it fails with an errno.
    unsafe { libc::syscall(libc::SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0 }
}

#[cfg(not(target_os = "linux"))]
fn os_grants_tiles() -> bool {
    false
}

/// Whether this CPU and OS run the kernel (with the `vdpbf16ps` GEMM's features, whose
/// packing it shares), whatever [`AMX_ENV`] says. The first call requests the tiles.
pub(crate) fn available() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| dot::available() && cpu_has_tiles() && os_grants_tiles())
}

/// Whether the prefill GEMM runs on the tiles: [`available`] and not turned off by
/// [`AMX_ENV`] (read once; an invalid value counts as the default, the Python layer reports
/// it).
pub(crate) fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| available() && amx_allowed(std::env::var(AMX_ENV).ok().as_deref()).unwrap_or(true))
}

/// The tile configuration (palette 1): all eight tiles T rows of 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

static CONFIG: TileConfig = {
    let mut c = TileConfig { palette: 1, start_row: 0, reserved: [0; 14], colsb: [0; 16], rows: [0; 16] };
    let mut i = 0;
    while i < 8 {
        c.colsb[i] = 64;
        c.rows[i] = T as u8;
        i += 1;
    }
    c
};

thread_local! {
    /// This thread's packing buffer (pool workers are persistent).
    static PACK: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
}

/// Transposes a 16 × 16 matrix of 32-bit lanes, rows in `r`.
#[inline(always)]
pub(crate) unsafe fn transpose16(r: &mut [__m512i; 16]) {
    // within each 128-bit lane: rows 4g..4g+3 of column 4·lane + c into u[4g + c]
    let mut t = [_mm512_setzero_si512(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    for g in 0..4 {
        r[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        r[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        r[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        r[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
    // then a 4 × 4 transpose of the 128-bit lanes of u[c], u[4 + c], u[8 + c], u[12 + c]
    for c in 0..4 {
        let (a, b, cc, d) = (r[c], r[4 + c], r[8 + c], r[12 + c]);
        let s0 = _mm512_shuffle_i32x4::<0x44>(a, b);
        let s1 = _mm512_shuffle_i32x4::<0xee>(a, b);
        let s2 = _mm512_shuffle_i32x4::<0x44>(cc, d);
        let s3 = _mm512_shuffle_i32x4::<0xee>(cc, d);
        t[c] = _mm512_shuffle_i32x4::<0x88>(s0, s2);
        t[4 + c] = _mm512_shuffle_i32x4::<0xdd>(s0, s2);
        t[8 + c] = _mm512_shuffle_i32x4::<0x88>(s1, s3);
        t[12 + c] = _mm512_shuffle_i32x4::<0xdd>(s1, s3);
    }
    *r = t;
}

/// Steps of k per call of [`steps`]; between calls a share of the next rows of w is
/// prefetched, so that the requests spread over the block's multiplies.
const CHUNK: usize = 4;

/// Zeroes C tiles 0–3 (tmm0–3).
///
/// # Safety
/// The tile configuration is loaded.
#[inline(always)]
unsafe fn zero() {
    asm!("tilezero tmm0", "tilezero tmm1", "tilezero tmm2", "tilezero tmm3", options(nostack, nomem));
}

/// C tiles 0–3 (tmm0–3) += the 2 × 2 products of A tiles `wa`, `wb` (32 rows of w) and B tiles
/// `xa`, `xb` (32 rows of x) over `n ≥ 1` packed steps: tmm(2i + j) += w tile i · x tile j. The
/// C tiles stay in their registers between calls (no compiled code touches tile registers).
///
/// # Safety
/// The tile configuration is loaded; each pointer holds `n` packed tiles.
#[inline(always)]
unsafe fn steps(wa: *const u16, wb: *const u16, xa: *const u16, xb: *const u16, n: usize) {
    debug_assert!(n >= 1);
    asm!(
        "2:",
        "tileloadd tmm4, [{wa} + {s}*1]",
        "tileloadd tmm6, [{xa} + {s}*1]",
        "tdpbf16ps tmm0, tmm4, tmm6",
        "tileloadd tmm7, [{xb} + {s}*1]",
        "tdpbf16ps tmm1, tmm4, tmm7",
        "tileloadd tmm5, [{wb} + {s}*1]",
        "tdpbf16ps tmm2, tmm5, tmm6",
        "tdpbf16ps tmm3, tmm5, tmm7",
        "add {wa}, 1024",
        "add {wb}, 1024",
        "add {xa}, 1024",
        "add {xb}, 1024",
        "dec {n}",
        "jnz 2b",
        wa = inout(reg) wa => _,
        wb = inout(reg) wb => _,
        xa = inout(reg) xa => _,
        xb = inout(reg) xb => _,
        n = inout(reg) n => _,
        s = in(reg) 64usize,
        options(nostack, readonly),
    );
}

/// Stores C tiles 0–3 to `c` (4 tiles of 16 × 16 f32, tile q at `c + 256·q`).
///
/// # Safety
/// The tile configuration is loaded; c holds 1,024 f32.
#[inline(always)]
unsafe fn save(c: *mut f32) {
    asm!(
        "tilestored [{c0} + {s}*1], tmm0",
        "tilestored [{c1} + {s}*1], tmm1",
        "tilestored [{c2} + {s}*1], tmm2",
        "tilestored [{c3} + {s}*1], tmm3",
        s = in(reg) 64usize,
        c0 = in(reg) c,
        c1 = in(reg) c.add(256),
        c2 = in(reg) c.add(512),
        c3 = in(reg) c.add(768),
        options(nostack),
    );
}

/// Stores C tile `c` (16 rows of w × 16 rows of x) into y's rows `i0..i0 + mr`, columns
/// `j0..j0 + nr` (`mr, nr ≤ 16`), transposed.
#[inline(always)]
unsafe fn store(c: *const f32, y: *mut f32, n: usize, i0: usize, mr: usize, j0: usize, nr: usize) {
    let mut v: [__m512i; 16] = std::array::from_fn(|r| _mm512_loadu_si512(c.add(r * T) as *const __m512i));
    transpose16(&mut v);
    let mask = ((1u32 << nr) - 1) as __mmask16;
    for (r, v) in v.iter().enumerate().take(mr) {
        _mm512_mask_storeu_ps(y.add((i0 + r) * n + j0), mask, _mm512_castsi512_ps(*v));
    }
}

/// Stores C tile `c` (16 rows of x × 16 rows of w) into y's rows `i0..i0 + mr`, columns
/// `j0..j0 + nr` (`mr, nr ≤ 16`), as it is.
#[inline(always)]
unsafe fn store_rows(c: *const f32, y: *mut f32, n: usize, i0: usize, mr: usize, j0: usize, nr: usize) {
    let mask = ((1u32 << nr) - 1) as __mmask16;
    for r in 0..mr {
        _mm512_mask_storeu_ps(y.add((i0 + r) * n + j0), mask, _mm512_loadu_ps(c.add(r * T)));
    }
}

/// Prefetches (into L2) the cache lines of up to three byte ranges, a few lines per call.
struct Prefetch {
    spans: [(usize, usize); 3],
    at: usize,
}

impl Prefetch {
    fn new(spans: [(*const u8, usize); 3]) -> Prefetch {
        Prefetch { spans: spans.map(|(p, len)| (p as usize & !63, p as usize + len)), at: 0 }
    }

    /// The lines left to prefetch.
    fn lines(&self) -> usize {
        self.spans.iter().map(|&(a, e)| e.saturating_sub(a).div_ceil(64)).sum()
    }

    #[inline(always)]
    unsafe fn run(&mut self, mut lines: usize) {
        while lines > 0 && self.at < 3 {
            let (a, e) = &mut self.spans[self.at];
            if *a >= *e {
                self.at += 1;
                continue;
            }
            _mm_prefetch::<_MM_HINT_T1>(*a as *const i8);
            *a += 64;
            lines -= 1;
        }
    }
}

/// The GEMM over a region: blocks of rows of x (packed once) → 32 rows of w (packed over the
/// whole of k) → 2 × 2 tile blocks.
///
/// # Safety
/// As [`dot::matmul`]'s, and [`available`] holds.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma,f16c")]
unsafe fn region(g: &Region) {
    let (r0, r1) = g.rows;
    let (c0, c1) = g.cols;
    if r0 >= r1 || c0 >= c1 {
        return;
    }
    let (k, n) = (g.k, g.n);
    let nsteps = k.div_ceil(L);
    // rows of x per block: whole register blocks within X_BYTES, at least one
    let mc = (X_BYTES / (nsteps * L * 2) / B).max(1) * B;
    let mc = mc.min((r1 - r0).div_ceil(B) * B);
    let (xlen, wlen) = (mc * nsteps * L, B * nsteps * L);
    let mut buf = PACK.with(|c| c.take());
    if buf.len() < xlen + wlen {
        buf = vec![0; xlen + wlen];
    }
    let (xbuf, wbuf) = buf.split_at_mut(xlen);
    let mut cbuf = [0f32; 4 * T * T];
    // tiled INT8 weights hold 16 rows' pairs side by side, the B operand's layout: so there w
    // is B and x is A (C = rows of x × rows of w, stored as it is); elsewhere w's rows are A
    let w_is_b = matches!(g.w, Weights::Int8Tiles { .. });
    asm!("ldtilecfg [{0}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly));
    let mut ib = r0;
    while ib < r1 {
        let rows = mc.min(r1 - ib);
        let xtiles = rows.div_ceil(B) * 2;
        if w_is_b {
            dot::pack_x_rows::<T>(g.x, k, ib, rows, xtiles, xbuf.as_mut_ptr());
        } else {
            // B tiles: `dst[tile][step][pair p][row r]` holds bf16(x[r][2p]), bf16(x[r][2p + 1])
            dot::pack_x_pairs::<T>(g.x, k, ib, rows, xtiles, 0, k, xbuf.as_mut_ptr());
        }
        let mut jb = c0;
        while jb < c1 {
            let nc = B.min(c1 - jb);
            if w_is_b {
                dot::pack_w_pairs16(g.w, k, jb, nc, 0, k, wbuf.as_mut_ptr());
            } else {
                dot::pack_w::<T>(g.w, k, jb, nc, 0, k, wbuf.as_mut_ptr());
            }
            if nc <= T {
                // w's second tile (A, or B for tiled weights): zero rows
                wbuf[nsteps * TILE..2 * nsteps * TILE].fill(0);
            }
            let (wa, wb) = (wbuf.as_ptr(), wbuf.as_ptr().add(nsteps * TILE));
            // the next rows of w are fetched from memory while these multiply, a share after
            // every CHUNK steps
            let pairs = xtiles / 2;
            let mut ahead = Prefetch::new(g.w.block_spans(k, (jb + nc).min(c1)..(jb + nc + B).min(c1)));
            let per_chunk = ahead.lines().div_ceil(pairs * nsteps.div_ceil(CHUNK));
            for pair in 0..pairs {
                let xa = xbuf.as_ptr().add(2 * pair * nsteps * TILE);
                let xb = xa.add(nsteps * TILE);
                // the two A tiles and the two B tiles of the block
                let ((a0, a1), (b0, b1)) = if w_is_b { ((xa, xb), (wa, wb)) } else { ((wa, wb), (xa, xb)) };
                zero();
                for s in (0..nsteps).step_by(CHUNK) {
                    let at = s * TILE;
                    steps(a0.add(at), a1.add(at), b0.add(at), b1.add(at), CHUNK.min(nsteps - s));
                    ahead.run(per_chunk);
                }
                save(cbuf.as_mut_ptr());
                for (q, c) in cbuf.chunks_exact(T * T).enumerate() {
                    let (wt, xt) = if w_is_b { (q % 2, q / 2) } else { (q / 2, q % 2) };
                    let (row, col) = (pair * B + xt * T, wt * T);
                    if row < rows && col < nc {
                        let (mr, nr) = (T.min(rows - row), T.min(nc - col));
                        if w_is_b {
                            store_rows(c.as_ptr(), g.y, n, ib + row, mr, jb + col, nr);
                        } else {
                            store(c.as_ptr(), g.y, n, ib + row, mr, jb + col, nr);
                        }
                    }
                }
            }
            jb += nc;
        }
        ib += rows;
    }
    asm!("tilerelease", options(nostack, nomem));
    PACK.with(|c| c.set(buf));
}

/// y: [m, n] = x: [m, k] · wᵀ on the pool, each thread a part of whole register blocks.
///
/// # Safety
/// As [`dot::matmul`]'s, and [`available`] holds.
pub(crate) unsafe fn matmul(pool: &ThreadPool, x: &[f32], w: Weights, y: &mut [f32], m: usize, k: usize, n: usize) {
    debug_assert!(available() && x.len() == m * k && y.len() == m * n && k >= 1);
    let whole = Region { x: x.as_ptr(), w, y: y.as_mut_ptr(), k, n, rows: (0, m), cols: (0, n) };
    let whole = &whole; // captured whole: its raw-pointer fields are not Sync on their own
    // SAFETY: the caller's contract; run_parts hands out disjoint rectangles of y.
    run_parts(pool, m, n, k, Split::Tiles { mr: B, nr: B }, |rows, cols| unsafe { region(&Region { rows, cols, ..*whole }) });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::{bf16_to_f32, f32_to_bf16, f32_to_bf16_vec};
    use crate::kernels::test_rng::Rng;

    #[test]
    fn transpose16_transposes() {
        if !dot::available() {
            return;
        }
        #[target_feature(enable = "avx512f")]
        unsafe fn run() {
            let mut r: [__m512i; 16] = std::array::from_fn(|i| {
                let row: [u32; 16] = std::array::from_fn(|j| (i * 16 + j) as u32);
                std::mem::transmute::<[u32; 16], __m512i>(row)
            });
            transpose16(&mut r);
            for (i, v) in r.iter().enumerate() {
                let row = std::mem::transmute::<__m512i, [u32; 16]>(*v);
                let want: [u32; 16] = std::array::from_fn(|j| (j * 16 + i) as u32);
                assert_eq!(row, want, "row {i}");
            }
        }
        // SAFETY: dot::available() implies AVX-512 F.
        unsafe { run() }
    }

    /// Weight formats in the three layouts the packing reads, from one generator.
    struct Formats {
        bf16: Vec<u16>,
        int8: crate::kernels::quant::QuantizedI8,
        int4: crate::kernels::quant::QuantizedI4,
    }

    impl Formats {
        fn new(rng: &mut Rng, n: usize, k: usize) -> Formats {
            let w = rng.vec(n * k);
            Formats {
                bf16: f32_to_bf16_vec(&w),
                int8: crate::kernels::quant::QuantizedI8::quantize_with_group(&w, n, k, 32),
                int4: crate::kernels::quant::QuantizedI4::quantize(&w, n, k),
            }
        }

        fn each(&self) -> [(&'static str, Weights); 3] {
            let (q8, q4) = (&self.int8, &self.int4);
            [
                ("bf16", Weights::Bf16(self.bf16.as_ptr())),
                ("int8", Weights::Int8 { q: q8.q.as_ptr(), scales: q8.scales.as_ptr(), group: q8.group }),
                ("int4", Weights::Int4 { q: q4.q.as_ptr(), scales: q4.scales.as_ptr(), mins: q4.mins.as_ptr(), row_bytes: q4.row_bytes() }),
            ]
        }
    }

    /// The bf16 values the kernels multiply: rows of w as `pack_w` packs them, x rounded.
    fn reference(x: &[f32], w: Weights, m: usize, k: usize, n: usize) -> Vec<f64> {
        let kp = k.div_ceil(L) * L;
        let mut packed = vec![0u16; n * kp];
        // SAFETY: w holds [n, k] weights; one-row tiles: dst[row][step][32] = row-major, padded.
        unsafe { dot::pack_w::<1>(w, k, 0, n, 0, k, packed.as_mut_ptr()) };
        let xr: Vec<f64> = x.iter().map(|&v| bf16_to_f32(f32_to_bf16(v)) as f64).collect();
        let mut y = vec![0f64; m * n];
        for i in 0..m {
            for j in 0..n {
                y[i * n + j] = (0..k).map(|p| xr[i * k + p] * bf16_to_f32(packed[j * kp + p]) as f64).sum();
            }
        }
        y
    }

    /// The tiles against the exact sums of the same bf16 operands, and against `vdpbf16ps`,
    /// for every weight format, on shapes that cut tiles, register blocks and steps of k
    /// anywhere, on 1–3 threads.
    #[test]
    fn tiles_match_the_exact_sums_of_the_same_operands() {
        if !available() {
            eprintln!("no AMX-BF16 here: skipped");
            return;
        }
        let mut rng = Rng(0x5eed_a3c5);
        for &(m, k, n) in &[(1, 32, 1), (17, 33, 5), (40, 100, 47), (64, 576, 96), (130, 1000, 70), (33, 2080, 33)] {
            let x = rng.vec(m * k);
            let f = Formats::new(&mut rng, n, k);
            for (name, w) in f.each() {
                let want = reference(&x, w, m, k, n);
                for threads in 1..=3 {
                    let pool = ThreadPool::new(threads).unwrap();
                    let (mut y, mut v) = (vec![f32::NAN; m * n], vec![f32::NAN; m * n]);
                    // SAFETY: x, y hold m·k and m·n values, w is [n, k] of its format.
                    unsafe {
                        matmul(&pool, &x, w, &mut y, m, k, n);
                        dot::matmul_vdp(&pool, &x, w, &mut v, m, k, n);
                    }
                    // f32 sums of k products of magnitude < 1, in different orders
                    let tol = 2e-6 * (k as f64).sqrt() + 1e-7;
                    for (i, ((&g, &d), &r)) in y.iter().zip(&v).zip(&want).enumerate() {
                        assert!((g as f64 - r).abs() <= tol * r.abs().max(1.0), "{name} m={m} k={k} n={n} t={threads} [{i}]: {g} vs {r}");
                        assert!((g as f64 - d as f64).abs() <= 2.0 * tol * r.abs().max(1.0), "{name} vs vdpbf16ps [{i}]: {g} vs {d}");
                    }
                }
            }
        }
    }

    /// A row's result depends only on its own x: bit for bit the same alone, in any block of
    /// rows and on any number of threads.
    #[test]
    fn rows_are_independent_of_the_block() {
        if !available() {
            eprintln!("no AMX-BF16 here: skipped");
            return;
        }
        let mut rng = Rng(0xb10c);
        let (m, k, n) = (75, 600, 40);
        let x = rng.vec(m * k);
        let f = Formats::new(&mut rng, n, k);
        for (name, w) in f.each() {
            let pool = ThreadPool::new(2).unwrap();
            let mut all = vec![0f32; m * n];
            // SAFETY: as above.
            unsafe { matmul(&pool, &x, w, &mut all, m, k, n) };
            for (i0, rows) in [(0, 1), (5, 3), (17, 40), (74, 1)] {
                let mut part = vec![0f32; rows * n];
                let one = ThreadPool::new(1).unwrap();
                // SAFETY: as above, rows i0..i0 + rows of x.
                unsafe { matmul(&one, &x[i0 * k..(i0 + rows) * k], w, &mut part, rows, k, n) };
                assert_eq!(part, all[i0 * n..(i0 + rows) * n], "{name} rows {i0}..{}", i0 + rows);
            }
        }
    }

    /// Throughput against `vdpbf16ps` (run by hand: `cargo test --release --lib
    /// bench_matmul_amx -- --ignored --nocapture`; `BENCH_M` sets the rows of x, 128 by default).
    #[test]
    #[ignore]
    fn bench_matmul_amx() {
        if !available() {
            eprintln!("no AMX-BF16 here: skipped");
            return;
        }
        let m: usize = std::env::var("BENCH_M").ok().and_then(|v| v.parse().ok()).unwrap_or(128);
        let mut rng = Rng(7);
        for threads in [1, 2] {
            let pool = ThreadPool::new(threads).unwrap();
            for &(k, n) in &[(576, 576), (576, 1536), (1536, 576), (2048, 2048), (2048, 5632), (5632, 2048)] {
                let x = rng.vec(m * k);
                let f = Formats::new(&mut rng, n, k);
                let mut y = vec![0f32; m * n];
                let flops = 2.0 * (m * k * n) as f64;
                for (name, w) in f.each() {
                    // SAFETY: as in the tests above.
                    let tiles = crate::kernels::test_rng::best_time(5, 3, |_| unsafe { matmul(&pool, &x, w, &mut y, m, k, n) });
                    let vdp = crate::kernels::test_rng::best_time(5, 3, |_| unsafe { dot::matmul_vdp(&pool, &x, w, &mut y, m, k, n) });
                    println!(
                        "threads={threads} m={m} {k}->{n} {name}: tiles {:.0} GFLOP/s, vdpbf16ps {:.0} GFLOP/s ({:.2}x)",
                        flops / tiles / 1e9,
                        flops / vdp / 1e9,
                        vdp / tiles
                    );
                }
            }
        }
    }

    #[test]
    fn env_values() {
        assert_eq!(amx_allowed(None), Ok(true));
        assert_eq!(amx_allowed(Some(" on ")), Ok(true));
        assert_eq!(amx_allowed(Some("1")), Ok(true));
        assert_eq!(amx_allowed(Some("off")), Ok(false));
        assert_eq!(amx_allowed(Some("0")), Ok(false));
        assert!(amx_allowed(Some("yes")).unwrap_err().contains(AMX_ENV));
    }
}
