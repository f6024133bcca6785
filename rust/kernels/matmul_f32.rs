//! FP32 matmul: y[m, n] = x[m, k] · w[n, k]ᵀ, with w in nn.Linear layout (row-major [out, in]).
//! m == 1 is the decode GEMV; m > 1 the prefill GEMM. Threaded over output columns (rows of w).

use crate::kernels::simd;
use crate::threadpool::{chunk, SyncPtr, ThreadPool};

/// y: [m, n] = x: [m, k] · w: [n, k]ᵀ
pub fn matmul_f32(pool: &ThreadPool, x: &[f32], w: &[f32], y: &mut [f32], m: usize, k: usize, n: usize) {
    assert_eq!(x.len(), m * k);
    assert_eq!(w.len(), n * k);
    assert_eq!(y.len(), m * n);
    let yp = SyncPtr(y.as_mut_ptr());
    pool.run(|t, nt| {
        let yp = yp;
        for j in chunk(n, t, nt) {
            let wr = &w[j * k..(j + 1) * k];
            for i in 0..m {
                let v = simd::dot(&x[i * k..(i + 1) * k], wr);
                // SAFETY: each thread writes only its own columns j of y.
                unsafe { *yp.0.add(i * n + j) = v };
            }
        }
    });
}
