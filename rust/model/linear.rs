//! A linear layer's weights in nn.Linear layout, `w: [out, in]`, plus an optional bias.
//! This is where each precision's storage and matmul plug in.

use crate::error::{Error, Result};
use crate::kernels::matmul_f32::matmul_f32;
use crate::threadpool::ThreadPool;

#[derive(Debug, Clone)]
pub enum WeightData {
    /// w: [out, in] row-major FP32.
    F32(Vec<f32>),
}

#[derive(Debug, Clone)]
pub struct Linear {
    pub out_features: usize,
    pub in_features: usize,
    pub weight: WeightData,
    /// bias: [out]
    pub bias: Option<Vec<f32>>,
}

impl Linear {
    pub fn f32(w: Vec<f32>, out_features: usize, in_features: usize, bias: Option<Vec<f32>>) -> Result<Self> {
        if w.len() != out_features * in_features {
            return Err(Error::Tensor(format!(
                "weight has {} values, expected {out_features}x{in_features}",
                w.len()
            )));
        }
        if let Some(b) = &bias {
            if b.len() != out_features {
                return Err(Error::Tensor(format!("bias has {} values, expected {out_features}", b.len())));
            }
        }
        Ok(Self { out_features, in_features, weight: WeightData::F32(w), bias })
    }

    /// y: [m, out] = x: [m, in] · wᵀ (+ bias)
    pub fn forward(&self, pool: &ThreadPool, x: &[f32], y: &mut [f32], m: usize) {
        match &self.weight {
            WeightData::F32(w) => matmul_f32(pool, x, w, y, m, self.in_features, self.out_features),
        }
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(self.out_features) {
                for (yi, bi) in row.iter_mut().zip(b) {
                    *yi += bi;
                }
            }
        }
    }

    /// Copies row `i` of w (one embedding vector when the layer is an embedding table) into `out: [in]`.
    pub fn row_into(&self, i: usize, out: &mut [f32]) {
        match &self.weight {
            WeightData::F32(w) => out.copy_from_slice(&w[i * self.in_features..(i + 1) * self.in_features]),
        }
    }

    /// Number of parameters (weights and bias).
    pub fn num_params(&self) -> usize {
        self.out_features * self.in_features + self.bias.as_ref().map_or(0, Vec::len)
    }

    /// Bytes of weight storage read by one full matmul.
    pub fn weight_bytes(&self) -> usize {
        match &self.weight {
            WeightData::F32(w) => w.len() * 4,
        }
    }
}
