//! A preallocated KV cache, written by index: k[layer]: [max_seq, kv_dim], likewise v.
//! Allocated zeroed up front, so pages are committed by the OS only as positions fill.

pub struct KvCache {
    pub max_seq: usize,
    pub kv_dim: usize,
    /// k[layer]: [max_seq, kv_dim]
    pub k: Vec<Vec<f32>>,
    /// v[layer]: [max_seq, kv_dim]
    pub v: Vec<Vec<f32>>,
}

impl KvCache {
    pub fn new(n_layers: usize, max_seq: usize, kv_dim: usize) -> Self {
        Self {
            max_seq,
            kv_dim,
            k: (0..n_layers).map(|_| vec![0.0; max_seq * kv_dim]).collect(),
            v: (0..n_layers).map(|_| vec![0.0; max_seq * kv_dim]).collect(),
        }
    }

    /// Stores k_row, v_row: [kv_dim] at `pos` of `layer`.
    pub fn write(&mut self, layer: usize, pos: usize, k_row: &[f32], v_row: &[f32]) {
        let at = pos * self.kv_dim;
        self.k[layer][at..at + self.kv_dim].copy_from_slice(k_row);
        self.v[layer][at..at + self.kv_dim].copy_from_slice(v_row);
    }

    /// Bytes held by the cache at full length.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.max_seq * self.kv_dim * 4
    }
}
