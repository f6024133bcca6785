//! ferrolm's core: decoder-only transformer inference (LLaMA family, GPT-2) on CPU, with
//! SIMD/threaded kernels, a preallocated KV cache and seeded sampling. Pure Rust: the Python
//! bindings live in `python/` behind the `python` feature.

pub mod arena;
pub mod bandwidth;
pub mod error;
pub mod kernels;
pub mod kv_cache;
pub mod memory;
pub mod model;
pub mod rng;
pub mod safetensors_file;
pub mod sampling;
pub mod session;
pub mod threadpool;

#[cfg(feature = "python")]
mod python;

#[cfg(test)]
mod fuzz_tests;

pub use error::{Error, Result};
pub use model::{Model, ModelConfig};
pub use sampling::SamplingParams;
pub use session::Session;
