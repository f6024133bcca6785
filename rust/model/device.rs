//! What a device backend (the CUDA backend) needs from a model: the modules in forward order
//! with their precision and adapters, and every weight buffer under one name, read as bytes one
//! at a time so a backend uploads tensor by tensor without a second full host copy.
//!
//! Buffers carry an identity (`id`): buffers shared between model variants (an adapter variant
//! shares every matrix it does not change) have the same id, so a backend uploads them once.

use std::borrow::Cow;

use super::{Linear, Model, Norm, WeightData};
use crate::kernels::matmul_int8_tiles::QuantizedI8Tiles;
use crate::error::{Error, Result};
use crate::model::DType;

/// One module of the forward pass.
#[derive(Debug, Clone, PartialEq)]
pub enum Module {
    /// A matmul `w: [out, in]`; `group` for INT8; `lora`: unmerged adapters (row0, rows, rank, scale).
    Linear { precision: &'static str, out_features: usize, in_features: usize, group: Option<usize>, bias: bool, lora: Vec<(usize, usize, usize, f32)> },
    /// RMSNorm (no bias) or LayerNorm.
    Norm { eps: f32, bias: bool },
    /// GPT-2's learned positions `[n_positions, d]`.
    Table { rows: usize, cols: usize },
}

/// One weight buffer: `<module>.<part>` (part: weight, scales, bias, lora.<j>.a, lora.<j>.b).
#[derive(Debug, Clone, PartialEq)]
pub struct Buffer {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    /// Identity of the storage (equal ids hold equal bytes while the models live).
    pub id: usize,
}

/// Modules by name: `embed`, `pos_embed`, `layers.<i>.{attn_norm,qkv,o,mlp_norm,up,down}`,
/// `final_norm`, and `lm_head` when it is not tied to `embed`.
pub fn modules(model: &Model) -> Vec<(String, Module)> {
    let mut out = vec![("embed".to_string(), linear_module(&model.embed))];
    if let Some(p) = &model.pos_embed {
        let d = model.config.hidden_size;
        out.push(("pos_embed".into(), Module::Table { rows: p.len() / d.max(1), cols: d }));
    }
    for (i, l) in model.layers.iter().enumerate() {
        out.push((format!("layers.{i}.attn_norm"), norm_module(&l.attn_norm)));
        out.push((format!("layers.{i}.qkv"), linear_module(&l.qkv)));
        out.push((format!("layers.{i}.o"), linear_module(&l.o)));
        out.push((format!("layers.{i}.mlp_norm"), norm_module(&l.mlp_norm)));
        out.push((format!("layers.{i}.up"), linear_module(&l.up)));
        out.push((format!("layers.{i}.down"), linear_module(&l.down)));
    }
    out.push(("final_norm".into(), norm_module(&model.final_norm)));
    if let Some(h) = &model.lm_head {
        out.push(("lm_head".into(), linear_module(h)));
    }
    out
}

fn linear_module(l: &Linear) -> Module {
    let group = match &*l.weight {
        WeightData::Int8(q) => Some(q.group),
        WeightData::Int8Tiles(_) => Some(crate::kernels::matmul_int8_tiles::TILE_GROUP),
        _ => None,
    };
    Module::Linear {
        precision: l.weight.precision().name(),
        out_features: l.out_features,
        in_features: l.in_features,
        group,
        bias: l.bias.is_some(),
        lora: l.lora.iter().map(|d| (d.row0, d.rows, d.rank, d.scale)).collect(),
    }
}

fn norm_module(n: &Norm) -> Module {
    Module::Norm { eps: n.eps, bias: n.bias.is_some() }
}

/// Every buffer of the model, in forward order.
pub fn buffers(model: &Model) -> Vec<Buffer> {
    let mut out = Vec::new();
    for (name, _) in modules(model) {
        for (part, view) in parts(model, &name).unwrap_or_default() {
            out.push(Buffer { name: format!("{name}.{part}"), dtype: view.dtype, shape: view.shape, id: view.id });
        }
    }
    out
}

/// The bytes of buffer `name` (one of [`buffers`]), little-endian, borrowed from the model.
pub fn buffer_bytes<'m>(model: &'m Model, name: &str) -> Result<Cow<'m, [u8]>> {
    let missing = || Error::MissingTensor(name.to_string());
    let (module, part) = split_name(model, name).ok_or_else(missing)?;
    parts(model, module)
        .ok_or_else(missing)?
        .into_iter()
        .find(|(p, _)| p == part)
        .map(|(_, v)| v.bytes.get())
        .ok_or_else(missing)
}

