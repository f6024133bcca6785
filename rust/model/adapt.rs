//! Model variants for adapters: a clone of a model that shares every weight (an `Arc`) except
//! those an adapter changes — merged LoRA rebuilds the changed rows from FP32 values in the
//! model's precision; unmerged LoRA attaches low-rank deltas computed at run time. The base
//! model is untouched, so switching back to it is exact.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use super::export::ExportEntry;
use super::names::{Part, Slot};
use super::linear::{LoraDelta, WeightData};
use super::Model;
use crate::error::{Error, Result};

/// Merged change: `values` [rows, in] (+ `lora`'s scale · B·A, added here in FP32) replace the
/// rows of checkpoint weight `name`.
pub struct MergedWeight {
    pub name: String,
    pub values: Vec<f32>,
    pub lora: Option<WeightDelta>,
}

/// Unmerged change of checkpoint weight `name` [rows, in]: + scale · (x·Aᵀ)·Bᵀ.
pub struct WeightDelta {
    pub name: String,
    pub rank: usize,
    /// a: [rank, in]
    pub a: Vec<f32>,
    /// b: [rows, rank]
    pub b: Vec<f32>,
    pub scale: f32,
}

fn check_delta(d: &WeightDelta, rows: usize, k: usize) -> Result<()> {
    if d.rank == 0 || Some(d.a.len()) != d.rank.checked_mul(k) || Some(d.b.len()) != rows.checked_mul(d.rank) || !d.scale.is_finite() {
        return Err(Error::Tensor(format!(
            "'{}' [{rows}x{k}]: LoRA A must be [{}x{k}] and B [{rows}x{}] with rank >= 1 and a finite scale",
            d.name, d.rank, d.rank
        )));
    }
    Ok(())
}

/// The entry of linear weight `name` (not an embedding or a norm) among `entries`.
fn find<'a>(entries: &'a [ExportEntry], name: &str) -> Result<&'a ExportEntry> {
    entries
        .iter()
        .find(|e| e.name == name && e.part == Part::Weight && !matches!(e.slot, Slot::Embed | Slot::PosEmbed))
        .filter(|e| !matches!(e.slot, Slot::FinalNorm | Slot::AttnNorm(_) | Slot::MlpNorm(_)))
        .ok_or_else(|| Error::InvalidArgument(format!("the model has no linear weight '{name}' to adapt")))
}

/// values [rows, in] += scale · B·A, in FP32 on the pool.
fn add_lora(pool: &crate::threadpool::ThreadPool, values: &mut [f32], d: &WeightDelta, rows: usize, k: usize) {
    // ba: [rows, in] = B [rows, rank] · A [rank, in]
    let at = crate::model::tensors::transpose(&d.a, d.rank, k);
    let mut ba = vec![0f32; rows * k];
    crate::kernels::matmul_f32::matmul_f32(pool, &d.b, &at, &mut ba, rows, d.rank, k);
    for (v, x) in values.iter_mut().zip(&ba) {
        *v += d.scale * x;
    }
}

/// Where a change lands: the matrix, its first row, and the changed block's [rows, in].
struct Target {
    slot: Slot,
    row0: usize,
    rows: usize,
    k: usize,
}

impl Model {
    fn target(&self, entries: &[ExportEntry], name: &str) -> Result<Target> {
        let e = find(entries, name)?;
        let lin = self.slot_linear(e.slot).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        Ok(Target { slot: e.slot, row0: e.rows.0, rows: e.rows.1 - e.rows.0, k: lin.in_features })
    }

    /// `[rows, in]` of checkpoint weight `name` (a linear layer's weight, not an embedding).
    pub fn adaptable_shape(&self, name: &str) -> Result<(usize, usize)> {
        let t = self.target(&self.export_entries(), name)?;
        Ok((t.rows, t.k))
    }

