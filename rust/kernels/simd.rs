//! Small vector primitives with runtime CPU dispatch (used by attention, norms, matmul).
//!
//! The instruction set is detected once (`detected()`) and cached; every public kernel
//! has a `*_with(level, ..)` twin that forces one path (tests use it to cover each path
//! the CPU supports). Set `FERROLM_SIMD=scalar|avx2|avx512|neon` to cap the detected
//! level (for debugging and benchmarking slower paths; unsupported values are ignored).
//!
//! Kernels are written once, generic over [`F32Vec`], and instantiated inside
//! `#[target_feature]` entry points so the intrinsics inline with the right ISA.

use std::sync::atomic::{AtomicU8, Ordering};

#[cfg(target_arch = "aarch64")]
#[path = "simd_neon.rs"]
pub(crate) mod neon;
#[cfg(target_arch = "x86_64")]
#[path = "simd_x86.rs"]
pub(crate) mod x86;

/// An instruction-set path. Only levels for which [`SimdLevel::is_available`] holds may
/// be forced; the `*_with` functions panic otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum SimdLevel {
    /// Portable code (auto-vectorized for the baseline target at best).
    Scalar = 1,
    /// x86-64 AVX2 + FMA, 8 lanes.
    Avx2 = 2,
    /// x86-64 AVX-512F + VL, 16 lanes (VL lets the compiler use all 32 vector
    /// registers for the narrow ops it emits; every AVX-512 CPU since Skylake-X has it).
    Avx512 = 3,
    /// aarch64 NEON, 4 lanes.
    Neon = 4,
}

impl SimdLevel {
    /// Whether the running CPU supports this level.
    pub fn is_available(self) -> bool {
        match self {
            SimdLevel::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma"),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// Every level the running CPU supports, slowest first.
    pub fn available() -> Vec<SimdLevel> {
        [
            SimdLevel::Scalar,
            SimdLevel::Neon,
            SimdLevel::Avx2,
            SimdLevel::Avx512,
        ]
        .into_iter()
        .filter(|l| l.is_available())
        .collect()
    }

    /// Lower-case name ("scalar", "avx2", "avx512", "neon"), as `FERROLM_SIMD` takes it.
    pub fn name(self) -> &'static str {
        match self {
            SimdLevel::Scalar => "scalar",
            SimdLevel::Avx2 => "avx2",
            SimdLevel::Avx512 => "avx512",
            SimdLevel::Neon => "neon",
        }
    }

    fn from_u8(v: u8) -> SimdLevel {
        match v {
            2 => SimdLevel::Avx2,
            3 => SimdLevel::Avx512,
            4 => SimdLevel::Neon,
            _ => SimdLevel::Scalar,
        }
    }

    fn from_name(name: &str) -> Option<SimdLevel> {
        match name.trim().to_ascii_lowercase().as_str() {
            "scalar" => Some(SimdLevel::Scalar),
            "avx2" => Some(SimdLevel::Avx2),
            "avx512" => Some(SimdLevel::Avx512),
            "neon" => Some(SimdLevel::Neon),
            _ => None,
        }
    }
}

/// 0 = not detected yet; otherwise a `SimdLevel as u8`.
static DETECTED: AtomicU8 = AtomicU8::new(0);

/// The best level the running CPU supports (or `FERROLM_SIMD`'s, if available). Cached.
#[inline]
pub fn detected() -> SimdLevel {
    match DETECTED.load(Ordering::Relaxed) {
        0 => detect(),
        v => SimdLevel::from_u8(v),
    }
}

#[cold]
fn detect() -> SimdLevel {
    let best = SimdLevel::available().pop().unwrap_or(SimdLevel::Scalar);
    let level = std::env::var("FERROLM_SIMD")
        .ok()
        .and_then(|v| SimdLevel::from_name(&v))
        .filter(|l| l.is_available())
        .unwrap_or(best);
    DETECTED.store(level as u8, Ordering::Relaxed);
    level
}

/// Panics unless `level` runs on this CPU (the guard that makes forcing a level safe).
#[inline]
pub(crate) fn check_level(level: SimdLevel) {
    if level != SimdLevel::Scalar && level != detected() {
        assert!(
            level.is_available(),
            "SIMD level {level:?} is not supported by this CPU"
        );
    }
}

/// A vector of f32 lanes: the one vector abstraction of every f32-accumulating kernel
/// (dot/axpy/sum here, attention, norms, and the matmul over any weight format, whose
/// weights it widens to f32 as it loads them). Implementations exist per ISA; all methods
/// are `unsafe` because they require the ISA to be enabled and raw pointers to be valid.
pub(crate) trait F32Vec: Copy {
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn splat(v: f32) -> Self;
    /// Loads `LANES` values from `p` (unaligned).
    unsafe fn load(p: *const f32) -> Self;
    /// Loads `n < LANES` values from `p`, zero-filling the rest; reads nothing past `p + n`.
    unsafe fn load_partial(p: *const f32, n: usize) -> Self;
    /// Stores `LANES` values to `p` (unaligned).
    unsafe fn store(self, p: *mut f32);
    /// Stores the first `n < LANES` values to `p`; writes nothing past `p + n`.
    unsafe fn store_partial(self, p: *mut f32, n: usize);
    /// self + a·b (fused where the ISA has FMA).
    unsafe fn mul_add(self, a: Self, b: Self) -> Self;
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    /// Σ lanes.
    unsafe fn hsum(self) -> f32;
    /// [Σ a, Σ b, Σ c, Σ d].
    #[inline(always)]
    unsafe fn hsum4(a: Self, b: Self, c: Self, d: Self) -> [f32; 4] {
        [a.hsum(), b.hsum(), c.hsum(), d.hsum()]
    }
    /// Stores the first `n ≤ 4` of [`hsum4`](Self::hsum4)`(a, b, c, d)`, each times `mul` (one
    /// f32 multiply), to `out`.
    #[inline(always)]
    unsafe fn hsum4_mul_store(a: Self, b: Self, c: Self, d: Self, mul: f32, out: *mut f32, n: usize) {
        for (t, v) in Self::hsum4(a, b, c, d).into_iter().enumerate().take(n) {
            *out.add(t) = v * mul;
        }
    }
    /// Loads `LANES` bf16 values (as bits) from `p`, widened to f32 (exact: a 16-bit shift).
    unsafe fn load_bf16(p: *const u16) -> Self;
    /// Loads `LANES` int8 values from `p`, widened to f32 (exact).
    unsafe fn load_i8(p: *const i8) -> Self;
    /// [`load_bf16`](Self::load_bf16) of `n ≤ LANES` values, zero-filling the rest; reads
    /// nothing past `p + n`.
    #[inline(always)]
    unsafe fn load_bf16_partial(p: *const u16, n: usize) -> Self {
        let mut buf = [0u16; MAX_LANES];
        debug_assert!(n <= Self::LANES && Self::LANES <= MAX_LANES);
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
        Self::load_bf16(buf.as_ptr())
    }
    /// `2·LANES` bf16 values from `p` as two vectors widened to f32 (exact): the even-indexed
    /// values (lane i: `p[2i]`) and the odd-indexed ones (lane i: `p[2i + 1]`). Where a 32-bit
    /// lane holds two bf16 this is in-lane work: the first by a 16-bit shift, the second by a
    /// mask, with no widening shuffle (the bf16 GEMV's load).
    #[inline(always)]
    unsafe fn load_bf16_pairs(p: *const u16) -> (Self, Self) {
        let (mut even, mut odd) = ([0u16; MAX_LANES], [0u16; MAX_LANES]);
        debug_assert!(Self::LANES <= MAX_LANES);
        for i in 0..Self::LANES {
            even[i] = *p.add(2 * i);
            odd[i] = *p.add(2 * i + 1);
        }
        (Self::load_bf16(even.as_ptr()), Self::load_bf16(odd.as_ptr()))
    }
    /// [`load_i8`](Self::load_i8) of `n ≤ LANES` values, zero-filling the rest; reads nothing
    /// past `p + n`.
    #[inline(always)]
    unsafe fn load_i8_partial(p: *const i8, n: usize) -> Self {
        let mut buf = [0i8; MAX_LANES];
        debug_assert!(n <= Self::LANES && Self::LANES <= MAX_LANES);
        std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
        Self::load_i8(buf.as_ptr())
    }
}

/// The widest [`F32Vec`] (AVX-512: 16 lanes): the size of a stack buffer that holds one vector.
pub(crate) const MAX_LANES: usize = 16;

/// The portable "vector": 8 independent lanes the compiler may map to baseline SIMD.
#[derive(Clone, Copy)]
pub(crate) struct Portable([f32; 8]);

impl F32Vec for Portable {
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        Portable([0.0; 8])
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Portable([v; 8])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Portable(std::ptr::read_unaligned(p as *const [f32; 8]))
    }
    #[inline(always)]
    unsafe fn load_partial(p: *const f32, n: usize) -> Self {
        let mut v = [0.0; 8];
        std::ptr::copy_nonoverlapping(p, v.as_mut_ptr(), n.min(8));
        Portable(v)
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; 8], self.0)
    }
    #[inline(always)]
    unsafe fn store_partial(self, p: *mut f32, n: usize) {
        std::ptr::copy_nonoverlapping(self.0.as_ptr(), p, n.min(8));
    }
    #[inline(always)]
    unsafe fn mul_add(self, a: Self, b: Self) -> Self {
        let mut r = self.0;
        for ((r, a), b) in r.iter_mut().zip(a.0).zip(b.0) {
            *r += a * b;
        }
        Portable(r)
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        let mut r = self.0;
        for (r, o) in r.iter_mut().zip(o.0) {
            *r += o;
        }
        Portable(r)
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        let mut r = self.0;
        for (r, o) in r.iter_mut().zip(o.0) {
            *r *= o;
        }
        Portable(r)
    }
    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        let v = self.0;
        ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]))
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const u16) -> Self {
        let b = std::ptr::read_unaligned(p as *const [u16; 8]);
        Portable(b.map(|v| f32::from_bits(u32::from(v) << 16)))
    }
    #[inline(always)]
    unsafe fn load_i8(p: *const i8) -> Self {
        let b = std::ptr::read_unaligned(p as *const [i8; 8]);
        Portable(b.map(f32::from))
    }
}

