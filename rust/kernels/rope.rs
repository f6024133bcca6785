//! Rotary position embeddings in Hugging Face's "rotate_half" layout: dimension i pairs with
//! i + head_dim/2 (checkpoints converted to HF layout; GGUF's interleaved rows are permuted at import).
//!
//! The model keeps only the inverse frequencies; cos/sin are computed for the positions of each
//! forward chunk (once per chunk, shared by every layer), in f64 and rounded to f32 — the same
//! values a table over every position would hold, without a [max_positions, head_dim/2] table
//! (64 MiB for a 131072-position context at head_dim 128).

use crate::kernels::activations::vectorized;

/// RoPE of one model: inv_freq[i] = theta^(−2i/head_dim).
#[derive(Debug, Clone)]
pub struct Rope {
    pub half: usize,
    inv_freq: Vec<f64>,
}

/// cos/sin of a run of positions: [n_positions, head_dim/2] each.
#[derive(Debug, Default)]
pub struct RopeAngles {
    pos0: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    pub fn new(head_dim: usize, theta: f32) -> Self {
        let half = head_dim / 2;
        let inv_freq = (0..half).map(|i| (theta as f64).powf(-((2 * i) as f64) / head_dim as f64)).collect();
        Self { half, inv_freq }
    }

    /// inv_freq: [head_dim/2] (a device backend computes the same angles from it).
    pub fn inv_freq(&self) -> &[f64] {
        &self.inv_freq
    }

    /// Fills `angles` for positions `pos0..pos0 + n`.
    pub fn angles(&self, pos0: usize, n: usize, angles: &mut RopeAngles) {
        angles.pos0 = pos0;
        angles.cos.clear();
        angles.sin.clear();
        for p in pos0..pos0 + n {
            for f in &self.inv_freq {
                let a = p as f64 * f;
                angles.cos.push(a.cos() as f32);
                angles.sin.push(a.sin() as f32);
            }
        }
    }

    /// Rotates every head of `x: [n_heads, head_dim]` for position `pos` (inside `angles`).
    pub fn apply(&self, angles: &RopeAngles, x: &mut [f32], pos: usize) {
        let half = self.half;
        let at = (pos - angles.pos0) * half;
        rotate_heads(x, &angles.cos[at..at + half], &angles.sin[at..at + half]);
    }
}

vectorized! {
    /// Each head of x (2·cos.len() values): (a, b) → (a·cos − b·sin, b·cos + a·sin) per pair.
    pub fn rotate_heads(x: &mut [f32], cos: &[f32], sin: &[f32]) {
        let half = cos.len();
        for head in x.chunks_exact_mut(2 * half) {
            let (a, b) = head.split_at_mut(half);
            for i in 0..half {
                let (x1, x2) = (a[i], b[i]);
                a[i] = x1 * cos[i] - x2 * sin[i];
                b[i] = x2 * cos[i] + x1 * sin[i];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rotates_pairs_and_keeps_norm() {
        let t = Rope::new(4, 10000.0);
        let mut angles = RopeAngles::default();
        t.angles(0, 8, &mut angles);
        let mut x = [1.0f32, 0.0, 0.0, 1.0];
        t.apply(&angles, &mut x, 0);
        assert_eq!(x, [1.0, 0.0, 0.0, 1.0]);
        t.apply(&angles, &mut x, 3);
        // pair (0, 2) rotates by 3 rad; pair (1, 3) by 3·10000^(−1/2) rad
        assert!((x[0] - 3f32.cos()).abs() < 1e-6 && (x[2] - 3f32.sin()).abs() < 1e-6);
        let a = 3.0f32 * 0.01;
        assert!((x[1] + a.sin()).abs() < 1e-6 && (x[3] - a.cos()).abs() < 1e-6);
    }

    #[test]
    fn angles_of_a_later_run_equal_those_of_a_run_from_zero() {
        let t = Rope::new(64, 500000.0);
        let (mut all, mut part) = (RopeAngles::default(), RopeAngles::default());
        t.angles(0, 300, &mut all);
        t.angles(250, 50, &mut part);
        let mut x: Vec<f32> = (0..128).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut y = x.clone();
        t.apply(&all, &mut x, 271);
        t.apply(&part, &mut y, 271);
        assert_eq!(x, y);
    }
}
