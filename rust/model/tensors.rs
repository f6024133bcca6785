//! Checkpoint tensors by name, converted to FP32 as they arrive (from safetensors files read
//! here, or from raw bytes handed over by the Python layer, e.g. dequantized GGUF tensors).

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
}

impl DType {
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_uppercase().as_str() {
            "F32" | "FLOAT32" => Ok(DType::F32),
            "F16" | "FLOAT16" => Ok(DType::F16),
            "BF16" | "BFLOAT16" => Ok(DType::BF16),
            "F64" | "FLOAT64" => Ok(DType::F64),
            other => Err(Error::Tensor(format!("unsupported tensor dtype '{other}' (supported: F32, F16, BF16, F64)"))),
        }
    }

    pub fn size(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F64 => 8,
        }
    }
}

/// IEEE half → f32, exact.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let frac = (h & 0x3ff) as u32;
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, _) => {
            // subnormal half: frac · 2^-24
            let v = frac as f32 * (1.0 / 16_777_216.0);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, 0) => sign | 0x7f80_0000,
        (0x1f, _) => sign | 0x7fc0_0000 | (frac << 13),
        _ => sign | ((exp + 127 - 15) << 23) | (frac << 13),
    };
    f32::from_bits(bits)
}

/// bfloat16 → f32: a 16-bit shift.
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Converts little-endian bytes of `dtype` to f32 values.
pub fn to_f32(dtype: DType, bytes: &[u8]) -> Result<Vec<f32>> {
    if bytes.len() % dtype.size() != 0 {
        return Err(Error::Tensor(format!("{} bytes is not a whole number of {dtype:?} values", bytes.len())));
    }
    Ok(match dtype {
        DType::F32 => bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        DType::F16 => bytes.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
        DType::BF16 => bytes.chunks_exact(2).map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]]))).collect(),
        DType::F64 => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
    })
}

#[derive(Debug)]
pub struct Tensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Tensors by checkpoint name. The model builder `take`s them out, so none is held twice.
#[derive(Debug, Default)]
pub struct TensorStore {
    tensors: HashMap<String, Tensor>,
}

impl TensorStore {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.tensors.keys().cloned().collect();
        v.sort();
        v
    }

    /// Adds one tensor from raw little-endian bytes.
    pub fn insert_bytes(&mut self, name: &str, dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<()> {
        let numel: usize = shape.iter().product();
        if numel * dtype.size() != bytes.len() {
            return Err(Error::Tensor(format!(
                "tensor '{name}': shape {shape:?} of {dtype:?} needs {} bytes, got {}",
                numel * dtype.size(),
                bytes.len()
            )));
        }
        let data = to_f32(dtype, bytes)?;
        self.insert(name, shape.to_vec(), data)
    }

    pub fn insert(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) -> Result<()> {
        if shape.iter().product::<usize>() != data.len() {
            return Err(Error::Tensor(format!("tensor '{name}': shape {shape:?} does not match {} values", data.len())));
        }
        if self.tensors.contains_key(name) {
            return Err(Error::Tensor(format!("tensor '{name}' appears twice in the checkpoint")));
        }
        self.tensors.insert(name.to_string(), Tensor { shape, data });
        Ok(())
    }

    /// Reads every tensor of a safetensors file (memory-mapped; converted to FP32 one by one).
    pub fn add_safetensors(&mut self, path: &Path) -> Result<()> {
        let shown = path.display();
        let file = File::open(path).map_err(|e| Error::Io(format!("cannot open {shown}: {e}")))?;
        // SAFETY: the file is opened read-only; we only read the mapping while it is alive.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::Io(format!("cannot map {shown}: {e}")))?;
        let st = SafeTensors::deserialize(&mmap)
            .map_err(|e| Error::Io(format!("{shown} is not a valid safetensors file: {e}")))?;
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                Dtype::F32 => DType::F32,
                Dtype::F16 => DType::F16,
                Dtype::BF16 => DType::BF16,
                Dtype::F64 => DType::F64,
                other => {
                    return Err(Error::Tensor(format!(
                        "tensor '{name}' in {shown} has unsupported dtype {other:?}"
                    )))
                }
            };
            self.insert_bytes(&name, dtype, view.shape(), view.data())?;
            release_pages(&mmap, view.data());
        }
        Ok(())
    }

    /// Removes and returns tensor `name`, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        let t = self.tensors.remove(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        if t.shape != shape {
            return Err(Error::Tensor(format!("tensor '{name}' has shape {:?}, expected {shape:?}", t.shape)));
        }
        Ok(t.data)
    }

    /// Like `take`, but a missing tensor is `None`.
    pub fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Vec<f32>>> {
        if self.contains(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Drops the file pages behind `data` (already converted) from this process's resident set, so
/// loading holds at most one tensor's file pages besides the converted weights. Only a hint:
/// the mapping is read-only and pages would be re-read from the file if touched again.
fn release_pages(mmap: &memmap2::Mmap, data: &[u8]) {
    #[cfg(unix)]
    {
        let start = data.as_ptr() as usize - mmap.as_ptr() as usize;
        // SAFETY: DONTNEED on a private read-only file mapping only discards clean pages.
        let _ = unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, data.len()) };
    }
    #[cfg(not(unix))]
    let _ = (mmap, data);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_and_bfloat_conversions_are_exact() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
    }

    #[test]
    fn store_checks_shapes_and_duplicates() {
        let mut s = TensorStore::new();
        let bytes: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        s.insert_bytes("a", DType::F32, &[2, 2], &bytes).unwrap();
        assert!(matches!(s.insert_bytes("b", DType::F32, &[3], &bytes), Err(Error::Tensor(_))));
        assert!(matches!(s.insert_bytes("a", DType::F32, &[4], &bytes), Err(Error::Tensor(_))));
        assert!(matches!(s.take("a", &[4]), Err(Error::Tensor(_))));
        assert!(matches!(s.take("zzz", &[4]), Err(Error::MissingTensor(_))));
    }

    #[test]
    fn reads_safetensors_and_rejects_garbage() {
        let dir = std::env::temp_dir().join(format!("ferrolm-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // header: {"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}
        let header = br#"{"w":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend_from_slice(header);
        file.extend_from_slice(&[0x80, 0x3f, 0x40, 0xc0]);
        let good = dir.join("good.safetensors");
        std::fs::write(&good, &file).unwrap();
        let mut s = TensorStore::new();
        s.add_safetensors(&good).unwrap();
        assert_eq!(s.take("w", &[2]).unwrap(), vec![1.0, -3.0]);
        let bad = dir.join("bad.safetensors");
        std::fs::write(&bad, &file[..file.len() - 1]).unwrap();
        assert!(matches!(TensorStore::new().add_safetensors(&bad), Err(Error::Io(_))));
        assert!(matches!(TensorStore::new().add_safetensors(&dir.join("none")), Err(Error::Io(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
