//! A prompt's attention on AVX-512, many query rows at once, bit for bit what the row kernels
//! of `simd` compute on AVX-512 one to four rows at a time:
//! - [`score_many`]: scores against keys transposed a chunk at a time, so that a vector holds
//!   16 keys instead of 16 values of one key (as `simd::score_rows_with`);
//! - [`weigh_many`]: weighted sums of the value rows for up to [`WEIGH_ROWS`] rows, each value
//!   row loaded once for all of them (as `simd::weigh_rows_with` and `axpy` after it).
//!
//! Why the scores keep their bits: `score_rows` keeps, per (query, key), one 16-lane accumulator whose lane
//! l sums q[i]·k[i] over i ≡ l (mod 16), i in order, one fused multiply-add each (a last
//! partial vector adds 0·0 in the lanes past d), and then sums the 16 lanes in a fixed tree
//! (`hsum4_512_lanes`): S = (T0 + T2) + (T1 + T3), T_e = (A_e + A_{8+e}) + (A_{4+e} + A_{12+e}).
//! Here a vector holds 16 keys and A_l is a vector of those keys' lane-l sums: the same fused
//! multiply-adds in the same order, then the same tree of adds — with no shuffles, where
//! `score_rows` spends about one shuffle per multiply-add of a tile reducing across lanes, and
//! reads each key row once per [`MAX_QUERIES`](super::simd::MAX_QUERIES) queries.

use std::arch::x86_64::*;

use super::matmul_amx::transpose16;
use super::simd::x86::V512;
use super::simd::{load_row, load_row_partial, RowElem};

/// Floats of the per-call buffer of transposed keys (32 KiB: in L1 beside the queries).
const KT_FLOATS: usize = 8192;

/// Keys per tile: one vector.
const TILE_KEYS: usize = 16;

/// Query rows per tile: they share each load of the transposed keys.
const TILE_ROWS: usize = 6;

/// Rows of one [`weigh_many`] call at most: 12 rows × 2 vectors of accumulators.
pub const WEIGH_ROWS: usize = 12;

/// The widest head this kernel takes: a chunk of transposed keys holds at least one tile.
pub const MAX_HEAD_DIM: usize = KT_FLOATS / TILE_KEYS;

/// `out[r·ldo + p] = scale · Σ_i q[q_at[r] + i]·keys[p·stride + i]` for every query row r
/// (at offset `q_at[r]` of `q`), p < n, i < d — the scores of
/// `score_rows_with(SimdLevel::Avx512, ..)`, bit for bit, whatever the number of rows.
/// Panics if AVX-512 is not available, d is 0 or above [`MAX_HEAD_DIM`], or an operand does
/// not fit.
#[allow(clippy::too_many_arguments)]
pub fn score_many<E: RowElem>(q: &[f32], q_at: &[usize], d: usize, keys: &[E], stride: usize, n: usize, scale: f32, out: &mut [f32], ldo: usize) {
    assert!(std::arch::is_x86_feature_detected!("avx512f"), "score_many needs AVX-512");
    assert!((1..=MAX_HEAD_DIM).contains(&d), "score_many: head dim {d} outside 1..={MAX_HEAD_DIM}");
    if n == 0 || q_at.is_empty() {
        return;
    }
    assert!(d <= stride || n == 1, "score_many: keys overlap");
    assert!((n - 1) * stride + d <= keys.len(), "score_many: keys too short");
    assert!(q_at.iter().all(|&a| a + d <= q.len()), "score_many: a query row is out of q");
    assert!(n <= ldo && (q_at.len() - 1) * ldo + n <= out.len(), "score_many: out too short");
    // SAFETY: AVX-512F checked above; every read and write is within the checked bounds.
    unsafe { score_many_avx512(q.as_ptr(), q_at, d, keys.as_ptr(), stride, n, scale, out.as_mut_ptr(), ldo) }
}

