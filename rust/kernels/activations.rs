//! Element-wise activations and softmax.

/// SwiGLU: out[i] = silu(gate[i]) · up[i]
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    for ((o, g), u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// GPT-2's tanh approximation of GELU ("gelu_new"), in place.
pub fn gelu_tanh(x: &mut [f32]) {
    const C: f32 = 0.797_884_6; // sqrt(2/π)
    for v in x.iter_mut() {
        let u = *v;
        *v = 0.5 * u * (1.0 + (C * (u + 0.044715 * u * u * u)).tanh());
    }
}

/// Numerically stable softmax in place. −inf entries become 0.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_match_closed_forms() {
        let mut out = [0.0f32; 2];
        silu_mul(&[0.0, 2.0], &[3.0, 0.5], &mut out);
        assert_eq!(out[0], 0.0);
        assert!((out[1] - 2.0 / (1.0 + (-2.0f32).exp()) * 0.5).abs() < 1e-6);
        let mut g = [0.0f32, 1.0, -1.0];
        gelu_tanh(&mut g);
        assert_eq!(g[0], 0.0);
        assert!((g[1] - 0.841_192).abs() < 1e-5);
        assert!((g[2] + 0.158_808).abs() < 1e-5);
        let mut s = [1.0f32, 2.0, f32::NEG_INFINITY];
        softmax(&mut s);
        assert!((s[0] + s[1] - 1.0).abs() < 1e-6 && s[2] == 0.0 && s[1] > s[0]);
    }
}
