//! Checkpoint tensors by name, converted as they arrive (from safetensors files read here, or
//! from raw bytes handed over by the Python layer, e.g. dequantized GGUF tensors).
//!
//! Matmul weights (which names are matmul weights is the architecture's call, see
//! [`LoadPlan`]) are converted straight to the load precision — FP32, BF16 or INT8 — a block
//! of rows at a time from the source bytes, and oriented `[out, in]`; everything else
//! (norms, biases, learned positions) becomes FP32. So loading an INT8 model never holds
//! more than a few MiB of FP32 weights, and the file pages behind each converted block are
//! dropped from the resident set as the conversion goes.

use std::collections::HashMap;
use std::path::Path;

use super::linear::{Precision, WeightData};
use super::Arch;
use crate::error::{Error, Result};
use crate::kernels::quant::{f32_to_bf16, f32_to_f16, GgufBlock, GgufWeight, QuantizedI4, QuantizedI8};
use crate::memory;
use crate::safetensors_file::{dtype_of, SafetensorsFile};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    F64,
    /// Only for the weights of an INT8 checkpoint saved by ferrolm.
    I8,
    /// Only for the packed nibbles of an INT4 checkpoint saved by ferrolm.
    U8,
}

impl DType {
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_uppercase().as_str() {
            "F32" | "FLOAT32" => Ok(DType::F32),
            "F16" | "FLOAT16" => Ok(DType::F16),
            "BF16" | "BFLOAT16" => Ok(DType::BF16),
            "F64" | "FLOAT64" => Ok(DType::F64),
            "I8" | "INT8" => Ok(DType::I8),
            "U8" | "UINT8" => Ok(DType::U8),
            other => Err(Error::Tensor(format!("unsupported tensor dtype '{other}' (supported: F32, F16, BF16, F64, I8, U8)"))),
        }
    }

    /// The safetensors name.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::F64 => "F64",
            DType::I8 => "I8",
            DType::U8 => "U8",
        }
    }

    pub fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 => 1,
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::F64 => 8,
        }
    }
}

pub use crate::kernels::quant::f16_to_f32;

/// bfloat16 → f32: a 16-bit shift.
pub fn bf16_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Converts little-endian bytes of a float `dtype` to f32 values, appending to `out`.
fn extend_f32(dtype: DType, bytes: &[u8], out: &mut Vec<f32>) {
    match dtype {
        DType::F32 if cfg!(target_endian = "little") => {
            // little-endian f32 is the native layout: one copy
            let n = bytes.len() / 4;
            out.reserve(n);
            let len = out.len();
            // SAFETY: `reserve` made room for n more values; the bytes are copied as they are
            // (any bit pattern is a valid f32) and only then counted in the length.
            unsafe {
                std::ptr::copy_nonoverlapping(bytes.as_ptr(), out.as_mut_ptr().add(len).cast::<u8>(), n * 4);
                out.set_len(len + n);
            }
        }
        DType::F32 => out.extend(bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        DType::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))),
        DType::BF16 => out.extend(bytes.chunks_exact(2).map(|c| bf16_to_f32(u16::from_le_bytes([c[0], c[1]])))),
        DType::F64 => out.extend(
            bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32),
        ),
        DType::I8 => out.extend(bytes.iter().map(|&b| f32::from(b as i8))),
        DType::U8 => out.extend(bytes.iter().map(|&b| f32::from(b))),
    }
}

/// Converts little-endian bytes of `dtype` to f32 values.
pub fn to_f32(dtype: DType, bytes: &[u8]) -> Result<Vec<f32>> {
    if bytes.len() % dtype.size() != 0 {
        return Err(Error::Tensor(format!("{} bytes is not a whole number of {dtype:?} values", bytes.len())));
    }
    let mut out = memory::with_capacity(bytes.len() / dtype.size(), "a tensor's values")?;
    extend_f32(dtype, bytes, &mut out);
    Ok(out)
}

/// How a matmul weight is laid out in the checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatrixLayout {
    /// nn.Linear / embedding: `[out, in]`.
    OutIn,
    /// GPT-2's Conv1D: `[in, out]`, transposed on arrival.
    InOut,
}

/// What a load makes of each tensor: the precision of matmul weights, the INT8 group size,
/// and the architecture, which says which names are matmul weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadPlan {
    pub arch: Arch,
    pub precision: Precision,
    pub group: usize,
}