/// `out[out_at[r] + i] = Σ_{p < n_at[r]} w[w_at[r] + p]·values[p·stride + i]` for each row r
/// (up to [`WEIGH_ROWS`]) and i < d: every element summed from zero with one fused
/// multiply-add per value row, p in order — what `simd::weigh_rows_with` and the `axpy` calls
/// after it compute, bit for bit. Each value row is loaded once for all the rows that see it.
/// Panics if AVX-512 is not available, there are more than [`WEIGH_ROWS`] rows, two output
/// rows overlap, or an operand does not fit.
#[allow(clippy::too_many_arguments)]
pub fn weigh_many<E: RowElem>(w: &[f32], w_at: &[usize], n_at: &[usize], values: &[E], stride: usize, d: usize, out: &mut [f32], out_at: &[usize]) {
    assert!(std::arch::is_x86_feature_detected!("avx512f"), "weigh_many needs AVX-512");
    let rows = w_at.len();
    assert!(rows <= WEIGH_ROWS && n_at.len() == rows && out_at.len() == rows, "weigh_many: 1 to {WEIGH_ROWS} rows, each with w, n and out");
    if rows == 0 || d == 0 {
        return;
    }
    let n_max = n_at.iter().copied().max().unwrap_or(0);
    assert!(n_max <= 1 || d <= stride, "weigh_many: value rows overlap");
    assert!(n_max == 0 || (n_max - 1) * stride + d <= values.len(), "weigh_many: values too short");
    for r in 0..rows {
        assert!(w_at[r] + n_at[r] <= w.len(), "weigh_many: a row of weights is out of w");
        assert!(out_at[r] + d <= out.len(), "weigh_many: an output row is out of out");
        for o in &out_at[..r] {
            assert!(out_at[r] >= o + d || o >= &(out_at[r] + d), "weigh_many: output rows overlap");
        }
    }
    // SAFETY: AVX-512F checked above; every read and write is within the checked bounds.
    unsafe {
        let (w, v, o) = (w.as_ptr(), values.as_ptr(), out.as_mut_ptr());
        macro_rules! rows {
            ($($r:literal)*) => {
                match rows {
                    $($r => weigh_many_avx512::<E, $r>(w, w_at, n_at, v, stride, d, o, out_at),)*
                    _ => unreachable!(),
                }
            };
        }
        rows!(1 2 3 4 5 6 7 8 9 10 11 12)
    }
}

/// # Safety
/// AVX-512F available; the operands as checked by [`weigh_many`], R = their rows.
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn weigh_many_avx512<E: RowElem, const R: usize>(w: *const f32, w_at: &[usize], n_at: &[usize], values: *const E, stride: usize, d: usize, out: *mut f32, out_at: &[usize]) {
    let n_common = n_at.iter().copied().min().unwrap_or(0);
    let n_max = n_at.iter().copied().max().unwrap_or(0);
    let wr: [*const f32; R] = std::array::from_fn(|r| w.add(w_at[r]));
    let nr: [usize; R] = std::array::from_fn(|r| n_at[r]);
    // 32 values of each output row at a time: 2 vectors × R rows of accumulators
    let mut c0 = 0;
    while c0 < d {
        let width = (d - c0).min(32);
        let (w0, w1) = (width.min(16), width.saturating_sub(16));
        let v = values.add(c0);
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for p in 0..n_common {
            let x = load_pair(v.add(p * stride), w0, w1);
            for (acc, wr) in acc.iter_mut().zip(&wr) {
                let wb = _mm512_set1_ps(*wr.add(p));
                acc[0] = _mm512_fmadd_ps(wb, x[0], acc[0]);
                acc[1] = _mm512_fmadd_ps(wb, x[1], acc[1]);
            }
        }
        // the rows that see further go on alone, continuing the same sums
        for p in n_common..n_max {
            let x = load_pair(v.add(p * stride), w0, w1);
            for ((acc, wr), &n) in acc.iter_mut().zip(&wr).zip(&nr) {
                if p < n {
                    let wb = _mm512_set1_ps(*wr.add(p));
                    acc[0] = _mm512_fmadd_ps(wb, x[0], acc[0]);
                    acc[1] = _mm512_fmadd_ps(wb, x[1], acc[1]);
                }
            }
        }
        for (acc, &at) in acc.iter().zip(out_at) {
            let o = out.add(at + c0);
            _mm512_mask_storeu_ps(o, mask(w0), acc[0]);
            if w1 > 0 {
                _mm512_mask_storeu_ps(o.add(16), mask(w1), acc[1]);
            }
        }
        c0 += 32;
    }
}