/// The element type of the rows the row kernels ([`score_rows`], [`weigh_rows`]) read: `f32`, or
/// `u16` holding bf16 bits, widened to f32 as it is loaded (exact). The arithmetic is the f32
/// kernels' own, so bf16 rows give exactly what f32 rows of the widened values give.
pub trait RowElem: Copy + Send + Sync + sealed::Sealed + 'static {
    /// The element is bf16 bits (else f32).
    const IS_BF16: bool;
}

impl RowElem for f32 {
    const IS_BF16: bool = false;
}

impl RowElem for u16 {
    const IS_BF16: bool = true;
}

mod sealed {
    /// Only f32 and u16 (bf16 bits) are row elements: the loads below rely on their sizes.
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for u16 {}
}

/// Loads `V::LANES` elements of a row from `p` as f32 (`IS_BF16` is a constant: no branch).
///
/// # Safety
/// `V`'s ISA must be enabled; `p` valid for `V::LANES` elements.
#[inline(always)]
pub(crate) unsafe fn load_row<V: F32Vec, E: RowElem>(p: *const E) -> V {
    if E::IS_BF16 {
        V::load_bf16(p as *const u16)
    } else {
        V::load(p as *const f32)
    }
}

/// [`load_row`] of `n < V::LANES` elements, zero-filling the rest; reads nothing past `p + n`.
///
/// # Safety
/// `V`'s ISA must be enabled; `p` valid for `n` elements.
#[inline(always)]
pub(crate) unsafe fn load_row_partial<V: F32Vec, E: RowElem>(p: *const E, n: usize) -> V {
    if E::IS_BF16 {
        V::load_bf16_partial(p as *const u16, n)
    } else {
        V::load_partial(p as *const f32, n)
    }
}

/// Σ a[i]·b[i] with 4 vector accumulators; any length. `b` is f32 or bf16 ([`RowElem`]).
///
/// # Safety
/// `V`'s ISA must be enabled; `a.len() == b.len()`.
#[inline(always)]
unsafe fn dot_impl<V: F32Vec, E: RowElem>(a: &[f32], b: &[E]) -> f32 {
    let n = a.len();
    let l = V::LANES;
    let (pa, pb) = (a.as_ptr(), b.as_ptr());
    let mut acc = [V::zero(); 4];
    let mut i = 0;
    while i + 4 * l <= n {
        for (u, acc) in acc.iter_mut().enumerate() {
            let o = i + u * l;
            *acc = acc.mul_add(V::load(pa.add(o)), load_row::<V, E>(pb.add(o)));
        }
        i += 4 * l;
    }
    while i + l <= n {
        acc[0] = acc[0].mul_add(V::load(pa.add(i)), load_row::<V, E>(pb.add(i)));
        i += l;
    }
    if i < n {
        let r = n - i;
        acc[1] = acc[1].mul_add(V::load_partial(pa.add(i), r), load_row_partial::<V, E>(pb.add(i), r));
    }
    acc[0].add(acc[1]).add(acc[2].add(acc[3])).hsum()
}

/// Σ x[i] with 4 vector accumulators; any length.
///
/// # Safety
/// `V`'s ISA must be enabled.
#[inline(always)]
unsafe fn sum_impl<V: F32Vec>(x: &[f32]) -> f32 {
    let n = x.len();
    let l = V::LANES;
    let p = x.as_ptr();
    let mut acc = [V::zero(); 4];
    let mut i = 0;
    while i + 4 * l <= n {
        for (u, acc) in acc.iter_mut().enumerate() {
            *acc = acc.add(V::load(p.add(i + u * l)));
        }
        i += 4 * l;
    }
    while i < n {
        let r = (n - i).min(l);
        let v = if r == l {
            V::load(p.add(i))
        } else {
            V::load_partial(p.add(i), r)
        };
        acc[0] = acc[0].add(v);
        i += r;
    }
    acc[0].add(acc[1]).add(acc[2].add(acc[3])).hsum()
}

/// y[i] += alpha · x[i]; any length. `x` is f32 or bf16 ([`RowElem`]).
///
/// # Safety
/// `V`'s ISA must be enabled; `y.len() == x.len()`.
#[inline(always)]
unsafe fn axpy_impl<V: F32Vec, E: RowElem>(y: &mut [f32], alpha: f32, x: &[E]) {
    let n = y.len();
    let l = V::LANES;
    let (py, px) = (y.as_mut_ptr(), x.as_ptr());
    let va = V::splat(alpha);
    let mut i = 0;
    while i + 2 * l <= n {
        let y0 = V::load(py.add(i)).mul_add(va, load_row::<V, E>(px.add(i)));
        let y1 = V::load(py.add(i + l)).mul_add(va, load_row::<V, E>(px.add(i + l)));
        y0.store(py.add(i));
        y1.store(py.add(i + l));
        i += 2 * l;
    }
    while i < n {
        let r = (n - i).min(l);
        if r == l {
            V::load(py.add(i))
                .mul_add(va, load_row::<V, E>(px.add(i)))
                .store(py.add(i));
        } else {
            let v = V::load_partial(py.add(i), r).mul_add(va, load_row_partial::<V, E>(px.add(i), r));
            v.store_partial(py.add(i), r);
        }
        i += r;
    }
}