impl LoadPlan {
    pub fn new(arch: Arch, precision: Precision, group: usize) -> Result<Self> {
        if group == 0 || group % 32 != 0 || group > 16384 {
            return Err(Error::InvalidArgument(format!("int8 group size must be a multiple of 32 up to 16384, got {group}")));
        }
        Ok(Self { arch, precision, group })
    }

    /// FP32 everywhere.
    #[cfg(test)]
    pub fn fp32(arch: Arch) -> Self {
        Self { arch, precision: Precision::F32, group: crate::kernels::quant::GROUP }
    }

    /// The layout of `name` when it is a matmul weight (linear layers, embeddings, lm_head).
    pub fn matrix_layout(&self, name: &str) -> Option<MatrixLayout> {
        super::names::table(self.arch).matrix_layout(name)
    }
}

#[derive(Debug)]
enum TensorData {
    F32(Vec<f32>),
    /// A matmul weight in the load precision, oriented `[out, in]`.
    Matrix(WeightData),
    /// The int8 values of a saved INT8 checkpoint (`[out, in]`), paired at `take_matrix`
    /// with their `{name}_scale` tensor.
    SavedI8(Vec<i8>),
    /// The packed nibbles of a saved INT4 checkpoint (`[out, ceil(in/32)·16]`), paired at
    /// `take_matrix` with their `{name}_scale` and `{name}_min` tensors.
    SavedI4(Vec<u8>),
}

#[derive(Debug)]
struct Tensor {
    /// As stored in the checkpoint.
    shape: Vec<usize>,
    data: TensorData,
}

/// Rows converted per block: bounds the FP32 scratch of a conversion and how many file
/// pages stay resident before they are released.
const BLOCK_BYTES: usize = 4 << 20;

/// Tensors by checkpoint name. The model builder `take`s them out, so none is held twice.
#[derive(Debug)]
pub struct TensorStore {
    plan: LoadPlan,
    tensors: HashMap<String, Tensor>,
}

/// Where the values of a tensor being converted come from.
#[derive(Clone, Copy)]
enum Src<'a> {
    Bytes(DType, &'a [u8]),
    F32(&'a [f32]),
}

impl Src<'_> {
    fn value_size(&self) -> usize {
        match self {
            Src::Bytes(dtype, _) => dtype.size(),
            Src::F32(_) => 4,
        }
    }

    /// Appends values `[start, end)` as f32 to `out`; returns the source bytes they came from
    /// (empty for an in-memory source).
    fn extend(&self, start: usize, end: usize, out: &mut Vec<f32>) -> &[u8] {
        match *self {
            Src::Bytes(dtype, bytes) => {
                let block = &bytes[start * dtype.size()..end * dtype.size()];
                extend_f32(dtype, block, out);
                block
            }
            Src::F32(v) => {
                out.extend_from_slice(&v[start..end]);
                &[]
            }
        }
    }
}

