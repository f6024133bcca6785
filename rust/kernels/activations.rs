//! Element-wise activations and softmax, built on a branch-free exp that the compiler
//! vectorizes (8 or 16 lanes inside the AVX2 / AVX-512 entry points, chosen at run time).

const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Below this, exp(x) is 0 in f32 (and −inf maps to exactly 0).
const EXP_MIN: f32 = -87.336_55;
const EXP_MAX: f32 = 88.376_26;

/// 1.5·2²³: adding it to an integral |n| < 2²² leaves n in the low mantissa bits.
const ROUND_MAGIC: f32 = 12_582_912.0;

/// exp(x) with relative error below 2e-7 (Cephes' expf polynomial on x − n·ln2). Every step
/// is a vector instruction once the loop is vectorized: n is rounded ties-to-even and turned
/// into 2ⁿ through the bits of n + 1.5·2²³ (a float-to-int cast would be scalarized for its
/// saturating semantics).
#[inline(always)]
fn exp_f32(x: f32) -> f32 {
    let xc = x.clamp(EXP_MIN, EXP_MAX);
    let n = (xc * LOG2E).round_ties_even();
    let r = xc - n * LN2_HI - n * LN2_LO;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r + 0.166_666_65) * r + 0.5;
    // n in [-126, 128] (x clamped): 2ⁿ's exponent field is n + 127
    let ni = (n + ROUND_MAGIC).to_bits().wrapping_sub(ROUND_MAGIC.to_bits());
    let y = (p * r2 + r + 1.0) * f32::from_bits(ni.wrapping_add(127) << 23);
    if x < EXP_MIN {
        0.0
    } else {
        y
    }
}

/// Expands `$body` (a function of the slices) into a scalar version plus AVX2/AVX-512 builds
/// of the same code, and dispatches on the detected instruction set.
macro_rules! vectorized {
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) $body:block) => {
        vectorized! { $(#[$doc])* pub fn $name($($arg: $ty),*) -> () $body }
    };
    ($(#[$doc:meta])* pub fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty $body:block) => {
        $(#[$doc])*
        pub fn $name($($arg: $ty),*) -> $ret {
            #[inline(always)]
            fn body($($arg: $ty),*) -> $ret $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2,fma")]
                unsafe fn avx512($($arg: $ty),*) -> $ret { body($($arg),*) }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) -> $ret { body($($arg),*) }
                match $crate::kernels::simd::detected() {
                    // SAFETY: the detected level guarantees the features are present.
                    $crate::kernels::simd::SimdLevel::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::kernels::simd::SimdLevel::Avx2 => return unsafe { avx2($($arg),*) },
                    _ => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use vectorized;

vectorized! {
    /// x[i] += y[i]
    pub fn add_assign(x: &mut [f32], y: &[f32]) {
        for (a, b) in x.iter_mut().zip(y) {
            *a += b;
        }
    }
}

vectorized! {
    /// x[i] = exp(x[i])
    pub fn exp_inplace(x: &mut [f32]) {
        for v in x.iter_mut() {
            *v = exp_f32(*v);
        }
    }
}

vectorized! {
    /// SwiGLU: out[i] = silu(gate[i]) · up[i]
    pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
            *o = g / (1.0 + exp_f32(-g)) * u;
        }
    }
}

vectorized! {
    /// GPT-2's tanh approximation of GELU ("gelu_new"), in place:
    /// 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715x³))), with 1 + tanh(u) = 2 − 2/(e^{2u} + 1).
    pub fn gelu_tanh(x: &mut [f32]) {
        const C: f32 = 0.797_884_6; // sqrt(2/π)
        for v in x.iter_mut() {
            let u = *v;
            let t = 2.0 * C * (u + 0.044715 * u * u * u);
            *v = u * (1.0 - 1.0 / (exp_f32(t) + 1.0));
        }
    }
}

/// The largest value of x (NaN ignored; −inf for an empty or all-NaN x), with 16 running
/// maxima that the compiler turns into vector compares (a fold over `f32::max` stays scalar).
/// Exact: the same value whatever the order.
fn max_value(x: &[f32]) -> f32 {
    const W: usize = 16;
    let mut m = [f32::NEG_INFINITY; W];
    let chunks = x.chunks_exact(W);
    let rest = chunks.remainder();
    for c in chunks {
        for (m, &v) in m.iter_mut().zip(c) {
            *m = if v > *m { v } else { *m };
        }
    }
    m.iter().chain(rest).fold(f32::NEG_INFINITY, |a, &v| if v > a { v } else { a })
}

/// Numerically stable softmax in place. −inf entries become exactly 0. On AVX-512 in three
/// passes ([`softmax_avx512`]), elsewhere in five; the same bits either way.
pub fn softmax(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::detected() == crate::kernels::simd::SimdLevel::Avx512 {
        // SAFETY: AVX-512 (F and VL) detected.
        return unsafe { softmax_avx512(x) };
    }
    softmax_passes(x)
}

/// [`softmax`] as five passes over x: its max, x − max, exp, the sum, the scaling.
fn softmax_passes(x: &mut [f32]) {
    let max = max_value(x);
    for v in x.iter_mut() {
        *v -= max;
    }
    exp_inplace(x);
    let sum = crate::kernels::simd::sum(x);
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// [`softmax_passes`] bit for bit in three passes with masked tails (a prompt's rows of
/// scores are short: the five loops' scalar tails and branches cost more than their vector
/// bodies there): the max; exp(x − max) stored and summed as `simd::sum` sums on AVX-512 (four
/// accumulators over 64 values at a time, the rest into the first, then the same tree); the
/// scaling. Each exp is [`exp_f32`]'s operations in its order, as its vectorized loop does.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn softmax_avx512(x: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len();
    let p = x.as_mut_ptr();
    let tail = |i: usize| ((1u32 << (n - i).min(16)) - 1) as __mmask16;
    // the max, NaN ignored (an exact value whatever the order, up to the sign of a zero max,
    // which no difference x − max sees)
    let mut m = _mm512_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    while i < n {
        let k = tail(i);
        let v = _mm512_mask_loadu_ps(m, k, p.add(i));
        m = _mm512_max_ps(v, m);
        i += 16;
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(m));
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut i = 0;
    while i + 64 <= n {
        for (u, acc) in acc.iter_mut().enumerate() {
            let e = exp512(_mm512_sub_ps(_mm512_loadu_ps(p.add(i + 16 * u)), max));
            _mm512_storeu_ps(p.add(i + 16 * u), e);
            *acc = _mm512_add_ps(*acc, e);
        }
        i += 64;
    }
    while i < n {
        let k = tail(i);
        let e = _mm512_maskz_mov_ps(k, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p.add(i)), max)));
        _mm512_mask_storeu_ps(p.add(i), k, e);
        acc[0] = _mm512_add_ps(acc[0], e);
        i += 16;
    }
    let s = _mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3]));
    // simd::sum's tree over the lanes
    let s = _mm512_add_ps(s, _mm512_shuffle_f32x4::<0b01_00_11_10>(s, s));
    let s = _mm512_add_ps(s, _mm512_shuffle_f32x4::<0b10_11_00_01>(s, s));
    let s = _mm512_add_ps(s, _mm512_permute_ps::<0b01_00_11_10>(s));
    let s = _mm512_add_ps(s, _mm512_permute_ps::<0b10_11_00_01>(s));
    let inv = _mm512_set1_ps(1.0 / _mm512_cvtss_f32(s));
    let mut i = 0;
    while i < n {
        let k = tail(i);
        _mm512_mask_storeu_ps(p.add(i), k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p.add(i)), inv));
        i += 16;
    }
}