/// Queries per call of the row kernels ([`score_rows`], [`weigh_rows`]) at most: attention
/// takes this many rows of a prompt at a time, which read the same keys and values.
pub const MAX_QUERIES: usize = 4;

/// Keys per tile of [`score_rows_q`]: their dot products are reduced across lanes together.
const SCORE_KEYS: usize = 4;

/// How many rows ahead the row kernels ([`score_rows_with`], [`weigh_rows_with`]) ask for keys
/// and values that come from memory once (a decode step's: [`prefetch`]).
pub const ROWS_AHEAD: usize = 16;

/// out[j·ldo + p] = scale · Σ_i q[j·ldq + i]·rows[p·stride + i] for j < Q, p < n: Q queries
/// against the same rows (keys), each row loaded once for all of them. A tile of Q × 4 dot
/// products accumulates along i (one vector accumulator each, i in order) and its 4 keys are
/// reduced across lanes together (`hsum4`); the last tile's missing keys are zero. So a score
/// depends only on its query, its key and d — not on Q or n.
///
/// # Safety
/// `V`'s ISA must be enabled; `q` holds `(Q − 1)·ldq + d` values, `rows` `(n − 1)·stride + d`,
/// `out` `(Q − 1)·ldo + n`.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn score_rows_q<V: F32Vec, E: RowElem, const Q: usize>(q: *const f32, ldq: usize, d: usize, rows: *const E, stride: usize, n: usize, scale: f32, out: *mut f32, ldo: usize, ahead: usize) {
    let l = V::LANES;
    let full = d / l * l;
    let rem = d - full;
    let mut p = 0;
    while p < n {
        let keys = (n - p).min(SCORE_KEYS);
        if ahead > 0 {
            for t in 0..SCORE_KEYS {
                prefetch(rows.wrapping_add((p + t + ahead) * stride) as *const u8, d * std::mem::size_of::<E>());
            }
        }
        let mut acc = [[V::zero(); SCORE_KEYS]; Q];
        let mut i = 0;
        while i < full {
            let k: [V; SCORE_KEYS] = std::array::from_fn(|t| if t < keys { load_row::<V, E>(rows.add((p + t) * stride + i)) } else { V::zero() });
            for j in 0..Q {
                let qv = V::load(q.add(j * ldq + i));
                for t in 0..SCORE_KEYS {
                    acc[j][t] = acc[j][t].mul_add(qv, k[t]);
                }
            }
            i += l;
        }
        if rem > 0 {
            let k: [V; SCORE_KEYS] = std::array::from_fn(|t| if t < keys { load_row_partial::<V, E>(rows.add((p + t) * stride + full), rem) } else { V::zero() });
            for j in 0..Q {
                let qv = V::load_partial(q.add(j * ldq + full), rem);
                for t in 0..SCORE_KEYS {
                    acc[j][t] = acc[j][t].mul_add(qv, k[t]);
                }
            }
        }
        for j in 0..Q {
            V::hsum4_mul_store(acc[j][0], acc[j][1], acc[j][2], acc[j][3], scale, out.add(j * ldo + p), keys);
        }
        p += keys;
    }
}

/// [`score_rows_q`] for `nq` (1 to [`MAX_QUERIES`]) queries.
///
/// # Safety
/// As [`score_rows_q`] with Q = nq.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn score_rows_impl<V: F32Vec, E: RowElem>(q: *const f32, nq: usize, ldq: usize, d: usize, rows: *const E, stride: usize, n: usize, scale: f32, out: *mut f32, ldo: usize, ahead: usize) {
    match nq {
        1 => score_rows_q::<V, E, 1>(q, ldq, d, rows, stride, n, scale, out, ldo, ahead),
        2 => score_rows_q::<V, E, 2>(q, ldq, d, rows, stride, n, scale, out, ldo, ahead),
        3 => score_rows_q::<V, E, 3>(q, ldq, d, rows, stride, n, scale, out, ldo, ahead),
        _ => score_rows_q::<V, E, 4>(q, ldq, d, rows, stride, n, scale, out, ldo, ahead),
    }
}

/// Vectors of an output row that [`weigh_rows_q`] keeps in registers across the rows (4 × 16
/// lanes: a head of 64 values in one block on AVX-512, two on AVX2).
const WEIGH_BLOCK: usize = 4;
// weigh_rows_q handles the whole vectors left after its blocks with blocks of 1 to 3
const _: () = assert!(WEIGH_BLOCK <= 4);

/// out[j·ldo + i] = Σ_p w[j·ldw + p]·rows[p·stride + i] for j < Q, i < d, p < n: Q weighted
/// sums of the same rows (attention over values), each row loaded once for all of them. Blocks
/// of [`WEIGH_BLOCK`] vectors of each output stay in registers while every row adds into them
/// (row by row, each row waited for the previous row's stores). Every output element is
/// computed alike, whatever Q and the blocking: from zero, one fused multiply-add per row, p in
/// order.
///
/// # Safety
/// `V`'s ISA must be enabled; `w` holds `(Q − 1)·ldw + n` values, `rows`
/// `(n − 1)·stride + d`, `out` `(Q − 1)·ldo + d`.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn weigh_rows_q<V: F32Vec, E: RowElem, const Q: usize>(w: *const f32, ldw: usize, n: usize, rows: *const E, stride: usize, d: usize, out: *mut f32, ldo: usize, ahead: usize) {
    const B: usize = WEIGH_BLOCK;
    let l = V::LANES;
    let mut i = 0;
    while i + B * l <= d {
        weigh_block::<V, E, Q, B>(w, ldw, n, rows.add(i), stride, out.add(i), ldo, ahead);
        i += B * l;
    }
    // fewer than B whole vectors left (half a head on AVX-512 when a step splits the head
    // dimension among threads): together, each row read once and requested ahead
    match (d - i) / l {
        0 => {}
        1 => weigh_block::<V, E, Q, 1>(w, ldw, n, rows.add(i), stride, out.add(i), ldo, ahead),
        2 => weigh_block::<V, E, Q, 2>(w, ldw, n, rows.add(i), stride, out.add(i), ldo, ahead),
        _ => weigh_block::<V, E, Q, 3>(w, ldw, n, rows.add(i), stride, out.add(i), ldo, ahead),
    }
    i += (d - i) / l * l;
    // the partial end of a row (d not a multiple of the lanes)
    if i < d {
        let c = d - i;
        let mut acc = [V::zero(); Q];
        for p in 0..n {
            let v = load_row_partial::<V, E>(rows.add(p * stride + i), c);
            for j in 0..Q {
                acc[j] = acc[j].mul_add(V::splat(*w.add(j * ldw + p)), v);
            }
        }
        for j in 0..Q {
            acc[j].store_partial(out.add(j * ldo + i), c);
        }
    }
}