/// Converts a `[rows, cols]` tensor to `precision`, a block of rows at a time; `done` gets
/// each source block once it is converted (to release its file pages).
fn convert_rows(src: Src<'_>, rows: usize, cols: usize, plan: &LoadPlan, done: &mut dyn FnMut(&[u8])) -> Result<WeightData> {
    const WHAT: &str = "a converted weight";
    // (a row wider than usize bytes can only come with 0 rows: the shape was checked against the bytes)
    let block_rows = match cols.checked_mul(src.value_size()) {
        Some(row_bytes) if row_bytes > 0 => (BLOCK_BYTES / row_bytes).max(1),
        _ => rows.max(1),
    };
    let n = rows * cols;
    let mut buf: Vec<f32> = Vec::new();
    let mut blocks = (0..rows).step_by(block_rows).map(|r0| (r0, (r0 + block_rows).min(rows)));
    match plan.precision {
        Precision::F32 => {
            let mut out = memory::with_capacity(n, WHAT)?;
            for (r0, r1) in blocks.by_ref() {
                done(src.extend(r0 * cols, r1 * cols, &mut out));
            }
            Ok(WeightData::F32(out.into()))
        }
        Precision::Bf16 => {
            let mut out = memory::with_capacity(n, WHAT)?;
            for (r0, r1) in blocks.by_ref() {
                if let Src::Bytes(DType::BF16, bytes) = src {
                    // already bfloat16: copied bit for bit
                    let block = &bytes[r0 * cols * 2..r1 * cols * 2];
                    out.extend(block.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])));
                    done(block);
                } else {
                    buf.clear();
                    let block = src.extend(r0 * cols, r1 * cols, &mut buf);
                    out.extend(buf.iter().map(|&v| f32_to_bf16(v)));
                    done(block);
                }
            }
            Ok(WeightData::Bf16(out.into()))
        }
        Precision::Int8 => {
            let ng = cols.div_ceil(plan.group);
            let (mut q, mut scales) = (memory::with_capacity(n, WHAT)?, memory::with_capacity(rows * ng, WHAT)?);
            for (r0, r1) in blocks.by_ref() {
                buf.clear();
                let block = src.extend(r0 * cols, r1 * cols, &mut buf);
                let part = QuantizedI8::quantize_with_group(&buf, r1 - r0, cols, plan.group);
                q.extend_from_slice(&part.q);
                scales.extend_from_slice(&part.scales);
                done(block);
            }
            Ok(WeightData::Int8(QuantizedI8 { rows, cols, group: plan.group, q: q.into(), scales: scales.into() }))
        }
        Precision::Int4 => {
            let ng = cols.div_ceil(crate::kernels::quant::I4_GROUP);
            let what_q = memory::checked_bytes(rows, ng * crate::kernels::quant::I4_GROUP_BYTES, WHAT)?;
            let mut q = memory::with_capacity(what_q, WHAT)?;
            let (mut scales, mut mins) = (memory::with_capacity(rows * ng, WHAT)?, memory::with_capacity(rows * ng, WHAT)?);
            for (r0, r1) in blocks.by_ref() {
                buf.clear();
                let block = src.extend(r0 * cols, r1 * cols, &mut buf);
                let part = QuantizedI4::quantize(&buf, r1 - r0, cols);
                q.extend_from_slice(&part.q);
                scales.extend_from_slice(&part.scales);
                mins.extend_from_slice(&part.mins);
                done(block);
            }
            Ok(WeightData::Int4(QuantizedI4 { rows, cols, q: q.into(), scales: scales.into(), mins: mins.into() }))
        }
    }
}

/// Transposes a row-major [rows, cols] matrix into [cols, rows].
pub(crate) fn transpose<T: Copy + Default>(w: &[T], rows: usize, cols: usize) -> Vec<T> {
    let mut out = vec![T::default(); w.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = w[r * cols + c];
        }
    }
    out
}

impl TensorStore {
    pub fn new(plan: LoadPlan) -> Self {
        Self { plan, tensors: HashMap::new() }
    }

