//! Checkpoint tensors → a model's weights, row by row of the architecture's table (names.rs):
//! names, shapes, optional tensors and the parts of fused matrices all come from it. Each
//! tensor is taken out of the store (checked against its shape) and the parts of one matrix are
//! stacked in table order (`Linear::concat`).

use std::sync::Arc;

use super::names::{arch_name, table, Layout, Part, Row, Slot, Table};
use super::{Layer, Linear, Model, ModelConfig, Norm, TensorStore};
use crate::error::{Error, Result};
use crate::kernels::rope::Rope;
use crate::threadpool::ThreadPool;

/// A model's weights as its table lists them.
pub(crate) struct Weights {
    embed: Linear,
    pos_embed: Option<Vec<f32>>,
    layers: Vec<Layer>,
    final_norm: Norm,
    lm_head: Option<Linear>,
}

impl Weights {
    pub(crate) fn into_model(self, config: ModelConfig, rope: Option<Rope>, pool: Arc<ThreadPool>) -> Model {
        let Weights { embed, pos_embed, layers, final_norm, lm_head } = self;
        Model { config, embed, pos_embed, layers, final_norm, lm_head, rope, pool }
    }
}

/// Checkpoint names as this checkpoint spells them: without the table's optional prefix when
/// its first tensor is stored without it.
struct Names {
    strip: Option<&'static str>,
}

impl Names {
    fn new(t: &Table, store: &TensorStore) -> Self {
        let first = t.embeddings.first().map(|r| r.name).unwrap_or_default();
        Self { strip: t.optional_prefix.filter(|_| !store.contains(first)) }
    }

    fn of(&self, row: &Row, layer: usize) -> String {
        let name = row.name_at(layer);
        match self.strip.and_then(|p| name.strip_prefix(p)) {
            Some(short) => short.to_string(),
            None => name,
        }
    }
}

/// Tensors taken out of the store, by slot.
#[derive(Default)]
struct Taken {
    /// The parts of each matrix, in table order.
    linears: Vec<(Slot, Vec<Linear>)>,
    norms: Vec<(Slot, Norm)>,
    plain: Vec<(Slot, Vec<f32>)>,
}

impl Taken {
    /// Takes every tensor `section` lists for layer `layer` (ignored by global sections).
    fn take(&mut self, section: &[Row], layer: usize, c: &ModelConfig, store: &mut TensorStore, names: &Names) -> Result<()> {
        for row in section.iter().filter(|r| r.part == Part::Weight) {
            let slot = row.role.slot(layer);
            let name = names.of(row, layer);
            let shape = row.shape(c);
            let bias = section.iter().find(|b| b.part == Part::Bias && b.role == row.role && b.required(c));
            let bias = |store: &mut TensorStore| bias.map(|b| store.take(&names.of(b, layer), &[shape[0]])).transpose();
            match (row.layout, shape.as_slice()) {
                // a norm: weight [d] (+ bias [d])
                (Layout::Plain, &[d]) => {
                    let weight = store.take(&name, &[d])?;
                    self.norms.push((slot, Norm { weight, bias: bias(store)?, eps: c.norm_eps }));
                }
                // learned positions
                (Layout::Plain, _) => self.plain.push((slot, store.take(&name, &shape)?)),
                (_, &[out, inp]) if row.required(c) => {
                    let w = store.take_matrix(&name, out, inp)?;
                    let part = Linear::new(w, out, inp, bias(store)?)?;
                    match self.linears.iter_mut().find(|(s, _)| *s == slot) {
                        Some((_, parts)) => parts.push(part),
                        None => self.linears.push((slot, vec![part])),
                    }
                }
                (_, &[out, inp]) => {
                    // a copy the config does not use (a tied lm_head saved anyway): read and dropped
                    store.take_matrix_opt(&name, out, inp)?;
                }
                _ => return Err(Error::Tensor(format!("'{name}' is a matmul weight but has no input dimension"))),
            }
        }
        Ok(())
    }