/// NB whole vectors of each of the Q outputs of [`weigh_rows_q`], from `rows` and `out` (both
/// already offset to the block's first value), kept in registers while every row adds into them.
///
/// # Safety
/// As [`weigh_rows_q`] with d ≥ NB · lanes.
#[inline(always)]
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
unsafe fn weigh_block<V: F32Vec, E: RowElem, const Q: usize, const NB: usize>(w: *const f32, ldw: usize, n: usize, rows: *const E, stride: usize, out: *mut f32, ldo: usize, ahead: usize) {
    let l = V::LANES;
    let mut acc = [[V::zero(); NB]; Q];
    for p in 0..n {
        if ahead > 0 {
            prefetch(rows.wrapping_add((p + ahead) * stride) as *const u8, NB * l * std::mem::size_of::<E>());
        }
        let r = rows.add(p * stride);
        let v: [V; NB] = std::array::from_fn(|b| load_row::<V, E>(r.add(b * l)));
        for j in 0..Q {
            let s = V::splat(*w.add(j * ldw + p));
            for b in 0..NB {
                acc[j][b] = acc[j][b].mul_add(s, v[b]);
            }
        }
    }
    for j in 0..Q {
        for b in 0..NB {
            acc[j][b].store(out.add(j * ldo + b * l));
        }
    }
}

/// [`weigh_rows_q`] for `nq` (1 to [`MAX_QUERIES`]) outputs.
///
/// # Safety
/// As [`weigh_rows_q`] with Q = nq.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn weigh_rows_impl<V: F32Vec, E: RowElem>(w: *const f32, nq: usize, ldw: usize, n: usize, rows: *const E, stride: usize, d: usize, out: *mut f32, ldo: usize, ahead: usize) {
    match nq {
        1 => weigh_rows_q::<V, E, 1>(w, ldw, n, rows, stride, d, out, ldo, ahead),
        2 => weigh_rows_q::<V, E, 2>(w, ldw, n, rows, stride, d, out, ldo, ahead),
        3 => weigh_rows_q::<V, E, 3>(w, ldw, n, rows, stride, d, out, ldo, ahead),
        _ => weigh_rows_q::<V, E, 4>(w, ldw, n, rows, stride, d, out, ldo, ahead),
    }
}

/// Defines the per-ISA `#[target_feature]` entry points of a generic kernel.
macro_rules! isa_entries {
    ($generic:ident, $avx512:ident, $avx2:ident, $neon:ident, $portable:ident,
     ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        unsafe fn $avx512($($arg: $ty),*) -> $ret { $generic::<x86::V512>($($arg),*) }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2($($arg: $ty),*) -> $ret { $generic::<x86::V256>($($arg),*) }
        #[cfg(target_arch = "aarch64")]
        #[target_feature(enable = "neon")]
        unsafe fn $neon($($arg: $ty),*) -> $ret { $generic::<neon::V128>($($arg),*) }
        fn $portable($($arg: $ty),*) -> $ret {
            // SAFETY: `Portable` needs no ISA extension.
            unsafe { $generic::<Portable>($($arg),*) }
        }
    };
}

/// [`isa_entries`] for a kernel generic over the row element `E` (f32 or bf16).
macro_rules! isa_entries_rows {
    ($generic:ident, $avx512:ident, $avx2:ident, $neon:ident, $portable:ident,
     ($($arg:ident: $ty:ty),*) -> $ret:ty) => {
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx512<E: RowElem>($($arg: $ty),*) -> $ret { $generic::<x86::V512, E>($($arg),*) }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $avx2<E: RowElem>($($arg: $ty),*) -> $ret { $generic::<x86::V256, E>($($arg),*) }
        #[cfg(target_arch = "aarch64")]
        #[target_feature(enable = "neon")]
        #[allow(clippy::too_many_arguments)]
        unsafe fn $neon<E: RowElem>($($arg: $ty),*) -> $ret { $generic::<neon::V128, E>($($arg),*) }
        #[allow(clippy::too_many_arguments)]
        fn $portable<E: RowElem>($($arg: $ty),*) -> $ret {
            // SAFETY: `Portable` needs no ISA extension.
            unsafe { $generic::<Portable, E>($($arg),*) }
        }
    };
}

isa_entries_rows!(dot_impl, dot_avx512, dot_avx2, dot_neon, dot_portable, (a: &[f32], b: &[E]) -> f32);
isa_entries!(sum_impl, sum_avx512, sum_avx2, sum_neon, sum_portable, (x: &[f32]) -> f32);
isa_entries_rows!(axpy_impl, axpy_avx512, axpy_avx2, axpy_neon, axpy_portable,
    (y: &mut [f32], alpha: f32, x: &[E]) -> ());

isa_entries_rows!(score_rows_impl, score_rows_avx512, score_rows_avx2, score_rows_neon, score_rows_portable,
    (q: *const f32, nq: usize, ldq: usize, d: usize, rows: *const E, stride: usize, n: usize, scale: f32, out: *mut f32, ldo: usize, ahead: usize) -> ());
isa_entries_rows!(weigh_rows_impl, weigh_rows_avx512, weigh_rows_avx2, weigh_rows_neon, weigh_rows_portable,
    (w: *const f32, nq: usize, ldw: usize, n: usize, rows: *const E, stride: usize, d: usize, out: *mut f32, ldo: usize, ahead: usize) -> ());

fn check_rows(n_rows: usize, width: usize, stride: usize, len: usize) {
    assert!(width <= stride || n_rows <= 1, "rows overlap: width {width} > stride {stride}");
    if n_rows > 0 {
        assert!((n_rows - 1) * stride + width <= len, "rows: slice too short");
    }
}

/// Checks the operands of [`score_rows_with`] / [`weigh_rows_with`]: `nq` in 1..=MAX_QUERIES,
/// `nq` rows of `width` values `ld` apart fit `len`.
fn check_queries(nq: usize, width: usize, ld: usize, len: usize, what: &str) {
    assert!((1..=MAX_QUERIES).contains(&nq), "{what}: 1 to {MAX_QUERIES} queries, got {nq}");
    assert!(width <= ld || nq == 1, "{what}: rows overlap: width {width} > stride {ld}");
    assert!((nq - 1) * ld + width <= len, "{what}: slice too short");
}

/// Attention scores of `nq` (1 to [`MAX_QUERIES`]) queries of `d` values, `ldq` apart in `q`,
/// against `n` rows (keys, f32 or bf16 bits, `stride` apart):
/// `out[j·ldo + p] = scale · Σ_i q[j·ldq + i]·rows[p·stride + i]`. Each row is read once for all
/// the queries, and a score is the same whatever the other queries of the call. With `ahead`
/// > 0 the rows are requested that many rows before they are read (rows that come from memory
/// once: [`ROWS_AHEAD`]); 0 for rows that other calls have just read. Panics if `level` is not
/// available or an operand does not fit.
#[allow(clippy::too_many_arguments)]
pub fn score_rows_with<E: RowElem>(level: SimdLevel, q: &[f32], nq: usize, ldq: usize, d: usize, rows: &[E], stride: usize, n: usize, scale: f32, out: &mut [f32], ldo: usize, ahead: usize) {
    check_queries(nq, d, ldq, q.len(), "score_rows (q)");
    check_queries(nq, n, ldo, out.len(), "score_rows (out)");
    check_rows(n, d, stride, rows.len());
    check_level(level);
    if n == 0 {
        return;
    }
    let (q, rows, out) = (q.as_ptr(), rows.as_ptr(), out.as_mut_ptr());
    // SAFETY: bounds checked above; the level's ISA is available (check_level).
    unsafe {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => score_rows_avx512(q, nq, ldq, d, rows, stride, n, scale, out, ldo, ahead),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => score_rows_avx2(q, nq, ldq, d, rows, stride, n, scale, out, ldo, ahead),
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => score_rows_neon(q, nq, ldq, d, rows, stride, n, scale, out, ldo, ahead),
            _ => score_rows_portable(q, nq, ldq, d, rows, stride, n, scale, out, ldo, ahead),
        }
    }
}

