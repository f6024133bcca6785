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

/// Numerically stable softmax in place. −inf entries become exactly 0.
pub fn softmax(x: &mut [f32]) {
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