/// Splits `layers.3.qkv.lora.0.a` into (`layers.3.qkv`, `lora.0.a`) against the module names.
fn split_name<'n>(model: &Model, name: &'n str) -> Option<(&'n str, &'n str)> {
    let mut at = 0;
    while let Some(dot) = name[at..].find('.') {
        let (module, part) = (&name[..at + dot], &name[at + dot + 1..]);
        if module_exists(model, module) {
            return Some((module, part));
        }
        at += dot + 1;
    }
    None
}

fn module_exists(model: &Model, module: &str) -> bool {
    match module {
        "embed" | "final_norm" => true,
        "pos_embed" => model.pos_embed.is_some(),
        "lm_head" => model.lm_head.is_some(),
        _ => layer_part(model, module).is_some(),
    }
}

struct View<'m> {
    dtype: DType,
    shape: Vec<usize>,
    id: usize,
    bytes: Bytes<'m>,
}

/// A buffer's bytes: borrowed from the model, or rows read back from INT8 tiles when asked for
/// (the device kernels read rows; listing the buffers reads none).
enum Bytes<'m> {
    Slice(&'m [u8]),
    TileValues(&'m QuantizedI8Tiles),
    TileScales(&'m QuantizedI8Tiles),
}

impl<'m> Bytes<'m> {
    fn get(self) -> Cow<'m, [u8]> {
        match self {
            Bytes::Slice(b) => Cow::Borrowed(b),
            Bytes::TileValues(t) => Cow::Owned(t.values_of_rows(0..t.rows).into_iter().map(|v| v as u8).collect()),
            Bytes::TileScales(t) => Cow::Owned(t.scales_of_rows(0..t.rows).into_iter().flat_map(u16::to_le_bytes).collect()),
        }
    }
}

enum Part<'m> {
    Linear(&'m Linear),
    Norm(&'m Norm),
}

fn layer_part<'m>(model: &'m Model, module: &str) -> Option<Part<'m>> {
    let rest = module.strip_prefix("layers.")?;
    let (index, field) = rest.split_once('.')?;
    let layer = model.layers.get(index.parse::<usize>().ok()?)?;
    Some(match field {
        "attn_norm" => Part::Norm(&layer.attn_norm),
        "qkv" => Part::Linear(&layer.qkv),
        "o" => Part::Linear(&layer.o),
        "mlp_norm" => Part::Norm(&layer.mlp_norm),
        "up" => Part::Linear(&layer.up),
        "down" => Part::Linear(&layer.down),
        _ => return None,
    })
}

fn parts<'m>(model: &'m Model, module: &str) -> Option<Vec<(String, View<'m>)>> {
    let part = match module {
        "embed" => Part::Linear(&model.embed),
        "lm_head" => Part::Linear(model.lm_head.as_ref()?),
        "final_norm" => Part::Norm(&model.final_norm),
        "pos_embed" => {
            let p = model.pos_embed.as_ref()?;
            let d = model.config.hidden_size;
            return Some(vec![("weight".into(), f32_view(p, vec![p.len() / d.max(1), d]))]);
        }
        _ => layer_part(model, module)?,
    };
    Some(match part {
        Part::Norm(n) => {
            let mut v = vec![("weight".to_string(), f32_view(&n.weight, vec![n.weight.len()]))];
            if let Some(b) = &n.bias {
                v.push(("bias".into(), f32_view(b, vec![b.len()])));
            }
            v
        }
        Part::Linear(l) => linear_parts(l),
    })
}