#[repr(C, align(64))]
struct Kt([f32; KT_FLOATS]);

/// # Safety
/// AVX-512F available; the operands as checked by [`score_many`].
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn score_many_avx512<E: RowElem>(q: *const f32, q_at: &[usize], d: usize, keys: *const E, stride: usize, n: usize, scale: f32, out: *mut f32, ldo: usize) {
    // every value a tile reads is written first (`transpose_keys` fills d rows of the chunk's
    // keys rounded up to a tile), so the buffer needs no zeroing (32 KiB per call)
    let mut kt = std::mem::MaybeUninit::<Kt>::uninit();
    // keys per chunk: kt holds d rows of `ck` keys
    let ck = KT_FLOATS / d / TILE_KEYS * TILE_KEYS;
    let kt = kt.as_mut_ptr() as *mut f32;
    let rows = q_at.len();
    let mut p0 = 0;
    while p0 < n {
        let kc = ck.min(n - p0);
        // kt[i·ck + p] = keys[(p0 + p)·stride + i], zero for p ≥ kc up to the tile
        transpose_keys(keys.add(p0 * stride), stride, kc, d, kt, ck);
        let mut p = 0;
        while p < kc {
            let valid = (kc - p).min(TILE_KEYS);
            let mut r = 0;
            while r < rows {
                let o = out.add(r * ldo + p0 + p);
                let kt_p = kt.add(p);
                let qp = |j: usize| q.add(q_at[r + j]);
                let left = rows - r;
                match left {
                    1 => tile_d::<1>([qp(0)], d, kt_p, ck, scale, o, ldo, valid),
                    2 => tile_d::<2>([qp(0), qp(1)], d, kt_p, ck, scale, o, ldo, valid),
                    3 => tile_d::<3>([qp(0), qp(1), qp(2)], d, kt_p, ck, scale, o, ldo, valid),
                    4 => tile_d::<4>([qp(0), qp(1), qp(2), qp(3)], d, kt_p, ck, scale, o, ldo, valid),
                    5 => tile_d::<5>([qp(0), qp(1), qp(2), qp(3), qp(4)], d, kt_p, ck, scale, o, ldo, valid),
                    _ => tile_d::<6>([qp(0), qp(1), qp(2), qp(3), qp(4), qp(5)], d, kt_p, ck, scale, o, ldo, valid),
                }
                r += left.min(TILE_ROWS);
            }
            p += TILE_KEYS;
        }
        p0 += kc;
    }
}

/// [`tile`] with the values per lane class known at compile time for the usual head dims.
///
/// # Safety
/// As [`tile`].
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_d<const R: usize>(qr: [*const f32; R], d: usize, kt: *const f32, ldk: usize, scale: f32, out: *mut f32, ldo: usize, valid: usize) {
    match d {
        64 => tile::<R, 4>(qr, d, kt, ldk, scale, out, ldo, valid),
        128 => tile::<R, 8>(qr, d, kt, ldk, scale, out, ldo, valid),
        _ => tile::<R, 0>(qr, d, kt, ldk, scale, out, ldo, valid),
    }
}

