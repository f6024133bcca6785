//! Compute kernels, one file per job.
pub mod activations;
pub mod attention;
pub mod matmul_bf16;
pub mod matmul_f32;
pub mod matmul_int4;
pub mod matmul_int8;
pub mod norms;
pub mod quant;
pub mod rope;
pub mod simd;
#[cfg(test)]
pub(crate) mod test_rng;

/// Name of the SIMD instruction set the kernels dispatch to on this CPU.
pub fn simd_name() -> String {
    simd::detected().name().to_string()
}
