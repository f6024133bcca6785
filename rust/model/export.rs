//! The model's weights back under checkpoint names, one tensor at a time, for saving
//! (quantized checkpoints, merged adapters). Fused matrices are split back into their
//! checkpoint parts (q/k/v, gate/up); FP32/BF16 Conv1D weights go back to GPT-2's `[in, out]`.
//! An INT8 matrix `X.weight` is written `[out, in]` as int8 values plus `X.weight_scale`
//! `[out, ceil(in / group)]` f32; an INT4 one as u8 `[out, ceil(in / 32) · 16]` (the packed
//! nibbles) plus `X.weight_scale` and `X.weight_min` f16 `[out, ceil(in / 32)]` — the layouts
//! [`super::TensorStore`] reads back.

use super::linear::{Linear, WeightData};
use super::names::{part_rows, table, Layout, Part, Row, Slot};
use super::tensors::{transpose, DType};
use super::{Model, Norm};
use crate::error::{Error, Result};

#[derive(Debug, Clone)]
pub struct ExportEntry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
    pub(crate) slot: Slot,
    pub(crate) part: Part,
    /// Rows of the slot's matrix (or bias) this tensor holds.
    pub(crate) rows: (usize, usize),
    /// Written `[in, out]` (GPT-2 Conv1D in FP32/BF16).
    transposed: bool,
}

