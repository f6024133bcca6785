//! Checkpoint tensors → a model's weights, row by row of the architecture's table (names.rs):
//! names, shapes, optional tensors and the parts of fused matrices all come from it. Each
//! tensor is taken out of the store (checked against its shape) and the parts of one matrix are
//! stacked in table order (`Linear::concat`).

use std::sync::Arc;

use super::names::{arch_name, table, Layout, Part, Row, Slot, Table};
use super::{Layer, Linear, Model, ModelConfig, Norm, TensorStore};
use crate::error::{Error, Result};
use crate::kernels::rope::RopeTable;
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
    pub(crate) fn into_model(self, config: ModelConfig, rope: Option<RopeTable>, pool: Arc<ThreadPool>) -> Model {
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
        super::release_freed_memory();
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
