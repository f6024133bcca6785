//! Rotary position embeddings in Hugging Face's "rotate_half" layout: dimension i pairs with
//! i + head_dim/2 (checkpoints converted to HF layout; GGUF's interleaved rows are permuted at import).

/// cos/sin tables for every position: [max_pos, head_dim/2] each.
#[derive(Debug, Clone)]
pub struct RopeTable {
    pub half: usize,
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
}

impl RopeTable {
    pub fn new(head_dim: usize, theta: f32, max_pos: usize) -> Self {
        let half = head_dim / 2;
        // inv_freq[i] = theta^(−2i/head_dim)
        let inv_freq: Vec<f64> = (0..half).map(|i| (theta as f64).powf(-((2 * i) as f64) / head_dim as f64)).collect();
        let mut cos = Vec::with_capacity(max_pos * half);
        let mut sin = Vec::with_capacity(max_pos * half);
        for p in 0..max_pos {
            for f in &inv_freq {
                let a = p as f64 * f;
                cos.push(a.cos() as f32);
                sin.push(a.sin() as f32);
            }
        }
        Self { half, cos, sin }
    }

    /// Rotates every head of `x: [n_heads, head_dim]` for position `pos`.
    pub fn apply(&self, x: &mut [f32], pos: usize) {
        let half = self.half;
        let cos = &self.cos[pos * half..(pos + 1) * half];
        let sin = &self.sin[pos * half..(pos + 1) * half];
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
        let t = RopeTable::new(4, 10000.0, 8);
        let mut x = [1.0f32, 0.0, 0.0, 1.0];
        t.apply(&mut x, 0);
        assert_eq!(x, [1.0, 0.0, 0.0, 1.0]);
        t.apply(&mut x, 3);
        // pair (0, 2) rotates by 3 rad; pair (1, 3) by 3·10000^(−1/2) rad
        assert!((x[0] - 3f32.cos()).abs() < 1e-6 && (x[2] - 3f32.sin()).abs() < 1e-6);
        let a = 3.0f32 * 0.01;
        assert!((x[1] + a.sin()).abs() < 1e-6 && (x[3] - a.cos()).abs() < 1e-6);
    }
}
