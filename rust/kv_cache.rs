//! A preallocated KV cache, written by index: k[layer]: [max_seq, kv_dim], likewise v.
//! Allocated zeroed up front, so pages are committed by the OS only as positions fill. The
//! allocation is checked and fallible: a cache that cannot fit is an error, not an abort.

use crate::error::Result;
use crate::memory;

pub struct KvCache {
    pub max_seq: usize,
    pub kv_dim: usize,
    /// k[layer]: [max_seq, kv_dim]
    pub k: Vec<Vec<f32>>,
    /// v[layer]: [max_seq, kv_dim]
    pub v: Vec<Vec<f32>>,
}

impl KvCache {
    pub fn new(n_layers: usize, max_seq: usize, kv_dim: usize) -> Result<Self> {
        let total = Self::bytes_for(n_layers, max_seq, kv_dim);
        let what = format!(
            "a KV cache of {max_seq} positions (2 · {n_layers} layers · {max_seq} positions · {kv_dim} kv values · 4 bytes)"
        );
        memory::check_fits(total.unwrap_or(usize::MAX), &what)?;
        let rows = memory::checked_bytes(max_seq, kv_dim, &what)?;
        let mut k = memory::with_capacity(n_layers, &what)?;
        let mut v = memory::with_capacity(n_layers, &what)?;
        for _ in 0..n_layers {
            k.push(memory::zeroed(rows, &what)?);
            v.push(memory::zeroed(rows, &what)?);
        }
        Ok(Self { max_seq, kv_dim, k, v })
    }

    /// Bytes of a cache of `max_seq` positions (None when the product overflows).
    pub fn bytes_for(n_layers: usize, max_seq: usize, kv_dim: usize) -> Option<usize> {
        [n_layers, max_seq, kv_dim, 4].iter().try_fold(2usize, |a, &b| a.checked_mul(b))
    }

    /// Stores k_row, v_row: [kv_dim] at `pos` of `layer`.
    pub fn write(&mut self, layer: usize, pos: usize, k_row: &[f32], v_row: &[f32]) {
        let at = pos * self.kv_dim;
        self.k[layer][at..at + self.kv_dim].copy_from_slice(k_row);
        self.v[layer][at..at + self.kv_dim].copy_from_slice(v_row);
    }

    /// Bytes held by the cache at full length.
    pub fn bytes(&self) -> usize {
        Self::bytes_for(self.k.len(), self.max_seq, self.kv_dim).unwrap_or(usize::MAX)
    }
}