fn linear_parts(l: &Linear) -> Vec<(String, View<'_>)> {
    let (n, k) = (l.out_features, l.in_features);
    let id = std::sync::Arc::as_ptr(&l.weight) as usize;
    let mut v = match &*l.weight {
        WeightData::F32(w) => vec![("weight".to_string(), View { id, ..f32_view(w, vec![n, k]) })],
        WeightData::Bf16(w) => vec![("weight".to_string(), View { dtype: DType::BF16, shape: vec![n, k], id, bytes: Bytes::Slice(as_bytes(w)) })],
        WeightData::Int8(q) => vec![
            ("weight".to_string(), View { dtype: DType::I8, shape: vec![n, k], id, bytes: Bytes::Slice(as_bytes(&q.q)) }),
            ("scales".to_string(), View { dtype: DType::F16, shape: vec![n, q.groups_per_row()], id: id + 1, bytes: Bytes::Slice(as_bytes(&q.scales)) }),
        ],
        WeightData::Int8Tiles(t) => vec![
            ("weight".to_string(), View { dtype: DType::I8, shape: vec![n, k], id, bytes: Bytes::TileValues(t) }),
            ("scales".to_string(), View { dtype: DType::F16, shape: vec![n, t.groups_per_row()], id: id + 1, bytes: Bytes::TileScales(t) }),
        ],
        // listed so every buffer has a name; the CUDA backend has no INT4 kernels and refuses them
        WeightData::Int4(q) => vec![
            ("weight".to_string(), View { dtype: DType::U8, shape: vec![n, q.q.len() / n.max(1)], id, bytes: Bytes::Slice(as_bytes(&q.q)) }),
            ("scales".to_string(), View { dtype: DType::F16, shape: vec![n, q.scales.len() / n.max(1)], id: id + 1, bytes: Bytes::Slice(as_bytes(&q.scales)) }),
            ("mins".to_string(), View { dtype: DType::F16, shape: vec![n, q.mins.len() / n.max(1)], id: id + 2, bytes: Bytes::Slice(as_bytes(&q.mins)) }),
        ],
    };
    if let Some(b) = &l.bias {
        v.push(("bias".into(), f32_view(b, vec![n])));
    }
    for (j, d) in l.lora.iter().enumerate() {
        v.push((format!("lora.{j}.a"), f32_view(&d.a, vec![d.rank, k])));
        v.push((format!("lora.{j}.b"), f32_view(&d.b, vec![d.rows, d.rank])));
    }
    v
}

fn f32_view(v: &[f32], shape: Vec<usize>) -> View<'_> {
    View { dtype: DType::F32, shape, id: v.as_ptr() as usize, bytes: Bytes::Slice(as_bytes(v)) }
}

/// The bytes of a slice of plain numbers (f32, u16, i8: no padding, any bit pattern valid).
fn as_bytes<T: Copy>(v: &[T]) -> &[u8] {
    // SAFETY: T is a plain number type without padding; the view borrows `v`.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast::<u8>(), std::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::export::tests::{build, checkpoint_names, GPT2, LLAMA};
    use crate::model::Precision;

    #[test]
    fn every_buffer_reads_back_with_its_size_and_variants_share_ids() {
        for config in [LLAMA, GPT2] {
            for precision in [Precision::F32, Precision::Bf16, Precision::Int8, Precision::Int4] {
                let model = build(config, precision, &checkpoint_names(config));
                let bufs = buffers(&model);
                assert!(bufs.iter().any(|b| b.name == "layers.0.qkv.weight"));
                for b in &bufs {
                    let bytes = buffer_bytes(&model, &b.name).unwrap();
                    let size = match b.dtype {
                        DType::I8 | DType::U8 => 1,
                        DType::BF16 | DType::F16 => 2,
                        _ => 4,
                    };
                    assert_eq!(bytes.len(), b.shape.iter().product::<usize>() * size, "{}", b.name);
                }
                if let Some(rows) = model.layers[0].qkv.weight.int8_rows() {
                    // INT8 tiles are read back as the rows the device kernels take
                    let q: Vec<u8> = rows.q.iter().map(|&v| v as u8).collect();
                    let s: Vec<u8> = rows.scales.iter().flat_map(|v| v.to_le_bytes()).collect();
                    assert_eq!(&*buffer_bytes(&model, "layers.0.qkv.weight").unwrap(), &q[..]);
                    assert_eq!(&*buffer_bytes(&model, "layers.0.qkv.scales").unwrap(), &s[..]);
                }
                let clone = model.clone();
                assert_eq!(buffers(&clone).iter().find(|b| b.name == "layers.0.qkv.weight").unwrap().id, bufs.iter().find(|b| b.name == "layers.0.qkv.weight").unwrap().id);
                assert!(buffer_bytes(&model, "layers.9.qkv.weight").is_err());
                assert!(buffer_bytes(&model, "layers.0.qkv.nothing").is_err());
                assert!(buffer_bytes(&model, "nothing").is_err());
                let n_linear = modules(&model).iter().filter(|(_, m)| matches!(m, Module::Linear { .. })).count();
                assert_eq!(n_linear, 1 + 4 * model.layers.len() + usize::from(model.lm_head.is_some()));
            }
        }
    }
}