    fn linear_opt(&mut self, slot: Slot) -> Result<Option<Linear>> {
        let Some(i) = self.linears.iter().position(|(s, _)| *s == slot) else { return Ok(None) };
        let (_, mut parts) = self.linears.swap_remove(i);
        if parts.len() == 1 {
            return Ok(parts.pop());
        }
        Linear::concat(parts).map(Some)
    }

    fn linear(&mut self, slot: Slot, arch: &str) -> Result<Linear> {
        self.linear_opt(slot)?.ok_or_else(|| absent(slot, arch))
    }

    fn norm(&mut self, slot: Slot, arch: &str) -> Result<Norm> {
        let i = self.norms.iter().position(|(s, _)| *s == slot).ok_or_else(|| absent(slot, arch))?;
        Ok(self.norms.swap_remove(i).1)
    }

    fn plain(&mut self, slot: Slot) -> Option<Vec<f32>> {
        let i = self.plain.iter().position(|(s, _)| *s == slot)?;
        Some(self.plain.swap_remove(i).1)
    }
}

/// A slot the table does not fill (a table error, caught by the tests of every table).
fn absent(slot: Slot, arch: &str) -> Error {
    Error::InvalidArgument(format!("the {arch} tensor table has no tensor for {slot:?}"))
}

/// Takes every tensor of `c`'s architecture out of `store`: all required ones must be there
/// with the right shapes; tensors the table does not list are left in the store.
pub(crate) fn take_weights(c: &ModelConfig, store: &mut TensorStore) -> Result<Weights> {
    let t = table(c.arch);
    let arch = arch_name(c.arch);
    let names = Names::new(t, store);
    let mut globals = Taken::default();
    globals.take(t.embeddings, 0, c, store, &names)?;
    let mut layers = Vec::with_capacity(c.num_layers);
    for i in 0..c.num_layers {
        let mut l = Taken::default();
        l.take(t.layer, i, c, store, &names)?;
        layers.push(Layer {
            attn_norm: l.norm(Slot::AttnNorm(i), arch)?,
            qkv: l.linear(Slot::Qkv(i), arch)?,
            o: l.linear(Slot::O(i), arch)?,
            mlp_norm: l.norm(Slot::MlpNorm(i), arch)?,
            up: l.linear(Slot::Up(i), arch)?,
            down: l.linear(Slot::Down(i), arch)?,
        });
        crate::memory::release_freed_memory();
    }
    globals.take(t.output, 0, c, store, &names)?;
    Ok(Weights {
        embed: globals.linear(Slot::Embed, arch)?,
        pos_embed: globals.plain(Slot::PosEmbed),
        layers,
        final_norm: globals.norm(Slot::FinalNorm, arch)?,
        lm_head: globals.linear_opt(Slot::Head)?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::export::tests::{build, checkpoint_names, GPT2, LLAMA};
    use super::super::linear::Precision;
    use super::super::names::{Layout, Part, Role};
    use super::super::tensors::{DType, LoadPlan};
    use super::*;

    const QWEN2: &str = r#"{"model_type":"qwen2","vocab_size":40,"hidden_size":64,"intermediate_size":96,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"max_position_embeddings":32,
        "rms_norm_eps":1e-6,"tie_word_embeddings":true}"#;
    const LLAMA_MLP_BIAS: &str = r#"{"model_type":"llama","vocab_size":40,"hidden_size":64,"intermediate_size":96,
        "num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":4,"max_position_embeddings":32,
        "rms_norm_eps":1e-5,"tie_word_embeddings":true,"mlp_bias":true}"#;
    const CONFIGS: [&str; 4] = [LLAMA, QWEN2, LLAMA_MLP_BIAS, GPT2];
    const PRECISIONS: [Precision; 4] = [Precision::F32, Precision::Bf16, Precision::Int8, Precision::Int4];

    fn cfg(json: &str) -> ModelConfig {
        ModelConfig::from_hf_json(json).unwrap()
    }

    /// The tensors a checkpoint of `json` holds, by the table: names and checkpoint shapes.
    fn from_table(json: &str) -> Vec<(String, Vec<usize>)> {
        let c = cfg(json);
        let t = table(c.arch);
        let mut out = Vec::new();
        let mut add = |section: &[Row], layer: usize| {
            for r in section.iter().filter(|r| r.required(&c)) {
                let mut shape = r.shape(&c);
                if r.layout == Layout::Conv1d {
                    shape.reverse(); // [in, out]
                }
                out.push((r.name_at(layer), shape));
            }
        };
        add(t.embeddings, 0);
        for i in 0..c.num_layers {
            add(t.layer, i);
        }
        add(t.output, 0);
        out
    }

    fn load(json: &str, precision: Precision, tensors: &[(String, Vec<usize>)]) -> Result<(Model, TensorStore)> {
        let c = cfg(json);
        let mut store = TensorStore::new(LoadPlan::new(c.arch, precision, 32)?);
        for (name, shape) in tensors {
            store.insert(name, shape.clone(), vec![0.5; shape.iter().product()])?;
        }
        let m = Model::from_tensors(c, &mut store, 1)?;
        Ok((m, store))
    }

    #[test]
    fn the_table_lists_the_literal_checkpoint_names() {
        for json in [LLAMA, GPT2] {
            let mut want = checkpoint_names(json);
            let mut got = from_table(json);
            want.sort();
            got.sort();
            assert_eq!(got, want);
        }
        // which biases each config flag brings
        let biases = |json| -> Vec<String> { from_table(json).into_iter().map(|(n, _)| n).filter(|n| n.ends_with(".bias")).collect() };
        let per_layer = |parts: &[&str]| -> Vec<String> { (0..2).flat_map(|i| parts.iter().map(move |p| format!("model.layers.{i}.{p}.bias"))).collect() };
        assert_eq!(biases(QWEN2), per_layer(&["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]));
        assert_eq!(biases(LLAMA_MLP_BIAS), per_layer(&["mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]));
        assert!(from_table(QWEN2).iter().all(|(n, _)| n != "lm_head.weight"), "tied: no lm_head");
    }

    #[test]
    fn every_exported_tensor_is_one_the_loader_reads() {
        for json in CONFIGS {
            let c = cfg(json);
            let t = table(c.arch);
            let tensors = from_table(json);
            for precision in PRECISIONS {
                let m = build(json, precision, &tensors);
                let entries = m.export_entries();
                for e in &entries {
                    let base = match e.part {
                        Part::Scale => e.name.strip_suffix("_scale").unwrap(),
                        Part::Min => e.name.strip_suffix("_min").unwrap(),
                        _ => &e.name,
                    };
                    let (row, _) = t.find(base).unwrap_or_else(|| panic!("{}: not in the table", e.name));
                    let derived = matches!(e.part, Part::Scale | Part::Min);
                    assert_eq!(row.part, if derived { Part::Weight } else { e.part }, "{}", e.name);
                    // every matrix part is a matmul weight; INT8 ones come with scales, float ones
                    // keep their checkpoint layout
                    match (t.matrix_layout(base), e.dtype) {
                        (None, dtype) => assert_eq!(dtype, DType::F32, "{}", e.name),
                        (Some(_), DType::I8) => assert!(entries.iter().any(|s| s.name == format!("{}_scale", e.name))),
                        (Some(_), DType::U8) => {
                            assert!(entries.iter().any(|s| s.name == format!("{}_scale", e.name)));
                            assert!(entries.iter().any(|s| s.name == format!("{}_min", e.name)));
                        }
                        (Some(_), DType::F16) if derived => assert!(matches!(precision, Precision::Int8 | Precision::Int4)),
                        (Some(_), dtype) if derived => panic!("{}: scales or minimums saved as {dtype:?}", e.name),
                        (Some(_), _) => {}
                    }
                }
                // reloaded from the export alone: every tensor is used, and the weights are the same
                let mut store = TensorStore::new(LoadPlan::new(c.arch, precision, 32).unwrap());
                for e in &entries {
                    store.insert_bytes(&e.name, e.dtype, &e.shape, &m.export_bytes(e).unwrap()).unwrap();
                }
                let back = Model::from_tensors(c.clone(), &mut store, 1).unwrap();
                assert!(store.is_empty(), "{json}: unused {:?}", store.names());
                assert_eq!(back.export_entries().len(), entries.len());
                for e in &entries {
                    assert_eq!(back.export_bytes(e).unwrap(), m.export_bytes(e).unwrap(), "{}", e.name);
                }
            }
            // FP32: exactly the checkpoint's tensors with their checkpoint shapes
            let m = build(json, Precision::F32, &tensors);
            let mut got: Vec<(String, Vec<usize>)> = m.export_entries().into_iter().map(|e| (e.name, e.shape)).collect();
            let mut want = tensors.clone();
            got.sort();
            want.sort();
            assert_eq!(got, want, "{json}");
        }
    }

    #[test]
    fn each_required_tensor_is_missed_by_name() {
        for json in CONFIGS {
            let tensors = from_table(json);
            assert!(load(json, Precision::F32, &tensors).is_ok());
            let prefix = table(cfg(json).arch).optional_prefix;
            for i in 0..tensors.len() {
                let mut fewer = tensors.clone();
                let (name, _) = fewer.remove(i);
                // without its first tensor, a checkpoint reads as one that leaves the prefix out
                let want = match prefix {
                    Some(p) if i == 0 => name.strip_prefix(p).unwrap_or(&name).to_string(),
                    _ => name.clone(),
                };
                match load(json, Precision::F32, &fewer) {
                    Err(Error::MissingTensor(missing)) => assert_eq!(missing, want),
                    other => panic!("{name} left out: {:?}", other.map(|_| ())),
                }
            }
        }
    }

    #[test]
    fn shapes_are_checked_in_the_checkpoint_layout() {
        for json in [LLAMA, GPT2] {
            let c = cfg(json);
            let mut tensors = from_table(json);
            // the first attention output weight with its two dimensions swapped
            let o = table(c.arch).layer.iter().find(|r| r.role == Role::O && r.part == Part::Weight).unwrap().name_at(0);
            let entry = tensors.iter_mut().find(|(n, _)| *n == o).unwrap();
            entry.1 = vec![c.hidden_size + 1, c.q_dim()];
            assert!(matches!(load(json, Precision::Int8, &tensors), Err(Error::Tensor(m)) if m.contains(&o)), "{json}");
        }
    }

    #[test]
    fn optional_prefix_and_tied_copies() {
        // GPT-2 saved without "transformer.", with a copy of the tied lm_head
        let full = from_table(GPT2);
        let mut short: Vec<(String, Vec<usize>)> = full.iter().map(|(n, s)| (n.strip_prefix("transformer.").unwrap_or(n).to_string(), s.clone())).collect();
        assert!(short.iter().all(|(n, _)| !n.starts_with("transformer.")));
        short.push(("lm_head.weight".into(), vec![40, 64]));
        let (m, store) = load(GPT2, Precision::Bf16, &short).unwrap();
        assert!(store.is_empty() && m.lm_head.is_none());
        let (prefixed, _) = load(GPT2, Precision::Bf16, &full).unwrap();
        assert_eq!(m.export_entries().len(), prefixed.export_entries().len());
        // a tied LLaMA checkpoint that stores lm_head anyway: read, dropped, not exported
        let mut tied = from_table(QWEN2);
        tied.push(("lm_head.weight".into(), vec![40, 64]));
        let (m, store) = load(QWEN2, Precision::Int8, &tied).unwrap();
        assert!(store.is_empty() && m.lm_head.is_none());
        assert!(m.export_entries().iter().all(|e| !e.name.starts_with("lm_head")));
        // tensors the table does not list are left alone
        let mut extra = from_table(LLAMA);
        extra.push(("model.layers.0.self_attn.rotary_emb.inv_freq".into(), vec![8]));
        let (_, store) = load(LLAMA, Precision::F32, &extra).unwrap();
        assert_eq!(store.names(), ["model.layers.0.self_attn.rotary_emb.inv_freq"]);
    }
}