    /// The values of linear weight `name` as f32 `[rows, in]` (widened or dequantized from
    /// the model's precision): what a merged adapter is added to when the checkpoint has no
    /// float original (a ferrolm INT8 / INT4 checkpoint).
    pub fn weight_values(&self, name: &str) -> Result<Vec<f32>> {
        let t = self.target(&self.export_entries(), name)?;
        let lin = self.slot_linear(t.slot).ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        let mut out = crate::memory::zeroed(t.rows * t.k, "a weight's values")?;
        for (r, row) in out.chunks_mut(t.k.max(1)).enumerate().take(t.rows) {
            lin.row_into(t.row0 + r, row);
        }
        Ok(out)
    }

    /// A copy of this model with `merged` rows replaced and `deltas` attached; every check is
    /// done before anything is built, and `self` is never changed.
    pub fn variant(&self, mut merged: Vec<MergedWeight>, deltas: Vec<WeightDelta>) -> Result<Model> {
        let entries = self.export_entries();
        let mut merged_at = Vec::with_capacity(merged.len());
        for m in &merged {
            let t = self.target(&entries, &m.name)?;
            if m.values.len() != t.rows * t.k {
                return Err(Error::Tensor(format!("'{}' needs {}x{} values, got {}", m.name, t.rows, t.k, m.values.len())));
            }
            if let Some(d) = &m.lora {
                check_delta(d, t.rows, t.k)?;
            }
            merged_at.push(t);
        }
        let mut deltas_at = Vec::with_capacity(deltas.len());
        for d in &deltas {
            let t = self.target(&entries, &d.name)?;
            check_delta(d, t.rows, t.k)?;
            deltas_at.push(t);
        }
        for (m, t) in merged.iter_mut().zip(&merged_at) {
            if let Some(d) = m.lora.take() {
                add_lora(&self.pool, &mut m.values, &d, t.rows, t.k);
            }
        }
        // every change of one matrix (q, k and v of a fused qkv) in one copy of it
        let mut by_slot: Vec<(Slot, Vec<(usize, &[f32])>)> = Vec::new();
        for (m, t) in merged.iter().zip(&merged_at) {
            match by_slot.iter_mut().find(|(s, _)| *s == t.slot) {
                Some((_, parts)) => parts.push((t.row0, &m.values)),
                None => by_slot.push((t.slot, vec![(t.row0, &m.values)])),
            }
        }
        // rebuild the touched matrices on the pool's threads (claimed one by one)
        let built: Vec<Mutex<Option<Result<WeightData>>>> = by_slot.iter().map(|_| Mutex::new(None)).collect();
        let next = AtomicUsize::new(0);
        self.pool.run(|_, _| loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some((slot, parts)) = by_slot.get(i) else { break };
            let result = match self.slot_linear(*slot) {
                Some(lin) => lin.with_rows(parts),
                None => Err(Error::InvalidArgument("no such layer".into())),
            };
            if let Ok(mut cell) = built[i].lock() {
                *cell = Some(result);
            }
        });
        let mut out = self.clone();
        let mut spans = Vec::new();
        for ((slot, _), cell) in by_slot.iter().zip(built) {
            let result = cell.into_inner().ok().flatten().ok_or_else(|| Error::InvalidArgument("a rebuild did not run".into()))?;
            let lin = out.slot_linear_mut(*slot).ok_or_else(|| Error::InvalidArgument("no such layer".into()))?;
            let weight = result?;
            spans.extend(weight.spans());
            lin.weight = Arc::new(weight);
        }
        // the rebuilt matrices are new buffers: in huge pages like the loaded ones
        crate::memory::collapse_spans_to_huge_pages(&spans);
        for (d, t) in deltas.into_iter().zip(deltas_at) {
            let lin = out.slot_linear_mut(t.slot).ok_or_else(|| Error::MissingTensor(d.name.clone()))?;
            lin.lora.push(LoraDelta { row0: t.row0, rows: t.rows, rank: d.rank, a: d.a, b: d.b, scale: d.scale });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::export::tests::{build, checkpoint_names, GPT2, LLAMA};
    use super::super::linear::{Linear, Precision};
    use super::*;
    use crate::kv_cache::{KvCache, KvDtype};
    use crate::model::forward::{forward, Scratch};

    fn logits(m: &Model, tokens: &[u32]) -> Vec<f32> {
        let c = &m.config;
        let mut cache = KvCache::new(c.num_layers, 16, c.kv_dim(), KvDtype::F32).unwrap();
        let mut scratch = Scratch::default();
        let mut out = vec![0f32; c.vocab_size];
        forward(m, &mut cache, &mut scratch, tokens, 0, &mut out, None).unwrap();
        out
    }

    fn weight_f32(m: &Model, name: &str) -> Vec<f32> {
        let e = m.export_entries().into_iter().find(|e| e.name == name).unwrap();
        let bytes = m.export_bytes(&e).unwrap();
        bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
    }

    #[test]
    fn quantized_weights_lie_in_one_arena_in_decode_order_with_the_same_logits() {
        for config in [LLAMA, GPT2] {
            for precision in [Precision::F32, Precision::Bf16, Precision::Int8, Precision::Int4] {
                let mut m = build(config, precision, &checkpoint_names(config));
                // where loading left them in the heap (their 2 MiB pages in huge pages already)
                m.move_quantized_weights().unwrap();
                // the layers' matrices, then the lm_head and the embedding, one after the other
                let mut order: Vec<&Linear> = m.layers.iter().flat_map(|l| [&l.qkv, &l.o, &l.up, &l.down]).collect();
                order.extend(m.lm_head.as_ref());
                order.push(&m.embed);
                let at: Vec<usize> = order.iter().map(|l| l.weight.spans()[0].0).collect();
                let quantized = matches!(precision, Precision::Int8 | Precision::Int4);
                assert!(order.iter().all(|l| l.weight.is_placed() == quantized), "{precision:?}");
                if quantized {
                    assert!(at.windows(2).all(|w| w[0] < w[1]), "{precision:?}: {at:x?}");
                    assert_eq!(at[0] % crate::memory::HUGE_PAGE, 0, "the arena starts on a 2 MiB boundary");
                }
                // heap copies of the same values give the same logits, bit for bit
                let mut heap = m.clone();
                let own = |l: &mut Linear| l.weight = Arc::new((*l.weight).clone());
                own(&mut heap.embed);
                if let Some(l) = heap.lm_head.as_mut() {
                    own(l);
                }
                for l in heap.layers.iter_mut() {
                    [&mut l.qkv, &mut l.o, &mut l.up, &mut l.down].into_iter().for_each(own);
                }
                assert!(!heap.lm_head().weight.is_placed() && !heap.layers[1].down.weight.is_placed());
                let tokens = [3, 1, 4, 1, 5];
                assert_eq!(logits(&m, &tokens), logits(&heap, &tokens), "{precision:?}");
            }
        }
    }

    #[test]
    fn merged_and_unmerged_variants_agree_and_leave_the_base_alone() {
        for (config, name) in [(LLAMA, "model.layers.1.self_attn.k_proj.weight"), (GPT2, "transformer.h.0.mlp.c_fc.weight")] {
            let base = build(config, Precision::F32, &checkpoint_names(config));
            let (rows, k) = base.adaptable_shape(name).unwrap();
            let rank = 3;
            let a: Vec<f32> = (0..rank * k).map(|i| ((i * 7 % 13) as f32 - 6.0) * 0.1).collect();
            let b: Vec<f32> = (0..rows * rank).map(|i| ((i * 5 % 11) as f32 - 5.0) * 0.1).collect();
            let scale = 1.5f32;
            // W' [rows, in] = W + scale · B·A, in nn.Linear orientation
            let mut w = weight_f32(&base, name);
            if config == GPT2 {
                w = crate::model::tensors::transpose(&w, k, rows);
            }
            for r in 0..rows {
                for c in 0..k {
                    w[r * k + c] += scale * (0..rank).map(|j| b[r * rank + j] * a[j * k + c]).sum::<f32>();
                }
            }
            let merged = base.variant(vec![MergedWeight { name: name.into(), values: w, lora: None }], vec![]).unwrap();
            let delta = WeightDelta { name: name.into(), rank, a: a.clone(), b: b.clone(), scale };
            let unmerged = base.variant(vec![], vec![delta]).unwrap();
            // the same merge done here from the original weights
            let orig = if config == GPT2 { crate::model::tensors::transpose(&weight_f32(&base, name), k, rows) } else { weight_f32(&base, name) };
            let lora = WeightDelta { name: name.into(), rank, a, b, scale };
            let in_core = base.variant(vec![MergedWeight { name: name.into(), values: orig, lora: Some(lora) }], vec![]).unwrap();
            let tokens = [1u32, 5, 9, 2];
            let (lb, lm, lu) = (logits(&base, &tokens), logits(&merged, &tokens), logits(&unmerged, &tokens));
            let diff = lb.iter().zip(&lm).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(diff > 1e-3, "the adapter must change the logits ({diff})");
            for ((x, y), z) in lm.iter().zip(&lu).zip(&logits(&in_core, &tokens)) {
                assert!((x - y).abs() < 1e-4 && (x - z).abs() < 1e-4, "{x} vs {y} vs {z}");
            }
            // untouched matrices are shared, the base is unchanged
            assert!(Arc::ptr_eq(&base.layers[0].o.weight, &merged.layers[0].o.weight));
            assert!(Arc::ptr_eq(&base.layers[0].qkv.weight, &unmerged.layers[0].qkv.weight));
            assert_eq!(logits(&base, &tokens), lb);
        }
    }

    #[test]
    fn int8_variant_requantizes_only_the_changed_rows() {
        let base = build(LLAMA, Precision::Int8, &checkpoint_names(LLAMA));
        let name = "model.layers.0.self_attn.v_proj.weight";
        let (rows, k) = base.adaptable_shape(name).unwrap();
        let values: Vec<f32> = (0..rows * k).map(|i| (i % 17) as f32 * 0.01).collect();
        let m = base.variant(vec![MergedWeight { name: name.into(), values: values.clone(), lora: None }], vec![]).unwrap();
        // rows or tiles (as the CPU's kernels read them), compared as rows
        let (Some(old), Some(new)) = (base.layers[0].qkv.weight.int8_rows(), m.layers[0].qkv.weight.int8_rows()) else {
            panic!("int8 expected")
        };
        assert_eq!(std::mem::discriminant(&*base.layers[0].qkv.weight), std::mem::discriminant(&*m.layers[0].qkv.weight));
        let q_rows = base.config.q_dim() + base.config.kv_dim(); // v rows start after q and k
        assert_eq!(old.q[..q_rows * k], new.q[..q_rows * k]);
        let want = crate::kernels::quant::QuantizedI8::quantize_with_group(&values, rows, k, old.group);
        assert_eq!(new.q[q_rows * k..], want.q[..]);
    }

    #[test]
    fn bad_adapters_are_refused() {
        let base = build(LLAMA, Precision::F32, &checkpoint_names(LLAMA));
        let name = "model.layers.0.mlp.up_proj.weight";
        let (rows, k) = base.adaptable_shape(name).unwrap();
        let merged = |n: &str, len: usize| base.variant(vec![MergedWeight { name: n.into(), values: vec![0.0; len], lora: None }], vec![]);
        assert!(matches!(merged("model.layers.9.mlp.up_proj.weight", rows * k), Err(Error::InvalidArgument(_))));
        assert!(matches!(merged("model.embed_tokens.weight", rows * k), Err(Error::InvalidArgument(_))));
        assert!(matches!(merged("model.norm.weight", 64), Err(Error::InvalidArgument(_))));
        assert!(matches!(merged(name, rows * k - 1), Err(Error::Tensor(_))));
        let delta = |rank: usize, alen: usize, blen: usize| {
            base.variant(vec![], vec![WeightDelta { name: name.into(), rank, a: vec![0.0; alen], b: vec![0.0; blen], scale: 1.0 }])
        };
        assert!(matches!(delta(0, 0, 0), Err(Error::Tensor(_))));
        assert!(matches!(delta(2, 2 * k, rows), Err(Error::Tensor(_))));
        assert!(delta(2, 2 * k, 2 * rows).is_ok());
    }
}
