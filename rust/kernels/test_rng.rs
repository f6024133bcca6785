//! Helpers of the kernel tests: a tiny deterministic generator (xorshift64*, values in [-1, 1))
//! and the timer of the hand-run throughput benchmarks.

pub(crate) struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        (v as f32 / (1u64 << 23) as f32) - 1.0
    }

    pub fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.next()).collect()
    }
}

/// Best (shortest) seconds per call of `f` over `reps` timed batches of `iters` calls (after one
/// untimed warm-up call); `f` gets the call's index.
pub(crate) fn best_time(reps: usize, iters: usize, mut f: impl FnMut(usize)) -> f64 {
    f(0);
    (0..reps)
        .map(|_| {
            let t = std::time::Instant::now();
            for it in 0..iters {
                f(it);
            }
            t.elapsed().as_secs_f64() / iters as f64
        })
        .fold(f64::INFINITY, f64::min)
}
