//! RMSNorm (LLaMA) and LayerNorm (GPT-2), row by row. The sums over a row run on vector lanes
//! (16 running sums, added pairwise at the end), and every element-wise step is compiled for the
//! detected instruction set (`vectorized!`); the element-wise arithmetic is the same everywhere.

use crate::kernels::activations::vectorized;

/// Running sums per row: enough independent lanes for one AVX-512 vector.
const LANES: usize = 16;

/// Σ f(x[i]) with [`LANES`] running sums (lane i % LANES), then the lanes added pairwise.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    for (a, &v) in acc.iter_mut().zip(rest) {
        *a += f(v);
    }
    let mut w = LANES;
    while w > 1 {
        w /= 2;
        for i in 0..w {
            acc[i] += acc[i + w];
        }
    }
    acc[0]
}

vectorized! {
    /// out[i] = x[i] / sqrt(mean(x²) + eps) · w[i]          x, out, w: [d]
    pub fn rms_norm(x: &[f32], w: &[f32], eps: f32, out: &mut [f32]) {
        let d = x.len();
        let ss = lane_sum(x, |v| v * v) / d as f32;
        let inv = 1.0 / (ss + eps).sqrt();
        for ((o, xi), wi) in out.iter_mut().zip(x).zip(w) {
            *o = wi * (xi * inv);
        }
    }
}

vectorized! {
    /// out[i] = (x[i] − mean) / sqrt(var + eps) · w[i] + b[i]   x, out, w, b: [d]
    pub fn layer_norm(x: &[f32], w: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
        let d = x.len() as f32;
        let mean = lane_sum(x, |v| v) / d;
        let var = lane_sum(x, |v| (v - mean) * (v - mean)) / d;
        let inv = 1.0 / (var + eps).sqrt();
        for (((o, xi), wi), bi) in out.iter_mut().zip(x).zip(w).zip(b) {
            *o = (xi - mean) * inv * wi + bi;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_matches_formula() {
        let x = [1.0f32, -2.0, 3.0, 0.5];
        let w = [1.0f32, 2.0, 0.5, -1.0];
        let mut out = [0.0; 4];
        rms_norm(&x, &w, 1e-6, &mut out);
        let rms = ((1.0 + 4.0 + 9.0 + 0.25) / 4.0f32 + 1e-6).sqrt();
        for i in 0..4 {
            assert!((out[i] - x[i] / rms * w[i]).abs() < 1e-6);
        }
    }

    #[test]
    fn layer_norm_centers_and_scales() {
        let x = [1.0f32, 2.0, 3.0, 4.0];
        let mut out = [0.0; 4];
        layer_norm(&x, &[1.0; 4], &[0.5; 4], 1e-5, &mut out);
        let mean: f32 = out.iter().sum::<f32>() / 4.0;
        assert!((mean - 0.5).abs() < 1e-6);
        let var: f32 = out.iter().map(|v| (v - 0.5) * (v - 0.5)).sum::<f32>() / 4.0;
        assert!((var - 1.0).abs() < 1e-4);
    }
}
