//! Compute kernels, one file per job.
pub mod activations;
pub mod attention;
pub(crate) mod matmul;
#[cfg(target_arch = "x86_64")]
pub(crate) mod matmul_amx;
pub mod matmul_bf16;
#[cfg(target_arch = "x86_64")]
pub(crate) mod matmul_bf16_dot;
pub mod matmul_f32;
pub mod matmul_int4;
#[cfg(target_arch = "x86_64")]
pub(crate) mod matmul_int4_gemv;
pub mod matmul_int8;
pub mod matmul_int8_tiles;
pub(crate) mod matmul_parts;
pub(crate) mod matmul_sources;
pub mod norms;
pub mod quant;
pub mod rope;
#[cfg(target_arch = "x86_64")]
pub mod attention_tiles;
pub mod simd;
#[cfg(test)]
pub(crate) mod test_rng;

/// The empty cases of `y: [m, n] = x: [m, k] · wᵀ`: true when nothing is left to compute (no
/// output, or k = 0 and y zeroed). Every matmul entry point checks it before its kernels.
pub(crate) fn empty_product(y: &mut [f32], m: usize, n: usize, k: usize) -> bool {
    if m == 0 || n == 0 {
        return true;
    }
    if k == 0 {
        y.fill(0.0);
        return true;
    }
    false
}

/// How a matmul computes the rows of its output. Each path computes every row of y the same
/// way whatever the number of rows, their order or the threads: a row's result depends only
/// on its own x, the weights and the path (tested per precision and SIMD level). So a token's
/// activations are the same alone or in a batch, in any chunk of a prompt, as long as the
/// path is the same: batched decoding and prefix reuse rely on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RowPath {
    /// Memory-bound: each row of w streams once against all rows of x held in cache
    /// (decode, short prompt chunks).
    Gemv,
    /// Compute-bound: packed, register-tiled GEMM (prefill).
    Gemm,
}

/// Name of the SIMD instruction set the kernels dispatch to on this CPU.
pub fn simd_name() -> String {
    simd::detected().name().to_string()
}