/// [`score_rows_with`] on the detected level.
#[allow(clippy::too_many_arguments)]
pub fn score_rows<E: RowElem>(q: &[f32], nq: usize, ldq: usize, d: usize, rows: &[E], stride: usize, n: usize, scale: f32, out: &mut [f32], ldo: usize, ahead: usize) {
    score_rows_with(detected(), q, nq, ldq, d, rows, stride, n, scale, out, ldo, ahead)
}

/// `nq` (1 to [`MAX_QUERIES`]) weighted sums of the same `n` rows (values, f32 or bf16 bits,
/// `stride` apart, `d` wide): `out[j·ldo + i] = Σ_p w[j·ldw + p]·rows[p·stride + i]`, each row
/// read once for all of them; every element summed from zero with one fused multiply-add per
/// row, p in order. `ahead` as in [`score_rows_with`]. Panics if `level` is not available or
/// an operand does not fit.
#[allow(clippy::too_many_arguments)]
pub fn weigh_rows_with<E: RowElem>(level: SimdLevel, w: &[f32], nq: usize, ldw: usize, n: usize, rows: &[E], stride: usize, d: usize, out: &mut [f32], ldo: usize, ahead: usize) {
    check_queries(nq, n, ldw, w.len(), "weigh_rows (w)");
    check_queries(nq, d, ldo, out.len(), "weigh_rows (out)");
    check_rows(n, d, stride, rows.len());
    check_level(level);
    let (w, rows, out) = (w.as_ptr(), rows.as_ptr(), out.as_mut_ptr());
    // SAFETY: bounds checked above; the level's ISA is available (check_level).
    unsafe {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => weigh_rows_avx512(w, nq, ldw, n, rows, stride, d, out, ldo, ahead),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => weigh_rows_avx2(w, nq, ldw, n, rows, stride, d, out, ldo, ahead),
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => weigh_rows_neon(w, nq, ldw, n, rows, stride, d, out, ldo, ahead),
            _ => weigh_rows_portable(w, nq, ldw, n, rows, stride, d, out, ldo, ahead),
        }
    }
}

/// [`weigh_rows_with`] on the detected level.
#[allow(clippy::too_many_arguments)]
pub fn weigh_rows<E: RowElem>(w: &[f32], nq: usize, ldw: usize, n: usize, rows: &[E], stride: usize, d: usize, out: &mut [f32], ldo: usize, ahead: usize) {
    weigh_rows_with(detected(), w, nq, ldw, n, rows, stride, d, out, ldo, ahead)
}

/// How far ahead (bytes) the decode GEMVs ask for the weights they stream ([`prefetch`]).
/// The hardware prefetcher alone leaves a single-thread stream well short of the DRAM
/// bandwidth on the 2-core AMD EPYC (Zen 5). Two builds alternated, cold weights, 1 thread
/// (no requests → 4 KiB ahead): the bf16 GEMV 2048×5632 from 14-24 to 21-29 GB/s over 3 rounds
/// (`bench_matmul_bf16`); medians of 4 rounds, µs: W8A16 2048×5632 727 → 531, 2048×2048 224 → 178,
/// 49152×576 1448 → 1325 (`bench_matmul_int8`); the int4 GEMV, from 2 KiB ahead, 2048×5632
/// 437 → 334, 2048×2048 146 → 113, 49152×576 962 → 787 (`bench_matmul_int4`). 1-2 KiB were no
/// better than none for bf16, 8 KiB like 4 KiB for all three. On a 2-vCPU Intel Xeon (AMX) VM,
/// the W8A16 GEMV at 1 thread, cold, 15 alternated rounds in one process, speed against 4 KiB
/// (2048×5632 / 5632×2048): none 0.87 / 0.85, 2 KiB 0.98 / 0.98, 8 KiB 1.00 / 1.00, 16 KiB 0.98 /
/// 0.97, into L2 (T1) at 8 KiB 0.98 / 0.99 and 16 KiB 0.97 / 0.97, non-temporal at 4 KiB 0.96 / 0.90.
pub(crate) const STREAM_AHEAD: usize = 4096;

/// How far ahead (bytes) the bf16 and int4 GEMVs also ask for their weights into L2
/// ([`prefetch_l2`]), besides [`STREAM_AHEAD`] into L1. On the 2-vCPU AMD EPYC of family 19h
/// (Zen 4), a C copy of the bf16 GEMV over llama-135m's matrices, 1 thread, 3 rounds alternated
/// in one process, GB/s: L1 at 4 KiB 16.5–17.1 (in another run 18.1–18.7), none 14.8–15.6
/// (19.9–20.5), L2 at 16 KiB 18.0–18.6 (22.3–23.1), both 18.2–18.7: so both, which keeps the
/// L1 requests the Zen 5 EPYC needed. Whole decodes there, builds before and after alternated
/// (llama-135m, 4–5 pairs, median pair ratios): BF16 1.45 at 1 thread and 1.20 at 2, INT4 1.13
/// and 1.03; gpt2-124m BF16 1.43 and 1.24. With the L2 requests in every GEMV, f32 decoded at
/// 0.86 at 1 thread (four times the lines per multiply-add) and INT8's W8A16 at 1.02 and 1.01,
/// so those two keep the L1 requests only.
pub(crate) const STREAM_AHEAD_L2: usize = 16 * 1024;

/// How far ahead (bytes) the bf16 GEMV asks for its weights: into L1 and into L2 (0: not at
/// all). [`STREAM_AHEAD`] and [`STREAM_AHEAD_L2`] on most CPUs, only the L2 requests on Intel
/// CPUs (see [`ahead_for`]); on AMD's family 19h (Zen 3,
/// Zen 4) only into L2, 8 KiB ahead. There, on the 2-vCPU AMD EPYC (Zen 4), llama-135m BF16
/// decode with the distances switched between generations of one process (6-8 alternated rounds per
/// setting, weights in huge pages), median speed against both requests: L2 only at 8 KiB
/// 1.07 (1.06-1.08), 6 KiB 1.11, 12 KiB 1.07, 4 KiB 0.94; L1 only at 4 KiB 0.75-0.78; none
/// 0.91-0.96; at 2 threads L2 at 8 KiB 1.04; gpt2-124m 1.07 at 1 thread. The W8A16 GEMV there
/// measured best with its L1 requests alone (L2 only 0.59-0.66).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Ahead {
    pub l1: usize,
    pub l2: usize,
}

/// [`Ahead`] for the running CPU (read once).
#[inline(always)]
pub(crate) fn bf16_gemv_ahead() -> Ahead {
    static AHEAD: std::sync::OnceLock<Ahead> = std::sync::OnceLock::new();
    *AHEAD.get_or_init(|| ahead_for(cpu_family()))
}

/// How far ahead (bytes) the tiled INT8 GEMV (`matmul_int8_tiles`) asks for its weights into
/// L1 (0: not at all), for the running CPU (read once): see [`tiles_ahead_for`].
#[inline(always)]
pub(crate) fn tiles_gemv_ahead() -> usize {
    static AHEAD: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *AHEAD.get_or_init(|| tiles_ahead_for(cpu_family()))
}

/// The tiled GEMV's read-ahead for a CPU of (vendor, family): none on AMD's family 19h, 2 KiB
/// elsewhere. Whole INT8 decodes, tiles against rows, alternated in one process (llama-135m,
/// 128 new tokens, median pair ratios): on the 2-vCPU AMD EPYC (Zen 4) no requests beat L1 at
/// 4 KiB by 1.13 and at 2 KiB by 1.19; on a 2-vCPU Intel Xeon (AMX off, so that tiles run
/// there), 8 pairs each, no requests 1.088 (1.07-1.12) at 1 thread and 1.001 (0.98-1.04) at 2,
/// L1 at 2 KiB 1.121 (1.10-1.15) and 1.095 (1.08-1.12).
fn tiles_ahead_for(cpu: Option<([u8; 12], u32)>) -> usize {
    match cpu {
        Some((vendor, 0x19)) if &vendor == b"AuthenticAMD" => 0,
        _ => 2048,
    }
}