    pub fn plan(&self) -> &LoadPlan {
        &self.plan
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

    fn put(&mut self, name: &str, shape: &[usize], data: TensorData) -> Result<()> {
        if self.tensors.contains_key(name) {
            return Err(Error::Tensor(format!("tensor '{name}' appears twice in the checkpoint")));
        }
        self.tensors.insert(name.to_string(), Tensor { shape: shape.to_vec(), data });
        Ok(())
    }

    /// Adds one tensor from raw little-endian bytes.
    pub fn insert_bytes(&mut self, name: &str, dtype: DType, shape: &[usize], bytes: &[u8]) -> Result<()> {
        self.insert_src(name, shape, Src::Bytes(dtype, bytes), &mut |_| {})
    }

    /// Adds one tensor of f32 values.
    pub fn insert(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>) -> Result<()> {
        self.insert_src(name, &shape, Src::F32(&data), &mut |_| {})
    }

    fn insert_src(&mut self, name: &str, shape: &[usize], src: Src<'_>, done: &mut dyn FnMut(&[u8])) -> Result<()> {
        let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        let have = match src {
            Src::Bytes(dtype, bytes) => {
                if numel.and_then(|n| n.checked_mul(dtype.size())) != Some(bytes.len()) {
                    return Err(Error::Tensor(format!(
                        "tensor '{name}': shape {shape:?} of {dtype:?} needs {} bytes, got {}",
                        numel.map_or("too many".to_string(), |n| (n * dtype.size()).to_string()),
                        bytes.len()
                    )));
                }
                bytes.len() / dtype.size()
            }
            Src::F32(v) => v.len(),
        };
        if numel != Some(have) {
            return Err(Error::Tensor(format!("tensor '{name}': shape {shape:?} does not match {have} values")));
        }
        if self.tensors.contains_key(name) {
            return Err(Error::Tensor(format!("tensor '{name}' appears twice in the checkpoint")));
        }
        let layout = if shape.len() == 2 { self.plan.matrix_layout(name) } else { None };
        if layout.is_some() && shape.contains(&0) {
            return Err(Error::Tensor(format!("matmul weight '{name}' has shape {shape:?}; both dimensions must be positive")));
        }
        let data = match (src, layout) {
            (Src::Bytes(dtype @ (DType::I8 | DType::U8), bytes), layout) => {
                let what = if dtype == DType::I8 { "int8" } else { "packed int4 (U8)" };
                if layout.is_none() {
                    return Err(Error::Tensor(format!("tensor '{name}' is {what}, but only matmul weights may be")));
                }
                // an INT4 checkpoint may hold INT8 matrices (those a GGUF file had in Q8_0)
                let ok = match dtype {
                    DType::I8 => matches!(self.plan.precision, Precision::Int8 | Precision::Int4),
                    _ => self.plan.precision == Precision::Int4,
                };
                if !ok {
                    let saved = if dtype == DType::I8 { "int8" } else { "int4" };
                    return Err(Error::InvalidArgument(format!(
                        "this checkpoint stores {} weights ('{name}'); load it with precision='{saved}'",
                        saved.to_uppercase()
                    )));
                }
                done(bytes);
                if dtype == DType::I8 {
                    TensorData::SavedI8(bytes.iter().map(|&b| b as i8).collect())
                } else {
                    TensorData::SavedI4(bytes.to_vec())
                }
            }
            (src, Some(MatrixLayout::OutIn)) => TensorData::Matrix(convert_rows(src, shape[0], shape[1], &self.plan, done)?),
            (src, Some(MatrixLayout::InOut)) => {
                let mut w = memory::with_capacity(have, "a Conv1D weight")?;
                done(src.extend(0, have, &mut w));
                let t = transpose(&w, shape[0], shape[1]);
                drop(w);
                TensorData::Matrix(convert_rows(Src::F32(&t), shape[1], shape[0], &self.plan, &mut |_| {})?)
            }
            (src, None) => {
                let mut v = memory::with_capacity(have, "a tensor's values")?;
                done(src.extend(0, have, &mut v));
                TensorData::F32(v)
            }
        };
        self.put(name, shape, data)
    }

    /// Adds a GGUF tensor of shape `[rows, cols]` stored as `kind` blocks (32 values along a
    /// row each). A matmul weight whose blocks a format of the plan holds exactly keeps its
    /// values and scales (no dequantize/requantize round trip): Q8_0 under an INT8 plan in
    /// groups of 32, and under an INT4 plan (INT8 is the nearest precision holding 8-bit values
    /// exactly); Q4_0 / Q4_1 under an INT4 plan. Otherwise (or if a Q8_0 block holds -128,
    /// outside INT8's symmetric range) it is dequantized and converted — a Q8_0 weight under an
    /// INT4 plan to INT8.
    pub fn insert_blocks(&mut self, name: &str, kind: GgufBlock, shape: &[usize], bytes: &[u8]) -> Result<()> {
        let [rows, cols] = *shape else {
            return Err(Error::Tensor(format!("{kind:?} tensor '{name}' must be 2-D, got shape {shape:?}")));
        };
        let w = GgufWeight::from_blocks(kind, rows, cols, bytes).map_err(|e| match e {
            Error::Tensor(msg) => Error::Tensor(format!("tensor '{name}': {msg}")),
            e => e,
        })?;
        if self.tensors.contains_key(name) {
            return Err(Error::Tensor(format!("tensor '{name}' appears twice in the checkpoint")));
        }
        let matrix = self.plan.matrix_layout(name) == Some(MatrixLayout::OutIn);
        let precision = self.plan.precision;
        let (values, keep_as) = match w {
            GgufWeight::I8(q) => {
                let wants_int8 = (precision == Precision::Int8 && self.plan.group == 32) || precision == Precision::Int4;
                if matrix && wants_int8 {
                    let QuantizedI8 { rows, cols, group, q, scales } = q;
                    match QuantizedI8::from_parts(rows, cols, group, q, scales) {
                        Ok(w) => return self.put(name, shape, TensorData::Matrix(WeightData::Int8(w))),
                        // a -128: requantized from the values below
                        Err(_) => (GgufWeight::from_blocks(kind, rows, cols, bytes)?.dequantize(), Some(Precision::Int8)),
                    }
                } else {
                    (GgufWeight::I8(q).dequantize(), None)
                }
            }
            GgufWeight::I4(q) if matrix && precision == Precision::Int4 => {
                return self.put(name, shape, TensorData::Matrix(WeightData::Int4(q)));
            }
            w => (w.dequantize(), None),
        };
        self.insert_as(name, shape.to_vec(), values, keep_as)
    }

    /// Adds one tensor of f32 values; a matmul weight is converted to `precision` instead of
    /// the plan's when given (e.g. a GGUF Q6_K tensor under an INT4 plan: INT8 holds its 6-bit
    /// values far better).
    pub fn insert_as(&mut self, name: &str, shape: Vec<usize>, data: Vec<f32>, precision: Option<Precision>) -> Result<()> {
        self.with_precision(precision, |s| s.insert(name, shape, data))
    }

    /// Like [`insert_bytes`](Self::insert_bytes), with the precision override of [`insert_as`](Self::insert_as).
    pub fn insert_bytes_as(&mut self, name: &str, dtype: DType, shape: &[usize], bytes: &[u8], precision: Option<Precision>) -> Result<()> {
        self.with_precision(precision, |s| s.insert_bytes(name, dtype, shape, bytes))
    }

    fn with_precision(&mut self, precision: Option<Precision>, f: impl FnOnce(&mut Self) -> Result<()>) -> Result<()> {
        let plan = self.plan;
        if let Some(p) = precision {
            self.plan.precision = p;
        }
        let r = f(self);
        self.plan = plan;
        r
    }

    /// Reads every tensor of a safetensors file (memory-mapped; converted block by block).
    pub fn add_safetensors(&mut self, path: &Path) -> Result<()> {
        let file = SafetensorsFile::open(path)?;
        for entry in file.tensors() {
            let dtype = dtype_of(entry.dtype).ok_or_else(|| {
                Error::Tensor(format!("tensor '{}' in {} has unsupported dtype {}", entry.name, path.display(), entry.dtype))
            })?;
            let mmap = file.mmap();
            self.insert_src(&entry.name, &entry.shape, Src::Bytes(dtype, file.bytes(entry)), &mut |block| release_pages(mmap, block))?;
        }
        crate::memory::release_freed_memory();
        Ok(())
    }

    fn remove(&mut self, name: &str, shape: &[usize]) -> Result<TensorData> {
        let t = self.tensors.get(name).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        if t.shape != shape {
            return Err(Error::Tensor(format!("tensor '{name}' has shape {:?}, expected {shape:?}", t.shape)));
        }
        self.tensors.remove(name).map(|t| t.data).ok_or_else(|| Error::MissingTensor(name.to_string()))
    }

    /// Removes and returns FP32 tensor `name`, checking its shape.
    pub fn take(&mut self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        match self.remove(name, shape)? {
            TensorData::F32(v) => Ok(v),
            _ => Err(Error::Tensor(format!("tensor '{name}' is stored as a matmul weight, expected plain values"))),
        }
    }

    /// Like `take`, but a missing tensor is `None`.
    pub fn take_opt(&mut self, name: &str, shape: &[usize]) -> Result<Option<Vec<f32>>> {
        if self.contains(name) {
            self.take(name, shape).map(Some)
        } else {
            Ok(None)
        }
    }

    /// Removes matmul weight `name` as `[out, inp]` in the load precision, checking its
    /// checkpoint shape (`[inp, out]` for a Conv1D).
    pub fn take_matrix(&mut self, name: &str, out: usize, inp: usize) -> Result<WeightData> {
        let layout = self.plan.matrix_layout(name).unwrap_or(MatrixLayout::OutIn);
        let saved = match self.tensors.get(name) {
            Some(Tensor { data: TensorData::SavedI8(_), .. }) => Some(Precision::Int8),
            Some(Tensor { data: TensorData::SavedI4(_), .. }) => Some(Precision::Int4),
            _ => None,
        };
        let ng4 = inp.div_ceil(crate::kernels::quant::I4_GROUP);
        // a saved INT8 / INT4 checkpoint stores every matmul weight as [out, in] (INT4: packed)
        let shape = match saved {
            Some(Precision::Int4) => [out, ng4 * crate::kernels::quant::I4_GROUP_BYTES],
            None if layout == MatrixLayout::InOut => [inp, out],
            _ => [out, inp],
        };
        match self.remove(name, &shape)? {
            TensorData::Matrix(w) => Ok(w),
            TensorData::F32(v) => convert_rows(Src::F32(&v), out, inp, &self.plan, &mut |_| {}),
            TensorData::SavedI8(q) => {
                let group = self.plan.group;
                let scale_name = format!("{name}_scale");
                let ng = inp.div_ceil(group);
                let scales = self.take(&scale_name, &[out, ng]).map_err(|e| match e {
                    Error::MissingTensor(_) => Error::Tensor(format!("int8 weight '{name}' has no scales '{scale_name}'")),
                    Error::Tensor(msg) => Error::Tensor(format!("{msg} (int8 groups of {group})")),
                    e => e,
                })?;
                // saved as F16 (and widened exactly on arrival): back to the same f16 bits. A file
                // saved with F32 scales (before they were f16) has them rounded to nearest f16.
                let scales: Vec<u16> = scales.into_iter().map(f32_to_f16).collect();
                Ok(WeightData::Int8(QuantizedI8::from_parts(out, inp, group, q, scales)?))
            }
            TensorData::SavedI4(q) => {
                let mut side = |suffix: &str| {
                    let part = format!("{name}_{suffix}");
                    self.take(&part, &[out, ng4]).map_err(|e| match e {
                        Error::MissingTensor(_) => Error::Tensor(format!("int4 weight '{name}' has no '{part}'")),
                        Error::Tensor(msg) => Error::Tensor(format!("{msg} (int4 groups of 32)")),
                        e => e,
                    })
                };
                // saved as F16 and widened exactly on arrival: back to the same f16 bits
                let half = |v: Vec<f32>| v.into_iter().map(f32_to_f16).collect::<Vec<u16>>();
                let (scales, mins) = (half(side("scale")?), half(side("min")?));
                Ok(WeightData::Int4(QuantizedI4::from_parts(out, inp, q, scales, mins)?))
            }
        }
    }

    /// Like `take_matrix`, but a missing tensor is `None`.
    pub fn take_matrix_opt(&mut self, name: &str, out: usize, inp: usize) -> Result<Option<WeightData>> {
        if self.contains(name) {
            self.take_matrix(name, out, inp).map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Drops the file pages behind `data` (already converted) from this process's resident set, so
/// loading holds at most one block's file pages besides the converted weights. Only a hint:
/// the mapping is read-only and pages would be re-read from the file if touched again.
fn release_pages(mmap: &memmap2::Mmap, data: &[u8]) {
    #[cfg(unix)]
    if !data.is_empty() {
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
        let mut s = TensorStore::new(LoadPlan::fp32(Arch::Llama));
        let bytes: Vec<u8> = [1.0f32, 2.0, 3.0, 4.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        s.insert_bytes("a", DType::F32, &[2, 2], &bytes).unwrap();
        assert!(matches!(s.insert_bytes("b", DType::F32, &[3], &bytes), Err(Error::Tensor(_))));
        assert!(matches!(s.insert_bytes("a", DType::F32, &[4], &bytes), Err(Error::Tensor(_))));
        assert!(matches!(s.take("a", &[4]), Err(Error::Tensor(_))));
        assert!(matches!(s.take("zzz", &[4]), Err(Error::MissingTensor(_))));
    }

    fn f32_bytes(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    fn ramp(n: usize) -> Vec<f32> {
        (0..n).map(|i| ((i * 29 % 97) as f32 - 48.0) * 0.013).collect()
    }

    fn plan(arch: Arch, precision: Precision) -> LoadPlan {
        LoadPlan::new(arch, precision, 32).unwrap()
    }

    #[test]
    fn matrices_convert_on_arrival_in_blocks_like_whole_tensors() {
        // 3000 rows of 700 f32 span several 4 MiB blocks
        let (rows, cols) = (3000, 700);
        let w = ramp(rows * cols);
        let name = "model.layers.0.mlp.down_proj.weight";
        let mut s = TensorStore::new(plan(Arch::Llama, Precision::Int8));
        s.insert_bytes(name, DType::F32, &[rows, cols], &f32_bytes(&w)).unwrap();
        s.insert_bytes("model.norm.weight", DType::F32, &[cols], &f32_bytes(&w[..cols])).unwrap();
        let want = QuantizedI8::quantize_with_group(&w, rows, cols, 32);
        assert_eq!(s.take_matrix(name, rows, cols).unwrap(), WeightData::Int8(want));
        assert_eq!(s.take("model.norm.weight", &[cols]).unwrap(), w[..cols]);

        let mut s = TensorStore::new(plan(Arch::Llama, Precision::Bf16));
        s.insert_bytes(name, DType::F32, &[rows, cols], &f32_bytes(&w)).unwrap();
        let bf: Vec<u16> = w.iter().map(|&v| f32_to_bf16(v)).collect();
        assert_eq!(s.take_matrix(name, rows, cols).unwrap(), WeightData::Bf16(bf.clone().into()));
        // BF16 source bytes are copied bit for bit
        let raw: Vec<u8> = bf.iter().flat_map(|b| b.to_le_bytes()).collect();
        s.insert_bytes(name, DType::BF16, &[rows, cols], &raw).unwrap();
        assert_eq!(s.take_matrix(name, rows, cols).unwrap(), WeightData::Bf16(bf.into()));
    }

    #[test]
    fn conv1d_weights_are_transposed_before_conversion() {
        let (inp, out) = (64, 96);
        let w = ramp(inp * out); // [in, out]
        let mut s = TensorStore::new(plan(Arch::Gpt2, Precision::Int8));
        s.insert("h.0.attn.c_attn.weight", vec![inp, out], w.clone()).unwrap();
        s.insert("wpe.weight", vec![4, 16], ramp(64)).unwrap();
        assert!(matches!(s.take_matrix("h.0.attn.c_attn.weight", inp, out), Err(Error::Tensor(_))));
        let t = transpose(&w, inp, out);
        assert_eq!(s.take_matrix("h.0.attn.c_attn.weight", out, inp).unwrap(), WeightData::Int8(QuantizedI8::quantize_with_group(&t, out, inp, 32)));
        // learned positions are not a matmul weight: they stay FP32
        assert_eq!(s.take("wpe.weight", &[4, 16]).unwrap(), ramp(64));
    }

    fn q8_0_blocks(q: &[i8], scales: &[u16]) -> Vec<u8> {
        q.chunks(32).zip(scales).flat_map(|(qb, s)| s.to_le_bytes().into_iter().chain(qb.iter().map(|&v| v as u8))).collect()
    }

    #[test]
    fn q8_0_becomes_int8_exactly_or_is_dequantized() {
        let (rows, cols) = (3, 64);
        let q: Vec<i8> = (0..rows * cols).map(|i| ((i * 7 % 255) as i32 - 127) as i8).collect();
        let scales: Vec<u16> = vec![0x2000, 0x1c00, 0x3c00, 0x2400, 0x2800, 0x3000]; // f16 scales
        let raw = q8_0_blocks(&q, &scales);
        let name = "model.layers.0.self_attn.q_proj.weight";
        let fs: Vec<f32> = scales.iter().map(|&h| f16_to_f32(h)).collect();
        let mut s = TensorStore::new(plan(Arch::Llama, Precision::Int8));
        s.insert_blocks(name, GgufBlock::Q8_0, &[rows, cols], &raw).unwrap();
        // the blocks as they are: int8 values and f16 scales, bit for bit
        let exact = QuantizedI8::from_parts(rows, cols, 32, q.clone(), scales.clone()).unwrap();
        assert_eq!(s.take_matrix(name, rows, cols).unwrap(), WeightData::Int8(exact.clone()));
        // FP32 plan: the dequantized values
        let mut s = TensorStore::new(plan(Arch::Llama, Precision::F32));
        s.insert_blocks(name, GgufBlock::Q8_0, &[rows, cols], &raw).unwrap();
        assert_eq!(s.take_matrix(name, rows, cols).unwrap(), WeightData::F32(exact.dequantize().into()));
        // -128 is outside the symmetric range: requantized from the dequantized values
        let mut q2 = q.clone();
        q2[5] = -128;
        let mut s = TensorStore::new(plan(Arch::Llama, Precision::Int8));
        s.insert_blocks(name, GgufBlock::Q8_0, &[rows, cols], &q8_0_blocks(&q2, &scales)).unwrap();
        let deq: Vec<f32> = q2.chunks(32).zip(&fs).flat_map(|(b, &sc)| b.iter().map(move |&v| f32::from(v) * sc)).collect();
        assert_eq!(s.take_matrix(name, rows, cols).unwrap(), WeightData::Int8(QuantizedI8::quantize_with_group(&deq, rows, cols, 32)));
        // wrong byte count, and a row length that is not whole blocks
        assert!(matches!(s.insert_blocks(name, GgufBlock::Q8_0, &[rows, cols], &raw[1..]), Err(Error::Tensor(_))));
        assert!(matches!(s.insert_blocks(name, GgufBlock::Q8_0, &[rows * 2, cols / 2 + 1], &raw), Err(Error::Tensor(_))));
    }

    #[test]
    fn saved_int8_pairs_values_with_scales() {
        let (rows, cols) = (4, 70);
        let w = QuantizedI8::quantize_with_group(&ramp(rows * cols), rows, cols, 32);
        let qb: Vec<u8> = w.q.iter().map(|&v| v as u8).collect();
        let name = "lm_head.weight";
        let mut s = TensorStore::new(plan(Arch::Llama, Precision::Int8));
        s.insert_bytes(name, DType::I8, &[rows, cols], &qb).unwrap();
        let half_bytes: Vec<u8> = w.scales.iter().flat_map(|h| h.to_le_bytes()).collect();
        s.insert_bytes("lm_head.weight_scale", DType::F16, &[rows, 3], &half_bytes).unwrap();
        assert_eq!(s.take_matrix(name, rows, cols).unwrap(), WeightData::Int8(w.clone()));
        // F32 scales (files saved before the scales were f16): rounded to the nearest f16
        let wide: Vec<f32> = w.scales.iter().map(|&h| f16_to_f32(h) * (1.0 + 1e-5)).collect();
        s.insert_bytes(name, DType::I8, &[rows, cols], &qb).unwrap();
        s.insert_bytes("lm_head.weight_scale", DType::F32, &[rows, 3], &f32_bytes(&wide)).unwrap();
        assert_eq!(s.take_matrix(name, rows, cols).unwrap(), WeightData::Int8(w.clone()));
        // missing scales
        s.insert_bytes(name, DType::I8, &[rows, cols], &qb).unwrap();
        assert!(matches!(s.take_matrix(name, rows, cols), Err(Error::Tensor(m)) if m.contains("scale")));
        // int8 values under another precision, or for a tensor that is not a matmul weight
        let mut s = TensorStore::new(plan(Arch::Llama, Precision::F32));
        assert!(matches!(s.insert_bytes(name, DType::I8, &[rows, cols], &qb), Err(Error::InvalidArgument(_))));
        let mut s = TensorStore::new(plan(Arch::Llama, Precision::Int8));
        assert!(matches!(s.insert_bytes("model.norm.weight", DType::I8, &[4], &qb[..4]), Err(Error::Tensor(_))));
    }

    #[test]
    fn empty_matmul_weights_are_refused_whatever_their_other_dimension() {
        for precision in [Precision::F32, Precision::Bf16, Precision::Int8] {
            let mut s = TensorStore::new(plan(Arch::Llama, precision));
            for shape in [[0, 1usize << 63], [1usize << 63, 0], [0, 0]] {
                let r = s.insert_bytes("lm_head.weight", DType::F32, &shape, &[]);
                assert!(matches!(r, Err(Error::Tensor(m)) if m.contains("positive")), "{shape:?}");
            }
        }
    }

    #[test]
    fn plan_checks_the_group() {
        for g in [0, 16, 48, 32768] {
            assert!(matches!(LoadPlan::new(Arch::Llama, Precision::Int8, g), Err(Error::InvalidArgument(_))));
        }
        assert!(LoadPlan::new(Arch::Llama, Precision::Int8, 64).is_ok());
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
        let mut s = TensorStore::new(LoadPlan::fp32(Arch::Llama));
        s.add_safetensors(&good).unwrap();
        assert_eq!(s.take("w", &[2]).unwrap(), vec![1.0, -3.0]);
        let bad = dir.join("bad.safetensors");
        std::fs::write(&bad, &file[..file.len() - 1]).unwrap();
        assert!(matches!(TensorStore::new(LoadPlan::fp32(Arch::Llama)).add_safetensors(&bad), Err(Error::Io(_))));
        assert!(matches!(TensorStore::new(LoadPlan::fp32(Arch::Llama)).add_safetensors(&dir.join("none")), Err(Error::Io(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