/// [`exp_f32`] on 16 lanes: the same operations in the same order.
///
/// # Safety
/// AVX-512F must be available.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn exp512(x: std::arch::x86_64::__m512) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let s = _mm512_set1_ps;
    // f32::clamp: below the min → min, above the max → max, NaN kept
    let xc = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, s(EXP_MIN)), x, s(EXP_MIN));
    let xc = _mm512_mask_blend_ps(_mm512_cmp_ps_mask::<_CMP_GT_OQ>(xc, s(EXP_MAX)), xc, s(EXP_MAX));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(xc, s(LOG2E)));
    let r = _mm512_sub_ps(_mm512_sub_ps(xc, _mm512_mul_ps(n, s(LN2_HI))), _mm512_mul_ps(n, s(LN2_LO)));
    let r2 = _mm512_mul_ps(r, r);
    let mut p = _mm512_add_ps(_mm512_mul_ps(s(1.987_569_1e-4), r), s(1.398_199_9e-3));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), s(8.333_452e-3));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), s(4.166_579_6e-2));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), s(0.166_666_65));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), s(0.5));
    let ni = _mm512_sub_epi32(_mm512_castps_si512(_mm512_add_ps(n, s(ROUND_MAGIC))), _mm512_set1_epi32(ROUND_MAGIC.to_bits() as i32));
    let two_n = _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(ni, _mm512_set1_epi32(127))));
    let y = _mm512_mul_ps(_mm512_add_ps(_mm512_add_ps(_mm512_mul_ps(p, r2), r), s(1.0)), two_n);
    // x < EXP_MIN → 0 (x before the clamp; NaN is not below)
    _mm512_maskz_mov_ps(!_mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, s(EXP_MIN)), y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_over_its_range() {
        let mut worst = 0.0f64;
        let mut x = -87.0f32;
        while x < 88.0 {
            let got = exp_f32(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x += 0.0137;
        }
        assert!(worst < 3e-7, "worst relative error {worst}");
        assert_eq!(exp_f32(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_f32(-200.0), 0.0);
        assert_eq!(exp_f32(0.0), 1.0);
        assert!(exp_f32(100.0).is_finite());
        let mut v: Vec<f32> = (0..37).map(|i| i as f32 * 0.5 - 9.0).collect();
        let want: Vec<f32> = v.iter().map(|x| x.exp()).collect();
        exp_inplace(&mut v);
        for (g, w) in v.iter().zip(&want) {
            assert!(((g - w) / w).abs() < 3e-7);
        }
    }

    /// The AVX-512 softmax gives the bits of the five passes: rows of 1 to 200 values (tails of
    /// every length), with −inf, huge and tiny entries, and rows that underflow.
    #[test]
    fn softmax_avx512_same_bits_as_the_passes() {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::simd::detected() == crate::kernels::simd::SimdLevel::Avx512 {
            let mut rng = crate::kernels::test_rng::Rng(0x50f7);
            for n in (1..=200).chain([1000, 4097]) {
                for scale in [1.0f32, 30.0, 300.0] {
                    let mut x: Vec<f32> = rng.vec(n).iter().map(|v| v * scale).collect();
                    if n > 3 {
                        x[n / 3] = f32::NEG_INFINITY;
                        x[n / 2] = -1e30;
                    }
                    let mut want = x.clone();
                    softmax_passes(&mut want);
                    // SAFETY: AVX-512 detected.
                    unsafe { softmax_avx512(&mut x) };
                    for (i, (g, w)) in x.iter().zip(&want).enumerate() {
                        assert_eq!(g.to_bits(), w.to_bits(), "n {n} scale {scale} [{i}]: {g} vs {w}");
                    }
                }
            }
        }
    }

    /// The softmax of a prompt's rows of scores (every length from 1 to 128, as a 128-token
    /// prompt's causal rows) and of 2,000-value rows (a long decode step), in three passes on
    /// AVX-512 and in five, alternated, best of 5 each:
    /// `cargo test --release --lib bench_softmax -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn bench_softmax() {
        use crate::kernels::test_rng::best_time;
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::simd::detected() == crate::kernels::simd::SimdLevel::Avx512 {
            let mut rng = crate::kernels::test_rng::Rng(5);
            for (what, lens) in [("rows of 1-128", (1..=128).collect::<Vec<usize>>()), ("rows of 2000", vec![2000; 64])] {
                let rows: Vec<Vec<f32>> = lens.iter().map(|&n| rng.vec(n)).collect();
                let mut work = rows.clone();
                let values: usize = lens.iter().sum();
                let (mut five, mut three) = (f64::INFINITY, f64::INFINITY);
                for _ in 0..5 {
                    five = five.min(best_time(1, 200, |_| for (w, r) in work.iter_mut().zip(&rows) { w.copy_from_slice(r); softmax_passes(w); }));
                    // SAFETY: AVX-512 detected.
                    three = three.min(best_time(1, 200, |_| for (w, r) in work.iter_mut().zip(&rows) { w.copy_from_slice(r); unsafe { softmax_avx512(w) } }));
                }
                println!("{what}: {:.2} ns per value in five passes, {:.2} in three ({:.2}x)", five * 1e9 / values as f64, three * 1e9 / values as f64, five / three);
            }
        }
    }

    #[test]
    fn activations_match_closed_forms() {
        let gate: Vec<f32> = (0..19).map(|i| i as f32 * 0.7 - 6.0).collect();
        let up: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.1).collect();
        let mut out = vec![0.0f32; 19];
        silu_mul(&gate, &up, &mut out);
        for i in 0..19 {
            let (g, u) = (gate[i] as f64, up[i] as f64);
            let want = g / (1.0 + (-g).exp()) * u;
            assert!((out[i] as f64 - want).abs() < 1e-6 * (1.0 + want.abs()), "{i}");
        }
        let mut g: Vec<f32> = (0..23).map(|i| i as f32 * 0.5 - 5.0).collect();
        let want: Vec<f64> = g
            .iter()
            .map(|&x| {
                let x = x as f64;
                0.5 * x * (1.0 + (0.7978845608028654 * (x + 0.044715 * x * x * x)).tanh())
            })
            .collect();
        gelu_tanh(&mut g);
        for (got, w) in g.iter().zip(&want) {
            assert!((*got as f64 - w).abs() < 1e-6 * (1.0 + w.abs()));
        }
        let mut s = [1.0f32, 2.0, f32::NEG_INFINITY];
        softmax(&mut s);
        assert!((s[0] + s[1] - 1.0).abs() < 1e-6 && s[2] == 0.0 && s[1] > s[0]);
    }
}