/// The plan for a CPU of (vendor, family) (see [`cpu_family`]): on AMD's family 19h only into
/// L2, 8 KiB ahead (see [`Ahead`]); on Intel CPUs only into L2, [`STREAM_AHEAD_L2`] ahead; both
/// elsewhere. On a 2-vCPU Intel Xeon (family 6, AVX-512 BF16, AMX), the GEMV alone over weights
/// streamed from memory (`MatmulProbe`, 1 thread), against the read probe: both requests 82-88%
/// at 4096 × 4096 and 85-93% at 49152 × 576, L2 only at 16 KiB 85-89% and 93-94%, none 62% and
/// 67%. Whole BF16 decodes (fresh processes of the two plans alternated, 128-token prompt, 128
/// new tokens, median pair ratios of L2 only against both): llama-135m 1.03 (1.01-1.07, 6 pairs)
/// at 1 thread and 1.00 (0.97-1.04, 6) at 2; gpt2-124m 1.05 (1.04-1.09, 5) and 1.01 (0.99-1.03,
/// 5); L2 only at 8 KiB against 16 KiB 0.97 (0.96-1.04, 4).
fn ahead_for(cpu: Option<([u8; 12], u32)>) -> Ahead {
    match cpu {
        Some((vendor, 0x19)) if &vendor == b"AuthenticAMD" => Ahead { l1: 0, l2: 8 * 1024 },
        Some((vendor, _)) if &vendor == b"GenuineIntel" => Ahead { l1: 0, l2: STREAM_AHEAD_L2 },
        _ => Ahead { l1: STREAM_AHEAD, l2: STREAM_AHEAD_L2 },
    }
}

/// Whether the `vdpbf16ps` GEMM (x rounded to bf16) outruns the exact prefill GEMMs on this
/// CPU (read once): see [`bf16_dot_pays_on`].
pub(crate) fn bf16_dot_pays() -> bool {
    static PAYS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PAYS.get_or_init(|| bf16_dot_pays_on(cpu_family()))
}

/// Whether `vdpbf16ps` pays on a CPU of (vendor, family): everywhere but on Intel's. On 2-vCPU
/// AMD EPYC VMs the `vdpbf16ps` GEMM ran the INT8 prefill of llama-135m 1.6× faster than the
/// VNNI GEMM on the 16-bit x (Zen 4; `matmul_int8`), and BF16's GEMM m = 128 at 1.6-2.3× the
/// GFLOP/s of the f32 GEMM (family 1Ah; `matmul_bf16`). On a 2-vCPU Intel Xeon with AMX turned
/// off (what an AVX512-BF16 CPU without usable AMX runs), 128-token prefills of llama-135m in
/// fresh processes alternated, exact against `vdpbf16ps`: INT8 1.61-1.65× at 1 thread and
/// 1.54-1.63× at 2 (5 pairs each), BF16 1.01-1.03× and 0.99-1.01× (3), INT4 1.17-1.26× and
/// 0.98-1.01× (3) — and x stays exact.
fn bf16_dot_pays_on(cpu: Option<([u8; 12], u32)>) -> bool {
    !matches!(cpu, Some((vendor, _)) if &vendor == b"GenuineIntel")
}

/// The CPU's vendor string and display family (base family, plus the extended family where
/// the base is 0xF), from CPUID leaves 0 and 1; None off x86-64.
fn cpu_family() -> Option<([u8; 12], u32)> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // SAFETY (edition 2021): CPUID leaves 0 and 1 exist on every x86-64 CPU
        #[allow(unused_unsafe)]
        let (l0, l1) = unsafe { (__cpuid(0), __cpuid(1)) };
        let mut vendor = [0u8; 12];
        for (i, r) in [l0.ebx, l0.edx, l0.ecx].into_iter().enumerate() {
            vendor[4 * i..4 * i + 4].copy_from_slice(&r.to_le_bytes());
        }
        Some((vendor, display_family(l1.eax)))
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// The display family of CPUID leaf 1's EAX.
fn display_family(eax: u32) -> u32 {
    let base = (eax >> 8) & 0xf;
    if base == 0xf {
        base + ((eax >> 20) & 0xff)
    } else {
        base
    }
}

/// An IEEE half as f32 by F16C, one instruction: [`crate::kernels::quant::f16_to_f32`]'s value.
///
/// # Safety
/// The CPU has F16C (the caller's target features should include it, so that it inlines).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(crate) unsafe fn f16_to_f32_f16c(h: u16) -> f32 {
    use std::arch::x86_64::{_mm_cvtph_ps, _mm_cvtsi32_si128, _mm_cvtss_f32};
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

/// Asks for the `bytes` (whole 64-byte lines) from `p` on into L1, ahead of a streaming
/// kernel's loads. Only a hint: an address past the end of the data reads nothing.
#[inline(always)]
pub(crate) fn prefetch(p: *const u8, bytes: usize) {
    request_lines::<false>(p, bytes)
}

/// [`prefetch`] into L2 only (for a request further ahead than the L1 one).
#[inline(always)]
pub(crate) fn prefetch_l2(p: *const u8, bytes: usize) {
    request_lines::<true>(p, bytes)
}

#[inline(always)]
fn request_lines<const L2: bool>(p: *const u8, bytes: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in (0..bytes).step_by(64) {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0, _MM_HINT_T1};
        let a = p.wrapping_add(line) as *const i8;
        // SAFETY: a prefetch never faults, whatever the address
        unsafe {
            if L2 {
                _mm_prefetch::<_MM_HINT_T1>(a)
            } else {
                _mm_prefetch::<_MM_HINT_T0>(a)
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (p, bytes);
}

/// Σ a[i]·b[i]
#[inline]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    dot_with(detected(), a, b)
}

/// [`dot`] on a forced path. Panics if `level` is not available or the lengths differ.
pub fn dot_with(level: SimdLevel, a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "dot: length mismatch");
    check_level(level);
    // SAFETY: lengths checked; the level's ISA is available (check_level).
    unsafe {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => dot_avx512(a, b),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => dot_avx2(a, b),
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => dot_neon(a, b),
            _ => dot_portable(a, b),
        }
    }
}

/// Σ x[i]
#[inline]
pub fn sum(x: &[f32]) -> f32 {
    sum_with(detected(), x)
}

/// [`sum`] on a forced path. Panics if `level` is not available.
pub fn sum_with(level: SimdLevel, x: &[f32]) -> f32 {
    check_level(level);
    // SAFETY: the level's ISA is available (check_level).
    unsafe {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => sum_avx512(x),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => sum_avx2(x),
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => sum_neon(x),
            _ => sum_portable(x),
        }
    }
}

/// y[i] += alpha · x[i] (fused), x of f32 or bf16 bits
#[inline]
pub fn axpy<E: RowElem>(y: &mut [f32], alpha: f32, x: &[E]) {
    axpy_with(detected(), y, alpha, x)
}

