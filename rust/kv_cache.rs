//! A preallocated KV cache, written by index: k[layer]: [max_seq, kv_dim], likewise v, stored
//! as FP32 or as BF16 ([`KvDtype`]). Allocated zeroed up front as pages of its own
//! ([`memory::Pages`]), so the OS commits memory only as positions fill. The allocation is
//! checked and fallible: a cache that cannot fit is an error, not an abort.
//!
//! BF16 rows are rounded to nearest even from the f32 K/V rows as they are written, and
//! widened back (exactly) inside the attention kernels' loads (`simd::RowElem`): half the bytes
//! per position, the same f32 arithmetic on the rounded values.

use crate::error::{Error, Result};
use crate::kernels::quant::f32_to_bf16_slice;
use crate::memory;

/// How a KV cache stores keys and values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum KvDtype {
    /// 4 bytes per value (exact).
    #[default]
    F32,
    /// 2 bytes per value: bf16, round to nearest even from f32.
    Bf16,
}

impl KvDtype {
    /// Every dtype, as `parse` names them.
    pub const ALL: [KvDtype; 2] = [KvDtype::F32, KvDtype::Bf16];

    /// "fp32" or "bf16" (the names the precisions use).
    pub fn parse(name: &str) -> Result<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name).ok_or_else(|| {
            let names: Vec<_> = Self::ALL.iter().map(|d| d.name()).collect();
            Error::InvalidArgument(format!("kv_cache must be one of {}, got '{name}'", names.join(", ")))
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            KvDtype::F32 => "fp32",
            KvDtype::Bf16 => "bf16",
        }
    }

    /// Bytes per cached value.
    pub fn bytes(self) -> usize {
        match self {
            KvDtype::F32 => 4,
            KvDtype::Bf16 => 2,
        }
    }
}

/// Keys and values of every layer in one element type (`f32`, or `u16` holding bf16 bits):
/// k[layer]: [max_seq, kv_dim], v likewise.
pub struct KvRows<E: Copy + Default + memory::ZeroValid> {
    pub k: Vec<memory::Pages<E>>,
    pub v: Vec<memory::Pages<E>>,
}

impl<E: Copy + Default + memory::ZeroValid> KvRows<E> {
    fn new(n_layers: usize, rows: usize, what: &str) -> Result<Self> {
        let mut k = memory::with_capacity(n_layers, what)?;
        let mut v = memory::with_capacity(n_layers, what)?;
        for _ in 0..n_layers {
            k.push(memory::Pages::zeroed(rows, what)?);
            v.push(memory::Pages::zeroed(rows, what)?);
        }
        Ok(Self { k, v })
    }
}

/// The cache's storage: one element type for every layer.
pub enum KvStore {
    F32(KvRows<f32>),
    /// bf16 bits
    Bf16(KvRows<u16>),
}

/// One layer's cached keys and values, borrowed (what attention reads): k, v: [max_seq, kv_dim].
#[derive(Clone, Copy)]
pub enum KvLayer<'a> {
    F32 { k: &'a [f32], v: &'a [f32] },
    /// bf16 bits
    Bf16 { k: &'a [u16], v: &'a [u16] },
}

pub struct KvCache {
    pub max_seq: usize,
    pub kv_dim: usize,
    pub store: KvStore,
}

impl KvCache {
    pub fn new(n_layers: usize, max_seq: usize, kv_dim: usize, dtype: KvDtype) -> Result<Self> {
        let total = Self::bytes_for(n_layers, max_seq, kv_dim, dtype);
        let what = format!(
            "a KV cache of {max_seq} positions (2 · {n_layers} layers · {max_seq} positions · {kv_dim} kv values · {} bytes)",
            dtype.bytes()
        );
        memory::check_fits(total.unwrap_or(usize::MAX), &what)?;
        let rows = memory::checked_bytes(max_seq, kv_dim, &what)?;
        let store = match dtype {
            KvDtype::F32 => KvStore::F32(KvRows::new(n_layers, rows, &what)?),
            KvDtype::Bf16 => KvStore::Bf16(KvRows::new(n_layers, rows, &what)?),
        };
        Ok(Self { max_seq, kv_dim, store })
    }

    /// Bytes of a cache of `max_seq` positions (None when the product overflows).
    pub fn bytes_for(n_layers: usize, max_seq: usize, kv_dim: usize, dtype: KvDtype) -> Option<usize> {
        [n_layers, max_seq, kv_dim, dtype.bytes()].iter().try_fold(2usize, |a, &b| a.checked_mul(b))
    }