/// The scores of R query rows against the 16 keys of `kt` (transposed: value i of key p at
/// `kt[i·ldk + p]`), times `scale`, the first `valid` of them stored to `out + r·ldo`. M > 0
/// when d = 16·M.
///
/// # Safety
/// AVX-512F enabled in the caller; each query holds d values, kt d rows of 16 keys, out R
/// rows of `valid` values.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const R: usize, const M: usize>(qr: [*const f32; R], d: usize, kt: *const f32, ldk: usize, scale: f32, out: *mut f32, ldo: usize, valid: usize) {
    // T_e = (A_e + A_{8+e}) + (A_{4+e} + A_{12+e}); S = (T0 + T2) + (T1 + T3)
    let u02 = add(tree_t::<R, M>(&qr, d, kt, ldk, 0), tree_t::<R, M>(&qr, d, kt, ldk, 2));
    let s = add(u02, add(tree_t::<R, M>(&qr, d, kt, ldk, 1), tree_t::<R, M>(&qr, d, kt, ldk, 3)));
    let sc = _mm512_set1_ps(scale);
    let m = mask(valid);
    for (r, s) in s.iter().enumerate() {
        _mm512_mask_storeu_ps(out.add(r * ldo), m, _mm512_mul_ps(*s, sc));
    }
}

/// T_e = (A_e + A_{8+e}) + (A_{4+e} + A_{12+e}) of each row of the tile.
///
/// # Safety
/// As [`tile`].
#[inline(always)]
unsafe fn tree_t<const R: usize, const M: usize>(qr: &[*const f32; R], d: usize, kt: *const f32, ldk: usize, e: usize) -> [__m512; R] {
    let lo = add(class_sums::<R, M>(qr, d, kt, ldk, e), class_sums::<R, M>(qr, d, kt, ldk, 8 + e));
    add(lo, add(class_sums::<R, M>(qr, d, kt, ldk, 4 + e), class_sums::<R, M>(qr, d, kt, ldk, 12 + e)))
}

/// A_l: each row's sums of q[i]·k[i] over i = l + 16m, m in order, for the tile's 16 keys; a
/// class with one value less than the longest adds 0·0 there, as score_rows' zero-filled last
/// vector does.
///
/// # Safety
/// As [`tile`].
#[inline(always)]
unsafe fn class_sums<const R: usize, const M: usize>(qr: &[*const f32; R], d: usize, kt: *const f32, ldk: usize, l: usize) -> [__m512; R] {
    let mut acc = [_mm512_setzero_ps(); R];
    // M > 0: d = 16·M, every class has M values
    let terms = if M > 0 { M } else { d / 16 + usize::from(l < d % 16) };
    let mut i = l;
    for _ in 0..terms {
        let k = _mm512_loadu_ps(kt.add(i * ldk));
        for (acc, q) in acc.iter_mut().zip(qr) {
            *acc = _mm512_fmadd_ps(_mm512_set1_ps(*q.add(i)), k, *acc);
        }
        i += 16;
    }
    if M == 0 && terms < d.div_ceil(16) {
        for acc in acc.iter_mut() {
            *acc = _mm512_add_ps(*acc, _mm512_setzero_ps());
        }
    }
    acc
}

#[inline(always)]
unsafe fn add<const R: usize>(a: [__m512; R], b: [__m512; R]) -> [__m512; R] {
    let mut s = a;
    for (s, b) in s.iter_mut().zip(&b) {
        *s = _mm512_add_ps(*s, *b);
    }
    s
}

#[inline(always)]
fn mask(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
}

/// kt[i·ldk + p] = rows[p·stride + i] (widened from bf16) for p < kc, i < d; zero for
/// kc ≤ p < kc rounded up to [`TILE_KEYS`].
///
/// # Safety
/// AVX-512F; rows holds kc rows of d values `stride` apart, kt d rows of `ldk` ≥ the rounded
/// kc floats.
#[inline(always)]
unsafe fn transpose_keys<E: RowElem>(rows: *const E, stride: usize, kc: usize, d: usize, kt: *mut f32, ldk: usize) {
    let padded = kc.next_multiple_of(TILE_KEYS);
    let mut p = 0;
    while p < padded {
        let mut i = 0;
        while i < d {
            let w = (d - i).min(16);
            // 16 keys' values i..i + w, a key past kc as zeros
            let r: [__m512; 16] = std::array::from_fn(|j| if p + j < kc { load_widened(rows.add((p + j) * stride + i), w) } else { _mm512_setzero_ps() });
            let mut c = r.map(|v| _mm512_castps_si512(v));
            transpose16(&mut c);
            let c = c.map(|v| _mm512_castsi512_ps(v));
            for (j, c) in c.iter().enumerate().take(w) {
                _mm512_storeu_ps(kt.add((i + j) * ldk + p), *c);
            }
            i += 16;
        }
        p += 16;
    }
}

