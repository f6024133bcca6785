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

/// The element type of the rows the row kernels ([`dot_rows`], [`axpy_rows`]) read: `f32`, or
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
unsafe fn load_row<V: F32Vec, E: RowElem>(p: *const E) -> V {
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
unsafe fn load_row_partial<V: F32Vec, E: RowElem>(p: *const E, n: usize) -> V {
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

/// out[p] = Σ_i q[i]·rows[p·stride + i] for p in 0..out.len() (one call for many dot products,
/// e.g. a query against every cached key); rows of f32 or bf16.
///
/// # Safety
/// `V`'s ISA must be enabled; `rows` holds `(out.len() − 1)·stride + q.len()` values.
#[inline(always)]
unsafe fn dot_rows_impl<V: F32Vec, E: RowElem>(q: &[f32], rows: &[E], stride: usize, out: &mut [f32]) {
    let d = q.len();
    for (p, o) in out.iter_mut().enumerate() {
        *o = dot_impl::<V, E>(q, rows.get_unchecked(p * stride..p * stride + d));
    }
}

/// y[i] += Σ_p w[p]·rows[p·stride + i] (a weighted sum of many rows, e.g. attention over
/// values); rows of f32 or bf16.
///
/// Blocks of [`AXPY_ROWS_BLOCK`] vectors of y stay in registers while every row adds into them,
/// then are stored once; what is left of y (less than a block) goes row by row through
/// [`axpy_impl`]. Either way each element of y receives y + w[p]·row[p] for p = 0, 1, … in
/// order with the same operation, so the result does not depend on the blocking. (Row by row
/// for all of y, each row waited for the previous row's stores of y: attention over a long
/// cache was bound by that latency, not by reading the rows.)
///
/// # Safety
/// `V`'s ISA must be enabled; `rows` holds `(w.len() − 1)·stride + y.len()` values.
#[inline(always)]
unsafe fn axpy_rows_impl<V: F32Vec, E: RowElem>(y: &mut [f32], w: &[f32], rows: &[E], stride: usize) {
    const B: usize = AXPY_ROWS_BLOCK;
    let d = y.len();
    let l = V::LANES;
    let (py, pr) = (y.as_mut_ptr(), rows.as_ptr());
    let mut i = 0;
    while i + B * l <= d {
        let mut acc = [V::zero(); B];
        for (k, a) in acc.iter_mut().enumerate() {
            *a = V::load(py.add(i + k * l));
        }
        for (p, &wp) in w.iter().enumerate() {
            let va = V::splat(wp);
            let r = pr.add(p * stride + i);
            for (k, a) in acc.iter_mut().enumerate() {
                *a = a.mul_add(va, load_row::<V, E>(r.add(k * l)));
            }
        }
        for (k, a) in acc.iter().enumerate() {
            a.store(py.add(i + k * l));
        }
        i += B * l;
    }
    if i < d {
        for (p, &wp) in w.iter().enumerate() {
            axpy_impl::<V, E>(y.get_unchecked_mut(i..), wp, rows.get_unchecked(p * stride + i..p * stride + d));
        }
    }
}

/// Vectors of y that [`axpy_rows_impl`] keeps in registers across the rows (4 × 16 lanes: a
/// head of 64 values in one block on AVX-512, two on AVX2).
const AXPY_ROWS_BLOCK: usize = 4;

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
        unsafe fn $avx512<E: RowElem>($($arg: $ty),*) -> $ret { $generic::<x86::V512, E>($($arg),*) }
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        unsafe fn $avx2<E: RowElem>($($arg: $ty),*) -> $ret { $generic::<x86::V256, E>($($arg),*) }
        #[cfg(target_arch = "aarch64")]
        #[target_feature(enable = "neon")]
        unsafe fn $neon<E: RowElem>($($arg: $ty),*) -> $ret { $generic::<neon::V128, E>($($arg),*) }
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

isa_entries_rows!(dot_rows_impl, dot_rows_avx512, dot_rows_avx2, dot_rows_neon, dot_rows_portable,
    (q: &[f32], rows: &[E], stride: usize, out: &mut [f32]) -> ());
isa_entries_rows!(axpy_rows_impl, axpy_rows_avx512, axpy_rows_avx2, axpy_rows_neon, axpy_rows_portable,
    (y: &mut [f32], w: &[f32], rows: &[E], stride: usize) -> ());

fn check_rows(n_rows: usize, width: usize, stride: usize, len: usize) {
    assert!(width <= stride || n_rows <= 1, "rows overlap: width {width} > stride {stride}");
    if n_rows > 0 {
        assert!((n_rows - 1) * stride + width <= len, "rows: slice too short");
    }
}

/// out[p] = dot(q, rows[p·stride..][..q.len()]) for every p; rows of f32 or bf16 bits.
#[inline]
pub fn dot_rows<E: RowElem>(q: &[f32], rows: &[E], stride: usize, out: &mut [f32]) {
    dot_rows_with(detected(), q, rows, stride, out)
}

/// [`dot_rows`] on a forced path. Panics if `level` is not available or the rows do not fit.
pub fn dot_rows_with<E: RowElem>(level: SimdLevel, q: &[f32], rows: &[E], stride: usize, out: &mut [f32]) {
    check_rows(out.len(), q.len(), stride, rows.len());
    check_level(level);
    // SAFETY: bounds checked above; the level's ISA is available (check_level).
    unsafe {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => dot_rows_avx512(q, rows, stride, out),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => dot_rows_avx2(q, rows, stride, out),
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => dot_rows_neon(q, rows, stride, out),
            _ => dot_rows_portable(q, rows, stride, out),
        }
    }
}

/// y += Σ_p w[p]·rows[p·stride..][..y.len()]; rows of f32 or bf16 bits.
#[inline]
pub fn axpy_rows<E: RowElem>(y: &mut [f32], w: &[f32], rows: &[E], stride: usize) {
    axpy_rows_with(detected(), y, w, rows, stride)
}

/// [`axpy_rows`] on a forced path. Panics if `level` is not available or the rows do not fit.
pub fn axpy_rows_with<E: RowElem>(level: SimdLevel, y: &mut [f32], w: &[f32], rows: &[E], stride: usize) {
    check_rows(w.len(), y.len(), stride, rows.len());
    check_level(level);
    // SAFETY: bounds checked above; the level's ISA is available (check_level).
    unsafe {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => axpy_rows_avx512(y, w, rows, stride),
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => axpy_rows_avx2(y, w, rows, stride),
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => axpy_rows_neon(y, w, rows, stride),
            _ => axpy_rows_portable(y, w, rows, stride),
        }
    }
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

/// y[i] += alpha · x[i]
#[inline]
pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    axpy_with(detected(), y, alpha, x)
}

