//! A linear layer's weights in nn.Linear layout, `w: [out, in]`, in one of the four
//! precisions, plus an optional FP32 bias. Each precision's storage and matmul plug in here.

use std::sync::Arc;

use crate::arena::Buf;
use crate::error::{Error, Result};
use crate::kernels::matmul_bf16::{bf16_path_for, matmul_bf16_path};
use crate::kernels::matmul_f32::{f32_path_for, matmul_f32_path};
use crate::kernels::matmul_int4::matmul_int4_path;
use crate::kernels::matmul_int8::{int8_path_for, matmul_int8_a16_path};
use crate::kernels::matmul_int8_tiles::{matmul_int8_tiles_path, tiles_wanted, QuantizedI8Tiles};
use crate::kernels::quant::{bf16_to_f32, f32_to_bf16, QuantizedI4, QuantizedI8};
use crate::kernels::RowPath;
use crate::threadpool::ThreadPool;

/// The storage precision of matmul weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    F32,
    Bf16,
    Int8,
    Int4,
}

impl Precision {
    pub fn parse(name: &str) -> Result<Self> {
        match name.to_ascii_lowercase().as_str() {
            "fp32" | "f32" | "float32" => Ok(Precision::F32),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            "int8" | "i8" => Ok(Precision::Int8),
            "int4" | "i4" => Ok(Precision::Int4),
            other => Err(Error::InvalidArgument(format!("unknown precision '{other}' (choose fp32, bf16, int8 or int4)"))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "fp32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
            Precision::Int4 => "int4",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum WeightData {
    /// w: [out, in] row-major FP32.
    F32(Buf<f32>),
    /// w: [out, in] row-major bfloat16 bits.
    Bf16(Buf<u16>),
    /// w: [out, in] int8 with per-row, per-group f16 scales.
    Int8(QuantizedI8),
    /// The same in tiles of 16 rows (groups of 32): the layout of the decode GEMV on CPUs
    /// that [`tiles_wanted`] names; [`WeightData::arranged`] picks it.
    Int8Tiles(QuantizedI8Tiles),
    /// w: [out, in] packed int4 with per-row, per-group f16 scales and minimums.
    Int4(QuantizedI4),
}

impl WeightData {
    /// The address ranges of the weight's buffers (values, scales, minimums), for
    /// [`crate::memory::collapse_spans_to_huge_pages`]: a decode step streams every weight
    /// once, and with 4 KiB pages it needs a new page translation every 4 KiB of them.
    pub fn spans(&self) -> Vec<(usize, usize)> {
        use crate::memory::span_of;
        match self {
            WeightData::F32(w) => vec![span_of(w)],
            WeightData::Bf16(w) => vec![span_of(w)],
            WeightData::Int8(q) => vec![span_of(&q.q), span_of(&q.scales)],
            WeightData::Int8Tiles(q) => vec![span_of(&q.q), span_of(&q.scales)],
            WeightData::Int4(q) => vec![span_of(&q.q), span_of(&q.scales), span_of(&q.mins)],
        }
    }

    /// Whether the values lie in an arena ([`crate::arena::place`]).
    pub fn is_placed(&self) -> bool {
        match self {
            WeightData::F32(w) => w.is_placed(),
            WeightData::Bf16(w) => w.is_placed(),
            WeightData::Int8(q) => q.q.is_placed(),
            WeightData::Int8Tiles(q) => q.q.is_placed(),
            WeightData::Int4(q) => q.q.is_placed(),
        }
    }

    /// The weight's buffers, for [`crate::arena::place`].
    pub fn movables(&mut self) -> Vec<&mut dyn crate::arena::Movable> {
        match self {
            WeightData::F32(w) => vec![w],
            WeightData::Bf16(w) => vec![w],
            WeightData::Int8(q) => vec![&mut q.q, &mut q.scales],
            WeightData::Int8Tiles(q) => vec![&mut q.q, &mut q.scales],
            WeightData::Int4(q) => vec![&mut q.q, &mut q.scales, &mut q.mins],
        }
    }

    /// This weight in the layout the running CPU's kernels read fastest: INT8 groups of 32 in
    /// tiles where [`tiles_wanted`] (the same numbers, a faster decode GEMV), the rest as it is.
    pub fn arranged(self) -> WeightData {
        match self {
            // in place: a model's weights are not held twice while they are tiled
            WeightData::Int8(q) if tiles_wanted(crate::kernels::simd::detected()) => {
                QuantizedI8Tiles::from_rows_owned(q).map_or_else(WeightData::Int8, WeightData::Int8Tiles)
            }
            w => w,
        }
    }

    /// The INT8 weights row by row (tiles copied back into rows), if this is INT8.
    pub fn int8_rows(&self) -> Option<std::borrow::Cow<'_, QuantizedI8>> {
        match self {
            WeightData::Int8(q) => Some(std::borrow::Cow::Borrowed(q)),
            WeightData::Int8Tiles(t) => Some(std::borrow::Cow::Owned(t.to_rows())),
            _ => None,
        }
    }

    pub fn precision(&self) -> Precision {
        match self {
            WeightData::F32(_) => Precision::F32,
            WeightData::Bf16(_) => Precision::Bf16,
            WeightData::Int8(_) | WeightData::Int8Tiles(_) => Precision::Int8,
            WeightData::Int4(_) => Precision::Int4,
        }
    }

    fn len(&self) -> usize {
        match self {
            WeightData::F32(w) => w.len(),
            WeightData::Bf16(w) => w.len(),
            WeightData::Int8(q) => q.q.len(),
            WeightData::Int8Tiles(q) => q.rows * q.cols,
            WeightData::Int4(q) => q.rows * q.cols,
        }
    }

    /// `[rows, cols]` of a quantized weight (the others only know their length).
    fn quantized_shape(&self) -> Option<(usize, usize)> {
        match self {
            WeightData::Int8(q) => Some((q.rows, q.cols)),
            WeightData::Int8Tiles(q) => Some((q.rows, q.cols)),
            WeightData::Int4(q) => Some((q.rows, q.cols)),
            _ => None,
        }
    }

    /// Row `i` of a `[rows, k]` weight as f32 (dequantized) into `out: [k]`.
    pub fn row_into(&self, i: usize, k: usize, out: &mut [f32]) {
        match self {
            WeightData::F32(w) => out.copy_from_slice(&w[i * k..(i + 1) * k]),
            WeightData::Bf16(w) => {
                for (o, &b) in out.iter_mut().zip(&w[i * k..(i + 1) * k]) {
                    *o = bf16_to_f32(b);
                }
            }
            WeightData::Int8(q) => q.dequantize_row(i, out),
            WeightData::Int8Tiles(q) => q.dequantize_row(i, out),
            WeightData::Int4(q) => q.dequantize_row(i, out),
        }
    }

    /// The whole weight `[rows, k]` as f32 (dequantized).
    pub fn to_f32(&self, k: usize) -> Vec<f32> {
        let rows = self.len().checked_div(k).unwrap_or(0);
        let mut out = vec![0f32; rows * k];
        for (i, row) in out.chunks_mut(k.max(1)).enumerate().take(rows) {
            self.row_into(i, k, row);
        }
        out
    }
}

/// An unmerged low-rank update of rows `row0..row0 + rows` of a layer's output:
/// y[:, row0..] += scale · (x·Aᵀ)·Bᵀ.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraDelta {
    pub row0: usize,
    pub rows: usize,
    pub rank: usize,
    /// a: [rank, in]
    pub a: Vec<f32>,
    /// b: [rows, rank]
    pub b: Vec<f32>,
    pub scale: f32,
}

/// Cloning a Linear shares its weights (an `Arc`): model variants (adapters) only copy the
/// matrices they change.
#[derive(Debug, Clone)]
pub struct Linear {
    pub out_features: usize,
    pub in_features: usize,
    pub weight: Arc<WeightData>,
    /// bias: [out]
    pub bias: Option<Vec<f32>>,
    /// Unmerged adapters, applied after the matmul.
    pub lora: Vec<LoraDelta>,
}

impl Linear {
    pub fn new(weight: WeightData, out_features: usize, in_features: usize, bias: Option<Vec<f32>>) -> Result<Self> {
        if weight.len() != out_features * in_features {
            return Err(Error::Tensor(format!(
                "weight has {} values, expected {out_features}x{in_features}",
                weight.len()
            )));
        }
        if let Some((rows, cols)) = weight.quantized_shape() {
            if (rows, cols) != (out_features, in_features) {
                return Err(Error::Tensor(format!(
                    "{} weight is {rows}x{cols}, expected {out_features}x{in_features}",
                    weight.precision().name()
                )));
            }
        }
        if let Some(b) = &bias {
            if b.len() != out_features {
                return Err(Error::Tensor(format!("bias has {} values, expected {out_features}", b.len())));
            }
        }
        Ok(Self { out_features, in_features, weight: Arc::new(weight), bias, lora: Vec::new() })
    }

    pub fn f32(w: Vec<f32>, out_features: usize, in_features: usize, bias: Option<Vec<f32>>) -> Result<Self> {
        Self::new(WeightData::F32(w.into()), out_features, in_features, bias)
    }

    /// Stacks the rows of several layers reading the same input (q/k/v, gate/up) into one.
    /// All parts must share `in_features` and precision (and INT8 group size) — except that
    /// INT4 and INT8 parts (a GGUF file with a Q4 q and a Q6_K/Q8_0 v) are fused as INT8, the
    /// INT4 rows requantized from their exact values; the bias is kept only when every part
    /// has one.
    pub fn concat(mut parts: Vec<Linear>) -> Result<Self> {
        for p in parts.iter_mut() {
            if let WeightData::Int8Tiles(t) = &*p.weight {
                p.weight = Arc::new(WeightData::Int8(t.to_rows()));
            }
        }
        let is = |p: &Linear, want: Precision| p.weight.precision() == want;
        if parts.iter().any(|p| is(p, Precision::Int8)) && parts.iter().any(|p| is(p, Precision::Int4)) {
            let group = parts.iter().find_map(|p| match &*p.weight {
                WeightData::Int8(q) => Some(q.group),
                _ => None,
            });
            for p in parts.iter_mut().filter(|p| p.weight.precision() == Precision::Int4) {
                let w = p.weight.to_f32(p.in_features);
                let q = QuantizedI8::quantize_with_group(&w, p.out_features, p.in_features, group.unwrap_or(crate::kernels::quant::GROUP));
                p.weight = Arc::new(WeightData::Int8(q));
            }
        }
        let first = parts.first().ok_or_else(|| Error::Tensor("nothing to concatenate".into()))?;
        let in_features = first.in_features;
        let precision = first.weight.precision();
        let out_features: usize = parts.iter().map(|p| p.out_features).sum();
        for p in &parts {
            if p.in_features != in_features || p.weight.precision() != precision {
                return Err(Error::Tensor(format!(
                    "cannot fuse a {} {}x{} weight with a {} one of {} inputs",
                    p.weight.precision().name(),
                    p.out_features,
                    p.in_features,
                    precision.name(),
                    in_features
                )));
            }
        }
        let bias = if parts.iter().all(|p| p.bias.is_some()) {
            Some(parts.iter().flat_map(|p| p.bias.as_deref().unwrap_or(&[]).iter().copied()).collect())
        } else {
            None
        };
        let owned = |w: Arc<WeightData>| Arc::try_unwrap(w).unwrap_or_else(|shared| (*shared).clone());
        let weight = match precision {
            Precision::F32 => WeightData::F32(concat_bufs(parts.into_iter().map(|p| match owned(p.weight) {
                WeightData::F32(w) => w,
                _ => unreachable!("precision checked above"),
            }))),
            Precision::Bf16 => WeightData::Bf16(concat_bufs(parts.into_iter().map(|p| match owned(p.weight) {
                WeightData::Bf16(w) => w,
                _ => unreachable!("precision checked above"),
            }))),
            Precision::Int8 => {
                let mut qs = Vec::with_capacity(parts.len());
                for p in parts {
                    match owned(p.weight) {
                        WeightData::Int8(q) => qs.push(q),
                        _ => unreachable!("precision checked above"),
                    }
                }
                let group = qs[0].group;
                if let Some(q) = qs.iter().find(|q| q.group != group) {
                    return Err(Error::Tensor(format!("cannot fuse int8 weights with groups {group} and {}", q.group)));
                }
                let scales = concat_bufs(qs.iter_mut().map(|q| std::mem::take(&mut q.scales)));
                let q = concat_bufs(qs.into_iter().map(|q| q.q));
                WeightData::Int8(QuantizedI8::from_parts(out_features, in_features, group, q, scales)?)
            }
            Precision::Int4 => {
                let mut qs = Vec::with_capacity(parts.len());
                for p in parts {
                    match owned(p.weight) {
                        WeightData::Int4(q) => qs.push(q),
                        _ => unreachable!("precision checked above"),
                    }
                }
                let scales = concat_bufs(qs.iter_mut().map(|q| std::mem::take(&mut q.scales)));
                let mins = concat_bufs(qs.iter_mut().map(|q| std::mem::take(&mut q.mins)));
                let q = concat_bufs(qs.into_iter().map(|q| q.q));
                WeightData::Int4(QuantizedI4::from_parts(out_features, in_features, q, scales, mins)?)
            }
        };
        Self::new(weight, out_features, in_features, bias)
    }

    /// y: [m, out] = x: [m, in] · wᵀ (+ bias), on the path the kernels pick for m rows.
    pub fn forward(&self, pool: &ThreadPool, x: &[f32], y: &mut [f32], m: usize) {
        self.forward_path(pool, x, y, m, self.path_for(m))
    }

    /// The path the kernels of this precision pick for `m` rows of x.
    pub fn path_for(&self, m: usize) -> RowPath {
        match &*self.weight {
            WeightData::F32(_) => f32_path_for(m),
            WeightData::Bf16(_) => bf16_path_for(m),
            WeightData::Int8(_) | WeightData::Int8Tiles(_) | WeightData::Int4(_) => int8_path_for(m),
        }
    }

    /// [`Linear::forward`] on a given path, whatever m: each row of y is then exactly what
    /// the same path computes for that row alone (an unmerged adapter's FP32 delta included).
    pub fn forward_path(&self, pool: &ThreadPool, x: &[f32], y: &mut [f32], m: usize, path: RowPath) {
        let (k, n) = (self.in_features, self.out_features);
        match &*self.weight {
            WeightData::F32(w) => matmul_f32_path(pool, x, w, y, m, k, n, path),
            WeightData::Bf16(w) => matmul_bf16_path(pool, x, w, y, m, k, n, path),
            WeightData::Int8(q) => matmul_int8_a16_path(pool, x, q, y, m, path),
            WeightData::Int8Tiles(q) => matmul_int8_tiles_path(pool, x, q, y, m, path),
            WeightData::Int4(q) => matmul_int4_path(pool, x, q, y, m, path),
        }
        if let Some(b) = &self.bias {
            for row in y.chunks_exact_mut(n) {
                for (yi, bi) in row.iter_mut().zip(b) {
                    *yi += bi;
                }
            }
        }
        for d in &self.lora {
            // xa: [m, rank] = x · aᵀ; up: [m, rows] = xa · bᵀ (FP32)
            let mut xa = vec![0f32; m * d.rank];
            matmul_f32_path(pool, x, &d.a, &mut xa, m, k, d.rank, path);
            let mut up = vec![0f32; m * d.rows];
            matmul_f32_path(pool, &xa, &d.b, &mut up, m, d.rank, d.rows, path);
            for (yr, ur) in y.chunks_exact_mut(n).zip(up.chunks_exact(d.rows)) {
                for (yi, ui) in yr[d.row0..d.row0 + d.rows].iter_mut().zip(ur) {
                    *yi += d.scale * ui;
                }
            }
        }
    }

    /// The weights with each part's rows `row0..row0 + rows` replaced by its `values: [rows, in]`
    /// (FP32, converted to this layer's precision and INT8 group; INT4 requantized from the
    /// values); other rows are copied as they are.
    pub fn with_rows(&self, parts: &[(usize, &[f32])]) -> Result<WeightData> {
        let k = self.in_features;
        for &(row0, values) in parts {
            let rows = if k == 0 { 0 } else { values.len() / k };
            if rows * k != values.len() || row0 + rows > self.out_features {
                return Err(Error::Tensor(format!(
                    "{} values do not fill whole rows of {k} inside rows {row0}.. of a {}-row weight",
                    values.len(),
                    self.out_features
                )));
            }
        }
        let span = |row0: usize, values: &[f32]| row0 * k..row0 * k + values.len();
        let int8_rows = |mut q: QuantizedI8| {
            let ng = q.groups_per_row();
            for &(row0, values) in parts {
                let rows = values.len() / k.max(1);
                let part = QuantizedI8::quantize_with_group(values, rows, k, q.group);
                q.q[span(row0, values)].copy_from_slice(&part.q);
                q.scales[row0 * ng..(row0 + rows) * ng].copy_from_slice(&part.scales);
            }
            q
        };
        Ok(match &*self.weight {
            WeightData::F32(w) => {
                let mut w = w.clone();
                for &(row0, values) in parts {
                    w[span(row0, values)].copy_from_slice(values);
                }
                WeightData::F32(w)
            }
            WeightData::Bf16(w) => {
                let mut w = w.clone();
                for &(row0, values) in parts {
                    for (o, &v) in w[span(row0, values)].iter_mut().zip(values) {
                        *o = f32_to_bf16(v);
                    }
                }
                WeightData::Bf16(w)
            }
            WeightData::Int8(q) => WeightData::Int8(int8_rows(q.clone())),
            WeightData::Int8Tiles(t) => {
                let q = int8_rows(t.to_rows());
                QuantizedI8Tiles::from_rows(&q).map_or(WeightData::Int8(q), WeightData::Int8Tiles)
            }
            WeightData::Int4(q) => {
                let (ng, rb) = (q.groups_per_row(), q.row_bytes());
                let mut q = q.clone();
                for &(row0, values) in parts {
                    let rows = values.len() / k.max(1);
                    let part = QuantizedI4::quantize(values, rows, k);
                    q.q[row0 * rb..(row0 + rows) * rb].copy_from_slice(&part.q);
                    q.scales[row0 * ng..(row0 + rows) * ng].copy_from_slice(&part.scales);
                    q.mins[row0 * ng..(row0 + rows) * ng].copy_from_slice(&part.mins);
                }
                WeightData::Int4(q)
            }
        })
    }

    /// Copies row `i` of w, in f32 (one embedding vector when the layer is an embedding
    /// table), into `out: [in]`.
    pub fn row_into(&self, i: usize, out: &mut [f32]) {
        self.weight.row_into(i, self.in_features, out)
    }

    /// Number of parameters (weights and bias).
    pub fn num_params(&self) -> usize {
        self.out_features * self.in_features + self.bias.as_ref().map_or(0, Vec::len)
    }

    /// Bytes of weight storage read by one full matmul (INT8 scales included).
    pub fn weight_bytes(&self) -> usize {
        match &*self.weight {
            WeightData::F32(w) => w.len() * 4,
            WeightData::Bf16(w) => w.len() * 2,
            WeightData::Int8(q) => q.bytes(),
            WeightData::Int8Tiles(q) => q.bytes(),
            WeightData::Int4(q) => q.bytes(),
        }
    }
}

fn concat_bufs<T: Copy>(parts: impl Iterator<Item = Buf<T>>) -> Buf<T> {
    let parts: Vec<Buf<T>> = parts.collect();
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in &parts {
        out.extend_from_slice(p);
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::quant::f32_to_bf16_vec;

    fn ramp(n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) * scale).collect()
    }

    #[test]
    fn concat_stacks_rows_in_every_precision() {
        let (a, b) = (ramp(3 * 70, 0.01), ramp(2 * 70, 0.02));
        let fused = |wa: WeightData, wb: WeightData| {
            let la = Linear::new(wa, 3, 70, Some(vec![1.0, 2.0, 3.0])).unwrap();
            let lb = Linear::new(wb, 2, 70, Some(vec![4.0, 5.0])).unwrap();
            Linear::concat(vec![la, lb]).unwrap()
        };
        let cat: Vec<f32> = a.iter().chain(&b).copied().collect();
        let f = fused(WeightData::F32(a.clone().into()), WeightData::F32(b.clone().into()));
        assert_eq!(*f.weight, WeightData::F32(cat.clone().into()));
        assert_eq!(f.bias, Some(vec![1.0, 2.0, 3.0, 4.0, 5.0]));
        let f = fused(WeightData::Bf16(f32_to_bf16_vec(&a).into()), WeightData::Bf16(f32_to_bf16_vec(&b).into()));
        assert_eq!(*f.weight, WeightData::Bf16(f32_to_bf16_vec(&cat).into()));
        let f = fused(
            WeightData::Int8(QuantizedI8::quantize(&a, 3, 70)),
            WeightData::Int8(QuantizedI8::quantize(&b, 2, 70)),
        );
        assert_eq!(*f.weight, WeightData::Int8(QuantizedI8::quantize(&cat, 5, 70)));
        let mut row = vec![0.0; 70];
        f.row_into(4, &mut row);
        let want = QuantizedI8::quantize(&b, 2, 70).dequantize();
        assert_eq!(row, want[70..]);
    }

    #[test]
    fn each_path_computes_a_row_as_it_computes_it_alone() {
        // every precision, both paths, any number of rows and threads: row i of y is
        // bit-identical to the same path's result for x row i alone
        let (n, k) = (200, 160);
        let w = ramp(n * k, 0.001);
        let bias: Vec<f32> = (0..n).map(|i| i as f32 * 0.01).collect();
        let layers = [
            Linear::f32(w.clone(), n, k, Some(bias.clone())).unwrap(),
            Linear::new(WeightData::Bf16(f32_to_bf16_vec(&w).into()), n, k, Some(bias.clone())).unwrap(),
            Linear::new(WeightData::Int8(QuantizedI8::quantize(&w, n, k)), n, k, Some(bias)).unwrap(),
        ];
        for threads in [1, 2, 3] {
            let pool = ThreadPool::new(threads).unwrap();
            for lin in &layers {
                for path in [RowPath::Gemv, RowPath::Gemm] {
                    let m = 13;
                    let x: Vec<f32> = (0..m * k).map(|i| (((i * 7919) % 1013) as f32 - 506.0) * 1e-3).collect();
                    let alone: Vec<Vec<f32>> = (0..m)
                        .map(|i| {
                            let mut y = vec![0f32; n];
                            lin.forward_path(&pool, &x[i * k..(i + 1) * k], &mut y, 1, path);
                            y
                        })
                        .collect();
                    for rows in 1..=m {
                        for start in [0, m - rows] {
                            let mut y = vec![0f32; rows * n];
                            lin.forward_path(&pool, &x[start * k..(start + rows) * k], &mut y, rows, path);
                            for r in 0..rows {
                                assert_eq!(y[r * n..(r + 1) * n], alone[start + r][..], "{:?} {path:?} threads {threads} rows {rows} row {r}", lin.weight.precision());
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn concat_refuses_mixed_parts() {
        let la = Linear::f32(ramp(70, 0.01), 1, 70, None).unwrap();
        let lb = Linear::new(WeightData::Bf16(vec![0; 70].into()), 1, 70, None).unwrap();
        assert!(matches!(Linear::concat(vec![la.clone(), lb]), Err(Error::Tensor(_))));
        let lc = Linear::f32(ramp(71, 0.01), 1, 71, None).unwrap();
        assert!(matches!(Linear::concat(vec![la, lc]), Err(Error::Tensor(_))));
        let g32 = Linear::new(WeightData::Int8(QuantizedI8::quantize_with_group(&ramp(64, 0.1), 1, 64, 32)), 1, 64, None).unwrap();
        let g64 = Linear::new(WeightData::Int8(QuantizedI8::quantize_with_group(&ramp(64, 0.1), 1, 64, 64)), 1, 64, None).unwrap();
        assert!(matches!(Linear::concat(vec![g32, g64]), Err(Error::Tensor(_))));
    }

    #[test]
    fn forward_matches_dequantized_weights() {
        let pool = ThreadPool::new(1).unwrap();
        let (n, k) = (5, 70);
        let w = ramp(n * k, 0.01);
        let x = ramp(k, 0.03);
        let bias: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let reference = |wd: &[f32]| -> Vec<f32> {
            (0..n).map(|j| (0..k).map(|p| x[p] * wd[j * k + p]).sum::<f32>() + bias[j]).collect()
        };
        let bf = f32_to_bf16_vec(&w);
        let lin = Linear::new(WeightData::Bf16(bf.clone().into()), n, k, Some(bias.clone())).unwrap();
        let mut y = vec![0.0; n];
        lin.forward(&pool, &x, &mut y, 1);
        let want = reference(&bf.iter().map(|&b| bf16_to_f32(b)).collect::<Vec<_>>());
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-4, "{a} vs {b}");
        }
        let q = QuantizedI8::quantize(&w, n, k);
        let want = reference(&q.dequantize());
        let lin = Linear::new(WeightData::Int8(q), n, k, Some(bias.clone())).unwrap();
        lin.forward(&pool, &x, &mut y, 1);
        for (a, b) in y.iter().zip(&want) {
            // W8A8: the activations are quantized too
            assert!((a - b).abs() < 0.02 * b.abs().max(1.0), "{a} vs {b}");
        }
        assert_eq!(lin.weight_bytes(), n * k + n * k.div_ceil(crate::kernels::quant::GROUP) * 2);
    }
}