/// [`axpy`] on a forced path. Panics if `level` is not available or the lengths differ.
pub fn axpy_with<E: RowElem>(level: SimdLevel, y: &mut [f32], alpha: f32, x: &[E]) {
    assert_eq!(y.len(), x.len(), "axpy: length mismatch");
    check_level(level);
    // SAFETY: lengths checked; the level's ISA is available (check_level).
    unsafe {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => axpy_avx512(y, alpha, x),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => axpy_avx2(y, alpha, x),
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => axpy_neon(y, alpha, x),
            _ => axpy_portable(y, alpha, x),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::kernels::test_rng::Rng;

    const LENS: &[usize] = &[
        0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 100, 127, 257, 1000, 4099,
    ];

    #[test]
    fn bf16_gemv_reads_ahead_by_cpu_family() {
        // CPUID leaf 1 EAX of a Zen 4 EPYC (A10F11h: base 0xF + extended 0xA), a Zen 5 (B00F21h),
        // an Intel Sapphire Rapids (806F8h: family 6)
        assert_eq!((display_family(0x00A1_0F11), display_family(0x00B0_0F21), display_family(0x0008_06F8)), (0x19, 0x1A, 6));
        let zen4 = ahead_for(Some((*b"AuthenticAMD", 0x19)));
        assert_eq!(zen4, Ahead { l1: 0, l2: 8192 });
        let intel = Ahead { l1: 0, l2: STREAM_AHEAD_L2 };
        for family in [6, 0x13, 0x19] {
            assert_eq!(ahead_for(Some((*b"GenuineIntel", family))), intel);
        }
        let default = Ahead { l1: STREAM_AHEAD, l2: STREAM_AHEAD_L2 };
        for other in [Some((*b"AuthenticAMD", 0x1A)), Some((*b"AuthenticAMD", 0x17)), Some((*b"CentaurHauls", 6)), None] {
            assert_eq!(ahead_for(other), default);
        }
        // the running CPU's plan is one of the three
        assert!([zen4, intel, default].contains(&bf16_gemv_ahead()));
    }

    #[test]
    fn the_tiled_gemv_reads_ahead_by_cpu_family() {
        assert_eq!(tiles_ahead_for(Some((*b"AuthenticAMD", 0x19))), 0);
        for other in [Some((*b"AuthenticAMD", 0x1A)), Some((*b"GenuineIntel", 6)), None] {
            assert_eq!(tiles_ahead_for(other), 2048);
        }
        for (cpu, pays) in [(Some((*b"GenuineIntel", 6)), false), (Some((*b"AuthenticAMD", 0x19)), true), (Some((*b"AuthenticAMD", 0x1A)), true), (None, true)] {
            assert_eq!(bf16_dot_pays_on(cpu), pays, "{cpu:?}");
        }
        assert!([0, 2048].contains(&tiles_gemv_ahead()));
    }

    #[test]
    fn detected_is_available() {
        let l = detected();
        assert!(l.is_available());
        assert!(SimdLevel::available().contains(&l));
        assert!(SimdLevel::available().contains(&SimdLevel::Scalar));
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            assert!(SimdLevel::Avx2.is_available());
        }
    }

    #[test]
    fn dot_matches_reference_on_every_level() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for level in SimdLevel::available() {
            for &n in LENS {
                let (a, b) = (rng.vec(n), rng.vec(n));
                let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
                let got = dot_with(level, &a, &b) as f64;
                let tol = 1e-6 * (n as f64).sqrt().max(1.0) * 4.0;
                assert!(
                    (got - want).abs() <= tol,
                    "{level:?} n={n}: {got} vs {want}"
                );
            }
        }
    }

    #[test]
    fn sum_matches_reference_on_every_level() {
        let mut rng = Rng(17);
        for level in SimdLevel::available() {
            for &n in LENS {
                let x = rng.vec(n);
                let want: f64 = x.iter().map(|&v| v as f64).sum();
                let got = sum_with(level, &x) as f64;
                let tol = 1e-6 * (n as f64).sqrt().max(1.0) * 4.0;
                assert!(
                    (got - want).abs() <= tol,
                    "{level:?} n={n}: {got} vs {want}"
                );
            }
        }
        let ones = vec![1.0f32; 1001];
        assert_eq!(sum(&ones), 1001.0);
    }

    #[test]
    fn level_names_round_trip() {
        for level in [
            SimdLevel::Scalar,
            SimdLevel::Avx2,
            SimdLevel::Avx512,
            SimdLevel::Neon,
        ] {
            assert_eq!(SimdLevel::from_name(level.name()), Some(level));
            assert_eq!(SimdLevel::from_u8(level as u8), level);
        }
    }

    #[test]
    fn dot_on_offset_slices() {
        // Unaligned starts: every level must use unaligned loads only.
        let mut rng = Rng(7);
        let a = rng.vec(300);
        let b = rng.vec(300);
        for level in SimdLevel::available() {
            for off in 0..17 {
                let (x, y) = (&a[off..off + 200], &b[off + 1..off + 201]);
                let want: f64 = x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum();
                let got = dot_with(level, x, y) as f64;
                assert!((got - want).abs() < 1e-4, "{level:?} off={off}");
            }
        }
    }

    #[test]
    fn axpy_matches_reference_on_every_level() {
        let mut rng = Rng(42);
        for level in SimdLevel::available() {
            for &n in LENS {
                let x = rng.vec(n + 1);
                let y0 = rng.vec(n + 2);
                let alpha = rng.next() * 3.0;
                let mut y = y0.clone();
                // Touch only y[1..n+1] so the guard elements reveal out-of-range writes.
                axpy_with(level, &mut y[1..n + 1], alpha, &x[1..]);
                assert_eq!(y[0], y0[0]);
                assert_eq!(y[n + 1], y0[n + 1]);
                for i in 0..n {
                    let want = y0[i + 1] as f64 + alpha as f64 * x[i + 1] as f64;
                    assert!(
                        (y[i + 1] as f64 - want).abs() < 1e-5,
                        "{level:?} n={n} i={i}"
                    );
                }
            }
        }
    }

    #[test]
    fn dispatching_entry_points_agree() {
        let mut rng = Rng(3);
        let (a, b) = (rng.vec(77), rng.vec(77));
        assert!((dot(&a, &b) - dot_with(SimdLevel::Scalar, &a, &b)).abs() < 1e-4);
        let mut y1 = b.clone();
        let mut y2 = b.clone();
        axpy(&mut y1, 0.5, &a);
        axpy_with(SimdLevel::Scalar, &mut y2, 0.5, &a);
        for (p, q) in y1.iter().zip(&y2) {
            assert!((p - q).abs() < 1e-6);
        }
    }

    #[test]
    #[should_panic(expected = "length mismatch")]
    fn dot_rejects_length_mismatch() {
        dot(&[1.0, 2.0], &[1.0]);
    }

    #[test]
    fn unavailable_level_panics() {
        for level in [SimdLevel::Avx2, SimdLevel::Avx512, SimdLevel::Neon] {
            if !level.is_available() {
                let r = std::panic::catch_unwind(|| dot_with(level, &[1.0], &[1.0]));
                assert!(r.is_err(), "{level:?} should be refused");
            }
        }
    }
}

#[cfg(test)]
mod rows_tests {
    use super::*;
    use crate::kernels::test_rng::Rng;