fn f32_le(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn u16_le(v: &[u16]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Model {
    /// Every tensor of the model under its Hugging Face checkpoint name, in load order: the rows
    /// of the architecture's table that the config asks for (names.rs), INT8 weights followed
    /// by their scales.
    pub fn export_entries(&self) -> Vec<ExportEntry> {
        let t = table(self.config.arch);
        let mut out = Vec::new();
        self.push_section(&mut out, t.embeddings, 0);
        for i in 0..self.layers.len() {
            self.push_section(&mut out, t.layer, i);
        }
        self.push_section(&mut out, t.output, 0);
        out
    }

    fn push_section(&self, out: &mut Vec<ExportEntry>, section: &[Row], layer: usize) {
        let c = &self.config;
        for row in section.iter().filter(|r| r.required(c)) {
            let (name, slot, part) = (row.name_at(layer), row.role.slot(layer), row.part);
            let rows = part_rows(section, row.role, c);
            let n = rows.1 - rows.0;
            let entry = |name, dtype, shape, part, transposed| ExportEntry { name, dtype, shape, slot, part, rows, transposed };
            if row.layout == Layout::Plain {
                // norms [d], biases [n], learned positions [n_positions, d]
                out.push(entry(name, DType::F32, row.shape(c), part, false));
                continue;
            }
            // the matrix this row is (part of); a required row always has one (the lm_head is
            // required only when untied, and then loaded)
            let Some(lin) = self.slot_linear(slot) else { continue };
            let k = lin.in_features;
            let conv1d = row.layout == Layout::Conv1d;
            // an INT8 / INT4 matrix is written [out, in] whatever its checkpoint layout
            let (dtype, transposed) = match &*lin.weight {
                WeightData::F32(_) => (DType::F32, conv1d),
                WeightData::Bf16(_) => (DType::BF16, conv1d),
                WeightData::Int8(_) | WeightData::Int8Tiles(_) => (DType::I8, false),
                WeightData::Int4(_) => (DType::U8, false),
            };
            let shape = match &*lin.weight {
                WeightData::Int4(q) => vec![n, q.row_bytes()],
                _ if transposed => vec![k, n],
                _ => vec![n, k],
            };
            let (scale, min) = (format!("{name}_scale"), format!("{name}_min"));
            out.push(entry(name, dtype, shape, Part::Weight, transposed));
            match &*lin.weight {
                WeightData::Int8(q) => out.push(entry(scale, DType::F16, vec![n, q.groups_per_row()], Part::Scale, false)),
                WeightData::Int8Tiles(q) => out.push(entry(scale, DType::F16, vec![n, q.groups_per_row()], Part::Scale, false)),
                WeightData::Int4(q) => {
                    out.push(entry(scale, DType::F16, vec![n, q.groups_per_row()], Part::Scale, false));
                    out.push(entry(min, DType::F16, vec![n, q.groups_per_row()], Part::Min, false));
                }
                _ => {}
            }
        }
    }

    pub(crate) fn slot_linear(&self, slot: Slot) -> Option<&Linear> {
        Some(match slot {
            Slot::Embed => &self.embed,
            Slot::Head => self.lm_head.as_ref()?,
            Slot::Qkv(i) => &self.layers.get(i)?.qkv,
            Slot::O(i) => &self.layers.get(i)?.o,
            Slot::Up(i) => &self.layers.get(i)?.up,
            Slot::Down(i) => &self.layers.get(i)?.down,
            Slot::PosEmbed | Slot::FinalNorm | Slot::AttnNorm(_) | Slot::MlpNorm(_) => return None,
        })
    }

    pub(crate) fn slot_linear_mut(&mut self, slot: Slot) -> Option<&mut Linear> {
        Some(match slot {
            Slot::Embed => &mut self.embed,
            Slot::Head => self.lm_head.as_mut()?,
            Slot::Qkv(i) => &mut self.layers.get_mut(i)?.qkv,
            Slot::O(i) => &mut self.layers.get_mut(i)?.o,
            Slot::Up(i) => &mut self.layers.get_mut(i)?.up,
            Slot::Down(i) => &mut self.layers.get_mut(i)?.down,
            Slot::PosEmbed | Slot::FinalNorm | Slot::AttnNorm(_) | Slot::MlpNorm(_) => return None,
        })
    }

    fn slot_norm(&self, slot: Slot) -> Option<&Norm> {
        match slot {
            Slot::FinalNorm => Some(&self.final_norm),
            Slot::AttnNorm(i) => self.layers.get(i).map(|l| &l.attn_norm),
            Slot::MlpNorm(i) => self.layers.get(i).map(|l| &l.mlp_norm),
            _ => None,
        }
    }

    /// The little-endian bytes of one exported tensor.
    pub fn export_bytes(&self, e: &ExportEntry) -> Result<Vec<u8>> {
        let (r0, r1) = e.rows;
        if let Some(norm) = self.slot_norm(e.slot) {
            return match e.part {
                Part::Weight => Ok(f32_le(&norm.weight)),
                Part::Bias => norm.bias.as_deref().map(f32_le).ok_or_else(|| Error::MissingTensor(e.name.clone())),
                Part::Scale | Part::Min => Err(Error::MissingTensor(e.name.clone())),
            };
        }
        if e.slot == Slot::PosEmbed {
            let wpe = self.pos_embed.as_deref().ok_or_else(|| Error::MissingTensor(e.name.clone()))?;
            return Ok(f32_le(wpe));
        }
        let lin = self.slot_linear(e.slot).ok_or_else(|| Error::MissingTensor(e.name.clone()))?;
        let k = lin.in_features;
        match (e.part, &*lin.weight) {
            (Part::Bias, _) => lin.bias.as_ref().map(|b| f32_le(&b[r0..r1])).ok_or_else(|| Error::MissingTensor(e.name.clone())),
            (Part::Weight, WeightData::F32(w)) => {
                let rows = &w[r0 * k..r1 * k];
                Ok(if e.transposed { f32_le(&transpose(rows, r1 - r0, k)) } else { f32_le(rows) })
            }
            (Part::Weight, WeightData::Bf16(w)) => {
                let rows = &w[r0 * k..r1 * k];
                let out: Vec<u16> = if e.transposed { transpose(rows, r1 - r0, k) } else { rows.to_vec() };
                Ok(out.iter().flat_map(|b| b.to_le_bytes()).collect())
            }
            (Part::Weight, WeightData::Int8(q)) => Ok(q.q[r0 * k..r1 * k].iter().map(|&v| v as u8).collect()),
            (Part::Scale, WeightData::Int8(q)) => Ok(u16_le(&q.scales[r0 * q.groups_per_row()..r1 * q.groups_per_row()])),
            (Part::Weight, WeightData::Int8Tiles(t)) => Ok(t.values_of_rows(r0..r1).into_iter().map(|v| v as u8).collect()),
            (Part::Scale, WeightData::Int8Tiles(t)) => Ok(u16_le(&t.scales_of_rows(r0..r1))),
            (Part::Weight, WeightData::Int4(q)) => Ok(q.q[r0 * q.row_bytes()..r1 * q.row_bytes()].to_vec()),
            (Part::Scale, WeightData::Int4(q)) => Ok(u16_le(&q.scales[r0 * q.groups_per_row()..r1 * q.groups_per_row()])),
            (Part::Min, WeightData::Int4(q)) => Ok(u16_le(&q.mins[r0 * q.groups_per_row()..r1 * q.groups_per_row()])),
            (Part::Scale | Part::Min, _) => Err(Error::MissingTensor(e.name.clone())),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::linear::Precision;
    use super::super::tensors::{LoadPlan, TensorStore};
    use super::super::{Arch, ModelConfig};
    use super::*;

    pub(crate) const LLAMA: &str = r#"{"model_type":"llama","vocab_size":40,"hidden_size":64,"intermediate_size":96,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":32,
        "rms_norm_eps":1e-5,"tie_word_embeddings":false,"attention_bias":true}"#;
    pub(crate) const GPT2: &str = r#"{"model_type":"gpt2","vocab_size":40,"n_embd":64,"n_layer":2,"n_head":4,"n_positions":32}"#;

    fn values(n: usize, seed: usize) -> Vec<f32> {
        (0..n).map(|i| (((i + seed) * 2654435761 % 1000) as f32 - 500.0) * 1e-3).collect()
    }

    /// A model built from random tensors with the checkpoint names `names_shapes`.
    pub(crate) fn build(config: &str, precision: Precision, tensors: &[(String, Vec<usize>)]) -> Model {
        build_threads(config, precision, tensors, 1)
    }

    /// [`build`] with kernels on `threads` threads.
    pub(crate) fn build_threads(config: &str, precision: Precision, tensors: &[(String, Vec<usize>)], threads: usize) -> Model {
        let cfg = ModelConfig::from_hf_json(config).unwrap();
        let mut store = TensorStore::new(LoadPlan::new(cfg.arch, precision, 32).unwrap());
        for (i, (name, shape)) in tensors.iter().enumerate() {
            store.insert(name, shape.clone(), values(shape.iter().product(), i)).unwrap();
        }
        Model::from_tensors(cfg, &mut store, threads).unwrap()
    }

    fn reload(config: &str, precision: Precision, m: &Model) -> Model {
        let cfg = ModelConfig::from_hf_json(config).unwrap();
        let mut store = TensorStore::new(LoadPlan::new(cfg.arch, precision, 32).unwrap());
        for e in m.export_entries() {
            store.insert_bytes(&e.name, e.dtype, &e.shape, &m.export_bytes(&e).unwrap()).unwrap();
        }
        let out = Model::from_tensors(cfg, &mut store, 1).unwrap();
        assert!(store.is_empty(), "unused tensors: {:?}", store.names());
        out
    }

    fn same_weights(a: &Model, b: &Model) {
        let lin = |x: &Linear, y: &Linear| assert!(*x.weight == *y.weight && x.bias == y.bias);
        lin(&a.embed, &b.embed);
        lin(a.lm_head(), b.lm_head());
        assert_eq!(a.pos_embed, b.pos_embed);
        for (x, y) in a.layers.iter().zip(&b.layers) {
            for (p, q) in [(&x.qkv, &y.qkv), (&x.o, &y.o), (&x.up, &y.up), (&x.down, &y.down)] {
                lin(p, q);
            }
            assert_eq!(x.attn_norm.weight, y.attn_norm.weight);
            assert_eq!(x.mlp_norm.bias, y.mlp_norm.bias);
        }
    }

    pub(crate) fn checkpoint_names(config: &str) -> Vec<(String, Vec<usize>)> {
        // the export of an FP32 model lists exactly the checkpoint's tensors
        let cfg = ModelConfig::from_hf_json(config).unwrap();
        let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let (q, kv) = (cfg.q_dim(), cfg.kv_dim());
        let mut t: Vec<(String, Vec<usize>)> = Vec::new();
        let mut add = |n: String, s: &[usize]| t.push((n, s.to_vec()));
        match cfg.arch {
            Arch::Llama => {
                add("model.embed_tokens.weight".into(), &[v, d]);
                add("lm_head.weight".into(), &[v, d]);
                add("model.norm.weight".into(), &[d]);
                for i in 0..cfg.num_layers {
                    let p = format!("model.layers.{i}");
                    add(format!("{p}.input_layernorm.weight"), &[d]);
                    add(format!("{p}.post_attention_layernorm.weight"), &[d]);
                    for (n, o) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
                        add(format!("{p}.self_attn.{n}.weight"), &[o, d]);
                        add(format!("{p}.self_attn.{n}.bias"), &[o]);
                    }
                    add(format!("{p}.self_attn.o_proj.weight"), &[d, q]);
                    add(format!("{p}.self_attn.o_proj.bias"), &[d]);
                    add(format!("{p}.mlp.gate_proj.weight"), &[f, d]);
                    add(format!("{p}.mlp.up_proj.weight"), &[f, d]);
                    add(format!("{p}.mlp.down_proj.weight"), &[d, f]);
                }
            }
            Arch::Gpt2 => {
                add("transformer.wte.weight".into(), &[v, d]);
                add("transformer.wpe.weight".into(), &[cfg.max_position_embeddings, d]);
                for n in ["ln_f.weight", "ln_f.bias"] {
                    add(format!("transformer.{n}"), &[d]);
                }
                for i in 0..cfg.num_layers {
                    let p = format!("transformer.h.{i}");
                    for n in ["ln_1.weight", "ln_1.bias", "ln_2.weight", "ln_2.bias", "attn.c_proj.bias", "mlp.c_proj.bias"] {
                        add(format!("{p}.{n}"), &[d]);
                    }
                    add(format!("{p}.attn.c_attn.weight"), &[d, 3 * d]);
                    add(format!("{p}.attn.c_attn.bias"), &[3 * d]);
                    add(format!("{p}.attn.c_proj.weight"), &[d, d]);
                    add(format!("{p}.mlp.c_fc.weight"), &[d, 4 * d]);
                    add(format!("{p}.mlp.c_fc.bias"), &[4 * d]);
                    add(format!("{p}.mlp.c_proj.weight"), &[4 * d, d]);
                }
            }
        }
        t
    }

    #[test]
    fn export_reloads_to_identical_weights_in_every_precision() {
        for config in [LLAMA, GPT2] {
            let names = checkpoint_names(config);
            for precision in [Precision::F32, Precision::Bf16, Precision::Int8, Precision::Int4] {
                let m = build(config, precision, &names);
                let back = reload(config, precision, &m);
                same_weights(&m, &back);
            }
            // FP32 export: the checkpoint's own names, shapes and values
            let m = build(config, Precision::F32, &names);
            let mut got: Vec<(String, Vec<usize>)> = m.export_entries().into_iter().map(|e| (e.name, e.shape)).collect();
            let mut want = names.clone();
            got.sort();
            want.sort();
            assert_eq!(got, want);
            for e in m.export_entries() {
                let i = names.iter().position(|(n, _)| *n == e.name).unwrap();
                let bytes = m.export_bytes(&e).unwrap();
                assert_eq!(bytes, values(e.shape.iter().product(), i).iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>(), "{}", e.name);
            }
        }
    }
}