/// `w0` ≤ 16 values from `p` and `w1` ≤ 16 from `p + 16`, as f32 (bf16 widened), the rest zero.
///
/// # Safety
/// AVX-512F; p valid for w0 + w1 elements.
#[inline(always)]
unsafe fn load_pair<E: RowElem>(p: *const E, w0: usize, w1: usize) -> [__m512; 2] {
    [load_widened(p, w0), if w1 > 0 { load_widened(p.add(16), w1) } else { _mm512_setzero_ps() }]
}

/// `w` ≤ 16 values of a row from `p` as f32 (bf16 widened), the rest zero.
///
/// # Safety
/// AVX-512F; p valid for w elements.
#[inline(always)]
unsafe fn load_widened<E: RowElem>(p: *const E, w: usize) -> __m512 {
    if w == 16 {
        load_row::<V512, E>(p).0
    } else {
        load_row_partial::<V512, E>(p, w).0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::simd::{score_rows_with, SimdLevel};
    use crate::kernels::test_rng::Rng;

    /// The same bits as score_rows on AVX-512, for f32 and bf16 keys, head dims with and
    /// without a partial vector, key counts across chunks and tiles, and 1 to 7 rows.
    #[test]
    fn same_bits_as_score_rows() {
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let mut rng = Rng(0x5c0e);
        for &(d, n, rows) in &[(64usize, 128usize, 7usize), (64, 300, 3), (7, 45, 2), (80, 33, 5), (128, 70, 1), (16, 1, 4), (100, 129, 6), (256, 40, 3), (24, 96, 4)] {
            let stride = d + 5;
            let keys = rng.vec(n * stride);
            let keys16: Vec<u16> = keys.iter().map(|v| crate::kernels::quant::f32_to_bf16(*v)).collect();
            let ldq = d + 3;
            let q: Vec<f32> = rng.vec(rows * ldq).iter().map(|v| 4.0 * v).collect();
            let q_at: Vec<usize> = (0..rows).map(|r| r * ldq).collect();
            let ldo = n + 2;
            for bf16 in [false, true] {
                let mut got = vec![f32::NAN; rows * ldo];
                let mut want = got.clone();
                if bf16 {
                    score_many(&q, &q_at, d, &keys16, stride, n, 0.125, &mut got, ldo);
                } else {
                    score_many(&q, &q_at, d, &keys, stride, n, 0.125, &mut got, ldo);
                }
                for r in 0..rows {
                    let (qr, o) = (&q[r * ldq..], &mut want[r * ldo..]);
                    if bf16 {
                        score_rows_with(SimdLevel::Avx512, qr, 1, ldq, d, &keys16, stride, n, 0.125, o, ldo, 0);
                    } else {
                        score_rows_with(SimdLevel::Avx512, qr, 1, ldq, d, &keys, stride, n, 0.125, o, ldo, 0);
                    }
                }
                for r in 0..rows {
                    for p in 0..ldo {
                        let (g, w) = (got[r * ldo + p], want[r * ldo + p]);
                        assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "d {d} n {n} bf16 {bf16}: [{r}][{p}] {g} vs {w}");
                    }
                }
            }
        }
    }

    /// Scores of 48 rows (a task of SmolLM2's 3 heads × 16 rows) against n keys of 64 values,
    /// here and with score_rows 4 rows at a time, in GMAC/s:
    /// `cargo test --release --lib bench_score_many -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_score_many() {
        use crate::kernels::test_rng::best_time;
        let (d, stride, rows) = (64usize, 192usize, 48usize);
        let mut rng = Rng(9);
        for n in [128usize, 512, 2048] {
            let keys = rng.vec(n * stride);
            let q = rng.vec(rows * d);
            let q_at: Vec<usize> = (0..rows).map(|r| r * d).collect();
            let mut out = vec![0f32; rows * n];
            let macs = (rows * n * d) as f64;
            let t = best_time(5, 20, |_| score_many(&q, &q_at, d, &keys, stride, n, 0.125, &mut out, n));
            let t4 = best_time(5, 20, |_| {
                for r in (0..rows).step_by(4) {
                    score_rows_with(SimdLevel::Avx512, &q[r * d..], 4, d, d, &keys, stride, n, 0.125, &mut out[r * n..], n, 0);
                }
            });
            println!("n {n}: score_many {:.1} GMAC/s, score_rows by 4 {:.1} GMAC/s", macs / t / 1e9, macs / t4 / 1e9);
        }
    }

    /// The same bits as weigh_rows on AVX-512 for the rows' common positions and axpy for
    /// each row's further ones, f32 and bf16 values, head dims with partial vectors, 1 to 12
    /// rows.
    #[test]
    fn weigh_many_same_bits_as_weigh_rows_and_axpy() {
        use crate::kernels::simd::{axpy_with, weigh_rows_with};
        if !std::arch::is_x86_feature_detected!("avx512f") {
            return;
        }
        let mut rng = Rng(0x3e16);
        for &(d, n0, rows) in &[(64usize, 100usize, 12usize), (64, 1, 3), (7, 20, 5), (80, 33, 12), (128, 70, 4), (16, 9, 1), (100, 50, 11), (40, 17, 8)] {
            let stride = d + 3;
            // row r sees n0 + r % 5 positions
            let n_at: Vec<usize> = (0..rows).map(|r| n0 + r % 5).collect();
            let n_max = n0 + 4;
            let values = rng.vec(n_max * stride);
            let values16: Vec<u16> = values.iter().map(|v| crate::kernels::quant::f32_to_bf16(*v)).collect();
            let ldw = n_max + 1;
            let w = rng.vec(rows * ldw);
            let w_at: Vec<usize> = (0..rows).map(|r| r * ldw).collect();
            // output rows out of order and apart
            let ldo = d + 6;
            let out_at: Vec<usize> = (0..rows).map(|r| (rows - 1 - r) * ldo + 2).collect();
            for bf16 in [false, true] {
                let mut got = vec![f32::NAN; rows * ldo + 2];
                let mut want = got.clone();
                if bf16 {
                    weigh_many(&w, &w_at, &n_at, &values16, stride, d, &mut got, &out_at);
                } else {
                    weigh_many(&w, &w_at, &n_at, &values, stride, d, &mut got, &out_at);
                }
                for r in 0..rows {
                    let o = &mut want[out_at[r]..out_at[r] + d];
                    let wr = &w[w_at[r]..];
                    if bf16 {
                        weigh_rows_with(SimdLevel::Avx512, wr, 1, ldw, n0, &values16, stride, d, o, d, 0);
                        for p in n0..n_at[r] {
                            axpy_with(SimdLevel::Avx512, o, wr[p], &values16[p * stride..p * stride + d]);
                        }
                    } else {
                        weigh_rows_with(SimdLevel::Avx512, wr, 1, ldw, n0, &values, stride, d, o, d, 0);
                        for p in n0..n_at[r] {
                            axpy_with(SimdLevel::Avx512, o, wr[p], &values[p * stride..p * stride + d]);
                        }
                    }
                }
                for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                    assert!(g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan()), "d {d} rows {rows} bf16 {bf16}: [{i}] {g} vs {w}");
                }
            }
        }
    }
}