    #[test]
    fn score_rows_and_weigh_rows_match_loops() {
        let rows: Vec<f32> = (0..7 * 12 + 5).map(|i| ((i * 37) % 19) as f32 * 0.25 - 2.0).collect();
        let q: Vec<f32> = (0..10).map(|i| i as f32 * 0.5 - 1.5).collect();
        let mut out = vec![0.0f32; 2 * 9];
        score_rows(&q, 2, 5, 5, &rows, 12, 8, 0.5, &mut out, 9, 0);
        for j in 0..2 {
            for p in 0..8 {
                let want: f32 = 0.5 * (0..5).map(|i| q[j * 5 + i] * rows[p * 12 + i]).sum::<f32>();
                assert!((out[j * 9 + p] - want).abs() < 1e-5, "{j} {p}");
            }
        }
        let w: Vec<f32> = (0..16).map(|p| 0.1 * p as f32).collect();
        let mut y = vec![1.0f32; 11];
        weigh_rows(&w, 2, 8, 8, &rows, 12, 5, &mut y, 6, 0);
        for j in 0..2 {
            for i in 0..5 {
                let want: f32 = (0..8).map(|p| w[j * 8 + p] * rows[p * 12 + i]).sum::<f32>();
                assert!((y[j * 6 + i] - want).abs() < 1e-5);
            }
        }
        assert_eq!(y[5], 1.0, "between the outputs: untouched");
    }

    #[test]
    #[should_panic(expected = "too short")]
    fn score_rows_checks_bounds() {
        score_rows(&[1.0f32; 4], 1, 4, 4, &[0.0f32; 10], 4, 3, 1.0, &mut [0.0; 3], 3, 0);
    }

    #[test]
    #[should_panic(expected = "too short")]
    fn bf16_rows_are_checked_too() {
        weigh_rows(&[1.0; 3], 1, 3, 3, &[0u16; 10], 4, 4, &mut [0.0; 4], 4, 0);
    }

    #[test]
    #[should_panic(expected = "1 to 4 queries")]
    fn at_most_four_queries() {
        score_rows(&[1.0f32; 10], 5, 2, 2, &[0.0f32; 4], 2, 2, 1.0, &mut [0.0; 10], 2, 0);
    }

    /// bf16 rows: the f32 kernels' arithmetic on the widened values, so exactly the f32 rows'
    /// result (bit for bit, on every level), within f64 rounding of the exact sums, and the same
    /// for each query whether it comes alone or with others.
    #[test]
    fn bf16_rows_give_the_f32_rows_of_their_values_on_every_level() {
        use crate::kernels::quant::{bf16_to_f32, f32_to_bf16};
        let mut rng = Rng(0xb16);
        // widths around every lane count and unroll (4·16), odd strides, lengths around the
        // key tile (4)
        for &(d, stride, n) in &[(1, 1, 1), (3, 5, 7), (7, 7, 3), (8, 9, 4), (15, 17, 33), (16, 16, 2), (17, 40, 9), (33, 35, 5), (63, 64, 3), (64, 192, 17), (65, 65, 2), (100, 131, 6), (129, 129, 1)] {
            let bits: Vec<u16> = (0..(n - 1) * stride + d + 3).map(|_| f32_to_bf16(rng.next() * 4.0)).collect();
            let wide: Vec<f32> = bits.iter().map(|&b| bf16_to_f32(b)).collect();
            let q = rng.vec(MAX_QUERIES * d);
            let w = rng.vec(MAX_QUERIES * n);
            for level in SimdLevel::available() {
                for nq in 1..=MAX_QUERIES {
                    let (mut s16, mut s32) = (vec![0f32; nq * n], vec![0f32; nq * n]);
                    score_rows_with(level, &q, nq, d, d, &bits, stride, n, 0.25, &mut s16, n, ROWS_AHEAD);
                    score_rows_with(level, &q, nq, d, d, &wide, stride, n, 0.25, &mut s32, n, 0);
                    assert_eq!(s16, s32, "{level:?} score d={d} stride={stride} n={n} nq={nq}");
                    for j in 0..nq {
                        let mut alone = vec![0f32; n];
                        score_rows_with(level, &q[j * d..], 1, d, d, &wide, stride, n, 0.25, &mut alone, n, 3);
                        assert_eq!(alone, s32[j * n..(j + 1) * n], "{level:?} d={d} n={n}: query {j} of {nq}");
                        for (p, &got) in alone.iter().enumerate() {
                            let terms = (0..d).map(|i| q[j * d + i] as f64 * wide[p * stride + i] as f64);
                            let want: f64 = 0.25 * terms.clone().sum::<f64>();
                            let scale: f64 = 0.25 * terms.map(f64::abs).sum::<f64>();
                            assert!((got as f64 - want).abs() <= 1e-6 * scale.max(1e-30), "{level:?} d={d} p={p}: {got} vs {want}");
                        }
                    }
                    let (mut y16, mut y32) = (vec![0f32; nq * d], vec![0f32; nq * d]);
                    weigh_rows_with(level, &w, nq, n, n, &bits, stride, d, &mut y16, d, ROWS_AHEAD);
                    weigh_rows_with(level, &w, nq, n, n, &wide, stride, d, &mut y32, d, 0);
                    assert_eq!(y16, y32, "{level:?} weigh d={d} stride={stride} n={n} nq={nq}");
                    for j in 0..nq {
                        for i in 0..d {
                            let terms = (0..n).map(|p| w[j * n + p] as f64 * wide[p * stride + i] as f64);
                            let (want, scale): (f64, f64) = (terms.clone().sum(), terms.map(f64::abs).sum());
                            let got = y16[j * d + i];
                            assert!((got as f64 - want).abs() <= 1e-6 * scale.max(1e-30), "{level:?} d={d} i={i}: {got} vs {want}");
                        }
                    }
                }
            }
        }
    }

    /// Each weighted sum is, bit for bit, what adding the rows one at a time into zeros with
    /// `axpy` gives, on every level, for widths around the block (4 vectors) and its
    /// remainders, alone or with other queries.
    #[test]
    fn weigh_rows_equals_axpy_row_by_row() {
        let mut rng = Rng(0xa1);
        for level in SimdLevel::available() {
            for d in (1..=72).chain([80, 100, 127, 128, 129, 200, 257]) {
                let (n, stride) = (9, d + 3);
                let rows = rng.vec((n - 1) * stride + d);
                let w = rng.vec(MAX_QUERIES * n);
                let mut got = vec![0f32; MAX_QUERIES * d];
                weigh_rows_with(level, &w, MAX_QUERIES, n, n, &rows, stride, d, &mut got, d, 1);
                for j in 0..MAX_QUERIES {
                    let mut want = vec![0f32; d];
                    for p in 0..n {
                        axpy_with(level, &mut want, w[j * n + p], &rows[p * stride..p * stride + d]);
                    }
                    assert_eq!(got[j * d..(j + 1) * d], want, "{level:?} d={d} query {j}");
                }
            }
        }
    }

    #[test]
    fn partial_bf16_loads_read_nothing_past_the_row() {
        // the rows end the slice; past its end, inside the vector's capacity, lie huge values
        // (left by `truncate`) that any read beyond the row would add to the result
        use crate::kernels::quant::f32_to_bf16;
        for level in SimdLevel::available() {
            for d in 1..=33 {
                let mut rows = vec![f32_to_bf16(1e30); 128];
                rows.truncate(40 + d);
                for r in &mut rows[40..] {
                    *r = f32_to_bf16(1.0);
                }
                let q = vec![1.0f32; d];
                let mut out = [0f32; 1];
                score_rows_with(level, &q, 1, d, d, &rows[40..], d, 1, 1.0, &mut out, 1, ROWS_AHEAD);
                assert_eq!(out[0], d as f32, "{level:?} d={d}");
                let mut y = vec![0f32; d];
                weigh_rows_with(level, &[2.0], 1, 1, 1, &rows[40..], d, d, &mut y, d, ROWS_AHEAD);
                assert!(y.iter().all(|&v| v == 2.0), "{level:?} d={d}");
            }
        }
    }
}