/// [`axpy`] on a forced path. Panics if `level` is not available or the lengths differ.
pub fn axpy_with(level: SimdLevel, y: &mut [f32], alpha: f32, x: &[f32]) {
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

    #[test]
    fn dot_rows_and_axpy_rows_match_loops() {
        let rows: Vec<f32> = (0..7 * 12 + 5).map(|i| ((i * 37) % 19) as f32 * 0.25 - 2.0).collect();
        let q: Vec<f32> = (0..5).map(|i| i as f32 - 1.5).collect();
        let mut out = vec![0.0f32; 8];
        dot_rows(&q, &rows, 12, &mut out);
        for p in 0..8 {
            let want: f32 = (0..5).map(|i| q[i] * rows[p * 12 + i]).sum();
            assert!((out[p] - want).abs() < 1e-5);
        }
        let w: Vec<f32> = (0..8).map(|p| 0.1 * p as f32).collect();
        let mut y = vec![1.0f32; 5];
        axpy_rows(&mut y, &w, &rows, 12);
        for i in 0..5 {
            let want: f32 = 1.0 + (0..8).map(|p| w[p] * rows[p * 12 + i]).sum::<f32>();
            assert!((y[i] - want).abs() < 1e-5);
        }
    }

    #[test]
    #[should_panic(expected = "too short")]
    fn dot_rows_checks_bounds() {
        dot_rows(&[1.0f32; 4], &[0.0f32; 10], 4, &mut [0.0; 3]);
    }

    #[test]
    #[should_panic(expected = "too short")]
    fn bf16_rows_are_checked_too() {
        axpy_rows(&mut [0.0; 4], &[1.0; 3], &[0u16; 10], 4);
    }

    /// bf16 rows: the f32 kernels' arithmetic on the widened values, so exactly the f32 rows'
    /// result (bit for bit, on every level), and within f64 rounding of the exact sums.
    #[test]
    fn bf16_rows_give_the_f32_rows_of_their_values_on_every_level() {
        use crate::kernels::quant::{bf16_to_f32, f32_to_bf16};
        use crate::kernels::test_rng::Rng;
        let mut rng = Rng(0xb16);
        // widths around every lane count and unroll (4·16), odd strides, a few lengths
        for &(d, stride, n) in &[(1, 1, 1), (3, 5, 7), (7, 7, 3), (8, 9, 4), (15, 17, 33), (16, 16, 2), (17, 40, 9), (33, 35, 5), (63, 64, 3), (64, 192, 17), (65, 65, 2), (100, 131, 6), (129, 129, 1)] {
            let bits: Vec<u16> = (0..(n - 1) * stride + d + 3).map(|_| f32_to_bf16(rng.next() * 4.0)).collect();
            let wide: Vec<f32> = bits.iter().map(|&b| bf16_to_f32(b)).collect();
            let q = rng.vec(d);
            let w = rng.vec(n);
            let y0 = rng.vec(d);
            for level in SimdLevel::available() {
                let (mut s16, mut s32) = (vec![0f32; n], vec![0f32; n]);
                dot_rows_with(level, &q, &bits, stride, &mut s16);
                dot_rows_with(level, &q, &wide, stride, &mut s32);
                assert_eq!(s16, s32, "{level:?} dot d={d} stride={stride} n={n}");
                for (p, &got) in s16.iter().enumerate() {
                    let want: f64 = (0..d).map(|i| q[i] as f64 * wide[p * stride + i] as f64).sum();
                    let scale: f64 = (0..d).map(|i| (q[i] as f64 * wide[p * stride + i] as f64).abs()).sum();
                    assert!((got as f64 - want).abs() <= 1e-6 * scale.max(1e-30), "{level:?} d={d} p={p}: {got} vs {want}");
                }
                let (mut y16, mut y32) = (y0.clone(), y0.clone());
                axpy_rows_with(level, &mut y16, &w, &bits, stride);
                axpy_rows_with(level, &mut y32, &w, &wide, stride);
                assert_eq!(y16, y32, "{level:?} axpy d={d} stride={stride} n={n}");
                for (i, &got) in y16.iter().enumerate() {
                    let want: f64 = y0[i] as f64 + (0..n).map(|p| w[p] as f64 * wide[p * stride + i] as f64).sum::<f64>();
                    let scale: f64 = y0[i].abs() as f64 + (0..n).map(|p| (w[p] as f64 * wide[p * stride + i] as f64).abs()).sum::<f64>();
                    assert!((got as f64 - want).abs() <= 1e-6 * scale, "{level:?} d={d} i={i}: {got} vs {want}");
                }
            }
        }
    }

    /// The blocked weighted sum gives, bit for bit, what adding the rows one at a time with
    /// `axpy` gives, on every level, for widths around the block (4 vectors) and its remainders.
    #[test]
    fn axpy_rows_equals_axpy_row_by_row() {
        use crate::kernels::test_rng::Rng;
        let mut rng = Rng(0xa1);
        for level in SimdLevel::available() {
            for d in (1..=72).chain([80, 100, 127, 128, 129, 200, 257]) {
                let (n, stride) = (9, d + 3);
                let rows = rng.vec((n - 1) * stride + d);
                let w = rng.vec(n);
                let y0 = rng.vec(d);
                let mut want = y0.clone();
                for p in 0..n {
                    axpy_with(level, &mut want, w[p], &rows[p * stride..p * stride + d]);
                }
                let mut got = y0.clone();
                axpy_rows_with(level, &mut got, &w, &rows, stride);
                assert_eq!(got, want, "{level:?} d={d}");
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
                dot_rows_with(level, &q, &rows[40..], d, &mut out);
                assert_eq!(out[0], d as f32, "{level:?} d={d}");
                let mut y = vec![0f32; d];
                axpy_rows_with(level, &mut y, &[2.0], &rows[40..], d);
                assert!(y.iter().all(|&v| v == 2.0), "{level:?} d={d}");
            }
        }
    }
}