    /// Gives the memory of positions `pos..` back to the system (whole pages of each layer's
    /// rows; they read as zeros, and are committed again when written).
    pub fn release_from(&mut self, pos: usize) {
        let at = pos.saturating_mul(self.kv_dim);
        match &mut self.store {
            KvStore::F32(r) => r.k.iter_mut().chain(r.v.iter_mut()).for_each(|b| b.release_from(at)),
            KvStore::Bf16(r) => r.k.iter_mut().chain(r.v.iter_mut()).for_each(|b| b.release_from(at)),
        }
    }

    pub fn dtype(&self) -> KvDtype {
        match self.store {
            KvStore::F32(_) => KvDtype::F32,
            KvStore::Bf16(_) => KvDtype::Bf16,
        }
    }

    pub fn n_layers(&self) -> usize {
        match &self.store {
            KvStore::F32(r) => r.k.len(),
            KvStore::Bf16(r) => r.k.len(),
        }
    }

    /// Stores k_row, v_row: [kv_dim] at `pos` of `layer` (rounded to bf16 in a BF16 cache).
    pub fn write(&mut self, layer: usize, pos: usize, k_row: &[f32], v_row: &[f32]) {
        let (at, n) = (pos * self.kv_dim, self.kv_dim);
        match &mut self.store {
            KvStore::F32(r) => {
                r.k[layer][at..at + n].copy_from_slice(k_row);
                r.v[layer][at..at + n].copy_from_slice(v_row);
            }
            KvStore::Bf16(r) => {
                f32_to_bf16_slice(k_row, &mut r.k[layer][at..at + n]);
                f32_to_bf16_slice(v_row, &mut r.v[layer][at..at + n]);
            }
        }
    }

    /// Layer `layer`'s keys and values.
    pub fn layer(&self, layer: usize) -> KvLayer<'_> {
        match &self.store {
            KvStore::F32(r) => KvLayer::F32 { k: &r.k[layer], v: &r.v[layer] },
            KvStore::Bf16(r) => KvLayer::Bf16 { k: &r.k[layer], v: &r.v[layer] },
        }
    }

    /// Bytes held by the cache at full length.
    pub fn bytes(&self) -> usize {
        Self::bytes_for(self.n_layers(), self.max_seq, self.kv_dim, self.dtype()).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::bf16_to_f32;

    #[test]
    fn dtypes_parse_by_name_and_count_their_bytes() {
        for d in KvDtype::ALL {
            assert_eq!(KvDtype::parse(d.name()), Ok(d));
        }
        assert_eq!(KvDtype::default(), KvDtype::F32);
        for bad in ["f32", "BF16", "", "fp16", "int8"] {
            assert!(matches!(KvDtype::parse(bad), Err(Error::InvalidArgument(_))), "{bad}");
        }
        // 2 (k and v) · 3 layers · 5 positions · 8 values · bytes
        assert_eq!(KvCache::bytes_for(3, 5, 8, KvDtype::F32), Some(960));
        assert_eq!(KvCache::bytes_for(3, 5, 8, KvDtype::Bf16), Some(480));
        assert_eq!(KvCache::bytes_for(usize::MAX / 4, 2, 2, KvDtype::Bf16), None);
        for d in KvDtype::ALL {
            let c = KvCache::new(3, 5, 8, d).unwrap();
            assert_eq!((c.dtype(), c.n_layers(), c.bytes()), (d, 3, 240 * d.bytes()));
        }
    }

    #[test]
    fn a_bf16_cache_holds_the_rounded_rows() {
        let k: Vec<f32> = (0..6).map(|i| 1.0 + i as f32 / 3.0).collect();
        let v: Vec<f32> = (0..6).map(|i| -0.1 * i as f32 - 1e-3).collect();
        let mut c = KvCache::new(2, 4, 6, KvDtype::Bf16).unwrap();
        c.write(1, 2, &k, &v);
        let KvLayer::Bf16 { k: ck, v: cv } = c.layer(1) else { panic!("a bf16 layer") };
        for i in 0..6 {
            assert_eq!(ck[12 + i], crate::kernels::quant::f32_to_bf16(k[i]));
            assert!((bf16_to_f32(ck[12 + i]) - k[i]).abs() <= k[i].abs() / 256.0);
            assert!((bf16_to_f32(cv[12 + i]) - v[i]).abs() <= v[i].abs() / 256.0);
        }
        // other positions and layers untouched
        assert!(ck[..12].iter().chain(&ck[18..]).all(|&b| b == 0));
        let KvLayer::Bf16 { k: k0, .. } = c.layer(0) else { panic!("a bf16 layer") };
        assert!(k0.iter().all(|&b| b == 0));
        // an f32 cache holds the rows as they are
        let mut c = KvCache::new(2, 4, 6, KvDtype::F32).unwrap();
        c.write(0, 3, &k, &v);
        let KvLayer::F32 { k: ck, v: cv } = c.layer(0) else { panic!("an f32 layer") };
        assert_eq!((&ck[18..], &cv[18..]), (&k[..], &v[..]));
    }
}
